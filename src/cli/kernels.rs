//! `emrclass kernels`: the static NVRTC report of every kernel.

use emrclass::{kernel_report, Result};

/// Compile every kernel with NVRTC for sm_61 and sm_90 and print registers, spills, shared
/// memory and GTX 1050 Ti occupancy. Needs NVRTC 12.x, no GPU.
#[derive(clap::Args)]
pub struct Args {
    /// Only these kernel files (e.g. `gemm attention`, with or without `.cu`); all by default.
    files: Vec<String>,
    /// Also write each file's CUBIN as DIR/FILE-ARCH.cubin (for `cuobjdump -sass`; see
    /// benches/pascal-model/sass_report.py).
    #[arg(long, value_name = "DIR")]
    cubin_dir: Option<std::path::PathBuf>,
}

pub fn run(a: &Args) -> Result<bool> {
    let rows = kernel_report::build_for(&a.files, a.cubin_dir.as_deref())?;
    kernel_report::print(&rows);
    let problems = kernel_report::problems(&rows);
    for p in &problems {
        eprintln!("problem: {p}");
    }
    Ok(problems.is_empty())
}
