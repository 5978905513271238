//! Tokenize once, then length-bucketed, seeded batches: sequences of similar length share a
//! batch (little padding), and the order of batches is shuffled per epoch from the seed.
//! Also the character vocabulary of the encoder-free path (Chinese records are read per
//! character, as the paper's non-pretrained baselines do).

use std::collections::HashMap;

use super::dataset::Example;
use super::tokenizer::TokenBatch;
use crate::rng::Rng;

pub const PAD: i32 = 0;
pub const UNK: i32 = 1;
pub const CLS: i32 = 2;
pub const SEP: i32 = 3;

/// Characters of the training texts, most frequent first (ties by character), after the four
/// special tokens [PAD], [UNK], [CLS], [SEP].
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct CharVocab {
    pub tokens: Vec<String>,
}

impl CharVocab {
    pub fn build(examples: &[Example], min_count: usize) -> CharVocab {
        let mut counts: HashMap<char, usize> = HashMap::new();
        for e in examples {
            for ch in e.text.chars() {
                *counts.entry(ch).or_default() += 1;
            }
        }
        let mut chars: Vec<(char, usize)> = counts
            .into_iter()
            .filter(|&(_, n)| n >= min_count)
            .collect();
        chars.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut tokens: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        tokens.extend(chars.into_iter().map(|(c, _)| c.to_string()));
        CharVocab { tokens }
    }

    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// [CLS] + the first max_len - 2 characters + [SEP]; unknown characters map to [UNK].
    pub fn encode(&self, text: &str, max_len: usize) -> Vec<i32> {
        let index: HashMap<&str, i32> = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i as i32))
            .collect();
        let mut ids = vec![CLS];
        let mut buf = [0u8; 4];
        ids.extend(
            text.chars()
                .take(max_len.saturating_sub(2))
                .map(|c| *index.get(&*c.encode_utf8(&mut buf)).unwrap_or(&UNK)),
        );
        ids.push(SEP);
        ids
    }
}

/// What to keep of a record longer than --max-len tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LongText {
    /// The first tokens.
    #[default]
    Head,
    /// The first quarter and the last three quarters of the room (Sun et al., "How to Fine-Tune
    /// BERT for Text Classification", 2019: head 128 + tail 382 of 510): EMRs put the diagnosis
    /// and the plan at the end.
    HeadTail,
    /// All of it, as windows of --max-len tokens overlapping by a quarter, at most `max` of
    /// them (then spread evenly from the first tokens to the last); the model reads each
    /// window and averages their logits per record, in training and in eval/predict.
    Chunks { max: usize },
}

/// Windows per record under `--long-text chunks` unless `--max-chunks` says otherwise.
pub const DEFAULT_MAX_CHUNKS: usize = 8;

impl std::str::FromStr for LongText {
    type Err = crate::error::Error;
    fn from_str(s: &str) -> crate::error::Result<Self> {
        match s {
            "head" => Ok(LongText::Head),
            "head-tail" => Ok(LongText::HeadTail),
            "chunks" => Ok(LongText::Chunks {
                max: DEFAULT_MAX_CHUNKS,
            }),
            other => Err(crate::error::Error::Invalid(format!(
                "no long-text mode `{other}`: head, head-tail or chunks"
            ))),
        }
    }
}

impl LongText {
    pub fn name(self) -> &'static str {
        match self {
            LongText::Head => "head",
            LongText::HeadTail => "head-tail",
            LongText::Chunks { .. } => "chunks",
        }
    }

    /// The most windows a record becomes.
    pub fn max_windows(self) -> usize {
        match self {
            LongText::Chunks { max } => max.max(1),
            _ => 1,
        }
    }

    /// `ids` ([CLS] body [SEP], untruncated) cut to `max_len` tokens: [CLS], the body's first
    /// tokens (head) or its first and last (head-tail), [SEP]. Chunks cut as head does.
    pub fn cut(self, ids: Vec<i32>, max_len: usize) -> Vec<i32> {
        if ids.len() <= max_len || ids.len() < 2 {
            return ids;
        }
        let room = max_len.saturating_sub(2);
        let body = &ids[1..ids.len() - 1];
        let head = match self {
            LongText::Head | LongText::Chunks { .. } => room,
            LongText::HeadTail => room / 4,
        };
        let tail = room - head;
        let mut out = Vec::with_capacity(max_len);
        out.push(ids[0]);
        out.extend_from_slice(&body[..head]);
        out.extend_from_slice(&body[body.len() - tail..]);
        out.push(ids[ids.len() - 1]);
        out
    }

    /// `ids` ([CLS] body [SEP], untruncated) as the windows the model reads, each at most
    /// `max_len` tokens: the cut record (head, head-tail, or chunks of a record that fits), or
    /// chunks' [CLS] + `max_len - 2` body tokens + [SEP] windows, starting a quarter window
    /// short of where the last one ended, the first at the body's start and the last at its end.
    /// Over `max` windows, `max` are spread evenly over the body (the middle may go unread).
    pub fn windows(self, ids: Vec<i32>, max_len: usize) -> Vec<Vec<i32>> {
        let LongText::Chunks { max } = self else {
            return vec![self.cut(ids, max_len)];
        };
        let room = max_len.saturating_sub(2);
        if ids.len() <= max_len || ids.len() < 2 || room == 0 {
            return vec![self.cut(ids, max_len)];
        }
        let body = &ids[1..ids.len() - 1];
        let stride = (room - room / 4).max(1);
        let beyond = body.len() - room;
        let n = (1 + beyond.div_ceil(stride)).min(max.max(1));
        (0..n)
            .map(|i| {
                // Starts from 0 to `beyond`, evenly spaced, rounded to the nearest token.
                let start = if n == 1 {
                    0
                } else {
                    (2 * i * beyond + (n - 1)) / (2 * (n - 1))
                };
                let mut w = Vec::with_capacity(max_len);
                w.push(ids[0]);
                w.extend_from_slice(&body[start..start + room]);
                w.push(ids[ids.len() - 1]);
                w
            })
            .collect()
    }
}

/// fastText's input: every character n-gram of a text (n = 1..=max_n), hashed into `buckets`
/// embedding rows (ids 1..=buckets; 0 stays [PAD]). No truncation and no vocabulary: any text,
/// however long and whatever its characters, has its n-grams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NGramHasher {
    pub buckets: usize,
    pub max_n: usize,
}

impl NGramHasher {
    /// The hashed n-grams of `text`, shortest first, in order of position.
    pub fn encode(&self, text: &str) -> Vec<i32> {
        let chars: Vec<char> = text.chars().collect();
        let mut ids = Vec::with_capacity(chars.len() * self.max_n);
        let mut buf = [0u8; 4];
        for n in 1..=self.max_n {
            for window in chars.windows(n) {
                // FNV-1a over the n-gram's UTF-8 bytes, with n mixed in first.
                let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ n as u64;
                for c in window {
                    for &b in c.encode_utf8(&mut buf).as_bytes() {
                        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
                    }
                }
                ids.push(1 + (h % self.buckets.max(1) as u64) as i32);
            }
        }
        if ids.is_empty() {
            ids.push(UNK);
        }
        ids
    }
}

/// Batches of example indices: a seeded shuffle, a stable sort by length within windows of 50
/// batches, then the batches themselves shuffled. Same seed and epoch, same batches.
pub fn bucketed_batches(
    lengths: &[usize],
    batch_size: usize,
    seed: u64,
    epoch: u64,
) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    let window = batch_size.max(1) * 50;
    for chunk in order.chunks_mut(window) {
        chunk.sort_by_key(|&i| lengths[i]);
    }
    let mut batches: Vec<Vec<usize>> = order
        .chunks(batch_size.max(1))
        .map(|c| c.to_vec())
        .collect();
    rng.shuffle(&mut batches);
    batches
}

/// Pads the chosen sequences with [PAD] to the longest of them.
pub fn pad(sequences: &[&[i32]]) -> TokenBatch {
    let len = sequences.iter().map(|s| s.len()).max().unwrap_or(1).max(1);
    let mut b = TokenBatch {
        batch: sequences.len(),
        len,
        input_ids: vec![PAD; sequences.len() * len],
        attention_mask: vec![0; sequences.len() * len],
        token_type_ids: vec![0; sequences.len() * len],
    };
    for (r, s) in sequences.iter().enumerate() {
        b.input_ids[r * len..r * len + s.len()].copy_from_slice(s);
        b.attention_mask[r * len..r * len + s.len()].fill(1);
    }
    b
}
