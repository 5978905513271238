//! `emrclass train`: its flags, the options they give, and the run.

use emrclass::data::batching::LongText;
use emrclass::data::dataset::ReadOptions;
use emrclass::model::window_pool::{chunk_pool_from_name, Pool, DEFAULT_CHUNK_POOL};
use emrclass::options::{default_lr, Similarity, TrainOptions};
use emrclass::settings::{self, Checks};
use emrclass::train::trainer::TrainSettings;
use emrclass::{Error, Result};

use super::common::{
    catch_signals, encoder_folder, loss_kinds, GlobalArgs, LossArg, SavedActivations,
};

/// Train a classifier and print dev metrics per epoch and the best epoch's report. With no
/// --train file, trains on the built-in synthetic, unbalanced EMR-like set.
#[derive(clap::Args)]
pub struct Args {
    /// Training data: .jsonl, .csv, .tsv or a CBLUE .json array.
    #[arg(long)]
    pub train: Option<std::path::PathBuf>,
    /// Dev data (default: a stratified split of the training data, --dev-fraction).
    #[arg(long)]
    pub dev: Option<std::path::PathBuf>,
    /// Without --dev: the share of each class held out as the dev set (stratified, seeded).
    #[arg(long, default_value_t = 0.2, allow_negative_numbers = true)]
    pub dev_fraction: f64,
    /// The text's field (JSON lines, CBLUE) or column (CSV, TSV).
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// The label's field (JSON lines, CBLUE) or column (CSV, TSV).
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
    /// The loss: ce, weighted-ce (wce; the default: best across the data sets of the README's
    /// protocol), focal, ghmc (ghm) or ghmcs (ghm-cs: class proportion x GHM x class
    /// similarity, the paper's).
    #[arg(long, value_enum, default_value_t = LossArg::WeightedCe)]
    pub loss: LossArg,
    /// Passes over the training data (with --resume, a larger value extends a run). Default 6:
    /// ahead of 3 on both of the README protocol's sets (the best epoch is kept).
    #[arg(long, default_value_t = 6)]
    pub epochs: usize,
    /// Records per batch (per optimizer step, times --accumulate).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Tokens a model reads of a record, [CLS] and [SEP] included (see --long-text for longer
    /// records).
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
    /// Dropout probability of the head (and of the encoder-free embeddings).
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
    /// Run folder: checkpoint/ (latest), best/, log.jsonl, run.json, report.html, confusion and
    /// report files. A new run needs a new or empty folder. Default: runs/train, or the first
    /// free of runs/train-2, runs/train-3, ... (`experiment`: runs/experiment, ...); with
    /// --resume, runs/train.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Continue the run in --out from its latest checkpoint (the same settings are required,
    /// except a larger --epochs, which extends a run).
    #[arg(long, conflicts_with = "overwrite")]
    pub resume: bool,
    /// Replace the run (or experiment) --out holds. Refused when the folder holds anything a
    /// run did not write.
    #[arg(long)]
    pub overwrite: bool,
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

impl Args {
    /// The options these flags give (names parsed; `settings::check_train` checks the rest).
    /// `default_out`: the folder (numbered when taken) when --out is absent.
    pub fn options(&self, seed: Option<u64>, default_out: &str) -> Result<TrainOptions> {
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
                return Err(Error::Invalid(
                    "--max-chunks 0: a record needs at least one window".into(),
                ))
            }
            (LongText::Chunks { max }, Some(n)) => *max = n,
            (_, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "--max-chunks applies to --long-text chunks, not {}",
                    long_text.name()
                )))
            }
            (_, None) => {}
        }
        let chunk_pool = match (&long_text, &self.chunk_pool) {
            (LongText::Chunks { .. }, Some(name)) => chunk_pool_from_name(name)?,
            (LongText::Chunks { .. }, None) => DEFAULT_CHUNK_POOL,
            (_, Some(_)) => {
                return Err(Error::Invalid(format!(
                    "--chunk-pool applies to --long-text chunks, not {}",
                    long_text.name()
                )))
            }
            (_, None) => Pool::Mean,
        };
        Ok(TrainOptions {
            train: self.train.clone(),
            dev: self.dev.clone(),
            dev_fraction: self.dev_fraction,
            read: ReadOptions {
                text_field: self.text_field.clone(),
                label_field: self.label_field.clone(),
                skip_bad: self.skip_bad,
            },
            encoder: self.encoder.clone(),
            head,
            loss: match self.loss {
                LossArg::All => {
                    return Err(Error::Invalid(
                        "--loss all: a run trains one loss; `emrclass experiment --losses all` runs each".into(),
                    ))
                }
                one => loss_kinds(one)?[0],
            },
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
            settings: TrainSettings {
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
                (Some(m), _) => Some(Similarity::Matrix(m.clone())),
                (None, Some(e)) => Some(Similarity::Edges(e.clone())),
                (None, None) => None,
            },
            out: match (&self.out, self.resume) {
                (Some(out), _) => out.clone(),
                (None, true) => run_to_resume(default_out)?,
                (None, false) => default_out.into(),
            },
            resume: self.resume,
            overwrite: self.overwrite,
            numbered_out: self.out.is_none() && !self.resume,
            checkpoint_every: self.checkpoint_every,
            log_every: self.log_every,
            patience: self.patience,
            metric,
            eval_every: self.eval_every,
            quiet: self.quiet,
            stop_after_steps: self.stop_after_steps,
            memory: None,
            fp16_activations: self.saved_activations == SavedActivations::Fp16,
        })
    }
}

pub fn run(global: &GlobalArgs, args: &Args) -> Result<bool> {
    let mut options = args.options(global.seed, "runs/train")?;
    settings::check_train(&options, &[options.head])?;
    settings::check_resumable(&options)?;
    options.encoder = encoder_folder(&options.encoder)?;
    settings::check_encoder_limits(&options)?;
    catch_signals()?;
    let dev = global.open_device(global.seed())?;
    options.memory = global.memory_budget(&dev)?;
    emrclass::jobs::train::run(&dev, &options)?;
    Ok(true)
}

/// `--resume` without `--out`: the default folder, when it is the only one of DIR, DIR-2, ...
/// that exists; several are refused (which run to continue is the user's to say).
fn run_to_resume(default_out: &str) -> Result<std::path::PathBuf> {
    let base = std::path::Path::new(default_out);
    let name = base
        .file_name()
        .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let parent = base.parent().unwrap_or(std::path::Path::new("."));
    let mut found: Vec<String> = std::fs::read_dir(if parent.as_os_str().is_empty() {
        std::path::Path::new(".")
    } else {
        parent
    })
    .into_iter()
    .flatten()
    .flatten()
    .map(|e| e.file_name().to_string_lossy().into_owned())
    .filter(|n| {
        n == &name
            || n.strip_prefix(&format!("{name}-"))
                .is_some_and(|k| k.parse::<u32>().is_ok())
    })
    .collect();
    found.sort();
    if found.len() > 1 {
        return Err(Error::Invalid(format!(
            "--resume without --out: {} hold runs ({}); say which to continue with --out",
            parent.display(),
            found.join(", ")
        )));
    }
    Ok(base.to_path_buf())
}
