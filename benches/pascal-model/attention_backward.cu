// GPGPU-Sim harness (../shared/tools/pascal-model) timing the attention backward for head size
// <= 64: the two kernels that write dk/dv and dq, launched as src/ops/attention.rs does. Timing
// only: correctness is the simulator tests' job (tests/kernels_vs_reference.rs). No mask, no
// dropout; lse 0 and random delta (the values do not change the work).
// Usage: attention_backward B H L d
// Build the current kernels:
//   nvcc -O2 -gencode arch=compute_61,code=sm_61 -gencode arch=compute_61,code=compute_61 \
//        -cudart shared -I kernels -o attention_backward benches/pascal-model/attention_backward.cu
// and the earlier tiled ones (commit a06a30a's kernels/) with -DTILED_BEFORE -I OLD/kernels.
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>

#include <attention.cu>  // the project's kernels/attention.cu, through -I

#include "harness.h"  // CK

int main(int argc, char **argv) {
    const int B = argc > 1 ? atoi(argv[1]) : 1, H = argc > 2 ? atoi(argv[2]) : 12, L = argc > 3 ? atoi(argv[3]) : 128,
              D = argc > 4 ? atoi(argv[4]) : 64;
    const int stride = H * D;
    const size_t n = (size_t)B * L * stride, rows = (size_t)B * H * L;
    std::vector<float> host(n), stats(rows, 0.0f), deltas(rows);
    srand(7);
    float *q, *k, *v, *dout, *lse, *delta, *dq, *dk, *dv;
    for (float **p : {&q, &k, &v, &dout, &dq, &dk, &dv}) {
        CK(cudaMalloc(p, n * 4));
        for (auto &x : host) x = (float)rand() / RAND_MAX * 2.0f - 1.0f;
        CK(cudaMemcpy(*p, host.data(), n * 4, cudaMemcpyHostToDevice));
    }
    for (auto &x : deltas) x = (float)rand() / RAND_MAX;
    CK(cudaMalloc(&lse, rows * 4));
    CK(cudaMalloc(&delta, rows * 4));
    CK(cudaMemcpy(lse, stats.data(), rows * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(delta, deltas.data(), rows * 4, cudaMemcpyHostToDevice));
    const float scale = 0.125f;
    dim3 grid((L + 31) / 32, H, B);
#ifdef TILED_BEFORE
    attention_backward_kv_tiled<<<grid, 128, (4 * 32 * 65 + 2 * 32 * 33 + 64) * 4>>>(
        q, k, v, nullptr, dout, lse, delta, dk, dv, B, H, L, D, stride, scale, 0.0f, 0ULL);
    attention_backward_q_tiled<<<grid, 128, (4 * 32 * 65 + 32 * 33) * 4>>>(q, k, v, nullptr, dout, lse, delta, dq, B,
                                                                             H, L, D, stride, scale, 0.0f, 0ULL);
    const char *which = "tiled (before)";
#else
    attention_backward_kv_flash<<<grid, 256>>>(q, k, v, nullptr, dout, lse, delta, dk, dv, B, H, L, D, stride, scale,
                                               0.0f, 0ULL);
    attention_backward_q_flash<<<grid, 256>>>(q, k, v, nullptr, dout, lse, delta, dq, B, H, L, D, stride, scale, 0.0f,
                                              0ULL);
    const char *which = "flash";
#endif
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    printf("HARNESS attention backward %s B=%d H=%d L=%d d=%d (timing only)\n", which, B, H, L, D);
    return 0;
}
