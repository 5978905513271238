//! `emrclass predict`: a run's model over unlabelled texts.

use std::path::PathBuf;

use emrclass::{settings, Result};

use super::common::GlobalArgs;

/// Classify texts with a training run's model: JSON lines in (strings, or objects with a
/// text field and an optional id), JSON lines out (id, text, label, probabilities).
#[derive(clap::Args)]
pub struct Args {
    #[arg(long)]
    run: PathBuf,
    #[arg(long)]
    input: PathBuf,
    #[arg(long)]
    output: PathBuf,
    #[arg(long)]
    latest: bool,
    #[arg(long, default_value = "text")]
    text_field: String,
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    settings::check_inference(a.batch_size, &[("--text-field", &a.text_field)])?;
    let dev = global.open_device(global.seed())?;
    let n = emrclass::train::inference::predict(
        &dev,
        &a.run,
        !a.latest,
        &a.input,
        &a.output,
        &a.text_field,
        a.batch_size,
    )?;
    eprintln!("wrote {n} predictions to {}", a.output.display());
    Ok(true)
}
