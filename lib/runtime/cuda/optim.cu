// The optimizer update on the device: the element formulas of runtime::update_host (PyTorch's
// SGD, momentum and AdamW), one thread per element.
#include "runtime/cuda/common.cuh"

namespace smp::runtime::cuda {

namespace {

__global__ void update_k(UpdateRule r, int64_t n, float* p, const float* g, float* s0, float* s1) {
  const float lr = r.lr, wd = r.weight_decay;
  SMP_GRID_LOOP(i, n) {
    switch (r.kind) {
      case UpdateRule::Kind::Sgd: {
        const float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        p[i] -= lr * d;
        break;
      }
      case UpdateRule::Kind::Momentum: {
        const float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        const float buf = r.first_step ? d : r.momentum * s0[i] + d;
        s0[i] = buf;
        p[i] -= lr * buf;
        break;
      }
      case UpdateRule::Kind::AdamW: {
        const float pi = wd != 0.0f ? p[i] * r.decay : p[i];
        const float gi = g[i];
        const float m = s0[i] * r.beta1 + gi * r.one_minus_beta1;
        const float v = s1[i] * r.beta2 + gi * gi * r.one_minus_beta2;
        s0[i] = m;
        s1[i] = v;
        const float denom = sqrtf(v) / r.bias_correction2_sqrt + r.eps;
        p[i] = pi - r.step_size * (m / denom);
        break;
      }
    }
  }
}

}  // namespace

void optimizer_update(const UpdateRule& r, int64_t n, float* p, const float* g, float* s0, float* s1, cudaStream_t st) {
  if (n == 0) return;
  update_k<<<blocks_for(n), kThreads, 0, st>>>(r, n, p, g, s0, s1);
  SMP_CUDA_LAUNCHED();
}

}  // namespace smp::runtime::cuda
