//! What `emrclass plan` prints: the byte breakdown at the peak, the strategy and what was tried
//! before it, and the table of the largest batch per sequence length.

use super::{largest_batch, Plan, Request};
use crate::device::Role;
use crate::error::Result;
use crate::model::bert::EncoderMemory;
use crate::train::optim::OptimizerKind;

fn mib(bytes: usize) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

fn gib(bytes: usize) -> String {
    format!("{:.2} GiB", bytes as f64 / (1u64 << 30) as f64)
}

/// One line per role at the peak, the peak, the strategy, what was tried, and whether it fits.
pub fn print_plan(plan: &Plan) {
    let r = &plan.request;
    let c = &r.encoder;
    let objective = match r.masked_lm {
        Some(rate) => format!(
            "MLM head (pretraining: {:.0} % of tokens masked; the vocabulary GEMM on the gathered masked rows only)",
            rate * 100.0
        ),
        None => format!(
            "{} head ({} classes), {} loss",
            r.head.kind.name(),
            r.head.classes,
            r.loss.name()
        ),
    };
    println!(
        "model: BERT {} layers, hidden {}, {} heads, vocab {} + {objective}",
        c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.vocab_size,
    );
    println!(
        "run: batch {}{} x seq {}, {}, optimizer {}{}; budget {} = {} MiB reserve (CUDA context, modules, pool rounding) + {} MiB for the engine",
        r.batch,
        if r.windows > 1 {
            format!(" records x {} windows", r.windows)
        } else {
            String::new()
        },
        r.seq,
        match (r.frozen, r.masked_lm) {
            (true, _) => "frozen encoder",
            (false, Some(_)) => "masked-LM pretraining",
            (false, None) => "full fine-tuning",
        },
        r.optimizer.name(),
        if r.fp16_activations && !r.frozen {
            ", saved activations fp16"
        } else {
            ""
        },
        gib(r.budget),
        mib(r.reserve),
        mib(r.usable())
    );
    let m = &plan.measured;
    println!();
    println!("  {:<36} {:>10}", "live at the peak", "MiB");
    for role in Role::ALL {
        let what = match role {
            Role::OptimizerState if r.optimizer != OptimizerKind::AdamW => {
                "optimizer state (m, v: 8-bit codes)"
            }
            Role::OptimizerState => "optimizer state (AdamW m, v)",
            Role::Activations => "activations (made by forward passes)",
            Role::Scratch => "scratch (backward, loss, optimizer)",
            _ => role.name(),
        };
        println!("  {what:<36} {:>10}", mib(m.at_peak[role.index()]));
    }
    println!(
        "  {:<36} {:>10}   ({:.1} % of the engine's share)",
        "peak",
        mib(m.peak),
        100.0 * m.peak as f64 / r.usable().max(1) as f64
    );
    if !m.saved_per_layer.is_empty() {
        let k = plan
            .strategy
            .memory
            .recompute_layers
            .min(m.saved_per_layer.len());
        let (recomputed, kept) = m.saved_per_layer.split_at(k);
        let total: usize = m.saved_per_layer.iter().sum();
        let mut parts = Vec::new();
        if let Some(&b) = kept.first() {
            parts.push(format!("{} kept x {} MiB", kept.len(), mib(b)));
        }
        if let Some(&b) = recomputed.first() {
            parts.push(format!("{} recomputed x {} MiB (the input)", k, mib(b)));
        }
        println!(
            "  saved for backward by the encoder: {} MiB = {}",
            mib(total),
            parts.join(" + ")
        );
    }
    println!();
    println!(
        "strategy: {}",
        plan.strategy.describe(c.num_hidden_layers, r.frozen)
    );
    let k = plan.strategy.memory.recompute_layers;
    if k > 0 && !r.frozen {
        // Backward is about twice the forward's arithmetic, so a layer's forward is a third of
        // its work: an estimate by operation count, not a measurement.
        println!(
            "  cost: one more forward of {k} layers, about +{:.0} % of the encoder's arithmetic per step",
            100.0 * k as f64 / (3.0 * c.num_hidden_layers as f64)
        );
    }
    println!("  always: dropout masks regenerated from their seeds; attention keeps its log-sum-exp statistics, never the probabilities");
    let tried: Vec<String> = plan
        .tried
        .iter()
        .map(|(s, peak)| {
            format!(
                "{} -> {} MiB",
                s.describe(c.num_hidden_layers, r.frozen),
                mib(*peak)
            )
        })
        .collect();
    println!("  tried, in order of cost:\n    {}", tried.join("\n    "));
    if plan.fits {
        println!("fits: peak {} MiB <= {} MiB", mib(m.peak), mib(r.usable()));
    } else {
        let fixed = m.at_peak[Role::Parameters.index()]
            + m.at_peak[Role::Gradients.index()]
            + m.at_peak[Role::OptimizerState.index()];
        println!(
            "does not fit: even so the peak is {} MiB, {} MiB over the engine's {} MiB (parameters, gradients and optimizer state alone: {} MiB)",
            mib(m.peak),
            mib(m.peak.saturating_sub(r.usable())),
            mib(r.usable()),
            mib(fixed)
        );
    }
}

/// The largest batch that fits one pass at a sequence length, by strategy.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TableRow {
    pub seq: usize,
    /// Full fine-tuning, every activation kept (in fp16 with `--saved-activations fp16`).
    pub kept: Option<usize>,
    /// Full fine-tuning, every layer recomputed (bit-exact).
    pub recompute: Option<usize>,
    /// Full fine-tuning, every layer recomputed from fp16 inputs.
    pub recompute_fp16: Option<usize>,
    /// Frozen encoder with fp16 weights (feature pass and head training).
    pub frozen: Option<usize>,
}

/// The table for `seqs` (batches searched up to `cap`).
pub fn table(req: &Request, seqs: &[usize], cap: usize) -> Result<Vec<TableRow>> {
    let layers = req.encoder.num_hidden_layers;
    let all = |fp16| EncoderMemory {
        recompute_layers: layers,
        fp16_checkpoints: fp16,
        fp16_weights: false,
        fp16_activations: false,
    };
    let frozen_fp16 = EncoderMemory {
        fp16_weights: true,
        ..EncoderMemory::default()
    };
    seqs.iter()
        .map(|&seq| {
            let full = Request {
                seq,
                frozen: false,
                ..req.clone()
            };
            let frozen = Request {
                frozen: true,
                ..full.clone()
            };
            Ok(TableRow {
                seq,
                kept: largest_batch(
                    &full,
                    EncoderMemory {
                        fp16_activations: req.fp16_activations,
                        ..EncoderMemory::default()
                    },
                    cap,
                )?,
                recompute: largest_batch(&full, all(false), cap)?,
                recompute_fp16: largest_batch(&full, all(true), cap)?,
                // Pretraining trains the whole encoder: no frozen column.
                frozen: match req.masked_lm {
                    Some(_) => None,
                    None => largest_batch(&frozen, frozen_fp16, cap)?,
                },
            })
        })
        .collect()
}

pub fn print_table(req: &Request, rows: &[TableRow], cap: usize) {
    println!(
        "largest batch in {} ({} MiB for the engine), one pass, no micro-batches; batches above it run as micro-batches:",
        gib(req.budget),
        mib(req.usable())
    );
    println!(
        "  {:>5} {:>14} {:>14} {:>16} {:>15}",
        "seq", "all kept", "recompute", "recompute+fp16", "frozen (fp16)"
    );
    let cell = |b: Option<usize>| match b {
        None => "none".to_string(),
        Some(b) if b >= cap => format!(">= {cap}"),
        Some(b) => b.to_string(),
    };
    for r in rows {
        println!(
            "  {:>5} {:>14} {:>14} {:>16} {:>15}",
            r.seq,
            cell(r.kept),
            cell(r.recompute),
            cell(r.recompute_fp16),
            match req.masked_lm {
                Some(_) => "-".to_string(),
                None => cell(r.frozen),
            }
        );
    }
}

/// The plan (request, strategy, breakdown, what was tried) and the table as one JSON file.
pub fn write_json(path: &std::path::Path, plan: &Plan, rows: &[TableRow]) -> Result<()> {
    let r = &plan.request;
    let m = &plan.measured;
    let roles: serde_json::Map<String, serde_json::Value> = Role::ALL
        .iter()
        .map(|role| (role.name().to_string(), m.at_peak[role.index()].into()))
        .collect();
    let value = serde_json::json!({
        "request": {
            "layers": r.encoder.num_hidden_layers, "hidden": r.encoder.hidden_size,
            "vocab": r.encoder.vocab_size, "head": format!("{:?}", r.head.kind),
            "classes": r.head.classes, "loss": format!("{:?}", r.loss), "batch": r.batch,
            "seq": r.seq, "budget": r.budget, "reserve": r.reserve, "frozen": r.frozen,
            "optimizer": r.optimizer.name(), "fp16_activations": r.fp16_activations,
            "windows": r.windows, "masked_lm": r.masked_lm,
        },
        "fits": plan.fits,
        "strategy": {
            "recompute_layers": plan.strategy.memory.recompute_layers,
            "fp16_checkpoints": plan.strategy.memory.fp16_checkpoints,
            "micro_batch": plan.strategy.micro_batch,
            "accumulate": plan.strategy.accumulate,
        },
        "peak": m.peak,
        "at_peak": roles,
        "saved_per_layer": m.saved_per_layer,
        "tried": plan.tried.iter().map(|(s, peak)| serde_json::json!({
            "recompute_layers": s.memory.recompute_layers,
            "fp16_checkpoints": s.memory.fp16_checkpoints,
            "micro_batch": s.micro_batch, "peak": peak,
        })).collect::<Vec<_>>(),
        "table": rows,
    });
    let text = serde_json::to_string_pretty(&value)
        .map_err(|e| crate::error::Error::Invalid(format!("plan JSON: {e}")))?;
    crate::weights::write_atomically(path, text.as_bytes())
}
