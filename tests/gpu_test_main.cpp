// main() of the GPU tests: without a CUDA device (or without the CUDA backend in this build) the
// test reports why and exits 77, which CTest counts as skipped (SKIP_RETURN_CODE), never passed.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include "runtime/backends.hpp"

#include <cstdio>

int main(int argc, char** argv) {
  if (smp::runtime::cuda_device_count() == 0) {
    std::printf("SKIPPED: %s\n", smp::runtime::cuda_unavailable_reason().c_str());
    return 77;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
