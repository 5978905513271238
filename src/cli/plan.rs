//! `emrclass plan`: the memory plan of fine-tuning or pretraining a BERT checkpoint on a card.

use std::path::PathBuf;

use emrclass::model::bert::BertConfig;
use emrclass::model::heads::{HeadConfig, HeadKind};
use emrclass::settings::{self, Checks};
use emrclass::{hub, plan, Result};

use super::common::{loss_kinds, GlobalArgs, LossArg, SavedActivations};

/// Plan the device memory of fine-tuning (or, with --pretrain, pretraining) a BERT checkpoint:
/// the byte breakdown at the peak (counted by running the engine's own training step on a
/// device that only counts), the strategy that fits (recomputation, fp16 checkpoints,
/// micro-batches) or what is short, and the largest batch per sequence length. Needs no GPU and
/// no weights.
#[derive(clap::Args)]
pub struct Args {
    /// A BERT checkpoint folder (its config.json is read), a config.json, or hf:owner/name.
    #[arg(long)]
    model: PathBuf,
    /// The head over the encoder: cls, textcnn, bigru, bilstm, textcnn-bigru or paper.
    #[arg(long, default_value = "paper")]
    head: String,
    /// The loss, as `train --loss` (and its default).
    #[arg(long, value_enum, default_value_t = LossArg::WeightedCe)]
    loss: LossArg,
    /// Records per batch.
    #[arg(long, default_value_t = 16)]
    batch: usize,
    /// Tokens per record (`train --max-len`).
    #[arg(long, default_value_t = 512)]
    seq: usize,
    /// Token windows per record: `train --long-text chunks`' --max-chunks (each --seq long).
    #[arg(long, default_value_t = 1)]
    windows: usize,
    /// Older spelling of the global --memory-budget (the card's memory), kept for scripts.
    #[arg(long, hide = true)]
    budget: Option<String>,
    /// The card's streaming multiprocessors (6: a GTX 1050 Ti; an H200 has 132): GEMM plans
    /// depend on them, and split-K's workspace is memory.
    #[arg(long, default_value_t = emrclass::plan::TARGET_MULTIPROCESSORS)]
    multiprocessors: usize,
    /// Plan a frozen encoder (features cached, head trained alone).
    #[arg(long)]
    frozen: bool,
    /// adamw, adamw8bit or adamw8bit-all, as `train --optimizer`.
    #[arg(long, default_value = "adamw")]
    optimizer: String,
    /// fp32 or fp16, as `train --saved-activations`.
    #[arg(long, value_enum, default_value_t = SavedActivations::Fp32)]
    saved_activations: SavedActivations,
    /// Classes of the head (CHIP-CTC has 44).
    #[arg(long, default_value_t = 44)]
    classes: usize,
    /// Text-CNN filters per width, as `train --filters`.
    #[arg(long, default_value_t = 64)]
    filters: usize,
    /// BiGRU/BiLSTM hidden size, as `train --rnn-hidden`.
    #[arg(long, default_value_t = 64)]
    rnn_hidden: usize,
    /// Skip the table of the largest batch per sequence length.
    #[arg(long)]
    no_table: bool,
    /// Also write the plan and the table as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Plan masked-LM pretraining (`emrclass pretrain`) instead of fine-tuning: BERT with its
    /// MLM head (--head, --loss and --classes do not apply).
    #[arg(long, conflicts_with_all = ["frozen", "windows"])]
    pretrain: bool,
    /// With --pretrain: the fraction of tokens masked (`pretrain --mask-rate`).
    #[arg(long, default_value_t = 0.15, requires = "pretrain")]
    mask_rate: f64,
}

pub fn run(global: &GlobalArgs, a: &Args) -> Result<bool> {
    let mut c = Checks::new();
    let head = c.parse("--head", &a.head);
    let optimizer = c.parse("--optimizer", &a.optimizer);
    c.count("--batch", a.batch);
    c.count("--windows", a.windows);
    c.count("--multiprocessors", a.multiprocessors);
    c.fraction("--mask-rate", a.mask_rate, false, 0.0, 1.0);
    c.count("--classes", a.classes);
    c.at_least("--classes", a.classes, 2, "a classifier");
    c.require(
        head != Some(HeadKind::Bag),
        "--head bag: the bag head has no encoder to plan (its memory is its embedding table)",
    );
    if let Some(h) = head {
        settings::sequence_length(&mut c, "--seq", a.seq, &[h]);
        settings::head_sizes(&mut c, &[h], a.filters, a.rnn_hidden);
    }
    // The card's memory: --memory-budget, as for every command (default here: 4GiB, a GTX
    // 1050 Ti); `--budget` is its older name.
    let (flag, card) = match (&global.memory_budget, &a.budget) {
        (Some(m), Some(b)) if m != b => {
            c.refuse(
                "--budget",
                b,
                &format!("is the older name of --memory-budget, given too ({m}): give one"),
            );
            ("--memory-budget", m.clone())
        }
        (Some(m), _) => ("--memory-budget", m.clone()),
        (None, Some(b)) => ("--budget", b.clone()),
        (None, None) => ("--memory-budget", "4GiB".into()),
    };
    let budget = c.bytes(flag, &card);
    let reserve = c.bytes("--context-reserve", &global.context_reserve);
    c.finish()?;
    let (Some(head), Some(budget), Some(reserve), Some(optimizer)) =
        (head, budget, reserve, optimizer)
    else {
        unreachable!("finish() refuses a value that did not parse")
    };
    let model = hub::model_folder(&a.model, hub::Need::Config)?;
    let is_json = model.extension().is_some_and(|e| e == "json");
    let config_path = if is_json {
        model.clone()
    } else {
        model.join("config.json")
    };
    let encoder = BertConfig::from_file(&config_path)?;
    let mut head = HeadConfig::new(head, encoder.hidden_size, a.classes);
    head.textcnn_filters = a.filters;
    head.rnn_hidden = a.rnn_hidden;
    let request = plan::Request {
        encoder,
        head,
        loss: loss_kinds(a.loss)?[0],
        batch: a.batch,
        seq: a.seq,
        budget,
        reserve,
        frozen: a.frozen,
        optimizer,
        fp16_activations: a.saved_activations == SavedActivations::Fp16,
        windows: a.windows,
        multiprocessors: a.multiprocessors,
        masked_lm: a.pretrain.then_some(a.mask_rate),
    };
    let p = plan::plan(&request)?;
    plan::print_plan(&p);
    let cap = 4096;
    let seqs: Vec<usize> = [64, 128, 256, 384, 512]
        .into_iter()
        .filter(|&l| l <= request.encoder.max_position_embeddings)
        .collect();
    let rows = if a.no_table {
        Vec::new()
    } else {
        println!();
        let rows = plan::table(&request, &seqs, cap)?;
        plan::print_table(&request, &rows, cap);
        rows
    };
    if let Some(path) = &a.json {
        plan::write_json(path, &p, &rows)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(p.fits)
}
