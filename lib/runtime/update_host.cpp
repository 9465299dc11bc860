// The optimizer update on host floats: PyTorch's formulas element by element, compiled without
// floating-point contraction (CMakeLists.txt) so that no fused multiply-add changes a rounding:
// the same bits as torch.optim on the CPU, whatever -march the runtime is built for.
#include "runtime/backend.hpp"

#include <cmath>

namespace smp::runtime {

void update_host(const UpdateRule& r, float* p, const float* g, float* s0, float* s1, int64_t n) {
  const float lr = r.lr, wd = r.weight_decay;
  switch (r.kind) {
    case UpdateRule::Kind::Sgd:
      for (int64_t i = 0; i < n; ++i) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        p[i] -= lr * d;
      }
      break;
    case UpdateRule::Kind::Momentum: {
      const float mu = r.momentum;
      for (int64_t i = 0; i < n; ++i) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        // torch: the first step sets buf = d; later buf = mu * buf + d (dampening 0).
        float buf = r.first_step ? d : mu * s0[i] + d;
        s0[i] = buf;
        p[i] -= lr * buf;
      }
      break;
    }
    case UpdateRule::Kind::AdamW: {
      const float b1 = r.beta1, b2 = r.beta2, one_m_b1 = r.one_minus_beta1, one_m_b2 = r.one_minus_beta2;
      const float step_size = r.step_size, bc2_sqrt = r.bias_correction2_sqrt, eps = r.eps, decay = r.decay;
      for (int64_t i = 0; i < n; ++i) {
        // torch.optim.AdamW (single-tensor path): decay, moments, bias-corrected step.
        float pi = wd != 0.0f ? p[i] * decay : p[i];
        float m = s0[i] * b1 + g[i] * one_m_b1;
        float v = s1[i] * b2 + g[i] * g[i] * one_m_b2;
        s0[i] = m;
        s1[i] = v;
        float denom = std::sqrt(v) / bc2_sqrt + eps;
        p[i] = pi - step_size * (m / denom);
      }
      break;
    }
  }
}

double sum_of_squares_host(const float* g, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(g[i]) * static_cast<double>(g[i]);
  return s;
}

}  // namespace smp::runtime
