//! What `train`, `experiment` and `pretrain` do end to end, over the parts below: read and check
//! the data, build the model, plan its memory, run the loop into a run folder, write the report.

pub mod experiment;
pub mod pretrain;
pub mod train;
