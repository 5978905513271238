//! One launch over many tensors: the gradient norm's partial sums and the AdamW update of every
//! parameter, as torch's foreach/fused optimizers do. The kernels read a table of device
//! addresses, lengths and a block -> tensor map; building it costs one upload, so callers keep
//! a `TensorTable` and reuse it while the tensors stay where they are (every step after the
//! first).

use super::shapes::need;
use super::{sum_squares_blocks, AdamW};
use crate::device::{Arg, Buffer, Device, LaunchConfig};
use crate::error::Result;

/// A table on the device, and what it was built from (addresses and lengths).
pub struct TensorTable {
    key: Vec<u64>,
    pub(crate) table: Buffer<u64>,
    pub(crate) count: usize,
    pub(crate) blocks: usize,
}

impl TensorTable {
    /// The table for `entries` (per tensor: its fields, then its block count), or `cached`
    /// when that was built from the same fields.
    pub(crate) fn get<'c>(
        cached: &'c mut Option<TensorTable>,
        dev: &Device,
        entries: &[(Vec<u64>, usize)],
    ) -> Result<&'c TensorTable> {
        let key: Vec<u64> = entries
            .iter()
            .flat_map(|(f, _)| f.iter().copied())
            .collect();
        if cached.as_ref().is_none_or(|t| t.key != key) {
            let mut words = Vec::new();
            let mut map = Vec::new();
            for (t, (fields, blocks)) in entries.iter().enumerate() {
                words.extend(
                    fields
                        .iter()
                        .map(|&f| if f == FIRST { map.len() as u64 } else { f }),
                );
                map.extend(std::iter::repeat_n(t as u64, *blocks));
            }
            let blocks = map.len();
            words.extend(map);
            let table = {
                let _role = dev.role(crate::device::Role::Workspace);
                dev.upload(&words, "multi-tensor table")?
            };
            *cached = Some(TensorTable {
                key,
                table,
                count: entries.len(),
                blocks,
            });
        }
        Ok(cached.as_ref().expect("built above"))
    }
}

/// One block of 256 threads per entry of the block map.
pub(crate) fn grid(blocks: usize) -> LaunchConfig {
    LaunchConfig {
        grid: (blocks as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    }
}

/// Placeholder in a table entry for the tensor's first block (filled in when the map is built).
pub(crate) const FIRST: u64 = u64::MAX;

/// Blocks of 256 threads for `n` elements in `adamw_step_multi`: about 16 elements a thread.
fn adamw_blocks(n: usize) -> usize {
    n.div_ceil(4096).clamp(1, 4096)
}

/// Writes every tensor's `sum_squares_blocks(len)` partial sums of x², one tensor after the
/// other, into `partial` (which must hold their total) in one launch: the same partials, bit
/// for bit, as `sum_squares_partial` per tensor. Empty tensors take no blocks. Returns the
/// number of partials.
pub fn sum_squares_partial_multi(
    tensors: &[&Buffer<f32>],
    partial: &Buffer<f32>,
    cached: &mut Option<TensorTable>,
) -> Result<usize> {
    let live: Vec<&Buffer<f32>> = tensors.iter().copied().filter(|t| !t.is_empty()).collect();
    let Some(first) = live.first() else {
        return Ok(0);
    };
    let entries: Vec<(Vec<u64>, usize)> = live
        .iter()
        .map(|t| {
            let blocks = sum_squares_blocks(t.len());
            (
                vec![t.device_address(), t.len() as u64, FIRST, blocks as u64],
                blocks,
            )
        })
        .collect();
    let table = TensorTable::get(cached, first.device(), &entries)?;
    need(
        "sum_squares_partial_multi",
        "partial",
        partial,
        table.blocks,
    )?;
    first.device().launch(
        "sum_squares_partial_multi",
        grid(table.blocks),
        &[
            (&table.table).into(),
            Arg::I32(table.count as i32),
            partial.into(),
        ],
    )?;
    Ok(table.blocks)
}

/// One parameter for `adamw_step_multi`: its buffers, its learning-rate scale and whether it
/// decays.
pub struct AdamWTensor<'a> {
    pub param: &'a Buffer<f32>,
    pub grad: &'a Buffer<f32>,
    pub m: &'a Buffer<f32>,
    pub v: &'a Buffer<f32>,
    pub lr_scale: f32,
    pub decay: bool,
}

/// `adamw_step` on every tensor in one launch: parameter t uses learning rate
/// `hp.lr * lr_scale` (rounded to f32, as a per-tensor call computes it on the host) and
/// `hp.weight_decay` where it decays, 0 elsewhere. The buffers are written by the device.
pub fn adamw_step_multi(
    hp: &AdamW,
    step: u64,
    tensors: &[AdamWTensor],
    grad_scale: f32,
    cached: &mut Option<TensorTable>,
) -> Result<()> {
    if step == 0 {
        return Err(crate::Error::Invalid(
            "adamw_step_multi: steps count from 1".into(),
        ));
    }
    let live: Vec<&AdamWTensor> = tensors.iter().filter(|t| !t.param.is_empty()).collect();
    let Some(first) = live.first() else {
        return Ok(());
    };
    let mut entries = Vec::new();
    for t in &live {
        let n = t.param.len();
        for (what, buf) in [("grad", t.grad), ("m", t.m), ("v", t.v)] {
            need("adamw_step_multi", what, buf, n)?;
        }
        let blocks = adamw_blocks(n);
        let flags = t.lr_scale.to_bits() as u64 | ((t.decay as u64) << 32);
        entries.push((
            vec![
                t.param.device_address(),
                t.grad.device_address(),
                t.m.device_address(),
                t.v.device_address(),
                n as u64,
                FIRST,
                blocks as u64,
                flags,
            ],
            blocks,
        ));
    }
    let dev = first.param.device();
    let table = TensorTable::get(cached, dev, &entries)?;
    let (bc1, bc2) = hp.bias_corrections(step);
    dev.launch(
        "adamw_step_multi",
        grid(table.blocks),
        &[
            (&table.table).into(),
            Arg::I32(table.count as i32),
            hp.lr.into(),
            hp.beta1.into(),
            hp.beta2.into(),
            hp.eps.into(),
            hp.weight_decay.into(),
            bc1.into(),
            bc2.into(),
            grad_scale.into(),
        ],
    )
}
