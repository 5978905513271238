// SIMT runtime: lets the host C++ compiler build the same kernels/*.cu that NVRTC builds.
//
// Execution model (see DESIGN.md, "One kernel source, two devices"):
// - a launch hands its blocks, in order, to the calling OS thread and a pool of workers (as
//   many threads as the Rust side asks for); each runs a block start to end with its own
//   fibers, stacks and static shared memory, so blocks share only global memory, as on a GPU;
// - a block's threads are cooperatively scheduled fibers that switch only at barriers,
//   warp collectives and exit, in a selectable order (forward, reverse, seeded random);
// - static `__shared__` becomes `thread_local`, so the fibers of one OS thread share it; build.rs
//   follows each declaration with SIMT_STATIC_SHARED(name), which NaN-fills the array when the
//   first thread of a block reaches it, so a read before any write shows as on fresh memory;
// - dynamic shared memory is a per-launch buffer, NaN-filled before every block;
// - misuse that real hardware punishes with silent wrong answers or hangs (divergent
//   barriers, exits while others wait, bad warp masks) stops the launch with an error
//   naming the kernel, block and thread.
//
// Included only by the host compiler: kernels reach it through kernels/common.cuh.
#pragma once

#include <cassert>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __shared__ thread_local
#define SIMT_STATIC_SHARED(name) ::simt::poison_static_shared(&(name), sizeof(name))
#define __constant__ static const
#define __align__(n) __attribute__((aligned(n)))
#define __restrict__ __restrict

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
};
struct __attribute__((aligned(8))) float2 {
    float x, y;
};
struct __attribute__((aligned(16))) float4 {
    float x, y, z, w;
};
struct __attribute__((aligned(8))) int2 {
    int x, y;
};
struct __attribute__((aligned(16))) int4 {
    int x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }
inline int2 make_int2(int x, int y) { return {x, y}; }
inline int4 make_int4(int x, int y, int z, int w) { return {x, y, z, w}; }

namespace simt {

// NaN-fills a static shared array once per block (the first thread to reach its declaration).
void poison_static_shared(void *array, size_t bytes);

// A source location: barriers and warp collectives must be met at the same one.
struct SourceLoc {
    const char *file;
    int line;
};

// The fiber that is running now; `thread_idx` is first so `threadIdx` is one load.
struct FiberPublic {
    uint3 thread_idx;
};
extern __thread FiberPublic *current_fiber;
extern __thread uint3 current_block_idx;
extern __thread dim3 current_block_dim;
extern __thread dim3 current_grid_dim;

void syncthreads(SourceLoc loc);
int syncthreads_count(int predicate, SourceLoc loc);
int syncthreads_and(int predicate, SourceLoc loc);
int syncthreads_or(int predicate, SourceLoc loc);

enum WarpOpKind { WARP_SHFL_IDX, WARP_SHFL_UP, WARP_SHFL_DOWN, WARP_SHFL_XOR, WARP_BALLOT, WARP_ANY, WARP_ALL, WARP_SYNC };
// One lane's part in a warp collective; returns that lane's result bits.
uint64_t warp_collective(WarpOpKind kind, unsigned mask, uint64_t value, int arg, int width, SourceLoc loc);
unsigned active_mask();

void *dynamic_shared();
[[noreturn]] void kernel_error(const char *message, SourceLoc loc);

template <typename T>
inline uint64_t to_bits(T v) {
    static_assert(sizeof(T) <= 8, "warp shuffles move at most 8 bytes");
    uint64_t b = 0;
    std::memcpy(&b, &v, sizeof(T));
    return b;
}
template <typename T>
inline T from_bits(uint64_t b) {
    T v;
    std::memcpy(&v, &b, sizeof(T));
    return v;
}
template <typename T>
inline T shfl(WarpOpKind kind, SourceLoc loc, unsigned mask, T v, int arg, int width = 32) {
    return from_bits<T>(warp_collective(kind, mask, to_bits(v), arg, width, loc));
}

}  // namespace simt

#define SIMT_LOC (::simt::SourceLoc{__FILE__, __LINE__})
#define threadIdx (::simt::current_fiber->thread_idx)
#define blockIdx (::simt::current_block_idx)
#define blockDim (::simt::current_block_dim)
#define gridDim (::simt::current_grid_dim)
static const int warpSize = 32;

#define __syncthreads() ::simt::syncthreads(SIMT_LOC)
#define __syncthreads_count(p) ::simt::syncthreads_count((p), SIMT_LOC)
#define __syncthreads_and(p) ::simt::syncthreads_and((p), SIMT_LOC)
#define __syncthreads_or(p) ::simt::syncthreads_or((p), SIMT_LOC)
#define __shfl_sync(mask, v, ...) ::simt::shfl(::simt::WARP_SHFL_IDX, SIMT_LOC, (mask), (v), __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) ::simt::shfl(::simt::WARP_SHFL_UP, SIMT_LOC, (mask), (v), __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) ::simt::shfl(::simt::WARP_SHFL_DOWN, SIMT_LOC, (mask), (v), __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) ::simt::shfl(::simt::WARP_SHFL_XOR, SIMT_LOC, (mask), (v), __VA_ARGS__)
#define __ballot_sync(mask, p) \
    ((unsigned)::simt::warp_collective(::simt::WARP_BALLOT, (mask), (p) ? 1u : 0u, 0, 32, SIMT_LOC))
#define __any_sync(mask, p) ((int)::simt::warp_collective(::simt::WARP_ANY, (mask), (p) ? 1u : 0u, 0, 32, SIMT_LOC))
#define __all_sync(mask, p) ((int)::simt::warp_collective(::simt::WARP_ALL, (mask), (p) ? 1u : 0u, 0, 32, SIMT_LOC))
#define __syncwarp(...) ((void)::simt::warp_collective(::simt::WARP_SYNC, (__VA_ARGS__ + 0) ? (__VA_ARGS__ + 0) : 0xffffffffu, 0, 0, 32, SIMT_LOC))
#define __activemask() (::simt::active_mask())
#define __threadfence() __atomic_thread_fence(__ATOMIC_SEQ_CST)
#define __threadfence_block() __atomic_thread_fence(__ATOMIC_SEQ_CST)

// ---- math and intrinsics the kernels use ----
using std::isinf;
using std::isnan;
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline int __float_as_int(float x) { return simt::from_bits<int>(simt::to_bits(x)); }
inline unsigned __float_as_uint(float x) { return simt::from_bits<unsigned>(simt::to_bits(x)); }
inline float __int_as_float(int x) { return simt::from_bits<float>(simt::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return simt::from_bits<float>(simt::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz((unsigned)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
template <typename T>
inline T __ldg(const T *p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }

// ---- atomics: real ones, so a launch may share buffers with other host threads ----
inline int atomicAdd(int *p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long *p, unsigned long long v) {
    return __atomic_fetch_add(p, v, __ATOMIC_RELAXED);
}
template <typename F, typename U>
inline F atomic_float_update(F *p, F v, F (*op)(F, F)) {
    U *bits = reinterpret_cast<U *>(p);
    U old = __atomic_load_n(bits, __ATOMIC_RELAXED);
    for (;;) {
        F next = op(simt::from_bits<F>(old), v);
        U want = simt::from_bits<U>(simt::to_bits(next));
        if (__atomic_compare_exchange_n(bits, &old, want, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
            return simt::from_bits<F>(old);
    }
}
inline float atomicAdd(float *p, float v) {
    return atomic_float_update<float, uint32_t>(p, v, [](float a, float b) { return a + b; });
}
inline double atomicAdd(double *p, double v) {
    return atomic_float_update<double, uint64_t>(p, v, [](double a, double b) { return a + b; });
}
template <typename T, typename Op>
inline T atomic_int_update(T *p, T v, Op op) {
    T old = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (!__atomic_compare_exchange_n(p, &old, op(old, v), true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
    return old;
}
inline int atomicMax(int *p, int v) { return atomic_int_update(p, v, [](int a, int b) { return a > b ? a : b; }); }
inline int atomicMin(int *p, int v) { return atomic_int_update(p, v, [](int a, int b) { return a < b ? a : b; }); }
inline unsigned atomicMax(unsigned *p, unsigned v) {
    return atomic_int_update(p, v, [](unsigned a, unsigned b) { return a > b ? a : b; });
}
inline unsigned atomicMin(unsigned *p, unsigned v) {
    return atomic_int_update(p, v, [](unsigned a, unsigned b) { return a < b ? a : b; });
}
inline unsigned atomicOr(unsigned *p, unsigned v) { return __atomic_fetch_or(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicAnd(unsigned *p, unsigned v) { return __atomic_fetch_and(p, v, __ATOMIC_RELAXED); }
inline int atomicExch(int *p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned *p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_RELAXED); }
inline float atomicExch(float *p, float v) {
    return simt::from_bits<float>(__atomic_exchange_n(reinterpret_cast<uint32_t *>(p), __float_as_uint(v), __ATOMIC_RELAXED));
}
inline int atomicCAS(int *p, int expected, int desired) {
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}
inline unsigned atomicCAS(unsigned *p, unsigned expected, unsigned desired) {
    __atomic_compare_exchange_n(p, &expected, desired, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
    return expected;
}

// ---- a host __half: storage only, round-to-nearest-even like the GPU's cvt.rn.f16.f32 ----
struct __half {
    uint16_t bits;
};
inline __half __float2half(float f) {
    uint32_t x = __float_as_uint(f);
    uint32_t sign = (x >> 16) & 0x8000u;
    uint32_t exp = (x >> 23) & 0xffu;
    uint32_t mant = x & 0x7fffffu;
    if (exp == 0xffu) return {(uint16_t)(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0u))};
    int e = (int)exp - 127 + 15;
    if (e >= 31) return {(uint16_t)(sign | 0x7c00u)};
    if (e <= 0) {
        if (e < -10) return {(uint16_t)sign};
        mant |= 0x800000u;
        int shift = 14 - e;
        uint32_t half_mant = mant >> shift;
        uint32_t rest = mant & ((1u << shift) - 1u);
        uint32_t halfway = 1u << (shift - 1);
        if (rest > halfway || (rest == halfway && (half_mant & 1u))) half_mant++;
        return {(uint16_t)(sign | half_mant)};
    }
    uint32_t h = sign | ((uint32_t)e << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fffu;
    if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) h++;  // a carry into the exponent is right
    return {(uint16_t)h};
}
inline float __half2float(__half h) {
    uint32_t sign = (uint32_t)(h.bits & 0x8000u) << 16;
    uint32_t exp = (h.bits >> 10) & 0x1fu;
    uint32_t mant = h.bits & 0x3ffu;
    if (exp == 0x1fu) return __uint_as_float(sign | 0x7f800000u | (mant << 13));
    if (exp == 0) {
        if (mant == 0) return __uint_as_float(sign);
        float v = std::ldexp((float)mant, -24);
        return sign ? -v : v;
    }
    return __uint_as_float(sign | ((exp + 112u) << 23) | (mant << 13));
}
