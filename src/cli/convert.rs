//! `emrclass convert`: a PyTorch checkpoint (or safetensors) to safetensors.

use std::path::PathBuf;

use emrclass::Result;

/// Convert a weights file — a PyTorch checkpoint (`pytorch_model.bin`, `*.pt`: zip or legacy
/// format, read without Python and without running its pickle) or safetensors; a folder
/// means its weights file — to safetensors, names and element types unchanged.
#[derive(clap::Args)]
pub struct Args {
    /// A weights file (pytorch_model.bin, *.pt, *.safetensors) or a checkpoint folder.
    input: PathBuf,
    /// The safetensors file to write.
    output: PathBuf,
}

pub fn run(a: &Args) -> Result<bool> {
    let n = emrclass::weights::convert(&a.input, &a.output)?;
    eprintln!(
        "wrote {n} tensors from {} to {}",
        a.input.display(),
        a.output.display()
    );
    Ok(true)
}
