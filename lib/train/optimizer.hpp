// Optimizers, learning-rate schedule and gradient clipping, with PyTorch's exact update rules
// (torch.optim.SGD with and without momentum, torch.optim.AdamW, clip_grad_norm_), so that smp
// and PyTorch trained from the same weights on the same batches agree step by step.
#pragma once

#include "runtime/backend.hpp"

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace smp::train {

enum class OptimizerKind { Sgd, Momentum, AdamW };

struct OptimizerConfig {
  OptimizerKind kind = OptimizerKind::Sgd;
  double lr = 0.01;            // peak learning rate (after warm-up)
  double momentum = 0.9;       // Momentum
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;  // AdamW
  double weight_decay = 0.0;   // SGD / Momentum: added to the gradient (L2); AdamW: decoupled
  int warmup_steps = 0;        // linear warm-up from lr / (warmup_steps + 1)... see lr_at()
  int total_steps = 0;         // for cosine decay; 0: constant after warm-up
  bool cosine = false;
  double min_lr = 0.0;         // cosine decays to this
  double clip_norm = 0.0;      // clip gradients to this global L2 norm; 0: off
};

// "sgd" | "momentum" | "adamw"; bad input naming `where` otherwise.
OptimizerKind parse_optimizer(const std::string& name, const std::string& where = "--optimizer");
std::string optimizer_name(OptimizerKind k);
// The learning rate a run takes when none is given: PyTorch's default for AdamW (1e-3), and
// 0.01 for SGD with and without momentum (torch.optim.SGD has none).
double default_lr(OptimizerKind k);
// Optimizer state per parameter element: 0 (SGD), 1 (momentum buffer), 2 (AdamW moments).
int state_slots(OptimizerKind k);

// Learning rate of step `step` (0-based): linear warm-up over the first warmup_steps steps
// (step k uses lr·(k+1)/warmup_steps), then constant, or cosine from lr to min_lr over the
// remaining total_steps − warmup_steps steps.
double lr_at(const OptimizerConfig& c, int64_t step);

// State of one parameter tensor.
struct ParamState {
  std::vector<float> slot0, slot1;  // momentum buffer / AdamW exp_avg, exp_avg_sq
  int64_t steps = 0;                // updates applied (AdamW's bias correction; momentum's first step)
};

// One update of `param` from `grad` with learning rate `lr` (from lr_at), in place.
void apply_update(const OptimizerConfig& c, double lr, std::span<float> param, std::span<const float> grad,
                  ParamState& state);

// The scalars of one update (lr from lr_at; `steps` updates applied before this one), as the
// backends' update kernels take them.
runtime::UpdateRule update_rule(const OptimizerConfig& c, double lr, int64_t steps);

// State of one parameter tensor on a backend's device (allocated on the first update, in the
// backend's optimizer-state pool).
struct DeviceParamState {
  runtime::Tensor slot0, slot1;
  int64_t steps = 0;
};
// Bytes of optimizer state a parameter of `param_bytes` needs.
inline int64_t state_bytes(OptimizerKind k, int64_t param_bytes) { return state_slots(k) * param_bytes; }
// The same update as apply_update, run by the backend where param and grad live.
void apply_update(const OptimizerConfig& c, double lr, runtime::Backend& be, runtime::Tensor& param,
                  const runtime::Tensor& grad, DeviceParamState& state);

// Sum of squares of a gradient (accumulated in double; combine across ranks, then sqrt).
double sum_of_squares(std::span<const float> grad);
// PyTorch's clip_grad_norm_: the factor to multiply every gradient by, given the global norm
// (1 when no clipping is needed or clipping is off).
double clip_factor(const OptimizerConfig& c, double global_norm);

}  // namespace smp::train
