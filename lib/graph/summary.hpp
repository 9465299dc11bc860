// The graph summary smp-plan --summary prints.
#pragma once

#include "graph/graph.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <string>

namespace smp::graph {

struct OpStats {
  int count = 0;
  double flops = 0;
};

struct GraphSummary {
  std::string model;
  int64_t batch_size = 0;
  int onnx_nodes = 0;         // in the file, before folding
  int nodes = 0;              // after folding: real compute
  int64_t parameters = 0;     // trainable elements
  double forward_flops = 0;   // whole batch
  double activation_bytes = 0;
  std::map<std::string, OpStats> ops;  // op type -> stats
  std::vector<std::string> warnings;
};

GraphSummary summarize(const Graph& g, int64_t batch_size);
nlohmann::json to_json(const GraphSummary& s);

}  // namespace smp::graph
