//! The GEMM's fused epilogue (dropout, residual, activation output) against the f64 reference:
//! the product from `reference::gemm`, then each step applied element by element as
//! kernels/gemm.cu documents it. Every tile, unsplit and split-K, awkward shapes (padded leading dimensions, a batch,
//! views at odd offsets), C and the activation output NaN-poisoned where they must be written
//! and checked untouched elsewhere.

use super::gemm::{gemm_lengths, gemm_plans, gemm_sizes, in_c_window};
use super::{kernel_row, nan_vec, relative_error, to_f32, worst, Row};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self, Activation, Epilogue, Gemm};
use crate::reference as r;
use crate::rng::Rng;

/// (dropout, residual, activation, bias, beta)
type Steps = (Option<f32>, bool, Option<Activation>, bool, bool);

fn cases() -> Vec<(Gemm, Steps)> {
    let mut padded = Gemm::new(37, 29, 41, false, true);
    padded.ldc += 3;
    padded.stride_c = padded.m * padded.ldc + 5;
    padded.stride_a = padded.m * padded.k;
    padded.stride_b = padded.n * padded.k;
    padded.batch = 2;
    padded.offset_c = 1;
    vec![
        // The encoder's dense + dropout + residual and its FFN's GELU, at awkward sizes.
        (
            Gemm::new(130, 257, 24, false, true),
            (Some(0.1), true, None, true, false),
        ),
        (
            Gemm::new(65, 63, 17, false, true),
            (None, false, Some(Activation::Gelu), true, false),
        ),
        (
            Gemm::new(1, 1, 1, false, false),
            (Some(0.5), true, Some(Activation::Relu), false, false),
        ),
        (
            padded,
            (Some(0.3), true, Some(Activation::Gelu), true, true),
        ),
        (
            Gemm::new(7, 13, 5, true, false),
            (None, false, Some(Activation::Relu), false, true),
        ),
        // Every step at once where rows are 16-byte aligned: the float4 epilogue (the cases
        // above have odd widths or offsets), split too.
        (
            Gemm::new(64, 128, 300, false, true),
            (Some(0.1), true, Some(Activation::Gelu), true, true),
        ),
    ]
}

/// Where element (bt, m, n) of C sits in its buffer.
fn at(g: &Gemm, bt: usize, m: usize, n: usize) -> usize {
    g.offset_c + bt * g.stride_c + m * g.ldc + n
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (g, steps) in cases() {
        for plan in gemm_plans(&g) {
            let (dropout, with_residual, activation, with_bias, with_beta) = steps;
            let g = Gemm {
                beta: if with_beta { 0.5 } else { 0.0 },
                ..g
            };
            let (la, lb, lc) = gemm_lengths(&g);
            let (a, b, bias) = (
                rng.normals(la, 1.0),
                rng.normals(lb, 1.0),
                rng.normals(g.n, 1.0),
            );
            let residual = rng.normals(lc, 1.0);
            let c0: Vec<f64> = if with_beta {
                rng.normals(lc, 1.0)
            } else {
                vec![f64::NAN; lc]
            };
            let seed = rng.next_u64();
            // The reference: the product, then dropout, residual and activation per element.
            let mut want = c0.clone();
            r::gemm(&g, &a, &b, &mut want, with_bias.then_some(&bias[..]));
            let mut want_act = vec![f64::NAN; lc];
            for bt in 0..g.batch {
                for m in 0..g.m {
                    for n in 0..g.n {
                        let i = at(&g, bt, m, n);
                        let mut v = want[i];
                        if let Some(p) = dropout {
                            let counter = ((bt * g.m + m) * g.n + n) as u64;
                            v = if r::dropout_keep(seed, counter, p) {
                                v / (1.0 - p as f64)
                            } else {
                                0.0
                            };
                        }
                        if with_residual {
                            v += residual[i];
                        }
                        want[i] = v;
                        want_act[i] = match activation {
                            Some(Activation::Gelu) => r::gelu_forward(&[v])[0],
                            Some(Activation::Relu) => v.max(0.0),
                            None => f64::NAN,
                        };
                    }
                }
            }
            let da = dev.upload(&to_f32(&a), "A")?;
            let db = dev.upload(&to_f32(&b), "B")?;
            let dbias = dev.upload(&to_f32(&bias), "bias")?;
            let dres = dev.upload(&to_f32(&residual), "residual")?;
            let mut dc = dev.upload(&to_f32(&c0), "C")?;
            let mut dact = dev.upload(&nan_vec(lc), "activation")?;
            let epilogue = Epilogue {
                dropout: dropout.map(|p| (p, seed)),
                residual: with_residual.then_some(&dres),
                activation: activation.map(|act| (act, &mut dact)),
            };
            ops::gemm_with_plan(
                &g,
                plan,
                &da,
                &db,
                &mut dc,
                with_bias.then_some(&dbias),
                epilogue,
            )?;
            let (out, act) = (dc.to_host()?, dact.to_host()?);
            // Inside the m x n windows: compared; outside: the bits that were there.
            let (mut o, mut e, mut oa, mut ea) = (vec![], vec![], vec![], vec![]);
            let mut untouched = true;
            for i in 0..lc {
                if in_c_window(&g, i) {
                    o.push(out[i]);
                    e.push(want[i]);
                    if activation.is_some() {
                        oa.push(act[i]);
                        ea.push(want_act[i]);
                    }
                } else if out[i].to_bits() != (c0[i] as f32).to_bits() || !act[i].is_nan() {
                    untouched = false;
                }
            }
            if activation.is_none() && act.iter().any(|v| !v.is_nan()) {
                untouched = false; // no activation asked for: nothing may be written
            }
            let mut err = relative_error(&o, &e);
            if activation.is_some() {
                err = worst(err, relative_error(&oa, &ea));
            }
            if !untouched {
                err = f64::INFINITY;
            }
            let steps = format!(
                "{}{}{}",
                dropout.map_or(String::new(), |p| format!(" dropout {p}")),
                if with_residual { " residual" } else { "" },
                activation.map_or(String::new(), |a| format!(" {a:?}")),
            );
            rows.push(kernel_row(
                "gemm_epilogue",
                dev,
                format!("{}{steps} tile {}", gemm_sizes(&g, with_bias), plan.name()),
                err,
            ));
        }
    }
    Ok(rows)
}
