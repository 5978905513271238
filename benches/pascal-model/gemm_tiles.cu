// GPGPU-Sim harness (../shared/tools/pascal-model) for kernels/gemm.cu's tiled instances:
// C = op(A) op(B), alpha 1, beta 0, no bias, random inputs, checked against a CPU loop.
// Usage: gemm_tiles M N K TILE LAYOUT [check=1]   TILE 128x128|128x64|64x64, LAYOUT nn|nt|tn|tt
// Build (nvcc 11.8, sm_61, shared runtime so GPGPU-Sim's libcudart is used):
//   nvcc -O2 -gencode arch=compute_61,code=sm_61 -gencode arch=compute_61,code=compute_61 \
//        -cudart shared -I kernels -o gemm_tiles benches/pascal-model/gemm_tiles.cu
// Run: ../shared/tools/pascal-model/run.sh BUILD RUN_DIR ./gemm_tiles 512 512 512 128x128 nn
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <cuda_runtime.h>

#include <gemm.cu>  // the project's kernels/gemm.cu, through -I kernels

#define CK(x)                                                                                            \
    do {                                                                                                 \
        cudaError_t e = (x);                                                                             \
        if (e != cudaSuccess) {                                                                          \
            fprintf(stderr, "CUDA error %s at %s:%d: %s\n", #x, __FILE__, __LINE__, cudaGetErrorString(e)); \
            exit(1);                                                                                     \
        }                                                                                                \
    } while (0)

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s M N K TILE LAYOUT [check=1]\n", argv[0]);
        return 2;
    }
    const int M = atoi(argv[1]), N = atoi(argv[2]), K = atoi(argv[3]);
    const char *tile = argv[4], *layout = argv[5];
    const int check = argc > 6 ? atoi(argv[6]) : 1;
    const int ta = layout[0] == 't', tb = layout[1] == 't';
    // Stored shapes: A is M x K (K x M when ta), B is K x N (N x K when tb); dense leading dims.
    const int lda = ta ? M : K, ldb = tb ? K : N;
    std::vector<float> hA((size_t)M * K), hB((size_t)K * N), hC((size_t)M * N);
    srand(1234);
    for (auto &x : hA) x = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    for (auto &x : hB) x = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    float *dA, *dB, *dC;
    CK(cudaMalloc(&dA, hA.size() * 4));
    CK(cudaMalloc(&dB, hB.size() * 4));
    CK(cudaMalloc(&dC, hC.size() * 4));
    CK(cudaMemcpy(dA, hA.data(), hA.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dB, hB.data(), hB.size() * 4, cudaMemcpyHostToDevice));
    CK(cudaMemset(dC, 0, hC.size() * 4));
    int bm = 64, bn = 64;
    if (!strcmp(tile, "128x128")) bm = 128, bn = 128;
    else if (!strcmp(tile, "128x64")) bm = 128, bn = 64;
    dim3 grid((N + bn - 1) / bn, (M + bm - 1) / bm, 1), block(256);
    auto t0 = std::chrono::steady_clock::now();
    if (bm == 128 && bn == 128)
        gemm_f32_128x128<<<grid, block>>>(dA, dB, dC, nullptr, M, N, K, lda, ldb, N, 0LL, 0LL, 0LL, ta, tb, 1.0f, 0.0f,
                                          nullptr, nullptr, 0, 0.0f, 0ULL);
    else if (bm == 128)
        gemm_f32_128x64<<<grid, block>>>(dA, dB, dC, nullptr, M, N, K, lda, ldb, N, 0LL, 0LL, 0LL, ta, tb, 1.0f, 0.0f,
                                          nullptr, nullptr, 0, 0.0f, 0ULL);
    else
        gemm_f32_64x64<<<grid, block>>>(dA, dB, dC, nullptr, M, N, K, lda, ldb, N, 0LL, 0LL, 0LL, ta, tb, 1.0f, 0.0f,
                                          nullptr, nullptr, 0, 0.0f, 0ULL);
    CK(cudaGetLastError());
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
    printf("HARNESS gemm_f32_%s %s M=%d N=%d K=%d launch+sync wall %.2f s, max_abs_err %.3g (%s)\n", tile, layout, M,
           N, K, std::chrono::duration<double>(t1 - t0).count(), max_err,
           !check ? "unchecked" : (max_err < 1e-3 * sqrt((double)K) ? "PASS" : "FAIL"));
    return 0;
}
