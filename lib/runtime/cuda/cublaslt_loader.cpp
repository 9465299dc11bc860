// cuBLASLt, loaded when the first CUDA backend starts instead of with the program. Linked, its
// shared library's initialisers ran at every process start: `smp-run --help` took 497 ms of CPU
// against 27 ms for smp-plan (which has no CUDA code), paid by every smp-run, every MPI worker
// and every test process of a CUDA build, GPU or none. The functions smp calls are defined here
// with cublasLt.h's declarations and forward to the library opened with dlopen on first use, so
// the calling code is that of a linked cuBLASLt.
#include "runtime/cuda/cuda_backend.hpp"

#include <cublasLt.h>
#include <dlfcn.h>

#include <string>

#define SMP_LT_STR2(x) #x
#define SMP_LT_STR(x) SMP_LT_STR2(x)

namespace smp::runtime::cuda::lt_loader {
namespace {

struct Library {
  void* handle = nullptr;
  std::string error;  // why it could not be opened
};

const Library& library() {
  static const Library lib = [] {
    Library l;
    const char* name = "libcublasLt.so." SMP_LT_STR(CUBLAS_VER_MAJOR);
    l.handle = ::dlopen(name, RTLD_NOW | RTLD_LOCAL);
    if (!l.handle) {
      const char* e = ::dlerror();
      l.error = e ? e : std::string(name) + ": not found";
    }
    return l;
  }();
  return lib;
}

}  // namespace

// The function `name` of the library, or null when the library or the function is missing.
template <typename F>
F* resolve(const char* name) {
  const Library& l = library();
  return l.handle ? reinterpret_cast<F*>(::dlsym(l.handle, name)) : nullptr;
}

}  // namespace smp::runtime::cuda::lt_loader

namespace smp::runtime::cuda {

std::string cublaslt_load_error() {
  const auto& l = lt_loader::library();
  if (!l.handle) return l.error;
  return lt_loader::resolve<void()>("cublasLtMatmul") ? "" : "libcublasLt has no cublasLtMatmul";
}

}  // namespace smp::runtime::cuda

// Each forwards to the library's function of its name; CUBLAS_STATUS_NOT_INITIALIZED when the
// library is missing (the backend checks cublaslt_load_error() first and says why).
#define SMP_LT_FORWARD(name, ...)                                                        \
  static auto* const fn = ::smp::runtime::cuda::lt_loader::resolve<decltype(name)>(#name); \
  return fn ? fn(__VA_ARGS__) : CUBLAS_STATUS_NOT_INITIALIZED

extern "C" {

cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* h) { SMP_LT_FORWARD(cublasLtCreate, h); }

cublasStatus_t CUBLASWINAPI cublasLtDestroy(cublasLtHandle_t h) { SMP_LT_FORWARD(cublasLtDestroy, h); }

cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t h, cublasLtMatmulDesc_t desc, const void* alpha, const void* a,
                                           cublasLtMatrixLayout_t a_desc, const void* b, cublasLtMatrixLayout_t b_desc,
                                           const void* beta, const void* c, cublasLtMatrixLayout_t c_desc, void* d,
                                           cublasLtMatrixLayout_t d_desc, const cublasLtMatmulAlgo_t* algo, void* workspace,
                                           size_t workspace_bytes, cudaStream_t stream) {
  SMP_LT_FORWARD(cublasLtMatmul, h, desc, alpha, a, a_desc, b, b_desc, beta, c, c_desc, d, d_desc, algo, workspace,
                 workspace_bytes, stream);
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  SMP_LT_FORWARD(cublasLtMatrixLayoutCreate, layout, type, rows, cols, ld);
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  SMP_LT_FORWARD(cublasLtMatrixLayoutDestroy, layout);
}

cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutSetAttribute(cublasLtMatrixLayout_t layout, cublasLtMatrixLayoutAttribute_t attr,
                                                             const void* buf, size_t bytes) {
  SMP_LT_FORWARD(cublasLtMatrixLayoutSetAttribute, layout, attr, buf, bytes);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                                     cudaDataType_t scale) {
  SMP_LT_FORWARD(cublasLtMatmulDescCreate, desc, compute, scale);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) { SMP_LT_FORWARD(cublasLtMatmulDescDestroy, desc); }

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t bytes) {
  SMP_LT_FORWARD(cublasLtMatmulDescSetAttribute, desc, attr, buf, bytes);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  SMP_LT_FORWARD(cublasLtMatmulPreferenceCreate, pref);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  SMP_LT_FORWARD(cublasLtMatmulPreferenceDestroy, pref);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                                 size_t bytes) {
  SMP_LT_FORWARD(cublasLtMatmulPreferenceSetAttribute, pref, attr, buf, bytes);
}

cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t h, cublasLtMatmulDesc_t desc,
                                                           cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                           cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                           cublasLtMatmulPreference_t pref, int requested,
                                                           cublasLtMatmulHeuristicResult_t results[], int* returned) {
  SMP_LT_FORWARD(cublasLtMatmulAlgoGetHeuristic, h, desc, a, b, c, d, pref, requested, results, returned);
}

}  // extern "C"
