//! `emrclass export --run DIR --to hf OUT`: a fine-tuned classifier, or a pretrained encoder,
//! as a folder a PyTorch user loads with transformers.
//!
//! - `cls` head: the engine's head is exactly `BertForSequenceClassification`'s (pooled [CLS],
//!   dropout, linear), so OUT is that model's folder: `config.json` (the encoder's, with
//!   `architectures`, `id2label`, `label2id`, `problem_type`, `classifier_dropout`),
//!   `model.safetensors` under its names (`bert.*`, `classifier.*`) and the tokenizer files.
//! - every other head: `OUT/encoder/` is a `BertModel` folder (config, weights, tokenizer),
//!   `OUT/head.safetensors` holds the head's tensors under the engine's names in PyTorch's
//!   layouts (an RNN's two directions stacked on a first axis of 2), and `OUT/head.json` says
//!   the head's shape and the labels; the README's `EmrclassHead` module loads the pair;
//! - a pretraining run (`emrclass pretrain`): a `BertForMaskedLM` folder (`masked_lm`).
//!
//! The tokenizer's `model_max_length` is the run's `--max-len`, so `tokenizer(text,
//! truncation=True)` cuts where the engine cut (`--long-text head-tail` has no tokenizer
//! equivalent: the export says so). The folder is written beside OUT and renamed into place at
//! the end: OUT is never half written, and an existing non-empty OUT is refused, not replaced.

mod files;
mod masked_lm;

use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::bert::{parameter_shapes, BertEncoder};
use crate::model::heads::{Head, HeadKind};
use crate::train::inference::load_run;
use crate::train::trainer::Input;
use files::{copy_tokenizer, io, write_all, write_json};

/// What `export` wrote.
pub struct Exported {
    pub folder: PathBuf,
    /// `BertForSequenceClassification` (cls head) or `BertModel + EmrclassHead`.
    pub layout: &'static str,
    pub tensors: usize,
    /// Things a PyTorch user must know (e.g. head-tail truncation is not the tokenizer's).
    pub warnings: Vec<String>,
}

/// Exports the best epoch's model of `run` (or its latest checkpoint) to `out`.
pub fn export_hf(dev: &Device, run: &Path, latest: bool, out: &Path) -> Result<Exported> {
    if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| io(out, e))?
            .next()
            .is_some()
    {
        return Err(Error::Invalid(format!(
            "{}: exists and is not empty; export writes a new folder and replaces nothing",
            out.display()
        )));
    }
    if crate::train::pretraining::is_pretraining_run(run) {
        let tensors = staged(out, |dir| masked_lm::write_folder(dev, run, latest, dir))?;
        return Ok(Exported {
            folder: out.to_path_buf(),
            layout: "BertForMaskedLM",
            tensors,
            warnings: Vec::new(),
        });
    }
    let mut loaded = load_run(dev, run, !latest)?;
    let spec = loaded.state.run.model.clone();
    let cls = loaded.model.head.config.kind == HeadKind::Cls;
    let (Some(encoder_dir), Input::Encoder(enc)) = (&spec.encoder, &loaded.model.input) else {
        return Err(Error::Invalid(format!(
            "{}: a run without a BERT encoder (its input is character embeddings); `export --to hf` writes transformers models, which need one",
            run.display()
        )));
    };
    let mut warnings = Vec::new();
    if spec.long_text == "chunks" {
        warnings.push(format!(
            "the run read long records as up to {} windows of {} tokens and took the {} of their logits; the exported model reads one window: split long texts and pool the same way",
            spec.max_chunks, spec.max_len, spec.chunk_pool
        ));
    } else if spec.long_text != "head" {
        warnings.push(format!(
            "the run kept `--long-text {}`; the tokenizer's truncation keeps the head only: cut long texts the same way before tokenizing",
            spec.long_text
        ));
    }
    let labels = loaded.labels.clone();
    let tensors = staged(out, |dir| {
        write_folder(
            dir,
            encoder_dir,
            enc,
            &mut loaded.model.head,
            &labels,
            &spec,
        )
    })?;
    Ok(Exported {
        folder: out.to_path_buf(),
        layout: if cls {
            "BertForSequenceClassification"
        } else {
            "BertModel + EmrclassHead"
        },
        tensors,
        warnings,
    })
}

/// Runs `write` into a staging folder beside `out` and renames it into place when it
/// succeeds (an empty `out` gives way); a failed write leaves nothing. Returns what `write`
/// returned.
fn staged(out: &Path, write: impl FnOnce(&Path) -> Result<usize>) -> Result<usize> {
    let name = out
        .file_name()
        .ok_or_else(|| io(out, "no folder name"))?
        .to_string_lossy();
    let staging = out.with_file_name(format!(".{name}.partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|e| io(&staging, e))?;
    let tensors = match write(&staging) {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    if out.exists() {
        // An empty folder (checked by the caller) gives way to the finished one.
        std::fs::remove_dir(out).map_err(|e| io(out, e))?;
    }
    std::fs::rename(&staging, out).map_err(|e| io(out, e))?;
    Ok(tensors)
}

/// Writes the export into `dir`; returns the number of tensors written.
fn write_folder(
    dir: &Path,
    encoder_dir: &Path,
    enc: &BertEncoder,
    head: &mut Head,
    labels: &[String],
    spec: &crate::train::state::ModelSpec,
) -> Result<usize> {
    let config_path = encoder_dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| io(&config_path, e))?;
    let mut config: Map<String, Value> =
        serde_json::from_str(&text).map_err(|e| io(&config_path, e))?;
    let encoder: Vec<(String, Vec<usize>, Vec<f32>)> = parameter_shapes(&enc.config)
        .into_iter()
        .map(|(n, shape)| Ok((n.clone(), shape, enc.param(&n).value.to_host()?)))
        .collect::<Result<_>>()?;
    let cls = head.config.kind == HeadKind::Cls;
    let model_dir = if cls {
        dir.to_path_buf()
    } else {
        dir.join("encoder")
    };
    std::fs::create_dir_all(&model_dir).map_err(|e| io(&model_dir, e))?;
    copy_tokenizer(encoder_dir, &model_dir, spec.max_len)?;
    let shapes = head.shapes();
    let mut head_tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    for ((name, shape), slot) in shapes.into_iter().zip(head.slots(1.0)) {
        let values = slot.value.to_host()?;
        if name != slot.name || values.len() != shape.iter().product::<usize>() {
            return Err(Error::Invalid(format!(
                "export: head tensor {} of {} values does not match {name} {shape:?}",
                slot.name,
                values.len()
            )));
        }
        head_tensors.push((name, shape, values));
    }
    if cls {
        config.insert(
            "architectures".into(),
            json!(["BertForSequenceClassification"]),
        );
        config.insert(
            "id2label".into(),
            Value::Object(
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (i.to_string(), json!(l)))
                    .collect(),
            ),
        );
        config.insert(
            "label2id".into(),
            Value::Object(
                labels
                    .iter()
                    .enumerate()
                    .map(|(i, l)| (l.clone(), json!(i)))
                    .collect(),
            ),
        );
        config.insert("problem_type".into(), json!("single_label_classification"));
        config.insert("classifier_dropout".into(), json!(short(spec.dropout)));
        let mut all: Vec<(String, Vec<usize>, &[f32])> = encoder
            .iter()
            .map(|(n, s, v)| (format!("bert.{n}"), s.clone(), v.as_slice()))
            .collect();
        for (n, s, v) in &head_tensors {
            let hf = n.replace("head.classifier.", "classifier.");
            all.push((hf, s.clone(), v.as_slice()));
        }
        write_json(&dir.join("config.json"), &Value::Object(config))?;
        write_all(&dir.join("model.safetensors"), &all)?;
        return Ok(all.len());
    }
    config.insert("architectures".into(), json!(["BertModel"]));
    write_json(&model_dir.join("config.json"), &Value::Object(config))?;
    let enc_list: Vec<(String, Vec<usize>, &[f32])> = encoder
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    write_all(&model_dir.join("model.safetensors"), &enc_list)?;
    let head_list: Vec<(String, Vec<usize>, &[f32])> = head_tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), v.as_slice()))
        .collect();
    write_all(&dir.join("head.safetensors"), &head_list)?;
    let c = &head.config;
    let description = json!({
        "format": 1,
        "kind": c.kind.name(),
        "input": c.input,
        "classes": c.classes,
        "labels": labels,
        "textcnn_filters": c.textcnn_filters,
        "textcnn_widths": c.textcnn_widths,
        "rnn_hidden": c.rnn_hidden,
        "rnn_cell": head.rnn.as_ref().map(|r| format!("{:?}", r.cell).to_lowercase()),
        "pool": format!("{:?}", c.pool).to_lowercase(),
        "sentence": c.uses_sentence(),
        "dropout": short(c.dropout),
        "max_len": spec.max_len,
    });
    write_json(&dir.join("head.json"), &description)?;
    Ok(enc_list.len() + head_list.len())
}

/// An f32 setting as the f64 its decimal text means (0.1, not 0.10000000149011612).
fn short(x: f32) -> f64 {
    x.to_string().parse().unwrap_or(x as f64)
}
