//! Elementwise maps against the reference: add, scale, GELU, tanh, dropout and the fp16
//! conversions.

use super::{
    finite_difference, grad_row, kernel_row, poisoned, relative_error, relative_error_to_terms, up,
    weighted_sum, worst, Row,
};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self};
use crate::reference as r;
use crate::rng::Rng;

const ELEMENT_COUNTS: [usize; 5] = [1, 31, 257, 4099, 1_048_583];

pub fn add_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let (a, b) = (rng.normals(n, 1.0), rng.normals(n, 1.0));
        let (ab, bb) = (up(dev, &a, "a")?, up(dev, &b, "b")?);
        let mut cb = poisoned(dev, n, "c")?;
        ops::add(&ab, &bb, &mut cb, n)?;
        rows.push(kernel_row(
            "add",
            dev,
            format!("n={n}"),
            relative_error(&cb.to_host()?, &r::add(&a, &b)),
        ));
    }
    Ok(rows)
}

pub fn add_gradient(rng: &mut Rng) -> Vec<Row> {
    let (a, b, w) = (
        rng.normals(9, 1.0),
        rng.normals(9, 1.0),
        rng.normals(9, 1.0),
    );
    // Both inputs receive the upstream gradient unchanged.
    let ea = finite_difference(|x| weighted_sum(&r::add(x, &b), &w), &a, &w, 1e-3).worst_error;
    let eb = finite_difference(|x| weighted_sum(&r::add(&a, x), &w), &b, &w, 1e-3).worst_error;
    vec![grad_row("add", "n=9".into(), worst(ea, eb))]
}

pub fn scale_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let x = rng.normals(n, 1.0);
        let alpha = -0.37f32;
        let xb = up(dev, &x, "x")?;
        let mut yb = poisoned(dev, n, "y")?;
        ops::scale(&xb, &mut yb, alpha, n)?;
        rows.push(kernel_row(
            "scale",
            dev,
            format!("n={n}"),
            relative_error(&yb.to_host()?, &r::scale(&x, alpha as f64)),
        ));
    }
    Ok(rows)
}

pub fn scale_gradient(rng: &mut Rng) -> Vec<Row> {
    let (x, w) = (rng.normals(9, 1.0), rng.normals(9, 1.0));
    let g = r::scale(&w, 1.7);
    let e = finite_difference(|x| weighted_sum(&r::scale(x, 1.7), &w), &x, &g, 1e-3).worst_error;
    vec![grad_row("scale", "n=9".into(), e)]
}

pub fn gelu_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let x = rng.normals(n, 3.0);
        let dy = rng.normals(n, 1.0);
        let xb = up(dev, &x, "x")?;
        let mut yb = poisoned(dev, n, "y")?;
        ops::gelu_forward(&xb, &mut yb, n)?;
        rows.push(kernel_row(
            "gelu_forward",
            dev,
            format!("n={n}"),
            relative_error(&yb.to_host()?, &r::gelu_forward(&x)),
        ));
        let mut dxb = up(dev, &dy, "dy, then dx")?;
        ops::gelu_backward(&xb, &mut dxb, n)?;
        let expect = r::gelu_backward(&x, &dy);
        rows.push(kernel_row(
            "gelu_backward",
            dev,
            format!("n={n}"),
            relative_error_to_terms(&dxb.to_host()?, &expect, &r::gelu_backward_terms(&x, &dy)),
        ));
    }
    rows.push(gelu_tail_row(dev)?);
    Ok(rows)
}

/// GELU's left tail, judged element by element (a norm would let the largest value hide the
/// tiny ones): 0.5 (1 + erf(x / sqrt 2)) cancels to nothing there, erfc does not.
fn gelu_tail_row(dev: &Device) -> Result<Row> {
    let x: Vec<f64> = (0..=12).map(|i| -9.0 + 0.5 * i as f64).collect();
    let expect = r::gelu_forward(&x);
    let xb = up(dev, &x, "x")?;
    let mut yb = poisoned(dev, x.len(), "y")?;
    ops::gelu_forward(&xb, &mut yb, x.len())?;
    let got = yb.to_host()?;
    let err = got
        .iter()
        .zip(&expect)
        .map(|(&g, &e)| relative_error(&[g], &[e]))
        .fold(0.0, worst);
    Ok(kernel_row(
        "gelu_forward",
        dev,
        "x in [-9, -3], per element".into(),
        err,
    ))
}

pub fn gelu_gradient(rng: &mut Rng) -> Vec<Row> {
    let (x, w) = (rng.normals(33, 2.0), rng.normals(33, 1.0));
    let g = r::gelu_backward(&x, &w);
    let e = finite_difference(|x| weighted_sum(&r::gelu_forward(x), &w), &x, &g, 1e-3).worst_error;
    vec![grad_row("gelu", "n=33".into(), e)]
}

/// f32 -> f16 -> f32 must match the `half` crate's round-to-nearest-even bit for bit, over
/// normals, subnormals, ties, overflow, infinities and NaN.
pub fn convert_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        65504.0,
        65520.0,
        1e6,
        -1e6,
        f32::INFINITY,
        f32::NEG_INFINITY,
        6e-8,
        3e-8,
        1e-4,
    ];
    x.push(f32::from_bits(0x3f80_1000)); // exactly halfway between two halves: ties to even
    x.push(f32::from_bits(0x3f80_3000));
    x.extend((0..1000).map(|_| (rng.normal() * 10f64.powf(rng.uniform() * 12.0 - 8.0)) as f32));
    let xb = dev.upload(&x, "x")?;
    let mut hb = dev.alloc::<half::f16>(x.len(), "half")?;
    ops::convert_f32_to_f16(&xb, &mut hb)?;
    let mut back = poisoned(dev, x.len(), "back")?;
    ops::convert_f16_to_f32(&hb, &mut back)?;
    let halves = hb.to_host()?;
    let back = back.to_host()?;
    let mismatches = x
        .iter()
        .zip(&halves)
        .zip(&back)
        .filter(|((&v, h), &b)| {
            h.to_bits() != half::f16::from_f32(v).to_bits()
                || b.to_bits() != half::f16::from_f32(v).to_f32().to_bits()
        })
        .count();
    Ok(vec![Row {
        op: "convert_f32_f16".into(),
        check: "kernel",
        device: dev.describe(),
        sizes: format!("n={} (bitwise)", x.len()),
        error: mismatches as f64,
        tolerance: 0.0,
    }])
}

/// Dropout: the kernel's mask equals the reference's bit for bit (forward and backward), and
/// the kept fraction of a million elements is within 0.5% of 1 - p.
pub fn dropout_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (n, p) in [(1usize, 0.5f32), (257, 0.1), (1_000_003, 0.3)] {
        let seed = rng.next_u64();
        let x = rng.normals(n, 1.0);
        let xb = up(dev, &x, "x")?;
        let mut y = poisoned(dev, n, "y")?;
        ops::dropout(&xb, &mut y, p, seed, false)?;
        let mut dx = poisoned(dev, n, "dx")?;
        ops::dropout(&xb, &mut dx, p, seed, true)?;
        let want = r::dropout(&x, p, seed);
        let mut err = worst(
            relative_error(&y.to_host()?, &want),
            relative_error(&dx.to_host()?, &want),
        );
        let kept = (0..n as u64)
            .filter(|&i| r::dropout_keep(seed, i, p))
            .count() as f64
            / n as f64;
        if n > 1000 && ((kept - (1.0 - p as f64)) / (1.0 - p as f64)).abs() > 0.005 {
            err = f64::INFINITY;
        }
        rows.push(kernel_row("dropout", dev, format!("n={n} p={p}"), err));
    }
    Ok(rows)
}

pub fn tanh_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let x = rng.normals(n, 2.0);
        let dy = rng.normals(n, 1.0);
        let xb = up(dev, &x, "x")?;
        let mut y = poisoned(dev, n, "y")?;
        ops::tanh_forward(&xb, &mut y, n)?;
        let want: Vec<f64> = x.iter().map(|v| v.tanh()).collect();
        let mut err = relative_error(&y.to_host()?, &want);
        // Backward reads the saved output, which is fp32: 1 - y^2 of that rounded y is what a
        // correct kernel computes (near |y| = 1 the rounding dominates, in PyTorch too).
        let y32: Vec<f64> = want.iter().map(|&v| v as f32 as f64).collect();
        let yr = up(dev, &y32, "y")?;
        let mut dx = poisoned(dev, n, "dx")?;
        ops::tanh_backward(&yr, &up(dev, &dy, "dy")?, &mut dx, n)?;
        let want_dx: Vec<f64> = y32
            .iter()
            .zip(&dy)
            .map(|(y, d)| d * (1.0 - y * y))
            .collect();
        err = worst(err, relative_error(&dx.to_host()?, &want_dx));
        rows.push(kernel_row("tanh", dev, format!("n={n}"), err));
    }
    Ok(rows)
}

pub fn tanh_gradient(rng: &mut Rng) -> Vec<Row> {
    let (x, w) = (rng.normals(17, 1.5), rng.normals(17, 1.0));
    let f = |x: &[f64]| weighted_sum(&x.iter().map(|v| v.tanh()).collect::<Vec<_>>(), &w);
    let g: Vec<f64> = x
        .iter()
        .zip(&w)
        .map(|(v, d)| d * (1.0 - v.tanh() * v.tanh()))
        .collect();
    vec![grad_row(
        "tanh",
        "n=17".into(),
        finite_difference(f, &x, &g, 1e-3).worst_error,
    )]
}
