//! `emrclass bench step --pretrain`: one step of `emrclass pretrain` — BERT over a masked batch,
//! the MLM head (dense + GELU + LayerNorm, the decoder tied to the word embeddings) on the
//! masked rows only, both backwards, clipping and AdamW — with tokens/s and the peak memory.
//! The batch is the memory planner's (`plan::sizing_masked_batch`: every position real, the
//! masked positions evenly spaced in each sequence), so the step's peak is the plan's, and
//! PyTorch's BertForMaskedLM step (benches/compare_torch.py) predicts the same positions.

use serde_json::{json, Value};

use super::step::{time_steps, StepShape, StepTiming, TakesSteps};
use crate::data::masking::MaskedBatch;
use crate::device::Device;
use crate::distributed::Collective;
use crate::error::{Error, Result};
use crate::model::masked_lm::MaskedLm;
use crate::ops::AdamW;
use crate::rng::Rng;
use crate::train::optim::Optimizer;
use crate::train::pretraining;

/// The pretraining model, a masked batch and an optimizer, ready to take steps.
pub struct MlmStepModel {
    pub model: MaskedLm,
    pub batch: MaskedBatch,
    pub optimizer: Optimizer,
    steps: u64,
}

impl MlmStepModel {
    /// BERT + MLM head at `s` (random init, transformers' initialisation), `s.mask_rate` of
    /// each sequence's inner tokens masked.
    pub fn new(dev: &Device, s: &StepShape) -> Result<Self> {
        let rate = s.mask_rate.ok_or_else(|| {
            Error::Invalid("a pretraining step needs a mask rate (StepShape::mask_rate)".into())
        })?;
        let mut rng = Rng::new(7);
        let mut model = MaskedLm::new(dev, s.bert_config(), &mut rng)?;
        model.encoder.memory = s.memory;
        let batch = crate::plan::sizing_masked_batch(s.batch, s.len, s.vocab, 0, rate);
        let optimizer = Optimizer::with_kind(
            AdamW {
                weight_decay: 0.01,
                ..AdamW::default()
            },
            s.optimizer,
        );
        Ok(MlmStepModel {
            model,
            batch,
            optimizer,
            steps: 0,
        })
    }
}

impl TakesSteps for MlmStepModel {
    /// One optimizer step as `pretrain` takes it (one micro-batch, clipping at 1.0), at
    /// learning rate 1e-5.
    fn step(&mut self) -> Result<f32> {
        self.steps += 1;
        let batches = [(self.batch.clone(), self.steps)];
        pretraining::optimizer_step(
            &mut self.model,
            &mut self.optimizer,
            &batches,
            1e-5,
            Some(1.0),
        )
    }

    fn step_in_world(&mut self, c: &mut dyn Collective) -> Result<f32> {
        self.steps += 1;
        let mine = [(self.batch.clone(), self.steps)];
        let (rank, size) = (c.rank(), c.size());
        let (loss, _) = pretraining::data_parallel_step(
            &mut self.model,
            &mut self.optimizer,
            &mine,
            (rank, size),
            1e-5,
            Some(1.0),
            c,
        )?;
        Ok(loss)
    }
}

/// The row of `bench step --pretrain`: `train_step`'s timing for the pretraining step.
pub fn pretrain_step(
    dev: &Device,
    s: &StepShape,
    reps: usize,
    world: Option<&mut dyn Collective>,
) -> Result<StepTiming> {
    dev.memory().reset_peak();
    let mut m = MlmStepModel::new(dev, s)?;
    let row = time_steps(dev, s, &mut m, reps, world, |m| phase_times(dev, m))?;
    let masked = m.batch.positions.len();
    let per_row = masked / s.batch.max(1);
    let (h, v) = (s.hidden as f64, s.vocab as f64);
    // The head's forward on the masked rows: the dense transform and the decoder; 3x for
    // forward + backward, as the encoder's count.
    let head_gflop = 3.0 * 2.0 * masked as f64 * (h * h + h * v) / 1e9;
    let mut spec = s.spec();
    spec.insert("objective".into(), json!("mlm"));
    spec.insert("masked_per_row".into(), json!(per_row));
    Ok(StepTiming {
        what: format!("pretrain step on {}", dev.describe()),
        spec: Value::Object(spec),
        shape: s.label(&format!("MLM {per_row}/{} masked", s.len)),
        ..row.with_gflop(dev, s.encoder_gflop() + head_gflop)
    })
}

/// The phases of one pretraining step, each timed on its own: encoder forward, the MLM head's
/// forward and loss, its backward, the encoder's backward (with the tied decoder's share of
/// the word embeddings' gradient), clipping + AdamW.
fn phase_times(dev: &Device, m: &mut MlmStepModel) -> Result<Vec<(String, f64)>> {
    let b = &m.batch;
    let model = &mut m.model;
    let mut out = Vec::new();
    out.push((
        "encoder forward".to_string(),
        dev.time_ms(|| {
            model
                .encoder
                .forward(&b.input_ids, &b.attention_mask, None, b.batch, Some(99))
                .map(|_| ())
        })?,
    ));
    out.push((
        "MLM head forward + loss".to_string(),
        dev.time_ms(|| model.head_loss(b).map(|_| ()))?,
    ));
    let mut dhidden = None;
    out.push((
        "MLM head backward".to_string(),
        dev.time_ms(|| {
            dhidden = Some(model.head_backward()?);
            Ok(())
        })?,
    ));
    let dhidden = dhidden.expect("head backward ran");
    out.push((
        "encoder backward".to_string(),
        dev.time_ms(|| model.encoder_backward(dhidden))?,
    ));
    out.push((
        "clip + AdamW".to_string(),
        dev.time_ms(|| {
            m.optimizer
                .step(&mut model.slots(), 1e-5, Some(1.0))
                .map(|_| ())
        })?,
    ));
    Ok(out)
}
