//! HF transformers parity of the BERT encoder: tiny random BertModels written by
//! tests/fixtures/make_bert_fixtures.py (transformers 4.57.1, torch 2.9.1) are loaded from
//! their config.json and model.safetensors, run forward and backward on the simulator, and
//! compared with transformers' float64 outputs and parameter gradients.
//!
//! Tolerance 1e-5 (||out - ref|| / ||ref||) for the outputs and 1e-4 for the gradients: the
//! kernels run in fp32 through two layers of GEMMs, LayerNorms and softmaxes (errors of a few
//! 1e-7 per op, compounding), and the gradients of small tables (position and token-type
//! embeddings, summed over few tokens) are the least well-conditioned.

use std::path::PathBuf;

use emrclass::check::relative_error;

use emrclass::model::bert::BertEncoder;
use emrclass::{Device, Schedule};
use serde_json::Value;

fn dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn f64s(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn i32s(v: &Value) -> Vec<i32> {
    f64s(v).into_iter().map(|x| x as i32).collect()
}

fn check(name: &str, dev: &Device) {
    let folder = dir(name);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("expected.json")).unwrap())
            .unwrap();
    let mut enc = BertEncoder::load_dir(dev, &folder).unwrap();
    let batch = expected["batch"].as_u64().unwrap() as usize;
    let (ids, mask, types) = (
        i32s(&expected["input_ids"]),
        i32s(&expected["attention_mask"]),
        i32s(&expected["token_type_ids"]),
    );
    let (hidden, pooled) = enc.forward(&ids, &mask, Some(&types), batch, None).unwrap();
    let e = relative_error(
        &hidden.to_host().unwrap(),
        &f64s(&expected["last_hidden_state"]),
    );
    assert!(e < 1e-5, "{name}: last_hidden_state error {e:e}");
    let e = relative_error(
        &pooled.to_host().unwrap(),
        &f64s(&expected["pooler_output"]),
    );
    assert!(e < 1e-5, "{name}: pooler_output error {e:e}");
    let r1 = dev
        .upload(
            &f64s(&expected["r1"])
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
            "r1",
        )
        .unwrap();
    let r2 = dev
        .upload(
            &f64s(&expected["r2"])
                .iter()
                .map(|&v| v as f32)
                .collect::<Vec<_>>(),
            "r2",
        )
        .unwrap();
    enc.backward(Some(&r1), Some(&r2)).unwrap();
    let grads = expected["grads"].as_object().unwrap();
    assert_eq!(grads.len(), enc.params.len(), "{name}: parameter count");
    // The key biases' true gradient is 0 (they shift every score of a query row equally, and
    // softmax ignores shifts): both sides hold rounding noise there. So each gradient's error
    // is measured against max(its own norm, 1e-4 x the largest parameter gradient's norm).
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let largest = grads.values().map(|g| norm(&f64s(g))).fold(0.0, f64::max);
    for p in &enc.params {
        let want = f64s(
            grads
                .get(&p.name)
                .unwrap_or_else(|| panic!("{name}: fixture lacks {}", p.name)),
        );
        let got: Vec<f64> = p
            .grad
            .to_host()
            .unwrap()
            .iter()
            .map(|&v| v as f64)
            .collect();
        assert!(
            got.iter().all(|v| v.is_finite()),
            "{name}: gradient of {} is not finite",
            p.name
        );
        let diff: Vec<f64> = got.iter().zip(&want).map(|(a, b)| a - b).collect();
        let e = norm(&diff) / norm(&want).max(1e-4 * largest);
        assert!(e < 1e-4, "{name}: gradient of {} error {e:e}", p.name);
    }
}

#[test]
fn gelu_bert_matches_transformers() {
    check("bert_tiny", &Device::simt(Schedule::Forward));
}

#[test]
fn relu_bert_with_ernie_eps_matches_transformers() {
    check("bert_tiny_relu", &Device::simt(Schedule::Random(3)));
}
