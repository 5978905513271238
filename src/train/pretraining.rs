//! Pretraining's loop and its run folder (`emrclass pretrain`; the job around them is
//! `jobs::pretrain`). A step is one batch of masked sequences, or the sum of several
//! micro-batches (`--accumulate`, or the memory plan's split); the held-out perplexity is
//! measured before training, at every epoch's end and every `--eval-every` steps. The folder:
//!
//! - `checkpoint/`: the latest checkpoint (every `--checkpoint-every` steps, at each epoch's end
//!   and when interrupted): parameters, AdamW moments and where the run stands, written
//!   atomically (`checkpoint::save_slots`); what `--resume` continues from;
//! - `log.jsonl`: a line every `--log-every` steps (the step's loss and the mean since the last
//!   line, learning rate, gradient norm, masked tokens) and one per evaluation (held-out loss
//!   and perplexity; `epoch_end` at an epoch's end).
//!
//! Resuming is exact: batches, masks and dropout seeds are functions of the seed, the epoch and
//! the batch's index in it, so a resumed run takes the very steps the uninterrupted one takes.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::data::batching::bucketed_batches;
use crate::data::masking::{masked_batch, MaskTokens, MaskedBatch, MaskingRule, WordSequence};
use crate::distributed::{same_start, Collective, Digest};
use crate::error::{Error, Result};
use crate::model::masked_lm::MaskedLm;
use crate::say;

use super::checkpoint::{self, CheckpointState};
use super::folder_lock::FolderLock;
use super::optim::{Optimizer, Schedule};
use super::run_folder::Bar;
use super::trainer::{eat_parameters, finish_data_parallel_step};

/// Where a pretraining run stands; everything else follows from the settings and the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PretrainProgress {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch in progress (1-based; past the last when the run is done).
    pub epoch: usize,
    /// Micro-batches of that epoch done.
    pub batch: usize,
    /// The losses of the steps since the last log line: their sum and count.
    pub window: (f64, u64),
}

impl PretrainProgress {
    pub fn start() -> Self {
        PretrainProgress {
            epoch: 1,
            ..Default::default()
        }
    }
}

/// A pretraining checkpoint's `state.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PretrainState {
    pub format: u32,
    pub tensors: String,
    pub progress: PretrainProgress,
    /// The settings a resumed run must share (`key=value ...`, as `state::settings_pairs` reads).
    pub fingerprint: String,
}

impl CheckpointState for PretrainState {
    fn step(&self) -> u64 {
        self.progress.step
    }
    fn format(&self) -> u32 {
        self.format
    }
    fn tensors(&self) -> &str {
        &self.tensors
    }
    fn stamped(&self, format: u32, tensors: String) -> Self {
        PretrainState {
            format,
            tensors,
            ..self.clone()
        }
    }
}

/// What the loop trains on: the corpus's sequences, which of them train and which are held out.
pub struct Corpus<'a> {
    pub sequences: &'a [WordSequence],
    pub train_ids: &'a [usize],
    /// (index in the corpus, sequence) of the held-out sequences.
    pub eval: &'a [(usize, &'a WordSequence)],
    pub tokens: &'a MaskTokens,
    pub pad: i32,
}

/// How the loop steps and what it writes.
#[derive(Clone, Debug)]
pub struct LoopSettings {
    pub epochs: usize,
    /// Sequences per forward/backward pass.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step.
    pub accumulate: usize,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub clip: Option<f32>,
    pub seed: u64,
    pub rule: MaskingRule,
    pub log_every: u64,
    pub eval_every: u64,
    pub checkpoint_every: u64,
    /// Return right after this optimizer step, as if killed (tests of --resume).
    pub stop_after_steps: Option<u64>,
    pub quiet: bool,
}

impl LoopSettings {
    /// The learning-rate schedule over `train_sequences` (`Schedule::linear`).
    pub fn schedule(&self, train_sequences: usize) -> Schedule {
        Schedule::linear(
            self.lr,
            self.warmup_ratio,
            train_sequences,
            self.micro_batch,
            self.accumulate,
            self.epochs,
        )
    }
}

/// The dropout seed of the `batch`-th micro-batch of `epoch`: its position alone decides it.
fn dropout_seed(seed: u64, epoch: usize, batch: usize) -> u64 {
    let position = ((epoch as u64) << 40) ^ batch as u64;
    seed ^ position.wrapping_add(1).wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// One optimizer step over `batches` (their gradients summed, then scaled by 1/n: the mean of
/// the micro-batches' mean losses, as transformers' Trainer accumulates); returns that mean.
pub fn optimizer_step(
    model: &mut MaskedLm,
    opt: &mut Optimizer,
    batches: &[(MaskedBatch, u64)],
    lr: f32,
    clip: Option<f32>,
) -> Result<f32> {
    let dev = model.device().clone();
    let n = batches.len().max(1);
    let mut loss = 0.0f32;
    for (k, (b, seed)) in batches.iter().enumerate() {
        let _sum = (k > 0).then(|| dev.accumulate_gradients());
        loss += model.forward_backward(b, Some(*seed))? / n as f32;
    }
    opt.step_scaled(&mut model.slots(), lr, clip, 1.0 / n as f32)?;
    Ok(loss)
}

/// `optimizer_step` in a data-parallel world: this rank's micro-batches (`mine`, those
/// `offset..` of the step's `total`) accumulated, then `finish_data_parallel_step` (the sums and
/// the same step on every rank). Returns the mean loss and whether some rank was asked to stop.
#[allow(clippy::too_many_arguments)]
pub fn data_parallel_step(
    model: &mut MaskedLm,
    opt: &mut Optimizer,
    mine: &[(MaskedBatch, u64)],
    (offset, total): (usize, usize),
    lr: f32,
    clip: Option<f32>,
    collective: &mut (dyn Collective + '_),
) -> Result<(f32, bool)> {
    let dev = model.device().clone();
    let mut losses = vec![0.0f64; total + 1];
    for (k, (b, seed)) in mine.iter().enumerate() {
        let _sum = (k > 0).then(|| dev.accumulate_gradients());
        losses[offset + k] = model.forward_backward(b, Some(*seed))? as f64;
    }
    finish_data_parallel_step(
        collective,
        &mut model.slots(),
        !mine.is_empty(),
        &mut losses,
        opt,
        (lr, clip),
    )
}

/// Held-out loss and perplexity: the mean cross-entropy over every masked token of `eval`
/// (masked once, with epoch 0's masks, so every evaluation sees the same), and its exp. In a
/// data-parallel world each rank takes every world-th batch and the per-batch sums are summed
/// over the ranks (each rank filling its own), then added in batch order: one process's bits.
pub fn evaluate(
    model: &mut MaskedLm,
    corpus: &Corpus,
    s: &LoopSettings,
    collective: Option<&mut (dyn Collective + '_)>,
) -> Result<(f64, f64)> {
    let (rank, world) = collective.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
    let chunks: Vec<_> = corpus.eval.chunks(s.micro_batch.max(1)).collect();
    // Per batch: its loss times its masked tokens, and their count.
    let mut parts = vec![0.0f64; 2 * chunks.len()];
    for (k, chunk) in chunks.iter().enumerate().skip(rank).step_by(world) {
        let b = masked_batch(chunk, s.seed, 0, &s.rule, corpus.tokens, corpus.pad);
        if b.positions.is_empty() {
            continue;
        }
        let loss = model.eval_loss(&b)? as f64;
        parts[2 * k] = loss * b.positions.len() as f64;
        parts[2 * k + 1] = b.positions.len() as f64;
    }
    if let Some(c) = collective {
        c.all_reduce_host(&mut parts)?;
    }
    let (mut sum, mut count) = (0.0f64, 0usize);
    for pair in parts.chunks(2) {
        sum += pair[0];
        count += pair[1] as usize;
    }
    if count == 0 {
        return Err(Error::Invalid(
            "the held-out sequences hold no maskable token".into(),
        ));
    }
    let mean = sum / count as f64;
    Ok((mean, mean.exp()))
}

/// Trains from `p` to the last epoch (or an interrupt, or `stop_after_steps`), writing into
/// `folder` as it goes; returns where the run stands. In a data-parallel world (`collective`)
/// each step's micro-batches are shared out among the ranks as `train` shares them.
pub fn pretrain(
    model: &mut MaskedLm,
    opt: &mut Optimizer,
    corpus: &Corpus,
    s: &LoopSettings,
    folder: &mut PretrainFolder,
    mut p: PretrainProgress,
    mut collective: Option<&mut (dyn Collective + '_)>,
) -> Result<PretrainProgress> {
    let (rank, world) = collective.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
    if let Some(c) = collective.as_deref_mut() {
        let mut d = Digest::default();
        for v in [
            p.epoch as u64,
            p.batch as u64,
            opt.step,
            corpus.train_ids.len() as u64,
        ] {
            d.eat(v);
        }
        d.eat(corpus.eval.len() as u64);
        eat_parameters(&mut d, &model.slots())?;
        same_start(c, d.value())?;
    }
    if p.step == 0 && p.epoch == 1 && p.batch == 0 {
        folder.evaluation(model, corpus, s, &p, (0, true), collective.as_deref_mut())?;
    }
    let lengths: Vec<usize> = corpus
        .train_ids
        .iter()
        .map(|&i| corpus.sequences[i].ids.len())
        .collect();
    // A step is `accumulate` micro-batches on each rank: the schedule counts the world's steps.
    let schedule = LoopSettings {
        accumulate: s.accumulate.max(1) * world,
        ..s.clone()
    }
    .schedule(corpus.train_ids.len());
    let group = s.accumulate.max(1) * world;
    while p.epoch <= s.epochs {
        // The trainer's batching: sequences of like length together (little padding), the
        // batches in a new order every epoch; new masks too (the epoch is in each mask's seed).
        let batches = bucketed_batches(&lengths, s.micro_batch, s.seed, p.epoch as u64);
        while p.batch < batches.len() {
            // In a world the ranks agree on a stop in the step's sums instead (below).
            if world == 1 && crate::interrupt::requested().is_some() {
                return Ok(p);
            }
            let first = p.batch;
            let last = (first + group).min(batches.len());
            let micro: Vec<(MaskedBatch, u64)> = (first..last)
                .map(|k| {
                    let pairs: Vec<(usize, &WordSequence)> = batches[k]
                        .iter()
                        .map(|&i| {
                            let id = corpus.train_ids[i];
                            (id, &corpus.sequences[id])
                        })
                        .collect();
                    let b = masked_batch(
                        &pairs,
                        s.seed,
                        p.epoch as u64,
                        &s.rule,
                        corpus.tokens,
                        corpus.pad,
                    );
                    (b, dropout_seed(s.seed, p.epoch, k))
                })
                // Sequences too short to mask: nothing to learn from them.
                .filter(|(b, _)| !b.positions.is_empty())
                .collect();
            p.batch = last;
            if micro.is_empty() {
                continue;
            }
            let lr = schedule.lr(opt.step + 1) as f32;
            let a = s.accumulate.max(1);
            let mine = (rank * a).min(micro.len())..((rank + 1) * a).min(micro.len());
            let (loss, stop) = match collective.as_deref_mut() {
                None => (optimizer_step(model, opt, &micro, lr, s.clip)?, false),
                Some(c) => data_parallel_step(
                    model,
                    opt,
                    &micro[mine.clone()],
                    (mine.start, micro.len()),
                    lr,
                    s.clip,
                    c,
                )?,
            };
            p.step = opt.step;
            p.window.0 += loss as f64;
            p.window.1 += 1;
            if p.step.is_multiple_of(s.log_every.max(1)) {
                let mean = p.window.0 / p.window.1 as f64;
                p.window = (0.0, 0);
                let masked: usize = micro.iter().map(|(b, _)| b.positions.len()).sum();
                folder.log(json!({
                    "step": p.step, "epoch": p.epoch, "batch": p.batch, "loss": loss,
                    "loss_mean": mean, "lr": lr, "grad_norm": opt.grad_norm,
                    "masked_tokens": masked,
                }))?;
            }
            if s.eval_every > 0 && p.step.is_multiple_of(s.eval_every) && p.batch < batches.len() {
                folder.evaluation(
                    model,
                    corpus,
                    s,
                    &p,
                    (p.epoch, false),
                    collective.as_deref_mut(),
                )?;
            }
            if s.checkpoint_every > 0 && p.step.is_multiple_of(s.checkpoint_every) {
                folder.save_checkpoint(model, opt, &p)?;
            }
            if !s.quiet {
                let done: usize = batches[..p.batch].iter().map(Vec::len).sum();
                folder.bar.show(
                    format!("{}/{}", p.epoch, s.epochs),
                    done,
                    corpus.train_ids.len(),
                    "sequences",
                    format!("loss {loss:.4}  lr {lr:.2e}"),
                );
            }
            crate::crash::point("step");
            if s.stop_after_steps == Some(p.step) || stop {
                return Ok(p);
            }
        }
        folder.evaluation(
            model,
            corpus,
            s,
            &p,
            (p.epoch, true),
            collective.as_deref_mut(),
        )?;
        p.epoch += 1;
        p.batch = 0;
        // The epoch's commit point: a crash before it redoes the evaluation, not the epoch.
        folder.save_checkpoint(model, opt, &p)?;
    }
    Ok(p)
}

/// A pretraining run's folder while the run lives: this run's alone (`FolderLock`); a new run
/// that ends before its first checkpoint takes back all it wrote.
pub struct PretrainFolder {
    pub dir: PathBuf,
    pub fingerprint: String,
    pub bar: Bar,
    lock: Option<FolderLock>,
    /// A checkpoint of this run exists: from then on the folder is kept whatever happens.
    committed: bool,
    /// False for a data-parallel rank other than 0: it trains and evaluates, rank 0 writes.
    writes: bool,
}

impl PretrainFolder {
    /// `resumed`: the folder holds this run's checkpoint already.
    pub fn new(lock: FolderLock, resumed: bool, fingerprint: String) -> Self {
        PretrainFolder {
            dir: lock.dir.clone(),
            fingerprint,
            bar: Bar::default(),
            lock: Some(lock),
            committed: resumed,
            writes: true,
        }
    }

    /// A data-parallel rank's view of rank 0's folder `dir`: it reads a checkpoint from it
    /// under --resume, and writes nothing.
    pub fn of_rank_0(dir: PathBuf, fingerprint: String) -> Self {
        PretrainFolder {
            dir,
            fingerprint,
            bar: Bar::default(),
            lock: None,
            committed: true,
            writes: false,
        }
    }

    /// Whether this process writes the folder.
    pub fn writes(&self) -> bool {
        self.writes
    }

    pub fn checkpoint_dir(&self) -> PathBuf {
        self.dir.join("checkpoint")
    }

    /// Keeps the folder as it is, checkpoint or not (`--stop-after-steps`, standing in for a
    /// kill).
    pub fn keep(&mut self) {
        self.committed = true;
    }

    pub fn log(&self, line: serde_json::Value) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        let path = self.dir.join("log.jsonl");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        writeln!(f, "{line}").map_err(|e| Error::io(&path, e))
    }

    /// Measures the held-out perplexity and logs it (`epoch_end`: the evaluation that closes
    /// `epoch`, 0 before training).
    fn evaluation(
        &mut self,
        model: &mut MaskedLm,
        corpus: &Corpus,
        s: &LoopSettings,
        p: &PretrainProgress,
        (epoch, epoch_end): (usize, bool),
        collective: Option<&mut (dyn Collective + '_)>,
    ) -> Result<()> {
        let (loss, perplexity) = evaluate(model, corpus, s, collective)?;
        self.bar.clear();
        if epoch_end {
            say!("epoch {epoch}: held-out loss {loss:.4}, perplexity {perplexity:.2}");
        } else {
            say!(
                "step {}: held-out loss {loss:.4}, perplexity {perplexity:.2}",
                p.step
            );
        }
        self.log(json!({
            "step": p.step, "epoch": epoch, "eval_loss": loss, "eval_perplexity": perplexity,
            "epoch_end": epoch_end,
        }))
    }

    /// Writes the latest checkpoint (parameters, moments, `p`).
    pub fn save_checkpoint(
        &mut self,
        model: &mut MaskedLm,
        opt: &Optimizer,
        p: &PretrainProgress,
    ) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        let state = PretrainState {
            format: 0,
            tensors: String::new(),
            progress: p.clone(),
            fingerprint: self.fingerprint.clone(),
        };
        checkpoint::save_slots(&self.checkpoint_dir(), model.slots(), opt, &state)?;
        self.committed = true;
        Ok(())
    }

    /// On --resume: drops the log lines a killed run wrote after the checkpoint it resumes
    /// from (steps after `p.step`, and the closing evaluations of epochs not finished there),
    /// so the resumed run's lines are not doubled.
    pub fn truncate_log(&self, p: &PretrainProgress) -> Result<()> {
        if !self.writes {
            return Ok(());
        }
        let path = self.dir.join("log.jsonl");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let keep = |line: &str| match serde_json::from_str::<serde_json::Value>(line) {
            Ok(v) => {
                let step_done = v["step"].as_u64().is_some_and(|s| s <= p.step);
                let unfinished_epoch_end = v["epoch_end"].as_bool() == Some(true)
                    && v["epoch"].as_u64().is_some_and(|e| e as usize >= p.epoch);
                step_done && !unfinished_epoch_end
            }
            // A line cut by the kill.
            Err(_) => false,
        };
        let kept: String = text
            .lines()
            .filter(|l| keep(l))
            .map(|l| format!("{l}\n"))
            .collect();
        crate::weights::write_atomically(&path, kept.as_bytes())
    }
}

impl Drop for PretrainFolder {
    fn drop(&mut self) {
        self.bar.clear();
        if let Some(lock) = self.lock.take() {
            if !self.committed {
                lock.take_back();
            }
        }
    }
}

/// A run folder `emrclass pretrain` wrote: its run.json says so.
pub fn is_pretraining_run(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("run.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["command"] == "pretrain")
}

/// Reads the checkpoint `--resume` continues from in `dir`.
pub fn resume_state(dir: &Path) -> Result<PretrainState> {
    checkpoint::read_state(&dir.join("checkpoint"))
}
