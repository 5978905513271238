//! NVRTC: finding the library, compiling a kernel file to CUBIN for one architecture, caching
//! the result on disk, and reading ptxas's resource report (registers, spills, shared memory).
//!
//! NVRTC needs no GPU, so the static kernel report runs on any machine that has the library.
//! NVRTC 12.x is required for sm_61: CUDA 13 dropped Pascal.

use std::ffi::{CStr, CString};
use std::path::PathBuf;

use super::kernels::{KernelFile, COMMON_HEADER};
use crate::error::{Error, Result};

mod library;

pub use library::{how_to_get_nvrtc, locate, search_dirs, Nvrtc, NVRTC_FILE, NVRTC_WHEEL};

/// Loads NVRTC once per process (see `library` for the order it is searched in).
pub fn ensure_loaded() -> Result<()> {
    Nvrtc::get().map(|_| ())
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32)> {
    Ok(Nvrtc::get()?.version)
}

/// "NVRTC 12.9 (/path/to/libnvrtc.so.12)": the library in use, for reports and errors.
pub fn describe() -> Result<String> {
    Ok(Nvrtc::get()?.describe())
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
    let nvrtc = Nvrtc::get()?;
    let src = CString::new(full_source(file))
        .map_err(|_| Error::Invalid(format!("{} holds a NUL byte", file.name)))?;
    let name = CString::new(file.name).unwrap();
    let opts: Vec<CString> = options(arch)
        .into_iter()
        .map(|o| CString::new(o).expect("options hold no NUL"))
        .collect();
    let opt_refs: Vec<&CStr> = opts.iter().map(|o| o.as_c_str()).collect();
    let prog = nvrtc.create_program(&src, &name)?;
    // SAFETY: prog is a live program from create_program; it is destroyed exactly once below,
    // after the log and CUBIN have been copied out.
    unsafe {
        let out = nvrtc.compile_program(prog, &opt_refs).and_then(|ok| {
            let log = nvrtc.program_log(prog).unwrap_or_default();
            if ok {
                nvrtc.cubin(prog).map(|cubin| Compiled { cubin, log })
            } else {
                Err(Error::Compile {
                    file: file.name.into(),
                    arch: arch.into(),
                    nvrtc: nvrtc.describe(),
                    log,
                })
            }
        });
        nvrtc.destroy_program(prog);
        out
    }
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
