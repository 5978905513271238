use super::shapes::{need, to_i32};
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
}

/// How a product runs: a tile, and the number of slices of k it is split into (split-K: 1 is
/// none). Split, each slice is its own set of blocks writing a partial product into a
/// workspace of splits x batch x m x n floats (allocated for the call, freed after it), and a
/// second kernel adds the slices in a fixed order and applies the epilogue: deterministic,
/// and it fills a large GPU when m x n alone gives too few blocks (BERT's weight gradients,
/// 768 x 768 summed over thousands of rows, are 36 large tiles for 132 SMs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmPlan {
    pub tile: GemmTile,
    pub splits: usize,
}

/// A split's k range is a multiple of this (the kernel's float4 loads along k stay aligned,
/// and every tile's slice depth divides it).
const SPLIT_K_ALIGN: usize = 16;
/// The least k a split covers: fewer k steps than this leave the block mostly prologue.
const SPLIT_K_MIN_CHUNK: usize = 128;
const SPLIT_K_MAX: usize = 16;
/// Grids are at most this deep (gridDim.z), and split-K's blocks are batch x splits deep.
const MAX_GRID_Z: usize = 65535;
/// The cost model's exchange rate between memory and arithmetic: FMAs a card does in the time
/// it moves one byte of DRAM (H200: 33.5 TFMA/s over 4.8 TB/s is 7; GTX 1050 Ti: 1.05 over
/// 0.112 is 9.4).
const FMAS_PER_BYTE: f64 = 8.0;
/// One more launch, in FMAs of one SM (about 2 microseconds at 250 GFMA/s an SM).
const LAUNCH_FMAS: f64 = 5.0e5;

impl GemmPlan {
    pub fn unsplit(tile: GemmTile) -> GemmPlan {
        GemmPlan { tile, splits: 1 }
    }

    /// The k each split covers (all of k when unsplit).
    pub fn k_chunk(self, g: &Gemm) -> usize {
        if self.splits <= 1 {
            return g.k;
        }
        g.k.div_ceil(self.splits).next_multiple_of(SPLIT_K_ALIGN)
    }

    /// The splits that actually run: rounding the chunk up can leave the last asked-for ones
    /// empty.
    pub fn effective_splits(self, g: &Gemm) -> usize {
        if self.splits <= 1 || g.k == 0 {
            1
        } else {
            g.k.div_ceil(self.k_chunk(g))
        }
    }

    /// The plan as it runs on `g`: a split that the chunk rounding shortens is the shorter one
    /// (what tables name and compare).
    pub fn as_run(self, g: &Gemm) -> GemmPlan {
        GemmPlan {
            splits: self.effective_splits(g),
            ..self
        }
    }

    /// Floats of workspace a split product needs (0 unsplit).
    pub fn workspace(self, g: &Gemm) -> usize {
        match self.effective_splits(g) {
            1 => 0,
            s => s * g.batch * g.m * g.n,
        }
    }

    pub fn name(self) -> String {
        match self.splits {
            1 => self.tile.name(),
            s => format!("{} split {s}", self.tile.name()),
        }
    }

    /// The estimated time of `g`, in FMAs of the busiest of `multiprocessors` SMs at 128 x
    /// 128's rate: blocks spread evenly, each doing its tile times its k range at the tile's
    /// rate (a padded block costs what a full one does, and so does a last, partial round);
    /// split, plus the workspace's traffic (each slice written once and read once; C is
    /// written, and read with beta, either way) spread over the card, and one more launch.
    pub fn estimated_cost(self, g: &Gemm, multiprocessors: usize) -> f64 {
        let sms = multiprocessors.max(1);
        let (bm, bn) = self.tile.dims();
        let splits = self.effective_splits(g);
        let per_sm = (self.tile.blocks(g) * splits).div_ceil(sms);
        let arithmetic =
            per_sm as f64 * (bm * bn * self.k_chunk(g).max(1)) as f64 / self.tile.relative_rate();
        if splits == 1 {
            return arithmetic;
        }
        let bytes = (2 * splits) as f64 * (g.batch * g.m * g.n * 4) as f64;
        arithmetic + bytes * FMAS_PER_BYTE / sms as f64 + LAUNCH_FMAS
    }

    /// The plan with the least estimated cost on a GPU with `multiprocessors` SMs (on a tie,
    /// the larger tile, then fewer splits). Bigger tiles do more FMAs per byte loaded; smaller
    /// ones and split-K keep every SM of a large GPU busy. A tile is split only while its
    /// grid is under two blocks per SM: past that, splitting would only even out the last
    /// round, which the model's whole-round arithmetic overrates.
    pub fn for_shape(g: &Gemm, multiprocessors: usize) -> GemmPlan {
        let most = (g.k / SPLIT_K_MIN_CHUNK)
            .min(MAX_GRID_Z / g.batch.max(1))
            .clamp(1, SPLIT_K_MAX);
        let mut best = (GemmPlan::unsplit(GemmTile::T64x64), f64::INFINITY);
        for tile in GemmTile::ALL {
            let few_blocks = tile.blocks(g) < 2 * multiprocessors.max(1);
            let max_splits = if few_blocks { most } else { 1 };
            for splits in 1..=max_splits {
                let plan = GemmPlan { tile, splits };
                if plan.effective_splits(g) != splits {
                    continue; // the same as a smaller split
                }
                let cost = plan.estimated_cost(g, multiprocessors);
                if cost < best.1 {
                    best = (plan, cost);
                }
            }
        }
        best.0
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

/// C = alpha * op(A) * op(B) + beta * C (+ bias), with the plan `GemmPlan::for_shape` picks for
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
    let plan = GemmPlan::for_shape(g, a.device().multiprocessors());
    gemm_with_plan(g, plan, a, b, c, bias, epilogue)
}

/// `gemm_fused` with a chosen plan: for the tests (every tile and several splits on every
/// shape) and benchmarks.
pub fn gemm_with_plan(
    g: &Gemm,
    plan: GemmPlan,
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
    let i = |what, v| to_i32(OP, what, v).map(Arg::I32);
    let fused = [
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
    let plain = [
        Arg::Null,
        Arg::Null,
        Arg::I32(0),
        Arg::F32(0.0),
        Arg::U64(0),
    ];
    let bias = bias.map_or(Arg::Null, |b| b.arg_at(g.offset_bias));
    let splits = plan.effective_splits(g);
    let (bm, bn) = plan.tile.dims();
    let cfg = LaunchConfig {
        grid: (
            g.n.div_ceil(bn) as u32,
            g.m.div_ceil(bm) as u32,
            to_i32(OP, "batch x splits", g.batch * splits)? as u32,
        ),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    // The tiled kernel's arguments, writing into `out` (ldc, batch stride) with `tail`'s
    // epilogue, alpha and beta.
    let tiled =
        |out: Arg, bias: Arg, (ldc, stride_c): (usize, usize), alpha, beta, tail: [Arg; 5]| {
            let mut args = vec![
                a.arg_at(g.offset_a),
                b.arg_at(g.offset_b),
                out,
                bias,
                i("m", g.m)?,
                i("n", g.n)?,
                i("k", g.k)?,
                i("lda", g.lda)?,
                i("ldb", g.ldb)?,
                i("ldc", ldc)?,
                Arg::I64(g.stride_a as i64),
                Arg::I64(g.stride_b as i64),
                Arg::I64(stride_c as i64),
                Arg::I32(g.trans_a as i32),
                Arg::I32(g.trans_b as i32),
                Arg::F32(alpha),
                Arg::F32(beta),
            ];
            args.extend(tail);
            args.extend([i("splits", splits)?, i("k chunk", plan.k_chunk(g))?]);
            Ok::<_, crate::Error>(args)
        };
    let dev = a.device();
    let c_at = c.arg_at(g.offset_c);
    if splits == 1 {
        let args = tiled(c_at, bias, (g.ldc, g.stride_c), g.alpha, g.beta, fused)?;
        return dev.launch(plan.tile.kernel(), cfg, &args);
    }
    // Split-K: the partial products as a dense [batch * splits, m, n] C with a plain epilogue,
    // then their sum with the real one.
    let partial = dev.alloc::<f32>(plan.workspace(g), "split-K partial products")?;
    let dense = (g.n, g.m * g.n);
    let args = tiled(partial.arg_at(0), Arg::Null, dense, 1.0, 0.0, plain)?;
    dev.launch(plan.tile.kernel(), cfg, &args)?;
    let groups = g.batch * g.m * g.n.div_ceil(4);
    let sum_cfg = LaunchConfig {
        grid: (groups.div_ceil(256).clamp(1, 65535) as u32, 1, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    let mut args = vec![
        partial.arg_at(0),
        i("splits", splits)?,
        c_at,
        bias,
        i("m", g.m)?,
        i("n", g.n)?,
        i("ldc", g.ldc)?,
        i("batch", g.batch)?,
        Arg::I64(g.stride_c as i64),
        Arg::F32(g.alpha),
        Arg::F32(g.beta),
    ];
    args.extend(fused);
    dev.launch("gemm_split_sum", sum_cfg, &args)
}

#[cfg(test)]
mod tests {
    use super::{Gemm, GemmPlan, GemmTile};

    #[test]
    fn plans_by_shape_and_card() {
        let nn = |m, n, k| Gemm::new(m, n, k, false, false);
        // A training step's products at 16 x 128 and 16 x 512 tokens: forward (NT), input
        // gradient (NN), weight gradient (TN, summed over the tokens).
        let step = |t| {
            [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
                .into_iter()
                .flat_map(move |(i, o)| {
                    [
                        Gemm::new(t, o, i, false, true),
                        Gemm::new(t, i, o, false, false),
                        Gemm::new(o, i, t, true, false),
                    ]
                })
        };
        // A GTX 1050 Ti (6 SMs) fills up on every BERT-base product: the largest tile, unsplit
        // (splitting k only adds the workspace's traffic).
        for g in step(2048).chain(step(8192)) {
            assert_eq!(
                GemmPlan::for_shape(&g, 6),
                GemmPlan::unsplit(GemmTile::T128x128),
                "{g:?}"
            );
        }
        // On an H200 (132 SMs) the large tile leaves SMs idle: 2048 x 2304 is 288 large tiles
        // (3 rounds of 132), 2048 x 768 only 96.
        assert_eq!(
            GemmPlan::for_shape(&nn(2048, 2304, 768), 132),
            GemmPlan::unsplit(GemmTile::T128x64)
        );
        assert_eq!(
            GemmPlan::for_shape(&nn(4096, 768, 768), 132),
            GemmPlan::unsplit(GemmTile::T128x64)
        );
        // A weight gradient, 768 x 768 summed over 2048 rows: 36 large tiles, 72 of 128 x 64
        // (the best unsplit), 144 small ones (two rounds, the second nearly empty). Split along
        // k, 128 x 128 tiles fill the card (7 slices of 304: 252 blocks, two nearly full
        // rounds) at 0.7 of the best unsplit cost after the workspace's traffic and the second
        // launch.
        let dw = Gemm::new(768, 768, 2048, true, false);
        let plan = GemmPlan::for_shape(&dw, 132);
        assert_eq!(
            plan,
            GemmPlan {
                tile: GemmTile::T128x128,
                splits: 7
            }
        );
        assert_eq!(plan.k_chunk(&dw), 304);
        let best_unsplit = GemmTile::ALL
            .map(|t| GemmPlan::unsplit(t).estimated_cost(&dw, 132))
            .into_iter()
            .fold(f64::INFINITY, f64::min);
        assert!(plan.estimated_cost(&dw, 132) < 0.75 * best_unsplit);
        assert_eq!(plan.workspace(&dw), plan.splits * 768 * 768);
        // 512^3 on 6 SMs: the order the timing model measured (128 x 128 fastest).
        let cube = nn(512, 512, 512);
        let costs = GemmTile::ALL.map(|t| GemmPlan::unsplit(t).estimated_cost(&cube, 6));
        assert!(costs[0] < costs[1] && costs[1] < costs[2], "{costs:?}");
        // Mostly padding (a 12 x 12 attention block): never the large tile.
        let scores = Gemm::new(12, 12, 64, false, true).batched(192);
        assert_eq!(
            GemmPlan::for_shape(&scores, 6),
            GemmPlan::unsplit(GemmTile::T64x64)
        );
        // 130 x 130 would waste half of four 128 x 128 tiles.
        assert_eq!(
            GemmPlan::for_shape(&nn(130, 130, 64).batched(8), 6),
            GemmPlan::unsplit(GemmTile::T64x64)
        );
        // Short sums are never split, however idle the card.
        assert_eq!(GemmPlan::for_shape(&nn(64, 64, 255), 132).splits, 1);
        // The FFN's down product (and the up product's input gradient, the same shape): 96
        // large tiles for 132 SMs, split 4 ways (384 blocks, a 24 MiB workspace).
        let down = Gemm::new(2048, 768, 3072, false, true);
        assert_eq!(
            GemmPlan::for_shape(&down, 132),
            GemmPlan {
                tile: GemmTile::T128x128,
                splits: 4
            }
        );
        // A grid already many rounds deep is not split (nor could 40,000 x 16 blocks launch:
        // a grid is at most 65,535 deep).
        let many = Gemm::new(1, 1, 4096, false, false).batched(40000);
        assert_eq!(GemmPlan::for_shape(&many, 132).splits, 1);
        assert_eq!(GemmPlan::for_shape(&many, 6).splits, 1);
    }

    #[test]
    fn split_chunks_cover_k_in_aligned_slices() {
        for k in [17, 100, 255, 256, 257, 1000, 8192] {
            for splits in 1..=16 {
                let g = Gemm::new(8, 8, k, true, false);
                let p = GemmPlan {
                    tile: GemmTile::T64x64,
                    splits,
                };
                let (chunk, s) = (p.k_chunk(&g), p.effective_splits(&g));
                assert!(s <= splits && s >= 1);
                if s > 1 {
                    assert_eq!(chunk % 16, 0);
                    // Every slice holds some k; together they hold all of it.
                    assert!(
                        (s - 1) * chunk < k && s * chunk >= k,
                        "k {k} splits {splits}"
                    );
                    assert_eq!(p.workspace(&g), s * 64);
                } else {
                    assert_eq!(p.workspace(&g), 0);
                }
            }
        }
    }
}
