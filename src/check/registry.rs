//! Every checked op, in one list. Each entry checks (1) the f64 reference's backward against
//! central finite differences and (2) the kernels against the reference on fresh random inputs
//! of awkward sizes, with outputs NaN-filled before launch. `emrclass gradcheck` prints these
//! rows; the tests assert them. A later op registers itself by adding an entry to `ALL`.

use super::losses;
use super::{
    finite_difference, nan_vec, relative_error, relative_error_to_terms, to_f32, weighted_sum,
    worst, Rng,
};
use crate::device::{Buffer, Device};
use crate::error::Result;
use crate::model::loss::LossKind::{CrossEntropy, Focal, GhmC, GhmCs, WeightedCrossEntropy};
use crate::ops::{self, AdamW, Gemm, Reduce};
use crate::reference as r;

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

pub struct OpCheck {
    pub name: &'static str,
    pub gradient: Option<fn(&mut Rng) -> Vec<Row>>,
    pub kernel: fn(&Device, &mut Rng) -> Result<Vec<Row>>,
}

pub static ALL: &[OpCheck] = &[
    OpCheck {
        name: "gemm",
        gradient: Some(gemm_gradient),
        kernel: gemm_kernel,
    },
    OpCheck {
        name: "gemm_epilogue",
        gradient: None,
        kernel: super::gemm_epilogue::kernel,
    },
    OpCheck {
        name: "softmax",
        gradient: Some(softmax_gradient),
        kernel: softmax_kernel,
    },
    OpCheck {
        name: "reduce",
        gradient: Some(reduce_gradient),
        kernel: reduce_kernel,
    },
    OpCheck {
        name: "sum_columns",
        gradient: Some(sum_columns_gradient),
        kernel: sum_columns_kernel,
    },
    OpCheck {
        name: "add",
        gradient: Some(add_gradient),
        kernel: add_kernel,
    },
    OpCheck {
        name: "scale",
        gradient: Some(scale_gradient),
        kernel: scale_kernel,
    },
    OpCheck {
        name: "gelu",
        gradient: Some(gelu_gradient),
        kernel: gelu_kernel,
    },
    OpCheck {
        name: "adamw",
        gradient: None,
        kernel: adamw_kernel,
    },
    OpCheck {
        name: "adamw8bit",
        gradient: None,
        kernel: super::adamw8bit::kernel,
    },
    OpCheck {
        name: "convert_f16",
        gradient: None,
        kernel: convert_kernel,
    },
    OpCheck {
        name: "attention",
        gradient: Some(super::attention::gradient),
        kernel: super::attention::kernel,
    },
    OpCheck {
        name: "dropout",
        gradient: None,
        kernel: dropout_kernel,
    },
    OpCheck {
        name: "tanh",
        gradient: Some(tanh_gradient),
        kernel: tanh_kernel,
    },
    OpCheck {
        name: "bert_encoder",
        gradient: Some(super::bert::gradient),
        kernel: super::bert::kernel,
    },
    OpCheck {
        name: "layernorm",
        gradient: Some(super::layernorm::gradient),
        kernel: super::layernorm::kernel,
    },
    OpCheck {
        name: "textcnn",
        gradient: Some(super::textcnn::gradient),
        kernel: super::textcnn::kernel,
    },
    OpCheck {
        name: "bigru",
        gradient: Some(|r| super::rnn::gradient(crate::model::rnn::Cell::Gru, r)),
        kernel: |d, r| super::rnn::kernel(crate::model::rnn::Cell::Gru, d, r),
    },
    OpCheck {
        name: "bilstm",
        gradient: Some(|r| super::rnn::gradient(crate::model::rnn::Cell::Lstm, r)),
        kernel: |d, r| super::rnn::kernel(crate::model::rnn::Cell::Lstm, d, r),
    },
    OpCheck {
        name: "seq_pool",
        gradient: Some(super::seqpool::gradient),
        kernel: super::seqpool::kernel,
    },
    OpCheck {
        name: "embedding",
        gradient: Some(super::embedding::gradient),
        kernel: super::embedding::kernel,
    },
    OpCheck {
        name: "head",
        gradient: Some(super::heads::gradient),
        kernel: super::heads::kernel,
    },
    OpCheck {
        name: "loss_ce",
        gradient: Some(|r| losses::gradient(CrossEntropy, r)),
        kernel: |d, r| losses::kernel(CrossEntropy, d, r),
    },
    OpCheck {
        name: "loss_weighted_ce",
        gradient: Some(|r| losses::gradient(WeightedCrossEntropy, r)),
        kernel: |d, r| losses::kernel(WeightedCrossEntropy, d, r),
    },
    OpCheck {
        name: "loss_focal",
        gradient: Some(|r| losses::gradient(Focal, r)),
        kernel: |d, r| losses::kernel(Focal, d, r),
    },
    OpCheck {
        name: "loss_ghmc",
        gradient: Some(|r| losses::gradient(GhmC, r)),
        kernel: |d, r| losses::kernel(GhmC, d, r),
    },
    OpCheck {
        name: "loss_ghmcs",
        gradient: Some(|r| losses::gradient(GhmCs, r)),
        kernel: |d, r| losses::kernel(GhmCs, d, r),
    },
];

/// The entries named (all when `names` is empty), or an error naming the unknown one.
pub fn select(names: &[String]) -> Result<Vec<&'static OpCheck>> {
    if names.is_empty() {
        return Ok(ALL.iter().collect());
    }
    names
        .iter()
        .map(|n| {
            ALL.iter().find(|c| c.name == n).ok_or_else(|| {
                let known: Vec<_> = ALL.iter().map(|c| c.name).collect();
                crate::Error::Invalid(format!("no op named `{n}`; known: {}", known.join(", ")))
            })
        })
        .collect()
}

fn grad_row(op: &str, sizes: String, error: f64) -> Row {
    Row {
        op: op.into(),
        check: "gradient",
        device: "f64 reference".into(),
        sizes,
        error,
        tolerance: GRADIENT_TOLERANCE,
    }
}

pub(super) fn kernel_row(op: &str, dev: &Device, sizes: String, error: f64) -> Row {
    Row {
        op: op.into(),
        check: "kernel",
        device: dev.describe(),
        sizes,
        error,
        tolerance: KERNEL_TOLERANCE,
    }
}

fn up(dev: &Device, v: &[f64], what: &str) -> Result<Buffer<f32>> {
    dev.upload(&to_f32(v), what)
}

/// An output buffer filled with NaN, so an element no thread writes fails the comparison.
fn poisoned(dev: &Device, n: usize, what: &str) -> Result<Buffer<f32>> {
    dev.upload(&nan_vec(n), what)
}

// ------------------------------------------------------------------ gemm

/// Awkward shapes: tiny, prime, one past a tile, a column, a row; every transpose combination
/// appears; some have padded leading dimensions, batches, bias and beta != 0.
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

pub(super) fn gemm_lengths(g: &Gemm) -> (usize, usize, usize) {
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
pub(super) fn in_c_window(g: &Gemm, i: usize) -> bool {
    (0..g.batch).any(|bt| {
        i >= g.offset_c + bt * g.stride_c && {
            let off = i - g.offset_c - bt * g.stride_c;
            off / g.ldc < g.m && off % g.ldc < g.n
        }
    })
}

pub(super) fn gemm_sizes(g: &Gemm, bias: bool) -> String {
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
pub(super) fn gemm_plans(g: &Gemm) -> Vec<ops::GemmPlan> {
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

fn gemm_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
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

fn gemm_gradient(rng: &mut Rng) -> Vec<Row> {
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

// ------------------------------------------------------------------ softmax

const ROW_SHAPES: [(usize, usize); 6] = [(1, 1), (3, 7), (5, 31), (4, 33), (9, 100), (2, 513)];

fn softmax_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (n_rows, cols) in ROW_SHAPES {
        let n = n_rows * cols;
        let x = rng.normals(n, 3.0);
        let dy = rng.normals(n, 1.0);
        let y_ref = r::softmax_rows_forward(&x, n_rows, cols);
        let dx_ref = r::softmax_rows_backward(&y_ref, &dy, n_rows, cols);
        let xb = up(dev, &x, "x")?;
        let mut yb = poisoned(dev, n, "y")?;
        ops::softmax_rows_forward(&xb, &mut yb, n_rows, cols)?;
        let y = yb.to_host()?;
        let sizes = format!("rows={n_rows} cols={cols}");
        rows.push(kernel_row(
            "softmax_rows_forward",
            dev,
            sizes.clone(),
            relative_error(&y, &y_ref),
        ));
        // The backward kernel gets the reference's y, so its error is its own. dx_i =
        // y_i (dy_i - sum_j y_j dy_j) cancels where dy_i is near the row's mean, so it is judged
        // against the size of its terms, y_i (|dy_i| + sum_j y_j |dy_j|): the fp32 rounding of
        // y and dy alone can move a nearly cancelled dx_i by more than 1e-5 of itself.
        let (yr, dyb) = (up(dev, &y_ref, "y")?, up(dev, &dy, "dy")?);
        let mut dxb = poisoned(dev, n, "dx")?;
        ops::softmax_rows_backward(&yr, &dyb, &mut dxb, n_rows, cols)?;
        let terms: Vec<f64> = (0..n)
            .map(|i| {
                let row = i / cols * cols..(i / cols + 1) * cols;
                let dot: f64 = row.map(|j| y_ref[j] * dy[j].abs()).sum();
                y_ref[i] * (dy[i].abs() + dot)
            })
            .collect();
        rows.push(kernel_row(
            "softmax_rows_backward",
            dev,
            sizes,
            relative_error_to_terms(&dxb.to_host()?, &dx_ref, &terms),
        ));
    }
    Ok(rows)
}

fn softmax_gradient(rng: &mut Rng) -> Vec<Row> {
    [(1, 1), (3, 7), (2, 33)]
        .iter()
        .map(|&(n_rows, cols)| {
            let x = rng.normals(n_rows * cols, 2.0);
            let w = rng.normals(n_rows * cols, 1.0);
            let y = r::softmax_rows_forward(&x, n_rows, cols);
            let g = r::softmax_rows_backward(&y, &w, n_rows, cols);
            let chk = finite_difference(
                |x| weighted_sum(&r::softmax_rows_forward(x, n_rows, cols), &w),
                &x,
                &g,
                1e-3,
            );
            grad_row(
                "softmax_rows",
                format!("rows={n_rows} cols={cols}"),
                chk.worst_error,
            )
        })
        .collect()
}

// ------------------------------------------------------------------ reductions

fn reduce_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for op in [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::SumSquares] {
        for (n_rows, cols) in ROW_SHAPES {
            let n = n_rows * cols;
            let x = rng.normals(n, 1.0);
            let dout = rng.normals(n_rows, 1.0);
            let out_ref = r::reduce_rows_forward(&x, n_rows, cols, op);
            let dx_ref = r::reduce_rows_backward(&x, &dout, n_rows, cols, op);
            let xb = up(dev, &x, "x")?;
            let mut ob = poisoned(dev, n_rows, "out")?;
            ops::reduce_rows_forward(&xb, &mut ob, n_rows, cols, op)?;
            let sizes = format!("{op:?} rows={n_rows} cols={cols}");
            rows.push(kernel_row(
                "reduce_rows_forward",
                dev,
                sizes.clone(),
                relative_error(&ob.to_host()?, &out_ref),
            ));
            let (orf, db) = (up(dev, &out_ref, "out")?, up(dev, &dout, "dout")?);
            let mut dxb = poisoned(dev, n, "dx")?;
            ops::reduce_rows_backward(&xb, &orf, &db, &mut dxb, n_rows, cols, op)?;
            rows.push(kernel_row(
                "reduce_rows_backward",
                dev,
                sizes,
                relative_error(&dxb.to_host()?, &dx_ref),
            ));
        }
    }
    Ok(rows)
}

fn reduce_gradient(rng: &mut Rng) -> Vec<Row> {
    let mut rows = Vec::new();
    for op in [Reduce::Sum, Reduce::Mean, Reduce::Max, Reduce::SumSquares] {
        let (n_rows, cols) = (3, 17);
        // Distinct values, so the max is unique and differentiable where we probe it.
        let x = rng.normals(n_rows * cols, 1.0);
        let w = rng.normals(n_rows, 1.0);
        let g = r::reduce_rows_backward(&x, &w, n_rows, cols, op);
        let chk = finite_difference(
            |x| weighted_sum(&r::reduce_rows_forward(x, n_rows, cols, op), &w),
            &x,
            &g,
            1e-6,
        );
        rows.push(grad_row(
            "reduce_rows",
            format!("{op:?} rows={n_rows} cols={cols}"),
            chk.worst_error,
        ));
    }
    rows
}

fn sum_columns_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (n_rows, cols) in [(1, 1), (7, 3), (9, 33), (100, 65), (1, 300), (257, 5)] {
        let x = rng.normals(n_rows * cols, 1.0);
        let expect = r::sum_columns(&x, n_rows, cols);
        let xb = up(dev, &x, "x")?;
        let mut ob = poisoned(dev, cols, "out")?;
        ops::sum_columns(&xb, &mut ob, n_rows, cols)?;
        rows.push(kernel_row(
            "sum_columns",
            dev,
            format!("rows={n_rows} cols={cols}"),
            relative_error(&ob.to_host()?, &expect),
        ));
    }
    // A column block of a wider matrix (as Q, K, V in the fused [rows, 3H] gradient), read in
    // place: the other columns must not leak in.
    for (n_rows, cols, ld, offset) in [(9, 33, 99, 33), (100, 5, 17, 12), (3, 64, 192, 128)] {
        let wide = rng.normals(offset + n_rows * ld, 1.0);
        let block: Vec<f64> = (0..n_rows)
            .flat_map(|r| wide[offset + r * ld..offset + r * ld + cols].to_vec())
            .collect();
        let expect = r::sum_columns(&block, n_rows, cols);
        let xb = up(dev, &wide, "x")?;
        let mut ob = poisoned(dev, cols, "out")?;
        ops::sum_columns_of(&xb, offset, ld, &mut ob, n_rows, cols)?;
        rows.push(kernel_row(
            "sum_columns",
            dev,
            format!("rows={n_rows} cols={cols} ld={ld} offset={offset}"),
            relative_error(&ob.to_host()?, &expect),
        ));
    }
    Ok(rows)
}

fn sum_columns_gradient(rng: &mut Rng) -> Vec<Row> {
    let (n_rows, cols) = (5, 7);
    let x = rng.normals(n_rows * cols, 1.0);
    let w = rng.normals(cols, 1.0);
    // d/dx[r, c] of sum_c w[c] * sum_r x[r, c] is w[c]: the broadcast of the upstream gradient.
    let g: Vec<f64> = (0..n_rows * cols).map(|i| w[i % cols]).collect();
    let chk = finite_difference(
        |x| weighted_sum(&r::sum_columns(x, n_rows, cols), &w),
        &x,
        &g,
        1e-3,
    );
    vec![grad_row(
        "sum_columns",
        format!("rows={n_rows} cols={cols}"),
        chk.worst_error,
    )]
}

// ------------------------------------------------------------------ elementwise

const ELEMENT_COUNTS: [usize; 5] = [1, 31, 257, 4099, 1_048_583];

fn add_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let (a, b) = (rng.normals(n, 1.0), rng.normals(n, 1.0));
        let (ab, bb) = (up(dev, &a, "a")?, up(dev, &b, "b")?);
        let mut cb = poisoned(dev, n, "c")?;
        ops::add(&ab, &bb, &mut cb, n)?;
        rows.push(kernel_row(
            "add",
            dev,
            format!("n={n}"),
            relative_error(&cb.to_host()?, &r::add(&a, &b)),
        ));
    }
    Ok(rows)
}

fn add_gradient(rng: &mut Rng) -> Vec<Row> {
    let (a, b, w) = (
        rng.normals(9, 1.0),
        rng.normals(9, 1.0),
        rng.normals(9, 1.0),
    );
    // Both inputs receive the upstream gradient unchanged.
    let ea = finite_difference(|x| weighted_sum(&r::add(x, &b), &w), &a, &w, 1e-3).worst_error;
    let eb = finite_difference(|x| weighted_sum(&r::add(&a, x), &w), &b, &w, 1e-3).worst_error;
    vec![grad_row("add", "n=9".into(), worst(ea, eb))]
}

fn scale_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let x = rng.normals(n, 1.0);
        let alpha = -0.37f32;
        let xb = up(dev, &x, "x")?;
        let mut yb = poisoned(dev, n, "y")?;
        ops::scale(&xb, &mut yb, alpha, n)?;
        rows.push(kernel_row(
            "scale",
            dev,
            format!("n={n}"),
            relative_error(&yb.to_host()?, &r::scale(&x, alpha as f64)),
        ));
    }
    Ok(rows)
}

fn scale_gradient(rng: &mut Rng) -> Vec<Row> {
    let (x, w) = (rng.normals(9, 1.0), rng.normals(9, 1.0));
    let g = r::scale(&w, 1.7);
    let e = finite_difference(|x| weighted_sum(&r::scale(x, 1.7), &w), &x, &g, 1e-3).worst_error;
    vec![grad_row("scale", "n=9".into(), e)]
}

fn gelu_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let x = rng.normals(n, 3.0);
        let dy = rng.normals(n, 1.0);
        let xb = up(dev, &x, "x")?;
        let mut yb = poisoned(dev, n, "y")?;
        ops::gelu_forward(&xb, &mut yb, n)?;
        rows.push(kernel_row(
            "gelu_forward",
            dev,
            format!("n={n}"),
            relative_error(&yb.to_host()?, &r::gelu_forward(&x)),
        ));
        let mut dxb = up(dev, &dy, "dy, then dx")?;
        ops::gelu_backward(&xb, &mut dxb, n)?;
        let expect = r::gelu_backward(&x, &dy);
        rows.push(kernel_row(
            "gelu_backward",
            dev,
            format!("n={n}"),
            relative_error_to_terms(&dxb.to_host()?, &expect, &r::gelu_backward_terms(&x, &dy)),
        ));
    }
    rows.push(gelu_tail_row(dev)?);
    Ok(rows)
}

/// GELU's left tail, judged element by element (a norm would let the largest value hide the
/// tiny ones): 0.5 (1 + erf(x / sqrt 2)) cancels to nothing there, erfc does not.
fn gelu_tail_row(dev: &Device) -> Result<Row> {
    let x: Vec<f64> = (0..=12).map(|i| -9.0 + 0.5 * i as f64).collect();
    let expect = r::gelu_forward(&x);
    let xb = up(dev, &x, "x")?;
    let mut yb = poisoned(dev, x.len(), "y")?;
    ops::gelu_forward(&xb, &mut yb, x.len())?;
    let got = yb.to_host()?;
    let err = got
        .iter()
        .zip(&expect)
        .map(|(&g, &e)| relative_error(&[g], &[e]))
        .fold(0.0, worst);
    Ok(kernel_row(
        "gelu_forward",
        dev,
        "x in [-9, -3], per element".into(),
        err,
    ))
}

fn gelu_gradient(rng: &mut Rng) -> Vec<Row> {
    let (x, w) = (rng.normals(33, 2.0), rng.normals(33, 1.0));
    let g = r::gelu_backward(&x, &w);
    let e = finite_difference(|x| weighted_sum(&r::gelu_forward(x), &w), &x, &g, 1e-3).worst_error;
    vec![grad_row("gelu", "n=33".into(), e)]
}

// ------------------------------------------------------------------ optimizer and conversions

fn adamw_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    let hp = AdamW {
        lr: 2e-3,
        weight_decay: 0.05,
        ..AdamW::default()
    };
    for n in [1usize, 257, 100_003] {
        let mut p = rng.normals(n, 1.0);
        let mut m = vec![0.0; n];
        let mut v = vec![0.0; n];
        let (mut pb, mut mb, mut vb) = (
            up(dev, &p, "param")?,
            dev.zeros(n, "m")?,
            dev.zeros(n, "v")?,
        );
        // Three steps, so the moments and bias corrections are exercised past step 1.
        for step in 1..=3u64 {
            let g = rng.normals(n, 1.0);
            r::adamw_step(&hp, step, &mut p, &g, &mut m, &mut v);
            // The kernel scales the gradient itself: give it g / 2 and a scale of 2.
            let half: Vec<f64> = g.iter().map(|v| v / 2.0).collect();
            ops::adamw_step(
                &hp,
                step,
                &mut pb,
                &up(dev, &half, "grad")?,
                &mut mb,
                &mut vb,
                2.0,
            )?;
        }
        let err = relative_error(&pb.to_host()?, &p);
        let err = worst(err, relative_error(&mb.to_host()?, &m));
        let err = worst(err, relative_error(&vb.to_host()?, &v));
        rows.push(kernel_row("adamw_step", dev, format!("n={n} steps=3"), err));
    }
    Ok(rows)
}

/// f32 -> f16 -> f32 must match the `half` crate's round-to-nearest-even bit for bit, over
/// normals, subnormals, ties, overflow, infinities and NaN.
fn convert_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut x: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        65504.0,
        65520.0,
        1e6,
        -1e6,
        f32::INFINITY,
        f32::NEG_INFINITY,
        6e-8,
        3e-8,
        1e-4,
    ];
    x.push(f32::from_bits(0x3f80_1000)); // exactly halfway between two halves: ties to even
    x.push(f32::from_bits(0x3f80_3000));
    x.extend((0..1000).map(|_| (rng.normal() * 10f64.powf(rng.uniform() * 12.0 - 8.0)) as f32));
    let xb = dev.upload(&x, "x")?;
    let mut hb = dev.alloc::<half::f16>(x.len(), "half")?;
    ops::convert_f32_to_f16(&xb, &mut hb)?;
    let mut back = poisoned(dev, x.len(), "back")?;
    ops::convert_f16_to_f32(&hb, &mut back)?;
    let halves = hb.to_host()?;
    let back = back.to_host()?;
    let mismatches = x
        .iter()
        .zip(&halves)
        .zip(&back)
        .filter(|((&v, h), &b)| {
            h.to_bits() != half::f16::from_f32(v).to_bits()
                || b.to_bits() != half::f16::from_f32(v).to_f32().to_bits()
        })
        .count();
    Ok(vec![Row {
        op: "convert_f32_f16".into(),
        check: "kernel",
        device: dev.describe(),
        sizes: format!("n={} (bitwise)", x.len()),
        error: mismatches as f64,
        tolerance: 0.0,
    }])
}

// ------------------------------------------------------------------ dropout and tanh

/// Dropout: the kernel's mask equals the reference's bit for bit (forward and backward), and
/// the kept fraction of a million elements is within 0.5% of 1 - p.
fn dropout_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (n, p) in [(1usize, 0.5f32), (257, 0.1), (1_000_003, 0.3)] {
        let seed = rng.next_u64();
        let x = rng.normals(n, 1.0);
        let xb = up(dev, &x, "x")?;
        let mut y = poisoned(dev, n, "y")?;
        ops::dropout(&xb, &mut y, p, seed, false)?;
        let mut dx = poisoned(dev, n, "dx")?;
        ops::dropout(&xb, &mut dx, p, seed, true)?;
        let want = r::dropout(&x, p, seed);
        let mut err = worst(
            relative_error(&y.to_host()?, &want),
            relative_error(&dx.to_host()?, &want),
        );
        let kept = (0..n as u64)
            .filter(|&i| r::dropout_keep(seed, i, p))
            .count() as f64
            / n as f64;
        if n > 1000 && ((kept - (1.0 - p as f64)) / (1.0 - p as f64)).abs() > 0.005 {
            err = f64::INFINITY;
        }
        rows.push(kernel_row("dropout", dev, format!("n={n} p={p}"), err));
    }
    Ok(rows)
}

fn tanh_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for n in ELEMENT_COUNTS {
        let x = rng.normals(n, 2.0);
        let dy = rng.normals(n, 1.0);
        let xb = up(dev, &x, "x")?;
        let mut y = poisoned(dev, n, "y")?;
        ops::tanh_forward(&xb, &mut y, n)?;
        let want: Vec<f64> = x.iter().map(|v| v.tanh()).collect();
        let mut err = relative_error(&y.to_host()?, &want);
        // Backward reads the saved output, which is fp32: 1 - y^2 of that rounded y is what a
        // correct kernel computes (near |y| = 1 the rounding dominates, in PyTorch too).
        let y32: Vec<f64> = want.iter().map(|&v| v as f32 as f64).collect();
        let yr = up(dev, &y32, "y")?;
        let mut dx = poisoned(dev, n, "dx")?;
        ops::tanh_backward(&yr, &up(dev, &dy, "dy")?, &mut dx, n)?;
        let want_dx: Vec<f64> = y32
            .iter()
            .zip(&dy)
            .map(|(y, d)| d * (1.0 - y * y))
            .collect();
        err = worst(err, relative_error(&dx.to_host()?, &want_dx));
        rows.push(kernel_row("tanh", dev, format!("n={n}"), err));
    }
    Ok(rows)
}

fn tanh_gradient(rng: &mut Rng) -> Vec<Row> {
    let (x, w) = (rng.normals(17, 1.5), rng.normals(17, 1.0));
    let f = |x: &[f64]| weighted_sum(&x.iter().map(|v| v.tanh()).collect::<Vec<_>>(), &w);
    let g: Vec<f64> = x
        .iter()
        .zip(&w)
        .map(|(v, d)| d * (1.0 - v.tanh() * v.tanh()))
        .collect();
    vec![grad_row(
        "tanh",
        "n=17".into(),
        finite_difference(f, &x, &g, 1e-3).worst_error,
    )]
}
