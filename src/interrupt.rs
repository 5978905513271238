//! Ctrl-C (SIGINT) and SIGTERM during a long run. The first signal asks the run to stop: the
//! training loop finishes the step in progress, the run writes a checkpoint atomically, says
//! where it stopped and exits with 128 + the signal's number (130 for Ctrl-C), so `--resume`
//! continues exactly there. A second signal ends the process at once, with the same status.
//! Commands that do not `install` keep the default: the first signal ends them.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};

/// Set by the first signal; a second one then exits at once.
static ARMED: AtomicBool = AtomicBool::new(false);
/// The signal that asked to stop (0: none).
static SIGNAL: AtomicUsize = AtomicUsize::new(0);

const NOTICE: &[u8] =
    b"\ninterrupt: finishing the current step and writing a checkpoint (again to stop at once)\n";

/// Catches SIGINT and SIGTERM for the rest of the process.
pub fn install() -> std::io::Result<()> {
    for signal in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, &ARMED)?;
        signal_hook::flag::register_usize(signal, &SIGNAL, signal as usize)?;
        signal_hook::flag::register(signal, &ARMED)?;
        // SAFETY: the action only calls write(2) on a static buffer, which is async-signal-safe;
        // it allocates nothing and takes no lock.
        unsafe {
            signal_hook::low_level::register(signal, || {
                libc::write(2, NOTICE.as_ptr().cast(), NOTICE.len());
            })?;
        }
    }
    Ok(())
}

/// The signal that asked the run to stop, if one did.
pub fn requested() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s as i32),
    }
}

/// In a data-parallel world: another rank was asked to stop (the ranks agree on it in their
/// sums), so this one stops with it after the same step, as if it had been signalled itself
/// (with SIGTERM when no signal of its own came).
pub fn stop_with_the_world() {
    let _ = SIGNAL.compare_exchange(0, SIGTERM as usize, Ordering::SeqCst, Ordering::SeqCst);
}
