// Small kernels that pin down the simulator's CUDA semantics (tests/simulator_semantics.rs).
#include "common.cuh"

// out[4 * t + i] = the four shuffle flavours with the given width and offset.
extern "C" __global__ void probe_shuffles(const int *x, int *out, int offset, int width) {
    const int t = threadIdx.x;
    const int v = x[t];
    out[4 * t + 0] = __shfl_sync(FULL_MASK, v, offset, width);
    out[4 * t + 1] = __shfl_up_sync(FULL_MASK, v, offset, width);
    out[4 * t + 2] = __shfl_down_sync(FULL_MASK, v, offset, width);
    out[4 * t + 3] = __shfl_xor_sync(FULL_MASK, v, offset, width);
}

// Votes and block-wide predicates over pred[t].
extern "C" __global__ void probe_votes(const int *pred, unsigned *out) {
    const int t = threadIdx.x;
    const int p = pred[t];
    const unsigned ballot = __ballot_sync(FULL_MASK, p);
    const int any = __any_sync(FULL_MASK, p);
    const int all = __all_sync(FULL_MASK, p);
    const int count = __syncthreads_count(p);
    const int and_ = __syncthreads_and(p);
    const int or_ = __syncthreads_or(p);
    out[6 * t + 0] = ballot;
    out[6 * t + 1] = any;
    out[6 * t + 2] = all;
    out[6 * t + 3] = count;
    out[6 * t + 4] = and_;
    out[6 * t + 5] = or_;
}

// Float and int atomics from every thread of every block; dims reported by thread 0 of block 0.
extern "C" __global__ void probe_atomics(float *fsum, int *isum, int *imax, unsigned *dims) {
    atomicAdd(fsum, 0.5f);
    atomicAdd(isum, 1);
    const int id = (blockIdx.z * gridDim.y + blockIdx.y) * gridDim.x + blockIdx.x;
    atomicMax(imax, id * 1000 + (int)(threadIdx.z * blockDim.y * blockDim.x + threadIdx.y * blockDim.x + threadIdx.x));
    if (id == 0 && threadIdx.x == 0 && threadIdx.y == 0 && threadIdx.z == 0) {
        dims[0] = blockDim.x, dims[1] = blockDim.y, dims[2] = blockDim.z;
        dims[3] = gridDim.x, dims[4] = gridDim.y, dims[5] = gridDim.z;
    }
}

// Copies dynamic shared memory out before anyone writes it: the simulator NaN-fills it.
extern "C" __global__ void probe_dynamic_shared_is_poisoned(float *out, int n) {
    DYNAMIC_SHARED(float, s);
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[blockIdx.x * n + i] = s[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) s[i] = 1.0f;  // dirty it for the next block
}

// A block-wide tree reduction in dynamic shared memory with barriers: correct under any order.
extern "C" __global__ void probe_block_sum(const float *x, float *out, int n) {
    DYNAMIC_SHARED(float, s);
    const int t = threadIdx.x;
    float acc = 0.0f;
    for (int i = t; i < n; i += blockDim.x) acc += x[i];
    s[t] = acc;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride /= 2) {
        if (t < stride) s[t] += s[t + stride];
        __syncthreads();
    }
    if (t == 0) out[0] = s[0];
}
