//! Registry checks of the classifier heads: an f64 composition of the layers' references (the
//! head's wiring: concatenation, dropout mask, linear) against finite differences, and the
//! head's kernels against that composition, for every head kind.

use super::registry::{Row, GRADIENT_TOLERANCE, KERNEL_TOLERANCE};
use super::{relative_error, to_f32, weighted_sum, worst, Rng};
use crate::device::Device;
use crate::error::Result;
use crate::model::heads::{Head, HeadConfig, HeadKind, Pool};
use crate::model::rnn::Cell;
use crate::reference::{self as r, rnn::RnnParams, seqpool, textcnn};

const KINDS: [(HeadKind, Pool); 7] = [
    (HeadKind::Cls, Pool::Max),
    (HeadKind::TextCnn, Pool::Max),
    (HeadKind::BiGru, Pool::Max),
    (HeadKind::BiLstm, Pool::Mean),
    (HeadKind::TextCnnBiGru, Pool::Last),
    (HeadKind::Paper, Pool::Max),
    (HeadKind::Bag, Pool::Mean),
];

fn host(b: &crate::device::Buffer<f32>) -> Result<Vec<f64>> {
    Ok(b.to_host()?.iter().map(|&v| v as f64).collect())
}

/// The head's parameters on the host, in f64.
struct RefHead {
    kind: HeadKind,
    pool: Pool,
    d: usize,
    filters: usize,
    widths: Vec<usize>,
    hidden: usize,
    cnn: Vec<(Vec<f64>, Vec<f64>)>,
    rnn: Option<(Cell, usize, [Vec<f64>; 4])>,
    w: Vec<f64>,
    b: Vec<f64>,
    classes: usize,
    p: f32,
    seed: u64,
}

impl RefHead {
    fn from(head: &Head, seed: u64) -> Result<RefHead> {
        let c = &head.config;
        let cnn = match &head.textcnn {
            Some(t) => t
                .weights
                .iter()
                .zip(&t.biases)
                .map(|(w, b)| Ok((host(w)?, host(b)?)))
                .collect::<Result<_>>()?,
            None => vec![],
        };
        let rnn = match &head.rnn {
            Some(n) => Some((
                n.cell,
                n.input,
                [
                    host(&n.w_ih)?,
                    host(&n.w_hh)?,
                    host(&n.b_ih)?,
                    host(&n.b_hh)?,
                ],
            )),
            None => None,
        };
        Ok(RefHead {
            kind: c.kind,
            pool: c.pool,
            d: c.input,
            filters: c.textcnn_filters,
            widths: c.textcnn_widths.clone(),
            hidden: c.rnn_hidden,
            cnn,
            rnn,
            w: host(&head.linear.weight)?,
            b: host(&head.linear.bias)?,
            classes: c.classes,
            p: c.dropout,
            seed,
        })
    }

    fn convs(&self) -> Vec<textcnn::Conv<'_>> {
        self.widths
            .iter()
            .zip(&self.cnn)
            .map(|(&width, (w, b))| textcnn::Conv {
                width,
                weight: w,
                bias: b,
            })
            .collect()
    }

    fn rnn_params(&self) -> RnnParams<'_> {
        let (cell, input, t) = self.rnn.as_ref().unwrap();
        RnnParams {
            cell: *cell,
            input: *input,
            hidden: self.hidden,
            w_ih: &t[0],
            w_hh: &t[1],
            b_ih: &t[2],
            b_hh: &t[3],
        }
    }

    /// Features, and the signature of the linear piece (winning windows and pooled positions).
    fn features(
        &self,
        x: &[f64],
        s: &[f64],
        lengths: &[i32],
        len: usize,
    ) -> (Vec<f64>, Vec<usize>) {
        let batch = lengths.len();
        let mut parts: Vec<(Vec<f64>, usize)> = Vec::new();
        let mut sig = Vec::new();
        let cnn = !self.cnn.is_empty();
        if self.kind == HeadKind::Cls {
            parts.push((s.to_vec(), self.d));
        }
        if self.kind == HeadKind::Bag {
            parts.push((
                seqpool::forward(x, lengths, len, self.d, Pool::Mean, 1),
                self.d,
            ));
        }
        if cnn && self.kind != HeadKind::TextCnnBiGru {
            let (pooled, winners) =
                textcnn::forward(x, lengths, len, self.d, self.filters, &self.convs());
            sig.extend(winners.iter().map(|w| w.unwrap_or(usize::MAX)));
            parts.push((pooled, self.filters * self.widths.len()));
        }
        if self.rnn.is_some() {
            let input = if self.kind == HeadKind::TextCnnBiGru {
                let maps =
                    textcnn::maps_forward(x, lengths, len, self.d, self.filters, &self.convs());
                sig.extend(maps.iter().map(|&m| (m > 0.0) as usize));
                maps
            } else {
                x.to_vec()
            };
            let out = r::rnn::forward(&self.rnn_params(), &input, lengths, len);
            let width = 2 * self.hidden;
            let ones = vec![1.0; batch * width];
            let dpos = seqpool::backward(&out, lengths, len, width, self.pool, 2, &ones);
            sig.extend(dpos.iter().map(|&v| (v != 0.0) as usize));
            parts.push((
                seqpool::forward(&out, lengths, len, width, self.pool, 2),
                width,
            ));
        }
        if self.kind == HeadKind::Paper {
            parts.push((s.to_vec(), self.d));
        }
        let total: usize = parts.iter().map(|p| p.1).sum();
        let mut f = vec![0.0; batch * total];
        let mut col = 0;
        for (v, w) in &parts {
            for b in 0..batch {
                f[b * total + col..b * total + col + w].copy_from_slice(&v[b * w..(b + 1) * w]);
            }
            col += w;
        }
        (f, sig)
    }

    fn logits(&self, x: &[f64], s: &[f64], lengths: &[i32], len: usize) -> (Vec<f64>, Vec<usize>) {
        let (f, sig) = self.features(x, s, lengths, len);
        let f = r::dropout(&f, self.p, self.seed);
        let n = f.len() / lengths.len();
        let mut y = vec![0.0; lengths.len() * self.classes];
        for b in 0..lengths.len() {
            for k in 0..self.classes {
                y[b * self.classes + k] = self.b[k]
                    + (0..n)
                        .map(|j| f[b * n + j] * self.w[k * n + j])
                        .sum::<f64>();
            }
        }
        (y, sig)
    }
}

/// The piecewise numeric gradient as a vector; an element with a kink on both sides is NaN,
/// which fails the check loudly rather than passing unexamined.
fn numeric_gradient<S: PartialEq>(f: impl Fn(&[f64]) -> (f64, S), x: &[f64], h: f64) -> Vec<f64> {
    super::numeric_gradient_piecewise(f, x, h)
        .into_iter()
        .map(|g| g.unwrap_or(f64::NAN))
        .collect()
}

fn head_for(dev: &Device, kind: HeadKind, pool: Pool, rng: &mut Rng) -> Result<Head> {
    let mut c = HeadConfig::new(kind, 5, 3);
    c.textcnn_filters = 3;
    c.textcnn_widths = vec![2, 3];
    c.rnn_hidden = 4;
    c.pool = pool;
    c.dropout = 0.25;
    Head::new(dev, c, rng)
}

const LENGTHS: [i32; 3] = [5, 2, 4];
const LEN: usize = 5;

pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    // The reference composition's gradient is the kernels' (checked below); here the kernels'
    // gradient of the whole head is held against finite differences of the f64 composition.
    let dev = Device::simt(crate::Schedule::Forward);
    KINDS
        .iter()
        .map(|&(kind, pool)| {
            let mut run = || -> Result<f64> {
                let mut head = head_for(&dev, kind, pool, rng)?;
                let seed = rng.next_u64();
                let refh = RefHead::from(&head, seed)?;
                let x = rng.normals(LENGTHS.len() * LEN * 5, 1.0);
                let s = rng.normals(LENGTHS.len() * 5, 1.0);
                let w = rng.normals(LENGTHS.len() * 3, 1.0);
                let sentence = dev.upload(&to_f32(&s), "s")?;
                head.forward(
                    &dev.upload(&to_f32(&x), "x")?,
                    &LENGTHS,
                    LEN,
                    Some(&sentence),
                    Some(seed),
                )?;
                let g = head.backward(&dev.upload(&to_f32(&w), "w")?)?;
                let f = |xv: &[f64], sv: &[f64]| {
                    let (y, sig) = refh.logits(xv, sv, &LENGTHS, LEN);
                    (weighted_sum(&y, &w), sig)
                };
                let mut err = 0.0;
                if let Some(dx) = g.tokens {
                    err = worst(
                        err,
                        relative_error(&dx.to_host()?, &numeric_gradient(|v| f(v, &s), &x, 1e-4)),
                    );
                }
                if let Some(ds) = g.sentence {
                    err = worst(
                        err,
                        relative_error(&ds.to_host()?, &numeric_gradient(|v| f(&x, v), &s, 1e-4)),
                    );
                }
                Ok(err)
            };
            Row {
                op: "head".into(),
                check: "gradient",
                device: "kernels vs f64 differences".into(),
                sizes: format!("{kind:?} pool={pool:?}"),
                error: run().unwrap_or(f64::NAN),
                // fp32 gradients judged against f64 differences: the kernel tolerance applies.
                tolerance: KERNEL_TOLERANCE.max(GRADIENT_TOLERANCE),
            }
        })
        .collect()
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (kind, pool) in KINDS {
        let mut head = head_for(dev, kind, pool, rng)?;
        let seed = rng.next_u64();
        let refh = RefHead::from(&head, seed)?;
        let x = rng.normals(LENGTHS.len() * LEN * 5, 1.0);
        let s = rng.normals(LENGTHS.len() * 5, 1.0);
        let sentence = dev.upload(&to_f32(&s), "s")?;
        let mut err = 0.0;
        for training in [false, true] {
            let seed = training.then_some(seed);
            let logits = head.forward(
                &dev.upload(&to_f32(&x), "x")?,
                &LENGTHS,
                LEN,
                Some(&sentence),
                seed,
            )?;
            let want = if training {
                refh.logits(&x, &s, &LENGTHS, LEN).0
            } else {
                RefHead {
                    p: 0.0,
                    ..RefHead::from(&head, 0)?
                }
                .logits(&x, &s, &LENGTHS, LEN)
                .0
            };
            err = worst(err, relative_error(&logits.to_host()?, &want));
            head.backward(&dev.upload(&vec![1.0f32; LENGTHS.len() * 3], "dlogits")?)?;
        }
        rows.push(Row {
            op: "head".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("{kind:?} pool={pool:?} B=3 L=5 D=5 K=3"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows)
}
