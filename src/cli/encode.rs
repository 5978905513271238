//! `emrclass encode`: a BERT checkpoint's hidden states over texts or token ids.

use std::path::PathBuf;

use emrclass::encode::Input;
use emrclass::{hub, settings, Result};

use super::common::GlobalArgs;

/// Run a BERT checkpoint over texts or token ids and write last_hidden_state [B, L, H] and
/// pooler_output [B, H] (fp32) to a safetensors file.
#[derive(clap::Args)]
pub struct Args {
    /// Folder with config.json, model.safetensors or pytorch_model.bin, and tokenizer.json or
    /// vocab.txt; or hf:owner/name[@revision].
    #[arg(long)]
    model: PathBuf,
    /// Texts: JSON lines (.jsonl: strings or {"text": ...}), a JSON array of those (.json), or
    /// one text per line.
    #[arg(long, conflicts_with = "ids", required_unless_present = "ids")]
    texts: Option<PathBuf>,
    /// Token ids: JSON {"input_ids": [[..]], "attention_mask": [[..]]?, "token_type_ids": [[..]]?}.
    #[arg(long)]
    ids: Option<PathBuf>,
    /// Truncation length; batches are padded to their longest sequence.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// The safetensors file to write.
    #[arg(long)]
    output: PathBuf,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    settings::check_encode(a.max_len)?;
    let model = hub::model_folder(&a.model, hub::Need::Everything)?;
    let dev = global.open_device(global.seed())?;
    let input = match (&a.texts, &a.ids) {
        (Some(t), _) => Input::Texts(t),
        (None, Some(i)) => Input::Ids(i),
        (None, None) => unreachable!("clap requires one of --texts and --ids"),
    };
    let (b, l) = emrclass::encode::run(&dev, &model, input, a.max_len, &a.output)?;
    eprintln!(
        "encoded {b} sequences of {l} tokens into {}",
        a.output.display()
    );
    Ok(true)
}
