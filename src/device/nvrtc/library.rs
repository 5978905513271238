//! Finding and opening the NVRTC library, by full path and in one documented order, so that the
//! NVRTC the engine compiles with is the one it chose — whatever else the machine has.
//!
//! Order: `$EMRCLASS_NVRTC_DIR` (when set, it must hold the library: no falling through), then
//! the wheel that `install-nvrtc.sh` puts under `target/nvrtc` (searched beside the running
//! binary and in this source tree), then the system (the folders of `$LD_LIBRARY_PATH`, pip's
//! site-packages folders, the CUDA toolkit, the distribution's library folders). A library that
//! reports a major version other than 12 is refused, not used. The file is `libnvrtc.so.12`: NVRTC 12.x is the
//! last to compile for sm_61 (CUDA 13 dropped Pascal).
//!
//! Why not cudarc's loader: it opens the bare name `libnvrtc.so` first, which the dynamic linker
//! resolves through `LD_LIBRARY_PATH` and the system folders — on a machine with Debian's CUDA
//! 11.8 toolkit that is NVRTC 11.8, even after the engine had loaded 12.9. The engine therefore
//! calls the handful of NVRTC functions it needs through its own handle on the chosen file.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The pinned wheel that `./test.sh` installs under target/nvrtc when no NVRTC is found.
pub const NVRTC_WHEEL: &str = "nvidia-cuda-nvrtc-cu12==12.9.86";

/// The library's file name: NVRTC 12.x.
pub const NVRTC_FILE: &str = "libnvrtc.so.12";

pub fn how_to_get_nvrtc() -> String {
    format!(
        "install NVRTC 12.x (sm_61 needs 12.x; CUDA 13 dropped Pascal): `pip install --target target/nvrtc {NVRTC_WHEEL}` \
         (./test.sh does this), or the CUDA toolkit 12.x; or set EMRCLASS_NVRTC_DIR to a folder holding {NVRTC_FILE}"
    )
}

/// Folders that may hold the library, in the order they are searched (without
/// `$EMRCLASS_NVRTC_DIR`, which is handled first and alone).
pub fn search_dirs() -> Vec<PathBuf> {
    let wheel_lib = "nvrtc/nvidia/cuda_nvrtc/lib";
    let mut dirs = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/release/emrclass or target/release/deps/test-binary
        for up in exe.ancestors().skip(1).take(3) {
            dirs.push(up.join(wheel_lib));
        }
    }
    dirs.push(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(wheel_lib),
    );
    if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
        dirs.extend(std::env::split_paths(&paths).filter(|p| p.is_absolute()));
    }
    for python in [
        "python3.13",
        "python3.12",
        "python3.11",
        "python3.10",
        "python3.9",
    ] {
        for prefix in ["/usr/local/lib", "/usr/lib", "/opt/conda/lib"] {
            for site in ["site-packages", "dist-packages"] {
                dirs.push(PathBuf::from(format!(
                    "{prefix}/{python}/{site}/nvidia/cuda_nvrtc/lib"
                )));
            }
        }
    }
    for system in [
        "/usr/local/cuda/lib64",
        "/usr/local/cuda-12/lib64",
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib/aarch64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
    ] {
        dirs.push(PathBuf::from(system));
    }
    dirs
}

/// Where the library comes from: the first folder of the order that holds it.
pub fn locate() -> std::result::Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("EMRCLASS_NVRTC_DIR") {
        let lib = Path::new(&dir).join(NVRTC_FILE);
        return if lib.exists() {
            Ok(lib)
        } else {
            Err(format!(
                "EMRCLASS_NVRTC_DIR is {} but it holds no {NVRTC_FILE}; point it at the folder that does, \
                 or unset it to use the engine's own search",
                lib.parent().unwrap_or(Path::new("")).display()
            ))
        };
    }
    search_dirs()
        .into_iter()
        .map(|d| d.join(NVRTC_FILE))
        .find(|lib| lib.exists())
        .ok_or_else(how_to_get_nvrtc)
}

pub type Program = *mut c_void;
type Status = c_int;

/// The loaded library: its file, version and handle.
pub struct Nvrtc {
    pub path: PathBuf,
    pub version: (i32, i32),
    library: libloading::Library,
}

impl Nvrtc {
    /// The process's NVRTC, opened once.
    pub fn get() -> Result<&'static Nvrtc> {
        static LOADED: OnceLock<std::result::Result<Nvrtc, String>> = OnceLock::new();
        LOADED
            .get_or_init(|| {
                let path = locate()?;
                Nvrtc::open(&path)
            })
            .as_ref()
            .map_err(|how| Error::MissingLibrary {
                library: format!("NVRTC ({NVRTC_FILE})"),
                how: how.clone(),
            })
    }

    fn open(path: &Path) -> std::result::Result<Nvrtc, String> {
        // NVRTC loads its builtins library by bare name at compile time: make the one beside
        // the chosen library resident first, so that name resolves to it.
        if let Some(dir) = path.parent() {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.starts_with("libnvrtc-builtins.so.12") {
                        // SAFETY: loading a shared library runs its initialisers; NVIDIA's
                        // builtins library has none with side effects. Kept resident (leaked) for
                        // the process's lifetime, as NVRTC expects.
                        if let Ok(lib) = unsafe { global_library(&e.path()) } {
                            std::mem::forget(lib);
                        }
                    }
                }
            }
        }
        // SAFETY: as above, for NVRTC itself; the handle lives in a static, never unloaded.
        let library = unsafe { global_library(path) }
            .map_err(|e| format!("{} could not be opened: {e}", path.display()))?;
        let mut nvrtc = Nvrtc {
            path: path.to_path_buf(),
            version: (0, 0),
            library,
        };
        let (mut major, mut minor) = (0, 0);
        // SAFETY: nvrtcVersion(int*, int*) with two valid out-pointers.
        let rc = unsafe {
            let f = nvrtc
                .symbol::<unsafe extern "C" fn(*mut c_int, *mut c_int) -> Status>(b"nvrtcVersion")
                .map_err(|e| e.to_string())?;
            f(&mut major, &mut minor)
        };
        if rc != 0 {
            return Err(format!("{}: nvrtcVersion failed ({rc})", path.display()));
        }
        if major != 12 {
            return Err(format!(
                "{} is NVRTC {major}.{minor}, not 12.x (sm_61 needs 12.x; CUDA 13 dropped Pascal); {}",
                path.display(),
                how_to_get_nvrtc()
            ));
        }
        nvrtc.version = (major, minor);
        Ok(nvrtc)
    }

    /// "NVRTC 12.9 (/path/libnvrtc.so.12)": what every report and error names.
    pub fn describe(&self) -> String {
        format!(
            "NVRTC {}.{} ({})",
            self.version.0,
            self.version.1,
            self.path.display()
        )
    }

    /// # Safety
    /// `T` must be the function's true C signature.
    unsafe fn symbol<T>(&self, name: &[u8]) -> Result<libloading::Symbol<'_, T>> {
        self.library.get::<T>(name).map_err(|e| {
            Error::Cuda(format!(
                "{} lacks {}: {e}",
                self.describe(),
                String::from_utf8_lossy(name)
            ))
        })
    }

    fn check(&self, rc: Status, what: &str) -> Result<()> {
        if rc == 0 {
            return Ok(());
        }
        // SAFETY: nvrtcGetErrorString returns a static C string for any status.
        let text = unsafe {
            self.symbol::<unsafe extern "C" fn(Status) -> *const c_char>(b"nvrtcGetErrorString")
                .ok()
                .map(|f| f(rc))
                .filter(|p| !p.is_null())
                .map(|p| CStr::from_ptr(p).to_string_lossy().into_owned())
                .unwrap_or_else(|| format!("status {rc}"))
        };
        Err(Error::Cuda(format!(
            "{what} failed in {}: {text}",
            self.describe()
        )))
    }

    /// A program of one source (no include files: the engine inlines its header).
    pub fn create_program(&self, source: &CStr, name: &CStr) -> Result<Program> {
        let mut prog: Program = std::ptr::null_mut();
        // SAFETY: the documented signature; the strings outlive the call, no headers passed.
        let rc = unsafe {
            let f = self.symbol::<unsafe extern "C" fn(
                *mut Program,
                *const c_char,
                *const c_char,
                c_int,
                *const *const c_char,
                *const *const c_char,
            ) -> Status>(b"nvrtcCreateProgram")?;
            f(
                &mut prog,
                source.as_ptr(),
                name.as_ptr(),
                0,
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        self.check(rc, "nvrtcCreateProgram")?;
        Ok(prog)
    }

    /// Compiles; returns whether it succeeded (the log says why not).
    ///
    /// # Safety
    /// `prog` is a live program from `create_program`.
    pub unsafe fn compile_program(&self, prog: Program, options: &[&CStr]) -> Result<bool> {
        let ptrs: Vec<*const c_char> = options.iter().map(|o| o.as_ptr()).collect();
        let f = self
            .symbol::<unsafe extern "C" fn(Program, c_int, *const *const c_char) -> Status>(
                b"nvrtcCompileProgram",
            )?;
        Ok(f(prog, ptrs.len() as c_int, ptrs.as_ptr()) == 0)
    }

    /// # Safety
    /// `prog` is a live program from `create_program`.
    pub unsafe fn program_log(&self, prog: Program) -> Result<String> {
        let bytes = self.copy_out(prog, b"nvrtcGetProgramLogSize", b"nvrtcGetProgramLog")?;
        Ok(CStr::from_bytes_until_nul(&bytes)
            .map(|c| c.to_string_lossy().into_owned())
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned()))
    }

    /// # Safety
    /// `prog` is a live program, compiled successfully for a real architecture.
    pub unsafe fn cubin(&self, prog: Program) -> Result<Vec<u8>> {
        self.copy_out(prog, b"nvrtcGetCUBINSize", b"nvrtcGetCUBIN")
    }

    /// The size-then-copy pattern NVRTC uses for logs and binaries.
    ///
    /// # Safety
    /// `prog` is live; the two names are a matching (size, copy) pair of NVRTC functions.
    unsafe fn copy_out(&self, prog: Program, size_fn: &[u8], copy_fn: &[u8]) -> Result<Vec<u8>> {
        let what_size = String::from_utf8_lossy(size_fn).into_owned();
        let what_copy = String::from_utf8_lossy(copy_fn).into_owned();
        let mut size = 0usize;
        let f = self.symbol::<unsafe extern "C" fn(Program, *mut usize) -> Status>(size_fn)?;
        self.check(f(prog, &mut size), &what_size)?;
        let mut out = vec![0u8; size];
        let g = self.symbol::<unsafe extern "C" fn(Program, *mut c_char) -> Status>(copy_fn)?;
        self.check(g(prog, out.as_mut_ptr() as *mut c_char), &what_copy)?;
        Ok(out)
    }

    /// # Safety
    /// `prog` is live and not used afterwards.
    pub unsafe fn destroy_program(&self, mut prog: Program) {
        if let Ok(f) =
            self.symbol::<unsafe extern "C" fn(*mut Program) -> Status>(b"nvrtcDestroyProgram")
        {
            f(&mut prog);
        }
    }
}

/// # Safety
/// Loading a library runs its initialisers (see `libloading::Library::new`).
unsafe fn global_library(
    path: &Path,
) -> std::result::Result<libloading::Library, libloading::Error> {
    use libloading::os::unix::{Library, RTLD_GLOBAL, RTLD_NOW};
    Library::open(Some(path), RTLD_NOW | RTLD_GLOBAL).map(Into::into)
}
