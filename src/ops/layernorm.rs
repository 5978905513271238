//! LayerNorm over the last axis (kernels/layernorm.cu).
use super::rows::THREADS_PER_BLOCK;
use super::shapes::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::Result;

fn cfg(rows: usize) -> LaunchConfig {
    let per_block = THREADS_PER_BLOCK as usize / 32;
    LaunchConfig {
        grid: (rows.div_ceil(per_block).max(1) as u32, 1, 1),
        block: (THREADS_PER_BLOCK, 1, 1),
        shared_bytes: 0,
    }
}

/// Per-row statistics forward saves for backward.
pub struct Stats {
    pub mean: Buffer<f32>,
    pub rstd: Buffer<f32>,
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &Buffer<f32>,
    gamma: &Buffer<f32>,
    beta: &Buffer<f32>,
    y: &mut Buffer<f32>,
    stats: &mut Stats,
    rows: usize,
    cols: usize,
    eps: f32,
) -> Result<()> {
    const OP: &str = "layernorm_forward";
    need(OP, "x", x, rows * cols)?;
    need(OP, "gamma", gamma, cols)?;
    need(OP, "beta", beta, cols)?;
    need(OP, "y", y, rows * cols)?;
    need(OP, "mean", &stats.mean, rows)?;
    need(OP, "rstd", &stats.rstd, rows)?;
    if rows == 0 {
        return Ok(());
    }
    let args = [
        x.into(),
        gamma.into(),
        beta.into(),
        (&*y).into(),
        (&stats.mean).into(),
        (&stats.rstd).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "cols", cols)?.into(),
        eps.into(),
    ];
    x.device().launch(OP, cfg(rows), &args)
}

/// What `backward` may also write: dropout_backward of dx (rate in [0, 1), seed).
pub struct DroppedGrad<'a> {
    pub out: &'a mut Buffer<f32>,
    pub rate: f32,
    pub seed: u64,
}

/// dx, and dy * xhat per element (column-sum it for dgamma; column-sum dy for dbeta); when
/// `dropped` is given, also the dropout backward of dx in the same pass (the gradient into the
/// dense output of residual + dropout(dense)).
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &Buffer<f32>,
    gamma: &Buffer<f32>,
    stats: &Stats,
    dy: &Buffer<f32>,
    dx: &mut Buffer<f32>,
    dy_xhat: &mut Buffer<f32>,
    dropped: Option<DroppedGrad>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "layernorm_backward";
    need(OP, "x", x, rows * cols)?;
    need(OP, "dy", dy, rows * cols)?;
    need(OP, "dx", dx, rows * cols)?;
    need(OP, "dy_xhat", dy_xhat, rows * cols)?;
    let (rate, seed) = dropped.as_ref().map_or((0.0, 0), |d| (d.rate, d.seed));
    if let Some(d) = &dropped {
        need(OP, "dx_dropped", d.out, rows * cols)?;
        if !(0.0..1.0).contains(&rate) {
            return Err(crate::Error::Invalid(format!(
                "{OP}: dropout rate {rate} is not in [0, 1)"
            )));
        }
    }
    if rows == 0 {
        return Ok(());
    }
    let args = [
        x.into(),
        gamma.into(),
        (&stats.mean).into(),
        (&stats.rstd).into(),
        dy.into(),
        (&*dx).into(),
        (&*dy_xhat).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "cols", cols)?.into(),
        match &dropped {
            Some(d) => (&*d.out).into(),
            None => Arg::Null,
        },
        Arg::F32(rate),
        Arg::U64(seed),
    ];
    x.device().launch(OP, cfg(rows), &args)
}
