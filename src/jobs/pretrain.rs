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

use std::path::{Path, PathBuf};

use crate::data::masking::{
    group_records, token_records, word_records, Grouping, MaskTokens, MaskUnit, WordSegmenter,
    WordSequence,
};
use crate::data::tokenizer::BertTokenizer;
use crate::device::Device;
use crate::distributed::{join, Collective, World};
use crate::error::{Error, Result};
use crate::model::bert::{BertConfig, EncoderMemory};
use crate::model::masked_lm::MaskedLm;
use crate::ops::AdamW;
use crate::options::PretrainOptions;
use crate::plan;
use crate::rng::Rng;
use crate::say;
use crate::train::checkpoint;
use crate::train::folder_lock::FolderLock;
use crate::train::optim::Optimizer;
use crate::train::pretraining::{
    pretrain, resume_state, Corpus, LoopSettings, PretrainFolder, PretrainProgress, PretrainState,
};
use crate::train::state::settings_diff;
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
        Some(path) => {
            let segmenter = WordSegmenter::from_term_file(path)?;
            WordSegmenter::check_terms(path, &tokenizer)?;
            segmenter
        }
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
    let words = match o.mask_unit {
        MaskUnit::Word => word_records(&tokenizer, &segmenter, &records)?,
        MaskUnit::Token => token_records(&tokenizer, &records)?,
    };
    let sequences = group_records(&words, o.max_len, o.grouping, cls, sep);
    if sequences.len() < 2 {
        return Err(Error::Invalid(format!(
            "{} sequence(s) of up to {} tokens from {} records (a record with no token the \
             vocabulary reads makes none: too short to mask): at least 2 are needed (one held out)",
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

/// The settings a resumed run must share with the one that wrote the checkpoint (`micro_batch`
/// and `accumulate`: as the memory plan left them, so a resumed run whose budget splits batches
/// differently is refused).
fn fingerprint(o: &PretrainOptions, s: &LoopSettings) -> String {
    format!(
        "texts={:?} encoder={:?} from_scratch={} max_len={} line_by_line={} mask_terms={:?} mask_unit={} mask_rate={} eval_fraction={} epochs={} batch_size={} micro_batch={} accumulate={} lr={} warmup={} weight_decay={} clip={:?} seed={} optimizer={} saved_activations={}",
        o.texts, o.encoder, o.from_scratch, o.max_len, o.grouping == Grouping::LineByLine,
        o.mask_terms, o.mask_unit.name(), o.rule.rate, o.eval_fraction, o.epochs, o.batch_size, s.micro_batch,
        s.accumulate, o.lr, o.warmup_ratio, o.weight_decay, o.clip, o.seed, o.optimizer.name(),
        if o.fp16_activations { "fp16" } else { "fp32" }
    )
}

/// The checkpoint `--resume` continues from, when its settings are this run's (a larger
/// --epochs extends the run: its schedule then decays over the new total), with what to tell
/// the user about it.
fn resumable(o: &PretrainOptions, fingerprint: &str) -> Result<(PretrainState, Option<String>)> {
    let state = resume_state(&o.out)?;
    let changed = settings_diff(&state.fingerprint, fingerprint);
    let grew = |(k, a, b): &(String, String, String)| {
        k == "epochs" && a.parse::<usize>().ok() < b.parse::<usize>().ok()
    };
    match changed.as_slice() {
        [] => Ok((state, None)),
        [one] if grew(one) => {
            let note = format!(
                "extending {} from {} to {} epochs (the learning-rate schedule now decays over {} epochs)",
                o.out.display(),
                one.1,
                one.2,
                one.2
            );
            Ok((state, Some(note)))
        }
        _ => {
            let list: Vec<String> = changed
                .iter()
                .map(|(k, a, b)| format!("{k}: {a} then, {b} now"))
                .collect();
            Err(Error::Invalid(format!(
                "--resume: {} was written with other settings ({}). Resume with the run's own \
                 settings (--epochs may only grow, to extend a run), or start a new run with \
                 another --out (or --overwrite)",
                o.out.join("checkpoint").display(),
                list.join("; ")
            )))
        }
    }
}

/// With a memory budget: the planner's plan for micro-batches of `batch` x `max_len` (the
/// longest a batch can be). Its micro-batches change `s` (same effective batch); the encoder's
/// memory settings are its strategy. A plan that cannot fit is an error saying what is short.
fn plan_memory(
    dev: &Device,
    o: &PretrainOptions,
    config: &BertConfig,
    s: &mut LoopSettings,
) -> Result<(EncoderMemory, Option<plan::Plan>)> {
    let asked = EncoderMemory {
        fp16_activations: o.fp16_activations,
        ..EncoderMemory::default()
    };
    let Some(m) = o.memory else {
        return Ok((asked, None));
    };
    let request = plan::Request {
        budget: m.budget,
        reserve: m.reserve,
        optimizer: o.optimizer,
        fp16_activations: o.fp16_activations,
        multiprocessors: dev.multiprocessors(),
        ..plan::Request::pretraining(config.clone(), s.micro_batch, o.max_len, o.rule.rate)
    };
    let p = plan::plan(&request)?;
    let layers = config.num_hidden_layers;
    let peak = p.measured.peak as f64 / 1048576.0;
    let usable = request.usable() as f64 / 1048576.0;
    if !p.fits {
        return Err(Error::Invalid(format!(
            "batch {} x {} tokens does not fit the memory budget: with {} the peak is {peak:.1} MiB, {:.1} MiB over the engine's {usable:.1} MiB (see `emrclass plan --pretrain`)",
            request.batch,
            request.seq,
            p.strategy.describe(layers, false),
            peak - usable,
        )));
    }
    say!(
        "memory plan: {} (peak {peak:.1} of {usable:.1} MiB)",
        p.strategy.describe(layers, false)
    );
    s.micro_batch = p.strategy.micro_batch;
    s.accumulate *= p.strategy.accumulate;
    Ok((p.strategy.memory, Some(p)))
}

/// Writes the encoder folder into `RUN/encoder` whole: into `encoder.tmp/`, then renamed.
fn save_encoder_whole(model: &MaskedLm, from: &Path, dir: &Path) -> Result<PathBuf> {
    let (tmp, done) = (dir.join("encoder.tmp"), dir.join("encoder"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    save_encoder(model, from, &tmp)?;
    if done.exists() {
        std::fs::remove_dir_all(&done).map_err(|e| Error::io(&done, e))?;
    }
    std::fs::rename(&tmp, &done).map_err(|e| Error::io(&done, e))?;
    Ok(done)
}

/// Pretrains (from the start, or from the checkpoint `--resume` names) and writes the run
/// folder; the held-out perplexity is in its log.jsonl and report.html.
pub fn run(dev: &Device, o: &PretrainOptions, p: Prepared) -> Result<()> {
    let Prepared {
        tokens,
        pad,
        records,
        sequences,
    } = p;
    let config = BertConfig::from_file(&o.encoder.join("config.json"))?;
    let mut s = LoopSettings {
        epochs: o.epochs,
        micro_batch: o.batch_size,
        accumulate: o.accumulate,
        lr: o.lr,
        warmup_ratio: o.warmup_ratio,
        clip: o.clip.map(|c| c as f32),
        seed: o.seed,
        rule: o.rule,
        log_every: o.log_every,
        eval_every: o.eval_every,
        checkpoint_every: o.checkpoint_every,
        stop_after_steps: o.stop_after_steps,
        quiet: o.quiet,
    };
    let world = World::from_env()?;
    let rank = world.as_ref().map_or(0, |w| w.rank);
    if rank > 0 {
        crate::console::mute_stdout();
    }
    let (memory, planned) = plan_memory(dev, o, &config, &mut s)?;
    let fingerprint = fingerprint(o, &s)
        + &match &world {
            // Absent for one process, so runs written before data parallelism resume as they did.
            Some(w) if w.size > 1 => format!(" world_size={}", w.size),
            _ => String::new(),
        };
    // Checked before any write; read again under the folder's lock below.
    if o.resume {
        resumable(o, &fingerprint)?;
    }
    let mut rng = Rng::new(o.seed);
    let (mut model, fresh_head) = if o.from_scratch {
        (MaskedLm::new(dev, config, &mut rng)?, true)
    } else {
        let loaded = MaskedLm::load_dir(dev, &o.encoder, &mut rng)?;
        (loaded.model, loaded.head_was_fresh)
    };
    model.encoder.memory = memory;
    if fresh_head && !o.from_scratch {
        say!(
            "{}: no MLM head (cls.predictions.*) in the weights: a fresh one is trained",
            o.encoder.display()
        );
    }
    // Rank 0 claims the folder and reads what it resumes before the ranks meet (its failures
    // then stop it before the others wait on it); it alone writes the folder.
    let lock = match rank {
        0 => Some(FolderLock::claim(&o.out, o.start(), "--out")?),
        _ => None,
    };
    let resumed = match o.resume {
        true => {
            let (state, note) = resumable(o, &fingerprint)?;
            if let Some(note) = note {
                say!("{note}");
            }
            Some(state)
        }
        false => None,
    };
    let mut collective = match &world {
        Some(w) => Some(join::join_run(w, dev, (s.micro_batch, s.accumulate))?),
        None => None,
    };
    let mut folder = match lock {
        Some(lock) => PretrainFolder::new(lock, resumed.is_some(), fingerprint),
        None => PretrainFolder::of_rank_0(o.out.clone(), fingerprint),
    };
    let out = folder.dir.clone();

    // A fixed shuffle of the sequence indices, then the held-out share from its end.
    let mut order: Vec<usize> = (0..sequences.len()).collect();
    Rng::new(o.seed ^ 0x5eed).shuffle(&mut order);
    let held =
        ((sequences.len() as f64 * o.eval_fraction).round() as usize).clamp(1, sequences.len() - 1);
    let eval_ids = order.split_off(order.len() - held);
    let train_ids = order;
    let eval: Vec<(usize, &WordSequence)> = eval_ids.iter().map(|&i| (i, &sequences[i])).collect();
    let corpus = Corpus {
        sequences: &sequences,
        train_ids: &train_ids,
        eval: &eval,
        tokens: &tokens,
        pad,
    };
    let total = s.schedule(train_ids.len()).total;
    let mut opt = Optimizer::with_kind(
        AdamW {
            lr: o.lr as f32,
            weight_decay: o.weight_decay as f32,
            ..AdamW::default()
        },
        o.optimizer,
    );
    if let Some(p) = planned.as_ref().filter(|_| folder.writes()) {
        plan::write_json(&out.join("memory-plan.json"), p, &[])?;
    }
    let settings = serde_json::json!({
        "command": "pretrain",
        "encoder": o.encoder, "texts": o.texts, "max_len": o.max_len,
        "line_by_line": o.grouping == Grouping::LineByLine, "mask_terms": o.mask_terms,
        "mask_unit": o.mask_unit.name(), "mask_rate": o.rule.rate, "epochs": o.epochs, "batch_size": o.batch_size,
        "micro_batch": s.micro_batch, "accumulate": s.accumulate, "lr": o.lr,
        "warmup_ratio": o.warmup_ratio, "weight_decay": o.weight_decay, "clip": o.clip,
        "optimizer": o.optimizer.name(),
        "saved_activations": if o.fp16_activations { "fp16" } else { "fp32" },
        "eval_fraction": o.eval_fraction, "seed": o.seed, "records": records,
        "sequences": {"train": train_ids.len(), "held_out": eval.len()}, "steps": total,
        "fresh_head": fresh_head, "from_scratch": o.from_scratch, "device": dev.describe(),
        "world_size": world.as_ref().map_or(1, |w| w.size),
        "model": {"layers": model.encoder.config.num_hidden_layers,
                  "hidden": model.encoder.config.hidden_size,
                  "vocab": model.encoder.config.vocab_size},
    });
    if folder.writes() {
        weights::write_atomically(&out.join("run.json"), format!("{settings:#}\n").as_bytes())?;
    }
    let progress = match resumed {
        Some(state) => {
            let dir = folder.checkpoint_dir();
            checkpoint::restore_slots(&dir, &state, model.slots(), &mut opt)?;
            let p = state.progress;
            folder.truncate_log(&p)?;
            say!(
                "resuming from {}: epoch {}, {} batches done, step {}",
                dir.display(),
                p.epoch,
                p.batch,
                p.step
            );
            p
        }
        None => PretrainProgress::start(),
    };
    say!(
        "pretraining on {} records: {} sequences of up to {} tokens ({} held out), {} steps",
        records,
        sequences.len(),
        o.max_len,
        eval.len(),
        total
    );
    let end = pretrain(
        &mut model,
        &mut opt,
        &corpus,
        &s,
        &mut folder,
        progress,
        collective.as_deref_mut().map(|c| c as &mut dyn Collective),
    )?;
    if !folder.writes() {
        // A rank other than 0: rank 0 wrote what there is to write.
        return match crate::interrupt::requested().filter(|_| end.epoch <= s.epochs) {
            Some(signal) => Err(Error::Interrupted {
                signal,
                message: format!(
                    "interrupted at step {}; rank 0 wrote the checkpoint",
                    end.step
                ),
            }),
            None => Ok(()),
        };
    }
    if end.epoch <= s.epochs {
        if let Some(signal) = crate::interrupt::requested() {
            folder.save_checkpoint(&mut model, &opt, &end)?;
            let _ = crate::report::write(&out);
            return Err(Error::Interrupted {
                signal,
                message: format!(
                    "interrupted at step {} (epoch {}, {} batches into it); {} holds it: continue with the same command and --resume",
                    end.step,
                    end.epoch,
                    end.batch,
                    folder.checkpoint_dir().display(),
                ),
            });
        }
        // --stop-after-steps: as a kill would, the folder stays as it is.
        folder.keep();
        say!("stopped after step {} (--stop-after-steps)", end.step);
        return Ok(());
    }
    let encoder_dir = save_encoder_whole(&model, &o.encoder, &out)?;
    folder.keep();
    let report = crate::report::write(&out)?;
    say!(
        "wrote {} (report: {})",
        encoder_dir.display(),
        report.display()
    );
    Ok(())
}
