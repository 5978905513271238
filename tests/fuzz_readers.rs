//! Bounded fuzzing of every reader of outside bytes (issue 19): data files (JSON lines, CSV,
//! TSV, CBLUE), safetensors files, PyTorch checkpoints (zip and legacy), BERT folders,
//! config.json, vocab.txt and tokenizer.json, text to tokenize, class weights and similarities,
//! `encode`'s inputs, a run folder's checkpoint (as `eval`/`predict` rebuild it), and
//! `eval`/`predict` inputs. The readers and their valid seed inputs are in `fuzz/targets.rs`.
//!
//! **Design.** For each reader, a seeded mutation loop (`fuzz/mutate.rs`) starts from valid
//! inputs and breaks them: bit flips, byte inserts/deletes/duplicates, truncation, splicing two
//! inputs, numbers replaced by 0, -1, 2^32, 2^60, 1e308, NaN..., strings and nulls replaced by
//! values of other types or paths that are not there, awkward Unicode (controls, U+FFFD,
//! escaped lone surrogates, invalid UTF-8), repeated lines, now and then a 100 KB record; for
//! safetensors files the JSON header's offsets, shapes and dtypes and its 8-byte length; for
//! PyTorch files little-endian lengths, offsets and counts. Inputs that read without error join
//! the pool the next ones start from. Each input is written into the reader's folder (beside
//! the other, valid files it needs) and read as the engine reads it, and three properties are
//! checked (`fuzz::check`):
//!
//! 1. no panic (each call runs in `catch_unwind`);
//! 2. an error names the file (its path or name; for folder readers, a file of the folder);
//! 3. no single allocation over 16 x the bytes read + 1 MiB (128 x for the tokenizer, whose
//!    alignments take 32 bytes per byte of normalized text). The counting `#[global_allocator]`
//!    below keeps the largest request, from any thread, while a reader runs — one reader at a
//!    time, as every test of this binary holds `fuzz::serial()`. A request over 1 GiB is not
//!    served: the input is kept and the process aborts with a message; so does a call that runs
//!    over 30 s (`EMRCLASS_FUZZ_CALL_LIMIT`).
//!
//! `fuzz/self_check.rs` shows the harness failing on fake readers that break each property.
//!
//! **Budget.** `EMRCLASS_FUZZ_SECONDS` per reader (default 1.5: about 17 s for the 11 readers,
//! in release mode on 2 cores, with the one-step training run that makes the run folder), and at
//! most `EMRCLASS_FUZZ_INPUTS` inputs per reader (default 20,000), so the test ends soon.
//!
//! **Seed, replay, keeping failures.** The seed is `EMRCLASS_FUZZ_SEED` when set, else fresh
//! (`Rng::fresh_seed`); it is printed on stderr, and with `--nocapture` so is how many inputs
//! each reader ran. Each reader's inputs follow from the seed and the reader's own results, so a
//! failure — reported with the reader, the input's number and the command that replays it,
//! `EMRCLASS_FUZZ_SEED=<seed> EMRCLASS_FUZZ_ONLY=<reader>` — comes back the same. Its input is
//! saved as `target/fuzz-failures/<reader>/<seed>-<n>/<file>`. To keep it as a regression case,
//! fix the reader and copy that `<seed>-<n>` folder to `tests/fixtures/fuzz/<reader>/<what it
//! is>/`: `kept_inputs_stay_errors` replays every case there on every run and requires an error
//! that names the file, with no panic and no giant allocation. The `regression_*` tests below
//! rebuild the bugs found so far from today's valid files, with their messages.

mod fuzz;

use std::path::{Path, PathBuf};
use std::time::Duration;

use emrclass::rng::Rng;

#[global_allocator]
static ALLOCATOR: fuzz::alloc::Counting = fuzz::alloc::Counting;

fn env<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// A fresh folder for one test's targets.
fn temp_root(test: &str) -> PathBuf {
    let root = std::env::temp_dir()
        .join(format!("emrclass-fuzz-{}", std::process::id()))
        .join(test);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

#[test]
fn every_reader_survives_fuzzing() {
    let _serial = fuzz::serial();
    let seed = env("EMRCLASS_FUZZ_SEED").unwrap_or_else(Rng::fresh_seed);
    let seconds: f64 = env("EMRCLASS_FUZZ_SECONDS").unwrap_or(1.5);
    let cap: u64 = env("EMRCLASS_FUZZ_INPUTS").unwrap_or(20_000);
    let only: Option<String> = env("EMRCLASS_FUZZ_ONLY");
    fuzz::say(&format!(
        "fuzz seed {seed} (EMRCLASS_FUZZ_SEED={seed} replays it); {seconds} s per reader"
    ));
    let root = temp_root("fuzz");
    let mut failures = Vec::new();
    for target in fuzz::targets::all(&root) {
        if only.as_deref().is_some_and(|o| o != target.name) {
            continue;
        }
        let o = fuzz::fuzz(&target, seed, Duration::from_secs_f64(seconds), cap);
        eprintln!(
            "  {:<16} {:>6} inputs ({:>5} read without error) in {:.2} s; largest allocation {} KiB (input {} KiB){}",
            o.target,
            o.inputs,
            o.read_ok,
            o.seconds,
            o.peak.0 / 1024,
            o.peak.1 / 1024,
            if o.failure.is_some() { "  FAILED" } else { "" }
        );
        failures.extend(o.failure);
    }
    assert!(
        failures.is_empty(),
        "fuzz seed {seed}: {} reader(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Every kept input under tests/fixtures/fuzz/<reader>/<case>/ still gives an error naming
/// the file, with no panic and no giant allocation.
#[test]
fn kept_inputs_stay_errors() {
    let _serial = fuzz::serial();
    let kept = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz");
    let root = temp_root("replay");
    let targets = fuzz::targets::all(&root);
    let mut problems = Vec::new();
    let mut cases = 0;
    for reader in sorted_dirs(&kept) {
        let name = reader.file_name().unwrap().to_string_lossy();
        let target = targets
            .iter()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("{}: no reader named {name}", reader.display()));
        for case in sorted_dirs(&reader) {
            cases += 1;
            problems.extend(fuzz::replay(target, &case).err());
        }
    }
    assert!(cases > 0, "no kept inputs under {}", kept.display());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    let _ = std::fs::remove_dir_all(&root);
}

fn sorted_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    out.sort();
    out
}

/// Runs `read` measured, as a fuzz case is, and requires an error whose message contains each
/// of `words`, with no panic and no single allocation over 16 MiB.
fn assert_refused<T>(read: impl FnOnce() -> emrclass::Result<T>, words: &[&str]) {
    let (outcome, largest) = fuzz::alloc::largest_request(|| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read().err()))
    });
    let error = outcome
        .expect("the reader panicked")
        .expect("the reader accepted it");
    let message = error.to_string();
    for w in words {
        assert!(message.contains(w), "`{w}` not in: {message}");
    }
    assert!(largest < 16 << 20, "an allocation of {largest} bytes");
}

/// A copy of `checkpoint/` of the trained run, its state.json edited by `edit`.
fn edited_checkpoint(name: &str, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let run = temp_root(name);
    let from = fuzz::targets::trained_run().join("checkpoint");
    let to = run.join("checkpoint");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(&from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
    let state_path = to.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    edit(&mut state);
    std::fs::write(&state_path, state.to_string()).unwrap();
    run
}

/// Found by fuzzing: config.json saying 2^31 layers made the loader list 2^35 expected tensors
/// (an abort on a 2 GiB allocation) before finding that the file has 40.
#[test]
fn regression_layer_count_beyond_the_weights_file() {
    let _serial = fuzz::serial();
    let dir = temp_root("regression-layers");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_tiny");
    std::fs::copy(
        fixture.join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture.join("config.json")).unwrap()).unwrap();
    // (2^31 layers is now refused by config.json's own bounds, below; 1,000 passes them and
    // still cannot be in a 2-layer file.)
    config["num_hidden_layers"] = 1000.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let dev = emrclass::Device::simt(emrclass::Schedule::Forward);
    assert_refused(
        || emrclass::model::bert::BertEncoder::load_dir(&dev, &dir),
        &["model.safetensors", "1000 layers"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Found by fuzzing: a run folder's state.json with an embedding_dim of 2^63 - 1 made `eval`
/// and `predict` build a table of vocabulary x 2^63 values (a capacity-overflow panic; 2^40
/// would have been a 4 TiB allocation). The spec is now checked against the tensor file.
#[test]
fn regression_model_sizes_beyond_the_tensor_file() {
    let _serial = fuzz::serial();
    let dev = emrclass::Device::simt(emrclass::Schedule::Forward);
    for (field, value) in [("embedding_dim", i64::MAX as u64), ("filters", 1 << 40)] {
        let run = edited_checkpoint("regression-sizes", |s| {
            s["run"]["model"][field] = value.into()
        });
        assert_refused(
            || emrclass::train::inference::load_run(&dev, &run, false),
            &["state.json", ".safetensors holds"],
        );
        let _ = std::fs::remove_dir_all(&run);
    }
}

/// Found by fuzzing: a state.json whose GHM state has the wrong number of bins was refused
/// with a message that named no file.
#[test]
fn regression_ghm_state_error_names_state_json() {
    let _serial = fuzz::serial();
    let dev = emrclass::Device::simt(emrclass::Schedule::Forward);
    let run = edited_checkpoint("regression-ghm", |s| s["ghm_ema"] = vec![0.5; 16].into());
    assert_refused(
        || emrclass::train::inference::load_run(&dev, &run, false),
        &["state.json", "GHM state of 16 bins"],
    );
    let _ = std::fs::remove_dir_all(&run);
}

/// Found by fuzzing: the `tokenizers` crate panics on a truncated tokenizer.json (an `expect`
/// in its decoder deserializer) and on a Precompiled normalizer it cannot read; both are now
/// errors naming the file.
#[test]
fn regression_tokenizer_json_that_tokenizers_panics_on() {
    let _serial = fuzz::serial();
    let kept =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/fuzz/tokenizer-files");
    for (case, words) in [
        ("truncated-decoder", ["tokenizer.json", "not JSON"]),
        ("precompiled-normalizer", ["tokenizer.json", "Precompiled"]),
    ] {
        let dir = kept.join(case).join("json");
        assert_refused(
            || emrclass::data::tokenizer::BertTokenizer::from_dir(&dir),
            &words,
        );
    }
}

/// A config.json whose sizes no BERT has (a damaged file) is refused when read, naming the
/// field and the file, before `plan` or a loader sizes anything from it.
#[test]
fn absurd_config_sizes_are_refused_on_reading() {
    let _serial = fuzz::serial();
    let dir = temp_root("absurd-config");
    let base: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_tiny/config.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for (field, value) in [
        ("num_hidden_layers", 1u64 << 31),
        ("vocab_size", 1 << 40),
        ("intermediate_size", 1 << 30),
        ("max_position_embeddings", 0),
    ] {
        let mut c = base.clone();
        c[field] = value.into();
        let path = dir.join("config.json");
        std::fs::write(&path, c.to_string()).unwrap();
        let e = emrclass::model::bert::BertConfig::from_file(&path)
            .err()
            .unwrap_or_else(|| panic!("{field} {value} accepted"))
            .to_string();
        assert!(e.contains("config.json") && e.contains(field), "{e}");
    }
}
