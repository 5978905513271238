//! One error type for the engine. Every variant says what went wrong in terms a user can act on.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{library} could not be loaded: {how}")]
    MissingLibrary { library: String, how: String },
    #[error("CUDA: {0}")]
    Cuda(String),
    #[error("{nvrtc} could not compile {file} for {arch}:\n{log}")]
    Compile {
        file: String,
        arch: String,
        /// The library that tried: version and file.
        nvrtc: String,
        log: String,
    },
    #[error("simulator: {0}")]
    Simt(String),
    #[error(
        "memory budget exceeded: {} requested for {what} with {} live; the budget is {}. {MEMORY_ADVICE}",
        mib(*request), mib(*live), mib(*budget)
    )]
    OutOfBudget {
        what: String,
        request: usize,
        live: usize,
        budget: usize,
    },
    #[error(
        "out of GPU memory: {} requested for {what} with {} held by the engine; the GPU has {} free of {}. {MEMORY_ADVICE}",
        mib(*request), mib(*live), mib(*free), mib(*total)
    )]
    OutOfDeviceMemory {
        what: String,
        request: usize,
        live: usize,
        free: usize,
        total: usize,
    },
    #[error(
        "a kernel faulted on the GPU ({code}: {meaning}); the last kernel launched was {last_launch}. The CUDA context is lost: restart the process. To find the access, rerun the same command with --device simt (the simulator checks every access and names the buffer), or with CUDA_LAUNCH_BLOCKING=1 so the error stops at the faulting launch"
    )]
    KernelFault {
        code: String,
        meaning: String,
        last_launch: String,
    },
    #[error(
        "the NVIDIA driver ({driver}) cannot run kernels compiled by {nvrtc}{code}: update the driver to one for CUDA {nvrtc_cuda} or newer (`nvidia-smi` shows the CUDA version a driver supports), or set EMRCLASS_NVRTC_DIR to an NVRTC 12.x no newer than the driver"
    )]
    DriverTooOld {
        driver: String,
        nvrtc: String,
        nvrtc_cuda: String,
        /// The driver's error, as ` (CUDA_ERROR_...)`, or empty when refused before loading.
        code: String,
    },
    #[error("no kernel named `{0}` (see `emrclass kernels` for the list)")]
    UnknownKernel(String),
    #[error("kernel `{kernel}`: {message}")]
    BadLaunch { kernel: String, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    /// A run folder another process holds (`train::folder_lock`).
    #[error("{0}")]
    Busy(String),
    /// A run stopped by a signal after saving what it had (`interrupt`); the process exits
    /// with `128 + signal`.
    #[error("{message}")]
    Interrupted { signal: i32, message: String },
}

pub type Result<T> = std::result::Result<T, Error>;

/// What to try when memory runs out (both the engine's budget and the GPU's own).
pub const MEMORY_ADVICE: &str = "What to try: `emrclass plan --model DIR --batch B --seq L` shows the peak and the largest batch that fits; --memory-budget SIZE (the card's memory) makes `train` plan recomputation and micro-batches into it; or a smaller --batch-size or --max-len";

/// A size for messages: exact bytes below 1 MiB, else MiB with one decimal.
pub fn mib(bytes: usize) -> String {
    if bytes < 1 << 20 {
        format!("{bytes} bytes")
    } else {
        format!("{:.1} MiB", bytes as f64 / 1048576.0)
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<cudarc::driver::DriverError> for Error {
    fn from(e: cudarc::driver::DriverError) -> Self {
        Error::Cuda(format!("{e:?}"))
    }
}
