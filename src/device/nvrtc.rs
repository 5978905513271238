//! NVRTC: finding the library, compiling a kernel file to CUBIN for one architecture, caching
//! the result on disk, and reading ptxas's resource report (registers, spills, shared memory).
//!
//! NVRTC needs no GPU, so the static kernel report runs on any machine that has the library.
//! NVRTC 12.x is required for sm_61: CUDA 13 dropped Pascal.

use std::ffi::{c_char, CStr, CString};
use std::path::PathBuf;
use std::sync::OnceLock;

use super::{KernelFile, COMMON_HEADER};
use crate::error::{Error, Result};

/// The pinned wheel that `./test.sh` installs under target/nvrtc when no NVRTC is found.
pub const NVRTC_WHEEL: &str = "nvidia-cuda-nvrtc-cu12==12.9.86";

fn how_to_get_nvrtc() -> String {
    format!(
        "install NVRTC 12.x (sm_61 needs 12.x; CUDA 13 dropped Pascal): `pip install --target target/nvrtc {NVRTC_WHEEL}` \
         (./test.sh does this), or the CUDA toolkit 12.x; or set EMRCLASS_NVRTC_DIR to a folder holding libnvrtc.so.12"
    )
}

/// Folders that may hold libnvrtc.so.12, most specific first.
fn candidate_dirs() -> Vec<PathBuf> {
    let wheel_lib = "nvrtc/nvidia/cuda_nvrtc/lib";
    let mut dirs = Vec::new();
    if let Some(d) = std::env::var_os("EMRCLASS_NVRTC_DIR") {
        dirs.push(PathBuf::from(d));
    }
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
    dirs.push(PathBuf::from("/usr/local/cuda/lib64"));
    dirs
}

/// Loads NVRTC once per process. A library found in a candidate folder is opened by full path
/// with RTLD_GLOBAL first; cudarc's later dlopen("libnvrtc.so.12") then finds it by soname.
pub fn ensure_loaded() -> Result<()> {
    static LOADED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    LOADED
        .get_or_init(|| {
            for dir in candidate_dirs() {
                let lib = dir.join("libnvrtc.so.12");
                if !lib.exists() {
                    continue;
                }
                // libnvrtc loads its builtins library by name: make it resident first.
                if let Ok(entries) = std::fs::read_dir(&dir) {
                    for e in entries.flatten() {
                        let name = e.file_name().to_string_lossy().to_string();
                        if name.starts_with("libnvrtc-builtins.so.12") {
                            dlopen_global(&e.path());
                        }
                    }
                }
                if dlopen_global(&lib) {
                    break;
                }
            }
            // SAFETY: is_culib_present only tries to dlopen the candidate names.
            if unsafe { cudarc::nvrtc::sys::is_culib_present() } {
                Ok(())
            } else {
                Err(how_to_get_nvrtc())
            }
        })
        .clone()
        .map_err(|how| Error::MissingLibrary {
            library: "NVRTC (libnvrtc.so.12)".into(),
            how,
        })
}

fn dlopen_global(path: &std::path::Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a plain dlopen of a shared library by path; the handle is deliberately never
    // closed, so the library stays resident for the process's lifetime.
    let handle = unsafe { libc::dlopen(c.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    !handle.is_null()
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32)> {
    ensure_loaded()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded; the two out-pointers are valid.
    let rc = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    check(rc, "nvrtcVersion")?;
    Ok((major, minor))
}

fn check(rc: cudarc::nvrtc::sys::nvrtcResult, what: &str) -> Result<()> {
    if rc == cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        Ok(())
    } else {
        Err(Error::Cuda(format!("{what} failed: {rc:?}")))
    }
}

/// The source NVRTC sees: `#include "common.cuh"` replaced by the header's text, so the binary
/// carries everything it needs and never looks for files at run time.
pub fn full_source(file: &KernelFile) -> String {
    file.source
        .replace("#include \"common.cuh\"", COMMON_HEADER)
}

/// The options every kernel is compiled with. No --use_fast_math: the reference tolerances
/// assume IEEE division, square root and exp.
pub fn options(arch: &str) -> Vec<String> {
    vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".into(),
        "--ptxas-options=-v".into(),
    ]
}

pub struct Compiled {
    pub cubin: Vec<u8>,
    /// NVRTC's log, including ptxas's resource report.
    pub log: String,
}

/// Compiles one kernel file to CUBIN for `arch` (e.g. "sm_61").
pub fn compile(file: &KernelFile, arch: &str) -> Result<Compiled> {
    ensure_loaded()?;
    let src = CString::new(full_source(file))
        .map_err(|_| Error::Invalid(format!("{} holds a NUL byte", file.name)))?;
    let name = CString::new(file.name).unwrap();
    let prog = cudarc::nvrtc::result::create_program(&src, Some(&name))
        .map_err(|e| Error::Cuda(format!("nvrtcCreateProgram: {e:?}")))?;
    let opts = options(arch);
    // SAFETY: prog is a live program from create_program; it is destroyed exactly once below,
    // after the log and CUBIN have been copied out.
    let result = unsafe {
        let compiled = cudarc::nvrtc::result::compile_program(prog, &opts);
        let log = cudarc::nvrtc::result::get_program_log(prog)
            .map(|raw| CStr::from_ptr(raw.as_ptr()).to_string_lossy().into_owned())
            .unwrap_or_default();
        let out = match compiled {
            Err(_) => Err(Error::Compile {
                file: file.name.into(),
                arch: arch.into(),
                log: log.clone(),
            }),
            Ok(()) => get_cubin(prog).map(|cubin| Compiled { cubin, log }),
        };
        let _ = cudarc::nvrtc::result::destroy_program(prog);
        out
    };
    result
}

/// # Safety
/// `prog` must be a live, successfully compiled program for a real architecture.
unsafe fn get_cubin(prog: cudarc::nvrtc::sys::nvrtcProgram) -> Result<Vec<u8>> {
    let mut size = 0usize;
    check(
        cudarc::nvrtc::sys::nvrtcGetCUBINSize(prog, &mut size),
        "nvrtcGetCUBINSize",
    )?;
    let mut cubin = vec![0u8; size];
    check(
        cudarc::nvrtc::sys::nvrtcGetCUBIN(prog, cubin.as_mut_ptr() as *mut c_char),
        "nvrtcGetCUBIN",
    )?;
    Ok(cubin)
}

/// FNV-1a, 64-bit: a stable hash for cache keys (std's hasher may change between releases).
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            h ^= b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EMRCLASS_CACHE_DIR") {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(d).join("emrclass");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".cache/emrclass");
    }
    std::env::temp_dir().join("emrclass-cache")
}

/// CUBIN for `file` on `arch`, from the disk cache when the source, arch, NVRTC version and
/// options all match; compiled and stored (atomically: temp file, then rename) otherwise.
pub fn cached_cubin(file: &KernelFile, arch: &str) -> Result<Vec<u8>> {
    let (major, minor) = version()?;
    let src = full_source(file);
    let opts = options(arch).join(" ");
    let key = fnv1a(&[
        src.as_bytes(),
        arch.as_bytes(),
        format!("{major}.{minor}").as_bytes(),
        opts.as_bytes(),
    ]);
    let stem = file.name.trim_end_matches(".cu");
    let dir = cache_dir();
    let path = dir.join(format!(
        "{stem}-{arch}-nvrtc{major}.{minor}-{key:016x}.cubin"
    ));
    if let Ok(bytes) = std::fs::read(&path) {
        return Ok(bytes);
    }
    let compiled = compile(file, arch)?;
    // The cache is an optimisation: failing to write it is not an error.
    if std::fs::create_dir_all(&dir).is_ok() {
        let tmp = dir.join(format!(".{stem}-{}.tmp", std::process::id()));
        if std::fs::write(&tmp, &compiled.cubin).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
    Ok(compiled.cubin)
}

/// ptxas's report for one kernel.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KernelResources {
    pub name: String,
    pub registers: u32,
    pub shared_bytes: u32,
    pub stack_bytes: u32,
    pub spill_store_bytes: u32,
    pub spill_load_bytes: u32,
}

/// Parses the `ptxas info` lines of an NVRTC log compiled with `--ptxas-options=-v`.
pub fn parse_ptxas_report(log: &str) -> Vec<KernelResources> {
    let mut out: Vec<KernelResources> = Vec::new();
    let number_before = |line: &str, word: &str| -> Option<u32> {
        let at = line.find(word)?;
        line[..at].split_whitespace().last()?.parse().ok()
    };
    for line in log.lines() {
        // "Function properties for NAME" opens every kernel's block in NVRTC 12 and 13 logs.
        if let Some(rest) = line.split("Function properties for ").nth(1) {
            out.push(KernelResources {
                name: rest.trim().to_string(),
                ..Default::default()
            });
        } else if let Some(k) = out.last_mut() {
            if line.contains("bytes stack frame") {
                k.stack_bytes = number_before(line, "bytes stack frame").unwrap_or(0);
                k.spill_store_bytes = number_before(line, "bytes spill stores").unwrap_or(0);
                k.spill_load_bytes = number_before(line, "bytes spill loads").unwrap_or(0);
            } else if line.contains("Used") && line.contains("registers") {
                k.registers = number_before(line, "registers").unwrap_or(0);
                k.shared_bytes = number_before(line, "bytes smem").unwrap_or(0);
            }
        }
    }
    out
}
