//! Criterion benchmark of the GEMM kernel: on the simulator always, and on CUDA when a GPU is
//! usable. `emrclass bench gemm` prints the same with GFLOP/s and roofline fractions.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use emrclass::ops::{gemm, Gemm};
use emrclass::{Device, Schedule};

fn bench_gemm(c: &mut Criterion) {
    let mut devices = vec![(Device::simt(Schedule::Forward), vec![64usize, 128])];
    if let Ok(cuda) = Device::cuda() {
        devices.push((cuda, vec![256, 1024, 2048]));
    }
    for (dev, sizes) in devices {
        let mut group = c.benchmark_group(format!("gemm_f32 {}", dev.describe()));
        group.sample_size(10);
        for n in sizes {
            let g = Gemm::new(n, n, n, false, false);
            let a = dev.upload(&vec![0.5f32; n * n], "A").unwrap();
            let b = dev.upload(&vec![0.25f32; n * n], "B").unwrap();
            let mut out = dev.zeros::<f32>(n * n, "C").unwrap();
            group.throughput(Throughput::Elements(g.flops() as u64));
            group.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
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
