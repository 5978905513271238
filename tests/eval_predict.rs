//! `eval` and `predict` rebuild a run's model from its folder exactly: evaluating the best
//! checkpoint on the dev file reproduces the best epoch's dev metrics, and predictions agree
//! with them; bad inputs give errors naming the file and line.

mod common;

use std::io::Write;
use std::path::PathBuf;

use emrclass::data::synthetic;
use emrclass::jobs::train::run;
use emrclass::options::TrainOptions;
use emrclass::train::inference::{eval, predict};
use emrclass::Schedule;

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_jsonl(path: &PathBuf, examples: &[emrclass::data::dataset::Example]) {
    let mut f = std::fs::File::create(path).unwrap();
    for e in examples {
        writeln!(
            f,
            "{}",
            serde_json::json!({"text": e.text, "label": e.label})
        )
        .unwrap();
    }
}

/// Writes a 75/25 split of `all` as train.jsonl and dev.jsonl in `dir`; returns the options of a
/// quiet run on those files into `dir/run`, and the dev examples.
fn split_run(
    dir: &std::path::Path,
    all: Vec<emrclass::data::dataset::Example>,
) -> (TrainOptions, Vec<emrclass::data::dataset::Example>) {
    let (train, dev_set) = emrclass::data::dataset::stratified_split(all, 0.25, 3).unwrap();
    let (train_path, dev_path) = (dir.join("train.jsonl"), dir.join("dev.jsonl"));
    write_jsonl(&train_path, &train);
    write_jsonl(&dev_path, &dev_set);
    let o = TrainOptions {
        train: Some(train_path),
        dev: Some(dev_path),
        out: dir.join("run"),
        quiet: true,
        ..TrainOptions::default()
    };
    (o, dev_set)
}

/// The epoch with the best dev macro-F1.
fn best_epoch(logs: &[emrclass::train::trainer::EpochLog]) -> &emrclass::train::trainer::EpochLog {
    logs.iter()
        .max_by(|a, b| a.dev.macro_avg.f1.total_cmp(&b.dev.macro_avg.f1))
        .unwrap()
}

#[test]
fn eval_and_predict_reproduce_the_best_epoch() {
    let dev = common::test_device(Schedule::Forward);
    let dir = temp_dir("eval-predict");
    let (mut o, dev_set) = split_run(&dir, synthetic::generate(7, 0.06));
    let dev_path = o.dev.clone().unwrap();
    o.settings.epochs = 3;
    let logs = run(&dev, &o).unwrap();
    let best = best_epoch(&logs);
    let read = emrclass::data::dataset::ReadOptions::default();
    let report = eval(&dev, &o.out, true, &dev_path, &read, 17).unwrap();
    assert_eq!(
        report.confusion, best.dev.confusion,
        "best checkpoint = best epoch"
    );
    let last = eval(&dev, &o.out, false, &dev_path, &read, 64).unwrap();
    assert_eq!(last.confusion, logs.last().unwrap().dev.confusion);

    // predict: the same texts (ids kept, one plain string line), the same accuracy.
    let input = dir.join("in.jsonl");
    let mut f = std::fs::File::create(&input).unwrap();
    for (i, e) in dev_set.iter().enumerate() {
        if i == 0 {
            writeln!(f, "{}", serde_json::json!(e.text)).unwrap();
        } else {
            writeln!(f, "{}", serde_json::json!({"id": i, "text": e.text})).unwrap();
        }
    }
    drop(f);
    let output = dir.join("out.jsonl");
    let n = predict(&dev, &o.out, true, &input, &output, "text", 5, false).unwrap();
    assert_eq!(n, dev_set.len());
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), dev_set.len());
    assert!(lines[0].get("id").is_none() && lines[1]["id"] == 1);
    let mut correct = 0;
    for (line, e) in lines.iter().zip(&dev_set) {
        let probs = line["probabilities"].as_object().unwrap();
        let sum: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-4, "{sum}");
        let top = probs
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap()
            .0;
        assert_eq!(line["label"], *top);
        correct += (line["label"] == e.label.as_str()) as usize;
    }
    let acc = correct as f64 / dev_set.len() as f64;
    assert!(
        (acc - best.dev.accuracy).abs() < 1e-12,
        "{acc} vs {}",
        best.dev.accuracy
    );

    // Named errors: a broken input line, an unknown label, a folder that is no run.
    std::fs::write(&input, "\"胸痛\"\n{\"text\": 3}\n").unwrap();
    let e = predict(&dev, &o.out, true, &input, &output, "text", 5, false)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("in.jsonl:2") && e.contains("`text`"), "{e}");
    let odd = dir.join("odd.jsonl");
    std::fs::write(
        &odd,
        "{\"text\": \"胸痛三天\", \"label\": \"not-a-class\"}\n",
    )
    .unwrap();
    let e = eval(&dev, &o.out, true, &odd, &read, 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not-a-class"), "{e}");
    let e = eval(&dev, &dir, true, &odd, &read, 8)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("state.json"), "{e}");
}

/// The `bag` head (hashed character n-grams, no vocabulary): it learns the synthetic set far
/// above chance, and `eval` rebuilds its input path from the run folder alone.
#[test]
fn the_bag_head_learns_and_eval_rebuilds_it() {
    let dev = common::test_device(Schedule::Forward);
    let dir = temp_dir("bag");
    let (base, _) = split_run(&dir, synthetic::generate(7, 0.1));
    let dev_path = base.dev.clone().unwrap();
    let mut o = TrainOptions {
        head: emrclass::model::heads::HeadKind::Bag,
        loss: emrclass::model::loss::LossKind::CrossEntropy,
        buckets: 4096,
        embedding_dim: 16,
        ..base
    };
    o.settings.epochs = 6;
    o.settings.batch_size = 8;
    o.settings.lr = emrclass::options::default_lr(o.head);
    let logs = run(&dev, &o).unwrap();
    let best = best_epoch(&logs);
    let classes = best.dev.per_class.len() as f64;
    assert!(
        best.dev.macro_avg.f1 > 4.0 / classes,
        "macro-F1 {} with {classes} classes",
        best.dev.macro_avg.f1
    );
    let state = emrclass::train::checkpoint::load_state(&o.out.join("best")).unwrap();
    assert_eq!((state.run.model.buckets, state.run.vocab), (4096, None));
    let read = emrclass::data::dataset::ReadOptions::default();
    let report = eval(&dev, &o.out, true, &dev_path, &read, 9).unwrap();
    assert_eq!(report.confusion, best.dev.confusion);
}

/// --long-text head-tail on the long-record set: the run folder keeps the mode, so `eval`
/// cuts the records the same way and reproduces the best epoch's confusion matrix.
/// A 2-epoch Text-CNN run with `long_text` on a split of the long-record set in `dir`: its
/// options, its dev examples and its epochs.
fn long_record_run(
    dev: &emrclass::Device,
    dir: &std::path::Path,
    long_text: emrclass::data::batching::LongText,
    max_len: usize,
) -> (
    TrainOptions,
    Vec<emrclass::data::dataset::Example>,
    Vec<emrclass::train::trainer::EpochLog>,
) {
    let (base, dev_set) = split_run(dir, synthetic::generate_long(7, 0.3));
    let mut o = TrainOptions {
        head: emrclass::model::heads::HeadKind::TextCnn,
        loss: emrclass::model::loss::LossKind::CrossEntropy,
        long_text,
        max_len,
        embedding_dim: 16,
        filters: 16,
        ..base
    };
    o.settings.epochs = 2;
    let logs = run(dev, &o).unwrap();
    (o, dev_set, logs)
}

#[test]
fn eval_cuts_long_records_as_the_run_did() {
    let dev = common::test_device(Schedule::Forward);
    let dir = temp_dir("long");
    let long_text = emrclass::data::batching::LongText::HeadTail;
    let (o, dev_set, logs) = long_record_run(&dev, &dir, long_text, 48);
    let dev_path = o.dev.clone().unwrap();
    let best = best_epoch(&logs);
    let state = emrclass::train::checkpoint::load_state(&o.out.join("best")).unwrap();
    assert_eq!(state.run.model.long_text, "head-tail");
    // The rebuilt input path cuts a long record at both ends: its last tokens are the record's.
    let loaded = emrclass::train::inference::load_run(&dev, &o.out, true).unwrap();
    let record = &dev_set[0].text;
    let ids = loaded.text.encode(record).unwrap().remove(0);
    assert_eq!(ids.len(), 48);
    let vocab = state.run.vocab.as_ref().unwrap();
    let last: String = ids[ids.len() - 5..ids.len() - 1]
        .iter()
        .map(|&i| vocab[i as usize].as_str())
        .collect();
    let tail: String = record
        .chars()
        .rev()
        .take(4)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    assert_eq!(last, tail, "head-tail keeps the record's end");
    let read = emrclass::data::dataset::ReadOptions::default();
    let report = eval(&dev, &o.out, true, &dev_path, &read, 13).unwrap();
    assert_eq!(report.confusion, best.dev.confusion);
}

/// --long-text chunks on the long-record set: the run folder keeps the mode and the window cap,
/// the rebuilt input path reads a long record as windows from its first characters to its last,
/// `eval` reproduces the best epoch's confusion matrix (the mean over windows, as in training),
/// and `predict` labels each record as `eval` counted it.
#[test]
fn eval_and_predict_read_long_records_as_windows() {
    let dev = common::test_device(Schedule::Random(4));
    let dir = temp_dir("chunks");
    let long_text = emrclass::data::batching::LongText::Chunks { max: 3 };
    let (o, dev_set, logs) = long_record_run(&dev, &dir, long_text, 40);
    let dev_path = o.dev.clone().unwrap();
    let best = best_epoch(&logs);
    let state = emrclass::train::checkpoint::load_state(&o.out.join("best")).unwrap();
    assert_eq!(
        (
            state.run.model.long_text.as_str(),
            state.run.model.max_chunks
        ),
        ("chunks", 3)
    );
    let loaded = emrclass::train::inference::load_run(&dev, &o.out, true).unwrap();
    let vocab = state.run.vocab.as_ref().unwrap();
    let text_of = |ids: &[i32]| -> String {
        ids.iter()
            .map(|&i| vocab[i as usize].as_str())
            .collect::<String>()
    };
    let record = &dev_set[0].text;
    let chars: Vec<char> = record.chars().collect();
    assert!(chars.len() > 3 * 38, "a record longer than 3 windows");
    let windows = loaded.text.encode(record).unwrap();
    assert_eq!(windows.len(), 3);
    let first = text_of(&windows[0][1..5]);
    let last = text_of(&windows[2][35..39]);
    assert_eq!(first, chars[..4].iter().collect::<String>());
    assert_eq!(last, chars[chars.len() - 4..].iter().collect::<String>());
    let read = emrclass::data::dataset::ReadOptions::default();
    let report = eval(&dev, &o.out, true, &dev_path, &read, 5).unwrap();
    assert_eq!(report.confusion, best.dev.confusion);
    // predict: one line per record, its label the class eval counted for it.
    let input = dir.join("texts.jsonl");
    let lines: Vec<String> = dev_set
        .iter()
        .map(|e| serde_json::json!({ "text": e.text }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n")).unwrap();
    let output = dir.join("predicted.jsonl");
    predict(&dev, &o.out, true, &input, &output, "text", 4, false).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let predicted: Vec<String> = lines
        .iter()
        .map(|l| l["label"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(predicted.len(), dev_set.len());
    let names = &state.run.labels;
    // Each record's probabilities: the softmax of the mean of its windows' logits.
    let mut model = loaded.model;
    for (e, line) in dev_set.iter().zip(&lines).take(6) {
        let windows = loaded.text.encode(&e.text).unwrap();
        let batch =
            emrclass::data::batching::pad(&windows.iter().map(Vec::as_slice).collect::<Vec<_>>());
        let z = model.forward(&batch, None).unwrap().to_host().unwrap();
        let k = names.len();
        let mean: Vec<f64> = (0..k)
            .map(|c| (0..windows.len()).map(|w| z[w * k + c] as f64).sum::<f64>())
            .map(|s| s / windows.len() as f64)
            .collect();
        let top = mean.iter().cloned().fold(f64::MIN, f64::max);
        let total: f64 = mean.iter().map(|v| (v - top).exp()).sum();
        for (c, name) in names.iter().enumerate() {
            let want = (mean[c] - top).exp() / total;
            let got = line["probabilities"][name].as_f64().unwrap();
            assert!((got - want).abs() < 1e-5, "{name}: {got} vs {want}");
        }
    }
    let mut counts = vec![0u64; names.len() * names.len()];
    for (e, p) in dev_set.iter().zip(&predicted) {
        let t = names.iter().position(|n| *n == e.label).unwrap();
        let q = names.iter().position(|n| n == p).unwrap();
        counts[t * names.len() + q] += 1;
    }
    assert_eq!(counts, report.confusion.counts);
}
