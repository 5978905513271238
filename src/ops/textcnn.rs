//! The Text-CNN kernels (kernels/textcnn.cu): padding copy, weight permutation, pooling.
use super::shapes::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::Result;

fn cfg(n: usize) -> LaunchConfig {
    LaunchConfig::for_elements(n, 256, 4096)
}

/// Shapes of one Text-CNN batch: B sequences of up to L tokens with C channels, each padded to
/// Lp rows in the working buffer, plus `extra` zero rows after the last.
#[derive(Clone, Copy, Debug)]
pub struct Padding {
    pub batch: usize,
    pub len: usize,
    pub padded_len: usize,
    pub channels: usize,
    pub extra: usize,
}

impl Padding {
    pub fn rows(&self) -> usize {
        self.batch * self.padded_len + self.extra
    }
}

pub fn pad_rows(
    x: &Buffer<f32>,
    lengths: &Buffer<i32>,
    padded: &mut Buffer<f32>,
    p: &Padding,
) -> Result<()> {
    const OP: &str = "textcnn_pad_rows";
    need(OP, "x", x, p.batch * p.len * p.channels)?;
    need(OP, "lengths", lengths, p.batch)?;
    need(OP, "padded", padded, p.rows() * p.channels)?;
    let args = [
        x.into(),
        lengths.into(),
        (&*padded).into(),
        to_i32(OP, "batch", p.batch)?.into(),
        to_i32(OP, "len", p.len)?.into(),
        to_i32(OP, "padded_len", p.padded_len)?.into(),
        to_i32(OP, "channels", p.channels)?.into(),
        to_i32(OP, "extra", p.extra)?.into(),
    ];
    x.device().launch(OP, cfg(p.rows() * p.channels), &args)
}

pub fn unpad_rows(
    dpadded: &Buffer<f32>,
    lengths: &Buffer<i32>,
    dx: &mut Buffer<f32>,
    p: &Padding,
) -> Result<()> {
    const OP: &str = "textcnn_unpad_rows";
    need(OP, "dpadded", dpadded, p.batch * p.padded_len * p.channels)?;
    need(OP, "dx", dx, p.batch * p.len * p.channels)?;
    let args = [
        dpadded.into(),
        lengths.into(),
        (&*dx).into(),
        to_i32(OP, "batch", p.batch)?.into(),
        to_i32(OP, "len", p.len)?.into(),
        to_i32(OP, "padded_len", p.padded_len)?.into(),
        to_i32(OP, "channels", p.channels)?.into(),
    ];
    dpadded
        .device()
        .launch(OP, cfg(p.batch * p.len * p.channels), &args)
}

/// torch [F, C, width] -> taps [width, C, F] (`to_torch` = false), or back.
pub fn permute_weight(
    src: &Buffer<f32>,
    dst: &mut Buffer<f32>,
    filters: usize,
    channels: usize,
    width: usize,
    to_torch: bool,
) -> Result<()> {
    const OP: &str = "textcnn_permute_weight";
    let n = filters * channels * width;
    need(OP, "src", src, n)?;
    need(OP, "dst", dst, n)?;
    let args = [
        src.into(),
        (&*dst).into(),
        to_i32(OP, "filters", filters)?.into(),
        to_i32(OP, "channels", channels)?.into(),
        to_i32(OP, "width", width)?.into(),
        Arg::I32(to_torch as i32),
    ];
    src.device().launch(OP, cfg(n), &args)
}

/// Where one width's pooled features go: columns col .. col + filters of a [B, cols] matrix.
#[derive(Clone, Copy, Debug)]
pub struct PoolSlot {
    pub filters: usize,
    pub width: usize,
    pub cols: usize,
    pub col: usize,
}

pub fn pool_forward(
    out: &Buffer<f32>,
    lengths: &Buffer<i32>,
    pooled: &mut Buffer<f32>,
    argmax: &mut Buffer<i32>,
    p: &Padding,
    s: &PoolSlot,
) -> Result<()> {
    const OP: &str = "textcnn_pool_forward";
    need(OP, "out", out, p.batch * p.padded_len * s.filters)?;
    need(OP, "pooled", pooled, p.batch * s.cols)?;
    need(OP, "argmax", argmax, p.batch * s.filters)?;
    let args = [
        out.into(),
        lengths.into(),
        (&*pooled).into(),
        (&*argmax).into(),
        to_i32(OP, "batch", p.batch)?.into(),
        to_i32(OP, "padded_len", p.padded_len)?.into(),
        to_i32(OP, "filters", s.filters)?.into(),
        to_i32(OP, "width", s.width)?.into(),
        to_i32(OP, "cols", s.cols)?.into(),
        to_i32(OP, "col", s.col)?.into(),
    ];
    out.device().launch(OP, cfg(p.batch * s.filters), &args)
}

pub fn pool_backward(
    dpooled: &Buffer<f32>,
    argmax: &Buffer<i32>,
    dout: &mut Buffer<f32>,
    p: &Padding,
    s: &PoolSlot,
) -> Result<()> {
    const OP: &str = "textcnn_pool_backward";
    need(OP, "dpooled", dpooled, p.batch * s.cols)?;
    need(OP, "dout", dout, p.batch * p.padded_len * s.filters)?;
    let args = [
        dpooled.into(),
        argmax.into(),
        (&*dout).into(),
        to_i32(OP, "batch", p.batch)?.into(),
        to_i32(OP, "padded_len", p.padded_len)?.into(),
        to_i32(OP, "filters", s.filters)?.into(),
        to_i32(OP, "cols", s.cols)?.into(),
        to_i32(OP, "col", s.col)?.into(),
    ];
    dpooled
        .device()
        .launch(OP, cfg(p.batch * p.padded_len * s.filters), &args)
}

/// ReLU'd feature maps [B, L, cols] (this width at columns col..col + filters), 0 at padding.
pub fn maps_forward(
    out: &Buffer<f32>,
    lengths: &Buffer<i32>,
    maps: &mut Buffer<f32>,
    p: &Padding,
    s: &PoolSlot,
) -> Result<()> {
    const OP: &str = "textcnn_maps_forward";
    need(OP, "out", out, p.batch * p.padded_len * s.filters)?;
    need(OP, "maps", maps, p.batch * p.len * s.cols)?;
    let args = [
        out.into(),
        lengths.into(),
        (&*maps).into(),
        to_i32(OP, "batch", p.batch)?.into(),
        to_i32(OP, "len", p.len)?.into(),
        to_i32(OP, "padded_len", p.padded_len)?.into(),
        to_i32(OP, "filters", s.filters)?.into(),
        to_i32(OP, "cols", s.cols)?.into(),
        to_i32(OP, "col", s.col)?.into(),
    ];
    out.device()
        .launch(OP, cfg(p.batch * p.len * s.filters), &args)
}

pub fn maps_backward(
    out: &Buffer<f32>,
    dmaps: &Buffer<f32>,
    lengths: &Buffer<i32>,
    dout: &mut Buffer<f32>,
    p: &Padding,
    s: &PoolSlot,
) -> Result<()> {
    const OP: &str = "textcnn_maps_backward";
    need(OP, "dmaps", dmaps, p.batch * p.len * s.cols)?;
    need(OP, "dout", dout, p.batch * p.padded_len * s.filters)?;
    let args = [
        out.into(),
        dmaps.into(),
        lengths.into(),
        (&*dout).into(),
        to_i32(OP, "batch", p.batch)?.into(),
        to_i32(OP, "len", p.len)?.into(),
        to_i32(OP, "padded_len", p.padded_len)?.into(),
        to_i32(OP, "filters", s.filters)?.into(),
        to_i32(OP, "cols", s.cols)?.into(),
        to_i32(OP, "col", s.col)?.into(),
    ];
    out.device()
        .launch(OP, cfg(p.batch * p.padded_len * s.filters), &args)
}
