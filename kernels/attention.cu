// Fused multi-head self-attention with an additive key padding mask and attention-probability
// dropout, forward and backward, never storing the B x H x L x L probabilities.
//
// Layouts: q, k, v rows are tokens, `stride` floats apart ([B, L, stride]; head h at columns
// h*d .. h*d + d, so a fused QKV projection works with stride 3Hd and offset pointers); out and
// dout are [B, L, H*d]. key_mask [B, L] (1 = real token, 0 = padding; null = no padding) drops
// padded keys entirely, as HF BERT's large negative additive mask does. Per (b, h, query) the
// forward keeps lse = log sum_j exp(s_ij), O(B*H*L) floats; backward recomputes each
// probability from it. Dropout on the probabilities keeps element (b, h, i, j) iff
// dropout_keep(seed, ((b*H + h)*L + i)*L + j, p): the same mask in forward and backward.
// Head size d <= 128. The tiled kernels (d <= 64) come in two instances each, without dropout
// and `_dropout`: the mask's hash (two 64-bit multiplies a probability, many XMADs on Pascal) is
// compiled only where it runs. Their main loops hold no 64-bit multiply: addresses advance by
// fixed steps and the hash's input by multiples of its constant.
#include "common.cuh"

#define ATTN_WARPS 4
#define ATTN_MAX_D 128
#define ATTN_PER_LANE (ATTN_MAX_D / 32)

__device__ __forceinline__ long long attn_row(int b, int i, int len) { return (long long)b * len + i; }

__device__ __forceinline__ bool attn_key_real(const int *key_mask, int b, int j, int len) {
    return key_mask == nullptr || key_mask[(long long)b * len + j] != 0;
}

// One warp per query row i of head h. Keys go by in chunks of 32, one per lane: each lane
// scores its key against the query (kept in shared memory), the warp updates the running max m
// and normaliser l (online softmax) and rescales its accumulator, then every lane adds the
// chunk's (dropped-out) probabilities times the value rows for its own 4 of the d dimensions.
extern "C" __global__ void HOT_KERNEL attention_forward(const float *__restrict__ q, const float *__restrict__ k,
                                                        const float *__restrict__ v, const int *__restrict__ key_mask,
                                                        float *__restrict__ out, float *__restrict__ lse, int batch,
                                                        int heads, int len, int head_dim, int stride, float scale,
                                                        float dropout, unsigned long long seed) {
    __shared__ float q_sh[ATTN_WARPS][ATTN_MAX_D];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int i = blockIdx.x * ATTN_WARPS + warp, h = blockIdx.y, b = blockIdx.z;
    const bool live = i < len;  // whole warps only, and no barrier follows: safe to skip work
    if (!live) return;
    const long long qrow = attn_row(b, i, len) * stride + h * head_dim;
    for (int c = lane; c < head_dim; c += 32) q_sh[warp][c] = q[qrow + c];
    __syncwarp();
    float acc[ATTN_PER_LANE];
    for (int t = 0; t < ATTN_PER_LANE; t++) acc[t] = 0.0f;
    float m = -float_infinity(), l = 0.0f;
    const float keep_scale = 1.0f / (1.0f - dropout);
    const long long counter0 = (((long long)b * heads + h) * len + i) * len;
    for (int j0 = 0; j0 < len; j0 += 32) {
        const int j = j0 + lane;
        const bool real = j < len && attn_key_real(key_mask, b, j, len);
        float s = -float_infinity();
        if (real) {
            const float *kj = k + attn_row(b, j, len) * stride + h * head_dim;
            float dot = 0.0f;
            for (int c = 0; c < head_dim; c++) dot = fmaf(q_sh[warp][c], kj[c], dot);
            s = dot * scale;
        }
        const float m_new = fmaxf(m, warp_max(s));
        if (m_new == -float_infinity()) continue;  // every key so far is padding
        const float p = real ? expf(s - m_new) : 0.0f;
        const float correction = expf(m - m_new);  // 0 while m is still -inf
        l = l * correction + warp_sum(p);
        for (int t = 0; t < ATTN_PER_LANE; t++) acc[t] *= correction;
        const float pd = (dropout > 0.0f && !dropout_keep(seed, counter0 + j, dropout)) ? 0.0f : p * keep_scale;
        for (int jj = 0; jj < 32 && j0 + jj < len; jj++) {
            const float pj = __shfl_sync(FULL_MASK, pd, jj);
            if (pj == 0.0f) continue;
            const float *vj = v + attn_row(b, j0 + jj, len) * stride + h * head_dim;
            for (int t = 0; t < ATTN_PER_LANE; t++) {
                const int c = lane + 32 * t;
                if (c < head_dim) acc[t] = fmaf(pj, vj[c], acc[t]);
            }
        }
        m = m_new;
    }
    const float inv = l > 0.0f ? 1.0f / l : 0.0f;
    float *o = out + attn_row(b, i, len) * heads * head_dim + h * head_dim;
    for (int t = 0; t < ATTN_PER_LANE; t++) {
        const int c = lane + 32 * t;
        if (c < head_dim) o[c] = acc[t] * inv;
    }
    // A row whose keys are all padding has no distribution: +inf makes every recomputed p 0.
    if (lane == 0) lse[((long long)b * heads + h) * len + i] = l > 0.0f ? m + logf(l) : float_infinity();
}

// Head sizes up to ATTN_TILE_D take the tiled kernels below; tiles are zero past the head size.
#define ATTN_TILE_D 64
// Stages rows row0 .. row0 + rows of one head into a shared tile [rows][ld], the whole block
// taking part: row r of sequence b starts at src + (b * len + r) * row_stride + col0; the tile
// is 0 past len and past the head size d.
__device__ __forceinline__ void attn_stage(float *tile, int ld, const float *__restrict__ src, long long row_stride,
                                           int col0, int b, int row0, int rows, int len, int d) {
    for (int e = threadIdx.x; e < rows * ATTN_TILE_D; e += blockDim.x) {
        const int rr = e / ATTN_TILE_D, c = e % ATTN_TILE_D, row = row0 + rr;
        tile[rr * ld + c] = (row < len && c < d) ? src[attn_row(b, row, len) * row_stride + col0 + c] : 0.0f;
    }
}
// The same tile, transposed and multiplied by `mul`: tile[c * ld + rr] holds column c of row
// row0 + rr. Global reads stay coalesced (consecutive threads read consecutive columns of one row).
__device__ __forceinline__ void attn_stage_transposed(float *tile, int ld, const float *__restrict__ src,
                                                      long long row_stride, int col0, int b, int row0, int rows,
                                                      int len, int d, float mul) {
    for (int e = threadIdx.x; e < rows * ATTN_TILE_D; e += blockDim.x) {
        const int rr = e / ATTN_TILE_D, c = e % ATTN_TILE_D, row = row0 + rr;
        tile[c * ld + rr] = (row < len && c < d) ? src[attn_row(b, row, len) * row_stride + col0 + c] * mul : 0.0f;
    }
}

// log2(e) and ln(2), for softmax in base 2: exp(x) = exp2(x log2(e)).
#define ATTN_LOG2E 1.4426950408889634f
#define ATTN_LN2 0.6931471805599453f

#define FLASH_Q 64
// Rows of a streamed tile (keys in the forward and dq, queries in dk/dv), and per block in
// the backward.
#define FLASH_TILE 32
#define FLASH_THREADS 256
#define FLASH_PAD 4
#define FLASH_STAGE (FLASH_TILE * ATTN_TILE_D / FLASH_THREADS)
#define FLASH_LD (ATTN_TILE_D + FLASH_PAD)

// This thread's share of the rows of one head that stream through a kernel, tile by tile:
// column c = tid % 64 of the FLASH_STAGE consecutive rows from (tid / 64) * FLASH_STAGE of the
// current tile. Consecutive threads read consecutive columns (coalesced), and a thread's rows
// are adjacent, so a dimension-major tile takes them as whole float4s. 0 past len and past
// the head size. The address is worked out once (row r of sequence b starts at src + (b * len
// + r) * stride + col0) and moves by a fixed step per tile: no 64-bit multiply in a kernel's
// main loop. Fetched into registers ahead of use, stored into shared memory when the tile is
// free.
struct FlashRows {
    const float *at;  // this thread's column in the first of its rows of the current tile
    int row, stride;  // that row's index in the sequence; floats from one row to the next
    bool column_real;

    __device__ __forceinline__ void start(const float *__restrict__ src, int row_stride, int col0, int b, int row0,
                                          int len, int d) {
        const int c = threadIdx.x % ATTN_TILE_D;
        row = row0 + threadIdx.x / ATTN_TILE_D * FLASH_STAGE;
        stride = row_stride;
        column_real = c < d;
        at = src + attn_row(b, row, len) * row_stride + col0 + c;
    }
    __device__ __forceinline__ void fetch(int len, float next[FLASH_STAGE]) const {
        const float *p = at;
#pragma unroll
        for (int u = 0; u < FLASH_STAGE; u++, p += stride) next[u] = row + u < len && column_real ? *p : 0.0f;
    }
    __device__ __forceinline__ void next_tile() {
        at += FLASH_TILE * stride;
        row += FLASH_TILE;
    }
};

// The fetched rows into a row-major tile [32][64 + pad].
__device__ __forceinline__ void flash_store_rows(float (*tile)[FLASH_LD], const float next[FLASH_STAGE]) {
    const int c = threadIdx.x % ATTN_TILE_D, r0 = threadIdx.x / ATTN_TILE_D * FLASH_STAGE;
#pragma unroll
    for (int u = 0; u < FLASH_STAGE; u++) tile[r0 + u][c] = next[u];
}

// The fetched rows into a dimension-major tile [64][32 + pad] (tile[c][r]): float4s, and the 8
// threads of a quarter-warp cover all 32 banks (row stride 36 floats).
__device__ __forceinline__ void flash_store_columns(float (*tile)[FLASH_TILE + FLASH_PAD],
                                                    const float next[FLASH_STAGE]) {
    const int c = threadIdx.x % ATTN_TILE_D, r0 = threadIdx.x / ATTN_TILE_D * FLASH_STAGE;
#pragma unroll
    for (int u = 0; u < FLASH_STAGE; u += 4)
        *reinterpret_cast<float4 *>(&tile[c][r0 + u]) = make_float4(next[u], next[u + 1], next[u + 2], next[u + 3]);
}

// The forward for head sizes up to 64, flash-style: a block of 256 threads owns 64 queries of
// one (b, h); the queries stay in shared memory and the keys and values stream through it in
// tiles of 32, the next tile's loads in flight (in registers) while the current one is used.
// Both products are register-blocked like a GEMM: for S = Q K^T each thread holds a 4 x 2
// block (4 queries x 2 keys) and reads, per head dimension, one float4 of queries and one
// float2 of keys (tiles stored dimension-major); for O += P V it holds a 4 x 4 block (4 queries
// x 4 output dimensions) and reads one float4 of probabilities and one of values per key -- 8
// and 16 FMAs per pair of shared loads, where the previous design did one FMA per two. Both
// loops read the next step's operands before this step's FMAs (shared loads take ~30 cycles).
// The queries are staged multiplied by the scale and by log2(e): scores are then in base 2 and
// each probability is one exp2f (a single MUFU.EX2) instead of expf's range reduction around
// it; lse goes back to natural log once per row. The 16 threads that share a query row (a
// half-warp) combine its running max with four shuffles per tile; each keeps its own share of
// the normaliser, added up once at the end: the same online softmax, lse and dropout mask as
// attention_forward, so the backward kernels serve both.
template <bool DROPOUT>
__device__ __forceinline__ void attention_forward_flash_body(const float *__restrict__ q, const float *__restrict__ k,
    const float *__restrict__ v, const int *__restrict__ key_mask, float *__restrict__ out, float *__restrict__ lse,
    int batch, int heads, int len, int head_dim, int stride, float scale, float dropout, unsigned long long seed) {
    __shared__ __align__(16) float q_t[ATTN_TILE_D][FLASH_Q + FLASH_PAD];
    __shared__ __align__(16) float k_t[ATTN_TILE_D][FLASH_TILE + FLASH_PAD];
    __shared__ __align__(16) float v_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float p_t[FLASH_TILE][FLASH_Q + FLASH_PAD];
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    const int i0 = blockIdx.x * FLASH_Q, h = blockIdx.y, b = blockIdx.z, d = head_dim;
    // The queries are staged already scaled: a score is then (scale log2(e) q) . k, the natural
    // score in base 2, with no multiply per score.
    attn_stage_transposed(&q_t[0][0], FLASH_Q + FLASH_PAD, q, stride, h * d, b, i0, FLASH_Q, len, d,
                          scale * ATTN_LOG2E);
    float acc[4][4], m[4], l[4];
#pragma unroll
    for (int a = 0; a < 4; a++) {
        m[a] = -float_infinity(), l[a] = 0.0f;
#pragma unroll
        for (int x = 0; x < 4; x++) acc[a][x] = 0.0f;
    }
    const float keep_scale = 1.0f / (1.0f - dropout);
    // The next key/value tile goes through registers (this thread's FLASH_STAGE elements of
    // each), fetched before the current tile's arithmetic so global latency hides behind it.
    float k_next[FLASH_STAGE], v_next[FLASH_STAGE];
    FlashRows k_rows, v_rows;
    k_rows.start(k, stride, h * d, b, 0, len, d);
    v_rows.start(v, stride, h * d, b, 0, len, d);
    k_rows.fetch(len, k_next);
    v_rows.fetch(len, v_next);
    flash_store_columns(k_t, k_next);
    flash_store_rows(v_sh, v_next);
    __syncthreads();
    // Per key, whether it is a real token (this sequence's mask row) and, under dropout, the
    // mask hash's input for this thread's queries at key 0, to which key j adds j * golden.
    const int *mask_row = key_mask ? key_mask + b * len : nullptr;  // B * L fits an int
    unsigned long long row_input[4];
#pragma unroll
    for (int a = 0; a < 4; a++)
        row_input[a] = DROPOUT ? dropout_input(seed, (((long long)b * heads + h) * len + i0 + ty * 4 + a) * len) : 0;
    for (int j0 = 0; j0 < len; j0 += FLASH_TILE) {
        const bool more = j0 + FLASH_TILE < len;
        if (more) {
            k_rows.next_tile();
            v_rows.next_tile();
            k_rows.fetch(len, k_next);
            v_rows.fetch(len, v_next);
        }
        // Scores: queries ty*4 + a, keys tx*2 + e. The operands of step c + 1 are read while
        // step c's FMAs run (a shared load takes some 30 cycles; with 8 warps an SM cannot
        // hide it otherwise).
        float s[4][2] = {};
        float4 qa = *reinterpret_cast<const float4 *>(&q_t[0][ty * 4]);
        float2 kb = *reinterpret_cast<const float2 *>(&k_t[0][tx * 2]);
#pragma unroll
        for (int c = 0; c < ATTN_TILE_D; c++) {
            float4 qn = qa;
            float2 kn = kb;
            if (c + 1 < ATTN_TILE_D) {
                qn = *reinterpret_cast<const float4 *>(&q_t[c + 1][ty * 4]);
                kn = *reinterpret_cast<const float2 *>(&k_t[c + 1][tx * 2]);
            }
            const float qv[4] = {qa.x, qa.y, qa.z, qa.w};
#pragma unroll
            for (int a = 0; a < 4; a++) {
                s[a][0] = fmaf(qv[a], kb.x, s[a][0]);
                s[a][1] = fmaf(qv[a], kb.y, s[a][1]);
            }
            qa = qn, kb = kn;
        }
        bool real[2];
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int j = j0 + tx * 2 + e;
            real[e] = j < len && (!mask_row || mask_row[j] != 0);
        }
        const unsigned long long key_input = (unsigned long long)(j0 + tx * 2) * DROPOUT_GOLDEN;
        float p_out[2][4];  // the tile's dropped-out probabilities, keys tx*2 + e, queries ty*4 + a
#pragma unroll
        for (int a = 0; a < 4; a++) {
            float tile_max = -float_infinity();
#pragma unroll
            for (int e = 0; e < 2; e++) {
                s[a][e] = real[e] ? s[a][e] : -float_infinity();
                tile_max = fmaxf(tile_max, s[a][e]);
            }
#pragma unroll
            for (int o = 1; o < 16; o <<= 1) tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, o));
            const float m_new = fmaxf(m[a], tile_max);
            const bool any = m_new != -float_infinity();  // false while every key so far is padding
            const float correction = any ? exp2f(m[a] - m_new) : 1.0f;
            // Each lane keeps its own share of the normaliser (rescaled like the rest of the
            // row); the 16 shares are added once, after the last tile.
            float psum = 0.0f;
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int jj = tx * 2 + e, j = j0 + jj;
                const float p = (any && real[e]) ? exp2f(s[a][e] - m_new) : 0.0f;
                psum += p;
                const unsigned long long input = row_input[a] + key_input + e * DROPOUT_GOLDEN;
                const bool keep = !DROPOUT || (j < len && dropout_keep_input(input, dropout));
                p_out[e][a] = keep ? p * keep_scale : 0.0f;
            }
            l[a] = l[a] * correction + psum;
            m[a] = m_new;
#pragma unroll
            for (int x = 0; x < 4; x++) acc[a][x] *= correction;
        }
        // A thread's 4 queries are adjacent in p_t: one float4 per key.
#pragma unroll
        for (int e = 0; e < 2; e++)
            *reinterpret_cast<float4 *>(&p_t[tx * 2 + e][ty * 4]) =
                make_float4(p_out[e][0], p_out[e][1], p_out[e][2], p_out[e][3]);
        __syncthreads();  // every probability of the tile is in p_t
        // Output: queries ty*4 + a, dimensions tx*4 + x; the next key's operands in flight.
        float4 pa = *reinterpret_cast<const float4 *>(&p_t[0][ty * 4]);
        float4 vb = *reinterpret_cast<const float4 *>(&v_sh[0][tx * 4]);
#pragma unroll
        for (int jj = 0; jj < FLASH_TILE; jj++) {
            float4 pn = pa, vn = vb;
            if (jj + 1 < FLASH_TILE) {
                pn = *reinterpret_cast<const float4 *>(&p_t[jj + 1][ty * 4]);
                vn = *reinterpret_cast<const float4 *>(&v_sh[jj + 1][tx * 4]);
            }
            const float pv[4] = {pa.x, pa.y, pa.z, pa.w}, vv[4] = {vb.x, vb.y, vb.z, vb.w};
#pragma unroll
            for (int a = 0; a < 4; a++)
#pragma unroll
                for (int x = 0; x < 4; x++) acc[a][x] = fmaf(pv[a], vv[x], acc[a][x]);
            pa = pn, vb = vn;
        }
        if (more) {
            __syncthreads();  // this tile's k, v and p are consumed
            flash_store_columns(k_t, k_next);
            flash_store_rows(v_sh, v_next);
            __syncthreads();
        }
    }
#pragma unroll
    for (int a = 0; a < 4; a++)
#pragma unroll
        for (int o = 1; o < 16; o <<= 1) l[a] += __shfl_xor_sync(FULL_MASK, l[a], o);
#pragma unroll
    for (int a = 0; a < 4; a++) {
        const int i = i0 + ty * 4 + a;
        if (i >= len) continue;
        const float inv = l[a] > 0.0f ? 1.0f / l[a] : 0.0f;
        float *o = out + attn_row(b, i, len) * heads * d + h * d;
#pragma unroll
        for (int x = 0; x < 4; x++) {
            const int c = tx * 4 + x;
            if (c < d) o[c] = acc[a][x] * inv;
        }
        // A row whose keys are all padding has no distribution: +inf makes every recomputed p 0.
        // m is in base 2: lse = ln(2) (m + log2 l).
        if (tx == 0)
            lse[((long long)b * heads + h) * len + i] = l[a] > 0.0f ? ATTN_LN2 * (m[a] + log2f(l[a])) : float_infinity();
    }
}

// Two instances: without dropout (evaluation, and training at rate 0: the mask code compiled
// out) and with it.
extern "C" __global__ void HOT_KERNEL __launch_bounds__(FLASH_THREADS, 2)
    attention_forward_flash(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                            const int *__restrict__ key_mask, float *__restrict__ out, float *__restrict__ lse,
                            int batch, int heads, int len, int head_dim, int stride, float scale, float dropout,
                            unsigned long long seed) {
    attention_forward_flash_body<false>(q, k, v, key_mask, out, lse, batch, heads, len, head_dim, stride, scale,
                                        dropout, seed);
}
extern "C" __global__ void HOT_KERNEL __launch_bounds__(FLASH_THREADS, 2)
    attention_forward_flash_dropout(const float *__restrict__ q, const float *__restrict__ k,
                                    const float *__restrict__ v, const int *__restrict__ key_mask,
                                    float *__restrict__ out, float *__restrict__ lse, int batch, int heads, int len,
                                    int head_dim, int stride, float scale, float dropout, unsigned long long seed) {
    attention_forward_flash_body<true>(q, k, v, key_mask, out, lse, batch, heads, len, head_dim, stride, scale, dropout,
                                       seed);
}

// delta[b, h, i] = sum_c dout[b, i, h, c] * out[b, i, h, c]: the row sums sum_j p_ij dp_ij that the
// softmax backward subtracts (they equal dO . O even with dropout). One warp per row.
extern "C" __global__ void attention_backward_delta(const float *__restrict__ out, const float *__restrict__ dout,
                                                    float *__restrict__ delta, int batch, int heads, int len,
                                                    int head_dim) {
    const int lane = threadIdx.x % 32;
    const int i = blockIdx.x * ATTN_WARPS + threadIdx.x / 32, h = blockIdx.y, b = blockIdx.z;
    if (i >= len) return;
    const long long base = attn_row(b, i, len) * heads * head_dim + h * head_dim;
    float s = 0.0f;
    for (int c = lane; c < head_dim; c += 32) s += dout[base + c] * out[base + c];
    s = warp_sum(s);
    if (lane == 0) delta[((long long)b * heads + h) * len + i] = s;
}

// With p_ij = exp(s_ij - lse_i), the dropped-out p~_ij = p_ij keep_ij / (1 - rate), and
// dp_ij = keep_ij / (1 - rate) (dO_i . v_j):  dv_j = sum_i p~_ij dO_i,
// ds_ij = p_ij (dp_ij - delta_i),  dk_j = scale sum_i ds_ij q_i,  dq_i = scale sum_j ds_ij k_j.
// Each (b, h, i, j) term of this recomputation. In base 2, like the forward: the caller passes
// scale2 = scale log2(e) and lse2_i = lse_i log2(e), so p is one exp2f.
struct AttnTerm {
    float p_dropped, ds;
};
__device__ __forceinline__ AttnTerm attn_term(float qk, float dov, float lse2_i, float delta_i, float scale2,
                                              float rate, bool keep) {
    const float p = exp2f(qk * scale2 - lse2_i);
    const float kept = keep ? 1.0f / (1.0f - rate) : 0.0f;
    return {p * kept, p * (dov * kept - delta_i)};
}

// dk and dv, one warp per key row j: the warp walks every query i, so each key's gradient is
// summed in one place in a fixed order (no atomics: the same result on every run).
extern "C" __global__ void HOT_KERNEL attention_backward_kv(
    const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
    const int *__restrict__ key_mask, const float *__restrict__ dout, const float *__restrict__ lse,
    const float *__restrict__ delta, float *__restrict__ dk, float *__restrict__ dv, int batch, int heads, int len,
    int head_dim, int stride, float scale, float dropout, unsigned long long seed) {
    const int lane = threadIdx.x % 32;
    const int j = blockIdx.x * ATTN_WARPS + threadIdx.x / 32, h = blockIdx.y, b = blockIdx.z;
    if (j >= len) return;
    const long long krow = attn_row(b, j, len) * stride + h * head_dim;
    float kj[ATTN_PER_LANE], vj[ATTN_PER_LANE], gk[ATTN_PER_LANE], gv[ATTN_PER_LANE];
    for (int t = 0; t < ATTN_PER_LANE; t++) {
        const int c = lane + 32 * t;
        kj[t] = c < head_dim ? k[krow + c] : 0.0f;
        vj[t] = c < head_dim ? v[krow + c] : 0.0f;
        gk[t] = 0.0f, gv[t] = 0.0f;
    }
    if (attn_key_real(key_mask, b, j, len)) {
        for (int i = 0; i < len; i++) {
            const long long qrow = attn_row(b, i, len) * stride + h * head_dim;
            const long long orow = attn_row(b, i, len) * heads * head_dim + h * head_dim;
            float qk = 0.0f, dov = 0.0f;
            for (int t = 0; t < ATTN_PER_LANE; t++) {
                const int c = lane + 32 * t;
                if (c < head_dim) qk = fmaf(q[qrow + c], kj[t], qk), dov = fmaf(dout[orow + c], vj[t], dov);
            }
            qk = warp_sum(qk);
            dov = warp_sum(dov);
            const long long r = ((long long)b * heads + h) * len + i;
            const bool keep = !(dropout > 0.0f) || dropout_keep(seed, r * len + j, dropout);
            const AttnTerm a = attn_term(qk, dov, lse[r] * ATTN_LOG2E, delta[r], scale * ATTN_LOG2E, dropout, keep);
            for (int t = 0; t < ATTN_PER_LANE; t++) {
                const int c = lane + 32 * t;
                if (c < head_dim) gv[t] = fmaf(a.p_dropped, dout[orow + c], gv[t]), gk[t] = fmaf(a.ds * scale, q[qrow + c], gk[t]);
            }
        }
    }
    for (int t = 0; t < ATTN_PER_LANE; t++) {
        const int c = lane + 32 * t;
        if (c < head_dim) dk[krow + c] = gk[t], dv[krow + c] = gv[t];
    }
}

// dq, one warp per query row i, walking every key j in a fixed order.
extern "C" __global__ void HOT_KERNEL attention_backward_q(
    const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
    const int *__restrict__ key_mask, const float *__restrict__ dout, const float *__restrict__ lse,
    const float *__restrict__ delta, float *__restrict__ dq, int batch, int heads, int len, int head_dim, int stride,
    float scale, float dropout, unsigned long long seed) {
    const int lane = threadIdx.x % 32;
    const int i = blockIdx.x * ATTN_WARPS + threadIdx.x / 32, h = blockIdx.y, b = blockIdx.z;
    if (i >= len) return;
    const long long qrow = attn_row(b, i, len) * stride + h * head_dim;
    const long long orow = attn_row(b, i, len) * heads * head_dim + h * head_dim;
    const long long r = ((long long)b * heads + h) * len + i;
    float qi[ATTN_PER_LANE], doi[ATTN_PER_LANE], gq[ATTN_PER_LANE];
    for (int t = 0; t < ATTN_PER_LANE; t++) {
        const int c = lane + 32 * t;
        qi[t] = c < head_dim ? q[qrow + c] : 0.0f;
        doi[t] = c < head_dim ? dout[orow + c] : 0.0f;
        gq[t] = 0.0f;
    }
    const float lse2_i = lse[r] * ATTN_LOG2E, delta_i = delta[r];
    for (int j = 0; j < len; j++) {
        if (!attn_key_real(key_mask, b, j, len)) continue;  // uniform across the warp
        const long long krow = attn_row(b, j, len) * stride + h * head_dim;
        float qk = 0.0f, dov = 0.0f;
        for (int t = 0; t < ATTN_PER_LANE; t++) {
            const int c = lane + 32 * t;
            if (c < head_dim) qk = fmaf(qi[t], k[krow + c], qk), dov = fmaf(doi[t], v[krow + c], dov);
        }
        qk = warp_sum(qk);
        dov = warp_sum(dov);
        const bool keep = !(dropout > 0.0f) || dropout_keep(seed, r * len + j, dropout);
        const AttnTerm a = attn_term(qk, dov, lse2_i, delta_i, scale * ATTN_LOG2E, dropout, keep);
        for (int t = 0; t < ATTN_PER_LANE; t++) {
            const int c = lane + 32 * t;
            if (c < head_dim) gq[t] = fmaf(a.ds * scale, k[krow + c], gq[t]);
        }
    }
    for (int t = 0; t < ATTN_PER_LANE; t++) {
        const int c = lane + 32 * t;
        if (c < head_dim) dq[qrow + c] = gq[t];
    }
}

// The backward for head sizes up to 64, register-blocked like the flash forward, in two
// kernels so that every gradient row is summed in one place in a fixed order (no atomics, the
// same bits every run). Tiles are row-major [32][64 + 4] in shared memory and both kernels
// start a tile the same way: each thread recomputes a 2 x 2 block of (query, key) terms --
// the scores q.k and dO.v from float4 reads along the head dimension (16 FMAs per 4 loads),
// then p~ and ds from lse and delta -- into a shared term tile. The next tile's rows are in
// flight (in registers) while the current one is used, as in the forward.
//
// attention_backward_kv_flash: a block of 256 threads owns 32 keys and walks the queries in
// tiles of 32; each thread then adds, per query, p~ x dO into 2 x 4 of dv and ds x q into
// 2 x 4 of dk (a float2 of terms and a float4 of the row per 8 FMAs).

// The 2 x 2 block of scores q_i.k_j and dO_i.v_j for queries qi, qi + 1 (rows of q_sh, do_sh)
// and keys kj, kj + 16 (rows of k_sh, v_sh: 16 threads then read 16 consecutive rows, which
// the 68-float row stride spreads over every bank -- adjacent keys would collide two by two).
__device__ __forceinline__ void flash_scores(float (*q_sh)[FLASH_LD], float (*do_sh)[FLASH_LD],
                                             float (*k_sh)[FLASH_LD], float (*v_sh)[FLASH_LD], int qi, int kj,
                                             float qk[2][2], float dov[2][2]) {
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int e = 0; e < 2; e++) qk[a][e] = 0.0f, dov[a][e] = 0.0f;
#pragma unroll 4
    for (int c = 0; c < ATTN_TILE_D; c += 4) {
        float4 qv[2], ov[2], kv[2], vv[2];
#pragma unroll
        for (int a = 0; a < 2; a++) {
            qv[a] = *reinterpret_cast<const float4 *>(&q_sh[qi + a][c]);
            ov[a] = *reinterpret_cast<const float4 *>(&do_sh[qi + a][c]);
            kv[a] = *reinterpret_cast<const float4 *>(&k_sh[kj + 16 * a][c]);
            vv[a] = *reinterpret_cast<const float4 *>(&v_sh[kj + 16 * a][c]);
        }
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                float x = qk[a][e], y = dov[a][e];
                x = fmaf(qv[a].x, kv[e].x, x), x = fmaf(qv[a].y, kv[e].y, x);
                x = fmaf(qv[a].z, kv[e].z, x), x = fmaf(qv[a].w, kv[e].w, x);
                y = fmaf(ov[a].x, vv[e].x, y), y = fmaf(ov[a].y, vv[e].y, y);
                y = fmaf(ov[a].z, vv[e].z, y), y = fmaf(ov[a].w, vv[e].w, y);
                qk[a][e] = x, dov[a][e] = y;
            }
    }
}

template <bool DROPOUT>
__device__ __forceinline__ void attention_backward_kv_flash_body(const float *__restrict__ q,
    const float *__restrict__ k, const float *__restrict__ v, const int *__restrict__ key_mask,
    const float *__restrict__ dout, const float *__restrict__ lse, const float *__restrict__ delta,
    float *__restrict__ dk, float *__restrict__ dv, int batch, int heads, int len, int head_dim, int stride,
    float scale, float dropout, unsigned long long seed) {
    __shared__ __align__(16) float k_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float v_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float q_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float do_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float pd_sh[FLASH_TILE][FLASH_TILE + FLASH_PAD];
    __shared__ __align__(16) float ds_sh[FLASH_TILE][FLASH_TILE + FLASH_PAD];
    __shared__ float stat_sh[2][FLASH_TILE];
    const int t = threadIdx.x;
    const float scale2 = scale * ATTN_LOG2E;  // scores in base 2 (attn_term)
    // Terms: queries qi + a, keys kj + 16e. Sums: keys kr + e, head dimensions dc + x.
    const int qi = (t / 16) * 2, kj = t % 16, kr = (t / 16) * 2, dc = (t % 16) * 4;
    const int j0 = blockIdx.x * FLASH_TILE, h = blockIdx.y, b = blockIdx.z, d = head_dim;
    attn_stage(&k_sh[0][0], FLASH_LD, k, stride, h * d, b, j0, FLASH_TILE, len, d);
    attn_stage(&v_sh[0][0], FLASH_LD, v, stride, h * d, b, j0, FLASH_TILE, len, d);
    bool key_real[2];
#pragma unroll
    for (int e = 0; e < 2; e++)
        key_real[e] = j0 + kj + 16 * e < len && attn_key_real(key_mask, b, j0 + kj + 16 * e, len);
    float gk[2][4], gv[2][4];
#pragma unroll
    for (int e = 0; e < 2; e++)
#pragma unroll
        for (int x = 0; x < 4; x++) gk[e][x] = 0.0f, gv[e][x] = 0.0f;
    const long long rows0 = ((long long)b * heads + h) * len;
    const float *lse_row = lse + rows0, *delta_row = delta + rows0;
    // Under dropout, the mask hash's input for query 0 at this thread's keys, to which query i
    // adds i * query_step.
    unsigned long long key_input[2];
#pragma unroll
    for (int e = 0; e < 2; e++) key_input[e] = DROPOUT ? dropout_input(seed, rows0 * len + j0 + kj + 16 * e) : 0;
    const unsigned long long query_step = (unsigned long long)len * DROPOUT_GOLDEN;
    // The next query tile (q, dO rows; lse and delta) goes through registers, fetched before
    // the current tile's arithmetic.
    float q_next[FLASH_STAGE], do_next[FLASH_STAGE], lse_next = 0.0f, delta_next = 0.0f;
    FlashRows q_rows, do_rows;
    q_rows.start(q, stride, h * d, b, 0, len, d);
    do_rows.start(dout, heads * d, h * d, b, 0, len, d);
    auto fetch = [&](int i0) {
        q_rows.fetch(len, q_next);
        do_rows.fetch(len, do_next);
        if (t < FLASH_TILE) {
            const int i = i0 + t;
            lse_next = i < len ? lse_row[i] * ATTN_LOG2E : float_infinity();  // base 2
            delta_next = i < len ? delta_row[i] : 0.0f;
        }
    };
    auto store = [&]() {
        flash_store_rows(q_sh, q_next);
        flash_store_rows(do_sh, do_next);
        if (t < FLASH_TILE) stat_sh[0][t] = lse_next, stat_sh[1][t] = delta_next;
    };
    fetch(0);
    store();
    __syncthreads();
    for (int i0 = 0; i0 < len; i0 += FLASH_TILE) {
        const bool more = i0 + FLASH_TILE < len;
        if (more) {
            q_rows.next_tile();
            do_rows.next_tile();
            fetch(i0 + FLASH_TILE);
        }
        float qk[2][2], dov[2][2];
        flash_scores(q_sh, do_sh, k_sh, v_sh, qi, kj, qk, dov);
        const unsigned long long tile_input = (unsigned long long)(i0 + qi) * query_step;
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int e = 0; e < 2; e++) {
                const int i = i0 + qi + a;
                float pd = 0.0f, ds = 0.0f;
                if (key_real[e] && i < len) {
                    const bool keep = !DROPOUT ||
                                      dropout_keep_input(key_input[e] + tile_input + a * query_step, dropout);
                    const AttnTerm term =
                        attn_term(qk[a][e], dov[a][e], stat_sh[0][qi + a], stat_sh[1][qi + a], scale2, dropout, keep);
                    pd = term.p_dropped, ds = term.ds * scale;
                }
                pd_sh[qi + a][kj + 16 * e] = pd;
                ds_sh[qi + a][kj + 16 * e] = ds;
            }
        __syncthreads();
        // The next query's operands are read while this one's FMAs run.
        float2 p2 = *reinterpret_cast<const float2 *>(&pd_sh[0][kr]);
        float2 s2 = *reinterpret_cast<const float2 *>(&ds_sh[0][kr]);
        float4 o4 = *reinterpret_cast<const float4 *>(&do_sh[0][dc]);
        float4 q4 = *reinterpret_cast<const float4 *>(&q_sh[0][dc]);
#pragma unroll
        for (int ii = 0; ii < FLASH_TILE; ii++) {
            float2 p2n = p2, s2n = s2;
            float4 o4n = o4, q4n = q4;
            if (ii + 1 < FLASH_TILE) {
                p2n = *reinterpret_cast<const float2 *>(&pd_sh[ii + 1][kr]);
                s2n = *reinterpret_cast<const float2 *>(&ds_sh[ii + 1][kr]);
                o4n = *reinterpret_cast<const float4 *>(&do_sh[ii + 1][dc]);
                q4n = *reinterpret_cast<const float4 *>(&q_sh[ii + 1][dc]);
            }
            const float pv[2] = {p2.x, p2.y}, sv[2] = {s2.x, s2.y};
            const float ov[4] = {o4.x, o4.y, o4.z, o4.w}, qv[4] = {q4.x, q4.y, q4.z, q4.w};
#pragma unroll
            for (int e = 0; e < 2; e++)
#pragma unroll
                for (int x = 0; x < 4; x++) {
                    gv[e][x] = fmaf(pv[e], ov[x], gv[e][x]);
                    gk[e][x] = fmaf(sv[e], qv[x], gk[e][x]);
                }
            p2 = p2n, s2 = s2n, o4 = o4n, q4 = q4n;
        }
        if (more) {
            __syncthreads();  // this tile is consumed
            store();
            __syncthreads();
        }
    }
#pragma unroll
    for (int e = 0; e < 2; e++) {
        const int j = j0 + kr + e;
        if (j >= len) continue;
        const long long krow = attn_row(b, j, len) * stride + h * d;
#pragma unroll
        for (int x = 0; x < 4; x++) {
            const int c = dc + x;
            if (c < d) dk[krow + c] = gk[e][x], dv[krow + c] = gv[e][x];
        }
    }
}

// Two instances: without dropout (evaluation, and training at rate 0: the mask code compiled
// out) and with it.
extern "C" __global__ void HOT_KERNEL __launch_bounds__(FLASH_THREADS, 2)
    attention_backward_kv_flash(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                                const int *__restrict__ key_mask, const float *__restrict__ dout,
                                const float *__restrict__ lse, const float *__restrict__ delta, float *__restrict__ dk,
                                float *__restrict__ dv, int batch, int heads, int len, int head_dim, int stride,
                                float scale, float dropout, unsigned long long seed) {
    attention_backward_kv_flash_body<false>(q, k, v, key_mask, dout, lse, delta, dk, dv, batch, heads, len, head_dim,
                                            stride, scale, dropout, seed);
}
extern "C" __global__ void HOT_KERNEL __launch_bounds__(FLASH_THREADS, 2)
    attention_backward_kv_flash_dropout(const float *__restrict__ q, const float *__restrict__ k,
                                        const float *__restrict__ v, const int *__restrict__ key_mask,
                                        const float *__restrict__ dout, const float *__restrict__ lse,
                                        const float *__restrict__ delta, float *__restrict__ dk, float *__restrict__ dv,
                                        int batch, int heads, int len, int head_dim, int stride, float scale,
                                        float dropout, unsigned long long seed) {
    attention_backward_kv_flash_body<true>(q, k, v, key_mask, dout, lse, delta, dk, dv, batch, heads, len, head_dim,
                                           stride, scale, dropout, seed);
}

// dq, register-blocked: a block of 256 threads owns 32 queries and walks the keys in tiles of
// 32; after the terms, each thread adds, per key, ds x k into 2 x 4 of dq.
template <bool DROPOUT>
__device__ __forceinline__ void attention_backward_q_flash_body(const float *__restrict__ q,
    const float *__restrict__ k, const float *__restrict__ v, const int *__restrict__ key_mask,
    const float *__restrict__ dout, const float *__restrict__ lse, const float *__restrict__ delta,
    float *__restrict__ dq, int batch, int heads, int len, int head_dim, int stride, float scale, float dropout,
    unsigned long long seed) {
    __shared__ __align__(16) float q_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float do_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float k_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float v_sh[FLASH_TILE][FLASH_LD];
    __shared__ __align__(16) float ds_t[FLASH_TILE][FLASH_TILE + FLASH_PAD];
    const int t = threadIdx.x;
    const float scale2 = scale * ATTN_LOG2E;  // scores in base 2 (attn_term)
    // Terms: queries qi + a, keys kj + 16e. Sums: queries qr + a, head dimensions dc + x.
    const int qi = (t / 16) * 2, kj = t % 16, qr = (t / 16) * 2, dc = (t % 16) * 4;
    const int i0 = blockIdx.x * FLASH_TILE, h = blockIdx.y, b = blockIdx.z, d = head_dim;
    attn_stage(&q_sh[0][0], FLASH_LD, q, stride, h * d, b, i0, FLASH_TILE, len, d);
    attn_stage(&do_sh[0][0], FLASH_LD, dout, (long long)heads * d, h * d, b, i0, FLASH_TILE, len, d);
    const long long rows0 = ((long long)b * heads + h) * len;
    float lse_q[2], delta_q[2];
#pragma unroll
    for (int a = 0; a < 2; a++) {
        const int i = i0 + qi + a;
        lse_q[a] = i < len ? lse[rows0 + i] * ATTN_LOG2E : float_infinity();  // base 2
        delta_q[a] = i < len ? delta[rows0 + i] : 0.0f;
    }
    float gq[2][4];
#pragma unroll
    for (int a = 0; a < 2; a++)
#pragma unroll
        for (int x = 0; x < 4; x++) gq[a][x] = 0.0f;
    // The next key tile goes through registers, fetched before the current tile's arithmetic.
    float k_next[FLASH_STAGE], v_next[FLASH_STAGE];
    FlashRows k_rows, v_rows;
    k_rows.start(k, stride, h * d, b, 0, len, d);
    v_rows.start(v, stride, h * d, b, 0, len, d);
    k_rows.fetch(len, k_next);
    v_rows.fetch(len, v_next);
    flash_store_rows(k_sh, k_next);
    flash_store_rows(v_sh, v_next);
    __syncthreads();
    // This sequence's key mask and, under dropout, the mask hash's input for this thread's
    // queries at key 0, to which key j adds j * golden.
    const int *mask_row = key_mask ? key_mask + b * len : nullptr;  // B * L fits an int
    unsigned long long row_input[2];
#pragma unroll
    for (int a = 0; a < 2; a++) row_input[a] = DROPOUT ? dropout_input(seed, (rows0 + i0 + qi + a) * len) : 0;
    for (int j0 = 0; j0 < len; j0 += FLASH_TILE) {
        const bool more = j0 + FLASH_TILE < len;
        if (more) {
            k_rows.next_tile();
            v_rows.next_tile();
            k_rows.fetch(len, k_next);
            v_rows.fetch(len, v_next);
        }
        float qk[2][2], dov[2][2];
        flash_scores(q_sh, do_sh, k_sh, v_sh, qi, kj, qk, dov);
        const unsigned long long key_input = (unsigned long long)(j0 + kj) * DROPOUT_GOLDEN;
#pragma unroll
        for (int e = 0; e < 2; e++) {
            const int j = j0 + kj + 16 * e;
            const bool real = j < len && (!mask_row || mask_row[j] != 0);
#pragma unroll
            for (int a = 0; a < 2; a++) {
                const int i = i0 + qi + a;
                float ds = 0.0f;
                if (real && i < len) {
                    const unsigned long long input = row_input[a] + key_input + 16ull * e * DROPOUT_GOLDEN;
                    const bool keep = !DROPOUT || dropout_keep_input(input, dropout);
                    ds = attn_term(qk[a][e], dov[a][e], lse_q[a], delta_q[a], scale2, dropout, keep).ds * scale;
                }
                ds_t[kj + 16 * e][qi + a] = ds;
            }
        }
        __syncthreads();
        // The next key's operands are read while this one's FMAs run.
        float2 s2 = *reinterpret_cast<const float2 *>(&ds_t[0][qr]);
        float4 k4 = *reinterpret_cast<const float4 *>(&k_sh[0][dc]);
#pragma unroll
        for (int jj = 0; jj < FLASH_TILE; jj++) {
            float2 s2n = s2;
            float4 k4n = k4;
            if (jj + 1 < FLASH_TILE) {
                s2n = *reinterpret_cast<const float2 *>(&ds_t[jj + 1][qr]);
                k4n = *reinterpret_cast<const float4 *>(&k_sh[jj + 1][dc]);
            }
            const float sv[2] = {s2.x, s2.y}, kv[4] = {k4.x, k4.y, k4.z, k4.w};
#pragma unroll
            for (int a = 0; a < 2; a++)
#pragma unroll
                for (int x = 0; x < 4; x++) gq[a][x] = fmaf(sv[a], kv[x], gq[a][x]);
            s2 = s2n, k4 = k4n;
        }
        if (more) {
            __syncthreads();  // this tile is consumed
            flash_store_rows(k_sh, k_next);
            flash_store_rows(v_sh, v_next);
            __syncthreads();
        }
    }
#pragma unroll
    for (int a = 0; a < 2; a++) {
        const int i = i0 + qr + a;
        if (i >= len) continue;
        const long long qrow = attn_row(b, i, len) * stride + h * d;
#pragma unroll
        for (int x = 0; x < 4; x++) {
            const int c = dc + x;
            if (c < d) dq[qrow + c] = gq[a][x];
        }
    }
}

// Two instances: without dropout (evaluation, and training at rate 0: the mask code compiled
// out) and with it.
extern "C" __global__ void HOT_KERNEL __launch_bounds__(FLASH_THREADS, 2)
    attention_backward_q_flash(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                               const int *__restrict__ key_mask, const float *__restrict__ dout,
                               const float *__restrict__ lse, const float *__restrict__ delta, float *__restrict__ dq,
                               int batch, int heads, int len, int head_dim, int stride, float scale, float dropout,
                               unsigned long long seed) {
    attention_backward_q_flash_body<false>(q, k, v, key_mask, dout, lse, delta, dq, batch, heads, len, head_dim, stride,
                                           scale, dropout, seed);
}
extern "C" __global__ void HOT_KERNEL __launch_bounds__(FLASH_THREADS, 2)
    attention_backward_q_flash_dropout(const float *__restrict__ q, const float *__restrict__ k,
                                       const float *__restrict__ v, const int *__restrict__ key_mask,
                                       const float *__restrict__ dout, const float *__restrict__ lse,
                                       const float *__restrict__ delta, float *__restrict__ dq, int batch, int heads,
                                       int len, int head_dim, int stride, float scale, float dropout,
                                       unsigned long long seed) {
    attention_backward_q_flash_body<true>(q, k, v, key_mask, dout, lse, delta, dq, batch, heads, len, head_dim, stride,
                                          scale, dropout, seed);
}
