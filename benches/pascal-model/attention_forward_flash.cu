// (Copied from ../shared/tools/pascal-model/harness/attention_forward.cu for the flash-style kernel.)
// GPGPU-Sim harness for PROJECT/kernels/attention.cu: attention_forward_flash (head_dim <= 64),
// launch config as in src/ops/attention.rs flash_cfg: grid (ceil(L/64), H, B), block 256,
// static shared memory only. No mask, no dropout.
// Separate q, k, v buffers [B, L, H*d] (stride H*d). Usage: attention_forward B H L d
// Build: nvcc ... -I PROJECT/kernels (see build.sh).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>
#include <cuda_runtime.h>

#include <attention.cu>  // PROJECT/kernels/attention.cu, found through -I

#include "harness.h"  // CK

int main(int argc, char **argv) {
    int B = argc > 1 ? atoi(argv[1]) : 1, H = argc > 2 ? atoi(argv[2]) : 12, L = argc > 3 ? atoi(argv[3]) : 128,
        D = argc > 4 ? atoi(argv[4]) : 64;
    const int stride = H * D;
    const size_t n = (size_t)B * L * stride;
    std::vector<float> q(n), k(n), v(n), out(n), lse((size_t)B * H * L);
    srand(42);
    for (auto *vec : {&q, &k, &v})
        for (auto &x : *vec) x = (float)rand() / RAND_MAX * 2.0f - 1.0f;
    float *dq, *dk, *dv, *dout, *dlse;
    CK(cudaMalloc(&dq, n * 4));
    CK(cudaMalloc(&dk, n * 4));
    CK(cudaMalloc(&dv, n * 4));
    CK(cudaMalloc(&dout, n * 4));
    CK(cudaMalloc(&dlse, lse.size() * 4));
    CK(cudaMemcpy(dq, q.data(), n * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dk, k.data(), n * 4, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv, v.data(), n * 4, cudaMemcpyHostToDevice));
    const float scale = 1.0f / sqrtf((float)D);
    dim3 grid((L + 63) / 64, H, B), block(256);

    auto t0 = std::chrono::steady_clock::now();
    attention_forward_flash<<<grid, block>>>(dq, dk, dv, nullptr, dout, dlse, B, H, L, D, stride, scale, 0.0f,
                                                    0ULL);
    CK(cudaGetLastError());
    CK(cudaDeviceSynchronize());
    auto t1 = std::chrono::steady_clock::now();
    CK(cudaMemcpy(out.data(), dout, n * 4, cudaMemcpyDeviceToHost));
    CK(cudaMemcpy(lse.data(), dlse, lse.size() * 4, cudaMemcpyDeviceToHost));
    double max_err = 0, max_lse_err = 0;
    std::vector<double> s(L);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < L; i++) {
                const float *qi = &q[((size_t)b * L + i) * stride + h * D];
                double mx = -1e300;
                for (int j = 0; j < L; j++) {
                    const float *kj = &k[((size_t)b * L + j) * stride + h * D];
                    double d = 0;
                    for (int c = 0; c < D; c++) d += (double)qi[c] * kj[c];
                    s[j] = d * scale;
                    mx = fmax(mx, s[j]);
                }
                double l = 0;
                for (int j = 0; j < L; j++) l += exp(s[j] - mx);
                max_lse_err = fmax(max_lse_err, fabs(mx + log(l) - lse[((size_t)b * H + h) * L + i]));
                for (int c = 0; c < D; c++) {
                    double o = 0;
                    for (int j = 0; j < L; j++) o += exp(s[j] - mx) / l * v[((size_t)b * L + j) * stride + h * D + c];
                    max_err = fmax(max_err, fabs(o - out[((size_t)b * L + i) * stride + h * D + c]));
                }
            }
    printf("HARNESS attention_forward_flash B=%d H=%d L=%d d=%d launch+sync wall %.2f s, max_abs_err out %.3g lse %.3g "
           "(%s)\n",
           B, H, L, D, std::chrono::duration<double>(t1 - t0).count(), max_err, max_lse_err,
           (max_err < 1e-4 && max_lse_err < 1e-4) ? "PASS" : "FAIL");
    return 0;
}
