//! Criterion benchmark of one loss-layer step (all five losses): on the simulator always, and
//! on CUDA when a GPU is usable. `emrclass bench loss` prints rows/s, GB/s and roofline.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emrclass::model::loss::{ClassificationLoss, LossConfig, LossKind};
use emrclass::{Device, Schedule};

fn bench_loss(c: &mut Criterion) {
    let mut devices = vec![(
        Device::simt(Schedule::Forward),
        vec![(256usize, 44usize), (16, 1000)],
    )];
    if let Ok(cuda) = Device::cuda() {
        devices.push((cuda, vec![(4096, 44), (4096, 1000)]));
    }
    for (dev, shapes) in devices {
        let mut group = c.benchmark_group(format!("loss step {}", dev.describe()));
        group.sample_size(10);
        for (rows, k) in shapes {
            for kind in [
                LossKind::CrossEntropy,
                LossKind::WeightedCrossEntropy,
                LossKind::Focal,
                LossKind::GhmC,
                LossKind::GhmCs,
            ] {
                let mut cfg = LossConfig::new(kind);
                cfg.class_weights = Some(vec![1.0; k]);
                cfg.similarity = Some(vec![0.5; k * k]);
                let mut layer = ClassificationLoss::new(&dev, k, cfg).unwrap();
                let logits = dev
                    .upload(
                        &(0..rows * k)
                            .map(|i| (i % 17) as f32 * 0.1)
                            .collect::<Vec<_>>(),
                        "logits",
                    )
                    .unwrap();
                let labels: Vec<i32> = (0..rows).map(|i| (i % k) as i32).collect();
                let mut grad = dev.zeros::<f32>(rows * k, "grad").unwrap();
                group.throughput(Throughput::Elements(rows as u64));
                group.bench_with_input(
                    BenchmarkId::new(format!("{kind:?}"), format!("{rows}x{k}")),
                    &rows,
                    |b, _| b.iter(|| layer.forward_backward(&logits, &labels, &mut grad).unwrap()),
                );
            }
        }
        group.finish();
    }
}

criterion_group!(benches, bench_loss);
criterion_main!(benches);
