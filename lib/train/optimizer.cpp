#include "train/optimizer.hpp"

#include "core/error.hpp"

#include <cmath>
#include <numbers>

namespace smp::train {

OptimizerKind parse_optimizer(const std::string& name, const std::string& where) {
  if (name == "sgd") return OptimizerKind::Sgd;
  if (name == "momentum") return OptimizerKind::Momentum;
  if (name == "adamw" || name == "adam") return OptimizerKind::AdamW;
  throw_bad_input(where, "unknown optimizer '" + name + "'", "use sgd, momentum or adamw");
}

std::string optimizer_name(OptimizerKind k) {
  switch (k) {
    case OptimizerKind::Sgd: return "sgd";
    case OptimizerKind::Momentum: return "momentum";
    case OptimizerKind::AdamW: return "adamw";
  }
  return "sgd";
}

int state_slots(OptimizerKind k) { return k == OptimizerKind::Sgd ? 0 : k == OptimizerKind::Momentum ? 1 : 2; }

double lr_at(const OptimizerConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step < c.warmup_steps)
    return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (!c.cosine || c.total_steps <= c.warmup_steps) return c.lr;
  double span = static_cast<double>(c.total_steps - c.warmup_steps);
  double t = std::min(1.0, static_cast<double>(step - c.warmup_steps) / span);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(std::numbers::pi * t));
}

void apply_update(const OptimizerConfig& c, double lr_d, std::span<float> p, std::span<const float> g,
                  ParamState& s) {
  SMP_CHECK(p.size() == g.size(), "parameter and gradient differ in size ({} vs {})", p.size(), g.size());
  const size_t n = p.size();
  const float lr = static_cast<float>(lr_d);
  const float wd = static_cast<float>(c.weight_decay);
  switch (c.kind) {
    case OptimizerKind::Sgd:
      for (size_t i = 0; i < n; ++i) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        p[i] -= lr * d;
      }
      break;
    case OptimizerKind::Momentum: {
      const float mu = static_cast<float>(c.momentum);
      if (s.slot0.empty()) s.slot0.assign(n, 0.0f);
      for (size_t i = 0; i < n; ++i) {
        float d = wd != 0.0f ? g[i] + wd * p[i] : g[i];
        // torch: the first step sets buf = d; later buf = mu * buf + d (dampening 0).
        float buf = s.steps == 0 ? d : mu * s.slot0[i] + d;
        s.slot0[i] = buf;
        p[i] -= lr * buf;
      }
      break;
    }
    case OptimizerKind::AdamW: {
      if (s.slot0.empty()) {
        s.slot0.assign(n, 0.0f);
        s.slot1.assign(n, 0.0f);
      }
      // Scalars rounded to float once from double, as PyTorch passes them to its kernels.
      const float b1 = static_cast<float>(c.beta1), b2 = static_cast<float>(c.beta2);
      const float one_m_b1 = static_cast<float>(1.0 - c.beta1), one_m_b2 = static_cast<float>(1.0 - c.beta2);
      const double t = static_cast<double>(s.steps + 1);
      const double bc1 = 1.0 - std::pow(c.beta1, t), bc2 = 1.0 - std::pow(c.beta2, t);
      const float step_size = static_cast<float>(lr_d / bc1);
      const float bc2_sqrt = static_cast<float>(std::sqrt(bc2));
      const float eps = static_cast<float>(c.eps);
      const float decay = static_cast<float>(1.0 - lr_d * c.weight_decay);
      for (size_t i = 0; i < n; ++i) {
        // torch.optim.AdamW (single-tensor path): decay, moments, bias-corrected step.
        float pi = wd != 0.0f ? p[i] * decay : p[i];
        float m = s.slot0[i] * b1 + g[i] * one_m_b1;
        float v = s.slot1[i] * b2 + g[i] * g[i] * one_m_b2;
        s.slot0[i] = m;
        s.slot1[i] = v;
        float denom = std::sqrt(v) / bc2_sqrt + eps;
        p[i] = pi - step_size * (m / denom);
      }
      break;
    }
  }
  ++s.steps;
}

double sum_of_squares(std::span<const float> g) {
  double s = 0;
  for (float x : g) s += static_cast<double>(x) * static_cast<double>(x);
  return s;
}

double clip_factor(const OptimizerConfig& c, double global_norm) {
  if (c.clip_norm <= 0) return 1.0;
  double coef = c.clip_norm / (global_norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

}  // namespace smp::train
