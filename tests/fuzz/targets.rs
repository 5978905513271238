//! Every reader of outside bytes, each as a `Target` with a few valid seed inputs written here
//! (or taken from tests/fixtures).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use emrclass::data::dataset::{self, LabelMap, ReadOptions};
use emrclass::data::tokenizer::BertTokenizer;
use emrclass::encode::{read_ids, read_texts};
use emrclass::model::bert::{BertConfig, BertEncoder};
use emrclass::model::imbalance::{
    read_class_weights, read_similarity_matrix, similarity_from_edges,
};
use emrclass::train::inference::{load_run, predict};
use emrclass::weights::{self, Checkpoint};
use emrclass::{Device, Error, Schedule};

use super::{Naming, Seed, Target};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

fn read_fixture(path: &str) -> Vec<u8> {
    std::fs::read(fixture(path)).unwrap()
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Fails the case (a panic the harness reports) when an error does not name `path`: for the
/// errors a target's reader meets besides the one it returns.
pub fn ensure_named(path: &Path, e: &Error) {
    let message = e.to_string();
    let name = path.file_name().unwrap().to_string_lossy();
    assert!(
        message.contains(&path.display().to_string()) || message.contains(&*name),
        "the error does not name {}: {message}",
        path.display()
    );
}

/// Every target, each in its own folder under `root`.
pub fn all(root: &Path) -> Vec<Target> {
    let dev = Device::simt(Schedule::Forward);
    vec![
        dataset_files(root),
        safetensors_files(root),
        pytorch_files(root),
        bert_config(root),
        bert_folder(root, &dev),
        tokenizer_files(root),
        tokenizing(root),
        imbalance_files(root),
        encode_inputs(root),
        run_folder(root, &dev),
        eval_predict_inputs(root, &dev),
    ]
}

/// `dataset::read`: JSON lines, CSV, TSV and the CBLUE array; strict or skipping bad records
/// (by the input's size, so both are fuzzed).
fn dataset_files(root: &Path) -> Target {
    let seeds = vec![
        Seed::new(
            "data.jsonl",
            "{\"text\": \"患者胸痛 &amp; 气短3天\", \"label\": \"Disease\"}\n\n\
             {\"text\": \"年龄&gt;18岁，血压 140/90 mmHg\", \"label\": 3}\n\
             {\"id\": 7, \"text\": \"糖尿病史\\u00e9 10年\", \"label\": true, \"extra\": [1, 2.5, null]}\n",
        ),
        Seed::new(
            "data.csv",
            "id,text,label\n1,\"血压高, 心率快\",Sign\n2,无,Other\n3,\"多行\n记录 \"\"引号\"\"\",Sign\n",
        ),
        Seed::new("data.tsv", "label\ttext\nAge\t年龄18-65岁\nDisease\t高血压&amp;糖尿病\n"),
        Seed::new(
            "data.json",
            r#"[{"id": "s1", "label": "Age", "text": "年龄≥18岁"}, {"id": "s2", "label": "Disease", "text": "糖尿病\n2型"}]"#,
        ),
    ];
    Target::new(
        "dataset",
        root.join("dataset"),
        seeds,
        Naming::File,
        |path| {
            let opts = ReadOptions {
                skip_bad: !file_size(path).is_multiple_of(2),
                ..ReadOptions::default()
            };
            dataset::read(path, &opts).map(|_| ())
        },
    )
}

/// A safetensors file of f16, bf16 and f32 tensors, with metadata (as PyTorch writes them).
fn half_precision_file() -> Vec<u8> {
    use safetensors::{tensor::TensorView, Dtype};
    let f16: Vec<u8> = [1.0f32, -2.5, 0.0, 65504.0]
        .iter()
        .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
        .collect();
    let bf16: Vec<u8> = [3.0f32, -1e30]
        .iter()
        .flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())
        .collect();
    let f32s: Vec<u8> = [0.5f32; 6].iter().flat_map(|v| v.to_le_bytes()).collect();
    let views = vec![
        (
            "h16",
            TensorView::new(Dtype::F16, vec![2, 2], &f16).unwrap(),
        ),
        ("b16", TensorView::new(Dtype::BF16, vec![2], &bf16).unwrap()),
        (
            "w",
            TensorView::new(Dtype::F32, vec![1, 2, 3], &f32s).unwrap(),
        ),
    ];
    let metadata = Some([("format".to_string(), "pt".to_string())].into());
    safetensors::serialize(views, metadata).unwrap()
}

/// `weights::read_tensor` and `weights::Checkpoint` (open, names, shape, get with the right and
/// a wrong shape).
fn safetensors_files(root: &Path) -> Target {
    let dir = root.join("safetensors");
    std::fs::create_dir_all(&dir).unwrap();
    let written = dir.join("written.safetensors");
    let values: Vec<f32> = (0..12).map(|i| i as f32 * 0.25 - 1.0).collect();
    weights::write_tensors(
        &written,
        &[
            (
                "bert.embeddings.word_embeddings.weight",
                vec![4, 3],
                &values,
            ),
            ("bias", vec![3], &values[..3]),
            ("scalar", vec![], &values[..1]),
            ("empty", vec![0, 5], &[]),
        ],
    )
    .unwrap();
    let seeds = vec![
        Seed::new("model.safetensors", std::fs::read(&written).unwrap()),
        Seed::new("model.safetensors", half_precision_file()),
    ];
    Target::new("safetensors", dir, seeds, Naming::File, read_every_tensor)
}

/// `Checkpoint::open` then every tensor by `get` (an unsupported element type must be an error
/// naming the file), each with a wrong shape too (an error), then `read_tensor`.
fn read_every_tensor(path: &Path) -> emrclass::Result<()> {
    let ck = Checkpoint::open(path)?;
    let names = ck.names();
    for name in &names {
        let shape = ck.shape(name).unwrap();
        if let Err(e) = ck.get(name, &shape) {
            ensure_named(path, &e);
        }
        let wrong: Vec<usize> = shape
            .iter()
            .map(|d| d.saturating_add(1))
            .chain([2])
            .collect();
        match ck.get(name, &wrong) {
            Ok(_) => panic!("tensor {name} of shape {shape:?} read as {wrong:?}"),
            Err(e) => ensure_named(path, &e),
        }
    }
    let mut wanted: Vec<&str> = vec!["not-there"];
    wanted.extend(names.iter().map(String::as_str));
    weights::read_tensor(path, &wanted).map(|_| ())
}

/// PyTorch checkpoints through the same `Checkpoint` API: the zip format of `torch.save` and
/// the legacy pickle stream (tests/fixtures/torch: every element type, and the tiny BERT), read
/// by the engine's restricted unpickler.
fn pytorch_files(root: &Path) -> Target {
    let seeds = [
        "dtypes.bin",
        "dtypes-legacy.bin",
        "pytorch_model.bin",
        "legacy.bin",
    ]
    .iter()
    .map(|f| Seed::new("pytorch_model.bin", read_fixture(&format!("torch/{f}"))))
    .collect();
    Target::new(
        "pytorch",
        root.join("pytorch"),
        seeds,
        Naming::File,
        read_every_tensor,
    )
}

const MINIMAL_CONFIG: &str = r#"{"vocab_size": 8, "hidden_size": 4, "num_hidden_layers": 1,
 "num_attention_heads": 2, "intermediate_size": 8, "max_position_embeddings": 4}"#;

/// `BertConfig::from_file` (config.json of HF checkpoints).
fn bert_config(root: &Path) -> Target {
    let seeds = vec![
        Seed::new("config.json", read_fixture("bert_tiny/config.json")),
        Seed::new("config.json", read_fixture("bert_tiny_relu/config.json")),
        Seed::new("config.json", MINIMAL_CONFIG),
    ];
    Target::new(
        "bert-config",
        root.join("bert-config"),
        seeds,
        Naming::File,
        |path| BertConfig::from_file(path).map(|_| ()),
    )
}

/// The tiny model's tensors under HF names with the `bert.` prefix and legacy LayerNorm
/// gamma/beta names, plus a head the encoder ignores: the other layout the loader accepts.
fn prefixed_legacy_model(dir: &Path) -> Vec<u8> {
    let ck = Checkpoint::open(&fixture("bert_tiny/model.safetensors")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = ck
        .names()
        .into_iter()
        .map(|n| {
            let shape = ck.shape(&n).unwrap();
            let values = ck.get(&n, &shape).unwrap();
            let renamed = format!("bert.{n}")
                .replace("LayerNorm.weight", "LayerNorm.gamma")
                .replace("LayerNorm.bias", "LayerNorm.beta");
            (renamed, shape, values)
        })
        .chain([("cls.bias".to_string(), vec![2], vec![0.0, 1.0])])
        .collect();
    let views: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(n, s, v)| (n.as_str(), s.clone(), v.as_slice()))
        .collect();
    let path = dir.join("prefixed.safetensors");
    weights::write_tensors(&path, &views).unwrap();
    std::fs::read(&path).unwrap()
}

/// `BertEncoder::load_dir` / `load_frozen_dir` on the simulator: config.json and
/// model.safetensors of the tiny fixture, and the HF-name mapping (prefixes, legacy names).
fn bert_folder(root: &Path, dev: &Device) -> Target {
    let dir = root.join("bert-folder");
    std::fs::create_dir_all(&dir).unwrap();
    let seeds = vec![
        Seed::new("config.json", read_fixture("bert_tiny/config.json")),
        Seed::new(
            "model.safetensors",
            read_fixture("bert_tiny/model.safetensors"),
        ),
        Seed::new("model.safetensors", prefixed_legacy_model(&dir)),
    ];
    let dev = dev.clone();
    Target::new("bert-folder", dir, seeds, Naming::Folder, move |path| {
        let dir = path.parent().unwrap();
        if file_size(path).is_multiple_of(2) {
            BertEncoder::load_dir(&dev, dir).map(|_| ())
        } else {
            BertEncoder::load_frozen_dir(&dev, dir).map(|_| ())
        }
    })
}

/// The 97-token vocabulary of tests/common's tiny BERT folder.
fn tiny_vocab() -> String {
    let mut vocab: Vec<String> = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    vocab.extend(
        "患者入院胸闷痛头晕血压糖尿病发热咳嗽痰喘息水肿关节"
            .chars()
            .map(String::from),
    );
    vocab.extend(["##痛", "##压", "ab", "##c", "mmhg"].map(String::from));
    vocab.extend((vocab.len()..97).map(|i| format!("x{i}")));
    vocab.join("\n")
}

/// A tokenizer.json as `tokenizers` saves BertTokenizerFast's: the same pipeline as
/// `BertTokenizer::from_vocab`, serialised.
fn tokenizer_json(dir: &Path, vocab: &str) -> Vec<u8> {
    use tokenizers::models::wordpiece::WordPiece;
    use tokenizers::normalizers::bert::BertNormalizer;
    use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
    use tokenizers::processors::bert::BertProcessing;
    let vocab_path = dir.join("source-vocab.txt");
    std::fs::write(&vocab_path, vocab).unwrap();
    let model = WordPiece::from_file(vocab_path.to_str().unwrap())
        .unk_token("[UNK]".into())
        .build()
        .unwrap();
    let mut tk = tokenizers::Tokenizer::new(model);
    let (cls, sep) = (
        tk.token_to_id("[CLS]").unwrap(),
        tk.token_to_id("[SEP]").unwrap(),
    );
    tk.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .with_pre_tokenizer(Some(BertPreTokenizer))
        .with_post_processor(Some(BertProcessing::new(
            ("[SEP]".into(), sep),
            ("[CLS]".into(), cls),
        )));
    tk.to_string(true).unwrap().into_bytes()
}

/// `BertTokenizer::from_dir` (tokenizer.json, or vocab.txt) and `from_vocab`, each followed by
/// one short encode.
fn tokenizer_files(root: &Path) -> Target {
    let dir = root.join("tokenizer-files");
    std::fs::create_dir_all(&dir).unwrap();
    let vocab = tiny_vocab();
    let seeds = vec![
        Seed::new("vocab/vocab.txt", vocab.clone()),
        Seed::new(
            "vocab/vocab.txt",
            read_fixture("bert-base-chinese/vocab.txt"),
        ),
        Seed::new("json/tokenizer.json", tokenizer_json(&dir, &vocab)),
    ];
    Target::new("tokenizer-files", dir, seeds, Naming::File, |path| {
        let tok = if path.ends_with("vocab.txt") && file_size(path).is_multiple_of(2) {
            BertTokenizer::from_vocab(path)?
        } else {
            BertTokenizer::from_dir(path.parent().unwrap())?
        };
        tok.encode(&["患者胸痛 ab abc 140mmHg"], 16)
            .map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
            .map(|_| ())
    })
}

/// `BertTokenizer::encode` (bert-base-chinese's vocabulary) on arbitrary text: each line of the
/// input a text, at max_len 2, 16 or 512. Control characters, U+FFFD and 100 KB words reach
/// the tokenizer as they are; a lone surrogate cannot be in a Rust string (an escaped one,
/// `\ud800`, is the JSON readers' error, fuzzed with them), so here it is six characters.
fn tokenizing(root: &Path) -> Target {
    let vocab = read_fixture("bert-base-chinese/vocab.txt");
    let tok = BertTokenizer::from_vocab(&fixture("bert-base-chinese/vocab.txt")).unwrap();
    let seeds = vec![
        Seed::new(
            "texts.txt",
            "患者男，65岁，因“胸闷痛3天”入院。\n血压 140/90 mmHg，HbA1c 7.5%。\nCAFÉ naïve Ünïcödé\n",
        ),
        Seed::new("texts.txt", "a\n\n  \t \n[CLS] [SEP] [UNK]\n😀 𠀀 ﬃ İ\n"),
    ];
    Target::new(
        "tokenize",
        root.join("tokenize"),
        seeds,
        Naming::Nothing,
        move |path| {
            let bytes = std::fs::read(path).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            let texts: Vec<&str> = text.split('\n').take(32).collect();
            let max_len = [2, 16, 512][bytes.len() % 3];
            let batch = tok.encode(&texts, max_len)?;
            assert_eq!(batch.input_ids.len(), batch.batch * batch.len);
            assert!(batch.len <= max_len, "a row longer than max_len {max_len}");
            Ok(())
        },
    )
    // `tokenizers` keeps two 16-byte alignments per byte of normalized text, and Chinese text
    // grows in normalization (a space each side of every character): about 70 x the text is
    // its ordinary peak, linear in the input.
    .with_alloc_factor(128)
    .with_fixed_bytes(vocab.len())
}

/// The class names the imbalance files are read against.
fn classes() -> Vec<String> {
    ["Type 2", "糖尿病", "肺炎", "高血压"]
        .map(String::from)
        .to_vec()
}

/// `read_class_weights` (CSV, JSON), `read_similarity_matrix` (CSV, JSON) and
/// `similarity_from_edges`, chosen by the file's name.
fn imbalance_files(root: &Path) -> Target {
    let seeds = vec![
        Seed::new("weights.csv", "肺炎,2.5\n高血压,1\n\n糖尿病 , 0.75\nType 2,3e0\n"),
        Seed::new(
            "weights.json",
            r#"{"肺炎": 2.5, "高血压": 1, "糖尿病": 0.75, "Type 2": 3e0}"#,
        ),
        Seed::new(
            "similarity.csv",
            ",肺炎,高血压,糖尿病,Type 2\n肺炎,1,0.1,0,0\n高血压,0.1,1,0.5,0.25\n糖尿病,0,0.5,1,0.9\nType 2,0,0.25,0.9,1\n",
        ),
        Seed::new(
            "similarity.json",
            r#"{"classes": ["高血压", "肺炎", "糖尿病", "Type 2"],
 "matrix": [[1, 0.1, 0.5, 0.25], [0.1, 1, 0, 0], [0.5, 0, 1, 0.9], [0.25, 0, 0.9, 1]]}"#,
        ),
        Seed::new("edges.csv", "肺炎,高血压,0.5\n高血压,糖尿病,0.25\n 糖尿病 ,Type 2, 1\n"),
    ];
    let classes = classes();
    Target::new(
        "imbalance",
        root.join("imbalance"),
        seeds,
        Naming::File,
        move |path| {
            let name = path.file_name().unwrap().to_string_lossy();
            let k = classes.len();
            let values = if name.starts_with("weights") {
                let w = read_class_weights(path, &classes)?;
                assert!(w.iter().all(|v| v.is_finite() && *v > 0.0), "weights {w:?}");
                w
            } else if name.starts_with("similarity") {
                read_similarity_matrix(path, &classes)?
            } else {
                similarity_from_edges(path, &classes)?
            };
            let expected = if name.starts_with("weights") {
                k
            } else {
                k * k
            };
            assert_eq!(values.len(), expected);
            Ok(())
        },
    )
}

/// `emrclass encode`'s inputs: `read_texts` (lines, JSON lines) and `read_ids` (token ids).
fn encode_inputs(root: &Path) -> Target {
    let seeds = vec![
        Seed::new("texts.txt", "患者胸闷痛\n\n血压 140/90\n"),
        Seed::new(
            "texts.jsonl",
            "\"患者胸闷痛\"\n{\"text\": \"血压高\", \"id\": 3}\n\n{\"text\": \"a\\u0000b\\ud83d\\ude00\"}\n",
        ),
        Seed::new(
            "ids.json",
            r#"{"input_ids": [[2, 10, 11, 3], [2, 12, 3]], "attention_mask": [[1, 1, 1, 1], [1, 1, 1]], "token_type_ids": [[0, 0, 0, 0], [0, 0, 0]]}"#,
        ),
        Seed::new("ids.json", r#"{"input_ids": [[2, 3], [], [2, 96, 96, 96, 3]]}"#),
    ];
    Target::new(
        "encode-inputs",
        root.join("encode-inputs"),
        seeds,
        Naming::File,
        |path| {
            if path.ends_with("ids.json") {
                let max_len = if file_size(path).is_multiple_of(2) {
                    512
                } else {
                    3
                };
                let b = read_ids(path, max_len)?;
                let n = b.batch * b.len;
                assert!(b.len <= max_len && b.input_ids.len() == n);
                assert!(b.attention_mask.len() == n && b.token_type_ids.len() == n);
            } else {
                read_texts(path)?;
            }
            Ok(())
        },
    )
}

/// A run folder from one training step on the simulator (character embeddings, the `paper` head,
/// GHM-CS, tiny sizes), made once per test binary: `checkpoint/` holds state.json and the
/// tensor file.
pub fn trained_run() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        use emrclass::jobs::train::run;
        use emrclass::options::TrainOptions;
        let out = std::env::temp_dir()
            .join(format!("emrclass-fuzz-{}", std::process::id()))
            .join("trained-run");
        let _ = std::fs::remove_dir_all(&out);
        let mut o = TrainOptions {
            synthetic_scale: 0.05,
            embedding_dim: 8,
            filters: 4,
            rnn_hidden: 4,
            max_len: 16,
            out: out.clone(),
            quiet: true,
            checkpoint_every: 1,
            stop_after_steps: Some(1),
            ..TrainOptions::default()
        };
        o.settings.epochs = 1;
        o.settings.batch_size = 8;
        run(&Device::simt(Schedule::Forward), &o).unwrap();
        out
    })
}

/// `inference::load_run`: a run folder's `checkpoint/` (state.json and the tensor file it
/// names) rebuilt into a model, as `eval` and `predict` do.
fn run_folder(root: &Path, dev: &Device) -> Target {
    let trained = trained_run().join("checkpoint");
    let state = std::fs::read(trained.join("state.json")).unwrap();
    let tensors = emrclass::train::checkpoint::load_state(&trained)
        .unwrap()
        .tensors;
    let seeds = vec![
        Seed::new("checkpoint/state.json", state),
        Seed::new(
            &format!("checkpoint/{tensors}"),
            std::fs::read(trained.join(&tensors)).unwrap(),
        ),
    ];
    let dev = dev.clone();
    Target::new(
        "run-folder",
        root.join("run-folder"),
        seeds,
        Naming::Folder,
        move |path| {
            let run = path.parent().unwrap().parent().unwrap();
            load_run(&dev, run, false).map(|_| ())
        },
    )
}

/// `predict`'s input (JSON lines of strings or objects with a text and an id) and `eval`'s
/// labelled data, through the trained run's model. `eval` itself prints a report for every
/// file it reads, which would grow the test harness's output capture (an allocation counted
/// against the reader); so what it does before printing is done here: the data read, its labels
/// mapped to the run's, its texts encoded and evaluated by the run's model.
fn eval_predict_inputs(root: &Path, dev: &Device) -> Target {
    let run = trained_run().to_path_buf();
    let seeds = vec![
        Seed::new(
            "input.jsonl",
            "\"患者胸闷痛，血压高\"\n{\"id\": 7, \"text\": \"发热咳嗽 &amp; 痰\"}\n\n{\"id\": [1, {}], \"text\": \"水肿\"}\n",
        ),
        Seed::new("eval.jsonl", eval_records(&run)),
    ];
    let dev = dev.clone();
    let loaded = std::cell::RefCell::new(load_run(&dev, &run, false).unwrap());
    Target::new(
        "eval-predict",
        root.join("eval-predict"),
        seeds,
        Naming::File,
        move |path| {
            if path.ends_with("eval.jsonl") {
                let r = &mut *loaded.borrow_mut();
                let data = dataset::read(path, &ReadOptions::default())?;
                let map = LabelMap {
                    names: r.labels.clone(),
                };
                let labels = map.indices(&data.examples, path)?;
                let seqs = r.text.encode_all(&data.examples)?;
                r.model.evaluate(&seqs, &labels, r.labels.len(), 4)?;
                Ok(())
            } else {
                let out = path.with_file_name("predictions.jsonl");
                predict(&dev, &run, false, path, &out, "text", 4, false).map(|_| ())
            }
        },
    )
}

/// Three records labelled with the run's first labels.
fn eval_records(run: &Path) -> String {
    let state = emrclass::train::checkpoint::load_state(&run.join("checkpoint")).unwrap();
    ["患者胸闷痛", "血压高 140/90", "发热咳嗽"]
        .iter()
        .zip(&state.run.labels)
        .map(|(text, label)| serde_json::json!({"text": text, "label": label}).to_string() + "\n")
        .collect()
}
