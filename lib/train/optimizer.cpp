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

double default_lr(OptimizerKind k) { return k == OptimizerKind::AdamW ? 1e-3 : 0.01; }

int state_slots(OptimizerKind k) { return k == OptimizerKind::Sgd ? 0 : k == OptimizerKind::Momentum ? 1 : 2; }

double lr_at(const OptimizerConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step < c.warmup_steps)
    return c.lr * static_cast<double>(step + 1) / static_cast<double>(c.warmup_steps);
  if (!c.cosine || c.total_steps <= c.warmup_steps) return c.lr;
  double span = static_cast<double>(c.total_steps - c.warmup_steps);
  double t = std::min(1.0, static_cast<double>(step - c.warmup_steps) / span);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(std::numbers::pi * t));
}

runtime::UpdateRule update_rule(const OptimizerConfig& c, double lr_d, int64_t steps) {
  using K = runtime::UpdateRule::Kind;
  runtime::UpdateRule r;
  r.kind = c.kind == OptimizerKind::Sgd ? K::Sgd : c.kind == OptimizerKind::Momentum ? K::Momentum : K::AdamW;
  r.lr = static_cast<float>(lr_d);
  r.weight_decay = static_cast<float>(c.weight_decay);
  r.momentum = static_cast<float>(c.momentum);
  r.first_step = steps == 0;
  // Scalars rounded to float once from double, as PyTorch passes them to its kernels.
  r.beta1 = static_cast<float>(c.beta1);
  r.beta2 = static_cast<float>(c.beta2);
  r.one_minus_beta1 = static_cast<float>(1.0 - c.beta1);
  r.one_minus_beta2 = static_cast<float>(1.0 - c.beta2);
  const double t = static_cast<double>(steps + 1);
  const double bc1 = 1.0 - std::pow(c.beta1, t), bc2 = 1.0 - std::pow(c.beta2, t);
  r.step_size = static_cast<float>(lr_d / bc1);
  r.bias_correction2_sqrt = static_cast<float>(std::sqrt(bc2));
  r.eps = static_cast<float>(c.eps);
  r.decay = static_cast<float>(1.0 - lr_d * c.weight_decay);
  return r;
}

void apply_update(const OptimizerConfig& c, double lr_d, std::span<float> p, std::span<const float> g,
                  ParamState& s) {
  SMP_CHECK(p.size() == g.size(), "parameter and gradient differ in size ({} vs {})", p.size(), g.size());
  const size_t n = p.size();
  const int slots = state_slots(c.kind);
  if (slots >= 1 && s.slot0.empty()) s.slot0.assign(n, 0.0f);
  if (slots >= 2 && s.slot1.empty()) s.slot1.assign(n, 0.0f);
  runtime::update_host(update_rule(c, lr_d, s.steps), p.data(), g.data(), slots >= 1 ? s.slot0.data() : nullptr,
                       slots >= 2 ? s.slot1.data() : nullptr, static_cast<int64_t>(n));
  ++s.steps;
}

void apply_update(const OptimizerConfig& c, double lr, runtime::Backend& be, runtime::Tensor& p, const runtime::Tensor& g,
                  DeviceParamState& s) {
  SMP_CHECK(p.numel() == g.numel(), "parameter {} and gradient {} differ in size", p.str(), g.str());
  const int slots = state_slots(c.kind);
  {
    runtime::PoolScope pool(be, runtime::MemoryPool::OptimizerState);
    if (slots >= 1 && !s.slot0.defined()) s.slot0 = be.zeros(DType::F32, p.shape());
    if (slots >= 2 && !s.slot1.defined()) s.slot1 = be.zeros(DType::F32, p.shape());
  }
  be.update(update_rule(c, lr, s.steps), p, g, s.slot0, s.slot1);
  ++s.steps;
}

double sum_of_squares(std::span<const float> g) { return runtime::sum_of_squares_host(g.data(), static_cast<int64_t>(g.size())); }

double clip_factor(const OptimizerConfig& c, double global_norm) {
  if (c.clip_norm <= 0) return 1.0;
  double coef = c.clip_norm / (global_norm + 1e-6);
  return coef < 1.0 ? coef : 1.0;
}

}  // namespace smp::train
