use super::{need, to_i32};
use crate::device::{Arg, Buffer, LaunchConfig};
use crate::error::Result;

/// Shapes of C = alpha * op(A) * op(B) + beta * C (+ bias), row-major, strided-batched.
/// op(A) is m x k: A is stored m x k (lda >= k), or k x m when `trans_a` (lda >= m).
/// op(B) is k x n: B is stored k x n (ldb >= n), or n x k when `trans_b` (ldb >= k).
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub batch: usize,
    pub stride_a: usize,
    pub stride_b: usize,
    pub stride_c: usize,
    pub alpha: f32,
    pub beta: f32,
    /// Where op(A), op(B) and C start in their buffers (elements): views without copies.
    pub offset_a: usize,
    pub offset_b: usize,
    pub offset_c: usize,
    pub offset_bias: usize,
}

impl Gemm {
    /// A single, densely packed product with alpha = 1, beta = 0.
    pub fn new(m: usize, n: usize, k: usize, trans_a: bool, trans_b: bool) -> Gemm {
        Gemm {
            m,
            n,
            k,
            trans_a,
            trans_b,
            lda: if trans_a { m } else { k },
            ldb: if trans_b { k } else { n },
            ldc: n,
            batch: 1,
            stride_a: m * k,
            stride_b: k * n,
            stride_c: m * n,
            alpha: 1.0,
            beta: 0.0,
            offset_a: 0,
            offset_b: 0,
            offset_c: 0,
            offset_bias: 0,
        }
    }

    /// The same shapes repeated `batch` times over densely packed operands.
    pub fn batched(self, batch: usize) -> Gemm {
        Gemm { batch, ..self }
    }

    pub fn flops(&self) -> f64 {
        2.0 * self.m as f64 * self.n as f64 * self.k as f64 * self.batch as f64
    }

    /// Stored (rows, cols) of A and B.
    pub fn a_dims(&self) -> (usize, usize) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }
    pub fn b_dims(&self) -> (usize, usize) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }
}

/// Elements an operand of `rows` x `cols` with leading dimension `ld` spans, over a batch.
fn span(rows: usize, cols: usize, ld: usize, batch: usize, stride: usize) -> usize {
    if rows == 0 || cols == 0 || batch == 0 {
        return 0;
    }
    (batch - 1) * stride + (rows - 1) * ld + cols
}

pub fn gemm(
    g: &Gemm,
    a: &Buffer<f32>,
    b: &Buffer<f32>,
    c: &mut Buffer<f32>,
    bias: Option<&Buffer<f32>>,
) -> Result<()> {
    const OP: &str = "gemm";
    let (ar, ac) = g.a_dims();
    let (br, bc) = g.b_dims();
    for (what, ld, cols) in [("lda", g.lda, ac), ("ldb", g.ldb, bc), ("ldc", g.ldc, g.n)] {
        if ld < cols.max(1) {
            return Err(crate::Error::Invalid(format!(
                "{OP}: {what} = {ld} is less than the {cols} columns it strides over"
            )));
        }
    }
    need(
        OP,
        "A",
        a,
        g.offset_a + span(ar, ac, g.lda, g.batch, g.stride_a),
    )?;
    need(
        OP,
        "B",
        b,
        g.offset_b + span(br, bc, g.ldb, g.batch, g.stride_b),
    )?;
    need(
        OP,
        "C",
        c,
        g.offset_c + span(g.m, g.n, g.ldc, g.batch, g.stride_c),
    )?;
    if let Some(bias) = bias {
        need(OP, "bias", bias, g.offset_bias + g.n)?;
    }
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let cfg = LaunchConfig {
        grid: (
            g.n.div_ceil(64) as u32,
            g.m.div_ceil(64) as u32,
            to_i32(OP, "batch", g.batch)? as u32,
        ),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let i = |what, v| to_i32(OP, what, v).map(Arg::I32);
    let args = [
        a.arg_at(g.offset_a),
        b.arg_at(g.offset_b),
        c.arg_at(g.offset_c),
        bias.map_or(Arg::Null, |b| b.arg_at(g.offset_bias)),
        i("m", g.m)?,
        i("n", g.n)?,
        i("k", g.k)?,
        i("lda", g.lda)?,
        i("ldb", g.ldb)?,
        i("ldc", g.ldc)?,
        Arg::I64(g.stride_a as i64),
        Arg::I64(g.stride_b as i64),
        Arg::I64(g.stride_c as i64),
        Arg::I32(g.trans_a as i32),
        Arg::I32(g.trans_b as i32),
        Arg::F32(g.alpha),
        Arg::F32(g.beta),
    ];
    a.device().launch("gemm_f32", cfg, &args)
}
