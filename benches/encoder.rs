//! Criterion benchmark of the fused attention and of one BERT layer, forward + backward: small
//! shapes on the simulator always, BERT-base (batch 16, L = 128, 256, 512, hidden 768, 12
//! heads) on CUDA when a GPU is usable. `emrclass bench attention|encoder` prints GFLOP/s and memory saved.

use criterion::{criterion_group, criterion_main, Criterion};
use emrclass::{bench, Device, Schedule};

fn bench_encoder(c: &mut Criterion) {
    let mut devices = vec![(
        Device::simt(Schedule::Forward),
        (1usize, 32usize, 64usize, 2usize),
    )];
    if let Ok(cuda) = Device::cuda() {
        for len in [128, 256, 512] {
            devices.push((cuda.clone(), (16, len, 768, 12)));
        }
    }
    for (dev, (batch, len, hidden, heads)) in devices {
        let mut group = c.benchmark_group(format!("encoder {}", dev.describe()));
        group.sample_size(10);
        group.bench_function(format!("attention B{batch} L{len} H{heads}"), |b| {
            b.iter(|| bench::attention(&dev, batch, len, heads, hidden / heads, 1).unwrap())
        });
        group.bench_function(
            format!("encoder layer B{batch} L{len} hidden{hidden}"),
            |b| b.iter(|| bench::encoder_layer(&dev, batch, len, hidden, heads, 1).unwrap()),
        );
        group.finish();
    }
}

criterion_group!(benches, bench_encoder);
criterion_main!(benches);
