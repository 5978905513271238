//! HF transformers parity of the BERT encoder: tiny random BertModels written by
//! tests/fixtures/make_bert_fixtures.py (transformers 4.57.1, torch 2.9.1) are loaded from
//! their config.json and model.safetensors, run forward and backward on the simulator, and
//! compared with transformers' float64 outputs and parameter gradients.
//!
//! Tolerance 1e-5 (||out - ref|| / ||ref||) for the outputs and 1e-4 for the gradients: the
//! kernels run in fp32 through two layers of GEMMs, LayerNorms and softmaxes (errors of a few
//! 1e-7 per op, compounding), and the gradients of small tables (position and token-type
//! embeddings, summed over few tokens) are the least well-conditioned.

mod common;
use common::{f64s, i32s};

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

/// The f64 reference against the same fixture, far tighter: both sides are float64. Outputs
/// agree to 1e-9; gradients to 1e-7 (the key weights' gradients are small differences of large
/// terms, and the two sides sum in different orders).
fn check_reference(name: &str) {
    use emrclass::model::bert::{parameter_shapes, BertConfig};
    use emrclass::reference::bert as rb;
    let folder = dir(name);
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(folder.join("expected.json")).unwrap())
            .unwrap();
    let config = BertConfig::from_file(&folder.join("config.json")).unwrap();
    let ck = emrclass::weights::Checkpoint::open(&folder.join("model.safetensors")).unwrap();
    let params: rb::Params = parameter_shapes(&config)
        .into_iter()
        .map(|(n, s)| {
            let v = ck.get(&n, &s).unwrap().into_iter().map(f64::from).collect();
            (n, v)
        })
        .collect();
    let batch = expected["batch"].as_u64().unwrap() as usize;
    let (ids, mask, types) = (
        i32s(&expected["input_ids"]),
        i32s(&expected["attention_mask"]),
        i32s(&expected["token_type_ids"]),
    );
    let tape = rb::forward(&config, &params, &ids, &mask, &types, batch);
    let rel = |a: &[f64], b: &[f64], floor: f64| {
        let d: f64 = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f64>()
            .sqrt();
        d / b.iter().map(|y| y * y).sum::<f64>().sqrt().max(floor)
    };
    assert!(
        rel(&tape.hidden, &f64s(&expected["last_hidden_state"]), 0.0) < 1e-9,
        "{name}: reference hidden"
    );
    assert!(
        rel(&tape.pooled, &f64s(&expected["pooler_output"]), 0.0) < 1e-9,
        "{name}: reference pooled"
    );
    let g = rb::backward(
        &config,
        &params,
        &ids,
        &mask,
        &types,
        batch,
        &f64s(&expected["r1"]),
        &f64s(&expected["r2"]),
    );
    let grads = expected["grads"].as_object().unwrap();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let largest = grads.values().map(|v| norm(&f64s(v))).fold(0.0, f64::max);
    for (n, want) in grads {
        let e = rel(&g[n], &f64s(want), 1e-9 * largest);
        assert!(e < 1e-7, "{name}: reference gradient of {n} error {e:e}");
    }
}

#[test]
fn reference_bert_matches_transformers() {
    check_reference("bert_tiny");
    check_reference("bert_tiny_relu");
}

#[test]
fn gelu_bert_matches_transformers() {
    check("bert_tiny", &common::test_device(Schedule::Forward));
}

#[test]
fn relu_bert_with_ernie_eps_matches_transformers() {
    check("bert_tiny_relu", &common::test_device(Schedule::Random(3)));
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-bert-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Rewrites the fixture checkpoint with renamed (or dropped, or reshaped) tensors.
fn rewrite(out: &std::path::Path, rename: impl Fn(&str) -> Option<String>, reshape: Option<&str>) {
    use emrclass::weights::{write_tensors, Checkpoint};
    let ck = Checkpoint::open(&dir("bert_tiny").join("model.safetensors")).unwrap();
    let config =
        emrclass::model::bert::BertConfig::from_file(&dir("bert_tiny").join("config.json"))
            .unwrap();
    let shapes = emrclass::model::bert::parameter_shapes(&config);
    let mut owned = Vec::new();
    for (name, shape) in &shapes {
        let Some(new) = rename(name) else { continue };
        let mut shape = shape.clone();
        let data = ck.get(name, &shape).unwrap();
        if reshape == Some(name.as_str()) {
            shape = vec![data.len()];
        }
        owned.push((new, shape, data));
    }
    let tensors: Vec<(&str, Vec<usize>, &[f32])> = owned
        .iter()
        .map(|(n, s, d)| (n.as_str(), s.clone(), d.as_slice()))
        .collect();
    write_tensors(out, &tensors).unwrap();
}

#[test]
fn checkpoint_layouts_and_named_errors() {
    let dev = common::test_device(Schedule::Forward);
    let config =
        emrclass::model::bert::BertConfig::from_file(&dir("bert_tiny").join("config.json"))
            .unwrap();
    let reference = BertEncoder::load_dir(&dev, &dir("bert_tiny")).unwrap();
    let same = |enc: &BertEncoder| {
        for p in &enc.params {
            assert_eq!(
                p.value.to_host().unwrap(),
                reference.param(&p.name).value.to_host().unwrap(),
                "{}",
                p.name
            );
        }
    };
    // `bert.` prefix with legacy gamma/beta LayerNorm names, as old TF conversions have them.
    let legacy = tmp("legacy.safetensors");
    rewrite(
        &legacy,
        |n| {
            Some(format!(
                "bert.{}",
                n.replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta")
            ))
        },
        None,
    );
    same(&BertEncoder::load(&dev, config.clone(), &legacy).unwrap());
    // Saving writes BertModel's names; loading that back gives the same parameters.
    let saved = tmp("saved.safetensors");
    reference.save(&saved).unwrap();
    same(&BertEncoder::load(&dev, config.clone(), &saved).unwrap());
    // A missing tensor and a wrong shape name the tensor and the shapes.
    let missing = tmp("missing.safetensors");
    rewrite(
        &missing,
        |n| (n != "encoder.layer.1.output.dense.bias").then(|| n.to_string()),
        None,
    );
    let e = BertEncoder::load(&dev, config.clone(), &missing)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("missing tensor encoder.layer.1.output.dense.bias (expected shape [64])"),
        "{e}"
    );
    let reshaped = tmp("reshaped.safetensors");
    rewrite(
        &reshaped,
        |n| Some(n.to_string()),
        Some("encoder.layer.0.intermediate.dense.weight"),
    );
    let e = BertEncoder::load(&dev, config.clone(), &reshaped)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains(
            "tensor encoder.layer.0.intermediate.dense.weight has shape [8192], [128, 64] expected"
        ),
        "{e}"
    );
    // A truncated file is an error, not a panic.
    let bytes = std::fs::read(dir("bert_tiny").join("model.safetensors")).unwrap();
    let cut = tmp("cut.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let e = BertEncoder::load(&dev, config, &cut)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("not a readable safetensors file"), "{e}");
}
