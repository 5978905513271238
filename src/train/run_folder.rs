//! A training run's folder and what the loop reports into it:
//!
//! - `checkpoint/`: the latest checkpoint (every `--checkpoint-every` steps and at each epoch's
//!   end), what `--resume` continues from;
//! - `best/`: the checkpoint of the best epoch by dev macro-F1;
//! - `log.jsonl`: one line every `--log-every` steps (step, epoch, the step's loss and the mean
//!   loss since the previous line, learning rate, gradient norm) and one
//!   per epoch (loss, dev accuracy, macro/micro/weighted F1, seconds, samples/s);
//! - `confusion.csv` / `confusion.json`: the best epoch's dev confusion matrix (rows: truth);
//! - `report.json`: the best epoch's full dev report.
//!
//! - `run.json`: data sizes and class counts, class weights, model, settings and device;
//! - `report.html`: all of it as plots and tables (`crate::report`), at the end of the run.
//!
//! On the terminal: an indicatif progress bar (samples, loss, learning rate, rate, ETA) on
//! stderr unless `--quiet`, and one line per epoch.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::error::{Error, Result};

use super::checkpoint;
use super::folder_lock::FolderLock;
use super::metrics::Confusion;
use super::optim::Optimizer;
use super::state::{Progress, RunInfo, State};
use super::trainer::{rate_text, Classifier, EpochLog, Event};
use crate::weights::write_atomically;

/// How often the loop writes, and what the bar shows.
pub struct FolderSettings {
    pub checkpoint_every: u64,
    pub quiet: bool,
    pub epochs: usize,
}

pub struct RunFolder {
    pub dir: PathBuf,
    pub settings: FolderSettings,
    pub info: RunInfo,
    /// The terminal's progress bar.
    bar: Bar,
    /// The folder, this run's alone while it lives.
    lock: Option<FolderLock>,
    /// A checkpoint of this run exists: from then on the folder is kept whatever happens. A new
    /// run that fails before its first checkpoint takes back all it wrote (`Drop`).
    committed: bool,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

impl RunFolder {
    /// The run's folder, claimed (`FolderLock::claim`); `resumed`: it holds this run's
    /// checkpoint already.
    pub fn new(
        lock: FolderLock,
        resumed: bool,
        settings: FolderSettings,
        info: RunInfo,
    ) -> Result<Self> {
        Ok(RunFolder {
            dir: lock.dir.clone(),
            settings,
            info,
            bar: Bar::default(),
            lock: Some(lock),
            committed: resumed,
        })
    }

    /// Keeps the folder as it is, checkpoint or not (`--stop-after-steps`, standing in for a
    /// kill).
    pub fn keep(&mut self) {
        self.committed = true;
    }

    /// Writes the latest checkpoint now (an interrupted run's last act).
    pub fn save_checkpoint(
        &mut self,
        model: &mut Classifier,
        opt: &Optimizer,
        p: &Progress,
    ) -> Result<()> {
        self.clear_bar();
        let state = self.state(model, p)?;
        checkpoint::save(&self.checkpoint_dir(), model, opt, &state)?;
        self.committed = true;
        Ok(())
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    /// On --resume: drops the log lines a killed run wrote after the checkpoint it resumes from
    /// (steps after `p.step`, epochs not yet finished there), so the resumed run's lines are not
    /// doubled.
    pub fn truncate_log(&self, p: &Progress) -> Result<()> {
        let path = self.dir.join("log.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let finished = p.finished.iter().map(|e| e.epoch).max().unwrap_or(0);
        let keep = |line: &str| match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => match (v["step"].as_u64(), v["epoch"].as_u64()) {
                (Some(step), _) => step <= p.step,
                (None, Some(epoch)) => epoch as usize <= finished,
                (None, None) => true,
            },
            // A line cut by the kill.
            Err(_) => false,
        };
        let kept: String = text
            .lines()
            .filter(|l| keep(l))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomically(&path, kept.as_bytes())
    }

    fn state(&self, model: &Classifier, p: &Progress) -> Result<State> {
        let (ghm_ema, ghm_steps) = model.loss.state()?;
        Ok(State {
            format: 0,
            progress: p.clone(),
            ghm_ema,
            ghm_steps,
            run: self.info.clone(),
            tensors: String::new(),
        })
    }

    fn log(&self, line: serde_json::Value) -> Result<()> {
        let path = self.dir.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| io(&path, e))
    }

    /// The training loop's callback.
    pub fn on_event(
        &mut self,
        model: &mut Classifier,
        opt: &Optimizer,
        p: &Progress,
        event: Event,
    ) -> Result<()> {
        match event {
            Event::Step {
                loss,
                window_mean,
                lr,
                done,
                records,
            } => {
                if let Some(mean) = window_mean {
                    // `loss`: this step's batch; `loss_mean`: every step since the last line.
                    self.log(json!({"step": p.step, "epoch": p.epoch, "batch": p.batch, "loss": loss, "loss_mean": mean, "lr": lr, "grad_norm": opt.grad_norm}))?;
                }
                if self.settings.checkpoint_every > 0
                    && p.step.is_multiple_of(self.settings.checkpoint_every)
                {
                    let state = self.state(model, p)?;
                    checkpoint::save(&self.checkpoint_dir(), model, opt, &state)?;
                    self.committed = true;
                }
                if !self.settings.quiet {
                    self.progress_bar(p, loss, lr, done, records);
                }
                crate::crash::point("step");
            }
            Event::Eval { step, dev } => {
                self.clear_bar();
                crate::say!(
                    "step {step:>6}  dev acc {:.4}  macro-F1 {:.4}  micro-F1 {:.4}",
                    dev.accuracy,
                    dev.macro_avg.f1,
                    dev.micro_avg.f1
                );
                self.log(json!({
                    "step": step, "epoch": p.epoch, "dev_accuracy": dev.accuracy,
                    "dev_macro_f1": dev.macro_avg.f1, "dev_micro_f1": dev.micro_avg.f1,
                    "dev_weighted_f1": dev.weighted_avg.f1,
                }))?;
            }
            Event::Epoch { log, best } => {
                self.clear_bar();
                crate::say!(
                    "epoch {:>2}  loss {:.4}  dev acc {:.4}  macro-F1 {:.4}  micro-F1 {:.4}  {:.1} s  {} samples/s{}{}",
                    log.epoch, log.mean_loss, log.dev.accuracy, log.dev.macro_avg.f1, log.dev.micro_avg.f1,
                    log.seconds, rate_text(log.samples_per_second),
                    log.sum_seconds.map_or_else(String::new, |t| format!(
                        "  sums {t:.1} s ({:.0}%)", 100.0 * t / log.seconds.max(1e-9)
                    )),
                    if best { "  (best)" } else { "" }
                );
                let mut line = json!({
                    "epoch": log.epoch, "end_step": p.step, "loss": log.mean_loss,
                    "dev_accuracy": log.dev.accuracy, "dev_macro_f1": log.dev.macro_avg.f1,
                    "dev_micro_f1": log.dev.micro_avg.f1, "dev_weighted_f1": log.dev.weighted_avg.f1,
                    "seconds": log.seconds, "samples_per_second": log.samples_per_second,
                    "best": best,
                });
                if let Some(t) = log.sum_seconds {
                    line["sum_seconds"] = json!(t);
                }
                let state = self.state(model, p)?;
                // GHM's moving histogram of gradient norms (what it re-weights), for the report;
                // the weight each bin's examples get from it; whether it re-weights yet.
                if !state.ghm_ema.is_empty() {
                    line["ghm_ema"] = json!(state.ghm_ema);
                    line["ghm_beta"] = json!(crate::model::loss::ghm_bin_beta(&state.ghm_ema));
                    line["ghm_weighting"] = json!(model.loss.ghm_weighting());
                }
                self.log(line)?;
                // The best epoch's files first, the latest checkpoint (the commit point of the
                // epoch) last: a crash between them resumes before this epoch and rewrites both.
                if best {
                    checkpoint::save(&self.dir.join("best"), model, opt, &state)?;
                    self.write_best(log)?;
                }
                checkpoint::save(&self.checkpoint_dir(), model, opt, &state)?;
                self.committed = true;
            }
        }
        Ok(())
    }

    /// The bar: records of the epoch done (not padded batches), loss, learning rate.
    fn progress_bar(&mut self, p: &Progress, loss: f32, lr: f32, done: usize, records: usize) {
        self.bar.show(
            format!("{}/{}", p.epoch, self.settings.epochs),
            done,
            records,
            "records",
            format!("loss {loss:.4}  lr {lr:.2e}"),
        );
    }

    fn clear_bar(&mut self) {
        self.bar.clear();
    }

    /// `run.json`: what the report needs beside the logs (data sizes and class counts, class
    /// weights, model, settings, device), written once at the start.
    pub fn describe(&self, description: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(description)
            .map_err(|e| io(&self.dir.join("run.json"), e))?;
        write_atomically(&self.dir.join("run.json"), text.as_bytes())
    }

    /// The best epoch's confusion matrix (CSV and JSON) and full report.
    fn write_best(&self, log: &EpochLog) -> Result<()> {
        let c: &Confusion = &log.dev.confusion;
        let k = c.classes;
        let mut csv = String::from("truth\\predicted");
        for name in &self.info.labels {
            csv.push(',');
            csv.push_str(&csv_field(name));
        }
        csv.push('\n');
        for t in 0..k {
            csv.push_str(&csv_field(
                self.info.labels.get(t).map_or("?", |s| s.as_str()),
            ));
            for p in 0..k {
                csv.push_str(&format!(",{}", c.counts[t * k + p]));
            }
            csv.push('\n');
        }
        let matrix: Vec<&[u64]> = c.counts.chunks(k.max(1)).collect();
        let files = [
            ("confusion.csv", csv),
            (
                "confusion.json",
                json!({"epoch": log.epoch, "labels": self.info.labels, "matrix": matrix})
                    .to_string(),
            ),
            (
                "report.json",
                json!({"epoch": log.epoch, "labels": self.info.labels, "report": log.dev})
                    .to_string(),
            ),
        ];
        for (name, text) in files {
            write_atomically(&self.dir.join(name), text.as_bytes())?;
        }
        Ok(())
    }
}

impl Drop for RunFolder {
    /// A new run that ends before its first checkpoint (an error, a panic) leaves nothing:
    /// what it wrote goes, and the folder too when the run made it.
    fn drop(&mut self) {
        self.clear_bar();
        if let Some(lock) = self.lock.take() {
            if !self.committed {
                lock.take_back();
            }
        }
    }
}

/// The terminal's progress bar (indicatif: hidden when stderr is not a terminal): the epoch's
/// items done of all, a message, this process's rate (`-` until a second has passed: one
/// step's time says little) and the time left.
#[derive(Default)]
pub struct Bar(Option<(indicatif::ProgressBar, std::time::Instant, usize)>);

impl Bar {
    /// Shows `done` of `total` `unit` in epoch `prefix`, with `message`.
    pub fn show(&mut self, prefix: String, done: usize, total: usize, unit: &str, message: String) {
        let (bar, started, first) = self.0.get_or_insert_with(|| {
            let bar = indicatif::ProgressBar::new(total as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template(&format!(
                    "epoch {{prefix}} [{{bar:24}}] {{pos}}/{{len}} {unit}  {{msg}}"
                ))
                .expect("a valid template")
                .progress_chars("#>."),
            );
            (bar, std::time::Instant::now(), done)
        });
        let seconds = started.elapsed().as_secs_f64();
        let rate = (seconds >= 1.0).then(|| (done.saturating_sub(*first)) as f64 / seconds);
        let eta = match rate {
            Some(r) if r > 0.0 => format!("  ETA {:.0} s", (total - done.min(total)) as f64 / r),
            _ => String::new(),
        };
        bar.set_length(total as u64);
        bar.set_prefix(prefix);
        bar.set_message(format!("{message}  {} {unit}/s{eta}", rate_text(rate)));
        bar.set_position(done as u64);
    }

    /// Takes the bar off the terminal (before a line is printed, and at the end).
    pub fn clear(&mut self) {
        if let Some((bar, _, _)) = self.0.take() {
            bar.finish_and_clear();
        }
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// A cell's run folder: HEAD-LOSS, or HEAD-LOSS-seedN when the grid runs several seeds.
pub fn cell_folder(cell: &str, seed: u64, seeds: usize) -> String {
    if seeds > 1 {
        format!("{cell}-seed{seed}")
    } else {
        cell.to_string()
    }
}
