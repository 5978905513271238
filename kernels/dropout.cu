// Dropout from a counter-based generator: whether element i is kept is a hash of (seed, i), so
// nothing is stored between forward and backward; backward regenerates the same mask.
#include "common.cuh"

// y = x / (1 - p) where kept, 0 where dropped (inverted dropout, as torch.nn.Dropout in training).
extern "C" __global__ void dropout_forward(const float *__restrict__ x, float *__restrict__ y, long long n, float p,
                                           unsigned long long seed) {
    const float scale = 1.0f / (1.0f - p);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = dropout_keep(seed, i, p) ? x[i] * scale : 0.0f;
}

// dx = dy / (1 - p) where the forward kept, 0 elsewhere: the same (seed, i) give the same mask.
extern "C" __global__ void dropout_backward(const float *__restrict__ dy, float *__restrict__ dx, long long n, float p,
                                            unsigned long long seed) {
    const float scale = 1.0f / (1.0f - p);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        dx[i] = dropout_keep(seed, i, p) ? dy[i] * scale : 0.0f;
}
