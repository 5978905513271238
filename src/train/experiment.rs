//! `emrclass experiment`: the paper's comparison grid (heads x losses, one encoder setting) on
//! one data set, with its tables in the paper's form (ACC, macro-F1, micro-F1) printed and
//! written as CSV and markdown after every run, so a stopped grid keeps what it finished.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::heads::HeadKind;
use crate::model::loss::LossKind;

use super::command::{run, TrainOptions};

pub struct ExperimentOptions {
    /// Everything but the head and the loss, shared by every run.
    pub base: TrainOptions,
    pub heads: Vec<HeadKind>,
    pub losses: Vec<LossKind>,
    /// Folder for results.csv and results.md.
    pub out: PathBuf,
}

/// One finished run: its best epoch by dev macro-F1.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub head: HeadKind,
    pub loss: LossKind,
    pub best_epoch: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub micro_f1: f64,
    pub seconds: f64,
    /// None when the runs took no measurable time.
    pub samples_per_second: Option<f64>,
}

/// The paper's names for the heads and losses.
pub fn head_name(h: HeadKind) -> &'static str {
    match h {
        HeadKind::Cls => "cls",
        HeadKind::TextCnn => "textcnn",
        HeadKind::BiGru => "bigru",
        HeadKind::BiLstm => "bilstm",
        HeadKind::TextCnnBiGru => "textcnn-bigru",
        HeadKind::Paper => "paper",
    }
}

pub fn loss_name(l: LossKind) -> &'static str {
    match l {
        LossKind::CrossEntropy => "ce",
        LossKind::WeightedCrossEntropy => "wce",
        LossKind::Focal => "focal",
        LossKind::GhmC => "ghm",
        LossKind::GhmCs => "ghm-cs",
    }
}

/// Runs every head with every loss; returns the outcomes in run order.
pub fn run_grid(dev: &Device, o: &ExperimentOptions, describe: &str) -> Result<Vec<Outcome>> {
    if o.heads.is_empty() || o.losses.is_empty() {
        return Err(Error::Invalid(
            "experiment: no heads or no losses to run".into(),
        ));
    }
    std::fs::create_dir_all(&o.out)
        .map_err(|e| Error::Invalid(format!("{}: {e}", o.out.display())))?;
    let mut outcomes = Vec::new();
    for &head in &o.heads {
        for &loss in &o.losses {
            println!("\n=== {} + {}", head_name(head), loss_name(loss));
            let mut opts = o.base.clone();
            opts.head = head;
            opts.loss = loss;
            opts.out = o
                .out
                .join(format!("{}-{}", head_name(head), loss_name(loss)));
            let logs = run(dev, &opts)?;
            let best = logs
                .iter()
                .max_by(|a, b| a.dev.macro_avg.f1.total_cmp(&b.dev.macro_avg.f1))
                .ok_or_else(|| Error::Invalid("experiment: a run with no epochs".into()))?;
            let seconds: f64 = logs.iter().map(|e| e.seconds).sum();
            outcomes.push(Outcome {
                head,
                loss,
                best_epoch: best.epoch,
                accuracy: best.dev.accuracy,
                macro_f1: best.dev.macro_avg.f1,
                micro_f1: best.dev.micro_avg.f1,
                seconds,
                samples_per_second: super::trainer::per_second(
                    logs.iter().map(|e| e.samples).sum(),
                    seconds,
                ),
            });
            write_tables(&o.out, &outcomes, &o.losses, describe)?;
            crate::report::write(&o.out)?;
        }
    }
    println!("\n{}", markdown(&outcomes, &o.losses, describe));
    Ok(outcomes)
}

/// The long table (one row per run, as in the paper) and a pivot of macro-F1 (heads x losses).
pub fn markdown(outcomes: &[Outcome], losses: &[LossKind], describe: &str) -> String {
    let mut s = format!("{describe}\n\n| model | loss | ACC | macro-F1 | micro-F1 | best epoch | train s |\n|---|---|---|---|---|---|---|\n");
    for r in outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {:.4} | {:.4} | {:.4} | {} | {:.1} |",
            head_name(r.head),
            loss_name(r.loss),
            r.accuracy,
            r.macro_f1,
            r.micro_f1,
            r.best_epoch,
            r.seconds
        );
    }
    s.push_str("\nmacro-F1 by head and loss:\n\n| model |");
    for l in losses {
        let _ = write!(s, " {} |", loss_name(*l));
    }
    s.push_str("\n|---|");
    s.push_str(&"---|".repeat(losses.len()));
    s.push('\n');
    let mut heads: Vec<HeadKind> = Vec::new();
    for r in outcomes {
        if !heads.contains(&r.head) {
            heads.push(r.head);
        }
    }
    for h in heads {
        let _ = write!(s, "| {} |", head_name(h));
        for l in losses {
            match outcomes.iter().find(|r| r.head == h && r.loss == *l) {
                Some(r) => {
                    let _ = write!(s, " {:.4} |", r.macro_f1);
                }
                None => s.push_str(" - |"),
            }
        }
        s.push('\n');
    }
    s
}

fn csv(outcomes: &[Outcome]) -> String {
    let mut s = String::from(
        "model,loss,accuracy,macro_f1,micro_f1,best_epoch,train_seconds,samples_per_second\n",
    );
    for r in outcomes {
        let _ = writeln!(
            s,
            "{},{},{:.6},{:.6},{:.6},{},{:.2},{}",
            head_name(r.head),
            loss_name(r.loss),
            r.accuracy,
            r.macro_f1,
            r.micro_f1,
            r.best_epoch,
            r.seconds,
            r.samples_per_second
                .map_or_else(String::new, |v| format!("{v:.1}"))
        );
    }
    s
}

/// Writes results.csv and results.md, each through a temporary file and a rename.
fn write_tables(
    out: &Path,
    outcomes: &[Outcome],
    losses: &[LossKind],
    describe: &str,
) -> Result<()> {
    for (name, text) in [
        ("results.csv", csv(outcomes)),
        ("results.md", markdown(outcomes, losses, describe)),
    ] {
        crate::weights::write_atomically(&out.join(name), text.as_bytes())?;
    }
    Ok(())
}
