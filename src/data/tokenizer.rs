//! Text to token ids with the `tokenizers` crate: a model's `tokenizer.json` when it has one,
//! otherwise BERT WordPiece built from `vocab.txt` as HF's BertTokenizerFast does it (BERT
//! normalizer: clean text, Chinese characters split, lowercase, accents stripped with it; BERT
//! pre-tokenizer; WordPiece with [UNK]; [CLS] ... [SEP]). Batches are truncated to max_len and
//! padded to their longest sequence, with attention masks and token types.

use std::path::Path;

use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::bert::BertProcessing;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use crate::error::{Error, Result};

/// A token's [start, end) in the bytes of the text it came from.
pub type ByteRange = (usize, usize);

pub struct BertTokenizer {
    inner: Tokenizer,
}

/// A tokenized batch, row-major [batch, len].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    pub batch: usize,
    pub len: usize,
    pub input_ids: Vec<i32>,
    pub attention_mask: Vec<i32>,
    pub token_type_ids: Vec<i32>,
}

fn tk_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{what}: {e}"))
}

/// Reads a tokenizer.json. The `tokenizers` crate panics on some malformed files (an `expect`
/// in its decoder and normalizer deserializers, reached by a truncated file or a decoder of the
/// wrong shape): the JSON is checked first, and a panic that remains is this file's error too.
fn tokenizer_json(path: &Path) -> Result<Tokenizer> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str::<serde::de::IgnoredAny>(&text)
        .map_err(|e| tk_error(&name, format!("not JSON: {e}")))?;
    match std::panic::catch_unwind(|| text.parse::<Tokenizer>()) {
        Ok(parsed) => parsed.map_err(|e| tk_error(&name, e)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            Err(tk_error(
                &name,
                format!("not a tokenizer.json `tokenizers` can read: {why}"),
            ))
        }
    }
}

impl BertTokenizer {
    /// `dir/tokenizer.json` if present, else `dir/vocab.txt`.
    pub fn from_dir(dir: &Path) -> Result<BertTokenizer> {
        let json = dir.join("tokenizer.json");
        if json.exists() {
            return Ok(BertTokenizer {
                inner: tokenizer_json(&json)?,
            });
        }
        let vocab = dir.join("vocab.txt");
        if !vocab.exists() {
            return Err(Error::Invalid(format!(
                "{}: neither tokenizer.json nor vocab.txt",
                dir.display()
            )));
        }
        BertTokenizer::from_vocab(&vocab)
    }

    /// BERT WordPiece from a vocab.txt (one token per line), lowercasing as bert-base-chinese.
    pub fn from_vocab(vocab: &Path) -> Result<BertTokenizer> {
        let name = vocab.display().to_string();
        let path = vocab
            .to_str()
            .ok_or_else(|| Error::Invalid(format!("{name}: path is not UTF-8")))?;
        let model = WordPiece::from_file(path)
            .unk_token("[UNK]".into())
            .build()
            .map_err(|e| tk_error(&name, e))?;
        let mut inner = Tokenizer::new(model);
        let id = |inner: &Tokenizer, t: &str| {
            inner
                .token_to_id(t)
                .ok_or_else(|| Error::Invalid(format!("{name}: the vocabulary has no {t}")))
        };
        let (cls, sep) = (id(&inner, "[CLS]")?, id(&inner, "[SEP]")?);
        id(&inner, "[UNK]")?;
        id(&inner, "[PAD]")?;
        inner
            .with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
            .with_pre_tokenizer(Some(BertPreTokenizer))
            .with_post_processor(Some(BertProcessing::new(
                ("[SEP]".into(), sep),
                ("[CLS]".into(), cls),
            )))
            .with_decoder(Some(WordPieceDecoder::default()));
        Ok(BertTokenizer { inner })
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// One text's tokens without [CLS]/[SEP] and without truncation, each with the byte range
    /// of `text` it came from (what masking needs to find a token's word).
    pub fn encode_with_offsets(&self, text: &str) -> Result<(Vec<i32>, Vec<ByteRange>)> {
        let e = self
            .inner
            .encode(text, false)
            .map_err(|e| tk_error("tokenizing", e))?;
        let ids = e.get_ids().iter().map(|&v| v as i32).collect();
        Ok((ids, e.get_offsets().to_vec()))
    }

    /// The id of a token of the vocabulary, e.g. "[MASK]".
    pub fn token_id(&self, token: &str) -> Option<i32> {
        self.inner.token_to_id(token).map(|v| v as i32)
    }

    /// Every token of the vocabulary with its id.
    pub fn vocabulary(&self) -> Vec<(String, i32)> {
        let mut v: Vec<(String, i32)> = self
            .inner
            .get_vocab(true)
            .into_iter()
            .map(|(t, id)| (t, id as i32))
            .collect();
        v.sort_by_key(|(_, id)| *id);
        v
    }

    /// Tokenizes `texts` with [CLS] ... [SEP], truncated to `max_len` tokens and padded with
    /// [PAD] to the batch's longest.
    pub fn encode(&self, texts: &[&str], max_len: usize) -> Result<TokenBatch> {
        if texts.is_empty() {
            return Err(Error::Invalid("nothing to tokenize".into()));
        }
        if max_len < 2 {
            return Err(Error::Invalid(format!(
                "max_len {max_len}: at least 2 ([CLS] and [SEP])"
            )));
        }
        let mut tk = self.inner.clone();
        let pad_id = tk.token_to_id("[PAD]").unwrap_or(0);
        tk.with_truncation(Some(TruncationParams {
            max_length: max_len,
            ..Default::default()
        }))
        .map_err(|e| tk_error("truncation", e))?;
        tk.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            pad_id,
            pad_token: "[PAD]".into(),
            ..Default::default()
        }));
        let encodings = tk
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| tk_error("tokenizing", e))?;
        let len = encodings[0].get_ids().len();
        let mut out = TokenBatch {
            batch: texts.len(),
            len,
            input_ids: vec![],
            attention_mask: vec![],
            token_type_ids: vec![],
        };
        for e in &encodings {
            out.input_ids.extend(e.get_ids().iter().map(|&v| v as i32));
            out.attention_mask
                .extend(e.get_attention_mask().iter().map(|&v| v as i32));
            out.token_type_ids
                .extend(e.get_type_ids().iter().map(|&v| v as i32));
        }
        Ok(out)
    }
}
