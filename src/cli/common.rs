//! What several commands share: the global flags (device, memory budget, simulator schedule,
//! seed), opening the device they name, and the flag values more than one command takes.

use clap::ValueEnum;
use emrclass::device::DeviceChoice;
use emrclass::model::loss::LossKind;
use emrclass::options::MemoryBudget;
use emrclass::rng::Rng;
use emrclass::{hub, settings, Device, Result, Schedule};

/// The flags every command takes.
#[derive(clap::Args)]
pub struct GlobalArgs {
    /// Where kernels run: a CUDA GPU, the CPU SIMT simulator, or CUDA when usable else the simulator.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, global = true)]
    pub device: DeviceChoice,
    /// The device memory to fit in, e.g. 4GiB (a GTX 1050 Ti): the engine allocates at most this
    /// less --context-reserve, and `train` plans recomputation and micro-batches to fit. Absent:
    /// the GPU's free memory (unlimited on the simulator); `plan`: 4GiB.
    #[arg(long, global = true)]
    pub memory_budget: Option<String>,
    /// The part of --memory-budget left to the CUDA context, loaded kernels and pool rounding.
    #[arg(long, global = true, default_value = "320MiB")]
    pub context_reserve: String,
    /// Simulator thread order between barriers (a missing barrier shows under reverse or random).
    #[arg(long, value_enum, default_value_t = ScheduleArg::Forward, global = true)]
    pub schedule: ScheduleArg,
    /// OS threads the simulator spreads a launch's blocks over (default: EMRCLASS_SIMT_THREADS, else
    /// every core). The results are the same bits on any number; 1 runs blocks one after another.
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub simt_threads: Option<u32>,
    /// Seed: of a training run (`train`, `experiment`, `pretrain`: default 1, so a run repeats), of the
    /// random inputs of `gradcheck` and `bench` (default: fresh each run, printed), and of
    /// `--schedule random`.
    #[arg(long, global = true)]
    pub seed: Option<u64>,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum ScheduleArg {
    Forward,
    Reverse,
    Random,
}

impl GlobalArgs {
    /// The global flags' rules, checked before any command's own.
    pub fn check(&self) -> Result<()> {
        settings::memory_flags(self.memory_budget.as_deref(), &self.context_reserve)?;
        if self.simt_threads.is_none() {
            emrclass::device::simt_threads_from_env()?;
        }
        Ok(())
    }

    /// --seed, or a fresh one (EMRCLASS_SEED when set).
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(Rng::fresh_seed)
    }

    /// Opens --device (saying on stderr which, and why when `auto` fell back to the simulator)
    /// within --memory-budget; `seed` orders the threads under `--schedule random`.
    pub fn open_device(&self, seed: u64) -> Result<Device> {
        let (dev, fallback) = Device::open(self.device)?;
        dev.set_schedule(match self.schedule {
            ScheduleArg::Forward => Schedule::Forward,
            ScheduleArg::Reverse => Schedule::Reverse,
            ScheduleArg::Random => Schedule::Random(seed),
        });
        if let Some(threads) = self.simt_threads {
            dev.set_simt_threads(threads as usize);
        }
        let dev = match self.memory_budget(&dev)? {
            Some(m) => dev.with_budget(m.budget - m.reserve),
            None => dev,
        };
        match fallback {
            Some(why) => eprintln!("device: {} (auto: CUDA unavailable: {why})", dev.describe()),
            None => eprintln!("device: {}", dev.describe()),
        }
        if let Some(libraries) = dev.libraries() {
            eprintln!("libraries: {libraries}");
        }
        Ok(dev)
    }

    /// --memory-budget with --context-reserve (checked by `check` before the device opened);
    /// without it, a GPU's free memory (what the context already holds counts as reserve, plus
    /// 64 MiB for modules loaded later); None: unlimited.
    pub fn memory_budget(&self, dev: &Device) -> Result<Option<MemoryBudget>> {
        match settings::memory_flags(self.memory_budget.as_deref(), &self.context_reserve)? {
            Some((budget, reserve)) => Ok(Some(MemoryBudget { budget, reserve })),
            None if dev.is_cuda() => {
                let (free, total) = dev.mem_info()?;
                Ok(Some(MemoryBudget {
                    budget: total,
                    reserve: (total - free + (64 << 20)).min(total),
                }))
            }
            None => Ok(None),
        }
    }
}

/// `cmd` with its global flags left out of the help of `commands`, which ignore them.
pub fn hide_globals(mut cmd: clap::Command, commands: &[&str]) -> clap::Command {
    cmd.build();
    for name in commands {
        let sub = cmd.find_subcommand_mut(name).expect("a command");
        *sub = std::mem::take(sub).mut_args(|a| match a.is_global_set() {
            true => a.hide(true),
            false => a,
        });
    }
    cmd
}

/// For the commands that train: a first Ctrl-C or SIGTERM stops at a checkpoint instead of
/// ending the process, and a closed stdout (`| head`) silences the output, not the run.
pub fn catch_signals() -> Result<()> {
    emrclass::interrupt::install()
        .and_then(|_| emrclass::console::keep_running_when_piped())
        .map_err(|e| emrclass::Error::Invalid(format!("installing signal handlers: {e}")))
}

/// `--encoder` as a folder: an `hf:owner/name[@revision]` is fetched (or taken from the cache).
pub fn encoder_folder(encoder: &Option<std::path::PathBuf>) -> Result<Option<std::path::PathBuf>> {
    encoder
        .as_ref()
        .map(|e| hub::model_folder(e, hub::Need::Everything))
        .transpose()
}

/// How saved activations are stored (`--saved-activations`).
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SavedActivations {
    Fp32,
    Fp16,
}

/// A `--loss` value.
#[derive(Clone, Copy, ValueEnum)]
pub enum LossArg {
    Ce,
    #[value(alias = "wce")]
    WeightedCe,
    Focal,
    #[value(alias = "ghm")]
    Ghmc,
    #[value(alias = "ghm-cs")]
    Ghmcs,
    All,
}

/// The losses a --loss/--kind value names (`all` for benches only).
pub fn loss_kinds(arg: LossArg) -> Result<Vec<LossKind>> {
    Ok(match arg {
        LossArg::Ce => vec![LossKind::CrossEntropy],
        LossArg::WeightedCe => vec![LossKind::WeightedCrossEntropy],
        LossArg::Focal => vec![LossKind::Focal],
        LossArg::Ghmc => vec![LossKind::GhmC],
        LossArg::Ghmcs => vec![LossKind::GhmCs],
        LossArg::All => LossKind::ALL.to_vec(),
    })
}
