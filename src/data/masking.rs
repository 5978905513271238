//! Masked-language-model inputs as MC-BERT and Chinese BERT-wwm make them: whole words are
//! masked, never single characters of a word. A record's words come from a medical term list
//! first (each listed term is one word wherever it occurs: MC-BERT's entity masking with the
//! user's own dictionary) and from the jieba segmenter between the terms. Each sequence gets
//! new masks every epoch (dynamic masking), drawn from (seed, epoch, sequence) alone, so a run
//! replays exactly and a resumed run masks as an uninterrupted one would.
//!
//! Decided here, where the papers leave it open: the 80 % [MASK] / 10 % random / 10 % kept
//! choice is made per word, not per character, so a word is never half hidden and half shown;
//! words are chosen until the next would pass the target count (15 % of the maskable tokens,
//! rounded), as Google's whole-word-masking script does; random replacements are drawn from the
//! vocabulary's ordinary tokens (no [PAD], [CLS], [unused..]-style entries).

use std::path::Path;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use jieba_rs::Jieba;

use super::tokenizer::BertTokenizer;
use crate::error::{Error, Result};
use crate::rng::Rng;

/// The label of a position that is not predicted (PyTorch's cross-entropy ignore_index).
pub const NOT_PREDICTED: i32 = -100;

/// The word of a token that is never masked: [CLS], [SEP], padding.
pub const NO_WORD: u32 = u32::MAX;

/// Finds a text's words: listed terms first (leftmost, longest), the segmenter between them.
pub struct WordSegmenter {
    jieba: Jieba,
    terms: Option<AhoCorasick>,
    term_count: usize,
}

impl WordSegmenter {
    /// `terms`: the medical terms to mask as units (blank entries ignored).
    pub fn new(terms: &[String]) -> Result<WordSegmenter> {
        let terms: Vec<&str> = terms
            .iter()
            .map(|t| t.trim())
            .filter(|t| !t.is_empty())
            .collect();
        let matcher = if terms.is_empty() {
            None
        } else {
            Some(
                AhoCorasickBuilder::new()
                    .match_kind(MatchKind::LeftmostLongest)
                    .build(&terms)
                    .map_err(|e| Error::Invalid(format!("the term list: {e}")))?,
            )
        };
        Ok(WordSegmenter {
            jieba: Jieba::new(),
            terms: matcher,
            term_count: terms.len(),
        })
    }

    /// Reads a term list, one term per line (`--mask-terms FILE`); blank lines are skipped.
    pub fn from_term_file(path: &Path) -> Result<WordSegmenter> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let text = String::from_utf8(bytes).map_err(|e| {
            Error::Invalid(format!(
                "{}: not UTF-8 (byte {}): a term list is one UTF-8 term per line",
                path.display(),
                e.utf8_error().valid_up_to()
            ))
        })?;
        let terms: Vec<String> = text.lines().map(str::to_string).collect();
        let segmenter = WordSegmenter::new(&terms)?;
        if segmenter.term_count == 0 {
            return Err(Error::Invalid(format!(
                "{}: no terms (one term per line)",
                path.display()
            )));
        }
        Ok(segmenter)
    }

    /// Refuses a term list whose terms the vocabulary cannot spell: a term that tokenizes to
    /// [UNK] anywhere would be masked, and predicted, as [UNK]. Names the file, the lines and
    /// the characters.
    pub fn check_terms(path: &Path, tokenizer: &BertTokenizer) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let unk = tokenizer.token_id("[UNK]");
        let mut bad = Vec::new();
        for (n, term) in text.lines().enumerate() {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let (ids, offsets) = tokenizer.encode_with_offsets(term)?;
            let missing: Vec<&str> = ids
                .iter()
                .zip(&offsets)
                .filter(|(&id, _)| Some(id) == unk)
                .map(|(_, &(a, b))| &term[a..b])
                .collect();
            if !missing.is_empty() {
                bad.push(format!("line {} `{term}` ({})", n + 1, missing.join(" ")));
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
        Err(Error::Invalid(format!(
            "{}: {} term(s) hold characters the vocabulary lacks, which would be masked and \
             predicted as [UNK]: {}{}. Drop them, or pretrain with a vocabulary that has them",
            path.display(),
            bad.len(),
            shown.join("; "),
            if bad.len() > shown.len() { "; ..." } else { "" }
        )))
    }

    /// How many terms the list holds.
    pub fn term_count(&self) -> usize {
        self.term_count
    }

    /// The byte ranges of `text`'s words, in order, covering it.
    pub fn words(&self, text: &str) -> Vec<(usize, usize)> {
        let mut words = Vec::new();
        let segment = |from: usize, to: usize, words: &mut Vec<(usize, usize)>| {
            if from < to {
                for t in self.jieba.cut(&text[from..to], true) {
                    words.push((from + t.byte_start, from + t.byte_end));
                }
            }
        };
        let mut at = 0;
        if let Some(terms) = &self.terms {
            for m in terms.find_iter(text) {
                segment(at, m.start(), &mut words);
                words.push((m.start(), m.end()));
                at = m.end();
            }
        }
        segment(at, text.len(), &mut words);
        words
    }
}

/// A record's tokens (no [CLS]/[SEP]) and the word each belongs to, numbered from `first_word`.
pub struct WordTokens {
    pub ids: Vec<i32>,
    pub words: Vec<u32>,
}

/// Tokenizes `text` and gives each token the index of the word its first byte falls in. Word
/// numbers start at `first_word`, so records concatenated into one sequence keep distinct words.
pub fn word_tokens(
    tokenizer: &BertTokenizer,
    segmenter: &WordSegmenter,
    text: &str,
    first_word: u32,
) -> Result<WordTokens> {
    let (ids, offsets) = tokenizer.encode_with_offsets(text)?;
    let words = segmenter.words(text);
    let mut w = 0;
    let mut out = Vec::with_capacity(ids.len());
    for &(start, _) in &offsets {
        while w + 1 < words.len() && words[w].1 <= start {
            w += 1;
        }
        out.push(first_word + w as u32);
    }
    Ok(WordTokens { ids, words: out })
}

/// `word_tokens` of every text, words numbered across them (no two records share a word).
pub fn word_records<S: AsRef<str>>(
    tokenizer: &BertTokenizer,
    segmenter: &WordSegmenter,
    texts: &[S],
) -> Result<Vec<WordTokens>> {
    let mut next_word = 0u32;
    let mut out = Vec::with_capacity(texts.len());
    for t in texts {
        let wt = word_tokens(tokenizer, segmenter, t.as_ref(), next_word)?;
        next_word = wt.words.iter().copied().max().map_or(next_word, |w| w + 1);
        out.push(wt);
    }
    Ok(out)
}

/// Every text's tokens, each its own word: BERT's original masking, token by token (as
/// transformers' `run_mlm.py` masks; `pretrain --mask-unit token`). Numbered across texts.
pub fn token_records<S: AsRef<str>>(
    tokenizer: &BertTokenizer,
    texts: &[S],
) -> Result<Vec<WordTokens>> {
    let mut next_word = 0u32;
    let mut out = Vec::with_capacity(texts.len());
    for t in texts {
        let (ids, _) = tokenizer.encode_with_offsets(t.as_ref())?;
        let words = (next_word..next_word + ids.len() as u32).collect();
        next_word += ids.len() as u32;
        out.push(WordTokens { ids, words });
    }
    Ok(out)
}

/// What masking picks as a unit: a whole word (terms, jieba) or a single token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MaskUnit {
    #[default]
    Word,
    Token,
}

impl MaskUnit {
    pub fn name(self) -> &'static str {
        match self {
            MaskUnit::Word => "word",
            MaskUnit::Token => "token",
        }
    }
}

/// How much to mask, and how (BERT's 15 % and 80 / 10 / 10 by default).
#[derive(Clone, Copy, Debug)]
pub struct MaskingRule {
    /// Fraction of the maskable tokens to predict.
    pub rate: f64,
    /// Of the predicted words: fraction shown as [MASK], and as random tokens (the rest kept).
    pub mask: f64,
    pub random: f64,
}

impl Default for MaskingRule {
    fn default() -> Self {
        MaskingRule {
            rate: 0.15,
            mask: 0.8,
            random: 0.1,
        }
    }
}

/// The token ids masking writes: [MASK], and the pool a random replacement is drawn from.
pub struct MaskTokens {
    pub mask_id: i32,
    pub random_pool: Vec<i32>,
}

impl MaskTokens {
    /// From a tokenizer: its [MASK], and as the random pool every token that is not a bracketed
    /// special entry ([PAD], [UNK], [CLS], [SEP], [MASK], [unused1] ...).
    pub fn from_tokenizer(tokenizer: &BertTokenizer) -> Result<MaskTokens> {
        let mask_id = tokenizer
            .token_id("[MASK]")
            .ok_or_else(|| Error::Invalid("the vocabulary has no [MASK] token".into()))?;
        let random_pool: Vec<i32> = tokenizer
            .vocabulary()
            .into_iter()
            .filter(|(t, _)| !(t.starts_with('[') && t.ends_with(']')))
            .map(|(_, id)| id)
            .collect();
        if random_pool.is_empty() {
            return Err(Error::Invalid(
                "the vocabulary has no ordinary tokens to draw random replacements from".into(),
            ));
        }
        Ok(MaskTokens {
            mask_id,
            random_pool,
        })
    }
}

/// A masked sequence: what the model reads, and at each predicted position the original token
/// (NOT_PREDICTED elsewhere).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedSequence {
    pub input_ids: Vec<i32>,
    pub labels: Vec<i32>,
}

/// The generator of one sequence's masks in one epoch: a function of the three numbers only.
pub fn sequence_rng(seed: u64, epoch: u64, sequence: u64) -> Rng {
    let mut mix = Rng::new(seed ^ 0x6d61_736b_696e_6721);
    let a = mix.next_u64();
    let mut mix = Rng::new(a ^ epoch.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let b = mix.next_u64();
    Rng::new(b ^ sequence.wrapping_mul(0xc2b2_ae3d_27d4_eb4f))
}

/// Masks whole words of one sequence. `words[i]` is token i's word (NO_WORD: never masked); a
/// word is a run of equal values. Picks words in random order while they fit the target count.
pub fn mask_sequence(
    ids: &[i32],
    words: &[u32],
    rule: &MaskingRule,
    tokens: &MaskTokens,
    rng: &mut Rng,
) -> MaskedSequence {
    assert_eq!(ids.len(), words.len(), "a word per token");
    // The sequence's words as position ranges.
    let mut units: Vec<(usize, usize)> = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let mut j = i + 1;
        while j < ids.len() && words[j] == words[i] {
            j += 1;
        }
        if words[i] != NO_WORD {
            units.push((i, j));
        }
        i = j;
    }
    let maskable: usize = units.iter().map(|(a, b)| b - a).sum();
    let target = if maskable == 0 {
        0
    } else {
        ((maskable as f64 * rule.rate).round() as usize).max(1)
    };
    rng.shuffle(&mut units);
    let below = |rng: &mut Rng, n: usize| (rng.next_u64() % n as u64) as usize;
    let mut input_ids = ids.to_vec();
    let mut labels = vec![NOT_PREDICTED; ids.len()];
    let mut predicted = 0;
    for &(a, b) in &units {
        if predicted + (b - a) > target {
            continue;
        }
        predicted += b - a;
        let how = rng.uniform();
        for p in a..b {
            labels[p] = ids[p];
            if how < rule.mask {
                input_ids[p] = tokens.mask_id;
            } else if how < rule.mask + rule.random {
                input_ids[p] = tokens.random_pool[below(rng, tokens.random_pool.len())];
            }
        }
        if predicted == target {
            break;
        }
    }
    MaskedSequence { input_ids, labels }
}

/// How records become pretraining sequences (`--max-len`, `--line-by-line`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// Records joined by [SEP] and cut into blocks of max_len, each [CLS] ... [SEP] (as
    /// run_mlm.py groups texts, except that the last, shorter block is kept: no record is lost).
    Blocks,
    /// One record per sequence, [CLS] record [SEP], cut at max_len (run_mlm --line_by_line).
    LineByLine,
}

/// A sequence ready to mask: token ids with [CLS]/[SEP], and each token's word (NO_WORD for
/// the special tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WordSequence {
    pub ids: Vec<i32>,
    pub words: Vec<u32>,
}

/// Builds pretraining sequences of at most `max_len` tokens (>= 3) from records' word tokens.
/// Word numbers must differ between records (`word_tokens`' `first_word`): a word cut by a
/// block boundary stays one word on each side.
pub fn group_records(
    records: &[WordTokens],
    max_len: usize,
    grouping: Grouping,
    cls: i32,
    sep: i32,
) -> Vec<WordSequence> {
    assert!(max_len >= 3, "room for [CLS], a token and [SEP]");
    let body = max_len - 2;
    let wrap = |ids: &[i32], words: &[u32]| {
        let mut s = WordSequence {
            ids: Vec::with_capacity(ids.len() + 2),
            words: Vec::with_capacity(ids.len() + 2),
        };
        s.ids.push(cls);
        s.ids.extend_from_slice(ids);
        s.ids.push(sep);
        s.words.push(NO_WORD);
        s.words.extend_from_slice(words);
        s.words.push(NO_WORD);
        s
    };
    match grouping {
        Grouping::LineByLine => records
            .iter()
            .filter(|r| !r.ids.is_empty())
            .map(|r| {
                let n = r.ids.len().min(body);
                wrap(&r.ids[..n], &r.words[..n])
            })
            .collect(),
        Grouping::Blocks => {
            let (mut ids, mut words) = (Vec::new(), Vec::new());
            for r in records.iter().filter(|r| !r.ids.is_empty()) {
                if !ids.is_empty() {
                    ids.push(sep);
                    words.push(NO_WORD);
                }
                ids.extend_from_slice(&r.ids);
                words.extend_from_slice(&r.words);
            }
            ids.chunks(body)
                .zip(words.chunks(body))
                .map(|(i, w)| wrap(i, w))
                .collect()
        }
    }
}

/// A padded batch of masked sequences, as the encoder and the MLM head take it: ids and
/// attention mask [batch, len] row-major, and the predicted positions (indices into the
/// flattened batch x len rows, ascending) with their original tokens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskedBatch {
    pub batch: usize,
    pub len: usize,
    pub input_ids: Vec<i32>,
    pub attention_mask: Vec<i32>,
    pub positions: Vec<i32>,
    pub labels: Vec<i32>,
}

/// Masks `sequences` for `epoch` and pads them to the longest with `pad_id`. Each sequence's
/// masks come from (seed, epoch, its index in the corpus) alone, whatever batch it lands in,
/// so shuffling, batch size and resuming change no mask.
pub fn masked_batch(
    sequences: &[(usize, &WordSequence)],
    seed: u64,
    epoch: u64,
    rule: &MaskingRule,
    tokens: &MaskTokens,
    pad_id: i32,
) -> MaskedBatch {
    let batch = sequences.len();
    let len = sequences
        .iter()
        .map(|(_, s)| s.ids.len())
        .max()
        .unwrap_or(0);
    let mut out = MaskedBatch {
        batch,
        len,
        input_ids: vec![pad_id; batch * len],
        attention_mask: vec![0; batch * len],
        positions: Vec::new(),
        labels: Vec::new(),
    };
    for (row, &(index, s)) in sequences.iter().enumerate() {
        let mut rng = sequence_rng(seed, epoch, index as u64);
        let masked = mask_sequence(&s.ids, &s.words, rule, tokens, &mut rng);
        let base = row * len;
        out.input_ids[base..base + s.ids.len()].copy_from_slice(&masked.input_ids);
        out.attention_mask[base..base + s.ids.len()].fill(1);
        for (p, &label) in masked.labels.iter().enumerate() {
            if label != NOT_PREDICTED {
                out.positions.push((base + p) as i32);
                out.labels.push(label);
            }
        }
    }
    out
}
