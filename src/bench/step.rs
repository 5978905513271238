//! `emrclass bench step`: one whole training step of a BERT + head classifier (forward, loss,
//! backward, clipping, AdamW) on random tokens, with samples/s and the engine's peak memory;
//! with a mask rate, `emrclass pretrain`'s step instead (`pretrain_step.rs`).

use serde::Serialize;
use serde_json::{json, Value};

use crate::data::tokenizer::TokenBatch;
use crate::device::Device;
use crate::distributed::Collective;
use crate::error::Result;
use crate::model::bert::{BertConfig, BertEncoder, EncoderMemory};
use crate::model::heads::{Head, HeadConfig, HeadKind};
use crate::model::loss::{ClassificationLoss, LossConfig, LossKind};
use crate::ops::AdamW;
use crate::rng::Rng;
use crate::train::optim::Optimizer;
use crate::train::trainer::{Classifier, Input, MicroBatch, TrainSettings};

/// The model and batch of a step benchmark. Defaults: BERT-base with the Chinese vocabulary.
#[derive(Clone, Debug)]
pub struct StepShape {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub batch: usize,
    pub len: usize,
    pub classes: usize,
    pub head: HeadKind,
    pub loss: LossKind,
    /// Recomputation and fp16 checkpoints (what a memory plan picks).
    pub memory: EncoderMemory,
    /// fp32 or 8-bit AdamW moments.
    pub optimizer: crate::train::optim::OptimizerKind,
    /// Some(rate): the step of `emrclass pretrain` (BERT + the MLM head on the masked rows,
    /// `rate` of each sequence's inner tokens predicted) instead of a classifier's; `head`,
    /// `loss` and `classes` are then unused.
    pub mask_rate: Option<f64>,
}

#[derive(Serialize)]
pub struct StepTiming {
    pub what: String,
    pub spec: Value,
    pub shape: String,
    pub ms: f64,
    pub samples_per_s: f64,
    /// Sequence positions per second (batch x length / step time): pretraining's measure.
    pub tokens_per_s: f64,
    /// Encoder arithmetic of forward + backward (3x forward), as GFLOP per step (pretraining:
    /// the MLM head's on the masked rows too).
    pub gflop: f64,
    /// Achieved / peak fp32 FLOP/s (CUDA only).
    pub roofline: Option<f64>,
    /// Kernel launches and host waits (host copies, synchronisations) in one steady-state step:
    /// what a step pays besides arithmetic.
    pub launches_per_step: u64,
    pub host_syncs_per_step: u64,
    /// One more step timed phase by phase: encoder forward, head forward, loss, head backward,
    /// encoder backward, optimizer (clipping + AdamW), in ms.
    pub phases: Vec<(String, f64)>,
    /// The engine's peak of live device bytes over the model's life: weights, gradients,
    /// AdamW moments, activations and scratch (what `torch.cuda.max_memory_allocated` counts).
    pub peak_bytes: usize,
    /// CUDA: the device's used memory after the steps (total - free): the CUDA context, loaded
    /// modules and the allocation pool's reserve besides the engine's bytes — what a memory
    /// plan's context reserve has to cover.
    pub device_used_bytes: Option<usize>,
    /// In a data-parallel world (`bench step --world N`, or under `emrclass launch`): its ranks,
    /// what carries the sums, and the median ms a step spends in them (gradients, losses and
    /// the stop flag, waiting for the slowest rank included). `ms` is then the data-parallel
    /// step's; the launches, host waits and phases stay those of this rank's own step.
    pub world: Option<WorldShare>,
}

/// A step's share of a data-parallel world's sums.
#[derive(Serialize)]
pub struct WorldShare {
    pub ranks: usize,
    pub collective: String,
    pub sum_ms: f64,
}

/// A model, a batch and an optimizer, ready to take training steps.
pub struct StepModel {
    pub model: Classifier,
    pub batch: TokenBatch,
    pub labels: Vec<i32>,
    pub optimizer: Optimizer,
    pub settings: TrainSettings,
    steps: u64,
}

impl StepShape {
    /// The encoder's configuration (BERT-base's dropout and GELU).
    pub fn bert_config(&self) -> BertConfig {
        let s = self;
        BertConfig {
            vocab_size: s.vocab,
            hidden_size: s.hidden,
            num_hidden_layers: s.layers,
            num_attention_heads: s.heads,
            intermediate_size: s.intermediate,
            hidden_act: "gelu".into(),
            layer_norm_eps: 1e-12,
            max_position_embeddings: s.len.max(512),
            type_vocab_size: 2,
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            pad_token_id: 0,
        }
    }

    /// What `emrclass plan` would be asked for this step within `budget` bytes on a card with
    /// `multiprocessors` SMs.
    pub fn plan_request(&self, budget: usize, multiprocessors: usize) -> crate::plan::Request {
        crate::plan::Request {
            encoder: self.bert_config(),
            head: HeadConfig::new(self.head, self.hidden, self.classes),
            loss: self.loss,
            batch: self.batch,
            seq: self.len,
            budget,
            reserve: 0,
            frozen: false,
            optimizer: self.optimizer,
            fp16_activations: self.memory.fp16_activations,
            windows: 1,
            multiprocessors,
            masked_lm: self.mask_rate,
        }
    }

    /// The encoder's arithmetic in one forward + backward (3x forward), GFLOP.
    pub fn encoder_gflop(&self) -> f64 {
        let s = self;
        let (h, l) = (s.hidden as f64, s.len as f64);
        let tokens = (s.batch * s.len) as f64;
        let forward = s.layers as f64
            * (2.0 * tokens * (4.0 * h * h + 2.0 * h * s.intermediate as f64)
                + 4.0 * s.batch as f64 * l * l * h);
        3.0 * forward / 1e9
    }

    /// "12x12 H=768 B=16 L=128" and what follows it in a row's label: `objective` (the head,
    /// or the MLM head's share), then the recomputed layers.
    pub(super) fn label(&self, objective: &str) -> String {
        let s = self;
        let recompute = match s.memory.recompute_layers {
            0 => String::new(),
            k => format!(
                " recompute {k}{}",
                if s.memory.fp16_checkpoints {
                    " fp16"
                } else {
                    ""
                }
            ),
        };
        format!(
            "{}x{} H={} B={} L={} {objective}{recompute}",
            s.layers, s.heads, s.hidden, s.batch, s.len
        )
    }

    /// The fields of a row's `spec` every step has (the work PyTorch is asked to time).
    pub(super) fn spec(&self) -> serde_json::Map<String, Value> {
        let s = self;
        let v = json!({
            "family": "step", "layers": s.layers, "hidden": s.hidden, "heads": s.heads,
            "intermediate": s.intermediate, "vocab": s.vocab, "batch": s.batch, "len": s.len,
            "recompute_layers": s.memory.recompute_layers,
            "fp16_checkpoints": s.memory.fp16_checkpoints,
        });
        match v {
            Value::Object(m) => m,
            _ => unreachable!("json! of an object"),
        }
    }
}

/// A model ready to take training steps (the classifier's, or pretraining's).
pub trait TakesSteps {
    /// One optimizer step; returns the loss.
    fn step(&mut self) -> Result<f32>;
    /// One optimizer step as one rank of `c`'s world: the model's batch is this rank's
    /// micro-batch, then the sums and the same step on every rank (as `train` steps there).
    fn step_in_world(&mut self, c: &mut dyn Collective) -> Result<f32>;
}

impl TakesSteps for StepModel {
    fn step(&mut self) -> Result<f32> {
        StepModel::step(self)
    }

    fn step_in_world(&mut self, c: &mut dyn Collective) -> Result<f32> {
        self.steps += 1;
        let mine = MicroBatch {
            tokens: self.batch.clone(),
            labels: self.labels.clone(),
            seed: self.steps,
            windows: Vec::new(),
        };
        let (rank, size) = (c.rank(), c.size());
        let (loss, _) = self.model.data_parallel_step(
            &[mine],
            rank,
            size,
            &mut self.optimizer,
            1e-5,
            &self.settings,
            c,
        )?;
        Ok(loss)
    }
}

/// A row's common part: the median of `reps` steps after two warm-up steps (the first
/// allocates the optimizer's moments), the overheads of one more, then `phases` timed (a
/// further step, phase by phase), and the peak memory of it all (the caller reset it before
/// building the model).
///
/// In a world (`world`: this rank's collective), every timed step is a data-parallel one and
/// the row says the median time of its sums.
pub(super) fn time_steps<M: TakesSteps>(
    dev: &Device,
    s: &StepShape,
    m: &mut M,
    reps: usize,
    mut world: Option<&mut dyn Collective>,
    phases: impl FnOnce(&mut M) -> Result<Vec<(String, f64)>>,
) -> Result<StepTiming> {
    let (mut times, mut sums) = (Vec::new(), Vec::new());
    for rep in 0..reps.max(1) + 2 {
        let summed_before = world.as_ref().map_or(0.0, |c| c.seconds());
        let ms = dev.time_ms(|| {
            match world.as_deref_mut() {
                Some(c) => m.step_in_world(c),
                None => m.step(),
            }
            .map(|_| ())
        })?;
        if rep >= 2 {
            times.push(ms);
            sums.push(world.as_ref().map_or(0.0, |c| c.seconds()) - summed_before);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let ms = median(times);
    let world = world.map(|c| WorldShare {
        ranks: c.size(),
        collective: c.describe(),
        sum_ms: median(sums) * 1e3,
    });
    let (launches_per_step, host_syncs_per_step) = step_overheads(dev, m)?;
    let phases = phases(m)?;
    let gflop = s.encoder_gflop();
    Ok(StepTiming {
        what: String::new(),
        spec: Value::Null,
        shape: String::new(),
        ms,
        samples_per_s: s.batch as f64 / (ms / 1e3),
        tokens_per_s: (s.batch * s.len) as f64 / (ms / 1e3),
        gflop,
        roofline: None,
        launches_per_step,
        host_syncs_per_step,
        phases,
        peak_bytes: dev.memory().peak(),
        device_used_bytes: match dev.cuda_info() {
            Some(_) => {
                let (free, total) = dev.mem_info()?;
                Some(total - free)
            }
            None => None,
        },
        world,
    })
}

impl StepTiming {
    /// The row's GFLOP (the caller's count) and its fraction of the card's fp32 peak (CUDA).
    pub(super) fn with_gflop(mut self, dev: &Device, gflop: f64) -> Self {
        self.gflop = gflop;
        self.roofline = dev
            .cuda_info()
            .map(|i| gflop * 1e9 / (self.ms / 1e3) / i.peak_flops());
        self
    }
}

impl StepModel {
    /// BERT (random init) + head + loss at `s`, random tokens (every position real).
    pub fn new(dev: &Device, s: &StepShape) -> Result<Self> {
        let config = s.bert_config();
        let mut rng = Rng::new(7);
        let mut encoder = BertEncoder::new(dev, config, &mut rng)?;
        encoder.memory = s.memory;
        let head = Head::new(dev, HeadConfig::new(s.head, s.hidden, s.classes), &mut rng)?;
        let mut loss_config = LossConfig::new(s.loss);
        loss_config.class_weights = Some(vec![1.0; s.classes]);
        loss_config.similarity = Some(
            (0..s.classes * s.classes)
                .map(|i| if i % (s.classes + 1) == 0 { 1.0 } else { 0.1 })
                .collect(),
        );
        let loss = ClassificationLoss::new(dev, s.classes, loss_config)?;
        let tokens = s.batch * s.len;
        let batch = TokenBatch {
            batch: s.batch,
            len: s.len,
            input_ids: (0..tokens)
                .map(|_| 1 + (rng.next_u64() % (s.vocab as u64 - 1)) as i32)
                .collect(),
            attention_mask: vec![1; tokens],
            token_type_ids: vec![0; tokens],
        };
        let labels = (0..s.batch)
            .map(|_| (rng.next_u64() % s.classes as u64) as i32)
            .collect();
        let settings = TrainSettings::default();
        let optimizer = Optimizer::with_kind(
            AdamW {
                weight_decay: settings.weight_decay,
                ..AdamW::default()
            },
            s.optimizer,
        );
        Ok(StepModel {
            model: Classifier {
                input: Input::Encoder(Box::new(encoder)),
                head,
                loss,
                window_pool: crate::model::window_pool::Pool::Mean,
            },
            batch,
            labels,
            optimizer,
            settings,
            steps: 0,
        })
    }

    /// One training step at learning rate 1e-5; returns the loss.
    pub fn step(&mut self) -> Result<f32> {
        self.steps += 1;
        self.model.train_step(
            &self.batch,
            &self.labels,
            self.steps,
            &mut self.optimizer,
            1e-5,
            &self.settings,
        )
    }
}

/// Median time of `reps` training steps after two warm-up steps (the first allocates the
/// optimizer's moments), the phases of one more, and the peak memory of it all. A shape with a
/// mask rate is `pretrain_step::pretrain_step`'s.
pub fn train_step(
    dev: &Device,
    s: &StepShape,
    reps: usize,
    world: Option<&mut dyn Collective>,
) -> Result<StepTiming> {
    if s.mask_rate.is_some() {
        return Err(crate::error::Error::Invalid(
            "a shape with a mask rate is timed by bench::pretrain_step::pretrain_step".into(),
        ));
    }
    dev.memory().reset_peak();
    let mut m = StepModel::new(dev, s)?;
    let row = time_steps(dev, s, &mut m, reps, world, |m| {
        phase_times(
            dev,
            &mut m.model,
            &m.batch,
            &m.labels,
            &mut m.optimizer,
            &m.settings,
        )
    })?;
    let head = &m.model.head.config;
    let mut spec = s.spec();
    for (k, v) in [
        ("classes", json!(s.classes)),
        ("head", json!(format!("{:?}", s.head))),
        ("loss", json!(format!("{:?}", s.loss))),
        ("textcnn_filters", json!(head.textcnn_filters)),
        ("rnn_hidden", json!(head.rnn_hidden)),
    ] {
        spec.insert(k.into(), v);
    }
    Ok(StepTiming {
        what: format!("train step on {}", dev.describe()),
        spec: Value::Object(spec),
        shape: s.label(&format!("{:?} head", s.head)),
        ..row.with_gflop(dev, s.encoder_gflop())
    })
}

/// Kernel launches and host waits of one more step, counted around a plain call (no timing
/// events, no synchronisation of the benchmark's own).
pub fn step_overheads<M: TakesSteps>(dev: &Device, m: &mut M) -> Result<(u64, u64)> {
    let (launches, syncs) = (dev.launch_count(), dev.host_sync_count());
    m.step()?;
    Ok((dev.launch_count() - launches, dev.host_sync_count() - syncs))
}

/// The phases of `Classifier::train_step`, each timed on its own.
fn phase_times(
    dev: &Device,
    model: &mut Classifier,
    b: &TokenBatch,
    labels: &[i32],
    opt: &mut Optimizer,
    settings: &TrainSettings,
) -> Result<Vec<(String, f64)>> {
    let Input::Encoder(enc) = &mut model.input else {
        unreachable!("the step bench builds an encoder model")
    };
    let lengths: Vec<i32> = vec![b.len as i32; b.batch];
    let mut out = Vec::new();
    out.push((
        "encoder forward".to_string(),
        dev.time_ms(|| {
            enc.forward(
                &b.input_ids,
                &b.attention_mask,
                Some(&b.token_type_ids),
                b.batch,
                Some(99),
            )
            .map(|_| ())
        })?,
    ));
    let (hidden, pooled) = enc.outputs().expect("forward ran");
    let mut logits = None;
    out.push((
        "head forward".to_string(),
        dev.time_ms(|| {
            logits = Some(
                model
                    .head
                    .forward(hidden, &lengths, b.len, Some(pooled), Some(99))?,
            );
            Ok(())
        })?,
    ));
    let logits = logits.expect("head ran");
    let mut dlogits = dev.alloc::<f32>(logits.len(), "dlogits")?;
    out.push((
        "loss".to_string(),
        dev.time_ms(|| {
            model
                .loss
                .forward_backward(&logits, labels, &mut dlogits)
                .map(|_| ())
        })?,
    ));
    let mut grads = None;
    out.push((
        "head backward".to_string(),
        dev.time_ms(|| {
            grads = Some(model.head.backward(&dlogits)?);
            Ok(())
        })?,
    ));
    let g = grads.expect("head backward ran");
    out.push((
        "encoder backward".to_string(),
        dev.time_ms(|| enc.backward(g.tokens.as_ref(), g.sentence.as_ref()))?,
    ));
    out.push((
        "clip + AdamW".to_string(),
        dev.time_ms(|| {
            let mut slots = model.head.slots(1.0);
            slots.extend(enc.slots(settings.input_lr_scale));
            opt.step(&mut slots, 1e-5, settings.clip).map(|_| ())
        })?,
    ));
    Ok(out)
}

pub fn print(rows: &[StepTiming]) {
    println!(
        "{:<44} {:<40} {:>10} {:>10} {:>10} {:>9} {:>9} {:>10}",
        "step", "model", "ms", "samples/s", "tokens/s", "GFLOP/s", "roofline", "peak MiB"
    );
    for r in rows {
        let roof = super::percent(r.roofline);
        println!(
            "{:<44} {:<40} {:>10.2} {:>10.1} {:>10.0} {:>9.1} {:>9} {:>10.1}",
            r.what,
            r.shape,
            r.ms,
            r.samples_per_s,
            r.tokens_per_s,
            r.gflop / (r.ms / 1e3),
            roof,
            r.peak_bytes as f64 / (1 << 20) as f64
        );
        let parts: Vec<String> = r
            .phases
            .iter()
            .map(|(name, ms)| format!("{name} {ms:.2}"))
            .collect();
        println!("  phases (ms): {}", parts.join(", "));
        println!(
            "  per step: {} kernel launches, {} host waits (copies to/from the host, synchronisations)",
            r.launches_per_step, r.host_syncs_per_step
        );
        if let Some(w) = &r.world {
            println!(
                "  data parallel, {}: {:.2} ms a step in sums ({:.1} % of the step; waiting for the slowest rank included)",
                w.collective,
                w.sum_ms,
                100.0 * w.sum_ms / r.ms
            );
        }
    }
}
