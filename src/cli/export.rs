//! `emrclass export`: a run's model as a folder transformers loads.

use std::path::PathBuf;

use clap::ValueEnum;
use emrclass::Result;

use super::common::GlobalArgs;

/// Export a run's model (best epoch, or --latest) as a folder transformers loads: `cls` as
/// BertForSequenceClassification; other heads as OUT/encoder (BertModel) with
/// OUT/head.safetensors and OUT/head.json for the README's EmrclassHead module.
#[derive(clap::Args)]
pub struct Args {
    /// The run folder `train --out` wrote.
    #[arg(long)]
    run: PathBuf,
    /// The format: hf (Hugging Face transformers).
    #[arg(long, value_enum)]
    to: ExportFormat,
    /// A new (or empty) folder.
    out: PathBuf,
    /// Export the latest checkpoint instead of the best epoch's.
    #[arg(long)]
    latest: bool,
}

/// What `export --to` writes.
#[derive(Clone, Copy, ValueEnum)]
enum ExportFormat {
    /// A Hugging Face transformers folder.
    Hf,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    let ExportFormat::Hf = a.to;
    let dev = global.open_device(global.seed())?;
    let e = emrclass::export::export_hf(&dev, &a.run, a.latest, &a.out)?;
    for w in &e.warnings {
        eprintln!("warning: {w}");
    }
    println!(
        "wrote {} ({}, {} tensors)",
        e.folder.display(),
        e.layout,
        e.tensors
    );
    Ok(true)
}
