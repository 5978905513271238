//! The classifier a run's `ModelSpec` describes: its input path (character or n-gram embeddings,
//! or a BERT checkpoint), its head and its loss. `train` builds it fresh; `eval`, `predict` and
//! `export` rebuild it from a run folder.

use super::state::ModelSpec;
use super::trainer::{check_head_input, Classifier, Input};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::bert::BertEncoder;
use crate::model::embedding::Embedding;
use crate::model::heads::{Head, HeadConfig};
use crate::model::loss::{ClassificationLoss, LossConfig};
use crate::model::window_pool::chunk_pool_from_name;
use crate::rng::Rng;

/// The classifier a spec describes: embeddings of `input_vocab` rows (N(0, 1); the
/// encoder-free path, see `TextEncoder::input_vocab`) or the BERT checkpoint, the head
/// (PyTorch's initialisation), and the loss.
pub fn build_classifier(
    dev: &Device,
    spec: &ModelSpec,
    input_vocab: Option<usize>,
    loss: LossConfig,
    classes: usize,
    rng: &mut Rng,
) -> Result<Classifier> {
    let (input, width) = match (&spec.encoder, input_vocab) {
        (None, Some(rows)) => (
            Input::Embeddings(Embedding::new(dev, rows, spec.embedding_dim, rng)?),
            spec.embedding_dim,
        ),
        (Some(dir), None) => {
            let encoder = if spec.frozen {
                BertEncoder::load_frozen_dir(dev, dir)?
            } else {
                BertEncoder::load_dir(dev, dir)?
            };
            let h = encoder.config.hidden_size;
            (Input::Encoder(Box::new(encoder)), h)
        }
        (None, None) => {
            return Err(Error::Invalid(
                "the encoder-free path needs the size of its embedding table".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(Error::Invalid(
                "a BERT encoder reads its own vocabulary; no embedding table size is taken".into(),
            ))
        }
    };
    let head = Head::new(dev, head_config(spec, width, classes)?, rng)?;
    check_head_input(&head, spec.encoder.is_some())?;
    let loss = ClassificationLoss::new(dev, classes, loss)?;
    Ok(Classifier {
        input,
        head,
        loss,
        window_pool: chunk_pool_from_name(&spec.chunk_pool)?,
    })
}

/// The head a model spec asks for over `width` input features.
pub fn head_config(spec: &ModelSpec, width: usize, classes: usize) -> Result<HeadConfig> {
    let mut hc = HeadConfig::new(spec.head.parse()?, width, classes);
    hc.textcnn_filters = spec.filters;
    hc.rnn_hidden = spec.rnn_hidden;
    hc.dropout = spec.dropout;
    hc.sentence = spec.encoder.is_some();
    Ok(hc)
}
