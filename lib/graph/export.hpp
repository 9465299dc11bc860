// Writing a model back as ONNX with new weights: the graph of the input file (inputs, outputs,
// opsets untouched), every given initializer replaced by the given bytes and stored inside the
// file. Used by smp-run --export after training.
#pragma once

#include "graph/graph.hpp"

#include <filesystem>
#include <map>
#include <string>

namespace smp::graph {

// Training: the nodes as they are. Inference: the form a user deploys — every
// BatchNormalization in training mode normalizes with its (trained) running statistics
// (training_mode 0, its running-statistics outputs dropped) and every Dropout keeps all (its
// training_mode input dropped); other nodes as they are.
enum class ExportForm { Training, Inference };

// Reads `source` (an ONNX file), replaces the initializers named in `weights` (dtype and shape
// must match), and writes `dest` atomically. External data of other initializers is read and
// embedded, so the result stands alone; a result over 2 GiB keeps all weights in
// `<dest>.weights` as ONNX external data instead. `weights`' bytes move into the model, which is
// serialized straight into the file: the model is held once while it is written.
void export_with_weights(const std::filesystem::path& source, const std::filesystem::path& dest,
                         std::map<std::string, TensorData> weights, ExportForm form = ExportForm::Training);

}  // namespace smp::graph
