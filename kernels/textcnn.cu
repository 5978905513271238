// Text-CNN: 1-D convolution along the token axis, ReLU, masked max-over-time pooling.
//
// The convolution itself is GEMMs (gemm.cu): with the token states copied into a zero-padded,
// row-per-token buffer X (every sequence Lp >= max(L, width) rows, padding rows zero), the
// output for all sequences at once is Out = sum_k X[k:] Wk + bias, one GEMM per tap k, where Wk
// is tap k of the weight as a C x F matrix. Rows of Out that straddle two sequences are garbage
// and never read: pooling looks only at each sequence's valid windows. These kernels do the
// rest: the padding copy, the weight permutation, and the pooling with its backward.
#include "common.cuh"

// X[b * Lp + t, :] = x[b, t, :] for t < length_b, 0 for the rest of the Lp rows; the `extra`
// rows after the last sequence (taps read up to width - 1 rows past a sequence) are zero too.
extern "C" __global__ void textcnn_pad_rows(const float *__restrict__ x, const int *__restrict__ lengths,
                                            float *__restrict__ padded, int batch, int len, int padded_len,
                                            int channels, int extra) {
    const long long total = ((long long)batch * padded_len + extra) * channels;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / channels;
        const int c = (int)(i % channels);
        const int b = (int)(row / padded_len), t = (int)(row % padded_len);
        padded[i] = (b < batch && t < lengths[b]) ? x[((long long)b * len + t) * channels + c] : 0.0f;
    }
}

// The backward of textcnn_pad_rows: dx[b, t, :] = dX[b * Lp + t, :] for real tokens, 0 at padding.
extern "C" __global__ void textcnn_unpad_rows(const float *__restrict__ dpadded, const int *__restrict__ lengths,
                                              float *__restrict__ dx, int batch, int len, int padded_len, int channels) {
    const long long total = (long long)batch * len * channels;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const long long row = i / channels;
        const int c = (int)(i % channels);
        const int b = (int)(row / len), t = (int)(row % len);
        dx[i] = t < lengths[b] ? dpadded[((long long)b * padded_len + t) * channels + c] : 0.0f;
    }
}

// torch.nn.Conv1d's weight [F, C, width] to taps [width, C, F] (each tap a row-major C x F GEMM
// operand), or back (to_torch = 1), e.g. for the weight gradient.
extern "C" __global__ void textcnn_permute_weight(const float *__restrict__ src, float *__restrict__ dst, int filters,
                                                  int channels, int width, int to_torch) {
    const long long total = (long long)filters * channels * width;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        // i indexes the torch layout [f, c, k]
        const int k = (int)(i % width);
        const int c = (int)(i / width % channels);
        const int f = (int)(i / ((long long)width * channels));
        const long long tap = ((long long)k * channels + c) * filters + f;
        if (to_torch) dst[i] = src[tap];
        else dst[tap] = src[i];
    }
}

// Windows of sequence b that pooling may choose: starts 0 .. max(length_b - width, 0). A sequence
// shorter than the width has one window, over its tokens and zero padding (as if padded to width).
__device__ __forceinline__ int textcnn_windows(int length, int width) { return length >= width ? length - width + 1 : 1; }

// One thread per (sequence, filter): pooled = max(0, max over valid windows of Out) — ReLU then
// max, as relu commutes with max — written at column offset `col` of a [batch, pooled_cols]
// matrix, so several widths fill one concatenated feature vector. argmax keeps the window that
// won (-1 when ReLU zeroed it: no gradient flows).
extern "C" __global__ void textcnn_pool_forward(const float *__restrict__ out, const int *__restrict__ lengths,
                                                float *__restrict__ pooled, int *__restrict__ argmax, int batch,
                                                int padded_len, int filters, int width, int pooled_cols, int col) {
    const long long total = (long long)batch * filters;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int b = (int)(i / filters), f = (int)(i % filters);
        const int windows = textcnn_windows(lengths[b], width);
        float best = 0.0f;
        int at = -1;
        for (int t = 0; t < windows; t++) {
            const float v = out[((long long)b * padded_len + t) * filters + f];
            if (v > best) best = v, at = t;  // strict: the first maximum wins, as in torch.max
        }
        pooled[(long long)b * pooled_cols + col + f] = best;
        argmax[i] = at;
    }
}

// dOut is zero except at each (sequence, filter)'s winning window, which gets the pooled
// gradient. Writes every element of dOut (all Lp rows of every sequence plus none beyond).
extern "C" __global__ void textcnn_pool_backward(const float *__restrict__ dpooled, const int *__restrict__ argmax,
                                                 float *__restrict__ dout, int batch, int padded_len, int filters,
                                                 int pooled_cols, int col) {
    const long long total = (long long)batch * padded_len * filters;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int f = (int)(i % filters);
        const long long row = i / filters;
        const int b = (int)(row / padded_len), t = (int)(row % padded_len);
        dout[i] = argmax[(long long)b * filters + f] == t ? dpooled[(long long)b * pooled_cols + col + f] : 0.0f;
    }
}

// Feature maps instead of pooled features, for a network in series after the convolution
// (textcnn-bigru): maps[b, t, col + f] = ReLU(Out[b * Lp + t, f]) for real tokens t (the window
// starting at t, zero padding past the sequence's end), 0 at padding.
extern "C" __global__ void textcnn_maps_forward(const float *__restrict__ out, const int *__restrict__ lengths,
                                                float *__restrict__ maps, int batch, int len, int padded_len,
                                                int filters, int cols, int col) {
    const long long total = (long long)batch * len * filters;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int f = (int)(i % filters);
        const long long row = i / filters;
        const int b = (int)(row / len), t = (int)(row % len);
        const float v = out[((long long)b * padded_len + t) * filters + f];
        maps[row * cols + col + f] = t < lengths[b] ? fmaxf(v, 0.0f) : 0.0f;
    }
}

// Backward of textcnn_maps_forward through the ReLU; writes all Lp rows of every sequence.
extern "C" __global__ void textcnn_maps_backward(const float *__restrict__ out, const float *__restrict__ dmaps,
                                                 const int *__restrict__ lengths, float *__restrict__ dout, int batch,
                                                 int len, int padded_len, int filters, int cols, int col) {
    const long long total = (long long)batch * padded_len * filters;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int f = (int)(i % filters);
        const long long row = i / filters;
        const int b = (int)(row / padded_len), t = (int)(row % padded_len);
        const bool live = t < len && t < lengths[b] && out[i] > 0.0f;
        dout[i] = live ? dmaps[((long long)b * len + t) * cols + col + f] : 0.0f;
    }
}
