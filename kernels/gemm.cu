// GEMM: C = alpha * op(A) * op(B) + beta * C (+ bias broadcast along rows), strided-batched.
// One tiled kernel, instantiated at three tile sizes, and split-K's summing pass; the launcher
// picks a tile and a split by shape.
#include "common.cuh"

#define GEMM_THREADS 256
#define GEMM_GELU 1
#define GEMM_RELU 2
// Shared-memory rows are padded by 4 floats: the transposing stores of a warp then fall on 32
// different banks, and every row start stays 16-byte aligned for float4 reads.
#define GEMM_SMEM_PAD 4

__device__ __forceinline__ void load_float4(const float *p, float v[4]) {
    const float4 q = *reinterpret_cast<const float4 *>(p);
    v[0] = q.x, v[1] = q.y, v[2] = q.z, v[3] = q.w;
}
__device__ __forceinline__ void store_float4(float *p, const float v[4]) {
    *reinterpret_cast<float4 *>(p) = make_float4(v[0], v[1], v[2], v[3]);
}

// One operand's BK-deep slice, staged k-major in shared memory: tile[k][i] for i along the
// operand's m (for A) or n (for B) axis, `EXTENT` wide. Each thread moves LOADS float4 groups.
// The stored matrix is read along its contiguous axis (coalesced); `along_k` says whether that
// axis is k (A not transposed, B transposed: the groups are transposed on their way into shared
// memory) or the tile's own axis (stored straight, one float4 store each).
// Interior blocks work their addresses out once: each group keeps a pointer, and moving to the
// next slice adds a fixed step -- no multiply in the main loop. Edge blocks place each group
// from the slice's first k and test it against the matrix's bounds.
template <int EXTENT, int BK>
struct SliceLoader {
    static constexpr int LOADS = EXTENT * BK / (4 * GEMM_THREADS);
    static constexpr int LD = EXTENT + GEMM_SMEM_PAD;  // a shared tile row, in floats
    float next[LOADS][4];
    const float *at[LOADS];  // interior blocks: group l of the current slice
    int step;                // elements from one slice's group to the next slice's
    bool along_k;

    // Group l's row and column in the stored matrix, for the slice starting at k0.
    __device__ __forceinline__ void place(int l, int i0, int k0, int &row, int &col) const {
        const int g = threadIdx.x + l * GEMM_THREADS;
        row = along_k ? i0 + g / (BK / 4) : k0 + g / (EXTENT / 4);
        col = along_k ? k0 + (g % (BK / 4)) * 4 : i0 + (g % (EXTENT / 4)) * 4;
    }

    __device__ __forceinline__ void start(const float *__restrict__ s, int ld, bool read_along_k, int i0, int k0) {
        along_k = read_along_k;
#pragma unroll
        for (int l = 0; l < LOADS; l++) {
            int row, col;
            place(l, i0, k0, row, col);
            at[l] = s + (long long)row * ld + col;
        }
        step = along_k ? BK : BK * ld;
    }

    // Interior blocks: the slice after the current one (`go` false stays, so the loop's last
    // fetch re-reads its own slice rather than branch around the load), one float4 per group
    // with nothing to test -- an addition per slice, no multiply.
    __device__ __forceinline__ void fetch_interior(bool go) {
#pragma unroll
        for (int l = 0; l < LOADS; l++) {
            at[l] += go ? step : 0;
            load_float4(at[l], next[l]);
        }
    }

    // Blocks at an edge: the slice starting at k0 of the stored matrix s (rows x cols, leading
    // dimension ld), zero outside it, float4 where a group is whole and aligned.
    __device__ __forceinline__ void fetch_checked(const float *__restrict__ s, int rows, int cols, int ld, bool vec_ok,
                                                  int i0, int k0) {
#pragma unroll
        for (int l = 0; l < LOADS; l++) {
            int r, c;
            place(l, i0, k0, r, c);
            const float *p = s + (long long)r * ld + c;
            if (r < rows && c + 3 < cols && vec_ok) {
                load_float4(p, next[l]);
                continue;
            }
            for (int j = 0; j < 4; j++) next[l][j] = (r < rows && c + j < cols) ? p[j] : 0.0f;
        }
    }

    // The fetched groups into a shared tile [BK][LD]: along k, a group is 4 k-rows of one column.
    __device__ __forceinline__ void store(float *tile) const {
#pragma unroll
        for (int l = 0; l < LOADS; l++) {
            const int g = threadIdx.x + l * GEMM_THREADS;
            if (along_k) {
                float *t = tile + (g % (BK / 4)) * 4 * LD + g / (BK / 4);
#pragma unroll
                for (int j = 0; j < 4; j++) t[j * LD] = next[l][j];
            } else {
                store_float4(tile + g / (EXTENT / 4) * LD + (g % (EXTENT / 4)) * 4, next[l]);
            }
        }
    }
};

// What happens to each element of C after the product, in this order: alpha * acc (+ beta * C)
// (+ bias); inverted dropout when dropout > 0, with the mask of dropout_forward over a dense
// [batch, M, N] C (element index (b * M + m) * N + n); + residual (laid out like C: same ldc and
// batch stride); then C is written and, when act_out is given (laid out like C), the activation
// of C too (GEMM_GELU or GEMM_RELU). beta == 0 never reads C (BLAS semantics: C may hold garbage).
struct GemmEpilogue {
    float *C;
    const float *bias, *residual;
    float *act_out;
    int M, N, ldc;
    long long stride_c;
    float alpha, beta, dropout;
    int activation;
    unsigned long long seed;

    // Whether whole groups of 4 may move as float4s: every row of every batch 16-byte aligned.
    __device__ __forceinline__ bool vec_ok() const {
        return ldc % 4 == 0 && stride_c % 4 == 0 && aligned16(C) && (!bias || aligned16(bias)) &&
               (!residual || aligned16(residual)) && (!act_out || aligned16(act_out));
    }

    // The elements (m, n .. n + 3) of batch b (those with n < N), from their sums `acc`.
    // `vec`: vec_ok() and n + 3 < N.
    __device__ __forceinline__ void apply4(int b, int m, int n, const float acc[4], bool vec) const {
        const long long at = b * stride_c + (long long)m * ldc + n;  // from the buffers' starts
        const long long counter = ((long long)b * M + m) * N + n;     // the dropout mask's index
        float c_old[4] = {}, b_add[4] = {}, r_add[4] = {};
        if (vec) {
            if (beta != 0.0f) load_float4(C + at, c_old);
            if (bias) load_float4(bias + n, b_add);
            if (residual) load_float4(residual + at, r_add);
        } else {
            for (int j = 0; j < 4 && n + j < N; j++) {
                if (beta != 0.0f) c_old[j] = C[at + j];
                if (bias) b_add[j] = bias[n + j];
                if (residual) r_add[j] = residual[at + j];
            }
        }
        const float keep_scale = 1.0f / (1.0f - dropout);
        float out[4];
#pragma unroll
        for (int j = 0; j < 4; j++) {
            float o = alpha * acc[j];
            if (beta != 0.0f) o += beta * c_old[j];
            if (bias) o += b_add[j];
            if (dropout > 0.0f) o = dropout_keep(seed, counter + j, dropout) ? o * keep_scale : 0.0f;
            if (residual) o += r_add[j];
            out[j] = o;
        }
        if (vec) store_float4(C + at, out);
        else
            for (int j = 0; j < 4 && n + j < N; j++) C[at + j] = out[j];
        if (act_out) {
            float act[4];
#pragma unroll
            for (int j = 0; j < 4; j++) act[j] = activation == GEMM_GELU ? gelu(out[j]) : fmaxf(out[j], 0.0f);
            if (vec) store_float4(act_out + at, act);
            else
                for (int j = 0; j < 4 && n + j < N; j++) act_out[at + j] = act[j];
        }
    }
};
// A GemmEpilogue from the kernel parameters of the same names (both GEMM kernels have them).
#define GEMM_EPILOGUE_FROM_PARAMS {C, bias, residual, act_out, M, N, ldc, stride_c, alpha, beta, dropout, activation, seed}

// What the main loop needs to know about the two operands of one block (see gemm_tiled).
struct GemmOperands {
    const float *A, *B;  // this block's batch
    int a_rows, a_cols, lda, b_rows, b_cols, ldb;
    bool a_vec, b_vec;
    int m0, n0, k_begin;
};

// The tiled kernel's main loop over the BK-deep slices of k from k_begin (see gemm_tiled), the
// slices' loads unchecked (INTERIOR) or tested against the stored matrices' bounds.
template <bool INTERIOR, int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void gemm_main_loop(float *As, float *Bs, SliceLoader<BM, BK> &a_slice,
                                               SliceLoader<BN, BK> &b_slice, float (&acc)[TM][TN],
                                               const GemmOperands &o, int slices) {
    constexpr int GROUPS_M = TM / 4, GROUPS_N = TN / 4;
    constexpr int STRIDE_M = BM / GROUPS_M, STRIDE_N = BN / GROUPS_N;
    constexpr int A_TILE = BK * (BM + GEMM_SMEM_PAD), B_TILE = BK * (BN + GEMM_SMEM_PAD);
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
    if (INTERIOR) {
        a_slice.fetch_interior(false);
        b_slice.fetch_interior(false);
    } else {
        a_slice.fetch_checked(o.A, o.a_rows, o.a_cols, o.lda, o.a_vec, o.m0, o.k_begin);
        b_slice.fetch_checked(o.B, o.b_rows, o.b_cols, o.ldb, o.b_vec, o.n0, o.k_begin);
    }
    a_slice.store(As);
    b_slice.store(Bs);
    __syncthreads();
    for (int s = 0; s < slices; s++) {
        const bool more = s + 1 < slices;
        const int buf = s & 1;
        // Interior blocks fetch on every slice, the last one re-reading its own slice into the
        // free buffer: no branch in their loop. The others fetch only what comes next.
        if (INTERIOR) {
            a_slice.fetch_interior(more);
            b_slice.fetch_interior(more);
        } else if (more) {
            const int k0 = o.k_begin + (s + 1) * BK;
            a_slice.fetch_checked(o.A, o.a_rows, o.a_cols, o.lda, o.a_vec, o.m0, k0);
            b_slice.fetch_checked(o.B, o.b_rows, o.b_cols, o.ldb, o.b_vec, o.n0, k0);
        }
        const float *a_read = As + buf * A_TILE + ty * 4, *b_read = Bs + buf * B_TILE + tx * 4;
#pragma unroll
        for (int kk = 0; kk < BK; kk++) {
            float a[TM], b[TN];
#pragma unroll
            for (int g = 0; g < GROUPS_M; g++) {
                const float4 q = *reinterpret_cast<const float4 *>(a_read + kk * (BM + GEMM_SMEM_PAD) + g * STRIDE_M);
                a[g * 4 + 0] = q.x, a[g * 4 + 1] = q.y, a[g * 4 + 2] = q.z, a[g * 4 + 3] = q.w;
            }
#pragma unroll
            for (int g = 0; g < GROUPS_N; g++) {
                const float4 q = *reinterpret_cast<const float4 *>(b_read + kk * (BN + GEMM_SMEM_PAD) + g * STRIDE_N);
                b[g * 4 + 0] = q.x, b[g * 4 + 1] = q.y, b[g * 4 + 2] = q.z, b[g * 4 + 3] = q.w;
            }
#pragma unroll
            for (int i = 0; i < TM; i++)
#pragma unroll
                for (int j = 0; j < TN; j++) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        // The other buffer was last read before the previous barrier: safe to overwrite now.
        if (INTERIOR || more) {
            a_slice.store(As + (buf ^ 1) * A_TILE);
            b_slice.store(Bs + (buf ^ 1) * B_TILE);
        }
        __syncthreads();
    }
}

// Tiled SGEMM. Idea: a block of 256 threads owns a BM x BN tile of C and walks K in slices of
// BK. Each slice of op(A) (BM x BK) and op(B) (BK x BN) is staged k-major in shared memory,
// double-buffered: while the block multiplies one buffer, each thread has already issued the
// global loads of the next slice into registers and stores them into the other buffer after
// the arithmetic -- one barrier per slice, global latency hidden behind the FMAs. Each thread
// accumulates a TM x TN register block, taken as groups of 4 rows (columns) spaced BM/(TM/4)
// apart, so its shared reads are float4s and the 16 threads along n read 256 contiguous bytes.
// Per k step a thread does TM*TN FMAs for (TM+TN)/4 shared loads: 8x8 is 64 FMAs per 4 loads.
//
// Any M, N, K, leading dimension and batch stride is correct: loads are zero-filled outside
// the matrices (float4 only when a group is in bounds and aligned), stores are masked. Those
// tests cost instructions in the main loop, so a block whose tile and k range are whole and
// whose operands are float4-aligned -- every block of a BERT-sized product -- runs a copy of
// the loop without them: one float4 load per group from a pointer advanced by a fixed step, no
// branch but the loop's own (about 1.15 SASS instructions per FFMA at 128 x 128 on sm_61).
//
// The epilogue (GemmEpilogue) fuses what the encoder would otherwise do in extra passes over C:
// bias, dropout, residual, and an activation written beside C -- the FFN keeps its
// pre-activation for backward and hands the activation to the next product.
//
// Layouts (row-major): op(A) is M x K (A is M x K, or K x M when trans_a), op(B) is K x N (B is
// K x N, or N x K when trans_b), C is M x N. Batch b offsets A, B and C by b * stride_a,
// b * stride_b, b * stride_c. bias (length N, may be null) is added to each row.
//
// Split-K (splits > 1): block z works on batch z / splits and on k in [s * k_chunk, (s + 1) *
// k_chunk) for s = z % splits (the last slice ends at K), and writes its partial product as
// batch z of C -- a dense workspace the launcher gives with a plain epilogue (alpha 1, nothing
// else); gemm_split_sum then adds the slices in a fixed order and applies the real epilogue.
// k_chunk is a multiple of 16, so float4 loads along k stay aligned.
template <int BM, int BN, int BK, int TM, int TN>
__device__ __forceinline__ void gemm_tiled(const float *__restrict__ A, const float *__restrict__ B,
                                           float *__restrict__ C, const float *__restrict__ bias, int M, int N,
                                           int K, int lda, int ldb, int ldc, long long stride_a,
                                           long long stride_b, long long stride_c, int trans_a, int trans_b,
                                           float alpha, float beta, const float *__restrict__ residual,
                                           float *__restrict__ act_out, int activation, float dropout,
                                           unsigned long long seed, int splits, int k_chunk) {
    static_assert((BM / TM) * (BN / TN) == GEMM_THREADS, "one TM x TN block per thread");
    static_assert(TM % 4 == 0 && TN % 4 == 0 && BK % 4 == 0, "float4 groups");
    __shared__ __align__(16) float As[2][BK][BM + GEMM_SMEM_PAD];
    __shared__ __align__(16) float Bs[2][BK][BN + GEMM_SMEM_PAD];
    constexpr int GROUPS_M = TM / 4, GROUPS_N = TN / 4;
    constexpr int STRIDE_M = BM / GROUPS_M, STRIDE_N = BN / GROUPS_N;

    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN;
    const int batch = blockIdx.z / splits, split = blockIdx.z % splits;
    A += batch * stride_a;
    B += batch * stride_b;
    // This block's range of k: all of it, or its split's slice.
    const int k_begin = splits > 1 ? split * k_chunk : 0;
    const int k_end = splits > 1 ? min(K, k_begin + k_chunk) : K;

    // The stored matrices' shapes, up to k_end; A is read along k unless transposed, B along k
    // when transposed.
    const int a_rows = trans_a ? k_end : M, a_cols = trans_a ? M : k_end;
    const int b_rows = trans_b ? N : k_end, b_cols = trans_b ? k_end : N;
    const bool a_vec = lda % 4 == 0 && stride_a % 4 == 0 && aligned16(A);
    const bool b_vec = ldb % 4 == 0 && stride_b % 4 == 0 && aligned16(B);
    SliceLoader<BM, BK> a_slice;
    SliceLoader<BN, BK> b_slice;
    a_slice.start(A, lda, !trans_a, m0, k_begin);
    b_slice.start(B, ldb, trans_b != 0, n0, k_begin);
    const GemmOperands o = {A, B, a_rows, a_cols, lda, b_rows, b_cols, ldb, a_vec, b_vec, m0, n0, k_begin};

    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; i++)
#pragma unroll
        for (int j = 0; j < TN; j++) acc[i][j] = 0.0f;

    // A block whose tile lies inside C, whose k range is whole slices and whose operands allow
    // float4 loads -- every block of a BERT-sized product -- runs the main loop without a single
    // bounds test; the others test each group. The choice is the same for the whole block.
    const int slices = (k_end - k_begin + BK - 1) / BK;
    const bool interior = m0 + BM <= M && n0 + BN <= N && (k_end - k_begin) % BK == 0 && a_vec && b_vec;
    if (interior) gemm_main_loop<true>(&As[0][0][0], &Bs[0][0][0], a_slice, b_slice, acc, o, slices);
    else gemm_main_loop<false>(&As[0][0][0], &Bs[0][0][0], a_slice, b_slice, acc, o, slices);

    // Epilogue, float4 where a group is whole and every pointer aligned.
    const GemmEpilogue e = GEMM_EPILOGUE_FROM_PARAMS;
    const bool c_vec = e.vec_ok();
#pragma unroll
    for (int gm = 0; gm < GROUPS_M; gm++) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int m = m0 + gm * STRIDE_M + ty * 4 + i;
            if (m >= M) continue;
#pragma unroll
            for (int gn = 0; gn < GROUPS_N; gn++) {
                const int n = n0 + gn * STRIDE_N + tx * 4;
                if (n >= N) continue;
                e.apply4(blockIdx.z, m, n, &acc[gm * 4 + i][gn * 4], c_vec && n + 3 < N);
            }
        }
    }
}

// The three instances. Large products take 128 x 128 tiles (8 x 8 per thread: the most FMAs per
// shared load); 128 x 64 and 64 x 64 give more blocks where the large tile would leave SMs idle.
// __launch_bounds__(256, 2): at most 128 registers, so two blocks share an SM on sm_61; four
// for 64 x 64 (at most 64, spill-free: 62 on sm_61).
#define GEMM_PASS                                                                                                 \
    A, B, C, bias, M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c, trans_a, trans_b, alpha, beta, residual, \
        act_out, activation, dropout, seed, splits, k_chunk

extern "C" __global__ void HOT_KERNEL __launch_bounds__(GEMM_THREADS, 2)
    gemm_f32_128x128(const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C,
                     const float *__restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc,
                     long long stride_a, long long stride_b, long long stride_c, int trans_a, int trans_b,
                     float alpha, float beta, const float *__restrict__ residual, float *__restrict__ act_out,
                     int activation, float dropout, unsigned long long seed, int splits, int k_chunk) {
    gemm_tiled<128, 128, 8, 8, 8>(GEMM_PASS);
}

extern "C" __global__ void HOT_KERNEL __launch_bounds__(GEMM_THREADS, 2)
    gemm_f32_128x64(const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C,
                    const float *__restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc,
                    long long stride_a, long long stride_b, long long stride_c, int trans_a, int trans_b,
                    float alpha, float beta, const float *__restrict__ residual, float *__restrict__ act_out,
                    int activation, float dropout, unsigned long long seed, int splits, int k_chunk) {
    gemm_tiled<128, 64, 16, 8, 4>(GEMM_PASS);
}

extern "C" __global__ void HOT_KERNEL __launch_bounds__(GEMM_THREADS, 4)
    gemm_f32_64x64(const float *__restrict__ A, const float *__restrict__ B, float *__restrict__ C,
                   const float *__restrict__ bias, int M, int N, int K, int lda, int ldb, int ldc,
                   long long stride_a, long long stride_b, long long stride_c, int trans_a, int trans_b,
                   float alpha, float beta, const float *__restrict__ residual, float *__restrict__ act_out,
                   int activation, float dropout, unsigned long long seed, int splits, int k_chunk) {
    gemm_tiled<64, 64, 16, 4, 4>(GEMM_PASS);
}

// Split-K's second pass. Idea: a thread owns 4 consecutive columns of one row of C; it adds
// the splits' partial products (workspace [batch * splits, M, N], dense) in split order --
// a fixed order, so the sum is the same on every run and schedule -- and applies the epilogue
// to the sum. Grid-stride over the batch's rows x column groups.
extern "C" __global__ void gemm_split_sum(const float *__restrict__ partial, int splits, float *__restrict__ C,
                                          const float *__restrict__ bias, int M, int N, int ldc, int batch,
                                          long long stride_c, float alpha, float beta,
                                          const float *__restrict__ residual, float *__restrict__ act_out,
                                          int activation, float dropout, unsigned long long seed) {
    const GemmEpilogue e = GEMM_EPILOGUE_FROM_PARAMS;
    const bool c_vec = e.vec_ok();
    const bool p_vec = N % 4 == 0 && aligned16(partial);
    const int groups = (N + 3) / 4;
    const long long slice = (long long)M * N, total = (long long)batch * M * groups;
    for (long long t = blockIdx.x * (long long)blockDim.x + threadIdx.x; t < total;
         t += (long long)gridDim.x * blockDim.x) {
        const int n = (int)(t % groups) * 4;
        const int m = (int)(t / groups % M);
        const int b = (int)(t / groups / M);
        float sum[4] = {};
        const float *p = partial + (long long)b * splits * slice + (long long)m * N + n;
        for (int s = 0; s < splits; s++, p += slice) {
            float v[4];
            if (p_vec) load_float4(p, v);
            else
                for (int j = 0; j < 4; j++) v[j] = n + j < N ? p[j] : 0.0f;
#pragma unroll
            for (int j = 0; j < 4; j++) sum[j] += v[j];
        }
        e.apply4(b, m, n, sum, c_vec && n + 3 < N);
    }
}
