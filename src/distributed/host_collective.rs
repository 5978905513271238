//! Sums over the ranks through the host, over the rendezvous's connections: every rank sends
//! its values to rank 0, which adds them in rank order (rank 0's first, then 1, 2, ...) and
//! sends the sum back. It is how simulator ranks train data parallel (the launcher's loopback
//! connections; a fixed summation order, so a world of N ranks with micro-batch b, one each per
//! step, gives the same bits as one process accumulating N micro-batches — with `--accumulate
//! a` > 1 per rank the sum is (g0+g1)+(g2+g3), not ((g0+g1)+g2)+g3: equal within rounding),
//! and what the data-parallel path is
//! tested on in CI. It moves every gradient through host memory and one process: correct on
//! any device, but not how GPUs should talk (that is NCCL's job).
//!
//! Each message starts with the operation's sequence number, kind and length, so a rank that
//! calls another operation than the others (out of step) is an error naming it, not a wrong sum.

use std::time::Duration;

use super::rendezvous::{Link, Links};
use super::{Collective, World};
use crate::device::Buffer;
use crate::error::{Error, Result};

pub struct HostCollective {
    rank: usize,
    size: usize,
    links: Vec<Link>,
    /// Operations so far: every rank's count must agree.
    sequence: u64,
    /// Time spent in sums.
    busy: Duration,
}

/// What an operation sums (checked between ranks).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    F32 = 1,
    F64 = 2,
}

/// Elements summed in rank order.
trait Summand: bytemuck::Pod + std::ops::AddAssign {}
impl Summand for f32 {}
impl Summand for f64 {}

impl HostCollective {
    pub fn new(world: &World, links: Links, timeout: Duration) -> Self {
        for l in &links.links {
            // A failure here only loses the bound on the wait; the sum still works.
            let _ = l.set_timeout(timeout);
        }
        HostCollective {
            rank: world.rank,
            size: world.size,
            links: links.links,
            sequence: 0,
            busy: Duration::ZERO,
        }
    }

    fn header(&self, kind: Kind, len: usize) -> [u8; 24] {
        let mut h = [0u8; 24];
        h[..8].copy_from_slice(&self.sequence.to_le_bytes());
        h[8..16].copy_from_slice(&(kind as u64).to_le_bytes());
        h[16..].copy_from_slice(&(len as u64).to_le_bytes());
        h
    }

    /// `values` summed over the ranks in rank order, in place.
    fn sum<T: Summand>(&mut self, kind: Kind, values: &mut [T]) -> Result<()> {
        let start = std::time::Instant::now();
        let done = self.exchange(kind, values);
        self.busy += start.elapsed();
        done
    }

    fn exchange<T: Summand>(&mut self, kind: Kind, values: &mut [T]) -> Result<()> {
        self.sequence += 1;
        let header = self.header(kind, values.len());
        if self.rank != 0 {
            let root = &mut self.links[0];
            root.send(&header)?;
            root.send(bytemuck::cast_slice(values))?;
            let mut back = [0u8; 24];
            root.recv(&mut back)?;
            if back != header {
                return Err(out_of_step(0, self.rank, &back, &header));
            }
            return root.recv(bytemuck::cast_slice_mut(values));
        }
        let mut theirs = vec![T::zeroed(); values.len()];
        for link in &mut self.links {
            let mut h = [0u8; 24];
            link.recv(&mut h)?;
            if h != header {
                return Err(out_of_step(link.peer, 0, &h, &header));
            }
            link.recv(bytemuck::cast_slice_mut(&mut theirs))?;
            for (v, t) in values.iter_mut().zip(&theirs) {
                *v += *t;
            }
        }
        for link in &mut self.links {
            link.send(&header)?;
            link.send(bytemuck::cast_slice(values))?;
        }
        Ok(())
    }
}

/// The error of two ranks in different operations.
fn out_of_step(peer: usize, me: usize, theirs: &[u8; 24], mine: &[u8; 24]) -> Error {
    let read = |h: &[u8; 24]| {
        let w = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().unwrap());
        format!(
            "operation {} ({} of {} values)",
            w(0),
            match w(8) {
                1 => "an f32 sum",
                2 => "an f64 sum",
                _ => "unknown",
            },
            w(16)
        )
    };
    Error::Invalid(format!(
        "ranks out of step: rank {peer} is in {} where rank {me} is in {} (did the ranks get different data or settings?)",
        read(theirs),
        read(mine)
    ))
}

impl Collective for HostCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn size(&self) -> usize {
        self.size
    }

    fn all_reduce_sum(&mut self, buffers: &mut [&mut Buffer<f32>]) -> Result<()> {
        // One message per bucket: the buffers side by side.
        let mut all = Vec::with_capacity(buffers.iter().map(|b| b.len()).sum());
        for b in buffers.iter() {
            all.extend(b.to_host()?);
        }
        self.sum(Kind::F32, &mut all)?;
        let mut at = 0;
        for b in buffers.iter_mut() {
            let n = b.len();
            b.copy_from_host(&all[at..at + n])?;
            at += n;
        }
        Ok(())
    }

    fn all_reduce_host(&mut self, values: &mut [f64]) -> Result<()> {
        self.sum(Kind::F64, values)
    }

    fn describe(&self) -> String {
        format!(
            "{} ranks, sums through rank 0's host (TCP; fixed rank order)",
            self.size
        )
    }

    fn seconds(&self) -> f64 {
        self.busy.as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::rendezvous::meet;
    use crate::distributed::rendezvous::tests::{free_port, world};

    /// Runs `body` on `size` ranks (threads), each with its collective.
    fn on_ranks<T: Send + 'static>(
        size: usize,
        timeout: Duration,
        body: impl Fn(usize, &mut HostCollective) -> Result<T> + Send + Sync + Copy + 'static,
    ) -> Vec<Result<T>> {
        let port = free_port();
        let handles: Vec<_> = (0..size)
            .map(|r| {
                std::thread::spawn(move || {
                    let w = world(r, size, port);
                    let links = meet(&w, 1, Duration::from_secs(20), &[])?;
                    let mut c = HostCollective::new(&w, links, timeout);
                    body(r, &mut c)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    }

    #[test]
    fn sums_are_in_rank_order_and_the_same_on_every_rank() {
        let results = on_ranks(3, Duration::from_secs(20), |r, c| {
            // Values whose f32 sum depends on the order: (1e8 + 1) - 1e8 is 0, 1e8 - 1e8 + 1 is 1.
            let mine = [[1.0e8f32, 0.5], [1.0, 0.25], [-1.0e8, 2.0]][r];
            let dev = crate::Device::simt(crate::Schedule::Forward);
            let mut b = dev.upload(&mine, "gradient")?;
            c.all_reduce_sum(&mut [&mut b])?;
            let mut h = [r as f64, 1.0];
            c.all_reduce_host(&mut h)?;
            Ok((b.to_host()?, h))
        });
        for r in results {
            let (sum, host) = r.unwrap();
            let expected0 = (1.0e8f32 + 1.0) + -1.0e8;
            assert_eq!(sum, vec![expected0, 2.75]);
            assert_eq!(host, [3.0, 3.0]);
        }
    }

    #[test]
    fn a_rank_out_of_step_is_named() {
        let results = on_ranks(2, Duration::from_secs(20), |r, c| {
            let mut v = vec![0.0f64; 1 + r];
            c.all_reduce_host(&mut v)
        });
        let err = results[0].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("ranks out of step: rank 1 is in operation 1 (an f64 sum of 2 values)"),
            "{err}"
        );
        assert!(results[1].is_err());
    }

    #[test]
    fn a_rank_that_stops_or_hangs_is_named() {
        // Rank 1 leaves before the sum: rank 0 sees its connection closed.
        let results = on_ranks(2, Duration::from_secs(20), |r, c| match r {
            1 => Ok(()),
            _ => c.all_reduce_host(&mut [1.0]),
        });
        let err = results[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 1 closed its connection"), "{err}");
        // Rank 1 stays but sends nothing: rank 0 gives up after the timeout.
        let results = on_ranks(2, Duration::from_millis(300), |r, c| match r {
            1 => {
                std::thread::sleep(Duration::from_millis(1500));
                Ok(())
            }
            _ => c.all_reduce_host(&mut [1.0]),
        });
        let err = results[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("rank 1 sent nothing for 0.3 s"), "{err}");
    }
}
