//! `emrclass train` end to end: data (a file, or the built-in synthetic set), a model (character
//! embeddings or a BERT encoder, and a head), a loss, the memory plan, the training loop, the run
//! folder, the metrics table and `report.html`.

use crate::data::batching::{CharVocab, LongText};
use crate::data::dataset::{self, Example, LabelMap};
use crate::data::synthetic;
use crate::data::text_encoder::{bag_hasher, TextEncoder};
use crate::data::tokenizer::BertTokenizer;
use crate::device::Device;
use crate::distributed::{join, Collective, World};
use crate::error::{Error, Result};
use crate::model::bert::{BertConfig, EncoderMemory};
use crate::model::heads::HeadKind;
use crate::model::imbalance::{
    class_weights_from_counts, read_class_weights, read_similarity_matrix, similarity_from_edges,
};
use crate::model::loss::{LossConfig, LossKind};
use crate::model::window_pool::chunk_pool_name;
use crate::options::{model_spec, Similarity, TrainOptions};
use crate::plan;
use crate::rng::Rng;
use crate::say;
use crate::settings;
use crate::train::build::{build_classifier, head_config};
use crate::train::checkpoint;
use crate::train::features::FeatureStore;
use crate::train::folder_lock::FolderLock;
use crate::train::metrics::print_report;
use crate::train::optim::{Optimizer, OptimizerKind};
use crate::train::run_folder::{FolderSettings, RunFolder};
use crate::train::state::{settings_diff, ModelSpec, Progress, RunInfo, State};
use crate::train::trainer::{
    optimizer, train, Classifier, Control, EpochLog, Event, Input, Split, TrainSettings, Windows,
};

fn load(o: &TrainOptions) -> Result<(Vec<Example>, Vec<Example>, String)> {
    let seed = o.settings.seed;
    let (train, dev, source) = match &o.train {
        None => {
            let all = if o.synthetic_long {
                synthetic::generate_long(7, o.synthetic_scale)
            } else {
                synthetic::generate(7, o.synthetic_scale)
            };
            let (t, d) = dataset::stratified_split(all, o.dev_fraction, seed)?;
            (
                t,
                d,
                format!(
                    "built-in synthetic set{} (scale {})",
                    if o.synthetic_long {
                        ", long records"
                    } else {
                        ""
                    },
                    o.synthetic_scale
                ),
            )
        }
        Some(path) => {
            let loaded = dataset::read(path, &o.read)?;
            dataset::report_skipped(path, &loaded.skipped);
            match &o.dev {
                Some(dp) => {
                    let dev = dataset::read(dp, &o.read)?;
                    dataset::report_skipped(dp, &dev.skipped);
                    (loaded.examples, dev.examples, path.display().to_string())
                }
                None => {
                    let (t, d) = dataset::stratified_split(loaded.examples, o.dev_fraction, seed)?;
                    (t, d, path.display().to_string())
                }
            }
        }
    };
    Ok((train, dev, source))
}

/// Runs training and prints per-epoch lines and the best epoch's report; returns the logs.
///
/// Nothing is written until every check has passed: the settings, the folder (`--out` new or
/// empty, or `--resume` of a run with the same settings, or `--overwrite`), the encoder's
/// limits, the data and the memory plan. The folder is then this run's alone (`FolderLock`),
/// and a new run that fails before its first checkpoint takes back what it wrote. A first
/// Ctrl-C or SIGTERM (`interrupt`) stops after the step in progress with a checkpoint.
pub fn run(dev: &Device, o: &TrainOptions) -> Result<Vec<EpochLog>> {
    let world = World::from_env()?;
    if let Some(w) = world.as_ref().filter(|w| w.size > 1) {
        check_data_parallel(o, w)?;
    }
    settings::check_train(o, &[o.head])?;
    settings::check_resumable(o)?;
    let start = o.start();
    settings::check_encoder_limits(o)?;
    let (train_set, dev_set, source) = load(o)?;
    settings::check_data(o, &train_set, &dev_set, &source)?;
    stop_if_interrupted()?;
    let map = LabelMap::from_examples(&train_set);
    let classes = map.names.len();
    let train_labels = map.indices(
        &train_set,
        o.train.as_deref().unwrap_or("synthetic".as_ref()),
    )?;
    let dev_labels = map.indices(
        &dev_set,
        o.dev
            .as_deref()
            .or(o.train.as_deref())
            .unwrap_or("synthetic".as_ref()),
    )?;
    let counts = map.counts(&train_set);
    let mut rng = Rng::new(o.settings.seed);
    let spec = model_spec(o);
    let text = match (&o.encoder, o.head) {
        (None, HeadKind::Bag) => TextEncoder::NGrams(bag_hasher(o.buckets)),
        (None, _) => TextEncoder::Chars {
            vocab: CharVocab::build(&train_set, 1),
            max_len: o.max_len,
            long: o.long_text,
        },
        (Some(dir), _) => TextEncoder::Bert {
            tokenizer: Box::new(BertTokenizer::from_dir(dir)?),
            max_len: o.max_len,
            long: o.long_text,
        },
    };
    let train_records = text.encode_all(&train_set)?;
    let dev_records = text.encode_all(&dev_set)?;
    // Records cut at --max-len, or (chunks) read as more than one window.
    let truncated = match (&text, o.long_text) {
        (TextEncoder::NGrams(_), _) => 0,
        (_, LongText::Chunks { .. }) => train_records.iter().filter(|r| r.len() > 1).count(),
        _ => train_records
            .iter()
            .filter(|r| r[0].len() >= o.max_len)
            .count(),
    };
    let windows: usize = train_records.iter().map(Vec::len).sum();
    let mut lc = loss_config(o, &counts, &map.names)?;
    let class_weights = lc.class_weights.clone();
    let mut settings = o.settings.clone();
    let planned = plan_memory(o, &spec, classes, &mut settings, dev.multiprocessors())?;
    if let Some(w) = world.as_ref().filter(|w| w.size > 1) {
        if matches!(o.loss, LossKind::GhmC | LossKind::GhmCs) && settings.accumulate > 1 {
            return Err(Error::Invalid(format!(
                "rank {} of {}: the memory plan splits each batch of {} into {} micro-batches, \
                 and --loss {} in a data-parallel world takes one per rank and step (each \
                 needs the histogram of all before it): give a smaller --batch-size or more \
                 --memory-budget, or run it in one process",
                w.rank,
                w.size,
                o.settings.batch_size,
                settings.accumulate,
                o.loss.name()
            )));
        }
    }
    // GHM-CS's beta = 1 warm-up, in loss steps (one per micro-batch: the loss sees each
    // micro-batch of a step, --accumulate's or the memory plan's) of this data set.
    let micro_batches = train_records.len().div_ceil(settings.batch_size.max(1)) as u64;
    lc.ghm_warmup_steps = o.ghm_warmup_epochs as u64 * micro_batches;
    let ghm_warmup_steps = lc.ghm_warmup_steps;
    let memory = planned.as_ref().map_or_else(
        || EncoderMemory {
            fp16_activations: o.fp16_activations,
            ..EncoderMemory::default()
        },
        |p| p.strategy.memory,
    );
    let mut model = build_classifier(dev, &spec, text.input_vocab(), lc, classes, &mut rng)?;
    if let Input::Encoder(enc) = &mut model.input {
        enc.memory = memory;
        if memory.fp16_weights {
            enc.store_weights_fp16()?;
        }
    }
    if o.freeze_encoder {
        // In a world every rank encodes (on its own GPU, at once); rank 0 alone writes the cache.
        let writes_cache = world.as_ref().is_none_or(|w| w.rank == 0);
        freeze(
            dev,
            &mut model,
            o,
            (&train_records, &dev_records),
            settings.batch_size,
            writes_cache,
        )?;
    }
    let info = RunInfo {
        fingerprint: fingerprint(o, &settings),
        labels: map.names.clone(),
        vocab: match &text {
            TextEncoder::Chars { vocab, .. } => Some(vocab.tokens.clone()),
            TextEncoder::Bert { .. } | TextEncoder::NGrams(_) => None,
        },
        model: spec,
    };
    // Checked here, before any write; read again under the folder's lock below.
    if o.resume {
        resumable_state(o, &info)?;
    }
    stop_if_interrupted()?;
    say!(
        "data: {source}: {} train / {} dev records, {classes} classes (largest {}, smallest {}), {:.1}% {} {} tokens",
        train_records.len(),
        dev_records.len(),
        counts.iter().max().unwrap_or(&0),
        counts.iter().min().unwrap_or(&0),
        100.0 * truncated as f64 / train_records.len().max(1) as f64,
        match o.long_text {
            LongText::Chunks { .. } => format!(
                "longer than one window ({:.2} windows per record) of",
                windows as f64 / train_records.len().max(1) as f64
            ),
            _ => "truncated at".to_string(),
        },
        o.max_len
    );
    say!(
        "model: {} + {} head, {} loss; device {}",
        match (&o.encoder, o.head) {
            (Some(_), _) => "BERT encoder",
            (None, HeadKind::Bag) => "hashed character 1-3-gram embeddings",
            (None, _) => "character embeddings",
        },
        o.head.name(),
        o.loss.name(),
        dev.describe()
    );
    let train_split = Split {
        records: train_records,
        labels: train_labels,
    };
    let dev_split = Split {
        records: dev_records,
        labels: dev_labels,
    };
    let mut opt = optimizer(&o.settings);
    // Every check is done. Rank 0 claims the run folder and reads what it resumes first (its
    // own failures then stop it before the others wait on it), then the ranks meet; rank 0
    // alone writes the folder.
    let rank = world.as_ref().map_or(0, |w| w.rank);
    let claimed = match rank {
        0 => {
            let lock = FolderLock::claim(&o.out, start, "--out")?;
            let resumed = match o.resume {
                true => {
                    let (state, note) = resumable_state(o, &info)?;
                    if let Some(note) = note {
                        say!("{note}");
                    }
                    Some(state)
                }
                false => None,
            };
            Some((lock, resumed))
        }
        _ => None,
    };
    let mut collective = match &world {
        Some(w) => Some(join::join_run(
            w,
            dev,
            (settings.batch_size, settings.accumulate),
        )?),
        None => None,
    };
    let Some((lock, resumed)) = claimed else {
        let resumed = match o.resume {
            true => Some(resumable_state(o, &info)?.0),
            false => None,
        };
        return train_as_rank(
            o,
            &mut model,
            &mut opt,
            resumed,
            (&train_split, &dev_split, classes),
            &settings,
            collective.as_deref_mut().map(|c| c as &mut dyn Collective),
        );
    };
    let mut folder = RunFolder::new(
        lock,
        resumed.is_some(),
        FolderSettings {
            checkpoint_every: o.checkpoint_every,
            quiet: o.quiet,
            epochs: o.settings.epochs,
        },
        info,
    )?;
    let out = folder.dir.clone();
    if let Some(p) = &planned {
        plan::write_json(&out.join("memory-plan.json"), p, &[])?;
    }
    folder.describe(&serde_json::json!({
        "source": source,
        "train_records": train_split.records.len(),
        "dev_records": dev_split.records.len(),
        "train_windows": windows,
        "labels": map.names,
        "train_counts": counts,
        "dev_counts": map.counts(&dev_set),
        "class_weights": class_weights,
        "model": model_spec(o),
        "loss": o.loss.name(),
        "ghm_warmup_steps": ghm_warmup_steps,
        "truncated_percent": 100.0 * truncated as f64 / train_split.records.len().max(1) as f64,
        "epochs": o.settings.epochs,
        "batch_size": settings.batch_size,
        "accumulate": settings.accumulate,
        "optimizer": settings.optimizer.name(),
        "saved_activations": if o.fp16_activations { "fp16" } else { "fp32" },
        "lr": o.settings.lr,
        "seed": o.settings.seed,
        "device": dev.describe(),
        "world_size": world.as_ref().map_or(1, |w| w.size),
        "global_batch": settings.batch_size * settings.accumulate * world.as_ref().map_or(1, |w| w.size),
        "settings": folder.info.fingerprint,
    }))?;
    let progress = match resumed {
        Some(state) => {
            let dir = folder.checkpoint_dir();
            checkpoint::restore(&dir, &state, &mut model, &mut opt, false)?;
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
        None => {
            let p = Progress::start();
            folder.truncate_log(&p)?;
            p
        }
    };
    let (logs, end) = {
        let mut on_event = |m: &mut Classifier, op: &Optimizer, p: &Progress, e: Event| {
            folder.on_event(m, op, p, e)
        };
        let mut ctl = control(
            o,
            progress,
            &mut on_event,
            collective.as_deref_mut().map(|c| c as &mut dyn Collective),
        );
        train(
            &mut model,
            &mut opt,
            &train_split,
            &dev_split,
            classes,
            &settings,
            &mut ctl,
        )?
    };
    let finished = end.epoch > settings.epochs || o.patience.is_some_and(|n| end.bad_epochs >= n);
    if let (Some(signal), false) = (crate::interrupt::requested(), finished) {
        folder.save_checkpoint(&mut model, &opt, &end)?;
        let _ = crate::report::write(&out);
        return Err(Error::Interrupted {
            signal,
            message: format!(
                "interrupted at step {} (epoch {}, {} batches into it); {} holds it: continue with the same command and --resume{}",
                end.step,
                end.epoch,
                end.batch,
                folder.checkpoint_dir().display(),
                out_to_resume(o.numbered_out, &out)
            ),
        });
    }
    if o.stop_after_steps == Some(end.step) {
        // As a kill would: the folder stays as it is.
        folder.keep();
        say!("stopped after step {} (--stop-after-steps)", end.step);
        return Ok(logs);
    }
    if let Some((epoch, f1)) = end.best {
        match logs.iter().find(|l| l.epoch == epoch) {
            Some(best) => {
                say!("best epoch {epoch} (by dev {}):", o.metric.name());
                print_report(&best.dev, &map.names);
            }
            None => say!(
                "best epoch {epoch} (before this resumed run): dev {} {f1:.4}",
                o.metric.name()
            ),
        }
    }
    let report = crate::report::write(&out)?;
    say!(
        "run folder: {} (report: {})",
        out.display(),
        report.display()
    );
    Ok(logs)
}

/// What a data-parallel run cannot do yet, refused before any work.
fn check_data_parallel(o: &TrainOptions, w: &World) -> Result<()> {
    if matches!(o.loss, LossKind::GhmC | LossKind::GhmCs) && o.settings.accumulate > 1 {
        // Each micro-batch's GHM weights need the histogram of every micro-batch before it in
        // the step; with one micro-batch per rank the ranks exchange their counts first.
        return Err(Error::Invalid(format!(
            "rank {} of {}: --loss {} with --accumulate {} is not data parallel (one micro-batch \
             per rank and step: each one's GHM weights need the histogram of all before it); \
             give a larger --batch-size instead, or run it in one process (without emrclass \
             launch / WORLD_SIZE)",
            w.rank,
            w.size,
            o.loss.name(),
            o.settings.accumulate
        )));
    }
    if w.rank > 0 {
        crate::console::mute_stdout();
    }
    Ok(())
}

/// The loop's controls as the options give them: where it starts, what it tells `on_event`, and
/// the data-parallel world it sums over (None: this process alone).
fn control<'a>(
    o: &TrainOptions,
    progress: Progress,
    on_event: &'a mut dyn FnMut(&mut Classifier, &Optimizer, &Progress, Event) -> Result<()>,
    collective: Option<&'a mut dyn Collective>,
) -> Control<'a> {
    Control {
        progress,
        patience: o.patience,
        metric: o.metric,
        eval_every: o.eval_every,
        log_every: o.log_every,
        stop_after_steps: o.stop_after_steps,
        on_event,
        collective,
    }
}

/// A data-parallel rank other than 0: the same training, with no run folder (rank 0 writes
/// it; under --resume every rank reads rank 0's checkpoint, so on several machines --out must be
/// on a file system they all see).
fn train_as_rank(
    o: &TrainOptions,
    model: &mut Classifier,
    opt: &mut Optimizer,
    resumed: Option<State>,
    (train_split, dev_split, classes): (&Split, &Split, usize),
    settings: &TrainSettings,
    collective: Option<&mut (dyn Collective + '_)>,
) -> Result<Vec<EpochLog>> {
    let progress = match resumed {
        Some(state) => {
            checkpoint::restore(&o.out.join("checkpoint"), &state, model, opt, false)?;
            state.progress
        }
        None => Progress::start(),
    };
    let mut on_event = |_: &mut Classifier, _: &Optimizer, _: &Progress, _: Event| Ok(());
    let mut ctl = control(
        o,
        progress,
        &mut on_event,
        collective.map(|c| c as &mut dyn Collective),
    );
    let (logs, end) = train(
        model,
        opt,
        train_split,
        dev_split,
        classes,
        settings,
        &mut ctl,
    )?;
    let finished = end.epoch > settings.epochs || o.patience.is_some_and(|n| end.bad_epochs >= n);
    match (crate::interrupt::requested(), finished) {
        (Some(signal), false) => Err(Error::Interrupted {
            signal,
            message: format!(
                "interrupted at step {}; rank 0 wrote the checkpoint",
                end.step
            ),
        }),
        _ => Ok(logs),
    }
}

/// What `--resume` must add to the same command: the folder, when the run picked it (a
/// numbered default), since the same command would pick another.
pub fn out_to_resume(numbered: bool, dir: &std::path::Path) -> String {
    if numbered {
        format!(" --out {}", dir.display())
    } else {
        String::new()
    }
}

/// A signal before the loop began: nothing has been written yet.
fn stop_if_interrupted() -> Result<()> {
    match crate::interrupt::requested() {
        Some(signal) => Err(Error::Interrupted {
            signal,
            message: "interrupted before training began; nothing was written".into(),
        }),
        None => Ok(()),
    }
}

/// The checkpoint `--resume` continues from, when its settings are this run's; or, when only
/// `--epochs` grew, the same run extended (its schedule then decays over the new total). With
/// what to tell the user about it.
fn resumable_state(o: &TrainOptions, now: &RunInfo) -> Result<(State, Option<String>)> {
    let dir = o.out.join("checkpoint");
    let state = checkpoint::load_state(&dir)?;
    let p = &state.progress;
    let stopped_early = o.patience.is_some_and(|n| p.bad_epochs >= n);
    let then = &state.run.fingerprint;
    let changed = settings_diff(then, &now.fingerprint);
    if changed.is_empty() {
        let note = (p.epoch > o.settings.epochs || stopped_early).then(|| {
            format!(
                "{} finished ({} epochs{}): nothing to train (to train longer: --resume --epochs N{})",
                o.out.display(),
                p.finished.len(),
                if stopped_early { ", stopped early by --patience" } else { "" },
                if stopped_early { " and a larger --patience" } else { "" }
            )
        });
        return Ok((state, note));
    }
    let epochs_only = changed.len() == 1 && changed[0].0 == "epochs";
    let grew = changed
        .first()
        .and_then(|(_, a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .is_some_and(|(a, b)| b > a);
    if epochs_only && grew && !stopped_early {
        let note = format!(
            "extending {} from {} to {} epochs (the learning-rate schedule now decays over {} epochs)",
            o.out.display(),
            changed[0].1,
            changed[0].2,
            changed[0].2
        );
        return Ok((state, Some(note)));
    }
    if epochs_only && grew {
        return Err(Error::Invalid(format!(
            "--resume --epochs {}: {} stopped early (--patience {}: {} epochs without a better dev score), so more epochs would train none; give a larger --patience too",
            o.settings.epochs,
            o.out.display(),
            o.patience.unwrap_or(0),
            p.bad_epochs
        )));
    }
    let list: Vec<String> = changed
        .iter()
        .map(|(k, a, b)| match k.as_str() {
            "world_size" => format!(
                "data-parallel ranks (WORLD_SIZE): {} then, {} now — another world size changes the global batch, the learning-rate schedule and which records each step sees; resume with as many ranks as wrote it",
                a.replace("(unset)", "1"),
                b.replace("(unset)", "1")
            ),
            _ => format!("{k}: {a} then, {b} now"),
        })
        .collect();
    Err(Error::Invalid(format!(
        "--resume: {} was written with other settings ({}). Resume with the run's own settings{}, or start a new run with another --out (or --overwrite)",
        dir.display(),
        list.join("; "),
        if epochs_only {
            "; --epochs may only grow, to extend a run"
        } else {
            ""
        }
    )))
}

/// Replaces the model's encoder by its cached outputs over every training and dev text.
fn freeze(
    dev: &Device,
    model: &mut Classifier,
    o: &TrainOptions,
    (train_records, dev_records): (&[Windows], &[Windows]),
    batch_size: usize,
    writes_cache: bool,
) -> Result<()> {
    let (Input::Encoder(enc), Some(dir)) = (&mut model.input, &o.encoder) else {
        return Err(Error::Invalid("--freeze-encoder needs --encoder".into()));
    };
    let all: Vec<Vec<i32>> = train_records
        .iter()
        .chain(dev_records)
        .flatten()
        .cloned()
        .collect();
    let t = std::time::Instant::now();
    let cache = (o.feature_cache.as_path(), writes_cache);
    let (store, cached) = FeatureStore::build(enc, dir, &all, cache, batch_size)?;
    if !writes_cache && !cached {
        crate::note!(
            "frozen encoder: features kept in memory (rank 0 writes {})",
            o.feature_cache.display()
        );
    }
    say!(
        "frozen encoder: {} distinct texts {} in {:.1} s ({})",
        store.len(),
        if cached {
            "read from the cache"
        } else {
            "encoded"
        },
        t.elapsed().as_secs_f64(),
        o.feature_cache.display()
    );
    // The encoder's weights leave the device here.
    model.input = Input::Features {
        store: Box::new(store),
        device: dev.clone(),
    };
    Ok(())
}

/// The loss of a training run: class weights from the training counts (γ = 1; 0.5 for GHM-CS)
/// or from --class-weights, GHM-CS's class similarity from --similarity-matrix or
/// --similarity-edges (one-hot targets without one).
pub fn loss_config(o: &TrainOptions, counts: &[usize], labels: &[String]) -> Result<LossConfig> {
    let mut lc = LossConfig::new(o.loss);
    lc.class_weights = Some(match &o.class_weights {
        Some(path) => read_class_weights(path, labels)?,
        None => {
            let gamma = o.class_weight_gamma.unwrap_or(match o.loss {
                LossKind::GhmCs => 0.5,
                _ => 1.0,
            });
            class_weights_from_counts(counts, gamma)?
        }
    });
    lc.similarity = match &o.similarity {
        None => None,
        Some(Similarity::Matrix(path)) => Some(read_similarity_matrix(path, labels)?),
        Some(Similarity::Edges(path)) => Some(similarity_from_edges(path, labels)?),
    };
    if lc.similarity.is_some() && o.loss != LossKind::GhmCs {
        return Err(Error::Invalid(format!(
            "a class similarity is used by the ghm-cs loss only, not by {}",
            o.loss.name()
        )));
    }
    Ok(lc)
}

/// With an encoder and a memory budget: the planner's plan for batches of
/// `settings.batch_size` x `max_len` (the longest a batch can be). Micro-batches change
/// `settings` (same effective batch); the encoder's memory settings are the plan's strategy. A
/// plan that cannot fit is an error that says what is short. `multiprocessors`: the device's.
fn plan_memory(
    o: &TrainOptions,
    spec: &ModelSpec,
    classes: usize,
    settings: &mut TrainSettings,
    multiprocessors: usize,
) -> Result<Option<plan::Plan>> {
    let (Some(dir), Some(m)) = (&o.encoder, o.memory) else {
        return Ok(None);
    };
    let encoder = BertConfig::from_file(&dir.join("config.json"))?;
    let request = plan::Request {
        head: head_config(spec, encoder.hidden_size, classes)?,
        seq: o.max_len.min(encoder.max_position_embeddings),
        encoder,
        loss: o.loss,
        batch: settings.batch_size,
        budget: m.budget,
        reserve: m.reserve,
        frozen: o.freeze_encoder,
        optimizer: settings.optimizer,
        fp16_activations: o.fp16_activations,
        windows: o.long_text.max_windows(),
        multiprocessors,
        masked_lm: None,
    };
    let p = plan::plan(&request)?;
    let layers = request.encoder.num_hidden_layers;
    if !p.fits {
        return Err(Error::Invalid(format!(
            "batch {}{} x {} tokens does not fit the memory budget: with {} the peak is {:.1} MiB, {:.1} MiB over the engine's {:.1} MiB (see `emrclass plan`)",
            request.batch,
            if request.windows > 1 {
                format!(" x {} windows", request.windows)
            } else {
                String::new()
            },
            request.seq,
            p.strategy.describe(layers, request.frozen),
            p.measured.peak as f64 / 1048576.0,
            (p.measured.peak - request.usable()) as f64 / 1048576.0,
            request.usable() as f64 / 1048576.0
        )));
    }
    say!(
        "memory plan: {} (peak {:.1} of {:.1} MiB)",
        p.strategy.describe(layers, request.frozen),
        p.measured.peak as f64 / 1048576.0,
        request.usable() as f64 / 1048576.0
    );
    settings.batch_size = p.strategy.micro_batch;
    settings.accumulate *= p.strategy.accumulate;
    Ok(Some(p))
}

/// The settings a resumed run must share with the one that wrote the checkpoint (`s`: as the
/// memory plan left them, so a resumed run whose budget splits batches differently is refused).
fn fingerprint(o: &TrainOptions, s: &TrainSettings) -> String {
    format!(
        "train={:?} dev={:?} dev_fraction={} fields={}/{} skip_bad={} encoder={:?} frozen={} head={:?} loss={:?} max_len={} long_text={} buckets={} synthetic_long={} ghm_warmup_epochs={} embedding_dim={} filters={} rnn_hidden={} dropout={} synthetic_scale={} class_weights={:?} similarity={:?} epochs={} batch_size={} lr={} input_lr_scale={} warmup={} weight_decay={} clip={:?} seed={} accumulate={} metric={}",
        o.train, o.dev, o.dev_fraction, o.read.text_field, o.read.label_field, o.read.skip_bad,
        o.encoder, o.freeze_encoder, o.head, o.loss, o.max_len, match o.long_text {
            LongText::Chunks { max } => format!("chunks/{max}/{}", chunk_pool_name(o.chunk_pool)),
            other => other.name().to_string(),
        }, o.buckets, o.synthetic_long,
        // Only GHM-CS warms up: other losses' runs written before the default became 1 resume.
        if o.loss == LossKind::GhmCs { o.ghm_warmup_epochs } else { 0 }, o.embedding_dim, o.filters, o.rnn_hidden, o.dropout,
        o.synthetic_scale, o.class_weights, o.similarity, s.epochs, s.batch_size, s.lr, s.input_lr_scale, s.warmup_fraction,
        s.weight_decay, s.clip, s.seed, s.accumulate, o.metric.name()
    ) + &match o.class_weight_gamma {
        // Absent unless given, so runs written before the option resume as they did.
        Some(g) => format!(" class_weight_gamma={g}"),
        None => String::new(),
    } + &match s.optimizer {
        // Absent for the default, so runs written before the option resume as they did.
        OptimizerKind::AdamW => String::new(),
        other => format!(" optimizer={}", other.name()),
    } + if o.fp16_activations {
        " saved_activations=fp16"
    } else {
        ""
    } + &match World::from_env() {
        // Absent for one process, so runs written before data parallelism resume as they did.
        Ok(Some(w)) if w.size > 1 => format!(" world_size={}", w.size),
        _ => String::new(),
    }
}
