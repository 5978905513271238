//! Issue 19, item 1: every setting is checked before any work. Each refusal runs the real
//! `emrclass` binary and asserts that it fails, that the error names the flag and the value (or,
//! for the data rules, the file and what is wrong), that no device was opened (no `device:`
//! line) and that nothing was written (the --out folder does not exist).

mod common;

use std::path::{Path, PathBuf};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-settings-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs emrclass on the simulator; returns (success, stderr).
fn emrclass(args: &[&str]) -> (bool, String) {
    let (ok, _, err) = common::emrclass_cli(args);
    (ok, err)
}

/// `args` must be refused with every `needles` in the message, `out` must not exist afterwards,
/// and, `before_device`, the device must not have been opened.
fn refused(args: &[&str], needles: &[&str], out: &Path, before_device: bool) {
    let (ok, err) = emrclass(args);
    assert!(!ok, "{args:?} was accepted:\n{err}");
    for n in needles {
        assert!(
            err.contains(n),
            "{args:?}: the error does not say `{n}`:\n{err}"
        );
    }
    assert!(
        !(before_device && err.contains("device:")),
        "{args:?}: the device was opened before the refusal:\n{err}"
    );
    assert!(!out.exists(), "{args:?}: {} was written", out.display());
}

/// Refused before any work: no device opened, nothing written.
fn refused_before_work(args: &[&str], needles: &[&str], out: &Path) {
    refused(args, needles, out, true)
}

#[test]
fn train_flags_are_refused_before_any_work() {
    let dir = scratch("train");
    let out = dir.join("run");
    let out_s = out.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (&["--epochs", "0"], &["--epochs 0", "at least 1"]),
        (&["--batch-size", "0"], &["--batch-size 0", "at least 1"]),
        (&["--accumulate", "0"], &["--accumulate 0", "at least 1"]),
        (
            &["--max-len", "0"],
            &["--max-len 0", "at least 4", "Text-CNN"],
        ),
        (
            &["--head", "bigru", "--max-len", "2"],
            &["--max-len 2", "at least 3"],
        ),
        (
            &["--head", "textcnn", "--max-len", "3"],
            &["--max-len 3", "at least 4"],
        ),
        (&["--lr", "nan"], &["--lr NaN", "finite number > 0"]),
        (&["--lr", "-1"], &["--lr -1", "finite number > 0"]),
        (&["--lr", "0"], &["--lr 0", "> 0"]),
        (
            &["--input-lr-scale", "inf"],
            &["--input-lr-scale inf", "finite"],
        ),
        (
            &["--weight-decay", "-0.1"],
            &["--weight-decay -0.1", "finite number ≥ 0"],
        ),
        (
            &["--lr", "0.5", "--weight-decay", "2"],
            &["--weight-decay 2 with --lr 0.5", "must stay above 0"],
        ),
        (&["--dropout", "1"], &["--dropout 1", "[0, 1)"]),
        (&["--dropout", "-0.1"], &["--dropout -0.1", "[0, 1)"]),
        (&["--dev-fraction", "0"], &["--dev-fraction 0", "(0, 1)"]),
        (&["--dev-fraction", "1"], &["--dev-fraction 1", "(0, 1)"]),
        (&["--synthetic-scale", "0"], &["--synthetic-scale 0", "> 0"]),
        (&["--embedding-dim", "0"], &["--embedding-dim 0"]),
        (&["--filters", "0"], &["--filters 0"]),
        (&["--rnn-hidden", "0"], &["--rnn-hidden 0"]),
        (&["--log-every", "0"], &["--log-every 0"]),
        (&["--patience", "0"], &["--patience 0"]),
        (
            &["--text-field", ""],
            &["--text-field", "must name a field"],
        ),
        (&["--head", "cls"], &["--head cls", "--encoder"]),
        (&["--head", "bogus"], &["--head bogus", "no head named"]),
        (&["--metric", "auc"], &["--metric auc"]),
        (
            &["--optimizer", "sgd"],
            &["--optimizer sgd", "adamw, adamw8bit, adamw8bit-all"],
        ),
        (
            &["--saved-activations", "fp16"],
            &["--saved-activations fp16", "give --encoder"],
        ),
        (&["--head", "bag", "--buckets", "0"], &["--buckets 0"]),
        (
            &["--long-text", "middle"],
            &["--long-text middle", "head, head-tail or chunks"],
        ),
        (
            &["--max-chunks", "3"],
            &["--max-chunks applies to --long-text chunks"],
        ),
        (
            &["--long-text", "chunks", "--max-chunks", "0"],
            &["--max-chunks 0"],
        ),
        (
            &["--long-text", "chunks", "--chunk-pool", "sum"],
            &["no chunk pool `sum`", "mean or max"],
        ),
        (
            &["--class-weight-gamma", "-1"],
            &["--class-weight-gamma -1", "finite number ≥ 0"],
        ),
        (
            &["--class-weight-gamma", "1", "--class-weights", "w.csv"],
            &["--class-weight-gamma shapes the weights from the counts"],
        ),
        (
            &["--head", "bag", "--long-text", "head-tail"],
            &[
                "--head bag reads every n-gram",
                "--long-text does not apply",
            ],
        ),
        (
            &["--long-text", "head-tail", "--chunk-pool", "max"],
            &["--chunk-pool applies to --long-text chunks"],
        ),
        (
            &["--head", "bag", "--encoder", "/no/such/model"],
            &["--head bag", "drop --encoder"],
        ),
    ];
    for (flags, needles) in cases {
        let mut args = vec!["train", "--quiet", "--out", out_s];
        args.extend_from_slice(flags);
        refused_before_work(&args, needles, &out);
    }
    // Several problems are reported together.
    refused_before_work(
        &[
            "train",
            "--out",
            out_s,
            "--epochs",
            "0",
            "--lr",
            "nan",
            "--max-len",
            "1",
        ],
        &[
            "3 settings are invalid",
            "--epochs 0",
            "--lr NaN",
            "--max-len 1",
        ],
        &out,
    );
}

#[test]
fn global_and_other_commands_flags_are_refused_before_any_work() {
    let dir = scratch("other");
    let out = dir.join("out");
    let o = out.to_str().unwrap();
    let cases: &[(&[&str], &[&str])] = &[
        (
            &["--memory-budget", "100MiB", "train", "--out", o],
            &["--memory-budget 100MiB", "--context-reserve 320MiB"],
        ),
        (
            &["--memory-budget", "lots", "train", "--out", o],
            &["--memory-budget", "`lots`"],
        ),
        (
            &["experiment", "--out", o, "--epochs", "0"],
            &["--epochs 0"],
        ),
        (
            &[
                "experiment",
                "--out",
                o,
                "--heads",
                "textcnn",
                "--max-len",
                "3",
            ],
            &["--max-len 3"],
        ),
        (
            &["experiment", "--out", o, "--heads", "paper,nope"],
            &["--heads nope"],
        ),
        (
            &["experiment", "--out", o, "--seeds", "1,2,1"],
            &["--seeds", "each seed once"],
        ),
        (
            &["eval", "--run", o, "--data", o, "--batch-size", "0"],
            &["--batch-size 0"],
        ),
        (
            &["eval", "--run", o, "--data", o, "--label-field", " "],
            &["--label-field"],
        ),
        (
            &[
                "predict",
                "--run",
                o,
                "--input",
                o,
                "--output",
                o,
                "--batch-size",
                "0",
            ],
            &["--batch-size 0"],
        ),
        (
            &[
                "encode",
                "--model",
                o,
                "--texts",
                o,
                "--output",
                o,
                "--max-len",
                "1",
            ],
            &["--max-len 1", "[CLS] and [SEP]"],
        ),
        (&["plan", "--model", o, "--batch", "0"], &["--batch 0"]),
        (
            &["plan", "--model", o, "--head", "bag"],
            &["--head bag", "no encoder to plan"],
        ),
        (
            &["plan", "--model", o, "--classes", "1"],
            &["--classes 1", "at least 2"],
        ),
        (
            &["plan", "--model", o, "--seq", "3"],
            &["--seq 3", "at least 4"],
        ),
        (
            &["plan", "--model", o, "--budget", "4 bananas"],
            &["--budget", "unknown unit"],
        ),
        (&["bench", "gemm", "--reps", "0"], &["--reps 0"]),
        (
            &["bench", "gemm", "--shapes", "64x64"],
            &["--shapes 64x64", "MxNxK"],
        ),
        (
            &["bench", "gemm", "--layouts", "nq"],
            &["--layouts", "`nq`"],
        ),
        (&["bench", "gemm", "--tiles", "7x7"], &["--tiles", "7x7"]),
        (
            &["bench", "step", "--hidden", "100", "--heads", "12"],
            &["--hidden 100", "multiple of --heads 12"],
        ),
        (&["bench", "step", "--len", "2"], &["--len 2", "at least 4"]),
        (
            &["bench", "loss", "--classes", "1"],
            &["--classes 1", "at least 2"],
        ),
        (&["bench", "attention", "--batch", "0"], &["--batch 0"]),
        (&["bench", "lstm", "--hidden", "0"], &["--hidden 0"]),
        (&["bench", "copy", "--mib", "0"], &["--mib 0"]),
    ];
    for (args, needles) in cases {
        refused_before_work(args, needles, &out);
    }
}

fn write(path: &Path, lines: &[(&str, &str)]) {
    let text: String = lines
        .iter()
        .map(|(t, l)| format!("{}\n", serde_json::json!({"text": t, "label": l})))
        .collect();
    std::fs::write(path, text).unwrap();
}

/// Data rules: refused right after reading, before the run folder is written.
fn refused_data(args: &[&str], needles: &[&str], out: &Path) {
    refused(args, needles, out, false)
}

#[test]
fn data_without_two_classes_or_a_dev_record_is_refused() {
    let dir = scratch("data");
    let out = dir.join("run");
    let o = out.to_str().unwrap();
    let one = dir.join("one.jsonl");
    write(&one, &[("患者胸闷", "a")]);
    let same = dir.join("same.jsonl");
    write(
        &same,
        &[("患者胸闷", "a"), ("患者头晕", "a"), ("发热", "a")],
    );
    let two = dir.join("two.jsonl");
    write(&two, &[("患者胸闷", "a"), ("患者头晕", "b")]);
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let p = |p: &Path| p.to_str().unwrap().to_string();
    refused_data(
        &["train", "--quiet", "--out", o, "--train", &p(&one)],
        &[
            "one.jsonl",
            "1 training record of 1 class",
            "at least two classes",
        ],
        &out,
    );
    refused_data(
        &["train", "--quiet", "--out", o, "--train", &p(&same)],
        &["same.jsonl", "at least two classes"],
        &out,
    );
    refused_data(
        &["train", "--quiet", "--out", o, "--train", &p(&two)],
        &[
            "two.jsonl",
            "the dev split is empty",
            "--dev-fraction 0.2",
            "--dev FILE",
        ],
        &out,
    );
    refused_data(
        &[
            "train",
            "--quiet",
            "--out",
            o,
            "--train",
            &p(&two),
            "--dev",
            &p(&empty),
        ],
        &["empty.jsonl"],
        &out,
    );
}

#[test]
fn classes_missing_from_dev_are_named_in_a_warning() {
    let dir = scratch("warn");
    let data = dir.join("d.jsonl");
    write(
        &data,
        &[("胸闷", "a"), ("头晕", "a"), ("发热", "a"), ("咳嗽", "b")],
    );
    let out = dir.join("run");
    let (ok, err) = emrclass(&[
        "train",
        "--quiet",
        "--epochs",
        "1",
        "--out",
        out.to_str().unwrap(),
        "--train",
        data.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: 1 of 2 classes have no dev record") && err.contains(": b"),
        "{err}"
    );
}

#[test]
fn a_rate_over_no_measurable_time_is_not_printed() {
    use emrclass::train::trainer::{per_second, rate_text};
    assert_eq!(per_second(64, 0.0), None);
    assert_eq!(per_second(64, 0.0004), None);
    assert_eq!(per_second(64, 2.0), Some(32.0));
    assert_eq!(rate_text(None), "-");
    assert_eq!(rate_text(Some(31.6)), "32");
}

/// --weight-decay reaches the optimizer: run.json records it, and two runs that differ only in
/// it end with different weights (the head's linear decays; same seed, same batches).
#[test]
fn weight_decay_reaches_the_optimizer() {
    let dir = scratch("decay");
    let train = |decay: &str| {
        let out = dir.join(format!("run-{decay}"));
        let (ok, err) = emrclass(&[
            "train",
            "--quiet",
            "--head",
            "bag",
            "--synthetic-scale",
            "0.02",
            "--epochs",
            "1",
            "--weight-decay",
            decay,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let info = std::fs::read_to_string(out.join("run.json")).unwrap();
        assert!(
            info.contains(&format!("weight_decay={decay} ")),
            "run.json does not record --weight-decay {decay}"
        );
        common::tensor_bits(&out.join("checkpoint"))
    };
    let (none, strong) = (train("0"), train("0.5"));
    let weight = |bits: &[(String, Vec<u8>)]| {
        bits.iter()
            .find(|(name, _)| name.ends_with("classifier.weight"))
            .unwrap_or_else(|| {
                panic!(
                    "no classifier weight in {:?}",
                    bits.iter().map(|b| &b.0).collect::<Vec<_>>()
                )
            })
            .1
            .clone()
    };
    assert_ne!(weight(&none), weight(&strong));
}
