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

// Tensor parallelism found in the graph (graph/tensor_parallel.hpp), at the smallest split (2)
// and, per group, the largest split in 2, 4, ..., 64 it allows.
struct TpGroupSummary {
  std::string name, kind;  // kind: mlp | attention | embedding | lm_head
  int nodes = 0;
  int64_t parameters = 0;  // elements it splits
  int max_degree = 2;
  std::string first_node, last_node;
};

struct TpSummary {
  std::vector<TpGroupSummary> groups;
  int64_t sharded_parameters = 0, replicated_parameters = 0;
  std::vector<std::string> replicated;  // names of the parameters every rank keeps whole
  std::map<std::string, int> replicated_by_op;  // those, by the op type of their first reader
  int replicated_nodes = 0;                     // compute nodes outside every group
  std::map<std::string, int> replicated_nodes_by_op;
  std::vector<std::string> notes;       // candidates not taken, and why
  int max_degree = 1;                   // largest split every group allows (1: none found)
};

TpSummary summarize_tensor_parallel(const Graph& g);
nlohmann::json to_json(const TpSummary& s);

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
  TpSummary tensor_parallel;
};

GraphSummary summarize(const Graph& g, int64_t batch_size);
nlohmann::json to_json(const GraphSummary& s);

}  // namespace smp::graph
