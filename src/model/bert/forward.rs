//! The encoder's forward: embeddings, each layer (kept for backward, checkpointed, or dropped
//! at once for inference) and the pooler.

use super::{site_seed, BertEncoder, LayerSaved, LayerState, Saved};
use crate::device::Buffer;
use crate::error::{Error, Result};
use crate::ops::attention::{self, Attention};
use crate::ops::{self, embedding, layernorm, Activation, Epilogue, Gemm};

impl BertEncoder {
    /// `forward` (`keep`: each layer's state for backward, as `self.memory` says) and `infer`
    /// (nothing kept: each layer's activations go as soon as the next layer has its input).
    pub(super) fn run(
        &mut self,
        ids: &[i32],
        attention_mask: &[i32],
        token_types: Option<&[i32]>,
        batch: usize,
        dropout_seed: Option<u64>,
        keep: bool,
    ) -> Result<(&Buffer<f32>, &Buffer<f32>)> {
        let c = self.config.clone();
        let h = c.hidden_size;
        if batch == 0 || !ids.len().is_multiple_of(batch) || attention_mask.len() != ids.len() {
            return Err(Error::Invalid(format!(
                "encoder: {} ids and {} mask values for a batch of {batch}",
                ids.len(),
                attention_mask.len()
            )));
        }
        let len = ids.len() / batch;
        if len > c.max_position_embeddings {
            return Err(Error::Invalid(format!(
                "sequence length {len} is over max_position_embeddings {}",
                c.max_position_embeddings
            )));
        }
        let types = token_types.map_or_else(|| vec![0; ids.len()], |t| t.to_vec());
        if types.len() != ids.len() {
            return Err(Error::Invalid(format!(
                "{} token types for {} ids",
                types.len(),
                ids.len()
            )));
        }
        embedding::check_ids(ids, c.vocab_size, "token id")?;
        embedding::check_ids(&types, c.type_vocab_size, "token type")?;
        let dev = self.params[0].value.device().clone();
        let rows = batch * len;
        let positions: Vec<i32> = (0..rows).map(|i| (i % len) as i32).collect();
        self.unpack("embeddings.")?;
        // Embeddings: word + position + token type, LayerNorm, dropout.
        let gather = |ids: &[i32], table: &str| -> Result<Buffer<f32>> {
            let ids_dev = dev.upload(ids, "embedding ids")?;
            let mut out = dev.alloc::<f32>(rows * h, "embedding")?;
            embedding::forward(&ids_dev, self.value(table), &mut out, h)?;
            Ok(out)
        };
        let (w, p, t) = (
            gather(ids, "embeddings.word_embeddings.weight")?,
            gather(&positions, "embeddings.position_embeddings.weight")?,
            gather(&types, "embeddings.token_type_embeddings.weight")?,
        );
        let mut wp = dev.alloc::<f32>(rows * h, "embedding sum")?;
        ops::add(&w, &p, &mut wp, rows * h)?;
        let mut emb_sum = dev.alloc::<f32>(rows * h, "embedding sum")?;
        ops::add(&wp, &t, &mut emb_sum, rows * h)?;
        drop((w, p, t, wp));
        let eps = c.layer_norm_eps as f32;
        let (mut x, emb_ln) = self.layer_norm(&emb_sum, "embeddings.LayerNorm", rows, eps)?;
        if let Some(seed) = dropout_seed {
            x = dropout(&x, c.hidden_dropout_prob as f32, site_seed(seed, 0, 0))?;
        }
        self.repack("embeddings.")?;
        let mask = dev.upload(attention_mask, "attention mask")?;
        let mut layers = Vec::new();
        for l in 0..c.num_hidden_layers {
            let prefix = format!("encoder.layer.{l}.");
            self.unpack(&prefix)?;
            let (next, saved) = self.layer_forward(l, x, &mask, batch, len, dropout_seed)?;
            self.repack(&prefix)?;
            x = next;
            if !keep {
                continue;
            }
            layers.push(if l >= self.memory.recompute_layers {
                if self.memory.fp16_activations {
                    LayerState::Kept16(Box::new(saved.into_fp16()?))
                } else {
                    LayerState::Kept(Box::new(saved))
                }
            } else if self.memory.fp16_checkpoints {
                let mut half = dev.alloc::<half::f16>(saved.input.len(), "layer input (fp16)")?;
                ops::convert_f32_to_f16(&saved.input, &mut half)?;
                LayerState::Checkpoint16(half)
            } else {
                LayerState::Checkpoint(saved.input)
            });
        }
        // Pooler: tanh(dense(hidden[:, 0])). The [CLS] rows are L * H floats apart.
        self.unpack("pooler.")?;
        let mut pre = dev.alloc::<f32>(batch * h, "pooler")?;
        let g = Gemm {
            lda: len * h,
            ..Gemm::new(batch, h, h, false, true)
        };
        ops::gemm(
            &g,
            &x,
            self.value("pooler.dense.weight"),
            &mut pre,
            Some(self.value("pooler.dense.bias")),
        )?;
        let mut pooled = dev.alloc::<f32>(batch * h, "pooler output")?;
        ops::tanh_forward(&pre, &mut pooled, batch * h)?;
        self.repack("pooler.")?;
        let saved = self.saved.insert(Saved {
            batch,
            len,
            ids: ids.to_vec(),
            positions,
            types,
            mask,
            emb_sum,
            emb_ln,
            layers,
            hidden: x,
            pooled,
            seed: dropout_seed,
        });
        Ok((&saved.hidden, &saved.pooled))
    }

    /// One transformer layer on `x` [rows, H]: returns its output and what backward needs.
    pub(super) fn layer_forward(
        &self,
        l: usize,
        x: Buffer<f32>,
        mask: &Buffer<i32>,
        batch: usize,
        len: usize,
        dropout_seed: Option<u64>,
    ) -> Result<(Buffer<f32>, LayerSaved)> {
        let c = &self.config;
        let (h, heads) = (c.hidden_size, c.num_attention_heads);
        let rows = batch * len;
        let eps = c.layer_norm_eps as f32;
        let dev = x.device().clone();
        let name = |s: &str| format!("encoder.layer.{l}.{s}");
        // Q, K, V side by side in one [rows, 3H] buffer.
        let mut qkv = dev.alloc::<f32>(rows * 3 * h, "qkv")?;
        for (k, which) in ["query", "key", "value"].iter().enumerate() {
            let g = Gemm {
                ldc: 3 * h,
                offset_c: k * h,
                ..Gemm::new(rows, h, h, false, true)
            };
            let w = name(&format!("attention.self.{which}.weight"));
            let b = name(&format!("attention.self.{which}.bias"));
            ops::gemm(&g, &x, self.value(&w), &mut qkv, Some(self.value(&b)))?;
        }
        let a = self.attention_shape(batch, len, l, dropout_seed);
        let mut context = dev.alloc::<f32>(rows * h, "attention context")?;
        let mut lse = dev.alloc::<f32>(batch * heads * len, "attention lse")?;
        attention::forward(&a, [&qkv, &qkv, &qkv], Some(mask), &mut context, &mut lse)?;
        let ln1_in = self.dense_dropout_residual(
            &context,
            &name("attention.output.dense"),
            &x,
            rows,
            h,
            h,
            dropout_seed.map(|s| site_seed(s, l, 2)),
        )?;
        let (h1, ln1) = self.layer_norm(&ln1_in, &name("attention.output.LayerNorm"), rows, eps)?;
        // The FFN's pre-activation (kept for backward) and its activation, from one GEMM.
        let mut inter = dev.alloc::<f32>(rows * c.intermediate_size, "ffn intermediate")?;
        let mut act = dev.alloc::<f32>(rows * c.intermediate_size, "ffn activation")?;
        let g = Gemm::new(rows, c.intermediate_size, h, false, true);
        ops::gemm_fused(
            &g,
            &h1,
            self.value(&name("intermediate.dense.weight")),
            &mut inter,
            Some(self.value(&name("intermediate.dense.bias"))),
            Epilogue {
                activation: Some((self.activation_kind(), &mut act)),
                ..Epilogue::default()
            },
        )?;
        let ln2_in = self.dense_dropout_residual(
            &act,
            &name("output.dense"),
            &h1,
            rows,
            c.intermediate_size,
            h,
            dropout_seed.map(|s| site_seed(s, l, 3)),
        )?;
        drop(act); // backward makes it again from `inter`: one elementwise pass, rows x I saved
        let (next, ln2) = self.layer_norm(&ln2_in, &name("output.LayerNorm"), rows, eps)?;
        Ok((
            next,
            LayerSaved {
                input: x,
                qkv,
                context,
                lse,
                ln1_in,
                ln1,
                h1,
                inter,
                ln2_in,
                ln2,
            },
        ))
    }

    /// The FFN's activation function.
    fn activation_kind(&self) -> Activation {
        if self.config.hidden_act == "relu" {
            Activation::Relu
        } else {
            Activation::Gelu
        }
    }

    /// The FFN's activation (GELU or ReLU) of `inter`.
    pub(super) fn activation(&self, inter: &Buffer<f32>) -> Result<Buffer<f32>> {
        let mut act = inter.device().alloc::<f32>(inter.len(), "ffn activation")?;
        if self.config.hidden_act == "relu" {
            ops::relu_forward(inter, &mut act, inter.len())?;
        } else {
            ops::gelu_forward(inter, &mut act, inter.len())?;
        }
        Ok(act)
    }

    /// Layer `layer`'s attention over the fused [rows, 3H] QKV buffer; dropout only in training.
    pub(super) fn attention_shape(
        &self,
        batch: usize,
        len: usize,
        layer: usize,
        seed: Option<u64>,
    ) -> Attention {
        let c = &self.config;
        let (h, d) = (c.hidden_size, c.head_dim());
        Attention {
            batch,
            heads: c.num_attention_heads,
            len,
            head_dim: d,
            stride: 3 * h,
            offsets: [0, h, 2 * h],
            scale: 1.0 / (d as f32).sqrt(),
            dropout: if seed.is_some() {
                c.attention_probs_dropout_prob as f32
            } else {
                0.0
            },
            seed: seed.map_or(0, |s| site_seed(s, layer, 1)),
        }
    }

    /// y = LayerNorm(x) with the parameters `{prefix}.weight/bias`, and the saved statistics.
    fn layer_norm(
        &self,
        x: &Buffer<f32>,
        prefix: &str,
        rows: usize,
        eps: f32,
    ) -> Result<(Buffer<f32>, layernorm::Stats)> {
        let dev = x.device();
        let h = self.config.hidden_size;
        let mut y = dev.alloc::<f32>(rows * h, "layernorm out")?;
        let mut stats = layernorm::Stats {
            mean: dev.alloc(rows, "ln mean")?,
            rstd: dev.alloc(rows, "ln rstd")?,
        };
        let (g, b) = (
            self.value(&format!("{prefix}.weight")),
            self.value(&format!("{prefix}.bias")),
        );
        layernorm::forward(x, g, b, &mut y, &mut stats, rows, h, eps)?;
        Ok((y, stats))
    }

    /// residual + dropout(x W^T + b), the input of a post-LayerNorm.
    #[allow(clippy::too_many_arguments)]
    fn dense_dropout_residual(
        &self,
        x: &Buffer<f32>,
        prefix: &str,
        residual: &Buffer<f32>,
        rows: usize,
        input: usize,
        output: usize,
        seed: Option<u64>,
    ) -> Result<Buffer<f32>> {
        // One GEMM: its epilogue applies the dropout mask of `ops::dropout` and adds the residual.
        let mut sum = x.device().alloc::<f32>(rows * output, "residual")?;
        let g = Gemm::new(rows, output, input, false, true);
        ops::gemm_fused(
            &g,
            x,
            self.value(&format!("{prefix}.weight")),
            &mut sum,
            Some(self.value(&format!("{prefix}.bias"))),
            Epilogue {
                dropout: seed.map(|s| (self.config.hidden_dropout_prob as f32, s)),
                residual: Some(residual),
                ..Epilogue::default()
            },
        )?;
        Ok(sum)
    }
}

fn dropout(x: &Buffer<f32>, p: f32, seed: u64) -> Result<Buffer<f32>> {
    let mut y = x.device().alloc::<f32>(x.len(), "dropout")?;
    ops::dropout(x, &mut y, p, seed, false)?;
    Ok(y)
}
