//! f64 reference of the BERT encoder (model::bert), composed of the other references: plain
//! loops, full attention matrices, no dropout. Parameters by HF name (no prefix).

use std::collections::HashMap;

use super::attention::{self as attn, Attention};
use crate::model::bert::BertConfig;

pub type Params = HashMap<String, Vec<f64>>;

/// y = x W^T + b for x [rows, n_in], W [n_out, n_in].
pub(crate) fn linear(x: &[f64], w: &[f64], b: &[f64], n_in: usize, n_out: usize) -> Vec<f64> {
    let rows = x.len() / n_in;
    let mut y = vec![0.0; rows * n_out];
    for r in 0..rows {
        for o in 0..n_out {
            y[r * n_out + o] = b[o]
                + (0..n_in)
                    .map(|i| x[r * n_in + i] * w[o * n_in + i])
                    .sum::<f64>();
        }
    }
    y
}

/// (dx, dW, db) of `linear`.
pub(crate) fn linear_backward(
    x: &[f64],
    w: &[f64],
    dy: &[f64],
    n_in: usize,
    n_out: usize,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let rows = x.len() / n_in;
    let (mut dx, mut dw, mut db) = (vec![0.0; x.len()], vec![0.0; w.len()], vec![0.0; n_out]);
    for r in 0..rows {
        for o in 0..n_out {
            let g = dy[r * n_out + o];
            db[o] += g;
            for i in 0..n_in {
                dw[o * n_in + i] += g * x[r * n_in + i];
                dx[r * n_in + i] += g * w[o * n_in + i];
            }
        }
    }
    (dx, dw, db)
}

/// Backward of the linear layer `{prefix}.weight/bias`: records both gradients, returns dx.
fn dense_backward(
    g: &mut Params,
    p: &Params,
    prefix: &str,
    x: &[f64],
    dy: &[f64],
    n_in: usize,
    n_out: usize,
) -> Vec<f64> {
    let (dx, dw, db) = linear_backward(x, &p[&format!("{prefix}.weight")], dy, n_in, n_out);
    g.insert(format!("{prefix}.weight"), dw);
    g.insert(format!("{prefix}.bias"), db);
    dx
}

/// Backward of the LayerNorm `{prefix}.weight/bias`: records both gradients, returns dx.
fn layernorm_backward(
    g: &mut Params,
    p: &Params,
    prefix: &str,
    x: &[f64],
    dy: &[f64],
    cols: usize,
    eps: f64,
) -> Vec<f64> {
    let (dx, dgamma, dbeta) =
        super::layernorm_backward(x, &p[&format!("{prefix}.weight")], dy, cols, eps);
    g.insert(format!("{prefix}.weight"), dgamma);
    g.insert(format!("{prefix}.bias"), dbeta);
    dx
}

fn add(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

struct Layer {
    input: Vec<f64>,
    q: Vec<f64>,
    k: Vec<f64>,
    v: Vec<f64>,
    context: Vec<f64>,
    ln1_in: Vec<f64>,
    h1: Vec<f64>,
    inter: Vec<f64>,
    act: Vec<f64>,
    ln2_in: Vec<f64>,
}

pub struct Tape {
    emb_sum: Vec<f64>,
    layers: Vec<Layer>,
    pub hidden: Vec<f64>,
    pub pooled: Vec<f64>,
}

fn attention_shape(c: &BertConfig, batch: usize, len: usize) -> Attention {
    let d = c.head_dim();
    Attention {
        batch,
        heads: c.num_attention_heads,
        len,
        head_dim: d,
        stride: c.hidden_size,
        offsets: [0; 3],
        scale: 1.0 / (d as f32).sqrt(),
        dropout: 0.0,
        seed: 0,
    }
}

impl Tape {
    /// Which FFN pre-activations are positive, layer after layer: the piece of ReLU's piecewise
    /// linear function the forward ran on (finite differences must not step across a kink).
    pub fn activation_signs(&self) -> Vec<bool> {
        self.layers
            .iter()
            .flat_map(|l| l.inter.iter().map(|&v| v > 0.0))
            .collect()
    }
}

/// last_hidden_state [B, L, H] and pooler_output [B, H], with what backward needs.
pub fn forward(
    c: &BertConfig,
    p: &Params,
    ids: &[i32],
    mask: &[i32],
    types: &[i32],
    batch: usize,
) -> Tape {
    let (h, i_sz) = (c.hidden_size, c.intermediate_size);
    let len = ids.len() / batch;
    let eps = c.layer_norm_eps;
    let mut emb_sum = vec![0.0; ids.len() * h];
    for (t, (&id, &ty)) in ids.iter().zip(types).enumerate() {
        for k in 0..h {
            emb_sum[t * h + k] = p["embeddings.word_embeddings.weight"][id as usize * h + k]
                + p["embeddings.position_embeddings.weight"][(t % len) * h + k]
                + p["embeddings.token_type_embeddings.weight"][ty as usize * h + k];
        }
    }
    let mut x = super::layernorm_forward(
        &emb_sum,
        &p["embeddings.LayerNorm.weight"],
        &p["embeddings.LayerNorm.bias"],
        h,
        eps,
    );
    let a = attention_shape(c, batch, len);
    let mut layers = Vec::new();
    for l in 0..c.num_hidden_layers {
        let n = |s: &str| format!("encoder.layer.{l}.{s}");
        let proj = |which: &str, x: &[f64]| {
            linear(
                x,
                &p[&n(&format!("attention.self.{which}.weight"))],
                &p[&n(&format!("attention.self.{which}.bias"))],
                h,
                h,
            )
        };
        let (q, k, v) = (proj("query", &x), proj("key", &x), proj("value", &x));
        let context = attn::forward(&a, &q, &k, &v, Some(mask));
        let dense = linear(
            &context,
            &p[&n("attention.output.dense.weight")],
            &p[&n("attention.output.dense.bias")],
            h,
            h,
        );
        let ln1_in = add(&dense, &x);
        let h1 = super::layernorm_forward(
            &ln1_in,
            &p[&n("attention.output.LayerNorm.weight")],
            &p[&n("attention.output.LayerNorm.bias")],
            h,
            eps,
        );
        let inter = linear(
            &h1,
            &p[&n("intermediate.dense.weight")],
            &p[&n("intermediate.dense.bias")],
            h,
            i_sz,
        );
        let act = if c.hidden_act == "relu" {
            inter.iter().map(|v| v.max(0.0)).collect()
        } else {
            super::gelu_forward(&inter)
        };
        let out = linear(
            &act,
            &p[&n("output.dense.weight")],
            &p[&n("output.dense.bias")],
            i_sz,
            h,
        );
        let ln2_in = add(&out, &h1);
        let next = super::layernorm_forward(
            &ln2_in,
            &p[&n("output.LayerNorm.weight")],
            &p[&n("output.LayerNorm.bias")],
            h,
            eps,
        );
        let input = std::mem::replace(&mut x, next);
        layers.push(Layer {
            input,
            q,
            k,
            v,
            context,
            ln1_in,
            h1,
            inter,
            act,
            ln2_in,
        });
    }
    let cls: Vec<f64> = (0..batch)
        .flat_map(|b| x[b * len * h..b * len * h + h].to_vec())
        .collect();
    let pooled = linear(
        &cls,
        &p["pooler.dense.weight"],
        &p["pooler.dense.bias"],
        h,
        h,
    )
    .iter()
    .map(|v| v.tanh())
    .collect();
    Tape {
        emb_sum,
        layers,
        hidden: x,
        pooled,
    }
}

/// Gradients of every parameter for upstream d_hidden [B, L, H] and d_pooled [B, H].
#[allow(clippy::too_many_arguments)]
pub fn backward(
    c: &BertConfig,
    p: &Params,
    ids: &[i32],
    mask: &[i32],
    types: &[i32],
    batch: usize,
    d_hidden: &[f64],
    d_pooled: &[f64],
) -> Params {
    let (h, i_sz) = (c.hidden_size, c.intermediate_size);
    let len = ids.len() / batch;
    let eps = c.layer_norm_eps;
    let tape = forward(c, p, ids, mask, types, batch);
    let mut g = Params::new();
    let mut dx = d_hidden.to_vec();
    // Pooler.
    let cls: Vec<f64> = (0..batch)
        .flat_map(|b| tape.hidden[b * len * h..b * len * h + h].to_vec())
        .collect();
    let dpre: Vec<f64> = d_pooled
        .iter()
        .zip(&tape.pooled)
        .map(|(d, y)| d * (1.0 - y * y))
        .collect();
    let dcls = dense_backward(&mut g, p, "pooler.dense", &cls, &dpre, h, h);
    for b in 0..batch {
        for k in 0..h {
            dx[b * len * h + k] += dcls[b * h + k];
        }
    }
    let a = attention_shape(c, batch, len);
    for (l, ls) in tape.layers.iter().enumerate().rev() {
        let n = |s: &str| format!("encoder.layer.{l}.{s}");
        let d_ln2_in =
            layernorm_backward(&mut g, p, &n("output.LayerNorm"), &ls.ln2_in, &dx, h, eps);
        let d_act = dense_backward(&mut g, p, &n("output.dense"), &ls.act, &d_ln2_in, i_sz, h);
        let d_inter: Vec<f64> = if c.hidden_act == "relu" {
            ls.inter
                .iter()
                .zip(&d_act)
                .map(|(x, d)| if *x > 0.0 { *d } else { 0.0 })
                .collect()
        } else {
            super::gelu_backward(&ls.inter, &d_act)
        };
        let d_h1_ffn = dense_backward(
            &mut g,
            p,
            &n("intermediate.dense"),
            &ls.h1,
            &d_inter,
            h,
            i_sz,
        );
        let d_h1 = add(&d_h1_ffn, &d_ln2_in);
        let d_ln1_in = layernorm_backward(
            &mut g,
            p,
            &n("attention.output.LayerNorm"),
            &ls.ln1_in,
            &d_h1,
            h,
            eps,
        );
        let d_context = dense_backward(
            &mut g,
            p,
            &n("attention.output.dense"),
            &ls.context,
            &d_ln1_in,
            h,
            h,
        );
        let [dq, dk, dv] = attn::backward(&a, &ls.q, &ls.k, &ls.v, Some(mask), &d_context);
        let mut d_input = d_ln1_in.clone(); // the residual path
        for (which, d) in [("query", &dq), ("key", &dk), ("value", &dv)] {
            let dxi = dense_backward(
                &mut g,
                p,
                &n(&format!("attention.self.{which}")),
                &ls.input,
                d,
                h,
                h,
            );
            d_input = add(&d_input, &dxi);
        }
        dx = d_input;
    }
    let d_sum = layernorm_backward(
        &mut g,
        p,
        "embeddings.LayerNorm",
        &tape.emb_sum,
        &dx,
        h,
        eps,
    );
    let mut word = vec![0.0; p["embeddings.word_embeddings.weight"].len()];
    let mut pos = vec![0.0; p["embeddings.position_embeddings.weight"].len()];
    let mut typ = vec![0.0; p["embeddings.token_type_embeddings.weight"].len()];
    for (t, (&id, &ty)) in ids.iter().zip(types).enumerate() {
        for k in 0..h {
            let d = d_sum[t * h + k];
            if id != c.pad_token_id {
                word[id as usize * h + k] += d;
            }
            pos[(t % len) * h + k] += d;
            typ[ty as usize * h + k] += d;
        }
    }
    g.insert("embeddings.word_embeddings.weight".into(), word);
    g.insert("embeddings.position_embeddings.weight".into(), pos);
    g.insert("embeddings.token_type_embeddings.weight".into(), typ);
    g
}
