//! Registry checks of the bidirectional GRU and LSTM: the f64 reference against finite
//! differences, and the layer's kernels against the reference (out, dx and all eight tensors'
//! gradients) at awkward shapes: length-1 sequences, every length different, a batch larger
//! than one block's chunk, hidden sizes not a multiple of 32.

use super::{
    finite_difference, relative_error, to_f32, weighted_sum, worst, Row, GRADIENT_TOLERANCE,
    KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::rnn::{BiRnn, Cell, RnnTensors};
use crate::reference::rnn::{self as r, RnnParams};
use crate::rng::Rng;

/// (batch, len, input, hidden, lengths)
fn cases() -> Vec<(usize, usize, usize, usize, Vec<i32>)> {
    vec![
        (1, 1, 3, 2, vec![1]),
        (3, 5, 4, 5, vec![5, 1, 3]),
        (5, 6, 5, 3, vec![6, 2, 6, 4, 1]),
        (2, 9, 7, 33, vec![9, 4]),
    ]
}

struct Params {
    w_ih: Vec<f64>,
    w_hh: Vec<f64>,
    b_ih: Vec<f64>,
    b_hh: Vec<f64>,
}

fn params(rng: &mut Rng, cell: Cell, input: usize, hidden: usize) -> Params {
    let gh = cell.gates() * hidden;
    Params {
        w_ih: rng.normals(2 * gh * input, 0.5),
        w_hh: rng.normals(2 * gh * hidden, 0.5),
        b_ih: rng.normals(2 * gh, 0.5),
        b_hh: rng.normals(2 * gh, 0.5),
    }
}

fn view<'a>(p: &'a Params, cell: Cell, input: usize, hidden: usize) -> RnnParams<'a> {
    RnnParams {
        cell,
        input,
        hidden,
        w_ih: &p.w_ih,
        w_hh: &p.w_hh,
        b_ih: &p.b_ih,
        b_hh: &p.b_hh,
    }
}

fn name(cell: Cell) -> &'static str {
    match cell {
        Cell::Gru => "bigru",
        Cell::Lstm => "bilstm",
    }
}

pub fn gradient(cell: Cell, rng: &mut Rng) -> Vec<Row> {
    cases()
        .into_iter()
        .take(3)
        .map(|(b, l, i, h, lengths)| {
            let p = params(rng, cell, i, h);
            let x = rng.normals(b * l * i, 1.0);
            let w = rng.normals(b * l * 2 * h, 1.0);
            let g = r::backward(&view(&p, cell, i, h), &x, &lengths, l, &w);
            let loss = |q: &Params, x: &[f64]| {
                weighted_sum(&r::forward(&view(q, cell, i, h), x, &lengths, l), &w)
            };
            let mut err = finite_difference(|v| loss(&p, v), &x, &g.dx, 1e-3).worst_error;
            let with = |f: &dyn Fn(&mut Params, &[f64]), v: &[f64]| {
                let mut q = Params {
                    w_ih: p.w_ih.clone(),
                    w_hh: p.w_hh.clone(),
                    b_ih: p.b_ih.clone(),
                    b_hh: p.b_hh.clone(),
                };
                f(&mut q, v);
                loss(&q, &x)
            };
            err = worst(
                err,
                finite_difference(
                    |v| with(&|q, v| q.w_ih = v.to_vec(), v),
                    &p.w_ih,
                    &g.w_ih,
                    1e-3,
                )
                .worst_error,
            );
            err = worst(
                err,
                finite_difference(
                    |v| with(&|q, v| q.w_hh = v.to_vec(), v),
                    &p.w_hh,
                    &g.w_hh,
                    1e-3,
                )
                .worst_error,
            );
            err = worst(
                err,
                finite_difference(
                    |v| with(&|q, v| q.b_ih = v.to_vec(), v),
                    &p.b_ih,
                    &g.b_ih,
                    1e-3,
                )
                .worst_error,
            );
            err = worst(
                err,
                finite_difference(
                    |v| with(&|q, v| q.b_hh = v.to_vec(), v),
                    &p.b_hh,
                    &g.b_hh,
                    1e-3,
                )
                .worst_error,
            );
            Row {
                op: name(cell).into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("B={b} L={l} I={i} H={h} lengths={lengths:?}"),
                error: err,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

fn split(v: &[f64]) -> [Vec<f32>; 2] {
    let half = v.len() / 2;
    [to_f32(&v[..half]), to_f32(&v[half..])]
}

pub fn kernel(cell: Cell, dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for (b, l, i, h, lengths) in cases() {
        let p = params(rng, cell, i, h);
        let x = rng.normals(b * l * i, 1.0);
        let dout = rng.normals(b * l * 2 * h, 1.0);
        let want = r::forward(&view(&p, cell, i, h), &x, &lengths, l);
        let g = r::backward(&view(&p, cell, i, h), &x, &lengths, l, &dout);
        let t = RnnTensors {
            weight_ih: split(&p.w_ih),
            weight_hh: split(&p.w_hh),
            bias_ih: split(&p.b_ih),
            bias_hh: split(&p.b_hh),
        };
        let mut layer = BiRnn::from_host(dev, cell, i, h, &t)?;
        let out = layer
            .forward(&dev.upload(&to_f32(&x), "x")?, &lengths, l)?
            .to_host()?;
        let mut err = relative_error(&out, &want);
        let dx = layer.backward(&dev.upload(&to_f32(&dout), "dout")?)?;
        err = worst(err, relative_error(&dx.to_host()?, &g.dx));
        for (k, want) in [&g.w_ih, &g.w_hh, &g.b_ih, &g.b_hh].iter().enumerate() {
            err = worst(err, relative_error(&layer.grads[k].to_host()?, want));
        }
        rows.push(Row {
            op: name(cell).into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("B={b} L={l} I={i} H={h} lengths={lengths:?}"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows)
}
