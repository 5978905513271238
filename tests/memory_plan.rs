//! Issue 7: the memory planner and the strategies it picks.
//! - recomputation leaves every gradient bit for bit unchanged; fp16 checkpoints stay within
//!   tolerance (and do change something, so the path ran);
//! - the planned peak (counted on the sizing device) equals the peak the simulator measures
//!   running the same configuration, role by role, for several configurations;
//! - the planner picks the least costly strategy that fits; BERT-base fits 4 GiB at batch 16 x
//!   seq 512 and 32 x 128; `train --memory-budget` runs the plan within the budget and gives the
//!   same run as without a budget, where the unplanned run is refused.

mod common;

use emrclass::device::Role;
use emrclass::model::bert::{BertConfig, BertEncoder, EncoderMemory};
use emrclass::model::heads::{HeadConfig, HeadKind};
use emrclass::model::loss::LossKind;
use emrclass::plan::{self, Request, Strategy};
use emrclass::rng::Rng;
use emrclass::train::optim::OptimizerKind;
use emrclass::{Device, Schedule};

fn tiny_config(layers: usize) -> BertConfig {
    BertConfig {
        vocab_size: 97,
        hidden_size: 40,
        num_hidden_layers: layers,
        num_attention_heads: 4,
        intermediate_size: 56,
        hidden_act: "gelu".into(),
        layer_norm_eps: 1e-12,
        max_position_embeddings: 32,
        type_vocab_size: 2,
        hidden_dropout_prob: 0.1,
        attention_probs_dropout_prob: 0.1,
        pad_token_id: 0,
    }
}

/// Every parameter gradient (as bits) and the outputs after one forward + backward with
/// dropout, a padded row and given output gradients.
fn gradients(dev: &Device, memory: EncoderMemory) -> (Vec<Vec<u32>>, Vec<usize>) {
    let (batch, len, layers) = (3, 11, 3);
    let mut rng = Rng::new(21);
    let mut enc = BertEncoder::new(dev, tiny_config(layers), &mut rng).unwrap();
    enc.memory = memory;
    let ids: Vec<i32> = (0..batch * len).map(|i| 1 + (i * 7 % 96) as i32).collect();
    let mask: Vec<i32> = (0..batch * len)
        .map(|i| i32::from(i / len != 1 || i % len < 6))
        .collect();
    let h = 40;
    let d_hidden: Vec<f32> = (0..batch * len * h).map(|_| rng.normal() as f32).collect();
    let d_pooled: Vec<f32> = (0..batch * h).map(|_| rng.normal() as f32).collect();
    let (hidden, pooled) = enc.forward(&ids, &mask, None, batch, Some(77)).unwrap();
    let mut out: Vec<Vec<u32>> = [hidden, pooled]
        .iter()
        .map(|b| b.to_host().unwrap().iter().map(|v| v.to_bits()).collect())
        .collect();
    let saved = enc.saved_bytes_per_layer();
    let dh = dev.upload(&d_hidden, "d hidden").unwrap();
    let dp = dev.upload(&d_pooled, "d pooled").unwrap();
    enc.backward(Some(&dh), Some(&dp)).unwrap();
    for p in &enc.params {
        out.push(
            p.grad
                .to_host()
                .unwrap()
                .iter()
                .map(|v| v.to_bits())
                .collect(),
        );
    }
    (out, saved)
}

#[test]
fn recomputation_leaves_gradients_bit_for_bit_unchanged() {
    for schedule in [Schedule::Forward, Schedule::Random(5)] {
        let dev = common::test_device(schedule);
        let (kept, kept_saved) = gradients(&dev, EncoderMemory::default());
        // A kept layer holds 8 [rows, H] tensors and one [rows, I] (the FFN's input; its
        // activation is made again in backward), the attention statistics [B, heads, L] and
        // two LayerNorms' mean and rstd [rows]. Never the [B, heads, L, L] probabilities.
        let (rows, h, i) = (33, 40, 56);
        let per_layer = 4 * (8 * rows * h + rows * i + 3 * 4 * 11 + 4 * rows);
        assert_eq!(kept_saved, vec![per_layer; 3]);
        for k in 1..=3 {
            let memory = EncoderMemory {
                recompute_layers: k,
                fp16_checkpoints: false,
                ..EncoderMemory::default()
            };
            let (again, saved) = gradients(&dev, memory);
            assert_eq!(again.len(), kept.len());
            for (n, (a, b)) in again.iter().zip(&kept).enumerate() {
                assert!(a == b, "recompute {k}: tensor {n} differs ({schedule:?})");
            }
            // Recomputed layers keep only their input.
            let expect: Vec<usize> = (0..3)
                .map(|l| if l < k { 4 * rows * h } else { per_layer })
                .collect();
            assert_eq!(saved, expect);
        }
    }
}

#[test]
fn fp16_checkpoints_stay_within_tolerance() {
    let memory = EncoderMemory {
        recompute_layers: 3,
        fp16_checkpoints: true,
        ..EncoderMemory::default()
    };
    fp16_storage_stays_within_tolerance(memory, vec![2 * 33 * 40; 3], 2e-2);
}

/// `--saved-activations fp16` (issue 17): every kept tensor in fp16 — the 8 [rows, H] and the
/// [rows, I] ones at 2 bytes a value, the attention and LayerNorm statistics still fp32 — and
/// the gradients within 1e-2 of the largest (measured: ~3e-3; fp16 keeps 11 bits).
#[test]
fn fp16_saved_activations_stay_within_tolerance() {
    let memory = EncoderMemory {
        fp16_activations: true,
        ..EncoderMemory::default()
    };
    let (rows, h, i) = (33, 40, 56);
    let per_layer = 2 * (8 * rows * h + rows * i) + 4 * (3 * 4 * 11 + 4 * rows);
    fp16_storage_stays_within_tolerance(memory, vec![per_layer; 3], 1e-2);
}

/// Gradients with some saved tensors in fp16 against those of a run keeping fp32: each tensor
/// within `tolerance` of its largest value (at least 1e-3 of the run's largest gradient: the
/// attention key bias's true gradient is 0, so any run's is rounding noise, fp16's larger),
/// something different (the fp16 path ran), and the bytes saved per layer as expected.
fn fp16_storage_stays_within_tolerance(
    memory: EncoderMemory,
    saved_bytes: Vec<usize>,
    tolerance: f64,
) {
    let dev = common::test_device(Schedule::Reverse);
    let (kept, _) = gradients(&dev, EncoderMemory::default());
    let (half, saved) = gradients(&dev, memory);
    assert_eq!(saved, saved_bytes, "fp16: 2 bytes a value");
    let mut differs = false;
    let largest = |t: &[u32]| {
        t.iter()
            .fold(0.0f64, |m, &x| m.max((f32::from_bits(x) as f64).abs()))
    };
    let floor = 1e-3 * kept[2..].iter().map(|t| largest(t)).fold(0.0, f64::max);
    for (n, (a, b)) in half.iter().zip(&kept).enumerate() {
        let a: Vec<f64> = a.iter().map(|&x| f32::from_bits(x) as f64).collect();
        let b: Vec<f64> = b.iter().map(|&x| f32::from_bits(x) as f64).collect();
        let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(floor);
        let worst = a
            .iter()
            .zip(&b)
            .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= tolerance * scale,
            "tensor {n}: fp16 storage off by {worst} (scale {scale})"
        );
        differs |= a != b;
    }
    assert!(
        differs,
        "fp16 rounding must show somewhere: did the fp16 path run?"
    );
}

fn tiny_request(head: HeadKind, loss: LossKind, batch: usize, seq: usize) -> Request {
    let config = tiny_config(3);
    let mut head = HeadConfig::new(head, config.hidden_size, 5);
    head.textcnn_filters = 6;
    head.textcnn_widths = vec![2, 3];
    head.rnn_hidden = 7;
    Request {
        encoder: config,
        head,
        loss,
        batch,
        seq,
        budget: 1 << 40,
        reserve: 0,
        frozen: false,
        optimizer: Default::default(),
        fp16_activations: false,
        windows: 1,
        multiprocessors: plan::TARGET_MULTIPROCESSORS,
        masked_lm: None,
    }
}

#[test]
fn planned_peak_equals_the_simulators_measured_peak() {
    let memory = |k, fp16| EncoderMemory {
        recompute_layers: k,
        fp16_checkpoints: fp16,
        ..EncoderMemory::default()
    };
    let half_weights = EncoderMemory {
        fp16_weights: true,
        ..EncoderMemory::default()
    };
    let half_activations = EncoderMemory {
        fp16_activations: true,
        ..EncoderMemory::default()
    };
    // head, loss, batch, seq, encoder memory, micro-batches, frozen
    #[rustfmt::skip]
    let cases = [
        (HeadKind::Paper, LossKind::GhmCs, 3, 9, memory(0, false), 1, false),
        (HeadKind::TextCnn, LossKind::Focal, 4, 12, memory(2, false), 1, false),
        (HeadKind::BiGru, LossKind::WeightedCrossEntropy, 2, 7, memory(3, true), 1, false),
        (HeadKind::Paper, LossKind::CrossEntropy, 4, 8, memory(1, false), 2, false),
        (HeadKind::Paper, LossKind::GhmC, 3, 10, memory(0, false), 1, true),
        (HeadKind::TextCnn, LossKind::GhmCs, 4, 6, half_weights, 2, true),
        (HeadKind::Paper, LossKind::GhmCs, 3, 9, half_activations, 1, false),
        (HeadKind::BiGru, LossKind::Focal, 4, 8, EncoderMemory { recompute_layers: 1, ..half_activations }, 2, false),
    ];
    for (n, (head, loss, batch, seq, mem, accumulate, frozen)) in cases.into_iter().enumerate() {
        let dev = common::test_device(if n % 2 == 0 {
            Schedule::Forward
        } else {
            Schedule::Reverse
        });
        // Planned for the device's SM count (a GPU's own: GEMM plans depend on it).
        let req = Request {
            frozen,
            multiprocessors: dev.multiprocessors(),
            ..tiny_request(head, loss, batch, seq)
        };
        let strategy = Strategy {
            memory: mem,
            micro_batch: batch / accumulate,
            accumulate,
        };
        let planned = plan::measure(&req, &strategy).unwrap();
        let measured = plan::run_steps(&dev, &req, &strategy).unwrap();
        assert_eq!(planned.peak, measured.peak, "case {n}: {strategy:?}");
        assert_eq!(planned.at_peak, measured.at_peak, "case {n}: by role");
        assert_eq!(
            planned.saved_per_layer, measured.saved_per_layer,
            "case {n}"
        );
        assert_eq!(measured.peak, dev.memory().peak());
        assert!(measured.at_peak[Role::Parameters.index()] > 0);
        // Fine-tuning peaks in backward with the AdamW moments live; a frozen run peaks in its
        // feature pass, before the head's optimizer exists.
        let moments = measured.at_peak[Role::OptimizerState.index()];
        assert_eq!(moments == 0, frozen, "case {n}");
        let sum: usize = measured.at_peak.iter().sum();
        assert_eq!(sum, measured.peak, "case {n}: the roles add up to the peak");
    }
}

#[test]
fn a_card_with_many_sms_splits_its_gemms_and_the_plan_counts_the_workspace() {
    // 8 x 32 tokens: the weight gradients sum over 256 rows, which a 132-SM card splits along
    // k (GemmPlan::for_shape; so does a 6-SM one at these tiny widths, never at BERT-base's)
    // while a 1-SM one never splits. The split's workspace is memory, so the plan for the big
    // card must run the same splits.
    // (On CUDA the test device keeps its own count, and the plan is for that.)
    let dev = common::test_device(Schedule::Reverse).with_multiprocessors(132);
    let req = Request {
        multiprocessors: dev.multiprocessors(),
        ..tiny_request(HeadKind::Paper, LossKind::CrossEntropy, 8, 32)
    };
    let strategy = Strategy::whole(8);
    let planned = plan::measure(&req, &strategy).unwrap();
    let measured = plan::run_steps(&dev, &req, &strategy).unwrap();
    assert_eq!(planned.peak, measured.peak);
    assert_eq!(planned.at_peak, measured.at_peak, "by role");
    // On the simulator standing in for both cards: the splits ran (one more launch each), and
    // their workspace reached the peak.
    let many = Request {
        multiprocessors: 132,
        ..req.clone()
    };
    let few = Request {
        multiprocessors: 1,
        ..req
    };
    let big = Device::simt(Schedule::Reverse).with_multiprocessors(132);
    let split = plan::run_steps(&big, &many, &strategy).unwrap();
    let small = Device::simt(Schedule::Reverse).with_multiprocessors(1);
    let unsplit = plan::run_steps(&small, &few, &strategy).unwrap();
    assert!(
        big.launch_count() > small.launch_count(),
        "{} launches split, {} unsplit",
        big.launch_count(),
        small.launch_count()
    );
    assert!(
        split.peak > unsplit.peak,
        "{} bytes split, {} unsplit",
        split.peak,
        unsplit.peak
    );
    assert_eq!(plan::measure(&many, &strategy).unwrap().peak, split.peak);
    assert_eq!(plan::measure(&few, &strategy).unwrap().peak, unsplit.peak);
}

#[test]
fn the_planner_picks_the_least_costly_strategy_that_fits() {
    // Activations large against the parameters, so that micro-batches can pay for the copy of
    // the gradients that accumulation needs.
    let req = tiny_request(HeadKind::Paper, LossKind::GhmCs, 8, 30);
    let peak = |k: usize, fp16: bool, micro: usize| {
        let st = Strategy {
            memory: EncoderMemory {
                recompute_layers: k,
                fp16_checkpoints: fp16,
                ..EncoderMemory::default()
            },
            micro_batch: micro,
            accumulate: 8 / micro,
        };
        plan::measure(&req, &st).unwrap().peak
    };
    let peaks: Vec<usize> = (0..=3).map(|k| peak(k, false, 8)).collect();
    // Each recomputed layer saves a layer's activations, except the top one: its backward
    // comes first, when its activations are made again anyway. What it does save is what the
    // top layer's forward holds besides them (here 53,056 bytes against 330,240 a layer; since
    // the GEMM epilogue fusion that includes one rows x H buffer, 38,400 bytes, that the
    // recomputation no longer needs).
    assert!(peaks[1] < peaks[0] && peaks[2] < peaks[1], "{peaks:?}");
    assert!(
        peaks[3] <= peaks[2] && (peaks[2] - peaks[3]) * 6 < peaks[1] - peaks[2],
        "{peaks:?}"
    );
    // Room for exactly the peak of recomputing 2 layers: 2 is chosen.
    let fit = |usable: usize| {
        plan::plan(&Request {
            budget: usable,
            ..req.clone()
        })
        .unwrap()
    };
    let p = fit(peaks[2]);
    assert!(p.fits);
    assert_eq!(p.strategy.memory.recompute_layers, 2);
    assert!(!p.strategy.memory.fp16_checkpoints && p.strategy.accumulate == 1);
    assert_eq!(p.measured.peak, peaks[2]);
    // Everything kept when it fits.
    let p = fit(peaks[0]);
    assert_eq!(p.strategy, Strategy::whole(8));
    assert_eq!(p.tried.len(), 1);
    // Below recomputing everything: fp16 checkpoints.
    let p = fit(peak(3, true, 8));
    assert!(p.fits && p.strategy.memory.fp16_checkpoints);
    // Below that: micro-batches, the largest divisor of the batch that fits in some way (the
    // accumulated gradient sums cost a copy of the gradients, so the largest may not).
    let budget = peak(3, true, 8) - 1;
    let p = fit(budget);
    assert!(p.fits, "{:?}", p.tried);
    let micro = p.strategy.micro_batch;
    assert!(micro < 8 && micro * p.strategy.accumulate == 8);
    for larger in [2, 4, 8].into_iter().filter(|&d| d > micro) {
        assert!(
            peak(3, true, larger) > budget,
            "micro-batches of {larger} fit"
        );
    }
    assert!(p.measured.peak <= budget);
    // Not even one row: refused, and the refusal is the last strategy tried.
    let p = fit(1000);
    assert!(!p.fits);
    assert_eq!(p.strategy.micro_batch, 1);
    assert!(p.measured.peak > 1000);
}

#[test]
fn bert_base_fits_4_gib_at_16_x_512_and_32_x_128() {
    let config = BertConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/mc-bert/config.json"),
    )
    .unwrap();
    let request = |batch, seq| Request {
        head: HeadConfig::new(HeadKind::Paper, config.hidden_size, 44),
        encoder: config.clone(),
        loss: LossKind::GhmCs,
        batch,
        seq,
        budget: 4 << 30,
        reserve: plan::DEFAULT_RESERVE,
        frozen: false,
        optimizer: Default::default(),
        fp16_activations: false,
        windows: 1,
        multiprocessors: plan::TARGET_MULTIPROCESSORS,
        masked_lm: None,
    };
    for (batch, seq) in [(16, 512), (32, 128)] {
        let p = plan::plan(&request(batch, seq)).unwrap();
        assert!(p.fits, "{batch} x {seq}: {:?}", p.tried);
        assert!(p.measured.peak <= (4 << 30) - plan::DEFAULT_RESERVE);
        assert_eq!(p.strategy.accumulate, 1, "one pass, no micro-batches");
        if seq == 512 {
            // Keeping everything would not fit: the plan recomputes some layers, not all.
            assert!(p.tried[0].1 > (4 << 30) - plan::DEFAULT_RESERVE);
            let k = p.strategy.memory.recompute_layers;
            assert!(k > 0 && k < 12, "{k}");
        }
        // Parameters, gradients and AdamW moments of BERT-base + head: about 1.5 GiB.
        let fixed: usize = [Role::Parameters, Role::Gradients, Role::OptimizerState]
            .iter()
            .map(|r| p.measured.at_peak[r.index()])
            .sum();
        let params = 102_267_648 + 44 * 64; // encoder alone is 102.3 M; the head adds more
        assert!(fixed > 16 * params && fixed < 17 * params, "{fixed}");
    }
    // Issue 17's goal: with the kept activations in fp16, 16 x 512 fits without recomputation,
    // with fp32 or 8-bit AdamW moments; and the simulator would measure the same peak (the
    // planned == measured test above runs fp16 activations at small sizes).
    for optimizer in [OptimizerKind::AdamW, OptimizerKind::AdamW8bit] {
        let base = request(16, 512);
        let p = plan::plan(&Request {
            // The head `train` and `emrclass plan` build by default: 64 filters, 64 hidden.
            head: HeadConfig {
                textcnn_filters: 64,
                rnn_hidden: 64,
                ..base.head.clone()
            },
            optimizer,
            fp16_activations: true,
            ..base
        })
        .unwrap();
        assert!(p.fits, "{optimizer:?}: {:?}", p.tried);
        assert_eq!(p.strategy.memory.recompute_layers, 0, "{optimizer:?}");
        assert_eq!(p.strategy.accumulate, 1);
        assert!(p.strategy.memory.fp16_activations);
    }
}

#[test]
fn plan_command_reports_and_refuses() {
    let exe = env!("CARGO_BIN_EXE_emrclass");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/mc-bert");
    let json = std::env::temp_dir().join(format!("emrclass-plan-{}.json", std::process::id()));
    let out = std::process::Command::new(exe)
        .args(["plan", "--model"])
        .arg(&model)
        .args([
            "--head", "paper", "--batch", "16", "--seq", "512", "--budget", "4GiB",
        ])
        .args(["--no-table", "--json"])
        .arg(&json)
        .output()
        .unwrap();
    let text = stdout_of_success(&out);
    for want in [
        "parameters",
        "optimizer state",
        "activations",
        "kernel workspace",
        "recompute",
        "fits: peak",
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["fits"], true);
    assert!(v["peak"].as_u64().unwrap() <= (4 << 30) - plan::DEFAULT_RESERVE as u64);
    let out = std::process::Command::new(exe)
        .args(["plan", "--model"])
        .arg(model.join("config.json"))
        .args([
            "--batch",
            "16",
            "--seq",
            "512",
            "--budget",
            "1GiB",
            "--no-table",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(
        text.contains("does not fit")
            && text.contains("parameters, gradients and optimizer state alone"),
        "{text}"
    );
    // --windows: records of several windows (train --long-text chunks) plan every window.
    let windowed = |windows: &str| {
        let out = std::process::Command::new(exe)
            .args(["plan", "--model"])
            .arg(&model)
            .args(["--batch", "4", "--seq", "128", "--windows", windows])
            .args(["--budget", "64GiB", "--no-table", "--json"])
            .arg(&json)
            .output()
            .unwrap();
        let text = stdout_of_success(&out);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
        (text, v)
    };
    let (text, four) = windowed("4");
    assert!(
        text.contains("batch 4 records x 4 windows x seq 128"),
        "{text}"
    );
    assert_eq!(four["request"]["windows"], 4);
    let (_, one) = windowed("1");
    let activations = |v: &serde_json::Value| v["peak"].as_u64().unwrap();
    assert!(
        activations(&four) > activations(&one) + (100 << 20),
        "{four} vs {one}"
    );
    let out = std::process::Command::new(exe)
        .args(["plan", "--model", "/nonexistent/bert"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("/nonexistent/bert: no such file or folder"),
        "{err}"
    );
}

/// `options("free")` run without a budget (everything kept), then `options("planned")` with the
/// engine's share one byte under that run's peak; asserts the planned run stayed within it.
/// Returns both runs' epochs, the planned run's memory-plan.json and the engine's share.
fn run_one_byte_under_the_unplanned_peak(
    options: &dyn Fn(&str) -> emrclass::options::TrainOptions,
) -> (
    Vec<emrclass::train::trainer::EpochLog>,
    Vec<emrclass::train::trainer::EpochLog>,
    serde_json::Value,
    usize,
) {
    use emrclass::jobs::train::run;
    use emrclass::options::MemoryBudget;
    let dev = common::test_device(Schedule::Forward);
    let free = run(&dev, &options("free")).unwrap();
    let usable = dev.memory().peak() - 1;
    let reserve = 1 << 20;
    let dev = common::test_device(Schedule::Forward).with_budget(usable);
    let mut o = options("planned");
    o.memory = Some(MemoryBudget {
        budget: usable + reserve,
        reserve,
    });
    let planned = run(&dev, &o).unwrap();
    assert!(dev.memory().peak() <= usable);
    // The run folder records the plan it ran.
    let record =
        serde_json::from_str(&std::fs::read_to_string(o.out.join("memory-plan.json")).unwrap())
            .unwrap();
    (free, planned, record, usable)
}

#[test]
fn train_with_a_memory_budget_runs_the_plan_within_it() {
    use emrclass::jobs::train::run;
    use emrclass::options::TrainOptions;
    let dir = common::tiny_bert_dir("plan-train");
    let options = |name: &str| {
        let mut o = TrainOptions {
            synthetic_scale: 0.04,
            out: std::env::temp_dir().join(format!("emrclass-plan-{name}-{}", std::process::id())),
            quiet: true,
            encoder: Some(dir.clone()),
            head: HeadKind::Paper,
            max_len: 24,
            ..TrainOptions::default()
        };
        o.settings.epochs = 1;
        o.settings.lr = 1e-3;
        let _ = std::fs::remove_dir_all(&o.out);
        o
    };
    // One byte less for the engine than the unplanned run's peak: the plan recomputes, the run
    // stays within the budget and is the same run, bit for bit.
    let (free, planned, record, usable) = run_one_byte_under_the_unplanned_peak(&options);
    let reserve = 1 << 20;
    assert_eq!(record["fits"], true);
    assert!(record["strategy"]["recompute_layers"].as_u64().unwrap() >= 1);
    assert!(record["peak"].as_u64().unwrap() <= usable as u64);
    assert_eq!(free.len(), planned.len());
    for (a, b) in free.iter().zip(&planned) {
        assert_eq!(a.mean_loss.to_bits(), b.mean_loss.to_bits());
        assert_eq!(a.dev, b.dev);
    }
    // The same budget without the plan: the allocator refuses, naming what it could not fit.
    let dev = common::test_device(Schedule::Forward).with_budget(usable);
    let e = run(&dev, &options("refused"))
        .err()
        .expect("over the budget");
    assert!(e.to_string().contains("budget"), "{e}");
    // The command line: --memory-budget less --context-reserve is the engine's share, and
    // `train` says which plan it runs.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_emrclass"))
        .args(["--device", "simt", "--seed", "1", "--memory-budget"])
        .arg(format!("{}", usable + reserve))
        .args(["--context-reserve", "1MiB", "train", "--encoder"])
        .arg(&dir)
        .args([
            "--max-len",
            "24",
            "--synthetic-scale",
            "0.04",
            "--epochs",
            "1",
            "--quiet",
        ])
        .args(["--lr", "1e-3", "--out"])
        .arg(options("cli").out)
        .output()
        .unwrap();
    let text = stdout_of_success(&out);
    assert!(text.contains("memory plan: recompute"), "{text}");
}

/// --long-text chunks: a micro-batch of b records runs up to b x --max-chunks windows, and the
/// plan sizes it so. A budget one byte under the unplanned run's peak: the planned run fits it
/// (a plan of one window per record would keep everything and overrun).
#[test]
fn train_plans_for_every_window_of_a_chunked_record() {
    use emrclass::data::batching::LongText;
    use emrclass::options::TrainOptions;
    let dir = common::tiny_bert_dir("plan-chunks");
    let options = |name: &str| {
        let mut o = TrainOptions {
            synthetic_scale: 0.03,
            synthetic_long: true,
            out: std::env::temp_dir().join(format!(
                "emrclass-plan-chunks-{name}-{}",
                std::process::id()
            )),
            quiet: true,
            encoder: Some(dir.clone()),
            head: HeadKind::TextCnn,
            max_len: 24,
            long_text: LongText::Chunks { max: 3 },
            ..TrainOptions::default()
        };
        o.settings.epochs = 1;
        o.settings.batch_size = 4;
        o.settings.lr = 1e-3;
        let _ = std::fs::remove_dir_all(&o.out);
        o
    };
    let (free, planned, record, _) = run_one_byte_under_the_unplanned_peak(&options);
    assert_eq!(record["request"]["windows"], 3, "{record}");
    assert_eq!(free[0].dev, planned[0].dev);
}

#[test]
fn a_frozen_encoder_in_fp16_halves_its_weights_within_tolerance() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/bert_tiny");
    let dev = common::test_device(Schedule::Reverse);
    let (batch, len) = (2, 13);
    let ids: Vec<i32> = (0..batch * len).map(|i| 1 + (i * 5 % 90) as i32).collect();
    let mask: Vec<i32> = (0..batch * len).map(|i| i32::from(i < 22)).collect();
    let params = |d: &Device| d.memory().live_by_role()[Role::Parameters.index()];
    let mut enc = BertEncoder::load_frozen_dir(&dev, &dir).unwrap();
    let fp32_bytes = params(&dev);
    let outputs = |enc: &mut BertEncoder| -> Vec<Vec<f32>> {
        let (h, p) = enc.infer(&ids, &mask, None, batch).unwrap();
        vec![h.to_host().unwrap(), p.to_host().unwrap()]
    };
    let full = outputs(&mut enc);
    enc.store_weights_fp16().unwrap();
    assert_eq!(2 * params(&dev), fp32_bytes, "fp16: half the bytes");
    let half = outputs(&mut enc);
    assert_eq!(
        2 * params(&dev),
        fp32_bytes,
        "the fp32 copies are gone after the forward"
    );
    let mut differs = false;
    for (a, b) in half.iter().zip(&full) {
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(
            worst <= 1e-2 * scale,
            "fp16 weights off by {worst} (scale {scale})"
        );
        differs |= a != b;
    }
    assert!(differs, "fp16 rounding must show: did the fp16 path run?");
    // Forward only: backward is refused, and a trainable encoder keeps fp32.
    enc.forward(&ids, &mask, None, batch, Some(1)).unwrap();
    let e = enc.backward(None, None).expect_err("refused").to_string();
    assert!(e.contains("forward only"), "{e}");
    let mut trainable = BertEncoder::load_dir(&dev, &dir).unwrap();
    let e = trainable
        .store_weights_fp16()
        .expect_err("refused")
        .to_string();
    assert!(e.contains("frozen"), "{e}");
}

#[test]
fn a_frozen_plan_turns_to_fp16_weights_before_micro_batches() {
    let req = Request {
        frozen: true,
        ..tiny_request(HeadKind::Cls, LossKind::CrossEntropy, 2, 4)
    };
    let whole = plan::measure(&req, &Strategy::whole(2)).unwrap().peak;
    let half = Strategy {
        memory: EncoderMemory {
            fp16_weights: true,
            ..EncoderMemory::default()
        },
        ..Strategy::whole(2)
    };
    let half_peak = plan::measure(&req, &half).unwrap().peak;
    assert!(half_peak < whole);
    let p = plan::plan(&Request {
        budget: half_peak,
        ..req.clone()
    })
    .unwrap();
    assert!(p.fits);
    assert_eq!(p.strategy, half);
}

#[test]
fn micro_batch_gradients_add_up_in_place() {
    let dev = common::test_device(Schedule::Reverse);
    let mut enc = BertEncoder::new(&dev, tiny_config(2), &mut Rng::new(4)).unwrap();
    let (batch, len, h) = (2, 7, 40);
    let mut rng = Rng::new(8);
    let mut micro = || {
        let ids: Vec<i32> = (0..batch * len)
            .map(|_| 1 + (rng.next_u64() % 96) as i32)
            .collect();
        let d: Vec<f32> = (0..batch * len * h).map(|_| rng.normal() as f32).collect();
        let p: Vec<f32> = (0..batch * h).map(|_| rng.normal() as f32).collect();
        (ids, d, p)
    };
    let (a, b) = (micro(), micro());
    let mask = vec![1; batch * len];
    let step = |enc: &mut BertEncoder, (ids, d, p): &(Vec<i32>, Vec<f32>, Vec<f32>), seed| {
        enc.forward(ids, &mask, None, batch, Some(seed)).unwrap();
        let (d, p) = (dev.upload(d, "d").unwrap(), dev.upload(p, "p").unwrap());
        enc.backward(Some(&d), Some(&p)).unwrap();
    };
    let grads = |enc: &BertEncoder| -> Vec<Vec<f32>> {
        enc.params
            .iter()
            .map(|p| p.grad.to_host().unwrap())
            .collect()
    };
    step(&mut enc, &a, 1);
    let ga = grads(&enc);
    step(&mut enc, &b, 2);
    let gb = grads(&enc);
    step(&mut enc, &a, 1);
    let gradient_bytes = dev.memory().live_by_role()[Role::Gradients.index()];
    {
        let _sum = dev.accumulate_gradients();
        step(&mut enc, &b, 2);
    }
    assert_eq!(
        dev.memory().live_by_role()[Role::Gradients.index()],
        gradient_bytes,
        "no second copy of the gradients"
    );
    for (n, got) in grads(&enc).iter().enumerate() {
        let want: Vec<u32> = ga[n]
            .iter()
            .zip(&gb[n])
            .map(|(x, y)| (x + y).to_bits())
            .collect();
        let got: Vec<u32> = got.iter().map(|v| v.to_bits()).collect();
        assert!(
            got == want,
            "{}: not the sum of the two",
            enc.params[n].name
        );
    }
}

/// A finished command's standard output, after asserting that it succeeded (else both streams).
fn stdout_of_success(out: &std::process::Output) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}{err}");
    text
}

/// 8-bit AdamW in the plan (issue 17): with `adamw8bit` a tensor of 4096+ elements that is not
/// an embedding table keeps 2 bytes per element and 8 per 2048-element block (two fp32 block
/// maxima), every other tensor 8 bytes per element, plus the two 256-value maps; with
/// `adamw8bit-all` the embedding tables too. The optimizer state at the peak is exactly that,
/// and the simulator measures the same peak, role by role.
#[test]
fn eight_bit_moments_are_planned_exactly_and_measured_alike() {
    use emrclass::model::bert::parameter_shapes;
    use emrclass::model::heads::Head;
    let encoder = BertConfig {
        hidden_size: 64,
        intermediate_size: 128,
        ..tiny_config(2)
    };
    for (n, kind) in [OptimizerKind::AdamW8bit, OptimizerKind::AdamW8bitAll]
        .into_iter()
        .enumerate()
    {
        let base = tiny_request(HeadKind::Paper, LossKind::GhmCs, 3, 9);
        let req = Request {
            head: HeadConfig {
                input: encoder.hidden_size,
                textcnn_filters: 16,
                ..base.head.clone()
            },
            encoder: encoder.clone(),
            optimizer: kind,
            ..base
        };
        let head = Head::new(&Device::sizing(), req.head.clone(), &mut Rng::new(1)).unwrap();
        let tensors: Vec<(String, usize)> = parameter_shapes(&req.encoder)
            .into_iter()
            .chain(head.shapes())
            .map(|(name, shape)| (name, shape.iter().product()))
            .collect();
        let mut quantized = 0;
        let want: usize = tensors
            .iter()
            .map(|(name, e)| {
                let eight = *e >= 4096
                    && (kind == OptimizerKind::AdamW8bitAll || !name.contains("embeddings"));
                quantized += eight as usize;
                if eight {
                    2 * e + 8 * e.div_ceil(2048)
                } else {
                    8 * e
                }
            })
            .sum::<usize>()
            + 2 * 256 * 4;
        assert!(quantized >= 4, "the case must quantise several tensors");
        let dev = common::test_device(if n == 0 {
            Schedule::Forward
        } else {
            Schedule::Random(3)
        });
        let req = Request {
            multiprocessors: dev.multiprocessors(),
            ..req
        };
        let strategy = Strategy::whole(3);
        let planned = plan::measure(&req, &strategy).unwrap();
        assert_eq!(
            planned.at_peak[Role::OptimizerState.index()],
            want,
            "{kind:?}: optimizer state at the peak"
        );
        let measured = plan::run_steps(&dev, &req, &strategy).unwrap();
        assert_eq!(planned.peak, measured.peak, "{kind:?}");
        assert_eq!(planned.at_peak, measured.at_peak, "{kind:?}: by role");
    }
}

/// Issue 27: pretraining's plan (BERT + the MLM head, as `pretrain` steps it) counts what the
/// simulator allocates, byte for byte and role by role, under each strategy: recomputation,
/// fp16 checkpoints and activations, micro-batches, 8-bit moments.
#[test]
fn pretraining_is_planned_as_the_simulator_allocates() {
    let memory = |k, fp16_checkpoints, fp16_activations| EncoderMemory {
        recompute_layers: k,
        fp16_checkpoints,
        fp16_activations,
        fp16_weights: false,
    };
    // batch, seq, encoder memory, micro-batches, optimizer
    #[rustfmt::skip]
    let cases = [
        (3, 9, memory(0, false, false), 1, OptimizerKind::AdamW),
        (4, 12, memory(2, false, false), 2, OptimizerKind::AdamW),
        (2, 7, memory(3, true, false), 1, OptimizerKind::AdamW8bitAll),
        (4, 8, memory(1, false, true), 2, OptimizerKind::AdamW8bit),
    ];
    for (n, (batch, seq, mem, accumulate, optimizer)) in cases.into_iter().enumerate() {
        let schedule = [Schedule::Forward, Schedule::Reverse][n % 2];
        let dev = common::test_device(schedule);
        let req = Request {
            multiprocessors: dev.multiprocessors(),
            optimizer,
            fp16_activations: mem.fp16_activations,
            ..Request::pretraining(tiny_config(3), batch, seq, 0.15)
        };
        let strategy = Strategy {
            memory: mem,
            micro_batch: batch / accumulate,
            accumulate,
        };
        let planned = plan::measure(&req, &strategy).unwrap();
        let measured = plan::run_steps(&dev, &req, &strategy).unwrap();
        assert_eq!(planned.peak, measured.peak, "case {n}: {strategy:?}");
        assert_eq!(planned.at_peak, measured.at_peak, "case {n}: by role");
        assert_eq!(
            planned.saved_per_layer, measured.saved_per_layer,
            "case {n}"
        );
        assert_eq!(measured.peak, dev.memory().peak());
        assert!(
            measured.at_peak[Role::OptimizerState.index()] > 0,
            "case {n}"
        );
        let sum: usize = measured.at_peak.iter().sum();
        assert_eq!(sum, measured.peak, "case {n}: the roles add up to the peak");
    }
}

/// Issue 27: BERT-base + MLM head at 16 x 512 (MC-BERT's shape, 15 % masked) is planned into a
/// 4 GiB card: everything kept would not fit, so some layers are recomputed; with fp16 saved
/// activations and 8-bit moments fewer are.
#[test]
fn bert_base_pretraining_at_16_x_512_is_planned_into_4_gib() {
    let config = BertConfig::from_file(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/mc-bert/config.json"),
    )
    .unwrap();
    let usable = (4 << 30) - plan::DEFAULT_RESERVE;
    let fp32 = plan::plan(&Request::pretraining(config.clone(), 16, 512, 0.15)).unwrap();
    assert!(fp32.fits, "{:?}", fp32.tried);
    assert!(fp32.measured.peak <= usable);
    assert_eq!(fp32.strategy.accumulate, 1, "one pass, no micro-batches");
    assert!(
        fp32.tried[0].1 > usable,
        "everything kept fits: no plan needed?"
    );
    let k = fp32.strategy.memory.recompute_layers;
    assert!(k > 0 && k < 12, "{k}");
    let lean = plan::plan(&Request {
        optimizer: OptimizerKind::AdamW8bit,
        fp16_activations: true,
        ..Request::pretraining(config, 16, 512, 0.15)
    })
    .unwrap();
    assert!(lean.fits);
    assert!(
        lean.strategy.memory.recompute_layers < k,
        "{:?}",
        lean.strategy
    );
    println!(
        "BERT-base + MLM head, 16 x 512: fp32 {:.0} MiB recomputing {k} of 12 layers; fp16 \
         activations + adamw8bit {:.0} MiB recomputing {} (of {:.0} MiB for the engine)",
        fp32.measured.peak as f64 / 1048576.0,
        lean.measured.peak as f64 / 1048576.0,
        lean.strategy.memory.recompute_layers,
        usable as f64 / 1048576.0
    );
}
