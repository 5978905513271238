//! `emrclass export --run DIR --to hf OUT` (issue 14, item 3), round-tripped through
//! transformers: runs with known weights (the tiny BERT, every encoder tensor moved off its
//! checkpoint so the export must take the run's, and a head from a formula: exact on any
//! machine) are exported through the CLI; the folders must equal the ones committed under
//! tests/fixtures/export/ (tensor for tensor, bit for bit), and the engine's logits on five texts
//! must equal what transformers computes from those committed folders
//! (tests/fixtures/make_export_fixtures.py: `BertForSequenceClassification` for `cls`;
//! `BertModel` + the README's `EmrclassHead` for `paper`) to 1e-5, with the same token ids.

mod common;
use common::{emrclass_cli, rel};

use std::path::{Path, PathBuf};

use emrclass::data::batching::pad;
use emrclass::model::loss::{LossConfig, LossKind};
use emrclass::rng::Rng;
use emrclass::train::build::build_classifier;
use emrclass::train::checkpoint;
use emrclass::train::inference::load_run;
use emrclass::train::state::{ModelSpec, Progress, RunInfo, State};
use emrclass::train::trainer::optimizer;
use emrclass::{Device, Schedule};
use serde_json::Value;

const LOGIT_TOLERANCE: f64 = 1e-5;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/export")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-export-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn labels() -> Vec<String> {
    ["胸痹", "消渴", "眩晕"].map(String::from).to_vec()
}

/// A run folder whose best/ holds a `head` model over the tiny BERT with deterministic weights.
fn make_run(head: &str, encoder: Option<PathBuf>, tag: &str) -> PathBuf {
    let run = tmp(&format!("run-{tag}"));
    let vocab: Vec<String> = "[PAD] [UNK] [CLS] [SEP] 胸 痛"
        .split(' ')
        .map(String::from)
        .collect();
    let spec = ModelSpec {
        encoder: encoder.clone(),
        head: head.into(),
        loss: "ce".into(),
        embedding_dim: 8,
        filters: 6,
        rnn_hidden: 5,
        dropout: 0.1,
        max_len: 16,
        frozen: false,
        buckets: 0,
        long_text: "head".into(),
        max_chunks: 0,
        chunk_pool: "mean".into(),
    };
    let dev = Device::simt(Schedule::Forward);
    let mut model = build_classifier(
        &dev,
        &spec,
        encoder.is_none().then_some(vocab.len()),
        LossConfig::new(LossKind::CrossEntropy),
        3,
        &mut Rng::new(5),
    )
    .unwrap();
    for slot in model.slots(1.0) {
        let mut v = slot.value.to_host().unwrap();
        let salt = slot.name.len();
        for (i, x) in v.iter_mut().enumerate() {
            if slot.name.starts_with("head.") {
                *x = ((i * 31 + salt) % 17) as f32 * 0.05 - 0.4;
            } else {
                // Off the checkpoint's values: an export that read the encoder's folder fails.
                *x += ((i * 7919 + salt) % 13) as f32 * 1e-3 - 6e-3;
            }
        }
        slot.value.copy_from_host(&v).unwrap();
    }
    let state = State {
        format: 0,
        progress: Progress::start(),
        ghm_ema: vec![],
        ghm_steps: 0,
        run: RunInfo {
            fingerprint: "export test".into(),
            labels: labels(),
            vocab: encoder.is_none().then_some(vocab),
            model: spec,
        },
        tensors: String::new(),
    };
    let opt = optimizer(&Default::default());
    checkpoint::save(&run.join("best"), &mut model, &opt, &state).unwrap();
    run
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(
                files(&p)
                    .into_iter()
                    .map(|f| Path::new(p.file_name().unwrap()).join(f)),
            );
        } else {
            out.push(PathBuf::from(p.file_name().unwrap()));
        }
    }
    out.sort();
    out
}

/// The exported folder equals the committed one: JSON as values, safetensors tensor by tensor
/// (names, shapes, bytes), other files byte for byte. `EMRCLASS_BLESS_EXPORT=1` replaces the
/// committed folder instead (then rerun tests/fixtures/make_export_fixtures.py).
fn same_as_committed(out: &Path, case: &str) {
    let committed = fixtures().join(case);
    if std::env::var_os("EMRCLASS_BLESS_EXPORT").is_some() {
        let _ = std::fs::remove_dir_all(&committed);
        for f in files(out) {
            std::fs::create_dir_all(committed.join(&f).parent().unwrap()).unwrap();
            std::fs::copy(out.join(&f), committed.join(&f)).unwrap();
        }
        eprintln!(
            "blessed {}: now run make_export_fixtures.py",
            committed.display()
        );
    }
    assert_eq!(files(out), files(&committed), "{case}: files differ");
    for f in files(out) {
        let (a, b) = (
            std::fs::read(out.join(&f)).unwrap(),
            std::fs::read(committed.join(&f)).unwrap(),
        );
        let name = f.display().to_string();
        if name.ends_with(".json") {
            let (a, b): (Value, Value) = (
                serde_json::from_slice(&a).unwrap(),
                serde_json::from_slice(&b).unwrap(),
            );
            assert_eq!(a, b, "{case}: {name} differs");
        } else if name.ends_with(".safetensors") {
            let (a, b) = (
                safetensors::SafeTensors::deserialize(&a).unwrap(),
                safetensors::SafeTensors::deserialize(&b).unwrap(),
            );
            let (mut na, mut nb) = (a.names(), b.names());
            na.sort();
            nb.sort();
            assert_eq!(na, nb, "{case}: {name}: tensor names differ");
            for n in na {
                let (x, y) = (a.tensor(n).unwrap(), b.tensor(n).unwrap());
                assert_eq!(x.shape(), y.shape(), "{case}: {name}: {n} shape");
                assert_eq!(x.dtype(), y.dtype(), "{case}: {name}: {n} dtype");
                assert!(x.data() == y.data(), "{case}: {name}: {n} values differ");
            }
        } else {
            assert!(a == b, "{case}: {name} differs");
        }
    }
}

/// `emrclass export --run RUN --to hf OUT` through the binary: (success, stdout, stderr).
fn export(run: &Path, out: &Path) -> (bool, String, String) {
    emrclass_cli(&[
        "export",
        "--run",
        run.to_str().unwrap(),
        "--to",
        "hf",
        out.to_str().unwrap(),
    ])
}

fn export_and_compare(head: &str) {
    let encoder = common::tiny_bert_dir(&format!("export-encoder-{head}"));
    let run = make_run(head, Some(encoder), head);
    let out = tmp(&format!("out-{head}"));
    let (ok, stdout, stderr) = export(&run, &out);
    assert!(ok, "export failed: {stdout}{stderr}");
    same_as_committed(&out, head);

    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap())
            .unwrap();
    let case = &expected["cases"][head];
    assert_eq!(
        case["labels"],
        serde_json::json!(labels()),
        "{head}: transformers reads other labels"
    );
    let dev = Device::simt(Schedule::Reverse);
    let mut loaded = load_run(&dev, &run, true).unwrap();
    let texts: Vec<&str> = expected["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let seqs: Vec<Vec<i32>> = texts
        .iter()
        .map(|t| loaded.text.encode(t).unwrap().remove(0))
        .collect();
    for (k, (ids, want)) in seqs
        .iter()
        .zip(case["input_ids"].as_array().unwrap())
        .enumerate()
    {
        let want: Vec<i32> = common::i32s(want).into_iter().take(ids.len()).collect();
        assert_eq!(
            ids, &want,
            "{head}: text {k}: token ids differ from transformers'"
        );
    }
    let batch = pad(&seqs.iter().map(Vec::as_slice).collect::<Vec<_>>());
    let logits: Vec<f64> = loaded
        .model
        .forward(&batch, None)
        .unwrap()
        .to_host()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect();
    let want: Vec<f64> = case["logits"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(common::f64s)
        .collect();
    let err = rel(&logits, &want);
    assert!(
        err <= LOGIT_TOLERANCE,
        "{head}: engine logits {err:e} from transformers' on the exported folder"
    );
}

#[test]
fn cls_head_exports_as_bert_for_sequence_classification() {
    export_and_compare("cls");
}

#[test]
fn paper_head_exports_as_bert_model_and_the_readme_module() {
    export_and_compare("paper");
}

#[test]
fn export_refuses_a_non_empty_folder_and_an_encoder_free_run() {
    let run = make_run("textcnn", None, "encoder-free");
    let out = tmp("refused");
    let (ok, _, stderr) = export(&run, &out);
    assert!(!ok && stderr.contains("without a BERT encoder"), "{stderr}");
    assert!(!out.exists(), "a refused export left {}", out.display());

    let encoder = common::tiny_bert_dir("export-encoder-refused");
    let run = make_run("cls", Some(encoder), "refused-cls");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("keep.txt"), "mine").unwrap();
    let (ok, _, stderr) = export(&run, &out);
    assert!(!ok && stderr.contains("not empty"), "{stderr}");
    assert_eq!(files(&out), vec![PathBuf::from("keep.txt")]);
    assert_eq!(
        std::fs::read_to_string(out.join("keep.txt")).unwrap(),
        "mine"
    );
}
