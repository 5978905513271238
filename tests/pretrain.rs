//! `emrclass pretrain` end to end on the simulator: a tiny BERT with its MLM head (the parity
//! fixture of tests/mlm_parity.rs) pretrained on synthetic records: held-out perplexity falls,
//! the run folder holds what it says, and its encoder folder is one that `train --encoder` and
//! `pretrain --encoder` read. Bad input is refused, by name, before anything is written.

mod common;

use std::path::{Path, PathBuf};

use emrclass::data::synthetic;
use emrclass::model::bert::BertEncoder;
use emrclass::model::mlm_head::MlmHead;
use emrclass::Device;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("emrclass-pretrain-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A term the vocabulary of `enc` spells: its tokens `first` .. `first + n` joined.
fn spelled(enc: &Path, first: usize, n: usize) -> String {
    let vocab = std::fs::read_to_string(enc.join("vocab.txt")).unwrap();
    vocab.lines().skip(first).take(n).collect()
}

/// Records as `train` reads them (a text and a label: the label is ignored).
fn records(dir: &Path, n: usize) -> PathBuf {
    let path = dir.join("records.jsonl");
    let lines: Vec<String> = synthetic::generate(2, 1.0)
        .into_iter()
        .take(n)
        .map(|e| serde_json::json!({"text": e.text, "label": e.label}).to_string())
        .collect();
    std::fs::write(&path, lines.join("\n")).unwrap();
    path
}

fn pretrain(args: &[&str]) -> (bool, String) {
    let mut all = vec!["--seed", "4", "pretrain"];
    all.extend(args);
    let (ok, out, err) = common::emrclass_cli(&all);
    (ok, format!("{out}{err}"))
}

fn perplexities(run: &Path) -> Vec<f64> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| v["eval_perplexity"].as_f64())
        .collect()
}

#[test]
fn pretraining_lowers_held_out_perplexity_and_writes_an_encoder_train_reads() {
    let dir = scratch("run");
    let enc = common::mlm_tiny_encoder(&dir);
    let text = records(&dir, 120);
    let terms = dir.join("terms.txt");
    // Terms the tiny vocabulary spells (a term it cannot spell is refused: see below).
    std::fs::write(
        &terms,
        format!("{}\n{}\n", spelled(&enc, 5, 3), spelled(&enc, 9, 2)),
    )
    .unwrap();
    let run = dir.join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ok, log) = pretrain(&[
        "--encoder",
        &s(&enc),
        "--text",
        &s(&text),
        "--out",
        &s(&run),
        "--max-len",
        "24",
        "--epochs",
        "3",
        "--batch-size",
        "16",
        "--lr",
        "2e-3",
        "--mask-terms",
        &s(&terms),
        "--eval-fraction",
        "0.2",
    ]);
    assert!(ok, "{log}");
    let ppl = perplexities(&run);
    assert_eq!(
        ppl.len(),
        4,
        "before training and after each epoch: {ppl:?}"
    );
    assert!(ppl.iter().all(|p| p.is_finite() && *p >= 1.0), "{ppl:?}");
    assert!(
        ppl[3] < 0.8 * ppl[0],
        "held-out perplexity did not fall: {ppl:?}"
    );
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(settings["records"], 120);
    assert_eq!(settings["fresh_head"], false);

    // The encoder folder: encoder, head and tokenizer all load; the weights moved.
    let out = run.join("encoder");
    let dev = Device::simt(emrclass::Schedule::Forward);
    let trained = BertEncoder::load_dir(&dev, &out).unwrap();
    let before = BertEncoder::load_dir(&dev, &enc).unwrap();
    let name = "embeddings.word_embeddings.weight";
    assert_ne!(
        trained.param(name).value.to_host().unwrap(),
        before.param(name).value.to_host().unwrap()
    );
    let c = &trained.config;
    let head = MlmHead::load(
        &dev,
        &out.join("model.safetensors"),
        c.hidden_size,
        c.vocab_size,
        1e-12,
    )
    .unwrap();
    assert!(head.is_some(), "the head is saved with the encoder");
    assert!(out.join("vocab.txt").exists());
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    assert!(
        html.contains("id=\"loss\"") && html.contains("id=\"perplexity\""),
        "report.html has the loss and perplexity curves"
    );

    // `export --to hf`: a BertForMaskedLM folder under the names transformers gives it (the
    // fixture's, which transformers wrote for BertForPreTraining, less the pooler and the
    // next-sentence head), that loads back (its pooler fresh) to the same masked-LM loss.
    let hf = dir.join("hf");
    let (ok, said, err) =
        common::emrclass_cli(&["export", "--run", &s(&run), "--to", "hf", &s(&hf)]);
    assert!(ok && said.contains("BertForMaskedLM"), "{said}{err}");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mlm_tiny");
    let mut want = emrclass::weights::Checkpoint::open(&fixture.join("model.safetensors"))
        .unwrap()
        .names();
    want.retain(|n| !n.starts_with("bert.pooler.") && !n.starts_with("cls.seq_relationship."));
    want.sort();
    let mut got = emrclass::weights::Checkpoint::open(&hf.join("model.safetensors"))
        .unwrap()
        .names();
    got.sort();
    assert_eq!(got, want);
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(hf.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "BertForMaskedLM");
    assert!(hf.join("vocab.txt").exists());
    {
        use emrclass::data::masking::MaskedBatch;
        use emrclass::model::masked_lm::MaskedLm;
        let batch = MaskedBatch {
            batch: 2,
            len: 6,
            input_ids: vec![2, 9, 4, 11, 12, 3, 2, 20, 21, 4, 3, 0],
            attention_mask: vec![1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
            positions: vec![2, 9],
            labels: vec![30, 31],
        };
        let mut rng = emrclass::rng::Rng::new(1);
        let mut a = MaskedLm::load_dir(&dev, &out, &mut rng).unwrap();
        let mut b = MaskedLm::load_dir(&dev, &hf, &mut rng).unwrap();
        assert!(!a.head_was_fresh && !b.head_was_fresh);
        let (la, lb) = (
            a.model.eval_loss(&batch).unwrap(),
            b.model.eval_loss(&batch).unwrap(),
        );
        assert_eq!(la.to_bits(), lb.to_bits(), "{la} vs {lb}");
    }

    // eval and predict want a classifier: the pretraining run says what to do instead.
    let (ok, _, err) = common::emrclass_cli(&["eval", "--run", &s(&run), "--data", &s(&text)]);
    assert!(
        !ok && err.contains("a pretraining run") && err.contains("train --encoder"),
        "{err}"
    );
    // `train --encoder` fine-tunes from it, and `pretrain --encoder` continues it.
    let (ok, out_, err) = common::emrclass_cli(&[
        "train",
        "--quiet",
        "--encoder",
        &s(&out),
        "--train",
        &s(&text),
        "--out",
        &s(&dir.join("finetune")),
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--max-len",
        "24",
        "--head",
        "cls",
    ]);
    assert!(ok, "{out_}{err}");
    let (ok, log) = pretrain(&[
        "--encoder",
        &s(&out),
        "--text",
        &s(&text),
        "--out",
        &s(&dir.join("again")),
        "--max-len",
        "24",
        "--line-by-line",
        "--batch-size",
        "32",
    ]);
    assert!(ok, "{log}");
    assert!(!log.contains("fresh one"), "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_is_refused_by_name_before_anything_is_written() {
    let dir = scratch("refusals");
    let enc = common::mlm_tiny_encoder(&dir);
    let text = records(&dir, 20);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let out = dir.join("out");
    let refused = |args: &[&str], expect: &[&str]| {
        let mut all = vec!["--encoder", s(&enc).leak() as &str, "--out", s(&out).leak()];
        if !args.contains(&"--max-len") {
            all.extend(["--max-len", "24"]);
        }
        all.extend(args);
        let (ok, log) = pretrain(&all);
        assert!(!ok, "accepted {args:?}");
        for e in expect {
            assert!(log.contains(e), "{args:?}: no `{e}` in\n{log}");
        }
        assert!(!out.exists(), "{args:?} left {}", out.display());
        assert!(
            !log.contains("device:"),
            "{args:?} refused after the device opened:\n{log}"
        );
    };
    let empty = dir.join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    refused(&["--text", &s(&empty)], &["empty.txt", "no records"]);
    let broken = dir.join("broken.jsonl");
    std::fs::write(&broken, "{\"text\": \"患者\"}\n{\"text\": 3}\n").unwrap();
    refused(&["--text", &s(&broken)], &["broken.jsonl:2"]);
    let one = dir.join("one.txt");
    std::fs::write(&one, "患者胸闷\n").unwrap();
    refused(&["--text", &s(&one)], &["1 sequence(s)", "at least 2"]);
    refused(&["--text", &s(&dir.join("missing.txt"))], &["missing.txt"]);
    let no_terms = dir.join("terms.txt");
    std::fs::write(&no_terms, "\n").unwrap();
    refused(
        &["--text", &s(&text), "--mask-terms", &s(&no_terms)],
        &["terms.txt", "no terms"],
    );
    refused(
        &["--text", &s(&text), "--max-len", "25"],
        &["--max-len 25", "at most 24 positions"],
    );
    refused(
        &["--text", &s(&text), "--mask-rate", "1.5"],
        &["--mask-rate"],
    );
    refused(&["--text", &s(&text), "--clip=-1"], &["--clip -1"]);
    // A term the vocabulary cannot spell would be masked as [UNK]: named with its line.
    let unknown = dir.join("unknown-terms.txt");
    std::fs::write(&unknown, format!("{}\n\n鼹鼠病\n", spelled(&enc, 5, 2))).unwrap();
    refused(
        &["--text", &s(&text), "--mask-terms", &s(&unknown)],
        &[
            "unknown-terms.txt",
            "1 term(s)",
            "line 3 `鼹鼠病` (鼹 鼠)",
            "[UNK]",
        ],
    );
    refused(
        &[
            "--text",
            &s(&text),
            "--mask-terms",
            &s(&unknown),
            "--mask-unit",
            "token",
        ],
        &["--mask-terms", "--mask-unit word"],
    );
    // Records with no token the vocabulary reads (control characters only).
    let bare = dir.join("bare.txt");
    std::fs::write(&bare, "\u{7}\n\u{7}\u{7}\n\u{7}\n").unwrap();
    refused(
        &["--text", &s(&bare), "--line-by-line"],
        &["too short to mask"],
    );
    // A vocabulary larger than the encoder's embedding table.
    let big = dir.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(enc.join(f), big.join(f)).unwrap();
    }
    let mut vocab = std::fs::read_to_string(enc.join("vocab.txt")).unwrap();
    vocab.push_str("\nextra1\nextra2");
    std::fs::write(big.join("vocab.txt"), vocab).unwrap();
    let (ok, log) = pretrain(&[
        "--encoder",
        &s(&big),
        "--text",
        &s(&text),
        "--out",
        &s(&out),
        "--max-len",
        "24",
    ]);
    assert!(
        !ok && log.contains("99 tokens") && log.contains("vocab_size is 97"),
        "{log}"
    );
    assert!(!out.exists());
    // A folder holding other work is never used.
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let (ok, log) = pretrain(&[
        "--encoder",
        &s(&enc),
        "--text",
        &s(&text),
        "--out",
        &s(&out),
        "--max-len",
        "24",
    ]);
    assert!(!ok, "{log}");
    assert_eq!(
        std::fs::read_to_string(out.join("notes.txt")).unwrap(),
        "mine"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The MLM head gathers the masked rows before the vocabulary projection: for BERT-base at
/// 16 x 512 (run on the sizing device, which counts every allocation and skips the arithmetic)
/// the largest tensor of a whole pretraining step is masked tokens x vocabulary, never
/// batch x length x vocabulary.
#[test]
fn no_tensor_of_batch_by_length_by_vocabulary_is_ever_allocated() {
    use emrclass::data::masking::MaskedBatch;
    use emrclass::model::bert::BertConfig;
    use emrclass::model::masked_lm::MaskedLm;
    use emrclass::ops::AdamW;
    use emrclass::train::optim::Optimizer;

    let config: BertConfig = serde_json::from_value(serde_json::json!({
        "vocab_size": 21128, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072, "max_position_embeddings": 512,
    }))
    .unwrap();
    let dev = Device::sizing();
    let (b, l, v) = (16, 512, config.vocab_size);
    let mut model = MaskedLm {
        encoder: BertEncoder::unset(&dev, config, true).unwrap(),
        head: MlmHead::new(&dev, 768, v, 1e-12, 0.02, &mut emrclass::rng::Rng::new(1)).unwrap(),
    };
    // 15 % of the tokens masked, spread over the batch.
    let positions: Vec<i32> = (0..(b * l) as i32).filter(|i| i % 20 < 3).collect();
    let masked = positions.len();
    let batch = MaskedBatch {
        batch: b,
        len: l,
        input_ids: vec![5; b * l],
        attention_mask: vec![1; b * l],
        labels: vec![7; masked],
        positions,
    };
    model.forward_backward(&batch, Some(1)).unwrap();
    Optimizer::new(AdamW::default())
        .step(&mut model.slots(), 1e-4, Some(1.0))
        .unwrap();
    let largest = dev.memory().largest();
    let full = b * l * v * 4;
    assert!(
        largest < full,
        "a {largest}-byte tensor: batch x length x vocab is {full}"
    );
    assert_eq!(
        largest,
        masked * v * 4,
        "the largest is the masked rows' logits"
    );
    println!(
        "BERT-base + MLM head, {b} x {l}, {masked} masked: largest tensor {:.0} MiB \
         (B x L x V would be {:.0} MiB), peak {:.0} MiB with fp32 activations, nothing recomputed",
        largest as f64 / 1048576.0,
        full as f64 / 1048576.0,
        dev.memory().peak() as f64 / 1048576.0
    );
}

/// `--config`: from transformers' initialisation, given only config.json and a vocabulary.
#[test]
fn pretraining_from_scratch_needs_only_a_config_and_a_vocabulary() {
    let dir = scratch("scratch");
    let enc = common::mlm_tiny_encoder(&dir);
    let shape = dir.join("shape");
    std::fs::create_dir_all(&shape).unwrap();
    for f in ["config.json", "vocab.txt"] {
        std::fs::copy(enc.join(f), shape.join(f)).unwrap();
    }
    let text = records(&dir, 120);
    let run = dir.join("run");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (ok, log) = pretrain(&[
        "--config",
        &s(&shape),
        "--text",
        &s(&text),
        "--out",
        &s(&run),
        "--max-len",
        "24",
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--lr",
        "2e-3",
        "--eval-fraction",
        "0.2",
    ]);
    assert!(ok, "{log}");
    let ppl = perplexities(&run);
    assert_eq!(ppl.len(), 3, "{ppl:?}");
    // From random weights the model starts near uniform over the 97 tokens.
    assert!((50.0..200.0).contains(&ppl[0]), "{ppl:?}");
    assert!(ppl[2] < 0.8 * ppl[0], "{ppl:?}");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(settings["from_scratch"], true);
    let dev = Device::simt(emrclass::Schedule::Forward);
    BertEncoder::load_dir(&dev, &run.join("encoder")).unwrap();
    // --encoder and --config together: refused by the parser.
    let (ok, log) = pretrain(&[
        "--config",
        &s(&shape),
        "--encoder",
        &s(&enc),
        "--text",
        &s(&text),
        "--out",
        &s(&dir.join("both")),
    ]);
    assert!(!ok && log.contains("cannot be used with"), "{log}");
    std::fs::remove_dir_all(&dir).ok();
}

/// Under --memory-budget the run takes the memory plan's micro-batches (the effective batch
/// unchanged), writes memory-plan.json, and trains within the budget the device enforces; a
/// budget too small for even one sequence is refused before any work.
#[test]
fn a_memory_budget_runs_the_plan() {
    let dir = scratch("budget");
    let enc = common::mlm_tiny_encoder(&dir);
    let text = records(&dir, 120);
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let run = dir.join("run");
    let args = |budget: &'static str, out: &Path| {
        vec![
            "--memory-budget".to_string(),
            budget.into(),
            "--context-reserve".into(),
            "0".into(),
            "--seed".into(),
            "4".into(),
            "pretrain".into(),
            "--encoder".into(),
            s(&enc),
            "--text".into(),
            s(&text),
            "--out".into(),
            s(out),
            "--max-len".into(),
            "24".into(),
            "--batch-size".into(),
            "16".into(),
            "--saved-activations".into(),
            "fp16".into(),
        ]
    };
    let a = args("2MiB", &run);
    let (ok, out, err) = common::emrclass_cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(ok, "{out}{err}");
    assert!(out.contains("memory plan:"), "{out}");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("run.json")).unwrap()).unwrap();
    let (micro, accumulate) = (
        settings["micro_batch"].as_u64().unwrap(),
        settings["accumulate"].as_u64().unwrap(),
    );
    assert!(micro < 16 && micro * accumulate == 16, "{settings}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("memory-plan.json")).unwrap())
            .unwrap();
    assert_eq!(plan["fits"], true);
    assert_eq!(plan["request"]["masked_lm"], 0.15);
    let small = dir.join("small");
    let a = args("1MiB", &small);
    let (ok, out, err) = common::emrclass_cli(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(
        !ok && err.contains("does not fit the memory budget"),
        "{out}{err}"
    );
    assert!(!small.exists(), "nothing written");
    std::fs::remove_dir_all(&dir).ok();
}
