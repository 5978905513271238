//! Classifier heads over token states [B, L, D] (from the encoder, or from trainable token
//! embeddings) and, where the head uses it, a sentence vector [B, D] (the encoder's pooled
//! [CLS]). Every head ends in dropout and a linear layer to the class logits.
//!
//! | name            | features                                                            |
//! |-----------------|---------------------------------------------------------------------|
//! | `cls`           | pooled [CLS]                                                        |
//! | `textcnn`       | Text-CNN over the token states, max-pooled                          |
//! | `bigru`/`bilstm`| BiGRU / BiLSTM over the token states, pooled (max, mean or last)    |
//! | `textcnn-bigru` | BiGRU over the Text-CNN feature maps (in series), pooled            |
//! | `paper`         | Text-CNN ∥ BiGRU over the token states, concatenated with [CLS]     |
//! | `bag`           | the mean of the token states (fastText: hashed character n-grams)  |
//!
//! `paper` is the paper's framework as best reconstructed: its text names MC-BERT plus a deep
//! network of Text-CNN and BiGRU layers without fixing how they connect; this head runs both
//! on the token states in parallel and keeps the [CLS] summary beside them.

use std::str::FromStr;

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::slot::Slot;
use crate::ops::{self, seqpool, Block};
use crate::rng::Rng;

use super::linear::Linear;
use super::rnn::{BiRnn, Cell};
use super::textcnn::{TextCnn, TextCnnConfig};
pub use crate::ops::seqpool::Pool;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    Cls,
    TextCnn,
    BiGru,
    BiLstm,
    TextCnnBiGru,
    Paper,
    /// fastText-style: the mean of the token states, which are hashed character n-gram
    /// embeddings (`data::batching::NGramHasher`).
    Bag,
}

impl HeadKind {
    /// Every head, in the order the CLI lists them.
    pub const ALL: [HeadKind; 7] = [
        HeadKind::Cls,
        HeadKind::TextCnn,
        HeadKind::BiGru,
        HeadKind::BiLstm,
        HeadKind::TextCnnBiGru,
        HeadKind::Paper,
        HeadKind::Bag,
    ];

    /// The head's name on the command line, in run folders and in the paper's tables.
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Cls => "cls",
            HeadKind::TextCnn => "textcnn",
            HeadKind::BiGru => "bigru",
            HeadKind::BiLstm => "bilstm",
            HeadKind::TextCnnBiGru => "textcnn-bigru",
            HeadKind::Paper => "paper",
            HeadKind::Bag => "bag",
        }
    }
}

impl FromStr for HeadKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        HeadKind::ALL
            .into_iter()
            .find(|h| h.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = HeadKind::ALL.iter().map(|h| h.name()).collect();
                Error::Invalid(format!("no head named `{s}`; heads: {}", names.join(", ")))
            })
    }
}

#[derive(Clone, Debug)]
pub struct HeadConfig {
    pub kind: HeadKind,
    /// Width of the token states and of the sentence vector.
    pub input: usize,
    pub classes: usize,
    pub dropout: f32,
    pub textcnn_filters: usize,
    pub textcnn_widths: Vec<usize>,
    pub rnn_hidden: usize,
    /// How the recurrent output sequence becomes one vector.
    pub pool: Pool,
    /// `paper` only: whether the encoder's pooled [CLS] joins the features. Without an encoder
    /// (character embeddings) the `paper` head is Text-CNN || BiGRU alone.
    pub sentence: bool,
}

impl HeadConfig {
    pub fn new(kind: HeadKind, input: usize, classes: usize) -> Self {
        HeadConfig {
            kind,
            input,
            classes,
            dropout: 0.1,
            textcnn_filters: 256,
            textcnn_widths: vec![2, 3, 4],
            rnn_hidden: 256,
            pool: Pool::Max,
            sentence: true,
        }
    }

    /// Whether the head reads the sentence vector (the encoder's pooled [CLS]).
    pub fn uses_sentence(&self) -> bool {
        self.kind == HeadKind::Cls || (self.kind == HeadKind::Paper && self.sentence)
    }
}

/// One block of the concatenated feature vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Part {
    Sentence,
    TextCnn,
    Rnn,
    /// The mean of the token states over each sequence's real tokens.
    Mean,
}

struct Saved {
    batch: usize,
    len: usize,
    lengths: Buffer<i32>,
    /// Features after dropout: the linear layer's input.
    dropped: Buffer<f32>,
    /// Dropout seed of this step (None in evaluation).
    seed: Option<u64>,
    /// Max pooling's winners over the recurrent output.
    argmax: Option<Buffer<i32>>,
}

pub struct Head {
    pub config: HeadConfig,
    pub textcnn: Option<TextCnn>,
    pub rnn: Option<BiRnn>,
    pub linear: Linear,
    parts: Vec<(Part, usize)>,
    saved: Option<Saved>,
}

/// Gradients a head sends back: to the token states and to the sentence vector.
pub struct HeadGrads {
    pub tokens: Option<Buffer<f32>>,
    pub sentence: Option<Buffer<f32>>,
}

impl Head {
    /// Every parameter of the head's layers, for the optimizer.
    pub fn slots(&mut self, lr_scale: f32) -> Vec<Slot<'_>> {
        let mut out = Vec::new();
        if let Some(t) = self.textcnn.as_mut() {
            out.extend(t.slots("head.textcnn", lr_scale));
        }
        if let Some(r) = self.rnn.as_mut() {
            out.extend(r.slots("head.rnn", lr_scale));
        }
        out.extend(self.linear.slots("head.classifier", lr_scale));
        out
    }

    /// The shape of each parameter `slots` lists, in the same order, in PyTorch's layouts: a
    /// convolution [filters, channels, width], the RNN's tensors with both directions stacked
    /// ([2, gates x hidden, input], [2, gates x hidden, hidden], [2, gates x hidden]), the
    /// classifier [classes, features].
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let mut out = Vec::new();
        if let Some(t) = &self.textcnn {
            let (f, c) = (t.config.filters, t.config.channels);
            for (i, &w) in t.config.widths.iter().enumerate() {
                out.push((format!("head.textcnn.convs.{i}.weight"), vec![f, c, w]));
            }
            for i in 0..t.config.widths.len() {
                out.push((format!("head.textcnn.convs.{i}.bias"), vec![f]));
            }
        }
        if let Some(r) = &self.rnn {
            let gh = r.cell.gates() * r.hidden;
            out.push(("head.rnn.weight_ih".into(), vec![2, gh, r.input]));
            out.push(("head.rnn.weight_hh".into(), vec![2, gh, r.hidden]));
            out.push(("head.rnn.bias_ih".into(), vec![2, gh]));
            out.push(("head.rnn.bias_hh".into(), vec![2, gh]));
        }
        let l = &self.linear;
        out.push(("head.classifier.weight".into(), vec![l.output, l.input]));
        out.push(("head.classifier.bias".into(), vec![l.output]));
        out
    }

    /// A head with PyTorch's default initialisation of every layer.
    pub fn new(dev: &Device, config: HeadConfig, rng: &mut Rng) -> Result<Self> {
        let cnn_config = |channels| TextCnnConfig {
            channels,
            filters: config.textcnn_filters,
            widths: config.textcnn_widths.clone(),
        };
        let d = config.input;
        let h = config.rnn_hidden;
        let (textcnn, rnn) = match config.kind {
            HeadKind::Cls | HeadKind::Bag => (None, None),
            HeadKind::TextCnn => (Some(TextCnn::new(dev, cnn_config(d), rng)?), None),
            HeadKind::BiGru => (None, Some(BiRnn::new(dev, Cell::Gru, d, h, rng)?)),
            HeadKind::BiLstm => (None, Some(BiRnn::new(dev, Cell::Lstm, d, h, rng)?)),
            HeadKind::TextCnnBiGru => {
                let cnn = TextCnn::new(dev, cnn_config(d), rng)?;
                let maps = cnn.config.out_features();
                (Some(cnn), Some(BiRnn::new(dev, Cell::Gru, maps, h, rng)?))
            }
            HeadKind::Paper => (
                Some(TextCnn::new(dev, cnn_config(d), rng)?),
                Some(BiRnn::new(dev, Cell::Gru, d, h, rng)?),
            ),
        };
        let mut parts = Vec::new();
        if config.kind == HeadKind::Cls {
            parts.push((Part::Sentence, d));
        }
        if config.kind == HeadKind::Bag {
            parts.push((Part::Mean, d));
        }
        if let (Some(cnn), false) = (&textcnn, config.kind == HeadKind::TextCnnBiGru) {
            parts.push((Part::TextCnn, cnn.config.out_features()));
        }
        if rnn.is_some() {
            parts.push((Part::Rnn, 2 * h));
        }
        if config.kind == HeadKind::Paper && config.sentence {
            parts.push((Part::Sentence, d));
        }
        let features: usize = parts.iter().map(|p| p.1).sum();
        let linear = Linear::new(dev, features, config.classes, rng)?;
        Ok(Head {
            config,
            textcnn,
            rnn,
            linear,
            parts,
            saved: None,
        })
    }

    pub fn features(&self) -> usize {
        self.linear.input
    }

    /// Logits [batch, classes]. `dropout_seed`: Some(seed) in training (a fresh seed per step),
    /// None in evaluation (dropout off).
    pub fn forward(
        &mut self,
        tokens: &Buffer<f32>,
        lengths: &[i32],
        len: usize,
        sentence: Option<&Buffer<f32>>,
        dropout_seed: Option<u64>,
    ) -> Result<Buffer<f32>> {
        let dev = tokens.device().clone();
        let batch = lengths.len();
        super::textcnn::check_lengths(lengths, len)?;
        let d = self.config.input;
        if tokens.len() != batch * len * d {
            return Err(Error::Invalid(format!(
                "head: token states hold {} values; [{batch}, {len}, {d}] expected",
                tokens.len()
            )));
        }
        let sentence = match (self.config.uses_sentence(), sentence) {
            (true, Some(s)) if s.len() == batch * d => Some(s),
            (true, Some(s)) => return Err(Error::Invalid(format!("head: sentence vector holds {} values; [{batch}, {d}] expected", s.len()))),
            (true, None) => {
                return Err(Error::Invalid(format!(
                    "head `{:?}` needs the encoder's pooled [CLS]; the encoder-free input path has none",
                    self.config.kind
                )))
            }
            (false, _) => None,
        };
        let lengths_dev = dev.upload(lengths, "head lengths")?;
        let total = self.features();
        let mut features = dev.alloc::<f32>(batch * total, "head features")?;
        let mut argmax = None;
        let mut col = 0;
        for &(part, width) in &self.parts.clone() {
            let block = match part {
                Part::Sentence => None,
                Part::TextCnn => Some(
                    self.textcnn
                        .as_mut()
                        .unwrap()
                        .forward(tokens, lengths, len)?,
                ),
                Part::Mean => {
                    let mut pooled = dev.alloc::<f32>(batch * width, "head mean")?;
                    let mut winners = dev.alloc::<i32>(batch * width, "head mean argmax")?;
                    seqpool::forward(
                        tokens,
                        &lengths_dev,
                        &mut pooled,
                        &mut winners,
                        len,
                        width,
                        Pool::Mean,
                        1,
                    )?;
                    argmax = Some(winners);
                    Some(pooled)
                }
                Part::Rnn => {
                    let maps = match self.config.kind {
                        HeadKind::TextCnnBiGru => Some(
                            self.textcnn
                                .as_mut()
                                .unwrap()
                                .forward_maps(tokens, lengths, len)?,
                        ),
                        _ => None,
                    };
                    let rnn = self.rnn.as_mut().unwrap();
                    let out = rnn.forward(maps.as_ref().unwrap_or(tokens), lengths, len)?;
                    let mut pooled = dev.alloc::<f32>(batch * width, "head pooled")?;
                    let mut winners = dev.alloc::<i32>(batch * width, "head pool argmax")?;
                    seqpool::forward(
                        out,
                        &lengths_dev,
                        &mut pooled,
                        &mut winners,
                        len,
                        width,
                        self.config.pool,
                        2,
                    )?;
                    argmax = Some(winners);
                    Some(pooled)
                }
            };
            let src = block.as_ref().or(sentence).unwrap();
            ops::copy_block(
                src,
                Block {
                    offset: 0,
                    ld: width,
                },
                &mut features,
                Block {
                    offset: col,
                    ld: total,
                },
                batch,
                width,
            )?;
            col += width;
        }
        let dropped = match dropout_seed {
            Some(seed) if self.config.dropout > 0.0 => {
                let mut y = dev.alloc::<f32>(features.len(), "head dropout")?;
                ops::dropout(&features, &mut y, self.config.dropout, seed, false)?;
                y
            }
            _ => features,
        };
        let logits = self.linear.forward(&dropped, batch)?;
        let seed = dropout_seed.filter(|_| self.config.dropout > 0.0);
        self.saved = Some(Saved {
            batch,
            len,
            lengths: lengths_dev,
            dropped,
            seed,
            argmax,
        });
        Ok(logits)
    }

    /// dlogits [batch, classes] -> gradients of the token states and the sentence vector;
    /// the parameter gradients of every layer are written (overwritten).
    pub fn backward(&mut self, dlogits: &Buffer<f32>) -> Result<HeadGrads> {
        let s = self
            .saved
            .take()
            .ok_or_else(|| Error::Invalid("head backward without forward".into()))?;
        let dev = dlogits.device().clone();
        let (batch, total) = (s.batch, self.features());
        let ddropped = self.linear.backward(&s.dropped, dlogits, batch)?;
        let dfeatures = match s.seed {
            Some(seed) => {
                let mut g = dev.alloc::<f32>(ddropped.len(), "head dfeatures")?;
                ops::dropout(&ddropped, &mut g, self.config.dropout, seed, true)?;
                g
            }
            None => ddropped,
        };
        let mut grads = HeadGrads {
            tokens: None,
            sentence: None,
        };
        let mut col = 0;
        for &(part, width) in &self.parts.clone() {
            let mut dpart = dev.alloc::<f32>(batch * width, "head dpart")?;
            ops::copy_block(
                &dfeatures,
                Block {
                    offset: col,
                    ld: total,
                },
                &mut dpart,
                Block {
                    offset: 0,
                    ld: width,
                },
                batch,
                width,
            )?;
            col += width;
            let dtokens = match part {
                Part::Sentence => {
                    grads.sentence = Some(dpart);
                    continue;
                }
                Part::TextCnn => self.textcnn.as_mut().unwrap().backward(&dpart)?,
                Part::Mean => {
                    let mut dx = dev.alloc::<f32>(batch * s.len * width, "head dmean")?;
                    let winners = s.argmax.as_ref().expect("the mean part saved its pooling");
                    seqpool::backward(
                        &dpart,
                        &s.lengths,
                        winners,
                        &mut dx,
                        s.len,
                        width,
                        Pool::Mean,
                        1,
                    )?;
                    dx
                }
                Part::Rnn => {
                    let mut dout = dev.alloc::<f32>(batch * s.len * width, "head drnn")?;
                    let winners = s.argmax.as_ref().expect("recurrent part saved its pooling");
                    seqpool::backward(
                        &dpart,
                        &s.lengths,
                        winners,
                        &mut dout,
                        s.len,
                        width,
                        self.config.pool,
                        2,
                    )?;
                    let dx = self.rnn.as_mut().unwrap().backward(&dout)?;
                    match self.config.kind {
                        HeadKind::TextCnnBiGru => self.textcnn.as_mut().unwrap().backward(&dx)?,
                        _ => dx,
                    }
                }
            };
            grads.tokens = Some(match grads.tokens.take() {
                None => dtokens,
                Some(prev) => {
                    let mut sum = dev.alloc::<f32>(prev.len(), "head dtokens")?;
                    ops::add(&prev, &dtokens, &mut sum, prev.len())?;
                    sum
                }
            });
        }
        Ok(grads)
    }
}
