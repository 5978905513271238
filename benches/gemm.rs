//! Criterion benchmark of the GEMM kernel: small squares on the simulator always, and on CUDA
//! (when a GPU is usable) BERT-base's four products — QKV, attention output, FFN up, FFN down —
//! at batch 16 x L = 128, 256, 512. `emrclass bench gemm` prints the same with GFLOP/s and
//! roofline fractions.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emrclass::ops::{gemm, Gemm};
use emrclass::{Device, Schedule};

fn bench_gemm(c: &mut Criterion) {
    let squares = |v: &[usize]| v.iter().map(|&n| (n, n, n)).collect::<Vec<_>>();
    let mut devices = vec![(Device::simt(Schedule::Forward), squares(&[64, 128]))];
    if let Ok(cuda) = Device::cuda() {
        let mut shapes = Vec::new();
        for len in [128, 256, 512] {
            let t = 16 * len;
            shapes.extend([
                (t, 2304, 768),
                (t, 768, 768),
                (t, 3072, 768),
                (t, 768, 3072),
            ]);
        }
        devices.push((cuda, shapes));
    }
    for (dev, shapes) in devices {
        let mut group = c.benchmark_group(format!("gemm_f32 {}", dev.describe()));
        group.sample_size(10);
        for (m, n, k) in shapes {
            let g = Gemm::new(m, n, k, false, false);
            let a = dev.upload(&vec![0.5f32; m * k], "A").unwrap();
            let b = dev.upload(&vec![0.25f32; k * n], "B").unwrap();
            let mut out = dev.zeros::<f32>(m * n, "C").unwrap();
            group.throughput(Throughput::Elements(g.flops() as u64));
            let id = format!("{m}x{n}x{k}");
            group.bench_with_input(BenchmarkId::from_parameter(&id), &id, |bench, _| {
                bench.iter(|| {
                    gemm(&g, &a, &b, &mut out, None).unwrap();
                    dev.synchronize().unwrap();
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, bench_gemm);
criterion_main!(benches);
