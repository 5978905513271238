//! The `emrclass` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use emrclass::check::{registry, Rng};
use emrclass::data::batching::LongText;
use emrclass::device::DeviceChoice;
use emrclass::model::loss::LossKind;
use emrclass::settings::{self, Checks};
use emrclass::train::command::{default_lr, MemoryBudget};
use emrclass::{hub, kernel_report, Device, Result, Schedule};

mod bench_command;

#[derive(Parser)]
#[command(
    name = "emrclass",
    version,
    about = "GPU training engine for unbalanced Chinese EMR classification"
)]
struct Cli {
    /// Where kernels run: a CUDA GPU, the CPU SIMT simulator, or CUDA when usable else the simulator.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, global = true)]
    device: DeviceChoice,
    /// The device memory to fit in, e.g. 4GiB (a GTX 1050 Ti): the engine allocates at most this
    /// less --context-reserve, and `train` plans recomputation and micro-batches to fit. Absent:
    /// the GPU's free memory (unlimited on the simulator).
    #[arg(long, global = true)]
    memory_budget: Option<String>,
    /// The part of --memory-budget left to the CUDA context, loaded kernels and pool rounding.
    #[arg(long, global = true, default_value = "320MiB")]
    context_reserve: String,
    /// Simulator thread order between barriers (a missing barrier shows under reverse or random).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Forward, global = true)]
    schedule: ScheduleArg,
    /// Seed for random inputs and the random schedule (default: fresh each run, printed).
    #[arg(long, global = true)]
    seed: Option<u64>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum ScheduleArg {
    Forward,
    Reverse,
    Random,
}

#[derive(Subcommand)]
enum Command {
    /// Compile every kernel with NVRTC for sm_61 and sm_90 and print registers, spills, shared
    /// memory and GTX 1050 Ti occupancy. Needs NVRTC 12.x, no GPU.
    Kernels {
        /// Only these kernel files (e.g. `gemm attention`, with or without `.cu`); all by default.
        files: Vec<String>,
    },
    /// Time kernels and print GFLOP/s, GB/s and the fraction of the card's roofline.
    Bench {
        #[command(subcommand)]
        what: bench_command::BenchWhat,
        #[command(flatten)]
        out: bench_command::BenchOutputs,
    },
    /// Train a classifier and print dev metrics per epoch and the best epoch's report. With no
    /// --train file, trains on the built-in synthetic, unbalanced EMR-like set.
    Train(TrainArgs),
    /// Run the paper's comparison grid (each head with each loss) on one data set and write the
    /// tables (ACC, macro-F1, micro-F1) as CSV and markdown into --out (each run's own folder
    /// inside it, HEAD-LOSS/). Takes every `train` option; --heads and --losses replace --head
    /// and --loss.
    Experiment {
        #[command(flatten)]
        train: TrainArgs,
        #[arg(long, value_delimiter = ',', default_values_t = ["textcnn".to_string(), "bilstm".into(), "bigru".into(), "textcnn-bigru".into(), "paper".into()])]
        heads: Vec<String>,
        #[arg(long, value_enum, value_delimiter = ',', default_values_t = [LossArg::Ce, LossArg::WeightedCe, LossArg::Focal, LossArg::Ghmc, LossArg::Ghmcs])]
        losses: Vec<LossArg>,
        /// Run each cell once per seed (e.g. 1,2,3) and report mean ± std; default: --seed (or 1).
        #[arg(long, value_delimiter = ',')]
        seeds: Vec<u64>,
    },
    /// Evaluate a training run's model (best epoch, or --latest) on a labelled file: accuracy,
    /// macro/micro/weighted F1 and the per-class report.
    Eval {
        /// The run folder `train --out` wrote.
        #[arg(long)]
        run: std::path::PathBuf,
        /// .jsonl, .csv, .tsv or a CBLUE .json array, with labels.
        #[arg(long)]
        data: std::path::PathBuf,
        /// Use the latest checkpoint instead of the best epoch's.
        #[arg(long)]
        latest: bool,
        #[arg(long, default_value = "text")]
        text_field: String,
        #[arg(long, default_value = "label")]
        label_field: String,
        #[arg(long)]
        skip_bad: bool,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
    /// Classify texts with a training run's model: JSON lines in (strings, or objects with a
    /// text field and an optional id), JSON lines out (id, text, label, probabilities).
    Predict {
        #[arg(long)]
        run: std::path::PathBuf,
        #[arg(long)]
        input: std::path::PathBuf,
        #[arg(long)]
        output: std::path::PathBuf,
        #[arg(long)]
        latest: bool,
        #[arg(long, default_value = "text")]
        text_field: String,
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
    },
    /// Run a BERT checkpoint over texts or token ids and write last_hidden_state [B, L, H] and
    /// pooler_output [B, H] (fp32) to a safetensors file.
    Encode {
        /// Folder with config.json, model.safetensors or pytorch_model.bin, and tokenizer.json or
        /// vocab.txt; or hf:owner/name[@revision].
        #[arg(long)]
        model: std::path::PathBuf,
        /// Texts: JSON lines (.jsonl: strings or {"text": ...}) or one text per line.
        #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
        texts: Option<std::path::PathBuf>,
        /// Token ids: JSON {"input_ids": [[..]], "attention_mask": [[..]]?, "token_type_ids": [[..]]?}.
        #[arg(long)]
        ids: Option<std::path::PathBuf>,
        /// Truncation length; batches are padded to their longest sequence.
        #[arg(long, default_value_t = 128)]
        max_len: usize,
        #[arg(long)]
        output: std::path::PathBuf,
    },
    /// Plan the device memory of fine-tuning a BERT checkpoint: the byte breakdown at the peak
    /// (counted by running the engine's own training step on a device that only counts), the
    /// strategy that fits (recomputation, fp16 checkpoints, micro-batches) or what is short,
    /// and the largest batch per sequence length. Needs no GPU and no weights.
    Plan(PlanArgs),
    /// Export a run's model (best epoch, or --latest) as a folder transformers loads: `cls` as
    /// BertForSequenceClassification; other heads as OUT/encoder (BertModel) with
    /// OUT/head.safetensors and OUT/head.json for the README's EmrclassHead module.
    Export {
        #[arg(long)]
        run: std::path::PathBuf,
        /// The format: hf (Hugging Face transformers).
        #[arg(long, value_enum)]
        to: ExportFormat,
        /// A new (or empty) folder.
        out: std::path::PathBuf,
        #[arg(long)]
        latest: bool,
    },
    /// Write RUN/report.html: the run's learning curves, per-class F1 against class size, the
    /// confusion heat map, GHM's gradient-norm histogram and the settings (an experiment folder:
    /// its heads x losses table and chart). `train` and `experiment` write it themselves.
    Report {
        #[arg(long, required_unless_present = "compare")]
        run: Option<std::path::PathBuf>,
        /// Instead: overlay the learning curves of these run folders into --out (an HTML page,
        /// with each chart beside it as an SVG).
        #[arg(long, num_args = 1.., conflicts_with = "run", requires = "out")]
        compare: Vec<std::path::PathBuf>,
        /// The page `--compare` writes.
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Convert a weights file — a PyTorch checkpoint (`pytorch_model.bin`, `*.pt`: zip or legacy
    /// format, read without Python and without running its pickle) or safetensors; a folder
    /// means its weights file — to safetensors, names and element types unchanged.
    Convert {
        input: std::path::PathBuf,
        output: std::path::PathBuf,
    },
    /// Check each op's f64 reference against finite differences and its kernels against the
    /// reference on fresh random inputs. Non-zero exit status on any failure.
    Gradcheck {
        /// Ops to check (all when none given): gemm, softmax, reduce, sum_columns, add, scale,
        /// gelu, adamw, convert_f16, loss_ce, loss_weighted_ce, loss_focal, loss_ghmc, loss_ghmcs.
        ops: Vec<String>,
    },
}

/// The options of `plan`.
#[derive(clap::Args)]
struct PlanArgs {
    /// A BERT checkpoint folder (its config.json is read), a config.json, or hf:owner/name.
    #[arg(long)]
    model: std::path::PathBuf,
    #[arg(long, default_value = "paper")]
    head: String,
    #[arg(long, value_enum, default_value_t = LossArg::Ghmcs)]
    loss: LossArg,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Token windows per record: `train --long-text chunks`' --max-chunks (each --seq long).
    #[arg(long, default_value_t = 1)]
    windows: usize,
    /// The card's memory.
    #[arg(long, default_value = "4GiB")]
    budget: String,
    /// The card's streaming multiprocessors (6: a GTX 1050 Ti; an H200 has 132): GEMM plans
    /// depend on them, and split-K's workspace is memory.
    #[arg(long, default_value_t = emrclass::plan::TARGET_MULTIPROCESSORS)]
    multiprocessors: usize,
    /// Plan a frozen encoder (features cached, head trained alone).
    #[arg(long)]
    frozen: bool,
    /// adamw, adamw8bit or adamw8bit-all, as `train --optimizer`.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// fp32 or fp16, as `train --saved-activations`.
    #[arg(long, value_enum, default_value_t = SavedActivations::Fp32)]
    saved_activations: SavedActivations,
    /// Classes of the head (CHIP-CTC has 44).
    #[arg(long, default_value_t = 44)]
    classes: usize,
    #[arg(long, default_value_t = 64)]
    filters: usize,
    #[arg(long, default_value_t = 64)]
    rnn_hidden: usize,
    /// Skip the table of the largest batch per sequence length.
    #[arg(long)]
    no_table: bool,
    /// Also write the plan and the table as JSON.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

/// The options of `train` (and of each run of `experiment`).
#[derive(clap::Args)]
struct TrainArgs {
    /// Training data: .jsonl, .csv, .tsv or a CBLUE .json array.
    #[arg(long)]
    pub train: Option<std::path::PathBuf>,
    /// Dev data (default: a stratified split of the training data, --dev-fraction).
    #[arg(long)]
    pub dev: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub dev_fraction: f64,
    #[arg(long, default_value = "text")]
    pub text_field: String,
    #[arg(long, default_value = "label")]
    pub label_field: String,
    /// Skip broken records (counted) instead of stopping at the first.
    #[arg(long)]
    pub skip_bad: bool,
    /// A BERT checkpoint folder to fine-tune, or hf:owner/name[@revision] (fetched into the
    /// Hugging Face cache); default: trainable character embeddings.
    #[arg(long)]
    pub encoder: Option<std::path::PathBuf>,
    /// cls, textcnn, bigru, bilstm, textcnn-bigru, paper or bag (cls needs --encoder; without
    /// one, paper is Text-CNN || BiGRU; bag is fastText-style hashed character n-grams).
    #[arg(long, default_value = "paper")]
    pub head: String,
    #[arg(long, value_enum, default_value_t = LossArg::Ghmcs)]
    pub loss: LossArg,
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 64)]
    pub max_len: usize,
    /// Learning rate (default: 3e-3; 2e-2 for the bag head, whose n-gram rows are each
    /// updated rarely).
    #[arg(long, allow_negative_numbers = true)]
    pub lr: Option<f64>,
    /// A record longer than --max-len: keep its head, or head-tail (the first quarter and the
    /// last three quarters of the room: the diagnosis and plan at a record's end survive), or
    /// chunks (all of it, as windows of --max-len overlapping by a quarter; the record's logits
    /// are the mean of its windows', in training, eval and predict).
    #[arg(long, default_value = "head")]
    pub long_text: String,
    /// --long-text chunks: the most windows per record (default 8); a longer record's windows
    /// are spread evenly from its start to its end.
    #[arg(long)]
    pub max_chunks: Option<usize>,
    /// --long-text chunks: a record's logits are the mean or the class-wise max of its
    /// windows' (default mean).
    #[arg(long)]
    pub chunk_pool: Option<String>,
    /// The built-in set in its long-record mode (30 classes, 2 to 600 records each, hundreds
    /// of characters, the class's subtype written at the end).
    #[arg(long)]
    pub synthetic_long: bool,
    /// GHM-CS: epochs with beta = 1 (weighted soft-target CE) before GHM re-weights; its
    /// histogram of gradient norms fills meanwhile. Default 1: over seeds 1-3 it was ahead on
    /// every set measured (README, "Which loss and head by default").
    #[arg(long, default_value_t = 1)]
    pub ghm_warmup_epochs: usize,
    /// Hash buckets of the `bag` head's character 1-3-grams (its embedding table's rows).
    #[arg(long, default_value_t = 1 << 16)]
    pub buckets: usize,
    /// Embedding width of the encoder-free path.
    #[arg(long, default_value_t = 64)]
    pub embedding_dim: usize,
    /// Text-CNN filters per width.
    #[arg(long, default_value_t = 64)]
    pub filters: usize,
    /// BiGRU/BiLSTM hidden size.
    #[arg(long, default_value_t = 64)]
    pub rnn_hidden: usize,
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub dropout: f32,
    /// Size of the built-in synthetic set (1.0: about 5,900 records).
    #[arg(long, default_value_t = 0.5, allow_negative_numbers = true)]
    pub synthetic_scale: f64,
    /// Keep the --encoder frozen: encode every text once (cached on disk, see
    /// --feature-cache) and train only the head.
    #[arg(long, requires = "encoder")]
    pub freeze_encoder: bool,
    /// Folder of the frozen encoder's feature cache (shared between runs).
    #[arg(long, default_value = "runs/feature-cache")]
    pub feature_cache: std::path::PathBuf,
    /// Learning rate of the input path (character embeddings or encoder) as a multiple of the
    /// head's --lr.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub input_lr_scale: f32,
    /// AdamW's decoupled weight decay: each step multiplies a weight by 1 - lr x decay (none on
    /// biases, LayerNorm parameters and the encoder-free embedding tables).
    #[arg(long, default_value_t = 0.01, allow_negative_numbers = true)]
    pub weight_decay: f32,
    /// Gradient accumulation: micro-batches of --batch-size per optimizer step.
    #[arg(long, default_value_t = 1)]
    pub accumulate: usize,
    /// adamw (fp32 moments), adamw8bit (block-wise 8-bit moments: ~2 bytes per parameter
    /// instead of 8; tensors under 4096 elements and embedding tables keep fp32 moments) or
    /// adamw8bit-all (embedding tables in 8 bits too).
    #[arg(long, default_value = "adamw")]
    pub optimizer: String,
    /// How the encoder's kept activations are stored for backward: fp32, or fp16 (half the
    /// bytes; fp32 arithmetic, statistics in fp32; gradients within ~1e-3 of fp32's).
    #[arg(long, value_enum, default_value_t = SavedActivations::Fp32)]
    pub saved_activations: SavedActivations,
    /// Class weights from a file (CSV `class,weight` or a JSON object) instead of the counts.
    #[arg(long)]
    pub class_weights: Option<std::path::PathBuf>,
    /// The exponent γ of the class weights from the training counts, (N / (K n_c))^γ
    /// renormalised (default 1; 0.5 for GHM-CS).
    #[arg(long, allow_negative_numbers = true)]
    pub class_weight_gamma: Option<f64>,
    /// GHM-CS class similarity: a K x K matrix (CSV with class names on both axes, or JSON
    /// {"classes": [..], "matrix": [[..]]}).
    #[arg(long, conflicts_with = "similarity_edges")]
    pub similarity_matrix: Option<std::path::PathBuf>,
    /// GHM-CS class similarity from a knowledge-network edge list `a,b,w` (w in (0, 1]).
    #[arg(long)]
    pub similarity_edges: Option<std::path::PathBuf>,
    /// Run folder: checkpoint/ (latest), best/, log.jsonl, confusion.csv/.json, report.json.
    #[arg(long, default_value = "runs/train")]
    pub out: std::path::PathBuf,
    /// Continue the run in --out from its latest checkpoint (the same settings are required).
    #[arg(long)]
    pub resume: bool,
    /// Also checkpoint every N optimizer steps (0: at each epoch's end only).
    #[arg(long, default_value_t = 0)]
    pub checkpoint_every: u64,
    /// A log.jsonl line every N steps.
    #[arg(long, default_value_t = 50)]
    pub log_every: u64,
    /// Early stopping: stop after N epochs without a better dev --metric.
    #[arg(long)]
    pub patience: Option<usize>,
    /// The dev metric that picks the best epoch and drives early stopping: macro-f1, micro-f1,
    /// weighted-f1 or accuracy.
    #[arg(long, default_value = "macro-f1")]
    pub metric: String,
    /// Also evaluate on the dev set every N optimizer steps (0: per epoch only).
    #[arg(long, default_value_t = 0)]
    pub eval_every: u64,
    /// No progress bar (logs and epoch lines only).
    #[arg(long)]
    pub quiet: bool,
    /// Stop right after this optimizer step, as a kill would (for testing --resume).
    #[arg(long, hide = true)]
    pub stop_after_steps: Option<u64>,
}

impl TrainArgs {
    fn options(
        &self,
        seed: Option<u64>,
        memory: Option<MemoryBudget>,
    ) -> Result<emrclass::train::command::TrainOptions> {
        let mut names = Checks::new();
        let head = names.parse("--head", &self.head);
        let metric = names.parse("--metric", &self.metric);
        let long_text = names.parse("--long-text", &self.long_text);
        let optimizer = names.parse("--optimizer", &self.optimizer);
        names.finish()?;
        let (Some(head), Some(metric), Some(mut long_text), Some(optimizer)) =
            (head, metric, long_text, optimizer)
        else {
            unreachable!("finish() refuses a name that did not parse")
        };
        match (&mut long_text, self.max_chunks) {
            (_, Some(0)) => {
                return Err(emrclass::error::Error::Invalid(
                    "--max-chunks 0: a record needs at least one window".into(),
                ))
            }
            (LongText::Chunks { max }, Some(n)) => *max = n,
            (_, Some(_)) => {
                return Err(emrclass::error::Error::Invalid(format!(
                    "--max-chunks applies to --long-text chunks, not {}",
                    long_text.name()
                )))
            }
            (_, None) => {}
        }
        let chunk_pool = match (&long_text, &self.chunk_pool) {
            (LongText::Chunks { .. }, Some(name)) => {
                emrclass::train::command::chunk_pool_from_name(name)?
            }
            (LongText::Chunks { .. }, None) => emrclass::train::command::DEFAULT_CHUNK_POOL,
            (_, Some(_)) => {
                return Err(emrclass::error::Error::Invalid(format!(
                    "--chunk-pool applies to --long-text chunks, not {}",
                    long_text.name()
                )))
            }
            (_, None) => emrclass::model::window_pool::Pool::Mean,
        };
        Ok(emrclass::train::command::TrainOptions {
            train: self.train.clone(),
            dev: self.dev.clone(),
            dev_fraction: self.dev_fraction,
            read: emrclass::data::dataset::ReadOptions {
                text_field: self.text_field.clone(),
                label_field: self.label_field.clone(),
                skip_bad: self.skip_bad,
            },
            encoder: self.encoder.clone(),
            head,
            loss: loss_kinds(self.loss)?[0],
            max_len: self.max_len,
            buckets: self.buckets,
            long_text,
            synthetic_long: self.synthetic_long,
            ghm_warmup_epochs: self.ghm_warmup_epochs,
            chunk_pool,
            embedding_dim: self.embedding_dim,
            filters: self.filters,
            rnn_hidden: self.rnn_hidden,
            dropout: self.dropout,
            synthetic_scale: self.synthetic_scale,
            settings: emrclass::train::trainer::TrainSettings {
                epochs: self.epochs,
                batch_size: self.batch_size,
                lr: self.lr.unwrap_or_else(|| default_lr(head)),
                seed: seed.unwrap_or(1),
                accumulate: self.accumulate,
                input_lr_scale: self.input_lr_scale,
                weight_decay: self.weight_decay,
                optimizer,
                ..Default::default()
            },
            freeze_encoder: self.freeze_encoder,
            feature_cache: self.feature_cache.clone(),
            class_weights: self.class_weights.clone(),
            class_weight_gamma: self.class_weight_gamma,
            similarity: match (&self.similarity_matrix, &self.similarity_edges) {
                (Some(m), _) => Some(emrclass::train::command::Similarity::Matrix(m.clone())),
                (None, Some(e)) => Some(emrclass::train::command::Similarity::Edges(e.clone())),
                (None, None) => None,
            },
            out: self.out.clone(),
            resume: self.resume,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            patience: self.patience,
            metric,
            eval_every: self.eval_every,
            quiet: self.quiet,
            stop_after_steps: self.stop_after_steps,
            memory,
            fp16_activations: self.saved_activations == SavedActivations::Fp16,
        })
    }
}

/// How saved activations are stored (`--saved-activations`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum SavedActivations {
    Fp32,
    Fp16,
}

/// What `export --to` writes.
#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// A Hugging Face transformers folder.
    Hf,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LossArg {
    Ce,
    #[value(alias = "wce")]
    WeightedCe,
    Focal,
    #[value(alias = "ghm")]
    Ghmc,
    #[value(alias = "ghm-cs")]
    Ghmcs,
    All,
}

/// The losses a --loss/--kind value names (`all` for benches only).
pub(crate) fn loss_kinds(arg: LossArg) -> Result<Vec<LossKind>> {
    Ok(match arg {
        LossArg::Ce => vec![LossKind::CrossEntropy],
        LossArg::WeightedCe => vec![LossKind::WeightedCrossEntropy],
        LossArg::Focal => vec![LossKind::Focal],
        LossArg::Ghmc => vec![LossKind::GhmC],
        LossArg::Ghmcs => vec![LossKind::GhmCs],
        LossArg::All => vec![
            LossKind::CrossEntropy,
            LossKind::WeightedCrossEntropy,
            LossKind::Focal,
            LossKind::GhmC,
            LossKind::GhmCs,
        ],
    })
}

/// `--encoder` as a folder: an `hf:owner/name[@revision]` is fetched (or taken from the cache).
fn encoder_folder(encoder: &Option<std::path::PathBuf>) -> Result<Option<std::path::PathBuf>> {
    encoder
        .as_ref()
        .map(|e| hub::model_folder(e, hub::Need::Everything))
        .transpose()
}

fn open_device(cli: &Cli, seed: u64) -> Result<Device> {
    let (dev, fallback) = Device::open(cli.device)?;
    dev.set_schedule(match cli.schedule {
        ScheduleArg::Forward => Schedule::Forward,
        ScheduleArg::Reverse => Schedule::Reverse,
        ScheduleArg::Random => Schedule::Random(seed),
    });
    let dev = match memory_budget(cli, &dev)? {
        Some(m) => dev.with_budget(m.budget - m.reserve),
        None => dev,
    };
    match fallback {
        Some(why) => eprintln!("device: {} (auto: CUDA unavailable: {why})", dev.describe()),
        None => eprintln!("device: {}", dev.describe()),
    }
    if let Some(libraries) = dev.libraries() {
        eprintln!("libraries: {libraries}");
    }
    Ok(dev)
}

/// --memory-budget with --context-reserve (checked by `settings::memory_flags` before the device
/// opened); without it, a GPU's free memory (what the context already holds counts as reserve,
/// plus 64 MiB for modules loaded later); None: unlimited.
fn memory_budget(cli: &Cli, dev: &Device) -> Result<Option<MemoryBudget>> {
    match settings::memory_flags(cli.memory_budget.as_deref(), &cli.context_reserve)? {
        Some((budget, reserve)) => Ok(Some(MemoryBudget { budget, reserve })),
        None if dev.is_cuda() => {
            let (free, total) = dev.mem_info()?;
            Ok(Some(MemoryBudget {
                budget: total,
                reserve: (total - free + (64 << 20)).min(total),
            }))
        }
        None => Ok(None),
    }
}

fn plan_command(cli: &Cli, a: &PlanArgs) -> Result<bool> {
    use emrclass::model::bert::BertConfig;
    use emrclass::plan;
    let mut c = Checks::new();
    let head = c.parse("--head", &a.head);
    let optimizer = c.parse("--optimizer", &a.optimizer);
    c.count("--batch", a.batch);
    c.count("--windows", a.windows);
    c.count("--multiprocessors", a.multiprocessors);
    c.count("--classes", a.classes);
    c.at_least("--classes", a.classes, 2, "a classifier");
    c.require(
        head != Some(emrclass::model::heads::HeadKind::Bag),
        "--head bag: the bag head has no encoder to plan (its memory is its embedding table)",
    );
    if let Some(h) = head {
        settings::sequence_length(&mut c, "--seq", a.seq, &[h]);
        settings::head_sizes(&mut c, &[h], a.filters, a.rnn_hidden);
    }
    let budget = c.bytes("--budget", &a.budget);
    let reserve = c.bytes("--context-reserve", &cli.context_reserve);
    c.finish()?;
    let (Some(head), Some(budget), Some(reserve), Some(optimizer)) =
        (head, budget, reserve, optimizer)
    else {
        unreachable!("finish() refuses a value that did not parse")
    };
    let model = hub::model_folder(&a.model, hub::Need::Config)?;
    let is_json = model.extension().is_some_and(|e| e == "json");
    let config_path = if is_json {
        model.clone()
    } else {
        model.join("config.json")
    };
    let encoder = BertConfig::from_file(&config_path)?;
    let mut head = emrclass::model::heads::HeadConfig::new(head, encoder.hidden_size, a.classes);
    head.textcnn_filters = a.filters;
    head.rnn_hidden = a.rnn_hidden;
    let request = plan::Request {
        encoder,
        head,
        loss: loss_kinds(a.loss)?[0],
        batch: a.batch,
        seq: a.seq,
        budget,
        reserve,
        frozen: a.frozen,
        optimizer,
        fp16_activations: a.saved_activations == SavedActivations::Fp16,
        windows: a.windows,
        multiprocessors: a.multiprocessors,
    };
    let p = plan::plan(&request)?;
    plan::print_plan(&p);
    let cap = 4096;
    let seqs: Vec<usize> = [64, 128, 256, 384, 512]
        .into_iter()
        .filter(|&l| l <= request.encoder.max_position_embeddings)
        .collect();
    let rows = if a.no_table {
        Vec::new()
    } else {
        println!();
        let rows = plan::table(&request, &seqs, cap)?;
        plan::print_table(&request, &rows, cap);
        rows
    };
    if let Some(path) = &a.json {
        plan::write_json(path, &p, &rows)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(p.fits)
}

fn run(cli: &Cli) -> Result<bool> {
    let seed = cli.seed.unwrap_or_else(Rng::fresh_seed);
    // The global flags first: every command below checks its own before its device opens.
    settings::memory_flags(cli.memory_budget.as_deref(), &cli.context_reserve)?;
    match &cli.command {
        Command::Kernels { files } => {
            let rows = kernel_report::build_for(files)?;
            kernel_report::print(&rows);
            let problems = kernel_report::problems(&rows);
            for p in &problems {
                eprintln!("problem: {p}");
            }
            Ok(problems.is_empty())
        }
        Command::Bench { what, out } => {
            what.check(out)?;
            let dev = open_device(cli, seed)?;
            bench_command::run(&dev, what, &out.outputs())
        }
        Command::Train(args) => {
            let mut options = args.options(cli.seed, None)?;
            settings::check_train(&options, &[options.head])?;
            options.encoder = encoder_folder(&options.encoder)?;
            let dev_handle = open_device(cli, seed)?;
            options.memory = memory_budget(cli, &dev_handle)?;
            emrclass::train::command::run(&dev_handle, &options)?;
            Ok(true)
        }
        Command::Experiment {
            train,
            heads,
            losses,
            seeds,
        } => {
            use emrclass::train::experiment::{run_grid, ExperimentOptions};
            let mut base = train.options(cli.seed, None)?;
            let mut c = Checks::new();
            let heads: Vec<_> = heads.iter().filter_map(|h| c.parse("--heads", h)).collect();
            c.require(!heads.is_empty(), "--heads: give at least one head");
            c.require(!losses.is_empty(), "--losses: give at least one loss");
            let mut distinct = seeds.clone();
            distinct.sort_unstable();
            distinct.dedup();
            c.require(
                distinct.len() == seeds.len(),
                "--seeds: each seed once (the same seed gives the same run)",
            );
            c.finish()?;
            settings::check_train(&base, &heads)?;
            base.encoder = encoder_folder(&base.encoder)?;
            // Without --lr, each head gets its own default.
            let lr_per_head = train.lr.is_none();
            let dev_handle = open_device(cli, seed)?;
            base.memory = memory_budget(cli, &dev_handle)?;
            let o = ExperimentOptions {
                heads,
                losses: losses
                    .iter()
                    .map(|&l| loss_kinds(l).map(|v| v[0]))
                    .collect::<Result<_>>()?,
                out: train.out.clone(),
                seeds: seeds.clone(),
                lr: (!lr_per_head).then_some(base.settings.lr),
                base,
            };
            let data = match &train.train {
                Some(p) => p.display().to_string(),
                None if train.synthetic_long => "built-in long-record synthetic set".into(),
                None => "built-in synthetic set".into(),
            };
            let long_text = match o.base.long_text {
                LongText::Chunks { max } => format!(
                    "chunks (at most {max}, {} pool)",
                    emrclass::train::command::chunk_pool_name(o.base.chunk_pool)
                ),
                other => other.name().to_string(),
            };
            let describe = format!(
                "{data}; {}; {} epochs, batch {}, lr {}, max-len {} (long text: {long_text}), GHM-CS warm-up {} epoch(s), seed{} {}; device {}",
                match &train.encoder {
                    Some(e) => format!("encoder {}", e.display()),
                    None => format!(
                        "character embeddings {}, Text-CNN {} filters x (2,3,4), RNN hidden {}, dropout {}",
                        train.embedding_dim, train.filters, train.rnn_hidden, train.dropout
                    ),
                },
                train.epochs,
                train.batch_size,
                train
                    .lr
                    .map_or_else(|| "per head (3e-3; bag 2e-2)".to_string(), |l| l.to_string()),
                train.max_len,
                o.base.ghm_warmup_epochs,
                if seeds.len() > 1 { "s" } else { "" },
                if seeds.is_empty() {
                    cli.seed.unwrap_or(1).to_string()
                } else {
                    seeds
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                },
                dev_handle.describe()
            );
            run_grid(&dev_handle, &o, &describe)?;
            Ok(true)
        }
        Command::Eval {
            run,
            data,
            latest,
            text_field,
            label_field,
            skip_bad,
            batch_size,
        } => {
            settings::check_inference(
                *batch_size,
                &[("--text-field", text_field), ("--label-field", label_field)],
            )?;
            let dev = open_device(cli, seed)?;
            let read = emrclass::data::dataset::ReadOptions {
                text_field: text_field.clone(),
                label_field: label_field.clone(),
                skip_bad: *skip_bad,
            };
            emrclass::train::inference::eval(&dev, run, !latest, data, &read, *batch_size)?;
            Ok(true)
        }
        Command::Predict {
            run,
            input,
            output,
            latest,
            text_field,
            batch_size,
        } => {
            settings::check_inference(*batch_size, &[("--text-field", text_field)])?;
            let dev = open_device(cli, seed)?;
            let n = emrclass::train::inference::predict(
                &dev,
                run,
                !latest,
                input,
                output,
                text_field,
                *batch_size,
            )?;
            eprintln!("wrote {n} predictions to {}", output.display());
            Ok(true)
        }
        Command::Encode {
            model,
            texts,
            ids,
            max_len,
            output,
        } => {
            settings::check_encode(*max_len)?;
            let model = hub::model_folder(model, hub::Need::Everything)?;
            let dev = open_device(cli, seed)?;
            let input = match (texts, ids) {
                (Some(t), _) => emrclass::encode::Input::Texts(t),
                (None, Some(i)) => emrclass::encode::Input::Ids(i),
                (None, None) => unreachable!("clap requires one of --texts and --ids"),
            };
            let (b, l) = emrclass::encode::run(&dev, &model, input, *max_len, output)?;
            eprintln!(
                "encoded {b} sequences of {l} tokens into {}",
                output.display()
            );
            Ok(true)
        }
        Command::Plan(a) => plan_command(cli, a),
        Command::Export {
            run,
            to: ExportFormat::Hf,
            out,
            latest,
        } => {
            let dev = open_device(cli, seed)?;
            let e = emrclass::export::export_hf(&dev, run, *latest, out)?;
            for w in &e.warnings {
                eprintln!("warning: {w}");
            }
            println!(
                "wrote {} ({}, {} tensors)",
                e.folder.display(),
                e.layout,
                e.tensors
            );
            Ok(true)
        }
        Command::Report { run, compare, out } => {
            let written = match (run, out) {
                (Some(run), _) => vec![emrclass::report::write(run)?],
                (None, Some(out)) => emrclass::report::compare(compare, out)?,
                (None, None) => unreachable!("clap requires --run or --compare with --out"),
            };
            for path in written {
                eprintln!("wrote {}", path.display());
            }
            Ok(true)
        }
        Command::Convert { input, output } => {
            let n = emrclass::weights::convert(input, output)?;
            eprintln!(
                "wrote {n} tensors from {} to {}",
                input.display(),
                output.display()
            );
            Ok(true)
        }
        Command::Gradcheck { ops } => {
            let checks = registry::select(ops)?;
            let dev = open_device(cli, seed)?;
            println!("seed {seed} (replay with --seed {seed})");
            let mut rng = Rng::new(seed);
            let mut rows = Vec::new();
            for c in &checks {
                if let Some(gradient) = c.gradient {
                    rows.extend(gradient(&mut rng));
                }
                rows.extend((c.kernel)(&dev, &mut rng)?);
            }
            println!(
                "{:<22} {:<9} {:<28} {:<34} {:>10} {:>8}  result",
                "op", "check", "device", "sizes", "error", "tol"
            );
            for r in &rows {
                println!(
                    "{:<22} {:<9} {:<28} {:<34} {:>10.2e} {:>8.0e}  {}",
                    r.op,
                    r.check,
                    r.device,
                    r.sizes,
                    r.error,
                    r.tolerance,
                    if r.passed() { "pass" } else { "FAIL" }
                );
            }
            let failed = rows.iter().filter(|r| !r.passed()).count();
            println!("{} passed, {failed} failed", rows.len() - failed);
            Ok(failed == 0)
        }
    }
}

fn main() -> ExitCode {
    // Writing into a closed pipe (`emrclass ... | head`) ends the process quietly, as for any
    // Unix tool, instead of panicking in println!.
    // SAFETY: called first thing, before any thread exists; SIG_DFL is a valid disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(&cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
