// 8-bit AdamW (Dettmers et al., "8-bit Optimizers via Block-wise Quantization", ICLR 2022).
#include "common.cuh"

// Elements per quantisation block (one fp32 absolute maximum per block and moment) and threads
// per thread block: each thread owns ADAMW8_BLOCK / ADAMW8_THREADS = 8 elements.
#define ADAMW8_BLOCK 2048
#define ADAMW8_THREADS 256
#define ADAMW8_PER_THREAD (ADAMW8_BLOCK / ADAMW8_THREADS)

// The code of the map value nearest x: `map` holds 256 values sorted ascending; binary search for
// the last value <= x, then the nearer of it and the next (ties to the lower code).
__device__ __forceinline__ unsigned char nearest_code(const float *map, float x) {
    int lo = 0, hi = 255;
    while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (map[mid] <= x)
            lo = mid;
        else
            hi = mid - 1;
    }
    if (lo < 255 && map[lo + 1] - x < x - map[lo])
        ++lo;
    return (unsigned char)lo;
}

// The moments m and v live as one 8-bit code per element: code c of a block stands for
// map[c] * absmax, with a dynamic (non-linear) map of 256 values, dense near 0 — signed for m,
// unsigned for v — and one fp32 absolute maximum per block of 2048 elements and moment. One
// thread block per quantisation block: dequantise m and v, update them in fp32 with the
// gradient and step the parameter with those fp32 moments (the arithmetic of adamw_step), then
// take the block's new absolute maxima (max is order-free, so the result is deterministic) and
// requantise each moment to its nearest code. A block whose moment is all zero keeps absmax 0
// and the code of 0.
//
// table: per tensor t < count, {param, grad, m codes, v codes, m absmax, v absmax, n, first
// block, flags}, then one tensor index per block; flags as adamw_step_multi's (the tensor's
// learning-rate scale as f32 bits, bit 32: decays). Launch with ADAMW8_THREADS threads.
extern "C" __global__ void HOT_KERNEL adamw8bit_step_multi(const unsigned long long *__restrict__ table, int count,
                                                           const float *__restrict__ signed_map,
                                                           const float *__restrict__ unsigned_map, float lr,
                                                           float beta1, float beta2, float eps, float weight_decay,
                                                           float bias_correction1, float bias_correction2,
                                                           float grad_scale) {
    __shared__ float map_m[256], map_v[256];
    __shared__ float warp_m[ADAMW8_THREADS / 32], warp_v[ADAMW8_THREADS / 32];
    map_m[threadIdx.x] = signed_map[threadIdx.x];
    map_v[threadIdx.x] = unsigned_map[threadIdx.x];
    __syncthreads();

    const unsigned long long t = table[9 * (long long)count + blockIdx.x];
    const unsigned long long *e = table + 9 * t;
    float *param = reinterpret_cast<float *>(e[0]);
    const float *grad = reinterpret_cast<const float *>(e[1]);
    unsigned char *m_code = reinterpret_cast<unsigned char *>(e[2]);
    unsigned char *v_code = reinterpret_cast<unsigned char *>(e[3]);
    float *m_absmax = reinterpret_cast<float *>(e[4]), *v_absmax = reinterpret_cast<float *>(e[5]);
    const long long n = (long long)e[6], q = blockIdx.x - (long long)e[7];
    const float lr_t = lr * __uint_as_float((unsigned)(e[8] & 0xffffffffull));
    const float wd = (e[8] >> 32) & 1ull ? weight_decay : 0.0f;
    const long long start = q * ADAMW8_BLOCK;
    const float old_m = m_absmax[q], old_v = v_absmax[q];

    float m[ADAMW8_PER_THREAD], v[ADAMW8_PER_THREAD];
    float top_m = 0.0f, top_v = 0.0f;
#pragma unroll
    for (int k = 0; k < ADAMW8_PER_THREAD; ++k) {
        const long long i = start + k * ADAMW8_THREADS + threadIdx.x;
        m[k] = 0.0f;
        v[k] = 0.0f;
        if (i < n) {
            const float g = grad[i] * grad_scale;
            m[k] = beta1 * (map_m[m_code[i]] * old_m) + (1.0f - beta1) * g;
            v[k] = beta2 * (map_v[v_code[i]] * old_v) + (1.0f - beta2) * g * g;
            float p = param[i] * (1.0f - lr_t * wd);
            p -= lr_t * (m[k] / bias_correction1) / (sqrtf(v[k] / bias_correction2) + eps);
            param[i] = p;
            top_m = fmaxf(top_m, fabsf(m[k]));
            top_v = fmaxf(top_v, v[k]);
        }
    }
    top_m = warp_max(top_m);
    top_v = warp_max(top_v);
    if ((threadIdx.x & 31) == 0) {
        warp_m[threadIdx.x >> 5] = top_m;
        warp_v[threadIdx.x >> 5] = top_v;
    }
    __syncthreads();
    float new_m = 0.0f, new_v = 0.0f;
    for (int w = 0; w < ADAMW8_THREADS / 32; ++w) {
        new_m = fmaxf(new_m, warp_m[w]);
        new_v = fmaxf(new_v, warp_v[w]);
    }
#pragma unroll
    for (int k = 0; k < ADAMW8_PER_THREAD; ++k) {
        const long long i = start + k * ADAMW8_THREADS + threadIdx.x;
        if (i < n) {
            m_code[i] = nearest_code(map_m, new_m > 0.0f ? m[k] / new_m : 0.0f);
            v_code[i] = nearest_code(map_v, new_v > 0.0f ? v[k] / new_v : 0.0f);
        }
    }
    if (threadIdx.x == 0) {
        m_absmax[q] = new_m;
        v_absmax[q] = new_v;
    }
}
