//! Registry checks of the BERT encoder as a whole (its ops have their own entries): the f64
//! reference's backward against finite differences on a sample of parameters, and the
//! encoder's kernels against the reference (outputs and every parameter gradient), GELU and
//! ReLU, with padding, dropout off.

use super::{
    finite_difference_piecewise, relative_error, weighted_sum, worst, Row, GRADIENT_TOLERANCE,
    KERNEL_TOLERANCE,
};
use crate::device::Device;
use crate::error::Result;
use crate::model::bert::{parameter_shapes, BertConfig, BertEncoder};
use crate::reference::bert as rb;
use crate::rng::Rng;

fn config(act: &str) -> BertConfig {
    BertConfig {
        vocab_size: 23,
        hidden_size: 12,
        num_hidden_layers: 2,
        num_attention_heads: 3,
        intermediate_size: 20,
        hidden_act: act.into(),
        layer_norm_eps: 1e-5,
        max_position_embeddings: 9,
        type_vocab_size: 2,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        pad_token_id: 0,
    }
}

/// Random parameters (LayerNorm weights near 1), inputs with padding.
fn setup(rng: &mut Rng, c: &BertConfig) -> (rb::Params, Vec<i32>, Vec<i32>, Vec<i32>, usize) {
    let params = parameter_shapes(c)
        .into_iter()
        .map(|(n, s)| {
            let count: usize = s.iter().product();
            let v = rng.normals(count, 0.3);
            let v = if n.ends_with("LayerNorm.weight") {
                v.iter().map(|x| 1.0 + x).collect()
            } else {
                v
            };
            (n, v)
        })
        .collect();
    let (batch, len) = (2, 7);
    let lengths = [7usize, 3];
    let mut ids = vec![0; batch * len];
    let mut mask = vec![0; batch * len];
    let mut types = vec![0; batch * len];
    for b in 0..batch {
        for t in 0..lengths[b] {
            ids[b * len + t] = 1 + (rng.next_u64() % (c.vocab_size as u64 - 1)) as i32;
            mask[b * len + t] = 1;
            types[b * len + t] = (t >= lengths[b] / 2) as i32;
        }
    }
    (params, ids, mask, types, batch)
}

pub fn gradient(rng: &mut Rng) -> Vec<Row> {
    ["gelu", "relu"]
        .iter()
        .map(|act| {
            let c = config(act);
            let (params, ids, mask, types, batch) = setup(rng, &c);
            let len = ids.len() / batch;
            let r1 = rng.normals(batch * len * c.hidden_size, 1.0);
            let r2 = rng.normals(batch * c.hidden_size, 1.0);
            let g = rb::backward(&c, &params, &ids, &mask, &types, batch, &r1, &r2);
            let mut err = 0.0;
            for name in [
                "encoder.layer.0.attention.self.query.bias",
                "encoder.layer.1.intermediate.dense.bias",
                "embeddings.LayerNorm.weight",
                "pooler.dense.bias",
                "encoder.layer.0.output.LayerNorm.bias",
            ] {
                // The loss with the ReLU sign pattern it ran on: a stencil that steps across a
                // kink is one-sided or skipped, never compared (a flaky failure otherwise).
                let f = |v: &[f64]| {
                    let mut p = params.clone();
                    p.insert(name.to_string(), v.to_vec());
                    let t = rb::forward(&c, &p, &ids, &mask, &types, batch);
                    let loss = weighted_sum(&t.hidden, &r1) + weighted_sum(&t.pooled, &r2);
                    let piece = if *act == "relu" {
                        t.activation_signs()
                    } else {
                        Vec::new()
                    };
                    (loss, piece)
                };
                // ReLU's kinks want a small step; GELU is smooth.
                let h = if *act == "relu" { 1e-5 } else { 1e-3 };
                err = worst(
                    err,
                    finite_difference_piecewise(f, &params[name], &g[name], h).worst_error,
                );
            }
            Row {
                op: "bert_encoder".into(),
                check: "gradient",
                device: "f64 reference".into(),
                sizes: format!("{act} B=2 L=7 H=12 heads=3 layers=2 (5 tensors)"),
                error: err,
                tolerance: GRADIENT_TOLERANCE,
            }
        })
        .collect()
}

pub fn kernel(dev: &Device, rng: &mut Rng) -> Result<Vec<Row>> {
    let mut rows = Vec::new();
    for act in ["gelu", "relu"] {
        let c = config(act);
        let (params, ids, mask, types, batch) = setup(rng, &c);
        let len = ids.len() / batch;
        let path = std::env::temp_dir().join(format!(
            "emrclass-check-bert-{}-{act}.safetensors",
            std::process::id()
        ));
        let f32s: Vec<(String, Vec<usize>, Vec<f32>)> = parameter_shapes(&c)
            .into_iter()
            .map(|(n, s)| {
                let v = params[&n].iter().map(|&x| x as f32).collect();
                (n, s, v)
            })
            .collect();
        let tensors: Vec<(&str, Vec<usize>, &[f32])> = f32s
            .iter()
            .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
            .collect();
        crate::weights::write_tensors(&path, &tensors)?;
        let mut enc = BertEncoder::load(dev, c.clone(), &path)?;
        let _ = std::fs::remove_file(&path);
        // The reference sees the same fp32-rounded parameters.
        let params: rb::Params = f32s
            .iter()
            .map(|(n, _, v)| (n.clone(), v.iter().map(|&x| x as f64).collect()))
            .collect();
        let r1 = rng.normals(batch * len * c.hidden_size, 1.0);
        let r2 = rng.normals(batch * c.hidden_size, 1.0);
        let tape = rb::forward(&c, &params, &ids, &mask, &types, batch);
        let (hidden, pooled) = enc.forward(&ids, &mask, Some(&types), batch, None)?;
        let mut err = worst(
            relative_error(&hidden.to_host()?, &tape.hidden),
            relative_error(&pooled.to_host()?, &tape.pooled),
        );
        let g = rb::backward(&c, &params, &ids, &mask, &types, batch, &r1, &r2);
        let up = |v: &[f64]| dev.upload(&super::to_f32(v), "upstream");
        enc.backward(Some(&up(&r1)?), Some(&up(&r2)?))?;
        let largest = g
            .values()
            .map(|v| v.iter().map(|x| x * x).sum::<f64>().sqrt())
            .fold(0.0, f64::max);
        for p in &enc.params {
            let got = p.grad.to_host()?;
            let want = &g[&p.name];
            // Against its own norm; but the key biases' true gradient is 0 (softmax ignores a
            // shift shared by a query's scores), so what the kernels return there is fp32
            // noise, judged against the largest gradient (a wrong key-bias gradient would be of
            // its order; the noise is ~1e-8 of it).
            let diff: f64 = got
                .iter()
                .zip(want)
                .map(|(a, b)| (*a as f64 - b).powi(2))
                .sum::<f64>()
                .sqrt();
            let norm = want.iter().map(|x| x * x).sum::<f64>().sqrt();
            let scale = if p.name.ends_with("attention.self.key.bias") {
                largest
            } else {
                norm
            };
            let e = if got.iter().any(|v| v.is_nan()) {
                f64::NAN
            } else {
                diff / scale
            };
            err = worst(err, e);
        }
        rows.push(Row {
            op: "bert_encoder".into(),
            check: "kernel",
            device: dev.describe(),
            sizes: format!("{act} B=2 L=7 H=12 heads=3 layers=2, all gradients"),
            error: err,
            tolerance: KERNEL_TOLERANCE,
        });
    }
    Ok(rows)
}
