//! The loss kernels (kernels/loss.cu), one function per launch. The loss layer
//! (model::loss) strings them together.
use super::shapes::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::{Error, Result};

/// Most GHM bins a launch supports (the kernel's shared histogram).
pub const GHM_MAX_BINS: usize = 256;

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (rows.div_ceil(4).max(1) as u32, 1, 1),
        block: (super::rows::THREADS_PER_BLOCK, 1, 1),
        shared_bytes: 0,
    }
}

/// A launch of one block of `threads` (GHM's passes over its few bins).
fn one_block(threads: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (1, 1, 1),
        block: (threads, 1, 1),
        shared_bytes: 0,
    }
}

fn opt(b: Option<&Buffer<f32>>) -> Arg {
    b.map_or(Arg::Null, Arg::from)
}

/// Per-row statistics of the logits: the max m, s = log sum exp(z - m), and g = 1 - p_y.
pub struct RowStats {
    pub row_max: Buffer<f32>,
    pub log_sum: Buffer<f32>,
    pub one_minus_py: Buffer<f32>,
}

pub fn loss_row_stats(
    logits: &Buffer<f32>,
    labels: &Buffer<i32>,
    stats: &mut RowStats,
    rows: usize,
    classes: usize,
) -> Result<()> {
    const OP: &str = "loss_row_stats";
    need(OP, "logits", logits, rows * classes)?;
    need(OP, "labels", labels, rows)?;
    need(OP, "row_max", &stats.row_max, rows)?;
    need(OP, "log_sum", &stats.log_sum, rows)?;
    need(OP, "one_minus_py", &stats.one_minus_py, rows)?;
    let args = [
        logits.into(),
        labels.into(),
        (&stats.row_max).into(),
        (&stats.log_sum).into(),
        (&stats.one_minus_py).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "classes", classes)?.into(),
    ];
    logits.device().launch(OP, rows_config(rows), &args)
}

/// GHM histogram, moving average (in place in `ema`) and per-bin weights.
pub fn ghm_update_bins(
    one_minus_py: &Buffer<f32>,
    rows: usize,
    alpha: f32,
    ema: &mut Buffer<f32>,
    bin_weight: &mut Buffer<f32>,
) -> Result<()> {
    const OP: &str = "ghm_update_bins";
    let bins = bin_weight.len();
    if bins == 0 || bins > GHM_MAX_BINS || ema.len() != bins {
        return Err(Error::Invalid(format!(
            "{OP}: {bins} bins with a moving average of {}; 1..={GHM_MAX_BINS} bins, both the same length",
            ema.len()
        )));
    }
    need(OP, "one_minus_py", one_minus_py, rows)?;
    let cfg = one_block(256);
    let args = [
        one_minus_py.into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "bins", bins)?.into(),
        alpha.into(),
        (&*ema).into(),
        (&*bin_weight).into(),
    ];
    one_minus_py.device().launch(OP, cfg, &args)
}

/// The batch's samples per GHM bin into `counts` (a data-parallel step's half of
/// `ghm_update_bins`: the ranks exchange the counts).
pub fn ghm_count_bins(
    one_minus_py: &Buffer<f32>,
    rows: usize,
    counts: &mut Buffer<i32>,
) -> Result<()> {
    const OP: &str = "ghm_count_bins";
    let bins = counts.len();
    if bins == 0 || bins > GHM_MAX_BINS {
        return Err(Error::Invalid(format!(
            "{OP}: {bins} bins; 1..={GHM_MAX_BINS} supported"
        )));
    }
    need(OP, "one_minus_py", one_minus_py, rows)?;
    let cfg = one_block(256);
    let args = [
        one_minus_py.into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "bins", bins)?.into(),
        (&*counts).into(),
    ];
    one_minus_py.device().launch(OP, cfg, &args)
}

/// One micro-batch's bin counts applied to the moving average (in place in `ema`) and the
/// per-bin weights, as `ghm_update_bins` applies its own.
pub fn ghm_apply_counts(
    counts: &Buffer<i32>,
    alpha: f32,
    ema: &mut Buffer<f32>,
    bin_weight: &mut Buffer<f32>,
) -> Result<()> {
    const OP: &str = "ghm_apply_counts";
    let bins = bin_weight.len();
    if bins == 0 || bins > GHM_MAX_BINS || ema.len() != bins || counts.len() != bins {
        return Err(Error::Invalid(format!(
            "{OP}: {bins} bins with a moving average of {} and {} counts; 1..={GHM_MAX_BINS} bins, all the same length",
            ema.len(),
            counts.len()
        )));
    }
    let cfg = one_block(32);
    let args = [
        counts.into(),
        to_i32(OP, "bins", bins)?.into(),
        alpha.into(),
        (&*ema).into(),
        (&*bin_weight).into(),
    ];
    counts.device().launch(OP, cfg, &args)
}

/// a_i = class_weight[y_i] * bin_weight[bin(g_i)], either factor optional.
pub fn loss_row_weights(
    labels: &Buffer<i32>,
    one_minus_py: &Buffer<f32>,
    class_weight: Option<&Buffer<f32>>,
    bin_weight: Option<&Buffer<f32>>,
    weight: &mut Buffer<f32>,
    rows: usize,
) -> Result<()> {
    const OP: &str = "loss_row_weights";
    need(OP, "labels", labels, rows)?;
    need(OP, "one_minus_py", one_minus_py, rows)?;
    need(OP, "weight", weight, rows)?;
    let bins = bin_weight.map_or(0, |b| b.len());
    let args = [
        labels.into(),
        one_minus_py.into(),
        opt(class_weight),
        opt(bin_weight),
        to_i32(OP, "bins", bins)?.into(),
        (&*weight).into(),
        to_i32(OP, "rows", rows)?.into(),
    ];
    labels
        .device()
        .launch(OP, LaunchConfig::for_elements(rows, 256, 1024), &args)
}

/// What the final pass needs besides the logits and labels.
pub struct FinalPass<'a> {
    pub stats: &'a RowStats,
    pub weight: Option<&'a Buffer<f32>>,
    /// Device scalar to divide by (weighted mean); when None, `fixed_norm` is used.
    pub weight_sum: Option<&'a Buffer<f32>>,
    pub fixed_norm: f32,
    pub soft_targets: Option<&'a Buffer<f32>>,
    /// Some((gamma, per-class alpha)) for the focal loss.
    pub focal: Option<(f32, Option<&'a Buffer<f32>>)>,
}

/// Row i's share of the loss into `row_loss[i]` and its gradient row into `grad`.
pub fn loss_rows_final(
    logits: &Buffer<f32>,
    labels: &Buffer<i32>,
    pass: &FinalPass,
    row_loss: &mut Buffer<f32>,
    grad: &mut Buffer<f32>,
    rows: usize,
    classes: usize,
) -> Result<()> {
    const OP: &str = "loss_rows_final";
    need(OP, "logits", logits, rows * classes)?;
    need(OP, "grad", grad, rows * classes)?;
    need(OP, "row_loss", row_loss, rows)?;
    if let Some(t) = pass.soft_targets {
        need(OP, "soft_targets", t, classes * classes)?;
    }
    let (focal, gamma, alpha) = match pass.focal {
        Some((g, a)) => (1, g, opt(a)),
        None => (0, 0.0, Arg::Null),
    };
    let args = [
        logits.into(),
        labels.into(),
        (&pass.stats.row_max).into(),
        (&pass.stats.log_sum).into(),
        (&pass.stats.one_minus_py).into(),
        opt(pass.weight),
        opt(pass.weight_sum),
        pass.fixed_norm.into(),
        opt(pass.soft_targets),
        Arg::I32(focal),
        gamma.into(),
        alpha,
        (&*row_loss).into(),
        (&*grad).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "classes", classes)?.into(),
    ];
    logits.device().launch(OP, rows_config(rows), &args)
}
