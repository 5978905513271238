//! Classification metrics as the paper reports them (accuracy, macro-F1, micro-F1) and as
//! scikit-learn computes them: per-class precision, recall, F1 and support; macro, micro and
//! support-weighted averages; the confusion matrix. Averages run over the classes present in
//! the true or the predicted labels (sklearn's default); a class never predicted has precision
//! 0, one never present recall 0 (sklearn's zero_division=0).

use crate::error::{Error, Result};

/// counts[t * k + p]: examples of true class t predicted as p.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Confusion {
    pub classes: usize,
    pub counts: Vec<u64>,
}

impl Confusion {
    pub fn new(classes: usize) -> Self {
        Confusion {
            classes,
            counts: vec![0; classes * classes],
        }
    }

    pub fn from_pairs(classes: usize, truth: &[usize], predicted: &[usize]) -> Result<Self> {
        if truth.len() != predicted.len() {
            return Err(Error::Invalid(format!(
                "{} labels and {} predictions",
                truth.len(),
                predicted.len()
            )));
        }
        let mut c = Confusion::new(classes);
        for (&t, &p) in truth.iter().zip(predicted) {
            c.add(t, p)?;
        }
        Ok(c)
    }

    pub fn add(&mut self, truth: usize, predicted: usize) -> Result<()> {
        if truth >= self.classes || predicted >= self.classes {
            return Err(Error::Invalid(format!(
                "class {truth} or {predicted} outside 0..{}",
                self.classes
            )));
        }
        self.counts[truth * self.classes + predicted] += 1;
        Ok(())
    }

    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The matrix as CSV: a header of predicted class names, one row per true class.
    pub fn to_csv(&self, names: &[String]) -> String {
        let mut s = String::from("true\\predicted");
        for n in names {
            s.push(',');
            s.push_str(&csv_field(n));
        }
        s.push('\n');
        for (t, name) in names.iter().enumerate().take(self.classes) {
            s.push_str(&csv_field(name));
            for p in 0..self.classes {
                s.push_str(&format!(",{}", self.counts[t * self.classes + p]));
            }
            s.push('\n');
        }
        s
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ClassScores {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    pub support: u64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Averages {
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Report {
    /// The confusion matrix the scores come from.
    pub confusion: Confusion,
    pub accuracy: f64,
    pub macro_avg: Averages,
    pub micro_avg: Averages,
    pub weighted_avg: Averages,
    pub per_class: Vec<ClassScores>,
}

fn f1(p: f64, r: f64) -> f64 {
    if p + r > 0.0 {
        2.0 * p * r / (p + r)
    } else {
        0.0
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b > 0 {
        a as f64 / b as f64
    } else {
        0.0
    }
}

pub fn report(c: &Confusion) -> Report {
    let k = c.classes;
    let total = c.total();
    let diag = |i: usize| c.counts[i * k + i];
    let support = |i: usize| (0..k).map(|p| c.counts[i * k + p]).sum::<u64>();
    let predicted = |i: usize| (0..k).map(|t| c.counts[t * k + i]).sum::<u64>();
    let per_class: Vec<ClassScores> = (0..k)
        .map(|i| {
            let (p, r) = (ratio(diag(i), predicted(i)), ratio(diag(i), support(i)));
            ClassScores {
                precision: p,
                recall: r,
                f1: f1(p, r),
                support: support(i),
            }
        })
        .collect();
    let present: Vec<usize> = (0..k)
        .filter(|&i| support(i) > 0 || predicted(i) > 0)
        .collect();
    let mean = |f: &dyn Fn(&ClassScores) -> f64| {
        if present.is_empty() {
            0.0
        } else {
            present.iter().map(|&i| f(&per_class[i])).sum::<f64>() / present.len() as f64
        }
    };
    let weighted = |f: &dyn Fn(&ClassScores) -> f64| {
        per_class
            .iter()
            .map(|s| f(s) * s.support as f64)
            .sum::<f64>()
            / (total.max(1)) as f64
    };
    let correct: u64 = (0..k).map(diag).sum();
    // Single-label: every wrong prediction is one false positive and one false negative, so
    // micro precision = micro recall = micro F1 = accuracy.
    let accuracy = ratio(correct, total);
    Report {
        confusion: c.clone(),
        accuracy,
        macro_avg: Averages {
            precision: mean(&|s| s.precision),
            recall: mean(&|s| s.recall),
            f1: mean(&|s| s.f1),
        },
        micro_avg: Averages {
            precision: accuracy,
            recall: accuracy,
            f1: accuracy,
        },
        weighted_avg: Averages {
            precision: weighted(&|s| s.precision),
            recall: weighted(&|s| s.recall),
            f1: weighted(&|s| s.f1),
        },
        per_class,
    }
}

/// The dev metric that picks the best epoch and drives early stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    MacroF1,
    MicroF1,
    WeightedF1,
    Accuracy,
}

impl Metric {
    pub fn of(self, r: &Report) -> f64 {
        match self {
            Metric::MacroF1 => r.macro_avg.f1,
            Metric::MicroF1 => r.micro_avg.f1,
            Metric::WeightedF1 => r.weighted_avg.f1,
            Metric::Accuracy => r.accuracy,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::MacroF1 => "macro-f1",
            Metric::MicroF1 => "micro-f1",
            Metric::WeightedF1 => "weighted-f1",
            Metric::Accuracy => "accuracy",
        }
    }
}

impl std::str::FromStr for Metric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Metric> {
        [
            Metric::MacroF1,
            Metric::MicroF1,
            Metric::WeightedF1,
            Metric::Accuracy,
        ]
        .into_iter()
        .find(|m| m.name() == s)
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no metric named `{s}`; metrics: macro-f1, micro-f1, weighted-f1, accuracy"
            ))
        })
    }
}

/// Mean and (sample) standard deviation; 0 for one value.
pub fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let mean = v.iter().sum::<f64>() / n;
    if v.len() < 2 {
        return (mean, 0.0);
    }
    let var = v.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

pub fn print_report(r: &Report, names: &[String]) {
    for line in report_table(r, names).lines() {
        crate::say!("{line}");
    }
}

/// Terminal columns a string takes: East Asian wide characters (CJK, Hangul, full-width forms)
/// count two.
pub fn display_width(s: &str) -> usize {
    s.chars()
        .map(|c| match c as u32 {
            0x1100..=0x115F
            | 0x2E80..=0xA4CF
            | 0xAC00..=0xD7A3
            | 0xF900..=0xFAFF
            | 0xFE30..=0xFE4F
            | 0xFF00..=0xFF60
            | 0xFFE0..=0xFFE6
            | 0x20000..=0x3FFFD => 2,
            _ => 1,
        })
        .sum()
}

/// The per-class report as text, the class column as wide as the widest name (Chinese names
/// count two columns per character) so the numbers line up.
pub fn report_table(r: &Report, names: &[String]) -> String {
    use std::fmt::Write as _;
    let width = names
        .iter()
        .map(|n| display_width(n))
        .max()
        .unwrap_or(0)
        .max(12);
    let cell = |name: &str| {
        format!(
            "{name}{}",
            " ".repeat(width - display_width(name).min(width))
        )
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {:>9} {:>9} {:>9} {:>8}",
        cell("class"),
        "precision",
        "recall",
        "F1",
        "support"
    );
    for (n, c) in names.iter().zip(&r.per_class) {
        let _ = writeln!(
            out,
            "{} {:>9.4} {:>9.4} {:>9.4} {:>8}",
            cell(n),
            c.precision,
            c.recall,
            c.f1,
            c.support
        );
    }
    for (label, a) in [
        ("macro avg", &r.macro_avg),
        ("micro avg", &r.micro_avg),
        ("weighted avg", &r.weighted_avg),
    ] {
        let _ = writeln!(
            out,
            "{} {:>9.4} {:>9.4} {:>9.4}",
            cell(label),
            a.precision,
            a.recall,
            a.f1
        );
    }
    let _ = writeln!(out, "{} {:>29.4}", cell("accuracy"), r.accuracy);
    out
}
