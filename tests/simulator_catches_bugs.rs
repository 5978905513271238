//! The simulator exists to find kernel bugs without a GPU. Each known-bad kernel in
//! tests/kernels/bad_kernels.cu must be caught: by a clear error, or by a wrong answer under
//! at least one of the schedules that the kernel tests run.

use emrclass::{Arg, Buffer, Device, Error, LaunchConfig, Schedule};

fn cfg(grid: (u32, u32, u32), threads: u32, shared_bytes: u32) -> LaunchConfig {
    LaunchConfig {
        grid,
        block: (threads, 1, 1),
        shared_bytes,
    }
}

/// Runs `kernel` and returns the simulator's error message, failing if it ran clean.
fn expect_error(kernel: &str, threads: u32, args: &[Arg], dev: &Device) -> String {
    match dev.launch(kernel, cfg((1, 1, 1), threads, 0), args) {
        Err(Error::Simt(msg)) => msg,
        other => panic!("{kernel}: expected a simulator error, got {other:?}"),
    }
}

fn schedules() -> [Schedule; 3] {
    [Schedule::Forward, Schedule::Reverse, Schedule::Random(7)]
}

#[test]
fn divergent_barrier_is_an_error_naming_kernel_block_thread_and_lines() {
    for s in schedules() {
        let dev = Device::simt(s);
        let y = dev.zeros::<f32>(32, "y").unwrap();
        let msg = expect_error("bad_divergent_barrier", 32, &[(&y).into()], &dev);
        assert!(msg.contains("bad_divergent_barrier"), "{msg}");
        assert!(
            msg.contains("block (0,0,0)") && msg.contains("thread ("),
            "{msg}"
        );
        assert!(
            msg.contains("divergent barrier") && msg.contains("bad_kernels.cu:"),
            "{msg}"
        );
    }
}

#[test]
fn exit_while_others_wait_at_a_barrier_is_an_error() {
    for s in schedules() {
        let dev = Device::simt(s);
        let y = dev.zeros::<f32>(32, "y").unwrap();
        let msg = expect_error("bad_exit_before_barrier", 32, &[(&y).into()], &dev);
        assert!(
            msg.contains("thread (5,0,0) exited while") && msg.contains("__syncthreads"),
            "{msg}"
        );
    }
}

#[test]
fn full_mask_shuffle_in_a_partial_warp_is_an_error() {
    for s in schedules() {
        let dev = Device::simt(s);
        let x = dev.zeros::<f32>(48, "x").unwrap();
        let y = dev.zeros::<f32>(48, "y").unwrap();
        let msg = expect_error(
            "bad_partial_warp_shuffle",
            48,
            &[(&x).into(), (&y).into()],
            &dev,
        );
        assert!(
            msg.contains("does not exist") && msg.contains("48 threads"),
            "{msg}"
        );
    }
}

#[test]
fn shuffle_from_a_lane_outside_the_mask_is_an_error() {
    let dev = Device::simt(Schedule::Forward);
    let x = dev.zeros::<f32>(32, "x").unwrap();
    let y = dev.zeros::<f32>(32, "y").unwrap();
    let msg = expect_error(
        "bad_shuffle_outside_mask",
        32,
        &[(&x).into(), (&y).into()],
        &dev,
    );
    assert!(msg.contains("not in the mask 0x0000ffff"), "{msg}");
}

#[test]
fn mismatched_warp_masks_are_an_error() {
    for s in schedules() {
        let dev = Device::simt(s);
        let x = dev.zeros::<f32>(32, "x").unwrap();
        let y = dev.zeros::<f32>(32, "y").unwrap();
        let msg = expect_error(
            "bad_mismatched_masks",
            32,
            &[(&x).into(), (&y).into()],
            &dev,
        );
        assert!(msg.contains("mismatched masks"), "{msg}");
    }
}

fn matmul(n: usize, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0.0f32; n * n];
    for i in 0..n {
        for j in 0..n {
            c[i * n + j] = (0..n).map(|k| a[i * n + k] * b[k * n + j]).sum();
        }
    }
    c
}

#[test]
fn missing_barrier_in_tiled_gemm_gives_wrong_results() {
    let n = 40;
    let a: Vec<f32> = (0..n * n).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
    let b: Vec<f32> = (0..n * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
    let expect = matmul(n, &a, &b);
    for s in schedules() {
        let dev = Device::simt(s);
        let (da, db) = (dev.upload(&a, "A").unwrap(), dev.upload(&b, "B").unwrap());
        let dc = dev.zeros::<f32>(n * n, "C").unwrap();
        let grid = (n.div_ceil(16) as u32, n.div_ceil(16) as u32, 1);
        dev.launch(
            "bad_gemm_missing_barrier",
            cfg(grid, 256, 0),
            &[(&da).into(), (&db).into(), (&dc).into(), Arg::I32(n as i32)],
        )
        .unwrap();
        let got = dc.to_host().unwrap();
        assert_ne!(got, expect, "missing barrier went unnoticed under {s}");
    }
}

#[test]
fn missing_barrier_hidden_by_forward_order_shows_in_reverse_and_random() {
    let threads = 64u32;
    let x: Vec<f32> = (0..threads).map(|i| i as f32 + 1.0).collect();
    let expect: Vec<f32> = (0..threads as usize)
        .map(|t| x[t.saturating_sub(1)])
        .collect();
    let run = |kernel: &str, s: Schedule| {
        let dev = Device::simt(s);
        let xb = dev.upload(&x, "x").unwrap();
        let yb = dev.zeros::<f32>(threads as usize, "y").unwrap();
        dev.launch(
            kernel,
            cfg((1, 1, 1), threads, threads * 4),
            &[(&xb).into(), (&yb).into(), Arg::I32(threads as i32)],
        )
        .unwrap();
        yb.to_host().unwrap()
    };
    // The correct kernel is right under every order: the control.
    for s in schedules() {
        assert_eq!(run("good_neighbour_with_barrier", s), expect, "{s}");
    }
    // The broken one passes in forward order, which is why the tests use more than one order.
    assert_eq!(
        run("bad_neighbour_missing_barrier", Schedule::Forward),
        expect
    );
    assert_ne!(
        run("bad_neighbour_missing_barrier", Schedule::Reverse),
        expect
    );
    assert_ne!(
        run("bad_neighbour_missing_barrier", Schedule::Random(11)),
        expect
    );
}

#[test]
fn deadlock_is_reported_not_hung() {
    for s in schedules() {
        let dev = Device::simt(s);
        let x = dev.zeros::<f32>(32, "x").unwrap();
        let y = dev.zeros::<f32>(32, "y").unwrap();
        let msg = expect_error("bad_deadlock", 32, &[(&x).into(), (&y).into()], &dev);
        assert!(
            msg.contains("deadlock") && msg.contains("bad_deadlock"),
            "{msg}"
        );
    }
}

#[test]
fn writes_outside_a_buffer_are_errors_naming_kernel_and_buffer() {
    for s in schedules() {
        let dev = Device::simt(s);
        // 30 floats: the element past the end is still inside the 256-byte-aligned block a GPU
        // allocator would hand out, so only a red zone at the exact end sees it.
        let y = dev.zeros::<f32>(30, "thirty floats").unwrap();
        let args = [(&y).into(), Arg::I32(30)];
        let msg = expect_error("bad_write_past_end", 32, &args, &dev);
        assert!(
            msg.contains("bad_write_past_end") && msg.contains("thirty floats"),
            "{msg}"
        );
        assert!(msg.contains("past its end: byte 0 after it"), "{msg}");
        let z = dev.zeros::<f32>(30, "z").unwrap();
        let msg = expect_error(
            "bad_write_before_start",
            32,
            &[(&z).into(), Arg::I32(30)],
            &dev,
        );
        assert!(
            msg.contains("before its start") && msg.contains("(z)"),
            "{msg}"
        );
    }
}

#[test]
fn reads_outside_a_buffer_give_nan() {
    let dev = Device::simt(Schedule::Forward);
    let x = dev.upload(&[1.0f32; 8], "x").unwrap();
    let y = dev.zeros::<f32>(8, "y").unwrap();
    dev.launch(
        "bad_read_past_end",
        cfg((1, 1, 1), 8, 0),
        &[(&x).into(), (&y).into(), Arg::I32(8)],
    )
    .unwrap();
    let out = y.to_host().unwrap();
    assert!(out[..7].iter().all(|&v| v == 1.0));
    assert!(out[7].is_nan(), "the red zone reads as NaN: {}", out[7]);
}

#[test]
fn static_shared_memory_is_nan_in_every_block_until_written() {
    for s in schedules() {
        let dev = Device::simt(s);
        let y = dev.zeros::<f32>(64, "y").unwrap();
        dev.launch(
            "bad_static_shared_read_before_write",
            cfg((2, 1, 1), 32, 0),
            &[(&y).into()],
        )
        .unwrap();
        let out = y.to_host().unwrap();
        assert!(out[..32].iter().all(|&v| v == 2.0), "block 0 wrote its own");
        assert!(
            out[32..].iter().all(|v| v.is_nan()),
            "block 1 must not see block 0's values: {:?}",
            &out[32..36]
        );
    }
}

/// Runs a cross-block bug on 4 blocks of 32 twice: one block after another in order, which
/// hides it (returns what `out` then holds), and under the block-race check (returns its error).
fn hidden_in_order_then_checked(
    dev: &Device,
    kernel: &str,
    args: &[Arg],
    out: &mut Buffer<f32>,
) -> (Vec<f32>, String) {
    dev.set_simt_threads(1);
    dev.launch(kernel, cfg((4, 1, 1), 32, 0), args).unwrap();
    let in_order = out.to_host().unwrap();
    out.fill_zero().unwrap();
    dev.set_block_check(true);
    match dev.launch(kernel, cfg((4, 1, 1), 32, 0), args) {
        Err(Error::Simt(msg)) => (in_order, msg),
        other => panic!("{kernel}: expected the block-race check to fail, got {other:?}"),
    }
}

/// Blocks that add into one total with a plain load and store: a race between blocks, which
/// one block after another hides. The block-race check names both blocks, buffer and byte.
#[test]
fn blocks_sharing_an_unsynchronised_total_are_caught() {
    let n = 100; // 4 blocks of 32
    for s in schedules() {
        let dev = Device::simt(s);
        let x = dev.upload(&vec![1.0f32; n], "x").unwrap();
        let mut total = dev.zeros::<f32>(1, "total").unwrap();
        let args = [(&x).into(), (&total).into(), Arg::I32(n as i32)];
        let (in_order, msg) =
            hidden_in_order_then_checked(&dev, "bad_blocks_share_a_total", &args, &mut total);
        assert_eq!(
            in_order,
            [n as f32],
            "{s}: in order, the race gives the right sum"
        );
        assert!(
            msg.contains("bad_blocks_share_a_total")
                && msg.contains("both write byte")
                && msg.contains("(total)")
                && msg.contains("race between blocks"),
            "{msg}"
        );
    }
}

/// A running sum carried from block to block through global memory: right when blocks run in
/// order, wrong on a GPU. The check runs the blocks in two opposite orders and sees the change.
#[test]
fn a_block_reading_what_another_block_wrote_is_caught() {
    let n = 100;
    let prefix: Vec<f32> = (1..=n).map(|i| i as f32).collect();
    for s in schedules() {
        let dev = Device::simt(s);
        let x = dev.upload(&vec![1.0f32; n], "x").unwrap();
        let mut y = dev.zeros::<f32>(n, "running sum").unwrap();
        let args = [(&x).into(), (&y).into(), Arg::I32(n as i32)];
        let (in_order, msg) =
            hidden_in_order_then_checked(&dev, "bad_block_reads_previous_block", &args, &mut y);
        assert_eq!(in_order, prefix, "{s}: blocks in order hide it");
        assert!(
            msg.contains("bad_block_reads_previous_block")
                && msg.contains("depends on the order its blocks run in")
                && msg.contains("(running sum)"),
            "{msg}"
        );
    }
}

/// The control: a correct kernel of many blocks passes the check and gives the same bits as
/// without it, on one thread and on four.
#[test]
fn independent_blocks_pass_the_block_race_check() {
    let threads = 64;
    let blocks = 5;
    let n = threads * blocks;
    let xs: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut results = Vec::new();
    for (check, simt_threads) in [(false, 1), (false, 4), (true, 1)] {
        let dev = Device::simt(Schedule::Random(5));
        dev.set_simt_threads(simt_threads);
        dev.set_block_check(check);
        let x = dev.upload(&xs, "x").unwrap();
        let y = dev.alloc::<f32>(n, "y").unwrap();
        dev.launch(
            "good_neighbour_with_barrier",
            cfg((blocks as u32, 1, 1), threads as u32, threads as u32 * 4),
            &[(&x).into(), (&y).into(), Arg::I32(n as i32)],
        )
        .unwrap();
        let bits: Vec<u32> = y.to_host().unwrap().iter().map(|v| v.to_bits()).collect();
        results.push(bits);
    }
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
}

/// Blocks on many OS threads: an error names the first failing block in block order, as one
/// thread running them in order would, every time.
#[test]
fn errors_name_the_first_failing_block_on_any_number_of_threads() {
    for threads in [1, 2, 4, 8] {
        for _ in 0..10 {
            let dev = Device::simt(Schedule::Forward);
            dev.set_simt_threads(threads);
            let y = dev.zeros::<f32>(64 * 32, "y").unwrap();
            let Err(Error::Simt(msg)) = dev.launch(
                "bad_exit_from_block_on",
                cfg((64, 1, 1), 32, 0),
                &[(&y).into(), Arg::I32(37)],
            ) else {
                panic!("{threads} threads: expected an error");
            };
            assert!(
                msg.contains("block (37,0,0)") && msg.contains("exited while"),
                "{threads} threads: {msg}"
            );
        }
    }
}
