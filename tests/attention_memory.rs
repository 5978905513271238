//! The fused attention never stores the L x L probabilities: at L = 512 the allocator's peak
//! over forward and backward stays within the O(L) tensors, far under one L x L matrix.

mod common;

use emrclass::ops::attention::{self, Attention};
use emrclass::Schedule;

#[test]
fn attention_memory_is_linear_in_length() {
    let (batch, heads, len, d) = (1usize, 1usize, 512usize, 8usize);
    let dev = common::test_device(Schedule::Forward);
    let n = batch * len * heads * d;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 37) % 101) as f32 / 101.0 - 0.5)
        .collect();
    let (q, k, v) = (
        dev.upload(&x, "q").unwrap(),
        dev.upload(&x, "k").unwrap(),
        dev.upload(&x, "v").unwrap(),
    );
    let mask = dev.upload(&vec![1i32; batch * len], "mask").unwrap();
    let dout = dev.upload(&x, "dout").unwrap();
    let a = Attention {
        batch,
        heads,
        len,
        head_dim: d,
        stride: heads * d,
        offsets: [0; 3],
        scale: 0.35,
        dropout: 0.1,
        seed: 5,
    };
    let before = dev.memory().live();
    let mut out = dev.alloc::<f32>(n, "out").unwrap();
    let mut lse = dev.alloc::<f32>(batch * heads * len, "lse").unwrap();
    let grads = [
        dev.alloc::<f32>(n, "dq").unwrap(),
        dev.alloc::<f32>(n, "dk").unwrap(),
        dev.alloc::<f32>(n, "dv").unwrap(),
    ];
    attention::forward(&a, [&q, &k, &v], Some(&mask), &mut out, &mut lse).unwrap();
    attention::backward(
        &a,
        [&q, &k, &v],
        Some(&mask),
        &out,
        &lse,
        &dout,
        [&grads[0], &grads[1], &grads[2]],
    )
    .unwrap();
    let used = dev.memory().peak() - before;
    let probabilities = batch * heads * len * len * 4;
    // out, lse, dq, dk, dv and the backward's per-row deltas: 4 n + 2 B H L floats.
    assert_eq!(
        used,
        (4 * n + 2 * batch * heads * len) * 4,
        "attention allocated more than its O(L) tensors"
    );
    assert!(
        used * 10 < probabilities,
        "{used} bytes used; the probabilities alone would be {probabilities}"
    );
    assert!(out.to_host().unwrap().iter().all(|v| v.is_finite()));
}
