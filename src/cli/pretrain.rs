//! `emrclass pretrain`: masked-language-model pretraining of a BERT encoder on one's own records.

use std::path::PathBuf;

use emrclass::data::masking::{Grouping, MaskUnit, MaskingRule};
use emrclass::jobs::pretrain;
use emrclass::options::PretrainOptions;
use emrclass::settings::Checks;
use emrclass::{hub, settings, Result};

use super::common::{catch_signals, GlobalArgs, SavedActivations};

/// Continue pretraining a BERT encoder (e.g. MC-BERT) on unlabelled records with BERT's masked
/// language model, masking whole words (jieba) and whole medical terms (--mask-terms); writes
/// RUN/encoder/, which `train --encoder` fine-tunes from.
#[derive(clap::Args)]
pub struct Args {
    /// The encoder to start from: a folder (config.json, weights, vocab.txt or tokenizer.json)
    /// or hf:owner/name[@revision]. Its MLM head (cls.predictions.*) is loaded when present.
    #[arg(long, required_unless_present = "config", conflicts_with = "config")]
    encoder: Option<PathBuf>,
    /// Pretrain from scratch instead: a folder with config.json (the shape) and the tokenizer
    /// (vocab.txt or tokenizer.json); the weights start at transformers' initialisation.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Record files: JSON lines (strings or objects with a "text" field; other fields, labels
    /// included, are ignored) when the name ends in .jsonl, else one record per line.
    #[arg(long, required = true, num_args = 1..)]
    text: Vec<PathBuf>,
    /// The run folder to create (new or empty; never overwritten).
    #[arg(long)]
    out: PathBuf,
    /// Sequence length in tokens, [CLS] and [SEP] included.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// One record per sequence (cut at --max-len), instead of records joined and cut into
    /// --max-len blocks.
    #[arg(long)]
    line_by_line: bool,
    /// Medical terms, one per line, masked as units (before the segmenter's words).
    #[arg(long)]
    mask_terms: Option<PathBuf>,
    /// What masking picks: whole words (jieba, and --mask-terms first), as MC-BERT and Chinese
    /// BERT-wwm; or single tokens, as BERT and transformers' run_mlm.py.
    #[arg(long, value_enum, default_value_t = MaskUnitArg::Word)]
    mask_unit: MaskUnitArg,
    /// Fraction of the tokens to predict.
    #[arg(long, default_value_t = 0.15)]
    mask_rate: f64,
    /// Passes over the training sequences (new masks each). 0 writes the starting encoder as
    /// it is, with its held-out perplexity: the baseline a pretrained one is compared with.
    #[arg(long, default_value_t = 1)]
    epochs: usize,
    /// Sequences per optimizer step.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
    /// Peak learning rate (linear warm-up, then linear decay to 0).
    #[arg(long, default_value_t = 5e-5)]
    lr: f64,
    /// Fraction of the steps over which the learning rate warms up from 0.
    #[arg(long, default_value_t = 0.0)]
    warmup_ratio: f64,
    /// AdamW weight decay (none on biases and LayerNorm weights).
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Clip the gradients' global norm to this (0: no clipping).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Fraction of the sequences held out for perplexity.
    #[arg(long, default_value_t = 0.05)]
    eval_fraction: f64,
    /// Also measure the held-out perplexity every N optimizer steps (0: per epoch only).
    #[arg(long, default_value_t = 0)]
    eval_every: u64,
    /// Gradient accumulation: micro-batches of --batch-size per optimizer step.
    #[arg(long, default_value_t = 1)]
    accumulate: usize,
    /// adamw (fp32 moments), adamw8bit (block-wise 8-bit moments; tensors under 4096 elements
    /// and embedding tables keep fp32 moments) or adamw8bit-all (embedding tables in 8 bits too).
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// How the encoder's kept activations are stored for backward: fp32, or fp16 (half the
    /// bytes; fp32 arithmetic).
    #[arg(long, value_enum, default_value_t = SavedActivations::Fp32)]
    saved_activations: SavedActivations,
    /// Continue the run in --out from its latest checkpoint (the same settings are required,
    /// except a larger --epochs, which extends a run).
    #[arg(long, conflicts_with = "overwrite")]
    resume: bool,
    /// Replace the run --out holds. Refused when the folder holds anything a run did not write.
    #[arg(long)]
    overwrite: bool,
    /// Also checkpoint every N optimizer steps (0: at each epoch's end only).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// A log.jsonl line every N steps.
    #[arg(long, default_value_t = 10)]
    log_every: u64,
    /// No progress bar (log lines and evaluations only).
    #[arg(long)]
    quiet: bool,
    /// Stop right after this optimizer step, as a kill would (for testing --resume).
    #[arg(long, hide = true)]
    stop_after_steps: Option<u64>,
}

/// `--mask-unit`.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum MaskUnitArg {
    /// Whole words.
    Word,
    /// Single tokens.
    Token,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    let (folder, from_scratch) = match (&a.encoder, &a.config) {
        (Some(e), _) => (e.clone(), false),
        (None, Some(c)) => (c.clone(), true),
        (None, None) => unreachable!("clap requires --encoder or --config"),
    };
    let mut names = Checks::new();
    let optimizer = names.parse("--optimizer", &a.optimizer);
    names.finish()?;
    let mut options = PretrainOptions {
        encoder: folder.clone(),
        from_scratch,
        texts: a.text.clone(),
        out: a.out.clone(),
        max_len: a.max_len,
        grouping: if a.line_by_line {
            Grouping::LineByLine
        } else {
            Grouping::Blocks
        },
        mask_terms: a.mask_terms.clone(),
        mask_unit: match a.mask_unit {
            MaskUnitArg::Word => MaskUnit::Word,
            MaskUnitArg::Token => MaskUnit::Token,
        },
        rule: MaskingRule {
            rate: a.mask_rate,
            ..MaskingRule::default()
        },
        epochs: a.epochs,
        batch_size: a.batch_size,
        lr: a.lr,
        warmup_ratio: a.warmup_ratio,
        weight_decay: a.weight_decay,
        clip: (a.clip != 0.0).then_some(a.clip),
        eval_fraction: a.eval_fraction,
        // Fixed unless given, so a run repeats (and resumes) by default, as `train`'s.
        seed: global.seed.unwrap_or(1),
        accumulate: a.accumulate,
        optimizer: optimizer.expect("finish() refuses a name that did not parse"),
        fp16_activations: a.saved_activations == SavedActivations::Fp16,
        memory: None,
        resume: a.resume,
        overwrite: a.overwrite,
        checkpoint_every: a.checkpoint_every,
        eval_every: a.eval_every,
        log_every: a.log_every,
        quiet: a.quiet,
        stop_after_steps: a.stop_after_steps,
    };
    settings::check_pretrain(&options)?;
    if !from_scratch {
        options.encoder = hub::model_folder(&folder, hub::Need::Everything)?;
    }
    let prepared = pretrain::prepare(&options)?;
    catch_signals()?;
    let dev = global.open_device(options.seed)?;
    options.memory = global.memory_budget(&dev)?;
    pretrain::run(&dev, &options, prepared)?;
    Ok(true)
}
