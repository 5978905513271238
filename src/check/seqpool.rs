//! Registry checks of sequence pooling (max, mean, last states) over real tokens.

use super::{
    finite_difference_piecewise, relative_error, to_f32, weighted_sum, worst, Row,
    GRADIENT_TOLERANCE, KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::ops::seqpool::{self as k, Pool};
use crate::reference::seqpool as r;
use crate::rng::Rng;

/// (len, features, halves, lengths)
type Case = (usize, usize, usize, Vec<i32>);

fn cases() -> Vec<Case> {
    vec![
        (1, 3, 1, vec![1]),
        (5, 6, 2, vec![5, 1, 3]),
        (9, 13, 1, vec![2, 9, 4, 7, 1]),
        (4, 66, 2, vec![4, 2]),
    ]
}

const POOLS: [Pool; 3] = [Pool::Max, Pool::Mean, Pool::Last];

pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    let mut rows = Vec::new();
    for pool in POOLS {
        for (len, d, halves, lengths) in cases().into_iter().take(3) {
            let x = rng.normals(lengths.len() * len * d, 1.0);
            let w = rng.normals(lengths.len() * d, 1.0);
            let grad = r::backward(&x, &lengths, len, d, pool, halves, &w);
            // The piece: which position each output reads (it moves only for max).
            let f = |x: &[f64]| {
                let out = r::forward(x, &lengths, len, d, pool, halves);
                let dx = r::backward(x, &lengths, len, d, pool, halves, &vec![1.0; out.len()]);
                (
                    weighted_sum(&out, &w),
                    dx.iter().map(|v| *v != 0.0).collect::<Vec<_>>(),
                )
            };
            let chk = finite_difference_piecewise(f, &x, &grad, 1e-4);
            rows.push(Row {
                op: "seq_pool".into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("{pool:?} L={len} D={d} halves={halves} lengths={lengths:?}"),
                error: chk.worst_error,
                tolerance: GRADIENT_TOLERANCE,
            });
        }
    }
    rows
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for pool in POOLS {
        for (len, d, halves, lengths) in cases() {
            let b = lengths.len();
            let x = rng.normals(b * len * d, 1.0);
            let dout = rng.normals(b * d, 1.0);
            let lb = dev.upload(&lengths, "lengths")?;
            let xb = dev.upload(&to_f32(&x), "x")?;
            let mut out = dev.upload(&super::nan_vec(b * d), "out")?;
            let mut argmax = dev.alloc::<i32>(b * d, "argmax")?;
            k::forward(&xb, &lb, &mut out, &mut argmax, len, d, pool, halves)?;
            let mut err = relative_error(
                &out.to_host()?,
                &r::forward(&x, &lengths, len, d, pool, halves),
            );
            let mut dx = dev.upload(&super::nan_vec(b * len * d), "dx")?;
            k::backward(
                &dev.upload(&to_f32(&dout), "dout")?,
                &lb,
                &argmax,
                &mut dx,
                len,
                d,
                pool,
                halves,
            )?;
            err = worst(
                err,
                relative_error(
                    &dx.to_host()?,
                    &r::backward(&x, &lengths, len, d, pool, halves, &dout),
                ),
            );
            rows.push(Row {
                op: "seq_pool".into(),
                check: "kernel",
                device: dev.describe(),
                sizes: format!("{pool:?} L={len} D={d} halves={halves} lengths={lengths:?}"),
                error: err,
                tolerance: KERNEL_TOLERANCE,
            });
        }
    }
    Ok(rows)
}
