//! A test hook for crash consistency: `EMRCLASS_TEST_CRASH=<point>@<n>` aborts the process — as
//! a kill or a power cut would, no destructor and no flush running — the n-th time the engine
//! reaches `point`. The points, in the order a checkpoint passes them:
//!
//! - `step`: an optimizer step finished (and its checkpoint, if one was due, committed);
//! - `write-partial`: an atomic write (tensors, state.json, reports) has half its bytes in the
//!   temporary file;
//! - `write-unrenamed`: the temporary file is whole and synced, not yet renamed into place;
//! - `tensors-written`: a checkpoint's tensor file is in place, its state.json not yet written;
//! - `state-renamed`: the checkpoint is committed, the previous tensor file not yet removed.
//!
//! Unset (always, outside the crash tests), a point costs one relaxed load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

fn plan() -> &'static Option<(String, u64)> {
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let v = std::env::var("EMRCLASS_TEST_CRASH").ok()?;
        let (point, n) = v.split_once('@')?;
        Some((point.to_string(), n.parse().ok()?))
    })
}

/// Aborts here when `EMRCLASS_TEST_CRASH` names this point and this is its n-th passage.
pub fn point(name: &str) {
    static PASSED: AtomicU64 = AtomicU64::new(0);
    if let Some((point, n)) = plan() {
        if point == name && PASSED.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            eprintln!("EMRCLASS_TEST_CRASH: aborting at {name}@{n}");
            std::process::abort();
        }
    }
}
