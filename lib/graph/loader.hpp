// Loading an ONNX file into a static graph.
#pragma once

#include "graph/graph.hpp"

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace smp::graph {

struct LoadOptions {
  // Size bound to every symbolic leading (axis 0) dimension of the graph inputs: the batch.
  // 0 leaves leading symbolic dims to `dims` (an error if they stay unbound).
  int64_t batch_size = 0;
  // Other symbolic dimensions by name, e.g. {"sequence", 128}.
  std::map<std::string, int64_t> dims;
  // Arrays the caller holds for graph inputs (smp-run --forward), by input name; nullptr: none.
  // Every dimension of such an input comes from its array — a symbolic one is bound to it (by
  // name, consistently across inputs), a fixed one must equal it — over batch_size and dims.
  // Integer, boolean and one-element arrays also become constant initializers: their values may
  // decide shapes (a Reshape's target, a Pad's pads) or must be constant (a Dropout's ratio); so
  // do the float arrays a Resize reads as roi or scales (an Upsample as scales).
  std::function<std::shared_ptr<const TensorData>(const std::string& input_name)> input_array;
  // Floating-point initializers not to train although a gradient reaches them (buffers such as
  // swin_v2's relative_coords_table, which ONNX cannot tell from weights), by name or fnmatch(3)
  // pattern. A pattern that matches no floating-point initializer is bad input (--freeze).
  std::vector<std::string> frozen;
  // Read parameter bytes (embedded and external). The planner leaves this off and never reads
  // a weight byte; workers turn it on.
  bool load_weights = false;
  // With load_weights: only the floating-point initializers this accepts are read (a worker
  // reads its stages' weights, never the whole weight file). Empty: all of them.
  std::function<bool(const std::string&)> want_weight;
  // smp-run --forward's evaluation in stages, for models whose shapes or control flow depend on
  // their data (detection models: NonZero of scores, NonMaxSuppression, an If on a count).
  // `known`: values an earlier stage computed, by name (graph inputs or node outputs); each
  // becomes a constant, the nodes that computed it are dropped, so that what depends on it folds
  // (an If's condition, a NonZero, a shape). `staged`: where nodes are still decided by data, the
  // graph is cut before them instead of refused: Graph::partial is set, and the graph computes
  // the values they read (its outputs) for the next stage to know.
  std::map<std::string, std::shared_ptr<const TensorData>> known;
  bool staged = false;
};

// An ONNX file parsed once, to be loaded any number of times (smp-run --forward loads a model
// once per stage; a tensor-parallel worker twice): the parsed protobuf, converted to an opset smp
// reads (ONNX's version converter, from 7 up) and with its functions inlined, its large embedded
// floating-point initializers' bytes held apart and shared, never copied, by every Graph loaded
// from it: read from a file, they are borrowed from its mapping, which they keep alive (no copy
// at parse either; docs/engine.md). Bad input (not a model, an opset smp cannot read) throws
// smp::Error naming `name`.
class ParsedModel {
 public:
  // `bytes` is not kept; `base_dir` is where external data files are found.
  ParsedModel(const std::string& bytes, const std::string& name, const std::filesystem::path& base_dir = {});
  explicit ParsedModel(const std::filesystem::path& path);
  struct Impl;
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<const Impl> impl_;
};

// Loads, checks (ONNX checker), binds symbolic dims, infers shapes, folds constant subgraphs
// and orders the nodes topologically. Bad input throws smp::Error naming the file.
Graph load_graph(const ParsedModel& model, const LoadOptions& opts);
Graph load_graph(const std::filesystem::path& path, const LoadOptions& opts);

// Same, from bytes already in memory (the fuzzer's entry point); `name` is used in messages.
Graph load_graph_from_bytes(const std::string& bytes, const std::string& name,
                            const LoadOptions& opts, const std::filesystem::path& base_dir = {});

// An external tensor's bytes, read where they lie: a read-only mapping of their range of the
// file, kept alive by the Bytes (read into memory where the file cannot be mapped). Bad input
// naming the file when it cannot be opened, its range runs past the file's end or holds other
// than `expected` bytes; `what` names the tensor in messages.
Bytes read_external_bytes(const ExternalData& ext, int64_t expected, const std::string& what);

// Reads the bytes of one parameter or constant (from memory or its external file).
std::shared_ptr<const TensorData> read_tensor(const Value& v);

// The leading (batch) axis of a model's graph inputs, read without loading the graph: the fixed
// sizes found there (by input name) and the inputs whose leading axis is symbolic. Inputs of rank
// 0 have none. A file that does not parse gives an empty answer (load_graph names the problem).
struct BatchAxis {
  std::map<std::string, int64_t> fixed;
  std::vector<std::string> symbolic;
};
BatchAxis inspect_batch_axis(const std::filesystem::path& path);

}  // namespace smp::graph
