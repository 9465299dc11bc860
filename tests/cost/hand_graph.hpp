// Small graphs built by hand for the cost and plan tests (no ONNX file): float32 values with
// given shapes; finish() sets consumers, outputs and the registry's costs.
#pragma once

#include "graph/graph.hpp"
#include "graph/op_registry.hpp"

#include <string>
#include <vector>

namespace smp::test {

struct HandGraph {
  graph::Graph g;

  int value(const std::string& name, const Shape& s, graph::ValueKind kind, DType dt = DType::F32) {
    graph::Value v;
    v.name = name;
    v.dtype = dt;
    v.shape = s;
    v.kind = kind;
    g.values.push_back(v);
    int id = static_cast<int>(g.values.size()) - 1;
    g.value_index[name] = id;
    if (kind == graph::ValueKind::Input) g.inputs.push_back(id);
    if (kind == graph::ValueKind::Parameter) g.parameters.push_back(id);
    return id;
  }
  int input(const std::string& name, const Shape& s, DType dt = DType::F32) { return value(name, s, graph::ValueKind::Input, dt); }
  int param(const std::string& name, const Shape& s) { return value(name, s, graph::ValueKind::Parameter); }
  // One node with one output of the given shape; returns the output id.
  int node(const std::string& op, const std::string& name, std::vector<int> ins, const Shape& out) {
    graph::Node n;
    n.name = name;
    n.op_type = op;
    n.inputs = std::move(ins);
    int id = value(name + "_out", out, graph::ValueKind::Activation);
    g.values[static_cast<size_t>(id)].producer = static_cast<int>(g.nodes.size());
    n.outputs = {id};
    g.nodes.push_back(n);
    return id;
  }
  graph::Graph& finish(std::vector<int> outputs) {
    for (auto& v : g.values) v.consumers.clear();
    for (size_t i = 0; i < g.nodes.size(); ++i)
      for (int id : g.nodes[i].inputs)
        if (id >= 0) g.values[static_cast<size_t>(id)].consumers.push_back(static_cast<int>(i));
    for (int o : outputs) {
      g.values[static_cast<size_t>(o)].is_output = true;
      g.outputs.push_back(o);
    }
    for (auto& n : g.nodes) n.cost = graph::node_cost(g, n);
    g.model_path = "hand.onnx";
    g.name = "hand";
    return g;
  }
};

}  // namespace smp::test
