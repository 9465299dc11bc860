// The scalars of one optimizer update (no dependencies: the device kernels read it too).
#pragma once

#include <cstdint>

namespace smp::runtime {

// One optimizer update of one parameter, with the scalars of its step already computed (as
// PyTorch passes them to its kernels; see train/optimizer.cpp, which makes them).
struct UpdateRule {
  enum class Kind : uint8_t { Sgd, Momentum, AdamW } kind = Kind::Sgd;
  float lr = 0, weight_decay = 0;
  float momentum = 0;   // Momentum
  bool first_step = true;  // Momentum: the buffer starts as the gradient
  float beta1 = 0, beta2 = 0, one_minus_beta1 = 0, one_minus_beta2 = 0;  // AdamW
  float step_size = 0, bias_correction2_sqrt = 1, eps = 0, decay = 1;      // AdamW
};

}  // namespace smp::runtime
