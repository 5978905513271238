//! The AdamW optimizer step.
use super::shapes::need;
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::Result;

/// Hyper-parameters, with torch.optim.AdamW's defaults.
#[derive(Clone, Copy, Debug)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamW {
    /// Bias corrections 1 - beta^t for step t (1-based), computed in f64.
    pub fn bias_corrections(&self, step: u64) -> (f32, f32) {
        let t = step as f64;
        (
            (1.0 - (self.beta1 as f64).powf(t)) as f32,
            (1.0 - (self.beta2 as f64).powf(t)) as f32,
        )
    }
}

/// One AdamW step (number `step`, 1-based) over a parameter buffer and its moments, with the
/// gradient multiplied by `grad_scale` first (1 unless clipping).
pub fn adamw_step(
    hp: &AdamW,
    step: u64,
    param: &mut Buffer<f32>,
    grad: &Buffer<f32>,
    m: &mut Buffer<f32>,
    v: &mut Buffer<f32>,
    grad_scale: f32,
) -> Result<()> {
    let n = param.len();
    for (what, buf) in [("grad", grad), ("m", &*m), ("v", &*v)] {
        need("adamw_step", what, buf, n)?;
    }
    if step == 0 {
        return Err(crate::Error::Invalid(
            "adamw_step: steps count from 1".into(),
        ));
    }
    if n == 0 {
        return Ok(());
    }
    let (bc1, bc2) = hp.bias_corrections(step);
    let args = [
        (&*param).into(),
        grad.into(),
        (&*m).into(),
        (&*v).into(),
        Arg::I64(n as i64),
        hp.lr.into(),
        hp.beta1.into(),
        hp.beta2.into(),
        hp.eps.into(),
        hp.weight_decay.into(),
        bc1.into(),
        bc2.into(),
        grad_scale.into(),
    ];
    grad.device().launch(
        "adamw_step",
        LaunchConfig::for_elements(n, 256, 4096),
        &args,
    )
}
