//! f64 reference of 8-bit AdamW (ops::adamw8bit, kernels/adamw8bit.cu): the nearest-code
//! quantiser over the dynamic maps, block-wise quantisation, and one step from a quantised state.

use crate::ops::adamw8bit::{dynamic_map, QUANT_BLOCK};
use crate::ops::AdamW;

/// The code of the map value nearest `x`; ties to the lower code.
pub fn nearest_code(map: &[f64], x: f64) -> u8 {
    let mut best = 0;
    for (c, &v) in map.iter().enumerate() {
        if (v - x).abs() < (map[best] - x).abs() {
            best = c;
        }
    }
    best as u8
}

/// The values codes stand for: map[code] x its block's absolute maximum.
pub fn dequantize(codes: &[u8], absmax: &[f64], map: &[f64]) -> Vec<f64> {
    codes
        .iter()
        .enumerate()
        .map(|(i, &c)| map[c as usize] * absmax[i / QUANT_BLOCK])
        .collect()
}

/// Block-wise quantisation: per block the absolute maximum, and per element the code nearest
/// x / absmax (0's code where the block is all zero).
pub fn quantize(x: &[f64], map: &[f64]) -> (Vec<u8>, Vec<f64>) {
    let absmax: Vec<f64> = x
        .chunks(QUANT_BLOCK)
        .map(|b| b.iter().fold(0.0f64, |a, v| a.max(v.abs())))
        .collect();
    let codes = x
        .iter()
        .enumerate()
        .map(|(i, &v)| {
            let a = absmax[i / QUANT_BLOCK];
            nearest_code(map, if a > 0.0 { v / a } else { 0.0 })
        })
        .collect();
    (codes, absmax)
}

/// The quantised moments of one parameter.
#[derive(Clone, Debug)]
pub struct Quantized {
    pub m: Vec<u8>,
    pub v: Vec<u8>,
    pub m_absmax: Vec<f64>,
    pub v_absmax: Vec<f64>,
}

/// One 8-bit AdamW step, in place: dequantise m and v, update them and the parameter as
/// `adamw_step` does (decoupled decay, bias corrections, the gradient used as given), and
/// requantise. Returns the moments the parameter was stepped with (before requantisation).
pub fn adamw8bit_step(
    hp: &AdamW,
    step: u64,
    param: &mut [f64],
    grad: &[f64],
    state: &mut Quantized,
) -> (Vec<f64>, Vec<f64>) {
    let (signed, unsigned) = (dynamic_map(true), dynamic_map(false));
    let mut m = dequantize(&state.m, &state.m_absmax, &signed);
    let mut v = dequantize(&state.v, &state.v_absmax, &unsigned);
    super::adamw_step(hp, step, param, grad, &mut m, &mut v);
    let (mc, ma) = quantize(&m, &signed);
    let (vc, va) = quantize(&v, &unsigned);
    *state = Quantized {
        m: mc,
        v: vc,
        m_absmax: ma,
        v_absmax: va,
    };
    (m, v)
}
