//! The validated options of `train`, of each run of `experiment` and of `pretrain`, as the
//! commands hand them to the jobs. They sit below the commands, `settings` (which checks them) and `jobs` (which run
//! them), so none of those imports another to reach them.

use std::path::PathBuf;

use crate::data::batching::LongText;
use crate::data::dataset::ReadOptions;
use crate::data::masking::{Grouping, MaskUnit, MaskingRule};
use crate::model::heads::HeadKind;
use crate::model::loss::LossKind;
use crate::model::window_pool::{chunk_pool_name, Pool};
use crate::train::folder_lock::Start;
use crate::train::metrics::Metric;
use crate::train::state::ModelSpec;
use crate::train::trainer::TrainSettings;

#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Training file; None: the built-in synthetic set.
    pub train: Option<PathBuf>,
    /// Dev file; None: a stratified split of the training data.
    pub dev: Option<PathBuf>,
    pub dev_fraction: f64,
    pub read: ReadOptions,
    /// A BERT checkpoint folder to fine-tune; None: trainable character embeddings.
    pub encoder: Option<PathBuf>,
    pub head: HeadKind,
    pub loss: LossKind,
    pub max_len: usize,
    /// Hash buckets of the `bag` head's character n-grams.
    pub buckets: usize,
    /// What to keep of a record longer than max_len.
    pub long_text: LongText,
    /// GHM-CS: epochs with beta = 1 (plain weighted soft-target CE) before GHM weighting starts;
    /// the histogram still updates.
    pub ghm_warmup_epochs: usize,
    /// `--long-text chunks`: mean or max over a record's windows' logits.
    pub chunk_pool: Pool,
    /// The built-in set's long-record mode (`synthetic::generate_long`).
    pub synthetic_long: bool,
    pub embedding_dim: usize,
    pub filters: usize,
    pub rnn_hidden: usize,
    pub dropout: f32,
    pub synthetic_scale: f64,
    /// Keep the encoder frozen: encode every text once (cached on disk) and train the head.
    pub freeze_encoder: bool,
    /// Where the frozen encoder's features are cached.
    pub feature_cache: PathBuf,
    /// Class weights from a file (CSV `class,weight` or a JSON object) instead of the counts.
    pub class_weights: Option<PathBuf>,
    /// The exponent γ of the class weights from the counts, (N / (K n_c))^γ renormalised
    /// (None: 1, and 0.5 for GHM-CS).
    pub class_weight_gamma: Option<f64>,
    /// GHM-CS's class similarity.
    pub similarity: Option<Similarity>,
    pub settings: TrainSettings,
    /// The run folder: checkpoint/, best/, log.jsonl, confusion matrix, report.
    pub out: PathBuf,
    /// Continue from out/checkpoint (same settings required).
    pub resume: bool,
    /// Replace the run `out` holds (`--overwrite`).
    pub overwrite: bool,
    /// `out` is the default: take the first new or empty folder of out, out-2, out-3, ...
    pub numbered_out: bool,
    /// Checkpoint every N optimizer steps (0: at each epoch's end only).
    pub checkpoint_every: u64,
    pub log_every: u64,
    /// Stop after this many epochs without a better dev metric.
    pub patience: Option<usize>,
    /// The dev metric that picks the best epoch and drives early stopping.
    pub metric: Metric,
    /// Also evaluate on the dev set every N steps (0: per epoch only).
    pub eval_every: u64,
    /// No progress bar.
    pub quiet: bool,
    /// Return right after this step, as if killed (tests of --resume).
    pub stop_after_steps: Option<u64>,
    /// Plan the encoder's memory for this budget (`--memory-budget`); None: unlimited.
    pub memory: Option<MemoryBudget>,
    /// Store the encoder's kept activations in fp16 (`--saved-activations fp16`).
    pub fp16_activations: bool,
}

/// A device memory budget and the part of it that is not the engine's (CUDA context).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBudget {
    pub budget: usize,
    pub reserve: usize,
}

/// Where GHM-CS's class similarity comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum Similarity {
    /// A K x K matrix: CSV with class names on both axes, or JSON {"classes", "matrix"}.
    Matrix(PathBuf),
    /// A knowledge-network edge list `a,b,w`; unlinked pairs get the best path's product.
    Edges(PathBuf),
}

impl TrainOptions {
    /// What the run does with its `out` folder.
    pub fn start(&self) -> Start {
        match (self.resume, self.overwrite, self.numbered_out) {
            (true, _, _) => Start::Resume,
            (_, true, _) => Start::Overwrite,
            (_, _, true) => Start::Numbered,
            _ => Start::Fresh,
        }
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            train: None,
            dev: None,
            dev_fraction: 0.2,
            read: ReadOptions::default(),
            encoder: None,
            head: HeadKind::Paper,
            loss: LossKind::WeightedCrossEntropy,
            max_len: 64,
            buckets: 1 << 16,
            long_text: LongText::Head,
            ghm_warmup_epochs: 1,
            chunk_pool: Pool::Mean,
            synthetic_long: false,
            embedding_dim: 64,
            filters: 64,
            rnn_hidden: 64,
            dropout: 0.2,
            synthetic_scale: 0.5,
            freeze_encoder: false,
            feature_cache: PathBuf::from("runs/feature-cache"),
            class_weights: None,
            class_weight_gamma: None,
            similarity: None,
            settings: TrainSettings {
                lr: 3e-3,
                ..TrainSettings::default()
            },
            out: PathBuf::from("runs/train"),
            resume: false,
            overwrite: false,
            numbered_out: false,
            checkpoint_every: 0,
            log_every: 50,
            patience: None,
            metric: Metric::MacroF1,
            eval_every: 0,
            quiet: false,
            memory: None,
            stop_after_steps: None,
            fp16_activations: false,
        }
    }
}

/// A head's default learning rate: 3e-3, and 2e-2 for `bag`, whose embedding rows each see a
/// gradient only when their n-gram occurs (synthetic set, 5 epochs: dev macro-F1 0.864 at
/// 2e-2, 0.199 after 3 epochs at 3e-3).
pub fn default_lr(head: HeadKind) -> f64 {
    match head {
        HeadKind::Bag => 2e-2,
        _ => 3e-3,
    }
}

/// The model part of the options, as a run folder keeps it.
pub fn model_spec(o: &TrainOptions) -> ModelSpec {
    ModelSpec {
        encoder: o.encoder.clone(),
        head: o.head.name().to_string(),
        loss: o.loss.name().to_string(),
        embedding_dim: o.embedding_dim,
        filters: o.filters,
        rnn_hidden: o.rnn_hidden,
        dropout: o.dropout,
        max_len: o.max_len,
        frozen: o.freeze_encoder,
        buckets: if o.head == HeadKind::Bag {
            o.buckets
        } else {
            0
        },
        long_text: o.long_text.name().to_string(),
        max_chunks: match o.long_text {
            LongText::Chunks { max } => max,
            _ => 0,
        },
        chunk_pool: chunk_pool_name(o.chunk_pool).to_string(),
    }
}

/// Everything a pretraining run is told.
#[derive(Clone, Debug)]
pub struct PretrainOptions {
    /// A folder with config.json, the weights and the tokenizer (vocab.txt or tokenizer.json);
    /// with `from_scratch`, config.json and the tokenizer only.
    pub encoder: PathBuf,
    /// Start from random weights (`--config`) instead of the folder's.
    pub from_scratch: bool,
    pub texts: Vec<PathBuf>,
    pub out: PathBuf,
    pub max_len: usize,
    pub grouping: Grouping,
    pub mask_terms: Option<PathBuf>,
    /// Whole words (and terms) or single tokens as masking's unit.
    pub mask_unit: MaskUnit,
    pub rule: MaskingRule,
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f64,
    pub warmup_ratio: f64,
    pub weight_decay: f64,
    pub clip: Option<f64>,
    /// Fraction of the sequences held out for perplexity (at least one sequence).
    pub eval_fraction: f64,
    pub seed: u64,
    /// Micro-batches of `batch_size` per optimizer step.
    pub accumulate: usize,
    /// fp32 or 8-bit AdamW moments.
    pub optimizer: crate::train::optim::OptimizerKind,
    /// The encoder's kept activations stored in fp16.
    pub fp16_activations: bool,
    /// The device memory to plan the run into (None: no plan, as `train`).
    pub memory: Option<MemoryBudget>,
    /// Continue the run in `out` from its checkpoint.
    pub resume: bool,
    /// Replace the run `out` holds.
    pub overwrite: bool,
    /// Also checkpoint every N optimizer steps (0: at each epoch's end only).
    pub checkpoint_every: u64,
    /// Also measure the held-out perplexity every N optimizer steps (0: per epoch only).
    pub eval_every: u64,
    /// A log.jsonl line every N steps.
    pub log_every: u64,
    /// No progress bar.
    pub quiet: bool,
    /// Stop right after this optimizer step, as a kill would (tests of --resume).
    pub stop_after_steps: Option<u64>,
}

impl PretrainOptions {
    /// How the run folder is claimed.
    pub fn start(&self) -> Start {
        match (self.resume, self.overwrite) {
            (true, _) => Start::Resume,
            (_, true) => Start::Overwrite,
            _ => Start::Fresh,
        }
    }
}
