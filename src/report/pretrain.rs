//! The report of a pretraining run (`emrclass pretrain`, whose run.json says `"command":
//! "pretrain"`): the masked-LM training loss per logged step, the held-out loss and perplexity
//! at every evaluation (before training, `--eval-every`, each epoch's end), a table of the
//! evaluations, and what was run. What the folder lacks is said on the page.

use std::path::Path;

use super::charts;
use super::html::{f64_of, figure, json_file, log_lines, missing_section, page, table};

/// The step and evaluation lines of a pretraining log.jsonl.
#[derive(Default)]
struct PretrainLog {
    /// (step, mean loss since the previous line).
    steps: Vec<(f64, f64)>,
    /// (step, epoch, held-out loss, perplexity, at an epoch's end).
    evals: Vec<(f64, u64, f64, f64, bool)>,
}

fn read(dir: &Path, problems: &mut Vec<String>) -> PretrainLog {
    let mut log = PretrainLog::default();
    for (n, v) in log_lines(dir, problems, "no curves") {
        let step = f64_of(&v, "step");
        match (step, f64_of(&v, "loss_mean"), f64_of(&v, "eval_perplexity")) {
            (Some(s), Some(loss), _) => log.steps.push((s, loss)),
            (Some(s), None, Some(ppl)) => log.evals.push((
                s,
                v["epoch"].as_u64().unwrap_or(0),
                f64_of(&v, "eval_loss").unwrap_or(ppl.ln()),
                ppl,
                v["epoch_end"].as_bool() == Some(true),
            )),
            _ => problems.push(format!(
                "log.jsonl line {}: not a line pretraining writes",
                n
            )),
        }
    }
    log
}

/// The page of the pretraining run in `dir`.
pub fn page_of(dir: &Path) -> String {
    let mut problems = Vec::new();
    let log = read(dir, &mut problems);
    let run = json_file(dir, "run.json", &mut problems, "no settings");
    let mut body = String::new();
    if let Some(r) = &run {
        let m = &r["model"];
        let rows: Vec<Vec<String>> = [
            (
                "records",
                format!(
                    "{} records: {} training / {} held-out sequences of up to {} tokens{}",
                    r["records"],
                    r["sequences"]["train"],
                    r["sequences"]["held_out"],
                    r["max_len"],
                    if r["line_by_line"].as_bool() == Some(true) {
                        ", one record each"
                    } else {
                        ", records joined"
                    }
                ),
            ),
            (
                "model",
                format!(
                    "BERT {} layers, hidden {}, vocabulary {}, {}",
                    m["layers"],
                    m["hidden"],
                    m["vocab"],
                    if r["from_scratch"].as_bool() == Some(true) {
                        "from random weights".to_string()
                    } else {
                        format!("from {}", r["encoder"].as_str().unwrap_or("?"))
                    }
                ),
            ),
            (
                "masking",
                format!(
                    "{} % of tokens, {}{}",
                    f64_of(r, "mask_rate").map_or("?".into(), |x| format!("{}", x * 100.0)),
                    match r["mask_unit"].as_str() {
                        Some("token") => "token by token",
                        _ => "whole words",
                    },
                    r["mask_terms"]
                        .as_str()
                        .map_or(String::new(), |t| format!(", terms of {t} first"))
                ),
            ),
            (
                "optimisation",
                format!(
                    "{} epochs, {} steps, batch {} ({} x {} accumulated), lr {}, {}, seed {}",
                    r["epochs"],
                    r["steps"],
                    r["batch_size"],
                    r["micro_batch"],
                    r["accumulate"],
                    r["lr"],
                    r["optimizer"].as_str().unwrap_or("?"),
                    r["seed"]
                ),
            ),
            ("device", r["device"].as_str().unwrap_or("?").to_string()),
        ]
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), v])
        .collect();
        body.push_str("<h2>Run</h2>\n");
        body.push_str(&table(&["", ""], &rows, true).replacen(
            "<table>",
            "<table class=\"text\">",
            1,
        ));
    }
    body.push_str("<h2>Learning curves</h2>\n");
    let loss = vec![("training loss".to_string(), log.steps.clone())];
    let held: Vec<(f64, f64)> = log.evals.iter().map(|e| (e.0, e.2)).collect();
    let mut series = loss.clone();
    series.push(("held-out loss".to_string(), held));
    let names: Vec<String> = series.iter().map(|s| s.0.clone()).collect();
    body.push_str(&figure(
        "loss",
        charts::lines(
            "masked-LM loss (cross-entropy at masked tokens)",
            "step",
            "loss",
            &series,
            None,
            &[],
        ),
        &names,
    ));
    let ppl = vec![(
        "held-out perplexity".to_string(),
        log.evals.iter().map(|e| (e.0, e.3)).collect::<Vec<_>>(),
    )];
    body.push_str(&figure(
        "perplexity",
        charts::lines("held-out perplexity", "step", "perplexity", &ppl, None, &[]),
        &["held-out perplexity".to_string()],
    ));
    if !log.evals.is_empty() {
        let rows: Vec<Vec<String>> = log
            .evals
            .iter()
            .map(|&(step, epoch, loss, ppl, end)| {
                vec![
                    format!("{step}"),
                    if end {
                        format!("end of {epoch}")
                    } else {
                        format!("{epoch}")
                    },
                    format!("{loss:.4}"),
                    format!("{ppl:.2}"),
                ]
            })
            .collect();
        body.push_str("<h2>Evaluations</h2>\n");
        body.push_str(&table(
            &["step", "epoch", "held-out loss", "perplexity"],
            &rows,
            false,
        ));
    }
    body.push_str(&missing_section(&problems));
    page("emrclass pretraining run", &body)
}
