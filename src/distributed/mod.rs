//! More than one process training one model, data parallel (issue 30): the ranks a launcher put
//! in the environment (`World`), how they meet (`rendezvous`), the one interface the trainer
//! sums gradients and counts through (`Collective`) with its implementation over the
//! rendezvous's own connections (`host_collective`) and with NCCL on CUDA (`nccl`), `join`
//! (all of it, for a rank), and
//! `launch`, which starts one machine's processes as `torchrun` does.

pub mod host_collective;
pub mod join;
pub mod launch;
pub mod nccl;
pub mod rendezvous;

use std::time::Duration;

use crate::device::Buffer;
use crate::error::{Error, Result};

/// This process's place among the processes of one training run, as `torchrun`, Slurm's
/// launch scripts and `emrclass launch` give it: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
/// MASTER_PORT.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub rank: usize,
    pub size: usize,
    pub local_rank: usize,
    /// Where rank 0 listens for the others (`rendezvous`).
    pub master_addr: String,
    pub master_port: u16,
}

impl World {
    /// The world the environment names; None when WORLD_SIZE is unset (one process, as
    /// always). WORLD_SIZE=1 is a world of one (the data-parallel path with nothing to sum:
    /// how a one-GPU machine checks NCCL); its RANK and MASTER_* may be left out. A value that
    /// is set but wrong is an error naming the variable.
    pub fn from_env() -> Result<Option<World>> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// `from_env` over any source of variables (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<World>> {
        let number = |name: &str| -> Result<Option<usize>> {
            var(name)
                .map(|v| {
                    v.trim().parse::<usize>().map_err(|_| {
                        Error::Invalid(format!(
                            "{name}={v:?} is not a whole number (set by the launcher: emrclass launch, torchrun or your cluster's script)"
                        ))
                    })
                })
                .transpose()
        };
        let size = match number("WORLD_SIZE")? {
            None => return Ok(None),
            Some(1) if number("RANK")?.unwrap_or(0) == 0 => {
                return Ok(Some(World {
                    rank: 0,
                    size: 1,
                    local_rank: number("LOCAL_RANK")?.unwrap_or(0),
                    master_addr: var("MASTER_ADDR").unwrap_or_else(|| "127.0.0.1".into()),
                    master_port: var("MASTER_PORT")
                        .and_then(|p| p.trim().parse().ok())
                        .unwrap_or(0),
                }))
            }
            Some(0) => {
                return Err(Error::Invalid(
                    "WORLD_SIZE=0: a world has one process at least".into(),
                ))
            }
            Some(n) => n,
        };
        let rank = number("RANK")?.ok_or_else(|| {
            Error::Invalid(format!(
                "WORLD_SIZE={size} but RANK is not set: each process needs its rank, 0 to {}",
                size - 1
            ))
        })?;
        if rank >= size {
            return Err(Error::Invalid(format!(
                "RANK={rank} is not below WORLD_SIZE={size}"
            )));
        }
        let master_addr = var("MASTER_ADDR").ok_or_else(|| {
            Error::Invalid(format!(
                "WORLD_SIZE={size} but MASTER_ADDR is not set: the address where rank 0 waits for the others"
            ))
        })?;
        let port = var("MASTER_PORT").ok_or_else(|| {
            Error::Invalid(format!("WORLD_SIZE={size} but MASTER_PORT is not set"))
        })?;
        let master_port = port
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                Error::Invalid(format!("MASTER_PORT={port:?} is not a TCP port (1-65535)"))
            })?;
        Ok(Some(World {
            rank,
            size,
            local_rank: number("LOCAL_RANK")?.unwrap_or(rank),
            master_addr,
            master_port,
        }))
    }
}

/// Sums over the ranks of a world. Every rank calls the same operations in the same order
/// with the same lengths (checked: a rank out of step is an error naming it); the sum is taken
/// in rank order, rank 0's value first, so every rank gets the same bits.
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// Every buffer summed over the ranks, in place (gradients: one bucket of parameters).
    fn all_reduce_sum(&mut self, buffers: &mut [&mut Buffer<f32>]) -> Result<()>;
    /// Host values summed over the ranks, in place (losses, confusion counts, stop flags).
    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()>;
    /// For logs: what carries the sums.
    fn describe(&self) -> String;
    /// Seconds this rank has spent in sums so far: moving the values, and waiting for the
    /// slowest rank to arrive (the all-reduce's share of a step, in the epoch lines).
    fn seconds(&self) -> f64;
}

/// A running FNV-1a hash of 64-bit words: what a rank's start is made of (`same_start`).
pub struct Digest(u64);

impl Default for Digest {
    fn default() -> Self {
        Digest(0xcbf2_9ce4_8422_2325)
    }
}

impl Digest {
    pub fn eat(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.0 ^= b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }

    pub fn value(&self) -> u64 {
        self.0
    }
}

/// Every rank's `digest` of its start against rank 0's: a rank that read other data, planned
/// other micro-batches or restored another checkpoint is named before any step.
pub fn same_start(c: &mut (dyn Collective + '_), digest: u64) -> Result<()> {
    let (rank, size) = (c.rank(), c.size());
    // Each rank fills its own two 32-bit halves (exact in f64); the sum shows them all.
    let mut all = vec![0.0f64; 2 * size];
    all[2 * rank] = (digest >> 32) as f64;
    all[2 * rank + 1] = (digest & 0xffff_ffff) as f64;
    c.all_reduce_host(&mut all)?;
    let differ: Vec<String> = (1..size)
        .filter(|&r| all[2 * r..2 * r + 2] != all[..2])
        .map(|r| r.to_string())
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "rank(s) {} start from another state than rank 0 (other data files, settings, memory plan, or another checkpoint under --resume: on several machines --out must be one shared folder); every rank must start alike",
        differ.join(", ")
    )))
}

/// Seconds from an environment variable, or `default`; a bad value is a named error.
pub fn seconds_from_env(name: &str, default: f64) -> Result<Duration> {
    match std::env::var(name) {
        Err(_) => Ok(Duration::from_secs_f64(default)),
        Ok(v) => v
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s > 0.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| {
                Error::Invalid(format!("{name}={v:?} is not a positive number of seconds"))
            }),
    }
}

/// How long rank 0 waits for every rank to arrive, and a rank for rank 0
/// (EMRCLASS_RENDEZVOUS_TIMEOUT, seconds; default 300).
pub fn rendezvous_timeout() -> Result<Duration> {
    seconds_from_env("EMRCLASS_RENDEZVOUS_TIMEOUT", 300.0)
}

/// How long a rank waits in a sum for another rank before it calls that rank hung
/// (EMRCLASS_COLLECTIVE_TIMEOUT, seconds; default 600, as PyTorch's NCCL watchdog).
pub fn collective_timeout() -> Result<Duration> {
    seconds_from_env("EMRCLASS_COLLECTIVE_TIMEOUT", 600.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| {
            owned
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn no_world_is_one_process_and_world_size_1_a_world_of_one() {
        assert_eq!(World::from_vars(vars(&[])).unwrap(), None);
        let one = World::from_vars(vars(&[("WORLD_SIZE", "1")]))
            .unwrap()
            .unwrap();
        assert_eq!((one.rank, one.size, one.master_port), (0, 1, 0));
        let err = World::from_vars(vars(&[("WORLD_SIZE", "1"), ("RANK", "1")])).unwrap_err();
        assert!(
            err.to_string().contains("RANK=1 is not below WORLD_SIZE=1"),
            "{err}"
        );
    }

    #[test]
    fn torchrun_variables_give_the_world() {
        let w = World::from_vars(vars(&[
            ("WORLD_SIZE", "4"),
            ("RANK", "3"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29500"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            w,
            World {
                rank: 3,
                size: 4,
                local_rank: 1,
                master_addr: "10.0.0.2".into(),
                master_port: 29500
            }
        );
    }

    #[test]
    fn wrong_variables_are_named() {
        let base = [
            ("WORLD_SIZE", "2"),
            ("MASTER_ADDR", "127.0.0.1"),
            ("MASTER_PORT", "1234"),
        ];
        let err = |extra: &[(&str, &str)]| {
            let mut all: Vec<(&str, &str)> = base.to_vec();
            all.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
            all.extend_from_slice(extra);
            all.retain(|(_, v)| !v.is_empty());
            World::from_vars(vars(&all)).unwrap_err().to_string()
        };
        assert!(err(&[]).contains("RANK is not set"), "{}", err(&[]));
        assert!(err(&[("RANK", "2")]).contains("RANK=2 is not below WORLD_SIZE=2"));
        assert!(err(&[("RANK", "x")]).contains("RANK=\"x\" is not a whole number"));
        assert!(err(&[("RANK", "1"), ("MASTER_PORT", "0")]).contains("MASTER_PORT=\"0\""));
        assert!(err(&[("RANK", "1"), ("MASTER_ADDR", "")]).contains("MASTER_ADDR is not set"));
    }
}
