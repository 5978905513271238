//! Training: metrics, the optimizer and its schedule, the loop, checkpoints and the run folder,
//! the frozen-encoder feature cache, `train`, `experiment`, `eval` and `predict`.

pub mod checkpoint;
pub mod command;
pub mod experiment;
pub mod features;
pub mod inference;
pub mod metrics;
pub mod optim;
pub mod run_folder;
pub mod trainer;
