//! The simulator backend: runs the host-compiled kernels (build.rs) through the SIMT runtime
//! in src/device/simt/. Buffers are plain host allocations; launches finish before returning.
//! Every buffer sits between two red zones of NaN bytes: a read outside it yields NaN, and a
//! write outside it is an error after the launch, naming the kernel and the buffer.
//!
//! A launch's blocks run on `threads` OS threads (`EMRCLASS_SIMT_THREADS`, default: every
//! core). Blocks are independent by CUDA's rules, and the engine's kernels use no float
//! atomics, so the results are the same bits on any number of threads; the block-race check
//! (`set_block_check`) catches a kernel that breaks the rule (block_races.rs).

use std::alloc::Layout;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use super::block_races;
use super::kernels::{KernelInfo, LaunchConfig};
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
        blocks: *const u64,
        block_count: u64,
        threads: u32,
        error: *mut c_char,
        error_len: usize,
    ) -> i32;
}

pub(super) struct SimtBackend {
    schedule: Mutex<Schedule>,
    /// OS threads a launch's blocks are spread over.
    threads: AtomicUsize,
    /// Whether launches run under the block-race check (slow: tests only).
    block_check: AtomicBool,
    /// A running hash of every byte copied to the host, once `start_read_digest` is called.
    read_digest: Mutex<Option<u64>>,
    launches: AtomicU64,
    /// Live buffers by address: their size and what they hold (for the red-zone check).
    live: Mutex<std::collections::HashMap<u64, (usize, String)>>,
}

/// Simulator buffers are aligned like cudaMalloc's, so float4 paths are taken as on a GPU.
const ALIGN: usize = 256;
/// Bytes of red zone before and after every buffer (a multiple of ALIGN, so buffers stay aligned).
const RED_ZONE: usize = 256;
/// What the red zones (and fresh buffers) hold: 0xFF bytes read as NaN in f32 and f16.
const POISON: u8 = 0xff;

fn layout_of(bytes: usize) -> Layout {
    Layout::from_size_align(bytes.max(1).next_multiple_of(ALIGN) + 2 * RED_ZONE, ALIGN)
        .expect("buffer sizes are far below isize::MAX")
}

impl SimtBackend {
    pub fn new(schedule: Schedule) -> Self {
        SimtBackend {
            schedule: Mutex::new(schedule),
            threads: AtomicUsize::new(default_threads()),
            block_check: AtomicBool::new(false),
            read_digest: Mutex::new(None),
            launches: AtomicU64::new(0),
            live: Mutex::new(Default::default()),
        }
    }

    pub fn schedule(&self) -> Schedule {
        *self.schedule.lock().unwrap()
    }

    pub fn set_schedule(&self, schedule: Schedule) {
        *self.schedule.lock().unwrap() = schedule;
    }

    pub fn threads(&self) -> usize {
        self.threads.load(Ordering::Relaxed)
    }

    pub fn set_threads(&self, threads: usize) {
        self.threads.store(threads.max(1), Ordering::Relaxed);
    }

    pub fn block_check(&self) -> bool {
        self.block_check.load(Ordering::Relaxed)
    }

    pub fn set_block_check(&self, on: bool) {
        self.block_check.store(on, Ordering::Relaxed);
    }

    /// Starts (or restarts) hashing every byte copied to the host.
    pub fn start_read_digest(&self) {
        *self.read_digest.lock().unwrap() = Some(FNV_OFFSET);
    }

    pub fn read_digest(&self) -> Option<u64> {
        *self.read_digest.lock().unwrap()
    }

    /// Folds bytes the host reads into the digest, when one is running.
    pub fn note_read(&self, bytes: &[u8]) {
        if let Some(h) = self.read_digest.lock().unwrap().as_mut() {
            *h = fnv1a(*h, &(bytes.len() as u64).to_le_bytes());
            *h = fnv1a(*h, bytes);
        }
    }

    /// A buffer of `bytes` poisoned bytes, between red zones; `what` names it in errors.
    pub fn alloc(&self, bytes: usize, what: &str) -> Result<u64> {
        let layout = layout_of(bytes);
        // SAFETY: the layout has non-zero size. The memory is filled before anyone reads it.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            return Err(Error::Simt(format!(
                "host allocation of {bytes} bytes failed"
            )));
        }
        // SAFETY: p points to layout.size() writable bytes.
        unsafe { std::ptr::write_bytes(p, POISON, layout.size()) };
        let addr = p as u64 + RED_ZONE as u64;
        self.lock_live().insert(addr, (bytes, what.to_string()));
        Ok(addr)
    }

    pub fn free(&self, addr: u64, bytes: usize) {
        self.lock_live().remove(&addr);
        // SAFETY: addr came from alloc() above, RED_ZONE bytes into an allocation of this same
        // layout, and is freed once (Drop).
        unsafe { std::alloc::dealloc((addr - RED_ZONE as u64) as *mut u8, layout_of(bytes)) };
    }

    fn lock_live(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<u64, (usize, String)>> {
        self.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The first live buffer whose red zones a launch wrote into, as an error (the zone is
    /// poisoned again, so the next launch is judged on its own).
    fn check_red_zones(&self, kernel: &str) -> Result<()> {
        for (&addr, (bytes, what)) in self.lock_live().iter() {
            let start = addr as usize - RED_ZONE;
            let end = start + layout_of(*bytes).size();
            let zones = [
                (start..addr as usize, "before its start"),
                (addr as usize + bytes..end, "past its end"),
            ];
            for (zone, side) in zones {
                // SAFETY: the range lies inside the live allocation made for this buffer, and
                // the launch has finished, so nothing else reads or writes it now.
                let zone =
                    unsafe { std::slice::from_raw_parts_mut(zone.start as *mut u8, zone.len()) };
                let Some(i) = zone.iter().position(|&b| b != POISON) else {
                    continue;
                };
                let at = if side == "past its end" {
                    format!("byte {i} after it")
                } else {
                    format!("byte {} before it", zone.len() - i)
                };
                zone.fill(POISON);
                return Err(Error::Simt(format!(
                    "kernel `{kernel}` wrote outside a buffer of {bytes} bytes ({what}), {side}: {at}"
                )));
            }
        }
        Ok(())
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
        let run = |blocks: Option<&[u64]>, threads: usize| -> Result<()> {
            let mut error = vec![0u8; 2048];
            let (list, count) = blocks.map_or((std::ptr::null(), 0), |b| (b.as_ptr(), b.len()));
            // SAFETY: the entry point was generated for this kernel from its own signature, and
            // `params` holds one pointer per parameter (checked by Device::launch) to an
            // 8-byte slot that outlives the call. Buffer addresses are live host allocations.
            // `list` holds `count` block indices inside the grid (or is null).
            let rc = unsafe {
                simt_launch(
                    info.simt_entry,
                    params.as_ptr() as *mut *mut c_void,
                    name.as_ptr(),
                    grid.as_ptr(),
                    block.as_ptr(),
                    cfg.shared_bytes,
                    mode,
                    seed,
                    list,
                    count as u64,
                    threads.min(u32::MAX as usize) as u32,
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
        };
        let result = if self.block_check() {
            let live: Vec<block_races::Region> = self
                .lock_live()
                .iter()
                .map(|(&addr, (bytes, what))| block_races::Region {
                    addr,
                    bytes: *bytes,
                    what: what.clone(),
                })
                .collect();
            let threads = self.threads();
            block_races::check(info.name, grid, seed, &live, |blocks, in_order| {
                run(Some(blocks), if in_order { 1 } else { threads })
            })
        } else {
            run(None, self.threads())
        };
        // The red zones are checked (and poisoned again) after a failed launch too, so that
        // what it wrote out of bounds is not blamed on the next one.
        let zones = self.check_red_zones(info.name);
        result.and(zones)
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a(mut h: u64, bytes: &[u8]) -> u64 {
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Threads for a launch's blocks: `EMRCLASS_SIMT_THREADS` when set to a positive number
/// (`threads_from_env` reports a bad value), else every core.
pub fn default_threads() -> usize {
    threads_from_env()
        .ok()
        .flatten()
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `EMRCLASS_SIMT_THREADS`, if set: a positive whole number, or an error saying so.
pub fn threads_from_env() -> Result<Option<usize>> {
    match std::env::var("EMRCLASS_SIMT_THREADS") {
        Err(_) => Ok(None),
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(Error::Invalid(format!(
                "EMRCLASS_SIMT_THREADS is `{v}`: expected a whole number of threads, 1 or more"
            ))),
        },
    }
}
