//! The memory planner behind `emrclass plan` and `train --memory-budget`. It sizes a training
//! run by running the engine's own training step (two optimizer steps and one evaluation batch)
//! on `Device::sizing`, which allocates nothing and launches nothing but counts every byte by
//! role. So the plan is computed by the code that allocates, not by a formula beside it.
//!
//! Strategies, tried in the order of least cost until the peak fits the budget:
//! 1. nothing: every activation kept for backward;
//! 2. recomputation of the k lowest encoder layers (smallest k that fits): bit-exact, costs one
//!    more forward of those layers;
//! 3. every layer recomputed, its checkpointed input kept in fp16 (within tolerance);
//! 4. micro-batches (a divisor of the batch, so the effective batch stays exact) with gradient
//!    accumulation, each again with the least of 1–3 that fits.
//!
//! A frozen encoder has its own two: fp32 weights, then fp16 weights, then micro-batches.
//!
//! Always on: dropout masks are regenerated from their seeds, never stored; attention keeps its
//! log-sum-exp statistics only, never the L x L probabilities; a frozen encoder runs forward
//! only (nothing kept) without gradient buffers, and the head trains on its cached outputs.

mod report;

pub use report::{print_plan, print_table, table, write_json, TableRow};

use crate::data::masking::MaskedBatch;
use crate::data::tokenizer::TokenBatch;
use crate::device::{Device, Role};
use crate::error::{Error, Result};
use crate::model::bert::{BertConfig, BertEncoder, EncoderMemory};
use crate::model::heads::{Head, HeadConfig};
use crate::model::loss::{ClassificationLoss, LossConfig, LossKind};
use crate::model::masked_lm::MaskedLm;
use crate::model::mlm_head::MlmHead;
use crate::model::window_pool::Pool;
use crate::ops::AdamW;
use crate::rng::Rng;
use crate::train::features::FeatureStore;
use crate::train::optim::{Optimizer, OptimizerKind};
use crate::train::pretraining;
use crate::train::trainer::{Classifier, Input, MicroBatch, TrainSettings};

/// Device memory the engine's allocator does not see: the CUDA context, the loaded NVRTC
/// modules and the stream-ordered pool's rounding. A stated assumption (`--reserve` changes it).
pub const DEFAULT_RESERVE: usize = 320 << 20;

/// The SM count `emrclass plan` assumes unless told: the GTX 1050 Ti's.
pub const TARGET_MULTIPROCESSORS: usize = 6;

/// What to train, at which size, in how many bytes.
#[derive(Clone, Debug)]
pub struct Request {
    pub encoder: BertConfig,
    pub head: HeadConfig,
    pub loss: LossKind,
    pub batch: usize,
    pub seq: usize,
    /// The card's memory (or the cap asked for).
    pub budget: usize,
    /// Of which this much is not the engine's (see DEFAULT_RESERVE).
    pub reserve: usize,
    /// Encoder frozen: forward once into a feature cache, train the head alone.
    pub frozen: bool,
    /// fp32 or 8-bit AdamW moments.
    pub optimizer: OptimizerKind,
    /// The encoder's kept activations stored in fp16 (`--saved-activations fp16`): every
    /// strategy tried keeps them so.
    pub fp16_activations: bool,
    /// Token windows per record (`--long-text chunks`: `--max-chunks`; else 1), each `seq`
    /// long: a micro-batch of b records runs b x windows rows.
    pub windows: usize,
    /// The card's SM count: some kernel choices depend on it and hold memory (split-K GEMMs
    /// allocate a workspace), so the count runs the same choices (`TARGET_MULTIPROCESSORS`:
    /// the GTX 1050 Ti's).
    pub multiprocessors: usize,
    /// Masked-LM pretraining (`emrclass pretrain`) instead of a classifier: the fraction of
    /// tokens predicted. The MLM head (its vocabulary GEMM on the gathered masked rows) replaces
    /// `head` and `loss`, which are then unused.
    pub masked_lm: Option<f64>,
}

impl Request {
    /// Masked-LM pretraining of `encoder` (`emrclass pretrain`), `mask_rate` of the tokens
    /// predicted, at `batch` x `seq` in `budget` bytes of which `reserve` are not the engine's
    /// (the classifier's fields are set to something valid and unused).
    pub fn pretraining(encoder: BertConfig, batch: usize, seq: usize, mask_rate: f64) -> Request {
        Request {
            head: HeadConfig::new(crate::model::heads::HeadKind::Cls, encoder.hidden_size, 2),
            encoder,
            loss: LossKind::CrossEntropy,
            batch,
            seq,
            budget: 4 << 30,
            reserve: DEFAULT_RESERVE,
            frozen: false,
            optimizer: OptimizerKind::AdamW,
            fp16_activations: false,
            windows: 1,
            multiprocessors: TARGET_MULTIPROCESSORS,
            masked_lm: Some(mask_rate),
        }
    }

    /// The bytes the engine's allocations may use.
    pub fn usable(&self) -> usize {
        self.budget.saturating_sub(self.reserve)
    }
}

/// How a run fits: the encoder's memory settings and the micro-batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strategy {
    pub memory: EncoderMemory,
    /// Rows per forward/backward pass.
    pub micro_batch: usize,
    /// Micro-batches per optimizer step (micro_batch x accumulate = the batch).
    pub accumulate: usize,
}

impl Strategy {
    pub fn whole(batch: usize) -> Strategy {
        Strategy {
            memory: EncoderMemory::default(),
            micro_batch: batch,
            accumulate: 1,
        }
    }

    pub fn describe(&self, layers: usize, frozen: bool) -> String {
        let mut parts = Vec::new();
        if frozen {
            parts.push("frozen encoder: forward only into the feature cache".to_string());
        } else if self.memory.recompute_layers == 0 {
            parts.push("every activation kept (no recomputation)".to_string());
        } else {
            parts.push(format!(
                "recompute {} of {layers} layers in backward",
                self.memory.recompute_layers
            ));
        }
        if self.memory.fp16_checkpoints {
            parts.push("their inputs kept in fp16".into());
        }
        if self.memory.fp16_weights {
            parts.push("weights stored in fp16".into());
        }
        if self.memory.fp16_activations && self.memory.recompute_layers < layers && !frozen {
            parts.push("kept activations stored in fp16".into());
        }
        if self.accumulate > 1 {
            parts.push(format!(
                "{} micro-batches of {} with gradient accumulation",
                self.accumulate, self.micro_batch
            ));
        }
        parts.join("; ")
    }
}

/// What a sizing run counted.
#[derive(Clone, Debug)]
pub struct Measured {
    /// The peak of live bytes over the run.
    pub peak: usize,
    /// Live bytes by role at the peak (indexed by `Role::index`).
    pub at_peak: [usize; 6],
    /// Bytes one training forward keeps for backward, per encoder layer (empty when frozen).
    pub saved_per_layer: Vec<usize>,
}

/// The chosen strategy, its measured peak and everything tried before it.
#[derive(Clone, Debug)]
pub struct Plan {
    pub request: Request,
    pub strategy: Strategy,
    pub measured: Measured,
    pub fits: bool,
    /// Each strategy tried, in order, with its peak.
    pub tried: Vec<(Strategy, usize)>,
}

/// Tokens for a sizing run: every position real (the worst case), every row distinct.
fn sizing_batch(rows: usize, len: usize, vocab: usize, first_row: usize) -> TokenBatch {
    let tokens = rows * len;
    TokenBatch {
        batch: rows,
        len,
        input_ids: (0..tokens)
            .map(|i| 1 + ((first_row * len + i) % (vocab.max(2) - 1)) as i32)
            .collect(),
        attention_mask: vec![1; tokens],
        token_type_ids: vec![0; tokens],
    }
}

fn loss_config(kind: LossKind, classes: usize) -> LossConfig {
    let mut c = LossConfig::new(kind);
    c.class_weights = Some(vec![1.0; classes]);
    c.similarity = Some(
        (0..classes * classes)
            .map(|i| if i % (classes + 1) == 0 { 1.0 } else { 0.1 })
            .collect(),
    );
    c
}

/// Runs `strategy` for `req` on `dev` (normally `Device::sizing`; any device gives its own
/// count): builds the model, takes two optimizer steps (the first creates the AdamW moments),
/// evaluates one batch, and returns the peak. On a real device this is a real run.
pub fn run_steps(dev: &Device, req: &Request, strategy: &Strategy) -> Result<Measured> {
    if let Some(rate) = req.masked_lm {
        return run_pretraining_steps(dev, req, strategy, rate);
    }
    let classes = req.head.classes;
    let (vocab, h) = (req.encoder.vocab_size, req.encoder.hidden_size);
    let per_record = req.windows.max(1);
    let rows = strategy.micro_batch * per_record;
    let micro: Vec<MicroBatch> = (0..strategy.accumulate)
        .map(|k| MicroBatch {
            tokens: sizing_batch(rows, req.seq, vocab, k * rows),
            labels: (0..strategy.micro_batch)
                .map(|r| (r % classes) as i32)
                .collect(),
            seed: 11 + k as u64,
            windows: if per_record > 1 {
                vec![per_record; strategy.micro_batch]
            } else {
                Vec::new()
            },
        })
        .collect();
    let mut rng = Rng::new(1);
    let mut saved_per_layer = Vec::new();
    let input = if req.frozen {
        // The feature pass, as `train --freeze-encoder` makes it, then the encoder leaves.
        let mut encoder = BertEncoder::unset(dev, req.encoder.clone(), false)?;
        if strategy.memory.fp16_weights {
            encoder.store_weights_fp16()?;
        }
        let mut seqs = Vec::new();
        for m in &micro {
            let t = &m.tokens;
            encoder.infer(
                &t.input_ids,
                &t.attention_mask,
                Some(&t.token_type_ids),
                t.batch,
            )?;
            seqs.extend(t.input_ids.chunks(t.len).map(<[i32]>::to_vec));
        }
        drop(encoder);
        Input::Features {
            store: Box::new(FeatureStore::zeros(h, &seqs)),
            device: dev.clone(),
        }
    } else {
        let mut encoder = BertEncoder::unset(dev, req.encoder.clone(), true)?;
        encoder.memory = strategy.memory;
        Input::Encoder(Box::new(encoder))
    };
    let head = Head::new(dev, req.head.clone(), &mut rng)?;
    let loss = ClassificationLoss::new(dev, classes, loss_config(req.loss, classes))?;
    let mut model = Classifier {
        input,
        head,
        loss,
        window_pool: Pool::Mean,
    };
    let settings = TrainSettings {
        batch_size: strategy.micro_batch,
        accumulate: strategy.accumulate,
        ..TrainSettings::default()
    };
    let mut opt = Optimizer::with_kind(AdamW::default(), req.optimizer);
    for _ in 0..2 {
        model.optimizer_step(&micro, &mut opt, 1e-5, &settings)?;
    }
    model.predict_records(&micro[0].tokens, &micro[0].windows)?;
    if let Input::Encoder(enc) = &mut model.input {
        saved_per_layer = saved_per_layer_of(enc, &micro[0].tokens)?;
    }
    Ok(Measured {
        peak: dev.memory().peak(),
        at_peak: dev.memory().peak_by_role(),
        saved_per_layer,
    })
}

/// What one training forward of `t` keeps per encoder layer (counted, then let go).
fn saved_per_layer_of(enc: &mut BertEncoder, t: &TokenBatch) -> Result<Vec<usize>> {
    let dev = enc
        .param("embeddings.word_embeddings.weight")
        .value
        .device()
        .clone();
    let _role = dev.role(Role::Activations);
    enc.forward(
        &t.input_ids,
        &t.attention_mask,
        Some(&t.token_type_ids),
        t.batch,
        Some(1),
    )?;
    let saved = enc.saved_bytes_per_layer();
    enc.forget();
    Ok(saved)
}

/// A masked batch for sizing: every position real, `rate` of each row's tokens between [CLS]
/// and [SEP] masked (as many as masking ever picks: it stops at the rate), spread evenly.
pub fn sizing_masked_batch(
    rows: usize,
    len: usize,
    vocab: usize,
    first_row: usize,
    rate: f64,
) -> MaskedBatch {
    let t = sizing_batch(rows, len, vocab, first_row);
    let inner = len.saturating_sub(2);
    let per_row = ((rate * inner as f64).round() as usize).clamp(1, inner.max(1));
    let mut positions = Vec::new();
    for r in 0..rows {
        for k in 0..per_row {
            positions.push((r * len + 1 + k * inner.max(1) / per_row) as i32);
        }
    }
    let labels = positions.iter().map(|&p| t.input_ids[p as usize]).collect();
    MaskedBatch {
        batch: rows,
        len,
        input_ids: t.input_ids,
        attention_mask: t.attention_mask,
        positions,
        labels,
    }
}

/// `run_steps` for masked-LM pretraining: BERT and the MLM head, two optimizer steps of
/// `strategy`'s micro-batches (`train::pretraining::optimizer_step`, as `pretrain` steps), one
/// held-out evaluation batch.
fn run_pretraining_steps(
    dev: &Device,
    req: &Request,
    strategy: &Strategy,
    rate: f64,
) -> Result<Measured> {
    let vocab = req.encoder.vocab_size;
    let micro: Vec<(MaskedBatch, u64)> = (0..strategy.accumulate)
        .map(|k| {
            let b = sizing_masked_batch(
                strategy.micro_batch,
                req.seq,
                vocab,
                k * strategy.micro_batch,
                rate,
            );
            (b, 11 + k as u64)
        })
        .collect();
    let mut encoder = BertEncoder::unset(dev, req.encoder.clone(), true)?;
    encoder.memory = strategy.memory;
    let (h, eps) = (req.encoder.hidden_size, req.encoder.layer_norm_eps as f32);
    let head = MlmHead::new(dev, h, vocab, eps, 0.02, &mut Rng::new(1))?;
    let mut model = MaskedLm { encoder, head };
    let mut opt = Optimizer::with_kind(AdamW::default(), req.optimizer);
    for _ in 0..2 {
        pretraining::optimizer_step(&mut model, &mut opt, &micro, 1e-5, Some(1.0))?;
    }
    model.eval_loss(&micro[0].0)?;
    let t = sizing_batch(strategy.micro_batch, req.seq, vocab, 0);
    let saved_per_layer = saved_per_layer_of(&mut model.encoder, &t)?;
    Ok(Measured {
        peak: dev.memory().peak(),
        at_peak: dev.memory().peak_by_role(),
        saved_per_layer,
    })
}

/// The peak of `strategy` counted on a fresh sizing device with the request's SM count.
pub fn measure(req: &Request, strategy: &Strategy) -> Result<Measured> {
    let dev = Device::sizing().with_multiprocessors(req.multiprocessors);
    run_steps(&dev, req, strategy)
}

fn check(req: &Request) -> Result<()> {
    req.encoder.validate()?;
    if req.batch == 0 || req.seq == 0 || req.windows == 0 {
        return Err(Error::Invalid(
            "plan: batch, sequence length and windows per record must be at least 1".into(),
        ));
    }
    if req.seq > req.encoder.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "plan: sequence length {} is over the model's max_position_embeddings {}",
            req.seq, req.encoder.max_position_embeddings
        )));
    }
    if req.masked_lm.is_none() && req.head.input != req.encoder.hidden_size {
        return Err(Error::Invalid(format!(
            "plan: the head reads {} features, the encoder gives {}",
            req.head.input, req.encoder.hidden_size
        )));
    }
    Ok(())
}

fn attempt(req: &Request, st: Strategy, tried: &mut Vec<(Strategy, usize)>) -> Result<Measured> {
    let m = measure(req, &st)?;
    tried.push((st, m.peak));
    Ok(m)
}

/// The least costly strategy that fits `req.usable()`, or the last one tried with `fits`
/// false (the refusal says what is short).
pub fn plan(req: &Request) -> Result<Plan> {
    check(req)?;
    let usable = req.usable();
    let layers = req.encoder.num_hidden_layers;
    let mut tried = Vec::new();
    let mut chosen = None;
    let mut last = None;
    // Micro-batch sizes: divisors of the batch, largest first.
    let divisors: Vec<usize> = (1..=req.batch)
        .rev()
        .filter(|&d| req.batch.is_multiple_of(d))
        .collect();
    for micro in divisors {
        let base = Strategy {
            micro_batch: micro,
            accumulate: req.batch / micro,
            memory: EncoderMemory {
                fp16_activations: req.fp16_activations,
                ..EncoderMemory::default()
            },
        };
        let m = attempt(req, base, &mut tried)?;
        if m.peak <= usable {
            chosen = Some((base, m));
            break;
        }
        last = Some((base, m));
        if req.frozen {
            let half = Strategy {
                memory: EncoderMemory {
                    fp16_weights: true,
                    ..base.memory
                },
                ..base
            };
            let m = attempt(req, half, &mut tried)?;
            if m.peak <= usable {
                chosen = Some((half, m));
                break;
            }
            last = Some((half, m));
            continue;
        }
        if layers == 0 {
            continue;
        }
        let with = |k: usize, fp16: bool| Strategy {
            memory: EncoderMemory {
                recompute_layers: k,
                fp16_checkpoints: fp16,
                fp16_weights: false,
                fp16_activations: req.fp16_activations,
            },
            ..base
        };
        let m = attempt(req, with(layers, false), &mut tried)?;
        if m.peak <= usable {
            // The smallest k that fits (the peak falls as k grows), by bisection.
            let mut best = (with(layers, false), m);
            let (mut lo, mut hi) = (0, layers); // lo does not fit, hi does
            while hi - lo > 1 {
                let mid = (lo + hi) / 2;
                let m = attempt(req, with(mid, false), &mut tried)?;
                if m.peak <= usable {
                    hi = mid;
                    best = (with(mid, false), m);
                } else {
                    lo = mid;
                }
            }
            chosen = Some(best);
            break;
        }
        let m = attempt(req, with(layers, true), &mut tried)?;
        if m.peak <= usable {
            chosen = Some((with(layers, true), m));
            break;
        }
        last = Some((with(layers, true), m));
    }
    let fits = chosen.is_some();
    let (strategy, measured) = chosen.or(last).expect("at least one strategy was tried");
    Ok(Plan {
        request: req.clone(),
        strategy,
        measured,
        fits,
        tried,
    })
}

/// The largest batch (up to `cap`) whose one-pass step fits with `memory` (no micro-batches):
/// `None` when not even one row does.
pub fn largest_batch(req: &Request, memory: EncoderMemory, cap: usize) -> Result<Option<usize>> {
    let fits = |b: usize| -> Result<bool> {
        let r = Request {
            batch: b,
            ..req.clone()
        };
        let st = Strategy {
            memory,
            ..Strategy::whole(b)
        };
        Ok(measure(&r, &st)?.peak <= req.usable())
    };
    if !fits(1)? {
        return Ok(None);
    }
    let (mut lo, mut hi) = (1, 2);
    while hi <= cap && fits(hi)? {
        lo = hi;
        hi *= 2;
    }
    let mut hi = hi.min(cap + 1); // lo fits, hi does not (or is past the cap)
    while hi - lo > 1 {
        let mid = (lo + hi) / 2;
        if fits(mid)? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(Some(lo))
}
