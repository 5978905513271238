//! Issue 31, items 6-13: what a first day with the tool tripped over, each through the real
//! binary: predict's broken lines, flags with one meaning, resume refusals that say what
//! differs (and extending a run), missing folders and Hub names, other encodings, the help, the
//! progress bar and report.html.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-day-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `emrclass --device simt ARGS` in `cwd`: (exit code, stdout, stderr).
fn emrclass(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .current_dir(cwd)
        .args(["--device", "simt"])
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A small `train` into `out` (`extra` adds flags or replaces these defaults).
fn train(cwd: &Path, out: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec!["train", "--quiet", "--out", out];
    let defaults = [
        ("--synthetic-scale", "0.05"),
        ("--epochs", "1"),
        ("--batch-size", "8"),
        ("--head", "textcnn"),
        ("--embedding-dim", "16"),
        ("--filters", "8"),
        ("--max-len", "32"),
    ];
    for (flag, value) in defaults {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend(extra);
    emrclass(cwd, &args)
}

#[test]
fn predict_skips_broken_lines_and_writes_texts_and_ids_as_given() {
    let dir = scratch("predict");
    let (rc, _, err) = train(&dir, "run", &[]);
    assert_eq!(rc, 0, "{err}");
    let input = dir.join("in.jsonl");
    std::fs::write(
        &input,
        concat!(
            "{\"id\": \"007\", \"text\": \"  胸痛&amp;发热 \"}\n",
            "{\"id\": 2, \"text\": \"   \"}\n",
            "\"患者咳嗽\"\n",
            "not json\n",
        ),
    )
    .unwrap();
    let args = [
        "predict",
        "--run",
        "run",
        "--input",
        "in.jsonl",
        "--output",
        "out.jsonl",
    ];
    let (rc, _, err) = emrclass(&dir, &args);
    assert_ne!(rc, 0);
    assert!(
        err.contains("in.jsonl:2: empty text") && err.contains("--skip-bad"),
        "{err}"
    );
    assert!(!dir.join("out.jsonl").exists());
    let (rc, _, err) = emrclass(&dir, &[&args[..], &["--skip-bad"]].concat());
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("skipped 2 broken records")
            && err.contains("in.jsonl:2: empty text")
            && err.contains("in.jsonl:4: not JSON"),
        "{err}"
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("out.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["id"], "007");
    assert_eq!(lines[0]["text"], "  胸痛&amp;发热 ", "the text as given");
    assert_eq!(lines[1]["text"], "患者咳嗽");
    assert!(lines[1].get("id").is_none());
}

#[test]
fn one_flag_one_meaning() {
    let dir = scratch("flags");
    // `--loss all` belongs to `experiment`.
    let (rc, _, err) = train(&dir, "all", &["--loss", "all"]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("--loss all") && err.contains("experiment"),
        "{err}"
    );
    assert!(!dir.join("all").exists());
    // `plan` takes the card's memory from --memory-budget (its old --budget still works).
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_tiny");
    let plan = |global: &[&str], own: &[&str]| {
        let mut args: Vec<&str> = global.to_vec();
        args.extend(["plan", "--model", config.to_str().unwrap(), "--no-table"]);
        args.extend(["--classes", "5", "--seq", "16"]);
        args.extend(own);
        let (rc, out, err) = emrclass(&dir, &args);
        assert_eq!(rc, 0, "{err}");
        out.lines()
            .find(|l| l.starts_with("run:"))
            .unwrap()
            .to_string()
    };
    assert!(plan(&[], &[]).contains("budget 4.00 GiB"));
    assert!(plan(&["--memory-budget", "2GiB"], &[]).contains("budget 2.00 GiB"));
    assert!(plan(&[], &["--budget", "2GiB"]).contains("budget 2.00 GiB"));
    // --seed's help says what `train` does without it.
    let (_, help, _) = emrclass(&dir, &["train", "--help"]);
    assert!(
        help.contains("`train`, `experiment`, `pretrain`: default 1"),
        "{help}"
    );
}

#[test]
fn a_refused_resume_names_what_differs_and_more_epochs_extend_a_run() {
    let dir = scratch("resume");
    let (rc, _, err) = train(&dir, "run", &[]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = train(&dir, "run", &["--resume", "--lr", "0.01"]);
    assert_ne!(rc, 0);
    assert!(err.contains("lr: 0.003 then, 0.01 now"), "{err}");
    assert!(
        err.len() < 400,
        "one short line, not the settings dumped: {err}"
    );
    let (rc, _, err) = train(&dir, "run", &["--resume", "--epochs", "0"]);
    assert_ne!(rc, 0, "{err}");
    // More epochs: the same run, extended.
    let (rc, out, err) = train(&dir, "run", &["--resume", "--epochs", "2"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("extending run from 1 to 2 epochs"), "{out}");
    let log = std::fs::read_to_string(dir.join("run/log.jsonl")).unwrap();
    assert_eq!(
        log.lines().filter(|l| l.contains("\"end_step\"")).count(),
        2
    );
    let state = emrclass::train::checkpoint::load_state(&dir.join("run/checkpoint")).unwrap();
    assert_eq!(state.progress.finished.len(), 2);
    // Fewer epochs than the run has: refused.
    let (rc, _, err) = train(&dir, "run", &["--resume", "--epochs", "1"]);
    assert_ne!(rc, 0);
    assert!(err.contains("--epochs may only grow"), "{err}");
}

#[test]
fn missing_folders_and_other_encodings_are_named() {
    let dir = scratch("named");
    let (rc, _, err) = train(&dir, "x", &["--encoder", "/no/such/folder"]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("/no/such/folder: no such file or folder"),
        "{err}"
    );
    // A GBK file: the encoding and the way to convert it.
    let mut rows = vec!["text,label".to_string()];
    for i in 0..30 {
        rows.push(format!("患者头痛第{i}天,{}", ["甲", "乙"][i % 2]));
    }
    std::fs::write(dir.join("gbk.csv"), gbk(&(rows.join("\n") + "\n"))).unwrap();
    let (rc, _, err) = train(&dir, "g", &["--train", "gbk.csv"]);
    assert_ne!(rc, 0);
    assert!(
        err.contains("gbk.csv:2: invalid UTF-8")
            && err.contains("GBK")
            && err.contains("iconv -f GB18030 -t UTF-8"),
        "{err}"
    );
    let (rc, _, err) = train(&dir, "g", &["--train", "gbk.csv", "--skip-bad"]);
    assert_ne!(rc, 0);
    assert!(err.contains("all 30 were broken"), "{err}");
    assert!(!dir.join("g").exists());
}

/// `text` in GBK: ASCII as it is, and the few Chinese characters this test writes.
fn gbk(text: &str) -> Vec<u8> {
    let table: &[(char, [u8; 2])] = &[
        ('患', [0xBB, 0xBC]),
        ('者', [0xD5, 0xDF]),
        ('头', [0xCD, 0xB7]),
        ('痛', [0xCD, 0xB4]),
        ('第', [0xB5, 0xDA]),
        ('天', [0xCC, 0xEC]),
        ('甲', [0xBC, 0xD7]),
        ('乙', [0xD2, 0xD2]),
    ];
    let mut out = Vec::new();
    for c in text.chars() {
        match table.iter().find(|(k, _)| *k == c) {
            Some((_, b)) => out.extend(b),
            None => {
                assert!(c.is_ascii(), "{c} is not in the table");
                out.push(c as u8)
            }
        }
    }
    out
}

/// The commands a `--help` lists (but `help`).
fn subcommands(help: &str) -> Vec<String> {
    help.split("Commands:")
        .nth(1)
        .expect("a Commands: list")
        .lines()
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect()
}

/// Every option line of a `--help` and whether a description follows it.
fn undescribed(help: &str) -> Vec<String> {
    let lines: Vec<&str> = help.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        let t = l.trim_start();
        let indent = l.len() - t.len();
        let is_option = (indent == 2 || indent == 6) && (t.starts_with("--") || t.starts_with('<'))
            || indent == 2 && t.starts_with('-') && t.chars().nth(1).is_some_and(|c| c != '-');
        if is_option {
            let next = lines.get(i + 1).map_or("", |n| n.trim());
            if next.is_empty() || next.starts_with('[') {
                out.push(t.to_string());
            }
        }
    }
    out
}

#[test]
fn every_option_is_described_and_globals_show_only_where_they_count() {
    let dir = scratch("help");
    let (_, top, _) = emrclass(&dir, &["--help"]);
    let commands = subcommands(&top);
    assert!(commands.len() >= 12, "{commands:?}");
    let (_, bench, _) = emrclass(&dir, &["bench", "--help"]);
    let benches = subcommands(&bench);
    let mut missing = undescribed(&top);
    for c in &commands {
        let (_, help, _) = emrclass(&dir, &[c, "--help"]);
        missing.extend(undescribed(&help).into_iter().map(|o| format!("{c} {o}")));
    }
    for b in &benches {
        let (_, help, _) = emrclass(&dir, &["bench", b, "--help"]);
        missing.extend(
            undescribed(&help)
                .into_iter()
                .map(|o| format!("bench {b} {o}")),
        );
    }
    assert!(
        missing.is_empty(),
        "options without a description: {missing:?}"
    );
    // The device flags under the commands that open a device, not under those that do not.
    for (c, shows) in [
        ("convert", false),
        ("report", false),
        ("kernels", false),
        ("train", true),
    ] {
        let (_, help, _) = emrclass(&dir, &[c, "--help"]);
        assert_eq!(help.contains("--device"), shows, "{c} --help:\n{help}");
    }
    // `gradcheck --help` names every op it checks.
    let (_, _, err) = emrclass(&dir, &["gradcheck", "no-such-op"]);
    let known = err
        .split("known: ")
        .nth(1)
        .expect("the ops are listed")
        .trim();
    let (_, help, _) = emrclass(&dir, &["gradcheck", "--help"]);
    let flat = help.split_whitespace().collect::<Vec<_>>().join(" ");
    for op in known.split(", ") {
        assert!(flat.contains(op), "gradcheck --help does not name {op}");
    }
    // Console lines name heads and losses as the flags spell them.
    let (rc, out, err) = train(&dir, "names", &["--head", "bigru", "--loss", "ghmcs"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("bigru head, ghm-cs loss"), "{out}");
}

#[test]
fn the_progress_bar_counts_records_and_shows_no_rate_before_it_has_one() {
    let dir = scratch("bar");
    // A terminal for stderr (the bar hides otherwise): util-linux's `script`.
    let command = format!(
        "{} --device simt train --synthetic-scale 0.05 --epochs 1 --batch-size 16 --head textcnn --embedding-dim 16 --filters 8 --max-len 32 --out run",
        env!("CARGO_BIN_EXE_emrclass")
    );
    let o = Command::new("script")
        .current_dir(&dir)
        .args(["-qfec", &command, "/dev/null"])
        .output()
        .expect("`script` (util-linux) runs the progress-bar test in a terminal");
    let text = String::from_utf8_lossy(&o.stdout).replace('\r', "\n");
    assert!(o.status.success(), "{text}");
    let records: usize = text
        .split(" train / ")
        .next()
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("the data line");
    assert_ne!(
        records % 16,
        0,
        "pick a size that does not fill its batches"
    );
    let bars: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" records  loss"))
        .collect();
    assert!(bars.len() > 2, "{text}");
    for b in &bars {
        // "] DONE/TOTAL records": out of the records, never more (not padded batches).
        let count = b
            .split("] ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .unwrap();
        let (done, total) = count.split_once('/').unwrap();
        let (done, total): (usize, usize) = (done.parse().unwrap(), total.parse().unwrap());
        assert_eq!(total, records, "{b}");
        assert!(done <= records, "{b}");
    }
    assert!(bars[0].contains(" - records/s"), "{}", bars[0]);
    assert!(bars.iter().all(|b| !b.contains("samples")), "{bars:?}");
}

#[test]
fn the_report_shows_a_one_epoch_run_and_runs_without_step_lines() {
    let dir = scratch("report");
    // One epoch, fewer steps than --log-every: no step lines at all.
    let (rc, _, err) = train(&dir, "short", &["--log-every", "1000"]);
    assert_eq!(rc, 0, "{err}");
    let html = std::fs::read_to_string(dir.join("short/report.html")).unwrap();
    let doc = roxmltree::Document::parse_with_options(
        &html,
        roxmltree::ParsingOptions {
            allow_dtd: true,
            ..Default::default()
        },
    )
    .unwrap();
    let figure = |id: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name("figure") && n.attribute("id") == Some(id))
            .unwrap_or_else(|| panic!("no figure {id}:\n{html}"))
    };
    // The loss: the epoch's mean, a dot (one point makes no line).
    let loss = figure("loss");
    assert!(loss
        .attribute("data-series")
        .unwrap()
        .contains("epoch loss"));
    assert!(loss.descendants().any(|n| n.has_tag_name("circle")));
    // The dev scores: dots too; accuracy and micro-F1 one series (they are equal).
    let dev = figure("dev");
    let series = dev.attribute("data-series").unwrap();
    assert!(series.contains("dev accuracy (= micro-F1)") && !series.contains("dev micro-F1="));
    assert!(
        dev.descendants()
            .filter(|n| n.has_tag_name("circle"))
            .count()
            >= 2
    );
    // Whole-number steps only on the x axes (the labels below the plot area); CJK fonts named
    // in the SVG itself.
    for fig in [loss, dev] {
        let pixels: Vec<f64> = fig
            .attribute("data-pixels")
            .unwrap()
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        let mut steps = 0;
        for t in fig.descendants().filter(|n| n.has_tag_name("text")) {
            let s = t.text().unwrap_or("").trim();
            let below = t
                .attribute("y")
                .and_then(|y| y.parse::<f64>().ok())
                .unwrap()
                > pixels[3];
            if let (true, Ok(v)) = (below, s.parse::<f64>()) {
                assert_eq!(v.fract(), 0.0, "a fractional step tick {s}");
                steps += 1;
            }
            assert!(t
                .attribute("font-family")
                .is_some_and(|f| f.starts_with("'Noto Sans CJK SC'")));
        }
        assert!(steps >= 1, "no step tick read");
    }
    // Every setting as a readable row.
    assert!(html.contains("Every setting") && html.contains("<td class=\"name\">max len</td>"));
    // `report --compare` of runs without step lines: their epoch losses.
    let (rc, _, err) = train(&dir, "short2", &["--log-every", "1000", "--lr", "0.01"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = emrclass(
        &dir,
        &[
            "report",
            "--compare",
            "short",
            "short2",
            "--out",
            "both.html",
        ],
    );
    assert_eq!(rc, 0, "{err}");
    let svg = std::fs::read_to_string(dir.join("both-loss.svg")).unwrap();
    assert!(
        svg.matches("<circle").count() >= 2,
        "each run's epoch loss is drawn: {svg}"
    );
}
