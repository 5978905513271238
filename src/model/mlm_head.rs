//! BERT's masked-language-model head (transformers' BertOnlyMLMHead), run on the masked rows
//! only: they are gathered out of the encoder's last hidden states *before* the vocabulary
//! projection, so no [batch x length x vocab] tensor ever exists, only [masked x vocab].
//!
//!   x = hidden[positions];  t = LayerNorm(GELU(x W^T + b));  logits = t E^T + bias
//!
//! E is the encoder's word-embedding table (tied, as in BERT): the head reads it and adds its
//! share of E's gradient into a buffer the caller passes (`add_decoder_gradient`), after the
//! encoder's own embedding backward has written it. The loss is the mean cross-entropy over the
//! masked rows, as BertForMaskedLM's over its labels other than -100.

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::linear::Linear;
use crate::model::loss::{ClassificationLoss, LossConfig, LossKind};
use crate::model::slot::Slot;
use crate::ops::{self, embedding, layernorm, Gemm};
use crate::rng::Rng;
use crate::weights::Checkpoint;

/// transformers' names of the head's tensors, as BertForMaskedLM and BertForPreTraining save
/// them (MC-BERT and bert-base-chinese ship them).
const DENSE_WEIGHT: &str = "cls.predictions.transform.dense.weight";
const DENSE_BIAS: &str = "cls.predictions.transform.dense.bias";
const NORM_WEIGHT: &str = "cls.predictions.transform.LayerNorm.weight";
const NORM_BIAS: &str = "cls.predictions.transform.LayerNorm.bias";
const DECODER_BIAS: &str = "cls.predictions.bias";
/// Where some checkpoints keep the decoder bias instead (the same tensor, tied).
const DECODER_BIAS_ALIAS: &str = "cls.predictions.decoder.bias";

/// The head's parameters on the host, transformers' layout: dense [hidden, hidden] and
/// [hidden], LayerNorm [hidden] twice, the decoder bias [vocab].
pub struct MlmHostParams<'a> {
    pub dense_weight: &'a [f32],
    pub dense_bias: &'a [f32],
    pub norm_weight: &'a [f32],
    pub norm_bias: &'a [f32],
    pub decoder_bias: &'a [f32],
}

/// What forward keeps for backward.
struct Saved {
    positions: Vec<i32>,
    gathered: Buffer<f32>,
    pre_activation: Buffer<f32>,
    activation: Buffer<f32>,
    stats: layernorm::Stats,
    normed: Buffer<f32>,
    /// dL/dlogits, written by the loss in forward.
    dlogits: Buffer<f32>,
    hidden_rows: usize,
}

pub struct MlmHead {
    pub hidden: usize,
    pub vocab: usize,
    pub eps: f32,
    pub dense: Linear,
    pub norm_weight: Buffer<f32>,
    pub norm_bias: Buffer<f32>,
    pub norm_weight_grad: Buffer<f32>,
    pub norm_bias_grad: Buffer<f32>,
    pub decoder_bias: Buffer<f32>,
    pub decoder_bias_grad: Buffer<f32>,
    loss: ClassificationLoss,
    saved: Option<Saved>,
}

impl MlmHead {
    pub fn from_host(
        dev: &Device,
        hidden: usize,
        vocab: usize,
        eps: f32,
        p: &MlmHostParams,
    ) -> Result<MlmHead> {
        for (name, got, want) in [
            (
                "cls.predictions.transform.LayerNorm.weight",
                p.norm_weight.len(),
                hidden,
            ),
            (
                "cls.predictions.transform.LayerNorm.bias",
                p.norm_bias.len(),
                hidden,
            ),
            ("cls.predictions.bias", p.decoder_bias.len(), vocab),
        ] {
            if got != want {
                return Err(Error::Invalid(format!(
                    "{name}: {got} values, [{want}] expected"
                )));
            }
        }
        Ok(MlmHead {
            hidden,
            vocab,
            eps,
            dense: Linear::from_host(dev, hidden, hidden, p.dense_weight, p.dense_bias)?,
            norm_weight: dev.parameter(p.norm_weight, "mlm layernorm weight")?,
            norm_bias: dev.parameter(p.norm_bias, "mlm layernorm bias")?,
            norm_weight_grad: dev.gradient(hidden, "mlm layernorm weight grad")?,
            norm_bias_grad: dev.gradient(hidden, "mlm layernorm bias grad")?,
            decoder_bias: dev.parameter(p.decoder_bias, "mlm decoder bias")?,
            decoder_bias_grad: dev.gradient(vocab, "mlm decoder bias grad")?,
            loss: ClassificationLoss::new(dev, vocab, LossConfig::new(LossKind::CrossEntropy))?,
            saved: None,
        })
    }

    /// transformers' initialisation of a fresh head: dense N(0, initializer_range) with bias 0,
    /// LayerNorm 1 and 0, decoder bias 0.
    pub fn new(
        dev: &Device,
        hidden: usize,
        vocab: usize,
        eps: f32,
        initializer_range: f64,
        rng: &mut Rng,
    ) -> Result<MlmHead> {
        let w: Vec<f32> = (0..hidden * hidden)
            .map(|_| (rng.normal() * initializer_range) as f32)
            .collect();
        let (zeros_h, ones_h, zeros_v) = (vec![0.0; hidden], vec![1.0; hidden], vec![0.0; vocab]);
        let p = MlmHostParams {
            dense_weight: &w,
            dense_bias: &zeros_h,
            norm_weight: &ones_h,
            norm_bias: &zeros_h,
            decoder_bias: &zeros_v,
        };
        MlmHead::from_host(dev, hidden, vocab, eps, &p)
    }

    /// The head a weights file holds (safetensors or a PyTorch checkpoint), or None when it
    /// holds none (a BertModel's weights): the caller then starts a fresh one and says so. A
    /// head that is there but incomplete or mis-shaped is an error naming the tensor.
    pub fn load(
        dev: &Device,
        path: &std::path::Path,
        hidden: usize,
        vocab: usize,
        eps: f32,
    ) -> Result<Option<MlmHead>> {
        let ckpt = Checkpoint::open(path)?;
        let bias_name = [DECODER_BIAS, DECODER_BIAS_ALIAS]
            .into_iter()
            .find(|n| ckpt.contains(n));
        let Some(bias_name) = bias_name else {
            return Ok(None);
        };
        // Old TF-converted checkpoints call the LayerNorm parameters gamma and beta.
        let get = |name: &str, shape: &[usize]| {
            let legacy = name
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            if !ckpt.contains(name) && ckpt.contains(&legacy) {
                ckpt.get(&legacy, shape)
            } else {
                ckpt.get(name, shape)
            }
        };
        let (dw, db) = (
            get(DENSE_WEIGHT, &[hidden, hidden])?,
            get(DENSE_BIAS, &[hidden])?,
        );
        let (nw, nb) = (get(NORM_WEIGHT, &[hidden])?, get(NORM_BIAS, &[hidden])?);
        let vb = get(bias_name, &[vocab])?;
        let p = MlmHostParams {
            dense_weight: &dw,
            dense_bias: &db,
            norm_weight: &nw,
            norm_bias: &nb,
            decoder_bias: &vb,
        };
        MlmHead::from_host(dev, hidden, vocab, eps, &p).map(Some)
    }

    /// Every parameter under transformers' name and shape, to save.
    pub fn named_values(&self) -> Vec<(&'static str, Vec<usize>, &Buffer<f32>)> {
        let (h, v) = (self.hidden, self.vocab);
        vec![
            (DENSE_WEIGHT, vec![h, h], &self.dense.weight),
            (DENSE_BIAS, vec![h], &self.dense.bias),
            (NORM_WEIGHT, vec![h], &self.norm_weight),
            (NORM_BIAS, vec![h], &self.norm_bias),
            (DECODER_BIAS, vec![v], &self.decoder_bias),
        ]
    }

    pub fn slots(&mut self, lr_scale: f32) -> Vec<Slot<'_>> {
        let mut slots = self
            .dense
            .slots("cls.predictions.transform.dense", lr_scale);
        slots.push(Slot::new(
            NORM_WEIGHT.into(),
            &mut self.norm_weight,
            &mut self.norm_weight_grad,
            lr_scale,
            false,
        ));
        slots.push(Slot::new(
            NORM_BIAS.into(),
            &mut self.norm_bias,
            &mut self.norm_bias_grad,
            lr_scale,
            false,
        ));
        slots.push(Slot::new(
            DECODER_BIAS.into(),
            &mut self.decoder_bias,
            &mut self.decoder_bias_grad,
            lr_scale,
            false,
        ));
        slots
    }

    /// The mean cross-entropy of predicting `labels` at rows `positions` of `hidden`
    /// ([hidden_rows, hidden]), the vocabulary projection through `word_embeddings`
    /// ([vocab, hidden]); keeps what backward needs, dL/dlogits included.
    pub fn forward_loss(
        &mut self,
        hidden: &Buffer<f32>,
        hidden_rows: usize,
        positions: &[i32],
        labels: &[i32],
        word_embeddings: &Buffer<f32>,
    ) -> Result<f32> {
        let (h, v, m) = (self.hidden, self.vocab, positions.len());
        if m == 0 {
            return Err(Error::Invalid(
                "masked-LM loss with no masked position".into(),
            ));
        }
        if labels.len() != m {
            return Err(Error::Invalid(format!(
                "masked-LM: {} labels for {m} masked positions",
                labels.len()
            )));
        }
        if hidden.len() != hidden_rows * h || word_embeddings.len() != v * h {
            return Err(Error::Invalid(format!(
                "masked-LM: hidden states of {} values ([{hidden_rows}, {h}] expected), word \
                 embeddings of {} ([{v}, {h}] expected)",
                hidden.len(),
                word_embeddings.len()
            )));
        }
        embedding::check_ids(positions, hidden_rows, "masked position")?;
        let dev = hidden.device().clone();
        let positions_dev = dev.upload(positions, "masked positions")?;
        let mut gathered = dev.alloc::<f32>(m * h, "masked rows")?;
        embedding::forward(&positions_dev, hidden, &mut gathered, h)?;
        let pre_activation = self.dense.forward(&gathered, m)?;
        let mut activation = dev.alloc::<f32>(m * h, "mlm gelu")?;
        ops::gelu_forward(&pre_activation, &mut activation, m * h)?;
        let mut stats = layernorm::Stats {
            mean: dev.alloc::<f32>(m, "mlm layernorm mean")?,
            rstd: dev.alloc::<f32>(m, "mlm layernorm rstd")?,
        };
        let mut normed = dev.alloc::<f32>(m * h, "mlm layernorm")?;
        layernorm::forward(
            &activation,
            &self.norm_weight,
            &self.norm_bias,
            &mut normed,
            &mut stats,
            m,
            h,
            self.eps,
        )?;
        let mut logits = dev.alloc::<f32>(m * v, "mlm logits (masked rows x vocab)")?;
        ops::gemm(
            &Gemm::new(m, v, h, false, true),
            &normed,
            word_embeddings,
            &mut logits,
            Some(&self.decoder_bias),
        )?;
        let mut dlogits = dev.alloc::<f32>(m * v, "mlm dlogits")?;
        let out = self.loss.forward_backward(&logits, labels, &mut dlogits)?;
        drop(logits);
        self.saved = Some(Saved {
            positions: positions.to_vec(),
            gathered,
            pre_activation,
            activation,
            stats,
            normed,
            dlogits,
            hidden_rows,
        });
        Ok(out.loss)
    }

    /// Writes the head's own gradients and returns dL/dhidden ([hidden_rows, hidden]: zero
    /// except at the masked rows). E's share is added later by `add_decoder_gradient`.
    pub fn backward(&mut self, word_embeddings: &Buffer<f32>) -> Result<Buffer<f32>> {
        let (h, v) = (self.hidden, self.vocab);
        let s = self
            .saved
            .as_ref()
            .ok_or_else(|| Error::Invalid("masked-LM backward before forward".into()))?;
        let m = s.positions.len();
        let dev = word_embeddings.device().clone();
        ops::write_gradient(&mut self.decoder_bias_grad, |g| {
            ops::sum_columns(&s.dlogits, g, m, v)
        })?;
        let mut dnormed = dev.alloc::<f32>(m * h, "mlm d layernorm out")?;
        ops::gemm(
            &Gemm::new(m, h, v, false, false),
            &s.dlogits,
            word_embeddings,
            &mut dnormed,
            None,
        )?;
        let mut dact = dev.alloc::<f32>(m * h, "mlm d gelu out")?;
        let mut dy_xhat = dev.alloc::<f32>(m * h, "mlm d layernorm")?;
        layernorm::backward(
            &s.activation,
            &self.norm_weight,
            &s.stats,
            &dnormed,
            &mut dact,
            &mut dy_xhat,
            None,
            m,
            h,
        )?;
        ops::write_gradient(&mut self.norm_weight_grad, |g| {
            ops::sum_columns(&dy_xhat, g, m, h)
        })?;
        ops::write_gradient(&mut self.norm_bias_grad, |g| {
            ops::sum_columns(&dnormed, g, m, h)
        })?;
        // GELU backward in place: dact becomes dL/d(pre-activation).
        ops::gelu_backward(&s.pre_activation, &mut dact, m * h)?;
        let dgathered = self.dense.backward(&s.gathered, &dact, m)?;
        // The deterministic scatter: each masked row its gradient (summed were a row gathered
        // twice), zeros elsewhere.
        let mut dhidden = dev.alloc::<f32>(s.hidden_rows * h, "d hidden from the mlm head")?;
        embedding::backward(&s.positions, &dgathered, &mut dhidden, h, None)?;
        Ok(dhidden)
    }

    /// Drops what the last forward kept for backward.
    pub fn forget(&mut self) {
        self.saved = None;
    }

    /// Adds the decoder's gradient of the tied word embeddings, dlogits^T t, into
    /// `word_embeddings_grad` ([vocab, hidden]), which already holds the encoder's share.
    pub fn add_decoder_gradient(&self, word_embeddings_grad: &mut Buffer<f32>) -> Result<()> {
        let s = self
            .saved
            .as_ref()
            .ok_or_else(|| Error::Invalid("masked-LM backward before forward".into()))?;
        let mut g = Gemm::new(self.vocab, self.hidden, s.positions.len(), true, false);
        g.beta = 1.0;
        ops::gemm(&g, &s.dlogits, &s.normed, word_embeddings_grad, None)
    }
}
