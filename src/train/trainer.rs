//! The classifier and its training loop: an input path (trainable character embeddings, or a
//! BERT encoder), a head, a loss; AdamW with warm-up/decay and clipping; evaluation each epoch,
//! the best epoch's metrics kept. (Checkpoints, resume, the frozen-encoder cache, progress bars
//! and the experiment grid are the rest of issue 6.)

use crate::data::batching::{bucketed_batches, pad};
use crate::data::tokenizer::TokenBatch;
use crate::device::{Buffer, Role};
use crate::distributed::{same_start, Collective, Digest};
use crate::error::{Error, Result};
use crate::model::bert::BertEncoder;
use crate::rng::Rng;

use super::features::FeatureStore;
use crate::model::embedding::Embedding;
use crate::model::heads::Head;
use crate::model::loss::{ClassificationLoss, SharedGhm};
use crate::model::slot::Slot;
use crate::model::window_pool::{Pool, WindowPool};
use crate::ops;

use super::metrics::{report, Confusion, Metric, Report};
use super::optim::{Optimizer, Schedule};
use super::state::{EpochRecord, Progress};

pub enum Input {
    /// Trainable token embeddings: the paper's non-pretrained baselines.
    Embeddings(Embedding),
    /// A BERT encoder, fine-tuned with the head.
    Encoder(Box<BertEncoder>),
    /// A frozen encoder's cached outputs: only the head trains.
    Features {
        store: Box<FeatureStore>,
        device: crate::device::Device,
    },
}

/// One micro-batch of a step: padded tokens, labels and its dropout seed.
pub struct MicroBatch {
    pub tokens: TokenBatch,
    pub labels: Vec<i32>,
    pub seed: u64,
    /// Windows (token rows) per record, in order, under `--long-text chunks`; empty: one row
    /// per record.
    pub windows: Vec<usize>,
}

/// Records as the model reads them: each its token windows (one unless `--long-text chunks`).
pub type Windows = Vec<Vec<i32>>;

/// The padded windows of `records` and each record's window count.
pub fn record_batch(records: &[&Windows]) -> (TokenBatch, Vec<usize>) {
    let rows: Vec<&[i32]> = records
        .iter()
        .flat_map(|r| r.iter().map(Vec::as_slice))
        .collect();
    (pad(&rows), records.iter().map(|r| r.len()).collect())
}

pub struct Classifier {
    pub input: Input,
    pub head: Head,
    pub loss: ClassificationLoss,
    /// How a record read as several windows pools their logits (`--chunk-pool`).
    pub window_pool: Pool,
}

/// Real tokens per row of a padded batch.
fn lengths(b: &TokenBatch) -> Vec<i32> {
    b.attention_mask
        .chunks(b.len)
        .map(|r| r.iter().sum())
        .collect()
}

impl Classifier {
    /// Logits [batch, classes]; dropout on with a seed.
    pub fn forward(&mut self, b: &TokenBatch, seed: Option<u64>) -> Result<Buffer<f32>> {
        let lens = lengths(b);
        let _role = self.loss.device().role(Role::Activations);
        match &mut self.input {
            Input::Embeddings(e) => {
                let tokens = e.forward(&b.input_ids)?;
                self.head.forward(&tokens, &lens, b.len, None, seed)
            }
            Input::Encoder(enc) => {
                let types = Some(b.token_type_ids.as_slice());
                let (hidden, pooled) = match seed {
                    // Training: keep what backward needs.
                    Some(_) => {
                        enc.forward(&b.input_ids, &b.attention_mask, types, b.batch, seed)?
                    }
                    // Inference (predict, evaluate): keep nothing.
                    None => enc.infer(&b.input_ids, &b.attention_mask, types, b.batch)?,
                };
                self.head.forward(hidden, &lens, b.len, Some(pooled), seed)
            }
            Input::Features { store, device } => {
                let (hidden, pooled) =
                    store.gather(device, &b.input_ids, &b.attention_mask, b.batch)?;
                self.head
                    .forward(&hidden, &lens, b.len, Some(&pooled), seed)
            }
        }
    }

    /// One optimisation step on a batch at learning rate `lr`; returns the loss.
    pub fn train_step(
        &mut self,
        b: &TokenBatch,
        labels: &[i32],
        seed: u64,
        opt: &mut Optimizer,
        lr: f32,
        s: &TrainSettings,
    ) -> Result<f32> {
        let loss = self.backward_step(b, labels, seed)?;
        self.step_parameters(opt, lr, s)?;
        Ok(loss)
    }

    /// AdamW on the gradients in place.
    fn step_parameters(&mut self, opt: &mut Optimizer, lr: f32, s: &TrainSettings) -> Result<()> {
        let mut slots = self.slots(s.input_lr_scale);
        opt.step(&mut slots, lr, s.clip).map(|_| ())
    }

    /// `train_step` on a micro-batch of records.
    fn train_micro_batch(
        &mut self,
        m: &MicroBatch,
        opt: &mut Optimizer,
        lr: f32,
        s: &TrainSettings,
    ) -> Result<f32> {
        let loss = self.backward_records(&m.tokens, &m.windows, &m.labels, m.seed)?;
        self.step_parameters(opt, lr, s)?;
        Ok(loss)
    }

    /// Forward, loss and backward on a batch: every parameter's gradient is overwritten with
    /// this batch's. Returns the loss.
    pub fn backward_step(&mut self, b: &TokenBatch, labels: &[i32], seed: u64) -> Result<f32> {
        self.backward_records(b, &[], labels, seed)
    }

    /// `backward_step` over records of `windows[r]` token rows each (empty: one each), whose
    /// logits pool their windows' (`window_pool`).
    pub fn backward_records(
        &mut self,
        b: &TokenBatch,
        windows: &[usize],
        labels: &[i32],
        seed: u64,
    ) -> Result<f32> {
        self.backward_records_shared(b, windows, labels, seed, None)
    }

    /// `backward_records` as one micro-batch of a data-parallel step (GHM's histogram then
    /// takes the whole step's, `ClassificationLoss::forward_backward_shared`).
    fn backward_records_shared(
        &mut self,
        b: &TokenBatch,
        windows: &[usize],
        labels: &[i32],
        seed: u64,
        shared: Option<SharedGhm<'_>>,
    ) -> Result<f32> {
        let logits = self.forward(b, Some(seed))?;
        let classes = logits.len() / b.batch.max(1);
        let mut pool = self.pool_windows(b, windows)?;
        let logits = match &mut pool {
            Some(p) => p.forward(&logits, classes)?,
            None => logits,
        };
        let mut dlogits = logits.device().alloc::<f32>(logits.len(), "dlogits")?;
        let loss = self
            .loss
            .forward_backward_shared(&logits, labels, &mut dlogits, shared)?
            .loss;
        if let Some(p) = &pool {
            dlogits = p.backward(&dlogits, classes)?;
        }
        let g = self.head.backward(&dlogits)?;
        match &mut self.input {
            Input::Embeddings(e) => e.backward(
                g.tokens
                    .as_ref()
                    .ok_or_else(|| Error::Invalid("head returned no token gradient".into()))?,
            )?,
            Input::Encoder(enc) => enc.backward(g.tokens.as_ref(), g.sentence.as_ref())?,
            Input::Features { .. } => {}
        }
        Ok(loss)
    }

    /// One optimizer step: on the batch alone when `s.accumulate` is 1, else on the mean
    /// gradient of the micro-batches, summed in place in the parameters' gradient buffers (the
    /// device accumulates after the first). Returns the mean loss. The trainer and the memory
    /// planner both step through here.
    pub fn optimizer_step(
        &mut self,
        micro_batches: &[MicroBatch],
        opt: &mut Optimizer,
        lr: f32,
        s: &TrainSettings,
    ) -> Result<f32> {
        if s.accumulate.max(1) == 1 {
            let mut loss = 0.0;
            for m in micro_batches {
                loss = self.train_micro_batch(m, opt, lr, s)?;
            }
            return Ok(loss);
        }
        let dev = self.loss.device().clone();
        let n = micro_batches.len();
        let mut loss = 0.0f32;
        for (k, m) in micro_batches.iter().enumerate() {
            let _sum = (k > 0).then(|| dev.accumulate_gradients());
            loss += self.backward_records(&m.tokens, &m.windows, &m.labels, m.seed)? / n as f32;
        }
        let mut slots = self.slots(s.input_lr_scale);
        opt.step_scaled(&mut slots, lr, s.clip, 1.0 / n.max(1) as f32)?;
        Ok(loss)
    }

    /// One optimizer step of a data-parallel world: this rank's share of the step's
    /// micro-batches (`mine`, the micro-batches `offset..` of the step's `total`) accumulated
    /// as `optimizer_step` does, the gradients summed over the ranks bucket by bucket, then the
    /// same step on every rank on the mean gradient. Every rank gets every micro-batch's loss
    /// (each rank fills its own, the others add zeros), so the mean loss is the one a single
    /// process computes; with the step's stop flags, so all ranks stop after the same step.
    /// Returns the mean loss and whether some rank was asked to stop.
    #[allow(clippy::too_many_arguments)]
    pub fn data_parallel_step(
        &mut self,
        mine: &[MicroBatch],
        offset: usize,
        total: usize,
        opt: &mut Optimizer,
        lr: f32,
        s: &TrainSettings,
        collective: &mut (dyn Collective + '_),
    ) -> Result<(f32, bool)> {
        let dev = self.loss.device().clone();
        let ghm = self.loss.uses_ghm();
        let bins = self.loss.config().ghm_bins;
        // Decided on what every rank shares (a short last step leaves some ranks fewer), so
        // that all refuse together and none waits in an exchange.
        if ghm && s.accumulate.max(1) > 1 {
            return Err(Error::Invalid(format!(
                "GHM in a data-parallel world takes one micro-batch per rank and step, not {} \
                 (--accumulate or the memory plan's split): each needs the histogram of all \
                 before it",
                s.accumulate
            )));
        }
        let mut losses = vec![0.0f64; total + 1];
        for (k, m) in mine.iter().enumerate() {
            let _sum = (k > 0).then(|| dev.accumulate_gradients());
            let position = offset + k;
            let mut send = |counts: &[i32]| {
                exchange_ghm_counts(&mut *collective, total, bins, Some((position, counts)))
            };
            let shared = ghm.then_some(SharedGhm {
                position,
                exchange: &mut send,
            });
            losses[position] = self
                .backward_records_shared(&m.tokens, &m.windows, &m.labels, m.seed, shared)?
                as f64;
        }
        if ghm && mine.is_empty() {
            // No micro-batch here this step (an epoch's short last one): the others' counts
            // still move this rank's histogram, as every rank's must move alike.
            let all = exchange_ghm_counts(collective, total, bins, None)?;
            self.loss.apply_ghm_counts(&all)?;
        }
        let mut slots = self.slots(s.input_lr_scale);
        finish_data_parallel_step(
            collective,
            &mut slots,
            !mine.is_empty(),
            &mut losses,
            opt,
            (lr, s.clip),
        )
    }

    /// Every trained parameter with its gradient, by name: the head's, then the input path's.
    /// The encoder's pooler trains only under a head that reads the pooled [CLS]; under the
    /// others it gets no gradient, and (as in PyTorch, where its `.grad` stays None) no step:
    /// no weight decay, no moments.
    pub fn slots(&mut self, input_lr_scale: f32) -> Vec<Slot<'_>> {
        let pooler = self.head.config.uses_sentence();
        let mut slots = self.head.slots(1.0);
        match &mut self.input {
            Input::Embeddings(e) => slots.extend(e.slots("embeddings", input_lr_scale)),
            Input::Encoder(enc) => slots.extend(
                enc.slots(input_lr_scale)
                    .into_iter()
                    .filter(|s| pooler || !s.name.starts_with("pooler.")),
            ),
            Input::Features { .. } => {}
        }
        slots
    }

    /// The pool over each record's windows, when some record has more than one.
    fn pool_windows(&self, b: &TokenBatch, windows: &[usize]) -> Result<Option<WindowPool>> {
        if windows.is_empty() {
            return Ok(None);
        }
        WindowPool::new(self.loss.device(), windows, b.batch, self.window_pool)
    }

    /// Predicted class and class probabilities of every row.
    pub fn predict(&mut self, b: &TokenBatch) -> Result<Vec<(usize, Vec<f32>)>> {
        self.predict_records(b, &[])
    }

    /// Predicted class and class probabilities of every record of `windows[r]` rows (empty:
    /// one row each), from its windows' pooled logits.
    pub fn predict_records(
        &mut self,
        b: &TokenBatch,
        windows: &[usize],
    ) -> Result<Vec<(usize, Vec<f32>)>> {
        let logits = self.forward(b, None)?;
        let k = logits.len() / b.batch.max(1);
        let logits = match self.pool_windows(b, windows)? {
            Some(mut p) => p.forward(&logits, k)?,
            None => logits,
        };
        let rows = logits.len() / k.max(1);
        let mut probs = logits
            .device()
            .alloc::<f32>(logits.len(), "probabilities")?;
        ops::softmax_rows_forward(&logits, &mut probs, rows, k)?;
        let host = probs.to_host()?;
        Ok(host
            .chunks(k)
            .map(|row| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold(0, |bi, (i, &v)| if v > row[bi] { i } else { bi });
                (best, row.to_vec())
            })
            .collect())
    }

    /// Metrics over records (their token windows) with their labels.
    pub fn evaluate(
        &mut self,
        records: &[Windows],
        labels: &[usize],
        classes: usize,
        batch_size: usize,
    ) -> Result<Report> {
        self.evaluate_on(records, labels, classes, batch_size, None)
    }

    /// `evaluate`, in a data-parallel world shared out: each rank predicts every world-th
    /// batch (the same batches, padded the same, as one process) and the confusion counts are
    /// summed over the ranks, so the metrics are exactly one process's.
    pub fn evaluate_on(
        &mut self,
        records: &[Windows],
        labels: &[usize],
        classes: usize,
        batch_size: usize,
        collective: Option<&mut (dyn Collective + '_)>,
    ) -> Result<Report> {
        let (rank, world) = collective.as_ref().map_or((0, 1), |c| (c.rank(), c.size()));
        let mut conf = Confusion::new(classes);
        let order: Vec<usize> = (0..records.len()).collect();
        for chunk in order.chunks(batch_size.max(1)).skip(rank).step_by(world) {
            let (b, windows) =
                record_batch(&chunk.iter().map(|&i| &records[i]).collect::<Vec<_>>());
            for (&i, (p, _)) in chunk.iter().zip(self.predict_records(&b, &windows)?) {
                conf.add(labels[i], p)?;
            }
        }
        if let Some(c) = collective {
            let mut counts: Vec<f64> = conf.counts.iter().map(|&n| n as f64).collect();
            c.all_reduce_host(&mut counts)?;
            conf.counts = counts.iter().map(|&n| n as u64).collect();
        }
        Ok(report(&conf))
    }
}

/// GHM's bin counts of a data-parallel step's `total` micro-batches, every rank's in place:
/// this rank sends its micro-batch's (`mine`: its position and counts; None when it has none)
/// and gets them all, in the one process's order. Counts are integers, so the f64 sums are
/// exact.
fn exchange_ghm_counts(
    collective: &mut (dyn Collective + '_),
    total: usize,
    bins: usize,
    mine: Option<(usize, &[i32])>,
) -> Result<Vec<Vec<i32>>> {
    let mut values = vec![0.0f64; total * bins];
    if let Some((position, counts)) = mine {
        for (v, &n) in values[position * bins..][..bins].iter_mut().zip(counts) {
            *v = n as f64;
        }
    }
    collective.all_reduce_host(&mut values)?;
    Ok(values
        .chunks(bins)
        .map(|c| c.iter().map(|&n| n as i32).collect())
        .collect())
}

/// The rest of a data-parallel step, once this rank's micro-batches are in `slots`' gradients
/// and their losses in `losses` (its own places; the others zero; one more place, for the stop
/// flag): zeros from a rank that had no micro-batch (an epoch's short last step), the sums, the
/// step on the mean gradient. Returns the mean loss, a single process's bits, and whether some
/// rank was asked to stop (then this one stops with it).
pub fn finish_data_parallel_step(
    collective: &mut (dyn Collective + '_),
    slots: &mut [crate::model::slot::Slot],
    had_micro_batches: bool,
    losses: &mut [f64],
    opt: &mut Optimizer,
    (lr, clip): (f32, Option<f32>),
) -> Result<(f32, bool)> {
    if !had_micro_batches {
        for slot in slots.iter_mut() {
            slot.grad.fill_zero()?;
        }
    }
    let total = losses.len() - 1;
    losses[total] = crate::interrupt::requested().is_some() as u8 as f64;
    collective.all_reduce_host(losses)?;
    sum_gradients(collective, slots)?;
    opt.step_scaled(slots, lr, clip, 1.0 / total.max(1) as f32)?;
    let mut loss = 0.0f32;
    for l in &losses[..total] {
        loss += *l as f32 / total as f32;
    }
    let stop = losses[total] > 0.0;
    if stop {
        crate::interrupt::stop_with_the_world();
    }
    Ok((loss, stop))
}

/// Gradients summed over the ranks in buckets of about 25 MiB (DDP's default), from the last
/// parameters to the first, the order backward finishes them in.
fn sum_gradients(
    collective: &mut dyn Collective,
    slots: &mut [crate::model::slot::Slot],
) -> Result<()> {
    const BUCKET_BYTES: usize = 25 << 20;
    let mut bucket: Vec<&mut Buffer<f32>> = Vec::new();
    let mut bytes = 0;
    for slot in slots.iter_mut().rev() {
        bytes += slot.grad.bytes();
        bucket.push(&mut *slot.grad);
        if bytes >= BUCKET_BYTES {
            collective.all_reduce_sum(&mut bucket)?;
            bucket.clear();
            bytes = 0;
        }
    }
    if !bucket.is_empty() {
        collective.all_reduce_sum(&mut bucket)?;
    }
    Ok(())
}

#[derive(Clone, Debug)]
pub struct TrainSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    /// Learning-rate multiplier of the input path (embeddings or encoder) against the head's.
    pub input_lr_scale: f32,
    pub warmup_fraction: f64,
    pub weight_decay: f32,
    pub clip: Option<f32>,
    pub seed: u64,
    /// Micro-batches per optimizer step (gradient accumulation): an effective batch of
    /// batch_size x accumulate.
    pub accumulate: usize,
    /// fp32 or 8-bit AdamW moments.
    pub optimizer: super::optim::OptimizerKind,
}

impl Default for TrainSettings {
    fn default() -> Self {
        TrainSettings {
            // The library's short default (its tests); `train`'s own is 6 (README, "The
            // protocol for the defaults").
            epochs: 3,
            batch_size: 32,
            lr: 2e-3,
            input_lr_scale: 1.0,
            warmup_fraction: 0.1,
            weight_decay: 0.01,
            clip: Some(1.0),
            seed: 1,
            accumulate: 1,
            optimizer: Default::default(),
        }
    }
}

pub struct EpochLog {
    pub epoch: usize,
    pub mean_loss: f64,
    pub dev: Report,
    pub seconds: f64,
    /// Training records this run stepped through in the epoch.
    pub samples: usize,
    /// None when the epoch took no measurable time.
    pub samples_per_second: Option<f64>,
    /// In a data-parallel world: the seconds of the epoch's training this rank spent in the
    /// sums (moving gradients and losses, waiting for the slowest rank).
    pub sum_seconds: Option<f64>,
}

/// `count` per second, or None below a millisecond (a rate the clock cannot measure).
pub fn per_second(count: usize, seconds: f64) -> Option<f64> {
    (seconds >= 1e-3).then(|| count as f64 / seconds)
}

/// A rate for the terminal: `-` when not measurable.
pub fn rate_text(rate: Option<f64>) -> String {
    rate.map_or_else(|| "-".to_string(), |r| format!("{r:.0}"))
}

/// Records (their token windows) and their class indices.
pub struct Split {
    pub records: Vec<Windows>,
    pub labels: Vec<usize>,
}

/// What the loop reports as it goes.
pub enum Event<'e> {
    /// After each optimizer step: its loss; every `log_every` steps the mean loss since the
    /// previous such step; the records of the epoch trained on so far, of `records`.
    Step {
        loss: f32,
        window_mean: Option<f64>,
        lr: f32,
        done: usize,
        records: usize,
    },
    /// After each epoch's evaluation; `best` when its dev metric is the best so far.
    Epoch { log: &'e EpochLog, best: bool },
    /// A dev evaluation every `eval_every` steps within an epoch (logged; the best checkpoint
    /// and early stopping go by the epochs' evaluations).
    Eval { step: u64, dev: &'e Report },
}

/// What the loop does besides training: where it starts, early stopping, a stop for tests, and
/// a callback (checkpoints, logs, progress) that may borrow the model and optimizer.
pub struct Control<'a> {
    /// `Progress::start()`, or a restored checkpoint's.
    pub progress: Progress,
    /// Stop after this many epochs without a better dev metric.
    pub patience: Option<usize>,
    /// The dev metric for the best epoch and early stopping.
    pub metric: Metric,
    /// Also evaluate on the dev set every N optimizer steps (0: per epoch only).
    pub eval_every: u64,
    /// Report the mean loss every N optimizer steps (`Event::Step::window_mean`).
    pub log_every: u64,
    /// Return right after this optimizer step, as if killed (tests of --resume).
    pub stop_after_steps: Option<u64>,
    pub on_event: &'a mut dyn FnMut(&mut Classifier, &Optimizer, &Progress, Event) -> Result<()>,
    /// A data-parallel world (`distributed`): each step's micro-batches are shared out among
    /// its ranks, the gradients and the dev counts summed over them. None: this process alone.
    pub collective: Option<&'a mut dyn Collective>,
}

/// Trains from `ctl.progress` to `settings.epochs` (or early stopping), evaluating on the dev
/// set after each epoch. Batches and dropout seeds follow from the seed, the epoch and the step
/// alone, so a run resumed from a checkpoint continues exactly as the uninterrupted run.
/// Returns the epochs run here and where the run stands.
pub fn train(
    model: &mut Classifier,
    opt: &mut Optimizer,
    train_set: &Split,
    dev_set: &Split,
    classes: usize,
    s: &TrainSettings,
    ctl: &mut Control,
) -> Result<(Vec<EpochLog>, Progress)> {
    let (train_records, train_labels) = (&train_set.records, &train_set.labels);
    // Tokens per record (all its windows): what bucketing groups by.
    let lens: Vec<usize> = train_records
        .iter()
        .map(|r| r.iter().map(Vec::len).sum())
        .collect();
    let micro = s.accumulate.max(1);
    let (rank, world) = ctl
        .collective
        .as_ref()
        .map_or((0, 1), |c| (c.rank(), c.size()));
    // A step is `micro` micro-batches on each rank: the schedule counts the world's steps.
    let schedule = schedule(
        &TrainSettings {
            accumulate: micro * world,
            ..s.clone()
        },
        train_records.len(),
    );
    let mut p = ctl.progress.clone();
    if let Some(c) = ctl.collective.as_deref_mut() {
        let digest = start_digest(model, opt, &p, (train_set, dev_set, classes), s)?;
        same_start(c, digest)?;
    }
    // One dropout seed per batch, drawn in order: skip those of the batches already trained.
    let batches_per_epoch = train_records.len().div_ceil(s.batch_size.max(1));
    let mut seeds = Rng::new(s.seed);
    for _ in 0..(p.epoch.saturating_sub(1) * batches_per_epoch + p.batch) {
        seeds.next_u64();
    }
    let mut logs = Vec::new();
    while p.epoch <= s.epochs {
        if ctl.patience.is_some_and(|n| p.bad_epochs >= n) {
            break;
        }
        let start = std::time::Instant::now();
        let sums_before = ctl.collective.as_ref().map(|c| c.seconds());
        let batches = bucketed_batches(&lens, s.batch_size, s.seed, p.epoch as u64);
        let first = p.batch;
        for group in batches[first.min(batches.len())..].chunks(micro * world) {
            // A first Ctrl-C or SIGTERM: stop between steps (the caller checkpoints). In a
            // world, the ranks agree on it in the step's sums instead (below).
            if world == 1 && crate::interrupt::requested().is_some() {
                return Ok((logs, p));
            }
            let lr = schedule.lr(opt.step + 1) as f32;
            // Every rank draws every micro-batch's seed; it builds only its own micro-batches.
            let group_seeds: Vec<u64> = group.iter().map(|_| seeds.next_u64()).collect();
            let mine = (rank * micro).min(group.len())..((rank + 1) * micro).min(group.len());
            let micro_batches: Vec<MicroBatch> = group[mine.clone()]
                .iter()
                .zip(&group_seeds[mine.clone()])
                .map(|(idx, &seed)| {
                    let (tokens, windows) =
                        record_batch(&idx.iter().map(|&i| &train_records[i]).collect::<Vec<_>>());
                    MicroBatch {
                        tokens,
                        labels: idx.iter().map(|&i| train_labels[i] as i32).collect(),
                        seed,
                        windows,
                    }
                })
                .collect();
            let (loss, stop) = match ctl.collective.as_deref_mut() {
                None => (model.optimizer_step(&micro_batches, opt, lr, s)?, false),
                Some(c) => model.data_parallel_step(
                    &micro_batches,
                    mine.start,
                    group.len(),
                    opt,
                    lr,
                    s,
                    c,
                )?,
            };
            p.loss_sum += loss as f64 * group.len() as f64;
            p.batch += group.len();
            p.step = opt.step;
            p.window.0 += loss as f64;
            p.window.1 += 1;
            let window_mean = p.step.is_multiple_of(ctl.log_every.max(1)).then(|| {
                let mean = p.window.0 / p.window.1 as f64;
                p.window = (0.0, 0);
                mean
            });
            let ev = Event::Step {
                loss,
                window_mean,
                lr,
                done: batches[..p.batch].iter().map(Vec::len).sum(),
                records: train_records.len(),
            };
            (ctl.on_event)(model, opt, &p, ev)?;
            if ctl.stop_after_steps == Some(p.step) || stop {
                return Ok((logs, p));
            }
            if ctl.eval_every > 0
                && p.step.is_multiple_of(ctl.eval_every)
                && p.batch < batches.len()
            {
                let dev = model.evaluate_on(
                    &dev_set.records,
                    &dev_set.labels,
                    classes,
                    s.batch_size,
                    ctl.collective.as_deref_mut(),
                )?;
                (ctl.on_event)(
                    model,
                    opt,
                    &p,
                    Event::Eval {
                        step: p.step,
                        dev: &dev,
                    },
                )?;
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        let sum_seconds = ctl
            .collective
            .as_ref()
            .zip(sums_before)
            .map(|(c, before)| c.seconds() - before);
        let samples: usize = batches[first.min(batches.len())..]
            .iter()
            .map(Vec::len)
            .sum();
        let dev = model.evaluate_on(
            &dev_set.records,
            &dev_set.labels,
            classes,
            s.batch_size,
            ctl.collective.as_deref_mut(),
        )?;
        let entry = EpochLog {
            epoch: p.epoch,
            mean_loss: p.loss_sum / batches.len().max(1) as f64,
            dev,
            seconds,
            samples,
            samples_per_second: per_second(samples, seconds),
            sum_seconds,
        };
        let score = ctl.metric.of(&entry.dev);
        let best = p.best.is_none_or(|(_, f)| score > f);
        if best {
            p.best = Some((p.epoch, score));
            p.bad_epochs = 0;
        } else {
            p.bad_epochs += 1;
        }
        p.finished.push(EpochRecord {
            epoch: p.epoch,
            mean_loss: entry.mean_loss,
            accuracy: entry.dev.accuracy,
            macro_f1: entry.dev.macro_avg.f1,
            micro_f1: entry.dev.micro_avg.f1,
        });
        p.epoch += 1;
        p.batch = 0;
        p.loss_sum = 0.0;
        (ctl.on_event)(model, opt, &p, Event::Epoch { log: &entry, best })?;
        logs.push(entry);
        let mut asked = [crate::interrupt::requested().is_some() as u8 as f64];
        if let Some(c) = ctl.collective.as_deref_mut() {
            c.all_reduce_host(&mut asked)?;
        }
        if asked[0] > 0.0 {
            crate::interrupt::stop_with_the_world();
            return Ok((logs, p));
        }
    }
    Ok((logs, p))
}

/// What every rank of a data-parallel world must start from alike: where the run stands, the
/// data's sizes, the step's settings and every trained parameter's bits.
fn start_digest(
    model: &mut Classifier,
    opt: &Optimizer,
    p: &Progress,
    (train_set, dev_set, classes): (&Split, &Split, usize),
    s: &TrainSettings,
) -> Result<u64> {
    let mut d = Digest::default();
    for v in [
        p.epoch as u64,
        p.batch as u64,
        opt.step,
        train_set.records.len() as u64,
        dev_set.records.len() as u64,
        classes as u64,
        s.batch_size as u64,
        s.accumulate as u64,
        s.epochs as u64,
        s.seed,
    ] {
        d.eat(v);
    }
    eat_parameters(&mut d, &model.slots(s.input_lr_scale))?;
    Ok(d.value())
}

/// Every parameter's bits into `d`.
pub fn eat_parameters(d: &mut Digest, slots: &[crate::model::slot::Slot]) -> Result<()> {
    for slot in slots {
        for v in slot.value.to_host()? {
            d.eat(v.to_bits() as u64);
        }
    }
    Ok(())
}

/// The learning-rate schedule of a run over `records` training records (`Schedule::linear`).
pub fn schedule(s: &TrainSettings, records: usize) -> Schedule {
    Schedule::linear(
        s.lr,
        s.warmup_fraction,
        records,
        s.batch_size,
        s.accumulate,
        s.epochs,
    )
}

/// The optimizer of a run: AdamW (betas 0.9 / 0.999, eps 1e-8) with the settings' weight decay,
/// its moments in fp32 or 8-bit as the settings say.
pub fn optimizer(s: &TrainSettings) -> Optimizer {
    Optimizer::with_kind(
        crate::ops::AdamW {
            lr: s.lr as f32,
            weight_decay: s.weight_decay,
            ..crate::ops::AdamW::default()
        },
        s.optimizer,
    )
}

/// A device check for callers that build models: the encoder-free path needs no sentence vector.
pub fn check_head_input(head: &Head, encoder: bool) -> Result<()> {
    if head.config.uses_sentence() && !encoder {
        return Err(Error::Invalid(format!(
            "head `{}` needs an encoder's pooled [CLS]; with character embeddings use textcnn, bigru, bilstm or textcnn-bigru",
            head.config.kind.name()
        )));
    }
    Ok(())
}
