//! What a run folder's `state.json` holds, as types: where a run stands (`Progress`, each finished
//! epoch's `EpochRecord`), what rebuilds its model (`ModelSpec`), what its checkpoints share
//! (`RunInfo`). The trainer advances them, `checkpoint` writes and reads them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// One finished epoch, as kept in the state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    pub epoch: usize,
    pub mean_loss: f64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub micro_f1: f64,
}

/// Where a run stands; everything else follows from the settings and the seed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps taken.
    pub step: u64,
    /// The epoch in progress (1-based).
    pub epoch: usize,
    /// Batches of that epoch already trained on.
    pub batch: usize,
    /// Sum of those batches' losses.
    pub loss_sum: f64,
    pub finished: Vec<EpochRecord>,
    /// Best epoch so far and its dev macro-F1.
    pub best: Option<(usize, f64)>,
    /// Epochs since the best one (early stopping).
    pub bad_epochs: usize,
    /// The losses of the steps since the last `--log-every` line: their sum and count.
    #[serde(default)]
    pub window: (f64, u64),
}

impl Progress {
    pub fn start() -> Self {
        Progress {
            epoch: 1,
            ..Default::default()
        }
    }
}

/// What `eval` and `predict` need to rebuild the model of a run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The BERT checkpoint folder the run started from (None: character embeddings).
    pub encoder: Option<PathBuf>,
    /// Head and loss by their command-line names.
    pub head: String,
    pub loss: String,
    pub embedding_dim: usize,
    pub filters: usize,
    pub rnn_hidden: usize,
    pub dropout: f32,
    pub max_len: usize,
    /// The encoder stayed frozen: the checkpoints hold the head alone.
    #[serde(default)]
    pub frozen: bool,
    /// The `bag` head's hash buckets (0 for other heads).
    #[serde(default)]
    pub buckets: usize,
    /// What was kept of records longer than max_len: head, head-tail or chunks.
    #[serde(default = "head")]
    pub long_text: String,
    /// Under `chunks`, the most windows per record (0 otherwise).
    #[serde(default)]
    pub max_chunks: usize,
    /// Under `chunks`, how the windows' logits pool: mean or max.
    #[serde(default = "mean")]
    pub chunk_pool: String,
}

fn head() -> String {
    "head".into()
}

fn mean() -> String {
    "mean".into()
}

/// What a run's checkpoints share: labels, vocabulary, settings, model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The settings that must match for --resume (data, model, optimisation, seed).
    pub fingerprint: String,
    pub labels: Vec<String>,
    /// The character vocabulary of the encoder-free path (None with an encoder).
    pub vocab: Option<Vec<String>>,
    pub model: ModelSpec,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    pub progress: Progress,
    pub ghm_ema: Vec<f32>,
    pub ghm_steps: u64,
    pub run: RunInfo,
    pub tensors: String,
}

/// A settings fingerprint (`RunInfo::fingerprint`: `key=value key=value ...`, values printed as
/// Rust writes them, which may hold spaces) as (key, value) pairs. A key is a lowercase word
/// that follows a space (or starts the text) and precedes `=`.
pub fn settings_pairs(fingerprint: &str) -> Vec<(String, String)> {
    let s = fingerprint;
    let starts: Vec<usize> = (0..s.len())
        .filter(|&i| {
            s.is_char_boundary(i)
                && (i == 0 || s.as_bytes()[i - 1] == b' ')
                && s[i..].split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                })
        })
        .collect();
    starts
        .iter()
        .enumerate()
        .map(|(n, &i)| {
            let end = starts.get(n + 1).map_or(s.len(), |&j| j - 1);
            let (k, v) = s[i..end].split_once('=').unwrap_or((&s[i..end], ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// The settings two fingerprints disagree on: (key, then, now).
pub fn settings_diff(then: &str, now: &str) -> Vec<(String, String, String)> {
    let (a, b) = (settings_pairs(then), settings_pairs(now));
    let mut out = Vec::new();
    for (k, v) in &b {
        match a.iter().find(|(ka, _)| ka == k) {
            Some((_, va)) if va == v => {}
            Some((_, va)) => out.push((k.clone(), va.clone(), v.clone())),
            None => out.push((k.clone(), "(unset)".into(), v.clone())),
        }
    }
    for (k, v) in &a {
        if !b.iter().any(|(kb, _)| kb == k) {
            out.push((k.clone(), v.clone(), "(unset)".into()));
        }
    }
    out
}
