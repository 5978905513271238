// LayerNorm over the last axis (HF BERT: biased variance, eps from the config), forward and
// backward; and the bias + activation epilogues of the feed-forward block.
#include "common.cuh"

// One warp per row: mean and variance in two passes over the row, then
// y = (x - mean) * rstd * gamma + beta. Saves mean and rstd per row for backward. A row of up
// to LN_ROW_REGS * 32 columns (BERT's 768 among them) is read from memory once, into
// registers -- lane l holds columns l, l + 32, ... -- and the passes run over those; a longer
// row is read once per pass. Both add in the same order.
#define LN_ROW_REGS 24
extern "C" __global__ void HOT_KERNEL layernorm_forward(const float *__restrict__ x, const float *__restrict__ gamma,
                                                        const float *__restrict__ beta, float *__restrict__ y,
                                                        float *__restrict__ mean_out, float *__restrict__ rstd_out,
                                                        int rows, int cols, float eps) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const float *xr = x + (long long)row * cols;
    float *yr = y + (long long)row * cols;
    float mean, rstd;
    if (cols <= LN_ROW_REGS * 32) {
        float xv[LN_ROW_REGS];
#pragma unroll
        for (int i = 0; i < LN_ROW_REGS; i++) xv[i] = lane + 32 * i < cols ? xr[lane + 32 * i] : 0.0f;
        float s = 0.0f;
#pragma unroll
        for (int i = 0; i < LN_ROW_REGS; i++)
            if (lane + 32 * i < cols) s += xv[i];
        mean = warp_sum(s) / (float)cols;
        float v = 0.0f;
#pragma unroll
        for (int i = 0; i < LN_ROW_REGS; i++)
            if (lane + 32 * i < cols) {
                const float d = xv[i] - mean;
                v += d * d;
            }
        rstd = rsqrtf(warp_sum(v) / (float)cols + eps);
#pragma unroll
        for (int i = 0; i < LN_ROW_REGS; i++) {
            const int c = lane + 32 * i;
            if (c < cols) yr[c] = (xv[i] - mean) * rstd * gamma[c] + beta[c];
        }
    } else {
        float s = 0.0f;
        for (int c = lane; c < cols; c += 32) s += xr[c];
        mean = warp_sum(s) / (float)cols;
        float v = 0.0f;
        for (int c = lane; c < cols; c += 32) {
            const float d = xr[c] - mean;
            v += d * d;
        }
        rstd = rsqrtf(warp_sum(v) / (float)cols + eps);
        for (int c = lane; c < cols; c += 32) yr[c] = (xr[c] - mean) * rstd * gamma[c] + beta[c];
    }
    if (lane == 0) {
        mean_out[row] = mean;
        rstd_out[row] = rstd;
    }
}

// One warp per row: with xhat = (x - mean) rstd and g = dy * gamma,
//   dx = rstd (g - mean(g) - xhat mean(g xhat)).
// Also writes dy * xhat per element, whose column sums (sum_columns, deterministic) give dgamma;
// dbeta is the column sum of dy itself. When dx_dropped is given, also writes dropout_backward of
// dx there (rate p, seed: the mask of dropout_forward over [rows, cols]): the post-LayerNorm's
// input was residual + dropout(dense), so the residual path takes dx and the dense path the
// dropped copy, without another pass over dx. Rows of up to LN_ROW_REGS * 32 columns read x
// and dy once, into registers, adding in the same order.
extern "C" __global__ void HOT_KERNEL layernorm_backward(const float *__restrict__ x, const float *__restrict__ gamma,
                                                         const float *__restrict__ mean_in,
                                                         const float *__restrict__ rstd_in,
                                                         const float *__restrict__ dy, float *__restrict__ dx,
                                                         float *__restrict__ dy_xhat, int rows, int cols,
                                                         float *__restrict__ dx_dropped, float p,
                                                         unsigned long long seed) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const long long base = (long long)row * cols;
    const float mean = mean_in[row], rstd = rstd_in[row];
    const float keep_scale = 1.0f / (1.0f - p);
    float sg = 0.0f, sgx = 0.0f;
    if (cols <= LN_ROW_REGS * 32) {
        // As in the forward: x and dy read once into registers (lane l: columns l, l + 32, ...).
        float xv[LN_ROW_REGS], dyv[LN_ROW_REGS];
#pragma unroll
        for (int i = 0; i < LN_ROW_REGS; i++) {
            const int c = lane + 32 * i;
            xv[i] = c < cols ? x[base + c] : 0.0f;
            dyv[i] = c < cols ? dy[base + c] : 0.0f;
        }
#pragma unroll
        for (int i = 0; i < LN_ROW_REGS; i++) {
            const int c = lane + 32 * i;
            if (c >= cols) continue;
            const float xhat = (xv[i] - mean) * rstd;
            const float g = dyv[i] * gamma[c];
            sg += g;
            sgx += g * xhat;
            dy_xhat[base + c] = dyv[i] * xhat;
        }
        sg = warp_sum(sg) / (float)cols;
        sgx = warp_sum(sgx) / (float)cols;
#pragma unroll
        for (int i = 0; i < LN_ROW_REGS; i++) {
            const int c = lane + 32 * i;
            if (c >= cols) continue;
            const float xhat = (xv[i] - mean) * rstd;
            const float d = rstd * (dyv[i] * gamma[c] - sg - xhat * sgx);
            dx[base + c] = d;
            if (dx_dropped) dx_dropped[base + c] = dropout_keep(seed, base + c, p) ? d * keep_scale : 0.0f;
        }
        return;
    }
    for (int c = lane; c < cols; c += 32) {
        const float xhat = (x[base + c] - mean) * rstd;
        const float g = dy[base + c] * gamma[c];
        sg += g;
        sgx += g * xhat;
        dy_xhat[base + c] = dy[base + c] * xhat;
    }
    sg = warp_sum(sg) / (float)cols;
    sgx = warp_sum(sgx) / (float)cols;
    for (int c = lane; c < cols; c += 32) {
        const float xhat = (x[base + c] - mean) * rstd;
        const float d = rstd * (dy[base + c] * gamma[c] - sg - xhat * sgx);
        dx[base + c] = d;
        if (dx_dropped) dx_dropped[base + c] = dropout_keep(seed, base + c, p) ? d * keep_scale : 0.0f;
    }
}
