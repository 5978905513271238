//! `emrclass bench`: the subcommands, their shapes and where their results go.

use clap::Subcommand;
use emrclass::bench::{self, pretrain_step, record, step};
use emrclass::distributed::{join, Collective, World};
use emrclass::model::heads::HeadKind;
use emrclass::model::loss::LossKind;
use emrclass::model::rnn::Cell;
use emrclass::ops::{Gemm, GemmPlan, GemmTile};
use emrclass::settings::Checks;
use emrclass::{Device, Error, Result};

use super::common::{loss_kinds, GlobalArgs, LossArg, SavedActivations};

/// Time kernels and print GFLOP/s, GB/s and the fraction of the card's roofline.
#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: BenchWhat,
    #[command(flatten)]
    out: BenchOutputs,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    a.what.check(&a.out)?;
    if let BenchWhat::Step(StepArgs { world: Some(n), .. }) = &a.what {
        if a.out.compare_torch && *n > 1 {
            return Err(Error::Invalid(
                "--compare-torch times one GPU's step: leave it out of a data-parallel world"
                    .into(),
            ));
        }
        match World::from_env()? {
            // `--world N` outside a world: this command again, as N ranks.
            None => {
                let status = emrclass::distributed::launch::relaunch_as_world(*n, "--world")?;
                if status != 0 {
                    std::process::exit(status.clamp(1, 255));
                }
                return Ok(true);
            }
            Some(w) if w.size != *n => {
                return Err(Error::Invalid(format!(
                    "bench step --world {n} in a world of {} (WORLD_SIZE): leave --world out under emrclass launch",
                    w.size
                )))
            }
            Some(_) => {}
        }
    }
    let dev = global.open_device(global.seed())?;
    run_bench(&dev, &a.what, &a.out.outputs())
}

/// Where results go besides the table (global to every bench family).
#[derive(clap::Args, Clone)]
pub struct BenchOutputs {
    /// Append every row as one JSON object per line to this file.
    #[arg(long, global = true)]
    json: Option<std::path::PathBuf>,
    /// Also time the same work with PyTorch on the same GPU (python3 with torch; $EMRCLASS_PYTHON
    /// to choose another) and print the speed-up.
    #[arg(long, global = true)]
    compare_torch: bool,
    /// Timed repetitions PyTorch gets per row.
    #[arg(long, global = true, default_value_t = 10)]
    torch_reps: usize,
}

impl BenchOutputs {
    pub fn outputs(&self) -> record::Outputs {
        record::Outputs {
            json: self.json.clone(),
            compare_torch: self.compare_torch,
            reps: self.torch_reps,
        }
    }
}

/// The model and batch of `bench step`.
#[derive(clap::Args, Clone)]
pub struct StepArgs {
    /// Encoder layers (BERT-base: 12).
    #[arg(long, default_value_t = 12)]
    layers: usize,
    /// Hidden size (BERT-base: 768).
    #[arg(long, default_value_t = 768)]
    hidden: usize,
    /// Attention heads (BERT-base: 12).
    #[arg(long, default_value_t = 12)]
    heads: usize,
    /// FFN width (default 4 x hidden).
    #[arg(long)]
    intermediate: Option<usize>,
    /// Vocabulary (bert-base-chinese / MC-BERT: 21128).
    #[arg(long, default_value_t = 21128)]
    vocab: usize,
    /// Records per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Sequence lengths to time.
    #[arg(long, value_delimiter = ',', default_values_t = [128])]
    len: Vec<usize>,
    /// Classes of the head (CHIP-CTC: 44).
    #[arg(long, default_value_t = 44)]
    classes: usize,
    /// The head, as `train --head`.
    #[arg(long, default_value = "paper")]
    head: String,
    /// The loss, as `train --loss`.
    #[arg(long, value_enum, default_value_t = LossArg::Ce)]
    loss: LossArg,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Recompute the lowest K encoder layers in backward. Default: none, or what the memory
    /// plan picks when --memory-budget is given.
    #[arg(long)]
    recompute: Option<usize>,
    /// Keep the recomputed layers' inputs in fp16.
    #[arg(long)]
    fp16_checkpoints: bool,
    /// adamw, adamw8bit or adamw8bit-all, as `train --optimizer`.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// fp32 or fp16, as `train --saved-activations`.
    #[arg(long, value_enum, default_value_t = SavedActivations::Fp32)]
    saved_activations: SavedActivations,
    /// Time `emrclass pretrain`'s step instead: BERT + the masked-LM head on the masked rows
    /// only (tokens/s; with --compare-torch beside transformers' BertForMaskedLM).
    #[arg(long, conflicts_with_all = ["head", "loss", "classes"])]
    pretrain: bool,
    /// With --pretrain: the fraction of each sequence's tokens predicted, as `pretrain
    /// --mask-rate`.
    #[arg(long, default_value_t = 0.15, requires = "pretrain")]
    mask_rate: f64,
    /// Time the step data parallel over N ranks on this machine (as `emrclass launch
    /// --nproc-per-node N -- bench step ...`): every rank steps on the same random batch, and
    /// the row says the time in the gradients' sums. Under `emrclass launch` the step is data
    /// parallel without it.
    #[arg(long)]
    world: Option<usize>,
}

/// The step with the encoder memory the planner picks within `budget` (one pass: a plan that
/// needs micro-batches is refused, as the step times one batch).
fn planned(
    shape: step::StepShape,
    budget: usize,
    multiprocessors: usize,
) -> Result<step::StepShape> {
    let p = emrclass::plan::plan(&shape.plan_request(budget, multiprocessors))?;
    let layers = shape.layers;
    if !p.fits || p.strategy.accumulate > 1 {
        return Err(emrclass::Error::Invalid(format!(
            "bench step: batch {} x {} does not fit {:.1} MiB in one pass (best: {}, {:.1} MiB); see `emrclass plan`",
            shape.batch,
            shape.len,
            budget as f64 / 1048576.0,
            p.strategy.describe(layers, false),
            p.measured.peak as f64 / 1048576.0
        )));
    }
    eprintln!(
        "memory plan: {} (planned peak {:.1} MiB)",
        p.strategy.describe(layers, false),
        p.measured.peak as f64 / 1048576.0
    );
    Ok(step::StepShape {
        memory: p.strategy.memory,
        ..shape
    })
}

impl BenchWhat {
    /// Every flag of the bench family (`emrclass::settings`' rules), before the device opens.
    pub fn check(&self, out: &BenchOutputs) -> Result<()> {
        let mut c = Checks::new();
        if out.compare_torch {
            c.count("--torch-reps", out.torch_reps);
        }
        match self {
            BenchWhat::Copy { mib, reps } => {
                c.count("--mib", *mib);
                c.count("--reps", *reps);
            }
            BenchWhat::Step(a) => {
                for (flag, v) in [
                    ("--layers", a.layers),
                    ("--hidden", a.hidden),
                    ("--heads", a.heads),
                    ("--vocab", a.vocab),
                    ("--batch", a.batch),
                    ("--reps", a.reps),
                ] {
                    c.count(flag, v);
                }
                c.at_least("--classes", a.classes, 2, "a classifier");
                if let Some(n) = a.world {
                    c.count("--world", n);
                }
                if a.pretrain {
                    c.fraction("--mask-rate", a.mask_rate, false, 0.0, 1.0);
                    for &l in &a.len {
                        c.at_least("--len", l, 3, "[CLS], a masked token and [SEP]");
                    }
                }
                if let Some(i) = a.intermediate {
                    c.count("--intermediate", i);
                }
                if a.heads > 0 && a.hidden % a.heads != 0 {
                    c.refuse(
                        "--hidden",
                        a.hidden,
                        &format!("must be a multiple of --heads {}", a.heads),
                    );
                }
                c.require(!a.len.is_empty(), "--len: give at least one length");
                if let Some(head) = c.parse::<HeadKind>("--head", &a.head) {
                    for &l in &a.len {
                        emrclass::settings::sequence_length(&mut c, "--len", l, &[head]);
                    }
                }
            }
            BenchWhat::Attention(s) | BenchWhat::Encoder(s) => {
                for (flag, v) in [
                    ("--batch", s.batch),
                    ("--hidden", s.hidden),
                    ("--heads", s.heads),
                    ("--reps", s.reps),
                ] {
                    c.count(flag, v);
                }
                c.counts("--len", &s.len);
                if s.heads > 0 && s.hidden % s.heads != 0 {
                    c.refuse(
                        "--hidden",
                        s.hidden,
                        &format!("must be a multiple of --heads {}", s.heads),
                    );
                }
            }
            BenchWhat::Gru(s) | BenchWhat::Lstm(s) | BenchWhat::Textcnn(s) => {
                for (flag, v) in [
                    ("--batch", s.batch),
                    ("--len", s.len),
                    ("--input", s.input),
                    ("--hidden", s.hidden),
                    ("--reps", s.reps),
                ] {
                    c.count(flag, v);
                }
            }
            BenchWhat::Loss {
                rows,
                classes,
                reps,
                ..
            } => {
                c.counts("--rows", rows);
                c.counts("--classes", classes);
                for &k in classes {
                    c.at_least("--classes", k, 2, "a classifier");
                }
                c.count("--reps", *reps);
            }
            BenchWhat::Gemm {
                sizes,
                shapes,
                reps,
                layouts,
                tiles,
            } => {
                for &s in sizes {
                    c.count("--sizes", s);
                }
                for s in shapes {
                    if let Err(e) = parse_shape(s) {
                        c.require(false, format!("--shapes {s}: {e}"));
                    }
                }
                c.count("--reps", *reps);
                for l in layouts {
                    if let Err(e) = parse_layout(l) {
                        c.require(false, format!("--layouts: {e}"));
                    }
                }
                if let Err(e) = parse_tiles(tiles) {
                    c.require(false, format!("--tiles: {e}"));
                }
            }
        }
        c.finish()
    }
}

/// "nn", "nt", "tn" or "tt" as (trans_a, trans_b).
fn parse_layout(layout: &str) -> Result<(bool, bool)> {
    match layout.to_ascii_lowercase().as_str() {
        "nn" => Ok((false, false)),
        "nt" => Ok((false, true)),
        "tn" => Ok((true, false)),
        "tt" => Ok((true, true)),
        _ => Err(Error::Invalid(format!(
            "gemm layout `{layout}`: expected nn, nt, tn or tt"
        ))),
    }
}

/// `auto` as None (the launcher's choice), `all` as every tile unsplit and the launcher's
/// choice, else named tiles, `TILE:S` for S slices of k (split-K), e.g. `128x128:4`.
fn parse_tiles(names: &[String]) -> Result<Vec<Option<GemmPlan>>> {
    let mut out = Vec::new();
    for name in names {
        let bad = || {
            Error::Invalid(format!(
                "gemm tile `{name}`: expected auto, all, 128x128, 128x64 or 64x64, each optionally with :SPLITS (1 to 64)"
            ))
        };
        match name.as_str() {
            "auto" => out.push(None),
            "all" => {
                out.extend(GemmTile::ALL.map(|t| Some(GemmPlan::unsplit(t))));
                out.push(None);
            }
            _ => {
                let (tile, splits) = name.split_once(':').unwrap_or((name, "1"));
                let tile = GemmTile::ALL
                    .into_iter()
                    .find(|t| t.name() == tile)
                    .ok_or_else(bad)?;
                let splits = splits
                    .parse()
                    .ok()
                    .filter(|s| (1..=64).contains(s))
                    .ok_or_else(bad)?;
                out.push(Some(GemmPlan { tile, splits }));
            }
        }
    }
    Ok(out)
}

/// The products of one BERT-base layer's linears (QKV, attention output, FFN up, FFN down) at
/// `tokens` rows, in the layouts a training step runs them: forward y = x W^T (NT), input
/// gradient dx = dy W (NN), weight gradient dW = dy^T x (TN, summed over the rows).
fn bert_gemm_products(tokens: usize) -> Vec<Gemm> {
    [(768, 2304), (768, 768), (768, 3072), (3072, 768)]
        .into_iter()
        .flat_map(|(input, output)| {
            [
                Gemm::new(tokens, output, input, false, true),
                Gemm::new(tokens, input, output, false, false),
                Gemm::new(output, input, tokens, true, false),
            ]
        })
        .collect()
}

fn parse_shape(s: &str) -> Result<(usize, usize, usize)> {
    let bad = || {
        emrclass::Error::Invalid(format!(
            "gemm shape `{s}`: expected MxNxK, e.g. 2048x768x3072"
        ))
    };
    let v: Vec<usize> = s
        .split('x')
        .map(|p| p.trim().parse().map_err(|_| bad()))
        .collect::<Result<_>>()?;
    match v[..] {
        [m, n, k] if m > 0 && n > 0 && k > 0 => Ok((m, n, k)),
        _ => Err(bad()),
    }
}

fn run_bench(dev: &Device, what: &BenchWhat, out: &record::Outputs) -> Result<bool> {
    match what {
        BenchWhat::Copy { mib, reps } => {
            let c = bench::copy_bandwidth(dev, mib << 20, *reps)?;
            println!(
                "device-to-device copy of {mib} MiB: {:.3} ms, {:.1} GB/s (read + written){}",
                c.ms,
                c.bytes_per_s / 1e9,
                c.nominal_bytes_per_s.map_or(String::new(), |n| format!(
                    "; data sheet {:.1} GB/s",
                    n / 1e9
                ))
            );
            record::finish(dev, &[c], out)?;
        }
        BenchWhat::Gemm {
            sizes,
            shapes,
            reps,
            layouts,
            tiles,
        } => {
            let layouts = layouts
                .iter()
                .map(|l| parse_layout(l))
                .collect::<Result<Vec<_>>>()?;
            let plans = parse_tiles(tiles)?;
            let mut shapes_asked: Vec<(usize, usize, usize)> =
                sizes.iter().map(|&s| (s, s, s)).collect();
            for s in shapes {
                shapes_asked.push(parse_shape(s)?);
            }
            let mut todo: Vec<Gemm> = shapes_asked
                .iter()
                .flat_map(|&(m, n, k)| {
                    layouts
                        .iter()
                        .map(move |&(ta, tb)| Gemm::new(m, n, k, ta, tb))
                })
                .collect();
            if todo.is_empty() {
                todo = if dev.is_cuda() {
                    let mut v = bert_gemm_products(16 * 128);
                    v.extend(bert_gemm_products(16 * 512));
                    v.extend([1024, 4096].map(|s| Gemm::new(s, s, s, false, false)));
                    v
                } else {
                    [64, 128, 256]
                        .map(|s| Gemm::new(s, s, s, false, false))
                        .into()
                };
            }
            let sms = dev.multiprocessors();
            let (mut rows, mut timed) = (Vec::new(), Vec::new());
            for g in &todo {
                let mut done = Vec::new();
                for &plan in &plans {
                    // `all` adds the launcher's choice, which may be a tile already timed.
                    let plan = plan
                        .unwrap_or_else(|| GemmPlan::for_shape(g, sms))
                        .as_run(g);
                    if !done.contains(&plan) {
                        done.push(plan);
                        let (row, t) = bench::gemm(dev, g, Some(plan), *reps)?;
                        rows.push(row);
                        timed.push(t);
                    }
                }
            }
            bench::print_gemm(&rows);
            // The cost model's check: only a GPU's times say anything about a GPU.
            if dev.is_cuda() {
                let check = bench::gemm_plans::check(&timed, sms);
                for line in bench::gemm_plans::summary(&check, sms) {
                    println!("{line}");
                }
            }
            if !dev.is_cuda() {
                let base: Vec<_> = todo
                    .iter()
                    .map(|g| bench::host_naive_gemm(dev, g.m, g.n, g.k))
                    .collect();
                bench::print_gemm(&base);
            }
            record::finish(dev, &rows, out)?;
        }
        BenchWhat::Loss {
            kind,
            rows,
            classes,
            reps,
        } => {
            let kinds = loss_kinds(*kind)?;
            let mut timings = Vec::new();
            for &k in classes {
                for &n in rows {
                    for &kind in &kinds {
                        timings.push(bench::loss(dev, kind, n, k, *reps)?);
                    }
                }
            }
            bench::print_loss(&timings);
            record::finish(dev, &timings, out)?;
        }
        BenchWhat::Gru(s) | BenchWhat::Lstm(s) | BenchWhat::Textcnn(s) => {
            let row = match what {
                BenchWhat::Gru(_) => {
                    bench::rnn(dev, Cell::Gru, s.batch, s.len, s.input, s.hidden, s.reps)?
                }
                BenchWhat::Lstm(_) => {
                    bench::rnn(dev, Cell::Lstm, s.batch, s.len, s.input, s.hidden, s.reps)?
                }
                _ => bench::textcnn(dev, s.batch, s.len, s.input, s.hidden, s.reps)?,
            };
            bench::print_layers(std::slice::from_ref(&row));
            record::finish(dev, &[row], out)?;
        }
        BenchWhat::Attention(s) => {
            let mut rows = Vec::new();
            for &len in &s.len {
                let (row, saved) =
                    bench::attention(dev, s.batch, len, s.heads, s.hidden / s.heads, s.reps)?;
                println!(
                    "L={len}: probabilities not stored: {:.1} MiB",
                    saved as f64 / (1 << 20) as f64
                );
                rows.push(row);
            }
            bench::print_layers(&rows);
            record::finish(dev, &rows, out)?;
        }
        BenchWhat::Encoder(s) => {
            let mut rows = Vec::new();
            for &len in &s.len {
                rows.push(bench::encoder_layer(
                    dev, s.batch, len, s.hidden, s.heads, s.reps,
                )?);
            }
            bench::print_layers(&rows);
            record::finish(dev, &rows, out)?;
        }
        BenchWhat::Step(a) => {
            let head: HeadKind = a.head.parse()?;
            if head == HeadKind::Bag && !a.pretrain {
                return Err(Error::Invalid(
                    "bench step: --head bag has no encoder; the step benchmark times BERT + a head"
                        .into(),
                ));
            }
            let loss: LossKind = loss_kinds(a.loss)?[0];
            let optimizer = a.optimizer.parse()?;
            // Under `launch` (or `--world`): one rank of a data-parallel world; rank 0 reports.
            let mut world = match World::from_env()? {
                Some(w) if out.compare_torch && w.size > 1 => return Err(Error::Invalid(
                    "--compare-torch times one GPU's step: leave it out of a data-parallel world"
                        .into(),
                )),
                Some(w) => {
                    if w.rank > 0 {
                        emrclass::console::mute_stdout();
                    }
                    Some((w.rank, join::join_run(&w, dev, (a.batch, 1))?))
                }
                None => None,
            };
            let mut rows = Vec::new();
            for &len in &a.len {
                let shape = step::StepShape {
                    layers: a.layers,
                    hidden: a.hidden,
                    heads: a.heads,
                    intermediate: a.intermediate.unwrap_or(4 * a.hidden),
                    vocab: a.vocab,
                    batch: a.batch,
                    len,
                    classes: a.classes,
                    head,
                    loss,
                    memory: emrclass::model::bert::EncoderMemory {
                        recompute_layers: a.recompute.unwrap_or(0),
                        fp16_checkpoints: a.fp16_checkpoints,
                        fp16_activations: a.saved_activations == SavedActivations::Fp16,
                        ..Default::default()
                    },
                    optimizer,
                    mask_rate: a.pretrain.then_some(a.mask_rate),
                };
                let budget = dev.memory().budget();
                let shape = if a.recompute.is_none() && budget < usize::MAX {
                    planned(shape, budget, dev.multiprocessors())?
                } else {
                    shape
                };
                let collective = world
                    .as_mut()
                    .map(|(_, c)| c.as_mut() as &mut dyn Collective);
                rows.push(match shape.mask_rate {
                    Some(_) => pretrain_step::pretrain_step(dev, &shape, a.reps, collective)?,
                    None => step::train_step(dev, &shape, a.reps, collective)?,
                });
            }
            if world.as_ref().is_none_or(|(rank, _)| *rank == 0) {
                step::print(&rows);
                record::finish(dev, &rows, out)?;
            }
        }
    }
    Ok(true)
}

/// The shape of a sequence-layer benchmark (defaults: the BERT-base-sized setting).
#[derive(clap::Args, Clone, Copy)]
pub struct LayerShape {
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Tokens per sequence.
    #[arg(long, default_value_t = 256)]
    pub len: usize,
    /// Width of the token states (BERT-base: 768).
    #[arg(long, default_value_t = 768)]
    pub input: usize,
    /// Hidden size (RNNs) or filters per width (Text-CNN).
    #[arg(long, default_value_t = 256)]
    pub hidden: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

/// The shape of the attention / encoder benchmarks (default: BERT-base, batch 16).
#[derive(clap::Args, Clone)]
pub struct BertShape {
    /// Sequences per batch.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Sequence lengths to time.
    #[arg(long, value_delimiter = ',', default_values_t = [128, 256, 512])]
    pub len: Vec<usize>,
    /// Hidden size (BERT-base: 768).
    #[arg(long, default_value_t = 768)]
    pub hidden: usize,
    /// Attention heads (BERT-base: 12).
    #[arg(long, default_value_t = 12)]
    pub heads: usize,
    /// Timed repetitions (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub reps: usize,
}

#[derive(Subcommand)]
pub enum BenchWhat {
    /// Device-to-device copy bandwidth (bytes read + written): the roofline's memory ceiling.
    Copy {
        /// MiB copied.
        #[arg(long, default_value_t = 256)]
        mib: usize,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// One whole training step (BERT + head + loss + clipping + AdamW) on random tokens:
    /// samples/s and peak memory. Default: BERT-base (Chinese vocabulary), `paper` head, batch
    /// 16 x 128 tokens, 44 classes.
    Step(StepArgs),
    /// Fused multi-head attention forward and backward, and the memory it saves.
    Attention(BertShape),
    /// One BERT encoder layer forward and backward.
    Encoder(BertShape),
    /// Bidirectional GRU, forward and backward.
    Gru(LayerShape),
    /// Bidirectional LSTM, forward and backward.
    Lstm(LayerShape),
    /// Text-CNN (widths 2, 3, 4; --hidden filters each), forward and backward.
    Textcnn(LayerShape),
    /// One loss-layer step (logits -> loss and dL/dlogits): rows/s, GB/s, roofline.
    Loss {
        /// The loss to time (see `train --loss`), or all.
        #[arg(long, value_enum, default_value_t = LossArg::All)]
        kind: LossArg,
        /// Batch sizes (rows).
        #[arg(long, value_delimiter = ',', default_values_t = [16, 256, 4096])]
        rows: Vec<usize>,
        /// Class counts (44 is CHIP-CTC's).
        #[arg(long, value_delimiter = ',', default_values_t = [44, 1000])]
        classes: Vec<usize>,
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
    },
    /// C = op(A) op(B), row-major fp32. Default: 64..256 squares on the simulator; on CUDA the
    /// products of a BERT-base training step at batch 16 x L 128 and 512 (QKV, attention output,
    /// FFN up, FFN down; each forward, input gradient and weight gradient, in the step's
    /// layouts) and 1024/4096 squares.
    Gemm {
        /// Square sizes (m = n = k).
        #[arg(long, value_delimiter = ',')]
        sizes: Vec<usize>,
        /// Shapes as MxNxK, e.g. 2048x2304x768.
        #[arg(long, value_delimiter = ',')]
        shapes: Vec<String>,
        /// Timed repetitions per size (the median is reported).
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Operand layouts of --sizes and --shapes: nn (C = A B, as the input gradient dX = dY W),
        /// nt (A B^T, as the forward X W^T), tn (A^T B, as the weight gradient dY^T X).
        #[arg(long, value_delimiter = ',', default_values_t = ["nn".to_string()])]
        layouts: Vec<String>,
        /// GEMM plan: auto (the launcher's choice for the shape), all (every tile unsplit, and
        /// auto), or 128x128, 128x64, 64x64, each optionally split along k as TILE:SPLITS.
        #[arg(long, value_delimiter = ',', default_values_t = ["auto".to_string()])]
        tiles: Vec<String>,
    },
}
