//! The classification loss layer: cross-entropy, class-weighted CE, focal, GHM-C and GHM-CS,
//! each a configuration of the fused kernels in kernels/loss.cu. It owns its device state
//! (class weights, soft targets, the GHM moving average) and returns the loss with dL/dlogits.
//!
//! Reductions, as PyTorch does them:
//! - CE, focal, GHM-C: the mean over the batch, (1/N) sum_i a_i l_i (a_i = 1, alpha_y or beta_i);
//! - weighted CE and GHM-CS: the weighted mean sum_i a_i l_i / sum_i a_i, the reduction of
//!   `nn.CrossEntropyLoss(weight=w)`; GHM-CS cannot do without it (see issue 5: with the plain
//!   mean, weights of ~76 times GHM's beta kept a 32-class clinical model from learning).

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::ops::{self, loss as kernels, Reduce};

use super::imbalance;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossKind {
    CrossEntropy,
    WeightedCrossEntropy,
    Focal,
    GhmC,
    GhmCs,
}

impl LossKind {
    /// Every loss, in the paper's order.
    pub const ALL: [LossKind; 5] = [
        LossKind::CrossEntropy,
        LossKind::WeightedCrossEntropy,
        LossKind::Focal,
        LossKind::GhmC,
        LossKind::GhmCs,
    ];

    /// The loss's name in run folders and the paper's tables: ce, wce, focal, ghm, ghm-cs.
    pub fn name(self) -> &'static str {
        match self {
            LossKind::CrossEntropy => "ce",
            LossKind::WeightedCrossEntropy => "wce",
            LossKind::Focal => "focal",
            LossKind::GhmC => "ghm",
            LossKind::GhmCs => "ghm-cs",
        }
    }

    /// The loss `name` names (the inverse of `name`).
    pub fn from_name(name: &str) -> Result<LossKind> {
        LossKind::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .ok_or_else(|| Error::Invalid(format!("no loss named `{name}`")))
    }
}

/// How the loss is configured. Defaults follow the issue: focal gamma 2; GHM 10 bins with a
/// moving average of 0.75; GHM-CS class-weight exponent 0.5 and eps 0.1.
#[derive(Clone, Debug)]
pub struct LossConfig {
    pub kind: LossKind,
    /// Per-class weights for weighted CE and GHM-CS (already final), e.g. from
    /// `imbalance::class_weights_from_counts` or `read_class_weights`.
    pub class_weights: Option<Vec<f64>>,
    pub focal_gamma: f32,
    /// Per-class alpha for the focal loss (None: 1 for every class).
    pub focal_alpha: Option<Vec<f64>>,
    pub ghm_bins: usize,
    /// Moving-average momentum of the GHM histogram (0: none, each batch alone).
    pub ghm_alpha: f32,
    /// GHM-CS: steps with beta = 1 before GHM weighting starts (the histogram still updates).
    pub ghm_warmup_steps: u64,
    /// GHM-CS: K x K class similarity (any scale; see imbalance::soft_targets).
    pub similarity: Option<Vec<f64>>,
    pub epsilon: f64,
}

impl LossConfig {
    pub fn new(kind: LossKind) -> Self {
        LossConfig {
            kind,
            class_weights: None,
            focal_gamma: 2.0,
            focal_alpha: None,
            ghm_bins: 10,
            ghm_alpha: 0.75,
            ghm_warmup_steps: 0,
            similarity: None,
            epsilon: 0.1,
        }
    }
}

/// GHM's weight per bin for a batch distributed as the moving histogram `ema`: β_j =
/// (Σ S) / (M · S_j) over the M non-empty bins, 0 for empty ones (the kernel's rows / (S_j · M)
/// with rows = Σ S). Over such a batch the mean β is 1 by construction, so what tells how GHM
/// treats easy (low g) against hard (high g) examples is β per bin.
pub fn ghm_bin_beta(ema: &[f32]) -> Vec<f64> {
    let total: f64 = ema.iter().map(|&s| s as f64).sum();
    let filled = ema.iter().filter(|&&s| s > 0.0).count() as f64;
    ema.iter()
        .map(|&s| {
            if s > 0.0 {
                total / (filled * s as f64)
            } else {
                0.0
            }
        })
        .collect()
}

pub struct ClassificationLoss {
    config: LossConfig,
    classes: usize,
    device: Device,
    class_weights: Option<Buffer<f32>>,
    soft_targets: Option<Buffer<f32>>,
    focal_alpha: Option<Buffer<f32>>,
    ghm_ema: Option<Buffer<f32>>,
    bin_weight: Option<Buffer<f32>>,
    steps: u64,
}

/// Sends one micro-batch's GHM bin counts; returns every micro-batch's of its step, in order.
pub type GhmExchange<'a> = &'a mut dyn FnMut(&[i32]) -> Result<Vec<Vec<i32>>>;

/// One micro-batch's place in a data-parallel step, for GHM's histogram.
pub struct SharedGhm<'a> {
    /// Its index among the step's micro-batches (the one process's order).
    pub position: usize,
    /// Sends its bin counts; returns every micro-batch's of the step in order (all zeros for
    /// one no rank had).
    pub exchange: GhmExchange<'a>,
}

/// The loss of one batch, and what the GHM step saw (for logs and tests).
pub struct LossOutput {
    pub loss: f32,
}

fn upload(dev: &Device, v: &[f64], what: &str) -> Result<Buffer<f32>> {
    dev.upload(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), what)
}

impl ClassificationLoss {
    /// The device the loss (and so the model) runs on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn new(device: &Device, classes: usize, config: LossConfig) -> Result<Self> {
        let bad = |m: String| Err(Error::Invalid(format!("{:?} loss: {m}", config.kind)));
        if classes == 0 {
            return bad("zero classes".into());
        }
        let per_class = |v: &Option<Vec<f64>>, what: &str| -> Result<()> {
            match v {
                Some(v) if v.len() != classes => Err(Error::Invalid(format!(
                    "{what} has {} entries for {classes} classes",
                    v.len()
                ))),
                Some(v) if v.iter().any(|w| !(w.is_finite() && *w >= 0.0)) => Err(Error::Invalid(
                    format!("{what} must be finite and non-negative"),
                )),
                _ => Ok(()),
            }
        };
        per_class(&config.class_weights, "class_weights")?;
        per_class(&config.focal_alpha, "focal_alpha")?;
        let uses_ghm = matches!(config.kind, LossKind::GhmC | LossKind::GhmCs);
        if uses_ghm && !(1..=kernels::GHM_MAX_BINS).contains(&config.ghm_bins) {
            return bad(format!(
                "{} GHM bins; 1..={} supported",
                config.ghm_bins,
                kernels::GHM_MAX_BINS
            ));
        }
        if uses_ghm && !(0.0..1.0).contains(&config.ghm_alpha) {
            return bad(format!(
                "GHM moving-average momentum {} is not in [0, 1)",
                config.ghm_alpha
            ));
        }
        if config.kind == LossKind::WeightedCrossEntropy && config.class_weights.is_none() {
            return bad("needs class weights (from class counts or a file)".into());
        }
        if !(0.0..=1.0).contains(&config.epsilon) {
            return bad(format!("epsilon {} is not in [0, 1]", config.epsilon));
        }
        let weighted = matches!(
            config.kind,
            LossKind::WeightedCrossEntropy | LossKind::GhmCs
        );
        let class_weights = match (&config.class_weights, weighted) {
            (Some(w), true) => Some(upload(device, w, "class weights")?),
            _ => None,
        };
        let soft_targets = match (&config.similarity, config.kind) {
            (Some(s), LossKind::GhmCs) => {
                if s.len() != classes * classes {
                    return bad(format!(
                        "similarity has {} entries, {classes} x {classes} expected",
                        s.len()
                    ));
                }
                Some(upload(
                    device,
                    &imbalance::soft_targets(s, classes, config.epsilon),
                    "soft targets",
                )?)
            }
            _ => None,
        };
        let focal_alpha = match (&config.focal_alpha, config.kind) {
            (Some(a), LossKind::Focal) => Some(upload(device, a, "focal alpha")?),
            _ => None,
        };
        let (ghm_ema, bin_weight) = if uses_ghm {
            (
                Some(device.zeros(config.ghm_bins, "GHM moving average")?),
                Some(device.zeros(config.ghm_bins, "GHM bin weights")?),
            )
        } else {
            (None, None)
        };
        Ok(ClassificationLoss {
            config,
            classes,
            device: device.clone(),
            class_weights,
            soft_targets,
            focal_alpha,
            ghm_ema,
            bin_weight,
            steps: 0,
        })
    }

    pub fn config(&self) -> &LossConfig {
        &self.config
    }

    /// Whether GHM re-weights the next step: GHM-C always, GHM-CS after its warm-up.
    pub fn ghm_weighting(&self) -> bool {
        match self.config.kind {
            LossKind::GhmC => true,
            LossKind::GhmCs => self.steps >= self.config.ghm_warmup_steps,
            _ => false,
        }
    }

    /// Whether the loss keeps GHM's moving histogram (GHM-C, GHM-CS).
    pub fn uses_ghm(&self) -> bool {
        self.ghm_ema.is_some()
    }

    /// The loss of a batch (logits: rows x classes, row-major) and dL/dlogits into `grad`.
    pub fn forward_backward(
        &mut self,
        logits: &Buffer<f32>,
        labels: &[i32],
        grad: &mut Buffer<f32>,
    ) -> Result<LossOutput> {
        self.forward_backward_shared(logits, labels, grad, None)
    }

    /// `forward_backward` as one micro-batch of a data-parallel step: GHM's histogram takes
    /// every micro-batch of the step, in the one process's order (`shared`; None: this batch
    /// alone, as `forward_backward`). Losses without GHM ignore it.
    pub fn forward_backward_shared(
        &mut self,
        logits: &Buffer<f32>,
        labels: &[i32],
        grad: &mut Buffer<f32>,
        shared: Option<SharedGhm<'_>>,
    ) -> Result<LossOutput> {
        let (rows, k, dev) = (labels.len(), self.classes, self.device.clone());
        if rows == 0 {
            return Err(Error::Invalid("loss of an empty batch".into()));
        }
        if let Some((i, &y)) = labels
            .iter()
            .enumerate()
            .find(|(_, &y)| y < 0 || y as usize >= k)
        {
            return Err(Error::Invalid(format!(
                "label {y} at row {i} is out of range for {k} classes"
            )));
        }
        if logits.len() != rows * k || grad.len() != rows * k {
            return Err(Error::Invalid(format!(
                "logits hold {} and grad {} values; {rows} labels x {k} classes = {} expected",
                logits.len(),
                grad.len(),
                rows * k
            )));
        }
        let labels_dev = dev.upload(labels, "labels")?;
        let mut stats = kernels::RowStats {
            row_max: dev.alloc::<f32>(rows, "loss row max")?,
            log_sum: dev.alloc::<f32>(rows, "loss log-sum-exp")?,
            one_minus_py: dev.alloc::<f32>(rows, "loss 1 - p_y")?,
        };
        kernels::loss_row_stats(logits, &labels_dev, &mut stats, rows, k)?;
        let g = &stats.one_minus_py;

        let kind = self.config.kind;
        let mut later = Vec::new();
        match (self.ghm_ema.as_mut(), self.bin_weight.as_mut(), shared) {
            (Some(ema), Some(bw), None) => {
                self.steps += 1;
                kernels::ghm_update_bins(g, rows, self.config.ghm_alpha, ema, bw)?;
            }
            (Some(_), Some(bw), Some(sh)) => {
                // This micro-batch's counts go out; every one of the step comes back. Those up
                // to this one are applied before its weights, the rest after.
                let mut counts = dev.alloc::<i32>(bw.len(), "GHM bin counts")?;
                kernels::ghm_count_bins(g, rows, &mut counts)?;
                let mut all = (sh.exchange)(&counts.to_host()?)?;
                if sh.position >= all.len() {
                    return Err(Error::Invalid(format!(
                        "GHM exchange: micro-batch {} of a step of {}",
                        sh.position,
                        all.len()
                    )));
                }
                later = all.split_off(sh.position + 1);
                self.apply_ghm_counts(&all)?;
            }
            _ => self.steps += 1,
        }
        let ghm_on = match kind {
            LossKind::GhmC => true,
            LossKind::GhmCs => self.steps > self.config.ghm_warmup_steps,
            _ => false,
        };
        let bin_weight = if ghm_on {
            self.bin_weight.as_ref()
        } else {
            None
        };
        let class_weight = self.class_weights.as_ref();
        let weighted_mean = matches!(kind, LossKind::WeightedCrossEntropy | LossKind::GhmCs);
        let mut weight = None;
        let mut weight_sum = None;
        if class_weight.is_some() || bin_weight.is_some() {
            let mut w = dev.alloc::<f32>(rows, "loss row weights")?;
            kernels::loss_row_weights(&labels_dev, g, class_weight, bin_weight, &mut w, rows)?;
            if weighted_mean {
                let mut s = dev.alloc::<f32>(1, "loss weight sum")?;
                ops::reduce_rows_forward(&w, &mut s, 1, rows, Reduce::Sum)?;
                weight_sum = Some(s);
            }
            weight = Some(w);
        }
        let pass = kernels::FinalPass {
            stats: &stats,
            weight: weight.as_ref(),
            weight_sum: weight_sum.as_ref(),
            fixed_norm: rows as f32,
            soft_targets: self.soft_targets.as_ref(),
            focal: (kind == LossKind::Focal)
                .then_some((self.config.focal_gamma, self.focal_alpha.as_ref())),
        };
        let mut row_loss = dev.alloc::<f32>(rows, "loss per row")?;
        kernels::loss_rows_final(logits, &labels_dev, &pass, &mut row_loss, grad, rows, k)?;
        let mut total = dev.alloc::<f32>(1, "loss")?;
        ops::reduce_rows_forward(&row_loss, &mut total, 1, rows, Reduce::Sum)?;
        self.apply_ghm_counts(&later)?;
        Ok(LossOutput {
            loss: total.to_host()?[0],
        })
    }

    /// GHM's moving histogram through micro-batches seen elsewhere, in order: each one's bin
    /// counts (all zero: a micro-batch no rank had, skipped) updated as `ghm_update_bins` does,
    /// one loss step each. A rank without a micro-batch in a step applies the step's this way.
    pub fn apply_ghm_counts(&mut self, counts: &[Vec<i32>]) -> Result<()> {
        let (Some(ema), Some(bw)) = (self.ghm_ema.as_mut(), self.bin_weight.as_mut()) else {
            return Ok(());
        };
        for c in counts.iter().filter(|c| c.iter().any(|&n| n > 0)) {
            if c.len() != bw.len() || c.iter().any(|&n| n < 0) {
                return Err(Error::Invalid(format!(
                    "GHM exchange: {} bin counts {:?} for {} bins",
                    c.len(),
                    c,
                    bw.len()
                )));
            }
            let dev_counts = self.device.upload(c, "GHM bin counts")?;
            kernels::ghm_apply_counts(&dev_counts, self.config.ghm_alpha, ema, bw)?;
            self.steps += 1;
        }
        Ok(())
    }

    /// The GHM moving average (empty for losses without GHM) and the step count: what a
    /// checkpoint must keep for training to resume exactly.
    pub fn state(&self) -> Result<(Vec<f32>, u64)> {
        let ema = match &self.ghm_ema {
            Some(b) => b.to_host()?,
            None => Vec::new(),
        };
        Ok((ema, self.steps))
    }

    pub fn load_state(&mut self, ema: &[f32], steps: u64) -> Result<()> {
        match self.ghm_ema.as_mut() {
            Some(b) if b.len() == ema.len() => b.copy_from_host(ema)?,
            None if ema.is_empty() => {}
            _ => {
                return Err(Error::Invalid(format!(
                    "GHM state of {} bins does not fit a loss with {} bins",
                    ema.len(),
                    self.config.ghm_bins
                )))
            }
        }
        self.steps = steps;
        Ok(())
    }
}
