//! Registry checks of the masked-language-model head (model::mlm_head): the f64 reference's
//! gradients (hidden states, every head parameter, the tied word embeddings) against finite
//! differences, and the head's kernels against the reference, the tied gradient added onto an
//! existing encoder share as pretraining adds it.

use super::{
    finite_difference, relative_error, to_f32, worst, Row, GRADIENT_TOLERANCE, KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::mlm_head::{MlmHead, MlmHostParams};
use crate::reference::mlm::{mlm_loss_and_grads, MlmParams};
use crate::rng::Rng;

/// (hidden, vocab, hidden rows, masked rows): one masked row; sizes off every tile; a row
/// gathered twice (the last case repeats a position).
const CASES: [(usize, usize, usize, usize); 4] = [
    (4, 7, 3, 1),
    (6, 11, 9, 4),
    (33, 257, 20, 7),
    (64, 1001, 40, 13),
];

fn params(rng: &mut Rng, h: usize, v: usize) -> MlmParams {
    let near_one = |rng: &mut Rng| rng.normals(h, 0.2).iter().map(|x| 1.0 + x).collect();
    MlmParams {
        hidden: h,
        vocab: v,
        eps: 1e-12,
        dense_weight: rng.normals(h * h, 0.5),
        dense_bias: rng.normals(h, 0.5),
        norm_weight: near_one(rng),
        norm_bias: rng.normals(h, 0.3),
        decoder_bias: rng.normals(v, 0.3),
        word_embeddings: rng.normals(v * h, 0.5),
    }
}

/// Distinct masked rows, except that a case with more than 8 repeats its first one.
fn positions(rng: &mut Rng, rows: usize, m: usize) -> Vec<i32> {
    let mut all: Vec<i32> = (0..rows as i32).collect();
    rng.shuffle(&mut all);
    let mut p = all[..m].to_vec();
    if m > 8 {
        p[m - 1] = p[0];
    }
    p
}

fn labels(rng: &mut Rng, v: usize, m: usize) -> Vec<i32> {
    (0..m).map(|_| (rng.next_u64() % v as u64) as i32).collect()
}

pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    CASES[..2]
        .iter()
        .map(|&(h, v, rows, m)| {
            let p = params(rng, h, v);
            let hidden = rng.normals(rows * h, 1.0);
            let pos = positions(rng, rows, m);
            let lab = labels(rng, v, m);
            let (_, g) = mlm_loss_and_grads(&p, &hidden, &pos, &lab);
            let loss_with = |edit: &dyn Fn(&mut MlmParams, &mut Vec<f64>)| {
                let (mut q, mut x) = (p.clone(), hidden.clone());
                edit(&mut q, &mut x);
                mlm_loss_and_grads(&q, &x, &pos, &lab).0
            };
            let mut err = finite_difference(
                |x| loss_with(&|_, hx| hx.copy_from_slice(x)),
                &hidden,
                &g.hidden,
                1e-4,
            )
            .worst_error;
            type Field = fn(&mut MlmParams) -> &mut Vec<f64>;
            let fields: [(Field, &Vec<f64>, &Vec<f64>); 6] = [
                (|q| &mut q.dense_weight, &p.dense_weight, &g.dense_weight),
                (|q| &mut q.dense_bias, &p.dense_bias, &g.dense_bias),
                (|q| &mut q.norm_weight, &p.norm_weight, &g.norm_weight),
                (|q| &mut q.norm_bias, &p.norm_bias, &g.norm_bias),
                (|q| &mut q.decoder_bias, &p.decoder_bias, &g.decoder_bias),
                (
                    |q| &mut q.word_embeddings,
                    &p.word_embeddings,
                    &g.word_embeddings,
                ),
            ];
            for (field, at, analytic) in fields {
                let chk = finite_difference(
                    |x| loss_with(&|q, _| field(q).copy_from_slice(x)),
                    at,
                    analytic,
                    1e-4,
                );
                err = worst(err, chk.worst_error);
            }
            Row {
                op: "mlm_head".into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("hidden={h} vocab={v} rows={rows} masked={m}"),
                error: err,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut out = Vec::new();
    for (h, v, rows, m) in CASES {
        let p = params(rng, h, v);
        let hidden = rng.normals(rows * h, 1.0);
        let pos = positions(rng, rows, m);
        let lab = labels(rng, v, m);
        let (loss, g) = mlm_loss_and_grads(&p, &hidden, &pos, &lab);
        let f = |x: &Vec<f64>| to_f32(x);
        let (dw, db, nw, nb, vb) = (
            f(&p.dense_weight),
            f(&p.dense_bias),
            f(&p.norm_weight),
            f(&p.norm_bias),
            f(&p.decoder_bias),
        );
        let host = MlmHostParams {
            dense_weight: &dw,
            dense_bias: &db,
            norm_weight: &nw,
            norm_bias: &nb,
            decoder_bias: &vb,
        };
        let mut head = MlmHead::from_host(dev, h, v, p.eps as f32, &host)?;
        let hidden_d = dev.upload(&to_f32(&hidden), "hidden")?;
        let table = dev.upload(&to_f32(&p.word_embeddings), "word embeddings")?;
        let got = head.forward_loss(&hidden_d, rows, &pos, &lab, &table)?;
        let mut err = relative_error(&[got], &[loss]);
        let dhidden = head.backward(&table)?;
        // The encoder's share already in the tied gradient; the head adds its own.
        let encoder_share = rng.normals(v * h, 1.0);
        let mut table_grad = dev.upload(&to_f32(&encoder_share), "word embedding grad")?;
        head.add_decoder_gradient(&mut table_grad)?;
        let tied: Vec<f64> = encoder_share
            .iter()
            .zip(&g.word_embeddings)
            .map(|(a, b)| a + b)
            .collect();
        for (buffer, reference) in [
            (&dhidden, &g.hidden),
            (&head.dense.weight_grad, &g.dense_weight),
            (&head.dense.bias_grad, &g.dense_bias),
            (&head.norm_weight_grad, &g.norm_weight),
            (&head.norm_bias_grad, &g.norm_bias),
            (&head.decoder_bias_grad, &g.decoder_bias),
            (&table_grad, &tied),
        ] {
            err = worst(err, relative_error(&buffer.to_host()?, reference));
        }
        out.push(Row {
            op: "mlm_head".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("hidden={h} vocab={v} rows={rows} masked={m}"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(out)
}
