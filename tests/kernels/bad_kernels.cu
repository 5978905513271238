// Deliberately broken kernels: the simulator must catch each one (tests/simulator_catches_bugs.rs).
// They are compiled for the simulator only and never registered as engine ops.
#include "common.cuh"

// A 16x16-tiled square matmul whose barrier between storing the tiles and reading them is
// missing: threads read tile elements their neighbours have not written yet.
extern "C" __global__ void bad_gemm_missing_barrier(const float *A, const float *B, float *C, int n) {
    __shared__ float As[16][16];
    __shared__ float Bs[16][16];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int row = blockIdx.y * 16 + ty, col = blockIdx.x * 16 + tx;
    float acc = 0.0f;
    for (int k0 = 0; k0 < n; k0 += 16) {
        As[ty][tx] = (row < n && k0 + tx < n) ? A[row * n + k0 + tx] : 0.0f;
        Bs[ty][tx] = (k0 + ty < n && col < n) ? B[(k0 + ty) * n + col] : 0.0f;
        // missing: __syncthreads();
        for (int k = 0; k < 16; k++) acc += As[ty][k] * Bs[k][tx];
        __syncthreads();
    }
    if (row < n && col < n) C[row * n + col] = acc;
}

// Each thread reads its left neighbour's slot without a barrier. Forward order hides the bug
// (the neighbour always ran first); reverse and random orders expose it.
extern "C" __global__ void bad_neighbour_missing_barrier(const float *x, float *y, int n) {
    DYNAMIC_SHARED(float, slots);
    const int t = threadIdx.x;
    slots[t] = x[blockIdx.x * blockDim.x + t];
    // missing: __syncthreads();
    y[blockIdx.x * blockDim.x + t] = t == 0 ? slots[0] : slots[t - 1];
}

// The same computation, correct: the control for the test above.
extern "C" __global__ void good_neighbour_with_barrier(const float *x, float *y, int n) {
    DYNAMIC_SHARED(float, slots);
    const int t = threadIdx.x;
    slots[t] = x[blockIdx.x * blockDim.x + t];
    __syncthreads();
    y[blockIdx.x * blockDim.x + t] = t == 0 ? slots[0] : slots[t - 1];
}

// Two halves of the block wait at different barriers: a hang or corruption on real hardware.
extern "C" __global__ void bad_divergent_barrier(float *y) {
    if (threadIdx.x < 16) {
        __syncthreads();
        y[threadIdx.x] = 1.0f;
    } else {
        __syncthreads();
        y[threadIdx.x] = 2.0f;
    }
}

// One thread leaves early while the rest wait at a barrier.
extern "C" __global__ void bad_exit_before_barrier(float *y) {
    if (threadIdx.x == 5) return;
    __syncthreads();
    y[threadIdx.x] = 1.0f;
}

// A full-warp shuffle in a block of 48 threads: the second warp has only 16 lanes.
extern "C" __global__ void bad_partial_warp_shuffle(const float *x, float *y) {
    float v = x[threadIdx.x];
    v += __shfl_down_sync(0xffffffffu, v, 1);
    y[threadIdx.x] = v;
}

// A shuffle reading a lane outside its mask.
extern "C" __global__ void bad_shuffle_outside_mask(const float *x, float *y) {
    if (threadIdx.x < 16) {
        float v = __shfl_sync(0x0000ffffu, x[threadIdx.x], threadIdx.x + 8);
        y[threadIdx.x] = v;
    }
}

// Lanes of one warp name different masks for what should be one collective.
extern "C" __global__ void bad_mismatched_masks(const float *x, float *y) {
    const unsigned mask = threadIdx.x < 16 ? 0x0000ffffu : 0xffffffffu;
    y[threadIdx.x] = __shfl_xor_sync(mask, x[threadIdx.x], 1);
}

// Lane 0 waits in a full-warp shuffle that the other lanes never reach: they wait at a barrier.
extern "C" __global__ void bad_deadlock(const float *x, float *y) {
    float v = x[threadIdx.x];
    if (threadIdx.x == 0) v = __shfl_sync(FULL_MASK, v, 1);
    __syncthreads();
    y[threadIdx.x] = v;
}

// Off by one: the last thread writes one element past the end of y (n elements).
extern "C" __global__ void bad_write_past_end(float *y, int n) {
    const int i = threadIdx.x;
    if (i <= n) y[i] = 1.0f;
}

// A negative index: thread 0 writes just before the start of y.
extern "C" __global__ void bad_write_before_start(float *y, int n) {
    const int i = threadIdx.x;
    if (i < n) y[i - 1] = 1.0f;
}

// Off by one on the read side: y[i] = x[i + 1] reads one element past the end of x.
extern "C" __global__ void bad_read_past_end(const float *x, float *y, int n) {
    const int i = threadIdx.x;
    if (i < n) y[i] = x[i + 1];
}

// Only block 0 fills the static shared array; every block reads it. On a GPU each block has its
// own shared memory, so block 1 reads garbage: the simulator must not hand it block 0's values.
extern "C" __global__ void bad_static_shared_read_before_write(float *y) {
    __shared__ float tile[32];
    if (blockIdx.x == 0) tile[threadIdx.x] = 2.0f;
    __syncthreads();
    y[blockIdx.x * 32 + threadIdx.x] = tile[threadIdx.x];
}

// Every block adds its partial sum into total[0] with a plain load and store: a race between
// blocks. Run one after another, the blocks give the right total; on a GPU, updates are lost.
extern "C" __global__ void bad_blocks_share_a_total(const float *x, float *total, int n) {
    __shared__ float partial[32];
    const int i = blockIdx.x * 32 + threadIdx.x;
    partial[threadIdx.x] = i < n ? x[i] : 0.0f;
    __syncthreads();
    if (threadIdx.x == 0) {
        float s = 0.0f;
        for (int t = 0; t < 32; t++) s += partial[t];
        total[0] += s;
    }
}

// A running sum that carries across blocks through global memory: block b reads the last
// element block b - 1 wrote. Blocks in order (the simulator's old one-thread loop) give the
// right answer; CUDA promises no order, so on a GPU block b may read it before it is written.
extern "C" __global__ void bad_block_reads_previous_block(const float *x, float *y, int n) {
    if (threadIdx.x != 0) return;
    const int start = blockIdx.x * 32, end = min(start + 32, n);
    float carry = blockIdx.x == 0 ? 0.0f : y[start - 1];
    for (int i = start; i < end; i++) {
        carry += x[i];
        y[i] = carry;
    }
}

// The early exit of bad_exit_before_barrier, only in blocks `first_bad` and after: with blocks
// on many OS threads, the error must still name the first such block, as one thread would.
extern "C" __global__ void bad_exit_from_block_on(float *y, int first_bad) {
    if ((int)blockIdx.x >= first_bad && threadIdx.x == 5) return;
    __syncthreads();
    y[blockIdx.x * blockDim.x + threadIdx.x] = 1.0f;
}
