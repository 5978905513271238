//! `emrclass report`: a run folder — or an experiment folder — as one self-contained HTML page
//! (`report.html`: inline SVG from `plotters`, no script, no network), written at the end of
//! `train` and after every `experiment` cell:
//!
//! - the training loss per logged step, dev accuracy / macro-F1 / micro-F1 per epoch and per
//!   `--eval-every` point, the best epoch marked;
//! - per-class dev F1 against the class's training count (log scale), and a table of precision,
//!   recall, F1, support, training count and class weight;
//! - the dev confusion matrix as a row-normalised heat map, with the counts in a table;
//! - for GHM losses, the moving histogram of gradient norms at each epoch's end;
//! - the data, model, settings, device, time and samples/s.
//!
//! A pretraining run (`emrclass pretrain`) gets its loss and held-out perplexity curves
//! (`pretrain`). An experiment folder gets the heads × losses table and a grouped bar chart of
//! macro-F1. What a folder lacks (a cut `log.jsonl`, no confusion matrix) is said on the page,
//! not an error.

mod charts;
mod html;
mod pretrain;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::train::pretraining::is_pretraining_run;
use crate::train::state::settings_pairs;
use crate::weights::write_atomically;
use html::{esc, f64_of, figure, json_file, log_lines, missing_section, page, table};

/// Writes `dir/report.html` for a run folder, or for an experiment folder (one holding
/// `results.csv`); returns its path.
pub fn write(dir: &Path) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::Invalid(format!(
            "{}: not a folder (a run folder from `train --out`, or an `experiment --out`)",
            dir.display()
        )));
    }
    let html = if dir.join("results.csv").is_file() {
        experiment_page(dir)
    } else if is_pretraining_run(dir) {
        pretrain::page_of(dir)
    } else {
        run_page(dir)
    };
    let path = dir.join("report.html");
    write_atomically(&path, html.as_bytes())?;
    Ok(path)
}

/// What a run folder's `log.jsonl` holds, line kinds apart.
#[derive(Default)]
struct Log {
    /// (step, loss) of the step lines: the mean over the steps since the previous line
    /// (`loss_mean`), or, in logs written before it existed, the step's own loss.
    steps: Vec<(f64, f64)>,
    /// (end step, mean loss) of the epoch lines.
    epoch_losses: Vec<(f64, f64)>,
    /// (step, accuracy, macro-F1, micro-F1) of dev evaluations: `--eval-every` and epoch ends.
    dev: Vec<(f64, f64, f64, f64)>,
    /// The epoch lines as written.
    epochs: Vec<Value>,
}

fn read_log(dir: &Path, problems: &mut Vec<String>) -> Log {
    let mut log = Log::default();
    for (n, v) in log_lines(dir, problems, "no learning curves") {
        let dev = (
            f64_of(&v, "dev_accuracy"),
            f64_of(&v, "dev_macro_f1"),
            f64_of(&v, "dev_micro_f1"),
        );
        let loss = f64_of(&v, "loss_mean").or_else(|| f64_of(&v, "loss"));
        match (f64_of(&v, "step"), loss, dev) {
            (Some(step), Some(loss), _) => log.steps.push((step, loss)),
            (Some(step), None, (Some(a), Some(m), Some(u))) => log.dev.push((step, a, m, u)),
            (None, _, (Some(a), Some(m), Some(u))) => {
                if let Some(step) = f64_of(&v, "end_step") {
                    log.dev.push((step, a, m, u));
                    if let Some(loss) = f64_of(&v, "loss") {
                        log.epoch_losses.push((step, loss));
                    }
                }
                log.epochs.push(v);
            }
            _ => problems.push(format!(
                "log.jsonl line {}: not a line the engine writes",
                n
            )),
        }
    }
    log.dev.sort_by(|a, b| a.0.total_cmp(&b.0));
    log
}

/// A run's loss curves: the mean of each logging window, and each epoch's mean (at its last
/// step); either may be missing.
fn loss_curves(log: &Log) -> Vec<(String, Vec<(f64, f64)>)> {
    let mut series = Vec::new();
    if !log.steps.is_empty() {
        series.push(("training loss".to_string(), log.steps.clone()));
    }
    if !log.epoch_losses.is_empty() {
        series.push(("epoch loss".to_string(), log.epoch_losses.clone()));
    }
    series
}

/// A setting's value as a reader wants it: `Some("x")` as x, `None` as -.
fn readable(v: &str) -> String {
    match v {
        "None" => "-".into(),
        _ => v
            .strip_prefix("Some(")
            .and_then(|x| x.strip_suffix(')'))
            .unwrap_or(v)
            .trim_matches('"')
            .to_string(),
    }
}

fn strings(v: Option<&Value>) -> Option<Vec<String>> {
    v?.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn numbers(v: Option<&Value>) -> Option<Vec<f64>> {
    v?.as_array()?.iter().map(Value::as_f64).collect()
}

fn run_page(dir: &Path) -> String {
    let mut problems = Vec::new();
    let log = read_log(dir, &mut problems);
    let run = json_file(
        dir,
        "run.json",
        &mut problems,
        "no data sizes, class counts or settings",
    );
    let report = json_file(dir, "report.json", &mut problems, "no per-class scores");
    let confusion = json_file(dir, "confusion.json", &mut problems, "no confusion matrix");
    let mut body = String::new();

    // What was run.
    if let Some(r) = &run {
        let model = &r["model"];
        let rows: Vec<Vec<String>> = [
            ("data", r["source"].as_str().unwrap_or("?").to_string()),
            (
                "records",
                format!(
                    "{} train / {} dev, {} classes, {:.1} % truncated",
                    r["train_records"],
                    r["dev_records"],
                    r["labels"].as_array().map_or(0, Vec::len),
                    f64_of(r, "truncated_percent").unwrap_or(0.0)
                ),
            ),
            (
                "model",
                format!(
                    "{} + {} head, {} loss, max-len {}",
                    model["encoder"]
                        .as_str()
                        .map_or("character embeddings".to_string(), |e| format!(
                            "encoder {e}"
                        )),
                    model["head"].as_str().unwrap_or("?"),
                    r["loss"].as_str().unwrap_or("?"),
                    model["max_len"]
                ),
            ),
            (
                "optimisation",
                format!(
                    "{} epochs, batch {} x {} accumulated, lr {}, seed {}",
                    r["epochs"], r["batch_size"], r["accumulate"], r["lr"], r["seed"]
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
        if let Some(fingerprint) = r["settings"].as_str() {
            let rows: Vec<Vec<String>> = settings_pairs(fingerprint)
                .into_iter()
                .map(|(k, v)| vec![k.replace('_', " "), readable(&v)])
                .collect();
            body.push_str("<details><summary>Every setting</summary>\n");
            body.push_str(&table(&["setting", "value"], &rows, true).replacen(
                "<table>",
                "<table class=\"text\">",
                1,
            ));
            body.push_str("</details>\n");
        }
    }
    if !log.epochs.is_empty() {
        let rows: Vec<Vec<String>> = log
            .epochs
            .iter()
            .map(|e| {
                let n = |k: &str| f64_of(e, k).map_or("-".into(), |v| format!("{v:.4}"));
                vec![
                    e["epoch"].to_string(),
                    n("loss"),
                    n("dev_accuracy"),
                    n("dev_macro_f1"),
                    n("dev_micro_f1"),
                    f64_of(e, "seconds").map_or("-".into(), |v| format!("{v:.1}")),
                    f64_of(e, "samples_per_second").map_or("-".into(), |v| format!("{v:.0}")),
                    if e["best"].as_bool() == Some(true) {
                        "best"
                    } else {
                        ""
                    }
                    .to_string(),
                ]
            })
            .collect();
        body.push_str("<h2>Epochs</h2>\n");
        body.push_str(&table(
            &[
                "epoch",
                "loss",
                "dev acc",
                "macro-F1",
                "micro-F1",
                "seconds",
                "samples/s",
                "",
            ],
            &rows,
            false,
        ));
    }

    // Learning curves.
    body.push_str("<h2>Learning</h2>\n");
    let loss_series = loss_curves(&log);
    let loss_names: Vec<String> = loss_series.iter().map(|s| s.0.clone()).collect();
    if loss_series.is_empty() {
        body.push_str(
            "<p class=\"missing\">No step or epoch lines in log.jsonl: no loss curve.</p>\n",
        );
    } else {
        body.push_str(&figure(
            "loss",
            charts::lines(
                "Training loss: mean of each --log-every window, and of each epoch",
                "step",
                "loss",
                &loss_series,
                None,
                &[],
            ),
            &loss_names,
        ));
    }
    if log.dev.is_empty() {
        body.push_str("<p class=\"missing\">No dev evaluations in log.jsonl: no dev curves.</p>\n");
    } else {
        let pick = |f: fn(&(f64, f64, f64, f64)) -> f64| -> Vec<(f64, f64)> {
            log.dev.iter().map(|d| (d.0, f(d))).collect()
        };
        // Micro-F1 is accuracy for single-label data: one line for both.
        let names = ["dev accuracy (= micro-F1)", "dev macro-F1"].map(String::from);
        let series = vec![
            (names[0].clone(), pick(|d| d.1)),
            (names[1].clone(), pick(|d| d.2)),
        ];
        let marks: Vec<(f64, String)> = log
            .epochs
            .iter()
            .rfind(|e| e["best"].as_bool() == Some(true))
            .and_then(|e| {
                Some((
                    f64_of(e, "end_step")?,
                    format!(" best epoch {}", e["epoch"]),
                ))
            })
            .into_iter()
            .collect();
        body.push_str(&figure(
            "dev",
            charts::lines(
                "Dev metrics (per epoch and per --eval-every point)",
                "step",
                "score",
                &series,
                Some((0.0, 1.05)),
                &marks,
            ),
            &names,
        ));
    }

    // Classes: scores against counts, and the table.
    let labels = strings(report.as_ref().and_then(|r| r.get("labels")))
        .or_else(|| strings(run.as_ref().and_then(|r| r.get("labels"))));
    let per_class = report
        .as_ref()
        .and_then(|r| r["report"]["per_class"].as_array().cloned());
    let train_counts = numbers(run.as_ref().and_then(|r| r.get("train_counts")));
    let weights = numbers(run.as_ref().and_then(|r| r.get("class_weights")));
    body.push_str("<h2>Classes</h2>\n");
    match (&labels, &per_class) {
        (Some(labels), Some(per_class)) if labels.len() == per_class.len() => {
            if let Some(counts) = &train_counts {
                let points: Vec<(String, f64, f64)> = labels
                    .iter()
                    .zip(per_class)
                    .zip(counts)
                    .map(|((l, c), &n)| (l.clone(), n, f64_of(c, "f1").unwrap_or(0.0)))
                    .collect();
                body.push_str(&figure("classes", charts::classes(&points), &["F1".into()]));
            } else {
                body.push_str("<p class=\"missing\">No training counts (run.json): no F1-against-count chart.</p>\n");
            }
            let mut order: Vec<usize> = (0..labels.len()).collect();
            if let Some(counts) = &train_counts {
                order.sort_by(|&a, &b| counts[b].total_cmp(&counts[a]));
            }
            let rows: Vec<Vec<String>> = order
                .iter()
                .map(|&i| {
                    let c = &per_class[i];
                    let n = |k: &str| f64_of(c, k).map_or("-".into(), |v| format!("{v:.4}"));
                    vec![
                        labels[i].clone(),
                        train_counts
                            .as_ref()
                            .map_or("-".into(), |t| format!("{}", t[i])),
                        c["support"].to_string(),
                        n("precision"),
                        n("recall"),
                        n("f1"),
                        weights
                            .as_ref()
                            .and_then(|w| w.get(i))
                            .map_or("-".into(), |w| format!("{w:.3}")),
                    ]
                })
                .collect();
            body.push_str(&table(
                &[
                    "class",
                    "train records",
                    "dev support",
                    "precision",
                    "recall",
                    "F1",
                    "class weight",
                ],
                &rows,
                true,
            ));
        }
        _ => body.push_str("<p class=\"missing\">No per-class scores (report.json).</p>\n"),
    }

    // Confusion matrix.
    body.push_str("<h2>Confusion matrix</h2>\n");
    let matrix: Option<Vec<Vec<u64>>> = confusion.as_ref().and_then(|c| {
        c["matrix"]
            .as_array()?
            .iter()
            .map(|row| row.as_array()?.iter().map(Value::as_u64).collect())
            .collect()
    });
    let names = strings(confusion.as_ref().and_then(|c| c.get("labels"))).or(labels.clone());
    match (names, matrix) {
        (Some(names), Some(m))
            if m.len() == names.len() && m.iter().all(|r| r.len() == names.len()) =>
        {
            body.push_str(&figure("confusion", charts::confusion(&names, &m), &[]));
            let mut head = vec!["truth \\ predicted".to_string()];
            head.extend(names.iter().cloned());
            let head_refs: Vec<&str> = head.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = names
                .iter()
                .zip(&m)
                .map(|(n, r)| {
                    std::iter::once(n.clone())
                        .chain(r.iter().map(u64::to_string))
                        .collect()
                })
                .collect();
            body.push_str("<details><summary>Counts</summary>\n");
            body.push_str(&table(&head_refs, &rows, true));
            body.push_str("</details>\n");
        }
        _ => body.push_str("<p class=\"missing\">No confusion matrix (confusion.json).</p>\n"),
    }

    // GHM.
    let ghm: Vec<(String, Vec<(f64, f64)>)> = log
        .epochs
        .iter()
        .filter_map(|e| {
            let h = numbers(e.get("ghm_ema"))?;
            let bins = h.len() as f64;
            Some((
                format!("epoch {}", e["epoch"]),
                h.iter()
                    .enumerate()
                    .map(|(i, &v)| ((i as f64 + 0.5) / bins, v))
                    .collect(),
            ))
        })
        .collect();
    if !ghm.is_empty() {
        body.push_str("<h2>GHM: gradient norms</h2>\n<p>The loss's moving histogram of per-sample gradient norms |p − y| at each epoch's end: GHM divides each sample's weight by the density of its bin, so crowded bins (easy samples near 0, outliers near 1) count less.</p>\n");
        let names: Vec<String> = ghm.iter().map(|g| g.0.clone()).collect();
        body.push_str(&figure(
            "ghm",
            charts::lines(
                "GHM moving histogram of gradient norms",
                "gradient norm bin",
                "samples (moving average)",
                &ghm,
                None,
                &[],
            ),
            &names,
        ));
    }

    body.push_str(&missing_section(&problems));
    page(&format!("emrclass run: {}", dir.display()), &body)
}

fn experiment_page(dir: &Path) -> String {
    let title = format!("emrclass experiment: {}", dir.display());
    let mut body = String::new();
    let text = std::fs::read_to_string(dir.join("results.csv")).unwrap_or_default();
    let mut problems = Vec::new();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
    let column = |name: &str| header.iter().position(|h| *h == name);
    let (Some(model), Some(loss), Some(macro_f1)) =
        (column("model"), column("loss"), column("macro_f1"))
    else {
        let missing =
            "<p class=\"missing\">results.csv has no model, loss and macro_f1 columns.</p>\n";
        return page(&title, missing);
    };
    let seed = column("seed");
    let mut rows: Vec<Vec<String>> = Vec::new();
    for (i, line) in lines.enumerate() {
        let cells: Vec<String> = line.split(',').map(str::to_string).collect();
        if cells.len() != header.len() {
            problems.push(format!(
                "results.csv line {} has {} fields, {} expected",
                i + 2,
                cells.len(),
                header.len()
            ));
            continue;
        }
        rows.push(cells);
    }
    if let Ok(md) = std::fs::read_to_string(dir.join("results.md")) {
        if let Some(first) = md.lines().next() {
            let _ = writeln!(body, "<p>{}</p>", esc(first));
        }
    }
    let distinct = |c: usize| -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for r in &rows {
            if !v.contains(&r[c]) {
                v.push(r[c].clone());
            }
        }
        v
    };
    let (heads, losses) = (distinct(model), distinct(loss));
    let seeds = seed.map_or(1, |c| distinct(c).len());
    let values: Vec<Vec<Option<(f64, f64)>>> = heads
        .iter()
        .map(|h| {
            losses
                .iter()
                .map(|l| {
                    let v: Vec<f64> = rows
                        .iter()
                        .filter(|r| &r[model] == h && &r[loss] == l)
                        .filter_map(|r| r[macro_f1].parse().ok())
                        .collect();
                    (!v.is_empty()).then(|| crate::train::metrics::mean_std(&v))
                })
                .collect()
        })
        .collect();
    let chart_title = if seeds > 1 {
        format!("Best dev macro-F1: mean, ± one standard deviation over {seeds} seeds")
    } else {
        "Best dev macro-F1".to_string()
    };
    body.push_str("<h2>Macro-F1 by head and loss</h2>\n");
    body.push_str(&figure(
        "grid",
        charts::grouped_bars(&chart_title, "macro-F1", &heads, &losses, &values),
        &losses,
    ));
    let table_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let cell = format!("{}-{}", r[model], r[loss]);
            let folder = match seed {
                Some(c) => {
                    crate::train::run_folder::cell_folder(&cell, r[c].parse().unwrap_or(0), seeds)
                }
                None => cell,
            };
            let mut row = r.clone();
            row.push(format!("{folder}/report.html"));
            row
        })
        .collect();
    let mut head = header.clone();
    head.push("run report");
    body.push_str("<h2>Runs</h2>\n");
    body.push_str(&table(&head, &table_rows, true));
    body.push_str(&missing_section(&problems));
    page(&title, &body)
}

/// A run's name in a comparison: its folder's name, or parent/name when two runs share it
/// (`experiment` names its runs the same in every experiment folder).
fn series_name(dir: &Path, all: &[PathBuf]) -> String {
    let last = |d: &Path, n: usize| -> String {
        let parts: Vec<String> = d
            .components()
            .rev()
            .take(n)
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        parts.into_iter().rev().collect::<Vec<_>>().join("/")
    };
    let own = last(dir, 1);
    if all.iter().filter(|d| last(d, 1) == own).count() > 1 {
        last(dir, 2)
    } else {
        own
    }
}

/// `emrclass report --compare RUN... --out FILE.html`: the runs' learning curves overlaid —
/// training loss per logged step, dev macro-F1 at each evaluation — each run named by its
/// folder, and beside the page each chart as an SVG (`FILE-loss.svg`, `FILE-dev.svg`) for a
/// README. A run without step lines is named on the page, not an error; a path that is not a
/// run folder is.
pub fn compare(runs: &[PathBuf], out: &Path) -> Result<Vec<PathBuf>> {
    let mut problems = Vec::new();
    let mut losses = Vec::new();
    let mut devs = Vec::new();
    for dir in runs {
        if !dir.join("log.jsonl").is_file() && !dir.join("run.json").is_file() {
            return Err(Error::Invalid(format!(
                "{}: not a run folder (no log.jsonl or run.json)",
                dir.display()
            )));
        }
        let name = series_name(dir, runs);
        let mut theirs = Vec::new();
        let log = read_log(dir, &mut theirs);
        problems.extend(theirs.into_iter().map(|p| format!("{name}: {p}")));
        // Runs without step lines (few steps per epoch): their epoch losses.
        let curve = if log.steps.is_empty() {
            log.epoch_losses.clone()
        } else {
            log.steps.clone()
        };
        losses.push((name.clone(), curve));
        devs.push((name, log.dev.iter().map(|d| (d.0, d.2)).collect()));
    }
    let names: Vec<String> = runs
        .iter()
        .zip(&losses)
        .map(|(_, (n, _))| n.clone())
        .collect();
    let loss = charts::lines(
        "Training loss: mean of each --log-every window (of each epoch where a run logged no steps)",
        "step",
        "loss",
        &losses,
        None,
        &[],
    );
    let dev = charts::lines(
        "Dev macro-F1 at each evaluation",
        "step",
        "macro-F1",
        &devs,
        Some((0.0, 1.05)),
        &[],
    );
    let mut written = Vec::new();
    let stem = out.with_extension("");
    for (suffix, chart) in [("loss", &loss), ("dev", &dev)] {
        if let Ok(c) = chart {
            let path = PathBuf::from(format!("{}-{suffix}.svg", stem.display()));
            write_atomically(&path, c.svg.as_bytes())?;
            written.push(path);
        }
    }
    let mut body = String::new();
    if !problems.is_empty() {
        body.push_str("<ul class=\"missing\">\n");
        for p in &problems {
            body.push_str(&format!("<li>{}</li>\n", esc(p)));
        }
        body.push_str("</ul>\n");
    }
    body.push_str(&figure("loss", loss, &names));
    body.push_str(&figure("dev", dev, &names));
    write_atomically(out, page("Runs compared", &body).as_bytes())?;
    written.insert(0, out.to_path_buf());
    Ok(written)
}
