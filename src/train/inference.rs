//! `emrclass eval` and `emrclass predict`: a run folder's model (its best or latest checkpoint)
//! on new data. The run folder holds everything needed to rebuild it: the model spec, the label
//! names, the character vocabulary (or the encoder's folder, for its tokenizer) and the weights.

use std::io::Write;
use std::path::Path;

use serde_json::{json, Map, Value};

use crate::data::batching::{CharVocab, LongText};
use crate::data::dataset::{self, LabelMap, ReadOptions};
use crate::data::tokenizer::BertTokenizer;
use crate::device::Device;
use crate::error::{Error, Result};
use crate::model::heads::HeadKind;
use crate::ops::AdamW;
use crate::rng::Rng;

use super::build::{build_classifier, head_config};
use super::checkpoint;
use super::metrics::{print_report, Report};
use super::optim::Optimizer;
use super::state::State;
use super::trainer::{record_batch, Classifier};
use crate::data::text_encoder::{bag_hasher, TextEncoder};
use crate::model::loss::{LossConfig, LossKind};

pub struct LoadedRun {
    pub model: Classifier,
    pub text: TextEncoder,
    pub labels: Vec<String>,
    pub state: State,
}

/// Rebuilds the model of `run/best` (`best`) or `run/checkpoint` (latest).
pub fn load_run(dev: &Device, run: &Path, best: bool) -> Result<LoadedRun> {
    if super::pretraining::is_pretraining_run(run) {
        return Err(Error::Invalid(format!(
            "{}: a pretraining run (`emrclass pretrain`): an encoder with no classifier to \
             evaluate or predict with. Fine-tune it first: emrclass train --encoder {} ...",
            run.display(),
            run.join("encoder").display()
        )));
    }
    let dir = run.join(if best { "best" } else { "checkpoint" });
    let state = checkpoint::load_state(&dir)?;
    // What state.json asks for (a head, a loss, sizes, an encoder folder) and cannot be built
    // is an error of state.json, whatever else it names.
    let in_state = |e: Error| Error::Invalid(format!("{}: {e}", dir.join("state.json").display()));
    let spec = &state.run.model;
    let long = match spec.long_text.parse().map_err(in_state)? {
        LongText::Chunks { .. } => LongText::Chunks {
            max: spec.max_chunks,
        },
        other => other,
    };
    let text = match (&spec.encoder, &state.run.vocab) {
        (None, _) if spec.head == "bag" => TextEncoder::NGrams(bag_hasher(spec.buckets)),
        (None, Some(tokens)) => TextEncoder::Chars {
            vocab: CharVocab {
                tokens: tokens.clone(),
            },
            max_len: spec.max_len,
            long,
        },
        (Some(encoder), _) => TextEncoder::Bert {
            tokenizer: Box::new(BertTokenizer::from_dir(encoder).map_err(in_state)?),
            max_len: spec.max_len,
            long,
        },
        (None, None) => {
            return Err(Error::Invalid(format!(
                "{}: an encoder-free run without its character vocabulary",
                dir.display()
            )))
        }
    };
    // The loss only matters for its GHM state's shape here: no similarity, and no class weights
    // but ones for weighted CE, which refuses to build without any (eval and predict compute
    // no loss).
    let classes = state.run.labels.len();
    let mut loss = LossConfig::new(LossKind::from_name(&spec.loss).map_err(in_state)?);
    if loss.kind == LossKind::WeightedCrossEntropy {
        loss.class_weights = Some(vec![1.0; classes]);
    }
    check_sizes(&dir, &state).map_err(in_state)?;
    let mut model = build_classifier(
        dev,
        spec,
        text.input_vocab(),
        loss,
        classes,
        &mut Rng::new(0),
    )
    .map_err(in_state)?;
    let mut opt = Optimizer::new(AdamW::default());
    checkpoint::restore(&dir, &state, &mut model, &mut opt, spec.frozen)?;
    Ok(LoadedRun {
        model,
        text,
        labels: state.run.labels.clone(),
        state,
    })
}

/// Refuses a model spec whose parameters cannot be in the checkpoint's tensor file, before the
/// model is built: a damaged size in state.json (an embedding_dim of 2^63) is an error, not a
/// giant allocation. Each size checked is that of one parameter tensor the file must hold (or a
/// lower bound on it), so a real run always passes: the embedding table, a Text-CNN filter
/// bank, a recurrent layer's input and hidden weights, the classifier. An encoder's width,
/// unknown here, counts as 1.
fn check_sizes(dir: &Path, state: &State) -> Result<()> {
    let file = dir.join(&state.tensors);
    let bytes = std::fs::metadata(&file)
        .map_err(|e| Error::io(&file, e))?
        .len();
    let values = usize::try_from(bytes / 4).unwrap_or(usize::MAX);
    let spec = &state.run.model;
    let classes = state.run.labels.len();
    let width = if spec.encoder.is_none() {
        spec.embedding_dim
    } else {
        1
    };
    let head = head_config(spec, width, classes)?;
    let (filters, hidden) = (head.textcnn_filters, head.rnn_hidden);
    let maps = filters.saturating_mul(head.textcnn_widths.len());
    let cnn = matches!(
        head.kind,
        HeadKind::TextCnn | HeadKind::TextCnnBiGru | HeadKind::Paper
    );
    let rnn = matches!(
        head.kind,
        HeadKind::BiGru | HeadKind::BiLstm | HeadKind::TextCnnBiGru | HeadKind::Paper
    );
    let rnn_input = if head.kind == HeadKind::TextCnnBiGru {
        maps
    } else {
        width
    };
    let when = |used: bool, size: usize| if used { size } else { 0 };
    // The classifier's input, as `Head::new` concatenates it.
    let features = when(cnn && head.kind != HeadKind::TextCnnBiGru, maps)
        .saturating_add(when(rnn, hidden.saturating_mul(2)))
        .saturating_add(when(head.uses_sentence(), width));
    let vocab = state.run.vocab.as_ref().map_or(0, Vec::len);
    let tensors = [
        ("embedding table", vocab.saturating_mul(width)),
        (
            "Text-CNN filter bank",
            when(cnn, filters.saturating_mul(width)),
        ),
        (
            "recurrent input weight",
            when(rnn, hidden.saturating_mul(rnn_input)),
        ),
        (
            "recurrent hidden weight",
            when(rnn, hidden.saturating_mul(hidden)),
        ),
        ("classifier", classes.saturating_mul(features)),
    ];
    match tensors.into_iter().find(|&(_, size)| size > values) {
        None => Ok(()),
        Some((what, size)) => Err(Error::Invalid(format!(
            "the model (head {}, embedding_dim {}, filters {filters}, rnn_hidden {hidden}, {classes} labels, {vocab} characters) needs a {what} of at least {size} values; {} holds {values} in all",
            spec.head,
            spec.embedding_dim,
            file.display()
        ))),
    }
}

/// Metrics of the run's model on a labelled file; prints the report.
pub fn eval(
    dev: &Device,
    run: &Path,
    best: bool,
    data: &Path,
    read: &ReadOptions,
    batch: usize,
) -> Result<Report> {
    let mut r = load_run(dev, run, best)?;
    let loaded = dataset::read(data, read)?;
    dataset::report_skipped(data, &loaded.skipped);
    let map = LabelMap {
        names: r.labels.clone(),
    };
    let labels = map.indices(&loaded.examples, data)?;
    let seqs = r.text.encode_all(&loaded.examples)?;
    let report = r
        .model
        .evaluate(&seqs, &labels, r.labels.len(), batch.max(1))?;
    crate::say!(
        "{}: {} records; accuracy {:.4}, macro-F1 {:.4}, micro-F1 {:.4}",
        data.display(),
        seqs.len(),
        report.accuracy,
        report.macro_avg.f1,
        report.micro_avg.f1
    );
    print_report(&report, &r.labels);
    Ok(report)
}

/// One text to classify: as the input gave it (written back), as the model reads it (entities
/// decoded, trimmed), and its id when the input line had one.
struct Record {
    id: Option<Value>,
    given: String,
    text: String,
}

/// The texts of a JSON-lines file, and the lines skipped as broken (with `skip_bad`; without,
/// the first broken line is an error).
fn read_texts(path: &Path, text_field: &str, skip_bad: bool) -> Result<(Vec<Record>, Vec<String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (mut out, mut skipped) = (Vec::new(), Vec::new());
    // Worked out once: it reads the whole file.
    let advice = std::cell::OnceCell::new();
    for (i, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let at = format!("{}:{}", path.display(), i + 1);
        let record = std::str::from_utf8(raw)
            .map_err(|_| {
                format!(
                    "{at}: invalid UTF-8{}",
                    advice.get_or_init(|| crate::data::delimited::encoding_advice(&bytes, path))
                )
            })
            .and_then(|line| {
                parse_text_line(line, text_field).map_err(|why| format!("{at}: {why}"))
            });
        match record {
            Ok(None) => {}
            Ok(Some(r)) => out.push(r),
            Err(why) if skip_bad => skipped.push(why),
            Err(why) => {
                return Err(Error::Invalid(format!(
                    "{why} (pass --skip-bad to skip such lines)"
                )))
            }
        }
    }
    Ok((out, skipped))
}

/// One input line: a JSON string, or an object with `text_field` (and an optional id); None
/// for a blank line.
fn parse_text_line(line: &str, text_field: &str) -> std::result::Result<Option<Record>, String> {
    if line.trim().is_empty() {
        return Ok(None);
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let (id, given) = match &v {
        Value::String(s) => (None, s.clone()),
        Value::Object(o) => match o.get(text_field) {
            Some(Value::String(s)) => (o.get("id").cloned(), s.clone()),
            _ => return Err(format!("no string field `{text_field}`")),
        },
        _ => return Err("expected a string or an object".into()),
    };
    let text = html_escape::decode_html_entities(&given).trim().to_string();
    if text.is_empty() {
        return Err("empty text".into());
    }
    Ok(Some(Record { id, given, text }))
}

/// Classifies every text of a JSON-lines file (strings, or objects with `text_field` and an
/// optional `id`) and writes one line per text: id, text, label and the probability of every
/// label, the id and text exactly as the input gave them. With `skip_bad`, broken lines (not
/// JSON, no text, an empty one) are skipped and listed on stderr. The output is written to a
/// temporary file and renamed. Returns the count.
#[allow(clippy::too_many_arguments)]
pub fn predict(
    dev: &Device,
    run: &Path,
    best: bool,
    input: &Path,
    output: &Path,
    text_field: &str,
    batch: usize,
    skip_bad: bool,
) -> Result<usize> {
    let mut r = load_run(dev, run, best)?;
    let (records, skipped) = read_texts(input, text_field, skip_bad)?;
    dataset::report_skipped(input, &skipped);
    let tmp = output.with_extension("jsonl.tmp");
    let io = |e: std::io::Error| Error::Invalid(format!("{}: {e}", tmp.display()));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    for chunk in records.chunks(batch.max(1)) {
        let windows = chunk
            .iter()
            .map(|rec| r.text.encode(&rec.text))
            .collect::<Result<Vec<_>>>()?;
        let (b, counts) = record_batch(&windows.iter().collect::<Vec<_>>());
        for (rec, (best_class, probs)) in chunk.iter().zip(r.model.predict_records(&b, &counts)?) {
            let mut p = Map::new();
            for (name, &v) in r.labels.iter().zip(&probs) {
                p.insert(name.clone(), json!(v));
            }
            let mut line = Map::new();
            if let Some(id) = &rec.id {
                line.insert("id".into(), id.clone());
            }
            line.insert("text".into(), json!(rec.given));
            line.insert("label".into(), json!(r.labels[best_class]));
            line.insert("probabilities".into(), Value::Object(p));
            writeln!(w, "{}", Value::Object(line)).map_err(io)?;
        }
    }
    w.flush().map_err(io)?;
    drop(w);
    std::fs::rename(&tmp, output)
        .map_err(|e| Error::Invalid(format!("{}: {e}", output.display())))?;
    Ok(records.len())
}
