//! `emrclass report`: a run's (or an experiment's) `report.html`, or several runs' curves.

use std::path::PathBuf;

use emrclass::Result;

/// Write RUN/report.html: the run's learning curves, per-class F1 against class size, the
/// confusion heat map, GHM's gradient-norm histogram and the settings (an experiment folder:
/// its heads x losses table and chart). `train` and `experiment` write it themselves.
#[derive(clap::Args)]
pub struct Args {
    /// The run (or experiment) folder to report on.
    #[arg(long, required_unless_present = "compare")]
    run: Option<PathBuf>,
    /// Instead: overlay the learning curves of these run folders into --out (an HTML page,
    /// with each chart beside it as an SVG).
    #[arg(long, num_args = 1.., conflicts_with = "run", requires = "out")]
    compare: Vec<PathBuf>,
    /// The page `--compare` writes.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: &Args) -> Result<bool> {
    let written = match (&a.run, &a.out) {
        (Some(run), _) => vec![emrclass::report::write(run)?],
        (None, Some(out)) => emrclass::report::compare(&a.compare, out)?,
        (None, None) => unreachable!("clap requires --run or --compare with --out"),
    };
    for path in written {
        eprintln!("wrote {}", path.display());
    }
    Ok(true)
}
