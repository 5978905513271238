//! Training: metrics, the optimizer and its schedule (the loop, checkpoints and logs arrive
//! with issue 6).

pub mod checkpoint;
pub mod command;
pub mod experiment;
pub mod inference;
pub mod metrics;
pub mod optim;
pub mod run_folder;
pub mod trainer;
