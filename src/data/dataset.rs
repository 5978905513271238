//! Labelled texts from files: JSON lines (`{"text": .., "label": ..}`, field names selectable),
//! CSV / TSV with a header (columns selectable; read strictly, see `delimited`), and the CBLUE JSON array
//! (`[{"id", "label", "text"}]`, e.g. CHIP-CTC). HTML entities in texts are decoded. A broken
//! record (malformed, invalid UTF-8, empty text, missing field) is an error naming the file and
//! line, or, with `skip_bad`, skipped and reported. Labels map to indices in sorted order.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use super::delimited;
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Example {
    pub text: String,
    pub label: String,
}

#[derive(Clone, Debug)]
pub struct ReadOptions {
    pub text_field: String,
    pub label_field: String,
    /// Skip broken records (reported in `Loaded::skipped`) instead of failing.
    pub skip_bad: bool,
}

impl Default for ReadOptions {
    fn default() -> Self {
        ReadOptions {
            text_field: "text".into(),
            label_field: "label".into(),
            skip_bad: false,
        }
    }
}

pub struct Loaded {
    pub examples: Vec<Example>,
    /// "file:line: why" for every skipped record.
    pub skipped: Vec<String>,
}

fn bad(path: &Path, line: usize, why: impl std::fmt::Display) -> String {
    format!("{}:{line}: {why}", path.display())
}

/// A JSON value as label text: strings as they are, numbers and booleans printed.
fn label_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads `path` by its extension: .jsonl, .csv, .tsv, or .json (CBLUE array).
pub fn read(path: &Path, opts: &ReadOptions) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_ascii_lowercase();
    let mut records: Vec<std::result::Result<(usize, String, String), String>> = Vec::new();
    // What to say of bytes that are not UTF-8: worked out once (it reads the whole file).
    let advice = std::cell::OnceCell::new();
    let not_utf8 = || {
        format!(
            "invalid UTF-8{}",
            advice.get_or_init(|| delimited::encoding_advice(&bytes, path))
        )
    };
    match ext.as_str() {
        "jsonl" => {
            for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
                let line = i + 1;
                let Ok(text) = std::str::from_utf8(raw) else {
                    records.push(Err(bad(path, line, not_utf8())));
                    continue;
                };
                if text.trim().is_empty() {
                    continue;
                }
                records.push(match serde_json::from_str::<serde_json::Value>(text) {
                    Err(e) => Err(bad(path, line, format!("not JSON: {e}"))),
                    Ok(v) => match (
                        v.get(&opts.text_field).and_then(|t| t.as_str()),
                        v.get(&opts.label_field).and_then(label_text),
                    ) {
                        (Some(t), Some(l)) => Ok((line, t.to_string(), l)),
                        _ => Err(bad(
                            path,
                            line,
                            format!(
                                "needs a \"{}\" string and a \"{}\" label",
                                opts.text_field, opts.label_field
                            ),
                        )),
                    },
                });
            }
        }
        "csv" | "tsv" => {
            let delimiter = if ext == "tsv" { b'\t' } else { b',' };
            let mut rows = delimited::records(&bytes, delimiter).into_iter();
            let utf8 = |line: usize, f: Vec<u8>| {
                String::from_utf8(f).map_err(|_| bad(path, line, not_utf8()))
            };
            let headers: Vec<String> = match rows.next() {
                None => Vec::new(),
                Some(Err(b)) => {
                    return Err(Error::Invalid(bad(
                        path,
                        b.line,
                        format!("unreadable header: {}", b.why),
                    )))
                }
                Some(Ok(r)) => r
                    .fields
                    .into_iter()
                    .map(|f| utf8(1, f).map(|h| h.trim().to_string()))
                    .collect::<std::result::Result<_, _>>()
                    .map_err(Error::Invalid)?,
            };
            let col = |name: &str| {
                headers.iter().position(|h| h == name).ok_or_else(|| {
                    Error::Invalid(bad(
                        path,
                        1,
                        format!(
                            "no column \"{name}\" in the header ({})",
                            headers.join(", ")
                        ),
                    ))
                })
            };
            let (tc, lc) = (col(&opts.text_field)?, col(&opts.label_field)?);
            for row in rows {
                records.push(match row {
                    Err(b) => Err(bad(path, b.line, b.why)),
                    Ok(r) if r.fields.len() != headers.len() => Err(bad(
                        path,
                        r.line,
                        format!(
                            "{} fields where the header has {} (a delimiter in an unquoted text? quote the field)",
                            r.fields.len(),
                            headers.len()
                        ),
                    )),
                    Ok(mut r) => {
                        let label = std::mem::take(&mut r.fields[lc]);
                        let text = std::mem::take(&mut r.fields[tc]);
                        utf8(r.line, text).and_then(|t| {
                            utf8(r.line, label).map(|l| (r.line, t, l.trim().to_string()))
                        })
                    }
                });
            }
        }
        "json" => {
            let text = std::str::from_utf8(&bytes).map_err(|e| {
                let line = bytes[..e.valid_up_to()]
                    .iter()
                    .filter(|&&b| b == b'\n')
                    .count()
                    + 1;
                Error::Invalid(bad(path, line, not_utf8()))
            })?;
            let items: Vec<serde_json::Value> = serde_json::from_str(text).map_err(|e| {
                Error::Invalid(bad(
                    path,
                    e.line(),
                    format!("not a JSON array of records: {e}"),
                ))
            })?;
            for (i, v) in items.iter().enumerate() {
                let line = i + 1; // the record's position in the array
                records.push(
                    match (
                        v.get(&opts.text_field).and_then(|t| t.as_str()),
                        v.get(&opts.label_field).and_then(label_text),
                    ) {
                        (Some(t), Some(l)) => Ok((line, t.to_string(), l)),
                        _ => Err(format!(
                            "{}: record {line}: needs a \"{}\" string and a \"{}\" label",
                            path.display(),
                            opts.text_field,
                            opts.label_field
                        )),
                    },
                );
            }
        }
        other => {
            return Err(Error::Invalid(format!(
                "{}: unknown format `.{other}` (use .jsonl, .csv, .tsv or .json for a CBLUE array)",
                path.display()
            )))
        }
    }
    let mut loaded = Loaded {
        examples: Vec::new(),
        skipped: Vec::new(),
    };
    for r in records {
        let r = r.and_then(|(line, text, label)| {
            let text = html_escape::decode_html_entities(&text).trim().to_string();
            if text.is_empty() {
                Err(bad(path, line, "empty text"))
            } else if label.is_empty() {
                Err(bad(path, line, "empty label"))
            } else {
                Ok(Example { text, label })
            }
        });
        match r {
            Ok(e) => loaded.examples.push(e),
            Err(why) if opts.skip_bad => loaded.skipped.push(why),
            // A file in another encoding: skipping its records would skip them all.
            Err(why) if delimited::looks_gbk(&bytes) => return Err(Error::Invalid(why)),
            Err(why) => {
                return Err(Error::Invalid(format!(
                    "{why} (pass --skip-bad to skip such records)"
                )))
            }
        }
    }
    if loaded.examples.is_empty() {
        return Err(Error::Invalid(match loaded.skipped.first() {
            Some(first) => format!(
                "{}: no usable records: all {} were broken and skipped (first: {first})",
                path.display(),
                loaded.skipped.len()
            ),
            None => format!("{}: no records", path.display()),
        }));
    }
    Ok(loaded)
}

/// Tells (on stderr) how many records of `path` were skipped, and the first few.
pub fn report_skipped(path: &Path, skipped: &[String]) {
    const SHOWN: usize = 5;
    if skipped.is_empty() {
        return;
    }
    crate::note!(
        "{}: skipped {} broken record{}:",
        path.display(),
        skipped.len(),
        if skipped.len() == 1 { "" } else { "s" }
    );
    for why in skipped.iter().take(SHOWN) {
        crate::note!("  {why}");
    }
    if skipped.len() > SHOWN {
        crate::note!("  ... and {} more", skipped.len() - SHOWN);
    }
}

/// Label names in sorted order and their indices; saved with a trained model.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LabelMap {
    pub names: Vec<String>,
}

impl LabelMap {
    pub fn from_examples(examples: &[Example]) -> LabelMap {
        let mut names: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
        names.sort();
        names.dedup();
        LabelMap { names }
    }

    /// Each example's class index, or an error listing the labels the map does not know.
    pub fn indices(&self, examples: &[Example], source: &Path) -> Result<Vec<usize>> {
        let index: HashMap<&str, usize> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        let mut unknown: Vec<&str> = examples
            .iter()
            .map(|e| e.label.as_str())
            .filter(|l| !index.contains_key(l))
            .collect();
        if !unknown.is_empty() {
            unknown.sort();
            unknown.dedup();
            return Err(Error::Invalid(format!(
                "{}: labels not in the training set: {}",
                source.display(),
                unknown.join(", ")
            )));
        }
        Ok(examples.iter().map(|e| index[e.label.as_str()]).collect())
    }

    /// Examples per class.
    pub fn counts(&self, examples: &[Example]) -> Vec<usize> {
        let mut c = vec![0; self.names.len()];
        let index: HashMap<&str, usize> = self
            .names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.as_str(), i))
            .collect();
        for e in examples {
            if let Some(&i) = index.get(e.label.as_str()) {
                c[i] += 1;
            }
        }
        c
    }
}

/// A seeded split that keeps each class's share: round(fraction x count) of each class goes to
/// the dev side (at least one when the class has two or more examples, none when it has one).
pub fn stratified_split(
    examples: Vec<Example>,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<Example>, Vec<Example>)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(Error::Invalid(format!(
            "dev fraction {fraction} is not in [0, 1)"
        )));
    }
    let mut by_class: BTreeMap<String, Vec<Example>> = BTreeMap::new();
    for e in examples {
        by_class.entry(e.label.clone()).or_default().push(e);
    }
    let mut rng = Rng::new(seed);
    let (mut train, mut dev) = (Vec::new(), Vec::new());
    for (_, mut items) in by_class {
        rng.shuffle(&mut items);
        let n = items.len();
        let take = if n < 2 || fraction == 0.0 {
            0
        } else {
            ((fraction * n as f64).round() as usize).clamp(1, n - 1)
        };
        dev.extend(items.drain(..take));
        train.extend(items);
    }
    Ok((train, dev))
}
