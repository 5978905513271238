//! A rank's way into its world: the rendezvous, then the collective over its connections.

use super::host_collective::HostCollective;
use super::nccl::{self, NcclCollective};
use super::{collective_timeout, rendezvous, rendezvous_timeout, Collective, World};
use crate::device::Device;
use crate::error::Result;

/// This process's rank joined to the others of its world: the rendezvous at
/// MASTER_ADDR:MASTER_PORT, then NCCL on CUDA (rank 0's unique id handed out by the
/// rendezvous), or sums over the rendezvous's connections on the simulator. `tag` must be the
/// same on every rank (a hash of the command), so ranks started with different commands are
/// caught here.
pub fn join(world: &World, tag: u64, device: &Device) -> Result<Box<dyn Collective>> {
    let timeout = collective_timeout()?;
    // Ranks on different kinds of device (`--device auto` falling back on one machine) are
    // refused at the rendezvous, as another command would be.
    let tag = tag ^ (device.is_cuda() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    if device.is_cuda() {
        nccl::ensure_loaded()?;
        let id = match world.rank {
            0 => nccl::unique_id()?,
            _ => Vec::new(),
        };
        let links = rendezvous::meet(world, tag, rendezvous_timeout()?, &id)?;
        return Ok(Box::new(NcclCollective::new(
            world,
            &links.payload,
            device,
            timeout,
        )?));
    }
    let links = rendezvous::meet(world, tag, rendezvous_timeout()?, &[])?;
    Ok(Box::new(HostCollective::new(world, links, timeout)))
}

/// A hash of this process's command line (FNV-1a), the same on every rank launched with the
/// same command.
pub fn command_tag() -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for arg in std::env::args_os().skip(1) {
        for b in arg.as_encoded_bytes().iter().chain([&0u8]) {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// `join` with this process's own command line, saying (rank 0) what carries the sums and the
/// global batch of micro-batches of `micro` records, `accumulate` per rank per step.
pub fn join_run(
    world: &World,
    device: &Device,
    (micro, accumulate): (usize, usize),
) -> Result<Box<dyn Collective>> {
    let c = join(world, command_tag(), device)?;
    let accumulate = accumulate.max(1);
    crate::say!(
        "data parallel: {}; global batch {} ({micro} per micro-batch x {accumulate} accumulated x {} ranks)",
        c.describe(),
        micro * accumulate * world.size,
        world.size
    );
    Ok(c)
}
