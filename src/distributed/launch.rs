//! `emrclass launch`: one machine's processes of a data-parallel run, started as `torchrun`
//! starts them: `nproc_per_node` copies of `emrclass ARGS...`, each with RANK, WORLD_SIZE,
//! LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT set. The launcher then watches:
//! when one process fails, the others are given a grace period to stop by themselves (they see
//! its connection close), then SIGTERM, then SIGKILL; the launcher exits with the failed
//! process's status. Ctrl-C or SIGTERM to the launcher is passed on to every process once per
//! signal (they are in their own process group, so a terminal's Ctrl-C reaches them only
//! through here), and they stop together after the step in progress, with a checkpoint.

use std::ffi::OsString;
use std::process::{Child, Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// What `emrclass launch` was asked to start.
#[derive(Clone, Debug)]
pub struct Launch {
    pub nproc_per_node: usize,
    pub nnodes: usize,
    pub node_rank: usize,
    pub master_addr: String,
    /// None: a free port (one machine), or torchrun's 29500 (several).
    pub master_port: Option<u16>,
    /// The command each process runs: `emrclass` with these arguments.
    pub args: Vec<OsString>,
}

/// How long the others may take to stop by themselves after one failed.
const GRACE: Duration = Duration::from_secs(15);

impl Launch {
    fn check(&self) -> Result<()> {
        if self.nproc_per_node == 0 || self.nnodes == 0 {
            return Err(Error::Invalid(
                "--nproc-per-node and --nnodes must be 1 or more".into(),
            ));
        }
        if self.node_rank >= self.nnodes {
            return Err(Error::Invalid(format!(
                "--node-rank {} is not below --nnodes {}",
                self.node_rank, self.nnodes
            )));
        }
        match self.args.first().and_then(|a| a.to_str()) {
            None => Err(Error::Invalid(
                "launch needs the command to run after `--`, e.g. emrclass launch --nproc-per-node 2 -- --device simt train".into(),
            )),
            Some("launch") => Err(Error::Invalid("launch cannot launch itself".into())),
            Some(_) => Ok(()),
        }
    }

    fn port(&self) -> Result<u16> {
        match (self.master_port, self.nnodes) {
            (Some(p), _) => Ok(p),
            (None, 1) => std::net::TcpListener::bind((self.master_addr.as_str(), 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .map_err(|e| {
                    Error::Invalid(format!(
                        "finding a free port at --master-addr {}: {e}",
                        self.master_addr
                    ))
                }),
            (None, _) => Ok(29500),
        }
    }
}

/// This process's own command line as `n` ranks on this machine (`bench step --world N`):
/// `launch --nproc-per-node n -- ARGS` with ARGS this command's arguments less `flag` and its
/// value. Returns the status to exit with, as `run`.
pub fn relaunch_as_world(n: usize, flag: &str) -> Result<i32> {
    let mut args = Vec::new();
    let mut skip_value = false;
    for a in std::env::args_os().skip(1) {
        if std::mem::take(&mut skip_value) {
            continue;
        }
        match a.to_str() {
            Some(s) if s == flag => skip_value = true,
            Some(s) if s.starts_with(&format!("{flag}=")) => {}
            _ => args.push(a),
        }
    }
    run(&Launch {
        nproc_per_node: n,
        nnodes: 1,
        node_rank: 0,
        master_addr: "127.0.0.1".into(),
        master_port: None,
        args,
    })
}

/// Starts this node's processes and waits for them; returns the status to exit with: 0 when
/// every process succeeded, else the first failure's.
pub fn run(l: &Launch) -> Result<i32> {
    l.check()?;
    let port = l.port()?;
    let world = l.nproc_per_node * l.nnodes;
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("finding this program to launch it: {e}")))?;
    // Simulator processes share the cores unless told otherwise.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let simt_threads = (cores / l.nproc_per_node).max(1).to_string();
    let signalled = Arc::new(AtomicBool::new(false));
    for s in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(s, Arc::clone(&signalled))
            .map_err(|e| Error::Invalid(format!("installing signal handlers: {e}")))?;
    }
    let first = l.node_rank * l.nproc_per_node;
    crate::note!(
        "launch: ranks {first}-{} of {world} on this machine, rendezvous at {}:{port}",
        first + l.nproc_per_node - 1,
        l.master_addr
    );
    let mut children: Vec<(usize, Child)> = Vec::new();
    for local in 0..l.nproc_per_node {
        let rank = first + local;
        let mut cmd = Command::new(&exe);
        cmd.args(&l.args)
            .env("RANK", rank.to_string())
            .env("WORLD_SIZE", world.to_string())
            .env("LOCAL_RANK", local.to_string())
            .env("LOCAL_WORLD_SIZE", l.nproc_per_node.to_string())
            .env("MASTER_ADDR", &l.master_addr)
            .env("MASTER_PORT", port.to_string());
        if std::env::var_os("EMRCLASS_SIMT_THREADS").is_none() {
            cmd.env("EMRCLASS_SIMT_THREADS", &simt_threads);
        }
        own_group_and_die_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(c) => children.push((rank, c)),
            Err(e) => {
                stop_all(&mut children, libc::SIGKILL);
                return Err(Error::Invalid(format!(
                    "starting rank {rank} ({}): {e}",
                    exe.display()
                )));
            }
        }
    }
    supervise(children, &signalled)
}

/// Each process in its own process group (a terminal's Ctrl-C reaches it through the launcher
/// only, once), and on Linux sent SIGTERM if the launcher dies.
fn own_group_and_die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    cmd.process_group(0);
    #[cfg(target_os = "linux")]
    {
        let launcher = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs in the child between fork and exec; it only calls prctl(2),
        // getppid(2) and raise(3), which are async-signal-safe, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                // The launcher died before the prctl: the child would never hear of it.
                if libc::getppid() != launcher {
                    libc::raise(libc::SIGTERM);
                }
                Ok(())
            });
        }
    }
}

fn stop_all(children: &mut [(usize, Child)], signal: i32) {
    for (_, c) in children.iter_mut() {
        if let Ok(None) = c.try_wait() {
            // SAFETY: kill(2) on a child we started and have not reaped: its pid is still ours.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }
}

fn code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn supervise(mut children: Vec<(usize, Child)>, signalled: &AtomicBool) -> Result<i32> {
    let mut failed: Option<(usize, i32, Instant)> = None;
    let mut termed = false;
    let mut interrupted = false;
    while !children.is_empty() {
        if signalled.swap(false, Ordering::SeqCst) {
            crate::note!("launch: passing the signal on to every rank");
            interrupted = true;
            stop_all(&mut children, libc::SIGINT);
        }
        let mut i = 0;
        while i < children.len() {
            let (rank, child) = &mut children[i];
            match child.try_wait() {
                Ok(Some(status)) => {
                    let c = code(status);
                    if c != 0 && failed.is_none() {
                        if !interrupted {
                            crate::note!(
                            "launch: rank {rank} exited with status {c}; the others stop too (at most {} s)",
                            GRACE.as_secs()
                            );
                        }
                        failed = Some((*rank, c, Instant::now()));
                    }
                    children.remove(i);
                }
                Ok(None) => i += 1,
                Err(e) => return Err(Error::Invalid(format!("watching rank {rank}: {e}"))),
            }
        }
        // After a Ctrl-C every rank stops by itself after the same step (rank 0 writing the
        // checkpoint, however long that takes): nothing is escalated; a second Ctrl-C passed
        // on ends them at once.
        if let Some((_, _, at)) = failed.filter(|_| !interrupted) {
            if !termed && at.elapsed() > GRACE {
                stop_all(&mut children, libc::SIGTERM);
                termed = true;
            } else if at.elapsed() > 2 * GRACE {
                stop_all(&mut children, libc::SIGKILL);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(failed.map_or(0, |(_, c, _)| c))
}
