//! The encoder's backward, layer by layer from the top: a checkpointed layer's forward runs
//! again first, and each saved tensor is freed as soon as backward is done with it.

use super::{site_seed, BertEncoder, LayerSaved, LayerState, Saved};
use crate::device::{Buffer, Role};
use crate::error::{Error, Result};
use crate::ops::{self, attention, embedding, layernorm, Epilogue, Gemm};

impl BertEncoder {
    /// Writes parameter `name`'s gradient with `write` (over it, or added while the device
    /// accumulates micro-batches: `ops::write_gradient`).
    fn write_grad(
        &mut self,
        name: &str,
        write: impl FnOnce(&mut Buffer<f32>) -> Result<()>,
    ) -> Result<()> {
        let i = self.index[name];
        ops::write_gradient(&mut self.params[i].grad, write)
    }

    /// Backward from the gradients of last_hidden_state and/or pooler_output. Writes every
    /// parameter's gradient (over it, or added while the device accumulates micro-batches).
    pub fn backward(
        &mut self,
        d_hidden: Option<&Buffer<f32>>,
        d_pooled: Option<&Buffer<f32>>,
    ) -> Result<()> {
        let mut s = self
            .saved
            .take()
            .ok_or_else(|| Error::Invalid("encoder backward without forward".into()))?;
        let c = self.config.clone();
        let h = c.hidden_size;
        let (batch, len) = (s.batch, s.len);
        let rows = batch * len;
        let dev = s.hidden.device().clone();
        let mut dx = match d_hidden {
            Some(g) if g.len() == rows * h => {
                let mut copy = dev.alloc::<f32>(rows * h, "d hidden")?;
                ops::scale(g, &mut copy, 1.0, rows * h)?;
                copy
            }
            Some(g) => {
                return Err(Error::Invalid(format!(
                    "d_hidden holds {} values, {} expected",
                    g.len(),
                    rows * h
                )))
            }
            None => dev.zeros(rows * h, "d hidden")?,
        };
        // Pooler.
        match d_pooled {
            Some(g) if g.len() == batch * h => {
                let mut dpre = dev.alloc::<f32>(batch * h, "d pooler")?;
                ops::tanh_backward(&s.pooled, g, &mut dpre, batch * h)?;
                let gw = Gemm {
                    ldb: len * h,
                    ..Gemm::new(h, h, batch, true, false)
                };
                self.write_grad("pooler.dense.weight", |g| {
                    ops::gemm(&gw, &dpre, &s.hidden, g, None)
                })?;
                self.write_grad("pooler.dense.bias", |g| {
                    ops::sum_columns(&dpre, g, batch, h)
                })?;
                // d hidden[:, 0] += dpre W
                let gx = Gemm {
                    ldc: len * h,
                    beta: 1.0,
                    ..Gemm::new(batch, h, h, false, false)
                };
                ops::gemm(&gx, &dpre, self.value("pooler.dense.weight"), &mut dx, None)?;
            }
            Some(g) => {
                return Err(Error::Invalid(format!(
                    "d_pooled holds {} values, {} expected",
                    g.len(),
                    batch * h
                )))
            }
            None => {
                self.write_grad("pooler.dense.weight", |g| ops::fill(g, 0.0))?;
                self.write_grad("pooler.dense.bias", |g| ops::fill(g, 0.0))?;
            }
        }
        if self.params.iter().any(|p| p.half.is_some()) {
            return Err(Error::Invalid(
                "encoder backward with fp16 weights: a frozen encoder runs forward only".into(),
            ));
        }
        if s.layers.len() != c.num_hidden_layers {
            return Err(Error::Invalid(
                "encoder backward after `infer`, which keeps nothing for backward".into(),
            ));
        }
        let mut states = std::mem::take(&mut s.layers);
        while let Some(state) = states.pop() {
            let l = states.len();
            // Owned, so that each saved tensor goes as soon as backward is done with it.
            let ls = match state {
                LayerState::Kept(saved) => *saved,
                LayerState::Kept16(half) => half.into_fp32()?,
                LayerState::Checkpoint(input) => self.recompute(l, input, &s)?,
                LayerState::Checkpoint16(half) => {
                    let mut input = dev.alloc::<f32>(half.len(), "layer input")?;
                    ops::convert_f16_to_f32(&half, &mut input)?;
                    drop(half);
                    self.recompute(l, input, &s)?
                }
            };
            let name = |x: &str| format!("encoder.layer.{l}.{x}");
            // Output LayerNorm, then the FFN's dense, dropout and residual: the LayerNorm's
            // backward also writes the dropout's.
            let (d_ln2_in, dropped) = self.layer_norm_backward(
                &ls.ln2_in,
                &ls.ln2,
                &dx,
                &name("output.LayerNorm"),
                rows,
                s.seed.map(|x| site_seed(x, l, 3)),
            )?;
            drop((dx, ls.ln2_in, ls.ln2));
            let act = self.activation(&ls.inter)?;
            let d_act = self.dense_backward(
                act,
                dropped.as_ref().unwrap_or(&d_ln2_in),
                &name("output.dense"),
                (rows, c.intermediate_size, h),
                None,
            )?;
            drop(dropped);
            // In place: d_act becomes d_inter.
            let mut d_inter = d_act;
            if c.hidden_act == "relu" {
                ops::relu_backward(&ls.inter, &mut d_inter, ls.inter.len())?;
            } else {
                ops::gelu_backward(&ls.inter, &mut d_inter, ls.inter.len())?;
            }
            drop(ls.inter);
            // The residual path joins in the product's epilogue.
            let d_h1 = self.dense_backward(
                ls.h1,
                &d_inter,
                &name("intermediate.dense"),
                (rows, h, c.intermediate_size),
                Some(&d_ln2_in),
            )?;
            drop((d_inter, d_ln2_in));
            // Attention output LayerNorm, dense, dropout, residual.
            let (d_ln1_in, dropped) = self.layer_norm_backward(
                &ls.ln1_in,
                &ls.ln1,
                &d_h1,
                &name("attention.output.LayerNorm"),
                rows,
                s.seed.map(|x| site_seed(x, l, 2)),
            )?;
            drop((d_h1, ls.ln1_in, ls.ln1));
            let d_context = self.dense_backward(
                &ls.context,
                dropped.as_ref().unwrap_or(&d_ln1_in),
                &name("attention.output.dense"),
                (rows, h, h),
                None,
            )?;
            drop(dropped);
            let a = self.attention_shape(batch, len, l, s.seed);
            let dqkv = dev.alloc::<f32>(rows * 3 * h, "d qkv")?;
            attention::backward(
                &a,
                [&ls.qkv, &ls.qkv, &ls.qkv],
                Some(&s.mask),
                &ls.context,
                &ls.lse,
                &d_context,
                [&dqkv, &dqkv, &dqkv],
            )?;
            drop((d_context, ls.context, ls.lse));
            // Q, K, V projections: weight and bias gradients, and their sum into d input, the
            // residual path added in the last product's epilogue.
            let mut d_input = dev.alloc::<f32>(rows * h, "d layer input")?;
            for (k, which) in ["query", "key", "value"].iter().enumerate() {
                let w = name(&format!("attention.self.{which}.weight"));
                let b = name(&format!("attention.self.{which}.bias"));
                let gw = Gemm {
                    lda: 3 * h,
                    offset_a: k * h,
                    ..Gemm::new(h, h, rows, true, false)
                };
                self.write_grad(&w, |g| ops::gemm(&gw, &dqkv, &ls.input, g, None))?;
                self.write_grad(&b, |g| ops::sum_columns_of(&dqkv, k * h, 3 * h, g, rows, h))?;
                let gx = Gemm {
                    lda: 3 * h,
                    offset_a: k * h,
                    beta: if k == 0 { 0.0 } else { 1.0 },
                    ..Gemm::new(rows, h, h, false, false)
                };
                let epilogue = Epilogue {
                    // Last, so the sums round as (q + k + v) + residual did in a separate add.
                    residual: (k == 2).then_some(&d_ln1_in),
                    ..Epilogue::default()
                };
                ops::gemm_fused(&gx, &dqkv, self.value(&w), &mut d_input, None, epilogue)?;
            }
            drop((dqkv, ls.qkv, ls.input, d_ln1_in));
            dx = d_input;
        }
        // Embeddings.
        let d_emb = self.dropout_backward(&dx, s.seed.map(|x| site_seed(x, 0, 0)))?;
        let (d_sum, _) = self.layer_norm_backward(
            &s.emb_sum,
            &s.emb_ln,
            &d_emb,
            "embeddings.LayerNorm",
            rows,
            None,
        )?;
        let pad = Some(c.pad_token_id);
        let word = "embeddings.word_embeddings.weight";
        self.write_grad(word, |g| embedding::backward(&s.ids, &d_sum, g, h, pad))?;
        let position = "embeddings.position_embeddings.weight";
        self.write_grad(position, |g| {
            embedding::backward(&s.positions, &d_sum, g, h, None)
        })?;
        let kind = "embeddings.token_type_embeddings.weight";
        self.write_grad(kind, |g| embedding::backward(&s.types, &d_sum, g, h, None))?;
        Ok(())
    }

    /// Layer `l`'s forward again from its input, for backward: its activations as the first
    /// forward made them (tagged as activations).
    fn recompute(&self, l: usize, input: Buffer<f32>, s: &Saved) -> Result<LayerSaved> {
        let dev = input.device().clone();
        let _role = dev.role(Role::Activations);
        let (_, saved) = self.layer_forward(l, input, &s.mask, s.batch, s.len, s.seed)?;
        Ok(saved)
    }

    /// Backward of a post-LayerNorm: writes its parameter gradients, returns d input and, for
    /// an input residual + dropout(dense) in training (`dropout_seed`), the dropout's backward
    /// of it — the gradient into the dense output (without dropout it is d input itself).
    fn layer_norm_backward(
        &mut self,
        x: &Buffer<f32>,
        stats: &layernorm::Stats,
        dy: &Buffer<f32>,
        prefix: &str,
        rows: usize,
        dropout_seed: Option<u64>,
    ) -> Result<(Buffer<f32>, Option<Buffer<f32>>)> {
        let h = self.config.hidden_size;
        let dev = x.device().clone();
        let mut dx = dev.alloc::<f32>(rows * h, "d layernorm")?;
        let mut dy_xhat = dev.alloc::<f32>(rows * h, "d layernorm")?;
        let mut dropped = match dropout_seed {
            Some(_) => Some(dev.alloc::<f32>(rows * h, "d dropout")?),
            None => None,
        };
        layernorm::backward(
            x,
            self.value(&format!("{prefix}.weight")),
            stats,
            dy,
            &mut dx,
            &mut dy_xhat,
            dropped
                .as_mut()
                .zip(dropout_seed)
                .map(|(out, seed)| layernorm::DroppedGrad {
                    out,
                    rate: self.config.hidden_dropout_prob as f32,
                    seed,
                }),
            rows,
            h,
        )?;
        self.write_grad(&format!("{prefix}.weight"), |g| {
            ops::sum_columns(&dy_xhat, g, rows, h)
        })?;
        self.write_grad(&format!("{prefix}.bias"), |g| {
            ops::sum_columns(dy, g, rows, h)
        })?;
        Ok((dx, dropped))
    }

    /// Backward of y = x W^T + b ([rows, input] -> [rows, output]): writes dW, db, returns dx
    /// (+ `residual`, another path's gradient into x, added in the product's epilogue). `x` may
    /// be owned, to be freed as soon as dW has it.
    fn dense_backward(
        &mut self,
        x: impl std::borrow::Borrow<Buffer<f32>>,
        dy: &Buffer<f32>,
        prefix: &str,
        (rows, input, output): (usize, usize, usize),
        residual: Option<&Buffer<f32>>,
    ) -> Result<Buffer<f32>> {
        let dev = x.borrow().device().clone();
        self.write_grad(&format!("{prefix}.weight"), |g| {
            let gw = Gemm::new(output, input, rows, true, false);
            ops::gemm(&gw, dy, x.borrow(), g, None)
        })?;
        self.write_grad(&format!("{prefix}.bias"), |g| {
            ops::sum_columns(dy, g, rows, output)
        })?;
        drop(x); // an owned input goes before dx is made
        let mut dx = dev.alloc::<f32>(rows * input, "d dense")?;
        ops::gemm_fused(
            &Gemm::new(rows, input, output, false, false),
            dy,
            self.value(&format!("{prefix}.weight")),
            &mut dx,
            None,
            Epilogue {
                residual,
                ..Epilogue::default()
            },
        )?;
        Ok(dx)
    }

    fn dropout_backward(&self, dy: &Buffer<f32>, seed: Option<u64>) -> Result<Buffer<f32>> {
        let dev = dy.device();
        let mut dx = dev.alloc::<f32>(dy.len(), "d dropout")?;
        match seed {
            Some(seed) => ops::dropout(
                dy,
                &mut dx,
                self.config.hidden_dropout_prob as f32,
                seed,
                true,
            )?,
            None => ops::scale(dy, &mut dx, 1.0, dy.len())?,
        }
        Ok(dx)
    }
}
