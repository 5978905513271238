// GEMM: C = alpha * op(A) * op(B) + beta * C (+ bias broadcast along rows), strided-batched.
#include "common.cuh"

#define GEMM_TILE_M 64
#define GEMM_TILE_N 64
#define GEMM_TILE_K 16
#define GEMM_THREADS 256

// Reads 4 consecutive elements (r, c..c+3) of a row-major matrix with `rows` x `cols` valid
// elements and leading dimension `ld`. One float4 load when the whole group is in bounds and
// the caller vouched for alignment; element by element (zero outside) otherwise.
__device__ __forceinline__ void load4(const float *__restrict__ s, int rows, int cols, int ld, int r, int c,
                                      bool vec_ok, float v[4]) {
    if (r < rows && c + 3 < cols && vec_ok) {
        float4 q = *reinterpret_cast<const float4 *>(s + (long long)r * ld + c);
        v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
        return;
    }
    for (int j = 0; j < 4; j++) v[j] = (r < rows && c + j < cols) ? s[(long long)r * ld + c + j] : 0.0f;
}

// Tiled SGEMM. Idea: each block owns a 64x64 tile of C; per step it stages a 64x16 slice of
// op(A) and a 16x64 slice of op(B) in shared memory, stored k-major so the inner loop reads
// float4 rows of both, and each of its 256 threads accumulates a 4x4 register block. The next
// slices are fetched into registers while the current ones are multiplied (software
// pipelining), so global latency hides behind arithmetic. Every operand layout is read along
// its contiguous axis (coalesced), with float4 loads when the leading dimension and base
// pointer allow. Any M, N, K, ld and stride are correct: edges are zero-filled on load and
// masked on store. beta == 0 never reads C (BLAS semantics: C may hold garbage).
//
// Layouts (row-major): op(A) is M x K (A is M x K, or K x M when trans_a), op(B) is K x N (B is
// K x N, or N x K when trans_b), C is M x N. Batch b (blockIdx.z) offsets A, B and C by
// b * stride_a, b * stride_b, b * stride_c. bias (length N, may be null) is added to each row.
extern "C" __global__ void HOT_KERNEL __launch_bounds__(GEMM_THREADS)
    gemm_f32(const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C,
             const float *__restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc, long long stride_a,
             long long stride_b, long long stride_c, int trans_a, int trans_b, float alpha, float beta) {
    __shared__ __align__(16) float As[GEMM_TILE_K][GEMM_TILE_M];
    __shared__ __align__(16) float Bs[GEMM_TILE_K][GEMM_TILE_N];

    const int tid = threadIdx.x;
    const int tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * GEMM_TILE_M, n0 = blockIdx.x * GEMM_TILE_N;
    A += blockIdx.z * stride_a;
    B += blockIdx.z * stride_b;
    C += blockIdx.z * stride_c;

    // Operand A seen as the stored row-major matrix: rows x cols, and where this thread's group sits.
    const int a_rows = trans_a ? K : M, a_cols = trans_a ? M : K;
    const int b_rows = trans_b ? N : K, b_cols = trans_b ? K : N;
    const bool a_vec = lda % 4 == 0 && stride_a % 4 == 0 && aligned16(A);
    const bool b_vec = ldb % 4 == 0 && stride_b % 4 == 0 && aligned16(B);
    // A slice: 64 (m) x 16 (k). Not transposed: stored rows are m, 4 groups of 4 along k per row.
    // Transposed: stored rows are k, 16 groups of 4 along m per row.
    const int a_r = trans_a ? tid / 16 : tid / 4, a_c = trans_a ? (tid % 16) * 4 : (tid % 4) * 4;
    const int b_r = trans_b ? tid / 4 : tid / 16, b_c = trans_b ? (tid % 4) * 4 : (tid % 16) * 4;

    float a_next[4], b_next[4];
    auto fetch = [&](int k0) {
        if (trans_a) load4(A, a_rows, a_cols, lda, k0 + a_r, m0 + a_c, a_vec, a_next);
        else load4(A, a_rows, a_cols, lda, m0 + a_r, k0 + a_c, a_vec, a_next);
        if (trans_b) load4(B, b_rows, b_cols, ldb, n0 + b_r, k0 + b_c, b_vec, b_next);
        else load4(B, b_rows, b_cols, ldb, k0 + b_r, n0 + b_c, b_vec, b_next);
    };

    float acc[4][4] = {};
    fetch(0);
    for (int k0 = 0; k0 < K; k0 += GEMM_TILE_K) {
        for (int j = 0; j < 4; j++) {
            if (trans_a) As[a_r][a_c + j] = a_next[j];
            else As[a_c + j][a_r] = a_next[j];
            if (trans_b) Bs[b_c + j][b_r] = b_next[j];
            else Bs[b_r][b_c + j] = b_next[j];
        }
        __syncthreads();
        if (k0 + GEMM_TILE_K < K) fetch(k0 + GEMM_TILE_K);
#pragma unroll
        for (int kk = 0; kk < GEMM_TILE_K; kk++) {
            float4 a = *reinterpret_cast<const float4 *>(&As[kk][ty * 4]);
            float4 b = *reinterpret_cast<const float4 *>(&Bs[kk][tx * 4]);
            float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }

    for (int i = 0; i < 4; i++) {
        const int m = m0 + ty * 4 + i;
        if (m >= M) continue;
        for (int j = 0; j < 4; j++) {
            const int n = n0 + tx * 4 + j;
            if (n >= N) continue;
            float out = alpha * acc[i][j];
            if (beta != 0.0f) out += beta * C[(long long)m * ldc + n];
            if (bias) out += bias[n];
            C[(long long)m * ldc + n] = out;
        }
    }
}
