//! Reading and writing tensors in safetensors files (Hugging Face tensor names). fp32, fp16 and
//! bf16 on disk all arrive as f32. A missing tensor, a wrong shape, a truncated or corrupt file
//! is an error that names the file and the tensor; writes are atomic (temp file, then rename).

use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

pub struct HostTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The first of `names` that the file holds (checkpoints prefix names differently: `bert.`,
/// `ernie.`, none), converted to f32.
pub fn read_tensor(path: &Path, names: &[&str]) -> Result<HostTensor> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes).map_err(|e| {
        Error::Invalid(format!(
            "{}: not a readable safetensors file (truncated or corrupt?): {e}",
            path.display()
        ))
    })?;
    let Some(&name) = names.iter().find(|n| st.tensor(n).is_ok()) else {
        let mut held = st.names();
        held.sort();
        held.truncate(8);
        return Err(Error::Invalid(format!(
            "{}: no tensor named {} (the file holds {}{})",
            path.display(),
            names.join(" or "),
            held.join(", "),
            if st.len() > 8 { ", ..." } else { "" }
        )));
    };
    let view = st.tensor(name).expect("found above");
    let data = to_f32(view.dtype(), view.data(), name, path)?;
    Ok(HostTensor {
        name: name.to_string(),
        shape: view.shape().to_vec(),
        data,
    })
}

/// Little-endian fp32, fp16 or bf16 bytes as f32.
fn to_f32(dtype: Dtype, raw: &[u8], name: &str, path: &Path) -> Result<Vec<f32>> {
    Ok(match dtype {
        Dtype::F32 => raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F16 => raw
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        Dtype::BF16 => raw
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        other => {
            return Err(Error::Invalid(format!(
                "{}: tensor {name} is {other:?}; F32, F16 or BF16 expected",
                path.display()
            )))
        }
    })
}

/// Checks a tensor's shape, naming the tensor with the expected and the found shape.
pub fn expect_shape(path: &Path, t: &HostTensor, want: &[usize]) -> Result<()> {
    if t.shape != want {
        return Err(Error::Invalid(format!(
            "{}: tensor {} has shape {:?}, {want:?} expected",
            path.display(),
            t.name,
            t.shape
        )));
    }
    Ok(())
}

/// Writes f32 tensors (name, shape, values) atomically: a temp file beside `path`, then rename.
pub fn write_tensors(path: &Path, tensors: &[(&str, Vec<usize>, &[f32])]) -> Result<()> {
    // safetensors is little-endian whatever the host is.
    let bytes: Vec<Vec<u8>> = tensors
        .iter()
        .map(|t| t.2.iter().flat_map(|v| v.to_le_bytes()).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .zip(&bytes)
        .map(|((name, shape, _), bytes)| {
            safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), bytes)
                .map(|v| (name.to_string(), v))
                .map_err(|e| Error::Invalid(format!("tensor {name}: {e}")))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
    write_atomically(path, &bytes)
}

/// Writes `bytes` to `path.tmp`, syncs it to the disk, renames it into place and syncs the
/// folder: a reader (or a run resumed after a crash or a power cut) sees the old file or the
/// new one, never half of one.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    let (first, rest) = bytes.split_at(bytes.len() / 2);
    let mut file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    file.write_all(first).map_err(|e| Error::io(&tmp, e))?;
    file.flush().map_err(|e| Error::io(&tmp, e))?;
    crate::crash::point("write-partial");
    file.write_all(rest)
        .and_then(|_| file.sync_all())
        .map_err(|e| Error::io(&tmp, e))?;
    drop(file);
    crate::crash::point("write-unrenamed");
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
    sync_folder_of(path)
}

/// Makes a rename in `path`'s folder durable (a no-op where folders cannot be opened).
fn sync_folder_of(path: &Path) -> Result<()> {
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::File::open(folder) {
        Ok(f) => f.sync_all().map_err(|e| Error::io(folder, e)),
        Err(_) => Ok(()),
    }
}

/// A safetensors checkpoint read once: the header parsed, tensors converted on request.
pub struct Checkpoint {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    header_len: usize,
    metadata: safetensors::tensor::Metadata,
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        // Validates the header and that every tensor's bytes lie inside the file.
        SafeTensors::deserialize(&bytes).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a readable safetensors file (truncated or corrupt?): {e}",
                path.display()
            ))
        })?;
        let (header_len, metadata) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            Error::Invalid(format!(
                "{}: unreadable safetensors header: {e}",
                path.display()
            ))
        })?;
        Ok(Checkpoint {
            path: path.to_path_buf(),
            bytes,
            header_len,
            metadata,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.metadata.tensors().keys().cloned().collect();
        n.sort();
        n
    }

    pub fn contains(&self, name: &str) -> bool {
        self.metadata.info(name).is_some()
    }

    /// Tensor `name` as f32, checked against `shape` (the error names the tensor and both shapes).
    /// The shape of a tensor, if the file holds it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.metadata.info(name).map(|i| i.shape.clone())
    }

    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let info = self.metadata.info(name).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: missing tensor {name} (expected shape {shape:?})",
                self.path.display()
            ))
        })?;
        if info.shape != shape {
            return Err(Error::Invalid(format!(
                "{}: tensor {name} has shape {:?}, {shape:?} expected",
                self.path.display(),
                info.shape
            )));
        }
        let (start, end) = info.data_offsets;
        let raw = &self.bytes[8 + self.header_len + start..8 + self.header_len + end];
        to_f32(info.dtype, raw, name, &self.path)
    }
}
