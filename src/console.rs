//! What a long run tells the user, on stdout (`say!`) and stderr (`note!`), written so that a
//! closed pipe stops the telling, not the run: `emrclass train | head` trains to the end. A
//! command that runs long calls `keep_running_when_piped` first: SIGPIPE then only marks the
//! pipe closed (instead of ending the process), and a failed write is dropped, not a panic.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
static STDERR_CLOSED: AtomicBool = AtomicBool::new(false);
static SIGPIPE_SEEN: AtomicBool = AtomicBool::new(false);

/// From here on a write into a closed pipe fails with EPIPE (and is dropped by `say!` and
/// `note!`) instead of ending the process.
pub fn keep_running_when_piped() -> std::io::Result<()> {
    signal_hook::flag::register(signal_hook::consts::SIGPIPE, &SIGPIPE_SEEN)?;
    Ok(())
}

fn write_line(closed: &AtomicBool, args: std::fmt::Arguments, out: &mut dyn Write) {
    if closed.load(Ordering::Relaxed) {
        return;
    }
    if writeln!(out, "{args}").and_then(|_| out.flush()).is_err() {
        closed.store(true, Ordering::Relaxed);
    }
}

/// From here on `say!` prints nothing (a data-parallel run's ranks other than 0: rank 0 tells
/// the run; errors and `note!` still show).
pub fn mute_stdout() {
    STDOUT_CLOSED.store(true, Ordering::Relaxed);
}

/// One line on stdout (`say!`).
pub fn say_line(args: std::fmt::Arguments) {
    write_line(&STDOUT_CLOSED, args, &mut std::io::stdout().lock());
}

/// One line on stderr (`note!`).
pub fn note_line(args: std::fmt::Arguments) {
    write_line(&STDERR_CLOSED, args, &mut std::io::stderr().lock());
}

/// `println!` that a closed stdout silences instead of ending the run.
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {
        $crate::console::say_line(format_args!($($arg)*))
    };
}

/// `eprintln!` that a closed stderr silences instead of ending the run.
#[macro_export]
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::console::note_line(format_args!($($arg)*))
    };
}
