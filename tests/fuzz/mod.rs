//! The harness of `tests/fuzz_readers.rs`: a reader under test (`Target`), one input through it
//! with the three properties checked (`check`), the time-boxed mutation loop (`fuzz`), replay
//! of kept inputs (`replay`), and what saves an input when the process must die (a giant
//! allocation, a call that hangs).

pub mod alloc;
pub mod mutate;
mod self_check;
pub mod targets;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use emrclass::rng::Rng;

/// Held by every test of the binary: one reader runs at a time, so the allocator's count is
/// its own.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A valid input: the file (relative to the target's folder) and its bytes.
#[derive(Clone)]
pub struct Seed {
    pub file: String,
    pub bytes: Vec<u8>,
}

impl Seed {
    pub fn new(file: &str, bytes: impl Into<Vec<u8>>) -> Seed {
        Seed {
            file: file.into(),
            bytes: bytes.into(),
        }
    }
}

/// What an error of the reader must name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Naming {
    /// The file that was read: its path or its name.
    File,
    /// A file of the folder that was read (the folder's path, then, appears in the message).
    Folder,
    /// Nothing: the reader takes text, not a file.
    Nothing,
}

/// A reader of outside bytes and the folder it reads: the valid files (the first seed of each
/// file name) are kept there, and one of them at a time is replaced by a mutated input.
pub struct Target {
    pub name: &'static str,
    pub dir: PathBuf,
    pub seeds: Vec<Seed>,
    pub naming: Naming,
    /// A single allocation may be up to `alloc_factor` x the bytes read, plus `ALLOC_FLOOR`.
    pub alloc_factor: usize,
    /// Bytes the reader reads besides the folder's files (a vocabulary loaded beforehand).
    pub fixed_bytes: usize,
    /// Reads the file at the given path (inside `dir`), as the engine does.
    pub read: Box<Reader>,
}

/// What a target runs on each input: the engine's reader(s) of the file at the path.
pub type Reader = dyn Fn(&Path) -> emrclass::Result<()>;

/// Allowed on top of what the input's size justifies (tables, buffers of fixed size).
pub const ALLOC_FLOOR: usize = 1 << 20;

impl Target {
    /// A target over a fresh folder holding the valid files.
    pub fn new(
        name: &'static str,
        dir: PathBuf,
        seeds: Vec<Seed>,
        naming: Naming,
        read: impl Fn(&Path) -> emrclass::Result<()> + 'static,
    ) -> Target {
        let t = Target {
            name,
            dir,
            seeds,
            naming,
            alloc_factor: 16,
            fixed_bytes: 0,
            read: Box::new(read),
        };
        for s in &t.seeds {
            if s.bytes == t.valid(&s.file) {
                write(&t.dir.join(&s.file), &s.bytes);
            }
        }
        t
    }

    pub fn with_alloc_factor(mut self, factor: usize) -> Target {
        self.alloc_factor = factor;
        self
    }

    pub fn with_fixed_bytes(mut self, bytes: usize) -> Target {
        self.fixed_bytes = bytes;
        self
    }

    /// The valid bytes of `file`: its first seed.
    fn valid(&self, file: &str) -> &[u8] {
        &self.seeds.iter().find(|s| s.file == file).unwrap().bytes
    }

    /// The bytes of the folder's other valid files (an input is all the bytes a reader reads).
    fn other_bytes(&self, file: &str) -> usize {
        let mut names: Vec<&str> = self.seeds.iter().map(|s| s.file.as_str()).collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|&f| f != file)
            .map(|f| self.valid(f).len())
            .sum::<usize>()
            + self.fixed_bytes
    }
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, bytes).unwrap();
}

/// Where failing inputs are kept: `target/fuzz-failures/` (beside the test binary's `release/`).
pub fn failures_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("fuzz-failures")
}

/// The call in progress, for the reports of `giant_request` and the watchdog.
struct Running {
    target: &'static str,
    file: PathBuf,
    keep_as: PathBuf,
    replay: String,
    started: Instant,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// The last call's largest allocation and input size (for `Outcome::peak`).
static LAST_PEAK: Mutex<(usize, usize)> = Mutex::new((0, 0));

/// A call taking longer than this (`EMRCLASS_FUZZ_CALL_LIMIT` seconds, default 30) is taken
/// for a hang: the input is kept and the process ends.
fn call_limit() -> Duration {
    let seconds = std::env::var("EMRCLASS_FUZZ_CALL_LIMIT")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(30.0);
    Duration::from_secs_f64(seconds)
}

/// Writes to the process's stderr itself: the test harness captures `eprintln!`, and its
/// capture is lost when the process aborts.
pub fn say(message: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{message}");
}

fn keep_running(r: &Running, why: &str) -> ! {
    let _ = std::fs::create_dir_all(r.keep_as.parent().unwrap());
    let kept = std::fs::copy(&r.file, &r.keep_as).is_ok();
    say(&format!(
        "\nFUZZ FAILURE in reader `{}`: {why}\n  input kept at {}{}\n  replay: {}",
        r.target,
        r.keep_as.display(),
        if kept { "" } else { " (could not copy it)" },
        r.replay
    ));
    std::process::abort()
}

/// Called by the allocator (disarmed) for a request over `alloc::HARD_CAP`: keeps the input,
/// says so, and aborts.
pub fn giant_request(size: usize) -> ! {
    match RUNNING.try_lock() {
        Ok(guard) if guard.is_some() => keep_running(
            guard.as_ref().unwrap(),
            &format!("a single allocation of {size} bytes"),
        ),
        _ => {
            say(&format!(
                "FUZZ FAILURE: a single allocation of {size} bytes (no input recorded)"
            ));
            std::process::abort()
        }
    }
}

/// The last panic inside a measured call: where and why (for the report; nothing is printed,
/// as the engine may catch a panic itself, and the harness's output capture would grow).
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Panics inside a measured call are recorded, without a backtrace (which would allocate
/// megabytes, counted against the reader); others print as usual.
fn record_panics_while_armed() {
    static SET: std::sync::Once = std::sync::Once::new();
    SET.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if alloc::armed() {
                if let Ok(mut last) = LAST_PANIC.lock() {
                    *last = info.to_string();
                }
            } else {
                default(info);
            }
        }));
    });
}

fn start_watchdog() {
    static STARTED: std::sync::Once = std::sync::Once::new();
    STARTED.call_once(|| {
        let limit = call_limit();
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            if let Ok(guard) = RUNNING.try_lock() {
                if let Some(r) = guard.as_ref().filter(|r| r.started.elapsed() > limit) {
                    keep_running(r, &format!("one call ran over {limit:?}"));
                }
            }
        });
    });
}

/// Which input this is, for the report and for keeping it.
pub struct Tag {
    /// `<seed>-<iteration>` in a fuzz run, the fixture's name in a replay.
    pub name: String,
    /// How to run this input again.
    pub replay: String,
}

/// Reads one input: `bytes` as the target's `file`. Ok(read_ok) when the properties hold:
/// no panic; no single allocation over `alloc_factor` x (bytes read) + `ALLOC_FLOOR`; an
/// error names the file. Err(what is wrong) otherwise, the input then kept under
/// `failures_dir()`. The folder gets its valid file back either way.
pub fn check(target: &Target, file: &str, bytes: &[u8], tag: &Tag) -> Result<bool, String> {
    start_watchdog();
    record_panics_while_armed();
    let path = target.dir.join(file);
    write(&path, bytes);
    let keep_as = failures_dir().join(target.name).join(&tag.name).join(file);
    *RUNNING.lock().unwrap() = Some(Running {
        target: target.name,
        file: path.clone(),
        keep_as: keep_as.clone(),
        replay: tag.replay.clone(),
        started: Instant::now(),
    });
    let (outcome, largest) =
        alloc::largest_request(|| catch_unwind(AssertUnwindSafe(|| (target.read)(&path))));
    *RUNNING.lock().unwrap() = None;
    let input = bytes.len() + target.other_bytes(file);
    *LAST_PEAK.lock().unwrap() = (largest, input);
    let limit = target.alloc_factor * input + ALLOC_FLOOR;
    let problem = match &outcome {
        Err(_) => Some(std::mem::take(&mut *LAST_PANIC.lock().unwrap())),
        Ok(_) if largest > limit => Some(format!(
            "one allocation of {largest} bytes for an input of {input} bytes (allowed: {limit})"
        )),
        Ok(Err(e)) if !names(target, &path, &e.to_string()) => {
            Some(format!("the error does not name the file: {e}"))
        }
        Ok(_) => None,
    };
    write(&path, target.valid(file));
    match problem {
        None => Ok(matches!(outcome, Ok(Ok(())))),
        Some(why) => {
            write(&keep_as, bytes);
            Err(format!(
                "reader `{}`, file {file}: {why}\n  input kept at {}\n  replay: {}",
                target.name,
                keep_as.display(),
                tag.replay
            ))
        }
    }
}

fn names(target: &Target, path: &Path, message: &str) -> bool {
    let file_name = path.file_name().unwrap().to_string_lossy();
    match target.naming {
        Naming::File => {
            message.contains(&path.display().to_string()) || message.contains(&*file_name)
        }
        Naming::Folder => message.contains(&target.dir.display().to_string()),
        Naming::Nothing => true,
    }
}

/// What a fuzz run of one target did.
pub struct Outcome {
    pub target: &'static str,
    pub inputs: u64,
    pub read_ok: u64,
    pub seconds: f64,
    /// The largest single allocation over all inputs (bytes), and the size of that input with
    /// the folder's other files.
    pub peak: (usize, usize),
    pub failure: Option<String>,
}

/// Inputs that read fine join the pool the mutator starts from (up to this many).
const POOL: usize = 64;

/// Mutated inputs through `target` for `budget` or `cap` inputs, whichever ends first, after
/// its seeds (which must read without error). Stops at the first failure.
pub fn fuzz(target: &Target, seed: u64, budget: Duration, cap: u64) -> Outcome {
    let start = Instant::now();
    let replay = |i: u64| {
        format!(
            "EMRCLASS_FUZZ_SEED={seed} EMRCLASS_FUZZ_ONLY={} cargo test --release --test fuzz_readers (input {i})",
            target.name
        )
    };
    let mut outcome = Outcome {
        target: target.name,
        inputs: 0,
        read_ok: 0,
        seconds: 0.0,
        peak: (0, 0),
        failure: None,
    };
    for (i, s) in target.seeds.iter().enumerate() {
        let tag = Tag {
            name: format!("seed-{i}"),
            replay: replay(0),
        };
        match check(target, &s.file, &s.bytes, &tag) {
            Ok(true) => {}
            Ok(false) => panic!(
                "reader `{}`: seed input {i} ({}) does not read: {:?}",
                target.name,
                s.file,
                (target.read)(&target.dir.join(&s.file)).err()
            ),
            Err(why) => {
                outcome.failure = Some(why);
                return outcome;
            }
        }
    }
    let mut rng = Rng::new(seed ^ fnv1a(target.name));
    let mut pool = target.seeds.clone();
    while outcome.inputs < cap && start.elapsed() < budget {
        let i = outcome.inputs;
        let base = &pool[(rng.next_u64() % pool.len() as u64) as usize];
        let other = &pool[(rng.next_u64() % pool.len() as u64) as usize];
        let layout = mutate::Layout::of(&base.file);
        let bytes = mutate::mutate(&mut rng, &base.bytes, &other.bytes, layout);
        let file = base.file.clone();
        let tag = Tag {
            name: format!("{seed}-{i}"),
            replay: replay(i),
        };
        outcome.inputs += 1;
        let result = check(target, &file, &bytes, &tag);
        let last = *LAST_PEAK.lock().unwrap();
        if last.0 > outcome.peak.0 {
            outcome.peak = last;
        }
        match result {
            Ok(true) => {
                outcome.read_ok += 1;
                if pool.len() < POOL {
                    pool.push(Seed { file, bytes });
                }
            }
            Ok(false) => {}
            Err(why) => {
                outcome.failure = Some(why);
                break;
            }
        }
    }
    outcome.seconds = start.elapsed().as_secs_f64();
    outcome
}

/// A stable hash of the target's name: each target has its own stream of inputs.
fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Replays a kept input: `case_dir` holds one file, at its path relative to the target's
/// folder. It must give an error that names the file, with no panic and no giant allocation.
pub fn replay(target: &Target, case_dir: &Path) -> Result<(), String> {
    let files = files_under(case_dir);
    assert_eq!(
        files.len(),
        1,
        "{}: a kept input is one file",
        case_dir.display()
    );
    let file = files[0]
        .strip_prefix(case_dir)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/");
    let bytes = std::fs::read(&files[0]).unwrap();
    let tag = Tag {
        name: format!("replay-{}", case_dir.file_name().unwrap().to_string_lossy()),
        replay: format!(
            "cargo test --release --test fuzz_readers kept_inputs (case {})",
            case_dir.display()
        ),
    };
    match check(target, &file, &bytes, &tag)? {
        false => Ok(()),
        true => Err(format!(
            "{}: reads without error; a kept input must stay an error",
            case_dir.display()
        )),
    }
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out.sort();
    out
}
