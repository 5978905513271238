// Token embeddings: a gather forward, a deterministic scatter backward.
#include "common.cuh"

// out[i, :] = table[ids[i], :] for every token i (padding tokens too: later layers mask them).
extern "C" __global__ void embedding_forward(const int *__restrict__ ids, const float *__restrict__ table,
                                             float *__restrict__ out, int tokens, int dim) {
    const long long total = (long long)tokens * dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x)
        out[i] = table[(long long)ids[i / dim] * dim + i % dim];
}

// dtable[row, :] = sum of dout over the tokens holding that row's id. Idea: the host sorts the
// token positions by id (order, grouped by `starts` per distinct id); one thread per (distinct
// id, feature) sums its group in that fixed order. No atomics, so the result is the same bit
// for bit on every run. Rows no token uses are left alone (the caller zero-fills).
extern "C" __global__ void embedding_backward(const float *__restrict__ dout, const int *__restrict__ order,
                                              const int *__restrict__ starts, const int *__restrict__ rows,
                                              float *__restrict__ dtable, int distinct, int dim) {
    const long long total = (long long)distinct * dim;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int u = (int)(i / dim), d = (int)(i % dim);
        float acc = 0.0f;
        for (int k = starts[u]; k < starts[u + 1]; k++) acc += dout[(long long)order[k] * dim + d];
        dtable[(long long)rows[u] * dim + d] = acc;
    }
}
