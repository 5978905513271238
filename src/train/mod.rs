//! Training: metrics, the optimizer and its schedule, the loop, checkpoints and the run folder,
//! pretraining's loop and folder, the frozen-encoder feature cache, building a classifier from a
//! run's spec, `eval` and `predict`.

pub mod build;
pub mod checkpoint;
pub mod features;
pub mod folder_lock;
pub mod inference;
pub mod metrics;
pub mod optim;
pub mod pretraining;
pub mod run_folder;
pub mod state;
pub mod trainer;
