// cuBLASLt is opened on first use (lib/runtime/cuda/cublaslt_loader.cpp), not linked: a process
// that uses no GPU never maps it. Runs on any machine with the CUDA toolkit (no device needed).
#include <cublasLt.h>
#include <doctest/doctest.h>

#include <fstream>
#include <sstream>
#include <string>

namespace smp::runtime::cuda {
std::string cublaslt_load_error();
}

namespace {

bool mapped(const std::string& lib) {
  std::ifstream f("/proc/self/maps");
  std::stringstream s;
  s << f.rdbuf();
  return s.str().find(lib) != std::string::npos;
}

}  // namespace

TEST_CASE("cuBLASLt is loaded when first called, and its calls reach the library") {
  // Nothing has called it yet: the program started without it.
  CHECK_FALSE(mapped("libcublasLt.so"));
  cublasLtMatrixLayout_t layout = nullptr;
  // Layouts are host objects: no device is needed to make one.
  REQUIRE(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, 4, 5, 4) == CUBLAS_STATUS_SUCCESS);
  CHECK(mapped("libcublasLt.so"));
  CHECK(smp::runtime::cuda::cublaslt_load_error().empty());
  REQUIRE(layout != nullptr);
  const int32_t batches = 3;
  CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batches, sizeof batches) ==
        CUBLAS_STATUS_SUCCESS);
  // The library's own argument checks answer: a batch count of the wrong size is refused.
  const int64_t wide = 3;
  CHECK(cublasLtMatrixLayoutSetAttribute(layout, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &wide, sizeof wide) ==
        CUBLAS_STATUS_INVALID_VALUE);
  CHECK(cublasLtMatrixLayoutDestroy(layout) == CUBLAS_STATUS_SUCCESS);
}
