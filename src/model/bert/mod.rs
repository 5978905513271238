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

use crate::device::{Buffer, Device, Role};
use crate::error::{Error, Result};
use crate::model::slot::Slot;
use crate::ops::{self, layernorm};
use crate::rng::Rng;
use crate::weights::{self, Checkpoint};

mod backward;
mod forward;

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
        // Far above any BERT there is (BERT-large: 24 layers, 1024 wide, 4096 FFN, 512
        // positions, vocabularies up to a few hundred thousand): a damaged config.json is an
        // error here, not a multi-GiB plan or allocation later.
        for (name, value, limit) in [
            ("num_hidden_layers", self.num_hidden_layers, 1 << 10),
            ("hidden_size", h, 1 << 16),
            ("intermediate_size", self.intermediate_size, 1 << 18),
            ("vocab_size", self.vocab_size, 1 << 24),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                1 << 20,
            ),
            ("type_vocab_size", self.type_vocab_size, 1 << 16),
        ] {
            if value == 0 || value > limit {
                return Err(Error::Invalid(format!(
                    "{name} {value} is not in 1..={limit}"
                )));
            }
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
    /// The kept layers' saved tensors stored in fp16 (`--saved-activations fp16`): half their
    /// bytes; the statistics (attention log-sum-exp, LayerNorm mean and rstd) stay fp32, and
    /// every tensor is made fp32 again before backward uses it (fp32 arithmetic throughout).
    pub fp16_activations: bool,
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

/// `LayerSaved` with its [rows, *] tensors in fp16 and its statistics in fp32.
struct LayerSaved16 {
    tensors: [Buffer<half::f16>; 7],
    lse: Buffer<f32>,
    ln1: layernorm::Stats,
    ln2: layernorm::Stats,
}

impl LayerSaved {
    /// Stores the seven [rows, *] tensors in fp16, each fp32 one freed once converted.
    fn into_fp16(self) -> Result<LayerSaved16> {
        let half = |b: Buffer<f32>| -> Result<Buffer<half::f16>> {
            let mut h = b
                .device()
                .alloc::<half::f16>(b.len(), "saved activation (fp16)")?;
            crate::ops::convert_f32_to_f16(&b, &mut h)?;
            Ok(h)
        };
        Ok(LayerSaved16 {
            tensors: [
                half(self.input)?,
                half(self.qkv)?,
                half(self.context)?,
                half(self.ln1_in)?,
                half(self.h1)?,
                half(self.inter)?,
                half(self.ln2_in)?,
            ],
            lse: self.lse,
            ln1: self.ln1,
            ln2: self.ln2,
        })
    }
}

impl LayerSaved16 {
    /// The fp32 tensors again, for backward (each fp16 one freed once converted).
    fn into_fp32(self) -> Result<LayerSaved> {
        let [input, qkv, context, ln1_in, h1, inter, ln2_in] = self.tensors.map(Some);
        let full = |h: Option<Buffer<half::f16>>| -> Result<Buffer<f32>> {
            let h = h.expect("each tensor once");
            let mut f = h.device().alloc::<f32>(h.len(), "saved activation")?;
            crate::ops::convert_f16_to_f32(&h, &mut f)?;
            Ok(f)
        };
        Ok(LayerSaved {
            input: full(input)?,
            qkv: full(qkv)?,
            context: full(context)?,
            lse: self.lse,
            ln1_in: full(ln1_in)?,
            ln1: self.ln1,
            h1: full(h1)?,
            inter: full(inter)?,
            ln2_in: full(ln2_in)?,
            ln2: self.ln2,
        })
    }
}

/// A layer's state between forward and backward: everything (in fp32 or fp16), or only its
/// input.
enum LayerState {
    Kept(Box<LayerSaved>),
    Kept16(Box<LayerSaved16>),
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
            LayerState::Kept16(s) => {
                s.tensors.iter().map(|b| b.bytes()).sum::<usize>()
                    + s.lse.bytes()
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
    pub fn slots(&mut self, lr_scale: f32) -> Vec<Slot<'_>> {
        self.params
            .iter_mut()
            .map(|p| {
                let decay = !(p.name.ends_with(".bias") || p.name.contains("LayerNorm"));
                Slot::new(p.name.clone(), &mut p.value, &mut p.grad, lr_scale, decay)
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

    /// Loads a weights file (safetensors or a PyTorch checkpoint) for `config`. Names may carry the prefix `bert.`, `ernie.` or
    /// none, and LayerNorm parameters may be called gamma/beta; extra tensors (an MLM head, a
    /// classifier) are ignored. A missing tensor or a wrong shape names the tensor and shapes.
    pub fn load(dev: &Device, config: BertConfig, path: &Path) -> Result<Self> {
        BertEncoder::load_weights(dev, config, path, true)
    }

    /// `load_dir` for an encoder that will only run forward: no gradient buffers.
    pub fn load_frozen_dir(dev: &Device, dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        BertEncoder::load_weights(dev, config, &crate::weights::weights_file(dir)?, false)
    }

    fn load_weights(
        dev: &Device,
        config: BertConfig,
        path: &Path,
        trainable: bool,
    ) -> Result<Self> {
        config.validate()?;
        let ckpt = Checkpoint::open(path)?;
        // Each layer is 16 tensors: a layer count the file cannot hold is an error before the
        // list of expected tensors is built (a damaged config.json can say 2^31 layers).
        let held = ckpt.names().len();
        if config.num_hidden_layers > held / 16 {
            return Err(Error::Invalid(format!(
                "{}: holds {held} tensors, too few for the {} layers of config.json (16 each)",
                path.display(),
                config.num_hidden_layers
            )));
        }
        let prefix = ["bert.", "ernie.", ""]
            .into_iter()
            .find(|p| ckpt.contains(&format!("{p}embeddings.word_embeddings.weight")))
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "{}: no embeddings.word_embeddings.weight under the prefixes bert., ernie. or none",
                    path.display()
                ))
            })?;
        // A BertForMaskedLM checkpoint has no pooler: it starts fresh (transformers' init from
        // a fixed seed), as transformers starts it when such a checkpoint is fine-tuned.
        let no_pooler = !ckpt.contains(&format!("{prefix}pooler.dense.weight"))
            && !ckpt.contains(&format!("{prefix}pooler.dense.bias"));
        let mut fresh = Rng::new(0x9001);
        let values = parameter_shapes(&config)
            .iter()
            .map(|(name, shape)| {
                if no_pooler && name.starts_with("pooler.") {
                    let n = shape.iter().product();
                    return Ok(match name.ends_with(".bias") {
                        true => vec![0.0; n],
                        false => (0..n).map(|_| (fresh.normal() * 0.02) as f32).collect(),
                    });
                }
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
        if no_pooler {
            crate::note!(
                "{}: no pooler (a BertForMaskedLM checkpoint?): pooler.dense starts fresh, as in transformers",
                path.display()
            );
        }
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

    /// Loads `dir/config.json` and the folder's weights: `model.safetensors`, else
    /// `pytorch_model.bin`.
    pub fn load_dir(dev: &Device, dir: &Path) -> Result<Self> {
        let config = BertConfig::from_file(&dir.join("config.json"))?;
        BertEncoder::load(dev, config, &crate::weights::weights_file(dir)?)
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
}
