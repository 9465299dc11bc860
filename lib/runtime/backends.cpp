#include "runtime/backends.hpp"

#include "runtime/cpu_backend.hpp"
#ifdef SMP_WITH_CUDA
#include "runtime/cuda/factory.hpp"
#endif

#include <fmt/format.h>

namespace smp::runtime {

bool cuda_compiled() {
#ifdef SMP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

int cuda_device_count() {
#ifdef SMP_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

std::string cuda_unavailable_reason() {
#ifdef SMP_WITH_CUDA
  return cuda::unavailable_reason();
#else
  return "this build has no CUDA backend (configure with -DSMP_CUDA=on where CUDA and cuDNN are installed)";
#endif
}

std::unique_ptr<Backend> make_backend(std::string_view name, const BackendOptions& opts) {
  if (name == "cpu") return std::make_unique<CpuBackend>(opts.threads);
  if (name == "cuda") {
#ifdef SMP_WITH_CUDA
    return cuda::make_cuda_backend(opts);
#else
    throw_bad_input(fmt::format("cuda:{}", opts.device), cuda_unavailable_reason(), "use --backend cpu");
#endif
  }
  throw_bad_input("--backend", fmt::format("unknown backend '{}'", name), "use cpu or cuda");
}

}  // namespace smp::runtime
