//! What the imbalance-aware losses know about the classes: class weights from class
//! proportions, and class similarity (from a matrix file, a knowledge-network edge list, or
//! class-name embeddings) turned into soft targets. All host-side f64; the loss layer uploads.

use std::collections::{BinaryHeap, HashMap};
use std::path::Path;

use crate::error::{Error, Result};

/// w_c = (N / (K n_c))^gamma, renormalised so that sum_c (n_c / N) w_c = 1: the average weight a
/// training sample sees is 1, so the loss keeps its scale. A class with no samples gets the
/// largest weight of the present ones (it has no samples to weigh, but if a later batch holds
/// one, it is the rarest class there is).
pub fn class_weights_from_counts(counts: &[usize], gamma: f64) -> Result<Vec<f64>> {
    let n: usize = counts.iter().sum();
    if n == 0 {
        return Err(Error::Invalid(
            "class weights from counts that are all zero".into(),
        ));
    }
    let k = counts.len() as f64;
    let raw: Vec<Option<f64>> = counts
        .iter()
        .map(|&c| (c > 0).then(|| (n as f64 / (k * c as f64)).powf(gamma)))
        .collect();
    let top = raw.iter().flatten().cloned().fold(0.0, f64::max);
    let mean: f64 = counts
        .iter()
        .zip(&raw)
        .map(|(&c, w)| c as f64 / n as f64 * w.unwrap_or(top))
        .sum();
    Ok(raw.iter().map(|w| w.unwrap_or(top) / mean).collect())
}

/// Index of every class name, and an error listing the names of `found` that are not classes.
fn resolve<'a>(
    classes: &[String],
    found: impl Iterator<Item = &'a str>,
    source: &Path,
) -> Result<Vec<usize>> {
    let index: HashMap<&str, usize> = classes
        .iter()
        .enumerate()
        .map(|(i, c)| (c.as_str(), i))
        .collect();
    let mut unknown = Vec::new();
    let ids: Vec<usize> = found
        .filter_map(|name| {
            let id = index.get(name.trim()).copied();
            if id.is_none() {
                unknown.push(name.trim().to_string());
            }
            id
        })
        .collect();
    if !unknown.is_empty() {
        unknown.sort();
        unknown.dedup();
        return Err(Error::Invalid(format!(
            "{}: names that are not among the {} classes: {}",
            source.display(),
            classes.len(),
            unknown.join(", ")
        )));
    }
    Ok(ids)
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| Error::io(path, e))
}

fn bad_line(path: &Path, line: usize, what: &str) -> Error {
    Error::Invalid(format!("{}:{line}: {what}", path.display()))
}

/// Class weights from a file: JSON `{"class name": weight, ...}` or lines `class name,weight`.
/// Every class must be given a positive, finite weight.
pub fn read_class_weights(path: &Path, classes: &[String]) -> Result<Vec<f64>> {
    let text = read(path)?;
    let pairs: Vec<(String, f64, usize)> = if path.extension().is_some_and(|e| e == "json") {
        let map: HashMap<String, f64> = serde_json::from_str(&text).map_err(|e| {
            Error::Invalid(format!(
                "{}: not a JSON object of class weights: {e}",
                path.display()
            ))
        })?;
        map.into_iter().map(|(k, v)| (k, v, 0)).collect()
    } else {
        let mut out = Vec::new();
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            let (name, w) = line
                .rsplit_once(',')
                .ok_or_else(|| bad_line(path, i + 1, "expected `class name,weight`"))?;
            let w: f64 = w
                .trim()
                .parse()
                .map_err(|_| bad_line(path, i + 1, &format!("`{}` is not a number", w.trim())))?;
            out.push((name.trim().to_string(), w, i + 1));
        }
        out
    };
    let ids = resolve(classes, pairs.iter().map(|p| p.0.as_str()), path)?;
    let mut weights = vec![f64::NAN; classes.len()];
    for (&id, (name, w, line)) in ids.iter().zip(&pairs) {
        if !(w.is_finite() && *w > 0.0) {
            return Err(bad_line(
                path,
                *line,
                &format!("weight {w} of `{name}` must be positive and finite"),
            ));
        }
        weights[id] = *w;
    }
    let missing: Vec<&str> = classes
        .iter()
        .zip(&weights)
        .filter(|(_, w)| w.is_nan())
        .map(|(c, _)| c.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Error::Invalid(format!(
            "{}: no weight for {}",
            path.display(),
            missing.join(", ")
        )));
    }
    Ok(weights)
}

#[derive(serde::Deserialize)]
struct MatrixJson {
    classes: Vec<String>,
    matrix: Vec<Vec<f64>>,
}

/// A K x K similarity matrix (row-major) from JSON `{"classes": [...], "matrix": [[...]]}` or
/// CSV whose first row and first column name the classes (the corner cell is ignored). The
/// file's classes may come in any order; all K must be there.
pub fn read_similarity_matrix(path: &Path, classes: &[String]) -> Result<Vec<f64>> {
    let text = read(path)?;
    let (names, rows): (Vec<String>, Vec<Vec<f64>>) =
        if path.extension().is_some_and(|e| e == "json") {
            let m: MatrixJson = serde_json::from_str(&text).map_err(|e| {
                Error::Invalid(format!(
                    "{}: expected {{\"classes\": [..], \"matrix\": [[..]]}}: {e}",
                    path.display()
                ))
            })?;
            (m.classes, m.matrix)
        } else {
            let mut lines = text
                .lines()
                .enumerate()
                .filter(|(_, l)| !l.trim().is_empty());
            let (_, header) = lines
                .next()
                .ok_or_else(|| bad_line(path, 1, "empty similarity matrix"))?;
            let names: Vec<String> = header
                .split(',')
                .skip(1)
                .map(|s| s.trim().to_string())
                .collect();
            let mut rows = Vec::new();
            let mut row_names = Vec::new();
            for (i, line) in lines {
                let mut cells = line.split(',');
                row_names.push(cells.next().unwrap_or_default().trim().to_string());
                let row: std::result::Result<Vec<f64>, _> =
                    cells.map(|c| c.trim().parse::<f64>()).collect();
                rows.push(row.map_err(|_| bad_line(path, i + 1, "a cell is not a number"))?);
            }
            if row_names != names {
                return Err(Error::Invalid(format!(
                    "{}: the first column must name the classes in the header's order",
                    path.display()
                )));
            }
            (names, rows)
        };
    let k = classes.len();
    let ids = resolve(classes, names.iter().map(String::as_str), path)?;
    if names.len() != k || rows.len() != k || rows.iter().any(|r| r.len() != k) {
        return Err(Error::Invalid(format!(
            "{}: expected a {k} x {k} matrix over all classes, found {} names and {} rows",
            path.display(),
            names.len(),
            rows.len()
        )));
    }
    let mut sim = vec![0.0; k * k];
    for (i, row) in rows.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            sim[ids[i] * k + ids[j]] = v;
        }
    }
    Ok(sim)
}

/// Similarity from a disease knowledge network, lines `class_a,class_b,weight` with weight in
/// (0, 1] the similarity of the linked pair (edges are undirected). Unlinked pairs get the
/// similarity of the best path between them: the largest product of edge weights along a path
/// (a shortest path under cost -ln w, by Dijkstra from every class); unreachable pairs get 0.
pub fn similarity_from_edges(path: &Path, classes: &[String]) -> Result<Vec<f64>> {
    let text = read(path)?;
    let k = classes.len();
    let mut adjacency: Vec<Vec<(usize, f64)>> = vec![Vec::new(); k];
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        if cells.len() != 3 {
            return Err(bad_line(path, i + 1, "expected `class_a,class_b,weight`"));
        }
        let w: f64 = cells[2]
            .parse()
            .map_err(|_| bad_line(path, i + 1, &format!("`{}` is not a number", cells[2])))?;
        if !(w > 0.0 && w <= 1.0) {
            return Err(bad_line(
                path,
                i + 1,
                &format!("weight {w} is not in (0, 1]"),
            ));
        }
        let ids = resolve(classes, cells[..2].iter().copied(), path)?;
        adjacency[ids[0]].push((ids[1], w));
        adjacency[ids[1]].push((ids[0], w));
    }
    let mut sim = vec![0.0; k * k];
    for source in 0..k {
        // Max-product Dijkstra: the product only shrinks along a path, so greedy order is right.
        let mut best = vec![0.0f64; k];
        best[source] = 1.0;
        let mut heap = BinaryHeap::new();
        heap.push(Ordered(1.0, source));
        while let Some(Ordered(s, node)) = heap.pop() {
            if s < best[node] {
                continue;
            }
            for &(next, w) in &adjacency[node] {
                if s * w > best[next] {
                    best[next] = s * w;
                    heap.push(Ordered(s * w, next));
                }
            }
        }
        sim[source * k..(source + 1) * k].copy_from_slice(&best);
    }
    Ok(sim)
}

/// A heap entry ordered by its similarity.
#[derive(PartialEq)]
struct Ordered(f64, usize);
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Cosine similarity of K class embeddings (row-major K x H), e.g. the encoder's [CLS]
/// vectors of the class names.
pub fn similarity_from_embeddings(embeddings: &[f64], k: usize, h: usize) -> Vec<f64> {
    let norm = |i: usize| {
        embeddings[i * h..(i + 1) * h]
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
            .max(1e-12)
    };
    let mut sim = vec![0.0; k * k];
    for i in 0..k {
        for j in 0..k {
            let dot: f64 = (0..h)
                .map(|d| embeddings[i * h + d] * embeddings[j * h + d])
                .sum();
            sim[i * k + j] = dot / (norm(i) * norm(j));
        }
    }
    sim
}

/// Soft targets: row y is (1 - eps) onehot(y) + eps S~[y, :], where S~ is the similarity with
/// its diagonal and negative entries set to 0 and rows renormalised to sum to 1. A class with no
/// similar class keeps its one-hot target.
pub fn soft_targets(similarity: &[f64], k: usize, epsilon: f64) -> Vec<f64> {
    let mut t = vec![0.0; k * k];
    for y in 0..k {
        let row: Vec<f64> = (0..k)
            .map(|c| {
                if c == y {
                    0.0
                } else {
                    similarity[y * k + c].max(0.0)
                }
            })
            .collect();
        let total: f64 = row.iter().sum();
        if total > 0.0 {
            for c in 0..k {
                t[y * k + c] = epsilon * row[c] / total;
            }
            t[y * k + y] = 1.0 - epsilon;
        } else {
            t[y * k + y] = 1.0;
        }
    }
    t
}
