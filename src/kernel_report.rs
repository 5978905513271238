//! The static kernel report: every kernel compiled by NVRTC to CUBIN for sm_61 (GTX 1050 Ti)
//! and sm_90, with ptxas's registers, spills and shared memory, and the theoretical occupancy
//! on a GTX 1050 Ti. `emrclass kernels` prints it; tests/nvrtc_report.rs enforces its rules.

use crate::device::nvrtc::{self, KernelResources};
use crate::device::{KERNELS, KERNEL_FILES, MAX_SHARED_BYTES_PER_BLOCK};
use crate::error::{Error, Result};

pub const ARCHS: [&str; 2] = ["sm_61", "sm_90"];

/// GTX 1050 Ti (GP107, sm_61): per-SM limits that decide occupancy.
pub struct SmLimits {
    pub sms: u32,
    pub registers: u32,
    pub shared_bytes: u32,
    pub threads: u32,
    pub blocks: u32,
}
pub const GTX_1050_TI: SmLimits = SmLimits {
    sms: 6,
    registers: 65536,
    shared_bytes: 96 * 1024,
    threads: 2048,
    blocks: 32,
};

pub struct ReportRow {
    pub kernel: String,
    pub file: &'static str,
    pub arch: &'static str,
    pub hot: bool,
    pub threads_per_block: u32,
    pub resources: KernelResources,
}

/// Resident blocks per SM and the occupancy (resident warps / 64) on `sm`, with what limits it.
/// Registers are allocated per warp in units of 256 (8 per thread); shared memory in 256 bytes.
pub fn occupancy(
    sm: &SmLimits,
    registers: u32,
    shared_bytes: u32,
    threads: u32,
) -> (u32, f64, &'static str) {
    let warps = threads.div_ceil(32);
    let regs_per_warp = (registers * 32).div_ceil(256) * 256;
    let by_regs = if regs_per_warp == 0 {
        u32::MAX
    } else {
        sm.registers / (regs_per_warp * warps)
    };
    let by_smem = if shared_bytes == 0 {
        u32::MAX
    } else {
        sm.shared_bytes / shared_bytes.div_ceil(256).max(1) / 256
    };
    let by_threads = sm.threads / (warps * 32);
    let mut limits = [
        (by_regs, "registers"),
        (by_smem, "shared memory"),
        (by_threads, "threads"),
        (sm.blocks, "blocks"),
    ];
    limits.sort_by_key(|l| l.0);
    let (blocks, limiter) = limits[0];
    (
        blocks,
        (blocks * warps) as f64 / (sm.threads / 32) as f64,
        limiter,
    )
}

/// Compiles every engine kernel file for each architecture and collects ptxas's report.
pub fn build() -> Result<Vec<ReportRow>> {
    build_for(&[], None)
}

/// Writes DIR/STEM-ARCH.cubin (e.g. gemm-sm_61.cubin), the machine code the engine would load:
/// `cuobjdump -sass` or `nvdisasm` read it (benches/pascal-model/sass_report.py).
fn write_cubin(dir: &std::path::Path, file: &str, arch: &str, cubin: &[u8]) -> Result<()> {
    let stem = file.trim_end_matches(".cu");
    let path = dir.join(format!("{stem}-{arch}.cubin"));
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(&path, cubin))
        .map_err(|e| Error::io(&path, e))
}

/// The report of the named kernel files only (`gemm` or `gemm.cu`); every file when none is
/// named. An unknown name is an error listing the files there are. With `cubin_dir`, each
/// file's CUBIN for each architecture is written there too.
pub fn build_for(names: &[String], cubin_dir: Option<&std::path::Path>) -> Result<Vec<ReportRow>> {
    let engine_files = || KERNEL_FILES.iter().filter(|f| !f.test_only);
    for name in names {
        let wanted = name.trim_end_matches(".cu");
        if !engine_files().any(|f| f.name.trim_end_matches(".cu") == wanted) {
            let known: Vec<&str> = engine_files().map(|f| f.name).collect();
            return Err(Error::Invalid(format!(
                "no kernel file `{name}`; the files are: {}",
                known.join(", ")
            )));
        }
    }
    let chosen = |f: &&crate::device::KernelFile| {
        names.is_empty()
            || names
                .iter()
                .any(|n| n.trim_end_matches(".cu") == f.name.trim_end_matches(".cu"))
    };
    let mut rows = Vec::new();
    for file in engine_files().filter(chosen) {
        for arch in ARCHS {
            let compiled = nvrtc::compile(file, arch)?;
            if let Some(dir) = cubin_dir {
                write_cubin(dir, file.name, arch, &compiled.cubin)?;
            }
            let found = nvrtc::parse_ptxas_report(&compiled.log);
            for k in KERNELS.iter().filter(|k| k.file == file.name) {
                let resources = found
                    .iter()
                    .find(|r| r.name == k.name)
                    .cloned()
                    .ok_or_else(|| {
                        Error::Invalid(format!(
                            "ptxas reported nothing for {} ({}, {arch}):\n{}",
                            k.name, file.name, compiled.log
                        ))
                    })?;
                rows.push(ReportRow {
                    kernel: k.name.to_string(),
                    file: file.name,
                    arch,
                    hot: k.hot,
                    threads_per_block: crate::ops::threads_per_block(k.name),
                    resources,
                });
            }
        }
    }
    Ok(rows)
}

/// Broken rules: spills in a hot kernel (any arch), more shared memory than sm_61 allows.
pub fn problems(rows: &[ReportRow]) -> Vec<String> {
    let mut out = Vec::new();
    for r in rows {
        let res = &r.resources;
        if r.hot && (res.spill_store_bytes > 0 || res.spill_load_bytes > 0) {
            out.push(format!(
                "{} ({}): hot kernel spills {} bytes stored / {} loaded",
                r.kernel, r.arch, res.spill_store_bytes, res.spill_load_bytes
            ));
        }
        if r.arch == "sm_61" && res.shared_bytes > MAX_SHARED_BYTES_PER_BLOCK {
            out.push(format!(
                "{}: {} bytes of static shared memory, over sm_61's {MAX_SHARED_BYTES_PER_BLOCK} per block",
                r.kernel, res.shared_bytes
            ));
        }
    }
    out
}

pub fn print(rows: &[ReportRow]) {
    let library = nvrtc::describe().unwrap_or_else(|e| e.to_string());
    println!("{library}");
    println!("occupancy is theoretical, on a GTX 1050 Ti (6 SMs, 64K registers, 96 KiB shared, 2048 threads per SM)");
    println!(
        "{:<28} {:<16} {:<6} {:>4} {:>5} {:>7} {:>6} {:>7} {:>8}  occupancy (sm_61)",
        "kernel", "file", "arch", "hot", "regs", "smem", "stack", "spills", "threads",
    );
    for r in rows {
        let res = &r.resources;
        let occ = if r.arch == "sm_61" {
            let (blocks, occ, limiter) = occupancy(
                &GTX_1050_TI,
                res.registers,
                res.shared_bytes,
                r.threads_per_block,
            );
            format!("{:>3.0}% ({blocks} blocks/SM, {limiter})", occ * 100.0)
        } else {
            String::new()
        };
        println!(
            "{:<28} {:<16} {:<6} {:>4} {:>5} {:>7} {:>6} {:>7} {:>8}  {}",
            r.kernel,
            r.file,
            r.arch,
            if r.hot { "hot" } else { "" },
            res.registers,
            res.shared_bytes,
            res.stack_bytes,
            res.spill_store_bytes + res.spill_load_bytes,
            r.threads_per_block,
            occ
        );
    }
}
