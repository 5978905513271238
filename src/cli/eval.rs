//! `emrclass eval`: a run's model on a labelled file.

use std::path::PathBuf;

use emrclass::data::dataset::ReadOptions;
use emrclass::{settings, Result};

use super::common::GlobalArgs;

/// Evaluate a training run's model (best epoch, or --latest) on a labelled file: accuracy,
/// macro/micro/weighted F1 and the per-class report.
#[derive(clap::Args)]
pub struct Args {
    /// The run folder `train --out` wrote.
    #[arg(long)]
    run: PathBuf,
    /// .jsonl, .csv, .tsv or a CBLUE .json array, with labels.
    #[arg(long)]
    data: PathBuf,
    /// Use the latest checkpoint instead of the best epoch's.
    #[arg(long)]
    latest: bool,
    /// The text's field (JSON lines, CBLUE) or column (CSV, TSV).
    #[arg(long, default_value = "text")]
    text_field: String,
    /// The label's field (JSON lines, CBLUE) or column (CSV, TSV).
    #[arg(long, default_value = "label")]
    label_field: String,
    /// Skip broken records (listed on stderr) instead of stopping at the first.
    #[arg(long)]
    skip_bad: bool,
    /// Records per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    settings::check_inference(
        a.batch_size,
        &[
            ("--text-field", &a.text_field),
            ("--label-field", &a.label_field),
        ],
    )?;
    let dev = global.open_device(global.seed())?;
    let read = ReadOptions {
        text_field: a.text_field.clone(),
        label_field: a.label_field.clone(),
        skip_bad: a.skip_bad,
    };
    emrclass::train::inference::eval(&dev, &a.run, !a.latest, &a.data, &read, a.batch_size)?;
    Ok(true)
}
