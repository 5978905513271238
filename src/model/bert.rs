//! The BERT encoder (MC-BERT, bert-base-chinese, ERNIE 1.0, MiniLM): embeddings, transformer
//! layers and pooler, with explicit forward and backward over kernels. HF `BertModel`
//! semantics: post-LayerNorm layers, GELU (erf) or ReLU, additive padding mask on keys, dropout
//! on embeddings, attention probabilities, attention output and FFN output.
//!
//! Parameters carry their HF names (without a model prefix). Loading accepts the prefixes
//! `bert.`, `ernie.` and none, and the legacy `LayerNorm.gamma/beta`; saving writes the names of
//! `transformers.BertModel`.

use std::collections::HashMap;
use std::path::Path;

use crate::check::Rng;
use crate::device::{Buffer, Device, Role};
use crate::error::{Error, Result};
use crate::ops::attention::{self, Attention};
use crate::ops::{self, embedding, layernorm, Gemm};
use crate::weights::{self, Checkpoint};

fn default_act() -> String {
    "gelu".into()
}
fn default_eps() -> f64 {
    1e-12
}
fn default_types() -> usize {
    2
}
fn default_dropout() -> f64 {
    0.1
}

/// The fields of HF `config.json` the encoder uses.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    pub max_position_embeddings: usize,
    #[serde(default = "default_types")]
    pub type_vocab_size: usize,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// The padding token: its word-embedding row gets no gradient (nn.Embedding padding_idx).
    #[serde(default)]
    pub pad_token_id: i32,
}

impl BertConfig {
    pub fn from_file(path: &Path) -> Result<BertConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: BertConfig = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!("{}: not a BERT config.json: {e}", path.display()))
        })?;
        c.validate()
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
        Ok(c)
    }

    pub fn validate(&self) -> Result<()> {
        let h = self.hidden_size;
        if h == 0 || self.num_attention_heads == 0 || !h.is_multiple_of(self.num_attention_heads) {
            return Err(Error::Invalid(format!(
                "hidden_size {h} is not a multiple of {} heads",
                self.num_attention_heads
            )));
        }
        if h / self.num_attention_heads > 128 {
            return Err(Error::Invalid(format!(
                "head size {} is over the supported 128",
                h / self.num_attention_heads
            )));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "relu") {
            return Err(Error::Invalid(format!(
                "hidden_act `{}`: gelu (erf form) or relu supported",
                self.hidden_act
            )));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// One named parameter and its gradient.
pub struct Param {
    pub name: String,
    pub shape: Vec<usize>,
    pub value: Buffer<f32>,
    pub grad: Buffer<f32>,
    /// A frozen encoder's weights in fp16 (`store_weights_fp16`): `value` is then empty except
    /// while its part of the encoder runs.
    pub half: Option<Buffer<half::f16>>,
}

/// The HF names and shapes of every parameter, in a fixed order.
pub fn parameter_shapes(c: &BertConfig) -> Vec<(String, Vec<usize>)> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let mut v = vec![
        (
            "embeddings.word_embeddings.weight".to_string(),
            vec![c.vocab_size, h],
        ),
        (
            "embeddings.position_embeddings.weight".into(),
            vec![c.max_position_embeddings, h],
        ),
        (
            "embeddings.token_type_embeddings.weight".into(),
            vec![c.type_vocab_size, h],
        ),
        ("embeddings.LayerNorm.weight".into(), vec![h]),
        ("embeddings.LayerNorm.bias".into(), vec![h]),
    ];
    for l in 0..c.num_hidden_layers {
        let p = format!("encoder.layer.{l}.");
        for (name, shape) in [
            ("attention.self.query.weight", vec![h, h]),
            ("attention.self.query.bias", vec![h]),
            ("attention.self.key.weight", vec![h, h]),
            ("attention.self.key.bias", vec![h]),
            ("attention.self.value.weight", vec![h, h]),
            ("attention.self.value.bias", vec![h]),
            ("attention.output.dense.weight", vec![h, h]),
            ("attention.output.dense.bias", vec![h]),
            ("attention.output.LayerNorm.weight", vec![h]),
            ("attention.output.LayerNorm.bias", vec![h]),
            ("intermediate.dense.weight", vec![i, h]),
            ("intermediate.dense.bias", vec![i]),
            ("output.dense.weight", vec![h, i]),
            ("output.dense.bias", vec![h]),
            ("output.LayerNorm.weight", vec![h]),
            ("output.LayerNorm.bias", vec![h]),
        ] {
            v.push((format!("{p}{name}"), shape));
        }
    }
    v.push(("pooler.dense.weight".into(), vec![h, h]));
    v.push(("pooler.dense.bias".into(), vec![h]));
    v
}

/// How the encoder trades arithmetic for memory (chosen by `crate::plan`). Dropout masks are
/// never stored (regenerated from their seeds) and attention keeps only its log-sum-exp
/// statistics, never the probabilities, whatever this says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EncoderMemory {
    /// Layers (the lowest ones) whose activations are not kept: forward keeps only their input
    /// and backward runs their forward again, with the same kernels and dropout seeds, so the
    /// gradients are bit for bit those of a run that kept everything.
    pub recompute_layers: usize,
    /// Keep those inputs in fp16 (half the bytes; gradients then differ within tolerance).
    pub fp16_checkpoints: bool,
    /// Frozen encoders only: weights stored in fp16, each part's made fp32 just before it runs
    /// (fp32 arithmetic on fp16-rounded weights; see `store_weights_fp16`).
    pub fp16_weights: bool,
}

/// What one layer's forward keeps for backward.
struct LayerSaved {
    input: Buffer<f32>,
    qkv: Buffer<f32>,
    context: Buffer<f32>,
    lse: Buffer<f32>,
    ln1_in: Buffer<f32>,
    ln1: layernorm::Stats,
    h1: Buffer<f32>,
    inter: Buffer<f32>,
    ln2_in: Buffer<f32>,
    ln2: layernorm::Stats,
}

/// A layer's state between forward and backward: everything, or only its input.
enum LayerState {
    Kept(Box<LayerSaved>),
    Checkpoint(Buffer<f32>),
    Checkpoint16(Buffer<half::f16>),
}

impl LayerState {
    fn bytes(&self) -> usize {
        match self {
            LayerState::Kept(s) => {
                [
                    &s.input, &s.qkv, &s.context, &s.lse, &s.ln1_in, &s.h1, &s.inter, &s.ln2_in,
                ]
                .iter()
                .map(|b| b.bytes())
                .sum::<usize>()
                    + [&s.ln1, &s.ln2]
                        .iter()
                        .map(|st| st.mean.bytes() + st.rstd.bytes())
                        .sum::<usize>()
            }
            LayerState::Checkpoint(b) => b.bytes(),
            LayerState::Checkpoint16(b) => b.bytes(),
        }
    }
}

struct Saved {
    batch: usize,
    len: usize,
    ids: Vec<i32>,
    positions: Vec<i32>,
    types: Vec<i32>,
    mask: Buffer<i32>,
    emb_sum: Buffer<f32>,
    emb_ln: layernorm::Stats,
    layers: Vec<LayerState>,
    hidden: Buffer<f32>,
    pooled: Buffer<f32>,
    seed: Option<u64>,
}

pub struct BertEncoder {
    pub config: BertConfig,
    pub params: Vec<Param>,
    index: HashMap<String, usize>,
    saved: Option<Saved>,
    pub memory: EncoderMemory,
}

/// A distinct dropout seed for each site of each layer.
fn site_seed(seed: u64, layer: usize, site: u64) -> u64 {
    seed ^ ((layer as u64 * 8 + site + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

impl BertEncoder {
    /// Every parameter for the optimizer (HF names); no decay on biases and LayerNorm weights.
    pub fn slots(&mut self, lr_scale: f32) -> Vec<crate::train::optim::Slot<'_>> {
        self.params
            .iter_mut()
            .map(|p| {
                let decay = !(p.name.ends_with(".bias") || p.name.contains("LayerNorm"));
                crate::train::optim::Slot::new(
                    p.name.clone(),
                    &mut p.value,
                    &p.grad,
                    lr_scale,
                    decay,
                )
            })
            .collect()
    }

    /// The encoder over `values`; a frozen one (`trainable` false) gets no gradient buffers.
    fn from_values(
        dev: &Device,
        config: BertConfig,
        values: Vec<Vec<f32>>,
        trainable: bool,
    ) -> Result<Self> {
        config.validate()?;
        let shapes = parameter_shapes(&config);
        let mut params = Vec::new();
        let mut index = HashMap::new();
        for ((name, shape), v) in shapes.into_iter().zip(values) {
            index.insert(name.clone(), params.len());
            let n = v.len();
            params.push(Param {
                value: dev.parameter(&v, &name)?,
                grad: dev.gradient(if trainable { n } else { 0 }, &name)?,
                half: None,
                name,
                shape,
            });
        }
        Ok(BertEncoder {
            config,
            params,
            index,
            saved: None,
            memory: EncoderMemory::default(),
        })
    }

    /// Parameters of the right shapes and unspecified values (zeros): for sizing a run on
    /// `Device::sizing`, where no value is ever read.
    pub fn unset(dev: &Device, config: BertConfig, trainable: bool) -> Result<Self> {
        let values = parameter_shapes(&config)
            .iter()
            .map(|(_, shape)| vec![0.0; shape.iter().product()])
            .collect();
        BertEncoder::from_values(dev, config, values, trainable)
    }

    /// HF BERT's initialisation: weights N(0, 0.02), biases 0, LayerNorm weight 1.
    pub fn new(dev: &Device, config: BertConfig, rng: &mut Rng) -> Result<Self> {
        let values = parameter_shapes(&config)
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                if name.ends_with("LayerNorm.weight") {
                    vec![1.0; n]
                } else if name.ends_with(".bias") {
                    vec![0.0; n]
                } else {
                    (0..n).map(|_| (rng.normal() * 0.02) as f32).collect()
                }
            })
            .collect();
        BertEncoder::from_values(dev, config, values, true)
    }

    /// Loads `model.safetensors` for `config`. Names may carry the prefix `bert.`, `ernie.` or
    /// none, and LayerNorm parameters may be called gamma/beta; extra tensors (an MLM head, a
    /// classifier) are ignored. A missing tensor or a wrong shape names the tensor and shapes.
    pub fn load(dev: &Device, config: BertConfig, path: &Path) -> Result<Self> {
        BertEncoder::load_weights(dev, config, path, true)
    }

    /// `load_dir` for an encoder that will only run forward: no gradient buffers.
    pub fn load_frozen_dir(dev: &Device, dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        BertEncoder::load_weights(dev, config, &dir.join("model.safetensors"), false)
    }

    fn load_weights(
        dev: &Device,
        config: BertConfig,
        path: &Path,
        trainable: bool,
    ) -> Result<Self> {
        config.validate()?;
        let ckpt = Checkpoint::open(path)?;
        let prefix = ["bert.", "ernie.", ""]
            .into_iter()
            .find(|p| ckpt.contains(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no embeddings.word_embeddings.weight under the prefixes bert., ernie. or none",
                    path.display()
                ))
            })?;
        let values = parameter_shapes(&config)
            .iter()
            .map(|(name, shape)| {
                let full = format!("{prefix}{name}");
                let legacy = full
                    .replace("LayerNorm.weight", "LayerNorm.gamma")
                    .replace("LayerNorm.bias", "LayerNorm.beta");
                let chosen = if !ckpt.contains(&full) && ckpt.contains(&legacy) {
                    legacy
                } else {
                    full
                };
                ckpt.get(&chosen, shape)
            })
            .collect::<Result<Vec<_>>>()?;
        if std::env::var_os("EMRCLASS_DEBUG").is_some() {
            let known: std::collections::HashSet<String> = parameter_shapes(&config)
                .into_iter()
                .map(|(n, _)| format!("{prefix}{n}"))
                .collect();
            for extra in ckpt.names().into_iter().filter(|n| !known.contains(n)) {
                eprintln!(
                    "debug: {}: tensor {extra} not used by the encoder",
                    path.display()
                );
            }
        }
        BertEncoder::from_values(dev, config, values, trainable)
    }

    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load_dir(dev: &Device, dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        BertEncoder::load(dev, config, &dir.join("model.safetensors"))
    }

    /// Writes every parameter under `transformers.BertModel`'s names (atomically).
    pub fn save(&self, path: &Path) -> Result<()> {
        let host: Vec<Vec<f32>> = self
            .params
            .iter()
            .map(|p| p.value.to_host())
            .collect::<Result<_>>()?;
        let tensors: Vec<(&str, Vec<usize>, &[f32])> = self
            .params
            .iter()
            .zip(&host)
            .map(|(p, v)| (p.name.as_str(), p.shape.clone(), v.as_slice()))
            .collect();
        weights::write_tensors(path, &tensors)
    }

    pub fn param(&self, name: &str) -> &Param {
        &self.params[self.index[name]]
    }

    fn value(&self, name: &str) -> &Buffer<f32> {
        &self.param(name).value
    }

    /// Runs the encoder. ids, attention_mask (1 = token, 0 = padding) and token types are
    /// [batch, len], row-major; token types default to 0. `dropout_seed`: Some in training.
    /// Returns (last_hidden_state [B, L, H], pooler_output [B, H]), kept for backward.
    pub fn forward(
        &mut self,
        ids: &[i32],
        attention_mask: &[i32],
        token_types: Option<&[i32]>,
        batch: usize,
        dropout_seed: Option<u64>,
    ) -> Result<(&Buffer<f32>, &Buffer<f32>)> {
        self.run(ids, attention_mask, token_types, batch, dropout_seed, true)
    }

    /// The forward of inference: each layer's activations are freed as soon as the next layer
    /// has its input, so only the outputs stay (no backward may follow).
    pub fn infer(
        &mut self,
        ids: &[i32],
        attention_mask: &[i32],
        token_types: Option<&[i32]>,
        batch: usize,
    ) -> Result<(&Buffer<f32>, &Buffer<f32>)> {
        self.run(ids, attention_mask, token_types, batch, None, false)
    }

    /// Stores a frozen encoder's weights in fp16: half the bytes. Each part (embeddings, a
    /// layer, the pooler) gets fp32 weights again just before it runs and drops them after, so
    /// the arithmetic stays fp32 on fp16-rounded weights. Forward only.
    pub fn store_weights_fp16(&mut self) -> Result<()> {
        if self.params.iter().any(|p| !p.grad.is_empty()) {
            return Err(Error::Invalid(
                "fp16 weights are for a frozen encoder (loaded without gradients)".into(),
            ));
        }
        for p in &mut self.params {
            if p.half.is_some() {
                continue;
            }
            let dev = p.value.device().clone();
            let _role = dev.role(Role::Parameters);
            let mut half = dev.alloc::<half::f16>(p.value.len(), &p.name)?;
            ops::convert_f32_to_f16(&p.value, &mut half)?;
            p.value = dev.alloc(0, &p.name)?;
            p.half = Some(half);
        }
        Ok(())
    }

    /// fp32 values, from fp16 storage, for the parameters under `prefix` (no-op for fp32).
    fn unpack(&mut self, prefix: &str) -> Result<()> {
        for p in self
            .params
            .iter_mut()
            .filter(|p| p.name.starts_with(prefix))
        {
            if let Some(half) = &p.half {
                let dev = half.device().clone();
                let _role = dev.role(Role::Parameters);
                let mut value = dev.alloc::<f32>(half.len(), &p.name)?;
                ops::convert_f16_to_f32(half, &mut value)?;
                p.value = value;
            }
        }
        Ok(())
    }

    /// Frees the fp32 values `unpack` made.
    fn repack(&mut self, prefix: &str) -> Result<()> {
        for p in self
            .params
            .iter_mut()
            .filter(|p| p.name.starts_with(prefix))
        {
            if p.half.is_some() {
                p.value = p.value.device().alloc(0, &p.name)?;
            }
        }
        Ok(())
    }

    /// The last forward's (last_hidden_state, pooler_output), while kept for backward.
    pub fn outputs(&self) -> Option<(&Buffer<f32>, &Buffer<f32>)> {
        self.saved.as_ref().map(|s| (&s.hidden, &s.pooled))
    }

    /// Drops what the last forward kept for backward.
    pub fn forget(&mut self) {
        self.saved = None;
    }

    /// Bytes held for backward by the last forward, per layer (empty after `infer`).
    pub fn saved_bytes_per_layer(&self) -> Vec<usize> {
        self.saved.as_ref().map_or_else(Vec::new, |s| {
            s.layers.iter().map(LayerState::bytes).collect()
        })
    }

    fn run(
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
                LayerState::Kept(Box::new(saved))
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
    fn layer_forward(
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
        let mut inter = dev.alloc::<f32>(rows * c.intermediate_size, "ffn intermediate")?;
        let g = Gemm::new(rows, c.intermediate_size, h, false, true);
        ops::gemm(
            &g,
            &h1,
            self.value(&name("intermediate.dense.weight")),
            &mut inter,
            Some(self.value(&name("intermediate.dense.bias"))),
        )?;
        let act = self.activation(&inter)?;
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

    /// The FFN's activation (GELU or ReLU) of `inter`.
    fn activation(&self, inter: &Buffer<f32>) -> Result<Buffer<f32>> {
        let mut act = inter.device().alloc::<f32>(inter.len(), "ffn activation")?;
        if self.config.hidden_act == "relu" {
            ops::relu_forward(inter, &mut act, inter.len())?;
        } else {
            ops::gelu_forward(inter, &mut act, inter.len())?;
        }
        Ok(act)
    }

    /// Layer `layer`'s attention over the fused [rows, 3H] QKV buffer; dropout only in training.
    fn attention_shape(
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
        let dev = x.device();
        let mut y = dev.alloc::<f32>(rows * output, "dense out")?;
        let g = Gemm::new(rows, output, input, false, true);
        ops::gemm(
            &g,
            x,
            self.value(&format!("{prefix}.weight")),
            &mut y,
            Some(self.value(&format!("{prefix}.bias"))),
        )?;
        if let Some(seed) = seed {
            y = dropout(&y, self.config.hidden_dropout_prob as f32, seed)?;
        }
        let mut sum = dev.alloc::<f32>(rows * output, "residual")?;
        ops::add(&y, residual, &mut sum, rows * output)?;
        Ok(sum)
    }

    fn grad_of(&mut self, name: &str) -> &mut Buffer<f32> {
        let i = self.index[name];
        &mut self.params[i].grad
    }

    /// Backward from the gradients of last_hidden_state and/or pooler_output. Writes every
    /// parameter's gradient (overwriting).
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
                ops::gemm(
                    &gw,
                    &dpre,
                    &s.hidden,
                    self.grad_of("pooler.dense.weight"),
                    None,
                )?;
                ops::sum_columns(&dpre, self.grad_of("pooler.dense.bias"), batch, h)?;
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
                ops::fill(self.grad_of("pooler.dense.weight"), 0.0)?;
                ops::fill(self.grad_of("pooler.dense.bias"), 0.0)?;
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
                LayerState::Checkpoint(input) => self.recompute(l, input, &s)?,
                LayerState::Checkpoint16(half) => {
                    let mut input = dev.alloc::<f32>(half.len(), "layer input")?;
                    ops::convert_f16_to_f32(&half, &mut input)?;
                    drop(half);
                    self.recompute(l, input, &s)?
                }
            };
            let name = |x: &str| format!("encoder.layer.{l}.{x}");
            // Output LayerNorm, then the FFN's dense, dropout and residual.
            let d_ln2_in = self.layer_norm_backward(
                &ls.ln2_in,
                &ls.ln2,
                &dx,
                &name("output.LayerNorm"),
                rows,
            )?;
            drop((dx, ls.ln2_in, ls.ln2));
            let d_dense = self.dropout_backward(&d_ln2_in, s.seed.map(|x| site_seed(x, l, 3)))?;
            let act = self.activation(&ls.inter)?;
            let d_act = self.dense_backward(
                &act,
                &d_dense,
                &name("output.dense"),
                rows,
                c.intermediate_size,
                h,
            )?;
            drop((act, d_dense));
            let mut d_inter = dev.alloc::<f32>(ls.inter.len(), "d ffn")?;
            if c.hidden_act == "relu" {
                ops::relu_backward(&ls.inter, &d_act, &mut d_inter, ls.inter.len())?;
            } else {
                ops::gelu_backward(&ls.inter, &d_act, &mut d_inter, ls.inter.len())?;
            }
            drop((d_act, ls.inter));
            let d_h1_ffn = self.dense_backward(
                &ls.h1,
                &d_inter,
                &name("intermediate.dense"),
                rows,
                h,
                c.intermediate_size,
            )?;
            drop((d_inter, ls.h1));
            let mut d_h1 = dev.alloc::<f32>(rows * h, "d h1")?;
            ops::add(&d_h1_ffn, &d_ln2_in, &mut d_h1, rows * h)?; // the residual path
            drop((d_h1_ffn, d_ln2_in));
            // Attention output LayerNorm, dense, dropout, residual.
            let d_ln1_in = self.layer_norm_backward(
                &ls.ln1_in,
                &ls.ln1,
                &d_h1,
                &name("attention.output.LayerNorm"),
                rows,
            )?;
            drop((d_h1, ls.ln1_in, ls.ln1));
            let d_dense = self.dropout_backward(&d_ln1_in, s.seed.map(|x| site_seed(x, l, 2)))?;
            let d_context = self.dense_backward(
                &ls.context,
                &d_dense,
                &name("attention.output.dense"),
                rows,
                h,
                h,
            )?;
            drop(d_dense);
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
            // Q, K, V projections: weight and bias gradients, and their sum into d input.
            let mut d_input = dev.alloc::<f32>(rows * h, "d layer input")?;
            for (k, which) in ["query", "key", "value"].iter().enumerate() {
                let w = name(&format!("attention.self.{which}.weight"));
                let b = name(&format!("attention.self.{which}.bias"));
                let gw = Gemm {
                    lda: 3 * h,
                    offset_a: k * h,
                    ..Gemm::new(h, h, rows, true, false)
                };
                ops::gemm(&gw, &dqkv, &ls.input, self.grad_of(&w), None)?;
                let ones = dev.upload(&vec![1.0f32; rows], "ones")?;
                let gb = Gemm {
                    ldb: 3 * h,
                    offset_b: k * h,
                    ..Gemm::new(1, h, rows, false, false)
                };
                ops::gemm(&gb, &ones, &dqkv, self.grad_of(&b), None)?;
                let gx = Gemm {
                    lda: 3 * h,
                    offset_a: k * h,
                    beta: if k == 0 { 0.0 } else { 1.0 },
                    ..Gemm::new(rows, h, h, false, false)
                };
                ops::gemm(&gx, &dqkv, self.value(&w), &mut d_input, None)?;
            }
            drop((dqkv, ls.qkv, ls.input));
            let mut total = dev.alloc::<f32>(rows * h, "d layer input")?;
            ops::add(&d_input, &d_ln1_in, &mut total, rows * h)?; // the residual path
            dx = total;
        }
        // Embeddings.
        let d_emb = self.dropout_backward(&dx, s.seed.map(|x| site_seed(x, 0, 0)))?;
        let d_sum =
            self.layer_norm_backward(&s.emb_sum, &s.emb_ln, &d_emb, "embeddings.LayerNorm", rows)?;
        let pad = Some(c.pad_token_id);
        let word = "embeddings.word_embeddings.weight";
        embedding::backward(&s.ids, &d_sum, self.grad_of(word), h, pad)?;
        let position = "embeddings.position_embeddings.weight";
        embedding::backward(&s.positions, &d_sum, self.grad_of(position), h, None)?;
        let kind = "embeddings.token_type_embeddings.weight";
        embedding::backward(&s.types, &d_sum, self.grad_of(kind), h, None)?;
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

    /// Backward of a post-LayerNorm: writes its parameter gradients, returns d input.
    fn layer_norm_backward(
        &mut self,
        x: &Buffer<f32>,
        stats: &layernorm::Stats,
        dy: &Buffer<f32>,
        prefix: &str,
        rows: usize,
    ) -> Result<Buffer<f32>> {
        let h = self.config.hidden_size;
        let dev = x.device().clone();
        let mut dx = dev.alloc::<f32>(rows * h, "d layernorm")?;
        let mut dy_xhat = dev.alloc::<f32>(rows * h, "d layernorm")?;
        layernorm::backward(
            x,
            self.value(&format!("{prefix}.weight")),
            stats,
            dy,
            &mut dx,
            &mut dy_xhat,
            rows,
            h,
        )?;
        ops::sum_columns(&dy_xhat, self.grad_of(&format!("{prefix}.weight")), rows, h)?;
        ops::sum_columns(dy, self.grad_of(&format!("{prefix}.bias")), rows, h)?;
        Ok(dx)
    }

    /// Backward of y = x W^T + b: writes dW, db, returns dx.
    fn dense_backward(
        &mut self,
        x: &Buffer<f32>,
        dy: &Buffer<f32>,
        prefix: &str,
        rows: usize,
        input: usize,
        output: usize,
    ) -> Result<Buffer<f32>> {
        let dev = x.device().clone();
        ops::gemm(
            &Gemm::new(output, input, rows, true, false),
            dy,
            x,
            self.grad_of(&format!("{prefix}.weight")),
            None,
        )?;
        ops::sum_columns(dy, self.grad_of(&format!("{prefix}.bias")), rows, output)?;
        let mut dx = dev.alloc::<f32>(rows * input, "d dense")?;
        ops::gemm(
            &Gemm::new(rows, input, output, false, false),
            dy,
            self.value(&format!("{prefix}.weight")),
            &mut dx,
            None,
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

fn dropout(x: &Buffer<f32>, p: f32, seed: u64) -> Result<Buffer<f32>> {
    let mut y = x.device().alloc::<f32>(x.len(), "dropout")?;
    ops::dropout(x, &mut y, p, seed, false)?;
    Ok(y)
}
