// Loading an ONNX file into a static graph.
#pragma once

#include "graph/graph.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <string>

namespace smp::graph {

struct LoadOptions {
  // Size bound to every symbolic leading (axis 0) dimension of the graph inputs: the batch.
  // 0 leaves leading symbolic dims to `dims` (an error if they stay unbound).
  int64_t batch_size = 0;
  // Other symbolic dimensions by name, e.g. {"sequence", 128}.
  std::map<std::string, int64_t> dims;
  // Shapes of graph inputs the caller holds arrays for (smp-run --forward): every dimension of
  // such an input comes from its array — a symbolic one is bound to it (by name, consistently
  // across inputs), a fixed one must equal it. They win over batch_size and dims.
  std::map<std::string, Shape> input_shapes;
  // Read parameter bytes (embedded and external). The planner leaves this off and never reads
  // a weight byte; workers turn it on.
  bool load_weights = false;
  // With load_weights: only the floating-point initializers this accepts are read (a worker
  // reads its stages' weights, never the whole weight file). Empty: all of them.
  std::function<bool(const std::string&)> want_weight;
};

// Loads, checks (ONNX checker), binds symbolic dims, infers shapes, folds constant subgraphs
// and orders the nodes topologically. A model of an opset older than smp reads (7) is first
// converted with ONNX's version converter. Bad input throws smp::Error naming the file.
Graph load_graph(const std::filesystem::path& path, const LoadOptions& opts);

// Same, from bytes already in memory (the fuzzer's entry point); `name` is used in messages.
Graph load_graph_from_bytes(const std::string& bytes, const std::string& name,
                            const LoadOptions& opts, const std::filesystem::path& base_dir = {});

// Reads the bytes of one parameter or constant (from memory or its external file).
std::shared_ptr<const TensorData> read_tensor(const Value& v);

}  // namespace smp::graph
