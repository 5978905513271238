//! Issue 31, items 1-5: nothing a user did is lost or silently mixed with another run. Each test
//! runs the real `emrclass` binary and checks the run folder byte for byte afterwards: two runs
//! into one folder, a new run over a finished one, a CSV with an unclosed quote, Ctrl-C, SIGTERM
//! and a closed pipe, and refusals that used to write.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-lost-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small training run on the built-in set (a few seconds on the simulator), run in `cwd`;
/// `extra` adds flags or replaces these defaults.
fn train(cwd: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emrclass"));
    c.current_dir(cwd)
        .args(["--device", "simt", "train", "--quiet"]);
    let defaults = [
        ("--synthetic-scale", "0.05"),
        ("--epochs", "2"),
        ("--batch-size", "8"),
        ("--head", "textcnn"),
        ("--embedding-dim", "16"),
        ("--filters", "8"),
        ("--max-len", "32"),
        ("--log-every", "1"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            c.args([flag, value]);
        }
    }
    c.args(extra);
    c
}

fn output(mut c: Command) -> (i32, String, String) {
    let o = c.output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every file of a folder, by relative path, with its bytes.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

/// What two runs must share to be the same run: the checkpoints' tensors (bits) and state.
fn same_run(a: &Path, b: &Path) {
    for sub in ["checkpoint", "best"] {
        assert_eq!(
            common::tensor_bits(&a.join(sub)),
            common::tensor_bits(&b.join(sub)),
            "{sub}/ of {} and {}",
            a.display(),
            b.display()
        );
        assert_eq!(
            std::fs::read(a.join(sub).join("state.json")).unwrap(),
            std::fs::read(b.join(sub).join("state.json")).unwrap(),
            "{sub}/state.json"
        );
    }
}

/// Waits until `path` exists (or the child ends).
fn wait_for(child: &mut Child, path: &Path) {
    let start = Instant::now();
    while !path.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before {} appeared",
            path.display()
        );
        assert!(start.elapsed() < Duration::from_secs(120), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits for the child; its exit status and what it wrote on stderr (piped).
fn finish(mut child: Child) -> (std::process::ExitStatus, String) {
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .expect("stderr piped")
        .read_to_string(&mut err)
        .unwrap();
    (status, err)
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn a_second_run_into_a_folder_in_use_or_finished_is_refused_and_changes_nothing() {
    let dir = scratch("second");
    // Runs of a few seconds: the second start must find the first still running.
    let slow = ["--synthetic-scale", "0.25"];
    let whole = dir.join("whole");
    let (rc, _, err) = output(train(&dir, &[&slow[..], &["--out", "whole"]].concat()));
    assert_eq!(rc, 0, "{err}");

    // Item 1: while a run holds its folder, a second one is refused, naming the folder and the
    // holder's pid; the first run's result is that of a run alone.
    let shared = dir.join("shared");
    let mut first = train(&dir, &[&slow[..], &["--out", "shared"]].concat())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&mut first, &shared.join("run.json"));
    let (rc, _, err) = output(train(&dir, &["--out", "shared", "--head", "bigru"]));
    assert_ne!(rc, 0);
    assert!(
        err.contains("shared is in use by another run")
            && err.contains(&format!("pid {}", first.id())),
        "{err}"
    );
    assert!(first.wait().unwrap().success());
    same_run(&shared, &whole);
    let log = std::fs::read_to_string(shared.join("log.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"end_step\"")).count(),
        2,
        "one run's epochs only: {log}"
    );

    // Item 2: a finished run's folder is refused for a new run, byte for byte unchanged...
    let before = snapshot(&shared);
    let (rc, _, err) = output(train(&dir, &["--out", "shared", "--head", "bigru"]));
    assert_ne!(rc, 0);
    assert!(
        err.contains("is not empty") && err.contains("--resume") && err.contains("--overwrite"),
        "{err}"
    );
    assert_eq!(
        snapshot(&shared),
        before,
        "a refused run changed the folder"
    );
    // ... and replaced with --overwrite: then it is the new run's alone.
    let (rc, _, err) = output(train(
        &dir,
        &["--out", "shared", "--overwrite", "--head", "bigru"],
    ));
    assert_eq!(rc, 0, "{err}");
    let state = emrclass::train::checkpoint::load_state(&shared.join("checkpoint")).unwrap();
    assert_eq!(state.run.model.head, "bigru");
    // --overwrite never removes what no run wrote.
    std::fs::write(shared.join("notes.txt"), "mine").unwrap();
    let before = snapshot(&shared);
    let (rc, _, err) = output(train(&dir, &["--out", "shared", "--overwrite"]));
    assert_ne!(rc, 0);
    assert!(err.contains("notes.txt"), "{err}");
    assert_eq!(snapshot(&shared), before);

    // The default folder: runs/train, then runs/train-2; the first is left as it was.
    let (rc, out1, err) = output(train(&dir, &[]));
    assert_eq!(rc, 0, "{err}");
    assert!(out1.contains("run folder: runs/train "), "{out1}");
    let first_run = snapshot(&dir.join("runs/train"));
    let (rc, out2, err) = output(train(&dir, &[]));
    assert_eq!(rc, 0, "{err}");
    assert!(out2.contains("run folder: runs/train-2 "), "{out2}");
    assert_eq!(snapshot(&dir.join("runs/train")), first_run);
    same_run(&dir.join("runs/train"), &dir.join("runs/train-2"));
    // --resume without --out: which of the two is the user's to say.
    let (rc, _, err) = output(train(&dir, &["--resume"]));
    assert_ne!(rc, 0);
    assert!(
        err.contains("train, train-2") && err.contains("--out"),
        "{err}"
    );
    // --overwrite of a folder that holds runs (a typo for runs/train): refused, all kept.
    let before = snapshot(&dir.join("runs"));
    let (rc, _, err) = output(train(&dir, &["--out", "runs", "--overwrite"]));
    assert_ne!(rc, 0);
    assert!(
        err.contains("holds what no run wrote (train, train-2)"),
        "{err}"
    );
    assert_eq!(snapshot(&dir.join("runs")), before);
}

#[test]
fn a_stale_lock_of_a_killed_run_is_named_and_taken_over() {
    let dir = scratch("stale");
    let mut child = train(&dir, &["--out", "killed", "--checkpoint-every", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&mut child, &dir.join("killed/checkpoint/state.json"));
    signal(&child, libc::SIGKILL);
    child.wait().unwrap();
    let (rc, _, err) = output(train(&dir, &["--out", "killed", "--resume"]));
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("was last held by pid") && err.contains("ended without releasing it"),
        "{err}"
    );
}

#[test]
fn ctrl_c_and_sigterm_stop_at_a_checkpoint_that_resumes_to_the_same_bits() {
    let dir = scratch("signals");
    let (rc, _, err) = output(train(&dir, &["--out", "whole"]));
    assert_eq!(rc, 0, "{err}");
    for (sig, name) in [(libc::SIGINT, "int"), (libc::SIGTERM, "term")] {
        // Before the first checkpoint (none is due: --checkpoint-every 0).
        let mut child = train(&dir, &["--out", name])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for(&mut child, &dir.join(name).join("log.jsonl"));
        signal(&child, sig);
        let (status, err) = finish(child);
        assert_eq!(status.code(), Some(128 + sig), "{err}");
        assert!(
            err.contains("interrupted at step") && err.contains("--resume"),
            "{err}"
        );
        let state = emrclass::train::checkpoint::load_state(&dir.join(name).join("checkpoint"))
            .expect("the interrupted run wrote a checkpoint");
        assert!(state.progress.step >= 1);
        let (rc, _, err) = output(train(&dir, &["--out", name, "--resume"]));
        assert_eq!(rc, 0, "{err}");
        same_run(&dir.join(name), &dir.join("whole"));
    }
}

#[test]
fn a_second_ctrl_c_ends_the_run_at_once() {
    let dir = scratch("twice");
    // Long steps: a wide BiGRU over a big batch, so the second signal comes mid-step.
    let mut child = Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .current_dir(&dir)
        .args(["--device", "simt", "train", "--quiet", "--out", "run"])
        .args([
            "--synthetic-scale",
            "0.3",
            "--batch-size",
            "512",
            "--max-len",
            "128",
        ])
        .args(["--head", "bigru", "--rnn-hidden", "256", "--log-every", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first step's log line: the second step is under way (waiting for run.json only, a
    // loaded machine could deliver the first signal before the loop began, which then stops
    // at once by itself, before the second signal comes).
    wait_for(&mut child, &dir.join("run/log.jsonl"));
    signal(&child, libc::SIGINT);
    std::thread::sleep(Duration::from_millis(50));
    signal(&child, libc::SIGINT);
    let (status, err) = finish(child);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        err.contains("again to stop at once") && !err.contains("interrupted at step"),
        "the second signal did not end the run at once:\n{err}"
    );
}

#[test]
fn a_closed_stdout_stops_the_output_not_the_run() {
    let dir = scratch("pipe");
    let (rc, _, err) = output(train(&dir, &["--out", "whole"]));
    assert_eq!(rc, 0, "{err}");
    // `emrclass train | head -1`: the reader goes away after one line.
    let mut child = train(&dir, &["--out", "piped"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut first = [0u8; 16];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let (status, err) = finish(child);
    assert!(status.success(), "{status:?}: {err}");
    same_run(&dir.join("piped"), &dir.join("whole"));
    assert!(dir.join("piped/report.html").exists());
}

#[test]
fn refusals_write_nothing() {
    let dir = scratch("refusals");
    // --resume of a folder that does not exist: refused, not created.
    let (rc, _, err) = output(train(&dir, &["--out", "none", "--resume"]));
    assert_ne!(rc, 0);
    assert!(err.contains("does not exist"), "{err}");
    assert!(!dir.join("none").exists());
    // --max-len beyond the encoder's positions: refused before the data is read.
    let bert = common::tiny_bert_dir("refusals");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bert.join("config.json")).unwrap()).unwrap();
    let positions = config["max_position_embeddings"].as_u64().unwrap();
    let too_long = (positions + 1).to_string();
    let (rc, _, err) = output(train(
        &dir,
        &[
            "--out",
            "long",
            "--encoder",
            bert.to_str().unwrap(),
            "--max-len",
            &too_long,
        ],
    ));
    assert_ne!(rc, 0);
    assert!(
        err.contains(&format!("--max-len {too_long}"))
            && err.contains(&format!("at most {positions} positions")),
        "{err}"
    );
    assert!(
        !err.contains("device:"),
        "refused after the device opened:\n{err}"
    );
    assert!(!dir.join("long").exists());
    // A budget the first step does not fit: the error, and no half-made run folder.
    let mut c = Command::new(env!("CARGO_BIN_EXE_emrclass"));
    c.current_dir(&dir)
        .args(["--device", "simt", "--memory-budget", "330MiB"])
        .args([
            "--context-reserve",
            "320MiB",
            "train",
            "--quiet",
            "--out",
            "budget",
        ])
        .args(["--synthetic-scale", "0.05"]);
    let (rc, _, err) = output(c);
    assert_ne!(rc, 0);
    assert!(err.contains("memory budget exceeded"), "{err}");
    assert!(
        !dir.join("budget").exists(),
        "the refused run left its folder"
    );
}

#[test]
fn an_unclosed_quote_or_an_extra_column_is_named_by_line_and_skipped_alone() {
    let dir = scratch("csv");
    let mut rows = vec!["text,label".to_string()];
    for i in 0..120 {
        let (text, label) = match i % 3 {
            0 => ("头痛", "A"),
            1 => ("咳嗽", "B"),
            _ => ("发热", "C"),
        };
        rows.push(format!("患者{text}第{i}天,{label}"));
    }
    let clean = rows.clone();
    rows[10] = "\"患者引号没有闭合,A".into(); // line 11
    rows[50] = "患者,多一列,B".into(); // line 51
    std::fs::write(dir.join("broken.csv"), rows.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("clean.csv"), clean.join("\n") + "\n").unwrap();
    let (rc, _, err) = output(train(&dir, &["--train", "broken.csv", "--out", "strict"]));
    assert_ne!(rc, 0);
    assert!(
        err.contains("broken.csv:11:") && err.contains("never closes"),
        "{err}"
    );
    assert!(!dir.join("strict").exists());
    // --skip-bad: exactly the two broken lines are skipped, counted and named.
    let (rc, _, err) = output(train(
        &dir,
        &["--train", "broken.csv", "--out", "skipping", "--skip-bad"],
    ));
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("skipped 2 broken records")
            && err.contains("broken.csv:11:")
            && err.contains("broken.csv:51: 3 fields where the header has 2"),
        "{err}"
    );
    let run: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("skipping/run.json")).unwrap())
            .unwrap();
    let used = run["train_records"].as_u64().unwrap() + run["dev_records"].as_u64().unwrap();
    assert_eq!(used, 118, "120 records, 2 broken");
    assert_eq!(
        run["labels"].as_array().unwrap().len(),
        3,
        "no invented class"
    );
}

#[test]
fn an_experiment_is_refused_over_another_and_resumes_its_cells() {
    let dir = scratch("grid");
    let grid = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_emrclass"));
        c.current_dir(&dir)
            .args(["--device", "simt", "experiment", "--quiet", "--out", "grid"])
            .args([
                "--synthetic-scale",
                "0.05",
                "--epochs",
                "1",
                "--batch-size",
                "8",
            ])
            .args([
                "--heads",
                "textcnn",
                "--losses",
                "ce,focal",
                "--max-len",
                "32",
            ])
            .args(["--embedding-dim", "16", "--filters", "8"])
            .args(extra);
        output(c)
    };
    let (rc, _, err) = grid(&[]);
    assert_eq!(rc, 0, "{err}");
    let results = std::fs::read_to_string(dir.join("grid/results.csv")).unwrap();
    let before = snapshot(&dir.join("grid"));
    let (rc, _, err) = grid(&[]);
    assert_ne!(rc, 0);
    assert!(err.contains("grid is not empty"), "{err}");
    assert_eq!(snapshot(&dir.join("grid")), before);
    // --resume: the finished cells are read back, not trained again; the tables are the same
    // (each cell's scores from its log).
    let (rc, _, err) = grid(&["--resume"]);
    assert_eq!(rc, 0, "{err}");
    let again = std::fs::read_to_string(dir.join("grid/results.csv")).unwrap();
    let scores = |t: &str| -> Vec<String> {
        t.lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(scores(&again), scores(&results));
    // A cell killed in its first epoch (no checkpoint, its run.json and log left): --resume
    // runs it again from the start, over what it left.
    let cell = dir.join("grid/textcnn-focal");
    std::fs::remove_dir_all(cell.join("checkpoint")).unwrap();
    std::fs::remove_dir_all(cell.join("best")).unwrap();
    let (rc, _, err) = grid(&["--resume"]);
    assert_eq!(rc, 0, "{err}");
    let third = std::fs::read_to_string(dir.join("grid/results.csv")).unwrap();
    assert_eq!(scores(&third), scores(&results));
    for cell in ["textcnn-ce", "textcnn-focal"] {
        same_run(&dir.join("grid").join(cell), &{
            let copy = dir.join(format!("{cell}-before"));
            std::fs::create_dir_all(copy.join("checkpoint")).unwrap();
            std::fs::create_dir_all(copy.join("best")).unwrap();
            for (path, bytes) in &before {
                if let Ok(rest) = path.strip_prefix(cell) {
                    std::fs::write(copy.join(rest), bytes).unwrap();
                }
            }
            copy
        });
    }
}
