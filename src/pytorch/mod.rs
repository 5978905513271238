//! PyTorch checkpoints (`pytorch_model.bin`, `*.pt`) read without Python: the zip format of
//! `torch.save` since 1.6 (`<name>/data.pkl` and a record `<name>/data/<key>` per storage) and the
//! legacy format before it (pickles of a magic number, the protocol version and the system info,
//! then the object, then the storage keys and each storage's element count and bytes). The
//! pickles go through a restricted unpickler (`pickle.rs`) that never runs code. A state dict, or
//! one wrapped as `{"state_dict": ...}` or `{"model": ...}`, becomes named tensors, each gathered
//! from its storage by its offset and strides into contiguous little-endian bytes.

pub mod pickle;

use std::collections::HashMap;
use std::io::Read;

use pickle::{Dtype, StorageRef, TensorRef, Value};

/// One tensor, contiguous, little-endian.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTensor {
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
}

/// The tensors of a state dict, in the file's order, and the names of its entries that are not
/// tensors (skipped).
#[derive(Debug)]
pub struct StateDict {
    pub tensors: Vec<(String, RawTensor)>,
    pub skipped: Vec<String>,
}

/// A legacy view into a storage: (view key, element offset, element count).
type View = (String, u64, u64);

/// Whether `bytes` look like a PyTorch checkpoint (a zip archive, or a legacy pickle stream).
pub fn is_pytorch(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a])
}

/// Why a file could not be read; the caller prefixes the file's name.
pub type Problem = String;

/// The state dict in a PyTorch checkpoint.
pub fn read(bytes: &[u8]) -> Result<StateDict, Problem> {
    if bytes.starts_with(b"PK\x03\x04") {
        read_zip(bytes)
    } else {
        read_legacy(bytes)
    }
}

/// The persistent id of a storage: ('storage', <Dtype>Storage, key, location, numel[, view]).
fn storage_id(pid: Value) -> Result<(StorageRef, Option<View>), Problem> {
    let Value::Tuple(items) = pid else {
        return Err("a persistent id that is not a tuple".into());
    };
    match items.as_slice() {
        [Value::Str(tag), Value::Global(pickle::Global::Storage(dtype)), Value::Str(key), Value::Str(_location), Value::Int(numel), rest @ ..]
            if tag == "storage" && *numel >= 0 =>
        {
            let view = match rest {
                [] | [Value::None] => None,
                [Value::Tuple(v)] => match v.as_slice() {
                    [Value::Str(view_key), Value::Int(offset), Value::Int(size)]
                        if *offset >= 0 && *size >= 0 =>
                    {
                        Some((view_key.clone(), *offset as u64, *size as u64))
                    }
                    _ => return Err(format!("a storage view {v:?}")),
                },
                _ => return Err(format!("a storage id with extra items {rest:?}")),
            };
            Ok((
                StorageRef {
                    key: key.clone(),
                    dtype: *dtype,
                    numel: *numel as u64,
                    view_offset: 0,
                },
                view,
            ))
        }
        _ => Err(format!("a persistent id that is not a storage: {items:?}")),
    }
}

fn read_zip(bytes: &[u8]) -> Result<StateDict, Problem> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let pickle_name = zip
        .file_names()
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() == 1)
        .map(str::to_string)
        .ok_or("a zip archive without <name>/data.pkl: not a torch.save file")?;
    let prefix = pickle_name.trim_end_matches("data.pkl").to_string();
    let archive_len = bytes.len() as u64;
    let pickled = record(&mut zip, archive_len, &pickle_name, None)?;
    let mut storages: Vec<StorageRef> = Vec::new();
    let (value, _) = pickle::load(&pickled, 0, &mut |pid| {
        let (s, _) = storage_id(pid)?;
        storages.push(s.clone());
        Ok(Value::Storage(s))
    })?;
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for s in &storages {
        if data.contains_key(&s.key) {
            continue;
        }
        let want = s
            .numel
            .checked_mul(s.dtype.size() as u64)
            .ok_or_else(|| format!("storage {} declares {} elements", s.key, s.numel))?;
        let name = format!("{prefix}data/{}", s.key);
        data.insert(
            s.key.clone(),
            record(&mut zip, archive_len, &name, Some(want))?,
        );
    }
    state_dict(value, &data)
}

/// A zip record's bytes, at most the archive's size (and exactly `want` when given).
fn record(
    zip: &mut zip::ZipArchive<std::io::Cursor<&[u8]>>,
    archive_len: u64,
    name: &str,
    want: Option<u64>,
) -> Result<Vec<u8>, Problem> {
    let mut f = zip
        .by_name(name)
        .map_err(|e| format!("record {name}: {e}"))?;
    let declared = f.size();
    if let Some(w) = want {
        if declared < w {
            return Err(format!(
                "record {name} holds {declared} bytes, its storage needs {w}"
            ));
        }
    }
    if declared > archive_len {
        return Err(format!(
            "record {name} declares {declared} bytes in an archive of {archive_len}"
        ));
    }
    let mut out = Vec::with_capacity(declared as usize);
    (&mut f)
        .take(declared)
        .read_to_end(&mut out)
        .map_err(|e| format!("record {name}: {e}"))?;
    if (out.len() as u64) < want.unwrap_or(0) {
        return Err(format!("record {name} is truncated"));
    }
    Ok(out)
}

/// The legacy format's first pickle: protocol 2, LONG1 of 10 bytes 0x1950a86a20f9469cfc6c, STOP.
const LEGACY_MAGIC: [u8; 15] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
];

fn read_legacy(bytes: &[u8]) -> Result<StateDict, Problem> {
    let no_storage = &mut |_: Value| -> Result<Value, String> {
        Err("a persistent id in a header pickle".into())
    };
    // The magic number does not fit an i64: it is compared as bytes.
    if !bytes.starts_with(&LEGACY_MAGIC) {
        return Err(
            "not a PyTorch checkpoint: neither a zip archive nor the legacy format's magic number"
                .into(),
        );
    }
    let (protocol, pos) = pickle::load(bytes, LEGACY_MAGIC.len(), no_storage)?;
    if protocol != Value::Int(1001) {
        return Err(format!(
            "legacy protocol version {protocol:?} (1001 expected)"
        ));
    }
    let (sys_info, pos) = pickle::load(bytes, pos, no_storage)?;
    if let Value::Dict(items) = &sys_info {
        let little = items
            .iter()
            .find(|(k, _)| *k == Value::Str("little_endian".into()));
        if let Some((_, Value::Bool(false))) = little {
            return Err("a big-endian legacy checkpoint (not supported)".into());
        }
    }
    let mut storages: Vec<StorageRef> = Vec::new();
    let (value, pos) = pickle::load(bytes, pos, &mut |pid| {
        let (root, view) = storage_id(pid)?;
        storages.push(root.clone());
        // A view is a slice of its root storage: `size` elements from `offset`.
        Ok(Value::Storage(match view {
            None => root,
            Some((_, offset, size)) => StorageRef {
                numel: size,
                view_offset: offset,
                ..root
            },
        }))
    })?;
    let (keys, mut pos) = pickle::load(bytes, pos, no_storage)?;
    let Value::List(keys) = keys else {
        return Err("legacy storage keys are not a list".into());
    };
    let mut data: HashMap<String, Vec<u8>> = HashMap::new();
    for key in keys {
        let Value::Str(key) = key else {
            return Err(format!("a legacy storage key {key:?}"));
        };
        let s = storages
            .iter()
            .find(|s| s.key == key)
            .ok_or_else(|| format!("storage {key} is listed but never used"))?;
        let count_at = pos;
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")))
            .ok_or_else(|| format!("storage {key}: truncated at byte {count_at}"))?;
        pos += 8;
        let len = count
            .checked_mul(s.dtype.size() as u64)
            .filter(|&n| n <= (bytes.len() - pos) as u64)
            .ok_or_else(|| {
                format!(
                    "storage {key} declares {count} elements of {} bytes; {} bytes are left",
                    s.dtype.size(),
                    bytes.len() - pos
                )
            })? as usize;
        data.insert(key, bytes[pos..pos + len].to_vec());
        pos += len;
    }
    state_dict(value, &data)
}

/// The tensors of a state dict (or of its "state_dict"/"model" entry).
fn state_dict(value: Value, data: &HashMap<String, Vec<u8>>) -> Result<StateDict, Problem> {
    let Value::Dict(items) = value else {
        return Err("the file holds no state dict (its top object is not a dict)".into());
    };
    let wrapped = items.iter().find_map(|(k, v)| match (k, v) {
        (Value::Str(k), Value::Dict(_)) if k == "state_dict" || k == "model" => Some(v.clone()),
        _ => None,
    });
    let items = match wrapped {
        Some(Value::Dict(inner)) => inner,
        _ => items,
    };
    let mut tensors = Vec::new();
    let mut skipped = Vec::new();
    for (k, v) in items {
        let name = match k {
            Value::Str(s) => s,
            other => return Err(format!("a state dict key {other:?}")),
        };
        match v {
            Value::Tensor(t) => {
                let raw = gather(&t, data).map_err(|e| format!("tensor {name}: {e}"))?;
                tensors.push((name, raw));
            }
            _ => skipped.push(name),
        }
    }
    Ok(StateDict { tensors, skipped })
}

/// A strided view's elements, in row-major order, as contiguous bytes.
fn gather(t: &TensorRef, data: &HashMap<String, Vec<u8>>) -> Result<RawTensor, Problem> {
    let s = &t.storage;
    let bytes = data
        .get(&s.key)
        .ok_or_else(|| format!("storage {} is missing", s.key))?;
    let size = s.dtype.size() as u64;
    let available = bytes.len() as u64 / size;
    // Elements the (view of the) storage holds: what it declares, if the bytes are there.
    let storage_len = s.numel.min(available.saturating_sub(s.view_offset));
    let count = t
        .shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or("its shape overflows")?;
    let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
    if count == 0 {
        return Ok(RawTensor {
            dtype: s.dtype,
            shape,
            data: Vec::new(),
        });
    }
    // The last element's index must lie inside the storage; so then does every other.
    let last = t
        .shape
        .iter()
        .zip(&t.stride)
        .try_fold(t.offset, |a, (&d, &st)| {
            a.checked_add((d - 1).checked_mul(st)?)
        })
        .ok_or("its strides overflow")?;
    if last >= storage_len || count > storage_len {
        return Err(format!(
            "shape {:?} with strides {:?} at offset {} needs {} elements, its storage holds {storage_len}",
            t.shape,
            t.stride,
            t.offset,
            (last + 1).max(count)
        ));
    }
    let base = (s.view_offset + t.offset) as usize;
    let elem = size as usize;
    let mut out = Vec::with_capacity(count as usize * elem);
    let mut index = vec![0u64; t.shape.len()];
    for _ in 0..count {
        let at = base
            + index
                .iter()
                .zip(&t.stride)
                .map(|(&i, &st)| (i * st) as usize)
                .sum::<usize>();
        out.extend_from_slice(&bytes[at * elem..(at + 1) * elem]);
        for d in (0..index.len()).rev() {
            index[d] += 1;
            if index[d] < t.shape[d] {
                break;
            }
            index[d] = 0;
        }
    }
    Ok(RawTensor {
        dtype: s.dtype,
        shape,
        data: out,
    })
}
