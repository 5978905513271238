//! The frozen-encoder path: every distinct token sequence is run through the encoder once (no
//! dropout), its last hidden states and pooled [CLS] are kept in host memory and cached on
//! disk, and training then runs the head alone on them — no encoder weights, gradients or
//! activations on the device, the fast path on a 4 GiB card.
//!
//! The cache file (`features-<key>.safetensors` in the cache folder) holds `hidden`
//! [total tokens, H], `pooled` [sequences, H] and `lengths` [sequences] (fp32); its key hashes
//! the encoder's config.json and model.safetensors (size and modification time), the token
//! sequences and this format's version, so any change makes a new file. Written atomically.

use std::collections::HashMap;
use std::hash::Hasher;
use std::path::{Path, PathBuf};

use crate::data::batching::pad;
use crate::device::{Buffer, Device};
use crate::error::{Error, Result};
use crate::model::bert::BertEncoder;
use crate::weights::{write_tensors, Checkpoint};

/// Encoder outputs of a set of token sequences, looked up by the sequence itself.
pub struct FeatureStore {
    pub hidden_size: usize,
    index: HashMap<Vec<i32>, usize>,
    /// Start of each sequence's rows in `hidden`.
    starts: Vec<usize>,
    lengths: Vec<usize>,
    hidden: Vec<f32>,
    pooled: Vec<f32>,
}

/// FNV-1a, for cache keys (stable across runs and platforms, unlike std's default hasher).
struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
}

fn cache_key(encoder_dir: &Path, seqs: &[&Vec<i32>]) -> Result<String> {
    let mut h = Fnv(0xcbf29ce484222325);
    h.write(b"emrclass features v1");
    let config = encoder_dir.join("config.json");
    h.write(
        &std::fs::read(&config)
            .map_err(|e| Error::Invalid(format!("{}: {e}", config.display())))?,
    );
    let weights = crate::weights::weights_file(encoder_dir)?;
    let meta = std::fs::metadata(&weights)
        .map_err(|e| Error::Invalid(format!("{}: {e}", weights.display())))?;
    h.write_u64(meta.len());
    if let Ok(t) = meta.modified() {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(d.as_nanos());
        }
    }
    for s in seqs {
        h.write_usize(s.len());
        for &id in s.iter() {
            h.write_i32(id);
        }
    }
    Ok(format!("{:016x}", h.finish()))
}

impl FeatureStore {
    /// The features of every distinct sequence in `seqs`: read from `cache_dir` when a file
    /// with the same key is there, else computed with `encoder` (batches of `batch`) and, when
    /// `write_cache`, written there (in a data-parallel world rank 0 alone writes: the others
    /// compute the same features and keep them in memory). Returns the store and whether it
    /// came from the cache.
    pub fn build(
        encoder: &mut BertEncoder,
        encoder_dir: &Path,
        seqs: &[Vec<i32>],
        (cache_dir, write_cache): (&Path, bool),
        batch: usize,
    ) -> Result<(FeatureStore, bool)> {
        let mut distinct: Vec<&Vec<i32>> = Vec::new();
        let mut index = HashMap::new();
        for s in seqs {
            if !index.contains_key(s) {
                index.insert(s.clone(), distinct.len());
                distinct.push(s);
            }
        }
        let h = encoder.config.hidden_size;
        let path: PathBuf = cache_dir.join(format!(
            "features-{}.safetensors",
            cache_key(encoder_dir, &distinct)?
        ));
        let lengths: Vec<usize> = distinct.iter().map(|s| s.len()).collect();
        let mut starts = Vec::with_capacity(lengths.len());
        let mut total = 0;
        for &l in &lengths {
            starts.push(total);
            total += l;
        }
        if path.exists() {
            let ck = Checkpoint::open(&path)?;
            let hidden = ck.get("hidden", &[total, h])?;
            let pooled = ck.get("pooled", &[distinct.len(), h])?;
            let stored = ck.get("lengths", &[distinct.len()])?;
            if stored.iter().zip(&lengths).any(|(&a, &b)| a as usize != b) {
                return Err(Error::Invalid(format!(
                    "{}: sequence lengths do not match the data (delete the file)",
                    path.display()
                )));
            }
            let store = FeatureStore {
                hidden_size: h,
                index,
                starts,
                lengths,
                hidden,
                pooled,
            };
            return Ok((store, true));
        }
        let mut hidden = vec![0.0f32; total * h];
        let mut pooled = vec![0.0f32; distinct.len() * h];
        for (c, chunk) in distinct.chunks(batch.max(1)).enumerate() {
            let b = pad(&chunk.iter().map(|s| s.as_slice()).collect::<Vec<_>>());
            let (states, pool) = encoder.infer(
                &b.input_ids,
                &b.attention_mask,
                Some(&b.token_type_ids),
                b.batch,
            )?;
            let (states, pool) = (states.to_host()?, pool.to_host()?);
            for (r, s) in chunk.iter().enumerate() {
                let i = c * batch.max(1) + r;
                let src = &states[r * b.len * h..(r * b.len + s.len()) * h];
                hidden[starts[i] * h..(starts[i] + s.len()) * h].copy_from_slice(src);
                pooled[i * h..(i + 1) * h].copy_from_slice(&pool[r * h..(r + 1) * h]);
            }
        }
        if write_cache {
            std::fs::create_dir_all(cache_dir)
                .map_err(|e| Error::Invalid(format!("{}: {e}", cache_dir.display())))?;
            let lens: Vec<f32> = lengths.iter().map(|&l| l as f32).collect();
            write_tensors(
                &path,
                &[
                    ("hidden", vec![total, h], &hidden),
                    ("pooled", vec![distinct.len(), h], &pooled),
                    ("lengths", vec![distinct.len()], &lens),
                ],
            )?;
        }
        Ok((
            FeatureStore {
                hidden_size: h,
                index,
                starts,
                lengths,
                hidden,
                pooled,
            },
            false,
        ))
    }

    /// A store of zeros for `seqs` (every sequence's features 0): for sizing a frozen run on
    /// `Device::sizing`, where feature values are never read.
    pub fn zeros(hidden_size: usize, seqs: &[Vec<i32>]) -> FeatureStore {
        let mut index = HashMap::new();
        let (mut starts, mut lengths, mut total) = (Vec::new(), Vec::new(), 0);
        for s in seqs {
            if !index.contains_key(s) {
                index.insert(s.clone(), lengths.len());
                starts.push(total);
                lengths.push(s.len());
                total += s.len();
            }
        }
        FeatureStore {
            hidden_size,
            hidden: vec![0.0; total * hidden_size],
            pooled: vec![0.0; lengths.len() * hidden_size],
            index,
            starts,
            lengths,
        }
    }

    /// Distinct sequences held.
    pub fn len(&self) -> usize {
        self.lengths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lengths.is_empty()
    }

    /// The padded hidden states [B, L, H] (zeros at padding) and pooled [B, H] of a batch's
    /// rows, each row given by its real tokens (`ids` row-major [B, L] with `mask`).
    pub fn gather(
        &self,
        dev: &Device,
        ids: &[i32],
        mask: &[i32],
        batch: usize,
    ) -> Result<(Buffer<f32>, Buffer<f32>)> {
        let (len, h) = (ids.len() / batch.max(1), self.hidden_size);
        if dev.is_sizing() {
            // The same device buffers, without assembling values nobody reads.
            return Ok((
                dev.alloc(batch * len * h, "cached hidden states")?,
                dev.alloc(batch * h, "cached pooled")?,
            ));
        }
        let mut states = vec![0.0f32; batch * len * h];
        let mut pooled = vec![0.0f32; batch * h];
        for r in 0..batch {
            let key: Vec<i32> = ids[r * len..(r + 1) * len]
                .iter()
                .zip(&mask[r * len..(r + 1) * len])
                .filter(|p| *p.1 == 1)
                .map(|p| *p.0)
                .collect();
            let &i = self.index.get(&key).ok_or_else(|| {
                Error::Invalid("frozen encoder: a sequence with no cached features".into())
            })?;
            let (s, l) = (self.starts[i], self.lengths[i]);
            states[r * len * h..(r * len + l) * h]
                .copy_from_slice(&self.hidden[s * h..(s + l) * h]);
            pooled[r * h..(r + 1) * h].copy_from_slice(&self.pooled[i * h..(i + 1) * h]);
        }
        Ok((
            dev.upload(&states, "cached hidden states")?,
            dev.upload(&pooled, "cached pooled")?,
        ))
    }
}
