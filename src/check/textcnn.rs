//! Registry checks of the Text-CNN layer: the f64 reference against finite differences, and
//! the layer's kernels against the reference (outputs, dx, dW, db) at awkward shapes.

use super::{
    finite_difference_piecewise, relative_error, to_f32, weighted_sum, worst, Row,
    GRADIENT_TOLERANCE, KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::textcnn::{TextCnn, TextCnnConfig};
use crate::reference::textcnn::{self as r, Conv};
use crate::rng::Rng;

/// (batch, len, channels, filters, widths, lengths): length 1, lengths all different, shorter
/// than a width, channels and filters not multiples of anything.
/// (batch, len, channels, filters, widths, lengths)
type Case = (usize, usize, usize, usize, Vec<usize>, Vec<i32>);

fn cases() -> Vec<Case> {
    vec![
        (1, 1, 3, 2, vec![2], vec![1]),
        (3, 7, 5, 4, vec![2, 3, 4], vec![7, 1, 4]),
        (4, 9, 13, 7, vec![3, 5], vec![2, 9, 5, 8]),
        (2, 33, 37, 33, vec![2, 3, 4], vec![33, 17]),
    ]
}

struct Params {
    weights: Vec<Vec<f64>>,
    biases: Vec<Vec<f64>>,
}

fn params(rng: &mut Rng, c: usize, f: usize, widths: &[usize]) -> Params {
    Params {
        weights: widths
            .iter()
            .map(|&w| rng.normals(f * c * w, 0.5))
            .collect(),
        biases: widths.iter().map(|_| rng.normals(f, 0.5)).collect(),
    }
}

fn convs<'a>(p: &'a Params, widths: &[usize]) -> Vec<Conv<'a>> {
    widths
        .iter()
        .enumerate()
        .map(|(i, &width)| Conv {
            width,
            weight: &p.weights[i],
            bias: &p.biases[i],
        })
        .collect()
}

/// Max and ReLU make the loss piecewise linear: differences are taken within one linear piece
/// (the winning windows are the piece's signature), where they are exact.
pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    cases()
        .into_iter()
        .take(3)
        .map(|(b, l, c, f, widths, lengths)| {
            let p = params(rng, c, f, &widths);
            let x = rng.normals(b * l * c, 1.0);
            let w = rng.normals(b * f * widths.len(), 1.0);
            let (dx, grads) = r::backward(&x, &lengths, l, c, f, &convs(&p, &widths), &w);
            let eval = |x: &[f64], q: &Params| {
                let (pooled, winners) = r::forward(x, &lengths, l, c, f, &convs(q, &widths));
                (weighted_sum(&pooled, &w), winners)
            };
            let mut err = finite_difference_piecewise(|v| eval(v, &p), &x, &dx, 1e-4).worst_error;
            for (i, (dw, db)) in grads.iter().enumerate() {
                let with_weight = |v: &[f64]| {
                    let mut q = Params {
                        weights: p.weights.clone(),
                        biases: p.biases.clone(),
                    };
                    q.weights[i] = v.to_vec();
                    eval(&x, &q)
                };
                err = worst(
                    err,
                    finite_difference_piecewise(with_weight, &p.weights[i], dw, 1e-4).worst_error,
                );
                let with_bias = |v: &[f64]| {
                    let mut q = Params {
                        weights: p.weights.clone(),
                        biases: p.biases.clone(),
                    };
                    q.biases[i] = v.to_vec();
                    eval(&x, &q)
                };
                err = worst(
                    err,
                    finite_difference_piecewise(with_bias, &p.biases[i], db, 1e-4).worst_error,
                );
            }
            Row {
                op: "textcnn".into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("B={b} L={l} C={c} F={f} widths={widths:?}"),
                error: err,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (b, l, c, f, widths, lengths) in cases() {
        let p = params(rng, c, f, &widths);
        let x = rng.normals(b * l * c, 1.0);
        let dpooled = rng.normals(b * f * widths.len(), 1.0);
        let (want, _) = r::forward(&x, &lengths, l, c, f, &convs(&p, &widths));
        let (want_dx, want_grads) =
            r::backward(&x, &lengths, l, c, f, &convs(&p, &widths), &dpooled);
        let host: Vec<_> = p
            .weights
            .iter()
            .zip(&p.biases)
            .map(|(w, b)| (to_f32(w), to_f32(b)))
            .collect();
        let config = TextCnnConfig {
            channels: c,
            filters: f,
            widths: widths.clone(),
        };
        let mut layer = TextCnn::from_host(dev, config, &host)?;
        let pooled = layer.forward(&dev.upload(&to_f32(&x), "x")?, &lengths, l)?;
        let mut err = relative_error(&pooled.to_host()?, &want);
        let dx = layer.backward(&dev.upload(&to_f32(&dpooled), "dpooled")?)?;
        err = worst(err, relative_error(&dx.to_host()?, &want_dx));
        for (i, (dw, db)) in want_grads.iter().enumerate() {
            err = worst(err, relative_error(&layer.weight_grads[i].to_host()?, dw));
            err = worst(err, relative_error(&layer.bias_grads[i].to_host()?, db));
        }
        rows.push(Row {
            op: "textcnn".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("B={b} L={l} C={c} F={f} widths={widths:?}"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows)
}
