// Writing a model back as ONNX with new weights: the same graph as the input file (nodes,
// inputs, outputs, opsets untouched), every given initializer replaced by the given bytes and
// stored inside the file. Used by smp-run --export after training.
#pragma once

#include "graph/graph.hpp"

#include <filesystem>
#include <map>
#include <string>

namespace smp::graph {

// Reads `source` (an ONNX file), replaces the initializers named in `weights` (dtype and shape
// must match), and writes `dest` atomically. External data of other initializers is read and
// embedded, so the result stands alone; a result over 2 GiB keeps all weights in
// `<dest>.weights` as ONNX external data instead.
void export_with_weights(const std::filesystem::path& source, const std::filesystem::path& dest,
                         const std::map<std::string, TensorData>& weights);

}  // namespace smp::graph
