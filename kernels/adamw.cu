// AdamW optimizer step on a flat parameter buffer.
#include "common.cuh"

// Decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW:
//   p <- p - lr * weight_decay * p
//   m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
//   p <- p - lr * (m / bc1) / (sqrt(v / bc2) + eps),   bc_i = 1 - beta_i^t
// with g = grad * grad_scale (global-norm clipping folds in here, saving a pass over the
// gradients). The host computes the bias corrections in f64 once per step. One thread per
// element, grid-stride.
extern "C" __global__ void HOT_KERNEL adamw_step(float *__restrict__ param, const float *__restrict__ grad, float *__restrict__ m,
                                      float *__restrict__ v, long long n, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bias_correction1, float bias_correction2,
                                      float grad_scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float g = grad[i] * grad_scale;
        float p = param[i] * (1.0f - lr * weight_decay);
        const float mi = beta1 * m[i] + (1.0f - beta1) * g;
        const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        p -= lr * (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
        param[i] = p;
    }
}
