//! The correctness chain's machinery: finite-difference gradient checks of the reference, and
//! the kernel-vs-reference harness (fresh random inputs, awkward sizes, NaN-poisoned outputs,
//! relative error ||out - ref|| / ||ref||). `registry` lists every op that is checked.

mod adamw8bit;
mod attention;
mod bert;
mod embedding;
mod gemm_epilogue;
mod heads;
mod layernorm;
mod losses;
pub mod registry;
mod rnn;
mod seqpool;
mod textcnn;

/// A small, seedable generator (splitmix64): fresh inputs per run, reproducible from the seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from EMRCLASS_SEED when set (to replay a failure), else from the clock.
    pub fn fresh_seed() -> u64 {
        if let Some(s) = std::env::var("EMRCLASS_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return s;
        }
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        t.as_nanos() as u64 ^ (std::process::id() as u64) << 32
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Standard normal (Box-Muller).
    pub fn normal(&mut self) -> f64 {
        let u1 = self.uniform().max(1e-300);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
    }

    /// `n` values drawn from N(0, scale^2), already rounded to f32 (what a kernel will see).
    pub fn normals(&mut self, n: usize, scale: f64) -> Vec<f64> {
        (0..n)
            .map(|_| (self.normal() * scale) as f32 as f64)
            .collect()
    }
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
