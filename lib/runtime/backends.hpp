// Backends by name: how the rest of smp gets a CPU or CUDA backend without including any
// device header (the CUDA one exists in builds with SMP_CUDA, lib/runtime/cuda).
#pragma once

#include "runtime/backend.hpp"

#include <memory>
#include <string>
#include <string_view>

namespace smp::runtime {

struct BackendOptions {
  int threads = 0;     // cpu: compute threads (0: the machine's cores)
  int device = 0;      // cuda: device index
  bool tf32 = false;   // cuda: float32 matrix products and convolutions may use TF32 tensor cores
};

// "cpu" or "cuda". Bad input (exit 2) for an unknown name, a build without the CUDA backend, no
// CUDA device or a device index that does not exist; failure (exit 1) when the device cannot be
// started. Messages name the device ("cuda:1").
std::unique_ptr<Backend> make_backend(std::string_view name, const BackendOptions& opts = {});

// Whether this build has the CUDA backend, and how many CUDA devices this process sees (0
// without the backend, a driver or a device; never throws).
bool cuda_compiled();
int cuda_device_count();
// Why cuda_device_count() is 0, for messages ("no CUDA driver", ...); "" when it is not.
std::string cuda_unavailable_reason();

}  // namespace smp::runtime
