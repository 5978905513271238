//! Reading tensors from safetensors files and PyTorch checkpoints (Hugging Face tensor names),
//! writing safetensors. fp32, fp16 and bf16 on disk all arrive as f32. A missing tensor, a wrong shape, a truncated or corrupt file
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
/// `ernie.`, none), converted to f32. Safetensors or a PyTorch checkpoint.
pub fn read_tensor(path: &Path, names: &[&str]) -> Result<HostTensor> {
    let ck = Checkpoint::open(path)?;
    let Some(&name) = names.iter().find(|n| ck.contains(n)) else {
        let mut held = ck.names();
        let count = held.len();
        held.truncate(8);
        return Err(Error::Invalid(format!(
            "{}: no tensor named {} (the file holds {}{})",
            path.display(),
            names.join(" or "),
            held.join(", "),
            if count > 8 { ", ..." } else { "" }
        )));
    };
    Ok(HostTensor {
        name: name.to_string(),
        shape: ck.shape(name).expect("found above"),
        data: ck.values(name)?,
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
        Dtype::F64 => raw
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
            .collect(),
        other => {
            return Err(Error::Invalid(format!(
                "{}: tensor {name} is {other:?}; F32, F16, BF16 or F64 expected",
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
    let all: Vec<TensorBytes> = tensors
        .iter()
        .map(|(name, shape, values)| TensorBytes::f32(name, shape.clone(), values))
        .collect();
    write_tensor_bytes(path, &all)
}

/// A tensor to write: name, element type, shape and its little-endian bytes.
pub struct TensorBytes {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl TensorBytes {
    pub fn f32(name: &str, shape: Vec<usize>, values: &[f32]) -> TensorBytes {
        TensorBytes {
            name: name.to_string(),
            dtype: Dtype::F32,
            shape,
            // safetensors is little-endian whatever the host is.
            bytes: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        }
    }

    pub fn u8(name: &str, values: &[u8]) -> TensorBytes {
        TensorBytes {
            name: name.to_string(),
            dtype: Dtype::U8,
            shape: vec![values.len()],
            bytes: values.to_vec(),
        }
    }
}

/// Writes tensors of any element type atomically, as `write_tensors`.
pub fn write_tensor_bytes(path: &Path, tensors: &[TensorBytes]) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| {
            safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.bytes)
                .map(|v| (t.name.clone(), v))
                .map_err(|e| Error::Invalid(format!("tensor {}: {e}", t.name)))
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

/// A weights file read once — safetensors, or a PyTorch checkpoint (`pytorch_model.bin`, zip or
/// legacy, through the restricted unpickler of `crate::pytorch`) — with tensors converted to f32
/// on request.
pub struct Checkpoint {
    path: std::path::PathBuf,
    format: Format,
}

enum Format {
    Safetensors {
        bytes: Vec<u8>,
        header_len: usize,
        metadata: safetensors::tensor::Metadata,
    },
    PyTorch {
        tensors: std::collections::HashMap<String, crate::pytorch::RawTensor>,
    },
}

/// A PyTorch element type as safetensors names it.
fn safetensors_dtype(d: crate::pytorch::pickle::Dtype) -> Dtype {
    use crate::pytorch::pickle::Dtype as T;
    match d {
        T::F64 => Dtype::F64,
        T::F32 => Dtype::F32,
        T::F16 => Dtype::F16,
        T::BF16 => Dtype::BF16,
        T::I64 => Dtype::I64,
        T::I32 => Dtype::I32,
        T::I16 => Dtype::I16,
        T::I8 => Dtype::I8,
        T::U8 => Dtype::U8,
        T::Bool => Dtype::BOOL,
    }
}

/// The weights file of a checkpoint folder: `model.safetensors`, else `pytorch_model.bin`.
pub fn weights_file(dir: &Path) -> Result<std::path::PathBuf> {
    ["model.safetensors", "pytorch_model.bin"]
        .into_iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::Invalid(format!(
                "{}: no model.safetensors or pytorch_model.bin in this folder",
                dir.display()
            ))
        })
}

impl Checkpoint {
    pub fn open(path: &Path) -> Result<Checkpoint> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        if crate::pytorch::is_pytorch(&bytes) {
            let state = crate::pytorch::read(&bytes)
                .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))?;
            if std::env::var_os("EMRCLASS_DEBUG").is_some() && !state.skipped.is_empty() {
                eprintln!(
                    "debug: {}: entries that are not tensors, skipped: {}",
                    path.display(),
                    state.skipped.join(", ")
                );
            }
            return Ok(Checkpoint {
                path: path.to_path_buf(),
                format: Format::PyTorch {
                    tensors: state.tensors.into_iter().collect(),
                },
            });
        }
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
            format: Format::Safetensors {
                bytes,
                header_len,
                metadata,
            },
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = match &self.format {
            Format::Safetensors { metadata, .. } => metadata.tensors().keys().cloned().collect(),
            Format::PyTorch { tensors } => tensors.keys().cloned().collect(),
        };
        n.sort();
        n
    }

    pub fn contains(&self, name: &str) -> bool {
        self.shape(name).is_some()
    }

    /// The shape of a tensor, if the file holds it.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        match &self.format {
            Format::Safetensors { metadata, .. } => metadata.info(name).map(|i| i.shape.clone()),
            Format::PyTorch { tensors } => tensors.get(name).map(|t| t.shape.clone()),
        }
    }

    /// Tensor `name` as f32, checked against `shape` (the error names the tensor and both shapes).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let found = self.shape(name).ok_or_else(|| {
            Error::Invalid(format!(
                "{}: missing tensor {name} (expected shape {shape:?})",
                self.path.display()
            ))
        })?;
        if found != shape {
            return Err(Error::Invalid(format!(
                "{}: tensor {name} has shape {found:?}, {shape:?} expected",
                self.path.display(),
            )));
        }
        self.values(name)
    }

    /// Tensor `name` as stored: element type, shape and little-endian bytes.
    pub fn raw(&self, name: &str) -> Option<(Dtype, Vec<usize>, &[u8])> {
        match &self.format {
            Format::Safetensors {
                bytes,
                header_len,
                metadata,
            } => metadata.info(name).map(|info| {
                let (start, end) = info.data_offsets;
                let at = 8 + header_len;
                (info.dtype, info.shape.clone(), &bytes[at + start..at + end])
            }),
            Format::PyTorch { tensors } => tensors.get(name).map(|t| {
                (
                    safetensors_dtype(t.dtype),
                    t.shape.clone(),
                    t.data.as_slice(),
                )
            }),
        }
    }

    /// Tensor `name` as f32, whatever its shape.
    pub fn values(&self, name: &str) -> Result<Vec<f32>> {
        let missing = || Error::Invalid(format!("{}: missing tensor {name}", self.path.display()));
        match &self.format {
            Format::Safetensors {
                bytes,
                header_len,
                metadata,
            } => {
                let info = metadata.info(name).ok_or_else(missing)?;
                let (start, end) = info.data_offsets;
                let raw = &bytes[8 + header_len + start..8 + header_len + end];
                to_f32(info.dtype, raw, name, &self.path)
            }
            Format::PyTorch { tensors } => {
                let t = tensors.get(name).ok_or_else(missing)?;
                to_f32(safetensors_dtype(t.dtype), &t.data, name, &self.path)
            }
        }
    }
}

/// `emrclass convert`: every tensor of a weights file (a PyTorch checkpoint or safetensors; a
/// folder means its weights file) written to `output` as safetensors, names and element types
/// unchanged. Returns how many tensors were written.
pub fn convert(input: &Path, output: &Path) -> Result<usize> {
    let file = if input.is_dir() {
        weights_file(input)?
    } else {
        input.to_path_buf()
    };
    let ck = Checkpoint::open(&file)?;
    let names = ck.names();
    let views: Vec<(String, safetensors::tensor::TensorView)> = names
        .iter()
        .map(|name| {
            let (dtype, shape, bytes) = ck.raw(name).expect("a listed tensor");
            safetensors::tensor::TensorView::new(dtype, shape, bytes)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Invalid(format!("{}: tensor {name}: {e}", file.display())))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, None)
        .map_err(|e| Error::Invalid(format!("{}: {e}", output.display())))?;
    write_atomically(output, &bytes)?;
    Ok(names.len())
}
