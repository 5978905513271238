//! `emrclass experiment`: the paper's comparison grid (heads x losses, one encoder setting) on
//! one data set, each cell run once per seed, with its tables in the paper's form (ACC,
//! macro-F1, micro-F1; mean ± standard deviation over the seeds) printed and written as CSV and
//! markdown after every run, so a stopped grid keeps what it finished. A cell's loss is called
//! the winner of its head only when its mean macro-F1 beats every other loss's by more than the
//! larger of the two standard deviations.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::device::Device;
use crate::distributed::World;
use crate::error::{Error, Result};
use crate::model::heads::HeadKind;
use crate::model::loss::LossKind;

use super::train::{out_to_resume, run};
use crate::options::{default_lr, TrainOptions};
use crate::train::folder_lock::{FolderLock, EXPERIMENT_FILE};
use crate::train::metrics::mean_std;
use crate::train::run_folder::cell_folder;
use crate::train::trainer::per_second;

pub struct ExperimentOptions {
    /// Everything but the head and the loss, shared by every run.
    pub base: TrainOptions,
    pub heads: Vec<HeadKind>,
    pub losses: Vec<LossKind>,
    /// Each cell runs once per seed (the base's seed when empty).
    pub seeds: Vec<u64>,
    /// One learning rate for every cell; None: each head's default (`options::default_lr`).
    pub lr: Option<f64>,
    /// Folder for results.csv and results.md.
    pub out: PathBuf,
}

/// One finished run: its best epoch by dev macro-F1.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub head: HeadKind,
    pub loss: LossKind,
    pub seed: u64,
    pub best_epoch: usize,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub micro_f1: f64,
    pub seconds: f64,
    /// None when the runs took no measurable time.
    pub samples_per_second: Option<f64>,
}

/// Runs every head with every loss; returns the outcomes in run order.
pub fn run_grid(dev: &Device, o: &ExperimentOptions, describe: &str) -> Result<Vec<Outcome>> {
    if o.heads.is_empty() || o.losses.is_empty() {
        return Err(Error::Invalid(
            "experiment: no heads or no losses to run".into(),
        ));
    }
    // In a data-parallel world every run of the grid trains on all ranks; rank 0 alone writes.
    let world = World::from_env()?.filter(|w| w.size > 1);
    if let Some(w) = &world {
        let refused: Vec<&str> = o
            .losses
            .iter()
            .filter(|l| matches!(l, LossKind::GhmC | LossKind::GhmCs))
            .map(|l| l.name())
            .collect();
        let accumulate = o.base.settings.accumulate;
        if !refused.is_empty() && accumulate > 1 {
            return Err(Error::Invalid(format!(
                "rank {} of {}: --losses {} with --accumulate {accumulate} are not data parallel \
                 (each micro-batch's GHM weights need the histogram of all before it in the \
                 step): leave them out, drop --accumulate, or run the grid in one process",
                w.rank,
                w.size,
                refused.join(",")
            )));
        }
    }
    let writes = world.as_ref().is_none_or(|w| w.rank == 0);
    // The grid's folder, this grid's alone; its runs' folders inside are each claimed by
    // their run.
    let lock = match writes {
        true => Some(FolderLock::claim(&o.out, o.base.start(), "--out")?),
        false => None,
    };
    let root = lock
        .as_ref()
        .map_or_else(|| o.out.clone(), |l| l.dir.clone());
    // What marks the folder as an experiment's (its runs' folders are then its own to replace
    // under --overwrite).
    if writes {
        crate::weights::write_atomically(
            &root.join(EXPERIMENT_FILE),
            serde_json::json!({"settings": describe, "heads": o.heads.iter().map(|h| h.name()).collect::<Vec<_>>(), "losses": o.losses.iter().map(|l| l.name()).collect::<Vec<_>>()}).to_string().as_bytes(),
        )?;
    }
    let seeds = if o.seeds.is_empty() {
        vec![o.base.settings.seed]
    } else {
        o.seeds.clone()
    };
    let mut outcomes = Vec::new();
    for &head in &o.heads {
        for &loss in &o.losses {
            for &seed in &seeds {
                let cell = format!("{}-{}", head.name(), loss.name());
                crate::say!("\n=== {cell}, seed {seed}");
                let mut opts = o.base.clone();
                opts.head = head;
                opts.loss = loss;
                opts.settings.seed = seed;
                opts.settings.lr = o.lr.unwrap_or_else(|| default_lr(head));
                opts.out = root.join(cell_folder(&cell, seed, seeds.len()));
                opts.overwrite = false;
                opts.numbered_out = false;
                // Under --resume, a run that had begun continues; one that had not starts, over
                // what it left before its first checkpoint (a killed first epoch).
                opts.resume = o.base.resume && opts.out.join("checkpoint/state.json").exists();
                opts.overwrite = o.base.resume && !opts.resume && opts.out.exists();
                let logs = run(dev, &opts)?;
                if !writes {
                    if let Some(signal) = crate::interrupt::requested() {
                        return Err(Error::Interrupted {
                            signal,
                            message: format!("interrupted after {cell}, seed {seed}"),
                        });
                    }
                    continue;
                }
                if opts.resume {
                    outcomes.push(outcome_from_log(&opts.out, head, loss, seed)?);
                    write_tables(&root, &outcomes, &o.losses, describe)?;
                    crate::report::write(&root)?;
                    continue;
                }
                let best = logs
                    .iter()
                    .max_by(|a, b| a.dev.macro_avg.f1.total_cmp(&b.dev.macro_avg.f1))
                    .ok_or_else(|| Error::Invalid("experiment: a run with no epochs".into()))?;
                let seconds: f64 = logs.iter().map(|e| e.seconds).sum();
                outcomes.push(Outcome {
                    head,
                    loss,
                    seed,
                    best_epoch: best.epoch,
                    accuracy: best.dev.accuracy,
                    macro_f1: best.dev.macro_avg.f1,
                    micro_f1: best.dev.micro_avg.f1,
                    seconds,
                    samples_per_second: per_second(logs.iter().map(|e| e.samples).sum(), seconds),
                });
                write_tables(&root, &outcomes, &o.losses, describe)?;
                crate::report::write(&root)?;
                if let Some(signal) = crate::interrupt::requested() {
                    return Err(Error::Interrupted {
                        signal,
                        message: format!(
                            "interrupted after {cell}, seed {seed}; continue the grid with the same command and --resume{}",
                            out_to_resume(o.base.numbered_out, &root)
                        ),
                    });
                }
            }
        }
    }
    drop(lock);
    crate::say!("\n{}", markdown(&outcomes, &o.losses, describe));
    Ok(outcomes)
}

/// A resumed run's outcome, over all its epochs (those of earlier processes too), from the
/// epoch lines of its log.jsonl.
fn outcome_from_log(dir: &Path, head: HeadKind, loss: LossKind, seed: u64) -> Result<Outcome> {
    let path = dir.join("log.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let epochs: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("end_step").is_some())
        .collect();
    let f = |v: &serde_json::Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let best = epochs
        .iter()
        .max_by(|a, b| f(a, "dev_macro_f1").total_cmp(&f(b, "dev_macro_f1")))
        .ok_or_else(|| Error::Invalid(format!("{}: no finished epoch", path.display())))?;
    let seconds: f64 = epochs.iter().map(|v| f(v, "seconds")).sum();
    let samples: f64 = epochs
        .iter()
        .map(|v| f(v, "seconds") * v["samples_per_second"].as_f64().unwrap_or(0.0))
        .sum();
    Ok(Outcome {
        head,
        loss,
        seed,
        best_epoch: best["epoch"].as_u64().unwrap_or(0) as usize,
        accuracy: f(best, "dev_accuracy"),
        macro_f1: f(best, "dev_macro_f1"),
        micro_f1: f(best, "dev_micro_f1"),
        seconds,
        samples_per_second: per_second(samples.round() as usize, seconds),
    })
}

/// One cell over its seeds: macro-F1 mean and standard deviation, and how many runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CellScore {
    pub mean: f64,
    pub std: f64,
    pub runs: usize,
}

pub fn cell_score(outcomes: &[Outcome], head: HeadKind, loss: LossKind) -> Option<CellScore> {
    let v: Vec<f64> = outcomes
        .iter()
        .filter(|r| r.head == head && r.loss == loss)
        .map(|r| r.macro_f1)
        .collect();
    (!v.is_empty()).then(|| {
        let (mean, std) = mean_std(&v);
        CellScore {
            mean,
            std,
            runs: v.len(),
        }
    })
}

/// The loss that wins a head's row: the best mean macro-F1, if it beats every other loss's mean
/// by more than the larger of the two standard deviations (so not within the seed spread).
pub fn winner(cells: &[(LossKind, CellScore)]) -> Option<LossKind> {
    let (best, b) = cells.iter().max_by(|x, y| x.1.mean.total_cmp(&y.1.mean))?;
    cells
        .iter()
        .filter(|(l, _)| l != best)
        .all(|(_, c)| b.mean - c.mean > b.std.max(c.std))
        .then_some(*best)
}

/// The long table (one row per run, as in the paper) and a pivot of macro-F1 (heads x losses,
/// mean ± std over the seeds, the winner in bold when it is outside the spread).
pub fn markdown(outcomes: &[Outcome], losses: &[LossKind], describe: &str) -> String {
    let mut s = format!("{describe}\n\n| model | loss | seed | ACC | macro-F1 | micro-F1 | best epoch | train s |\n|---|---|---|---|---|---|---|---|\n");
    for r in outcomes {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {:.4} | {:.4} | {:.4} | {} | {:.1} |",
            r.head.name(),
            r.loss.name(),
            r.seed,
            r.accuracy,
            r.macro_f1,
            r.micro_f1,
            r.best_epoch,
            r.seconds
        );
    }
    let seeds = {
        let mut v: Vec<u64> = outcomes.iter().map(|r| r.seed).collect();
        v.sort_unstable();
        v.dedup();
        v.len()
    };
    let _ = write!(
        s,
        "\nmacro-F1 by head and loss{}:\n\n| model |",
        if seeds > 1 {
            " (mean ± std over the seeds; bold: the winner, ahead by more than the spread)"
        } else {
            ""
        }
    );
    for l in losses {
        let _ = write!(s, " {} |", l.name());
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
        let cells: Vec<(LossKind, CellScore)> = losses
            .iter()
            .filter_map(|&l| Some((l, cell_score(outcomes, h, l)?)))
            .collect();
        let win = if seeds > 1 { winner(&cells) } else { None };
        let _ = write!(s, "| {} |", h.name());
        for l in losses {
            match cells.iter().find(|c| c.0 == *l) {
                Some((_, c)) if seeds > 1 => {
                    let text = format!("{:.4} ± {:.4}", c.mean, c.std);
                    if win == Some(*l) {
                        let _ = write!(s, " **{text}** |");
                    } else {
                        let _ = write!(s, " {text} |");
                    }
                }
                Some((_, c)) => {
                    let _ = write!(s, " {:.4} |", c.mean);
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
        "model,loss,seed,accuracy,macro_f1,micro_f1,best_epoch,train_seconds,samples_per_second\n",
    );
    for r in outcomes {
        let _ = writeln!(
            s,
            "{},{},{},{:.6},{:.6},{:.6},{},{:.2},{}",
            r.head.name(),
            r.loss.name(),
            r.seed,
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
