// Elementwise maps: add, scale, GELU (erf form, as HF BERT) forward and backward, fill.
// Each is a grid-stride loop: any n, any grid, coalesced, memory-bound by design.
#include "common.cuh"

#define GRID_STRIDE_LOOP(i, n) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (n); i += (long long)gridDim.x * blockDim.x)

// c = a + b (also the backward of a residual branch's merge, read the other way round).
extern "C" __global__ void add_forward(const float *__restrict__ a, const float *__restrict__ b, float *__restrict__ c,
                                       long long n) {
    GRID_STRIDE_LOOP(i, n) c[i] = a[i] + b[i];
}

// y = alpha * x; its backward is the same map applied to dy.
extern "C" __global__ void scale_forward(const float *__restrict__ x, float *__restrict__ y, float alpha, long long n) {
    GRID_STRIDE_LOOP(i, n) y[i] = alpha * x[i];
}

// y = x * Phi(x) = 0.5 x (1 + erf(x / sqrt 2)).
extern "C" __global__ void HOT_KERNEL gelu_forward(const float *__restrict__ x, float *__restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// dx = dy * (Phi(x) + x * phi(x)), with phi the standard normal density.
extern "C" __global__ void HOT_KERNEL gelu_backward(const float *__restrict__ x, const float *__restrict__ dy,
                                         float *__restrict__ dx, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        dx[i] = dy[i] * (cdf + v * pdf);
    }
}

extern "C" __global__ void fill_f32(float *__restrict__ y, float value, long long n) { GRID_STRIDE_LOOP(i, n) y[i] = value; }

// fp16 is a storage format on sm_61 (arithmetic at 1/64 rate): these convert at the edges.
extern "C" __global__ void convert_f32_to_f16(const float *__restrict__ x, __half *__restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) y[i] = __float2half(x[i]);
}
extern "C" __global__ void convert_f16_to_f32(const __half *__restrict__ x, float *__restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) y[i] = __half2float(x[i]);
}
