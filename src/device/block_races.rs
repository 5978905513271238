//! The block-race check: catches a kernel whose blocks are not independent, which on a GPU
//! gives answers that change from run to run (and on the simulator's threads would too).
//!
//! CUDA runs a launch's blocks in any order, at once or one after another. A kernel is right
//! only if no two blocks write the same global byte and no block reads what another block of
//! the same launch writes. The check finds both without copying memory once per block:
//!
//! - **shared writes**: for each bit of the block index, the blocks whose bit is 0 run from the
//!   launch's starting memory, then (from the same start) those whose bit is 1; a byte that
//!   both groups change was written by two blocks (any two blocks differ in some bit). The two
//!   are then named by running the blocks in order and watching that byte.
//! - **reads of another block's output**: the whole launch runs in a seeded shuffled order and
//!   again, from the same start, in the opposite order. Each pair of blocks meets in both
//!   orders, so a block that reads what another writes sees two different values, and some
//!   output byte differs.
//!
//! The engine's kernels use no global atomics, so any byte two blocks change is a bug here.
//! Each launch runs about 2·log2(blocks) + 3 times and all live memory is compared as often:
//! for tests, not training runs. The check restores every live buffer of the device between
//! runs, so it needs the device to itself (no other host thread launching on it meanwhile).

use crate::error::{Error, Result};

/// A live buffer of the simulator: where it is, its size and what it holds.
pub(super) struct Region {
    pub addr: u64,
    pub bytes: usize,
    pub what: String,
}

impl Region {
    fn bytes(&self) -> &[u8] {
        // SAFETY: `addr` is a live allocation of at least `bytes` bytes: the caller took it from
        // the simulator's live table as the launch began, and a buffer is not freed while a
        // launch that may use it runs. Between `run` calls no kernel writes it.
        unsafe { std::slice::from_raw_parts(self.addr as *const u8, self.bytes) }
    }

    fn write(&self, data: &[u8]) {
        // SAFETY: as in `bytes`; `data` is this region's own earlier copy, of the same length.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.addr as *mut u8, self.bytes) };
    }
}

/// Runs a launch under the check. `run(blocks, in_order)` launches the listed blocks (linear
/// indices): one after another in that order when `in_order`, else on all the simulator's
/// threads (the two halves of a bit only need to know which bytes they change).
pub(super) fn check(
    kernel: &str,
    grid: [u32; 3],
    seed: u64,
    live: &[Region],
    mut run: impl FnMut(&[u64], bool) -> Result<()>,
) -> Result<()> {
    let blocks = grid.iter().map(|&g| g as u64).product::<u64>();
    let start: Vec<Vec<u8>> = live.iter().map(|r| r.bytes().to_vec()).collect();
    let restore = || {
        for (region, bytes) in live.iter().zip(&start) {
            region.write(bytes);
        }
    };
    // First the launch as it would run unchecked on one thread: a kernel error is then the one
    // that run gives (its first failing block), not one of a half's.
    let all: Vec<u64> = (0..blocks).collect();
    run(&all, true)?;
    restore();
    let levels = u64::BITS - blocks.saturating_sub(1).leading_zeros();
    for level in 0..levels {
        let (low, high): (Vec<u64>, Vec<u64>) = (0..blocks).partition(|b| b >> level & 1 == 0);
        run(&low, false)?;
        let written: Vec<Vec<bool>> = live
            .iter()
            .zip(&start)
            .map(|(region, before)| {
                let mut changed = Vec::new();
                for_each_changed_byte(region.bytes(), before, |byte| {
                    if changed.is_empty() {
                        changed = vec![false; region.bytes];
                    }
                    changed[byte] = true;
                });
                changed
            })
            .collect();
        restore();
        run(&high, false)?;
        for (i, region) in live.iter().enumerate() {
            let mut shared = None;
            if !written[i].is_empty() {
                for_each_changed_byte(region.bytes(), &start[i], |byte| {
                    if shared.is_none() && written[i][byte] {
                        shared = Some(byte);
                    }
                });
            }
            if let Some(byte) = shared {
                restore();
                let who = writers_of(region, byte, blocks, &mut run)?;
                return Err(Error::Simt(format!(
                    "kernel `{kernel}`: {} both write byte {byte} of a buffer of {} bytes ({}): \
                     a race between blocks, whose result on a GPU depends on which runs last",
                    match who {
                        Some((a, b)) =>
                            format!("blocks {} and {}", block_name(a, grid), block_name(b, grid)),
                        None =>
                            format!("a block whose index has bit {level} clear and one with it set"),
                    },
                    region.bytes,
                    region.what
                )));
            }
        }
        restore();
    }
    let order = shuffled(blocks, seed);
    run(&order, true)?;
    let first: Vec<Vec<u8>> = live.iter().map(|r| r.bytes().to_vec()).collect();
    restore();
    let reversed: Vec<u64> = order.iter().rev().copied().collect();
    run(&reversed, true)?;
    for (region, first) in live.iter().zip(&first) {
        if let Some(byte) = region.bytes().iter().zip(first).position(|(a, b)| a != b) {
            return Err(Error::Simt(format!(
                "kernel `{kernel}`: the result depends on the order its blocks run in: byte \
                 {byte} of a buffer of {} bytes ({}) differs between two orders (a block reads \
                 what another block of the same launch writes)",
                region.bytes, region.what
            )));
        }
    }
    Ok(())
}

/// Calls `f` with the index of every byte where `now` and `before` differ, skipping equal
/// stretches a cache line at a time.
fn for_each_changed_byte(now: &[u8], before: &[u8], mut f: impl FnMut(usize)) {
    const CHUNK: usize = 64;
    for (c, (a, b)) in now.chunks(CHUNK).zip(before.chunks(CHUNK)).enumerate() {
        if a == b {
            continue;
        }
        for (k, (x, y)) in a.iter().zip(b).enumerate() {
            if x != y {
                f(c * CHUNK + k);
            }
        }
    }
}

/// The first two blocks that change `byte` when the blocks run in index order from the
/// launch's starting memory (None when fewer than two do: e.g. the second writes the value
/// the first found there).
fn writers_of(
    region: &Region,
    byte: usize,
    blocks: u64,
    run: &mut impl FnMut(&[u64], bool) -> Result<()>,
) -> Result<Option<(u64, u64)>> {
    let mut first = None;
    for block in 0..blocks {
        let before = region.bytes()[byte];
        run(&[block], true)?;
        if region.bytes()[byte] != before {
            match first {
                None => first = Some(block),
                Some(a) => return Ok(Some((a, block))),
            }
        }
    }
    Ok(None)
}

/// 0..blocks in a seeded random order (Fisher–Yates over xorshift64*).
fn shuffled(blocks: u64, seed: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..blocks).collect();
    let mut s = seed ^ 0x5851_f42d_4c95_7f2d | 1;
    for i in (1..order.len()).rev() {
        s ^= s >> 12;
        s ^= s << 25;
        s ^= s >> 27;
        let j = (s.wrapping_mul(0x2545_f491_4f6c_dd1d) % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn block_name(linear: u64, grid: [u32; 3]) -> String {
    let (x, y) = (grid[0] as u64, grid[1] as u64);
    format!("({},{},{})", linear % x, linear / x % y, linear / (x * y))
}
