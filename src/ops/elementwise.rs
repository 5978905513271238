//! Elementwise maps over flat buffers.
use super::shapes::need;
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::Result;
use half::f16;

/// Grid-stride kernels: 256 threads a block, at most 4096 blocks (plenty to fill any card).
fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::for_elements(n, 256, 4096)
}

pub fn add(a: &Buffer<f32>, b: &Buffer<f32>, c: &mut Buffer<f32>, n: usize) -> Result<()> {
    for (what, buf) in [("a", a), ("b", b), ("c", &*c)] {
        need("add", what, buf, n)?;
    }
    if n == 0 {
        return Ok(());
    }
    a.device().launch(
        "add_forward",
        cfg(n),
        &[a.into(), b.into(), (&*c).into(), Arg::I64(n as i64)],
    )
}

/// y = alpha * x (also the backward of a scale).
pub fn scale(x: &Buffer<f32>, y: &mut Buffer<f32>, alpha: f32, n: usize) -> Result<()> {
    need("scale", "x", x, n)?;
    need("scale", "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    x.device().launch(
        "scale_forward",
        cfg(n),
        &[x.into(), (&*y).into(), alpha.into(), Arg::I64(n as i64)],
    )
}

pub fn fill(y: &mut Buffer<f32>, value: f32) -> Result<()> {
    let n = y.len();
    if n == 0 {
        return Ok(());
    }
    y.device().clone().launch(
        "fill_f32",
        cfg(n),
        &[(&*y).into(), value.into(), Arg::I64(n as i64)],
    )
}

pub fn convert_f32_to_f16(x: &Buffer<f32>, y: &mut Buffer<f16>) -> Result<()> {
    need("convert_f32_to_f16", "y", y, x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    x.device().launch(
        "convert_f32_to_f16",
        cfg(x.len()),
        &[x.into(), (&*y).into(), Arg::I64(x.len() as i64)],
    )
}

pub fn convert_f16_to_f32(x: &Buffer<f16>, y: &mut Buffer<f32>) -> Result<()> {
    need("convert_f16_to_f32", "y", y, x.len())?;
    if x.is_empty() {
        return Ok(());
    }
    x.device().launch(
        "convert_f16_to_f32",
        cfg(x.len()),
        &[x.into(), (&*y).into(), Arg::I64(x.len() as i64)],
    )
}

/// dst[m] = src[m]^T for `count` row-major `rows` x `cols` matrices.
pub fn transpose(
    src: &Buffer<f32>,
    dst: &mut Buffer<f32>,
    count: usize,
    rows: usize,
    cols: usize,
) -> Result<()> {
    let n = count * rows * cols;
    need("transpose", "src", src, n)?;
    need("transpose", "dst", dst, n)?;
    if n == 0 {
        return Ok(());
    }
    let i = |v: usize| super::shapes::to_i32("transpose", "size", v).map(Arg::I32);
    src.device().launch(
        "transpose_f32",
        cfg(n),
        &[src.into(), (&*dst).into(), i(count)?, i(rows)?, i(cols)?],
    )
}

/// Where a rows x cols block sits in a row-major buffer: offset of its first element and the
/// buffer's leading dimension.
#[derive(Clone, Copy, Debug)]
pub struct Block {
    pub offset: usize,
    pub ld: usize,
}

/// Copies a rows x cols block from `src` to `dst` (concatenation of features, and its split).
pub fn copy_block(
    src: &Buffer<f32>,
    s: Block,
    dst: &mut Buffer<f32>,
    d: Block,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let span = |b: Block| b.offset + (rows - 1) * b.ld + cols;
    need("copy_block", "src", src, span(s))?;
    need("copy_block", "dst", dst, span(d))?;
    let i = |v: usize| super::shapes::to_i32("copy_block", "size", v).map(Arg::I32);
    let args = [
        src.arg_at(s.offset),
        i(s.ld)?,
        dst.arg_at(d.offset),
        i(d.ld)?,
        i(rows)?,
        i(cols)?,
    ];
    src.device().launch("copy_block", cfg(rows * cols), &args)
}

/// Inverted dropout with a counter-based mask: keep element i iff hash(seed, i) >= p.
pub fn dropout(
    x: &Buffer<f32>,
    y: &mut Buffer<f32>,
    p: f32,
    seed: u64,
    backward: bool,
) -> Result<()> {
    let n = x.len();
    need("dropout", "y", y, n)?;
    if !(0.0..1.0).contains(&p) {
        return Err(crate::Error::Invalid(format!(
            "dropout probability {p} is not in [0, 1)"
        )));
    }
    if n == 0 {
        return Ok(());
    }
    let kernel = if backward {
        "dropout_backward"
    } else {
        "dropout_forward"
    };
    x.device().launch(
        kernel,
        cfg(n),
        &[
            x.into(),
            (&*y).into(),
            Arg::I64(n as i64),
            p.into(),
            Arg::U64(seed),
        ],
    )
}

/// y = f(x) elementwise through `kernel(x, y, n)`.
fn unary(kernel: &str, x: &Buffer<f32>, y: &mut Buffer<f32>, n: usize) -> Result<()> {
    need(kernel, "x", x, n)?;
    need(kernel, "y", y, n)?;
    if n == 0 {
        return Ok(());
    }
    x.device().launch(
        kernel,
        cfg(n),
        &[x.into(), (&*y).into(), Arg::I64(n as i64)],
    )
}

/// dx = dy * f'(.) elementwise, where `saved` is the forward's input (GELU, ReLU) or output
/// (tanh): through `kernel(saved, dy, dx, n)`, or, with no `dy`, `kernel(saved, g, n)` turning
/// dy into dx in `out`'s own buffer.
fn unary_backward(
    kernel: &str,
    saved: &Buffer<f32>,
    dy: Option<&Buffer<f32>>,
    out: &mut Buffer<f32>,
    n: usize,
) -> Result<()> {
    need(kernel, "saved", saved, n)?;
    if let Some(dy) = dy {
        need(kernel, "dy", dy, n)?;
    }
    need(kernel, "dx", out, n)?;
    if n == 0 {
        return Ok(());
    }
    let mut args: Vec<Arg> = vec![saved.into()];
    args.extend(dy.map(Arg::from));
    args.extend([(&*out).into(), Arg::I64(n as i64)]);
    saved.device().launch(kernel, cfg(n), &args)
}

/// GELU, erf form: y = x Phi(x).
pub fn gelu_forward(x: &Buffer<f32>, y: &mut Buffer<f32>, n: usize) -> Result<()> {
    unary("gelu_forward", x, y, n)
}

/// In place: `grad` holds dy and becomes dx = dy (Phi(x) + x phi(x)), from the forward's input.
pub fn gelu_backward(x: &Buffer<f32>, grad: &mut Buffer<f32>, n: usize) -> Result<()> {
    unary_backward("gelu_backward", x, None, grad, n)
}

pub fn relu_forward(x: &Buffer<f32>, y: &mut Buffer<f32>, n: usize) -> Result<()> {
    unary("relu_forward", x, y, n)
}

/// In place: `grad` holds dy and becomes dx = dy where x > 0, from the forward's input.
pub fn relu_backward(x: &Buffer<f32>, grad: &mut Buffer<f32>, n: usize) -> Result<()> {
    unary_backward("relu_backward", x, None, grad, n)
}

pub fn tanh_forward(x: &Buffer<f32>, y: &mut Buffer<f32>, n: usize) -> Result<()> {
    unary("tanh_forward", x, y, n)
}

/// dx = dy (1 - y^2), from the forward's output y.
pub fn tanh_backward(
    y: &Buffer<f32>,
    dy: &Buffer<f32>,
    dx: &mut Buffer<f32>,
    n: usize,
) -> Result<()> {
    unary_backward("tanh_backward", y, Some(dy), dx, n)
}
