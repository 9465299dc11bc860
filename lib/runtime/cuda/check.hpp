// Error checks for CUDA calls, usable from .cu files (no fmt, no backend headers): a failed call
// throws smp::Error naming the call, the device and file:line.
#pragma once

#include <cuda_runtime.h>

#include <string>

namespace smp::runtime::cuda {

[[noreturn]] void fail_cuda(cudaError_t e, const char* call, const char* file, int line);
// An internal invariant of the kernels' host code (file:line reported).
[[noreturn]] void fail_internal(const char* file, int line, const std::string& what);

}  // namespace smp::runtime::cuda

#define SMP_CUDA_CHECK(call)                                                                   \
  do {                                                                                         \
    cudaError_t smp_e_ = (call);                                                               \
    if (smp_e_ != cudaSuccess) ::smp::runtime::cuda::fail_cuda(smp_e_, #call, __FILE__, __LINE__); \
  } while (0)
// After a kernel launch: a bad configuration shows up here, a fault at the next synchronization.
#define SMP_CUDA_LAUNCHED() SMP_CUDA_CHECK(cudaGetLastError())
#define SMP_CUDA_REQUIRE(cond, what)                                              \
  do {                                                                            \
    if (!(cond)) ::smp::runtime::cuda::fail_internal(__FILE__, __LINE__, (what)); \
  } while (0)
