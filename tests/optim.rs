//! The optimizer: HF's linear warm-up/decay schedule, AdamW with per-parameter learning rates
//! and decay, global-norm clipping, against the f64 reference; a non-finite gradient updates
//! nothing.

mod common;

use emrclass::check::relative_error;
use emrclass::model::slot::Slot;
use emrclass::ops::AdamW;
use emrclass::reference as r;
use emrclass::rng::Rng;
use emrclass::train::optim::{global_norm, Optimizer, Schedule};
use emrclass::Schedule as Order;

#[test]
fn linear_warmup_then_linear_decay() {
    let s = Schedule {
        peak: 1e-3,
        warmup: 2,
        total: 6,
    };
    let lrs: Vec<f64> = (1..=7).map(|step| s.lr(step)).collect();
    let want = [0.0, 0.5e-3, 1e-3, 0.75e-3, 0.5e-3, 0.25e-3, 0.0];
    for (a, b) in lrs.iter().zip(want) {
        assert!((a - b).abs() < 1e-15, "{lrs:?}");
    }
    assert_eq!(
        Schedule {
            peak: 2.0,
            warmup: 0,
            total: 4
        }
        .lr(1),
        2.0
    );
}

#[test]
fn adamw_with_clipping_and_groups_matches_the_reference() {
    let dev = common::test_device(Order::Forward);
    let mut rng = Rng::new(11);
    let hp = AdamW {
        lr: 0.0,
        weight_decay: 0.05,
        ..AdamW::default()
    };
    let (na, nb) = (257usize, 33usize);
    let mut pa: Vec<f64> = rng.normals(na, 1.0);
    let mut pb: Vec<f64> = rng.normals(nb, 1.0);
    let (mut ma, mut va, mut mb, mut vb) =
        (vec![0.0; na], vec![0.0; na], vec![0.0; nb], vec![0.0; nb]);
    let mut a = dev
        .upload(&pa.iter().map(|&v| v as f32).collect::<Vec<_>>(), "a")
        .unwrap();
    let mut b = dev
        .upload(&pb.iter().map(|&v| v as f32).collect::<Vec<_>>(), "b")
        .unwrap();
    let mut opt = Optimizer::new(hp);
    let (lr, clip) = (1e-2f32, 5.0f32);
    for step in 1..=3u64 {
        let ga = rng.normals(na, 1.0);
        let gb = rng.normals(nb, 1.0);
        let (mut gab, mut gbb) = (
            dev.upload(&ga.iter().map(|&v| v as f32).collect::<Vec<_>>(), "ga")
                .unwrap(),
            dev.upload(&gb.iter().map(|&v| v as f32).collect::<Vec<_>>(), "gb")
                .unwrap(),
        );
        let norm = opt
            .step(
                &mut [
                    Slot {
                        name: "a".into(),
                        value: &mut a,
                        grad: &mut gab,
                        lr_scale: 1.0,
                        decay: true,
                    },
                    Slot {
                        name: "b".into(),
                        value: &mut b,
                        grad: &mut gbb,
                        lr_scale: 2.0,
                        decay: false,
                    },
                ],
                lr,
                Some(clip),
            )
            .unwrap();
        // The reference: the same norm, scale and groups in f64.
        let want_norm = ga.iter().chain(&gb).map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - want_norm).abs() < 1e-5 * want_norm);
        assert!(want_norm > clip as f64, "the test must exercise clipping");
        let scale = clip as f64 / want_norm;
        let sa: Vec<f64> = ga.iter().map(|v| v * scale).collect();
        let sb: Vec<f64> = gb.iter().map(|v| v * scale).collect();
        r::adamw_step(&AdamW { lr, ..hp }, step, &mut pa, &sa, &mut ma, &mut va);
        r::adamw_step(
            &AdamW {
                lr: 2.0 * lr,
                weight_decay: 0.0,
                ..hp
            },
            step,
            &mut pb,
            &sb,
            &mut mb,
            &mut vb,
        );
    }
    assert!(relative_error(&a.to_host().unwrap(), &pa) < 1e-5);
    assert!(relative_error(&b.to_host().unwrap(), &pb) < 1e-5);
    assert!(global_norm(&[]).unwrap() == 0.0);
}

#[test]
fn a_non_finite_gradient_updates_nothing() {
    let dev = common::test_device(Order::Forward);
    let mut p = dev.upload(&[1.0f32, 2.0], "p").unwrap();
    let mut g = dev.upload(&[f32::NAN, 1.0], "g").unwrap();
    let mut opt = Optimizer::new(AdamW::default());
    let e = opt
        .step(
            &mut [Slot {
                name: "p".into(),
                value: &mut p,
                grad: &mut g,
                lr_scale: 1.0,
                decay: true,
            }],
            1e-3,
            None,
        )
        .unwrap_err();
    assert!(e.to_string().contains("gradient norm is NaN"), "{e}");
    assert_eq!(p.to_host().unwrap(), vec![1.0, 2.0]);
    assert_eq!(opt.step, 0);
}

/// The norm's partial sums cover every element once, whatever the size: sizes below, at and
/// above one block's share, and above 128 blocks x 256 threads (grid-stride loops).
#[test]
fn global_norm_matches_f64_on_awkward_sizes() {
    for order in [
        Order::Forward,
        Order::Reverse,
        Order::Random(Rng::fresh_seed()),
    ] {
        global_norm_matches_f64(common::test_device(order));
    }
}

fn global_norm_matches_f64(dev: emrclass::Device) {
    let mut rng = Rng::new(Rng::fresh_seed());
    let sizes = [1usize, 31, 1023, 1024, 1025, 70_001, 131_073 + 17];
    let host: Vec<Vec<f64>> = sizes.iter().map(|&n| rng.normals(n, 1.0)).collect();
    let bufs: Vec<_> = host
        .iter()
        .map(|h| {
            dev.upload(&h.iter().map(|&v| v as f32).collect::<Vec<_>>(), "g")
                .unwrap()
        })
        .collect();
    let empty = dev.zeros::<f32>(0, "empty").unwrap();
    let mut refs: Vec<&emrclass::Buffer<f32>> = bufs.iter().collect();
    refs.insert(2, &empty);
    let got = global_norm(&refs).unwrap();
    let want = host
        .iter()
        .flatten()
        .map(|&v| (v as f32 as f64).powi(2))
        .sum::<f64>()
        .sqrt();
    assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    // Each tensor alone, too (a wrong offset would mix them up).
    for (b, h) in bufs.iter().zip(&host) {
        let w = h
            .iter()
            .map(|&v| (v as f32 as f64).powi(2))
            .sum::<f64>()
            .sqrt();
        let g = global_norm(&[b]).unwrap();
        assert!((g - w).abs() < 1e-5 * w, "n = {}: {g} vs {w}", h.len());
    }
}

/// The multi-tensor kernels (one launch over every parameter) give exactly the bits of one
/// launch per tensor: the gradient norm's partial sums, and AdamW's parameters and moments over
/// two steps, with per-tensor learning-rate scales and decay. Sizes: one element, under and
/// over a block's share, over many blocks; a table built once and reused.
#[test]
fn multi_tensor_kernels_give_the_bits_of_one_launch_per_tensor() {
    use emrclass::ops::multi_tensor::{adamw_step_multi, sum_squares_partial_multi, AdamWTensor};
    use emrclass::ops::{adamw_step, sum_squares_blocks, sum_squares_partial};
    for order in [
        Order::Forward,
        Order::Reverse,
        Order::Random(Rng::fresh_seed()),
    ] {
        let dev = common::test_device(order);
        let mut rng = Rng::new(5);
        let sizes = [1usize, 255, 4097, 70_001];
        let up = |v: &[f64], what: &str| {
            dev.upload(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), what)
                .unwrap()
        };
        let grads: Vec<_> = sizes
            .iter()
            .map(|&n| up(&rng.normals(n, 1.0), "g"))
            .collect();
        let refs: Vec<&emrclass::Buffer<f32>> = grads.iter().collect();
        let total: usize = sizes.iter().map(|&n| sum_squares_blocks(n)).sum();
        let single = dev.alloc::<f32>(total, "single").unwrap();
        let mut offset = 0;
        for g in &refs {
            sum_squares_partial(g, &single, offset).unwrap();
            offset += sum_squares_blocks(g.len());
        }
        let multi = dev.alloc::<f32>(total, "multi").unwrap();
        let mut table = None;
        assert_eq!(
            sum_squares_partial_multi(&refs, &multi, &mut table).unwrap(),
            total
        );
        let bits = |b: &emrclass::Buffer<f32>| -> Vec<u32> {
            b.to_host().unwrap().iter().map(|v| v.to_bits()).collect()
        };
        assert_eq!(bits(&single), bits(&multi), "norm partials");

        let hp = AdamW {
            lr: 3e-3,
            weight_decay: 0.05,
            ..AdamW::default()
        };
        let params: Vec<Vec<f64>> = sizes.iter().map(|&n| rng.normals(n, 1.0)).collect();
        let (scales, decays) = ([1.0f32, 2.5, 0.1, 1.0], [true, false, true, false]);
        let make = |what: &str| -> Vec<[emrclass::Buffer<f32>; 3]> {
            params
                .iter()
                .map(|p| {
                    [
                        up(p, what),
                        dev.zeros(p.len(), "m").unwrap(),
                        dev.zeros(p.len(), "v").unwrap(),
                    ]
                })
                .collect()
        };
        let (mut one_by_one, together) = (make("p1"), make("p2"));
        let mut update_table = None;
        for step in 1..=2u64 {
            for (t, [p, m, v]) in one_by_one.iter_mut().enumerate() {
                let hp_t = AdamW {
                    lr: hp.lr * scales[t],
                    weight_decay: if decays[t] { hp.weight_decay } else { 0.0 },
                    ..hp
                };
                adamw_step(&hp_t, step, p, &grads[t], m, v, 0.75).unwrap();
            }
            let tensors: Vec<AdamWTensor> = together
                .iter()
                .enumerate()
                .map(|(t, [p, m, v])| AdamWTensor {
                    param: p,
                    grad: &grads[t],
                    m,
                    v,
                    lr_scale: scales[t],
                    decay: decays[t],
                })
                .collect();
            adamw_step_multi(&hp, step, &tensors, 0.75, &mut update_table).unwrap();
        }
        for (a, b) in one_by_one.iter().zip(&together) {
            for k in 0..3 {
                assert_eq!(bits(&a[k]), bits(&b[k]), "AdamW buffer {k}");
            }
        }
    }
}

/// The dynamic quantisation maps of 8-bit AdamW: 256 strictly increasing values, 0 and 1 among
/// them, signed within [-1, 1] and unsigned within [0, 1]; and their resolution: decade i
/// (0..6), [10^(i-7), 10^(i-6)], holds 2^i points (signed; 2^(i+1) unsigned) evenly over its
/// upper nine tenths, so any |x| in it is within half their spacing, 0.45 x 10^(i-6) / 2^i, of
/// a code (between two decades the gap is narrower than that).
#[test]
fn eight_bit_maps_are_dense_near_zero_and_cover_the_block_maximum() {
    use emrclass::ops::adamw8bit::{dynamic_map, zero_code};
    use emrclass::reference::adamw8bit::nearest_code;
    for signed in [true, false] {
        let map = dynamic_map(signed);
        assert_eq!(map.len(), 256);
        assert!(map.windows(2).all(|w| w[0] < w[1]), "strictly increasing");
        assert!(map.contains(&0.0) && map.contains(&1.0));
        assert_eq!(map[zero_code(signed) as usize], 0.0);
        let low = if signed { -1.0 } else { 0.0 };
        assert!(map[0] >= low && map[255] == 1.0);
        let mut rng = Rng::new(3);
        for _ in 0..20_000 {
            let x = 10f64.powf(-7.0 * rng.uniform());
            let decade = (x.log10().floor() + 7.0).clamp(0.0, 6.0) as i32;
            let points = if signed { 1 << decade } else { 2 << decade };
            let bound = 0.45 * 10f64.powi(decade - 6) / points as f64 + 1e-15;
            let q = map[nearest_code(&map, x) as usize];
            assert!((q - x).abs() <= bound, "signed {signed}: {x} -> {q}");
            if signed {
                let qn = map[nearest_code(&map, -x) as usize];
                assert!((qn + x).abs() <= bound, "{} -> {qn}", -x);
            }
        }
    }
}

/// `Optimizer` with adamw8bit: a tensor of 4096+ elements gets 8-bit moments, a smaller one and
/// an embedding table keep fp32 moments; with clipping, per-tensor learning-rate scales and
/// decay, every step matches the f64 references (fp32 AdamW, and 8-bit AdamW started from the
/// optimizer's own codes each step, as the kernel check does).
#[test]
fn adamw8bit_quantises_large_tensors_and_matches_the_references() {
    use emrclass::reference::adamw8bit::{adamw8bit_step, Quantized};
    use emrclass::train::optim::{MomentsRef, OptimizerKind};
    let dev = common::test_device(Order::Reverse);
    let mut rng = Rng::new(17);
    let hp = AdamW {
        lr: 0.0,
        weight_decay: 0.05,
        ..AdamW::default()
    };
    let names = [
        "head.small",
        "embeddings.word_embeddings.weight",
        "head.large",
    ];
    let sizes = [300usize, 5000, 6001];
    let (scales, decays) = ([1.0f32, 0.5, 2.0], [true, true, false]);
    let mut host: Vec<Vec<f64>> = sizes.iter().map(|&n| rng.normals(n, 1.0)).collect();
    let mut moments: Vec<(Vec<f64>, Vec<f64>)> = sizes
        .iter()
        .map(|&n| (vec![0.0; n], vec![0.0; n]))
        .collect();
    let up = |v: &[f64]| {
        dev.upload(&v.iter().map(|&x| x as f32).collect::<Vec<_>>(), "t")
            .unwrap()
    };
    let mut params: Vec<emrclass::Buffer<f32>> = host.iter().map(|p| up(p)).collect();
    let mut opt = Optimizer::with_kind(hp, OptimizerKind::AdamW8bit);
    let (lr, clip) = (1e-2f32, 5.0f32);
    for step in 1..=3u64 {
        let grads: Vec<Vec<f64>> = sizes.iter().map(|&n| rng.normals(n, 1.0)).collect();
        let mut gbufs: Vec<emrclass::Buffer<f32>> = grads.iter().map(|g| up(g)).collect();
        // The 8-bit tensor's reference starts from the optimizer's state (none at step 1).
        let start = match opt.moments_ref(names[2]) {
            Some(MomentsRef::Quantized(q)) => Some(Quantized {
                m: q.m.to_host().unwrap(),
                v: q.v.to_host().unwrap(),
                m_absmax: q
                    .m_absmax
                    .to_host()
                    .unwrap()
                    .iter()
                    .map(|&x| x as f64)
                    .collect(),
                v_absmax: q
                    .v_absmax
                    .to_host()
                    .unwrap()
                    .iter()
                    .map(|&x| x as f64)
                    .collect(),
            }),
            _ => None,
        };
        host[2] = params[2]
            .to_host()
            .unwrap()
            .iter()
            .map(|&x| x as f64)
            .collect();
        let mut slots: Vec<Slot> = params
            .iter_mut()
            .zip(&mut gbufs)
            .enumerate()
            .map(|(t, (p, g))| Slot {
                name: names[t].into(),
                value: p,
                grad: g,
                lr_scale: scales[t],
                decay: decays[t],
            })
            .collect();
        let norm = opt.step(&mut slots, lr, Some(clip)).unwrap();
        let want_norm = grads.iter().flatten().map(|v| v * v).sum::<f64>().sqrt();
        assert!((norm - want_norm).abs() < 1e-5 * want_norm);
        let scale = clip as f64 / (want_norm + 1e-6);
        for t in 0..3 {
            let hp_t = AdamW {
                lr: lr * scales[t],
                weight_decay: if decays[t] { hp.weight_decay } else { 0.0 },
                ..hp
            };
            let g: Vec<f64> = grads[t].iter().map(|v| v * scale).collect();
            if t == 2 {
                let n = sizes[2];
                let mut q = start.clone().unwrap_or(Quantized {
                    m: vec![emrclass::ops::adamw8bit::zero_code(true); n],
                    v: vec![emrclass::ops::adamw8bit::zero_code(false); n],
                    m_absmax: vec![0.0; n.div_ceil(2048)],
                    v_absmax: vec![0.0; n.div_ceil(2048)],
                });
                adamw8bit_step(&hp_t, step, &mut host[2], &g, &mut q);
            } else {
                let (m, v) = &mut moments[t];
                r::adamw_step(&hp_t, step, &mut host[t], &g, m, v);
            }
        }
        for t in 0..3 {
            let err = relative_error(&params[t].to_host().unwrap(), &host[t]);
            assert!(err < 1e-5, "step {step}: {}: {err:e}", names[t]);
        }
    }
    assert!(matches!(
        opt.moments_ref(names[0]),
        Some(MomentsRef::Full(..))
    ));
    assert!(matches!(
        opt.moments_ref(names[1]),
        Some(MomentsRef::Full(..))
    ));
    assert!(matches!(
        opt.moments_ref(names[2]),
        Some(MomentsRef::Quantized(_))
    ));
}
