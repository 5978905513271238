// Bidirectional GRU and LSTM recurrences (PyTorch semantics, packed variable-length sequences).
//
// The input projections x W_ih^T + b_ih of all time steps are one GEMM per direction, done
// before these kernels; the weight gradients are GEMMs after them. What stays here is the
// part that must walk time: one launch covers every step of both directions.
//
// Design: each block owns one direction and a chunk of up to RNN_CHUNK sequences, and walks all
// time steps itself, synchronising with __syncthreads only. No block waits on another, so no
// cooperative launch or grid-wide barrier is needed, and the simulator runs it as it is. The
// recurrent weights are read from global memory every step and served by L2 (3H x H floats =
// 768 KiB at H = 256, inside a GTX 1050 Ti's 1 MiB L2); a chunk of sequences shares each read.
// Hidden and cell states live in dynamic shared memory.
//
// Layouts: x-projections xproj [dir][B * L][G * H] (G = 3 gates for GRU, 4 for LSTM, PyTorch's
// gate order); outputs out [B, L, 2H] with the reverse direction in the second half; padding
// positions are never touched (the caller zero-fills them). Direction 1 starts at each
// sequence's last real token, as with pack_padded_sequence.
#include "common.cuh"

#define RNN_CHUNK 4

__device__ __forceinline__ float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

// Position of step t of direction dir in a sequence of `length` tokens.
__device__ __forceinline__ int rnn_position(int dir, int t, int length) { return dir == 0 ? t : length - 1 - t; }

// Blocks run up to 1024 threads (one per gate row in the forward matvec; several threads per
// hidden unit in the backward one), so that many independent weight loads are in flight: the
// recurrence is bound by the latency of reading W_hh from L2 each step, not by arithmetic.
#define RNN_MAX_THREADS 1024

// hh[s][j] = b_hh[j] + sum_k h[s][k] W_hh[j][k] for all RNN_CHUNK sequences of the chunk (states
// of sequences past the batch stay 0 and their results are never read). Reads the transposed
// weight whhT [H][G*H] so that consecutive threads read consecutive j (coalesced), and each
// weight read serves every sequence of the chunk; the k loop is unrolled for independent loads.
__device__ __forceinline__ void rnn_hidden_matvec(const float *__restrict__ whhT, const float *__restrict__ bhh,
                                                  const float *h, float *hh, int hidden, int gh) {
    for (int j = threadIdx.x; j < gh; j += blockDim.x) {
        float acc[RNN_CHUNK];
#pragma unroll
        for (int s = 0; s < RNN_CHUNK; s++) acc[s] = bhh[j];
#pragma unroll 8
        for (int k = 0; k < hidden; k++) {
            const float w = whhT[(long long)k * gh + j];
#pragma unroll
            for (int s = 0; s < RNN_CHUNK; s++) acc[s] = fmaf(w, h[s * hidden + k], acc[s]);
        }
#pragma unroll
        for (int s = 0; s < RNN_CHUNK; s++) hh[s * gh + j] = acc[s];
    }
}

// Threads per hidden unit in the backward matvec: blockDim.x / hidden when the host launched
// that many (2 to 4), else 1.
__device__ __forceinline__ int rnn_groups(int hidden) {
    const int g = (int)blockDim.x / hidden;
    return g >= 2 && g * hidden == (int)blockDim.x ? min(g, 4) : 1;
}

// dh[s][k] = base[s][k] + sum_j dg[s][j] W_hh[j][k]: the recurrent part of dh_{t-1}. Reads W_hh
// in its own layout [G*H][H]: consecutive threads k read consecutive addresses. With g groups
// (rnn_groups), group q sums its q-th share of j into `partial` [g-1][RNN_CHUNK][H] and group 0
// adds them up after a barrier, so g x H threads keep loads in flight instead of H. Every
// thread of the block must call this (it may hold a barrier).
__device__ __forceinline__ void rnn_hidden_matvec_t(const float *__restrict__ whh, const float *dg, const float *base,
                                                    float *dh, float *partial, int hidden, int gh) {
    const int groups = rnn_groups(hidden);
    if (groups == 1) {
        for (int k = threadIdx.x; k < hidden; k += blockDim.x) {
            float acc[RNN_CHUNK];
#pragma unroll
            for (int s = 0; s < RNN_CHUNK; s++) acc[s] = base ? base[s * hidden + k] : 0.0f;
#pragma unroll 8
            for (int j = 0; j < gh; j++) {
                const float w = whh[(long long)j * hidden + k];
#pragma unroll
                for (int s = 0; s < RNN_CHUNK; s++) acc[s] = fmaf(w, dg[s * gh + j], acc[s]);
            }
#pragma unroll
            for (int s = 0; s < RNN_CHUNK; s++) dh[s * hidden + k] = acc[s];
        }
        return;
    }
    const int k = threadIdx.x % hidden, q = threadIdx.x / hidden;
    const int j0 = q * gh / groups, j1 = (q + 1) * gh / groups;
    float acc[RNN_CHUNK];
#pragma unroll
    for (int s = 0; s < RNN_CHUNK; s++) acc[s] = (q == 0 && base) ? base[s * hidden + k] : 0.0f;
#pragma unroll 8
    for (int j = j0; j < j1; j++) {
        const float w = whh[(long long)j * hidden + k];
#pragma unroll
        for (int s = 0; s < RNN_CHUNK; s++) acc[s] = fmaf(w, dg[s * gh + j], acc[s]);
    }
    if (q > 0) {
#pragma unroll
        for (int s = 0; s < RNN_CHUNK; s++) partial[((q - 1) * RNN_CHUNK + s) * hidden + k] = acc[s];
    }
    __syncthreads();
    if (q == 0) {
        for (int p = 1; p < groups; p++) {
#pragma unroll
            for (int s = 0; s < RNN_CHUNK; s++) acc[s] += partial[((p - 1) * RNN_CHUNK + s) * hidden + k];
        }
#pragma unroll
        for (int s = 0; s < RNN_CHUNK; s++) dh[s * hidden + k] = acc[s];
    }
}

// GRU forward, all steps. Per step, for each live sequence:
//   r = sig(xr + hr), z = sig(xz + hz), n = tanh(xn + r * hn), h' = (1 - z) n + z h,
// with x* from xproj (b_ih included) and h* = W_h* h + b_h*. Saves (r, z, n, hn) per position
// for the backward pass: saved [dir][B * L][4H].
extern "C" __global__ void HOT_KERNEL __launch_bounds__(RNN_MAX_THREADS, 1) gru_forward(const float *__restrict__ xproj, const float *__restrict__ whhT,
                                       const float *__restrict__ bhh, const int *__restrict__ lengths,
                                       float *__restrict__ out, float *__restrict__ saved, int batch, int len,
                                       int hidden) {
    DYNAMIC_SHARED(float, shared);
    const int dir = blockIdx.y, b0 = blockIdx.x * RNN_CHUNK;
    const int chunk = min(RNN_CHUNK, batch - b0), gh = 3 * hidden;
    float *h = shared;                        // [RNN_CHUNK][H]
    float *hh = shared + RNN_CHUNK * hidden;  // [RNN_CHUNK][3H]
    whhT += (long long)dir * hidden * gh;
    bhh += dir * gh;
    int steps = 0;
    for (int s = 0; s < chunk; s++) steps = max(steps, lengths[b0 + s]);
    for (int i = threadIdx.x; i < RNN_CHUNK * hidden; i += blockDim.x) h[i] = 0.0f;
    __syncthreads();
    for (int t = 0; t < steps; t++) {
        rnn_hidden_matvec(whhT, bhh, h, hh, hidden, gh);
        __syncthreads();
        for (int i = threadIdx.x; i < chunk * hidden; i += blockDim.x) {
            const int s = i / hidden, u = i % hidden, b = b0 + s, length = lengths[b];
            if (t >= length) continue;
            const long long row = (long long)b * len + rnn_position(dir, t, length);
            const float *xp = xproj + ((long long)dir * batch * len + row) * gh;
            const float *hp = hh + s * gh;
            const float r = sigmoidf(xp[u] + hp[u]);
            const float z = sigmoidf(xp[hidden + u] + hp[hidden + u]);
            const float hn = hp[2 * hidden + u];
            const float n = tanhf(xp[2 * hidden + u] + r * hn);
            const float hnew = (1.0f - z) * n + z * h[i];
            h[i] = hnew;
            out[row * 2 * hidden + dir * hidden + u] = hnew;
            float *sv = saved + ((long long)dir * batch * len + row) * 4 * hidden;
            sv[u] = r, sv[hidden + u] = z, sv[2 * hidden + u] = n, sv[3 * hidden + u] = hn;
        }
        __syncthreads();
    }
}

// h_{t-1} of every position, per direction: prev [dir][B * L][H] is the output of the previous
// step in that direction's order, 0 at its first step and at padding. Feeds the backward kernels
// and the W_hh gradient GEMM.
extern "C" __global__ void rnn_previous_states(const float *__restrict__ out, const int *__restrict__ lengths,
                                               float *__restrict__ prev, int batch, int len, int hidden) {
    const long long total = 2ll * batch * len * hidden;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < total; i += (long long)gridDim.x * blockDim.x) {
        const int u = (int)(i % hidden);
        const long long row = i / hidden % ((long long)batch * len);
        const int dir = (int)(i / hidden / ((long long)batch * len));
        const int b = (int)(row / len), p = (int)(row % len), length = lengths[b];
        const int q = dir == 0 ? p - 1 : p + 1;  // the position one step earlier in this direction
        const bool first = dir == 0 ? p == 0 : p == length - 1;
        prev[i] = (p < length && !first) ? out[((long long)b * len + q) * 2 * hidden + dir * hidden + u] : 0.0f;
    }
}

// GRU backward through time, all steps, latest first. With dh the gradient reaching h_t:
//   dn = dh (1 - z),  dz = dh (h_prev - n),  dn_pre = dn (1 - n^2),  dr_pre = dn_pre hn r (1 - r),
//   dz_pre = dz z (1 - z); input side dxproj = (dr_pre, dz_pre, dn_pre), hidden side
//   dgh = (dr_pre, dz_pre, dn_pre r), and dh_{t-1} = dh z + W_hh^T dgh.
// dout is the gradient of out; dxproj and dgh [dir][B * L][3H] must be zero-filled by the
// caller (padding positions stay zero for the weight-gradient GEMMs).
extern "C" __global__ void HOT_KERNEL __launch_bounds__(RNN_MAX_THREADS, 1) gru_backward(const float *__restrict__ whh, const float *__restrict__ saved,
                                        const float *__restrict__ prev, const float *__restrict__ dout,
                                        const int *__restrict__ lengths, float *__restrict__ dxproj,
                                        float *__restrict__ dgh, int batch, int len, int hidden) {
    DYNAMIC_SHARED(float, shared);
    const int dir = blockIdx.y, b0 = blockIdx.x * RNN_CHUNK;
    const int chunk = min(RNN_CHUNK, batch - b0), gh = 3 * hidden;
    float *dh = shared;                            // [RNN_CHUNK][H]: gradient reaching h_t
    float *direct = shared + RNN_CHUNK * hidden;   // [RNN_CHUNK][H]: dh z, the direct path to h_{t-1}
    float *dg = shared + 2 * RNN_CHUNK * hidden;   // [RNN_CHUNK][3H]
    whh += (long long)dir * gh * hidden;
    int steps = 0;
    for (int s = 0; s < chunk; s++) steps = max(steps, lengths[b0 + s]);
    for (int i = threadIdx.x; i < RNN_CHUNK * hidden; i += blockDim.x) dh[i] = 0.0f, direct[i] = 0.0f;
    for (int i = threadIdx.x; i < RNN_CHUNK * gh; i += blockDim.x) dg[i] = 0.0f;
    __syncthreads();
    for (int t = steps - 1; t >= 0; t--) {
        for (int i = threadIdx.x; i < chunk * hidden; i += blockDim.x) {
            const int s = i / hidden, u = i % hidden, b = b0 + s, length = lengths[b];
            if (t >= length) continue;  // not started yet in this direction: dh stays 0
            const long long row = (long long)b * len + rnn_position(dir, t, length);
            const long long drow = (long long)dir * batch * len + row;
            const float *sv = saved + drow * 4 * hidden;
            const float r = sv[u], z = sv[hidden + u], n = sv[2 * hidden + u], hn = sv[3 * hidden + u];
            const float hprev = prev[drow * hidden + u];
            const float g = dh[i] + dout[row * 2 * hidden + dir * hidden + u];
            const float dn_pre = g * (1.0f - z) * (1.0f - n * n);
            const float dz_pre = g * (hprev - n) * z * (1.0f - z);
            const float dr_pre = dn_pre * hn * r * (1.0f - r);
            float *dx = dxproj + drow * gh;
            float *dhg = dgh + drow * gh;
            dx[u] = dr_pre, dx[hidden + u] = dz_pre, dx[2 * hidden + u] = dn_pre;
            dhg[u] = dr_pre, dhg[hidden + u] = dz_pre, dhg[2 * hidden + u] = dn_pre * r;
            dg[s * gh + u] = dr_pre, dg[s * gh + hidden + u] = dz_pre, dg[s * gh + 2 * hidden + u] = dn_pre * r;
            direct[i] = g * z;
        }
        __syncthreads();
        rnn_hidden_matvec_t(whh, dg, direct, dh, dg + RNN_CHUNK * gh, hidden, gh);
        __syncthreads();
        // Sequences that have not started at this step must keep dh = 0 and contribute nothing.
        for (int i = threadIdx.x; i < chunk * hidden; i += blockDim.x) {
            const int s = i / hidden, u = i % hidden;
            if (t >= lengths[b0 + s]) dh[i] = 0.0f;
            direct[i] = 0.0f;
            for (int j = u; j < gh; j += hidden) dg[s * gh + j] = 0.0f;
        }
        __syncthreads();
    }
}

// LSTM forward, all steps (gate order i, f, g, o):
//   i = sig(.), f = sig(.), g = tanh(.), o = sig(.);  c' = f c + i g;  h' = o tanh(c').
// Saves (i, f, g, o, c') per position: saved [dir][B * L][5H].
extern "C" __global__ void HOT_KERNEL __launch_bounds__(RNN_MAX_THREADS, 1) lstm_forward(const float *__restrict__ xproj, const float *__restrict__ whhT,
                                        const float *__restrict__ bhh, const int *__restrict__ lengths,
                                        float *__restrict__ out, float *__restrict__ saved, int batch, int len,
                                        int hidden) {
    DYNAMIC_SHARED(float, shared);
    const int dir = blockIdx.y, b0 = blockIdx.x * RNN_CHUNK;
    const int chunk = min(RNN_CHUNK, batch - b0), gh = 4 * hidden;
    float *h = shared;                            // [RNN_CHUNK][H]
    float *c = shared + RNN_CHUNK * hidden;       // [RNN_CHUNK][H]
    float *hh = shared + 2 * RNN_CHUNK * hidden;  // [RNN_CHUNK][4H]
    whhT += (long long)dir * hidden * gh;
    bhh += dir * gh;
    int steps = 0;
    for (int s = 0; s < chunk; s++) steps = max(steps, lengths[b0 + s]);
    for (int i = threadIdx.x; i < RNN_CHUNK * hidden; i += blockDim.x) h[i] = 0.0f, c[i] = 0.0f;
    __syncthreads();
    for (int t = 0; t < steps; t++) {
        rnn_hidden_matvec(whhT, bhh, h, hh, hidden, gh);
        __syncthreads();
        for (int i = threadIdx.x; i < chunk * hidden; i += blockDim.x) {
            const int s = i / hidden, u = i % hidden, b = b0 + s, length = lengths[b];
            if (t >= length) continue;
            const long long row = (long long)b * len + rnn_position(dir, t, length);
            const float *xp = xproj + ((long long)dir * batch * len + row) * gh;
            const float *hp = hh + s * gh;
            const float ig = sigmoidf(xp[u] + hp[u]);
            const float fg = sigmoidf(xp[hidden + u] + hp[hidden + u]);
            const float gg = tanhf(xp[2 * hidden + u] + hp[2 * hidden + u]);
            const float og = sigmoidf(xp[3 * hidden + u] + hp[3 * hidden + u]);
            const float cnew = fg * c[i] + ig * gg;
            const float hnew = og * tanhf(cnew);
            c[i] = cnew;
            h[i] = hnew;
            out[row * 2 * hidden + dir * hidden + u] = hnew;
            float *sv = saved + ((long long)dir * batch * len + row) * 5 * hidden;
            sv[u] = ig, sv[hidden + u] = fg, sv[2 * hidden + u] = gg, sv[3 * hidden + u] = og, sv[4 * hidden + u] = cnew;
        }
        __syncthreads();
    }
}

// LSTM backward through time, latest step first. With dh, dc reaching step t:
//   dh += dout;  do = dh tanh(c');  dc += dh o (1 - tanh^2 c');  di = dc g;  dg = dc i;
//   df = dc c_prev;  dc_prev = dc f;  pre-activation grads (same for the input and hidden
//   sides) di i(1-i), df f(1-f), dg (1-g^2), do o(1-o);  dh_{t-1} = W_hh^T dgates.
// c_prev is the saved c' of the previous position in this direction (0 at its first step).
extern "C" __global__ void HOT_KERNEL __launch_bounds__(RNN_MAX_THREADS, 1) lstm_backward(const float *__restrict__ whh, const float *__restrict__ saved,
                                         const float *__restrict__ dout, const int *__restrict__ lengths,
                                         float *__restrict__ dgates, int batch, int len, int hidden) {
    DYNAMIC_SHARED(float, shared);
    const int dir = blockIdx.y, b0 = blockIdx.x * RNN_CHUNK;
    const int chunk = min(RNN_CHUNK, batch - b0), gh = 4 * hidden;
    float *dh = shared;                           // [RNN_CHUNK][H]
    float *dc = shared + RNN_CHUNK * hidden;      // [RNN_CHUNK][H]
    float *dg = shared + 2 * RNN_CHUNK * hidden;  // [RNN_CHUNK][4H]
    whh += (long long)dir * gh * hidden;
    int steps = 0;
    for (int s = 0; s < chunk; s++) steps = max(steps, lengths[b0 + s]);
    for (int i = threadIdx.x; i < RNN_CHUNK * hidden; i += blockDim.x) dh[i] = 0.0f, dc[i] = 0.0f;
    for (int i = threadIdx.x; i < RNN_CHUNK * gh; i += blockDim.x) dg[i] = 0.0f;
    __syncthreads();
    for (int t = steps - 1; t >= 0; t--) {
        for (int i = threadIdx.x; i < chunk * hidden; i += blockDim.x) {
            const int s = i / hidden, u = i % hidden, b = b0 + s, length = lengths[b];
            if (t >= length) continue;
            const int p = rnn_position(dir, t, length);
            const long long row = (long long)b * len + p;
            const long long drow = (long long)dir * batch * len + row;
            const float *sv = saved + drow * 5 * hidden;
            const float ig = sv[u], fg = sv[hidden + u], gg = sv[2 * hidden + u], og = sv[3 * hidden + u];
            const float tc = tanhf(sv[4 * hidden + u]);
            const long long prow = drow + (dir == 0 ? -1 : 1);  // previous step's position
            const float cprev = t == 0 ? 0.0f : saved[prow * 5 * hidden + 4 * hidden + u];
            const float g = dh[i] + dout[row * 2 * hidden + dir * hidden + u];
            const float dct = dc[i] + g * og * (1.0f - tc * tc);
            float *dgs = dgates + drow * gh;
            const float di = dct * gg * ig * (1.0f - ig);
            const float df = dct * cprev * fg * (1.0f - fg);
            const float dgg = dct * ig * (1.0f - gg * gg);
            const float dog = g * tc * og * (1.0f - og);
            dgs[u] = di, dgs[hidden + u] = df, dgs[2 * hidden + u] = dgg, dgs[3 * hidden + u] = dog;
            dg[s * gh + u] = di, dg[s * gh + hidden + u] = df, dg[s * gh + 2 * hidden + u] = dgg;
            dg[s * gh + 3 * hidden + u] = dog;
            dc[i] = dct * fg;
        }
        __syncthreads();
        rnn_hidden_matvec_t(whh, dg, nullptr, dh, dg + RNN_CHUNK * gh, hidden, gh);
        __syncthreads();
        for (int i = threadIdx.x; i < chunk * hidden; i += blockDim.x) {
            const int s = i / hidden, u = i % hidden;
            if (t >= lengths[b0 + s]) dh[i] = 0.0f, dc[i] = 0.0f;
            for (int j = u; j < gh; j += hidden) dg[s * gh + j] = 0.0f;
        }
        __syncthreads();
    }
}
