//! Issue 18: the HTML report. A small simulator run writes report.html; the test parses it as
//! XML, reads the plotted values back out of the SVG (through the plot area and ranges each
//! figure declares) and matches them to log.jsonl, counts a heat-map cell per class pair and a
//! dot per class, finds every class name, and checks that a damaged folder still gives a
//! report that says what is missing. An experiment folder gets its grid chart and table.

mod common;

use std::path::{Path, PathBuf};

use emrclass::jobs::train::run;
use emrclass::model::heads::HeadKind;
use emrclass::model::loss::LossKind;
use emrclass::options::TrainOptions;
use emrclass::Schedule;
use serde_json::Value;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-report-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn small(out: PathBuf) -> TrainOptions {
    let mut o = TrainOptions {
        synthetic_scale: 0.05,
        out,
        quiet: true,
        log_every: 2,
        eval_every: 5,
        embedding_dim: 16,
        filters: 8,
        rnn_hidden: 8,
        max_len: 32,
        ..TrainOptions::default()
    };
    o.settings.epochs = 2;
    o.settings.batch_size = 16;
    o
}

/// A figure's declared frame: pixels (x0, x1, y0, y1), ranges (x0, x1, y0, y1), log x.
struct Frame {
    px: [f64; 4],
    range: [f64; 4],
    log_x: bool,
}

impl Frame {
    fn of(fig: roxmltree::Node) -> Frame {
        let four = |name: &str| -> [f64; 4] {
            let v: Vec<f64> = fig
                .attribute(name)
                .unwrap()
                .split(' ')
                .map(|x| x.parse().unwrap())
                .collect();
            [v[0], v[1], v[2], v[3]]
        };
        Frame {
            px: four("data-pixels"),
            range: four("data-range"),
            log_x: fig.attribute("data-log-x") == Some("true"),
        }
    }

    fn value(&self, x: f64, y: f64) -> (f64, f64) {
        let [x0, x1, y0, y1] = self.px;
        let [a0, a1, b0, b1] = self.range;
        let fx = (x - x0) / (x1 - x0 - 1.0);
        let vx = if self.log_x {
            (a0.log10() + fx * (a1.log10() - a0.log10())).powi(10)
        } else {
            a0 + fx * (a1 - a0)
        };
        let fy = (y1 - 1.0 - y) / (y1 - y0 - 1.0);
        (vx, b0 + fy * (b1 - b0))
    }

    /// How far one pixel moves a value on each axis.
    fn pixel(&self) -> (f64, f64) {
        let [x0, x1, y0, y1] = self.px;
        let [a0, a1, b0, b1] = self.range;
        ((a1 - a0).abs() / (x1 - x0), (b1 - b0).abs() / (y1 - y0))
    }
}

fn figure<'a>(doc: &'a roxmltree::Document, id: &str) -> roxmltree::Node<'a, 'a> {
    doc.descendants()
        .find(|n| n.has_tag_name("figure") && n.attribute("id") == Some(id))
        .unwrap_or_else(|| panic!("no figure {id}"))
}

/// The points of the series `name` in a figure, read back as values.
fn series(doc: &roxmltree::Document, id: &str, name: &str) -> Vec<(f64, f64)> {
    let fig = figure(doc, id);
    let frame = Frame::of(fig);
    let color = fig
        .attribute("data-series")
        .unwrap()
        .split(';')
        .find_map(|s| s.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{id}: no series {name}"))
        .to_string();
    let line = fig
        .descendants()
        .find(|n| {
            n.has_tag_name("polyline")
                && n.attribute("stroke") == Some(color.as_str())
                && n.attribute("stroke-width") == Some("2")
        })
        .unwrap_or_else(|| panic!("{id}: no line of colour {color}"));
    line.attribute("points")
        .unwrap()
        .split_whitespace()
        .map(|p| {
            let (x, y) = p.split_once(',').unwrap();
            frame.value(x.parse().unwrap(), y.parse().unwrap())
        })
        .collect()
}

fn assert_close(id: &str, got: &[(f64, f64)], want: &[(f64, f64)], frame: &Frame) {
    assert_eq!(
        got.len(),
        want.len(),
        "{id}: {} points plotted, {} logged",
        got.len(),
        want.len()
    );
    let (dx, dy) = frame.pixel();
    for (g, w) in got.iter().zip(want) {
        assert!(
            (g.0 - w.0).abs() <= 1.5 * dx && (g.1 - w.1).abs() <= 1.5 * dy,
            "{id}: plotted {g:?}, logged {w:?} (one pixel: {dx:.3e} x {dy:.3e})"
        );
    }
}

fn log_lines(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn parse(html: &str) -> roxmltree::Document<'_> {
    let opts = roxmltree::ParsingOptions {
        allow_dtd: true,
        ..Default::default()
    };
    roxmltree::Document::parse_with_options(html, opts).expect("report.html is well-formed XML")
}

#[test]
fn a_run_report_plots_what_the_logs_hold() {
    let dev = common::test_device(Schedule::Forward);
    let out = scratch("run");
    // GHM-CS, so that the GHM histogram is drawn too.
    let o = TrainOptions {
        loss: LossKind::GhmCs,
        ..small(out.clone())
    };
    run(&dev, &o).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = parse(&html);
    let lines = log_lines(&out);

    // Loss per logged step: the mean of each logging window (not the one batch of the step).
    let steps: Vec<(f64, f64)> = lines
        .iter()
        .filter(|v| v.get("loss").is_some() && v.get("step").is_some())
        .map(|v| {
            (
                v["step"].as_f64().unwrap(),
                v["loss_mean"].as_f64().unwrap(),
            )
        })
        .collect();
    assert!(steps.len() >= 5, "{steps:?}");
    // ... and the epochs' mean losses at their last steps.
    let epoch_losses: Vec<(f64, f64)> = lines
        .iter()
        .filter(|v| v.get("end_step").is_some())
        .map(|v| (v["end_step"].as_f64().unwrap(), v["loss"].as_f64().unwrap()))
        .collect();
    assert_close(
        "loss",
        &series(&doc, "loss", "epoch loss"),
        &epoch_losses,
        &Frame::of(figure(&doc, "loss")),
    );
    let frame = Frame::of(figure(&doc, "loss"));
    assert_close(
        "loss",
        &series(&doc, "loss", "training loss"),
        &steps,
        &frame,
    );

    // Dev macro-F1 per --eval-every point and per epoch, in step order.
    let mut dev_points: Vec<(f64, f64)> = lines
        .iter()
        .filter_map(|v| {
            let step = v.get("step").or_else(|| v.get("end_step"))?.as_f64()?;
            Some((step, v.get("dev_macro_f1")?.as_f64()?))
        })
        .collect();
    dev_points.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert_eq!(
        lines.iter().filter(|v| v.get("end_step").is_some()).count(),
        2
    );
    assert!(dev_points.len() > 2, "eval-every points are there too");
    let frame = Frame::of(figure(&doc, "dev"));
    assert_close(
        "dev",
        &series(&doc, "dev", "dev macro-F1"),
        &dev_points,
        &frame,
    );
    assert!(html.contains("best epoch"), "the best epoch is marked");

    // One heat-map cell per class pair (plus the background), one dot per class.
    let run_json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("run.json")).unwrap()).unwrap();
    let labels: Vec<String> = run_json["labels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let k = labels.len();
    assert!(k >= 10, "{k} classes");
    let rects = figure(&doc, "confusion")
        .descendants()
        .filter(|n| n.has_tag_name("rect"))
        .count();
    assert_eq!(rects, k * k + 1, "heat-map cells for {k} classes");
    let dots = figure(&doc, "classes")
        .descendants()
        .filter(|n| n.has_tag_name("circle"))
        .count();
    assert_eq!(dots, k);
    // Every class name, in the heat map's axes and the tables.
    let svg_text: String = figure(&doc, "confusion")
        .descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text())
        .collect();
    for name in &labels {
        assert!(
            svg_text.contains(name.as_str()),
            "{name} not on the heat map"
        );
        assert!(
            html.contains(&format!("<td class=\"name\">{name}</td>")),
            "{name} not in a table"
        );
    }
    // The GHM-CS histogram is drawn, one line per epoch.
    for e in ["epoch 1", "epoch 2"] {
        assert!(!series(&doc, "ghm", e).is_empty());
    }
    assert!(
        !html.contains("Missing from this folder"),
        "a whole folder lacks nothing"
    );

    // Damaged: log.jsonl cut mid-line, confusion.json gone: a report that says so.
    let log = std::fs::read_to_string(out.join("log.jsonl")).unwrap();
    let cut = log.len() - log.lines().last().unwrap().len() / 2;
    std::fs::write(out.join("log.jsonl"), &log[..cut]).unwrap();
    std::fs::remove_file(out.join("confusion.json")).unwrap();
    std::fs::remove_file(out.join("report.html")).unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .args(["report", "--run"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = parse(&html);
    let n = log.lines().count();
    assert!(
        html.contains(&format!("log.jsonl line {n} is not JSON")),
        "the cut line is named"
    );
    assert!(html.contains("confusion.json is missing"));
    assert!(!series(&doc, "loss", "training loss").is_empty());
}

#[test]
fn an_experiment_report_has_the_grid() {
    use emrclass::jobs::experiment::{run_grid, ExperimentOptions};
    let dev = common::test_device(Schedule::Forward);
    let out = scratch("grid");
    let mut base = small(out.clone());
    base.settings.epochs = 1;
    base.synthetic_scale = 0.03;
    let o = ExperimentOptions {
        heads: vec![HeadKind::TextCnn, HeadKind::BiGru],
        losses: vec![LossKind::CrossEntropy],
        seeds: Vec::new(),
        lr: None,
        out: out.clone(),
        base,
    };
    let outcomes = run_grid(&dev, &o, "test grid").unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = parse(&html);
    let fig = figure(&doc, "grid");
    let frame = Frame::of(fig);
    // One bar per run (legend swatches are 10 px wide; bars are wider), at the run's macro-F1.
    let bars: Vec<f64> = fig
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("width").is_some_and(|w| w != "10"))
        .filter(|n| n.attribute("fill") == Some("#1F77B4"))
        .map(|n| {
            let y: f64 = n.attribute("y").unwrap().parse().unwrap();
            frame.value(0.0, y).1
        })
        .collect();
    assert_eq!(bars.len(), 2, "{bars:?}");
    for (bar, outcome) in bars.iter().zip(&outcomes) {
        assert!(
            (bar - outcome.macro_f1).abs() < 2.0 * frame.pixel().1,
            "{bar} vs {}",
            outcome.macro_f1
        );
    }
    for cell in ["textcnn-ce/report.html", "bigru-ce/report.html"] {
        assert!(html.contains(cell), "{cell}");
        assert!(out.join(cell).exists(), "{cell}");
    }
}

#[test]
fn seeds_give_mean_and_spread_and_a_winner_only_outside_it() {
    use emrclass::jobs::experiment::{run_grid, winner, CellScore, ExperimentOptions};
    use emrclass::train::metrics::mean_std;
    let c = |mean, std| CellScore { mean, std, runs: 3 };
    let (ce, wce, focal) = (
        LossKind::CrossEntropy,
        LossKind::WeightedCrossEntropy,
        LossKind::Focal,
    );
    assert_eq!(
        winner(&[(ce, c(0.80, 0.01)), (wce, c(0.75, 0.02))]),
        Some(ce)
    );
    assert_eq!(winner(&[(ce, c(0.80, 0.06)), (wce, c(0.75, 0.02))]), None);
    assert_eq!(
        winner(&[
            (ce, c(0.80, 0.01)),
            (wce, c(0.70, 0.01)),
            (focal, c(0.795, 0.0))
        ]),
        None,
        "ahead of one, not of all"
    );
    let (m, s) = mean_std(&[1.0, 2.0, 3.0]);
    assert!((m - 2.0).abs() < 1e-12 && (s - 1.0).abs() < 1e-12);

    let dev = common::test_device(Schedule::Forward);
    let out = scratch("seeds");
    let mut base = small(out.clone());
    base.settings.epochs = 1;
    base.synthetic_scale = 0.03;
    let o = ExperimentOptions {
        heads: vec![HeadKind::TextCnn],
        losses: vec![ce, wce],
        seeds: vec![4, 5],
        lr: None,
        out: out.clone(),
        base,
    };
    let outcomes = run_grid(&dev, &o, "seeded grid").unwrap();
    assert_eq!(outcomes.len(), 4);
    for folder in [
        "textcnn-ce-seed4",
        "textcnn-ce-seed5",
        "textcnn-wce-seed4",
        "textcnn-wce-seed5",
    ] {
        assert!(out.join(folder).join("report.html").exists(), "{folder}");
    }
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    assert!(csv.starts_with("model,loss,seed,"), "{csv}");
    assert_eq!(csv.lines().count(), 5);
    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    let f1 = |l: LossKind| -> Vec<f64> {
        outcomes
            .iter()
            .filter(|r| r.loss == l)
            .map(|r| r.macro_f1)
            .collect()
    };
    let (mean, std) = mean_std(&f1(ce));
    assert!(md.contains(&format!("{mean:.4} ± {std:.4}")), "{md}");
    // The page: a bar at each cell's mean, an error bar where the seeds differ.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let doc = parse(&html);
    let fig = figure(&doc, "grid");
    let frame = Frame::of(fig);
    let bar_tops: Vec<f64> = fig
        .descendants()
        .filter(|n| n.has_tag_name("rect") && n.attribute("width").is_some_and(|w| w != "10"))
        .filter(|n| matches!(n.attribute("fill"), Some("#1F77B4" | "#FF7F0E")))
        .map(|n| {
            frame
                .value(0.0, n.attribute("y").unwrap().parse().unwrap())
                .1
        })
        .collect();
    assert_eq!(bar_tops.len(), 2, "{bar_tops:?}");
    for (top, loss) in bar_tops.iter().zip([ce, wce]) {
        let (mean, _) = mean_std(&f1(loss));
        assert!(
            (top - mean).abs() < 2.0 * frame.pixel().1,
            "{top} vs {mean}"
        );
    }
    assert!(html.contains("textcnn-wce-seed5/report.html"));
}

/// `report --compare`: two runs' curves overlaid, each read back from the page and matched to
/// its own log.jsonl; the charts also as SVG files beside the page; a folder that is not a run
/// is refused by name.
#[test]
fn compare_overlays_the_runs_curves() {
    let dev = common::test_device(Schedule::Forward);
    let root = scratch("compare");
    let (a, b) = (root.join("a/run"), root.join("b/run"));
    run(&dev, &small(a.clone())).unwrap();
    let mut other = small(b.clone());
    other.settings.seed = 2;
    run(&dev, &other).unwrap();
    let out = root.join("compared.html");
    let written = emrclass::report::compare(&[a.clone(), b.clone()], &out).unwrap();
    assert_eq!(
        written,
        vec![
            out.clone(),
            root.join("compared-loss.svg"),
            root.join("compared-dev.svg")
        ]
    );
    let html = std::fs::read_to_string(&out).unwrap();
    let doc = parse(&html);
    for (dir, name) in [(&a, "a/run"), (&b, "b/run")] {
        let want: Vec<(f64, f64)> = log_lines(dir)
            .iter()
            .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get("loss_mean")?.as_f64()?)))
            .collect();
        let got = series(&doc, "loss", name);
        assert_close("loss", &got, &want, &Frame::of(figure(&doc, "loss")));
    }
    for f in &written[1..] {
        assert!(std::fs::read_to_string(f).unwrap().starts_with("<svg"));
    }
    let err = emrclass::report::compare(&[a, root.clone()], &out).unwrap_err();
    assert!(err.to_string().contains("not a run folder"), "{err}");
}
