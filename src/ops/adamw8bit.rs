//! 8-bit AdamW (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022):
//! the dynamic quantisation maps, the block-wise quantised moments, and the multi-tensor step of
//! kernels/adamw8bit.cu. A moment of n elements takes n bytes of codes and one fp32 absolute
//! maximum per `QUANT_BLOCK` elements: ~2 bytes per parameter for m and v together, against 8.

use super::multi_tensor::{grid, TensorTable, FIRST};
use super::shapes::need;
use super::AdamW;
use crate::device::{Arg, Buffer, Device};
use crate::error::{Error, Result};

/// Elements per quantisation block (kernels/adamw8bit.cu's ADAMW8_BLOCK).
pub const QUANT_BLOCK: usize = 2048;

/// The dynamic quantisation map of the 8-bit optimizers, 256 values sorted ascending: for each
/// of 7 decades, [10^-7, 10^-6] up to [0.1, 1], the midpoints of an even split of the decade's
/// upper nine tenths, twice as many points per decade as in the one below — fine near the
/// block's maximum (64 signed points in [0.1, 1]), coarse far below it (1 in [1e-7, 1e-6]) —
/// plus 0 and 1. `signed` (for m): 2^i midpoints in decade i, each with its negative; unsigned
/// (for v): 2^(i+1) midpoints, all positive. Computed in f64.
pub fn dynamic_map(signed: bool) -> Vec<f64> {
    let mut map = vec![0.0, 1.0];
    for decade in 0..7i32 {
        let points = if signed { 1 << decade } else { 2 << decade };
        let scale = 10f64.powi(decade - 6);
        let edge = |j: usize| 0.1 + 0.9 * j as f64 / points as f64;
        for j in 0..points {
            let mid = scale * (edge(j) + edge(j + 1)) / 2.0;
            map.push(mid);
            if signed {
                map.push(-mid);
            }
        }
    }
    map.sort_by(f64::total_cmp);
    debug_assert_eq!(map.len(), 256);
    map
}

/// The two maps on the device, uploaded once per optimizer.
pub struct QuantMaps {
    pub signed: Buffer<f32>,
    pub unsigned: Buffer<f32>,
}

impl QuantMaps {
    pub fn new(dev: &Device) -> Result<QuantMaps> {
        let f32s = |signed| -> Vec<f32> { dynamic_map(signed).iter().map(|&v| v as f32).collect() };
        Ok(QuantMaps {
            signed: dev.upload(&f32s(true), "8-bit map (signed)")?,
            unsigned: dev.upload(&f32s(false), "8-bit map (unsigned)")?,
        })
    }
}

/// The code of `map`'s value 0 (where a zero moment sits).
pub fn zero_code(signed: bool) -> u8 {
    dynamic_map(signed)
        .iter()
        .position(|&v| v == 0.0)
        .expect("the map holds 0") as u8
}

/// One parameter's quantised moments: a code per element and an absolute maximum per block.
pub struct QuantizedMoments {
    pub m: Buffer<u8>,
    pub v: Buffer<u8>,
    pub m_absmax: Buffer<f32>,
    pub v_absmax: Buffer<f32>,
}

impl QuantizedMoments {
    /// Zero moments for `n` elements.
    pub fn zeros(dev: &Device, n: usize) -> Result<QuantizedMoments> {
        let blocks = n.div_ceil(QUANT_BLOCK);
        Ok(QuantizedMoments {
            m: dev.upload(&vec![zero_code(true); n], "adam m (8-bit)")?,
            v: dev.upload(&vec![zero_code(false); n], "adam v (8-bit)")?,
            m_absmax: dev.zeros(blocks, "adam m absmax")?,
            v_absmax: dev.zeros(blocks, "adam v absmax")?,
        })
    }
}

/// One parameter for `adamw8bit_step_multi`.
pub struct AdamW8bitTensor<'a> {
    pub param: &'a Buffer<f32>,
    pub grad: &'a Buffer<f32>,
    pub state: &'a QuantizedMoments,
    pub lr_scale: f32,
    pub decay: bool,
}

/// 8-bit AdamW on every tensor in one launch, one thread block per quantisation block: the
/// arithmetic of `adamw_step_multi` on the dequantised moments, which are then requantised.
pub fn adamw8bit_step_multi(
    hp: &AdamW,
    step: u64,
    tensors: &[AdamW8bitTensor],
    grad_scale: f32,
    maps: &QuantMaps,
    cached: &mut Option<TensorTable>,
) -> Result<()> {
    if step == 0 {
        return Err(Error::Invalid(
            "adamw8bit_step_multi: steps count from 1".into(),
        ));
    }
    let live: Vec<&AdamW8bitTensor> = tensors.iter().filter(|t| !t.param.is_empty()).collect();
    let Some(first) = live.first() else {
        return Ok(());
    };
    let mut entries = Vec::new();
    for t in &live {
        let n = t.param.len();
        let blocks = n.div_ceil(QUANT_BLOCK);
        need("adamw8bit_step_multi", "grad", t.grad, n)?;
        need("adamw8bit_step_multi", "m", &t.state.m, n)?;
        need("adamw8bit_step_multi", "v", &t.state.v, n)?;
        need(
            "adamw8bit_step_multi",
            "m absmax",
            &t.state.m_absmax,
            blocks,
        )?;
        need(
            "adamw8bit_step_multi",
            "v absmax",
            &t.state.v_absmax,
            blocks,
        )?;
        let flags = t.lr_scale.to_bits() as u64 | ((t.decay as u64) << 32);
        entries.push((
            vec![
                t.param.device_address(),
                t.grad.device_address(),
                t.state.m.device_address(),
                t.state.v.device_address(),
                t.state.m_absmax.device_address(),
                t.state.v_absmax.device_address(),
                n as u64,
                FIRST,
                flags,
            ],
            blocks,
        ));
    }
    let dev = first.param.device();
    let table = TensorTable::get(cached, dev, &entries)?;
    let (bc1, bc2) = hp.bias_corrections(step);
    dev.launch(
        "adamw8bit_step_multi",
        grid(table.blocks),
        &[
            (&table.table).into(),
            Arg::I32(table.count as i32),
            (&maps.signed).into(),
            (&maps.unsigned).into(),
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
