// Classification losses for unbalanced classes: cross-entropy, class-weighted CE, focal, GHM-C and
// GHM-CS, fused so that logits -> softmax -> loss and dL/dlogits take one pass per row.
//
// A loss step is four launches, each deterministic (no float atomics):
//   loss_row_stats     max, shifted log-sum-exp and g = 1 - p_y per row
//   ghm_update_bins    (GHM only) histogram of g, moving average, weight per bin (in a
//                      data-parallel step: ghm_count_bins, the ranks' exchange, ghm_apply_counts)
//   loss_row_weights   (weighted losses only) a_i = class_weight[y_i] * bin_weight[bin(g_i)]
//   loss_rows_final    per-row loss share and gradient row, scaled by a_i / normaliser
// with the normaliser (sum of a_i) and the total loss summed by reduce_rows_forward.
#include "common.cuh"

#define GHM_MAX_BINS 256

// Pass 1, one warp per row: the row's max m, s = log sum exp(z - m) and g = 1 - p_y.
// Three things keep the digits that confident rows (p_y near 1) and logits of 1e4 would lose:
// - log p_c is formed later as (z_c - m) - s, never as z_c - (m + s): m + s keeps only 3
//   decimals at 1e4 in fp32;
// - s = log1p(sum of the non-max terms + ties - 1), not log(1 + tiny), which rounds tiny away;
// - g is summed from the other classes' probabilities, not taken as 1 - p_y.
extern "C" __global__ void HOT_KERNEL loss_row_stats(const float *__restrict__ logits, const int *__restrict__ labels,
                                                     float *__restrict__ row_max, float *__restrict__ log_sum,
                                                     float *__restrict__ one_minus_py, int rows, int classes) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const float *z = logits + (long long)row * classes;
    const int y = labels[row];
    float m = -float_infinity();
    for (int c = lane; c < classes; c += 32) m = fmaxf(m, z[c]);
    m = warp_max(m);
    float below = 0.0f;  // sum of exp(z_c - m) over the classes below the max
    int ties = 0;        // classes at the max
    for (int c = lane; c < classes; c += 32) {
        if (z[c] < m) below += expf(z[c] - m);
        else ties++;
    }
    below = warp_sum(below);
    for (int offset = 16; offset > 0; offset >>= 1) ties += __shfl_xor_sync(FULL_MASK, ties, offset);
    const float ls = log1pf(below + (float)(ties - 1));
    float other = 0.0f;
    for (int c = lane; c < classes; c += 32)
        if (c != y) other += expf((z[c] - m) - ls);
    other = warp_sum(other);
    if (lane == 0) {
        row_max[row] = m;
        log_sum[row] = ls;
        one_minus_py[row] = fminf(other, 1.0f);
    }
}

// The GHM bin of a gradient norm g in [0, 1]: edges j / bins (in float, as the published code
// computes them), the last edge raised by 1e-6 so that g = 1 falls in the last bin. The first
// guess floor(g * bins) is corrected against the edges themselves, so a g equal to an edge lands
// exactly where the comparison-based original puts it.
__device__ __forceinline__ int ghm_bin(float g, int bins) {
    int b = (int)(g * (float)bins);
    b = b < 0 ? 0 : (b > bins - 1 ? bins - 1 : b);
    while (b + 1 < bins && g >= (float)(b + 1) / (float)bins) b++;
    while (b > 0 && g < (float)b / (float)bins) b--;
    return b;
}

// The moving average of the non-empty bins from one batch's counts, S_j <- alpha S_j +
// (1 - alpha) R_j (alpha = 0: S_j = R_j), and each bin's weight rows / (S_j * non-empty bins);
// empty bins get 0. One thread: the fused pass below and the data-parallel replay share it, so
// both give the same bits.
__device__ __forceinline__ void ghm_update_from_counts(const int *counts, int rows, int bins, float alpha,
                                                       float *__restrict__ ema, float *__restrict__ bin_weight) {
    int nonempty = 0;
    for (int j = 0; j < bins; j++) nonempty += counts[j] > 0;
    for (int j = 0; j < bins; j++) {
        if (counts[j] == 0) {
            bin_weight[j] = 0.0f;
            continue;
        }
        float s = (float)counts[j];
        if (alpha > 0.0f) {
            s = alpha * ema[j] + (1.0f - alpha) * (float)counts[j];
            ema[j] = s;
        }
        bin_weight[j] = (float)rows / (s * (float)nonempty);
    }
}

// The batch's samples per bin into the block's shared `counts`, with integer shared-memory
// atomics (exact, so the result does not depend on the order); every thread of the block calls
// it, and the counts are complete when it returns.
__device__ __forceinline__ void ghm_count_in_block(const float *__restrict__ g, int rows, int bins, int *counts) {
    for (int j = threadIdx.x; j < bins; j += blockDim.x) counts[j] = 0;
    __syncthreads();
    for (int i = threadIdx.x; i < rows; i += blockDim.x) atomicAdd(&counts[ghm_bin(g[i], bins)], 1);
    __syncthreads();
}

// Pass 2 (GHM only), one block: the batch's counts per bin (ghm_count_in_block), then one thread
// updates the moving average and the bin weights from them (ghm_update_from_counts).
extern "C" __global__ void ghm_update_bins(const float *__restrict__ g, int rows, int bins, float alpha,
                                           float *__restrict__ ema, float *__restrict__ bin_weight) {
    __shared__ int counts[GHM_MAX_BINS];
    ghm_count_in_block(g, rows, bins, counts);
    if (threadIdx.x == 0) ghm_update_from_counts(counts, rows, bins, alpha, ema, bin_weight);
}

// Pass 2 of a data-parallel step, first half, one block: the batch's counts per bin, written out
// (the ranks exchange them, so that every rank's moving average sees every micro-batch of the
// step in the one process's order).
extern "C" __global__ void ghm_count_bins(const float *__restrict__ g, int rows, int bins, int *__restrict__ out) {
    __shared__ int counts[GHM_MAX_BINS];
    ghm_count_in_block(g, rows, bins, counts);
    for (int j = threadIdx.x; j < bins; j += blockDim.x) out[j] = counts[j];
}

// Pass 2 of a data-parallel step, second half, one thread: one micro-batch's counts (this
// rank's or another's, as exchanged) applied to the moving average and the bin weights, exactly
// as ghm_update_bins applies them.
extern "C" __global__ void ghm_apply_counts(const int *__restrict__ counts, int bins, float alpha,
                                            float *__restrict__ ema, float *__restrict__ bin_weight) {
    if (threadIdx.x != 0 || blockIdx.x != 0) return;
    int rows = 0;
    for (int j = 0; j < bins; j++) rows += counts[j];
    ghm_update_from_counts(counts, rows, bins, alpha, ema, bin_weight);
}

// Pass 3: per-row weight a_i = class_weight[y_i] * bin_weight[bin(g_i)], either factor optional.
extern "C" __global__ void loss_row_weights(const int *__restrict__ labels, const float *__restrict__ one_minus_py,
                                            const float *__restrict__ class_weight, const float *__restrict__ bin_weight,
                                            int bins, float *__restrict__ weight, int rows) {
    for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < rows; i += gridDim.x * blockDim.x) {
        float a = class_weight ? class_weight[labels[i]] : 1.0f;
        if (bin_weight) a *= bin_weight[ghm_bin(one_minus_py[i], bins)];
        weight[i] = a;
    }
}

// Pass 4, one warp per row: row i's share of the loss and its gradient row.
//   norm = *weight_sum when given (weighted mean, as nn.CrossEntropyLoss(weight=...)), else fixed_norm.
//   Cross-entropy family (focal == 0): targets q = soft_targets[y_i, :] when given, else one-hot;
//     loss_i = -sum_c q_c log p_c,  dL/dz = a_i / norm * (p - q).
//   Focal: loss_i = -alpha_y (1 - p)^gamma log p with p = p_y, and
//     dL/dz = a_i / norm * F * (p_c - onehot),  (at c = y: -(1 - p_y), from pass 1's accurate g)  F = alpha_y ((1 - p)^gamma - gamma p (1 - p)^(gamma - 1) log p),
//     whose second term vanishes as p -> 1 (log p ~ p - 1), so it is taken as 0 at 1 - p = 0.
extern "C" __global__ void HOT_KERNEL loss_rows_final(const float *__restrict__ logits, const int *__restrict__ labels,
                                                      const float *__restrict__ row_max,
                                                      const float *__restrict__ log_sum,
                                                      const float *__restrict__ one_minus_py,
                                                      const float *__restrict__ weight,
                                                      const float *__restrict__ weight_sum, float fixed_norm,
                                                      const float *__restrict__ soft_targets, int focal,
                                                      float focal_gamma, const float *__restrict__ focal_alpha,
                                                      float *__restrict__ row_loss, float *__restrict__ grad, int rows,
                                                      int classes) {
    const int lane = threadIdx.x % 32;
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    if (row >= rows) return;
    const long long base = (long long)row * classes;
    const int y = labels[row];
    const float mx = row_max[row], ls = log_sum[row];
    const float scale = (weight ? weight[row] : 1.0f) / (weight_sum ? *weight_sum : fixed_norm);
    if (focal) {
        const float logp = (logits[base + y] - mx) - ls;
        const float p = expf(logp);
        const float omp = one_minus_py[row];
        const float alpha = focal_alpha ? focal_alpha[y] : 1.0f;
        const float pow_g = powf(omp, focal_gamma);
        const float second = omp > 0.0f ? focal_gamma * p * (pow_g / omp) * logp : 0.0f;
        const float coef = scale * alpha * (pow_g - second);
        for (int c = lane; c < classes; c += 32)
            grad[base + c] = coef * (c == y ? -omp : expf((logits[base + c] - mx) - ls));
        if (lane == 0) row_loss[row] = -scale * alpha * pow_g * logp;
        return;
    }
    const float *q = soft_targets ? soft_targets + (long long)y * classes : nullptr;
    const float omp = one_minus_py[row];
    float loss = 0.0f;
    for (int c = lane; c < classes; c += 32) {
        const float logp = (logits[base + c] - mx) - ls;
        const float target = q ? q[c] : (c == y ? 1.0f : 0.0f);
        if (target != 0.0f) loss -= target * logp;
        // p_y - q_y as (1 - q_y) - (1 - p_y): p_y - 1 would cancel to nothing for confident rows.
        grad[base + c] = scale * (c == y ? (1.0f - target) - omp : expf(logp) - target);
    }
    loss = warp_sum(loss);
    if (lane == 0) row_loss[row] = scale * loss;
}
