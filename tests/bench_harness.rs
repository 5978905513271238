//! The benchmark harness on the simulator: every `emrclass bench` family at small sizes writes
//! JSON rows that carry the work's spec (what `--compare-torch` hands to PyTorch);
//! `--compare-torch` off a GPU is a named error; the report assembler computes the goals from
//! rows; and gpu-check.sh packs a bundle whose binaries run, then fails cleanly without a GPU.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn emrclass(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .args(["--device", "simt", "--seed", "1"])
        .args(args)
        .output()
        .expect("emrclass runs")
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn every_bench_family_writes_json_rows_with_their_work() {
    let dir = temp_dir("bench-json");
    let json = dir.join("bench.jsonl");
    let j = json.to_str().unwrap();
    let families: &[(&[&str], &str, usize)] = &[
        (&["copy", "--mib", "1"], "copy", 1),
        (&["gemm", "--shapes", "33x17x9,64x64x64"], "gemm", 2),
        (
            &["loss", "--rows", "5", "--classes", "7", "--reps", "1"],
            "loss",
            5,
        ),
        (
            &[
                "gru", "--batch", "2", "--len", "5", "--input", "8", "--hidden", "6", "--reps", "1",
            ],
            "gru",
            1,
        ),
        (
            &[
                "lstm", "--batch", "2", "--len", "5", "--input", "8", "--hidden", "6", "--reps",
                "1",
            ],
            "lstm",
            1,
        ),
        (
            &[
                "textcnn", "--batch", "2", "--len", "5", "--input", "8", "--hidden", "6", "--reps",
                "1",
            ],
            "textcnn",
            1,
        ),
        (
            &[
                "attention",
                "--batch",
                "1",
                "--len",
                "9",
                "--hidden",
                "8",
                "--heads",
                "2",
                "--reps",
                "1",
            ],
            "attention",
            1,
        ),
        (
            &[
                "encoder", "--batch", "1", "--len", "9", "--hidden", "8", "--heads", "2", "--reps",
                "1",
            ],
            "encoder",
            1,
        ),
        (
            &[
                "step",
                "--layers",
                "1",
                "--hidden",
                "16",
                "--heads",
                "2",
                "--vocab",
                "50",
                "--batch",
                "2",
                "--len",
                "6",
                "--classes",
                "3",
                "--reps",
                "1",
            ],
            "step",
            1,
        ),
        (
            &[
                "step",
                "--pretrain",
                "--layers",
                "1",
                "--hidden",
                "16",
                "--heads",
                "2",
                "--vocab",
                "50",
                "--batch",
                "2",
                "--len",
                "12",
                "--reps",
                "1",
            ],
            "step",
            1,
        ),
    ];
    let mut expected = 0;
    for (args, family, n) in families {
        let mut full = vec!["bench", "--json", j];
        full.extend_from_slice(args);
        let out = emrclass(&full);
        assert!(
            out.status.success(),
            "{family}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        expected += n;
        let all = rows(&json);
        assert_eq!(all.len(), expected, "{family}");
        for r in &all[expected - n..] {
            assert_eq!(r["spec"]["family"], *family, "{r}");
            assert_eq!(r["kind"], "emrclass");
            let ms = r["ms"]
                .as_f64()
                .or_else(|| Some(r["forward_ms"].as_f64()? + r["backward_ms"].as_f64()?));
            assert!(ms.unwrap() > 0.0, "{r}");
        }
    }
    let mut all = rows(&json);
    let pretrain = all.pop().unwrap();
    let step = all.pop().unwrap();
    assert!(step["peak_bytes"].as_u64().unwrap() > 0);
    assert_eq!(step["phases"].as_array().unwrap().len(), 6, "{step}");
    // `--pretrain`: the MLM step, 15 % of the 10 inner tokens (2) predicted in each sequence.
    assert_eq!(pretrain["spec"]["objective"], "mlm", "{pretrain}");
    assert_eq!(pretrain["spec"]["masked_per_row"], 2, "{pretrain}");
    assert_eq!(
        pretrain["phases"].as_array().unwrap().len(),
        5,
        "{pretrain}"
    );
    let tokens_per_s = pretrain["tokens_per_s"].as_f64().unwrap();
    let ms = pretrain["ms"].as_f64().unwrap();
    assert!((tokens_per_s * ms / 1e3 - 24.0).abs() < 1e-6, "{pretrain}");
    let gemm = &rows(&json)[1];
    assert_eq!(
        (gemm["m"].as_u64(), gemm["n"].as_u64(), gemm["k"].as_u64()),
        (Some(33), Some(17), Some(9))
    );
}

#[test]
fn compare_torch_needs_a_gpu_and_bad_shapes_are_named() {
    let out = emrclass(&["bench", "--compare-torch", "gemm", "--shapes", "8x8x8"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("--compare-torch needs --device cuda"), "{e}");
    let out = emrclass(&["bench", "gemm", "--shapes", "8x8"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && e.contains("gemm shape `8x8`: expected MxNxK"),
        "{e}"
    );
}

/// The report's goals come from the rows: a GEMM at 0.5x cuBLAS is "not met", a step at 2x
/// PyTorch's speed with a third of its memory is "met".
#[test]
fn the_report_computes_the_goals_from_the_rows() {
    let dir = temp_dir("report");
    let gemm = r#"{"family":"gemm","m":2048,"n":768,"k":3072}"#;
    // A tile the launcher would not pick (`bench gemm --tiles all`): it must not count.
    let other_tile = r#"{"family":"gemm","m":2048,"n":768,"k":3072,"tile":"64x64","picked":false}"#;
    let step = r#"{"family":"step","layers":12}"#;
    // A pretraining step (`bench step --pretrain`) far behind: not a `paper` step, no goal's.
    let mlm = r#"{"family":"step","layers":12,"objective":"mlm","masked_per_row":19}"#;
    let lines = [
        format!(r#"{{"kind":"emrclass","spec":{gemm},"ms":2.0,"gflops":1.0,"what":"g"}}"#),
        format!(
            r#"{{"kind":"torch","spec":{gemm},"ms":1.0,"emrclass_ms":2.0,"speedup":0.5,"what":"torch.mm"}}"#
        ),
        format!(
            r#"{{"kind":"torch","spec":{other_tile},"ms":1.0,"emrclass_ms":10.0,"speedup":0.1,"what":"torch.mm"}}"#
        ),
        format!(
            r#"{{"kind":"emrclass","spec":{step},"ms":10.0,"peak_bytes":100,"device_used_bytes":524288000,"launches_per_step":612,"host_syncs_per_step":13,"what":"s"}}"#
        ),
        format!(
            r#"{{"kind":"torch","spec":{step},"ms":20.0,"emrclass_ms":10.0,"speedup":2.0,"peak_bytes":300,"what":"eager"}}"#
        ),
        format!(r#"{{"kind":"emrclass","spec":{mlm},"ms":100.0,"peak_bytes":1000,"what":"p"}}"#),
        format!(
            r#"{{"kind":"torch","spec":{mlm},"ms":10.0,"emrclass_ms":100.0,"speedup":0.1,"peak_bytes":300,"what":"BertForMaskedLM"}}"#
        ),
    ];
    std::fs::write(dir.join("bench.jsonl"), lines.join("\n") + "\n").unwrap();
    std::fs::write(dir.join("env.json"), r#"{"gpu":"Test GPU","driver":"1"}"#).unwrap();
    std::fs::write(
        dir.join("tests.jsonl"),
        r#"{"name":"kernels_vs_reference","ok":true,"result":"ok: 1 passed"}"#,
    )
    .unwrap();
    let out = Command::new("python3")
        .arg("benches/compare_torch.py")
        .arg("report")
        .arg(&dir)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    let goal = |prefix: &str| {
        report["goals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["goal"].as_str().unwrap().starts_with(prefix))
            .unwrap()
            .clone()
    };
    assert_eq!(goal("GEMM")["status"], "not met");
    assert_eq!(goal("GEMM")["worst"], 0.5);
    assert_eq!(goal("paper step >=")["status"], "met");
    assert_eq!(goal("paper step >=")["worst"], 2.0);
    assert_eq!(goal("paper step peak")["status"], "met");
    assert_eq!(goal("attention")["status"], "not measured");
    let md = std::fs::read_to_string(dir.join("report.md")).unwrap();
    assert!(
        md.contains("Test GPU") && md.contains("| kernels_vs_reference | ok: 1 passed |"),
        "{md}"
    );
    // The step row shows the device's used memory beside the engine's peak (500 MiB), and its
    // launches and host waits.
    assert!(
        md.contains("| device used MiB |") && md.contains("| 500.0 | 612 / 13 |"),
        "{md}"
    );
}

/// Everything short of the GPU: the bundle is packed under 60 MiB, its binaries start, and
/// `run` without a GPU records every part as failed with the driver named, and still reports.
#[test]
fn gpu_check_packs_and_fails_cleanly_without_a_gpu() {
    let root = env!("CARGO_MANIFEST_DIR");
    let pack = Command::new("./gpu-check.sh")
        .arg("pack")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        pack.status.success(),
        "{}{}",
        String::from_utf8_lossy(&pack.stdout),
        String::from_utf8_lossy(&pack.stderr)
    );
    let bundle = Path::new(root).join("target/gpu-bundle/bundle.tar.xz");
    assert!(std::fs::metadata(&bundle).unwrap().len() < 60 << 20);
    let out_dir = temp_dir("gpu-check");
    let run = Command::new("./gpu-check.sh")
        .args(["run", out_dir.to_str().unwrap()])
        .env("EMRCLASS_GPU_PARTS", "tests bench-step")
        .env("CUDA_VISIBLE_DEVICES", "")
        .current_dir(root)
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{log}");
    let tests = rows(&out_dir.join("tests.jsonl"));
    assert_eq!(
        tests.len(),
        17,
        "12 test binaries, the three step benches (plain, 8-bit AdamW + fp16 activations, 4 GiB plan) and the two pretraining steps (plain, 4 GiB plan): {tests:?}"
    );
    for t in &tests {
        if std::path::Path::new("/dev/nvidia0").exists() {
            continue; // a machine with a GPU runs them for real
        }
        assert_eq!(t["ok"], false, "{t}");
    }
    let binaries_started = log.matches("running ").count();
    assert!(binaries_started >= 11, "every test binary starts: {log}");
    assert!(
        log.contains("CUDA driver") || log.contains("no usable GPU"),
        "{log}"
    );
    assert!(out_dir.join("report.md").exists());
}
