//! `emrclass launch`: the processes of a data-parallel run on this machine, as `torchrun`.

use std::ffi::OsString;

use emrclass::distributed::launch::{self, Launch};
use emrclass::Result;

/// Start --nproc-per-node processes of `emrclass ARGS...` (one per GPU, or simulator ranks that
/// share the cores) with RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT set, as
/// torchrun does; they train one model data parallel (`train`, `experiment`, `pretrain`). When
/// one fails the others stop too, and launch exits with its status. Example: emrclass launch
/// --nproc-per-node 2 -- --device simt train --batch-size 16. On several machines, run it on
/// each with --nnodes, --node-rank and the same --master-addr/--master-port (rank 0's machine).
#[derive(clap::Args)]
pub struct Args {
    /// Processes to start on this machine (one per GPU).
    #[arg(long)]
    pub nproc_per_node: usize,
    /// Machines in the run, each running this same launch with its own --node-rank.
    #[arg(long, default_value_t = 1)]
    pub nnodes: usize,
    /// This machine's place among the --nnodes, from 0 (its processes are ranks
    /// node-rank x nproc-per-node onwards; node 0 holds rank 0).
    #[arg(long, default_value_t = 0)]
    pub node_rank: usize,
    /// Where rank 0 waits for the others: an address of node 0 that every machine reaches.
    #[arg(long, default_value = "127.0.0.1")]
    pub master_addr: String,
    /// The port rank 0 listens on (default: a free one on one machine; 29500, torchrun's, on
    /// several, where every node must name the same).
    #[arg(long)]
    pub master_port: Option<u16>,
    /// The command each process runs, after `--`: emrclass's arguments, e.g. `--device simt
    /// train --batch-size 16`.
    #[arg(last = true, required = true)]
    pub command: Vec<OsString>,
}

/// Every process succeeded: true; else this process exits with the first failure's status.
pub fn run(a: &Args) -> Result<bool> {
    let status = launch::run(&Launch {
        nproc_per_node: a.nproc_per_node,
        nnodes: a.nnodes,
        node_rank: a.node_rank,
        master_addr: a.master_addr.clone(),
        master_port: a.master_port,
        args: a.command.clone(),
    })?;
    if status != 0 {
        std::process::exit(status.clamp(1, 255));
    }
    Ok(true)
}
