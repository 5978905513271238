//! Checkpoints of a training run, in a folder:
//!
//! - `tensors-<step>.safetensors`: every parameter under its name, and its AdamW moments as
//!   `adam_m.<name>` and `adam_v.<name>` (fp32, flat), or under `--optimizer adamw8bit` its
//!   8-bit moments as `adam8_m.<name>`, `adam8_v.<name>` (u8 codes) with their block maxima
//!   `adam8_m_absmax.<name>`, `adam8_v_absmax.<name>` (fp32), so a resumed run continues
//!   from the very same codes;
//! - `state.json`: where the run stands (optimizer step, epoch, batches done in it, the epoch's
//!   running loss, finished epochs, best epoch, patience count), the GHM state, the settings'
//!   fingerprint, the label names and the character vocabulary, and the tensor file's name.
//!
//! Atomic: the tensors go to a new file (written whole, synced, renamed), then `state.json` is
//! replaced the same way — the commit point — and only then is the previous tensor file removed.
//! A crash at any moment leaves the last complete checkpoint readable, and only the tensor file
//! `state.json` names is ever read; the next save removes what a crashed one left.
//! (`tests/crash_consistency.rs` kills a run at every step and at every point of a save.)

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::ops::adamw8bit::{QuantizedMoments, QUANT_BLOCK};
use crate::weights::{write_atomically, write_tensor_bytes, Checkpoint, TensorBytes};

use serde::{de::DeserializeOwned, Serialize};

use super::optim::MomentsRef;
use crate::model::slot::Slot;

use super::optim::Optimizer;
use super::state::State;
use super::trainer::Classifier;

const FORMAT: u32 = 1;

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

/// Writes a checkpoint of `model` and `opt` into `dir` (created if missing).
pub fn save(dir: &Path, model: &mut Classifier, opt: &Optimizer, state: &State) -> Result<()> {
    save_slots(dir, model.slots(1.0), opt, state)
}

/// What a checkpoint's `state.json` holds besides the caller's own fields: the format and the
/// name of its tensor file. The classifier's `State` and pretraining's state are both one.
pub trait CheckpointState: Serialize + DeserializeOwned + Clone {
    /// Optimizer steps taken (names the tensor file).
    fn step(&self) -> u64;
    fn format(&self) -> u32;
    /// The tensor file this state names.
    fn tensors(&self) -> &str;
    /// The same state, stamped with this build's format and its tensor file.
    fn stamped(&self, format: u32, tensors: String) -> Self;
}

impl CheckpointState for State {
    fn step(&self) -> u64 {
        self.progress.step
    }
    fn format(&self) -> u32 {
        self.format
    }
    fn tensors(&self) -> &str {
        &self.tensors
    }
    fn stamped(&self, format: u32, tensors: String) -> Self {
        State {
            format,
            tensors,
            ..self.clone()
        }
    }
}

/// Writes a checkpoint of the parameters `slots` (with their AdamW moments in `opt`) and
/// `state` into `dir` (created if missing): the tensors first, then `state.json` (the commit
/// point), then the previous tensor file goes.
pub fn save_slots<S: CheckpointState>(
    dir: &Path,
    slots: Vec<Slot>,
    opt: &Optimizer,
    state: &S,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut tensors: Vec<TensorBytes> = Vec::new();
    let flat = |name: String, v: Vec<f32>| TensorBytes::f32(&name, vec![v.len()], &v);
    for slot in slots {
        if tensors.iter().any(|t| t.name == slot.name) {
            return Err(Error::Invalid(format!(
                "checkpoint: two parameters named `{}`",
                slot.name
            )));
        }
        let name = &slot.name;
        tensors.push(flat(name.clone(), slot.value.to_host()?));
        match opt.moments_ref(name) {
            Some(MomentsRef::Full(m, v)) => {
                tensors.push(flat(format!("adam_m.{name}"), m.to_host()?));
                tensors.push(flat(format!("adam_v.{name}"), v.to_host()?));
            }
            Some(MomentsRef::Quantized(q)) => {
                tensors.push(TensorBytes::u8(&format!("adam8_m.{name}"), &q.m.to_host()?));
                tensors.push(TensorBytes::u8(&format!("adam8_v.{name}"), &q.v.to_host()?));
                tensors.push(flat(
                    format!("adam8_m_absmax.{name}"),
                    q.m_absmax.to_host()?,
                ));
                tensors.push(flat(
                    format!("adam8_v_absmax.{name}"),
                    q.v_absmax.to_host()?,
                ));
            }
            None => {}
        }
    }
    let tensor_file = format!("tensors-{}.safetensors", state.step());
    // The committed checkpoint's tensor file: kept until the new state.json replaces it.
    let previous = read_state::<S>(dir).ok().map(|s| s.tensors().to_string());
    remove_leftovers(dir, previous.as_deref());
    write_tensor_bytes(&dir.join(&tensor_file), &tensors)?;
    crate::crash::point("tensors-written");
    let state = state.stamped(FORMAT, tensor_file.clone());
    let text = serde_json::to_string_pretty(&state).map_err(|e| io(dir, e))?;
    // The commit point: until this rename, state.json names the previous, whole tensor file.
    write_atomically(&dir.join("state.json"), text.as_bytes())?;
    crate::crash::point("state-renamed");
    if let Some(old) = previous.filter(|old| *old != tensor_file) {
        let _ = std::fs::remove_file(dir.join(old));
    }
    Ok(())
}

/// Removes what a crashed save left behind: half-written `*.tmp` files, and tensor files that
/// `state.json` does not name (written, then never committed). Best effort: a file that cannot
/// be removed is left, and never read.
fn remove_leftovers(dir: &Path, committed: Option<&str>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_tensors = name.starts_with("tensors-")
            && name.ends_with(".safetensors")
            && committed != Some(name.as_str());
        if name.ends_with(".tmp") || stale_tensors {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Reads a classifier run's `dir/state.json`.
pub fn load_state(dir: &Path) -> Result<State> {
    read_state(dir)
}

/// Reads `dir/state.json` as `S`, refusing another format.
pub fn read_state<S: CheckpointState>(dir: &Path) -> Result<S> {
    let path = dir.join("state.json");
    let text = std::fs::read_to_string(&path).map_err(|e| io(&path, e))?;
    let state: S = serde_json::from_str(&text).map_err(|e| io(&path, e))?;
    if state.format() != FORMAT {
        return Err(io(
            &path,
            format!(
                "checkpoint format {} (this build reads {FORMAT})",
                state.format()
            ),
        ));
    }
    Ok(state)
}

/// The 8-bit moments of parameter `name` (n elements) from a checkpoint: u8 codes of n, fp32
/// block maxima of ceil(n / 2048); anything else names the tensor and both shapes.
fn quantized_moments(
    ck: &Checkpoint,
    dev: &crate::device::Device,
    name: &str,
    n: usize,
) -> Result<QuantizedMoments> {
    let codes = |what: &str| -> Result<Vec<u8>> {
        let key = format!("{what}.{name}");
        match ck.raw(&key) {
            Some((safetensors::Dtype::U8, shape, bytes)) if shape == [n] => Ok(bytes.to_vec()),
            Some((dtype, shape, _)) => Err(io(
                ck.path(),
                format!("tensor {key} is {dtype:?} {shape:?}; U8 [{n}] expected"),
            )),
            None => Err(io(ck.path(), format!("tensor {key} is missing"))),
        }
    };
    let blocks = n.div_ceil(QUANT_BLOCK);
    let _role = dev.role(crate::device::Role::OptimizerState);
    Ok(QuantizedMoments {
        m: dev.upload(&codes("adam8_m")?, "adam m (8-bit)")?,
        v: dev.upload(&codes("adam8_v")?, "adam v (8-bit)")?,
        m_absmax: dev.upload(
            &ck.get(&format!("adam8_m_absmax.{name}"), &[blocks])?,
            "adam m absmax",
        )?,
        v_absmax: dev.upload(
            &ck.get(&format!("adam8_v_absmax.{name}"), &[blocks])?,
            "adam v absmax",
        )?,
    })
}

/// Copies a checkpoint's parameters into `model` and its moments into `opt` (step included).
/// With `head_only`, the input path keeps its own weights (a frozen encoder's run).
pub fn restore(
    dir: &Path,
    state: &State,
    model: &mut Classifier,
    opt: &mut Optimizer,
    head_only: bool,
) -> Result<()> {
    let slots = if head_only {
        model.head.slots(1.0)
    } else {
        model.slots(1.0)
    };
    restore_slots(dir, state, slots, opt)?;
    model
        .loss
        .load_state(&state.ghm_ema, state.ghm_steps)
        .map_err(|e| io(&dir.join("state.json"), e))
}

/// Copies the parameters `slots` from the checkpoint `state` names in `dir`, and their moments
/// into `opt` (its step set to the state's).
pub fn restore_slots<S: CheckpointState>(
    dir: &Path,
    state: &S,
    slots: Vec<Slot>,
    opt: &mut Optimizer,
) -> Result<()> {
    let file: PathBuf = dir.join(state.tensors());
    let ck = Checkpoint::open(&file)?;
    opt.step = state.step();
    for slot in slots {
        let n = slot.value.len();
        slot.value.copy_from_host(&ck.get(&slot.name, &[n])?)?;
        let (m, v) = (
            format!("adam_m.{}", slot.name),
            format!("adam_v.{}", slot.name),
        );
        let dev = slot.value.device().clone();
        if ck.contains(&m) && ck.contains(&v) {
            let mb = dev.upload(&ck.get(&m, &[n])?, "adam m")?;
            let vb = dev.upload(&ck.get(&v, &[n])?, "adam v")?;
            opt.set_moments(&slot.name, mb, vb);
        } else if ck.contains(&format!("adam8_m.{}", slot.name)) {
            let state = quantized_moments(&ck, &dev, &slot.name, n)?;
            opt.set_quantized_moments(&slot.name, state)?;
        }
    }
    Ok(())
}
