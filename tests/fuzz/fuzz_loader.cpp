// libFuzzer target: any byte string given to the ONNX loader either loads or is rejected with
// smp::Error (bad input). Any other exception, a crash or a sanitizer report is a bug.
#include "core/error.hpp"
#include "graph/loader.hpp"

#include <cstddef>
#include <cstdint>
#include <string>

// Also as smp-run --forward loads (LoadOptions::staged, the bytes parsed once): where the graph is
// cut, once more from the same parsed model with its outputs known (zeros of their types), as the
// next stage would.
extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  smp::graph::LoadOptions opts;
  opts.batch_size = 2;
  try {
    smp::graph::load_graph_from_bytes(bytes, "fuzz-input", opts, "/nonexistent");
  } catch (const smp::Error&) {
  }
  opts.staged = true;
  try {
    const smp::graph::ParsedModel parsed(bytes, "fuzz-input", "/nonexistent");
    smp::graph::Graph g = smp::graph::load_graph(parsed, opts);
    if (!g.partial) return 0;
    for (int v : g.outputs) {
      const auto& val = g.value(v);
      const int64_t es = smp::dtype_size(val.dtype);
      if (es <= 0 || val.numel() > (int64_t{1} << 20) / es) return 0;  // a string, or too large to fabricate
      auto d = std::make_shared<smp::graph::TensorData>();
      d->dtype = val.dtype;
      d->shape = val.shape;
      d->bytes.assign(static_cast<size_t>(val.numel() * smp::dtype_size(val.dtype)), '\0');
      opts.known.emplace(val.name, d);
    }
    smp::graph::load_graph(parsed, opts);
  } catch (const smp::Error&) {
  }
  return 0;
}
