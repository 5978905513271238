//! Checks of the five classification losses for the registry: the f64 reference against finite
//! differences (row weights, GHM's beta included, held constant, as in the backward pass), and
//! the loss layer's kernels against the reference over two steps (so the GHM moving average is
//! exercised), with the gradient buffer NaN-poisoned before each step; GHM's data-parallel
//! path too (three ranks exchanging bin counts).

use super::{
    finite_difference, relative_error, relative_error_to_terms, worst, Row, GRADIENT_TOLERANCE,
    KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::imbalance::class_weights_from_counts;
use crate::model::loss::{ClassificationLoss, LossConfig, LossKind, SharedGhm};
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
            let got = (out.loss, gb.to_host()?);
            err = worst(
                err,
                step_error(got, (want_loss, &want_grad), &parts, &z, &y, k),
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
    if matches!(kind, LossKind::GhmC | LossKind::GhmCs) {
        for (n, k) in [(7usize, 3usize), (33, 44)] {
            rows.push(shared_step(kind, dev, rng, n, k)?);
        }
    }
    Ok(rows)
}

/// GHM in data-parallel steps (`forward_backward_shared`: ghm_count_bins, the exchange,
/// ghm_apply_counts): three ranks, a loss layer each, take one micro-batch of n rows each per
/// step; each sends its bin counts (which must be the reference's) and gets all three (the
/// reference's). Each rank's loss and gradient must be the reference's for its micro-batch
/// taken after the ones before it in the step, and after each step every rank's moving
/// histogram and loss-step count the reference's after all three. Two steps, GHM-CS's warm-up
/// ending inside the first.
fn shared_step(kind: LossKind, dev: &Device, rng: &mut Rng, n: usize, k: usize) -> Result<Row> {
    const RANKS: usize = 3;
    let mut cfg = config(kind, k, rng);
    cfg.ghm_warmup_steps = 2;
    let bins = cfg.ghm_bins;
    let mut ranks: Vec<ClassificationLoss> = (0..RANKS)
        .map(|_| ClassificationLoss::new(dev, k, cfg.clone()))
        .collect::<Result<_>>()?;
    let mut ema = vec![0.0; bins];
    let mut err = 0.0;
    for step in 0..2u64 {
        let batches: Vec<(Vec<i32>, Vec<f64>)> = (0..RANKS)
            .map(|_| (labels(n, k, rng), rng.normals(n * k, 3.0)))
            .collect();
        let counts: Vec<Vec<i32>> = batches
            .iter()
            .map(|(y, z)| {
                let (_, g) = crate::reference::loss::row_stats(z, y, k);
                let mut c = vec![0i32; bins];
                for gi in g {
                    c[crate::reference::loss::ghm_bin(gi as f32, bins)] += 1;
                }
                c
            })
            .collect();
        for (p, ((y, z), layer)) in batches.iter().zip(&mut ranks).enumerate() {
            let parts = layer_parts(&cfg, k, &mut ema, step * RANKS as u64 + p as u64 + 1, z, y);
            let (want_loss, want_grad) = loss_and_grad(&parts.spec(k, y), z);
            let zb = dev.upload(&super::to_f32(z), "logits")?;
            let mut gb = dev.upload(&super::nan_vec(n * k), "grad")?;
            let mut sent_right = true;
            let mut exchange = |sent: &[i32]| {
                sent_right = sent == counts[p].as_slice();
                Ok(counts.clone())
            };
            let shared = SharedGhm {
                position: p,
                exchange: &mut exchange,
            };
            let out = layer.forward_backward_shared(&zb, y, &mut gb, Some(shared))?;
            if !sent_right {
                err = f64::INFINITY;
            }
            let got = (out.loss, gb.to_host()?);
            err = worst(
                err,
                step_error(got, (want_loss, &want_grad), &parts, z, y, k),
            );
        }
        for layer in &ranks {
            let (got_ema, steps) = layer.state()?;
            err = worst(err, relative_error(&got_ema, &ema));
            if steps != (step + 1) * RANKS as u64 {
                err = f64::INFINITY;
            }
        }
    }
    Ok(Row {
        op: name(kind).into(),
        check: "kernel",
        device: dev.describe(),
        sizes: format!("rows={n} classes={k} ranks=3 steps=2 (data parallel)"),
        error: err,
        tolerance: KERNEL_TOLERANCE,
    })
}

/// The worse of a loss step's errors against the reference: the loss, and the gradient
/// (against its terms under soft targets, `soft_target_error`).
fn step_error(
    (loss, grad): (f32, Vec<f32>),
    (want_loss, want_grad): (f64, &[f64]),
    parts: &StepParts,
    z: &[f64],
    y: &[i32],
    k: usize,
) -> f64 {
    let grad_error = match &parts.soft_targets {
        None => relative_error(&grad, want_grad),
        Some(q) => soft_target_error(&grad, want_grad, parts, q, z, y, k),
    };
    worst(relative_error(&[loss], &[want_loss]), grad_error)
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
