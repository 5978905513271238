//! Sums over CUDA ranks with NCCL, the library every GPU trainer uses for this (PyTorch, llm.c,
//! DeepSpeed): rank 0 makes NCCL's unique id, the rendezvous hands it to the others, and each
//! bucket of gradients is all-reduced in place on the stream the engine launches on. NCCL picks
//! its own summation order (rings, trees): every rank gets the same bits, but not the bits of
//! `host_collective`'s rank order.
//!
//! The library is opened by path, like NVRTC: `$EMRCLASS_NCCL_DIR` (it must hold it), then the
//! wheel `install-nccl.sh` puts under `target/nccl`, then the dynamic linker's search. Only the
//! handful of functions used are resolved. A sum is waited for with a watchdog: NCCL's
//! asynchronous error is checked while it runs, and after EMRCLASS_COLLECTIVE_TIMEOUT the
//! communicator is aborted and the rank stops with an error instead of hanging.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{Collective, World};
use crate::device::{Buffer, Device};
use crate::error::{Error, Result};

/// The pinned wheel `install-nccl.sh` installs under target/nccl.
pub const NCCL_WHEEL: &str = "nvidia-nccl-cu12==2.27.5";
const NCCL_FILE: &str = "libnccl.so.2";

/// NCCL's 128-byte unique id, passed by value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    internal: [c_char; 128],
}

type Comm = *mut c_void;
const NCCL_FLOAT32: c_int = 7;
const NCCL_FLOAT64: c_int = 8;
const NCCL_SUM: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;

struct Library {
    _lib: libloading::Library,
    path: PathBuf,
    version: c_int,
    get_unique_id: unsafe extern "C" fn(*mut UniqueId) -> c_int,
    comm_init_rank: unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int,
    all_reduce: unsafe extern "C" fn(
        *const c_void,
        *mut c_void,
        usize,
        c_int,
        c_int,
        Comm,
        *mut c_void,
    ) -> c_int,
    async_error: unsafe extern "C" fn(Comm, *mut c_int) -> c_int,
    abort: unsafe extern "C" fn(Comm) -> c_int,
    error_string: unsafe extern "C" fn(c_int) -> *const c_char,
}

// SAFETY: the function pointers and the library handle are plain data; NCCL's entry points may
// be called from any thread.
unsafe impl Send for Library {}
unsafe impl Sync for Library {}

pub fn how_to_get_nccl() -> String {
    format!(
        "install NCCL for CUDA 12: `./install-nccl.sh` (pip's {NCCL_WHEEL} under target/nccl), or your distribution's libnccl2; or set EMRCLASS_NCCL_DIR to a folder holding {NCCL_FILE}"
    )
}

/// Where the library may be, in order (`nccl_dir`: $EMRCLASS_NCCL_DIR).
fn candidates(nccl_dir: Option<std::ffi::OsString>) -> Result<Vec<PathBuf>> {
    if let Some(dir) = nccl_dir {
        let path = PathBuf::from(dir).join(NCCL_FILE);
        if !path.exists() {
            return Err(Error::MissingLibrary {
                library: format!("NCCL ({})", path.display()),
                how: format!(
                    "EMRCLASS_NCCL_DIR holds no {NCCL_FILE}; {}",
                    how_to_get_nccl()
                ),
            });
        }
        return Ok(vec![path]);
    }
    let wheel = "nccl/nvidia/nccl/lib";
    let mut out = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        out.extend(
            exe.ancestors()
                .skip(1)
                .take(3)
                .map(|d| d.join(wheel).join(NCCL_FILE)),
        );
    }
    out.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(wheel)
            .join(NCCL_FILE),
    );
    out.retain(|p| p.exists());
    // Last: the dynamic linker's own search (LD_LIBRARY_PATH, the system's folders).
    out.push(PathBuf::from(NCCL_FILE));
    Ok(out)
}

fn library() -> Result<&'static Library> {
    static LIB: OnceLock<std::result::Result<Library, String>> = OnceLock::new();
    LIB.get_or_init(|| open().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| Error::MissingLibrary {
            library: "NCCL".into(),
            how: e.clone(),
        })
}

fn open() -> Result<Library> {
    let tried = candidates(std::env::var_os("EMRCLASS_NCCL_DIR"))?;
    let mut last = None;
    for path in &tried {
        // SAFETY: opening a library runs its initialisers; NCCL's only set up its own state.
        let Ok(lib) = (unsafe { libloading::Library::new(path) }) else {
            continue;
        };
        // SAFETY: the file is named libnccl.so.2: NCCL 2.x, whose signatures `resolve` uses.
        match unsafe { resolve(lib, path) } {
            Ok(l) => return Ok(l),
            // A library without one of them: try the next.
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    Err(Error::MissingLibrary {
        library: format!(
            "NCCL ({NCCL_FILE}; tried {})",
            tried
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
        how: how_to_get_nccl(),
    })
}

/// The functions of an opened NCCL.
///
/// # Safety
/// The library must be NCCL 2.x, whose signatures the fields declare.
unsafe fn resolve(lib: libloading::Library, path: &std::path::Path) -> Result<Library> {
    let get_version: libloading::Symbol<unsafe extern "C" fn(*mut c_int) -> c_int> =
        symbol(&lib, b"ncclGetVersion\0")?;
    let mut version = 0;
    get_version(&mut version);
    Ok(Library {
        path: path.to_path_buf(),
        version,
        get_unique_id: *symbol(&lib, b"ncclGetUniqueId\0")?,
        comm_init_rank: *symbol(&lib, b"ncclCommInitRank\0")?,
        all_reduce: *symbol(&lib, b"ncclAllReduce\0")?,
        async_error: *symbol(&lib, b"ncclCommGetAsyncError\0")?,
        abort: *symbol(&lib, b"ncclCommAbort\0")?,
        error_string: *symbol(&lib, b"ncclGetErrorString\0")?,
        _lib: lib,
    })
}

/// # Safety
/// `T` must be the symbol's real type.
unsafe fn symbol<'l, T>(
    lib: &'l libloading::Library,
    name: &[u8],
) -> Result<libloading::Symbol<'l, T>> {
    lib.get(name).map_err(|e| Error::MissingLibrary {
        library: "NCCL".into(),
        how: format!(
            "{} lacks {}: {e}; {}",
            NCCL_FILE,
            String::from_utf8_lossy(&name[..name.len() - 1]),
            how_to_get_nccl()
        ),
    })
}

fn check(lib: &Library, code: c_int, what: &str) -> Result<()> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: ncclGetErrorString returns a static, NUL-terminated string for any code.
    let text = unsafe { CStr::from_ptr((lib.error_string)(code)) };
    Err(Error::Cuda(format!(
        "NCCL {what}: {} (code {code})",
        text.to_string_lossy()
    )))
}

/// NCCL opened (every CUDA rank, before the rendezvous: a rank without it stops there, by name,
/// instead of leaving the others waiting in NCCL's set-up).
pub fn ensure_loaded() -> Result<()> {
    library().map(|_| ())
}

/// A new unique id (rank 0 makes it before the rendezvous), as bytes.
pub fn unique_id() -> Result<Vec<u8>> {
    let lib = library()?;
    let mut id = UniqueId { internal: [0; 128] };
    // SAFETY: `id` is a valid ncclUniqueId to write.
    check(
        lib,
        unsafe { (lib.get_unique_id)(&mut id) },
        "making the unique id",
    )?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

pub struct NcclCollective {
    lib: &'static Library,
    comm: Comm,
    rank: usize,
    size: usize,
    device: Device,
    timeout: Duration,
    /// Time spent in sums (enqueue to done).
    busy: Duration,
}

impl NcclCollective {
    /// This rank's communicator, from rank 0's unique id (`id`, 128 bytes).
    pub fn new(world: &World, id: &[u8], device: &Device, timeout: Duration) -> Result<Self> {
        let lib = library()?;
        if id.len() != 128 {
            return Err(Error::Invalid(format!(
                "rank 0 sent an NCCL id of {} bytes, not 128 (is it on CUDA too?)",
                id.len()
            )));
        }
        let mut unique = UniqueId { internal: [0; 128] };
        for (u, &b) in unique.internal.iter_mut().zip(id) {
            *u = b as c_char;
        }
        // The engine's context current on this thread (NCCL binds to its device), handed to
        // the thread that sets the communicator up: that waits for every rank, so it is
        // watched with the timeout (a rank that stopped before it would hang it for good).
        device.synchronize()?;
        let mut context: cudarc::driver::sys::CUcontext = std::ptr::null_mut();
        // SAFETY: writes the calling thread's current context into `context`.
        unsafe { cudarc::driver::sys::cuCtxGetCurrent(&mut context) };
        let context = context as usize;
        let (size, rank) = (world.size as c_int, world.rank as c_int);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut comm: Comm = std::ptr::null_mut();
            // SAFETY: the context is the engine's, retained for the process's lifetime; `comm`
            // is a valid place for the communicator; the id is rank 0's.
            let code = unsafe {
                cudarc::driver::sys::cuCtxSetCurrent(context as cudarc::driver::sys::CUcontext);
                (lib.comm_init_rank)(&mut comm, size, unique, rank)
            };
            let _ = tx.send((code, comm as usize));
        });
        let (code, comm) = rx.recv_timeout(timeout).map_err(|_| {
            Error::Invalid(format!(
                "rank {rank}: NCCL's communicator was not set up within {:.1} s: another rank stopped or cannot reach this one (its own output says why; NCCL_DEBUG=INFO shows NCCL's side; EMRCLASS_COLLECTIVE_TIMEOUT sets the wait)",
                timeout.as_secs_f64()
            ))
        })?;
        check(lib, code, "joining the communicator")?;
        let comm = comm as Comm;
        Ok(NcclCollective {
            lib,
            comm,
            rank: world.rank,
            size: world.size,
            device: device.clone(),
            timeout,
            busy: Duration::ZERO,
        })
    }

    /// In-place sum of `len` values of `datatype` at device address `addr`.
    fn enqueue(&self, addr: u64, len: usize, datatype: c_int) -> Result<()> {
        if self.comm.is_null() {
            return Err(Error::Invalid(format!(
                "rank {}: NCCL's communicator was aborted after an earlier failure",
                self.rank
            )));
        }
        let p = addr as *mut c_void;
        // SAFETY: `addr` is a live device buffer of `len` elements of `datatype` (in place is
        // allowed); the null stream is the one the engine launches on.
        let code = unsafe {
            (self.lib.all_reduce)(
                p,
                p,
                len,
                datatype,
                NCCL_SUM,
                self.comm,
                std::ptr::null_mut(),
            )
        };
        check(self.lib, code, "all-reduce")
    }

    /// Ends the communicator's pending work; it is not used again.
    fn abort(&mut self) {
        if !self.comm.is_null() {
            // SAFETY: the communicator is this rank's, live until here, and never used after.
            unsafe { (self.lib.abort)(self.comm) };
            self.comm = std::ptr::null_mut();
        }
    }

    /// Waits for the enqueued sums, watching NCCL's asynchronous error and the timeout.
    fn wait(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            // SAFETY: querying the null stream of the current context.
            let state = unsafe { cudarc::driver::sys::cuStreamQuery(std::ptr::null_mut()) };
            if state == cudarc::driver::sys::CUresult::CUDA_SUCCESS {
                return Ok(());
            }
            if state != cudarc::driver::sys::CUresult::CUDA_ERROR_NOT_READY {
                return self.device.synchronize();
            }
            let mut async_code = 0;
            // SAFETY: `comm` is this rank's live communicator.
            unsafe { (self.lib.async_error)(self.comm, &mut async_code) };
            if async_code != 0 && async_code != NCCL_IN_PROGRESS {
                self.abort();
                return check(self.lib, async_code, "while summing (another rank failed?)");
            }
            if start.elapsed() > self.timeout {
                self.abort();
                return Err(Error::Invalid(format!(
                    "rank {}: an NCCL sum did not finish within {:.1} s: a rank hangs or died (EMRCLASS_COLLECTIVE_TIMEOUT sets the wait); the run continues from its last checkpoint with --resume",
                    self.rank,
                    self.timeout.as_secs_f64()
                )));
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&mut self, buffers: &mut [&mut Buffer<f32>]) -> Result<()> {
        let start = Instant::now();
        for b in buffers.iter() {
            self.enqueue(b.device_address(), b.len(), NCCL_FLOAT32)?;
        }
        let done = self.wait();
        self.busy += start.elapsed();
        done
    }

    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()> {
        // The engine's buffers hold no f64: the doubles travel as their bits.
        let bits: Vec<u64> = values.iter().map(|v| v.to_bits()).collect();
        let on_device = self.device.upload(&bits, "values summed over the ranks")?;
        let start = Instant::now();
        self.enqueue(on_device.device_address(), values.len(), NCCL_FLOAT64)?;
        let done = self.wait();
        self.busy += start.elapsed();
        done?;
        for (v, b) in values.iter_mut().zip(on_device.to_host()?) {
            *v = f64::from_bits(b);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!(
            "{} ranks, NCCL {}.{}.{} ({})",
            self.size,
            self.lib.version / 10000,
            self.lib.version / 100 % 100,
            self.lib.version % 100,
            self.lib.path.display()
        )
    }

    fn seconds(&self) -> f64 {
        self.busy.as_secs_f64()
    }
}

impl Drop for NcclCollective {
    fn drop(&mut self) {
        // Abort, not destroy: it never waits for peers that may be gone.
        self.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_library_is_named_with_how_to_get_it() {
        let empty = std::env::temp_dir().join(format!("emrclass-no-nccl-{}", std::process::id()));
        std::fs::create_dir_all(&empty).unwrap();
        let err = candidates(Some(empty.into_os_string()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("EMRCLASS_NCCL_DIR holds no libnccl.so.2"),
            "{err}"
        );
        assert!(err.contains("./install-nccl.sh"), "{err}");
    }
}
