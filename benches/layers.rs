//! Criterion benchmark of the sequence layers (BiGRU, BiLSTM, Text-CNN), forward + backward:
//! small shapes on the simulator always, the shape (batch 16, L 256, input 768, hidden
//! 256) on CUDA when a GPU is usable. `emrclass bench gru|lstm|textcnn` prints GFLOP/s.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use emrclass::model::rnn::{BiRnn, Cell};
use emrclass::model::textcnn::{TextCnn, TextCnnConfig};
use emrclass::{Device, Schedule};

fn bench_layers(c: &mut Criterion) {
    let mut devices = vec![(
        Device::simt(Schedule::Forward),
        (2usize, 16usize, 64usize, 32usize),
    )];
    if let Ok(cuda) = Device::cuda() {
        devices.push((cuda, (16, 256, 768, 256)));
    }
    for (dev, (batch, len, input, hidden)) in devices {
        let mut group = c.benchmark_group(format!("layers {}", dev.describe()));
        group.sample_size(10);
        let shape = format!("B{batch} L{len} in{input} H{hidden}");
        let x = dev.upload(&vec![0.1f32; batch * len * input], "x").unwrap();
        let lengths = vec![len as i32; batch];
        let mut rng = emrclass::rng::Rng::new(1);
        for cell in [Cell::Gru, Cell::Lstm] {
            let mut layer = BiRnn::new(&dev, cell, input, hidden, &mut rng).unwrap();
            let dout = dev
                .upload(&vec![0.01f32; batch * len * 2 * hidden], "dout")
                .unwrap();
            group.bench_with_input(
                BenchmarkId::new(format!("Bi{cell:?} fwd+bwd"), &shape),
                &shape,
                |b, _| {
                    b.iter(|| {
                        layer.forward(&x, &lengths, len).unwrap();
                        layer.backward(&dout).unwrap();
                        dev.synchronize().unwrap();
                    })
                },
            );
        }
        let config = TextCnnConfig {
            channels: input,
            filters: hidden,
            widths: vec![2, 3, 4],
        };
        let mut cnn = TextCnn::new(&dev, config, &mut rng).unwrap();
        let dpooled = dev
            .upload(&vec![0.01f32; batch * 3 * hidden], "dpooled")
            .unwrap();
        group.bench_with_input(
            BenchmarkId::new("Text-CNN fwd+bwd", &shape),
            &shape,
            |b, _| {
                b.iter(|| {
                    cnn.forward(&x, &lengths, len).unwrap();
                    cnn.backward(&dpooled).unwrap();
                    dev.synchronize().unwrap();
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench_layers);
criterion_main!(benches);
