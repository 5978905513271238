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
// Head size d <= 128.
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

// The same forward, tiled for head sizes up to 64: a block of 256 threads owns 64 queries of
// one (b, h) and walks the keys in tiles of 32 staged in shared memory (coalesced loads, each
// key read once per 64 queries instead of once per query). Four threads share a query row:
// each scores 8 of the tile's keys, the four combine the running max and normaliser with two
// shuffles, and each accumulates 16 of the row's output dimensions from the tile's
// (dropped-out) probabilities, also staged in shared memory. Same online softmax, same lse,
// same dropout mask as attention_forward, so the backward kernels serve both.
#define ATTN_TILE_Q 64
#define ATTN_TILE_K 32
#define ATTN_TILE_D 64
#define ATTN_TILE_THREADS 256
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
extern "C" __global__ void HOT_KERNEL __launch_bounds__(ATTN_TILE_THREADS)
    attention_forward_tiled(const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
                            const int *__restrict__ key_mask, float *__restrict__ out, float *__restrict__ lse,
                            int batch, int heads, int len, int head_dim, int stride, float scale, float dropout,
                            unsigned long long seed) {
    DYNAMIC_SHARED(float, shared);
    float *q_sh = shared;                                        // [64][65]
    float *k_sh = q_sh + ATTN_TILE_Q * (ATTN_TILE_D + 1);        // [32][65]
    float *v_sh = k_sh + ATTN_TILE_K * (ATTN_TILE_D + 1);        // [32][64]
    float *p_sh = v_sh + ATTN_TILE_K * ATTN_TILE_D;              // [64][33]
    const int t = threadIdx.x, r = t / 4, part = t % 4;
    const int i0 = blockIdx.x * ATTN_TILE_Q, h = blockIdx.y, b = blockIdx.z, i = i0 + r;
    const int d = head_dim;
    attn_stage(q_sh, ATTN_TILE_D + 1, q, stride, h * d, b, i0, ATTN_TILE_Q, len, d);
    float acc[ATTN_TILE_D / 4];
#pragma unroll
    for (int x = 0; x < ATTN_TILE_D / 4; x++) acc[x] = 0.0f;
    float m = -float_infinity(), l = 0.0f;
    const float keep_scale = 1.0f / (1.0f - dropout);
    const long long counter0 = (((long long)b * heads + h) * len + i) * len;
    for (int j0 = 0; j0 < len; j0 += ATTN_TILE_K) {
        __syncthreads();  // the previous tile's k, v and p are consumed
        attn_stage(k_sh, ATTN_TILE_D + 1, k, stride, h * d, b, j0, ATTN_TILE_K, len, d);
        attn_stage(v_sh, ATTN_TILE_D, v, stride, h * d, b, j0, ATTN_TILE_K, len, d);
        __syncthreads();
        // Scores of this thread's 8 keys: jj = part + 4u.
        float s[ATTN_TILE_K / 4];
        float tile_max = -float_infinity();
#pragma unroll
        for (int u = 0; u < ATTN_TILE_K / 4; u++) {
            const int jj = part + 4 * u, j = j0 + jj;
            float dot = 0.0f;
            for (int c = 0; c < d; c++) dot = fmaf(q_sh[r * (ATTN_TILE_D + 1) + c], k_sh[jj * (ATTN_TILE_D + 1) + c], dot);
            const bool real = j < len && attn_key_real(key_mask, b, j, len);
            s[u] = real ? dot * scale : -float_infinity();
            tile_max = fmaxf(tile_max, s[u]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 2));
        const float m_new = fmaxf(m, tile_max);
        const bool any = m_new != -float_infinity();  // false while every key so far is padding
        const float correction = any ? expf(m - m_new) : 1.0f;
        float psum = 0.0f;
#pragma unroll
        for (int u = 0; u < ATTN_TILE_K / 4; u++) {
            const int jj = part + 4 * u, j = j0 + jj;
            const float p = (any && s[u] != -float_infinity()) ? expf(s[u] - m_new) : 0.0f;
            psum += p;
            const bool keep = !(dropout > 0.0f) || (j < len && dropout_keep(seed, counter0 + j, dropout));
            p_sh[r * (ATTN_TILE_K + 1) + jj] = keep ? p * keep_scale : 0.0f;
        }
        psum += __shfl_xor_sync(FULL_MASK, psum, 1);
        psum += __shfl_xor_sync(FULL_MASK, psum, 2);
        l = l * correction + psum;
        m = m_new;
        __syncthreads();
        // This thread's 16 output dimensions: c = part * 16 + x.
#pragma unroll
        for (int x = 0; x < ATTN_TILE_D / 4; x++) acc[x] *= correction;
        for (int jj = 0; jj < ATTN_TILE_K; jj++) {
            const float pj = p_sh[r * (ATTN_TILE_K + 1) + jj];
#pragma unroll
            for (int x = 0; x < ATTN_TILE_D / 4; x++)
                acc[x] = fmaf(pj, v_sh[jj * ATTN_TILE_D + part * (ATTN_TILE_D / 4) + x], acc[x]);
        }
    }
    if (i < len) {
        const float inv = l > 0.0f ? 1.0f / l : 0.0f;
        float *o = out + attn_row(b, i, len) * heads * d + h * d;
#pragma unroll
        for (int x = 0; x < ATTN_TILE_D / 4; x++) {
            const int c = part * (ATTN_TILE_D / 4) + x;
            if (c < d) o[c] = acc[x] * inv;
        }
        // A row whose keys are all padding has no distribution: +inf makes every recomputed p 0.
        if (part == 0) lse[((long long)b * heads + h) * len + i] = l > 0.0f ? m + logf(l) : float_infinity();
    }
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
// Each (b, h, i, j) term of this recomputation, for one warp.
struct AttnTerm {
    float p_dropped, ds;
};
__device__ __forceinline__ AttnTerm attn_term(float qk, float dov, float lse_i, float delta_i, float scale, float rate,
                                              bool keep) {
    const float p = expf(qk * scale - lse_i);
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
            const AttnTerm a = attn_term(qk, dov, lse[r], delta[r], scale, dropout, keep);
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
    const float lse_i = lse[r], delta_i = delta[r];
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
        const AttnTerm a = attn_term(qk, dov, lse_i, delta_i, scale, dropout, keep);
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

// The backward, tiled for head sizes up to 64 like the forward. attention_backward_kv_tiled: a
// block of 128 threads owns 32 keys of one (b, h) (rows in shared memory) and walks the queries
// in tiles of 32 (q, dO, lse, delta staged); four threads share a key row, each recomputing 8
// of the tile's (p~, ds) terms into shared memory and then accumulating 16 of the row's dk and
// dv dimensions over the tile, in a fixed order: no atomics, the same bits every run.
#define ATTN_BW_TILE 32
#define ATTN_BW_THREADS 128
#define ATTN_BW_LD (ATTN_TILE_D + 1)
extern "C" __global__ void HOT_KERNEL __launch_bounds__(ATTN_BW_THREADS, 1) attention_backward_kv_tiled(
    const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
    const int *__restrict__ key_mask, const float *__restrict__ dout, const float *__restrict__ lse,
    const float *__restrict__ delta, float *__restrict__ dk, float *__restrict__ dv, int batch, int heads, int len,
    int head_dim, int stride, float scale, float dropout, unsigned long long seed) {
    DYNAMIC_SHARED(float, shared);
    float *k_sh = shared;                                  // [32][65] this block's keys
    float *v_sh = k_sh + ATTN_BW_TILE * ATTN_BW_LD;        // [32][65]
    float *q_sh = v_sh + ATTN_BW_TILE * ATTN_BW_LD;        // [32][65] the query tile
    float *do_sh = q_sh + ATTN_BW_TILE * ATTN_BW_LD;       // [32][65]
    float *pd_sh = do_sh + ATTN_BW_TILE * ATTN_BW_LD;      // [32 keys][33]: p~ per query
    float *ds_sh = pd_sh + ATTN_BW_TILE * (ATTN_BW_TILE + 1);  // [32 keys][33]: ds per query
    float *stat_sh = ds_sh + ATTN_BW_TILE * (ATTN_BW_TILE + 1);  // lse [32], delta [32]
    const int t = threadIdx.x, r = t / 4, part = t % 4;
    const int j0 = blockIdx.x * ATTN_BW_TILE, h = blockIdx.y, b = blockIdx.z, j = j0 + r, d = head_dim;
    attn_stage(k_sh, ATTN_BW_LD, k, stride, h * d, b, j0, ATTN_BW_TILE, len, d);
    attn_stage(v_sh, ATTN_BW_LD, v, stride, h * d, b, j0, ATTN_BW_TILE, len, d);
    const bool key_real = j < len && attn_key_real(key_mask, b, j, len);
    float gk[ATTN_TILE_D / 4], gv[ATTN_TILE_D / 4];
#pragma unroll
    for (int x = 0; x < ATTN_TILE_D / 4; x++) gk[x] = 0.0f, gv[x] = 0.0f;
    const long long rows0 = ((long long)b * heads + h) * len;
    for (int i0 = 0; i0 < len; i0 += ATTN_BW_TILE) {
        __syncthreads();  // the previous tile is consumed (and the key rows are loaded)
        attn_stage(q_sh, ATTN_BW_LD, q, stride, h * d, b, i0, ATTN_BW_TILE, len, d);
        attn_stage(do_sh, ATTN_BW_LD, dout, (long long)heads * d, h * d, b, i0, ATTN_BW_TILE, len, d);
        if (t < ATTN_BW_TILE) {
            const int i = i0 + t;
            stat_sh[t] = i < len ? lse[rows0 + i] : float_infinity();
            stat_sh[ATTN_BW_TILE + t] = i < len ? delta[rows0 + i] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int u = 0; u < ATTN_BW_TILE / 4; u++) {
            const int ii = part + 4 * u, i = i0 + ii;
            float qk = 0.0f, dov = 0.0f;
            for (int c = 0; c < d; c++) {
                qk = fmaf(q_sh[ii * ATTN_BW_LD + c], k_sh[r * ATTN_BW_LD + c], qk);
                dov = fmaf(do_sh[ii * ATTN_BW_LD + c], v_sh[r * ATTN_BW_LD + c], dov);
            }
            float pd = 0.0f, ds = 0.0f;
            if (key_real && i < len) {
                const bool keep = !(dropout > 0.0f) || dropout_keep(seed, (rows0 + i) * len + j, dropout);
                const AttnTerm a = attn_term(qk, dov, stat_sh[ii], stat_sh[ATTN_BW_TILE + ii], scale, dropout, keep);
                pd = a.p_dropped, ds = a.ds * scale;
            }
            pd_sh[r * (ATTN_BW_TILE + 1) + ii] = pd;
            ds_sh[r * (ATTN_BW_TILE + 1) + ii] = ds;
        }
        __syncthreads();
        for (int ii = 0; ii < ATTN_BW_TILE; ii++) {
            const float pd = pd_sh[r * (ATTN_BW_TILE + 1) + ii], ds = ds_sh[r * (ATTN_BW_TILE + 1) + ii];
#pragma unroll
            for (int x = 0; x < ATTN_TILE_D / 4; x++) {
                const int c = part * (ATTN_TILE_D / 4) + x;
                gv[x] = fmaf(pd, do_sh[ii * ATTN_BW_LD + c], gv[x]);
                gk[x] = fmaf(ds, q_sh[ii * ATTN_BW_LD + c], gk[x]);
            }
        }
    }
    if (j < len) {
        const long long krow = attn_row(b, j, len) * stride + h * d;
#pragma unroll
        for (int x = 0; x < ATTN_TILE_D / 4; x++) {
            const int c = part * (ATTN_TILE_D / 4) + x;
            if (c < d) dk[krow + c] = gk[x], dv[krow + c] = gv[x];
        }
    }
}

// dq, tiled: a block of 128 threads owns 32 queries (q and dO rows staged once) and walks the
// keys in tiles of 32; four threads per query row recompute 8 ds terms each into shared memory,
// then accumulate 16 of the row's dq dimensions over the tile, in a fixed order.
extern "C" __global__ void HOT_KERNEL __launch_bounds__(ATTN_BW_THREADS, 1) attention_backward_q_tiled(
    const float *__restrict__ q, const float *__restrict__ k, const float *__restrict__ v,
    const int *__restrict__ key_mask, const float *__restrict__ dout, const float *__restrict__ lse,
    const float *__restrict__ delta, float *__restrict__ dq, int batch, int heads, int len, int head_dim, int stride,
    float scale, float dropout, unsigned long long seed) {
    DYNAMIC_SHARED(float, shared);
    float *q_sh = shared;                                  // [32][65] this block's queries
    float *do_sh = q_sh + ATTN_BW_TILE * ATTN_BW_LD;       // [32][65]
    float *k_sh = do_sh + ATTN_BW_TILE * ATTN_BW_LD;       // [32][65] the key tile
    float *v_sh = k_sh + ATTN_BW_TILE * ATTN_BW_LD;        // [32][65]
    float *ds_sh = v_sh + ATTN_BW_TILE * ATTN_BW_LD;       // [32 queries][33]
    const int t = threadIdx.x, r = t / 4, part = t % 4;
    const int i0 = blockIdx.x * ATTN_BW_TILE, h = blockIdx.y, b = blockIdx.z, i = i0 + r, d = head_dim;
    attn_stage(q_sh, ATTN_BW_LD, q, stride, h * d, b, i0, ATTN_BW_TILE, len, d);
    attn_stage(do_sh, ATTN_BW_LD, dout, (long long)heads * d, h * d, b, i0, ATTN_BW_TILE, len, d);
    const long long row = ((long long)b * heads + h) * len + i;
    const float lse_i = i < len ? lse[row] : float_infinity(), delta_i = i < len ? delta[row] : 0.0f;
    float gq[ATTN_TILE_D / 4];
#pragma unroll
    for (int x = 0; x < ATTN_TILE_D / 4; x++) gq[x] = 0.0f;
    for (int j0 = 0; j0 < len; j0 += ATTN_BW_TILE) {
        __syncthreads();
        attn_stage(k_sh, ATTN_BW_LD, k, stride, h * d, b, j0, ATTN_BW_TILE, len, d);
        attn_stage(v_sh, ATTN_BW_LD, v, stride, h * d, b, j0, ATTN_BW_TILE, len, d);
        __syncthreads();
#pragma unroll
        for (int u = 0; u < ATTN_BW_TILE / 4; u++) {
            const int jj = part + 4 * u, j = j0 + jj;
            float qk = 0.0f, dov = 0.0f;
            for (int c = 0; c < d; c++) {
                qk = fmaf(q_sh[r * ATTN_BW_LD + c], k_sh[jj * ATTN_BW_LD + c], qk);
                dov = fmaf(do_sh[r * ATTN_BW_LD + c], v_sh[jj * ATTN_BW_LD + c], dov);
            }
            float ds = 0.0f;
            if (i < len && j < len && attn_key_real(key_mask, b, j, len)) {
                const bool keep = !(dropout > 0.0f) || dropout_keep(seed, row * len + j, dropout);
                ds = attn_term(qk, dov, lse_i, delta_i, scale, dropout, keep).ds * scale;
            }
            ds_sh[r * (ATTN_BW_TILE + 1) + jj] = ds;
        }
        __syncthreads();
        for (int jj = 0; jj < ATTN_BW_TILE; jj++) {
            const float ds = ds_sh[r * (ATTN_BW_TILE + 1) + jj];
#pragma unroll
            for (int x = 0; x < ATTN_TILE_D / 4; x++)
                gq[x] = fmaf(ds, k_sh[jj * ATTN_BW_LD + part * (ATTN_TILE_D / 4) + x], gq[x]);
        }
    }
    if (i < len) {
        const long long qrow = attn_row(b, i, len) * stride + h * d;
#pragma unroll
        for (int x = 0; x < ATTN_TILE_D / 4; x++) {
            const int c = part * (ATTN_TILE_D / 4) + x;
            if (c < d) dq[qrow + c] = gq[x];
        }
    }
}
