//! One run per folder, and no run over another's work. Before a run writes into its folder it
//! claims it: an exclusive lock on `FOLDER/.lock` (flock: held for the process's life, released
//! by the kernel on any exit, even a kill), which names the holder (its pid and command line)
//! for a second run to report. What the folder already holds decides the rest:
//!
//! - a new run (`Start::Fresh`) needs a new or empty folder;
//! - the default folder (`Start::Numbered`, `train` without `--out`) becomes the first of
//!   `DIR`, `DIR-2`, `DIR-3`, ... that is new or empty and not in use;
//! - `--resume` (`Start::Resume`) needs the folder's checkpoint and never creates a folder;
//! - `--overwrite` (`Start::Overwrite`) clears a folder that holds only what runs write (a run's
//!   files, or an experiment's tables and its runs' folders), and refuses one holding anything else.
//!
//! A lock file left non-empty names a holder that ended without releasing it (killed); the next
//! claim says so. A clean release empties it.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The lock file inside a run folder.
pub const LOCK_FILE: &str = ".lock";

/// What a run does with its folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// A new run: the folder must be new or empty.
    Fresh,
    /// A new run in the first new or empty folder of DIR, DIR-2, DIR-3, ... (the default --out).
    Numbered,
    /// Continue the run the folder holds (`--resume`).
    Resume,
    /// Replace the run (or experiment) the folder holds (`--overwrite`).
    Overwrite,
}

/// What marks an experiment's folder (written by `jobs::experiment` when it claims it).
pub const EXPERIMENT_FILE: &str = "experiment.json";

/// The files a run writes at the top of its folder (`run_folder`), and an experiment's.
const RUN_FILES: [&str; 13] = [
    "checkpoint",
    "encoder",
    "best",
    "log.jsonl",
    "run.json",
    "report.html",
    "report.json",
    "confusion.csv",
    "confusion.json",
    "memory-plan.json",
    "results.csv",
    "results.md",
    EXPERIMENT_FILE,
];

/// A claimed folder: held until dropped.
pub struct FolderLock {
    file: File,
    pub dir: PathBuf,
    /// Whether this claim made the folder.
    pub created: bool,
}

fn io(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{}: {e}", path.display()))
}

/// What the folder holds besides the lock file (nothing when it does not exist).
fn entries(dir: &Path) -> Result<Vec<String>> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut names = Vec::new();
    for e in read {
        let name = e.map_err(|e| io(dir, e))?.file_name();
        let name = name.to_string_lossy().into_owned();
        if name != LOCK_FILE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Whether `name` in `dir` is something runs write: a run file, or, in an experiment's folder,
/// one of its runs' folders.
fn written_by_runs(dir: &Path, name: &str) -> bool {
    let path = dir.join(name);
    let experiment = dir.join(EXPERIMENT_FILE).exists() || dir.join("results.csv").exists();
    RUN_FILES.contains(&name)
        || name.ends_with(".tmp")
        || (experiment
            && path.is_dir()
            && (path.join("run.json").exists() || path.join("checkpoint").exists())
            && entries(&path).is_ok_and(|e| {
                e.iter()
                    .all(|n| RUN_FILES.contains(&n.as_str()) || n.ends_with(".tmp"))
            }))
}

fn listing(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(5).map(String::as_str).collect();
    let more = names.len().saturating_sub(shown.len());
    if more > 0 {
        format!("{}, and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

/// The refusals that need no write: --resume of a folder with no checkpoint, a new run into a
/// folder that holds a run, --overwrite of a folder holding what no run wrote. `flag` names
/// the folder's flag in messages. Run again under the lock by `claim`.
pub fn check(dir: &Path, start: Start, flag: &str) -> Result<()> {
    if start != Start::Numbered {
        busy(dir)?;
    }
    check_contents(dir, start, flag)
}

/// `check` without the look at the lock (for its holder).
fn check_contents(dir: &Path, start: Start, flag: &str) -> Result<()> {
    let shown = dir.display();
    match start {
        Start::Numbered => Ok(()),
        Start::Resume if !dir.exists() => Err(Error::Invalid(format!(
            "--resume: {flag} {shown} does not exist, so there is no run to continue: drop --resume to start one"
        ))),
        Start::Resume => Ok(()),
        Start::Fresh => {
            let held = entries(dir)?;
            if held.is_empty() {
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "{flag} {shown} is not empty ({}): a new run would mix with what is there. Continue that run with --resume, replace it with --overwrite, or give another {flag}",
                    listing(&held)
                )))
            }
        }
        Start::Overwrite => {
            let foreign: Vec<String> = entries(dir)?
                .into_iter()
                .filter(|n| !written_by_runs(dir, n))
                .collect();
            if foreign.is_empty() {
                // A run inside (an experiment's) may be training now.
                for name in entries(dir)? {
                    if dir.join(&name).is_dir() {
                        busy(&dir.join(name))?;
                    }
                }
                Ok(())
            } else {
                Err(Error::Invalid(format!(
                    "--overwrite: {flag} {shown} holds what no run wrote ({}); nothing was removed. Give a new or empty {flag}, or move those files",
                    listing(&foreign)
                )))
            }
        }
    }
}

/// An error naming the holder when another process holds `dir`'s lock (a look: nothing is
/// written, and the lock is let go at once).
fn busy(dir: &Path) -> Result<()> {
    let path = dir.join(LOCK_FILE);
    let Ok(mut file) = File::open(&path) else {
        return Ok(());
    };
    if let Err(std::fs::TryLockError::WouldBlock) = file.try_lock() {
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        return Err(in_use(dir, &holder));
    }
    Ok(())
}

fn in_use(dir: &Path, holder: &str) -> Error {
    Error::Busy(format!(
        "{} is in use by another run ({}): wait for it to end, or give another folder",
        dir.display(),
        describe_holder(holder)
    ))
}

impl FolderLock {
    /// Claims `dir` for this process as `start` says (see the module's comment): for
    /// `Start::Numbered`, the first free folder of DIR, DIR-2, ...; `FolderLock::dir` is the
    /// one claimed. `--overwrite` clears the folder here, under the lock.
    pub fn claim(dir: &Path, start: Start, flag: &str) -> Result<FolderLock> {
        if start != Start::Numbered {
            check(dir, start, flag)?;
            let lock = FolderLock::take(dir, start != Start::Resume)?;
            // Again under the lock: another run may have written since the first look.
            if let Err(e) = check_contents(dir, start, flag) {
                lock.give_back();
                return Err(e);
            }
            if start == Start::Overwrite {
                for name in entries(dir)? {
                    let path = dir.join(&name);
                    let removed = if path.is_dir() {
                        std::fs::remove_dir_all(&path)
                    } else {
                        std::fs::remove_file(&path)
                    };
                    removed.map_err(|e| io(&path, e))?;
                }
            }
            return Ok(lock);
        }
        for n in 1.. {
            let candidate = if n == 1 {
                dir.to_path_buf()
            } else {
                let name = dir
                    .file_name()
                    .map_or_else(|| "run".into(), |s| s.to_string_lossy().into_owned());
                dir.with_file_name(format!("{name}-{n}"))
            };
            if !entries(&candidate)?.is_empty() {
                continue;
            }
            match FolderLock::take(&candidate, true) {
                Ok(lock) if entries(&candidate)?.is_empty() => return Ok(lock),
                Ok(lock) => lock.give_back(),
                Err(Error::Busy(_)) => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!("some DIR-n is free")
    }

    /// Takes back all a run that failed before its first checkpoint wrote: every entry but
    /// the lock file goes, then the folder is given back (removed when the run made it).
    pub fn take_back(self) {
        if let Ok(read) = std::fs::read_dir(&self.dir) {
            for e in read.flatten() {
                if e.file_name() == LOCK_FILE {
                    continue;
                }
                let path = e.path();
                let _ = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else {
                    std::fs::remove_file(&path)
                };
            }
        }
        self.give_back();
    }

    /// Lets the folder go as this claim found it: a folder it made is removed again.
    pub fn give_back(self) {
        // Removed while still held, so no other run locks the file this one is removing.
        if self.created {
            let _ = std::fs::remove_file(self.dir.join(LOCK_FILE));
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    /// Locks `dir/.lock` (making `dir` when `create`), or says who holds it.
    fn take(dir: &Path, create: bool) -> Result<FolderLock> {
        let created = create && !dir.exists();
        if create {
            std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        }
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io(&path, e))?;
        let mut holder = String::new();
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let _ = file.read_to_string(&mut holder);
                return Err(in_use(dir, &holder));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path, e)),
        }
        let _ = file.read_to_string(&mut holder);
        if !holder.trim().is_empty() {
            crate::note!(
                "note: {} was last held by {}, which ended without releasing it (killed?); taking it over",
                dir.display(),
                describe_holder(&holder)
            );
        }
        let me = format!(
            "pid {}\n{}\n",
            std::process::id(),
            std::env::args().collect::<Vec<_>>().join(" ")
        );
        file.set_len(0)
            .and_then(|_| file.rewind())
            .and_then(|_| file.write_all(me.as_bytes()))
            .and_then(|_| file.sync_data())
            .map_err(|e| io(&path, e))?;
        Ok(FolderLock {
            file,
            dir: dir.to_path_buf(),
            created,
        })
    }
}

/// "pid N: COMMAND" from a lock file's text.
fn describe_holder(text: &str) -> String {
    let mut lines = text.lines();
    let pid = lines.next().unwrap_or("").trim();
    let command = lines.next().unwrap_or("").trim();
    match (pid.is_empty(), command.is_empty()) {
        (true, _) => "holder unknown".into(),
        (false, true) => pid.to_string(),
        (false, false) => format!("{pid}: {command}"),
    }
}

impl Drop for FolderLock {
    /// A clean release: the lock file emptied (a non-empty one means its holder was killed),
    /// then unlocked by closing it.
    fn drop(&mut self) {
        let _ = self.file.set_len(0);
    }
}
