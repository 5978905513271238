//! Helpers the fixture-reading tests share: JSON arrays as vectors, and a relative error in f64.
#![allow(dead_code)] // each test binary uses its own subset

use serde_json::Value;

pub fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .expect("a JSON array")
        .iter()
        .map(|x| x.as_f64().expect("a number"))
        .collect()
}

pub fn f32s(v: &Value) -> Vec<f32> {
    f64s(v).into_iter().map(|x| x as f32).collect()
}

pub fn i32s(v: &Value) -> Vec<i32> {
    f64s(v).into_iter().map(|x| x as i32).collect()
}

pub fn usizes(v: &Value) -> Vec<usize> {
    f64s(v).into_iter().map(|x| x as usize).collect()
}

/// ||a - b|| / ||b||, both f64.
pub fn rel(a: &[f64], b: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = b.iter().map(|y| y * y).sum();
    if n == 0.0 {
        d.sqrt()
    } else {
        (d / n).sqrt()
    }
}

/// The device a parity test runs on: the simulator under `schedule`, or the GPU when
/// `EMRCLASS_TEST_DEVICE=cuda` (./gpu-check.sh sets it; the test then fails, not skips,
/// when no GPU is usable).
pub fn test_device(schedule: emrclass::Schedule) -> emrclass::Device {
    match std::env::var("EMRCLASS_TEST_DEVICE").as_deref() {
        Ok("cuda") => emrclass::Device::cuda()
            .unwrap_or_else(|e| panic!("EMRCLASS_TEST_DEVICE=cuda but no usable GPU: {e}")),
        Ok("simt") | Err(_) => emrclass::Device::simt(schedule),
        Ok(other) => panic!("EMRCLASS_TEST_DEVICE is `{other}`: expected cuda or simt"),
    }
}

/// A temp folder holding the tiny HF-written BERT (tests/fixtures/bert_tiny) and a vocab.txt
/// of its 97 ids, so that the tokenizer can build: a whole checkpoint folder for `train`.
#[allow(dead_code)]
pub fn tiny_bert_dir(tag: &str) -> std::path::PathBuf {
    // A fresh folder per call: tests of one binary run in parallel threads of one process, and
    // two calls with the same tag must not write the files another is reading.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("emrclass-{tag}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_tiny");
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
    dir
}

/// Runs the real `emrclass` binary on the simulator: (success, stdout, stderr).
pub fn emrclass_cli(args: &[&str]) -> (bool, String, String) {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .args(["--device", "simt"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// Every tensor of a checkpoint folder's committed tensor file (the one its state.json names),
/// by name, as its stored bytes (fp32 values and 8-bit optimizer codes alike).
pub fn tensor_bits(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    // Training's and pretraining's states both name their tensor file.
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let tensors = state["tensors"].as_str().unwrap();
    let ck = emrclass::weights::Checkpoint::open(&dir.join(tensors)).unwrap();
    ck.names()
        .into_iter()
        .map(|n| {
            let (_, _, bytes) = ck.raw(&n).unwrap();
            (n, bytes.to_vec())
        })
        .collect()
}

/// The token ids of tests/fixtures/bert_tiny/expected.json as `encode --ids` reads them:
/// {"input_ids", "attention_mask", "token_type_ids"}, each a list of rows.
pub fn bert_tiny_ids(expected: &Value) -> Value {
    let seq = expected["seq"].as_u64().unwrap() as usize;
    let rows = |key: &str| -> Vec<Vec<i64>> {
        f64s(&expected[key])
            .chunks(seq)
            .map(|r| r.iter().map(|&v| v as i64).collect())
            .collect()
    };
    serde_json::json!({
        "input_ids": rows("input_ids"),
        "attention_mask": rows("attention_mask"),
        "token_type_ids": rows("token_type_ids"),
    })
}

/// In `dir/enc`: tests/fixtures/mlm_tiny's BertForPreTraining weights with a vocabulary of its
/// 97 ids (the synthetic records' characters first, so that most of a record is not [UNK]).
pub fn mlm_tiny_encoder(dir: &std::path::Path) -> std::path::PathBuf {
    let enc = dir.join("enc");
    std::fs::create_dir_all(&enc).unwrap();
    let fixture =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlm_tiny");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixture.join(f), enc.join(f)).unwrap();
    }
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    for e in emrclass::data::synthetic::generate(1, 0.2) {
        for c in e.text.chars() {
            let c = c.to_string();
            if vocab.len() < 97 && !vocab.contains(&c) {
                vocab.push(c);
            }
        }
    }
    vocab.extend((vocab.len()..97).map(|i| format!("x{i}")));
    std::fs::write(enc.join("vocab.txt"), vocab.join("\n")).unwrap();
    enc
}
