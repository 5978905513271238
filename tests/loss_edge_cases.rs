//! The losses at their edges: logits of +-1e4 and p_y = 1 exactly, a batch of one, K = 2 and
//! K = 1000, a class absent from the batch, every sample in one GHM bin, GHM state saved and
//! restored, GHM-CS warm-up, and the named errors for bad labels and configurations.

mod common;

use emrclass::model::imbalance::class_weights_from_counts;
use emrclass::model::loss::{ClassificationLoss, LossConfig, LossKind};
use emrclass::reference::loss::layer_step;
use emrclass::{Device, Schedule};

const KINDS: [LossKind; 5] = [
    LossKind::CrossEntropy,
    LossKind::WeightedCrossEntropy,
    LossKind::Focal,
    LossKind::GhmC,
    LossKind::GhmCs,
];

fn config(kind: LossKind, k: usize) -> LossConfig {
    let mut c = LossConfig::new(kind);
    let counts: Vec<usize> = (0..k).map(|i| 1 + 97 * (i % 5)).collect();
    c.class_weights = Some(class_weights_from_counts(&counts, 0.5).unwrap());
    c.similarity = Some(
        (0..k * k)
            .map(|i| ((i * 7919) % 13) as f64 / 13.0)
            .collect(),
    );
    c
}

fn run(layer: &mut ClassificationLoss, dev: &Device, z: &[f32], y: &[i32]) -> (f32, Vec<f32>) {
    let zb = dev.upload(z, "logits").unwrap();
    let mut g = dev.upload(&vec![f32::NAN; z.len()], "grad").unwrap();
    let out = layer.forward_backward(&zb, y, &mut g).unwrap();
    (out.loss, g.to_host().unwrap())
}

#[test]
fn huge_logits_and_certain_predictions_stay_finite_and_right() {
    let dev = common::test_device(Schedule::Forward);
    // Row 0: p_y = 1 exactly in fp32. Row 1: p_y = 0. Row 2: ties at the max. Row 3: K = 3 uniform.
    let z = [
        1e4f32, -1e4, 0.0, -1e4, 1e4, 1e4, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0,
    ];
    let y = [0, 0, 2, 1];
    for kind in KINDS {
        let cfg = config(kind, 3);
        let mut layer = ClassificationLoss::new(&dev, 3, cfg.clone()).unwrap();
        let (loss, grad) = run(&mut layer, &dev, &z, &y);
        assert!(
            loss.is_finite() && grad.iter().all(|g| g.is_finite()),
            "{kind:?}: {loss} {grad:?}"
        );
        let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
        let (want_loss, want_grad) = layer_step(&cfg, 3, &mut vec![0.0; cfg.ghm_bins], 1, &z64, &y);
        assert!(
            (loss as f64 - want_loss).abs() <= 1e-5 * want_loss.abs(),
            "{kind:?}: {loss} vs {want_loss}"
        );
        for (g, w) in grad.iter().zip(&want_grad) {
            assert!(
                (*g as f64 - w).abs() <= 1e-6,
                "{kind:?}: {grad:?} vs {want_grad:?}"
            );
        }
        // Row 0 is certain and right: with one-hot targets its gradient is exactly zero.
        if kind != LossKind::GhmCs {
            assert_eq!(&grad[0..3], &[0.0, 0.0, 0.0], "{kind:?}");
        }
    }
}

#[test]
fn batch_of_one_two_classes_and_a_thousand() {
    let dev = common::test_device(Schedule::Reverse);
    for (k, n) in [(2usize, 1usize), (1000, 1), (1000, 3)] {
        let z: Vec<f32> = (0..n * k)
            .map(|i| ((i * 37) % 101) as f32 / 10.0 - 5.0)
            .collect();
        let y: Vec<i32> = (0..n).map(|i| ((i * 13) % k) as i32).collect();
        for kind in KINDS {
            let cfg = config(kind, k);
            let mut layer = ClassificationLoss::new(&dev, k, cfg.clone()).unwrap();
            let (loss, grad) = run(&mut layer, &dev, &z, &y);
            let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
            let (want, want_grad) = layer_step(&cfg, k, &mut vec![0.0; cfg.ghm_bins], 1, &z64, &y);
            assert!(
                (loss as f64 - want).abs() <= 1e-5 * want.abs(),
                "{kind:?} K={k} n={n}: {loss} vs {want}"
            );
            let err = emrclass::check::relative_error(&grad, &want_grad);
            assert!(err <= 1e-5, "{kind:?} K={k} n={n}: grad error {err:e}");
        }
    }
}

#[test]
fn absent_classes_and_one_ghm_bin() {
    let dev = common::test_device(Schedule::Random(9));
    // Eight identical rows (one GHM bin), all of class 1 of 5: classes 0, 2, 3, 4 are absent.
    let row = [0.3f32, 1.2, -0.7, 0.0, 2.0];
    let z: Vec<f32> = row.iter().cycle().take(40).cloned().collect();
    let y = [1; 8];
    for kind in [LossKind::GhmC, LossKind::GhmCs] {
        let cfg = config(kind, 5);
        let mut layer = ClassificationLoss::new(&dev, 5, cfg.clone()).unwrap();
        let mut ema = vec![0.0; cfg.ghm_bins];
        for step in 1..=3 {
            let (loss, _) = run(&mut layer, &dev, &z, &y);
            let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
            let (want, _) = layer_step(&cfg, 5, &mut ema, step, &z64, &y);
            assert!(
                (loss as f64 - want).abs() <= 1e-5 * want,
                "{kind:?} step {step}: {loss} vs {want}"
            );
        }
        // One non-empty bin: S = 8 (1 - 0.75^3) after three batches.
        let (state, steps) = layer.state().unwrap();
        assert_eq!(steps, 3);
        let filled: Vec<f32> = state.iter().cloned().filter(|&s| s > 0.0).collect();
        assert_eq!(filled.len(), 1);
        assert!(
            (filled[0] - 8.0 * (1.0 - 0.75f32.powi(3))).abs() < 1e-5,
            "{state:?}"
        );
    }
}

#[test]
fn ghm_state_survives_a_save_and_restore() {
    let dev = common::test_device(Schedule::Forward);
    let k = 4;
    let batches: Vec<(Vec<f32>, Vec<i32>)> = (0..4)
        .map(|b| {
            (
                (0..24)
                    .map(|i| (((i + b * 5) * 31) % 17) as f32 / 4.0 - 2.0)
                    .collect(),
                (0..6).map(|i| ((i + b) % k) as i32).collect(),
            )
        })
        .collect();
    let cfg = config(LossKind::GhmC, k);
    let mut straight = ClassificationLoss::new(&dev, k, cfg.clone()).unwrap();
    let mut first = ClassificationLoss::new(&dev, k, cfg.clone()).unwrap();
    for (z, y) in &batches[..2] {
        run(&mut straight, &dev, z, y);
        run(&mut first, &dev, z, y);
    }
    let (ema, steps) = first.state().unwrap();
    let mut resumed = ClassificationLoss::new(&dev, k, cfg).unwrap();
    resumed.load_state(&ema, steps).unwrap();
    for (z, y) in &batches[2..] {
        assert_eq!(
            run(&mut straight, &dev, z, y),
            run(&mut resumed, &dev, z, y)
        );
    }
    let e = resumed.load_state(&[0.0; 3], 1).unwrap_err().to_string();
    assert!(e.contains("3 bins") && e.contains("10 bins"), "{e}");
}

#[test]
fn ghmcs_warm_up_uses_class_weights_alone() {
    let dev = common::test_device(Schedule::Forward);
    let k = 3;
    // Rows 0 and 1 are the same sample (one bin holds two), so beta differs between rows: with
    // equal betas the weighted mean would cancel them.
    let z = [
        0.5f32, -1.0, 2.0, 0.5, -1.0, 2.0, 1.5, 0.2, -0.3, -2.0, 0.0, 1.0,
    ];
    let y = [2, 2, 0, 1];
    let mut cfg = config(LossKind::GhmCs, k);
    cfg.ghm_warmup_steps = 1;
    let mut layer = ClassificationLoss::new(&dev, k, cfg.clone()).unwrap();
    let z64: Vec<f64> = z.iter().map(|&v| v as f64).collect();
    let mut ema = vec![0.0; cfg.ghm_bins];
    let (loss1, _) = run(&mut layer, &dev, &z, &y);
    let (want1, _) = layer_step(&cfg, k, &mut ema, 1, &z64, &y);
    let (loss2, _) = run(&mut layer, &dev, &z, &y);
    let (want2, _) = layer_step(&cfg, k, &mut ema, 2, &z64, &y);
    assert!(
        (loss1 as f64 - want1).abs() < 1e-5 * want1 && (loss2 as f64 - want2).abs() < 1e-5 * want2
    );
    // Step 1 is the class-weighted soft-target loss without GHM; step 2 adds beta and differs.
    let mut no_ghm = cfg.clone();
    no_ghm.ghm_warmup_steps = u64::MAX;
    let (plain, _) = layer_step(&no_ghm, k, &mut [0.0; 10], 1, &z64, &y);
    assert!((want1 - plain).abs() < 1e-12 && (want2 - plain).abs() > 1e-6);
}

#[test]
fn bad_labels_and_configurations_are_named_errors() {
    let dev = common::test_device(Schedule::Forward);
    let mut layer =
        ClassificationLoss::new(&dev, 3, LossConfig::new(LossKind::CrossEntropy)).unwrap();
    let z = dev.upload(&[0.0f32; 6], "logits").unwrap();
    let mut g = dev.zeros::<f32>(6, "grad").unwrap();
    let e = layer
        .forward_backward(&z, &[0, 3], &mut g)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("label 3 at row 1 is out of range for 3 classes"),
        "{e}"
    );
    let e = layer
        .forward_backward(&z, &[-1, 0], &mut g)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("label -1 at row 0"), "{e}");
    let e = layer
        .forward_backward(&z, &[0, 1, 2], &mut g)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("logits hold 6") && e.contains("3 labels x 3 classes = 9"),
        "{e}"
    );
    let e = layer
        .forward_backward(&z, &[], &mut g)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("empty batch"), "{e}");

    let err = |c: LossConfig| {
        ClassificationLoss::new(&dev, 3, c)
            .err()
            .expect("config must be refused")
            .to_string()
    };
    assert!(err(LossConfig::new(LossKind::WeightedCrossEntropy)).contains("needs class weights"));
    let mut c = LossConfig::new(LossKind::GhmC);
    c.ghm_bins = 300;
    assert!(err(c).contains("300 GHM bins"));
    let mut c = LossConfig::new(LossKind::GhmC);
    c.ghm_alpha = 1.0;
    assert!(err(c).contains("momentum 1"));
    let mut c = LossConfig::new(LossKind::GhmCs);
    c.class_weights = Some(vec![1.0; 4]);
    assert!(err(c).contains("4 entries for 3 classes"));
    let mut c = LossConfig::new(LossKind::GhmCs);
    c.similarity = Some(vec![0.5; 4]);
    assert!(err(c).contains("3 x 3 expected"));
}
