//! `emrclass experiment`: the paper's grid of heads x losses, each cell a `train` run.

use emrclass::data::batching::LongText;
use emrclass::jobs::experiment::{run_grid, ExperimentOptions};
use emrclass::model::window_pool::chunk_pool_name;
use emrclass::settings::{self, Checks};
use emrclass::Result;

use super::common::{catch_signals, encoder_folder, loss_kinds, GlobalArgs, LossArg};

/// Run the paper's comparison grid (each head with each loss) on one data set and write the
/// tables (ACC, macro-F1, micro-F1) as CSV and markdown into --out (each run's own folder
/// inside it, HEAD-LOSS/). Takes every `train` option; --heads and --losses replace --head
/// and --loss.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    train: super::train::Args,
    /// The heads of the grid, comma-separated: cls, textcnn, bigru, bilstm, textcnn-bigru,
    /// paper, bag.
    #[arg(long, value_delimiter = ',', default_values_t = ["textcnn".to_string(), "bilstm".into(), "bigru".into(), "textcnn-bigru".into(), "paper".into()])]
    heads: Vec<String>,
    /// The losses of the grid, comma-separated (see --loss), or all.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [LossArg::Ce, LossArg::WeightedCe, LossArg::Focal, LossArg::Ghmc, LossArg::Ghmcs])]
    losses: Vec<LossArg>,
    /// Run each cell once per seed (e.g. 1,2,3) and report mean ± std; default: --seed (or 1).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<u64>,
}

pub fn run(global: &GlobalArgs, args: &Args) -> Result<bool> {
    let Args {
        train,
        heads,
        losses,
        seeds,
    } = args;
    let mut base = train.options(global.seed, "runs/experiment")?;
    let mut c = Checks::new();
    let heads: Vec<_> = heads.iter().filter_map(|h| c.parse("--heads", h)).collect();
    c.require(!heads.is_empty(), "--heads: give at least one head");
    c.require(!losses.is_empty(), "--losses: give at least one loss");
    let mut distinct = seeds.clone();
    distinct.sort_unstable();
    distinct.dedup();
    c.require(
        distinct.len() == seeds.len(),
        "--seeds: each seed once (the same seed gives the same run)",
    );
    c.finish()?;
    settings::check_train(&base, &heads)?;
    base.encoder = encoder_folder(&base.encoder)?;
    settings::check_encoder_limits(&base)?;
    // Without --lr, each head gets its own default.
    let lr_per_head = train.lr.is_none();
    catch_signals()?;
    let dev_handle = global.open_device(global.seed())?;
    base.memory = global.memory_budget(&dev_handle)?;
    let o = ExperimentOptions {
        heads,
        losses: {
            let mut all = Vec::new();
            for &l in losses {
                for k in loss_kinds(l)? {
                    if !all.contains(&k) {
                        all.push(k);
                    }
                }
            }
            all
        },
        out: base.out.clone(),
        seeds: seeds.clone(),
        lr: (!lr_per_head).then_some(base.settings.lr),
        base,
    };
    let data = match &train.train {
        Some(p) => p.display().to_string(),
        None if train.synthetic_long => "built-in long-record synthetic set".into(),
        None => "built-in synthetic set".into(),
    };
    let long_text = match o.base.long_text {
        LongText::Chunks { max } => format!(
            "chunks (at most {max}, {} pool)",
            chunk_pool_name(o.base.chunk_pool)
        ),
        other => other.name().to_string(),
    };
    let describe = format!(
        "{data}; {}; {} epochs, batch {}, lr {}, max-len {} (long text: {long_text}), GHM-CS warm-up {} epoch(s), seed{} {}; device {}",
        match &train.encoder {
            Some(e) => format!("encoder {}", e.display()),
            None => format!(
                "character embeddings {}, Text-CNN {} filters x (2,3,4), RNN hidden {}, dropout {}",
                train.embedding_dim, train.filters, train.rnn_hidden, train.dropout
            ),
        },
        train.epochs,
        train.batch_size,
        train
            .lr
            .map_or_else(|| "per head (3e-3; bag 2e-2)".to_string(), |l| l.to_string()),
        train.max_len,
        o.base.ghm_warmup_epochs,
        if seeds.len() > 1 { "s" } else { "" },
        if seeds.is_empty() {
            global.seed.unwrap_or(1).to_string()
        } else {
            seeds
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
        dev_handle.describe()
    ) + &match emrclass::distributed::World::from_env()?.filter(|w| w.size > 1) {
        Some(w) => format!(
            "; data parallel over {} ranks (global batch {})",
            w.size,
            train.batch_size * train.accumulate.max(1) * w.size
        ),
        None => String::new(),
    };
    run_grid(&dev_handle, &o, &describe)?;
    Ok(true)
}
