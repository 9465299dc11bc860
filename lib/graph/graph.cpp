#include "graph/graph.hpp"

#include "core/error.hpp"

#include <cstdint>
#include <cstring>

namespace smp::graph {

namespace {
template <class T> T load(const Bytes& b, int64_t i) {
  T v;
  std::memcpy(&v, b.data() + i * static_cast<int64_t>(sizeof(T)), sizeof(T));
  return v;
}
}  // namespace

double TensorData::get_f64(int64_t i) const {
  SMP_CHECK(i >= 0 && i < numel(), "element {} out of range for {} elements", i, numel());
  switch (dtype) {
    case DType::F32: return load<float>(bytes, i);
    case DType::F64: return load<double>(bytes, i);
    case DType::I64: return static_cast<double>(load<int64_t>(bytes, i));
    case DType::I32: return load<int32_t>(bytes, i);
    case DType::I16: return load<int16_t>(bytes, i);
    case DType::I8: return load<int8_t>(bytes, i);
    case DType::U8: case DType::Bool: return load<uint8_t>(bytes, i);
    case DType::U16: return load<uint16_t>(bytes, i);
    case DType::U32: return load<uint32_t>(bytes, i);
    case DType::U64: return static_cast<double>(load<uint64_t>(bytes, i));
    default: SMP_CHECK(false, "cannot read {} elements as numbers", dtype_name(dtype));
  }
  return 0;
}

int64_t TensorData::get_i64(int64_t i) const {
  switch (dtype) {
    case DType::I64: SMP_CHECK(i >= 0 && i < numel(), "element {} out of range", i); return load<int64_t>(bytes, i);
    case DType::U64: SMP_CHECK(i >= 0 && i < numel(), "element {} out of range", i); return static_cast<int64_t>(load<uint64_t>(bytes, i));
    default: {
      // Saturating: a NaN or out-of-range float (from a hostile file) must not be UB.
      double v = get_f64(i);
      if (!(v == v)) return 0;
      if (v >= 9.2e18) return INT64_MAX;
      if (v <= -9.2e18) return INT64_MIN;
      return static_cast<int64_t>(v);
    }
  }
}

int64_t Node::attr_int(const std::string& n, int64_t dflt) const {
  auto it = attrs.find(n);
  return it == attrs.end() ? dflt : it->second.i;
}

double Node::attr_float(const std::string& n, double dflt) const {
  auto it = attrs.find(n);
  return it == attrs.end() ? dflt : it->second.f;
}

std::string Node::attr_string(const std::string& n, const std::string& dflt) const {
  auto it = attrs.find(n);
  return it == attrs.end() ? dflt : it->second.s;
}

std::vector<int64_t> Node::attr_ints(const std::string& n, std::vector<int64_t> dflt) const {
  auto it = attrs.find(n);
  return it == attrs.end() ? dflt : it->second.ints;
}

int Graph::find_value(const std::string& n) const {
  auto it = value_index.find(n);
  return it == value_index.end() ? -1 : it->second;
}

int64_t Graph::parameter_count() const {
  int64_t n = 0;
  for (int id : parameters) n += value(id).numel();
  return n;
}

double Graph::forward_flops() const {
  double f = 0;
  for (const auto& n : nodes) f += n.cost.flops;
  return f;
}

double Graph::activation_bytes() const {
  double b = 0;
  for (const auto& n : nodes) b += n.cost.output_bytes;
  return b;
}

}  // namespace smp::graph
