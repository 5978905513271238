//! Registry check of 8-bit AdamW (kernels/adamw8bit.cu) against its f64 reference
//! (reference::adamw8bit): sizes around the 2048-element quantisation block, from zero moments
//! and from random codes, three steps each. Every step starts the reference from the kernel's
//! state (parameter, codes, block maxima), so each step is judged alone. The error is the worst
//! of: the parameters' and block maxima's relative errors, and how much farther the map value
//! of a kernel's code lies from the moment it encodes than the nearest map value does (a code
//! picked differently at a near-tie costs ~1e-7; a wrong code costs a whole step of the map).

use super::{kernel_row, relative_error, to_f32, worst, Row};
use crate::device::Device;
use crate::error::Result;
use crate::ops::adamw8bit::{
    adamw8bit_step_multi, dynamic_map, AdamW8bitTensor, QuantMaps, QuantizedMoments, QUANT_BLOCK,
};
use crate::ops::AdamW;
use crate::reference::adamw8bit::{adamw8bit_step, nearest_code, Quantized};
use crate::rng::Rng;

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// The worst excess distance of a code's map value over the nearest map value's, for moments
/// normalised by their block maxima.
fn code_excess(codes: &[u8], moment: &[f64], absmax: &[f64], map: &[f64]) -> f64 {
    codes
        .iter()
        .zip(moment)
        .enumerate()
        .map(|(i, (&c, &x))| {
            let a = absmax[i / QUANT_BLOCK];
            let x = if a > 0.0 { x / a } else { 0.0 };
            let nearest = map[nearest_code(map, x) as usize];
            (map[c as usize] - x).abs() - (nearest - x).abs()
        })
        .fold(0.0, f64::max)
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let hp = AdamW {
        lr: 2e-3,
        weight_decay: 0.05,
        ..AdamW::default()
    };
    let maps = QuantMaps::new(dev)?;
    let (signed, unsigned) = (dynamic_map(true), dynamic_map(false));
    let mut rows = Vec::new();
    for (n, random_start) in [
        (1usize, false),
        (2047, true),
        (2049, false),
        (4133, true),
        (100_003, false),
    ] {
        let blocks = n.div_ceil(QUANT_BLOCK);
        let param = dev.upload(&to_f32(&rng.normals(n, 1.0)), "param")?;
        let mut state = QuantizedMoments::zeros(dev, n)?;
        if random_start {
            let codes = |rng: &mut Rng| -> Vec<u8> {
                (0..n).map(|_| (rng.next_u64() % 256) as u8).collect()
            };
            state.m.copy_from_host(&codes(rng))?;
            state.v.copy_from_host(&codes(rng))?;
            let maxima: Vec<f32> = (0..blocks).map(|_| rng.uniform() as f32).collect();
            state.m_absmax.copy_from_host(&maxima)?;
            state.v_absmax.copy_from_host(&maxima)?;
        }
        let mut err = 0.0;
        for step in 1..=3u64 {
            let mut p = f64s(&param.to_host()?);
            let mut s = Quantized {
                m: state.m.to_host()?,
                v: state.v.to_host()?,
                m_absmax: f64s(&state.m_absmax.to_host()?),
                v_absmax: f64s(&state.v_absmax.to_host()?),
            };
            let g = rng.normals(n, 1.0);
            let (m, v) = adamw8bit_step(&hp, step, &mut p, &g, &mut s);
            // The kernel scales the gradient itself: give it g / 2 and a scale of 2.
            let half: Vec<f64> = g.iter().map(|x| x / 2.0).collect();
            let grad = dev.upload(&to_f32(&half), "grad")?;
            let tensor = AdamW8bitTensor {
                param: &param,
                grad: &grad,
                state: &state,
                lr_scale: 1.0,
                decay: true,
            };
            adamw8bit_step_multi(&hp, step, &[tensor], 2.0, &maps, &mut None)?;
            err = worst(err, relative_error(&param.to_host()?, &p));
            err = worst(err, relative_error(&state.m_absmax.to_host()?, &s.m_absmax));
            err = worst(err, relative_error(&state.v_absmax.to_host()?, &s.v_absmax));
            err = worst(
                err,
                code_excess(&state.m.to_host()?, &m, &s.m_absmax, &signed),
            );
            err = worst(
                err,
                code_excess(&state.v.to_host()?, &v, &s.v_absmax, &unsigned),
            );
        }
        let start = if random_start { "random codes" } else { "zero" };
        rows.push(kernel_row(
            "adamw8bit_step_multi",
            dev,
            format!("n={n} steps=3 from {start}"),
            err,
        ));
    }
    Ok(rows)
}
