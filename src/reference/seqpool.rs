//! f64 reference of sequence pooling over real tokens (kernels/seqpool.cu).

use crate::ops::seqpool::Pool;

fn source(pool: Pool, d: usize, features: usize, halves: usize, n: usize) -> usize {
    if pool == Pool::Last && halves == 2 && d >= features / 2 {
        0
    } else {
        n - 1
    }
}

pub fn forward(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    features: usize,
    pool: Pool,
    halves: usize,
) -> Vec<f64> {
    let mut out = vec![0.0; lengths.len() * features];
    for (b, &n) in lengths.iter().enumerate() {
        let n = n as usize;
        for d in 0..features {
            let at = |t: usize| x[(b * len + t) * features + d];
            out[b * features + d] = match pool {
                Pool::Max => (1..n).map(at).fold(at(0), f64::max),
                Pool::Mean => (0..n).map(at).sum::<f64>() / n as f64,
                Pool::Last => at(source(pool, d, features, halves, n)),
            };
        }
    }
    out
}

pub fn backward(
    x: &[f64],
    lengths: &[i32],
    len: usize,
    features: usize,
    pool: Pool,
    halves: usize,
    dout: &[f64],
) -> Vec<f64> {
    let mut dx = vec![0.0; x.len()];
    for (b, &n) in lengths.iter().enumerate() {
        let n = n as usize;
        for d in 0..features {
            let g = dout[b * features + d];
            let at = |t: usize| (b * len + t) * features + d;
            match pool {
                Pool::Max => {
                    let mut best = 0;
                    for t in 1..n {
                        if x[at(t)] > x[at(best)] {
                            best = t;
                        }
                    }
                    dx[at(best)] = g;
                }
                Pool::Mean => (0..n).for_each(|t| dx[at(t)] = g / n as f64),
                Pool::Last => dx[at(source(pool, d, features, halves, n))] = g,
            }
        }
    }
    dx
}
