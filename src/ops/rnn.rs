//! The recurrence kernels (kernels/rnn.cu): one launch walks every time step of both directions.
use super::shapes::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig, MAX_SHARED_BYTES_PER_BLOCK};
use crate::error::{Error, Result};

/// The recurrent cell: PyTorch's GRU or LSTM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cell {
    Gru,
    Lstm,
}

impl Cell {
    pub fn gates(self) -> usize {
        match self {
            Cell::Gru => 3,
            Cell::Lstm => 4,
        }
    }
}

/// Sequences per block (RNN_CHUNK in kernels/rnn.cu).
pub const CHUNK: usize = 4;

/// Batch, padded length and hidden size of one call.
#[derive(Clone, Copy, Debug)]
pub struct RnnShape {
    pub batch: usize,
    pub len: usize,
    pub hidden: usize,
}

/// Floats of dynamic shared memory per block: states and gate buffers of CHUNK sequences.
fn shared_floats(cell: Cell, hidden: usize, backward: bool) -> usize {
    let gh = cell.gates() * hidden;
    CHUNK
        * match (cell, backward) {
            (Cell::Gru, false) => hidden + gh,
            (Cell::Gru, true) => 2 * hidden + gh,
            (Cell::Lstm, _) => 2 * hidden + gh,
        }
}

/// The largest hidden size whose shared-memory working set fits one sm_61 block.
pub fn max_hidden(cell: Cell) -> usize {
    let per_unit = shared_floats(cell, 1, true).max(shared_floats(cell, 1, false)) * 4;
    MAX_SHARED_BYTES_PER_BLOCK as usize / per_unit
}

/// Most threads per block (RNN_MAX_THREADS in kernels/rnn.cu).
const MAX_THREADS: usize = 1024;

/// Threads per hidden unit of the backward matvec (rnn_groups in kernels/rnn.cu): up to 4, as
/// many as fit 1024 threads and, with their partial sums, 48 KiB of shared memory.
fn backward_groups(cell: Cell, hidden: usize) -> usize {
    (2..=4)
        .rev()
        .find(|&g| {
            let floats = shared_floats(cell, hidden, true) + (g - 1) * CHUNK * hidden;
            g * hidden <= MAX_THREADS && floats * 4 <= MAX_SHARED_BYTES_PER_BLOCK as usize
        })
        .unwrap_or(1)
}

fn config(cell: Cell, s: &RnnShape, backward: bool) -> Result<LaunchConfig> {
    if s.hidden > max_hidden(cell) {
        return Err(Error::Invalid(format!(
            "{cell:?} hidden size {} is over {}, the most whose states fit 48 KiB of shared memory per block",
            s.hidden,
            max_hidden(cell)
        )));
    }
    let round = |n: usize| n.div_ceil(32) * 32;
    let (threads, floats) = if backward {
        match backward_groups(cell, s.hidden) {
            1 => (
                round(s.hidden).min(MAX_THREADS),
                shared_floats(cell, s.hidden, true),
            ),
            g => (
                g * s.hidden,
                shared_floats(cell, s.hidden, true) + (g - 1) * CHUNK * s.hidden,
            ),
        }
    } else {
        (
            round(cell.gates() * s.hidden).min(MAX_THREADS),
            shared_floats(cell, s.hidden, false),
        )
    };
    Ok(LaunchConfig {
        grid: (s.batch.div_ceil(CHUNK) as u32, 2, 1),
        block: (threads as u32, 1, 1),
        shared_bytes: (floats * 4) as u32,
    })
}

fn dims(op: &str, s: &RnnShape) -> Result<[Arg; 3]> {
    Ok([
        to_i32(op, "batch", s.batch)?.into(),
        to_i32(op, "len", s.len)?.into(),
        to_i32(op, "hidden", s.hidden)?.into(),
    ])
}

/// Floats saved per position and direction for the backward pass.
pub fn saved_width(cell: Cell, hidden: usize) -> usize {
    match cell {
        Cell::Gru => 4 * hidden,
        Cell::Lstm => 5 * hidden,
    }
}

#[allow(clippy::too_many_arguments)]
pub fn forward(
    cell: Cell,
    xproj: &Buffer<f32>,
    whh_t: &Buffer<f32>,
    bhh: &Buffer<f32>,
    lengths: &Buffer<i32>,
    out: &mut Buffer<f32>,
    saved: &mut Buffer<f32>,
    s: &RnnShape,
) -> Result<()> {
    let op = match cell {
        Cell::Gru => "gru_forward",
        Cell::Lstm => "lstm_forward",
    };
    let (gh, rows) = (cell.gates() * s.hidden, s.batch * s.len);
    need(op, "xproj", xproj, 2 * rows * gh)?;
    need(op, "whh_t", whh_t, 2 * gh * s.hidden)?;
    need(op, "bhh", bhh, 2 * gh)?;
    need(op, "lengths", lengths, s.batch)?;
    need(op, "out", out, rows * 2 * s.hidden)?;
    need(op, "saved", saved, 2 * rows * saved_width(cell, s.hidden))?;
    let [b, l, h] = dims(op, s)?;
    let args = [
        xproj.into(),
        whh_t.into(),
        bhh.into(),
        lengths.into(),
        (&*out).into(),
        (&*saved).into(),
        b,
        l,
        h,
    ];
    xproj.device().launch(op, config(cell, s, false)?, &args)
}

/// h_{t-1} of every position and direction, [2][B * L][H].
pub fn previous_states(
    out: &Buffer<f32>,
    lengths: &Buffer<i32>,
    prev: &mut Buffer<f32>,
    s: &RnnShape,
) -> Result<()> {
    const OP: &str = "rnn_previous_states";
    need(OP, "out", out, s.batch * s.len * 2 * s.hidden)?;
    need(OP, "prev", prev, 2 * s.batch * s.len * s.hidden)?;
    let [b, l, h] = dims(OP, s)?;
    let n = 2 * s.batch * s.len * s.hidden;
    out.device().launch(
        OP,
        LaunchConfig::for_elements(n, 256, 4096),
        &[out.into(), lengths.into(), (&*prev).into(), b, l, h],
    )
}

/// GRU backward through time: fills dxproj and dgh ([2][B * L][3H], zero-filled by the caller).
#[allow(clippy::too_many_arguments)]
pub fn gru_backward(
    whh: &Buffer<f32>,
    saved: &Buffer<f32>,
    prev: &Buffer<f32>,
    dout: &Buffer<f32>,
    lengths: &Buffer<i32>,
    dxproj: &mut Buffer<f32>,
    dgh: &mut Buffer<f32>,
    s: &RnnShape,
) -> Result<()> {
    const OP: &str = "gru_backward";
    let rows = s.batch * s.len;
    need(OP, "dout", dout, rows * 2 * s.hidden)?;
    need(OP, "dxproj", dxproj, 2 * rows * 3 * s.hidden)?;
    need(OP, "dgh", dgh, 2 * rows * 3 * s.hidden)?;
    let [b, l, h] = dims(OP, s)?;
    let args = [
        whh.into(),
        saved.into(),
        prev.into(),
        dout.into(),
        lengths.into(),
        (&*dxproj).into(),
        (&*dgh).into(),
        b,
        l,
        h,
    ];
    whh.device().launch(OP, config(Cell::Gru, s, true)?, &args)
}

/// LSTM backward through time: fills dgates ([2][B * L][4H], zero-filled by the caller), the
/// gradient of both the input-side and the hidden-side pre-activations.
pub fn lstm_backward(
    whh: &Buffer<f32>,
    saved: &Buffer<f32>,
    dout: &Buffer<f32>,
    lengths: &Buffer<i32>,
    dgates: &mut Buffer<f32>,
    s: &RnnShape,
) -> Result<()> {
    const OP: &str = "lstm_backward";
    let rows = s.batch * s.len;
    need(OP, "dout", dout, rows * 2 * s.hidden)?;
    need(OP, "dgates", dgates, 2 * rows * 4 * s.hidden)?;
    let [b, l, h] = dims(OP, s)?;
    let args = [
        whh.into(),
        saved.into(),
        dout.into(),
        lengths.into(),
        (&*dgates).into(),
        b,
        l,
        h,
    ];
    whh.device().launch(OP, config(Cell::Lstm, s, true)?, &args)
}
