//! Trainable token embeddings: the encoder-free input path, so the paper's non-pretrained
//! baselines (Text-CNN, BiGRU, BiLSTM over word vectors) run without BERT. The table can start
//! from a BERT checkpoint's word embeddings (safetensors, HF names).

use std::path::Path;

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::slot::Slot;
use crate::ops::{self, embedding};
use crate::rng::Rng;
use crate::weights;

/// Word-embedding tensor names in HF checkpoints: BERT / MC-BERT, ERNIE, sentence-transformers.
pub const WORD_EMBEDDING_NAMES: [&str; 3] = [
    "bert.embeddings.word_embeddings.weight",
    "ernie.embeddings.word_embeddings.weight",
    "embeddings.word_embeddings.weight",
];

pub struct Embedding {
    pub vocab: usize,
    pub dim: usize,
    /// [vocab, dim]
    pub table: Buffer<f32>,
    pub table_grad: Buffer<f32>,
    saved_ids: Option<Vec<i32>>,
}

impl Embedding {
    pub fn slots(&mut self, prefix: &str, lr_scale: f32) -> Vec<Slot<'_>> {
        vec![Slot::new(
            format!("{prefix}.weight"),
            &mut self.table,
            &mut self.table_grad,
            lr_scale,
            false,
        )]
    }

    pub fn from_host(dev: &Device, vocab: usize, dim: usize, table: &[f32]) -> Result<Self> {
        if table.len() != vocab * dim || vocab == 0 || dim == 0 {
            return Err(Error::Invalid(format!(
                "embedding table of {} values; [{vocab}, {dim}] expected",
                table.len()
            )));
        }
        Ok(Embedding {
            vocab,
            dim,
            table: dev.parameter(table, "embedding table")?,
            table_grad: dev.gradient(table.len(), "embedding grad")?,
            saved_ids: None,
        })
    }

    /// torch.nn.Embedding's default initialisation: N(0, 1).
    pub fn new(dev: &Device, vocab: usize, dim: usize, rng: &mut Rng) -> Result<Self> {
        let table: Vec<f32> = (0..vocab * dim).map(|_| rng.normal() as f32).collect();
        Embedding::from_host(dev, vocab, dim, &table)
    }

    /// The word embeddings of a BERT-family checkpoint (safetensors or PyTorch).
    pub fn from_checkpoint(dev: &Device, path: &Path) -> Result<Self> {
        let t = weights::read_tensor(path, &WORD_EMBEDDING_NAMES)?;
        let [vocab, dim] = t.shape[..] else {
            return Err(Error::Invalid(format!(
                "{}: tensor {} has shape {:?}, [vocab, hidden] expected",
                path.display(),
                t.name,
                t.shape
            )));
        };
        Embedding::from_host(dev, vocab, dim, &t.data)
    }

    /// ids: [tokens] (any batch layout, row-major) -> [tokens, dim].
    pub fn forward(&mut self, ids: &[i32]) -> Result<Buffer<f32>> {
        embedding::check_ids(ids, self.vocab, "token id")?;
        let dev = self.table.device().clone();
        let ids_dev = dev.upload(ids, "embedding ids")?;
        let mut out = dev.alloc::<f32>(ids.len() * self.dim, "embedding output")?;
        embedding::forward(&ids_dev, &self.table, &mut out, self.dim)?;
        self.saved_ids = Some(ids.to_vec());
        Ok(out)
    }

    /// dout: [tokens, dim]. Writes the table's gradient (`ops::write_gradient`; unused rows 0).
    pub fn backward(&mut self, dout: &Buffer<f32>) -> Result<()> {
        let ids = self
            .saved_ids
            .take()
            .ok_or_else(|| Error::Invalid("embedding backward without forward".into()))?;
        if dout.len() != ids.len() * self.dim {
            return Err(Error::Invalid(format!(
                "embedding dout holds {} values, {} expected",
                dout.len(),
                ids.len() * self.dim
            )));
        }
        let dim = self.dim;
        ops::write_gradient(&mut self.table_grad, |g| {
            embedding::backward(&ids, dout, g, dim, None)
        })
    }
}
