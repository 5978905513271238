//! `emrclass encode`: texts or token ids through a BERT checkpoint to a safetensors file of
//! last_hidden_state [B, L, H] and pooler_output [B, H] (fp32). The frozen-encoder feature cache
//! of the trainer reuses this path.

use std::path::Path;

use crate::data::tokenizer::{BertTokenizer, TokenBatch};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::bert::BertEncoder;
use crate::weights;

/// A text from one JSON value: a string, or an object's "text" field. `at` names the place
/// (file:line, or file: element N) for the error.
fn json_text(v: &serde_json::Value, at: &str) -> Result<String> {
    match v {
        serde_json::Value::String(s) => Ok(s.clone()),
        serde_json::Value::Object(o) => match o.get("text").and_then(|t| t.as_str()) {
            Some(s) => Ok(s.to_string()),
            None => Err(Error::Invalid(format!(
                "{at}: an object without a \"text\" string"
            ))),
        },
        _ => Err(Error::Invalid(format!(
            "{at}: expected a string or {{\"text\": ...}}"
        ))),
    }
}

/// Texts from a file: JSON lines (a string, or an object with a "text" field) when the file ends
/// in .jsonl; a JSON array of such values when it ends in .json (CHIP-CTC's layout, which
/// `train` reads too); else one text per line.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if ext == "json" {
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Invalid(format!("{}: not JSON: {e}", path.display())))?;
        let items = v.as_array().ok_or_else(|| {
            Error::Invalid(format!(
                "{}: expected a JSON array of strings or {{\"text\": ...}} objects",
                path.display()
            ))
        })?;
        return items
            .iter()
            .enumerate()
            .map(|(i, v)| json_text(v, &format!("{}: element {}", path.display(), i + 1)))
            .collect();
    }
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if ext != "jsonl" {
            out.push(line.to_string());
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let at = format!("{}:{}", path.display(), i + 1);
        let v: serde_json::Value = serde_json::from_str(line)
            .map_err(|e| Error::Invalid(format!("{at}: not JSON: {e}")))?;
        out.push(json_text(&v, &at)?);
    }
    Ok(out)
}

#[derive(serde::Deserialize)]
struct IdsFile {
    input_ids: Vec<Vec<i32>>,
    attention_mask: Option<Vec<Vec<i32>>>,
    token_type_ids: Option<Vec<Vec<i32>>>,
}

/// Token ids from JSON `{"input_ids": [[..]], "attention_mask": [[..]]?, "token_type_ids": [[..]]?}`,
/// truncated to max_len and padded (id 0, mask 0) to the longest row.
pub fn read_ids(path: &Path, max_len: usize) -> Result<TokenBatch> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let f: IdsFile = serde_json::from_str(&text)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    let rows = f.input_ids.len();
    if rows == 0 {
        return Err(Error::Invalid(format!("{}: no input_ids", path.display())));
    }
    for (what, m) in [
        ("attention_mask", &f.attention_mask),
        ("token_type_ids", &f.token_type_ids),
    ] {
        if let Some(m) = m {
            if let Some(r) =
                (0..rows).find(|&r| m.get(r).map(|x| x.len()) != Some(f.input_ids[r].len()))
            {
                return Err(Error::Invalid(format!(
                    "{}: {what} row {r} does not match input_ids row {r}",
                    path.display()
                )));
            }
        }
    }
    let len = f
        .input_ids
        .iter()
        .map(|r| r.len().min(max_len))
        .max()
        .unwrap_or(0)
        .max(1);
    let mut b = TokenBatch {
        batch: rows,
        len,
        input_ids: vec![0; rows * len],
        attention_mask: vec![0; rows * len],
        token_type_ids: vec![0; rows * len],
    };
    for r in 0..rows {
        for t in 0..f.input_ids[r].len().min(len) {
            b.input_ids[r * len + t] = f.input_ids[r][t];
            b.attention_mask[r * len + t] = f.attention_mask.as_ref().map_or(1, |m| m[r][t]);
            b.token_type_ids[r * len + t] = f.token_type_ids.as_ref().map_or(0, |m| m[r][t]);
        }
    }
    Ok(b)
}

/// Where the token ids come from.
pub enum Input<'a> {
    Texts(&'a Path),
    Ids(&'a Path),
}

/// Encodes the input with the checkpoint in `model_dir` and writes `output`. Returns (batch, len).
pub fn run(
    dev: &Device,
    model_dir: &Path,
    input: Input,
    max_len: usize,
    output: &Path,
) -> Result<(usize, usize)> {
    let batch = match input {
        Input::Texts(p) => {
            let texts = read_texts(p)?;
            if texts.is_empty() {
                return Err(Error::Invalid(format!("{}: no texts", p.display())));
            }
            let tok = BertTokenizer::from_dir(model_dir)?;
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            tok.encode(&refs, max_len)?
        }
        Input::Ids(p) => read_ids(p, max_len)?,
    };
    let mut enc = BertEncoder::load_frozen_dir(dev, model_dir)?;
    let h = enc.config.hidden_size;
    let (hidden, pooled) = enc.infer(
        &batch.input_ids,
        &batch.attention_mask,
        Some(&batch.token_type_ids),
        batch.batch,
    )?;
    let (hidden, pooled) = (hidden.to_host()?, pooled.to_host()?);
    weights::write_tensors(
        output,
        &[
            (
                "last_hidden_state",
                vec![batch.batch, batch.len, h],
                &hidden,
            ),
            ("pooler_output", vec![batch.batch, h], &pooled),
        ],
    )?;
    Ok((batch.batch, batch.len))
}
