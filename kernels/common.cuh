// Shared helpers for every kernel family. Compiled by NVRTC for the GPU and by the host C++
// compiler for the SIMT simulator; the two differ only inside the guarded blocks below.
#pragma once

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
// Host compiler: the simulator's runtime supplies CUDA's built-ins (NVRTC defines both macros;
// guarding on __CUDA_ARCH__ would be wrong for nvcc's host pass).
#include "simt_runtime.h"
#define DYNAMIC_SHARED(type, name) type *name = reinterpret_cast<type *>(::simt::dynamic_shared())
#else
// NVRTC ships no cuda_fp16.h: a storage-only half with the GPU's own conversions.
struct __align__(2) __half {
    unsigned short bits;
};
__device__ __forceinline__ __half __float2half(float f) {
    __half h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(f));
    return h;
}
__device__ __forceinline__ float __half2float(__half h) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h.bits));
    return f;
}
#define DYNAMIC_SHARED(type, name)                                       \
    extern __shared__ __align__(16) unsigned char emr_dynamic_shared[]; \
    type *name = reinterpret_cast<type *>(emr_dynamic_shared)
#endif

#define FULL_MASK 0xffffffffu

// Marks a kernel as hot: the NVRTC report test fails if ptxas spills any of its registers.
#define HOT_KERNEL

__device__ __forceinline__ float float_infinity() { return __int_as_float(0x7f800000); }

// Butterfly reductions over a full warp: every lane ends with the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(FULL_MASK, v, offset);
    return v;
}
__device__ __forceinline__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}
__device__ __forceinline__ int warp_min_int(int v) {
    for (int offset = 16; offset > 0; offset >>= 1) v = min(v, __shfl_xor_sync(FULL_MASK, v, offset));
    return v;
}

// True when p is 16-byte aligned, so float4 loads and stores through it are legal.
__device__ __forceinline__ bool aligned16(const void *p) { return (reinterpret_cast<unsigned long long>(p) & 15ull) == 0; }

// Dropout's counter-based mask: whether element i is kept is a hash of (seed, i) -- splitmix64's
// finaliser over seed + (i + 1) * golden ratio -- so nothing is stored between forward and
// backward. The top 24 bits give a uniform float in [0, 1); the element is kept when it is >= p.
// The hash's input is linear in i: a kernel walking elements i, i + 1, ... adds DROPOUT_GOLDEN
// to dropout_input(seed, i) (or a multiple of it worked out once) rather than multiply again.
#define DROPOUT_GOLDEN 0x9e3779b97f4a7c15ull
__device__ __forceinline__ unsigned long long dropout_input(unsigned long long seed, long long i) {
    return seed + (unsigned long long)(i + 1) * DROPOUT_GOLDEN;
}
__device__ __forceinline__ bool dropout_keep_input(unsigned long long z, float p) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f) >= p;
}
__device__ __forceinline__ bool dropout_keep(unsigned long long seed, long long i, float p) {
    return dropout_keep_input(dropout_input(seed, i), p);
}

// Phi(x), the standard normal CDF, as 0.5 erfc(-x / sqrt 2): the textbook 0.5 (1 + erf(x / sqrt 2))
// loses every digit to cancellation for x below about -4 (at x = -5 it is 4% off in fp32).
__device__ __forceinline__ float normal_cdf(float v) { return 0.5f * erfcf(-v * 0.70710678118654752f); }

// GELU in the erf form of HF BERT (not the tanh approximation).
__device__ __forceinline__ float gelu(float v) { return v * normal_cdf(v); }
