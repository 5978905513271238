//! A counting global allocator (it wraps `System`). While armed — only around one reader call at
//! a time — it keeps the largest single request (alloc, alloc_zeroed, or the new size of a
//! realloc), from any thread, so that the harness can compare it with what the input justifies.
//! A request over `HARD_CAP` is not served: the input is saved first (`super::giant_request`)
//! and the process aborts, as it would have soon after anyway — a test failure that says why.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

pub struct Counting;

static ARMED: AtomicBool = AtomicBool::new(false);
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// A single request above this (1 GiB) is never justified by a test input (all are < 1 MB).
pub const HARD_CAP: usize = 1 << 30;

fn note(size: usize) {
    if ARMED.load(Ordering::Relaxed) {
        LARGEST.fetch_max(size, Ordering::Relaxed);
        if size > HARD_CAP {
            // Disarmed first: what the report allocates passes straight through.
            ARMED.store(false, Ordering::SeqCst);
            super::giant_request(size);
        }
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

/// Runs `f` armed; returns its result and the largest single request made meanwhile.
pub fn largest_request<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.store(0, Ordering::SeqCst);
    ARMED.store(true, Ordering::SeqCst);
    let out = f();
    ARMED.store(false, Ordering::SeqCst);
    (out, LARGEST.load(Ordering::SeqCst))
}

/// Whether a reader call is being measured now.
pub fn armed() -> bool {
    ARMED.load(Ordering::SeqCst)
}
