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

// y = x * Phi(x): GELU in the erf form of HF BERT (not the tanh approximation).
extern "C" __global__ void HOT_KERNEL gelu_forward(const float *__restrict__ x, float *__restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        y[i] = gelu(x[i]);
    }
}

// In place, g holding dy on entry and dx on exit: dx = dy * (Phi(x) + x * phi(x)), with phi the
// standard normal density. In place so that backward never holds dy and dx of the FFN's width.
extern "C" __global__ void HOT_KERNEL gelu_backward(const float *__restrict__ x, float *__restrict__ g, long long n) {
    GRID_STRIDE_LOOP(i, n) {
        const float v = x[i];
        const float cdf = normal_cdf(v);
        const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
        g[i] = g[i] * (cdf + v * pdf);
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

// dst[m][c][r] = src[m][r][c] for `count` row-major rows x cols matrices: a layout change, e.g.
// the recurrent weights [G*H][H] to [H][G*H] so the recurrence reads them coalesced.
extern "C" __global__ void transpose_f32(const float *__restrict__ src, float *__restrict__ dst, int count, int rows,
                                         int cols) {
    GRID_STRIDE_LOOP(i, (long long)count * rows * cols) {
        const long long m = i / ((long long)rows * cols);
        const int r = (int)(i / cols % rows), c = (int)(i % cols);
        dst[(m * cols + c) * rows + r] = src[i];
    }
}

// dst[r * dst_ld + c] = src[r * src_ld + c] for a rows x cols block: concatenating feature
// blocks side by side (and splitting them again in backward) without a GEMM.
extern "C" __global__ void copy_block(const float *__restrict__ src, int src_ld, float *__restrict__ dst, int dst_ld,
                                      int rows, int cols) {
    GRID_STRIDE_LOOP(i, (long long)rows * cols) {
        const long long r = i / cols;
        const int c = (int)(i % cols);
        dst[r * dst_ld + c] = src[r * src_ld + c];
    }
}

// ReLU (ERNIE's hidden_act) and its backward, which needs only the input's sign.
extern "C" __global__ void relu_forward(const float *__restrict__ x, float *__restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) y[i] = fmaxf(x[i], 0.0f);
}
// In place like gelu_backward: g holds dy on entry, dx on exit.
extern "C" __global__ void relu_backward(const float *__restrict__ x, float *__restrict__ g, long long n) {
    GRID_STRIDE_LOOP(i, n) g[i] = x[i] > 0.0f ? g[i] : 0.0f;
}

// y = tanh(x) (BERT's pooler); backward from the output: dx = dy (1 - y^2).
extern "C" __global__ void tanh_forward(const float *__restrict__ x, float *__restrict__ y, long long n) {
    GRID_STRIDE_LOOP(i, n) y[i] = tanhf(x[i]);
}
extern "C" __global__ void tanh_backward(const float *__restrict__ y, const float *__restrict__ dy,
                                         float *__restrict__ dx, long long n) {
    GRID_STRIDE_LOOP(i, n) dx[i] = dy[i] * (1.0f - y[i] * y[i]);
}
