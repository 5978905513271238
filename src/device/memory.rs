//! Exact accounting of device bytes: live, peak and a budget that allocations may not pass.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::error::{Error, Result};

pub struct MemoryCounter {
    live: AtomicUsize,
    peak: AtomicUsize,
    budget: AtomicUsize,
}

impl MemoryCounter {
    pub fn new(budget: usize) -> Self {
        MemoryCounter {
            live: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            budget: AtomicUsize::new(budget),
        }
    }

    pub fn live(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }
    /// Starts a new peak from what is live now (benchmarks measure one phase at a time).
    pub fn reset_peak(&self) {
        self.peak.store(self.live(), Ordering::SeqCst);
    }
    pub fn budget(&self) -> usize {
        self.budget.load(Ordering::SeqCst)
    }
    pub fn set_budget(&self, budget: usize) {
        self.budget.store(budget, Ordering::SeqCst);
    }

    /// Counts `bytes` as live, or refuses when that would pass the budget.
    pub fn reserve(&self, bytes: usize, what: &str) -> Result<()> {
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
                    self.peak.fetch_max(next, Ordering::SeqCst);
                    return Ok(());
                }
                Err(now) => live = now,
            }
        }
    }

    pub fn release(&self, bytes: usize) {
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
