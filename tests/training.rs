//! `emrclass train` end to end on the simulator: the built-in synthetic set is learned (macro-F1
//! far above chance), runs repeat bit for bit, the BERT path fine-tunes with the `paper` head,
//! and bad configurations and data give named errors.

mod common;

use std::path::PathBuf;

use emrclass::jobs::train::run;
use emrclass::model::heads::HeadKind;
use emrclass::options::TrainOptions;
use emrclass::train::checkpoint;
use emrclass::train::optim::OptimizerKind;
use emrclass::Schedule;

fn temp_run(name: &str) -> PathBuf {
    static COUNT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let d = std::env::temp_dir().join(format!("emrclass-run-{name}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small(scale: f64, epochs: usize) -> TrainOptions {
    let mut o = TrainOptions {
        synthetic_scale: scale,
        out: temp_run("small"),
        quiet: true,
        ..TrainOptions::default()
    };
    o.settings.epochs = epochs;
    o
}

/// Every tensor of a run folder's latest checkpoint, by name, as bits.
fn checkpoint_bits(run: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    common::tensor_bits(&run.join("checkpoint"))
}

/// A run killed mid-epoch (after its checkpoint at step 6, at step 7) and resumed ends with the
/// same weights, AdamW moments, GHM state and metrics as the run never interrupted.
#[test]
fn resume_after_a_kill_mid_epoch_continues_exactly() {
    resume_continues_exactly(1);
}

/// The same with gradient accumulation (2 micro-batches per step: the kill at step 7 is at
/// batch 14; the checkpoint on disk is step 6's, batch 12, of 15 in the epoch).
#[test]
fn resume_with_gradient_accumulation_continues_exactly() {
    resume_continues_exactly(2);
}

/// The same with 8-bit AdamW moments: the checkpoint holds their codes and block maxima, and
/// the resumed run continues from those very codes.
#[test]
fn resume_with_8bit_adamw_continues_exactly() {
    resume_continues_exactly_with(1, OptimizerKind::AdamW8bit);
}

fn resume_continues_exactly(accumulate: usize) {
    resume_continues_exactly_with(accumulate, OptimizerKind::AdamW);
}

fn resume_continues_exactly_with(accumulate: usize, optimizer: OptimizerKind) {
    let dev = common::test_device(Schedule::Forward);
    let base = || {
        let mut o = small(if accumulate == 1 { 0.05 } else { 0.1 }, 2);
        o.checkpoint_every = 3;
        o.head = HeadKind::TextCnnBiGru;
        o.settings.accumulate = accumulate;
        o.settings.optimizer = optimizer;
        o
    };
    let whole = base();
    let logs_whole = run(&dev, &whole).unwrap();
    let mut cut = base();
    cut.stop_after_steps = Some(7);
    run(&dev, &cut).unwrap();
    let on_disk = checkpoint::load_state(&cut.out.join("checkpoint")).unwrap();
    assert_eq!(on_disk.progress.step, 6);
    assert_eq!(
        (on_disk.progress.epoch, on_disk.progress.batch),
        (1, 6 * accumulate),
        "mid-epoch"
    );
    cut.stop_after_steps = None;
    cut.resume = true;
    let logs_resumed = run(&dev, &cut).unwrap();
    let (a, b) = (checkpoint_bits(&whole.out), checkpoint_bits(&cut.out));
    assert!(
        a.iter().any(|(n, _)| n.starts_with("adam_m.")),
        "moments are saved"
    );
    assert_eq!(
        a.iter().any(|(n, _)| n.starts_with("adam8_m.")),
        optimizer == OptimizerKind::AdamW8bit,
        "8-bit moments are saved as codes"
    );
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert!(va == vb, "tensor {na} differs after resume");
    }
    let (sa, sb) = (
        checkpoint::load_state(&whole.out.join("checkpoint")).unwrap(),
        checkpoint::load_state(&cut.out.join("checkpoint")).unwrap(),
    );
    assert_eq!(sa.progress, sb.progress);
    assert_eq!(sa.ghm_ema, sb.ghm_ema);
    assert_eq!(
        logs_whole.last().unwrap().dev,
        logs_resumed.last().unwrap().dev
    );
    // The run folder holds the best checkpoint, the logs and the confusion matrix.
    for f in [
        "best/state.json",
        "log.jsonl",
        "confusion.csv",
        "confusion.json",
        "report.json",
    ] {
        assert!(whole.out.join(f).exists(), "{f}");
    }
    let csv = std::fs::read_to_string(whole.out.join("confusion.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + sa.run.labels.len());
}

#[test]
fn resume_refuses_other_settings_and_missing_checkpoints() {
    let dev = common::test_device(Schedule::Forward);
    let mut o = small(0.03, 1);
    o.resume = true;
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(
        e.contains("does not exist") && e.contains("--resume"),
        "{e}"
    );
    // A folder without a checkpoint: nothing to continue either, and nothing written.
    std::fs::create_dir_all(&o.out).unwrap();
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(e.contains("holds no checkpoint"), "{e}");
    assert_eq!(std::fs::read_dir(&o.out).unwrap().count(), 0);
    o.resume = false;
    run(&dev, &o).unwrap();
    o.resume = true;
    o.settings.lr *= 2.0;
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(
        e.contains("was written with other settings") && e.contains("lr: "),
        "{e}"
    );
    // A state that names a tensor file that is gone: a named error, not a panic.
    o.settings.lr /= 2.0;
    let state = checkpoint::load_state(&o.out.join("checkpoint")).unwrap();
    std::fs::remove_file(o.out.join("checkpoint").join(&state.tensors)).unwrap();
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(e.contains(&state.tensors), "{e}");
}

/// Learns, and repeats bit for bit: the same run again, with the simulator's blocks on four OS
/// threads instead of one, gives the same losses, metrics and checkpoint bits.
#[test]
fn learns_the_synthetic_set_and_repeats_bit_for_bit() {
    let dev = common::test_device(Schedule::Forward);
    dev.set_simt_threads(1);
    let first = small(0.15, 3);
    let logs = run(&dev, &first).unwrap();
    let best = logs.iter().map(|e| e.dev.macro_avg.f1).fold(0.0, f64::max);
    // 15 classes: a constant guess scores macro-F1 under 0.07.
    assert!(best > 0.3, "macro-F1 {best}");
    assert!(logs[2].mean_loss < logs[0].mean_loss);
    dev.set_simt_threads(4);
    let second = small(0.15, 3);
    let again = run(&dev, &second).unwrap();
    for (a, b) in logs.iter().zip(&again) {
        assert_eq!(
            a.mean_loss.to_bits(),
            b.mean_loss.to_bits(),
            "same seed, same device: same run"
        );
        assert_eq!(a.dev, b.dev);
    }
    assert!(checkpoint_bits(&first.out) == checkpoint_bits(&second.out));
}

#[test]
fn fine_tunes_a_bert_checkpoint_with_the_paper_head() {
    let dir = common::tiny_bert_dir("train-bert");
    let dev = common::test_device(Schedule::Forward);
    let mut o = small(0.04, 1);
    o.encoder = Some(dir);
    o.head = HeadKind::Paper;
    o.max_len = 24;
    o.settings.lr = 1e-3;
    let logs = run(&dev, &o).unwrap();
    assert!(logs[0].mean_loss.is_finite() && logs[0].dev.accuracy > 0.0);

    // Frozen: the encoder runs once per distinct text; a second run reads the cache and trains
    // the same head bit for bit; `eval` (the encoder run live) reproduces the best epoch.
    o.freeze_encoder = true;
    o.out = temp_run("frozen");
    o.feature_cache = temp_run("feature-cache");
    o.settings.epochs = 3;
    o.settings.lr = 1e-2;
    let first = run(&dev, &o).unwrap();
    let cached: Vec<_> = std::fs::read_dir(&o.feature_cache).unwrap().collect();
    assert_eq!(cached.len(), 1, "one cache file");
    o.out = temp_run("frozen-again");
    let second = run(&dev, &o).unwrap();
    for (a, b) in first.iter().zip(&second) {
        assert_eq!(a.mean_loss.to_bits(), b.mean_loss.to_bits());
        assert_eq!(a.dev, b.dev);
    }
    let state = checkpoint::load_state(&o.out.join("checkpoint")).unwrap();
    assert!(state.run.model.frozen);
    let ck = emrclass::weights::Checkpoint::open(&o.out.join("checkpoint").join(&state.tensors))
        .unwrap();
    assert!(
        ck.names().iter().all(|n| !n.contains("encoder.layer")),
        "the head alone is saved"
    );
    assert!(first[2].mean_loss < first[0].mean_loss, "the head learns");
    // predict rebuilds a frozen run: the checkpoint's head on the live encoder.
    let input = o.out.join("in.jsonl");
    std::fs::write(&input, "\"患者胸闷痛\"\n").unwrap();
    let output = o.out.join("out.jsonl");
    emrclass::train::inference::predict(&dev, &o.out, true, &input, &output, "text", 4, false)
        .unwrap();
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&output).unwrap().trim()).unwrap();
    let total: f64 = line["probabilities"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-4, "{line}");
}

#[test]
fn named_errors() {
    let dev = common::test_device(Schedule::Forward);
    let mut o = small(0.04, 1);
    o.head = HeadKind::Cls;
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(
        e.contains("--head cls reads an encoder's pooled [CLS]"),
        "{e}"
    );
    // Without an encoder, `paper` is Text-CNN || BiGRU and trains.
    o.head = HeadKind::Paper;
    let logs = run(&dev, &o).unwrap();
    assert!(logs[0].mean_loss.is_finite() && logs[0].dev.accuracy > 0.0);

    let dir = std::env::temp_dir().join(format!("emrclass-train-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let train = dir.join("train.jsonl");
    std::fs::write(&train, "{\"text\": \"胸痛\", \"label\": \"A\"}\n{\"text\": \"头晕\", \"label\": \"B\"}\n{\"text\": \"\", \"label\": \"A\"}\n").unwrap();
    let e = run(
        &dev,
        &TrainOptions {
            train: Some(train.clone()),
            ..small(1.0, 1)
        },
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("train.jsonl:3: empty text"), "{e}");
    let devf = dir.join("dev.jsonl");
    std::fs::write(&devf, "{\"text\": \"咳嗽\", \"label\": \"C\"}\n").unwrap();
    let mut o = TrainOptions {
        train: Some(train),
        dev: Some(devf),
        ..small(1.0, 1)
    };
    o.read.skip_bad = true;
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(e.contains("labels not in the training set: C"), "{e}");
}

/// GHM-CS reads its class similarity from the command line's files; other losses refuse one.
#[test]
fn ghm_cs_takes_a_similarity_source() {
    let dev = common::test_device(Schedule::Forward);
    let mut names: Vec<String> = emrclass::data::synthetic::generate(7, 0.03)
        .into_iter()
        .map(|e| e.label)
        .collect();
    names.sort();
    names.dedup();
    let dir = temp_run("similarity");
    std::fs::create_dir_all(&dir).unwrap();
    let edges = dir.join("edges.csv");
    std::fs::write(
        &edges,
        format!(
            "{},{},0.8\n{},{},0.5\n",
            names[0], names[1], names[1], names[2]
        ),
    )
    .unwrap();
    let ghm_cs = || {
        let mut o = small(0.03, 1);
        o.loss = emrclass::model::loss::LossKind::GhmCs;
        o
    };
    let plain = run(&dev, &ghm_cs()).unwrap();
    let mut o = ghm_cs();
    o.similarity = Some(emrclass::options::Similarity::Edges(edges.clone()));
    let with = run(&dev, &o).unwrap();
    // The refusals below come before any write: the run above is kept.
    o.overwrite = true;
    assert_ne!(
        plain[0].mean_loss.to_bits(),
        with[0].mean_loss.to_bits(),
        "the similarity changes the targets"
    );
    o.loss = emrclass::model::loss::LossKind::Focal;
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(e.contains("ghm-cs loss only"), "{e}");
    std::fs::write(&edges, "no-such-class,also-not,0.5\n").unwrap();
    o.loss = emrclass::model::loss::LossKind::GhmCs;
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(e.contains("no-such-class"), "{e}");
}

/// Accumulated gradients of two micro-batches are (twice) the gradient of their union: the
/// same mean loss over the same rows (dropout off; padding does not change the result).
#[test]
fn accumulated_gradients_match_the_whole_batch() {
    use emrclass::data::batching::{pad, CharVocab};
    use emrclass::data::text_encoder::TextEncoder;
    use emrclass::train::build::build_classifier;
    use emrclass::train::state::ModelSpec;
    let dev = common::test_device(Schedule::Random(5));
    let examples = emrclass::data::synthetic::generate(3, 0.02);
    let text = TextEncoder::Chars {
        vocab: CharVocab::build(&examples, 1),
        max_len: 24,
        long: Default::default(),
    };
    let spec = ModelSpec {
        encoder: None,
        head: "textcnn-bigru".into(),
        loss: "ce".into(),
        embedding_dim: 8,
        filters: 5,
        rnn_hidden: 6,
        dropout: 0.0,
        max_len: 24,
        frozen: false,
        buckets: 0,
        long_text: "head".into(),
        max_chunks: 0,
        chunk_pool: "mean".into(),
    };
    let seqs: Vec<Vec<i32>> = examples[..8]
        .iter()
        .map(|e| text.encode(&e.text).unwrap().remove(0))
        .collect();
    let labels: Vec<i32> = (0..8).map(|i: i32| i % 3).collect();
    let loss =
        || emrclass::model::loss::LossConfig::new(emrclass::model::loss::LossKind::CrossEntropy);
    let mut whole = build_classifier(
        &dev,
        &spec,
        text.input_vocab(),
        loss(),
        3,
        &mut emrclass::rng::Rng::new(9),
    )
    .unwrap();
    let mut parts = build_classifier(
        &dev,
        &spec,
        text.input_vocab(),
        loss(),
        3,
        &mut emrclass::rng::Rng::new(9),
    )
    .unwrap();
    let batch =
        |r: std::ops::Range<usize>| pad(&seqs[r].iter().map(Vec::as_slice).collect::<Vec<_>>());
    whole.backward_step(&batch(0..8), &labels, 1).unwrap();
    // The second micro-batch's gradients are added in place to the first's.
    parts.backward_step(&batch(0..4), &labels[..4], 1).unwrap();
    {
        let _sum = dev.accumulate_gradients();
        parts.backward_step(&batch(4..8), &labels[4..], 1).unwrap();
    }
    assert!(!dev.accumulating_gradients(), "the guard ends accumulation");
    let sums: std::collections::HashMap<String, Vec<f32>> = parts
        .slots(1.0)
        .into_iter()
        .map(|s| (s.name.clone(), s.grad.to_host().unwrap()))
        .collect();
    let mut checked = 0;
    for slot in whole.slots(1.0) {
        let want: Vec<f64> = slot
            .grad
            .to_host()
            .unwrap()
            .iter()
            .map(|&g| 2.0 * g as f64)
            .collect();
        let got: Vec<f64> = sums[&slot.name].iter().map(|&g| g as f64).collect();
        let err = common::rel(&got, &want);
        assert!(err < 1e-5, "{}: {err}", slot.name);
        checked += 1;
    }
    assert!(checked >= 5);
}

/// --long-text chunks, pooling over windows: on the simulator (NaN-poisoned outputs, two
/// schedules) the window pool equals the mean or class-wise max over each record's rows (f64,
/// on the host), and its backward hands every window 1/n of its record's gradient (mean) or
/// all of it to the window that won (max, the first of ties); a chunked batch's loss is the
/// loss of the pooled logits; and a record of n copies of one window trains exactly as that
/// window alone (same loss, same gradients), under both pools.
#[test]
fn chunked_records_pool_their_windows_logits() {
    use emrclass::data::batching::{CharVocab, LongText};
    use emrclass::data::text_encoder::TextEncoder;
    use emrclass::model::window_pool::{Pool, WindowPool};
    use emrclass::train::build::build_classifier;
    use emrclass::train::state::ModelSpec;
    use emrclass::train::trainer::record_batch;
    for (schedule, pool) in [
        (Schedule::Forward, Pool::Mean),
        (Schedule::Random(3), Pool::Mean),
        (Schedule::Forward, Pool::Max),
        (Schedule::Random(4), Pool::Max),
    ] {
        let dev = common::test_device(schedule);
        let mut rng = emrclass::rng::Rng::new(17);
        let counts = [1usize, 3, 1, 5, 2];
        let (rows, classes) = (12, 7);
        let mut x: Vec<f32> = (0..rows * classes).map(|_| rng.normal() as f32).collect();
        // A tie in record 1 (windows 1..4), class 2: the first window wins.
        x[2 * classes + 2] = 9.0;
        x[3 * classes + 2] = 9.0;
        let dy: Vec<f32> = (0..counts.len() * classes)
            .map(|_| rng.normal() as f32)
            .collect();
        let mut layer = WindowPool::new(&dev, &counts, rows, pool).unwrap().unwrap();
        assert_eq!(layer.records(), counts.len());
        let y = layer
            .forward(&dev.upload(&x, "x").unwrap(), classes)
            .unwrap()
            .to_host()
            .unwrap();
        let dx = layer
            .backward(&dev.upload(&dy, "dy").unwrap(), classes)
            .unwrap()
            .to_host()
            .unwrap();
        let mut first = 0;
        for (r, &n) in counts.iter().enumerate() {
            for c in 0..classes {
                let values: Vec<f64> = (first..first + n)
                    .map(|w| x[w * classes + c] as f64)
                    .collect();
                let (want, winner) = match pool {
                    Pool::Max => values
                        .iter()
                        .enumerate()
                        .fold(
                            (f64::MIN, 0),
                            |best, (k, &v)| {
                                if v > best.0 {
                                    (v, k)
                                } else {
                                    best
                                }
                            },
                        ),
                    _ => (values.iter().sum::<f64>() / n as f64, usize::MAX),
                };
                assert!(
                    (y[r * classes + c] as f64 - want).abs() < 1e-6,
                    "record {r}"
                );
                for (k, w) in (first..first + n).enumerate() {
                    let g = dy[r * classes + c] as f64;
                    let want = match pool {
                        Pool::Max if k == winner => g,
                        Pool::Max => 0.0,
                        _ => g / n as f64,
                    };
                    assert!(
                        (dx[w * classes + c] as f64 - want).abs() < 1e-7,
                        "window {w}"
                    );
                }
            }
            first += n;
        }
        assert!(WindowPool::new(&dev, &[1, 1], 2, pool).unwrap().is_none());
        assert!(
            WindowPool::new(&dev, &[2, 1], 2, pool).is_err(),
            "counts must sum to the rows"
        );
    }

    let dev = common::test_device(Schedule::Random(8));
    let examples = emrclass::data::synthetic::generate_long(3, 0.02);
    let text = TextEncoder::Chars {
        vocab: CharVocab::build(&examples, 1),
        max_len: 20,
        long: LongText::Chunks { max: 4 },
    };
    let spec = ModelSpec {
        encoder: None,
        head: "textcnn".into(),
        loss: "ce".into(),
        embedding_dim: 8,
        filters: 5,
        rnn_hidden: 6,
        dropout: 0.0,
        max_len: 20,
        frozen: false,
        buckets: 0,
        long_text: "chunks".into(),
        max_chunks: 4,
        chunk_pool: "mean".into(),
    };
    let build = || {
        build_classifier(
            &dev,
            &spec,
            text.input_vocab(),
            emrclass::model::loss::LossConfig::new(emrclass::model::loss::LossKind::CrossEntropy),
            3,
            &mut emrclass::rng::Rng::new(9),
        )
        .unwrap()
    };
    let records: Vec<Vec<Vec<i32>>> = examples[..6]
        .iter()
        .map(|e| text.encode(&e.text).unwrap())
        .collect();
    let counts: Vec<usize> = records.iter().map(Vec::len).collect();
    assert!(counts.iter().all(|&n| n == 4), "long records: {counts:?}");
    let labels: Vec<i32> = (0..6).map(|i: i32| i % 3).collect();
    let (batch, windows) = record_batch(&records.iter().collect::<Vec<_>>());
    assert_eq!(windows, counts);
    // The loss of the mean of the windows' logits (the spec's pool), in f64 from the window
    // logits.
    let mut model = build();
    let z = model.forward(&batch, None).unwrap().to_host().unwrap();
    let mut want = 0.0f64;
    let mut first = 0;
    for (r, &n) in windows.iter().enumerate() {
        let mean: Vec<f64> = (0..3)
            .map(|c| (first..first + n).map(|w| z[w * 3 + c] as f64).sum::<f64>() / n as f64)
            .collect();
        let lse = mean.iter().map(|v| v.exp()).sum::<f64>().ln();
        want += (lse - mean[labels[r] as usize]) / windows.len() as f64;
        first += n;
    }
    let loss = model
        .backward_records(&batch, &windows, &labels, 1)
        .unwrap();
    assert!((loss as f64 - want).abs() < 1e-5, "{loss} vs {want}");
    // Predictions read the same mean.
    let predicted = model.predict_records(&batch, &windows).unwrap();
    assert_eq!(predicted.len(), records.len());

    // n copies of a record's first window train as that window alone.
    let singles: Vec<Vec<Vec<i32>>> = records.iter().map(|r| vec![r[0].clone()]).collect();
    let copies: Vec<Vec<Vec<i32>>> = records
        .iter()
        .zip([1usize, 2, 3, 1, 4, 2])
        .map(|(r, n)| vec![r[0].clone(); n])
        .collect();
    let grads = |set: &[Vec<Vec<i32>>], pool: Pool| {
        let mut m = build();
        m.window_pool = pool;
        let (b, w) = record_batch(&set.iter().collect::<Vec<_>>());
        let loss = m.backward_records(&b, &w, &labels, 1).unwrap();
        let g: Vec<(String, Vec<f64>)> = m
            .slots(1.0)
            .into_iter()
            .map(|s| {
                let v = s.grad.to_host().unwrap();
                (s.name.clone(), v.iter().map(|&x| x as f64).collect())
            })
            .collect();
        (loss, g)
    };
    for pool in [Pool::Mean, Pool::Max] {
        let (single_loss, single) = grads(&singles, pool);
        let (copies_loss, copied) = grads(&copies, pool);
        assert!((single_loss - copies_loss).abs() < 1e-6);
        for ((name, a), (_, b)) in copied.iter().zip(&single) {
            let err = common::rel(a, b);
            assert!(err < 1e-5, "{pool:?} {name}: {err}");
        }
        assert!(single.len() >= 4);
    }
}

/// --class-weight-gamma: the class weights from the counts take the exponent given (GHM-CS's
/// own default is 0.5), as run.json records them.
#[test]
fn class_weight_gamma_shapes_the_weights_from_the_counts() {
    use emrclass::model::imbalance::class_weights_from_counts;
    let dev = common::test_device(Schedule::Forward);
    let weights_with = |gamma: Option<f64>| {
        let mut o = small(0.03, 1);
        o.head = HeadKind::TextCnn;
        o.loss = emrclass::model::loss::LossKind::GhmCs;
        o.class_weight_gamma = gamma;
        run(&dev, &o).unwrap();
        let info: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(o.out.join("run.json")).unwrap())
                .unwrap();
        let counts: Vec<usize> = common::usizes(&info["train_counts"]);
        (common::f64s(&info["class_weights"]), counts)
    };
    let (default, counts) = weights_with(None);
    let (one, _) = weights_with(Some(1.0));
    let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-9);
    assert!(close(
        &default,
        &class_weights_from_counts(&counts, 0.5).unwrap()
    ));
    assert!(close(
        &one,
        &class_weights_from_counts(&counts, 1.0).unwrap()
    ));
    assert!(!close(&default, &one));
}

/// Early stopping: with a learning rate of 1e-30 (a zero one is refused) no weight moves by
/// even one ulp, so nothing improves after epoch 1 and patience 1 stops the run after epoch 2
/// of 5.
#[test]
fn patience_stops_a_run_that_no_longer_improves() {
    let dev = common::test_device(Schedule::Forward);
    let mut o = small(0.03, 5);
    o.head = HeadKind::TextCnn;
    o.settings.lr = 1e-30;
    o.patience = Some(1);
    o.eval_every = 2;
    o.metric = "accuracy".parse().unwrap();
    let logs = run(&dev, &o).unwrap();
    assert_eq!(logs.len(), 2);
    // Mid-epoch evaluations are logged between the epochs' lines.
    let log = std::fs::read_to_string(o.out.join("log.jsonl")).unwrap();
    let evals = log
        .lines()
        .filter(|l| l.contains("\"dev_accuracy\"") && !l.contains("\"loss\""))
        .count();
    assert!(evals >= 2, "{log}");
    assert!("f1".parse::<emrclass::train::metrics::Metric>().is_err());
    let state = checkpoint::load_state(&o.out.join("checkpoint")).unwrap();
    assert_eq!(
        (state.progress.best.unwrap().0, state.progress.bad_epochs),
        (1, 1)
    );
}

/// --ghm-warmup-epochs: GHM-CS runs with beta = 1 for that many epochs of optimizer steps (the
/// count is this data set's), while its histogram keeps filling; the first epoch's loss then
/// differs from the run with GHM weighting from the start.
#[test]
fn ghm_warm_up_counts_epochs_of_steps_and_keeps_the_histogram() {
    let dev = common::test_device(Schedule::Forward);
    let run_with = |warmup: usize| {
        let mut o = small(0.03, 2);
        o.head = HeadKind::TextCnn;
        o.loss = emrclass::model::loss::LossKind::GhmCs;
        o.log_every = 1;
        o.ghm_warmup_epochs = warmup;
        let logs = run(&dev, &o).unwrap();
        (o.out, logs)
    };
    let (out, warm) = run_with(1);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let first_epoch_steps = lines
        .iter()
        .filter(|v| v.get("loss").is_some() && v.get("step").is_some() && v["epoch"] == 1)
        .count();
    assert!(first_epoch_steps > 0);
    assert_eq!(info["ghm_warmup_steps"], first_epoch_steps as u64);
    let histogram = lines
        .iter()
        .find(|v| v["epoch"] == 1 && v.get("ghm_ema").is_some())
        .expect("epoch 1's line carries the histogram");
    let filled: f64 = histogram["ghm_ema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .sum();
    assert!(filled > 0.0, "the histogram fills during the warm-up");
    // Each bin's β from the histogram: the total over (filled bins x the bin's share), so
    // β_j S_j is the same for every filled bin; and GHM re-weights from the next step on.
    let ema: Vec<f64> = common::f64s(&histogram["ghm_ema"]);
    let beta: Vec<f64> = common::f64s(&histogram["ghm_beta"]);
    let total: f64 = ema.iter().sum();
    let filled_bins = ema.iter().filter(|&&s| s > 0.0).count() as f64;
    assert_eq!(beta.len(), ema.len());
    for (b, s) in beta.iter().zip(&ema) {
        let want = if *s > 0.0 {
            total / (filled_bins * s)
        } else {
            0.0
        };
        assert!(
            (b - want).abs() <= 1e-6 * want.abs().max(1.0),
            "{b} vs {want}"
        );
    }
    assert_eq!(histogram["ghm_weighting"], true);
    let (long_out, _) = run_with(5);
    let long_log = std::fs::read_to_string(long_out.join("log.jsonl")).unwrap();
    let still_warm = long_log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("ghm_weighting").is_some())
        .map(|v| v["ghm_weighting"] == false)
        .collect::<Vec<_>>();
    assert_eq!(
        still_warm,
        vec![true, true],
        "a warm-up longer than the run"
    );
    // With --accumulate 2 the loss sees two micro-batches per optimizer step: the warm-up
    // counts micro-batches, so it still lasts one epoch.
    let mut o = small(0.03, 1);
    o.head = HeadKind::TextCnn;
    o.settings.accumulate = 2;
    let logs = run(&dev, &o).unwrap();
    assert_eq!(logs.len(), 1);
    let info: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(o.out.join("run.json")).unwrap()).unwrap();
    let records = info["train_records"].as_u64().unwrap();
    let micro_batches = records.div_ceil(o.settings.batch_size as u64);
    assert!(micro_batches >= 3);
    assert_eq!(info["ghm_warmup_steps"], micro_batches);
    let (_, cold) = run_with(0);
    assert_ne!(
        warm[0].mean_loss, cold[0].mean_loss,
        "beta = 1 changes the first epoch"
    );
}
