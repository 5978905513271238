//! f64 reference of a classifier head (model::heads): the layers' references wired as the head
//! wires them — features side by side ([CLS] for `cls`, the mean for `bag`, Text-CNN pooled,
//! the RNN pooled over its outputs (over the Text-CNN's maps for `textcnn-bigru`), [CLS] last
//! for `paper`), dropout, linear — forward and backward. Parameters by the engine's names
//! (`head.textcnn.convs.{i}.weight`, `head.rnn.weight_ih`, `head.classifier.bias`, ...).

use super::bert::Params;
use super::rnn::RnnParams;
use super::seqpool;
use super::textcnn::{self, Conv};
use crate::model::heads::{Head, HeadKind};
use crate::ops::rnn::Cell;
use crate::ops::seqpool::Pool;

/// The head's shape: everything but its parameters.
#[derive(Clone, Debug)]
pub struct HeadShape {
    pub kind: HeadKind,
    pub pool: Pool,
    /// Width of the token states and of the sentence vector.
    pub d: usize,
    pub filters: usize,
    pub widths: Vec<usize>,
    pub hidden: usize,
    /// The RNN's cell and input width, when the head has one.
    pub rnn: Option<(Cell, usize)>,
    pub classes: usize,
    pub dropout: f32,
}

impl HeadShape {
    pub fn of(head: &Head) -> HeadShape {
        let c = &head.config;
        HeadShape {
            kind: c.kind,
            pool: c.pool,
            d: c.input,
            filters: c.textcnn_filters,
            widths: c.textcnn_widths.clone(),
            hidden: c.rnn_hidden,
            rnn: head.rnn.as_ref().map(|r| (r.cell, r.input)),
            classes: c.classes,
            dropout: c.dropout,
        }
    }

    fn cnn(&self) -> bool {
        matches!(
            self.kind,
            HeadKind::TextCnn | HeadKind::TextCnnBiGru | HeadKind::Paper
        )
    }

    /// Whether [CLS] joins the features (`cls`, and `paper` with an encoder).
    fn sentence_at(&self, first: bool, sentence: bool) -> bool {
        match self.kind {
            HeadKind::Cls => first,
            HeadKind::Paper => !first && sentence,
            _ => false,
        }
    }
}

fn convs<'a>(shape: &HeadShape, p: &'a Params) -> Vec<Conv<'a>> {
    shape
        .widths
        .iter()
        .enumerate()
        .map(|(i, &width)| Conv {
            width,
            weight: &p[&format!("head.textcnn.convs.{i}.weight")],
            bias: &p[&format!("head.textcnn.convs.{i}.bias")],
        })
        .collect()
}

fn rnn_params<'a>(shape: &HeadShape, p: &'a Params) -> RnnParams<'a> {
    let (cell, input) = shape.rnn.expect("a head with an RNN");
    RnnParams {
        cell,
        input,
        hidden: shape.hidden,
        w_ih: &p["head.rnn.weight_ih"],
        w_hh: &p["head.rnn.weight_hh"],
        b_ih: &p["head.rnn.bias_ih"],
        b_hh: &p["head.rnn.bias_hh"],
    }
}

/// One block of the features: what it is and its width.
#[derive(Clone, Copy, PartialEq)]
enum Part {
    Sentence,
    Mean,
    TextCnn,
    Rnn,
}

fn parts(shape: &HeadShape, sentence: bool) -> Vec<(Part, usize)> {
    let mut out = Vec::new();
    if shape.sentence_at(true, sentence) {
        out.push((Part::Sentence, shape.d));
    }
    if shape.kind == HeadKind::Bag {
        out.push((Part::Mean, shape.d));
    }
    if shape.cnn() && shape.kind != HeadKind::TextCnnBiGru {
        out.push((Part::TextCnn, shape.filters * shape.widths.len()));
    }
    if shape.rnn.is_some() {
        out.push((Part::Rnn, 2 * shape.hidden));
    }
    if shape.sentence_at(false, sentence) {
        out.push((Part::Sentence, shape.d));
    }
    out
}

/// The RNN's input: the token states, or the Text-CNN's maps for `textcnn-bigru`.
fn rnn_input(shape: &HeadShape, p: &Params, x: &[f64], lengths: &[i32], len: usize) -> Vec<f64> {
    if shape.kind == HeadKind::TextCnnBiGru {
        textcnn::maps_forward(x, lengths, len, shape.d, shape.filters, &convs(shape, p))
    } else {
        x.to_vec()
    }
}

/// Features [B, F] before dropout, and the signature of the piecewise-linear piece the forward
/// ran on (winning windows, positive maps, pooled positions), for finite differences. `s`:
/// the sentence vector [B, d], or None (the encoder-free path).
pub fn features(
    shape: &HeadShape,
    p: &Params,
    x: &[f64],
    s: Option<&[f64]>,
    lengths: &[i32],
    len: usize,
) -> (Vec<f64>, Vec<usize>) {
    let batch = lengths.len();
    let mut blocks: Vec<(Vec<f64>, usize)> = Vec::new();
    let mut sig = Vec::new();
    for (part, width) in parts(shape, s.is_some()) {
        let v = match part {
            Part::Sentence => s.expect("a sentence vector").to_vec(),
            Part::Mean => seqpool::forward(x, lengths, len, shape.d, Pool::Mean, 1),
            Part::TextCnn => {
                let (pooled, winners) =
                    textcnn::forward(x, lengths, len, shape.d, shape.filters, &convs(shape, p));
                sig.extend(winners.iter().map(|w| w.unwrap_or(usize::MAX)));
                pooled
            }
            Part::Rnn => {
                let input = rnn_input(shape, p, x, lengths, len);
                if shape.kind == HeadKind::TextCnnBiGru {
                    sig.extend(input.iter().map(|&m| (m > 0.0) as usize));
                }
                let out = super::rnn::forward(&rnn_params(shape, p), &input, lengths, len);
                let ones = vec![1.0; batch * width];
                let dpos = seqpool::backward(&out, lengths, len, width, shape.pool, 2, &ones);
                sig.extend(dpos.iter().map(|&v| (v != 0.0) as usize));
                seqpool::forward(&out, lengths, len, width, shape.pool, 2)
            }
        };
        blocks.push((v, width));
    }
    let total: usize = blocks.iter().map(|b| b.1).sum();
    let mut f = vec![0.0; batch * total];
    let mut col = 0;
    for (v, w) in &blocks {
        for b in 0..batch {
            f[b * total + col..b * total + col + w].copy_from_slice(&v[b * w..(b + 1) * w]);
        }
        col += w;
    }
    (f, sig)
}

/// Logits [B, classes] (dropout with `seed`, none without), and the features' signature.
pub fn forward(
    shape: &HeadShape,
    p: &Params,
    x: &[f64],
    s: Option<&[f64]>,
    lengths: &[i32],
    len: usize,
    seed: Option<u64>,
) -> (Vec<f64>, Vec<usize>) {
    let (f, sig) = features(shape, p, x, s, lengths, len);
    let f = match seed {
        Some(seed) => super::dropout(&f, shape.dropout, seed),
        None => f,
    };
    let n = f.len() / lengths.len().max(1);
    let (w, b) = (&p["head.classifier.weight"], &p["head.classifier.bias"]);
    (super::bert::linear(&f, w, b, n, shape.classes), sig)
}

/// What backward returns: every parameter's gradient, and those of the token states and of
/// the sentence vector (None without one).
pub struct HeadGradients {
    pub params: Params,
    pub dx: Vec<f64>,
    pub ds: Option<Vec<f64>>,
}

/// Gradients for upstream dlogits [B, classes], with the forward's dropout seed.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    shape: &HeadShape,
    p: &Params,
    x: &[f64],
    s: Option<&[f64]>,
    lengths: &[i32],
    len: usize,
    seed: Option<u64>,
    dlogits: &[f64],
) -> HeadGradients {
    let batch = lengths.len();
    let k = shape.classes;
    let (f, _) = features(shape, p, x, s, lengths, len);
    let n = f.len() / batch.max(1);
    let drop = |v: &[f64]| match seed {
        Some(seed) => super::dropout(v, shape.dropout, seed),
        None => v.to_vec(),
    };
    let fd = drop(&f);
    let (dfd, dw, db) =
        super::bert::linear_backward(&fd, &p["head.classifier.weight"], dlogits, n, k);
    // Dropout is a fixed mask times 1/(1-p): its backward is the same map.
    let df = drop(&dfd);
    let mut g = HeadGradients {
        params: Params::new(),
        dx: vec![0.0; x.len()],
        ds: s.map(|s| vec![0.0; s.len()]),
    };
    g.params.insert("head.classifier.weight".into(), dw);
    g.params.insert("head.classifier.bias".into(), db);
    let mut col = 0;
    for (part, width) in parts(shape, s.is_some()) {
        let block: Vec<f64> = (0..batch)
            .flat_map(|r| df[r * n + col..r * n + col + width].to_vec())
            .collect();
        col += width;
        match part {
            Part::Sentence => {
                for (d, v) in
                    g.ds.as_mut()
                        .expect("a sentence vector")
                        .iter_mut()
                        .zip(&block)
                {
                    *d += v;
                }
            }
            Part::Mean => add_into(
                &mut g.dx,
                &seqpool::backward(x, lengths, len, shape.d, Pool::Mean, 1, &block),
            ),
            Part::TextCnn => {
                let c = convs(shape, p);
                let (dx, grads) =
                    textcnn::backward(x, lengths, len, shape.d, shape.filters, &c, &block);
                add_into(&mut g.dx, &dx);
                insert_convs(&mut g.params, grads);
            }
            Part::Rnn => {
                let input = rnn_input(shape, p, x, lengths, len);
                let rp = rnn_params(shape, p);
                let out = super::rnn::forward(&rp, &input, lengths, len);
                let dout = seqpool::backward(&out, lengths, len, width, shape.pool, 2, &block);
                let rg = super::rnn::backward(&rp, &input, lengths, len, &dout);
                for (name, v) in [
                    ("weight_ih", rg.w_ih),
                    ("weight_hh", rg.w_hh),
                    ("bias_ih", rg.b_ih),
                    ("bias_hh", rg.b_hh),
                ] {
                    g.params.insert(format!("head.rnn.{name}"), v);
                }
                if shape.kind == HeadKind::TextCnnBiGru {
                    let c = convs(shape, p);
                    let (dx, grads) =
                        textcnn::maps_backward(x, lengths, len, shape.d, shape.filters, &c, &rg.dx);
                    add_into(&mut g.dx, &dx);
                    insert_convs(&mut g.params, grads);
                } else {
                    add_into(&mut g.dx, &rg.dx);
                }
            }
        }
    }
    g
}

fn add_into(acc: &mut [f64], v: &[f64]) {
    for (a, b) in acc.iter_mut().zip(v) {
        *a += b;
    }
}

fn insert_convs(params: &mut Params, grads: Vec<textcnn::ConvGrads>) {
    for (i, (dw, db)) in grads.into_iter().enumerate() {
        params.insert(format!("head.textcnn.convs.{i}.weight"), dw);
        params.insert(format!("head.textcnn.convs.{i}.bias"), db);
    }
}
