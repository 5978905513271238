//! Registry checks of LayerNorm (and ReLU, ERNIE's activation).

use super::{
    finite_difference, relative_error, relative_error_to_terms, to_f32, weighted_sum, worst,
};
use super::{Row, GRADIENT_TOLERANCE, KERNEL_TOLERANCE};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self, layernorm};
use crate::reference as r;
use crate::rng::Rng;

// Up to 768 columns the kernels hold a row in registers; past that they stream it (1000).
const SHAPES: [(usize, usize); 6] = [(1, 2), (3, 7), (5, 64), (2, 33), (4, 768), (3, 1000)];
const EPS: f64 = 1e-12;

/// Rows of two values are left out here: their normalised outputs are +-1 whatever x is, so
/// dx is 0 up to eps and both sides hold rounding noise (the kernel check keeps them, judged
/// against the terms of dx). Steps of 1e-4: rows of few values can sit where LayerNorm bends
/// sharply (a small variance), where 1e-3 leaves truncation error.
pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    [(1, 3), (3, 7), (5, 64), (2, 33)]
        .iter()
        .map(|&(rows, cols)| {
            let x = rng.normals(rows * cols, 1.0);
            let gamma = rng.normals(cols, 1.0);
            let beta = rng.normals(cols, 1.0);
            let w = rng.normals(rows * cols, 1.0);
            let (dx, dg, db) = r::layernorm_backward(&x, &gamma, &w, cols, EPS);
            let f = |x: &[f64], g: &[f64], b: &[f64]| {
                weighted_sum(&r::layernorm_forward(x, g, b, cols, EPS), &w)
            };
            let mut err = finite_difference(|v| f(v, &gamma, &beta), &x, &dx, 1e-4).worst_error;
            err = worst(
                err,
                finite_difference(|v| f(&x, v, &beta), &gamma, &dg, 1e-4).worst_error,
            );
            err = worst(
                err,
                finite_difference(|v| f(&x, &gamma, v), &beta, &db, 1e-4).worst_error,
            );
            Row {
                op: "layernorm".into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("rows={rows} cols={cols}"),
                error: err,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows_out = Vec::new();
    for (rows, cols) in SHAPES {
        let x = rng.normals(rows * cols, 2.0);
        let gamma = rng.normals(cols, 1.0);
        let beta = rng.normals(cols, 1.0);
        let dy = rng.normals(rows * cols, 1.0);
        let (xb, gb, bb) = (
            dev.upload(&to_f32(&x), "x")?,
            dev.upload(&to_f32(&gamma), "g")?,
            dev.upload(&to_f32(&beta), "b")?,
        );
        let mut y = dev.upload(&super::nan_vec(rows * cols), "y")?;
        let mut stats = layernorm::Stats {
            mean: dev.alloc(rows, "mean")?,
            rstd: dev.alloc(rows, "rstd")?,
        };
        layernorm::forward(&xb, &gb, &bb, &mut y, &mut stats, rows, cols, EPS as f32)?;
        let mut err = relative_error(
            &y.to_host()?,
            &r::layernorm_forward(&x, &gamma, &beta, cols, EPS),
        );
        let dyb = dev.upload(&to_f32(&dy), "dy")?;
        let mut dx = dev.upload(&super::nan_vec(rows * cols), "dx")?;
        let mut dyx = dev.upload(&super::nan_vec(rows * cols), "dy_xhat")?;
        layernorm::backward(&xb, &gb, &stats, &dyb, &mut dx, &mut dyx, None, rows, cols)?;
        let (mut dg, mut db) = (dev.alloc(cols, "dgamma")?, dev.alloc(cols, "dbeta")?);
        ops::sum_columns(&dyx, &mut dg, rows, cols)?;
        ops::sum_columns(&dyb, &mut db, rows, cols)?;
        let (want_dx, want_dg, want_db) = r::layernorm_backward(&x, &gamma, &dy, cols, EPS);
        let terms = r::layernorm_backward_terms(&x, &gamma, &dy, cols, EPS);
        err = worst(
            err,
            relative_error_to_terms(&dx.to_host()?, &want_dx, &terms),
        );
        err = worst(err, relative_error(&dg.to_host()?, &want_dg));
        err = worst(err, relative_error(&db.to_host()?, &want_db));
        // The fused dropout backward: dx again, and dx through the mask of (seed, index).
        let (rate, seed) = (0.3f32, 0x5eed + rows as u64);
        let mut dx2 = dev.upload(&super::nan_vec(rows * cols), "dx")?;
        let mut dropped = dev.upload(&super::nan_vec(rows * cols), "dx dropped")?;
        layernorm::backward(
            &xb,
            &gb,
            &stats,
            &dyb,
            &mut dx2,
            &mut dyx,
            Some(layernorm::DroppedGrad {
                out: &mut dropped,
                rate,
                seed,
            }),
            rows,
            cols,
        )?;
        let keep = |i: usize| r::dropout_keep(seed, i as u64, rate);
        let scale = 1.0 / (1.0 - rate as f64);
        let want_dropped: Vec<f64> = (0..rows * cols)
            .map(|i| if keep(i) { want_dx[i] * scale } else { 0.0 })
            .collect();
        let dropped_terms: Vec<f64> = (0..rows * cols)
            .map(|i| if keep(i) { terms[i] * scale } else { 0.0 })
            .collect();
        err = worst(
            err,
            relative_error_to_terms(&dx2.to_host()?, &want_dx, &terms),
        );
        err = worst(
            err,
            relative_error_to_terms(&dropped.to_host()?, &want_dropped, &dropped_terms),
        );
        rows_out.push(Row {
            op: "layernorm".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("rows={rows} cols={cols}"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
        // ReLU forward and backward on the same data.
        let mut yr = dev.upload(&super::nan_vec(rows * cols), "relu y")?;
        ops::relu_forward(&xb, &mut yr, rows * cols)?;
        let mut dxr = dyb.duplicate()?;
        ops::relu_backward(&xb, &mut dxr, rows * cols)?;
        let want_y: Vec<f64> = x.iter().map(|v| v.max(0.0)).collect();
        let want_dx: Vec<f64> = x
            .iter()
            .zip(&dy)
            .map(|(v, d)| if *v > 0.0 { *d } else { 0.0 })
            .collect();
        rows_out.push(Row {
            op: "relu".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("n={}", rows * cols),
            error: worst(
                relative_error(&yr.to_host()?, &want_y),
                relative_error(&dxr.to_host()?, &want_dx),
            ),
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows_out)
}
