//! Issue 27: a pretraining run killed anywhere resumes to the same bits, as a training run does
//! (tests/crash_consistency.rs). The real binary pretrains the tiny fixture BERT for 6 steps
//! (2 epochs of 3; micro-batches of 8 summed in pairs, 8-bit AdamW moments, fp16 saved
//! activations, a checkpoint every 2 steps and at each epoch's end, a held-out evaluation every
//! 2 steps) with
//! `EMRCLASS_TEST_CRASH=<point>@<n>` (src/crash.rs), which aborts the process the n-th time it
//! reaches `point`: after every step and at every point of every checkpoint, report and encoder
//! write. After each kill the folder holds a whole checkpoint or none, and `--resume` (or, killed
//! before the first checkpoint, a new run with `--overwrite`) ends with the weights, moments,
//! log and encoder of the run never killed. Also: micro-batches sum to the mean of their
//! gradients, and a resume with other settings is refused by name.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use emrclass::data::synthetic;
use emrclass::train::pretraining::PretrainState;

const POINTS: [&str; 5] = [
    "step",
    "write-partial",
    "write-unrenamed",
    "tensors-written",
    "state-renamed",
];

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-pre-resume-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The fixture BERT (tests/fixtures/mlm_tiny) with a 97-token vocabulary of the synthetic
/// records' characters, and 60 records.
fn inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let enc = common::mlm_tiny_encoder(dir);
    let records = synthetic::generate(2, 1.0);
    let text = dir.join("records.txt");
    let lines: Vec<String> = records.into_iter().take(60).map(|e| e.text).collect();
    std::fs::write(&text, lines.join("\n")).unwrap();
    (enc, text)
}

/// The short run; `crash` sets the hook; `start`: "--resume", "--overwrite" or ""; `extra`
/// more flags.
fn pretrain(
    inputs: &(PathBuf, PathBuf),
    out: &Path,
    crash: Option<(&str, u64)>,
    start: &str,
    extra: &[&str],
) -> std::process::Output {
    // Two epochs, unless `extra` starts with another --epochs.
    let (epochs, extra) = match extra {
        ["--epochs", n, rest @ ..] => (*n, rest),
        _ => ("2", extra),
    };
    let mut c = Command::new(env!("CARGO_BIN_EXE_emrclass"));
    c.args(["--device", "simt", "--seed", "5", "pretrain", "--quiet"])
        .arg("--encoder")
        .arg(&inputs.0)
        .arg("--text")
        .arg(&inputs.1)
        .args([
            "--line-by-line",
            "--max-len",
            "24",
            "--eval-fraction",
            "0.2",
        ])
        .args(["--epochs", epochs])
        .args(["--batch-size", "8", "--accumulate", "2"])
        .args([
            "--optimizer",
            "adamw8bit-all",
            "--saved-activations",
            "fp16",
            "--lr",
            "2e-3",
        ])
        .args([
            "--checkpoint-every",
            "2",
            "--eval-every",
            "2",
            "--log-every",
            "1",
        ])
        .args(extra)
        .arg("--out")
        .arg(out)
        .env_remove("EMRCLASS_TEST_CRASH");
    if let Some((point, n)) = crash {
        c.env("EMRCLASS_TEST_CRASH", format!("{point}@{n}"));
    }
    if !start.is_empty() {
        c.arg(start);
    }
    c.output().unwrap()
}

/// What must come out the same: the latest checkpoint's tensors (bits) and progress, the
/// encoder's weights (bits) and every log line.
#[derive(Debug, PartialEq)]
struct Outcome {
    latest: Vec<(String, Vec<u8>)>,
    progress: String,
    encoder: Vec<u8>,
    log: Vec<String>,
}

fn outcome(out: &Path) -> Outcome {
    let state: PretrainState =
        emrclass::train::checkpoint::read_state(&out.join("checkpoint")).unwrap();
    Outcome {
        latest: common::tensor_bits(&out.join("checkpoint")),
        progress: format!("{:?}", state.progress),
        encoder: std::fs::read(out.join("encoder/model.safetensors")).unwrap(),
        log: std::fs::read_to_string(out.join("log.jsonl"))
            .unwrap()
            .lines()
            .map(String::from)
            .collect(),
    }
}

/// After a kill: the checkpoint folder has no state.json, or one naming a whole tensor file.
fn committed_checkpoint_is_whole(dir: &Path, what: &str) -> bool {
    if !dir.join("state.json").exists() {
        return false;
    }
    let state: PretrainState =
        emrclass::train::checkpoint::read_state(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    let ck = emrclass::weights::Checkpoint::open(&dir.join(&state.tensors))
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    for n in ck.names() {
        // Every tensor reads whole (u8 codes through raw, fp32 through get).
        assert!(ck.raw(&n).is_some(), "{what}: {n}");
    }
    true
}

/// Kills the run at `point`'s n-th passage for n = 1, 2, ... and recovers each; returns how many
/// passages were killed.
fn kill_at_every_passage(
    inputs: &(PathBuf, PathBuf),
    point: &str,
    root: &Path,
    expected: &Outcome,
) -> u64 {
    for n in 1.. {
        let out = root.join(format!("{point}-{n}"));
        let killed = pretrain(inputs, &out, Some((point, n)), "", &[]);
        let stderr = String::from_utf8_lossy(&killed.stderr);
        if killed.status.success() {
            assert!(!stderr.contains("aborting at"), "{stderr}");
            assert_eq!(
                &outcome(&out),
                expected,
                "{point}@{n}: not reached, yet differs"
            );
            let _ = std::fs::remove_dir_all(&out);
            return n - 1;
        }
        let what = format!("{point}@{n}");
        assert!(
            stderr.contains(&format!("EMRCLASS_TEST_CRASH: aborting at {what}")),
            "{what}: failed otherwise:\n{stderr}"
        );
        let has_checkpoint = committed_checkpoint_is_whole(&out.join("checkpoint"), &what);
        // Killed before its first checkpoint, the folder holds what the run wrote (run.json,
        // log lines), which a new run replaces only when asked.
        let start = if has_checkpoint {
            "--resume"
        } else {
            "--overwrite"
        };
        let recovered = pretrain(inputs, &out, None, start, &[]);
        assert!(
            recovered.status.success(),
            "{what}: recovery (resume: {has_checkpoint}) failed:\n{}",
            String::from_utf8_lossy(&recovered.stderr)
        );
        assert_eq!(
            &outcome(&out),
            expected,
            "{what}: a different run after recovery"
        );
        assert!(
            !out.join("encoder.tmp").exists(),
            "{what}: the half-written encoder folder remains"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    unreachable!()
}

#[test]
fn a_pretraining_run_killed_anywhere_resumes_to_the_same_bits() {
    let root = scratch("kill");
    let inputs = inputs(&root);
    let whole = root.join("whole");
    let o = pretrain(&inputs, &whole, None, "", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = outcome(&whole);
    let steps = expected
        .log
        .iter()
        .filter(|l| l.contains("\"loss\""))
        .count();
    assert_eq!(steps, 6, "2 epochs of 3 steps: {:?}", expected.log);
    let evals = expected
        .log
        .iter()
        .filter(|l| l.contains("eval_perplexity"))
        .count();
    // Before training, at steps 2 and 4 (mid-epoch), and at both epochs' ends.
    assert_eq!(evals, 5, "{:?}", expected.log);
    assert!(whole.join("report.html").exists());
    let results: Vec<(&str, u64)> = std::thread::scope(|s| {
        let handles: Vec<_> = POINTS
            .iter()
            .map(|&p| {
                let (root, expected, inputs) = (&root, &expected, &inputs);
                s.spawn(move || (p, kill_at_every_passage(inputs, p, root, expected)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (point, killed) in &results {
        eprintln!("{point}: killed at each of {killed} passages, every one recovered");
    }
    let count = |p: &str| results.iter().find(|r| r.0 == p).unwrap().1;
    assert_eq!(count("step"), 6, "a kill after every step");
    // Checkpoints at steps 2, 4 and 6 and at the two epochs' ends.
    assert!(count("tensors-written") >= 5, "{results:?}");
    assert!(
        count("write-partial") > count("tensors-written"),
        "{results:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_resume_with_other_settings_or_without_a_checkpoint_is_refused_by_name() {
    let root = scratch("refuse");
    let inputs = inputs(&root);
    let out = root.join("run");
    let o = pretrain(&inputs, &out, None, "", &["--stop-after-steps", "3"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = pretrain(&inputs, &out, None, "--resume", &["--mask-rate", "0.2"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("mask_rate: 0.15 then, 0.2 now"),
        "{err}"
    );
    // A new run into the folder without --resume or --overwrite: refused, nothing touched.
    let before = common::tensor_bits(&out.join("checkpoint"));
    let o = pretrain(&inputs, &out, None, "", &["--stop-after-steps", "1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("is not empty"), "{err}");
    assert_eq!(common::tensor_bits(&out.join("checkpoint")), before);
    // --resume of a folder with no checkpoint.
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = pretrain(&inputs, &empty, None, "--resume", &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("holds no checkpoint"),
        "{err}"
    );
    // The settings of the run may grow its epochs: a third epoch continues from the second.
    let o = pretrain(&inputs, &out, None, "--resume", &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = pretrain(&inputs, &out, None, "--resume", &["--epochs", "3"]);
    let said = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.success() && said.contains("from 2 to 3 epochs"),
        "{said}{err}"
    );
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    assert_eq!(
        log.matches("\"loss\"").count(),
        9,
        "3 epochs of 3 steps:\n{log}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// `--accumulate`: the step's gradient is the mean of its micro-batches' gradients, each the
/// mean over its own masked tokens (transformers' Trainer accumulates so too).
#[test]
fn micro_batches_sum_to_the_mean_of_their_gradients() {
    use emrclass::data::masking::MaskedBatch;
    use emrclass::model::masked_lm::MaskedLm;
    use emrclass::rng::Rng;

    let dev = common::test_device(emrclass::Schedule::Reverse);
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlm_tiny");
    let mut model = MaskedLm::load_dir(&dev, &fixture, &mut Rng::new(1))
        .unwrap()
        .model;
    let batch = |seed: u64, rows: usize, len: usize| {
        let mut rng = Rng::new(seed);
        let ids: Vec<i32> = (0..rows * len)
            .map(|_| 5 + (rng.next_u64() % 90) as i32)
            .collect();
        let positions: Vec<i32> = (0..(rows * len) as i32).filter(|p| p % 4 == 1).collect();
        MaskedBatch {
            batch: rows,
            len,
            labels: positions.iter().map(|&p| ids[p as usize]).collect(),
            input_ids: ids,
            attention_mask: vec![1; rows * len],
            positions,
        }
    };
    let (a, b) = (batch(1, 3, 9), batch(2, 2, 13));
    let grads = |m: &mut MaskedLm| -> Vec<Vec<f32>> {
        m.slots()
            .iter()
            .map(|s| s.grad.to_host().unwrap())
            .collect()
    };
    model.forward_backward(&a, None).unwrap();
    let ga = grads(&mut model);
    model.forward_backward(&b, None).unwrap();
    let gb = grads(&mut model);
    model.forward_backward(&a, None).unwrap();
    {
        let _sum = dev.accumulate_gradients();
        model.forward_backward(&b, None).unwrap();
    }
    let summed = grads(&mut model);
    let mut worst = 0.0f32;
    for ((s, x), y) in summed.iter().zip(&ga).zip(&gb) {
        for ((s, x), y) in s.iter().zip(x).zip(y) {
            worst = worst.max((s - (x + y)).abs() / (1e-3 + (x + y).abs()));
        }
    }
    assert!(
        worst < 1e-4,
        "summed gradients differ from the sum: {worst}"
    );
}
