//! The optimizer: AdamW over named parameters with per-parameter learning rates (encoder,
//! embeddings and head can differ), global-norm gradient clipping folded into the update, and
//! the linear warm-up / linear decay schedule of HF's get_linear_schedule_with_warmup.

use std::collections::HashMap;

use crate::device::Buffer;
use crate::error::{Error, Result};
use crate::model::slot::Slot;
use crate::ops::adamw8bit::{self, AdamW8bitTensor, QuantMaps, QuantizedMoments};
use crate::ops::multi_tensor::{self, AdamWTensor, TensorTable};
use crate::ops::{self, AdamW};

/// How the optimizer keeps AdamW's moments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OptimizerKind {
    /// fp32 m and v: 8 bytes per parameter.
    #[default]
    AdamW,
    /// Block-wise 8-bit m and v (`ops::adamw8bit`): ~2 bytes per parameter, except where
    /// `keeps_32bit_moments` says (small tensors, embedding tables).
    AdamW8bit,
    /// As AdamW8bit, the embedding tables' moments in 8 bits too (only small tensors keep fp32).
    AdamW8bitAll,
}

impl OptimizerKind {
    pub fn name(self) -> &'static str {
        match self {
            OptimizerKind::AdamW => "adamw",
            OptimizerKind::AdamW8bit => "adamw8bit",
            OptimizerKind::AdamW8bitAll => "adamw8bit-all",
        }
    }
}

impl std::str::FromStr for OptimizerKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "adamw" => Ok(OptimizerKind::AdamW),
            "adamw8bit" => Ok(OptimizerKind::AdamW8bit),
            "adamw8bit-all" => Ok(OptimizerKind::AdamW8bitAll),
            other => Err(Error::Invalid(format!(
                "no optimizer named `{other}`; optimizers: adamw, adamw8bit, adamw8bit-all"
            ))),
        }
    }
}

/// Tensors below this many elements keep fp32 moments under adamw8bit: biases and LayerNorm
/// weights, a few KiB in all, which the paper keeps exact.
pub const MIN_8BIT_ELEMENTS: usize = 4096;

/// Whether a parameter keeps fp32 moments under adamw8bit: small tensors, and embedding tables
/// (the paper's advice for stable training: a row that sees a gradient rarely shares its block
/// maximum with rows that see large ones, and its small moments would round to 0).
pub fn keeps_32bit_moments(name: &str, elements: usize) -> bool {
    elements < MIN_8BIT_ELEMENTS || name.contains("embeddings")
}

/// One parameter's moments.
enum Moments {
    Full(Buffer<f32>, Buffer<f32>),
    Quantized(QuantizedMoments),
}

/// One parameter's moments, as checkpoints read them.
pub enum MomentsRef<'a> {
    Full(&'a Buffer<f32>, &'a Buffer<f32>),
    Quantized(&'a QuantizedMoments),
}

/// Linear warm-up to `peak` over `warmup` steps, then linear decay to 0 at `total`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
    /// The schedule of `epochs` passes over `examples` in batches of `batch` x `accumulate`:
    /// linear warm-up over ceil(warmup_fraction x total steps) steps, as HF Trainer counts
    /// `warmup_ratio` (Python's `math.ceil` of the same f64 product), then linear decay to 0.
    pub fn linear(
        peak: f64,
        warmup_fraction: f64,
        examples: usize,
        batch: usize,
        accumulate: usize,
        epochs: usize,
    ) -> Schedule {
        let steps_per_epoch = examples.div_ceil(batch.max(1)).div_ceil(accumulate.max(1)) as u64;
        let total = steps_per_epoch * epochs as u64;
        Schedule {
            peak,
            warmup: (warmup_fraction * total as f64).ceil() as u64,
            total,
        }
    }

    /// The learning rate of step `step` (counting from 1, as the optimizer does).
    pub fn lr(&self, step: u64) -> f64 {
        let s = step.saturating_sub(1); // HF evaluates the schedule before its step counter moves
        if s < self.warmup {
            self.peak * s as f64 / self.warmup.max(1) as f64
        } else {
            self.peak * (self.total.saturating_sub(s)) as f64
                / (self.total.saturating_sub(self.warmup)).max(1) as f64
        }
    }
}

/// sqrt(sum over every gradient of g^2): each buffer's sum of squares on the device, summed in
/// f64 on the host in a fixed order.
pub fn global_norm(grads: &[&Buffer<f32>]) -> Result<f64> {
    global_norm_cached(grads, &mut None)
}

/// `global_norm` with the multi-tensor table kept in `cached` between calls: one launch and one
/// read-back per step, and no upload while the gradients stay where they are.
pub fn global_norm_cached(grads: &[&Buffer<f32>], cached: &mut Option<TensorTable>) -> Result<f64> {
    let live: Vec<&Buffer<f32>> = grads.iter().copied().filter(|g| !g.is_empty()).collect();
    let Some(first) = live.first() else {
        return Ok(0.0);
    };
    let total: usize = live.iter().map(|g| ops::sum_squares_blocks(g.len())).sum();
    let partial = {
        let _role = first.device().role(crate::device::Role::Workspace);
        first.device().alloc::<f32>(total, "grad norm partials")?
    };
    multi_tensor::sum_squares_partial_multi(&live, &partial, cached)?;
    let sum: f64 = partial.to_host()?.iter().map(|&v| v as f64).sum();
    Ok(sum.sqrt())
}

/// AdamW with moments per parameter name.
pub struct Optimizer {
    pub hp: AdamW,
    pub kind: OptimizerKind,
    pub step: u64,
    /// The global gradient norm of the last step, before clipping (what PyTorch's
    /// `clip_grad_norm_` returns).
    pub grad_norm: Option<f64>,
    moments: HashMap<String, Moments>,
    /// adamw8bit's quantisation maps, uploaded at its first step.
    maps: Option<QuantMaps>,
    /// The multi-tensor kernels' tables (gradient norm, fp32 and 8-bit updates), kept between
    /// steps.
    norm_table: Option<TensorTable>,
    update_table: Option<TensorTable>,
    update8_table: Option<TensorTable>,
}

impl Optimizer {
    pub fn new(hp: AdamW) -> Self {
        Optimizer::with_kind(hp, OptimizerKind::AdamW)
    }

    pub fn with_kind(hp: AdamW, kind: OptimizerKind) -> Self {
        Optimizer {
            hp,
            kind,
            step: 0,
            grad_norm: None,
            moments: HashMap::new(),
            maps: None,
            norm_table: None,
            update_table: None,
            update8_table: None,
        }
    }

    /// Whether this optimizer keeps `name`'s moments as 8-bit codes.
    pub fn quantizes(&self, name: &str, elements: usize) -> bool {
        match self.kind {
            OptimizerKind::AdamW => false,
            OptimizerKind::AdamW8bit => !keeps_32bit_moments(name, elements),
            OptimizerKind::AdamW8bitAll => elements >= MIN_8BIT_ELEMENTS,
        }
    }

    /// One step at learning rate `lr`; with `clip`, gradients are scaled by
    /// min(1, clip / (global norm + 1e-6)) first, as `torch.nn.utils.clip_grad_norm_` scales
    /// them. Returns the global norm before clipping.
    pub fn step(&mut self, slots: &mut [Slot], lr: f32, clip: Option<f32>) -> Result<f64> {
        self.step_scaled(slots, lr, clip, 1.0)
    }

    /// As `step`, with the gradients multiplied by `multiplier` first (1 / micro-batches for
    /// summed accumulated gradients); the norm returned and clipped is the multiplied one.
    pub fn step_scaled(
        &mut self,
        slots: &mut [Slot],
        lr: f32,
        clip: Option<f32>,
        multiplier: f32,
    ) -> Result<f64> {
        let grads: Vec<&Buffer<f32>> = slots.iter().map(|s| &*s.grad).collect();
        let norm = multiplier as f64 * global_norm_cached(&grads, &mut self.norm_table)?;
        if !norm.is_finite() {
            return Err(Error::Invalid(format!(
                "gradient norm is {norm}: the step is skipped, nothing updated"
            )));
        }
        // PyTorch's clip coefficient, its 1e-6 included.
        let scale = multiplier
            * match clip {
                Some(c) => (c as f64 / (norm + 1e-6)).min(1.0) as f32,
                None => 1.0,
            };
        self.step += 1;
        self.grad_norm = Some(norm);
        for s in slots.iter() {
            if !self.moments.contains_key(&s.name) {
                let (dev, n) = (s.value.device(), s.value.len());
                let _role = dev.role(crate::device::Role::OptimizerState);
                let moments = if self.quantizes(&s.name, n) {
                    if self.maps.is_none() {
                        self.maps = Some(QuantMaps::new(dev)?);
                    }
                    Moments::Quantized(QuantizedMoments::zeros(dev, n)?)
                } else {
                    Moments::Full(dev.zeros(n, "adam m")?, dev.zeros(n, "adam v")?)
                };
                self.moments.insert(s.name.to_string(), moments);
            }
        }
        // Every fp32-moment parameter in one launch, every 8-bit one in another; the device
        // writes the values and moments.
        let mut full = Vec::new();
        let mut quantized = Vec::new();
        for s in slots.iter() {
            match &self.moments[&s.name] {
                Moments::Full(m, v) => full.push(AdamWTensor {
                    param: &*s.value,
                    grad: s.grad,
                    m,
                    v,
                    lr_scale: s.lr_scale,
                    decay: s.decay,
                }),
                Moments::Quantized(state) => quantized.push(AdamW8bitTensor {
                    param: &*s.value,
                    grad: s.grad,
                    state,
                    lr_scale: s.lr_scale,
                    decay: s.decay,
                }),
            }
        }
        let hp = AdamW { lr, ..self.hp };
        multi_tensor::adamw_step_multi(&hp, self.step, &full, scale, &mut self.update_table)?;
        if let Some(maps) = &self.maps {
            adamw8bit::adamw8bit_step_multi(
                &hp,
                self.step,
                &quantized,
                scale,
                maps,
                &mut self.update8_table,
            )?;
        }
        Ok(norm)
    }

    /// Sets the fp32 moments of one parameter (restoring a checkpoint).
    pub fn set_moments(&mut self, name: &str, m: Buffer<f32>, v: Buffer<f32>) {
        self.moments.insert(name.to_string(), Moments::Full(m, v));
    }

    /// Sets the 8-bit moments of one parameter (restoring a checkpoint).
    pub fn set_quantized_moments(&mut self, name: &str, state: QuantizedMoments) -> Result<()> {
        if self.maps.is_none() {
            self.maps = Some(QuantMaps::new(state.m.device())?);
        }
        self.moments
            .insert(name.to_string(), Moments::Quantized(state));
        Ok(())
    }

    /// The fp32 moments of one parameter (None: none yet, or 8-bit ones).
    pub fn moments(&self, name: &str) -> Option<(&Buffer<f32>, &Buffer<f32>)> {
        match self.moments.get(name)? {
            Moments::Full(m, v) => Some((m, v)),
            Moments::Quantized(_) => None,
        }
    }

    /// The moments of one parameter, fp32 or 8-bit (for checkpoints).
    pub fn moments_ref(&self, name: &str) -> Option<MomentsRef<'_>> {
        Some(match self.moments.get(name)? {
            Moments::Full(m, v) => MomentsRef::Full(m, v),
            Moments::Quantized(q) => MomentsRef::Quantized(q),
        })
    }
}
