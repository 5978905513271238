//! Models by name: `hf:owner/name[@revision]` (or `hf:name` for a model without an owner, such as
//! `bert-base-chinese`) becomes a local folder, as `from_pretrained` does.
//! The files a checkpoint folder needs — `config.json`, the tokenizer (`tokenizer.json`, else
//! `vocab.txt`) and the weights (`model.safetensors`, else `pytorch_model.bin`) — are fetched
//! through the `hf-hub` crate into the standard Hugging Face cache (`$HF_HOME/hub`, default
//! `~/.cache/huggingface/hub`) from `$HF_ENDPOINT` (default https://huggingface.co), with a
//! progress bar; files already cached are not fetched again, and with `HF_HUB_OFFLINE=1` only
//! the cache is used. The folder returned is the cache's snapshot of that revision.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// The prefix that marks a model name instead of a folder.
pub const PREFIX: &str = "hf:";

/// What a command needs of a model.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// config.json alone (`plan`).
    Config,
    /// config.json, the tokenizer and the weights.
    Everything,
}

/// A folder argument as given: `hf:` names are fetched (or found in the cache), anything else
/// is a path returned as it is.
pub fn model_folder(arg: &Path, need: Need) -> Result<PathBuf> {
    match arg.to_str().and_then(|s| s.strip_prefix(PREFIX)) {
        Some(name) => fetch(name, need),
        None if !arg.exists() => Err(Error::Invalid(format!(
            "{}: no such file or folder (give a BERT checkpoint folder, or {PREFIX}owner/name for a model on the Hugging Face Hub)",
            arg.display()
        ))),
        None => Ok(arg.to_path_buf()),
    }
}

/// `owner/name[@revision]`, or `name[@revision]` for the Hub's models without an owner (such as
/// `bert-base-chinese`, as transformers accepts them) → (repository id, revision).
fn parse(name: &str) -> Result<(String, String)> {
    let (id, revision) = match name.split_once('@') {
        Some((id, rev)) => (id, rev),
        None => (name, "main"),
    };
    let parts: Vec<&str> = id.split('/').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) || revision.is_empty() {
        return Err(Error::Invalid(format!(
            "`{PREFIX}{name}`: a model name is {PREFIX}owner/name or {PREFIX}owner/name@revision (or {PREFIX}name for a model without an owner), e.g. {PREFIX}freedomking/mc-bert"
        )));
    }
    Ok((id.to_string(), revision.to_string()))
}

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !matches!(v.as_str(), "" | "0" | "false"))
}

/// What to do when a model cannot be fetched: the same in every error.
fn by_hand(id: &str) -> String {
    format!(
        "download config.json, vocab.txt (or tokenizer.json) and model.safetensors (or pytorch_model.bin) of {id} by hand into a folder and pass that folder instead"
    )
}

/// Whether a request failed with HTTP 404.
fn not_found(e: &ApiError) -> bool {
    match e {
        ApiError::RequestError(r) => matches!(**r, ureq::Error::StatusCode(404)),
        ApiError::TooManyRetries(inner) => not_found(inner),
        _ => false,
    }
}

fn fetch(name: &str, need: Need) -> Result<PathBuf> {
    let (id, revision) = parse(name)?;
    let repo = Repo::with_revision(id.clone(), RepoType::Model, revision.clone());
    let cache = Cache::from_env();
    let endpoint =
        std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".to_string());
    let cached = cache.repo(repo.clone());
    let api = if offline() {
        None
    } else {
        let api = ApiBuilder::from_env()
            .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .build()
            .map_err(|e| Error::Invalid(format!("{PREFIX}{name}: {e}")))?;
        Some(api.repo(repo))
    };
    // One file: the cache's copy, else a download; Ok(None) when the repository lacks it.
    let get = |file: &str| -> Result<Option<PathBuf>> {
        if let Some(p) = cached.get(file) {
            return Ok(Some(p));
        }
        let Some(api) = &api else {
            return Ok(None);
        };
        match api.download(file) {
            Ok(p) => Ok(Some(p)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(Error::Invalid(format!(
                "{PREFIX}{name}: fetching {file} from {endpoint} failed: {e}. No network? With HF_HUB_OFFLINE=1 a cached model is used; or {}",
                by_hand(&id)
            ))),
        }
    };
    let missing = |what: &str| {
        Error::Invalid(if api.is_none() {
            format!(
                "{PREFIX}{name}: {what} is not in the cache ({}) and HF_HUB_OFFLINE is set: unset it to download, or {}",
                cache.path().display(),
                by_hand(&id)
            )
        } else {
            format!(
                "{PREFIX}{name}: {endpoint} has no {what} for {id} at revision {revision} (is the name right?); {}",
                by_hand(&id)
            )
        })
    };
    let config = get("config.json")?.ok_or_else(|| missing("config.json"))?;
    if need == Need::Everything && get("tokenizer.json")?.is_none() {
        get("vocab.txt")?.ok_or_else(|| missing("tokenizer.json or vocab.txt"))?;
    }
    if need == Need::Everything && get("model.safetensors")?.is_none() {
        get("pytorch_model.bin")?
            .ok_or_else(|| missing("model.safetensors or pytorch_model.bin"))?;
    }
    let folder = config
        .parent()
        .expect("a cached file lies in its snapshot folder")
        .to_path_buf();
    eprintln!("model {PREFIX}{name}: {}", folder.display());
    Ok(folder)
}
