//! `emrclass train` end to end on the simulator: the built-in synthetic set is learned (macro-F1
//! far above chance), runs repeat bit for bit, the BERT path fine-tunes with the `paper` head,
//! and bad configurations and data give named errors.

mod common;

use std::path::PathBuf;

use emrclass::model::heads::HeadKind;
use emrclass::train::command::{run, TrainOptions};
use emrclass::Schedule;

fn small(scale: f64, epochs: usize) -> TrainOptions {
    let mut o = TrainOptions {
        synthetic_scale: scale,
        ..TrainOptions::default()
    };
    o.settings.epochs = epochs;
    o
}

#[test]
fn learns_the_synthetic_set_and_repeats_bit_for_bit() {
    let dev = common::test_device(Schedule::Forward);
    let logs = run(&dev, &small(0.15, 3)).unwrap();
    let best = logs.iter().map(|e| e.dev.macro_avg.f1).fold(0.0, f64::max);
    // 15 classes: a constant guess scores macro-F1 under 0.07.
    assert!(best > 0.3, "macro-F1 {best}");
    assert!(logs[2].mean_loss < logs[0].mean_loss);
    let again = run(&dev, &small(0.15, 3)).unwrap();
    for (a, b) in logs.iter().zip(&again) {
        assert_eq!(
            a.mean_loss.to_bits(),
            b.mean_loss.to_bits(),
            "same seed, same device: same run"
        );
        assert_eq!(a.dev, b.dev);
    }
}

#[test]
fn fine_tunes_a_bert_checkpoint_with_the_paper_head() {
    // The tiny HF-written BERT, with a vocab.txt of its 97 ids so the tokenizer can build.
    let dir = std::env::temp_dir().join(format!("emrclass-train-bert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_tiny");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), dir.join(f)).unwrap();
    }
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend("患者入院胸闷痛头晕血压糖尿病发热咳嗽痰喘息水肿关节肿乏力苍白怕热多汗腹痛震颤红斑肌酐尿酸反酸烧心二甲双胍阿司匹林".chars().map(|c| c.to_string()));
    vocab.extend((vocab.len()..97).map(|i| format!("x{i}")));
    std::fs::write(dir.join("vocab.txt"), vocab.join("\n")).unwrap();
    let dev = common::test_device(Schedule::Forward);
    let mut o = small(0.04, 1);
    o.encoder = Some(dir);
    o.head = HeadKind::Paper;
    o.max_len = 24;
    o.settings.lr = 1e-3;
    let logs = run(&dev, &o).unwrap();
    assert!(logs[0].mean_loss.is_finite() && logs[0].dev.accuracy > 0.0);
}

#[test]
fn named_errors() {
    let dev = common::test_device(Schedule::Forward);
    let mut o = small(0.04, 1);
    o.head = HeadKind::Cls;
    let e = run(&dev, &o).err().unwrap().to_string();
    assert!(e.contains("needs an encoder's pooled [CLS]"), "{e}");
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
