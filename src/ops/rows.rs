//! Row-wise operations: softmax, reductions over the last axis, and column sums.
use super::shapes::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::{Error, Result};

/// Warps per block for the one-warp-per-row kernels.
const ROWS_PER_BLOCK: usize = 4;
pub(super) const THREADS_PER_BLOCK: u32 = 32 * ROWS_PER_BLOCK as u32;

fn rows_config(rows: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (rows.div_ceil(ROWS_PER_BLOCK).max(1) as u32, 1, 1),
        block: (THREADS_PER_BLOCK, 1, 1),
        shared_bytes: 0,
    }
}

pub fn softmax_rows_forward(
    x: &Buffer<f32>,
    y: &mut Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "softmax_rows_forward";
    need(OP, "x", x, rows * cols)?;
    need(OP, "y", y, rows * cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let args = [
        x.into(),
        (&*y).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "cols", cols)?.into(),
    ];
    x.device().launch(OP, rows_config(rows), &args)
}

pub fn softmax_rows_backward(
    y: &Buffer<f32>,
    dy: &Buffer<f32>,
    dx: &mut Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "softmax_rows_backward";
    for (what, b) in [("y", y), ("dy", dy), ("dx", &*dx)] {
        need(OP, what, b, rows * cols)?;
    }
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let args = [
        y.into(),
        dy.into(),
        (&*dx).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "cols", cols)?.into(),
    ];
    y.device().launch(OP, rows_config(rows), &args)
}

/// Which reduction over the last axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reduce {
    Sum = 0,
    Mean = 1,
    Max = 2,
    SumSquares = 3,
}

pub fn reduce_rows_forward(
    x: &Buffer<f32>,
    out: &mut Buffer<f32>,
    rows: usize,
    cols: usize,
    op: Reduce,
) -> Result<()> {
    const OP: &str = "reduce_rows_forward";
    need(OP, "x", x, rows * cols)?;
    need(OP, "out", out, rows)?;
    if rows == 0 {
        return Ok(());
    }
    if cols == 0 {
        return Err(crate::Error::Invalid(format!(
            "{OP}: {op:?} over rows of length 0"
        )));
    }
    let args = [
        x.into(),
        (&*out).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "cols", cols)?.into(),
        Arg::I32(op as i32),
    ];
    x.device().launch(OP, rows_config(rows), &args)
}

pub fn reduce_rows_backward(
    x: &Buffer<f32>,
    out: &Buffer<f32>,
    dout: &Buffer<f32>,
    dx: &mut Buffer<f32>,
    rows: usize,
    cols: usize,
    op: Reduce,
) -> Result<()> {
    const OP: &str = "reduce_rows_backward";
    need(OP, "x", x, rows * cols)?;
    need(OP, "out", out, rows)?;
    need(OP, "dout", dout, rows)?;
    need(OP, "dx", dx, rows * cols)?;
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let args = [
        x.into(),
        out.into(),
        dout.into(),
        (&*dx).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "cols", cols)?.into(),
        Arg::I32(op as i32),
    ];
    x.device().launch(OP, rows_config(rows), &args)
}

/// out[c] = sum over rows of x[r, c]: bias gradients. Deterministic (fixed summation order).
pub fn sum_columns(x: &Buffer<f32>, out: &mut Buffer<f32>, rows: usize, cols: usize) -> Result<()> {
    sum_columns_of(x, 0, cols, out, rows, cols)
}

/// out[c] = sum over rows of x[offset + r * ld + c], c < cols: the column sums of a block of a
/// wider row-major matrix (rows `ld` floats apart), without copying it out.
pub fn sum_columns_of(
    x: &Buffer<f32>,
    offset: usize,
    ld: usize,
    out: &mut Buffer<f32>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    const OP: &str = "sum_columns";
    if ld < cols {
        return Err(Error::BadLaunch {
            kernel: OP.into(),
            message: format!("row stride {ld} is below the {cols} columns summed"),
        });
    }
    let span = if rows == 0 {
        0
    } else {
        offset + (rows - 1) * ld + cols
    };
    need(OP, "x", x, span)?;
    need(OP, "out", out, cols)?;
    if cols == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid: (cols.div_ceil(32) as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let args = [
        x.arg_at(offset),
        (&*out).into(),
        to_i32(OP, "rows", rows)?.into(),
        to_i32(OP, "cols", cols)?.into(),
        to_i32(OP, "ld", ld)?.into(),
    ];
    x.device().launch(OP, cfg, &args)
}

/// Blocks `sum_squares_partial` uses for `n` elements: about 1024 elements per block, at most
/// 128 blocks (enough to keep a GPU's loads in flight). A function of n alone, so a norm is the
/// same bit for bit on every run.
pub fn sum_squares_blocks(n: usize) -> usize {
    n.div_ceil(1024).clamp(1, 128)
}

/// Writes `sum_squares_blocks(x.len())` partial sums of x² into `partial` from `offset` on.
pub fn sum_squares_partial(x: &Buffer<f32>, partial: &Buffer<f32>, offset: usize) -> Result<()> {
    let blocks = sum_squares_blocks(x.len());
    need("sum_squares_partial", "partial", partial, offset + blocks)?;
    x.device().launch(
        "sum_squares_partial",
        LaunchConfig {
            grid: (blocks as u32, 1, 1),
            block: (256, 1, 1),
            shared_bytes: 0,
        },
        &[x.into(), partial.arg_at(offset), Arg::I64(x.len() as i64)],
    )
}
