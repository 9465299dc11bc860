// Helpers of the tests that run one graph on the CPU and CUDA backends and compare them: paths
// (overridable by SMP_SOURCE_DIR / SMP_TEST_DATA in the environment, for a test binary run from a
// device bundle on another machine), host copies, and the comparison at a relative tolerance.
#pragma once

#include "runtime/backend.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

namespace smp::test {

inline std::filesystem::path source_dir() {
  const char* e = std::getenv("SMP_SOURCE_DIR");
  return e && *e ? e : SMP_SOURCE_DIR;
}
inline std::filesystem::path test_data_dir() {
  const char* e = std::getenv("SMP_TEST_DATA");
  return e && *e ? e : SMP_TEST_DATA;
}

// A tensor's elements as doubles (f32, bf16, f64, integers, bool), read through its backend.
inline std::vector<double> host_values(runtime::Backend& be, const runtime::Tensor& t) {
  std::vector<char> raw(static_cast<size_t>(t.bytes()));
  if (!raw.empty()) be.to_host(t, raw.data());
  std::vector<double> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) {
    const char* p = raw.data() + i * dtype_size(t.dtype());
    double x = 0;
    switch (t.dtype()) {
      case DType::F32: { float f; std::memcpy(&f, p, 4); x = f; break; }
      case DType::BF16: { uint16_t b; std::memcpy(&b, p, 2); uint32_t u = uint32_t{b} << 16; float f; std::memcpy(&f, &u, 4); x = f; break; }
      case DType::F64: std::memcpy(&x, p, 8); break;
      case DType::I64: { int64_t k; std::memcpy(&k, p, 8); x = static_cast<double>(k); break; }
      case DType::I32: { int32_t k; std::memcpy(&k, p, 4); x = k; break; }
      case DType::I8: x = static_cast<int8_t>(*p); break;
      default: x = static_cast<uint8_t>(*p); break;
    }
    v[static_cast<size_t>(i)] = x;
  }
  return v;
}

// "" when `got` matches `want` element by element within rtol of each element, elements far
// below the tensor's scale compared at rtol of 1 % of that scale (max |want|); NaN matches NaN.
inline std::string compare_rel(const std::vector<double>& got, const std::vector<double>& want, double rtol) {
  if (got.size() != want.size()) return fmt::format("{} elements vs {}", got.size(), want.size());
  double scale = 0;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i) {
    const double a = got[i], b = want[i];
    if (std::isnan(a) && std::isnan(b)) continue;
    if (std::isinf(b) && a == b) continue;
    if (!(std::fabs(a - b) <= rtol * std::max(std::fabs(b), 0.01 * scale)))
      return fmt::format("element {}: {} vs {} (relative {:.2e})", i, a, b, std::fabs(a - b) / std::max(std::fabs(b), 1e-30));
  }
  return "";
}

// The largest relative difference (as compare_rel measures it).
inline double max_rel(const std::vector<double>& got, const std::vector<double>& want) {
  double scale = 0, worst = 0;
  for (double w : want)
    if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    if (std::isfinite(got[i]) && std::isfinite(want[i]))
      worst = std::max(worst, std::fabs(got[i] - want[i]) / std::max({std::fabs(want[i]), 0.01 * scale, 1e-30}));
  return worst;
}

}  // namespace smp::test
