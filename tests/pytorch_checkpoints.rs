//! Issue 15: PyTorch checkpoints read natively and safely. Fixtures are written by
//! tests/fixtures/make_torch_fixtures.py with torch.save (zip and legacy formats); the malicious
//! and damaged inputs are built here, byte by byte.

mod common;

use std::path::{Path, PathBuf};

use common::emrclass_cli as emrclass;
use emrclass::weights::Checkpoint;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn scratch(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("emrclass-torch-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn zip_and_legacy_state_dicts_load_bit_identically_to_the_safetensors() {
    let reference = Checkpoint::open(&fixture("bert_tiny/model.safetensors")).unwrap();
    for file in ["torch/pytorch_model.bin", "torch/legacy.bin"] {
        let ck = Checkpoint::open(&fixture(file)).unwrap();
        for name in reference.names() {
            let shape = reference.shape(&name).unwrap();
            let want = reference.get(&name, &shape).unwrap();
            let got = ck
                .get(&format!("bert.{name}"), &shape)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(bits(&got), bits(&want), "{file}: bert.{name}");
        }
        // The MLM head is there too (ignored by the encoder); its decoder shares the word
        // embeddings' storage.
        let words = ck.values("bert.embeddings.word_embeddings.weight").unwrap();
        assert_eq!(
            bits(&ck.values("cls.predictions.decoder.weight").unwrap()),
            bits(&words),
            "{file}"
        );
        assert!(
            ck.contains("cls.predictions.transform.dense.weight"),
            "{file}"
        );
    }
}

#[test]
fn dtypes_views_and_a_wrapped_state_dict() {
    let reference = Checkpoint::open(&fixture("torch/dtypes.safetensors")).unwrap();
    for file in ["torch/dtypes.bin", "torch/dtypes-legacy.bin"] {
        let ck = Checkpoint::open(&fixture(file)).unwrap();
        let mut names = reference.names();
        names.retain(|n| n != "i64");
        assert_eq!(names.len(), 6);
        for name in names {
            let shape = reference.shape(&name).unwrap();
            assert_eq!(ck.shape(&name), Some(shape.clone()), "{file}: {name}");
            assert_eq!(
                bits(&ck.get(&name, &shape).unwrap()),
                bits(&reference.get(&name, &shape).unwrap()),
                "{file}: {name}"
            );
        }
        // Integers are read (their shape is known) but are not weights.
        assert_eq!(ck.shape("i64"), Some(vec![3, 4]));
        let e = ck.values("i64").unwrap_err().to_string();
        assert!(
            e.contains(file.rsplit('/').next().unwrap()) && e.contains("I64"),
            "{e}"
        );
    }
}

/// A folder laid out like `freedomking/mc-bert`: config.json, vocab.txt, pytorch_model.bin.
fn mc_bert_like_folder(tag: &str) -> PathBuf {
    let dir = common::tiny_bert_dir(tag);
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    std::fs::copy(
        fixture("torch/pytorch_model.bin"),
        dir.join("pytorch_model.bin"),
    )
    .unwrap();
    dir
}

#[test]
fn encode_through_pytorch_model_bin_gives_transformers_outputs() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("bert_tiny/expected.json")).unwrap())
            .unwrap();
    let dir = mc_bert_like_folder("encode");
    let ids = dir.join("ids.json");
    let ids_json = common::bert_tiny_ids(&expected);
    std::fs::write(&ids, ids_json.to_string()).unwrap();
    let out = dir.join("out.safetensors");
    let (ok, _, err) = emrclass(&[
        "encode",
        "--model",
        dir.to_str().unwrap(),
        "--ids",
        ids.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let hidden = emrclass::weights::read_tensor(&out, &["last_hidden_state"]).unwrap();
    let got: Vec<f64> = hidden.data.iter().map(|&v| v as f64).collect();
    let want = common::f64s(&expected["last_hidden_state"]);
    let err = common::rel(&got, &want);
    assert!(err < 1e-5, "last_hidden_state relative error {err:.2e}");
}

#[test]
fn train_runs_on_a_folder_laid_out_like_mc_bert() {
    let dir = mc_bert_like_folder("train");
    let out = scratch("train-run");
    let (ok, stdout, err) = emrclass(&[
        "train",
        "--quiet",
        "--encoder",
        dir.to_str().unwrap(),
        "--head",
        "cls",
        "--epochs",
        "1",
        "--synthetic-scale",
        "0.02",
        "--max-len",
        "16",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        stdout.contains("BERT encoder") && stdout.contains("epoch  1"),
        "{stdout}"
    );
}

// ---- refusals: hand-built pickles in the legacy layout and damaged archives ----

/// The legacy format around `main` (a pickle): magic, protocol 1001, system info, `main`, the
/// storage keys, then each storage's element count and bytes.
fn legacy(main: &[u8], storages: &[(&str, u64, &[u8])]) -> Vec<u8> {
    let mut b = vec![
        0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, b'.',
    ];
    b.extend_from_slice(b"\x80\x02M\xe9\x03.");
    b.extend_from_slice(b"\x80\x02}X\x0d\x00\x00\x00little_endian\x88s.");
    b.extend_from_slice(main);
    b.extend_from_slice(b"\x80\x02]");
    for (key, _, _) in storages {
        b.extend(text(key));
        b.push(b'a');
    }
    b.push(b'.');
    for (_, count, data) in storages {
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(data);
    }
    b
}

fn text(s: &str) -> Vec<u8> {
    let mut b = vec![b'X'];
    b.extend_from_slice(&(s.len() as u32).to_le_bytes());
    b.extend_from_slice(s.as_bytes());
    b
}

fn int(v: i32) -> Vec<u8> {
    let mut b = vec![b'J'];
    b.extend_from_slice(&v.to_le_bytes());
    b
}

/// {"w": _rebuild_tensor_v2(storage('0', FloatStorage, numel), 0, shape, (1,) strides...)}.
fn one_tensor(numel: i32, shape: &[i32]) -> Vec<u8> {
    let mut b = b"\x80\x02}".to_vec();
    b.extend(text("w"));
    b.extend_from_slice(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    b.push(b'(');
    b.extend(text("storage"));
    b.extend_from_slice(b"ctorch\nFloatStorage\n");
    b.extend(text("0"));
    b.extend(text("cpu"));
    b.extend(int(numel));
    b.extend_from_slice(b"NtQ");
    b.extend(int(0));
    b.push(b'(');
    for &d in shape {
        b.extend(int(d));
    }
    b.push(b't');
    b.push(b'(');
    let mut stride = 1;
    let mut strides = Vec::new();
    for &d in shape.iter().rev() {
        strides.push(stride);
        stride *= d;
    }
    for s in strides.iter().rev() {
        b.extend(int(*s));
    }
    b.extend_from_slice(b"t\x89ccollections\nOrderedDict\n)RtRs.");
    b
}

fn refused(bytes: &[u8], tag: &str, needles: &[&str]) {
    let dir = scratch(tag);
    let path = dir.join("pytorch_model.bin");
    std::fs::write(&path, bytes).unwrap();
    let e = match Checkpoint::open(&path) {
        Ok(_) => panic!("{tag}: accepted"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("pytorch_model.bin"),
        "{tag}: the error does not name the file: {e}"
    );
    for n in needles {
        assert!(e.contains(n), "{tag}: the error does not say `{n}`: {e}");
    }
}

#[test]
fn a_well_formed_hand_built_legacy_file_is_read() {
    // The builder itself is right: the same bytes with a whole storage load.
    let data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let dir = scratch("handmade");
    let path = dir.join("ok.bin");
    std::fs::write(&path, legacy(&one_tensor(6, &[2, 3]), &[("0", 6, &data)])).unwrap();
    let ck = Checkpoint::open(&path).unwrap();
    assert_eq!(
        ck.get("w", &[2, 3]).unwrap(),
        vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
}

#[test]
fn pickles_that_would_run_code_are_refused_by_name() {
    for file in ["torch/evil.bin", "torch/evil-legacy.bin"] {
        let e = Checkpoint::open(&fixture(file)).err().unwrap().to_string();
        assert!(
            e.contains(file.rsplit('/').next().unwrap())
                && e.contains("refused global `posix.system`"),
            "{file}: {e}"
        );
    }
    // GLOBAL builtins eval + REDUCE.
    let mut main = b"\x80\x02}".to_vec();
    main.extend(text("w"));
    main.extend_from_slice(b"cbuiltins\neval\n");
    main.extend(text("print(1)"));
    main.extend_from_slice(b"\x85Rs.");
    refused(
        &legacy(&main, &[]),
        "eval",
        &["refused global `builtins.eval`"],
    );
    // An unknown class through STACK_GLOBAL.
    let mut main = b"\x80\x04}".to_vec();
    main.extend(text("w"));
    main.extend(text("__main__"));
    main.extend(text("Payload"));
    main.extend_from_slice(b"\x93)\x81s.");
    refused(
        &legacy(&main, &[]),
        "stack-global",
        &["refused global `__main__.Payload`"],
    );
    // NEWOBJ / INST / OBJ build arbitrary objects: refused as opcodes.
    let mut main = b"\x80\x02}".to_vec();
    main.extend(text("w"));
    main.extend_from_slice(b"(i__main__\nPayload\ns.");
    refused(&legacy(&main, &[]), "inst", &["opcode 0x69", "refused"]);
    // Calling a storage type is refused too.
    let mut main = b"\x80\x02}".to_vec();
    main.extend(text("w"));
    main.extend_from_slice(b"ctorch\nFloatStorage\n)Rs.");
    refused(
        &legacy(&main, &[]),
        "call-storage",
        &["REDUCE calls a global: refused"],
    );
}

#[test]
fn damaged_files_are_refused_with_named_errors() {
    let data: Vec<u8> = (0..4).flat_map(|i| (i as f32).to_le_bytes()).collect();
    // A storage shorter than its tensor.
    refused(
        &legacy(&one_tensor(4, &[10]), &[("0", 4, &data)]),
        "short-storage",
        &["tensor w", "needs 10 elements, its storage holds 4"],
    );
    // A zip-bomb-sized declared length: an error, not an allocation.
    refused(
        &legacy(&one_tensor(4, &[4]), &[("0", 1 << 60, &data)]),
        "huge-count",
        &["storage 0 declares 1152921504606846976 elements"],
    );
    // Truncated: the zip archive cut in half, and the legacy stream cut in its pickle.
    let whole = std::fs::read(fixture("torch/pytorch_model.bin")).unwrap();
    refused(&whole[..whole.len() / 2], "cut-zip", &["zip"]);
    let whole = std::fs::read(fixture("torch/legacy.bin")).unwrap();
    refused(&whole[..200], "cut-legacy", &["truncated"]);
    refused(
        &whole[..whole.len() - 1000],
        "cut-legacy-data",
        &["bytes are left"],
    );
    // A zip that is not a torch.save archive.
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("readme.txt", zip::write::SimpleFileOptions::default())
        .unwrap();
    std::io::Write::write_all(&mut zip, b"hello").unwrap();
    let other = zip.finish().unwrap().into_inner();
    refused(&other, "other-zip", &["data.pkl"]);
}

#[test]
fn refused_weights_create_no_files() {
    let dir = mc_bert_like_folder("evil-encode");
    std::fs::copy(fixture("torch/evil.bin"), dir.join("pytorch_model.bin")).unwrap();
    let texts = dir.join("texts.txt");
    std::fs::write(&texts, "患者胸闷\n").unwrap();
    let out = dir.join("out.safetensors");
    let (ok, _, err) = emrclass(&[
        "encode",
        "--model",
        dir.to_str().unwrap(),
        "--texts",
        texts.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
    ]);
    assert!(!ok);
    assert!(err.contains("refused global `posix.system`"), "{err}");
    assert!(!out.exists() && !Path::new("pwned").exists());
}

#[test]
fn convert_writes_the_same_tensors_as_safetensors() {
    let dir = scratch("convert");
    let reference = Checkpoint::open(&fixture("torch/dtypes.safetensors")).unwrap();
    for file in ["torch/dtypes.bin", "torch/dtypes-legacy.bin"] {
        let out = dir.join("out.safetensors");
        let (ok, _, err) = emrclass(&[
            "convert",
            fixture(file).to_str().unwrap(),
            out.to_str().unwrap(),
        ]);
        assert!(ok, "{err}");
        let got = Checkpoint::open(&out).unwrap();
        assert_eq!(got.names(), reference.names());
        for name in reference.names() {
            // Element type, shape and bytes, integers included.
            assert_eq!(got.raw(&name), reference.raw(&name), "{file}: {name}");
        }
    }
    // A folder means its weights file; a refused file writes nothing.
    let folder = mc_bert_like_folder("convert-folder");
    let out = dir.join("bert.safetensors");
    let (ok, _, err) = emrclass(&["convert", folder.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(Checkpoint::open(&out)
        .unwrap()
        .contains("bert.pooler.dense.weight"));
    let refused_out = dir.join("evil.safetensors");
    let (ok, _, err) = emrclass(&[
        "convert",
        fixture("torch/evil.bin").to_str().unwrap(),
        refused_out.to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("refused global"), "{err}");
    assert!(!refused_out.exists());
}
