// Builds small graphs by hand for the runtime tests (no ONNX file, no shape inference: every
// value's shape is given).
#pragma once

#include "graph/builder.hpp"
#include "graph/graph.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace smp::test {

using graph::Attribute;
using graph::attr_f;
using graph::attr_i;
using graph::attr_ints;
using graph::attr_s;
using graph::tensor_data;

struct TinyGraph : graph::GraphBuilder {
  TinyGraph() { g.name = "tiny"; }
};

inline std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1, float hi = 1) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

inline std::vector<float> to_vec(const runtime::Tensor& t) {
  const float* p = t.data<float>();
  return std::vector<float>(p, p + t.numel());
}

}  // namespace smp::test
