//! The oracle: f64 host implementations of every operation, as plain loops that are easy to
//! read and obviously right. Kernels are checked against these; these are checked against
//! finite differences (their backward passes) and against PyTorch fixtures.
//!
//! Index loops are the point here: they read like the formulas.
#![allow(clippy::needless_range_loop)]

pub mod adamw8bit;
pub mod attention;
pub mod bert;
pub mod head;
pub mod loss;
pub mod mlm;
pub mod rnn;
pub mod seqpool;
pub mod textcnn;
pub mod training;

use crate::ops::Gemm;

/// Index of element (r, c) of a stored row-major operand in batch `b`.
fn at(b: usize, stride: usize, r: usize, c: usize, ld: usize) -> usize {
    b * stride + r * ld + c
}

/// Where op(A)[i, k] lives in A's storage.
fn a_index(g: &Gemm, b: usize, i: usize, k: usize) -> usize {
    let (r, c) = if g.trans_a { (k, i) } else { (i, k) };
    g.offset_a + at(b, g.stride_a, r, c, g.lda)
}

/// Where op(B)[k, j] lives in B's storage.
fn b_index(g: &Gemm, b: usize, k: usize, j: usize) -> usize {
    let (r, c) = if g.trans_b { (j, k) } else { (k, j) };
    g.offset_b + at(b, g.stride_b, r, c, g.ldb)
}

/// Where C[i, j] lives in C's storage.
fn c_index(g: &Gemm, b: usize, i: usize, j: usize) -> usize {
    g.offset_c + at(b, g.stride_c, i, j, g.ldc)
}

/// C = alpha op(A) op(B) + beta C + bias, over the batch; elements of `c` outside the m x n
/// windows are left as they are. beta == 0 ignores C's old values (even NaN).
pub fn gemm(g: &Gemm, a: &[f64], b: &[f64], c: &mut [f64], bias: Option<&[f64]>) {
    for bt in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                let mut acc = 0.0;
                for k in 0..g.k {
                    acc += a[a_index(g, bt, i, k)] * b[b_index(g, bt, k, j)];
                }
                let ci = c_index(g, bt, i, j);
                let mut out = g.alpha as f64 * acc;
                if g.beta != 0.0 {
                    out += g.beta as f64 * c[ci];
                }
                if let Some(bias) = bias {
                    out += bias[g.offset_bias + j];
                }
                c[ci] = out;
            }
        }
    }
}

/// Gradients of gemm (beta = 0) for the upstream gradient `dc`: (dA, dB, dbias), each shaped
/// like its operand's storage.
pub fn gemm_backward(
    g: &Gemm,
    a: &[f64],
    b: &[f64],
    dc: &[f64],
    a_len: usize,
    b_len: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut da = vec![0.0; a_len];
    let mut db = vec![0.0; b_len];
    let mut dbias = vec![0.0; g.n];
    let alpha = g.alpha as f64;
    for bt in 0..g.batch {
        for i in 0..g.m {
            for j in 0..g.n {
                let d = dc[c_index(g, bt, i, j)];
                dbias[j] += d;
                for k in 0..g.k {
                    da[a_index(g, bt, i, k)] += alpha * d * b[b_index(g, bt, k, j)];
                    db[b_index(g, bt, k, j)] += alpha * a[a_index(g, bt, i, k)] * d;
                }
            }
        }
    }
    (da, db, dbias)
}

pub fn softmax_rows_forward(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut y = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = row.iter().map(|v| (v - max).exp()).sum();
        for c in 0..cols {
            y[r * cols + c] = (row[c] - max).exp() / sum;
        }
    }
    y
}

pub fn softmax_rows_backward(y: &[f64], dy: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut dx = vec![0.0; rows * cols];
    for r in 0..rows {
        let s = r * cols..(r + 1) * cols;
        let dot: f64 = y[s.clone()]
            .iter()
            .zip(&dy[s.clone()])
            .map(|(a, b)| a * b)
            .sum();
        for i in s {
            dx[i] = y[i] * (dy[i] - dot);
        }
    }
    dx
}

pub use crate::ops::Reduce;

pub fn reduce_rows_forward(x: &[f64], rows: usize, cols: usize, op: Reduce) -> Vec<f64> {
    (0..rows)
        .map(|r| {
            let row = &x[r * cols..(r + 1) * cols];
            match op {
                Reduce::Sum => row.iter().sum(),
                Reduce::Mean => row.iter().sum::<f64>() / cols as f64,
                Reduce::Max => row.iter().cloned().fold(f64::NEG_INFINITY, f64::max),
                Reduce::SumSquares => row.iter().map(|v| v * v).sum(),
            }
        })
        .collect()
}

/// The gradient of a max goes to the first position holding it, as in PyTorch.
pub fn reduce_rows_backward(
    x: &[f64],
    dout: &[f64],
    rows: usize,
    cols: usize,
    op: Reduce,
) -> Vec<f64> {
    let mut dx = vec![0.0; rows * cols];
    for r in 0..rows {
        let row = &x[r * cols..(r + 1) * cols];
        match op {
            Reduce::Sum => dx[r * cols..(r + 1) * cols].fill(dout[r]),
            Reduce::Mean => dx[r * cols..(r + 1) * cols].fill(dout[r] / cols as f64),
            Reduce::SumSquares => (0..cols).for_each(|c| dx[r * cols + c] = 2.0 * row[c] * dout[r]),
            Reduce::Max => {
                let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let first = row.iter().position(|&v| v == max).unwrap_or(0);
                dx[r * cols + first] = dout[r];
            }
        }
    }
    dx
}

pub fn sum_columns(x: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    (0..cols)
        .map(|c| (0..rows).map(|r| x[r * cols + c]).sum())
        .collect()
}

pub fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

pub fn scale(x: &[f64], alpha: f64) -> Vec<f64> {
    x.iter().map(|v| alpha * v).collect()
}

/// The standard normal CDF. Through erfc, because 1 + erf(x / sqrt 2) cancels catastrophically
/// for very negative x, even in f64 (at x = -8 it keeps one digit).
fn normal_cdf(v: f64) -> f64 {
    0.5 * libm::erfc(-v / std::f64::consts::SQRT_2)
}

/// The erf form of GELU, as HF BERT: x * Phi(x).
pub fn gelu_forward(x: &[f64]) -> Vec<f64> {
    x.iter().map(|&v| v * normal_cdf(v)).collect()
}

/// The size of the two terms whose sum gelu_backward returns, |dy| (Phi(x) + |x phi(x)|):
/// the sum vanishes near x = -0.7518, so errors there are judged against the terms.
pub fn gelu_backward_terms(x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dy)
        .map(|(&v, &d)| {
            d.abs()
                * (normal_cdf(v)
                    + (v * (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt()).abs())
        })
        .collect()
}

pub fn gelu_backward(x: &[f64], dy: &[f64]) -> Vec<f64> {
    x.iter()
        .zip(dy)
        .map(|(&v, &d)| {
            let cdf = normal_cdf(v);
            let pdf = (-0.5 * v * v).exp() / (2.0 * std::f64::consts::PI).sqrt();
            d * (cdf + v * pdf)
        })
        .collect()
}

/// One AdamW step (torch.optim.AdamW semantics), in place; `step` counts from 1. The gradient
/// is used as given (scale it first to clip).
#[allow(clippy::too_many_arguments)]
pub fn adamw_step(
    hp: &crate::ops::AdamW,
    step: u64,
    param: &mut [f64],
    grad: &[f64],
    m: &mut [f64],
    v: &mut [f64],
) {
    let (b1, b2) = (hp.beta1 as f64, hp.beta2 as f64);
    let bc1 = 1.0 - b1.powf(step as f64);
    let bc2 = 1.0 - b2.powf(step as f64);
    for i in 0..param.len() {
        param[i] *= 1.0 - hp.lr as f64 * hp.weight_decay as f64;
        m[i] = b1 * m[i] + (1.0 - b1) * grad[i];
        v[i] = b2 * v[i] + (1.0 - b2) * grad[i] * grad[i];
        param[i] -= hp.lr as f64 * (m[i] / bc1) / ((v[i] / bc2).sqrt() + hp.eps as f64);
    }
}

/// The dropout mask of kernels/dropout.cu, bit for bit: keep element i iff the top 24 bits of
/// splitmix64(seed + (i + 1) * golden), read as a float in [0, 1), are >= p.
pub fn dropout_keep(seed: u64, i: u64, p: f32) -> bool {
    let mut z = seed.wrapping_add((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    ((z >> 40) as f32) * (1.0 / 16_777_216.0) >= p
}

/// Inverted dropout (also its backward, applied to dy): x / (1 - p) where kept, else 0.
pub fn dropout(x: &[f64], p: f32, seed: u64) -> Vec<f64> {
    let scale = 1.0 / (1.0 - p as f64);
    x.iter()
        .enumerate()
        .map(|(i, &v)| {
            if dropout_keep(seed, i as u64, p) {
                v * scale
            } else {
                0.0
            }
        })
        .collect()
}

/// out[i, :] = table[ids[i], :].
pub fn embedding_forward(ids: &[i32], table: &[f64], dim: usize) -> Vec<f64> {
    ids.iter()
        .flat_map(|&id| {
            table[id as usize * dim..(id as usize + 1) * dim]
                .iter()
                .cloned()
        })
        .collect()
}

/// dtable[v, :] = sum of dout[i, :] over the tokens i with ids[i] = v.
pub fn embedding_backward(ids: &[i32], dout: &[f64], vocab: usize, dim: usize) -> Vec<f64> {
    let mut d = vec![0.0; vocab * dim];
    for (i, &id) in ids.iter().enumerate() {
        for k in 0..dim {
            d[id as usize * dim + k] += dout[i * dim + k];
        }
    }
    d
}

/// LayerNorm over rows (biased variance): y = (x - mean) / sqrt(var + eps) * gamma + beta.
pub fn layernorm_forward(
    x: &[f64],
    gamma: &[f64],
    beta: &[f64],
    cols: usize,
    eps: f64,
) -> Vec<f64> {
    let mut y = vec![0.0; x.len()];
    for (xr, yr) in x.chunks(cols).zip(y.chunks_mut(cols)) {
        let mean = xr.iter().sum::<f64>() / cols as f64;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        for c in 0..cols {
            yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
        }
    }
    y
}

/// Gradients of layernorm_forward: (dx, dgamma, dbeta).
pub fn layernorm_backward(
    x: &[f64],
    gamma: &[f64],
    dy: &[f64],
    cols: usize,
    eps: f64,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut dx = vec![0.0; x.len()];
    let mut dgamma = vec![0.0; cols];
    let mut dbeta = vec![0.0; cols];
    for r in 0..x.len() / cols {
        let xr = &x[r * cols..(r + 1) * cols];
        let dyr = &dy[r * cols..(r + 1) * cols];
        let mean = xr.iter().sum::<f64>() / cols as f64;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let xhat: Vec<f64> = xr.iter().map(|v| (v - mean) * rstd).collect();
        let g: Vec<f64> = (0..cols).map(|c| dyr[c] * gamma[c]).collect();
        let mg = g.iter().sum::<f64>() / cols as f64;
        let mgx = g.iter().zip(&xhat).map(|(a, b)| a * b).sum::<f64>() / cols as f64;
        for c in 0..cols {
            dx[r * cols + c] = rstd * (g[c] - mg - xhat[c] * mgx);
            dgamma[c] += dyr[c] * xhat[c];
            dbeta[c] += dyr[c];
        }
    }
    (dx, dgamma, dbeta)
}

/// The size of the terms whose sum is LayerNorm's dx, rstd (|g| + |mean g| + |xhat mean(g xhat)|):
/// dx vanishes for rows of two values (their normalised outputs are +-1 whatever x is), so it
/// is judged against these.
pub fn layernorm_backward_terms(
    x: &[f64],
    gamma: &[f64],
    dy: &[f64],
    cols: usize,
    eps: f64,
) -> Vec<f64> {
    let mut t = vec![0.0; x.len()];
    for r in 0..x.len() / cols {
        let xr = &x[r * cols..(r + 1) * cols];
        let mean = xr.iter().sum::<f64>() / cols as f64;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / cols as f64;
        let rstd = 1.0 / (var + eps).sqrt();
        let g: Vec<f64> = (0..cols).map(|c| dy[r * cols + c] * gamma[c]).collect();
        let mg = g.iter().sum::<f64>() / cols as f64;
        let mgx = (0..cols).map(|c| g[c] * (xr[c] - mean) * rstd).sum::<f64>() / cols as f64;
        for c in 0..cols {
            t[r * cols + c] = rstd * (g[c].abs() + mg.abs() + ((xr[c] - mean) * rstd * mgx).abs());
        }
    }
    t
}
