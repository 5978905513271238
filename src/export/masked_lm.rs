//! A pretraining run (`emrclass pretrain`) as a `BertForMaskedLM` folder, as transformers saves
//! one: `config.json` with `architectures: ["BertForMaskedLM"]`, `model.safetensors` with the
//! encoder under `bert.*` (no pooler: BertForMaskedLM has none) and the MLM head under
//! `cls.predictions.*` (the decoder's weight left out: it is the word embeddings, tied again on
//! load), and the tokenizer with `model_max_length` = the run's `--max-len`. From the finished
//! run's `RUN/encoder/`, or (`--latest`, or a run not yet finished) from its checkpoint.

use std::path::Path;

use serde_json::{json, Map, Value};

use super::files::{copy_tokenizer, io, write_all, write_json};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::bert::BertConfig;
use crate::model::masked_lm::MaskedLm;
use crate::ops::AdamW;
use crate::rng::Rng;
use crate::train::checkpoint;
use crate::train::optim::Optimizer;
use crate::train::pretraining::PretrainState;

fn read_run_json(run: &Path) -> Result<Value> {
    let path = run.join("run.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    serde_json::from_str(&text).map_err(|e| io(&path, e))
}

/// The run's model and the folder its config and tokenizer come from: `RUN/encoder` when the
/// run finished (unless `latest`), else the starting folder with the checkpoint's weights.
fn load(dev: &Device, run: &Path, latest: bool) -> Result<(MaskedLm, std::path::PathBuf)> {
    let finished = run.join("encoder");
    if !latest && finished.join("config.json").is_file() {
        let model = MaskedLm::load_dir(dev, &finished, &mut Rng::new(0))?.model;
        return Ok((model, finished));
    }
    let ck = run.join("checkpoint");
    if !ck.join("state.json").is_file() {
        return Err(Error::Invalid(format!(
            "{}: neither a finished encoder (encoder/) nor a checkpoint (checkpoint/): nothing \
             to export",
            run.display()
        )));
    }
    let settings = read_run_json(run)?;
    let start = settings["encoder"]
        .as_str()
        .map(std::path::PathBuf::from)
        .ok_or_else(|| io(&run.join("run.json"), "no \"encoder\" folder"))?;
    let config = BertConfig::from_file(&start.join("config.json"))?;
    let mut model = MaskedLm::new(dev, config, &mut Rng::new(0))?;
    let state: PretrainState = checkpoint::read_state(&ck)?;
    let kind = settings["optimizer"]
        .as_str()
        .unwrap_or("adamw")
        .parse()
        .map_err(|e| io(&run.join("run.json"), e))?;
    // The moments are read too (the checkpoint holds them), then dropped with the optimizer.
    let mut opt = Optimizer::with_kind(AdamW::default(), kind);
    checkpoint::restore_slots(&ck, &state, model.slots(), &mut opt)?;
    Ok((model, start))
}

/// Writes the `BertForMaskedLM` folder of `run` into `dir`; returns the number of tensors.
pub fn write_folder(dev: &Device, run: &Path, latest: bool, dir: &Path) -> Result<usize> {
    let (model, source) = load(dev, run, latest)?;
    let max_len = read_run_json(run)?["max_len"].as_u64().unwrap_or(512) as usize;
    let config_path = source.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
    let mut config: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| io(&config_path, e))?;
    config.insert("architectures".into(), json!(["BertForMaskedLM"]));
    config.insert("model_type".into(), json!("bert"));
    config.insert("tie_word_embeddings".into(), json!(true));
    let mut host: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for p in model
        .encoder
        .params
        .iter()
        .filter(|p| !p.name.starts_with("pooler."))
    {
        host.push((
            format!("bert.{}", p.name),
            p.shape.clone(),
            p.value.to_host()?,
        ));
    }
    for (name, shape, buffer) in model.head.named_values() {
        host.push((name.to_string(), shape, buffer.to_host()?));
    }
    let tensors: Vec<(String, Vec<usize>, &[f32])> = host
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    copy_tokenizer(&source, dir, max_len)?;
    write_json(&dir.join("config.json"), &Value::Object(config))?;
    write_all(&dir.join("model.safetensors"), &tensors)?;
    Ok(tensors.len())
}
