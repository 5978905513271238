//! f64 reference of a training run (train::trainer's `Classifier::optimizer_step` with
//! train::optim's AdamW): the encoder's, head's and loss's references, and the optimizer step
//! written out from PyTorch's and HF's definitions, independently of the engine's optimizer
//! code — `torch.optim.AdamW` (decoupled decay first, bias-corrected moments, eps outside the
//! square root), `clip_grad_norm_` (coefficient min(1, clip / (norm + 1e-6))), HF's no-decay
//! rule (no decay on names containing `bias` or `LayerNorm.weight`; none on the encoder-free
//! path's character embeddings), the input path at lr x input_lr_scale, accumulated gradients
//! averaged, and a parameter without a gradient not stepped (the pooler under a head that does
//! not read [CLS]). tests/training_parity.rs holds it to PyTorch's float64 runs.

use std::collections::BTreeMap;

use super::bert::{self, Params};
use super::head::{self, HeadShape};
use crate::data::tokenizer::TokenBatch;
use crate::error::{Error, Result};
use crate::model::bert::{parameter_shapes, BertConfig};
use crate::model::loss::LossConfig;
use crate::train::trainer::{Classifier, Input};

/// The classifier's input path.
#[derive(Clone, Debug)]
pub enum RefInput {
    Encoder(BertConfig),
    /// `embeddings.weight` [vocab, dim].
    Embeddings {
        vocab: usize,
        dim: usize,
    },
}

/// A classifier in f64: every parameter by the engine's name, and the loss's GHM state.
pub struct RefClassifier {
    pub input: RefInput,
    pub head: HeadShape,
    pub loss: LossConfig,
    pub params: Params,
    pub ghm_ema: Vec<f64>,
    loss_steps: u64,
}

/// The optimizer's hyperparameters, as PyTorch takes them (f64).
#[derive(Clone, Copy, Debug)]
pub struct RefSettings {
    pub input_lr_scale: f64,
    pub weight_decay: f64,
    pub clip: Option<f64>,
}

/// AdamW's state: the step count and the moments by parameter name.
#[derive(Default)]
pub struct RefAdamW {
    pub step: u64,
    pub moments: BTreeMap<String, (Vec<f64>, Vec<f64>)>,
}

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f64 = 1e-8;

fn host(b: &crate::device::Buffer<f32>) -> Result<Vec<f64>> {
    Ok(b.to_host()?.iter().map(|&v| v as f64).collect())
}

impl RefClassifier {
    /// The engine's classifier, copied to the host (the loss's configuration with it).
    pub fn from_classifier(model: &mut Classifier, loss: LossConfig) -> Result<RefClassifier> {
        let mut params = Params::new();
        let head = HeadShape::of(&model.head);
        for slot in model.head.slots(1.0) {
            params.insert(slot.name.clone(), host(slot.value)?);
        }
        let input = match &model.input {
            Input::Encoder(enc) => {
                for (name, _) in parameter_shapes(&enc.config) {
                    params.insert(name.clone(), host(&enc.param(&name).value)?);
                }
                RefInput::Encoder(enc.config.clone())
            }
            Input::Embeddings(e) => {
                params.insert("embeddings.weight".into(), host(&e.table)?);
                RefInput::Embeddings {
                    vocab: e.vocab,
                    dim: e.dim,
                }
            }
            Input::Features { .. } => {
                return Err(Error::Invalid(
                    "the f64 reference trains the encoder or the embeddings; a frozen encoder's cache has neither".into(),
                ))
            }
        };
        Ok(RefClassifier {
            input,
            head,
            ghm_ema: vec![0.0; loss.ghm_bins],
            loss,
            params,
            loss_steps: 0,
        })
    }

    /// The parameters a step moves: (name, learning-rate scale, weight decay or not).
    pub fn trained(&self, input_lr_scale: f64) -> Vec<(String, f64, bool)> {
        let reads_cls = matches!(
            self.head.kind,
            crate::model::heads::HeadKind::Cls | crate::model::heads::HeadKind::Paper
        ) && matches!(self.input, RefInput::Encoder(_));
        let mut out: Vec<(String, f64, bool)> = self
            .params
            .keys()
            .filter(|n| reads_cls || !n.starts_with("pooler."))
            .map(|n| {
                let input = !n.starts_with("head.");
                let decay = !(n.contains("bias")
                    || n.contains("LayerNorm.weight")
                    || n == "embeddings.weight");
                let scale = if input { input_lr_scale } else { 1.0 };
                (n.clone(), scale, decay)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Forward, loss and backward on a batch: (loss, every parameter's gradient).
    pub fn backward(&mut self, b: &TokenBatch, labels: &[i32]) -> (f64, Params) {
        let lengths: Vec<i32> = b
            .attention_mask
            .chunks(b.len)
            .map(|r| r.iter().sum())
            .collect();
        let (x, s) = match &self.input {
            RefInput::Encoder(c) => {
                let tape = bert::forward(
                    c,
                    &self.params,
                    &b.input_ids,
                    &b.attention_mask,
                    &b.token_type_ids,
                    b.batch,
                );
                (tape.hidden, Some(tape.pooled))
            }
            RefInput::Embeddings { dim, .. } => (
                super::embedding_forward(&b.input_ids, &self.params["embeddings.weight"], *dim),
                None,
            ),
        };
        let p = &self.params;
        let (logits, _) = head::forward(&self.head, p, &x, s.as_deref(), &lengths, b.len, None);
        self.loss_steps += 1;
        let (loss, dlogits) = super::loss::layer_step(
            &self.loss,
            self.head.classes,
            &mut self.ghm_ema,
            self.loss_steps,
            &logits,
            labels,
        );
        let g = head::backward(
            &self.head,
            p,
            &x,
            s.as_deref(),
            &lengths,
            b.len,
            None,
            &dlogits,
        );
        let mut grads = g.params;
        match &self.input {
            RefInput::Encoder(c) => {
                let ds = g.ds.unwrap_or_else(|| vec![0.0; b.batch * c.hidden_size]);
                grads.extend(bert::backward(
                    c,
                    p,
                    &b.input_ids,
                    &b.attention_mask,
                    &b.token_type_ids,
                    b.batch,
                    &g.dx,
                    &ds,
                ));
            }
            RefInput::Embeddings { vocab, dim } => {
                grads.insert(
                    "embeddings.weight".into(),
                    super::embedding_backward(&b.input_ids, &g.dx, *vocab, *dim),
                );
            }
        }
        (loss, grads)
    }

    /// One optimizer step at learning rate `lr` over micro-batches (their gradients averaged):
    /// returns (mean loss, gradient norm before clipping).
    pub fn optimizer_step(
        &mut self,
        opt: &mut RefAdamW,
        micro: &[(TokenBatch, Vec<i32>)],
        lr: f64,
        s: &RefSettings,
    ) -> (f64, f64) {
        let n = micro.len() as f64;
        let mut loss = 0.0;
        let mut sum = Params::new();
        for (b, labels) in micro {
            let (l, grads) = self.backward(b, labels);
            loss += l / n;
            for (name, g) in grads {
                match sum.get_mut(&name) {
                    Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, v)| *a += v),
                    None => {
                        sum.insert(name, g);
                    }
                }
            }
        }
        let trained = self.trained(s.input_lr_scale);
        let grads: Vec<Vec<f64>> = trained
            .iter()
            .map(|(name, _, _)| sum[name].iter().map(|g| g / n).collect())
            .collect();
        let norm = grads.iter().flatten().map(|g| g * g).sum::<f64>().sqrt();
        let coef = s.clip.map_or(1.0, |c| (c / (norm + 1e-6)).min(1.0));
        opt.step += 1;
        let t = opt.step as i32;
        let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        for ((name, scale, decay), g) in trained.iter().zip(grads) {
            let p = self.params.get_mut(name).expect("a trained parameter");
            let (m, v) = opt
                .moments
                .entry(name.clone())
                .or_insert_with(|| (vec![0.0; p.len()], vec![0.0; p.len()]));
            let lr = lr * scale;
            for i in 0..p.len() {
                let gi = g[i] * coef;
                if *decay {
                    p[i] *= 1.0 - lr * s.weight_decay;
                }
                m[i] = BETA1 * m[i] + (1.0 - BETA1) * gi;
                v[i] = BETA2 * v[i] + (1.0 - BETA2) * gi * gi;
                p[i] -= lr / bc1 * m[i] / (v[i].sqrt() / bc2.sqrt() + EPS);
            }
        }
        (loss, norm)
    }
}
