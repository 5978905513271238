//! Text-CNN over token states: for each width, Conv1d along the tokens (torch.nn.Conv1d
//! semantics, weight [F, C, width]), ReLU, and max over each sequence's own windows, so padding
//! never wins; the features of all widths are concatenated, [B, F * widths]. A sequence shorter
//! than a width gets one window over its tokens and zeros, as if padded to the width.
//!
//! The convolution is GEMMs over a zero-padded copy of the input (see kernels/textcnn.cu).

use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::slot::Slot;
use crate::ops::textcnn::{self as k, Padding, PoolSlot};
use crate::ops::{self, Gemm};

/// Widths 2, 3, 4 and 256 filters each, as the issue (and Kim 2014) suggest.
#[derive(Clone, Debug)]
pub struct TextCnnConfig {
    pub channels: usize,
    pub filters: usize,
    pub widths: Vec<usize>,
}

impl TextCnnConfig {
    pub fn new(channels: usize) -> Self {
        TextCnnConfig {
            channels,
            filters: 256,
            widths: vec![2, 3, 4],
        }
    }
    pub fn out_features(&self) -> usize {
        self.filters * self.widths.len()
    }
}

/// What the layer returns: pooled features [B, F * widths], or ReLU'd feature maps
/// [B, L, F * widths] (one window per token, starting there; zeros past the sequence's end)
/// for a network in series after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Output {
    Pooled,
    Maps,
}

/// What forward keeps for backward.
struct Saved {
    output: Output,
    padding: Padding,
    lengths: Buffer<i32>,
    padded: Buffer<f32>,
    taps: Vec<Buffer<f32>>,
    /// Pooled: the winning window per (sequence, filter). Maps: empty.
    argmax: Vec<Buffer<i32>>,
    /// Maps: the convolution outputs (for the ReLU's backward). Pooled: empty.
    outs: Vec<Buffer<f32>>,
}

pub struct TextCnn {
    pub config: TextCnnConfig,
    /// Per width: weight [F, C, width] and bias [F], in torch's layout and names' order.
    pub weights: Vec<Buffer<f32>>,
    pub biases: Vec<Buffer<f32>>,
    /// Gradients of the last backward, same shapes.
    pub weight_grads: Vec<Buffer<f32>>,
    pub bias_grads: Vec<Buffer<f32>>,
    saved: Option<Saved>,
}

impl TextCnn {
    /// Parameters and gradients for the optimizer, named `{prefix}.convs.{i}.weight/bias`.
    pub fn slots(&mut self, prefix: &str, lr_scale: f32) -> Vec<Slot<'_>> {
        let mut out = Vec::new();
        for (i, (w, g)) in self
            .weights
            .iter_mut()
            .zip(&mut self.weight_grads)
            .enumerate()
        {
            out.push(Slot::new(
                format!("{prefix}.convs.{i}.weight"),
                w,
                g,
                lr_scale,
                true,
            ));
        }
        for (i, (b, g)) in self.biases.iter_mut().zip(&mut self.bias_grads).enumerate() {
            out.push(Slot::new(
                format!("{prefix}.convs.{i}.bias"),
                b,
                g,
                lr_scale,
                false,
            ));
        }
        out
    }

    /// From host tensors: per width (weight [F, C, width], bias [F]).
    pub fn from_host(
        dev: &Device,
        config: TextCnnConfig,
        params: &[(Vec<f32>, Vec<f32>)],
    ) -> Result<Self> {
        let (c, f) = (config.channels, config.filters);
        if config.widths.is_empty() || config.widths.contains(&0) || f == 0 || c == 0 {
            return Err(Error::Invalid(format!(
                "Text-CNN: widths {:?}, {f} filters, {c} channels",
                config.widths
            )));
        }
        if params.len() != config.widths.len() {
            return Err(Error::Invalid(format!(
                "Text-CNN: {} parameter sets for {} widths",
                params.len(),
                config.widths.len()
            )));
        }
        let mut layer = TextCnn {
            config: config.clone(),
            weights: vec![],
            biases: vec![],
            weight_grads: vec![],
            bias_grads: vec![],
            saved: None,
        };
        for (&w, (weight, bias)) in config.widths.iter().zip(params) {
            if weight.len() != f * c * w || bias.len() != f {
                return Err(Error::Invalid(format!(
                    "Text-CNN width {w}: weight of {} values and bias of {}; expected [{f}, {c}, {w}] and [{f}]",
                    weight.len(),
                    bias.len()
                )));
            }
            layer.weights.push(dev.parameter(weight, "textcnn weight")?);
            layer.biases.push(dev.parameter(bias, "textcnn bias")?);
            layer
                .weight_grads
                .push(dev.gradient(weight.len(), "textcnn weight grad")?);
            layer.bias_grads.push(dev.gradient(f, "textcnn bias grad")?);
        }
        Ok(layer)
    }

    /// torch.nn.Conv1d's default initialisation: U(-1/sqrt(C width), 1/sqrt(C width)) for both.
    pub fn new(dev: &Device, config: TextCnnConfig, rng: &mut crate::rng::Rng) -> Result<Self> {
        let params: Vec<_> = config
            .widths
            .iter()
            .map(|&w| {
                let bound = 1.0 / ((config.channels * w) as f64).sqrt();
                let mut u = |n: usize| {
                    (0..n)
                        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
                        .collect::<Vec<_>>()
                };
                (u(config.filters * config.channels * w), u(config.filters))
            })
            .collect();
        TextCnn::from_host(dev, config, &params)
    }

    /// x: [batch, len, channels] token states; lengths: real tokens per sequence (1..=len).
    /// Returns the pooled features [batch, filters * widths].
    pub fn forward(&mut self, x: &Buffer<f32>, lengths: &[i32], len: usize) -> Result<Buffer<f32>> {
        self.run(x, lengths, len, Output::Pooled)
    }

    /// Like `forward`, but returns the feature maps [batch, len, filters * widths].
    pub fn forward_maps(
        &mut self,
        x: &Buffer<f32>,
        lengths: &[i32],
        len: usize,
    ) -> Result<Buffer<f32>> {
        self.run(x, lengths, len, Output::Maps)
    }

    fn run(
        &mut self,
        x: &Buffer<f32>,
        lengths: &[i32],
        len: usize,
        output: Output,
    ) -> Result<Buffer<f32>> {
        let dev = x.device().clone();
        let (c, f) = (self.config.channels, self.config.filters);
        let batch = lengths.len();
        check_lengths(lengths, len)?;
        if x.len() != batch * len * c {
            return Err(Error::Invalid(format!(
                "Text-CNN input holds {} values; [{batch}, {len}, {c}] expected",
                x.len()
            )));
        }
        let wmax = *self.config.widths.iter().max().unwrap();
        // Each sequence gets its own zero rows for every window the output reads: pooling reads
        // windows that start at most at max(length - width, 0); maps read one per token, whose
        // window runs width - 1 rows past it.
        let padded_len = match output {
            Output::Pooled => len.max(wmax),
            Output::Maps => len + wmax - 1,
        };
        let padding = Padding {
            batch,
            len,
            padded_len,
            channels: c,
            extra: wmax,
        };
        let lengths_dev = dev.upload(lengths, "textcnn lengths")?;
        let mut padded = dev.alloc::<f32>(padding.rows() * c, "textcnn padded input")?;
        k::pad_rows(x, &lengths_dev, &mut padded, &padding)?;
        let cols = self.config.out_features();
        let mut result = match output {
            Output::Pooled => dev.alloc::<f32>(batch * cols, "textcnn pooled")?,
            Output::Maps => dev.alloc::<f32>(batch * len * cols, "textcnn maps")?,
        };
        let rows = batch * padding.padded_len;
        let (mut taps, mut argmaxes, mut outs) = (Vec::new(), Vec::new(), Vec::new());
        for (wi, &w) in self.config.widths.iter().enumerate() {
            let mut tap = dev.alloc::<f32>(w * c * f, "textcnn taps")?;
            k::permute_weight(&self.weights[wi], &mut tap, f, c, w, false)?;
            let mut out = dev.alloc::<f32>(rows * f, "textcnn conv out")?;
            for t in 0..w {
                // out (+)= padded[t:] . tap_t, bias once
                let g = Gemm {
                    offset_a: t * c,
                    offset_b: t * c * f,
                    beta: if t == 0 { 0.0 } else { 1.0 },
                    ..Gemm::new(rows, f, c, false, false)
                };
                ops::gemm(
                    &g,
                    &padded,
                    &tap,
                    &mut out,
                    (t == 0).then_some(&self.biases[wi]),
                )?;
            }
            let slot = PoolSlot {
                filters: f,
                width: w,
                cols,
                col: wi * f,
            };
            match output {
                Output::Pooled => {
                    let mut argmax = dev.alloc::<i32>(batch * f, "textcnn argmax")?;
                    k::pool_forward(
                        &out,
                        &lengths_dev,
                        &mut result,
                        &mut argmax,
                        &padding,
                        &slot,
                    )?;
                    argmaxes.push(argmax);
                }
                Output::Maps => {
                    k::maps_forward(&out, &lengths_dev, &mut result, &padding, &slot)?;
                    outs.push(out);
                }
            }
            taps.push(tap);
        }
        self.saved = Some(Saved {
            output,
            padding,
            lengths: lengths_dev,
            padded,
            taps,
            argmax: argmaxes,
            outs,
        });
        Ok(result)
    }

    /// dy: the gradient of what forward returned ([batch, filters * widths] pooled, or
    /// [batch, len, filters * widths] maps). Writes the parameter gradients (overwriting them)
    /// and returns dx [batch, len, channels] (zero at padding).
    pub fn backward(&mut self, dpooled: &Buffer<f32>) -> Result<Buffer<f32>> {
        let saved = self
            .saved
            .take()
            .ok_or_else(|| Error::Invalid("Text-CNN backward without forward".into()))?;
        let dev = dpooled.device().clone();
        let p = saved.padding;
        let (c, f) = (self.config.channels, self.config.filters);
        let cols = self.config.out_features();
        let rows = p.batch * p.padded_len;
        let mut dpadded = dev.zeros::<f32>(p.rows() * c, "textcnn dpadded")?;
        for (wi, &w) in self.config.widths.iter().enumerate() {
            let slot = PoolSlot {
                filters: f,
                width: w,
                cols,
                col: wi * f,
            };
            let mut dout = dev.alloc::<f32>(rows * f, "textcnn dout")?;
            match saved.output {
                Output::Pooled => {
                    k::pool_backward(dpooled, &saved.argmax[wi], &mut dout, &p, &slot)?
                }
                Output::Maps => k::maps_backward(
                    &saved.outs[wi],
                    dpooled,
                    &saved.lengths,
                    &mut dout,
                    &p,
                    &slot,
                )?,
            }
            ops::write_gradient(&mut self.bias_grads[wi], |g| {
                ops::sum_columns(&dout, g, rows, f)
            })?;
            let mut dtap = dev.alloc::<f32>(w * c * f, "textcnn dtaps")?;
            for t in 0..w {
                // dtap_t = padded[t:]^T . dout ;  dpadded[t:] += dout . tap_t^T
                let gw = Gemm {
                    offset_a: t * c,
                    offset_c: t * c * f,
                    ..Gemm::new(c, f, rows, true, false)
                };
                ops::gemm(&gw, &saved.padded, &dout, &mut dtap, None)?;
                let gx = Gemm {
                    offset_b: t * c * f,
                    offset_c: t * c,
                    beta: 1.0,
                    ..Gemm::new(rows, c, f, false, true)
                };
                ops::gemm(&gx, &dout, &saved.taps[wi], &mut dpadded, None)?;
            }
            ops::write_gradient(&mut self.weight_grads[wi], |g| {
                k::permute_weight(&dtap, g, f, c, w, true)
            })?;
        }
        let mut dx = dev.alloc::<f32>(p.batch * p.len * c, "textcnn dx")?;
        k::unpad_rows(&dpadded, &saved.lengths, &mut dx, &p)?;
        Ok(dx)
    }
}

/// Every sequence must hold 1..=len real tokens: an all-padding row has nothing to pool.
pub fn check_lengths(lengths: &[i32], len: usize) -> Result<()> {
    if lengths.is_empty() {
        return Err(Error::Invalid("empty batch".into()));
    }
    if let Some((b, &l)) = lengths
        .iter()
        .enumerate()
        .find(|(_, &l)| l < 1 || l as usize > len)
    {
        return Err(Error::Invalid(if l < 1 {
            format!(
                "sequence {b} is all padding (length {l}): every row needs at least one real token"
            )
        } else {
            format!("sequence {b} has length {l}, longer than the batch's {len} positions")
        }));
    }
    Ok(())
}
