//! `emrclass pretrain` end to end: a hospital's own records (unlabelled) through masked-language-
//! model pretraining of a BERT encoder, as MC-BERT was made: whole words and listed medical terms
//! masked (data::masking), the MLM head on the masked rows only (model::masked_lm), AdamW with
//! warm-up and linear decay and gradient clipping, a held-out split evaluated every epoch
//! (perplexity), and the encoder written where `train --encoder` reads it.
//!
//! The run folder (`--out`, claimed as `train` claims its own: never shared, never overwritten):
//!   encoder/   config.json, model.safetensors (the encoder under BertModel's names and the
//!              head under cls.predictions.*), the tokenizer files: `train --encoder RUN/encoder`
//!              fine-tunes from it, and `pretrain --encoder RUN/encoder` continues it.
//!   log.jsonl  a line per step (loss, lr, gradient norm) and per evaluation (held-out loss,
//!              perplexity); run.json: the settings.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::data::batching::bucketed_batches;
use crate::data::masking::{
    group_records, masked_batch, word_records, Grouping, MaskTokens, WordSegmenter, WordSequence,
};
use crate::data::tokenizer::BertTokenizer;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::masked_lm::MaskedLm;
use crate::ops::AdamW;
use crate::options::PretrainOptions;
use crate::rng::Rng;
use crate::say;
use crate::train::folder_lock::{FolderLock, Start};
use crate::train::optim::{Optimizer, Schedule};
use crate::weights;

/// The records of every text file, each file read as `encode` reads texts (JSON lines with a
/// "text" field or strings, else one record per line); empty records dropped.
fn read_records(files: &[PathBuf]) -> Result<Vec<String>> {
    let mut records = Vec::new();
    for f in files {
        let before = records.len();
        records.extend(
            crate::encode::read_texts(f)?
                .into_iter()
                .filter(|t| !t.trim().is_empty()),
        );
        if records.len() == before {
            return Err(Error::Invalid(format!(
                "{}: no records (every line empty)",
                f.display()
            )));
        }
    }
    Ok(records)
}

/// The tokenizer files of an encoder folder, copied beside the pretrained weights.
const TOKENIZER_FILES: [&str; 4] = [
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
];

/// Writes the encoder folder: config.json and the tokenizer copied from `from`, the weights
/// (encoder and head) atomically.
fn save_encoder(model: &MaskedLm, from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to).map_err(|e| Error::io(to, e))?;
    for name in ["config.json"].iter().chain(TOKENIZER_FILES.iter()) {
        let src = from.join(name);
        if src.exists() {
            let bytes = std::fs::read(&src).map_err(|e| Error::io(&src, e))?;
            weights::write_atomically(&to.join(name), &bytes)?;
        }
    }
    let mut host: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for p in &model.encoder.params {
        host.push((p.name.clone(), p.shape.clone(), p.value.to_host()?));
    }
    for (name, shape, buffer) in model.head.named_values() {
        host.push((name.to_string(), shape, buffer.to_host()?));
    }
    let tensors: Vec<(&str, Vec<usize>, &[f32])> = host
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    weights::write_tensors(&to.join("model.safetensors"), &tensors)
}

struct Log {
    file: std::fs::File,
    path: PathBuf,
}

impl Log {
    fn line(&mut self, v: serde_json::Value) -> Result<()> {
        writeln!(self.file, "{v}").map_err(|e| Error::io(&self.path, e))
    }
}

/// Held-out perplexity: exp of the mean cross-entropy over every masked token of `eval`,
/// masked once with the run's seed (epoch 0's masks), so that every evaluation sees the same.
fn perplexity(
    model: &mut MaskedLm,
    eval: &[(usize, &WordSequence)],
    o: &PretrainOptions,
    tokens: &MaskTokens,
    pad: i32,
) -> Result<f64> {
    let (mut sum, mut count) = (0.0f64, 0usize);
    for chunk in eval.chunks(o.batch_size) {
        let b = masked_batch(chunk, o.seed, 0, &o.rule, tokens, pad);
        if b.positions.is_empty() {
            continue;
        }
        let loss = model.eval_loss(&b)? as f64;
        sum += loss * b.positions.len() as f64;
        count += b.positions.len();
    }
    if count == 0 {
        return Err(Error::Invalid(
            "the held-out sequences hold no maskable token".into(),
        ));
    }
    Ok((sum / count as f64).exp())
}

/// What `prepare` read and checked on the host, before any device opens.
pub struct Prepared {
    tokens: MaskTokens,
    pad: i32,
    records: usize,
    sequences: Vec<WordSequence>,
}

/// Reads the encoder's config.json and tokenizer, the term list and the records, and refuses
/// what cannot work (a --max-len past the encoder's positions, a vocabulary it lacks rows for,
/// an empty file): all before a device opens or the run folder is claimed. The flags alone are
/// `settings::check_pretrain`'s.
pub fn prepare(o: &PretrainOptions) -> Result<Prepared> {
    let config = crate::model::bert::BertConfig::from_file(&o.encoder.join("config.json"))?;
    if o.max_len > config.max_position_embeddings {
        return Err(Error::Invalid(format!(
            "--max-len {}: the encoder reads at most {} positions (max_position_embeddings in {})",
            o.max_len,
            config.max_position_embeddings,
            o.encoder.join("config.json").display()
        )));
    }
    let tokenizer = BertTokenizer::from_dir(&o.encoder)?;
    // Every id the tokenizer makes must have a row in the embeddings (a model's table may be
    // larger than its vocabulary, padded to a round size; never smaller).
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(Error::Invalid(format!(
            "{}: the tokenizer has {} tokens but config.json's vocab_size is {}: not this \
             encoder's vocabulary",
            o.encoder.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let segmenter = match &o.mask_terms {
        Some(path) => WordSegmenter::from_term_file(path)?,
        None => WordSegmenter::new(&[])?,
    };
    let tokens = MaskTokens::from_tokenizer(&tokenizer)?;
    let id = |t: &str| {
        tokenizer.token_id(t).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: the vocabulary has no {t}",
                o.encoder.display()
            ))
        })
    };
    let (cls, sep, pad) = (id("[CLS]")?, id("[SEP]")?, id("[PAD]")?);
    let records = read_records(&o.texts)?;
    // Records to sequences; words numbered across records so none merges with the next.
    let words = word_records(&tokenizer, &segmenter, &records)?;
    let sequences = group_records(&words, o.max_len, o.grouping, cls, sep);
    if sequences.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} sequence(s) of up to {} tokens from {} records: at least 2 are needed (one held out)",
            sequences.len(),
            o.max_len,
            records.len()
        )));
    }
    Ok(Prepared {
        tokens,
        pad,
        records: records.len(),
        sequences,
    })
}

/// Pretrains and writes the run folder; the held-out perplexity is in its log.jsonl.
pub fn run(dev: &Device, o: &PretrainOptions, p: Prepared) -> Result<()> {
    let Prepared {
        tokens,
        pad,
        records,
        sequences,
    } = p;
    let mut rng = Rng::new(o.seed);
    let (mut model, fresh_head) = if o.from_scratch {
        let config = crate::model::bert::BertConfig::from_file(&o.encoder.join("config.json"))?;
        (MaskedLm::new(dev, config, &mut rng)?, true)
    } else {
        let loaded = MaskedLm::load_dir(dev, &o.encoder, &mut rng)?;
        (loaded.model, loaded.head_was_fresh)
    };
    let lock = FolderLock::claim(&o.out, Start::Fresh, "--out")?;
    if fresh_head && !o.from_scratch {
        say!(
            "{}: no MLM head (cls.predictions.*) in the weights: a fresh one is trained",
            o.encoder.display()
        );
    }

    // A fixed shuffle of the sequence indices, then the held-out share from its end.
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    Rng::new(o.seed ^ 0x5eed).shuffle(&mut order);
    let held =
        ((sequences.len() as f64 * o.eval_fraction).round() as usize).clamp(1, sequences.len() - 1);
    let eval_ids = order.split_off(order.len() - held);
    let train_ids = order;
    let eval: Vec<(usize, &WordSequence)> = eval_ids.iter().map(|&i| (i, &sequences[i])).collect();

    let steps_per_epoch = train_ids.len().div_ceil(o.batch_size);
    let total = (steps_per_epoch * o.epochs) as u64;
    let schedule = Schedule {
        peak: o.lr,
        warmup: (o.warmup_ratio * total as f64).ceil() as u64,
        total,
    };
    let mut opt = Optimizer::new(AdamW {
        lr: o.lr as f32,
        weight_decay: o.weight_decay as f32,
        ..AdamW::default()
    });
    let log_path = lock.dir.join("log.jsonl");
    let mut log = Log {
        file: std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?,
        path: log_path,
    };
    let settings = serde_json::json!({
        "command": "pretrain",
        "encoder": o.encoder, "texts": o.texts, "max_len": o.max_len,
        "line_by_line": o.grouping == Grouping::LineByLine, "mask_terms": o.mask_terms,
        "mask_rate": o.rule.rate, "epochs": o.epochs, "batch_size": o.batch_size, "lr": o.lr,
        "warmup_ratio": o.warmup_ratio, "weight_decay": o.weight_decay, "clip": o.clip,
        "eval_fraction": o.eval_fraction, "seed": o.seed, "records": records,
        "sequences": {"train": train_ids.len(), "held_out": eval.len()},
        "fresh_head": fresh_head, "from_scratch": o.from_scratch,
    });
    weights::write_atomically(
        &lock.dir.join("run.json"),
        format!("{settings:#}\n").as_bytes(),
    )?;
    say!(
        "pretraining on {} records: {} sequences of up to {} tokens ({} held out), {} steps",
        records,
        sequences.len(),
        o.max_len,
        eval.len(),
        total
    );

    let before = perplexity(&mut model, &eval, o, &tokens, pad)?;
    log.line(serde_json::json!({"epoch": 0, "step": 0, "eval_perplexity": before}))?;
    say!("epoch 0: held-out perplexity {before:.2}");
    let mut step = 0u64;
    for epoch in 1..=o.epochs {
        // The trainer's batching: sequences of like length together (little padding), the
        // batches in a new order every epoch; new masks too (the epoch is in each mask's seed).
        let lengths: Vec<usize> = train_ids.iter().map(|&i| sequences[i].ids.len()).collect();
        for chunk in bucketed_batches(&lengths, o.batch_size, o.seed, epoch as u64) {
            let pairs: Vec<(usize, &WordSequence)> = chunk
                .iter()
                .map(|&k| (train_ids[k], &sequences[train_ids[k]]))
                .collect();
            let batch = masked_batch(&pairs, o.seed, epoch as u64, &o.rule, &tokens, pad);
            if batch.positions.is_empty() {
                continue; // sequences too short to mask: nothing to learn from them
            }
            step += 1;
            let lr = schedule.lr(step);
            let dropout_seed = o.seed ^ step.wrapping_mul(0x2545_f491_4f6c_dd1d);
            let loss = model.forward_backward(&batch, Some(dropout_seed))?;
            let norm = opt.step(&mut model.slots(), lr as f32, o.clip.map(|c| c as f32))?;
            log.line(serde_json::json!({
                "epoch": epoch, "step": step, "loss": loss, "lr": lr, "grad_norm": norm,
                "masked_tokens": batch.positions.len(),
            }))?;
        }
        let ppl = perplexity(&mut model, &eval, o, &tokens, pad)?;
        log.line(serde_json::json!({"epoch": epoch, "step": step, "eval_perplexity": ppl}))?;
        say!("epoch {epoch}: held-out perplexity {ppl:.2}");
    }
    let encoder_dir = lock.dir.join("encoder");
    save_encoder(&model, &o.encoder, &encoder_dir)?;
    say!("wrote {}", encoder_dir.display());
    Ok(())
}
