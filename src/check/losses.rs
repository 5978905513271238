//! Checks of the five classification losses for the registry: the f64 reference against finite
//! differences (row weights, GHM's beta included, held constant, as in the backward pass), and
//! the loss layer's kernels against the reference over two steps (so the GHM moving average is
//! exercised), with the gradient buffer NaN-poisoned before each step.

use super::{
    finite_difference, relative_error, relative_error_to_terms, worst, Row, GRADIENT_TOLERANCE,
    KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::imbalance::class_weights_from_counts;
use crate::model::loss::{ClassificationLoss, LossConfig, LossKind};
use crate::reference::loss::{layer_parts, loss_and_grad, StepParts};
use crate::rng::Rng;

/// A configuration of `kind` for `k` classes with random class counts, focal alphas and
/// similarity, so every optional input is exercised.
fn config(kind: LossKind, k: usize, rng: &mut Rng) -> LossConfig {
    let mut c = LossConfig::new(kind);
    let counts: Vec<usize> = (0..k)
        .map(|i| {
            if i == k / 2 {
                0
            } else {
                1 + (rng.uniform() * 200.0) as usize
            }
        })
        .collect();
    c.class_weights = Some(
        class_weights_from_counts(&counts, if kind == LossKind::GhmCs { 0.5 } else { 1.0 })
            .unwrap(),
    );
    if kind == LossKind::Focal {
        c.focal_alpha = Some((0..k).map(|_| 0.25 + 0.5 * rng.uniform()).collect());
    }
    if kind == LossKind::GhmCs {
        c.similarity = Some((0..k * k).map(|_| rng.uniform()).collect());
    }
    c
}

fn labels(n: usize, k: usize, rng: &mut Rng) -> Vec<i32> {
    (0..n).map(|_| (rng.next_u64() % k as u64) as i32).collect()
}

fn name(kind: LossKind) -> &'static str {
    match kind {
        LossKind::CrossEntropy => "loss_ce",
        LossKind::WeightedCrossEntropy => "loss_weighted_ce",
        LossKind::Focal => "loss_focal",
        LossKind::GhmC => "loss_ghmc",
        LossKind::GhmCs => "loss_ghmcs",
    }
}

pub fn gradient(kind: LossKind, rng: &mut Rng) -> Vec<Row> {
    [(1usize, 2usize), (4, 3), (6, 7)]
        .iter()
        .map(|&(n, k)| {
            let cfg = config(kind, k, rng);
            let y = labels(n, k, rng);
            let z = rng.normals(n * k, 2.0);
            let mut ema = vec![0.0; cfg.ghm_bins];
            let parts = layer_parts(&cfg, k, &mut ema, 1, &z, &y);
            let spec = parts.spec(k, &y);
            let (_, grad) = loss_and_grad(&spec, &z);
            let chk = finite_difference(|x| loss_and_grad(&spec, x).0, &z, &grad, 1e-3);
            Row {
                op: name(kind).into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("rows={n} classes={k}"),
                error: chk.worst_error,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

pub fn kernel(kind: LossKind, dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (n, k) in [(1usize, 2usize), (7, 3), (33, 44), (5, 1000), (64, 5)] {
        let cfg = config(kind, k, rng);
        let mut layer = ClassificationLoss::new(dev, k, cfg.clone())?;
        let mut ema = vec![0.0; cfg.ghm_bins];
        let mut err = 0.0;
        for step in 1..=2u64 {
            let y = labels(n, k, rng);
            let z = rng.normals(n * k, 3.0);
            let parts = layer_parts(&cfg, k, &mut ema, step, &z, &y);
            let (want_loss, want_grad) = loss_and_grad(&parts.spec(k, &y), &z);
            let zb = dev.upload(&super::to_f32(&z), "logits")?;
            let mut gb = dev.upload(&super::nan_vec(n * k), "grad")?;
            let out = layer.forward_backward(&zb, &y, &mut gb)?;
            err = worst(err, relative_error(&[out.loss], &[want_loss]));
            let got = gb.to_host()?;
            err = worst(
                err,
                match &parts.soft_targets {
                    None => relative_error(&got, &want_grad),
                    Some(q) => soft_target_error(&got, &want_grad, &parts, q, &z, &y, k),
                },
            );
        }
        rows.push(Row {
            op: name(kind).into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("rows={n} classes={k} steps=2"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows)
}

/// With soft targets the gradient (a_i / norm)(p - q) vanishes wherever p meets q, and no fp32
/// computation gets a vanishing difference to 1e-5 of itself: p carries ~1e-7 relative error.
/// So the error is measured against the terms it is the difference of, (a_i / norm)(p + q).
fn soft_target_error(
    got: &[f32],
    want: &[f64],
    parts: &StepParts,
    q: &[f64],
    z: &[f64],
    y: &[i32],
    k: usize,
) -> f64 {
    let p = crate::reference::softmax_rows_forward(z, y.len(), k);
    let weights: Vec<f64> = (0..y.len())
        .map(|r| parts.row_weight.as_ref().map_or(1.0, |w| w[r]))
        .collect();
    let norm = parts.fixed_norm.unwrap_or_else(|| weights.iter().sum());
    let terms: Vec<f64> = (0..y.len() * k)
        .map(|i| weights[i / k] / norm * (p[i] + q[y[i / k] as usize * k + i % k]))
        .collect();
    relative_error_to_terms(got, want, &terms)
}
