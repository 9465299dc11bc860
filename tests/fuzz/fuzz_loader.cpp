// libFuzzer target: any byte string given to the ONNX loader either loads or is rejected with
// smp::Error (bad input). Any other exception, a crash or a sanitizer report is a bug.
#include "core/error.hpp"
#include "graph/loader.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  smp::graph::LoadOptions opts;
  opts.batch_size = 2;
  try {
    smp::graph::load_graph_from_bytes(std::string(reinterpret_cast<const char*>(data), size), "fuzz-input", opts,
                                      "/nonexistent");
  } catch (const smp::Error&) {
  }
  return 0;
}
