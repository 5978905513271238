//! What happens to bench results besides the table: JSON lines (`--json FILE`, one object per
//! row, for gpu-check.sh's report) and `--compare-torch`, which times the same work
//! with PyTorch on the same GPU through the bundled benches/compare_torch.py and prints the
//! ratio.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use serde_json::{json, Value};

use super::step::StepTiming;
use super::{CopyTiming, GemmTiming, LayerTiming, LossTiming};
use crate::device::Device;
use crate::error::{Error, Result};

/// The comparison script, built into the binary so that `--compare-torch` works from any
/// folder (it is written to a temporary file and run with `python3`, or $EMRCLASS_PYTHON).
pub const TORCH_SCRIPT: &str = include_str!("../../benches/compare_torch.py");

/// A bench row: its JSON form, the work it timed and its total milliseconds.
pub trait Timed: Serialize {
    fn spec(&self) -> &Value;
    fn total_ms(&self) -> f64;
    fn label(&self) -> &str;
}

macro_rules! timed {
    ($t:ty, $ms:expr) => {
        impl Timed for $t {
            fn spec(&self) -> &Value {
                &self.spec
            }
            fn total_ms(&self) -> f64 {
                let ms: fn(&$t) -> f64 = $ms;
                ms(self)
            }
            fn label(&self) -> &str {
                &self.what
            }
        }
    };
}
timed!(CopyTiming, |r| r.ms);
timed!(GemmTiming, |r| r.ms);
timed!(LossTiming, |r| r.ms);
timed!(LayerTiming, |r| r.forward_ms + r.backward_ms);
timed!(StepTiming, |r| r.ms);

/// Where a bench run's results go besides the screen.
#[derive(Clone, Debug, Default)]
pub struct Outputs {
    pub json: Option<PathBuf>,
    pub compare_torch: bool,
    /// Timed repetitions PyTorch gets per row.
    pub reps: usize,
}

/// Writes the rows as JSON lines and, when asked, compares them with PyTorch.
pub fn finish<T: Timed>(dev: &Device, rows: &[T], out: &Outputs) -> Result<()> {
    for r in rows {
        let mut v = serde_json::to_value(r).map_err(|e| Error::Invalid(e.to_string()))?;
        v["device"] = json!(dev.describe());
        v["kind"] = json!("emrclass");
        append(out.json.as_deref(), &v)?;
    }
    if !out.compare_torch {
        return Ok(());
    }
    if !dev.is_cuda() {
        return Err(Error::Invalid(
            "--compare-torch needs --device cuda: PyTorch is timed on the same GPU".into(),
        ));
    }
    let specs: Vec<Value> = rows.iter().map(|r| r.spec().clone()).collect();
    let torch = run_torch(&specs, out.reps.max(1))?;
    println!(
        "{:<44} {:>12} {:>12} {:>10} {:>12}",
        "compared with PyTorch", "emrclass ms", "torch ms", "speed-up", "torch peak MiB"
    );
    for (r, t) in rows.iter().zip(&torch) {
        let torch_ms = t["ms"].as_f64().unwrap_or(f64::NAN);
        let speedup = torch_ms / r.total_ms();
        let peak = t["peak_bytes"]
            .as_f64()
            .map_or("-".into(), |b| format!("{:.1}", b / (1 << 20) as f64));
        println!(
            "{:<44} {:>12.3} {:>12.3} {:>9.2}x {:>12}",
            t["what"].as_str().unwrap_or("?"),
            r.total_ms(),
            torch_ms,
            speedup,
            peak
        );
        let mut v = t.clone();
        v["kind"] = json!("torch");
        v["emrclass_ms"] = json!(r.total_ms());
        v["emrclass_what"] = json!(r.label());
        v["speedup"] = json!(speedup);
        append(out.json.as_deref(), &v)?;
    }
    Ok(())
}

fn append(path: Option<&Path>, v: &Value) -> Result<()> {
    let Some(path) = path else { return Ok(()) };
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    writeln!(f, "{v}").map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
}

/// Runs the bundled script on the specs; one JSON object per spec comes back, in order.
pub fn run_torch(specs: &[Value], reps: usize) -> Result<Vec<Value>> {
    let python = std::env::var("EMRCLASS_PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        std::env::temp_dir().join(format!("emrclass-compare-torch-{}.py", std::process::id()));
    std::fs::write(&script, TORCH_SCRIPT)
        .map_err(|e| Error::Invalid(format!("{}: {e}", script.display())))?;
    let missing = |e: String| {
        Error::MissingLibrary {
        library: format!("Python with PyTorch ({python})"),
        how: format!(
            "--compare-torch runs {python} with torch and CUDA; install them or set EMRCLASS_PYTHON ({e})"
        ),
    }
    };
    let mut child = Command::new(&python)
        .arg(&script)
        .arg("time")
        .arg("--reps")
        .arg(reps.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| missing(e.to_string()))?;
    let input = serde_json::to_string(specs).map_err(|e| Error::Invalid(e.to_string()))?;
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .map_err(|e| missing(e.to_string()))?;
    let output = child
        .wait_with_output()
        .map_err(|e| missing(e.to_string()))?;
    let _ = std::fs::remove_file(&script);
    if !output.status.success() {
        return Err(missing(format!("the script exited with {}", output.status)));
    }
    let rows: Vec<Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).map_err(|e| Error::Invalid(format!("{e}: {l}"))))
        .collect::<Result<_>>()?;
    if rows.len() != specs.len() {
        return Err(Error::Invalid(format!(
            "the PyTorch script answered {} of {} rows",
            rows.len(),
            specs.len()
        )));
    }
    Ok(rows)
}
