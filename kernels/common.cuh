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
