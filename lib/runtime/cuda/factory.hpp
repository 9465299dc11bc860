// The CUDA backend's entry points for runtime/backends.cpp: plain C++, no CUDA headers.
#pragma once

#include "runtime/backends.hpp"

namespace smp::runtime::cuda {

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opts);
int device_count();
std::string unavailable_reason();

}  // namespace smp::runtime::cuda
