//! Training: metrics (the loop, schedules, checkpoints and logs arrive with issue 6).

pub mod metrics;
