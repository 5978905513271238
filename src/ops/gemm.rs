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

/// The GEMM kernel's tile sizes, one kernel instance each (`kernels/gemm.cu`): rows of C x
/// columns of C per 256-thread block.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmTile {
    /// 8 x 8 per thread: the most arithmetic per shared-memory load, for large products.
    T128x128,
    /// 8 x 4 per thread.
    T128x64,
    /// 4 x 4 per thread: the most blocks, for small products.
    T64x64,
}

impl GemmTile {
    /// Largest first: the order in which `for_shape` considers them.
    pub const ALL: [GemmTile; 3] = [GemmTile::T128x128, GemmTile::T128x64, GemmTile::T64x64];

    pub fn kernel(self) -> &'static str {
        match self {
            GemmTile::T128x128 => "gemm_f32_128x128",
            GemmTile::T128x64 => "gemm_f32_128x64",
            GemmTile::T64x64 => "gemm_f32_64x64",
        }
    }

    /// (rows, columns) of C per block.
    pub fn dims(self) -> (usize, usize) {
        match self {
            GemmTile::T128x128 => (128, 128),
            GemmTile::T128x64 => (128, 64),
            GemmTile::T64x64 => (64, 64),
        }
    }

    pub fn name(self) -> String {
        let (bm, bn) = self.dims();
        format!("{bm}x{bn}")
    }

    /// Blocks in the grid of `g` with this tile.
    pub fn blocks(self, g: &Gemm) -> usize {
        let (bm, bn) = self.dims();
        g.m.div_ceil(bm) * g.n.div_ceil(bn) * g.batch
    }

    /// Arithmetic rate of an SM busy with this tile, relative to 128 x 128: fewer FMAs per
    /// shared load and per global byte for smaller tiles. Calibrated on the GTX 1050 Ti timing
    /// model (`benches/pascal-model/`, 512^3: 324,251 / 351,350 / 383,596 cycles for the three,
    /// with 3, 6 and 11 blocks on the busiest SM): per unit of work, 128 x 64 ran at 0.92 and
    /// 64 x 64 at 0.77 of 128 x 128's rate. To be re-measured on GPUs (`emrclass bench gemm
    /// --tiles all`).
    pub fn relative_rate(self) -> f64 {
        match self {
            GemmTile::T128x128 => 1.0,
            GemmTile::T128x64 => 0.92,
            GemmTile::T64x64 => 0.77,
        }
    }

    /// The estimated time of `g` with this tile, in units of one 128 x 128 tile's work: blocks
    /// spread evenly over the SMs, the busiest SM's share at this tile's rate. Edge padding
    /// counts (a padded block costs what a full one does), and so does a last, partial round.
    pub fn estimated_cost(self, g: &Gemm, multiprocessors: usize) -> f64 {
        let (bm, bn) = self.dims();
        let per_sm = self.blocks(g).div_ceil(multiprocessors.max(1));
        per_sm as f64 * (bm * bn) as f64 / (128.0 * 128.0) / self.relative_rate()
    }

    /// The tile with the least estimated cost on a GPU with `multiprocessors` SMs (the larger
    /// one on a tie). Bigger tiles do more FMAs per byte loaded; smaller ones keep every SM of
    /// a large GPU busy on products like BERT's 2048 x 768.
    pub fn for_shape(g: &Gemm, multiprocessors: usize) -> GemmTile {
        GemmTile::ALL
            .into_iter()
            .fold(None::<(GemmTile, f64)>, |best, t| {
                let cost = t.estimated_cost(g, multiprocessors);
                match best {
                    Some((_, c)) if c <= cost => best,
                    _ => Some((t, cost)),
                }
            })
            .map_or(GemmTile::T64x64, |(t, _)| t)
    }
}

/// The activation a fused epilogue writes beside C.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// erf form, as HF BERT.
    Gelu,
    Relu,
}

/// What the GEMM's epilogue does to each element after alpha * op(A) op(B) + beta * C + bias,
/// in this order (kernels/gemm.cu): inverted dropout with `ops::dropout`'s mask over a dense
/// [batch, m, n] C, + `residual` (laid out like C: same offset, ldc and batch stride), and, when
/// `activation` is given, that activation of the result written to its buffer (laid out like C).
/// Each saves a pass over C and a launch.
#[derive(Default)]
pub struct Epilogue<'a> {
    /// (rate in [0, 1), seed).
    pub dropout: Option<(f32, u64)>,
    pub residual: Option<&'a Buffer<f32>>,
    pub activation: Option<(Activation, &'a mut Buffer<f32>)>,
}

/// C = alpha * op(A) * op(B) + beta * C (+ bias), with the tile `GemmTile::for_shape` picks for
/// this device.
pub fn gemm(
    g: &Gemm,
    a: &Buffer<f32>,
    b: &Buffer<f32>,
    c: &mut Buffer<f32>,
    bias: Option<&Buffer<f32>>,
) -> Result<()> {
    gemm_fused(g, a, b, c, bias, Epilogue::default())
}

/// `gemm` followed by a fused epilogue.
pub fn gemm_fused(
    g: &Gemm,
    a: &Buffer<f32>,
    b: &Buffer<f32>,
    c: &mut Buffer<f32>,
    bias: Option<&Buffer<f32>>,
    epilogue: Epilogue,
) -> Result<()> {
    let tile = GemmTile::for_shape(g, a.device().multiprocessors());
    gemm_with_tile(g, tile, a, b, c, bias, epilogue)
}

/// `gemm_fused` with a chosen tile: for the tests (every tile on every shape) and benchmarks.
pub fn gemm_with_tile(
    g: &Gemm,
    tile: GemmTile,
    a: &Buffer<f32>,
    b: &Buffer<f32>,
    c: &mut Buffer<f32>,
    bias: Option<&Buffer<f32>>,
    epilogue: Epilogue,
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
    let c_span = g.offset_c + span(g.m, g.n, g.ldc, g.batch, g.stride_c);
    if let Some(r) = epilogue.residual {
        need(OP, "residual", r, c_span)?;
    }
    if let Some((_, out)) = &epilogue.activation {
        need(OP, "activation output", out, c_span)?;
    }
    let (rate, seed) = epilogue.dropout.unwrap_or((0.0, 0));
    if !(0.0..1.0).contains(&rate) {
        return Err(crate::Error::Invalid(format!(
            "{OP}: dropout rate {rate} is not in [0, 1)"
        )));
    }
    if g.m == 0 || g.n == 0 || g.batch == 0 {
        return Ok(());
    }
    let (bm, bn) = tile.dims();
    let cfg = LaunchConfig {
        grid: (
            g.n.div_ceil(bn) as u32,
            g.m.div_ceil(bm) as u32,
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
        epilogue
            .residual
            .map_or(Arg::Null, |r| r.arg_at(g.offset_c)),
        epilogue
            .activation
            .as_ref()
            .map_or(Arg::Null, |(_, out)| out.arg_at(g.offset_c)),
        Arg::I32(match epilogue.activation {
            Some((Activation::Gelu, _)) => 1,
            Some((Activation::Relu, _)) => 2,
            None => 0,
        }),
        Arg::F32(rate),
        Arg::U64(seed),
    ];
    a.device().launch(tile.kernel(), cfg, &args)
}

#[cfg(test)]
mod tests {
    use super::{Gemm, GemmTile};

    #[test]
    fn tiles_by_shape_and_card() {
        let nn = |m, n, k| Gemm::new(m, n, k, false, false);
        // A GTX 1050 Ti (6 SMs) fills up on every BERT-base product: the largest tile.
        for (m, n, k) in [
            (2048, 2304, 768),
            (2048, 768, 768),
            (2048, 3072, 768),
            (8192, 768, 3072),
        ] {
            assert_eq!(GemmTile::for_shape(&nn(m, n, k), 6), GemmTile::T128x128);
        }
        // On an H200 (132 SMs) the large tile leaves SMs idle: 2048 x 2304 is 288 large tiles
        // (3 rounds of 132), 2048 x 768 only 96.
        assert_eq!(
            GemmTile::for_shape(&nn(2048, 2304, 768), 132),
            GemmTile::T128x64
        );
        assert_eq!(
            GemmTile::for_shape(&nn(2048, 768, 3072), 132),
            GemmTile::T64x64
        );
        assert_eq!(
            GemmTile::for_shape(&nn(4096, 768, 768), 132),
            GemmTile::T128x64
        );
        // 512^3 on 6 SMs: the order the timing model measured (128 x 128 fastest).
        let cube = nn(512, 512, 512);
        let costs = GemmTile::ALL.map(|t| t.estimated_cost(&cube, 6));
        assert!(costs[0] < costs[1] && costs[1] < costs[2], "{costs:?}");
        // Mostly padding (a 12 x 12 attention block): never the large tile.
        let scores = Gemm::new(12, 12, 64, false, true).batched(192);
        assert_eq!(GemmTile::for_shape(&scores, 6), GemmTile::T64x64);
        // 130 x 130 would waste half of four 128 x 128 tiles.
        assert_eq!(
            GemmTile::for_shape(&nn(130, 130, 64).batched(8), 6),
            GemmTile::T64x64
        );
    }
}
