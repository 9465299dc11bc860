#include "graph/summary.hpp"

namespace smp::graph {

GraphSummary summarize(const Graph& g, int64_t batch_size) {
  GraphSummary s;
  s.model = g.model_path.string();
  s.batch_size = batch_size;
  s.onnx_nodes = g.onnx_nodes;
  s.nodes = static_cast<int>(g.nodes.size());
  s.parameters = g.parameter_count();
  s.forward_flops = g.forward_flops();
  s.activation_bytes = g.activation_bytes();
  for (const auto& n : g.nodes) {
    auto& st = s.ops[n.domain.empty() ? n.op_type : n.domain + ":" + n.op_type];
    ++st.count;
    st.flops += n.cost.flops;
  }
  s.warnings = g.warnings;
  return s;
}

nlohmann::json to_json(const GraphSummary& s) {
  nlohmann::json ops = nlohmann::json::object();
  for (const auto& [op, st] : s.ops) ops[op] = {{"count", st.count}, {"flops", st.flops}};
  return {{"model", s.model},
          {"batch_size", s.batch_size},
          {"onnx_nodes", s.onnx_nodes},
          {"nodes", s.nodes},
          {"parameters", s.parameters},
          {"forward_flops", s.forward_flops},
          {"activation_bytes", s.activation_bytes},
          {"ops", ops},
          {"warnings", s.warnings}};
}

}  // namespace smp::graph
