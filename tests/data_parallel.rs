//! Data-parallel training on simulator ranks (issue 30): `emrclass launch` with N ranks of
//! micro-batch b trains to the same bits as one process accumulating N micro-batches of b (the
//! host collective sums in rank order, as accumulation does), a rank that dies or hangs stops
//! the others with an error naming it, and the run continues from rank 0's checkpoint.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{emrclass_cli, tensor_bits};
use serde_json::Value;

const EXE: &str = env!("CARGO_BIN_EXE_emrclass");

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-dp-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A small, quick run of the default head and loss.
fn run_args(out: &Path, epochs: &str) -> Vec<String> {
    run_args_batch(out, epochs, "8")
}

fn run_args_batch(out: &Path, epochs: &str, batch: &str) -> Vec<String> {
    [
        "train",
        "--synthetic-scale",
        "0.1",
        "--epochs",
        epochs,
        "--batch-size",
        batch,
        "--log-every",
        "1",
        "--quiet",
        "--out",
        out.to_str().unwrap(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `emrclass launch --nproc-per-node n -- --device simt ARGS`: (success, stdout, stderr).
fn launch(n: usize, args: &[String]) -> (bool, String, String) {
    let o = Command::new(EXE)
        .args([
            "launch",
            "--nproc-per-node",
            &n.to_string(),
            "--",
            "--device",
            "simt",
        ])
        .args(args)
        .env("EMRCLASS_RENDEZVOUS_TIMEOUT", "60")
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every logged value but the clock's, line by line.
fn log_without_times(run: &Path) -> Vec<Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            // The time in the sums: rank 0's share of the epoch, only in a world.
            if let Some(t) = o.remove("sum_seconds") {
                let t = t.as_f64().unwrap();
                assert!(t >= 0.0 && t <= o["seconds"].as_f64().unwrap(), "{l}");
            }
            o.remove("seconds");
            o.remove("samples_per_second");
            v
        })
        .collect()
}

fn run_json(run: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap()
}

#[test]
fn ranks_train_to_the_bits_of_one_process_accumulating_their_micro_batches() {
    let dir = scratch("bits");
    // GHM: the ranks exchange each micro-batch's bin counts, so every rank's moving histogram
    // takes the step's micro-batches in the one process's order (GHM-CS: its warm-up epoch,
    // then GHM weights; with 3 ranks a rank without a micro-batch in the short last step still
    // moves its histogram).
    for (ranks, epochs, batch, loss) in [
        (2, "2", 8, "wce"),
        (3, "1", 7, "wce"),
        (3, "2", 7, "ghmcs"),
        (2, "1", 8, "ghm"),
    ] {
        let args_of = |out: &Path| {
            let mut a = run_args_batch(out, epochs, &batch.to_string());
            a.extend(["--loss".into(), loss.into()]);
            a
        };
        let one = dir.join(format!("one-{ranks}-{loss}"));
        let mut args = args_of(&one);
        args.extend(["--accumulate".into(), ranks.to_string()]);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, _, err) = emrclass_cli(&refs);
        assert!(ok, "{err}");

        let world = dir.join(format!("world-{ranks}-{loss}"));
        let (ok, out, err) = launch(ranks, &args_of(&world));
        assert!(ok, "{err}");
        assert!(
            out.contains(&format!("data parallel: {ranks} ranks")),
            "rank 0 tells the run:\n{out}"
        );
        assert_eq!(
            out.matches("data parallel:").count(),
            1,
            "only rank 0 prints:\n{out}"
        );
        let description = run_json(&world);
        assert_eq!(description["world_size"], ranks);
        assert_eq!(description["global_batch"], batch * ranks);
        if ranks == 3 {
            // The epoch's last step has fewer micro-batches than ranks: a rank adds zeros.
            let records = description["train_records"].as_u64().unwrap();
            assert_ne!(
                records.div_ceil(batch as u64) % 3,
                0,
                "the data no longer cover a short last step"
            );
        }
        assert_eq!(
            tensor_bits(&one.join("checkpoint")),
            tensor_bits(&world.join("checkpoint")),
            "{ranks} ranks, {loss}: weights and moments differ from one process with --accumulate {ranks}"
        );
        if loss != "wce" {
            // The GHM histogram and its step count in the checkpoint's state: the same too.
            let ghm = |run: &Path| {
                let state: Value = serde_json::from_str(
                    &std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap(),
                )
                .unwrap();
                (state["ghm_ema"].clone(), state["ghm_steps"].clone())
            };
            assert_eq!(ghm(&one), ghm(&world), "{ranks} ranks, {loss}");
            assert!(ghm(&one).1.as_u64().unwrap() > 0);
        }
        assert_eq!(log_without_times(&one), log_without_times(&world));
        let epoch_lines = std::fs::read_to_string(world.join("log.jsonl")).unwrap();
        assert!(
            epoch_lines
                .lines()
                .filter(|l| l.contains("\"sum_seconds\""))
                .count()
                == epochs.parse::<usize>().unwrap(),
            "every epoch line of a world says the time in sums"
        );
        assert!(out.contains("sums "), "{out}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--freeze-encoder` on 2 ranks: every rank encodes the texts (rank 0 alone writes the feature
/// cache: one file, no temporary left), and the head trains to the one process's bits with
/// `--accumulate 2`; a second world reads the cache on every rank and trains the same.
#[test]
fn a_frozen_encoder_trains_data_parallel_with_one_cache_file() {
    let dir = scratch("frozen");
    let bert = common::tiny_bert_dir("dp-frozen");
    let args_of = |out: &Path, cache: &Path| -> Vec<String> {
        let mut a = run_args_batch(out, "2", "8");
        a.extend(
            [
                "--encoder",
                bert.to_str().unwrap(),
                "--freeze-encoder",
                "--feature-cache",
                cache.to_str().unwrap(),
                "--head",
                "textcnn",
                "--max-len",
                "24",
            ]
            .map(String::from),
        );
        a
    };
    let one = dir.join("one");
    let mut args = args_of(&one, &dir.join("cache-one"));
    args.extend(["--accumulate".into(), "2".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = emrclass_cli(&refs);
    assert!(ok, "{err}");
    let cache = dir.join("cache-world");
    for (k, run) in ["world", "world-cached"].iter().enumerate() {
        let world = dir.join(run);
        let (ok, out, err) = launch(2, &args_of(&world, &cache));
        assert!(ok, "{err}");
        let how = if k == 0 {
            "encoded"
        } else {
            "read from the cache"
        };
        assert!(
            out.contains(how),
            "rank 0 says the features were {how}:\n{out}"
        );
        // Rank 1 encoded too the first time, and kept its features to itself.
        assert_eq!(
            err.matches("features kept in memory (rank 0 writes")
                .count(),
            1 - k,
            "{err}"
        );
        let files: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
        assert_eq!(files.len(), 1, "one cache file: {files:?}");
        assert_eq!(
            tensor_bits(&one.join("checkpoint")),
            tensor_bits(&world.join("checkpoint")),
            "{run}: the head differs from one process with --accumulate 2"
        );
        assert_eq!(log_without_times(&one), log_without_times(&world));
    }
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&bert);
}

/// A loopback port nobody listens on (as likely as can be).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Ranks started by hand, as torchrun or a cluster's script would: (rank 0, rank 1).
fn start_two(args: &[String], timeout: &str) -> (Child, Child) {
    let port = free_port();
    let start = |rank: usize| {
        Command::new(EXE)
            .args(["--device", "simt", "--simt-threads", "1"])
            .args(args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", "2")
            .env("MASTER_ADDR", "127.0.0.1")
            .env("MASTER_PORT", port.to_string())
            .env("EMRCLASS_COLLECTIVE_TIMEOUT", timeout)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    (start(0), start(1))
}

/// Waits until `file` exists in rank 0's run folder, while `rank0` (or the launcher) runs.
fn wait_for(file: &Path, rank0: &mut Child) {
    let t = Instant::now();
    while !file.exists() {
        assert!(rank0.try_wait().unwrap().is_none(), "it ended early");
        assert!(t.elapsed() < Duration::from_secs(120), "no step logged");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A process's exit (rank 0's or the launcher's): (success, stderr), within `limit`.
fn finish(mut child: Child, limit: Duration) -> (bool, String) {
    let t = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < limit, "it did not stop within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = child.wait_with_output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn a_killed_rank_stops_the_others_and_the_run_resumes_from_rank_0s_checkpoint() {
    let dir = scratch("killed");
    let out = dir.join("run");
    let mut args = run_args(&out, "3");
    args.extend(["--checkpoint-every".into(), "2".into()]);
    let (mut rank0, mut rank1) = start_two(&args, "600");
    wait_for(&out.join("checkpoint/state.json"), &mut rank0);
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    let (ok, err) = finish(rank0, Duration::from_secs(60));
    assert!(!ok);
    assert!(err.contains("rank 1 closed its connection"), "{err}");

    // Resuming with as many ranks continues; with another world size is refused, named.
    args.push("--resume".into());
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = emrclass_cli(&refs);
    assert!(!ok);
    assert!(
        err.contains("data-parallel ranks (WORLD_SIZE): 2 then, 1 now"),
        "{err}"
    );
    let (ok, out_text, err) = launch(2, &args);
    assert!(ok, "{err}");
    assert!(out_text.contains("resuming from"), "{out_text}");
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("checkpoint/state.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["progress"]["epoch"], 4,
        "the run finished its 3 epochs"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The checkpoint's progress: (epoch, batches into it, step).
fn checkpoint_progress(run: &Path) -> (u64, u64, u64) {
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("checkpoint/state.json")).unwrap())
            .unwrap();
    let p = &state["progress"];
    (
        p["epoch"].as_u64().unwrap(),
        p["batch"].as_u64().unwrap(),
        p["step"].as_u64().unwrap(),
    )
}

#[test]
fn a_signal_to_one_rank_stops_every_rank_after_the_same_step_with_a_checkpoint() {
    let dir = scratch("signal");
    // Started by hand (as Slurm might signal one process): SIGTERM reaches rank 1 only.
    let out = dir.join("one-rank");
    let (mut rank0, mut rank1) = start_two(&run_args(&out, "50"), "600");
    wait_for(&out.join("log.jsonl"), &mut rank0);
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(rank1.id() as i32, libc::SIGTERM);
    }
    let status1 = rank1.wait().unwrap();
    let (ok, err) = finish(rank0, Duration::from_secs(60));
    assert!(!ok);
    assert!(err.contains("interrupted at step"), "{err}");
    assert_eq!(status1.code(), Some(128 + libc::SIGTERM));
    let (epoch, batch, step) = checkpoint_progress(&out);
    assert!(step > 0 && epoch < 50, "({epoch}, {batch}, {step})");

    // Through launch: a Ctrl-C to the launcher reaches every rank once; status 130.
    let out = dir.join("launched");
    let mut launcher = Command::new(EXE)
        .args(["launch", "--nproc-per-node", "2", "--", "--device", "simt"])
        .args(run_args(&out, "50"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&out.join("log.jsonl"), &mut launcher);
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(launcher.id() as i32, libc::SIGINT);
    }
    let t = Instant::now();
    let status = launcher.wait().unwrap();
    assert!(t.elapsed() < Duration::from_secs(60));
    assert_eq!(status.code(), Some(130));
    let (_, _, step) = checkpoint_progress(&out);
    assert!(step > 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_hung_rank_is_named_after_the_collective_timeout() {
    let dir = scratch("hung");
    let out = dir.join("run");
    let (mut rank0, mut rank1) = start_two(&run_args(&out, "50"), "2");
    wait_for(&out.join("log.jsonl"), &mut rank0);
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe {
        libc::kill(rank1.id() as i32, libc::SIGSTOP);
    }
    let (ok, err) = finish(rank0, Duration::from_secs(60));
    rank1.kill().unwrap();
    rank1.wait().unwrap();
    assert!(!ok);
    assert!(err.contains("rank 1 sent nothing for 2.0 s"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn launch_stops_every_rank_when_one_fails_and_exits_with_its_status() {
    let dir = scratch("fails");
    let out = dir.join("run");
    let mut launcher = Command::new(EXE)
        .args(["launch", "--nproc-per-node", "2", "--", "--device", "simt"])
        .args(run_args(&out, "50"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(&out.join("log.jsonl"), &mut launcher);
    // Its two ranks, as Linux lists a process's children.
    let pid = launcher.id();
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    let ranks: Vec<i32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ranks.len(), 2, "{children}");
    // SAFETY: kill(2) on a grandchild that is still running (the launcher has not reaped it).
    unsafe {
        libc::kill(ranks[1], libc::SIGKILL);
    }
    let (ok, err) = finish(launcher, Duration::from_secs(60));
    assert!(!ok);
    assert!(
        err.contains("exited with status 137; the others stop too"),
        "{err}"
    );
    assert!(err.contains("closed its connection"), "{err}");

    // A folder that holds something else: every rank refuses it before any work, nothing lost.
    let other = dir.join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    let (ok, _, err) = launch(2, &run_args(&other, "1"));
    assert!(!ok);
    assert!(err.contains("is not empty (notes.txt)"), "{err}");
    assert_eq!(
        std::fs::read_to_string(other.join("notes.txt")).unwrap(),
        "mine"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn ranks_that_would_start_from_different_states_are_named_before_any_step() {
    // The same command, but each rank's relative --train is its own machine's file (as on
    // two machines without a shared folder), and rank 1's differs in one record.
    let dir = scratch("differ");
    let port = free_port();
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            let home = dir.join(format!("machine-{rank}"));
            std::fs::create_dir_all(&home).unwrap();
            let lines: String = (0..60)
                .map(|i| {
                    let text = if rank == 1 && i == 7 {
                        "另一份病历".to_string()
                    } else {
                        format!("患者{i}号，血压{}", i % 3)
                    };
                    format!(
                        "{{\"text\": \"{text}\", \"label\": \"{}\"}}\n",
                        ["甲", "乙"][i % 2]
                    )
                })
                .collect();
            std::fs::write(home.join("train.jsonl"), lines).unwrap();
            Command::new(EXE)
                .current_dir(&home)
                .args([
                    "--device",
                    "simt",
                    "train",
                    "--train",
                    "train.jsonl",
                    "--epochs",
                    "1",
                ])
                .args(["--batch-size", "8", "--quiet", "--out", "run"])
                .env("RANK", rank.to_string())
                .env("WORLD_SIZE", "2")
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in ranks {
        let (ok, err) = finish(child, Duration::from_secs(60));
        assert!(!ok);
        assert!(
            err.contains("rank(s) 1 start from another state than rank 0"),
            "{err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_experiment_grid_runs_data_parallel_with_the_one_process_results() {
    let dir = scratch("grid");
    let grid = |out: &Path| -> Vec<String> {
        [
            "experiment",
            "--heads",
            "textcnn",
            "--losses",
            "wce",
            "--seeds",
            "1,2",
            "--synthetic-scale",
            "0.1",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--quiet",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([out.to_str().unwrap().to_string()])
        .collect()
    };
    let one = dir.join("one");
    let mut args = grid(&one);
    args.extend(["--accumulate".into(), "2".into()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, _, err) = emrclass_cli(&refs);
    assert!(ok, "{err}");
    let two = dir.join("two");
    let (ok, _, err) = launch(2, &grid(&two));
    assert!(ok, "{err}");
    // Every column but the seconds and samples/s.
    let scores = |run: &Path| -> Vec<String> {
        std::fs::read_to_string(run.join("results.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect()
    };
    assert_eq!(scores(&one).len(), 3, "a header and two runs");
    assert_eq!(scores(&one), scores(&two));
    assert!(std::fs::read_to_string(two.join("results.md"))
        .unwrap()
        .contains("data parallel over 2 ranks (global batch 16)"));
    for seed in [1, 2] {
        let cell = format!("textcnn-wce-seed{seed}/checkpoint");
        assert_eq!(tensor_bits(&one.join(&cell)), tensor_bits(&two.join(&cell)));
    }
    let (ok, _, err) = launch(2, &{
        let mut a = grid(&dir.join("ghm"));
        a[4] = "wce,ghm".into();
        a.extend(["--accumulate".into(), "2".into()]);
        a
    });
    assert!(!ok);
    assert!(
        err.contains("--losses ghm with --accumulate 2 are not data parallel"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn pretraining_ranks_follow_one_process_accumulating_their_micro_batches() {
    let dir = scratch("pretrain");
    let encoder = common::mlm_tiny_encoder(&dir);
    let text = dir.join("records.txt");
    let lines: Vec<String> = emrclass::data::synthetic::generate(2, 1.0)
        .into_iter()
        .take(60)
        .map(|e| e.text)
        .collect();
    std::fs::write(&text, lines.join("\n")).unwrap();
    let args = |out: &Path, accumulate: &str| -> Vec<String> {
        let mut a: Vec<String> = [
            "--seed",
            "5",
            "pretrain",
            "--quiet",
            "--line-by-line",
            "--max-len",
            "24",
            "--eval-fraction",
            "0.2",
            "--epochs",
            "2",
            "--batch-size",
            "8",
            "--lr",
            "2e-3",
            "--eval-every",
            "2",
            "--log-every",
            "1",
            "--accumulate",
            accumulate,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for (flag, path) in [
            ("--encoder", &encoder),
            ("--text", &text),
            ("--out", &out.to_path_buf()),
        ] {
            a.push(flag.into());
            a.push(path.to_str().unwrap().into());
        }
        a
    };
    let one = dir.join("one");
    let refs_owned = args(&one, "2");
    let refs: Vec<&str> = refs_owned.iter().map(String::as_str).collect();
    let (ok, _, err) = emrclass_cli(&refs);
    assert!(ok, "{err}");
    let two = dir.join("two");
    let (ok, out, err) = launch(2, &args(&two, "1"));
    assert!(ok, "{err}");
    assert!(out.contains("data parallel: 2 ranks"), "{out}");
    // Not bit for bit: a gradient written in two parts (the word embeddings, tied to the
    // decoder) adds them in another order when micro-batches are summed across ranks. The
    // first step is identical to the bit; the rest agree within rounding.
    let (a, b) = (
        tensor_bits(&one.join("checkpoint")),
        tensor_bits(&two.join("checkpoint")),
    );
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        let f = |bytes: &[u8]| -> Vec<f32> {
            bytes
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        let (x, y) = (f(x), f(y));
        let scale = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = x
            .iter()
            .zip(&y)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 1e-4 * scale + 1e-12, "{name}: {worst} of {scale}");
    }
    let (la, lb) = (log_without_times(&one), log_without_times(&two));
    assert_eq!(la.len(), lb.len());
    assert_eq!(
        la[..2],
        lb[..2],
        "the start and the first step, bit for bit"
    );
    for (p, q) in la.iter().zip(&lb) {
        for key in ["loss", "grad_norm", "eval_loss", "eval_perplexity"] {
            if let (Some(u), Some(v)) = (p[key].as_f64(), q[key].as_f64()) {
                assert!((u - v).abs() <= 1e-5 * u.abs(), "{key}: {u} vs {v}");
            }
        }
        assert_eq!(p["step"], q["step"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn what_is_not_data_parallel_yet_is_refused_by_name() {
    let dir = scratch("refused");
    let (ok, _, err) = launch(2, &{
        let mut a = run_args(&dir.join("ghm"), "1");
        a.extend([
            "--loss".into(),
            "ghmcs".into(),
            "--accumulate".into(),
            "2".into(),
        ]);
        a
    });
    assert!(!ok);
    assert!(
        err.contains("--loss ghm-cs with --accumulate 2 is not data parallel (one micro-batch"),
        "{err}"
    );
    // A memory plan that splits each batch in two: GHM takes one micro-batch per rank and step.
    let bert = common::tiny_bert_dir("dp-split");
    let (ok, _, err) = launch(2, &{
        let mut a = run_args(&dir.join("split"), "1");
        a.extend(
            [
                "--encoder",
                bert.to_str().unwrap(),
                "--head",
                "textcnn",
                "--max-len",
                "24",
                "--loss",
                "ghmcs",
                "--memory-budget",
                "2560KiB",
                "--context-reserve",
                "0",
            ]
            .map(String::from),
        );
        a
    });
    assert!(!ok);
    assert!(
        err.contains("the memory plan splits each batch of 8 into 2 micro-batches"),
        "{err}"
    );
    assert!(!dir.join("split").exists(), "refused before any write");
    let _ = std::fs::remove_dir_all(&bert);
    let o = Command::new(EXE)
        .args(["launch", "--nproc-per-node", "2"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("<COMMAND>"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench step --world 2` (and `--pretrain`): the command runs again as 2 ranks; rank 0 alone
/// prints and records one row per shape, saying the world and the time in sums.
#[test]
fn bench_step_over_a_world_reports_the_time_in_sums() {
    let dir = scratch("bench-world");
    let json = dir.join("bench.jsonl");
    let tiny = [
        "--layers", "1", "--hidden", "16", "--heads", "2", "--vocab", "50", "--batch", "2",
        "--len", "6", "--reps", "2", "--world", "2",
    ];
    for pretrain in [false, true] {
        let mut args = vec![
            "--device",
            "simt",
            "bench",
            "--json",
            json.to_str().unwrap(),
        ];
        args.push("step");
        args.extend(tiny);
        if pretrain {
            args.push("--pretrain");
        }
        let o = Command::new(EXE).args(&args).output().unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(out.matches("data parallel: 2 ranks").count(), 1, "{out}");
        assert_eq!(out.matches("ms a step in sums").count(), 1, "{out}");
    }
    let rows: Vec<Value> = std::fs::read_to_string(&json)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2, "rank 0 alone records: {rows:?}");
    for r in &rows {
        assert_eq!(r["world"]["ranks"], 2, "{r}");
        let sums = r["world"]["sum_ms"].as_f64().unwrap();
        assert!(sums > 0.0 && sums <= r["ms"].as_f64().unwrap(), "{r}");
    }
    assert_eq!(rows[1]["spec"]["objective"], "mlm");
    // --world inside a world of another size, and PyTorch's one-GPU step beside a world.
    let o = Command::new(EXE)
        .args(["--device", "simt", "bench", "step"])
        .args(tiny)
        .env("WORLD_SIZE", "3")
        .env("RANK", "0")
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", "29500")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("bench step --world 2 in a world of 3"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(EXE)
        .args(["--device", "simt", "bench", "--compare-torch", "step"])
        .args(tiny)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("leave it out of a data-parallel world"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
