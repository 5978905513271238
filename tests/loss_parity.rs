//! Link 2 (and 3) of the correctness chain for the losses: PyTorch's values in
//! tests/fixtures/losses.json (written in float64 by make_loss_fixtures.py, torch 2.9.1) against
//! the f64 reference (1e-9) and against the loss layer's kernels on the simulator (1e-5, fp32),
//! loss, dL/dlogits and, for GHM, the moving average over a sequence of batches.

mod common;
use common::{f64s, rel};

use emrclass::check::relative_error;
use emrclass::model::imbalance::{class_weights_from_counts, soft_targets};
use emrclass::model::loss::{ClassificationLoss, LossConfig, LossKind};
use emrclass::reference::loss::{ghm_bin, ghm_bin_weights, loss_and_grad, row_stats, LossSpec};
use emrclass::{Device, Schedule};
use serde_json::Value;

const REFERENCE_TOLERANCE: f64 = 1e-9;
const KERNEL_TOLERANCE: f64 = 1e-5;

fn fixtures() -> Vec<Value> {
    let text = include_str!("fixtures/losses.json");
    let v: Value = serde_json::from_str(text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn labels(v: &Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_i64().unwrap() as i32)
        .collect()
}

fn rel1(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// Runs a batch through the layer on `dev`; returns (loss, grad).
fn run_layer(
    layer: &mut ClassificationLoss,
    dev: &Device,
    logits: &[f64],
    labels: &[i32],
) -> (f32, Vec<f32>) {
    let z = dev
        .upload(
            &logits.iter().map(|&v| v as f32).collect::<Vec<_>>(),
            "logits",
        )
        .unwrap();
    let mut grad = dev.upload(&vec![f32::NAN; logits.len()], "grad").unwrap();
    let out = layer.forward_backward(&z, labels, &mut grad).unwrap();
    (out.loss, grad.to_host().unwrap())
}

fn check(name: &str, what: &str, err: f64, tol: f64) {
    assert!(err <= tol, "{name}: {what} error {err:e} > {tol:e}");
}

fn single_batch_case(case: &Value, dev: &Device) {
    let name = case["name"].as_str().unwrap();
    let k = case["classes"].as_u64().unwrap() as usize;
    let y = labels(&case["labels"]);
    let z = f64s(&case["logits"]);
    let (want_loss, want_grad) = (case["loss"].as_f64().unwrap(), f64s(&case["grad"]));
    let kind = case["kind"].as_str().unwrap();
    let mut config = LossConfig::new(match kind {
        "ce" => LossKind::CrossEntropy,
        "wce" => LossKind::WeightedCrossEntropy,
        "focal" => LossKind::Focal,
        other => panic!("unknown kind {other}"),
    });
    let mut row_weight = None;
    let mut focal = None;
    let alpha = case.get("alpha").filter(|a| !a.is_null()).map(f64s);
    match kind {
        "wce" => {
            let counts: Vec<usize> = f64s(&case["counts"]).iter().map(|&c| c as usize).collect();
            let w = class_weights_from_counts(&counts, case["gamma"].as_f64().unwrap()).unwrap();
            check(
                name,
                "class weights",
                rel(&w, &f64s(&case["class_weights"])),
                1e-12,
            );
            row_weight = Some(y.iter().map(|&c| w[c as usize]).collect::<Vec<_>>());
            config.class_weights = Some(w);
        }
        "focal" => {
            let gamma = case["gamma"].as_f64().unwrap();
            config.focal_gamma = gamma as f32;
            config.focal_alpha = alpha.clone();
            focal = Some(gamma);
        }
        _ => {}
    }
    // The reference.
    let spec = LossSpec {
        classes: k,
        labels: &y,
        row_weight: row_weight.as_deref(),
        fixed_norm: if kind == "wce" {
            None
        } else {
            Some(y.len() as f64)
        },
        soft_targets: None,
        focal: focal.map(|g| (g, alpha.as_deref())),
    };
    let (loss, grad) = loss_and_grad(&spec, &z);
    check(
        name,
        "reference loss",
        rel1(loss, want_loss),
        REFERENCE_TOLERANCE,
    );
    check(
        name,
        "reference grad",
        rel(&grad, &want_grad),
        REFERENCE_TOLERANCE,
    );
    // The kernels.
    let mut layer = ClassificationLoss::new(dev, k, config).unwrap();
    let (kl, kg) = run_layer(&mut layer, dev, &z, &y);
    assert!(kl.is_finite(), "{name}: kernel loss {kl}");
    check(
        name,
        "kernel loss",
        rel1(kl as f64, want_loss),
        KERNEL_TOLERANCE,
    );
    check(
        name,
        "kernel grad",
        relative_error(&kg, &want_grad),
        KERNEL_TOLERANCE,
    );
}

fn ghm_case(case: &Value, dev: &Device) {
    let name = case["name"].as_str().unwrap();
    let k = case["classes"].as_u64().unwrap() as usize;
    let bins = case["bins"].as_u64().unwrap() as usize;
    let alpha = case["alpha"].as_f64().unwrap();
    let cs = case["kind"].as_str().unwrap() == "ghmcs";
    let mut config = LossConfig::new(if cs { LossKind::GhmCs } else { LossKind::GhmC });
    config.ghm_bins = bins;
    config.ghm_alpha = alpha as f32;
    let mut class_w = None;
    let mut targets = None;
    if cs {
        let counts: Vec<usize> = f64s(&case["counts"]).iter().map(|&c| c as usize).collect();
        let w = class_weights_from_counts(&counts, case["gamma"].as_f64().unwrap()).unwrap();
        check(
            name,
            "class weights",
            rel(&w, &f64s(&case["class_weights"])),
            1e-12,
        );
        let sim = f64s(&case["similarity"]);
        let eps = case["epsilon"].as_f64().unwrap();
        let t = soft_targets(&sim, k, eps);
        check(
            name,
            "soft targets",
            rel(&t, &f64s(&case["soft_targets"])),
            1e-12,
        );
        config.class_weights = Some(w.clone());
        config.similarity = Some(sim);
        config.epsilon = eps;
        class_w = Some(w);
        targets = Some(t);
    }
    let mut layer = ClassificationLoss::new(dev, k, config).unwrap();
    let mut ema = vec![0.0; bins];
    for (step, batch) in case["batches"].as_array().unwrap().iter().enumerate() {
        let y = labels(&batch["labels"]);
        let z = f64s(&batch["logits"]);
        let (want_loss, want_grad, want_ema) = (
            batch["loss"].as_f64().unwrap(),
            f64s(&batch["grad"]),
            f64s(&batch["ema"]),
        );
        // The reference: beta from the f64 GHM step, held constant.
        let (_, g) = row_stats(&z, &y, k);
        let bw = ghm_bin_weights(&g, bins, alpha, &mut ema);
        let a: Vec<f64> = y
            .iter()
            .zip(&g)
            .map(|(&c, &gi)| {
                class_w.as_ref().map_or(1.0, |w| w[c as usize]) * bw[ghm_bin(gi as f32, bins)]
            })
            .collect();
        let spec = LossSpec {
            classes: k,
            labels: &y,
            row_weight: Some(&a),
            fixed_norm: if cs { None } else { Some(y.len() as f64) },
            soft_targets: targets.as_deref(),
            focal: None,
        };
        let (loss, grad) = loss_and_grad(&spec, &z);
        let at = format!("{name} batch {step}");
        check(
            &at,
            "reference loss",
            rel1(loss, want_loss),
            REFERENCE_TOLERANCE,
        );
        check(
            &at,
            "reference grad",
            rel(&grad, &want_grad),
            REFERENCE_TOLERANCE,
        );
        if alpha > 0.0 {
            check(
                &at,
                "reference moving average",
                rel(&ema, &want_ema),
                REFERENCE_TOLERANCE,
            );
        }
        // The kernels, carrying their moving average on the device from batch to batch.
        let (kl, kg) = run_layer(&mut layer, dev, &z, &y);
        check(
            &at,
            "kernel loss",
            rel1(kl as f64, want_loss),
            KERNEL_TOLERANCE,
        );
        check(
            &at,
            "kernel grad",
            relative_error(&kg, &want_grad),
            KERNEL_TOLERANCE,
        );
        if alpha > 0.0 {
            let (state, steps) = layer.state().unwrap();
            assert_eq!(steps, step as u64 + 1);
            check(
                &at,
                "kernel moving average",
                relative_error(&state, &want_ema),
                KERNEL_TOLERANCE,
            );
        }
    }
}

fn run_all(dev: &Device) {
    let cases = fixtures();
    assert_eq!(cases.len(), 16, "fixture file changed: update this test");
    for case in &cases {
        match case["kind"].as_str().unwrap() {
            "ghmc" | "ghmcs" => ghm_case(case, dev),
            _ => single_batch_case(case, dev),
        }
    }
}

#[test]
fn losses_match_pytorch_on_the_simulator_forward_order() {
    run_all(&common::test_device(Schedule::Forward));
}

#[test]
fn losses_match_pytorch_on_the_simulator_reverse_order() {
    run_all(&common::test_device(Schedule::Reverse));
}
