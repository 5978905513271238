//! Issue 19, item 3: a training run killed at any point resumes to the same final bits. The
//! real binary runs a short training (12 steps, a checkpoint every 2 and at each epoch's end)
//! with `EMRCLASS_TEST_CRASH=<point>@<n>` (src/crash.rs), which aborts the process the n-th
//! time it reaches `point`: after every optimizer step, and at every point inside every
//! checkpoint or report write (half the bytes written, the temporary file whole but not renamed,
//! the tensor file in place before state.json, the commit done before the old tensors are
//! removed). n runs up from 1 until the run no longer reaches the point, so every passage is
//! killed once. After each kill the folder must hold a whole checkpoint (state.json names a
//! tensor file that reads completely; a half-written `.tmp` is never named), and `--resume` (or,
//! killed before the first commit, a fresh run into the same folder) must end with the weights,
//! AdamW moments, GHM state, best checkpoint and step log of the run never killed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use emrclass::train::checkpoint;
use emrclass::weights::Checkpoint;

const POINTS: [&str; 5] = [
    "step",
    "write-partial",
    "write-unrenamed",
    "tensors-written",
    "state-renamed",
];

fn scratch() -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The short run; `crash` sets the hook, `resume` adds --resume.
fn train(out: &Path, crash: Option<(&str, u64)>, resume: bool) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emrclass"));
    c.args(["--device", "simt", "--seed", "3", "train", "--quiet"])
        .args([
            "--synthetic-scale",
            "0.02",
            "--epochs",
            "2",
            "--batch-size",
            "16",
        ])
        .args([
            "--head",
            "textcnn",
            "--embedding-dim",
            "16",
            "--filters",
            "8",
        ])
        .args([
            "--max-len",
            "32",
            "--checkpoint-every",
            "2",
            "--log-every",
            "1",
        ])
        .arg("--out")
        .arg(out)
        .env_remove("EMRCLASS_TEST_CRASH");
    if let Some((point, n)) = crash {
        c.env("EMRCLASS_TEST_CRASH", format!("{point}@{n}"));
    }
    match (resume, crash) {
        (true, _) => c.arg("--resume"),
        // Recovering a run killed before its first checkpoint: its folder holds what it wrote
        // (run.json, log lines), which a new run may replace only when asked.
        (false, None) if out.exists() => c.arg("--overwrite"),
        (false, _) => &mut c,
    };
    c.output().unwrap()
}

/// What must come out the same: every tensor of the latest and the best checkpoint (bits), the
/// latest state's progress and GHM state, and the step lines of log.jsonl.
#[derive(Debug, PartialEq)]
struct Outcome {
    latest: Vec<(String, Vec<u8>)>,
    best: Vec<(String, Vec<u8>)>,
    progress: String,
    ghm: Vec<u32>,
    steps: Vec<String>,
}

fn outcome(out: &Path) -> Outcome {
    let state = checkpoint::load_state(&out.join("checkpoint")).unwrap();
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    Outcome {
        latest: common::tensor_bits(&out.join("checkpoint")),
        best: common::tensor_bits(&out.join("best")),
        progress: format!("{:?}", state.progress),
        ghm: state.ghm_ema.iter().map(|x| x.to_bits()).collect(),
        steps: log
            .lines()
            .filter(|l| l.contains("\"step\""))
            .map(String::from)
            .collect(),
    }
}

/// After a kill: a checkpoint folder either has no state.json, or one that names a tensor file
/// that opens whole and holds every tensor it lists.
fn committed_checkpoint_is_whole(dir: &Path, what: &str) -> bool {
    if !dir.join("state.json").exists() {
        return false;
    }
    let state = checkpoint::load_state(dir).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        !state.tensors.ends_with(".tmp"),
        "{what}: state names {}",
        state.tensors
    );
    let ck = Checkpoint::open(&dir.join(&state.tensors)).unwrap_or_else(|e| panic!("{what}: {e}"));
    for n in ck.names() {
        ck.get(&n, &ck.shape(&n).unwrap())
            .unwrap_or_else(|e| panic!("{what}: {e}"));
    }
    true
}

/// Kills the run at `point`'s n-th passage for n = 1, 2, ... and recovers each; returns how many
/// passages were killed and whether a half-written `.tmp` was ever left behind.
fn kill_at_every_passage(point: &str, root: &Path, expected: &Outcome) -> (u64, bool) {
    let mut saw_partial = false;
    for n in 1.. {
        let out = root.join(format!("{point}-{n}"));
        let killed = train(&out, Some((point, n)), false);
        let stderr = String::from_utf8_lossy(&killed.stderr);
        if killed.status.success() {
            assert!(!stderr.contains("aborting at"), "{stderr}");
            assert_eq!(
                &outcome(&out),
                expected,
                "{point}@{n}: not reached, yet differs"
            );
            let _ = std::fs::remove_dir_all(&out);
            return (n - 1, saw_partial);
        }
        let what = format!("{point}@{n}");
        assert!(
            stderr.contains(&format!("EMRCLASS_TEST_CRASH: aborting at {what}")),
            "{what}: failed otherwise:\n{stderr}"
        );
        saw_partial |= std::fs::read_dir(out.join("checkpoint"))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            })
            .unwrap_or(false);
        let has_checkpoint = committed_checkpoint_is_whole(&out.join("checkpoint"), &what);
        committed_checkpoint_is_whole(&out.join("best"), &what);
        let recovered = train(&out, None, has_checkpoint);
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
            !std::fs::read_dir(out.join("checkpoint"))
                .unwrap()
                .flatten()
                .any(|e| e.file_name().to_string_lossy().ends_with(".tmp")),
            "{what}: leftovers of the killed save remain after the recovered run"
        );
        let _ = std::fs::remove_dir_all(&out);
    }
    unreachable!()
}

#[test]
fn a_run_killed_anywhere_resumes_to_the_same_bits() {
    let root = scratch();
    let whole = root.join("whole");
    let o = train(&whole, None, false);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let expected = outcome(&whole);
    assert_eq!(
        expected.steps.len(),
        12,
        "the run has 12 steps: {:?}",
        expected.steps
    );
    let results: Vec<(&str, (u64, bool))> = std::thread::scope(|s| {
        let handles: Vec<_> = POINTS
            .iter()
            .map(|&p| {
                let (root, expected) = (&root, &expected);
                s.spawn(move || (p, kill_at_every_passage(p, root, expected)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (point, (killed, _)) in &results {
        eprintln!("{point}: killed at each of {killed} passages, every one recovered");
    }
    let count = |p: &str| results.iter().find(|r| r.0 == p).unwrap().1;
    assert_eq!(count("step").0, 12, "a kill after every step");
    // Checkpoints at steps 2, 4, 6, 8, 10, 12, at the two epochs' ends and the best epochs'.
    assert!(count("tensors-written").0 >= 8, "{results:?}");
    assert!(
        count("write-partial").0 > count("tensors-written").0,
        "{results:?}"
    );
    assert!(
        count("write-partial").1,
        "a half-written file was left by some kill"
    );
    let _ = std::fs::remove_dir_all(&root);
}
