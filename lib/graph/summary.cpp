#include "graph/summary.hpp"

#include "graph/tensor_parallel.hpp"

#include <algorithm>
#include <set>

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
  s.tensor_parallel = summarize_tensor_parallel(g);
  return s;
}

TpSummary summarize_tensor_parallel(const Graph& g) {
  TpSummary s;
  TpAnalysis a = analyze_tensor_parallel(g, 2);
  for (const auto& grp : a.groups) {
    TpGroupSummary t;
    t.name = grp.name;
    t.kind = std::string(tp_kind_name(grp.kind));
    t.nodes = static_cast<int>(grp.nodes.size());
    t.parameters = grp.sharded_elems;
    t.first_node = g.nodes[static_cast<size_t>(grp.nodes.front())].name;
    t.last_node = g.nodes[static_cast<size_t>(grp.nodes.back())].name;
    s.groups.push_back(t);
  }
  s.sharded_parameters = a.sharded_params;
  s.replicated_parameters = a.replicated_params;
  for (int p : g.parameters)
    if (!a.params.count(p)) {
      s.replicated.push_back(g.value(p).name);
      const auto& cs = g.value(p).consumers;
      ++s.replicated_by_op[cs.empty() ? std::string("(unread)") : g.nodes[static_cast<size_t>(cs.front())].op_type];
    }
  for (size_t i = 0; i < g.nodes.size(); ++i)
    if (a.group_of_node[i] < 0) {
      ++s.replicated_nodes;
      ++s.replicated_nodes_by_op[g.nodes[i].op_type];
    }
  s.notes = a.notes;
  if (a.groups.empty()) return s;
  s.max_degree = 2;
  bool all = true;
  for (int T = 4; T <= 64; T *= 2) {
    TpAnalysis b = analyze_tensor_parallel(g, T);
    std::set<int> firsts;
    for (const auto& grp : b.groups) firsts.insert(grp.nodes.front());
    bool every = true;
    for (size_t i = 0; i < a.groups.size(); ++i) {
      if (firsts.count(a.groups[i].nodes.front())) s.groups[i].max_degree = T;
      else every = false;
    }
    if (every && all) s.max_degree = T;
    all = all && every;
    if (b.groups.empty()) break;
  }
  return s;
}

nlohmann::json to_json(const TpSummary& s) {
  nlohmann::json groups = nlohmann::json::array();
  for (const auto& t : s.groups)
    groups.push_back({{"name", t.name}, {"kind", t.kind}, {"nodes", t.nodes}, {"parameters", t.parameters},
                      {"max_degree", t.max_degree}, {"first_node", t.first_node}, {"last_node", t.last_node}});
  return {{"groups", groups},
          {"sharded_parameters", s.sharded_parameters},
          {"replicated_parameters", s.replicated_parameters},
          {"replicated", s.replicated},
          {"replicated_by_op", s.replicated_by_op},
          {"replicated_nodes", s.replicated_nodes},
          {"replicated_nodes_by_op", s.replicated_nodes_by_op},
          {"max_degree", s.max_degree},
          {"notes", s.notes}};
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
          {"warnings", s.warnings},
          {"tensor_parallel", to_json(s.tensor_parallel)}};
}

}  // namespace smp::graph
