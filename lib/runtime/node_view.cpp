#include "runtime/backend.hpp"

#include <fmt/format.h>

namespace smp::runtime {

const graph::Value& NodeView::input(int i) const {
  SMP_CHECK(has_input(i), "node {}: input {} absent", n_.name, i);
  return g_.value(n_.inputs[static_cast<size_t>(i)]);
}

const graph::Value& NodeView::output(int i) const {
  SMP_CHECK(has_output(i), "node {}: output {} absent", n_.name, i);
  return g_.value(n_.outputs[static_cast<size_t>(i)]);
}

const graph::TensorData* NodeView::constant_input(int i) const {
  if (!has_input(i)) return nullptr;
  const graph::Value& v = input(i);
  if (v.kind != graph::ValueKind::Constant) return nullptr;
  return v.data.get();
}

bool NodeView::constant_ints(int i, std::vector<int64_t>& out) const {
  const graph::TensorData* d = constant_input(i);
  if (!d) return false;
  out.resize(static_cast<size_t>(d->numel()));
  for (int64_t k = 0; k < d->numel(); ++k) out[static_cast<size_t>(k)] = d->get_i64(k);
  return true;
}

void NodeView::fail(const std::string& what) const {
  throw_bad_input(fmt::format("node {} ({})", n_.name, n_.op_type), what);
}

void NodeView::require_dtype(const graph::Value& v, std::initializer_list<DType> ok, const char* role) const {
  for (DType d : ok)
    if (v.dtype == d) return;
  std::string names;
  for (DType d : ok) names += (names.empty() ? "" : ", ") + std::string(dtype_name(d));
  fail(fmt::format("{} '{}' has dtype {}; supported: {}", role, v.name, dtype_name(v.dtype), names));
}

}  // namespace smp::runtime
