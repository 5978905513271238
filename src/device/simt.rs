//! The simulator backend: runs the host-compiled kernels (build.rs) through the SIMT runtime
//! in src/device/simt/. Buffers are plain host allocations; launches finish before returning.

use std::alloc::Layout;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::{KernelInfo, LaunchConfig};
use crate::error::{Error, Result};

/// The order in which a block's threads run between synchronisation points. A kernel that is
/// right under every order has no missing barrier that the order could expose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Schedule {
    Forward,
    Reverse,
    /// A fresh seeded permutation every round; each launch derives its own seed from this one.
    Random(u64),
}

impl std::fmt::Display for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Forward => write!(f, "forward"),
            Schedule::Reverse => write!(f, "reverse"),
            Schedule::Random(seed) => write!(f, "random, seed {seed}"),
        }
    }
}

extern "C" {
    fn simt_launch(
        kernel: unsafe extern "C" fn(*mut *mut c_void),
        args: *mut *mut c_void,
        kernel_name: *const c_char,
        grid: *const u32,
        block: *const u32,
        shared_bytes: u32,
        schedule: i32,
        seed: u64,
        error: *mut c_char,
        error_len: usize,
    ) -> i32;
}

pub(super) struct SimtBackend {
    schedule: Mutex<Schedule>,
    launches: AtomicU64,
}

/// Simulator buffers are aligned like cudaMalloc's, so float4 paths are taken as on a GPU.
const ALIGN: usize = 256;

impl SimtBackend {
    pub fn new(schedule: Schedule) -> Self {
        SimtBackend {
            schedule: Mutex::new(schedule),
            launches: AtomicU64::new(0),
        }
    }

    pub fn schedule(&self) -> Schedule {
        *self.schedule.lock().unwrap()
    }

    pub fn set_schedule(&self, schedule: Schedule) {
        *self.schedule.lock().unwrap() = schedule;
    }

    pub fn alloc(&self, bytes: usize) -> Result<u64> {
        let layout =
            Layout::from_size_align(bytes.max(1), ALIGN).map_err(|e| Error::Simt(e.to_string()))?;
        // SAFETY: the layout has non-zero size. The memory is filled before anyone reads it.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::Simt(format!(
                "host allocation of {bytes} bytes failed"
            )));
        }
        // SAFETY: p points to layout.size() writable bytes. 0xFF bytes read as NaN in f32/f16.
        unsafe { std::ptr::write_bytes(p, 0xff, layout.size()) };
        Ok(p as u64)
    }

    pub fn free(&self, addr: u64, bytes: usize) {
        let layout =
            Layout::from_size_align(bytes.max(1), ALIGN).expect("layout was valid at allocation");
        // SAFETY: addr came from alloc() above with this same layout and is freed once (Drop).
        unsafe { std::alloc::dealloc(addr as *mut u8, layout) };
    }

    pub fn launch(
        &self,
        info: &KernelInfo,
        cfg: &LaunchConfig,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let (mode, base_seed) = match self.schedule() {
            Schedule::Forward => (0, 0),
            Schedule::Reverse => (1, 0),
            Schedule::Random(seed) => (2, seed),
        };
        let n = self.launches.fetch_add(1, Ordering::Relaxed);
        let seed = base_seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let name = CString::new(info.name).expect("kernel names have no NUL");
        let grid = [cfg.grid.0, cfg.grid.1, cfg.grid.2];
        let block = [cfg.block.0, cfg.block.1, cfg.block.2];
        let mut error = vec![0u8; 2048];
        // SAFETY: the entry point was generated for this kernel from its own signature, and
        // `params` holds one pointer per parameter (checked by Device::launch) to an 8-byte
        // slot that outlives the call. Buffer addresses are live host allocations.
        let rc = unsafe {
            simt_launch(
                info.simt_entry,
                params.as_mut_ptr(),
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                cfg.shared_bytes,
                mode,
                seed,
                error.as_mut_ptr() as *mut c_char,
                error.len(),
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let end = error.iter().position(|&b| b == 0).unwrap_or(error.len());
        Err(Error::Simt(
            String::from_utf8_lossy(&error[..end]).into_owned(),
        ))
    }
}
