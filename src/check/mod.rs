//! The correctness chain's machinery: finite-difference gradient checks of the reference, and
//! the kernel-vs-reference harness (fresh random inputs, awkward sizes, NaN-poisoned outputs,
//! relative error ||out - ref|| / ||ref||). This file is the harness every check shares (a
//! report `Row`, the tolerances, finite differences, error measures); each op family's checks
//! have a file of their own; `registry` lists every checked op and imports them all.

mod adamw;
mod adamw8bit;
mod attention;
mod bert;
mod elementwise;
mod embedding;
mod gemm;
mod gemm_epilogue;
mod heads;
mod layernorm;
mod losses;
mod mlm;
pub mod registry;
mod rnn;
mod rows;
mod seqpool;
mod textcnn;

use crate::device::{Buffer, Device};
use crate::error::Result;

/// fp32 kernels against the f64 reference (DESIGN.md, correctness chain, link 3).
pub const KERNEL_TOLERANCE: f64 = 1e-5;
/// The reference's backward against finite differences (link 1).
pub const GRADIENT_TOLERANCE: f64 = 1e-6;

/// One line of the report.
#[derive(Clone, Debug)]
pub struct Row {
    pub op: String,
    /// "gradient" (reference vs finite differences) or "kernel" (kernel vs reference).
    pub check: &'static str,
    pub device: String,
    pub sizes: String,
    pub error: f64,
    pub tolerance: f64,
}

impl Row {
    pub fn passed(&self) -> bool {
        self.error <= self.tolerance // false for NaN
    }
}

pub fn grad_row(op: &str, sizes: String, error: f64) -> Row {
    Row {
        op: op.into(),
        check: "gradient",
        device: "f64 reference".into(),
        sizes,
        error,
        tolerance: GRADIENT_TOLERANCE,
    }
}

pub fn kernel_row(op: &str, dev: &Device, sizes: String, error: f64) -> Row {
    Row {
        op: op.into(),
        check: "kernel",
        device: dev.describe(),
        sizes,
        error,
        tolerance: KERNEL_TOLERANCE,
    }
}

pub fn up(dev: &Device, v: &[f64], what: &str) -> Result<Buffer<f32>> {
    dev.upload(&to_f32(v), what)
}

/// An output buffer filled with NaN, so an element no thread writes fails the comparison.
pub fn poisoned(dev: &Device, n: usize, what: &str) -> Result<Buffer<f32>> {
    dev.upload(&nan_vec(n), what)
}

/// ||out - ref|| / ||ref|| (plain ||out - ref|| when ref is all zeros). NaN anywhere in `out`
/// makes the result NaN, which fails every tolerance.
pub fn relative_error(out: &[f32], reference: &[f64]) -> f64 {
    assert_eq!(
        out.len(),
        reference.len(),
        "output and reference differ in length"
    );
    let mut diff = 0.0;
    let mut norm = 0.0;
    for (&o, &r) in out.iter().zip(reference) {
        if o.is_nan() {
            return f64::NAN;
        }
        diff += (o as f64 - r) * (o as f64 - r);
        norm += r * r;
    }
    if norm == 0.0 {
        diff.sqrt()
    } else {
        (diff / norm).sqrt()
    }
}

/// ||out - ref|| / ||terms||, for results that are sums of terms of both signs and can vanish
/// (a GELU derivative near its root, p - q with soft targets): fp32 resolves such a result to
/// a fraction of its terms' size, not of its own. NaN in `out` gives NaN.
pub fn relative_error_to_terms(out: &[f32], reference: &[f64], terms: &[f64]) -> f64 {
    let mut diff = 0.0;
    for (&o, &r) in out.iter().zip(reference) {
        if o.is_nan() {
            return f64::NAN;
        }
        diff += (o as f64 - r) * (o as f64 - r);
    }
    let size: f64 = terms.iter().map(|t| t * t).sum();
    (diff / size.max(f64::MIN_POSITIVE)).sqrt()
}

pub fn to_f32(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

pub fn nan_vec(n: usize) -> Vec<f32> {
    vec![f32::NAN; n]
}

/// The worst element of a finite-difference check.
#[derive(Clone, Copy, Debug, Default)]
pub struct GradCheck {
    pub worst_index: usize,
    pub worst_error: f64,
    pub analytic: f64,
    pub numeric: f64,
}

impl GradCheck {
    /// Keeps element i if its error |a - n| / max(|a|, |n|, floor) is the worst so far (NaN is).
    fn record(&mut self, i: usize, analytic: f64, numeric: f64, floor: f64) {
        let err = (analytic - numeric).abs() / analytic.abs().max(numeric.abs()).max(floor);
        if err > self.worst_error || err.is_nan() {
            *self = GradCheck {
                worst_index: i,
                worst_error: err,
                analytic,
                numeric,
            };
        }
    }
}

/// Compares `analytic` (the gradient of `f` at `x`) with central differences in f64.
/// Error per element: |a - n| / max(|a|, |n|, floor), with floor = max(1e-3 max|a|, 1e-6 |f(x)|)
/// so that elements whose true gradient is ~0 are judged on the gradient's scale (or, when the
/// whole gradient is 0, on the function's), not on their own rounding noise.
pub fn finite_difference(
    f: impl Fn(&[f64]) -> f64,
    x: &[f64],
    analytic: &[f64],
    h: f64,
) -> GradCheck {
    assert_eq!(x.len(), analytic.len());
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (1e-3 * scale).max(1e-6 * f(x).abs()).max(1e-300);
    let mut worst = GradCheck::default();
    let mut xp = x.to_vec();
    for i in 0..x.len() {
        let mut at = |step: f64| {
            xp[i] = x[i] + step;
            let v = f(&xp);
            xp[i] = x[i];
            v
        };
        let numeric = (-at(2.0 * h) + 8.0 * at(h) - 8.0 * at(-h) + at(-2.0 * h)) / (12.0 * h);
        worst.record(i, analytic[i], numeric, floor);
    }
    worst
}

/// The loss that turns an op's output into a scalar for gradient checks: sum(w * y) with fixed
/// random weights w, so its gradient with respect to y is exactly w.
pub fn weighted_sum(y: &[f64], w: &[f64]) -> f64 {
    y.iter().zip(w).map(|(a, b)| a * b).sum()
}

/// The larger of two errors, where NaN (a poisoned or broken output) beats everything.
/// `f64::max` would quietly drop the NaN.
pub fn worst(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Finite differences of a piecewise-smooth function (max pooling, ReLU between smooth layers)
/// taken inside one piece: `f` returns the value and a signature of the piece it is on (e.g.
/// which window won each max). A fourth-order central difference when x - 2h .. x + 2h all lie
/// in x's piece, else a second-order one-sided difference, (-3 f(x) + 4 f(x +- h) - f(x +- 2h))
/// / +-2h, on the side that does; differences straddling a kink would be wrong. None for an
/// element with a kink on both sides (vanishingly rare).
pub fn numeric_gradient_piecewise<S: PartialEq>(
    f: impl Fn(&[f64]) -> (f64, S),
    x: &[f64],
    h: f64,
) -> Vec<Option<f64>> {
    let (f0, piece) = f(x);
    let mut xp = x.to_vec();
    (0..x.len())
        .map(|i| {
            let mut at = |step: f64| {
                xp[i] = x[i] + step;
                let v = f(&xp);
                xp[i] = x[i];
                v
            };
            let [(m2, pm2), (m1, pm1), (p1, pp1), (p2, pp2)] =
                [-2.0, -1.0, 1.0, 2.0].map(|k| at(k * h));
            let (left, right) = (pm1 == piece && pm2 == piece, pp1 == piece && pp2 == piece);
            if left && right {
                Some((-p2 + 8.0 * p1 - 8.0 * m1 + m2) / (12.0 * h))
            } else if right {
                Some((-3.0 * f0 + 4.0 * p1 - p2) / (2.0 * h))
            } else if left {
                Some((3.0 * f0 - 4.0 * m1 + m2) / (2.0 * h))
            } else {
                None
            }
        })
        .collect()
}

/// `numeric_gradient_piecewise` against `analytic`, element by element as `finite_difference`
/// judges them; elements with a kink on both sides are skipped.
pub fn finite_difference_piecewise<S: PartialEq>(
    f: impl Fn(&[f64]) -> (f64, S),
    x: &[f64],
    analytic: &[f64],
    h: f64,
) -> GradCheck {
    let scale = analytic.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let floor = (1e-3 * scale).max(1e-12);
    let mut worst = GradCheck::default();
    for (i, numeric) in numeric_gradient_piecewise(f, x, h).into_iter().enumerate() {
        if let Some(numeric) = numeric {
            worst.record(i, analytic[i], numeric, floor);
        }
    }
    worst
}
