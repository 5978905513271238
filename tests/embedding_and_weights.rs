//! The encoder-free input path: token embeddings loaded from a BERT checkpoint's word
//! embeddings (safetensors, fp32 or fp16 on disk), and the named errors for bad files and ids.

mod common;

use std::path::PathBuf;

use emrclass::model::embedding::Embedding;
use emrclass::weights::{read_tensor, write_tensors};
use emrclass::Schedule;
use safetensors::tensor::TensorView;
use safetensors::Dtype;

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-weights-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn embeddings_load_from_fp32_and_fp16_checkpoints() {
    let dev = common::test_device(Schedule::Forward);
    let table: Vec<f32> = (0..15).map(|i| i as f32 * 0.25 - 1.0).collect();
    let p32 = dir().join("bert32.safetensors");
    write_tensors(
        &p32,
        &[
            ("bert.embeddings.word_embeddings.weight", vec![5, 3], &table),
            ("bert.pooler.dense.bias", vec![3], &table[..3]),
        ],
    )
    .unwrap();
    let mut e = Embedding::from_checkpoint(&dev, &p32).unwrap();
    assert_eq!((e.vocab, e.dim), (5, 3));
    assert_eq!(
        e.forward(&[4, 0]).unwrap().to_host().unwrap(),
        [&table[12..15], &table[0..3]].concat()
    );

    // fp16 on disk, sentence-transformers naming (no prefix).
    let halves: Vec<u8> = table
        .iter()
        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
        .collect();
    let view = TensorView::new(Dtype::F16, vec![5, 3], &halves).unwrap();
    let bytes =
        safetensors::serialize(vec![("embeddings.word_embeddings.weight", view)], None).unwrap();
    let p16 = dir().join("minilm16.safetensors");
    std::fs::write(&p16, bytes).unwrap();
    let t = read_tensor(&p16, &emrclass::model::embedding::WORD_EMBEDDING_NAMES).unwrap();
    assert_eq!(t.name, "embeddings.word_embeddings.weight");
    assert_eq!(t.data, table, "these values are exact in fp16");
}

#[test]
fn bad_files_and_ids_are_named_errors() {
    let dev = common::test_device(Schedule::Forward);
    let p = dir().join("other.safetensors");
    write_tensors(
        &p,
        &[("classifier.weight", vec![2, 2], &[1.0, 2.0, 3.0, 4.0])],
    )
    .unwrap();
    let e = Embedding::from_checkpoint(&dev, &p)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("no tensor named bert.embeddings.word_embeddings.weight or")
            && e.contains("classifier.weight"),
        "{e}"
    );

    let bytes = std::fs::read(&p).unwrap();
    let cut = dir().join("truncated.safetensors");
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let e = Embedding::from_checkpoint(&dev, &cut)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("truncated.safetensors") && e.contains("not a readable safetensors file"),
        "{e}"
    );

    let e = Embedding::from_checkpoint(&dev, &dir().join("missing.safetensors"))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("missing.safetensors"), "{e}");

    let mut emb = Embedding::from_host(&dev, 4, 2, &[0.0; 8]).unwrap();
    let e = emb.forward(&[1, 2, 4]).err().unwrap().to_string();
    assert!(
        e.contains("token id 4 at position 2 is outside 0..4"),
        "{e}"
    );
}

#[test]
fn embedding_gradient_is_deterministic() {
    let dev = common::test_device(Schedule::Random(4));
    let mut rng = emrclass::rng::Rng::new(8);
    let mut emb = Embedding::new(&dev, 30, 7, &mut rng).unwrap();
    let ids: Vec<i32> = (0..500i32).map(|i| (i * 7919) % 13).collect();
    let dout: Vec<f32> = (0..500 * 7)
        .map(|i| ((i * 37) % 101) as f32 * 0.013 - 0.6)
        .collect();
    let mut grads = Vec::new();
    for _ in 0..2 {
        emb.forward(&ids).unwrap();
        emb.backward(&dev.upload(&dout, "dout").unwrap()).unwrap();
        grads.push(
            emb.table_grad
                .to_host()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
        );
    }
    assert_eq!(grads[0], grads[1]);
    // Ids 13..30 never occur: their rows stay exactly zero.
    assert!(grads[0][13 * 7..].iter().all(|&b| b == 0));
}
