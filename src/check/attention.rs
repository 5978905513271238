//! Registry checks of the fused attention: the f64 reference against finite differences (with
//! a fixed dropout mask), and the kernels against the reference at awkward shapes: one token,
//! head sizes 1, 7, 16, 33, 64 (the tiled forward) and 128 (warp per query), two query
//! tiles, padding, a fused QKV buffer, dropout.

use super::{
    finite_difference, relative_error, to_f32, weighted_sum, worst, Row, GRADIENT_TOLERANCE,
    KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::ops::attention::{self as k, Attention};
use crate::reference::attention as r;
use crate::rng::Rng;

/// (batch, heads, len, head_dim, lengths, fused qkv, dropout)
type Case = (usize, usize, usize, usize, Vec<i32>, bool, f32);

fn cases() -> Vec<Case> {
    vec![
        (1, 1, 1, 1, vec![1], false, 0.0),
        (2, 3, 5, 7, vec![5, 2], false, 0.0),
        (1, 2, 6, 4, vec![4], true, 0.3),
        (2, 2, 9, 64, vec![9, 4], true, 0.0),
        (1, 2, 33, 33, vec![20], false, 0.3),
        (3, 1, 40, 128, vec![40, 1, 17], false, 0.1),
        (2, 2, 70, 16, vec![70, 65], true, 0.2),
        // The tiled kernels at BERT-base's head size: a sequence that is all padding (no
        // distribution: zero output and gradients), two query tiles, four key tiles.
        (2, 1, 100, 64, vec![0, 97], false, 0.1),
    ]
}

fn shape(c: &Case, seed: u64) -> Attention {
    let (batch, heads, len, d, _, fused, dropout) = *c;
    let hd = heads * d;
    Attention {
        batch,
        heads,
        len,
        head_dim: d,
        stride: if fused { 3 * hd } else { hd },
        offsets: if fused { [0, hd, 2 * hd] } else { [0, 0, 0] },
        scale: 1.0 / (d as f32).sqrt(),
        dropout,
        seed,
    }
}

fn mask(c: &Case) -> Vec<i32> {
    let (batch, len, lengths) = (c.0, c.2, &c.4);
    (0..batch * len)
        .map(|i| (((i % len) as i32) < lengths[i / len]) as i32)
        .collect()
}

/// q, k, v: three buffers, or one fused buffer passed three times.
fn inputs(rng: &mut Rng, a: &Attention, fused: bool) -> [Vec<f64>; 3] {
    let n = a.batch * a.len * a.stride;
    if fused {
        let x = rng.normals(n, 1.0);
        [x.clone(), x.clone(), x]
    } else {
        [
            rng.normals(n, 1.0),
            rng.normals(n, 1.0),
            rng.normals(n, 1.0),
        ]
    }
}

pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    cases()
        .into_iter()
        .take(3)
        .map(|c| {
            let a = shape(&c, 99);
            let m = mask(&c);
            let [q, kk, v] = inputs(rng, &a, false);
            let w = rng.normals(a.batch * a.len * a.heads * a.head_dim, 1.0);
            let [dq, dk, dv] = r::backward(&a, &q, &kk, &v, Some(&m), &w);
            let f = |q: &[f64], kk: &[f64], v: &[f64]| {
                weighted_sum(&r::forward(&a, q, kk, v, Some(&m)), &w)
            };
            let mut err = finite_difference(|x| f(x, &kk, &v), &q, &dq, 1e-3).worst_error;
            err = worst(
                err,
                finite_difference(|x| f(&q, x, &v), &kk, &dk, 1e-3).worst_error,
            );
            err = worst(
                err,
                finite_difference(|x| f(&q, &kk, x), &v, &dv, 1e-3).worst_error,
            );
            Row {
                op: "attention".into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("B={} H={} L={} d={} dropout={}", c.0, c.1, c.2, c.3, c.6),
                error: err,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for c in cases() {
        let a = shape(&c, rng.next_u64());
        let fused = c.5;
        let m = mask(&c);
        let [q, kk, v] = inputs(rng, &a, fused);
        let out_len = a.batch * a.len * a.heads * a.head_dim;
        let dout = rng.normals(out_len, 1.0);
        let want = r::forward(&a, &q, &kk, &v, Some(&m));
        let [wq, wk, wv] = r::backward(&a, &q, &kk, &v, Some(&m), &dout);
        let mb = dev.upload(&m, "mask")?;
        let (qb, kb, vb) = (
            dev.upload(&to_f32(&q), "q")?,
            dev.upload(&to_f32(&kk), "k")?,
            dev.upload(&to_f32(&v), "v")?,
        );
        let qkv = if fused {
            [&qb, &qb, &qb]
        } else {
            [&qb, &kb, &vb]
        };
        let mut out = dev.upload(&super::nan_vec(out_len), "out")?;
        let mut lse = dev.alloc::<f32>(a.batch * a.heads * a.len, "lse")?;
        k::forward(&a, qkv, Some(&mb), &mut out, &mut lse)?;
        let mut err = relative_error(&out.to_host()?, &want);
        let doutb = dev.upload(&to_f32(&dout), "dout")?;
        let n = q.len();
        if fused {
            // One dQKV buffer: each third of every row comes from one of dq, dk, dv.
            let g = dev.upload(&super::nan_vec(n), "dqkv")?;
            k::backward(&a, qkv, Some(&mb), &out, &lse, &doutb, [&g, &g, &g])?;
            let want: Vec<f64> = (0..n).map(|i| wq[i] + wk[i] + wv[i]).collect();
            err = worst(err, relative_error(&g.to_host()?, &want));
        } else {
            let (gq, gk, gv) = (
                dev.upload(&super::nan_vec(n), "dq")?,
                dev.upload(&super::nan_vec(n), "dk")?,
                dev.upload(&super::nan_vec(n), "dv")?,
            );
            k::backward(&a, qkv, Some(&mb), &out, &lse, &doutb, [&gq, &gk, &gv])?;
            err = worst(err, relative_error(&gq.to_host()?, &wq));
            err = worst(err, relative_error(&gk.to_host()?, &wk));
            err = worst(err, relative_error(&gv.to_host()?, &wv));
        }
        rows.push(Row {
            op: "attention".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!(
                "B={} H={} L={} d={} lengths={:?}{} dropout={}",
                c.0,
                c.1,
                c.2,
                c.3,
                c.4,
                if fused { " fused" } else { "" },
                c.6
            ),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows)
}
