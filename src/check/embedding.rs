//! Registry checks of the token embedding: gather and deterministic scatter.

use super::{
    finite_difference, relative_error, to_f32, weighted_sum, worst, Row, GRADIENT_TOLERANCE,
    KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::embedding::Embedding;
use crate::reference as r;
use crate::rng::Rng;

/// (vocab, dim, tokens): repeated ids, ids never used, a single token.
const CASES: [(usize, usize, usize); 4] = [(1, 1, 1), (7, 3, 20), (50, 33, 9), (300, 5, 257)];

fn ids(rng: &mut Rng, vocab: usize, n: usize) -> Vec<i32> {
    (0..n)
        .map(|_| (rng.next_u64() % vocab as u64) as i32)
        .collect()
}

pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    CASES[..3]
        .iter()
        .map(|&(v, d, n)| {
            let table = rng.normals(v * d, 1.0);
            let id = ids(rng, v, n);
            let w = rng.normals(n * d, 1.0);
            let g = r::embedding_backward(&id, &w, v, d);
            let chk = finite_difference(
                |t| weighted_sum(&r::embedding_forward(&id, t, d), &w),
                &table,
                &g,
                1e-3,
            );
            Row {
                op: "embedding".into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("vocab={v} dim={d} tokens={n}"),
                error: chk.worst_error,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (v, d, n) in CASES {
        let table = rng.normals(v * d, 1.0);
        let id = ids(rng, v, n);
        let dout = rng.normals(n * d, 1.0);
        let mut layer = Embedding::from_host(dev, v, d, &to_f32(&table))?;
        let out = layer.forward(&id)?;
        let mut err = relative_error(&out.to_host()?, &r::embedding_forward(&id, &table, d));
        layer.backward(&dev.upload(&to_f32(&dout), "dout")?)?;
        err = worst(
            err,
            relative_error(
                &layer.table_grad.to_host()?,
                &r::embedding_backward(&id, &dout, v, d),
            ),
        );
        rows.push(Row {
            op: "embedding".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("vocab={v} dim={d} tokens={n}"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows)
}
