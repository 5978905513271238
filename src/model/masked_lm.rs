//! The pretraining model: the BERT encoder and its masked-language-model head, the head's
//! decoder tied to the encoder's word embeddings (transformers' BertForMaskedLM). One step runs
//! the encoder over a masked batch, the head over the masked rows only, and both backwards; the
//! word embeddings' gradient gets the encoder's share, then the decoder's.
//!
//! The pooler is kept as loaded and not trained: masked-LM pretraining does not use it
//! (BertForMaskedLM has none); it stays in the saved encoder for fine-tuning to start from.

use std::path::Path;

use crate::data::masking::MaskedBatch;
use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::bert::{BertConfig, BertEncoder};
use crate::model::mlm_head::MlmHead;
use crate::model::slot::Slot;
use crate::rng::Rng;

const WORD_EMBEDDINGS: &str = "embeddings.word_embeddings.weight";
/// transformers' BertConfig.initializer_range default, for a fresh head.
const INITIALIZER_RANGE: f64 = 0.02;

pub struct MaskedLm {
    pub encoder: BertEncoder,
    pub head: MlmHead,
}

/// What `MaskedLm::load_dir` found: whether the weights held an MLM head.
pub struct Loaded {
    pub model: MaskedLm,
    pub head_was_fresh: bool,
}

impl MaskedLm {
    /// The encoder of `dir` (config.json and its weights) and the MLM head the weights hold,
    /// or a fresh head (transformers' initialisation from `rng`) when they hold none.
    pub fn load_dir(dev: &Device, dir: &Path, rng: &mut Rng) -> Result<Loaded> {
        let encoder = BertEncoder::load_dir(dev, dir)?;
        let c = encoder.config.clone();
        let weights = crate::weights::weights_file(dir)?;
        let eps = c.layer_norm_eps as f32;
        let (head, head_was_fresh) =
            match MlmHead::load(dev, &weights, c.hidden_size, c.vocab_size, eps)? {
                Some(h) => (h, false),
                None => (
                    MlmHead::new(
                        dev,
                        c.hidden_size,
                        c.vocab_size,
                        eps,
                        INITIALIZER_RANGE,
                        rng,
                    )?,
                    true,
                ),
            };
        Ok(Loaded {
            model: MaskedLm { encoder, head },
            head_was_fresh,
        })
    }

    /// A fresh model for `config` (transformers' initialisation: BERT's weights N(0, 0.02),
    /// biases 0, LayerNorms 1 and 0; the head likewise): pretraining from scratch.
    pub fn new(dev: &Device, config: BertConfig, rng: &mut Rng) -> Result<MaskedLm> {
        let (h, v, eps) = (
            config.hidden_size,
            config.vocab_size,
            config.layer_norm_eps as f32,
        );
        let encoder = BertEncoder::new(dev, config, rng)?;
        let head = MlmHead::new(dev, h, v, eps, INITIALIZER_RANGE, rng)?;
        Ok(MaskedLm { encoder, head })
    }

    /// The device the model lives on.
    pub fn device(&self) -> &Device {
        self.encoder.param(WORD_EMBEDDINGS).value.device()
    }

    /// The parameters the optimizer steps: the encoder's but its pooler, and the head's (the
    /// tied decoder weight is the word embeddings' slot: stepped once, with both shares).
    pub fn slots(&mut self) -> Vec<Slot<'_>> {
        let mut slots: Vec<Slot> = self
            .encoder
            .slots(1.0)
            .into_iter()
            .filter(|s| !s.name.starts_with("pooler."))
            .collect();
        slots.extend(self.head.slots(1.0));
        slots
    }

    /// Forward and backward over one batch: the mean cross-entropy over its masked positions,
    /// every gradient written (or added while the device accumulates micro-batches).
    /// `dropout_seed`: Some in training (the encoder's dropout), None for a deterministic pass.
    pub fn forward_backward(
        &mut self,
        batch: &MaskedBatch,
        dropout_seed: Option<u64>,
    ) -> Result<f32> {
        let loss = self.forward_loss(batch, dropout_seed, true)?;
        let dhidden = self.head_backward()?;
        self.encoder_backward(dhidden)?;
        Ok(loss)
    }

    /// The head's half of backward after a training `forward_loss`: its parameters' gradients
    /// and the gradient of the encoder's output (zero but at the masked rows).
    pub fn head_backward(&mut self) -> Result<Buffer<f32>> {
        self.head
            .backward(&self.encoder.param(WORD_EMBEDDINGS).value)
    }

    /// The encoder's half of backward from `dhidden`, then the tied decoder's share of the word
    /// embeddings' gradient.
    pub fn encoder_backward(&mut self, dhidden: Buffer<f32>) -> Result<()> {
        self.encoder.backward(Some(&dhidden), None)?;
        drop(dhidden);
        let word = self
            .encoder
            .params
            .iter()
            .position(|p| p.name == WORD_EMBEDDINGS)
            .ok_or_else(|| Error::Invalid(format!("the encoder has no {WORD_EMBEDDINGS}")))?;
        self.head
            .add_decoder_gradient(&mut self.encoder.params[word].grad)
    }

    /// The batch's mean masked-LM loss without training (no dropout, no saved activations
    /// kept past the call).
    pub fn eval_loss(&mut self, batch: &MaskedBatch) -> Result<f32> {
        let loss = self.forward_loss(batch, None, false)?;
        self.head.forget();
        self.encoder.forget();
        Ok(loss)
    }

    /// The encoder over `b` (training: dropout from `dropout_seed`, activations kept for
    /// backward; else inference), then the head's loss over the masked rows.
    pub fn forward_loss(
        &mut self,
        b: &MaskedBatch,
        dropout_seed: Option<u64>,
        train: bool,
    ) -> Result<f32> {
        if b.positions.is_empty() {
            return Err(Error::Invalid(
                "a pretraining batch with no masked token (records too short to mask?)".into(),
            ));
        }
        if train {
            self.encoder
                .forward(&b.input_ids, &b.attention_mask, None, b.batch, dropout_seed)?;
        } else {
            self.encoder
                .infer(&b.input_ids, &b.attention_mask, None, b.batch)?;
        }
        self.head_loss(b)
    }

    /// The MLM head's mean loss over `b`'s masked rows, from the encoder's last forward.
    pub fn head_loss(&mut self, b: &MaskedBatch) -> Result<f32> {
        let (hidden, _) = self
            .encoder
            .outputs()
            .ok_or_else(|| Error::Invalid("the encoder kept no output".into()))?;
        let table = &self.encoder.param(WORD_EMBEDDINGS).value;
        self.head
            .forward_loss(hidden, b.batch * b.len, &b.positions, &b.labels, table)
    }
}
