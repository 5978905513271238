// GPGPU-Sim harness (../shared/tools/pascal-model) for kernels/gemm.cu's tiled instances:
// C = op(A) op(B), alpha 1, beta 0, no bias, random inputs, checked against a CPU loop.
// Usage: gemm_tiles M N K TILE LAYOUT [check=1] [splits=1]
//   TILE 128x128|128x64|64x64, LAYOUT nn|nt|tn|tt; splits > 1: split-K as src/ops/gemm.rs runs
//   it (k_chunk = ceil(K / splits) rounded up to 16, partial products into a workspace, then
//   gemm_split_sum); the cycles are both kernels' (the model has no launch latency).
// Build (nvcc 11.8, sm_61, shared runtime so GPGPU-Sim's libcudart is used):
//   nvcc -O2 -gencode arch=compute_61,code=sm_61 -gencode arch=compute_61,code=compute_61 \
//        -cudart shared -I kernels -o gemm_tiles benches/pascal-model/gemm_tiles.cu
// Run: ../shared/tools/pascal-model/run.sh BUILD RUN_DIR ./gemm_tiles 512 512 512 128x128 nn
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>

#include <gemm.cu>  // the project's kernels/gemm.cu, through -I kernels

#include "harness.h"  // CK

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s M N K TILE LAYOUT [check=1]\n", argv[0]);
        return 2;
    }
    const int M = atoi(argv[1]), N = atoi(argv[2]), K = atoi(argv[3]);
    const char *tile = argv[4], *layout = argv[5];
    const int check = argc > 6 ? atoi(argv[6]) : 1;
    int splits = argc > 7 ? atoi(argv[7]) : 1;
    const int k_chunk = splits > 1 ? ((K + splits - 1) / splits + 15) / 16 * 16 : K;
    if (splits > 1) splits = (K + k_chunk - 1) / k_chunk;  // the slices that hold some k
    const int ta = layout[0] == 't', tb = layout[1] == 't';
    // Stored shapes: A is M x K (K x M when ta), B is K x N (N x K when tb); dense leading dims.
    const int lda = ta ? M : K, ldb = tb ? K : N;
    std::vector<float> hA((size_t)M * K), hB((size_t)K * N), hC((size_t)M * N);
    srand(1234);
    for (auto &x : hA) x = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    for (auto &x : hB) x = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    float *dA, *dB, *dC, *dW = nullptr;
    CK(cudaMalloc(&dA, hA.size() * 4));
    CK(cudaMalloc(&dB, hB.size() * 4));
    CK(cudaMalloc(&dC, hC.size() * 4));
    CK(cudaMemcpy(dA, hA.data(), hA.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, hB.data(), hB.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(dC, 0, hC.size() * 4));
    if (splits > 1) CK(cudaMalloc(&dW, (size_t)splits * M * N * 4));
    // Unsplit: C directly. Split: the dense workspace [splits, M, N].
    float *out = splits > 1 ? dW : dC;
    const long long stride_out = splits > 1 ? (long long)M * N : 0LL;
    int bm = 64, bn = 64;
    if (!strcmp(tile, "128x128")) bm = 128, bn = 128;
    else if (!strcmp(tile, "128x64")) bm = 128, bn = 64;
    dim3 grid((N + bn - 1) / bn, (M + bm - 1) / bm, splits), block(256);
    auto t0 = std::chrono::steady_clock::now();
    if (bm == 128 && bn == 128)
        gemm_f32_128x128<<<grid, block>>>(dA, dB, out, nullptr, M, N, K, lda, ldb, N, 0LL, 0LL, stride_out, ta, tb, 1.0f, 0.0f,
                                          nullptr, nullptr, 0, 0.0f, 0ULL, splits, k_chunk);
    else if (bm == 128)
        gemm_f32_128x64<<<grid, block>>>(dA, dB, out, nullptr, M, N, K, lda, ldb, N, 0LL, 0LL, stride_out, ta, tb, 1.0f, 0.0f,
                                          nullptr, nullptr, 0, 0.0f, 0ULL, splits, k_chunk);
    else
        gemm_f32_64x64<<<grid, block>>>(dA, dB, out, nullptr, M, N, K, lda, ldb, N, 0LL, 0LL, stride_out, ta, tb, 1.0f, 0.0f,
                                          nullptr, nullptr, 0, 0.0f, 0ULL, splits, k_chunk);
    CK(cudaGetLastError());
    if (splits > 1) {
        const long long groups = (long long)M * ((N + 3) / 4);
        const int blocks = (int)std::min<long long>((groups + 255) / 256, 65535);
        gemm_split_sum<<<blocks, 256>>>(dW, splits, dC, nullptr, M, N, N, 1, 0LL, 1.0f, 0.0f, nullptr, nullptr, 0, 0.0f,
                                        0ULL);
        CK(cudaGetLastError());
    }
    CK(cudaDeviceSynchronize());
    auto t1 = std::chrono::steady_clock::now();
    CK(cudaMemcpy(hC.data(), dC, hC.size() * 4, cudaMemcpyDeviceToHost));
    double max_err = 0;
    if (check)
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double s = 0;
                for (int k = 0; k < K; k++) {
                    const double a = ta ? hA[(size_t)k * lda + m] : hA[(size_t)m * lda + k];
                    const double b = tb ? hB[(size_t)n * ldb + k] : hB[(size_t)k * ldb + n];
                    s += a * b;
                }
                max_err = fmax(max_err, fabs(s - hC[(size_t)m * N + n]));
            }
    printf("HARNESS gemm_f32_%s split %d %s M=%d N=%d K=%d launch+sync wall %.2f s, max_abs_err %.3g (%s)\n", tile,
           splits, layout, M, N, K, std::chrono::duration<double>(t1 - t0).count(), max_err,
           !check ? "unchecked" : (max_err < 1e-3 * sqrt((double)K) ? "PASS" : "FAIL"));
    return 0;
}
