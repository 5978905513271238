//! f64 reference of the classification losses (kernels/loss.cu): plain loops, one function per
//! step, so that each can be checked on its own (finite differences, PyTorch fixtures).

/// Per-row log-sum-exp and g = 1 - p_y.
pub fn row_stats(logits: &[f64], labels: &[i32], classes: usize) -> (Vec<f64>, Vec<f64>) {
    let rows = labels.len();
    let mut lse = vec![0.0; rows];
    let mut g = vec![0.0; rows];
    for r in 0..rows {
        let z = &logits[r * classes..(r + 1) * classes];
        let max = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let l = max + z.iter().map(|v| (v - max).exp()).sum::<f64>().ln();
        lse[r] = l;
        let y = labels[r] as usize;
        g[r] = z
            .iter()
            .enumerate()
            .filter(|&(c, _)| c != y)
            .map(|(_, v)| (v - l).exp())
            .sum::<f64>()
            .min(1.0);
    }
    (lse, g)
}

/// The GHM bin of g: edges j / bins computed in f32 like the published implementation (and the
/// kernel), the last edge raised by 1e-6.
pub fn ghm_bin(g: f32, bins: usize) -> usize {
    let edge = |j: usize| {
        if j == bins {
            1.0 + 1e-6
        } else {
            j as f32 / bins as f32
        }
    };
    (0..bins)
        .find(|&j| g >= edge(j) && g < edge(j + 1))
        .unwrap_or(if g < 0.0 { 0 } else { bins - 1 })
}

/// One GHM step: counts R_j of the batch's g (taken as f32, as the kernel sees them), the
/// moving average S_j <- alpha S_j + (1 - alpha) R_j of the non-empty bins (alpha = 0: S_j =
/// R_j, and `ema` is left alone), and the weight rows / (S_j * non-empty bins) of each bin.
pub fn ghm_bin_weights(g: &[f64], bins: usize, alpha: f64, ema: &mut [f64]) -> Vec<f64> {
    let mut counts = vec![0usize; bins];
    for &v in g {
        counts[ghm_bin(v as f32, bins)] += 1;
    }
    let nonempty = counts.iter().filter(|&&c| c > 0).count() as f64;
    (0..bins)
        .map(|j| {
            if counts[j] == 0 {
                return 0.0;
            }
            let mut s = counts[j] as f64;
            if alpha > 0.0 {
                s = alpha * ema[j] + (1.0 - alpha) * counts[j] as f64;
                ema[j] = s;
            }
            g.len() as f64 / (s * nonempty)
        })
        .collect()
}

/// The loss as a function of the logits, with everything else held constant:
/// per-row weights `a` (None: 1), the normaliser (None: sum of a, the weighted mean), soft
/// targets (K x K, row y = target of class y; None: one-hot) or focal (gamma, per-class alpha).
pub struct LossSpec<'a> {
    pub classes: usize,
    pub labels: &'a [i32],
    pub row_weight: Option<&'a [f64]>,
    /// Some(n): divide by n; None: divide by the sum of the row weights.
    pub fixed_norm: Option<f64>,
    pub soft_targets: Option<&'a [f64]>,
    pub focal: Option<(f64, Option<&'a [f64]>)>,
}

/// Loss value and dL/dlogits.
pub fn loss_and_grad(spec: &LossSpec, logits: &[f64]) -> (f64, Vec<f64>) {
    let k = spec.classes;
    let rows = spec.labels.len();
    let (lse, one_minus_py) = row_stats(logits, spec.labels, k);
    let weight = |r: usize| spec.row_weight.map_or(1.0, |w| w[r]);
    let norm = spec
        .fixed_norm
        .unwrap_or_else(|| (0..rows).map(weight).sum());
    let mut loss = 0.0;
    let mut grad = vec![0.0; rows * k];
    for r in 0..rows {
        let y = spec.labels[r] as usize;
        let scale = weight(r) / norm;
        let logp = |c: usize| logits[r * k + c] - lse[r];
        match spec.focal {
            Some((gamma, alpha)) => {
                let alpha = alpha.map_or(1.0, |a| a[y]);
                let (lp, omp) = (logp(y), one_minus_py[r]);
                let p = lp.exp();
                let pow_g = omp.powf(gamma);
                let second = if omp > 0.0 {
                    gamma * p * omp.powf(gamma - 1.0) * lp
                } else {
                    0.0
                };
                loss += -scale * alpha * pow_g * lp;
                for c in 0..k {
                    let onehot = if c == y { 1.0 } else { 0.0 };
                    grad[r * k + c] = scale * alpha * (pow_g - second) * (logp(c).exp() - onehot);
                }
            }
            None => {
                for c in 0..k {
                    let q = match spec.soft_targets {
                        Some(t) => t[y * k + c],
                        None => (c == y) as u8 as f64,
                    };
                    if q != 0.0 {
                        loss -= scale * q * logp(c);
                    }
                    grad[r * k + c] = scale * (logp(c).exp() - q);
                }
            }
        }
    }
    (loss, grad)
}

/// What one step of the loss layer fixes before differentiating: the row weights (class
/// weight x GHM beta), the normaliser and the soft targets. Gradient checks hold these constant.
pub struct StepParts {
    pub row_weight: Option<Vec<f64>>,
    pub fixed_norm: Option<f64>,
    pub soft_targets: Option<Vec<f64>>,
    pub focal: Option<(f64, Option<Vec<f64>>)>,
}

impl StepParts {
    pub fn spec<'a>(&'a self, classes: usize, labels: &'a [i32]) -> LossSpec<'a> {
        LossSpec {
            classes,
            labels,
            row_weight: self.row_weight.as_deref(),
            fixed_norm: self.fixed_norm,
            soft_targets: self.soft_targets.as_deref(),
            focal: self.focal.as_ref().map(|(g, a)| (*g, a.as_deref())),
        }
    }
}

/// One step of the loss layer (model::loss::ClassificationLoss) in f64, up to the loss itself:
/// GHM histogram and moving average (`ema`, updated in place; `step` counts from 1), row
/// weights, soft targets and reduction.
pub fn layer_parts(
    config: &crate::model::loss::LossConfig,
    classes: usize,
    ema: &mut [f64],
    step: u64,
    logits: &[f64],
    labels: &[i32],
) -> StepParts {
    use crate::model::loss::LossKind::*;
    let kind = config.kind;
    let (_, g) = row_stats(logits, labels, classes);
    let ghm = match kind {
        GhmC | GhmCs => {
            let bw = ghm_bin_weights(&g, config.ghm_bins, config.ghm_alpha as f64, ema);
            (kind == GhmC || step > config.ghm_warmup_steps).then_some(bw)
        }
        _ => None,
    };
    let class_weight = match kind {
        WeightedCrossEntropy | GhmCs => config.class_weights.as_deref(),
        _ => None,
    };
    let row_weight = (class_weight.is_some() || ghm.is_some()).then(|| {
        labels
            .iter()
            .zip(&g)
            .map(|(&y, &gi)| {
                class_weight.map_or(1.0, |w| w[y as usize])
                    * ghm
                        .as_ref()
                        .map_or(1.0, |bw| bw[ghm_bin(gi as f32, config.ghm_bins)])
            })
            .collect()
    });
    StepParts {
        row_weight,
        fixed_norm: match kind {
            WeightedCrossEntropy | GhmCs => None,
            _ => Some(labels.len() as f64),
        },
        soft_targets: match (kind, &config.similarity) {
            (GhmCs, Some(s)) => Some(crate::model::imbalance::soft_targets(
                s,
                classes,
                config.epsilon,
            )),
            _ => None,
        },
        focal: (kind == Focal).then(|| (config.focal_gamma as f64, config.focal_alpha.clone())),
    }
}

/// One whole step of the loss layer in f64: the loss and dL/dlogits.
pub fn layer_step(
    config: &crate::model::loss::LossConfig,
    classes: usize,
    ema: &mut [f64],
    step: u64,
    logits: &[f64],
    labels: &[i32],
) -> (f64, Vec<f64>) {
    let parts = layer_parts(config, classes, ema, step, logits, labels);
    loss_and_grad(&parts.spec(classes, labels), logits)
}
