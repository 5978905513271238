// GPGPU-Sim harness (../shared/tools/pascal-model) timing the engine's memory-bound kernels at
// BERT-base sizes, launched as src/ops/ launches them: their rate is bytes moved / time, against
// the GTX 1050 Ti's 112 GB/s. Timing only: correctness is the simulator tests' job
// (tests/kernels_vs_reference.rs). Random inputs made on the device; each kernel's bytes are the
// minimum it must move (every input read once, every output written once); its cycles are the
// last kernel's (`timed=last`: model.sh reads them from sim.log).
// Usage: memory_bound KERNEL ROWS COLS
//   KERNEL layernorm_forward | layernorm_backward | softmax_rows_forward | gelu_forward |
//          gelu_backward | dropout_forward | adamw_step (n = ROWS * COLS parameters) |
//          device_copy (the ceiling: ROWS * COLS floats read and written as float4s, grid-stride,
//          what cudaMemcpy device-to-device does; not an engine kernel)
// Build: nvcc -O2 -gencode arch=compute_61,code=sm_61 -gencode arch=compute_61,code=compute_61 \
//        -cudart shared -I kernels -o memory_bound benches/pascal-model/memory_bound.cu
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>

#include <adamw.cu>  // the project's kernels, through -I kernels
#include <dropout.cu>
#include <elementwise.cu>
#include <layernorm.cu>
#include <softmax.cu>

#include "harness.h"  // CK

// Inputs are made on the device by this kernel, not copied from the host: the model serves a
// host upload from its L2 copy without DRAM reads (`-gpgpu_perf_sim_memcpy`), which would let
// the timed kernel read for free. Only the last kernel's cycles are the timed kernel's.
__global__ void fill_uniform(float *p, long long n, float lo, float hi, unsigned seed) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        unsigned h = (unsigned)i * 2654435761u ^ seed;
        h ^= h >> 15, h *= 2246822519u, h ^= h >> 13;
        p[i] = lo + (hi - lo) * (float)(h >> 8) * (1.0f / 16777216.0f);
    }
}

// The model's own ceiling for a kernel that reads n floats and writes n: no arithmetic, float4
// accesses, enough blocks to fill every SM.
__global__ void device_copy(const float4 *x, float4 *y, long long n4) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n4; i += (long long)gridDim.x * blockDim.x)
        y[i] = x[i];
}

static float *device_random(size_t n, float lo, float hi) {
    static unsigned seed = 7;
    float *d;
    CK(cudaMalloc(&d, n * sizeof(float)));
    fill_uniform<<<256, 256>>>(d, (long long)n, lo, hi, seed++);
    CK(cudaGetLastError());
    return d;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s KERNEL ROWS COLS\n", argv[0]);
        return 2;
    }
    const char *kernel = argv[1];
    const int rows = atoi(argv[2]), cols = atoi(argv[3]);
    const long long n = (long long)rows * cols;
    // ops/rows.rs and ops/layernorm.rs: a warp per row, 4 rows a block; grid-stride kernels:
    // 256 threads, at most 4096 blocks (LaunchConfig::for_elements).
    const dim3 row_grid((rows + 3) / 4), row_block(128);
    const dim3 flat_grid((unsigned)std::min<long long>((n + 255) / 256, 4096)), flat_block(256);
    double bytes = 0;
    if (!strcmp(kernel, "layernorm_forward")) {
        float *x = device_random(n, -2, 2), *g = device_random(cols, 0.5, 1.5), *b = device_random(cols, -1, 1);
        float *y = device_random(n, 0, 0), *mean = device_random(rows, 0, 0), *rstd = device_random(rows, 0, 0);
        layernorm_forward<<<row_grid, row_block>>>(x, g, b, y, mean, rstd, rows, cols, 1e-12f);
        bytes = 4.0 * (2.0 * n + 2.0 * cols + 2.0 * rows);
    } else if (!strcmp(kernel, "layernorm_backward")) {
        float *x = device_random(n, -2, 2), *g = device_random(cols, 0.5, 1.5), *mean = device_random(rows, -0.1, 0.1);
        float *rstd = device_random(rows, 0.5, 2), *dy = device_random(n, -1, 1), *dx = device_random(n, 0, 0);
        float *dyx = device_random(n, 0, 0);
        layernorm_backward<<<row_grid, row_block>>>(x, g, mean, rstd, dy, dx, dyx, rows, cols, nullptr, 0.0f, 0ull);
        bytes = 4.0 * (4.0 * n + cols + 2.0 * rows);  // x, dy in; dx, dy * xhat out
    } else if (!strcmp(kernel, "softmax_rows_forward")) {
        float *x = device_random(n, -4, 4), *y = device_random(n, 0, 0);
        softmax_rows_forward<<<row_grid, row_block>>>(x, y, rows, cols);
        bytes = 4.0 * 2.0 * n;
    } else if (!strcmp(kernel, "gelu_forward")) {
        float *x = device_random(n, -4, 4), *y = device_random(n, 0, 0);
        gelu_forward<<<flat_grid, flat_block>>>(x, y, n);
        bytes = 4.0 * 2.0 * n;
    } else if (!strcmp(kernel, "gelu_backward")) {
        float *x = device_random(n, -4, 4), *g = device_random(n, -1, 1);
        gelu_backward<<<flat_grid, flat_block>>>(x, g, n);
        bytes = 4.0 * 3.0 * n;
    } else if (!strcmp(kernel, "dropout_forward")) {
        float *x = device_random(n, -4, 4), *y = device_random(n, 0, 0);
        dropout_forward<<<flat_grid, flat_block>>>(x, y, n, 0.1f, 1234ull);
        bytes = 4.0 * 2.0 * n;
    } else if (!strcmp(kernel, "adamw_step")) {
        float *p = device_random(n, -0.1, 0.1), *g = device_random(n, -0.01, 0.01), *m = device_random(n, -1e-3, 1e-3);
        float *v = device_random(n, 0, 1e-5);
        adamw_step<<<flat_grid, flat_block>>>(p, g, m, v, n, 1e-4f, 0.9f, 0.999f, 1e-6f, 0.01f, 0.1f, 0.001f, 1.0f);
        bytes = 4.0 * 7.0 * n;  // param, grad, m, v in; param, m, v out
    } else if (!strcmp(kernel, "device_copy")) {
        float *x = device_random(n, -4, 4), *y = device_random(n, 0, 0);
        device_copy<<<(unsigned)std::min<long long>((n / 4 + 255) / 256, 4096), flat_block>>>((const float4 *)x, (float4 *)y, n / 4);
        bytes = 4.0 * 2.0 * (n / 4 * 4);
    } else {
        fprintf(stderr, "unknown kernel %s\n", kernel);
        return 2;
    }
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    printf("HARNESS %s rows=%d cols=%d bytes=%.0f timed=last (timing only)\n", kernel, rows, cols, bytes);
    return 0;
}
