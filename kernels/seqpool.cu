// Pooling a sequence of token features [B, L, D] into one vector per sequence [B, D], over each
// sequence's real tokens only: max, mean, or the last states of a bidirectional RNN (forward
// half at the last real token, reverse half at the first, like h_n of a packed nn.GRU).
#include "common.cuh"

#define POOL_MAX 0
#define POOL_MEAN 1
#define POOL_LAST 2

// One thread per (sequence, feature). `halves` is 2 for bidirectional features (last-state
// pooling takes the second half from position 0), else 1. argmax records the winning position
// for max pooling (first maximum, as torch.max).
extern "C" __global__ void seq_pool_forward(const float *__restrict__ x, const int *__restrict__ lengths,
                                            float *__restrict__ out, int *__restrict__ argmax, int batch, int len,
                                            int features, int mode, int halves) {
    const long long total = (long long)batch * features;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int b = (int)(i / features), d = (int)(i % features), n = lengths[b];
        const float *xb = x + (long long)b * len * features + d;
        float v;
        if (mode == POOL_MAX) {
            int at = 0;
            v = xb[0];
            for (int t = 1; t < n; t++)
                if (xb[(long long)t * features] > v) v = xb[(long long)t * features], at = t;
            argmax[i] = at;
        } else if (mode == POOL_MEAN) {
            v = 0.0f;
            for (int t = 0; t < n; t++) v += xb[(long long)t * features];
            v /= (float)n;
        } else {
            const bool reverse_half = halves == 2 && d >= features / 2;
            v = xb[(long long)(reverse_half ? 0 : n - 1) * features];
        }
        out[i] = v;
    }
}

// Writes every element of dx [B, L, D]: the pooled gradient where the forward read, 0 elsewhere.
extern "C" __global__ void seq_pool_backward(const float *__restrict__ dout, const int *__restrict__ lengths,
                                             const int *__restrict__ argmax, float *__restrict__ dx, int batch, int len,
                                             int features, int mode, int halves) {
    const long long total = (long long)batch * len * features;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int d = (int)(i % features);
        const int t = (int)(i / features % len), b = (int)(i / features / len), n = lengths[b];
        const long long o = (long long)b * features + d;
        float g = 0.0f;
        if (t < n) {
            if (mode == POOL_MAX) g = argmax[o] == t ? dout[o] : 0.0f;
            else if (mode == POOL_MEAN) g = dout[o] / (float)n;
            else g = t == ((halves == 2 && d >= features / 2) ? 0 : n - 1) ? dout[o] : 0.0f;
        }
        dx[i] = g;
    }
}
