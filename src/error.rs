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
        "memory budget exceeded: {request} bytes requested for {what} with {live} bytes live; the budget is {budget} bytes"
    )]
    OutOfBudget {
        what: String,
        request: usize,
        live: usize,
        budget: usize,
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
}

pub type Result<T> = std::result::Result<T, Error>;

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
