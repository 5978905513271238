//! emrclass: a GPU training engine for classifying Chinese electronic medical records with
//! unbalanced classes. Every forward and backward pass is a hand-written CUDA kernel
//! (`kernels/*.cu`) compiled at run time by NVRTC; the same kernels also run on the CPU
//! through the SIMT simulator, and every kernel is checked against an f64 reference.

pub mod bench;
pub mod check;
pub mod console;
pub mod crash;
pub mod data;
pub mod device;
pub mod distributed;
pub mod encode;
pub mod error;
pub mod export;
pub mod hub;
pub mod interrupt;
pub mod jobs;
pub mod kernel_report;
pub mod model;
pub mod ops;
pub mod options;
pub mod plan;
pub mod pytorch;
pub mod reference;
pub mod report;
pub mod rng;
pub mod settings;
pub mod train;
pub mod weights;

pub use device::{Arg, Buffer, Device, DeviceChoice, LaunchConfig, Schedule};
pub use error::{Error, Result};
