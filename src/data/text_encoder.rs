//! Text to the token ids a model reads: characters (the encoder-free path), a BERT checkpoint's
//! tokenizer, or hashed character n-grams (the `bag` head); records longer than the model's
//! window cut or split as `--long-text` says.

use super::batching::{CharVocab, LongText, NGramHasher};
use super::dataset::Example;
use super::tokenizer::BertTokenizer;
use crate::error::Result;

/// The `bag` head's n-grams: characters 1 to 3 long, `buckets` rows.
pub fn bag_hasher(buckets: usize) -> NGramHasher {
    NGramHasher { buckets, max_n: 3 }
}

/// Text to token ids: characters (the encoder-free path), the checkpoint's tokenizer, or hashed
/// character n-grams (the `bag` head).
pub enum TextEncoder {
    NGrams(NGramHasher),
    Chars {
        vocab: CharVocab,
        max_len: usize,
        long: LongText,
    },
    Bert {
        tokenizer: Box<BertTokenizer>,
        max_len: usize,
        long: LongText,
    },
}

/// Tokens of a whole record before --long-text cuts it (far above any record's length).
const UNCUT: usize = 1 << 24;

impl TextEncoder {
    /// The windows the model reads of a text, each [CLS] ... [SEP] without padding: one,
    /// cut to max_len as --long-text says, or for `chunks` as many as the record needs.
    pub fn encode(&self, text: &str) -> Result<Vec<Vec<i32>>> {
        match self {
            TextEncoder::Chars {
                vocab,
                max_len,
                long: LongText::Head,
            } => Ok(vec![vocab.encode(text, *max_len)]),
            TextEncoder::Chars {
                vocab,
                max_len,
                long,
            } => Ok(long.windows(vocab.encode(text, UNCUT), *max_len)),
            TextEncoder::NGrams(h) => Ok(vec![h.encode(text)]),
            TextEncoder::Bert {
                tokenizer,
                max_len,
                long,
            } => {
                let first = match long {
                    LongText::Head => *max_len,
                    LongText::HeadTail | LongText::Chunks { .. } => UNCUT,
                };
                let b = tokenizer.encode(&[text], first)?;
                let ids = b
                    .input_ids
                    .into_iter()
                    .zip(b.attention_mask)
                    .filter(|p| p.1 == 1)
                    .map(|p| p.0)
                    .collect();
                Ok(long.windows(ids, *max_len))
            }
        }
    }

    /// Rows of the encoder-free path's embedding table (None: the text goes to a BERT encoder).
    pub fn input_vocab(&self) -> Option<usize> {
        match self {
            TextEncoder::Chars { vocab, .. } => Some(vocab.len()),
            TextEncoder::NGrams(h) => Some(h.buckets + 1),
            TextEncoder::Bert { .. } => None,
        }
    }

    /// Every example's windows.
    pub fn encode_all(&self, examples: &[Example]) -> Result<Vec<Vec<Vec<i32>>>> {
        examples.iter().map(|e| self.encode(&e.text)).collect()
    }
}
