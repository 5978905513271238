// Row softmax over the last axis, forward and backward.
#include "common.cuh"

// One warp per row. Idea: a single pass keeps a running max and a running sum rescaled to it
// (online softmax), the warp combines the lanes' (max, sum) pairs with shuffles, then a
// second pass writes exp(x - max) / sum. Rows of any length; 4 rows per 128-thread block.
extern "C" __global__ void HOT_KERNEL softmax_rows_forward(const float *__restrict__ x, float *__restrict__ y, int rows, int cols) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;  // whole warps leave together: no collective is left waiting
    const float *xr = x + (long long)row * cols;
    float m = -float_infinity(), s = 0.0f;
    for (int j = lane; j < cols; j += 32) {
        float v = xr[j];
        float m_new = fmaxf(m, v);
        if (m_new == -float_infinity()) continue;  // nothing but -inf so far: keep (m, s) = (-inf, 0)
        s = s * expf(m - m_new) + expf(v - m_new);
        m = m_new;
    }
    float row_max = warp_max(m);
    s = m == -float_infinity() ? 0.0f : s * expf(m - row_max);
    float inv = 1.0f / warp_sum(s);
    float *yr = y + (long long)row * cols;
    for (int j = lane; j < cols; j += 32) yr[j] = expf(xr[j] - row_max) * inv;
}

// dx = y * (dy - sum(dy * y)), one warp per row.
extern "C" __global__ void HOT_KERNEL softmax_rows_backward(const float *__restrict__ y, const float *__restrict__ dy,
                                                 float *__restrict__ dx, int rows, int cols) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const long long base = (long long)row * cols;
    float dot = 0.0f;
    for (int j = lane; j < cols; j += 32) dot += dy[base + j] * y[base + j];
    dot = warp_sum(dot);
    for (int j = lane; j < cols; j += 32) dx[base + j] = y[base + j] * (dy[base + j] - dot);
}
