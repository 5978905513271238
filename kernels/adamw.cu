// AdamW optimizer step on a flat parameter buffer.
#include "common.cuh"

// Decoupled weight decay (Loshchilov & Hutter), as torch.optim.AdamW:
//   p <- p - lr * weight_decay * p
//   m <- beta1 m + (1 - beta1) g;   v <- beta2 v + (1 - beta2) g^2
//   p <- p - lr * (m / bc1) / (sqrt(v / bc2) + eps),   bc_i = 1 - beta_i^t
// with g = grad * grad_scale (global-norm clipping folds in here, saving a pass over the
// gradients). The host computes the bias corrections in f64 once per step. One thread per
// element, grid-stride.
__device__ __forceinline__ void adamw_element(float *param, const float *grad, float *m, float *v, long long i,
                                              float lr, float beta1, float beta2, float eps, float weight_decay,
                                              float bias_correction1, float bias_correction2, float grad_scale) {
    const float g = grad[i] * grad_scale;
    float p = param[i] * (1.0f - lr * weight_decay);
    const float mi = beta1 * m[i] + (1.0f - beta1) * g;
    const float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
    m[i] = mi;
    v[i] = vi;
    p -= lr * (mi / bias_correction1) / (sqrtf(vi / bias_correction2) + eps);
    param[i] = p;
}

extern "C" __global__ void HOT_KERNEL adamw_step(float *__restrict__ param, const float *__restrict__ grad, float *__restrict__ m,
                                      float *__restrict__ v, long long n, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bias_correction1, float bias_correction2,
                                      float grad_scale) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        adamw_element(param, grad, m, v, i, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2,
                      grad_scale);
}

// adamw_step over many tensors in one launch (what torch's foreach/fused AdamW does): `table`
// holds, per tensor t < count, {param, grad, m, v addresses, n, first block, blocks, flags}, then
// one tensor index per block. flags: the low 32 bits are the tensor's learning-rate scale (f32
// bits), bit 32 says whether it decays. Each block updates its tensor's elements k * 256 + tid,
// step blocks * 256, with the arithmetic of adamw_step (lr * scale rounded to f32 first, as the
// host does), so the result is the same bits as one launch per tensor.
extern "C" __global__ void HOT_KERNEL adamw_step_multi(const unsigned long long *__restrict__ table, int count,
                                                       float lr, float beta1, float beta2, float eps,
                                                       float weight_decay, float bias_correction1,
                                                       float bias_correction2, float grad_scale) {
    const unsigned long long t = table[8 * (long long)count + blockIdx.x];
    const unsigned long long *e = table + 8 * t;
    float *param = reinterpret_cast<float *>(e[0]), *m = reinterpret_cast<float *>(e[2]);
    float *v = reinterpret_cast<float *>(e[3]);
    const float *grad = reinterpret_cast<const float *>(e[1]);
    const long long n = (long long)e[4], k = blockIdx.x - (long long)e[5], blocks = (long long)e[6];
    const float lr_t = lr * __uint_as_float((unsigned)(e[7] & 0xffffffffull));
    const float wd = (e[7] >> 32) & 1ull ? weight_decay : 0.0f;
    for (long long i = k * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x)
        adamw_element(param, grad, m, v, i, lr_t, beta1, beta2, eps, wd, bias_correction1, bias_correction2,
                      grad_scale);
}
