// Builds small graphs by hand, without an ONNX file or shape inference: every value's dtype and
// shape is given. Used where smp runs kernels on shapes of its own choosing (the kernel
// calibration behind the planner's CPU estimates) and by the runtime tests.
#pragma once

#include "graph/graph.hpp"

#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

namespace smp::graph {

inline Attribute attr_i(int64_t v) { Attribute a; a.kind = Attribute::Kind::Int; a.i = v; return a; }
inline Attribute attr_f(double v) { Attribute a; a.kind = Attribute::Kind::Float; a.f = v; return a; }
inline Attribute attr_s(std::string v) { Attribute a; a.kind = Attribute::Kind::String; a.s = std::move(v); return a; }
inline Attribute attr_ints(std::vector<int64_t> v) { Attribute a; a.kind = Attribute::Kind::Ints; a.ints = std::move(v); return a; }

template <class T>
std::shared_ptr<TensorData> tensor_data(DType dt, const Shape& s, const std::vector<T>& v) {
  auto d = std::make_shared<TensorData>();
  d->dtype = dt;
  d->shape = s;
  d->bytes.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
  return d;
}

struct GraphBuilder {
  Graph g;

  GraphBuilder() { g.opset = 17; g.name = "built"; }

  int add_value(const std::string& name, DType dt, const Shape& s, ValueKind kind,
                std::shared_ptr<const TensorData> data = nullptr) {
    Value v;
    v.name = name;
    v.dtype = dt;
    v.shape = s;
    v.kind = kind;
    v.data = std::move(data);
    g.values.push_back(v);
    int id = static_cast<int>(g.values.size()) - 1;
    g.value_index[name] = id;
    return id;
  }
  // a graph input fed by the user
  int input(const std::string& name, DType dt, const Shape& s) {
    int id = add_value(name, dt, s, ValueKind::Input);
    g.inputs.push_back(id);
    return id;
  }
  // an activation produced by an earlier stage (gets a gradient)
  int boundary(const std::string& name, const Shape& s) { return add_value(name, DType::F32, s, ValueKind::Activation); }
  int param(const std::string& name, const Shape& s, const std::vector<float>& v) {
    int id = add_value(name, DType::F32, s, ValueKind::Parameter, tensor_data(DType::F32, s, v));
    g.parameters.push_back(id);
    return id;
  }
  // running statistics a node updates (ValueKind::Buffer)
  int buffer(const std::string& name, const Shape& s, const std::vector<float>& v) {
    int id = add_value(name, DType::F32, s, ValueKind::Buffer, tensor_data(DType::F32, s, v));
    g.buffers.push_back(id);
    return id;
  }
  template <class T>
  int constant(const std::string& name, DType dt, const Shape& s, const std::vector<T>& v) {
    return add_value(name, dt, s, ValueKind::Constant, tensor_data(dt, s, v));
  }
  // A node; outputs given as (name, dtype, shape). Returns the output ids.
  std::vector<int> node(const std::string& op, std::vector<int> ins, std::vector<std::tuple<std::string, DType, Shape>> outs,
                        std::map<std::string, Attribute> attrs = {}) {
    Node n;
    n.name = op + "_" + std::to_string(g.nodes.size());
    n.op_type = op;
    n.inputs = ins;
    n.attrs = std::move(attrs);
    int idx = static_cast<int>(g.nodes.size());
    std::vector<int> ids;
    for (auto& [name, dt, s] : outs) {
      int id = add_value(name, dt, s, ValueKind::Activation);
      g.values[static_cast<size_t>(id)].producer = idx;
      n.outputs.push_back(id);
      ids.push_back(id);
    }
    for (int i : ins)
      if (i >= 0) g.values[static_cast<size_t>(i)].consumers.push_back(idx);
    g.nodes.push_back(n);
    return ids;
  }
  void output(int id) {
    g.values[static_cast<size_t>(id)].is_output = true;
    g.outputs.push_back(id);
  }
};

}  // namespace smp::graph
