//! f64 reference of multi-head self-attention with a key padding mask and dropout on the
//! probabilities (the same counter-based mask as the kernels): plain loops over the full
//! L x L probability matrix, which the kernels never store.

use super::dropout_keep;
pub use crate::ops::attention::Attention;

fn at(a: &Attention, which: usize, b: usize, i: usize, h: usize) -> usize {
    a.offsets[which] + (b * a.len + i) * a.stride + h * a.head_dim
}

/// Probabilities p[i][j] of one (b, h) and the dropout multipliers keep[i][j] / (1 - rate).
fn probabilities(
    a: &Attention,
    q: &[f64],
    k: &[f64],
    mask: Option<&[i32]>,
    b: usize,
    h: usize,
) -> (Vec<f64>, Vec<f64>) {
    let (l, d) = (a.len, a.head_dim);
    let mut p = vec![0.0; l * l];
    let mut keep = vec![0.0; l * l];
    for i in 0..l {
        let real = |j: usize| mask.is_none_or(|m| m[b * l + j] != 0);
        let s: Vec<f64> = (0..l)
            .map(|j| {
                if !real(j) {
                    return f64::NEG_INFINITY;
                }
                (0..d)
                    .map(|c| q[at(a, 0, b, i, h) + c] * k[at(a, 1, b, j, h) + c])
                    .sum::<f64>()
                    * scale(a)
            })
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = s.iter().map(|v| (v - max).exp()).sum();
        for j in 0..l {
            p[i * l + j] = if max == f64::NEG_INFINITY {
                0.0
            } else {
                (s[j] - max).exp() / sum
            };
            let counter = (((b * a.heads + h) * l + i) * l + j) as u64;
            let kept = a.dropout == 0.0 || dropout_keep(a.seed, counter, a.dropout);
            keep[i * l + j] = if kept {
                1.0 / (1.0 - a.dropout as f64)
            } else {
                0.0
            };
        }
    }
    (p, keep)
}

/// The score scale in f64: exactly 1/sqrt(head_dim) when `a.scale` is that value rounded to
/// f32 (the kernels' argument for BERT's scale, which PyTorch applies in full precision), else
/// `a.scale` as given.
fn scale(a: &Attention) -> f64 {
    let exact = 1.0 / (a.head_dim as f64).sqrt();
    if exact as f32 == a.scale {
        exact
    } else {
        a.scale as f64
    }
}

/// out [B, L, H d].
pub fn forward(a: &Attention, q: &[f64], k: &[f64], v: &[f64], mask: Option<&[i32]>) -> Vec<f64> {
    let (l, d, hd) = (a.len, a.head_dim, a.heads * a.head_dim);
    let mut out = vec![0.0; a.batch * l * hd];
    for b in 0..a.batch {
        for h in 0..a.heads {
            let (p, keep) = probabilities(a, q, k, mask, b, h);
            for i in 0..l {
                for c in 0..d {
                    out[(b * l + i) * hd + h * d + c] = (0..l)
                        .map(|j| p[i * l + j] * keep[i * l + j] * v[at(a, 2, b, j, h) + c])
                        .sum();
                }
            }
        }
    }
    out
}

/// (dq, dk, dv), each laid out like its input (zeros outside the head columns).
pub fn backward(
    a: &Attention,
    q: &[f64],
    k: &[f64],
    v: &[f64],
    mask: Option<&[i32]>,
    dout: &[f64],
) -> [Vec<f64>; 3] {
    let (l, d, hd) = (a.len, a.head_dim, a.heads * a.head_dim);
    let mut g = [vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]];
    for b in 0..a.batch {
        for h in 0..a.heads {
            let (p, keep) = probabilities(a, q, k, mask, b, h);
            for i in 0..l {
                let doi = |c: usize| dout[(b * l + i) * hd + h * d + c];
                // dP~ then the dropout, then the softmax backward.
                let dp: Vec<f64> = (0..l)
                    .map(|j| {
                        keep[i * l + j]
                            * (0..d)
                                .map(|c| doi(c) * v[at(a, 2, b, j, h) + c])
                                .sum::<f64>()
                    })
                    .collect();
                let delta: f64 = (0..l).map(|j| p[i * l + j] * dp[j]).sum();
                for j in 0..l {
                    let pij = p[i * l + j];
                    let ds = pij * (dp[j] - delta) * scale(a);
                    for c in 0..d {
                        g[2][at(a, 2, b, j, h) + c] += pij * keep[i * l + j] * doi(c);
                        g[0][at(a, 0, b, i, h) + c] += ds * k[at(a, 1, b, j, h) + c];
                        g[1][at(a, 1, b, j, h) + c] += ds * q[at(a, 0, b, i, h) + c];
                    }
                }
            }
        }
    }
    g
}
