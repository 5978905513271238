//! The pieces every report page is made of: escaping, reading a folder's JSON files, figures
//! whose data attributes say how to read values back from their pixels, tables, the page.

use std::fmt::Write as _;
use std::path::Path;

use serde_json::Value;

use super::charts::{hex, Chart, PALETTE};

pub fn esc(s: &str) -> String {
    html_escape::encode_text(s).into_owned()
}

/// A JSON file of the folder, or why not (missing, unreadable).
pub fn json_file(
    dir: &Path,
    name: &str,
    problems: &mut Vec<String>,
    missing: &str,
) -> Option<Value> {
    let path = dir.join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) => match serde_json::from_str(&text) {
            Ok(v) => Some(v),
            Err(e) => {
                problems.push(format!("{name} is not readable JSON ({e}): {missing}"));
                None
            }
        },
        Err(_) => {
            problems.push(format!("{name} is missing: {missing}"));
            None
        }
    }
}

pub fn f64_of(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// A chart inside a figure whose data attributes say how to read values back from its pixels.
pub fn figure(id: &str, chart: std::result::Result<Chart, String>, series: &[String]) -> String {
    match chart {
        Ok(c) => {
            let f = c.frame;
            let colors: Vec<String> = series
                .iter()
                .enumerate()
                .map(|(i, name)| format!("{}={}", name, hex(&PALETTE[i % PALETTE.len()])))
                .collect();
            format!(
                "<figure id=\"{id}\" data-pixels=\"{} {} {} {}\" data-range=\"{} {} {} {}\" data-log-x=\"{}\" data-series=\"{}\">\n{}</figure>\n",
                f.pixels_x.0,
                f.pixels_x.1,
                f.pixels_y.0,
                f.pixels_y.1,
                f.range_x.0,
                f.range_x.1,
                f.range_y.0,
                f.range_y.1,
                f.log_x,
                html_escape::encode_double_quoted_attribute(&colors.join(";")),
                c.svg.trim_start_matches(|c: char| c != '<')
            )
        }
        Err(e) => format!("<p class=\"missing\">{}</p>\n", esc(&e)),
    }
}

const STYLE: &str = "body{font-family:'Noto Sans CJK SC','Source Han Sans SC','WenQuanYi Micro Hei','PingFang SC','Microsoft YaHei',sans-serif;margin:2em auto;max-width:1000px;color:#222}
svg text{font-family:'Noto Sans CJK SC','Source Han Sans SC','WenQuanYi Micro Hei','PingFang SC','Microsoft YaHei',sans-serif}
table{border-collapse:collapse;font-size:13px;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
th{background:#f3f3f3}td.name,th.name,table.text td{text-align:left}.missing{color:#a33}figure{margin:1em 0}
details{margin:1em 0}summary{cursor:pointer;font-weight:bold}";

/// What a folder lacks, as a list under its own heading (nothing when it lacks nothing).
pub fn missing_section(problems: &[String]) -> String {
    let mut s = String::new();
    if !problems.is_empty() {
        s.push_str("<h2>Missing from this folder</h2>\n<ul>\n");
        for p in problems {
            let _ = writeln!(s, "<li class=\"missing\">{}</li>", esc(p));
        }
        s.push_str("</ul>\n");
    }
    s
}

pub fn page(title: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html xmlns=\"http://www.w3.org/1999/xhtml\" lang=\"zh\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<h1>{}</h1>\n{body}</body>\n</html>\n",
        esc(title),
        esc(title)
    )
}

pub fn table(head: &[&str], rows: &[Vec<String>], first_is_name: bool) -> String {
    // One row of cells (`th` or `td`), the first marked as a name where asked.
    let row = |tag: &str, cells: &mut dyn Iterator<Item = &str>| -> String {
        let mut s = String::from("<tr>");
        for (i, cell) in cells.enumerate() {
            let class = if i == 0 && first_is_name {
                " class=\"name\""
            } else {
                ""
            };
            let _ = write!(s, "<{tag}{class}>{}</{tag}>", esc(cell));
        }
        s.push_str("</tr>\n");
        s
    };
    let mut s = String::from("<table>\n");
    s.push_str(&row("th", &mut head.iter().copied()));
    for r in rows {
        s.push_str(&row("td", &mut r.iter().map(String::as_str)));
    }
    s.push_str("</table>\n");
    s
}

/// The lines of `dir/log.jsonl` that are JSON, with their line numbers (from 1); a missing file
/// (`missing`: what the page then lacks) or a cut line is said in `problems`.
pub fn log_lines(dir: &Path, problems: &mut Vec<String>, missing: &str) -> Vec<(usize, Value)> {
    let Ok(text) = std::fs::read_to_string(dir.join("log.jsonl")) else {
        problems.push(format!("log.jsonl is missing: {missing}"));
        return Vec::new();
    };
    let mut lines = Vec::new();
    for (i, line) in text.lines().enumerate() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => lines.push((i + 1, v)),
            Err(_) => problems.push(format!(
                "log.jsonl line {} is not JSON (cut by a crash?): skipped",
                i + 1
            )),
        }
    }
    lines
}
