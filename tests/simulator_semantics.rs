//! The simulator's CUDA semantics, pinned to the CUDA C++ Programming Guide: shuffles with
//! width, votes, block-wide predicates, atomics, launch dimensions, poisoned dynamic shared
//! memory, and a barrier-correct reduction under every schedule.

use emrclass::{Arg, Device, LaunchConfig, Schedule};

fn schedules() -> [Schedule; 3] {
    [Schedule::Forward, Schedule::Reverse, Schedule::Random(3)]
}

fn one_block(threads: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid: (1, 1, 1),
        block: (threads, 1, 1),
        shared_bytes,
    }
}

#[test]
fn shuffles_follow_cuda_rules_for_every_width() {
    let x: Vec<i32> = (0..32).map(|t| 100 + t).collect();
    for s in schedules() {
        let dev = Device::simt(s);
        let xb = dev.upload(&x, "x").unwrap();
        for width in [32, 16, 8, 4, 2, 1] {
            for offset in [0, 1, 3, 5] {
                let out = dev.alloc::<i32>(128, "out").unwrap();
                let args = [
                    (&xb).into(),
                    (&out).into(),
                    Arg::I32(offset),
                    Arg::I32(width),
                ];
                dev.launch("probe_shuffles", one_block(32, 0), &args)
                    .unwrap();
                let got = out.to_host().unwrap();
                for t in 0..32i32 {
                    let seg = t / width * width;
                    let idx = seg + offset % width;
                    let up = if t - offset >= seg { t - offset } else { t };
                    let down = if t + offset < seg + width {
                        t + offset
                    } else {
                        t
                    };
                    let xor = if (t ^ offset) < seg + width {
                        t ^ offset
                    } else {
                        t
                    };
                    let want = [idx, up, down, xor].map(|src| 100 + src);
                    assert_eq!(
                        &got[4 * t as usize..4 * t as usize + 4],
                        &want,
                        "lane {t} width {width} offset {offset} {s}"
                    );
                }
            }
        }
    }
}

#[test]
fn votes_and_block_predicates() {
    let threads = 64usize;
    let pred: Vec<i32> = (0..threads as i32)
        .map(|t| (t % 3 == 0 || t == 40) as i32)
        .collect();
    for s in schedules() {
        let dev = Device::simt(s);
        let pb = dev.upload(&pred, "pred").unwrap();
        let out = dev.alloc::<u32>(6 * threads, "out").unwrap();
        dev.launch(
            "probe_votes",
            one_block(threads as u32, 0),
            &[(&pb).into(), (&out).into()],
        )
        .unwrap();
        let got = out.to_host().unwrap();
        let count = pred.iter().filter(|&&p| p != 0).count() as u32;
        for t in 0..threads {
            let warp = t / 32;
            let ballot: u32 = (0..32)
                .filter(|&l| pred[warp * 32 + l] != 0)
                .map(|l| 1u32 << l)
                .sum();
            let want = [
                ballot,
                (ballot != 0) as u32,
                (ballot == u32::MAX) as u32,
                count,
                0,
                1,
            ];
            assert_eq!(&got[6 * t..6 * t + 6], &want, "thread {t} {s}");
        }
    }
}

#[test]
fn atomics_and_launch_dimensions() {
    let dev = Device::simt(Schedule::Random(5));
    let fsum = dev.zeros::<f32>(1, "fsum").unwrap();
    let isum = dev.zeros::<i32>(1, "isum").unwrap();
    let imax = dev.zeros::<i32>(1, "imax").unwrap();
    let dims = dev.zeros::<u32>(6, "dims").unwrap();
    let cfg = LaunchConfig {
        grid: (3, 2, 2),
        block: (4, 3, 2),
        shared_bytes: 0,
    };
    dev.launch(
        "probe_atomics",
        cfg,
        &[
            (&fsum).into(),
            (&isum).into(),
            (&imax).into(),
            (&dims).into(),
        ],
    )
    .unwrap();
    let threads = 12 * 24;
    assert_eq!(fsum.to_host().unwrap(), vec![0.5 * threads as f32]);
    assert_eq!(isum.to_host().unwrap(), vec![threads]);
    assert_eq!(imax.to_host().unwrap(), vec![11 * 1000 + 23]);
    assert_eq!(dims.to_host().unwrap(), vec![4, 3, 2, 3, 2, 2]);
}

#[test]
fn dynamic_shared_memory_is_nan_before_every_block() {
    let dev = Device::simt(Schedule::Forward);
    let n = 50;
    let out = dev.zeros::<f32>(3 * n, "out").unwrap();
    let cfg = LaunchConfig {
        grid: (3, 1, 1),
        block: (32, 1, 1),
        shared_bytes: (n * 4) as u32,
    };
    dev.launch(
        "probe_dynamic_shared_is_poisoned",
        cfg,
        &[(&out).into(), Arg::I32(n as i32)],
    )
    .unwrap();
    assert!(out.to_host().unwrap().iter().all(|v| v.is_nan()));
}

#[test]
fn tree_reduction_with_barriers_is_exact_under_every_schedule() {
    let x: Vec<f32> = (0..1000).map(|i| (i % 17) as f32).collect();
    let expect: f32 = x.iter().sum();
    for s in schedules() {
        let dev = Device::simt(s);
        let xb = dev.upload(&x, "x").unwrap();
        let out = dev.zeros::<f32>(1, "out").unwrap();
        dev.launch(
            "probe_block_sum",
            one_block(128, 128 * 4),
            &[(&xb).into(), (&out).into(), Arg::I32(1000)],
        )
        .unwrap();
        assert_eq!(out.to_host().unwrap(), vec![expect], "{s}");
    }
}

#[test]
fn launch_arguments_are_checked_against_the_kernel_signature() {
    let dev = Device::simt(Schedule::Forward);
    let out = dev.zeros::<f32>(4, "out").unwrap();
    // Wrong count, wrong pointer type, and a block too large: each a clear error, no launch.
    let e = dev
        .launch("probe_block_sum", one_block(32, 128), &[(&out).into()])
        .unwrap_err();
    assert!(e.to_string().contains("takes 3 arguments, 1 given"), "{e}");
    let ints = dev.zeros::<i32>(4, "ints").unwrap();
    let e = dev
        .launch(
            "probe_block_sum",
            one_block(32, 128),
            &[(&ints).into(), (&out).into(), Arg::I32(4)],
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("argument 0 (`x`) must be PtrF32"),
        "{e}"
    );
    let e = dev
        .launch(
            "probe_block_sum",
            one_block(2048, 0),
            &[(&out).into(), (&out).into(), Arg::I32(4)],
        )
        .unwrap_err();
    assert!(e.to_string().contains("2048 threads"), "{e}");
    let e = dev
        .launch("no_such_kernel", one_block(32, 0), &[])
        .unwrap_err();
    assert!(
        e.to_string().contains("no kernel named `no_such_kernel`"),
        "{e}"
    );
}

#[test]
fn memory_budget_is_exact_and_enforced() {
    let dev = Device::simt(Schedule::Forward).with_budget(1000);
    let a = dev.alloc::<f32>(200, "activations").unwrap();
    assert_eq!(dev.memory().live(), 800);
    let e = dev
        .alloc::<f32>(51, "gradients")
        .err()
        .expect("over budget");
    let text = e.to_string();
    assert!(
        text.contains("204 bytes requested for gradients with 800 bytes live; the budget is 1000"),
        "{text}"
    );
    let b = dev.alloc::<u8>(200, "mask").unwrap();
    assert_eq!(dev.memory().live(), 1000);
    drop(a);
    drop(b);
    assert_eq!(dev.memory().live(), 0);
    assert_eq!(dev.memory().peak(), 1000);
    assert_eq!(emrclass::device::parse_bytes("4GiB").unwrap(), 4 << 30);
    assert_eq!(emrclass::device::parse_bytes("1.5 MB").unwrap(), 1_500_000);
    assert!(emrclass::device::parse_bytes("4 parsecs").is_err());
}
