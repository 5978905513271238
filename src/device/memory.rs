//! Exact accounting of device bytes: live, peak and a budget that allocations may not pass,
//! with live bytes split by role and the split as it stood at the peak (what `emrclass plan`
//! prints).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};

/// What an allocation is for. The device tags each buffer with the role current when it was
/// allocated (`Device::role`); untagged allocations are scratch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Parameters,
    Gradients,
    OptimizerState,
    /// Allocated by a forward pass (what survives it is saved for backward).
    Activations,
    /// Temporaries of backward, the loss and the optimizer.
    Scratch,
    /// Buffers an op allocates for its own kernels (partial sums, sort orders).
    Workspace,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Parameters,
        Role::Gradients,
        Role::OptimizerState,
        Role::Activations,
        Role::Scratch,
        Role::Workspace,
    ];
    pub fn index(self) -> usize {
        self as usize
    }
    pub fn name(self) -> &'static str {
        match self {
            Role::Parameters => "parameters",
            Role::Gradients => "gradients",
            Role::OptimizerState => "optimizer state",
            Role::Activations => "activations",
            Role::Scratch => "scratch",
            Role::Workspace => "kernel workspace",
        }
    }
}

pub struct MemoryCounter {
    live: AtomicUsize,
    peak: AtomicUsize,
    budget: AtomicUsize,
    by_role: [AtomicUsize; 6],
    /// `by_role` when `peak` was last raised.
    peak_by_role: Mutex<[usize; 6]>,
    /// The largest single allocation so far, bytes (what a design that must never hold some
    /// tensor is checked by).
    largest: AtomicUsize,
}

impl MemoryCounter {
    pub fn new(budget: usize) -> Self {
        MemoryCounter {
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            budget: AtomicUsize::new(budget),
            by_role: Default::default(),
            peak_by_role: Mutex::new([0; 6]),
            largest: AtomicUsize::new(0),
        }
    }

    /// Live bytes of each role (indexed by `Role::index`).
    pub fn live_by_role(&self) -> [usize; 6] {
        std::array::from_fn(|i| self.by_role[i].load(Ordering::SeqCst))
    }
    /// Live bytes of each role at the moment of the peak.
    pub fn peak_by_role(&self) -> [usize; 6] {
        *self.peak_by_role.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    /// The largest single allocation since the device opened, bytes.
    pub fn largest(&self) -> usize {
        self.largest.load(Ordering::SeqCst)
    }
    /// Starts a new peak from what is live now (benchmarks measure one phase at a time).
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::SeqCst);
        *self.peak_by_role.lock().unwrap_or_else(|e| e.into_inner()) = self.live_by_role();
    }
    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::SeqCst)
    }
    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget, Ordering::SeqCst);
    }

    /// Counts `bytes` of `role` as live, or refuses when that would pass the budget.
    pub fn reserve(&self, bytes: usize, role: Role, what: &str) -> Result<()> {
        let budget = self.budget();
        let mut live = self.live();
        loop {
            let next = live.checked_add(bytes).filter(|&n| n <= budget);
            let Some(next) = next else {
                return Err(Error::OutOfBudget {
                    what: what.to_string(),
                    request: bytes,
                    live,
                    budget,
                });
            };
            match self
                .live
                .compare_exchange(live, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => {
                    self.by_role[role.index()].fetch_add(bytes, Ordering::SeqCst);
                    self.largest.fetch_max(bytes, Ordering::SeqCst);
                    if self.peak.fetch_max(next, Ordering::SeqCst) < next {
                        *self.peak_by_role.lock().unwrap_or_else(|e| e.into_inner()) =
                            self.live_by_role();
                    }
                    return Ok(());
                }
                Err(now) => live = now,
            }
        }
    }

    pub fn release(&self, bytes: usize, role: Role) {
        self.by_role[role.index()].fetch_sub(bytes, Ordering::SeqCst);
        self.live.fetch_sub(bytes, Ordering::SeqCst);
    }
}

/// Parses "4GiB", "512MiB", "1.5GB", "1000" (bytes). Binary (KiB, MiB, GiB) and decimal
/// (KB, MB, GB) suffixes are both accepted, case-insensitively.
pub fn parse_bytes(text: &str) -> Result<usize> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.trim().parse().map_err(|_| {
        Error::Invalid(format!(
            "`{text}` is not a byte count (try 4GiB, 512MiB or 1000000)"
        ))
    })?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        other => {
            return Err(Error::Invalid(format!(
                "`{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, KB, MB, GB)"
            )))
        }
    };
    if !(value >= 0.0 && value.is_finite()) {
        return Err(Error::Invalid(format!("`{text}` is not a byte count")));
    }
    Ok((value * scale).round() as usize)
}
