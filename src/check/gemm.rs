//! GEMM against the reference: every tile, unsplit and split along k, on awkward shapes with
//! padded leading dimensions, batches, offsets, beta and bias.

use super::{
    finite_difference, grad_row, kernel_row, relative_error, to_f32, up, weighted_sum, worst, Row,
};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self, Gemm};
use crate::reference as r;
use crate::rng::Rng;

/// Awkward shapes: tiny, prime, one past a tile, a column, a row, whole tiles (the unchecked
/// interior loop); every transpose combination appears; some have padded leading dimensions,
/// batches, bias and beta != 0.
fn gemm_cases() -> Vec<(Gemm, bool)> {
    let mut cases = Vec::new();
    let shapes = [
        (1, 1, 1),
        (7, 13, 5),
        (64, 64, 16),
        (65, 63, 17),
        (33, 1, 70),
        (1, 129, 3),
        (96, 128, 64),
        (129, 65, 9),
        (130, 257, 24),
        (45, 70, 300),
        (192, 128, 48), // interior blocks of every tile beside edge blocks of the largest
    ];
    for (idx, &(m, n, k)) in shapes.iter().enumerate() {
        for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
            if (idx + ta as usize + 2 * tb as usize) % 2 == 1 && m * n > 1000 {
                continue; // keep the big shapes to two layouts each
            }
            cases.push((Gemm::new(m, n, k, ta, tb), false));
        }
    }
    // Padded leading dimensions, a batch, beta and bias together.
    let mut g = Gemm::new(37, 29, 41, true, false);
    g.lda += 3;
    g.ldb += 5;
    g.ldc += 2;
    g.stride_a = g.k * g.lda + 7;
    g.stride_b = g.k * g.ldb + 1;
    g.stride_c = g.m * g.ldc + 4;
    g.batch = 3;
    g.alpha = 0.75;
    g.beta = 0.5;
    // ... and views into larger buffers, 16-byte misaligned.
    g.offset_a = 5;
    g.offset_b = 3;
    g.offset_c = 2;
    cases.push((g, true));
    // The batched attention shape: heads of 64 over a 12-token sequence, B^T.
    cases.push((Gemm::new(12, 12, 64, false, true).batched(5), true));
    cases
}

pub fn gemm_lengths(g: &Gemm) -> (usize, usize, usize) {
    let (ar, ac) = g.a_dims();
    let (br, bc) = g.b_dims();
    let span = |rows: usize, cols: usize, ld: usize, stride: usize| {
        (g.batch - 1) * stride + (rows - 1) * ld + cols
    };
    (
        g.offset_a + span(ar, ac, g.lda, g.stride_a),
        g.offset_b + span(br, bc, g.ldb, g.stride_b),
        g.offset_c + span(g.m, g.n, g.ldc, g.stride_c),
    )
}

/// Whether element i of C's buffer is inside one of the batch's m x n windows (the rest must
/// stay untouched).
pub fn in_c_window(g: &Gemm, i: usize) -> bool {
    (0..g.batch).any(|bt| {
        i >= g.offset_c + bt * g.stride_c && {
            let off = i - g.offset_c - bt * g.stride_c;
            off / g.ldc < g.m && off % g.ldc < g.n
        }
    })
}

pub fn gemm_sizes(g: &Gemm, bias: bool) -> String {
    format!(
        "m={} n={} k={} {}{} batch={}{}{}",
        g.m,
        g.n,
        g.k,
        if g.trans_a { "T" } else { "N" },
        if g.trans_b { "T" } else { "N" },
        g.batch,
        if g.beta != 0.0 { " beta" } else { "" },
        if bias { " bias" } else { "" }
    )
}

/// The plans every GEMM case runs under: each tile size (its own kernel instance) unsplit and
/// split three ways along k (two or three slices after rounding, where k is over 16), not only
/// the one the launcher would pick for the shape.
pub fn gemm_plans(g: &Gemm) -> Vec<ops::GemmPlan> {
    ops::GemmTile::ALL
        .into_iter()
        .flat_map(|tile| [1, 3].map(|splits| ops::GemmPlan { tile, splits }.as_run(g)))
        .fold(Vec::new(), |mut plans, p| {
            if !plans.contains(&p) {
                plans.push(p);
            }
            plans
        })
}

pub fn gemm_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (plan, (g, with_bias)) in gemm_cases()
        .into_iter()
        .flat_map(|c| gemm_plans(&c.0).into_iter().map(move |p| (p, c)))
    {
        let (la, lb, lc) = gemm_lengths(&g);
        let a = rng.normals(la, 1.0);
        let b = rng.normals(lb, 1.0);
        let bias = rng.normals(g.n, 1.0);
        // With beta = 0, C starts as NaN and must be ignored; otherwise it starts random.
        let c0: Vec<f64> = if g.beta != 0.0 {
            rng.normals(lc, 1.0)
        } else {
            vec![f64::NAN; lc]
        };
        let mut expect = c0.clone();
        r::gemm(&g, &a, &b, &mut expect, with_bias.then_some(&bias[..]));
        let (da, db, dbias) = (
            up(dev, &a, "A")?,
            up(dev, &b, "B")?,
            up(dev, &bias, "bias")?,
        );
        let mut dc = dev.upload(&to_f32(&c0), "C")?;
        ops::gemm_with_plan(
            &g,
            plan,
            &da,
            &db,
            &mut dc,
            with_bias.then_some(&dbias),
            Default::default(),
        )?;
        let out = dc.to_host()?;
        // Compare only the m x n windows; elements between them must be untouched.
        let (mut o, mut e) = (Vec::new(), Vec::new());
        let mut untouched = true;
        for i in 0..lc {
            if in_c_window(&g, i) {
                o.push(out[i]);
                e.push(expect[i]);
            } else if out[i].to_bits() != (c0[i] as f32).to_bits() {
                untouched = false;
            }
        }
        let err = if untouched {
            relative_error(&o, &e)
        } else {
            f64::INFINITY
        };
        let sizes = format!("{} tile {}", gemm_sizes(&g, with_bias), plan.name());
        rows.push(kernel_row("gemm", dev, sizes, err));
    }
    Ok(rows)
}

pub fn gemm_gradient(rng: &mut Rng) -> Vec<Row> {
    let mut rows = Vec::new();
    for (g, with_bias) in gemm_cases()
        .into_iter()
        .filter(|(g, _)| g.m * g.n * g.k < 5000)
    {
        let g = Gemm { beta: 0.0, ..g };
        let (la, lb, lc) = gemm_lengths(&g);
        let a = rng.normals(la, 1.0);
        let b = rng.normals(lb, 1.0);
        let bias = rng.normals(g.n, 1.0);
        let w = rng.normals(lc, 1.0);
        let loss = |a: &[f64], b: &[f64], bias: &[f64]| {
            let mut c = vec![0.0; lc];
            r::gemm(&g, a, b, &mut c, with_bias.then_some(bias));
            weighted_sum(&c, &w)
        };
        let (ga, gb, gbias) = r::gemm_backward(&g, &a, &b, &w, la, lb);
        let mut err = finite_difference(|x| loss(x, &b, &bias), &a, &ga, 1e-3).worst_error;
        err = worst(
            err,
            finite_difference(|x| loss(&a, x, &bias), &b, &gb, 1e-3).worst_error,
        );
        if with_bias {
            err = worst(
                err,
                finite_difference(|x| loss(&a, &b, x), &bias, &gbias, 1e-3).worst_error,
            );
        }
        rows.push(grad_row("gemm", gemm_sizes(&g, with_bias), err));
    }
    rows
}
