//! Criterion benchmark of AdamW over a BERT-base-sized parameter vector, of one whole
//! training step of the `paper` model (BERT + Text-CNN || BiGRU || [CLS], CE, clipping, AdamW)
//! and of one pretraining step (BERT + the MLM head on 15 % of the tokens): tiny shapes on the
//! simulator always, BERT-base at batch 16 x 128 on CUDA when a GPU is usable. `emrclass bench
//! step [--pretrain]` prints samples/s, tokens/s, the phases and the peak memory.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use emrclass::bench::pretrain_step::MlmStepModel;
use emrclass::bench::step::{StepModel, StepShape, TakesSteps};
use emrclass::model::heads::HeadKind;
use emrclass::model::loss::LossKind;
use emrclass::ops::{adamw_step, AdamW};
use emrclass::{Device, Schedule};

fn bench_step(c: &mut Criterion) {
    let tiny = StepShape {
        layers: 1,
        hidden: 32,
        heads: 2,
        intermediate: 64,
        vocab: 100,
        batch: 2,
        len: 8,
        classes: 5,
        head: HeadKind::Paper,
        loss: LossKind::CrossEntropy,
        memory: Default::default(),
        optimizer: Default::default(),
        mask_rate: None,
    };
    let mut devices = vec![(Device::simt(Schedule::Forward), tiny.clone(), 10_000usize)];
    if let Ok(cuda) = Device::cuda() {
        let base = StepShape {
            layers: 12,
            hidden: 768,
            heads: 12,
            intermediate: 3072,
            vocab: 21128,
            batch: 16,
            len: 128,
            ..tiny
        };
        devices.push((cuda, base, 110_000_000));
    }
    for (dev, shape, params) in devices {
        let mut group = c.benchmark_group(format!("step {}", dev.describe()));
        group.sample_size(10);
        let mut p = dev.zeros::<f32>(params, "params").unwrap();
        let g = dev.upload(&vec![0.01f32; params], "grads").unwrap();
        let mut m = dev.zeros::<f32>(params, "m").unwrap();
        let mut v = dev.zeros::<f32>(params, "v").unwrap();
        group.throughput(Throughput::Bytes((params * 4 * 7) as u64));
        group.bench_function(format!("AdamW {params} parameters"), |b| {
            b.iter(|| {
                adamw_step(&AdamW::default(), 1, &mut p, &g, &mut m, &mut v, 1.0).unwrap();
                dev.synchronize().unwrap();
            })
        });
        group.throughput(Throughput::Elements(shape.batch as u64));
        group.bench_function(
            format!(
                "paper step {}x{} B{} L{}",
                shape.layers, shape.hidden, shape.batch, shape.len
            ),
            |b| {
                let mut model = StepModel::new(&dev, &shape).unwrap();
                b.iter(|| {
                    model.step().unwrap();
                    dev.synchronize().unwrap();
                })
            },
        );
        group.throughput(Throughput::Elements((shape.batch * shape.len) as u64));
        group.bench_function(
            format!(
                "pretrain step {}x{} B{} L{}",
                shape.layers, shape.hidden, shape.batch, shape.len
            ),
            |b| {
                let masked = StepShape {
                    mask_rate: Some(0.15),
                    ..shape.clone()
                };
                let mut model = MlmStepModel::new(&dev, &masked).unwrap();
                b.iter(|| {
                    model.step().unwrap();
                    dev.synchronize().unwrap();
                })
            },
        );
        group.finish();
    }
}

criterion_group!(benches, bench_step);
criterion_main!(benches);
