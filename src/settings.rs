//! The rules a command's settings must meet, in one place. Every command (`train`, `experiment`,
//! `plan`, `eval`, `predict`, `bench`, `encode`) checks its flags here before any work — no data
//! read, no device opened, no file written — and a refusal names each flag, its value and what
//! is valid, all problems at once. The data rules (classes, a non-empty dev set) run right after
//! the data is read, before the run folder is written. The README's "What is validated" lists
//! the same rules.

use std::fmt::Display;

use crate::data::batching::LongText;
use crate::data::dataset::Example;
use crate::device::parse_bytes;
use crate::error::{Error, Result};
use crate::model::bert::BertConfig;
use crate::model::heads::HeadKind;
use crate::options::{PretrainOptions, TrainOptions};
use crate::train::folder_lock;

/// The widest Text-CNN window (widths 2, 3, 4): a shorter --max-len leaves that width nothing to
/// slide over.
pub const WIDEST_TEXTCNN_WINDOW: usize = 4;

/// The shortest useful --max-len: [CLS], one token of text, [SEP].
pub const SHORTEST_SEQUENCE: usize = 3;

/// The problems found so far; `finish` turns them into one error.
#[derive(Default)]
pub struct Checks {
    problems: Vec<String>,
}

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// A problem in the user's words: `--flag value: what is valid`.
    pub fn refuse(&mut self, flag: &str, value: impl Display, valid: &str) {
        self.problems.push(format!("{flag} {value}: {valid}"));
    }

    /// A count: at least 1.
    pub fn count(&mut self, flag: &str, value: usize) {
        self.at_least(flag, value, 1, "");
    }

    /// A list of counts: not empty, each at least 1.
    pub fn counts(&mut self, flag: &str, values: &[usize]) {
        if values.is_empty() {
            self.refuse(flag, "(none)", "give at least one value");
        }
        for &v in values {
            self.count(flag, v);
        }
    }

    /// At least `min`; `why` (may be empty) says where the bound comes from.
    pub fn at_least(&mut self, flag: &str, value: usize, min: usize, why: &str) {
        if value < min {
            let why = if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            };
            self.refuse(flag, value, &format!("must be at least {min}{why}"));
        }
    }

    /// A rate or scale: finite and > 0.
    pub fn positive(&mut self, flag: &str, value: f64) {
        if !(value.is_finite() && value > 0.0) {
            self.refuse(flag, value, "must be a finite number > 0");
        }
    }

    /// Finite and ≥ 0.
    pub fn non_negative(&mut self, flag: &str, value: f64) {
        if !(value.is_finite() && value >= 0.0) {
            self.refuse(flag, value, "must be a finite number ≥ 0");
        }
    }

    /// A fraction in [lo, hi) (`closed_low`) or (lo, hi).
    pub fn fraction(&mut self, flag: &str, value: f64, closed_low: bool, lo: f64, hi: f64) {
        let above = if closed_low { value >= lo } else { value > lo };
        if !(above && value < hi) {
            let open = if closed_low { '[' } else { '(' };
            self.refuse(flag, value, &format!("must be in {open}{lo}, {hi})"));
        }
    }

    /// A field or column name: not empty.
    pub fn name(&mut self, flag: &str, value: &str) {
        if value.trim().is_empty() {
            self.refuse(flag, format!("{value:?}"), "must name a field");
        }
    }

    /// A byte size such as 4GiB; None when it does not parse (the problem is kept).
    pub fn bytes(&mut self, flag: &str, value: &str) -> Option<usize> {
        match parse_bytes(value) {
            Ok(b) => Some(b),
            Err(e) => {
                self.problems.push(format!("{flag}: {e}"));
                None
            }
        }
    }

    /// A parsed value (a head or metric name); None when it does not parse (the problem is kept).
    pub fn parse<T: std::str::FromStr<Err = Error>>(
        &mut self,
        flag: &str,
        value: &str,
    ) -> Option<T> {
        match value.parse() {
            Ok(v) => Some(v),
            Err(e) => {
                self.problems.push(format!("{flag} {value}: {e}"));
                None
            }
        }
    }

    /// Any other rule: a whole sentence when `ok` is false.
    pub fn require(&mut self, ok: bool, problem: impl Into<String>) {
        if !ok {
            self.problems.push(problem.into());
        }
    }

    /// Ok, or one error listing every problem.
    pub fn finish(self) -> Result<()> {
        match self.problems.len() {
            0 => Ok(()),
            1 => Err(Error::Invalid(self.problems[0].clone())),
            n => Err(Error::Invalid(format!(
                "{n} settings are invalid:\n  {}",
                self.problems.join("\n  ")
            ))),
        }
    }
}

/// --memory-budget and --context-reserve as (budget, reserve); no budget: None.
pub fn memory_flags(budget: Option<&str>, reserve: &str) -> Result<Option<(usize, usize)>> {
    let mut c = Checks::new();
    let r = c.bytes("--context-reserve", reserve);
    let b = budget.and_then(|b| c.bytes("--memory-budget", b));
    if let (Some(text), Some(b), Some(r)) = (budget, b, r) {
        c.require(
            r < b,
            format!(
                "--memory-budget {text} leaves nothing after --context-reserve {reserve}: the budget must be larger"
            ),
        );
    }
    c.finish()?;
    Ok(b.zip(r))
}

/// Whether a head runs Text-CNN over the token states.
pub fn uses_textcnn(head: HeadKind) -> bool {
    matches!(
        head,
        HeadKind::TextCnn | HeadKind::TextCnnBiGru | HeadKind::Paper
    )
}

/// The sequence-length rule of the heads in use: [CLS] + a token + [SEP], and the widest
/// Text-CNN window where a head uses Text-CNN.
pub fn sequence_length(c: &mut Checks, flag: &str, value: usize, heads: &[HeadKind]) {
    match heads.iter().find(|&&h| uses_textcnn(h)) {
        Some(h) => c.at_least(
            flag,
            value,
            WIDEST_TEXTCNN_WINDOW.max(SHORTEST_SEQUENCE),
            &format!("the {} head's widest Text-CNN window", h.name()),
        ),
        None => c.at_least(flag, value, SHORTEST_SEQUENCE, "[CLS], a token and [SEP]"),
    }
}

/// The head and its model sizes: the rules `train` and `plan` share.
pub fn head_sizes(c: &mut Checks, heads: &[HeadKind], filters: usize, rnn_hidden: usize) {
    if heads.iter().any(|&h| uses_textcnn(h)) {
        c.count("--filters", filters);
    }
    let recurrent = |h: HeadKind| !matches!(h, HeadKind::Cls | HeadKind::TextCnn | HeadKind::Bag);
    if heads.iter().any(|&h| recurrent(h)) {
        c.count("--rnn-hidden", rnn_hidden);
    }
}

/// `train` (and each run of `experiment`, with its list of heads): every flag, before any work.
pub fn check_train(o: &TrainOptions, heads: &[HeadKind]) -> Result<()> {
    let mut c = Checks::new();
    let s = &o.settings;
    c.count("--epochs", s.epochs);
    c.count("--batch-size", s.batch_size);
    c.count("--accumulate", s.accumulate);
    c.positive("--lr", s.lr);
    c.non_negative("--input-lr-scale", s.input_lr_scale as f64);
    c.non_negative("--weight-decay", s.weight_decay as f64);
    let shrink = s.lr * s.weight_decay as f64 * (s.input_lr_scale as f64).max(1.0);
    c.require(
        shrink < 1.0 || shrink.is_nan(), // NaN: refused above
        format!(
            "--weight-decay {} with --lr {} (x --input-lr-scale {}): a step multiplies the weights by 1 - lr x decay, which must stay above 0",
            s.weight_decay, s.lr, s.input_lr_scale
        ),
    );
    if let Some(g) = o.class_weight_gamma {
        c.non_negative("--class-weight-gamma", g);
        c.require(
            o.class_weights.is_none(),
            "--class-weight-gamma shapes the weights from the counts: give it or --class-weights, not both",
        );
    }
    c.fraction("--dropout", o.dropout as f64, true, 0.0, 1.0);
    sequence_length(&mut c, "--max-len", o.max_len, heads);
    head_sizes(&mut c, heads, o.filters, o.rnn_hidden);
    if heads.contains(&HeadKind::Bag) {
        c.count("--buckets", o.buckets);
        // In a grid with other heads, the bag cells read whole records and the others cut.
        c.require(
            heads.iter().any(|&h| h != HeadKind::Bag) || o.long_text == LongText::Head,
            "--head bag reads every n-gram of the whole record: --long-text does not apply, drop it",
        );
        c.require(
            o.encoder.is_none(),
            "--head bag is its own input path (hashed character n-grams): drop --encoder",
        );
    }
    c.require(
        !o.fp16_activations || (o.encoder.is_some() && !o.freeze_encoder),
        "--saved-activations fp16 stores a fine-tuned encoder's activations: give --encoder (not frozen), or drop it",
    );
    if o.encoder.is_none() {
        c.count("--embedding-dim", o.embedding_dim);
        for &h in heads {
            c.require(
                h != HeadKind::Cls,
                "--head cls reads an encoder's pooled [CLS]: give --encoder, or use textcnn, bigru, bilstm, textcnn-bigru or paper",
            );
        }
    }
    if o.train.is_none() {
        c.positive("--synthetic-scale", o.synthetic_scale);
    }
    if o.dev.is_none() {
        c.fraction("--dev-fraction", o.dev_fraction, false, 0.0, 1.0);
    }
    c.name("--text-field", &o.read.text_field);
    c.name("--label-field", &o.read.label_field);
    c.count("--log-every", o.log_every as usize);
    if let Some(p) = o.patience {
        c.count("--patience", p);
    }
    if let Some(n) = o.stop_after_steps {
        c.count("--stop-after-steps", n as usize);
    }
    c.finish()?;
    // The folder last: flags first, then what --out holds.
    check_out(o.out.as_path(), o.start())
}

/// What --out holds, looked at by the process that writes it: in a data-parallel world rank 0
/// (the others never touch it, and would see rank 0's own lock).
fn check_out(out: &std::path::Path, start: folder_lock::Start) -> Result<()> {
    match crate::distributed::World::from_env()? {
        Some(w) if w.rank > 0 => Ok(()),
        _ => folder_lock::check(out, start, "--out"),
    }
}

/// `train --resume`: the folder holds a checkpoint to continue from.
pub fn check_resumable(o: &TrainOptions) -> Result<()> {
    if o.resume && !o.out.join("checkpoint").join("state.json").exists() {
        return Err(Error::Invalid(format!(
            "--resume: {} holds no checkpoint to continue from (its run ended before the first one): start it again with --overwrite",
            o.out.display()
        )));
    }
    Ok(())
}

/// What the --encoder checkpoint can read: --max-len tokens (each window's, under --long-text
/// chunks) within its `max_position_embeddings`. Checked before the data is read.
pub fn check_encoder_limits(o: &TrainOptions) -> Result<()> {
    let Some(dir) = &o.encoder else {
        return Ok(());
    };
    let config = BertConfig::from_file(&dir.join("config.json"))?;
    let mut c = Checks::new();
    c.require(
        o.max_len <= config.max_position_embeddings,
        format!(
            "--max-len {}: the encoder reads at most {} positions (max_position_embeddings in {}); give --max-len {} or less{}",
            o.max_len,
            config.max_position_embeddings,
            dir.join("config.json").display(),
            config.max_position_embeddings,
            if matches!(o.long_text, LongText::Chunks { .. }) {
                ""
            } else {
                ", and --long-text chunks to read longer records whole"
            }
        ),
    );
    c.finish()
}

/// The data rules, right after reading: at least two classes, a dev set with at least one
/// record; a warning (on stderr) naming the classes with no dev record.
pub fn check_data(
    o: &TrainOptions,
    train: &[Example],
    dev: &[Example],
    train_source: &str,
) -> Result<()> {
    let mut classes: Vec<&str> = train.iter().map(|e| e.label.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    if classes.len() < 2 {
        return Err(Error::Invalid(format!(
            "{train_source}: {} training record{} of {} class{} ({}): a classifier needs at least two classes",
            train.len(),
            if train.len() == 1 { "" } else { "s" },
            classes.len(),
            if classes.len() == 1 { "" } else { "es" },
            classes.join(", ")
        )));
    }
    if dev.is_empty() {
        return Err(Error::Invalid(match &o.dev {
            Some(path) => format!("{}: the dev file has no records", path.display()),
            None => format!(
                "{train_source}: the dev split is empty: --dev-fraction {} of {} records leaves none (a class needs two records to give one to dev); give --dev FILE or more data",
                o.dev_fraction,
                train.len()
            ),
        }));
    }
    let missing: Vec<&str> = classes
        .iter()
        .filter(|&&k| !dev.iter().any(|e| e.label == k))
        .copied()
        .collect();
    if !missing.is_empty() {
        crate::note!(
            "warning: {} of {} classes have no dev record, so their dev recall and F1 mean nothing: {}",
            missing.len(),
            classes.len(),
            missing.join(", ")
        );
    }
    Ok(())
}

/// `eval` and `predict`: the batch size and the field names.
pub fn check_inference(batch_size: usize, fields: &[(&str, &str)]) -> Result<()> {
    let mut c = Checks::new();
    c.count("--batch-size", batch_size);
    for (flag, value) in fields {
        c.name(flag, value);
    }
    c.finish()
}

/// `pretrain`: every flag, then what --out holds (the encoder's limits are checked once it is
/// at hand, by `jobs::pretrain::prepare`).
pub fn check_pretrain(o: &PretrainOptions) -> Result<()> {
    let mut c = Checks::new();
    c.at_least("--max-len", o.max_len, 3, "[CLS], a token and [SEP]");
    c.fraction("--mask-rate", o.rule.rate, false, 0.0, 1.0);
    c.count("--batch-size", o.batch_size);
    c.positive("--lr", o.lr);
    c.fraction("--warmup-ratio", o.warmup_ratio, true, 0.0, 1.0);
    c.non_negative("--weight-decay", o.weight_decay);
    if let Some(clip) = o.clip {
        c.positive("--clip", clip);
    }
    c.fraction("--eval-fraction", o.eval_fraction, false, 0.0, 1.0);
    c.count("--accumulate", o.accumulate);
    c.count("--log-every", o.log_every as usize);
    c.require(
        o.mask_terms.is_none() || o.mask_unit == crate::data::masking::MaskUnit::Word,
        "--mask-terms masks listed terms as whole units: it needs --mask-unit word",
    );
    c.finish()?;
    check_out(&o.out, o.start())?;
    if o.resume && !o.out.join("checkpoint").join("state.json").exists() {
        return Err(Error::Invalid(format!(
            "--resume: {} holds no checkpoint (a run writes one every --checkpoint-every steps \
             and at each epoch's end): nothing to continue",
            o.out.display()
        )));
    }
    Ok(())
}

/// `encode`: the truncation length.
pub fn check_encode(max_len: usize) -> Result<()> {
    let mut c = Checks::new();
    c.at_least("--max-len", max_len, 2, "[CLS] and [SEP]");
    c.finish()
}
