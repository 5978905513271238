//! The commands: one file each, holding its clap arguments and the `run` that checks them,
//! opens the device and hands the work to the library. `common` holds what several share.
//! Nothing in the library imports a command.

pub mod bench;
pub mod common;
pub mod convert;
pub mod encode;
pub mod eval;
pub mod experiment;
pub mod export;
pub mod gradcheck;
pub mod kernels;
pub mod launch;
pub mod plan;
pub mod predict;
pub mod pretrain;
pub mod report;
pub mod train;
