//! Registry checks of the classifier heads: an f64 composition of the layers' references (the
//! head's wiring: concatenation, dropout mask, linear) against finite differences, and the
//! head's kernels against that composition, for every head kind.

use super::{
    relative_error, to_f32, weighted_sum, worst, Row, GRADIENT_TOLERANCE, KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::heads::{Head, HeadConfig, HeadKind, Pool};
use crate::reference::bert::Params;
use crate::reference::head::{self, HeadShape};
use crate::rng::Rng;

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

/// The head's parameters on the host, in f64, and its shape: the reference's view of it.
struct RefHead {
    shape: HeadShape,
    params: Params,
    seed: u64,
}

impl RefHead {
    fn from(head: &Head, seed: u64) -> Result<RefHead> {
        let mut params = Params::new();
        if let Some(t) = &head.textcnn {
            for (i, (w, b)) in t.weights.iter().zip(&t.biases).enumerate() {
                params.insert(format!("head.textcnn.convs.{i}.weight"), host(w)?);
                params.insert(format!("head.textcnn.convs.{i}.bias"), host(b)?);
            }
        }
        if let Some(n) = &head.rnn {
            for (name, b) in [
                ("weight_ih", &n.w_ih),
                ("weight_hh", &n.w_hh),
                ("bias_ih", &n.b_ih),
                ("bias_hh", &n.b_hh),
            ] {
                params.insert(format!("head.rnn.{name}"), host(b)?);
            }
        }
        params.insert("head.classifier.weight".into(), host(&head.linear.weight)?);
        params.insert("head.classifier.bias".into(), host(&head.linear.bias)?);
        Ok(RefHead {
            shape: HeadShape::of(head),
            params,
            seed,
        })
    }

    /// Logits with dropout (`training`) or without, and the signature of the piece.
    fn logits(
        &self,
        x: &[f64],
        s: &[f64],
        lengths: &[i32],
        len: usize,
        training: bool,
    ) -> (Vec<f64>, Vec<usize>) {
        let seed = training.then_some(self.seed);
        head::forward(&self.shape, &self.params, x, Some(s), lengths, len, seed)
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
                    let (y, sig) = refh.logits(xv, sv, &LENGTHS, LEN, true);
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
            let want = refh.logits(&x, &s, &LENGTHS, LEN, training).0;
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
