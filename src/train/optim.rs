//! The optimizer: AdamW over named parameters with per-parameter learning rates (encoder,
//! embeddings and head can differ), global-norm gradient clipping folded into the update, and
//! the linear warm-up / linear decay schedule of HF's get_linear_schedule_with_warmup.

use std::collections::HashMap;

use crate::device::Buffer;
use crate::error::{Error, Result};
use crate::ops::multi_tensor::{self, AdamWTensor, TensorTable};
use crate::ops::{self, AdamW};

/// Linear warm-up to `peak` over `warmup` steps, then linear decay to 0 at `total`.
#[derive(Clone, Copy, Debug)]
pub struct Schedule {
    pub peak: f64,
    pub warmup: u64,
    pub total: u64,
}

impl Schedule {
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

/// One parameter as the optimizer sees it.
pub struct Slot<'a> {
    pub name: String,
    pub value: &'a mut Buffer<f32>,
    pub grad: &'a Buffer<f32>,
    /// Multiplies the step's learning rate (e.g. a head trained faster than the encoder).
    pub lr_scale: f32,
    /// No weight decay on biases and LayerNorm weights, as is usual for BERT.
    pub decay: bool,
}

impl<'a> Slot<'a> {
    pub fn new(
        name: String,
        value: &'a mut Buffer<f32>,
        grad: &'a Buffer<f32>,
        lr_scale: f32,
        decay: bool,
    ) -> Self {
        Slot {
            name,
            value,
            grad,
            lr_scale,
            decay,
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
    pub step: u64,
    /// The global gradient norm of the last step, before clipping (what PyTorch's
    /// `clip_grad_norm_` returns).
    pub grad_norm: Option<f64>,
    moments: HashMap<String, (Buffer<f32>, Buffer<f32>)>,
    /// The multi-tensor kernels' tables (gradient norm, update), kept between steps.
    norm_table: Option<TensorTable>,
    update_table: Option<TensorTable>,
}

impl Optimizer {
    pub fn new(hp: AdamW) -> Self {
        Optimizer {
            hp,
            step: 0,
            grad_norm: None,
            moments: HashMap::new(),
            norm_table: None,
            update_table: None,
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
        let grads: Vec<&Buffer<f32>> = slots.iter().map(|s| s.grad).collect();
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
                self.moments.insert(
                    s.name.to_string(),
                    (dev.zeros(n, "adam m")?, dev.zeros(n, "adam v")?),
                );
            }
        }
        // Every parameter in one launch; the device writes the values and moments.
        let tensors: Vec<AdamWTensor> = slots
            .iter()
            .map(|s| {
                let (m, v) = &self.moments[&s.name];
                AdamWTensor {
                    param: &*s.value,
                    grad: s.grad,
                    m,
                    v,
                    lr_scale: s.lr_scale,
                    decay: s.decay,
                }
            })
            .collect();
        let hp = AdamW { lr, ..self.hp };
        multi_tensor::adamw_step_multi(&hp, self.step, &tensors, scale, &mut self.update_table)?;
        Ok(norm)
    }

    /// Sets the moments of one parameter (restoring a checkpoint).
    pub fn set_moments(&mut self, name: &str, m: Buffer<f32>, v: Buffer<f32>) {
        self.moments.insert(name.to_string(), (m, v));
    }

    /// The moments of one parameter (for checkpoints).
    pub fn moments(&self, name: &str) -> Option<(&Buffer<f32>, &Buffer<f32>)> {
        self.moments.get(name).map(|(m, v)| (m, v))
    }
}
