// Reductions: per row over the last axis (sum, mean, max, sum of squares) with their backward, and per column.
#include "common.cuh"

#define REDUCE_SUM 0
#define REDUCE_MEAN 1
#define REDUCE_MAX 2
#define REDUCE_SUM_SQUARES 3

// One warp per row: each lane folds a strided share of the row, then a butterfly combines the
// lanes. The order of additions is fixed, so results are bitwise reproducible.
extern "C" __global__ void HOT_KERNEL reduce_rows_forward(const float *__restrict__ x, float *__restrict__ out, int rows, int cols,
                                               int op) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const float *xr = x + (long long)row * cols;
    float acc = op == REDUCE_MAX ? -float_infinity() : 0.0f;
    for (int j = lane; j < cols; j += 32) {
        const float v = xr[j];
        acc = op == REDUCE_MAX ? fmaxf(acc, v) : (op == REDUCE_SUM_SQUARES ? fmaf(v, v, acc) : acc + v);
    }
    acc = op == REDUCE_MAX ? warp_max(acc) : warp_sum(acc);
    if (op == REDUCE_MEAN) acc /= (float)cols;
    if (lane == 0) out[row] = acc;
}

// Backward of reduce_rows_forward. sum: dx = dy; mean: dx = dy / cols; sum of squares:
// dx = 2 x dy; max: the whole dy goes to the first position holding the maximum (PyTorch's
// choice for max along a dimension).
extern "C" __global__ void reduce_rows_backward(const float *__restrict__ x, const float *__restrict__ out,
                                                const float *__restrict__ dout, float *__restrict__ dx, int rows,
                                                int cols, int op) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const long long base = (long long)row * cols;
    const float g = dout[row];
    if (op == REDUCE_SUM_SQUARES) {
        for (int j = lane; j < cols; j += 32) dx[base + j] = 2.0f * x[base + j] * g;
        return;
    }
    if (op != REDUCE_MAX) {
        const float v = op == REDUCE_MEAN ? g / (float)cols : g;
        for (int j = lane; j < cols; j += 32) dx[base + j] = v;
        return;
    }
    int first = cols;
    for (int j = lane; j < cols; j += 32)
        if (x[base + j] == out[row]) {
            first = j;
            break;
        }
    first = warp_min_int(first);
    for (int j = lane; j < cols; j += 32) dx[base + j] = j == first ? g : 0.0f;
}

// Sum over rows for every column (bias gradients). Block = 32 columns x 8 row groups: each
// thread walks its column down a strided set of rows (coalesced across the 32 columns), then
// the 8 partial sums meet in shared memory in a fixed order, so the result is deterministic.
// Rows are `ld` floats apart (ld >= cols): a column block of a wider matrix, such as one of Q, K
// and V in the fused [rows, 3H] gradient, is summed in place.
extern "C" __global__ void sum_columns(const float *__restrict__ x, float *__restrict__ out, int rows, int cols,
                                       int ld) {
    __shared__ float partial[8][33];
    const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
    const int col = blockIdx.x * 32 + tx;
    float acc = 0.0f;
    if (col < cols)
        for (int r = ty; r < rows; r += 8) acc += x[(long long)r * ld + col];
    partial[ty][tx] = acc;
    __syncthreads();
    if (ty == 0 && col < cols) {
        float total = 0.0f;
        for (int i = 0; i < 8; i++) total += partial[i][tx];
        out[col] = total;
    }
}

// Partial sums of squares for a gradient norm: block b folds a grid-stride slice of x into
// partial[b] (each thread in index order, then a fixed shuffle tree), so the result is the same
// bit for bit on every run; the host adds the partials in f64. Many blocks keep many loads in
// flight, where one block per row (reduce_rows_forward) would read a whole tensor alone.
// Block b's share of sum x^2 (of `blocks` blocks) into *out: each thread in index order, then
// a fixed shuffle tree.
__device__ __forceinline__ void sum_squares_block(const float *x, long long n, long long b, long long blocks,
                                                  float *out) {
    __shared__ float warp_totals[32];
    float acc = 0.0f;
    for (long long i = b * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) acc = fmaf(x[i], x[i], acc);
    acc = warp_sum(acc);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
    if (lane == 0) warp_totals[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        float v = lane < warps ? warp_totals[lane] : 0.0f;
        v = warp_sum(v);
        if (lane == 0) *out = v;
    }
}

extern "C" __global__ void sum_squares_partial(const float *__restrict__ x, float *__restrict__ partial, long long n) {
    sum_squares_block(x, n, blockIdx.x, gridDim.x, partial + blockIdx.x);
}

// sum_squares_partial over many tensors in one launch. `table` holds, per tensor t < count,
// {address, n, first block, blocks}, then one tensor index per block of the grid. Block b of
// tensor t does exactly what block b of sum_squares_partial launched on that tensor alone with
// `blocks` blocks does, so the partials -- and the norm -- are the same bits as one launch per
// tensor, in a fixed order, for a fraction of the launches.
extern "C" __global__ void sum_squares_partial_multi(const unsigned long long *__restrict__ table, int count,
                                                     float *__restrict__ partial) {
    const unsigned long long t = table[4 * (long long)count + blockIdx.x];
    const float *x = reinterpret_cast<const float *>(table[4 * t]);
    const long long n = (long long)table[4 * t + 1], first = (long long)table[4 * t + 2];
    sum_squares_block(x, n, blockIdx.x - first, (long long)table[4 * t + 3], partial + blockIdx.x);
}
