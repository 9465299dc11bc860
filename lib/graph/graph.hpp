// The static graph every later layer works on: topologically ordered nodes, every value with a
// dtype and a static shape, every node with its forward cost. Built from an ONNX file by
// load_graph() (graph/loader.hpp); ONNX headers never leak past this layer.
#pragma once

#include "core/bytes.hpp"
#include "core/dtype.hpp"
#include "core/shape.hpp"

#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace smp::graph {

// Constant bytes held in host memory: small constants, folded values, loaded weights.
// Raw little-endian elements, row-major, as ONNX's raw_data.
struct TensorData {
  DType dtype = DType::Undefined;
  Shape shape;
  Bytes bytes;  // owned, or borrowed from a parsed model's file (weights)

  int64_t numel() const { return smp::numel(shape); }
  // Typed pointers: for owned bytes (aligned); weights borrowed from a model file may not be
  // (read them with memcpy, as get_f64 does).
  template <class T> const T* as() const { return reinterpret_cast<const T*>(bytes.data()); }
  template <class T> T* as_mut() { return reinterpret_cast<T*>(bytes.data()); }
  // Element i converted to double / int64 (any numeric dtype).
  double get_f64(int64_t i) const;
  int64_t get_i64(int64_t i) const;
};

// Where an initializer's bytes are when they live in an external data file (ONNX external data).
struct ExternalData {
  std::filesystem::path file;  // absolute
  int64_t offset = 0;
  int64_t length = -1;  // -1: to the end of the file
};

struct Attribute {
  enum class Kind { Float, Int, String, Tensor, Floats, Ints, Strings, Unsupported };
  Kind kind = Kind::Unsupported;
  double f = 0;
  int64_t i = 0;
  std::string s;
  std::vector<double> floats;
  std::vector<int64_t> ints;
  std::vector<std::string> strings;
  std::shared_ptr<const TensorData> t;
};

enum class ValueKind {
  Input,       // a graph input fed by the user (data, labels)
  Parameter,   // a floating-point initializer that reaches an output through differentiable ops
  Constant,    // any other initializer, a Constant node's value, or a folded value
  Activation,  // produced by a node
  Buffer,      // a floating-point initializer that a node overwrites while training (running statistics,
               // per the registry's OpDef::state): owned by the stage that reads it, checkpointed and
               // exported with the parameters, never trained
};

struct Value {
  std::string name;
  DType dtype = DType::Undefined;
  Shape shape;
  ValueKind kind = ValueKind::Activation;
  int producer = -1;            // index into Graph::nodes; -1 for inputs, parameters, constants
  std::vector<int> consumers;   // indices into Graph::nodes, ascending
  bool is_output = false;       // a graph output
  // Constants always carry their data. Parameters carry it when the loader was asked for weights;
  // otherwise `external` (if stored outside the model) says where it is.
  std::shared_ptr<const TensorData> data;
  std::optional<ExternalData> external;

  int64_t numel() const { return smp::numel(shape); }
  int64_t bytes() const { return byte_size(shape, dtype_size(dtype)); }
};

// Forward cost of one node at the graph's bound sizes.
struct NodeCost {
  double flops = 0;           // floating-point operations of the forward
  double bytes_read = 0;      // bytes the forward kernel reads (inputs, weights)
  double bytes_written = 0;   // bytes it writes (0 for ops that only re-label a buffer)
  int64_t param_elems = 0;    // elements of the parameters this node reads
  double output_bytes = 0;    // bytes of the activations it produces
  bool estimated = false;     // the op has no cost rule: bytes-based estimate only
};

struct Node {
  std::string name;  // unique; ONNX nodes without a name get "<op_type>_<index>"
  std::string op_type;
  std::string domain;         // "" for ai.onnx
  std::vector<int> inputs;    // value ids; -1 marks an omitted optional input
  std::vector<int> outputs;   // value ids; -1 marks an omitted optional output
  std::map<std::string, Attribute> attrs;
  NodeCost cost;

  bool has_attr(const std::string& n) const { return attrs.count(n) != 0; }
  int64_t attr_int(const std::string& n, int64_t dflt) const;
  double attr_float(const std::string& n, double dflt) const;
  std::string attr_string(const std::string& n, const std::string& dflt) const;
  std::vector<int64_t> attr_ints(const std::string& n, std::vector<int64_t> dflt = {}) const;
};

struct Graph {
  std::filesystem::path model_path;
  std::string name;
  int64_t opset = 0;            // ai.onnx opset the model imports
  int onnx_nodes = 0;           // nodes in the file (functions inlined), before folding
  std::vector<Value> values;
  std::vector<Node> nodes;      // topological order
  std::vector<int> inputs;      // user-fed inputs (initializers excluded), in file order
  std::vector<int> outputs;     // graph outputs, in file order
  std::vector<int> parameters;  // trainable parameters, in initializer order
  std::vector<int> buffers;     // running statistics (ValueKind::Buffer), in initializer order
  std::map<std::string, int64_t> dims;  // symbolic dimension name -> size it was bound to
  std::vector<std::string> frozen;      // LoadOptions::frozen as given (initializers kept constant)
  std::vector<std::string> warnings;    // e.g. ops with no cost rule
  // LoadOptions::staged only: nodes decided by data were cut off; the outputs are the values they
  // read (and the model's outputs computed without them), for the next stage to know.
  bool partial = false;

  int find_value(const std::string& name) const;  // -1 when absent
  const Value& value(int id) const { return values.at(static_cast<size_t>(id)); }
  Value& value(int id) { return values.at(static_cast<size_t>(id)); }
  int64_t parameter_count() const;   // elements of trainable parameters
  double forward_flops() const;
  double activation_bytes() const;   // bytes of every node output

  std::unordered_map<std::string, int> value_index;
};

}  // namespace smp::graph
