//! The files of an export: writing tensors and JSON, copying the tokenizer.

use std::path::Path;

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::weights::{write_atomically, write_tensors};

/// Tokenizer files copied from the encoder's folder when present.
pub const TOKENIZER_FILES: [&str; 5] = [
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
];

pub fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

pub fn write_all(path: &Path, tensors: &[(String, Vec<usize>, &[f32])]) -> Result<()> {
    let borrowed: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), *v))
        .collect();
    write_tensors(path, &borrowed)
}

pub fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io(path, e))?;
    write_atomically(path, text.as_bytes())
}

/// Copies the tokenizer files and sets `model_max_length` to the run's `--max-len`.
pub fn copy_tokenizer(from: &Path, to: &Path, max_len: usize) -> Result<()> {
    let present: Vec<&str> = TOKENIZER_FILES
        .into_iter()
        .filter(|f| from.join(f).is_file())
        .collect();
    if !present.contains(&"vocab.txt") && !present.contains(&"tokenizer.json") {
        return Err(Error::Invalid(format!(
            "{}: neither vocab.txt nor tokenizer.json; the export needs the run's tokenizer",
            from.display()
        )));
    }
    for f in &present {
        if *f != "tokenizer_config.json" {
            std::fs::copy(from.join(f), to.join(f)).map_err(|e| io(&from.join(f), e))?;
        }
    }
    let path = from.join("tokenizer_config.json");
    let mut tc: Map<String, Value> = if present.contains(&"tokenizer_config.json") {
        let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
        serde_json::from_str(&text).map_err(|e| io(&path, e))?
    } else {
        Map::new()
    };
    tc.insert("model_max_length".into(), json!(max_len));
    write_json(&to.join("tokenizer_config.json"), &Value::Object(tc))
}
