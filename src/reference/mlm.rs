//! BERT's masked-language-model head in f64 (transformers' BertOnlyMLMHead), applied only to
//! the gathered masked rows: x = hidden[positions]; t = LayerNorm(GELU(x W^T + b));
//! logits = t E^T + bias, with E the word embeddings (tied); the loss is the mean
//! cross-entropy over the gathered rows, as BertForMaskedLM's over its non-ignored labels.

use super::loss::{loss_and_grad, LossSpec};
use super::{
    gelu_backward, gelu_forward, gemm, gemm_backward, layernorm_backward, layernorm_forward,
};
use crate::ops::Gemm;

/// The head's parameters (transformers' names: cls.predictions.transform.dense.{weight,bias},
/// cls.predictions.transform.LayerNorm.{weight,bias}, cls.predictions.bias) and the tied
/// word embeddings [vocab, hidden].
#[derive(Clone, Debug)]
pub struct MlmParams {
    pub hidden: usize,
    pub vocab: usize,
    pub eps: f64,
    pub dense_weight: Vec<f64>,
    pub dense_bias: Vec<f64>,
    pub norm_weight: Vec<f64>,
    pub norm_bias: Vec<f64>,
    pub decoder_bias: Vec<f64>,
    pub word_embeddings: Vec<f64>,
}

/// Gradients of the loss, shaped like their parameters; `hidden` like the hidden states.
#[derive(Clone, Debug)]
pub struct MlmGrads {
    pub hidden: Vec<f64>,
    pub dense_weight: Vec<f64>,
    pub dense_bias: Vec<f64>,
    pub norm_weight: Vec<f64>,
    pub norm_bias: Vec<f64>,
    pub decoder_bias: Vec<f64>,
    pub word_embeddings: Vec<f64>,
}

fn gather(hidden: &[f64], positions: &[i32], h: usize) -> Vec<f64> {
    positions
        .iter()
        .flat_map(|&p| hidden[p as usize * h..(p as usize + 1) * h].iter().copied())
        .collect()
}

/// The loss and every gradient. `hidden` is [rows, hidden]; `positions` index its rows.
pub fn mlm_loss_and_grads(
    p: &MlmParams,
    hidden: &[f64],
    positions: &[i32],
    labels: &[i32],
) -> (f64, MlmGrads) {
    let (h, v, m) = (p.hidden, p.vocab, positions.len());
    let x = gather(hidden, positions, h);
    let dense = Gemm::new(m, h, h, false, true);
    let mut pre = vec![0.0; m * h];
    gemm(&dense, &x, &p.dense_weight, &mut pre, Some(&p.dense_bias));
    let act = gelu_forward(&pre);
    let normed = layernorm_forward(&act, &p.norm_weight, &p.norm_bias, h, p.eps);
    let decode = Gemm::new(m, v, h, false, true);
    let mut logits = vec![0.0; m * v];
    gemm(
        &decode,
        &normed,
        &p.word_embeddings,
        &mut logits,
        Some(&p.decoder_bias),
    );
    let spec = LossSpec {
        classes: v,
        labels,
        row_weight: None,
        fixed_norm: Some(m as f64),
        soft_targets: None,
        focal: None,
    };
    let (loss, dlogits) = loss_and_grad(&spec, &logits);
    let (dnormed, dword, dbias) =
        gemm_backward(&decode, &normed, &p.word_embeddings, &dlogits, m * h, v * h);
    let (dact, dnorm_w, dnorm_b) = layernorm_backward(&act, &p.norm_weight, &dnormed, h, p.eps);
    let dpre = gelu_backward(&pre, &dact);
    let (dx, ddense_w, ddense_b) = gemm_backward(&dense, &x, &p.dense_weight, &dpre, m * h, h * h);
    let mut dhidden = vec![0.0; hidden.len()];
    for (k, &pos) in positions.iter().enumerate() {
        for c in 0..h {
            dhidden[pos as usize * h + c] += dx[k * h + c];
        }
    }
    (
        loss,
        MlmGrads {
            hidden: dhidden,
            dense_weight: ddense_w,
            dense_bias: ddense_b,
            norm_weight: dnorm_w,
            norm_bias: dnorm_b,
            decoder_bias: dbias,
            word_embeddings: dword,
        },
    )
}
