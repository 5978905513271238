//! CUDA driver errors in the user's terms. A bare `CUDA_ERROR_...` says what broke, not what to
//! do: this module names the failure — out of GPU memory, a kernel fault, a driver too old for
//! the NVRTC that compiled the kernels, a launch the GPU cannot run — with the kernel, the sizes
//! and what to try. The mapping is a pure function of the error code and what the engine was
//! doing, so tests raise each failure with a fake code (tests/gpu_failures.rs).

use cudarc::driver::sys::CUresult;
use cudarc::driver::DriverError;

use crate::error::Error;

/// What the engine asked the driver for when it failed.
pub enum During<'a> {
    /// An allocation of `request` bytes for `what`, with `live` bytes held by the engine and the
    /// GPU's (free, total) memory as the driver reports it (None when that query failed too).
    Alloc {
        what: &'a str,
        request: usize,
        live: usize,
        memory: Option<(usize, usize)>,
    },
    /// A kernel launch (`launch` describes kernel, grid, block and shared memory).
    Launch { launch: &'a str },
    /// Loading a kernel file's CUBIN into the context.
    LoadModule {
        file: &'a str,
        arch: &'a str,
        nvrtc: &'a str,
        nvrtc_version: (i32, i32),
        driver: &'a str,
    },
    /// Anything else (a copy, a synchronisation, an event): `what` names it.
    Other { what: &'a str },
}

/// Codes that mean a kernel faulted: the context is lost and every later call fails the same way,
/// so the launch to blame is the last one, whatever call reported it.
fn fault_meaning(code: CUresult) -> Option<&'static str> {
    use CUresult::*;
    Some(match code {
        CUDA_ERROR_ILLEGAL_ADDRESS => "a load or store outside any allocation",
        CUDA_ERROR_MISALIGNED_ADDRESS => "a load or store at a misaligned address",
        CUDA_ERROR_INVALID_ADDRESS_SPACE => "an access in the wrong address space",
        CUDA_ERROR_ILLEGAL_INSTRUCTION => "an illegal instruction",
        CUDA_ERROR_INVALID_PC => "a jump to an invalid program counter",
        CUDA_ERROR_HARDWARE_STACK_ERROR => "a call stack overflow",
        CUDA_ERROR_ASSERT => "a device-side assert failed",
        CUDA_ERROR_LAUNCH_TIMEOUT => "the kernel ran past the display watchdog's limit",
        CUDA_ERROR_LAUNCH_FAILED => "an exception while the kernel ran",
        _ => return None,
    })
}

/// The error the user sees for `e`, which the driver returned `during` an operation; `last_launch`
/// describes the most recent kernel launch (for faults reported by a later call).
pub fn from_driver(e: DriverError, during: During, last_launch: Option<&str>) -> Error {
    let code = e.0;
    let name = format!("{code:?}");
    if let Some(meaning) = fault_meaning(code) {
        let last = match (&during, last_launch) {
            (During::Launch { launch }, _) => launch.to_string(),
            (_, Some(l)) => l.to_string(),
            (_, None) => "none (the fault came before any launch of this process)".into(),
        };
        return Error::KernelFault {
            code: name,
            meaning: meaning.into(),
            last_launch: last,
        };
    }
    match during {
        During::Alloc {
            what,
            request,
            live,
            memory,
        } if code == CUresult::CUDA_ERROR_OUT_OF_MEMORY => {
            let (free, total) = memory.unwrap_or((0, 0));
            Error::OutOfDeviceMemory {
                what: what.into(),
                request,
                live,
                free,
                total,
            }
        }
        During::Launch { launch } => Error::Cuda(match code {
            CUresult::CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES => format!(
                "{launch} could not start: it needs more registers or shared memory per block than this GPU has ({name}); `emrclass kernels` shows each kernel's registers and shared memory"
            ),
            CUresult::CUDA_ERROR_INVALID_VALUE => format!(
                "{launch} was refused: the grid, block or shared memory is beyond this GPU's limits ({name})"
            ),
            _ => format!("{launch} failed to launch: {name}"),
        }),
        During::LoadModule {
            file,
            arch,
            nvrtc,
            nvrtc_version,
            driver,
        } => match code {
            CUresult::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
            | CUresult::CUDA_ERROR_NO_BINARY_FOR_GPU
            | CUresult::CUDA_ERROR_INVALID_IMAGE
            | CUresult::CUDA_ERROR_INVALID_PTX
            | CUresult::CUDA_ERROR_JIT_COMPILER_NOT_FOUND => Error::DriverTooOld {
                driver: driver.into(),
                nvrtc: format!("{nvrtc} (kernel file {file}.cu for {arch})"),
                nvrtc_cuda: format!("{}.{}", nvrtc_version.0, nvrtc_version.1),
                code: format!(" ({name})"),
            },
            _ => Error::Cuda(format!(
                "loading kernel file {file}.cu ({arch}, compiled by {nvrtc}) failed: {name}"
            )),
        },
        During::Alloc { what, request, .. } => Error::Cuda(format!(
            "allocating {} for {what} failed: {name}",
            crate::error::mib(request)
        )),
        During::Other { what } => Error::Cuda(format!("{what} failed: {name}")),
    }
}

/// Refuses, before any kernel is loaded, a driver whose CUDA version is older than the NVRTC's
/// major version (its CUBINs need at least that driver). Versions as (major, minor).
pub fn check_driver(
    driver: (i32, i32),
    driver_library: &str,
    nvrtc: (i32, i32),
    nvrtc_library: &str,
) -> Result<(), Error> {
    if driver.0 < nvrtc.0 {
        return Err(Error::DriverTooOld {
            driver: format!("CUDA {}.{}, {driver_library}", driver.0, driver.1),
            nvrtc: nvrtc_library.into(),
            nvrtc_cuda: format!("{}.0", nvrtc.0),
            code: String::new(),
        });
    }
    Ok(())
}
