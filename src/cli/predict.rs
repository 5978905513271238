//! `emrclass predict`: a run's model over unlabelled texts.

use std::path::PathBuf;

use emrclass::{settings, Result};

use super::common::GlobalArgs;

/// Classify texts with a training run's model: JSON lines in (strings, or objects with a
/// text field and an optional id), JSON lines out (id, text, label, probabilities).
#[derive(clap::Args)]
pub struct Args {
    /// The run folder `train --out` wrote.
    #[arg(long)]
    run: PathBuf,
    /// JSON lines: a string per line, or an object with the text field and an optional id.
    #[arg(long)]
    input: PathBuf,
    /// The JSON-lines file to write (id, text as given, label, probability of every label).
    #[arg(long)]
    output: PathBuf,
    /// Use the latest checkpoint instead of the best epoch's.
    #[arg(long)]
    latest: bool,
    /// The text's field in input objects.
    #[arg(long, default_value = "text")]
    text_field: String,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Skip broken input lines (not JSON, no text field, an empty text) and list them on
    /// stderr, instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
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
        a.skip_bad,
    )?;
    eprintln!("wrote {n} predictions to {}", a.output.display());
    Ok(true)
}
