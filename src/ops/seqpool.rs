//! Sequence pooling over real tokens (kernels/seqpool.cu).
use super::shapes::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::Result;

/// How a sequence's token states pool into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    Max = 0,
    Mean = 1,
    /// Last states of a bidirectional RNN: first half at the last real token, second at 0.
    Last = 2,
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    x: &Buffer<f32>,
    lengths: &Buffer<i32>,
    out: &mut Buffer<f32>,
    argmax: &mut Buffer<i32>,
    len: usize,
    features: usize,
    pool: Pool,
    halves: usize,
) -> Result<()> {
    const OP: &str = "seq_pool_forward";
    let batch = lengths.len();
    need(OP, "x", x, batch * len * features)?;
    need(OP, "out", out, batch * features)?;
    need(OP, "argmax", argmax, batch * features)?;
    let i = |what, v| to_i32(OP, what, v).map(Arg::I32);
    let args = [
        x.into(),
        lengths.into(),
        (&*out).into(),
        (&*argmax).into(),
        i("batch", batch)?,
        i("len", len)?,
        i("features", features)?,
        Arg::I32(pool as i32),
        i("halves", halves)?,
    ];
    x.device().launch(
        OP,
        LaunchConfig::for_elements(batch * features, 256, 4096),
        &args,
    )
}

#[allow(clippy::too_many_arguments)]
pub fn backward(
    dout: &Buffer<f32>,
    lengths: &Buffer<i32>,
    argmax: &Buffer<i32>,
    dx: &mut Buffer<f32>,
    len: usize,
    features: usize,
    pool: Pool,
    halves: usize,
) -> Result<()> {
    const OP: &str = "seq_pool_backward";
    let batch = lengths.len();
    need(OP, "dout", dout, batch * features)?;
    need(OP, "dx", dx, batch * len * features)?;
    let i = |what, v| to_i32(OP, what, v).map(Arg::I32);
    let args = [
        dout.into(),
        lengths.into(),
        argmax.into(),
        (&*dx).into(),
        i("batch", batch)?,
        i("len", len)?,
        i("features", features)?,
        Arg::I32(pool as i32),
        i("halves", halves)?,
    ];
    dout.device().launch(
        OP,
        LaunchConfig::for_elements(batch * len * features, 256, 4096),
        &args,
    )
}
