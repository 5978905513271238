//! Row-wise ops against the reference: softmax, reductions (sum, mean, max over a row) and
//! column sums.

use super::{
    finite_difference, grad_row, kernel_row, poisoned, relative_error, relative_error_to_terms, up,
    weighted_sum, Row,
};
use crate::device::Device;
use crate::error::Result;
use crate::ops::{self, Reduce};
use crate::reference as r;
use crate::rng::Rng;

const ROW_SHAPES: [(usize, usize); 6] = [(1, 1), (3, 7), (5, 31), (4, 33), (9, 100), (2, 513)];

pub fn softmax_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
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

pub fn softmax_gradient(rng: &mut Rng) -> Vec<Row> {
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

pub fn reduce_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
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

pub fn reduce_gradient(rng: &mut Rng) -> Vec<Row> {
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

pub fn sum_columns_kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
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

pub fn sum_columns_gradient(rng: &mut Rng) -> Vec<Row> {
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
