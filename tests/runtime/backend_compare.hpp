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

// "" when `got` matches `want` within rtol as METHOD.md measures it: the norm of the difference
// over the norm of `want` (a tensor of zeros must be matched exactly), and NaN / infinity at
// the same places.
inline std::string compare_rel(const std::vector<double>& got, const std::vector<double>& want, double rtol) {
  if (got.size() != want.size()) return fmt::format("{} elements vs {}", got.size(), want.size());
  double diff = 0, norm = 0;
  size_t worst = 0;
  double worst_d = -1;
  for (size_t i = 0; i < got.size(); ++i) {
    const double a = got[i], b = want[i];
    if (!std::isfinite(b) || !std::isfinite(a)) {
      if ((std::isnan(a) && std::isnan(b)) || a == b) continue;
      return fmt::format("element {}: {} vs {}", i, a, b);
    }
    diff += (a - b) * (a - b);
    norm += b * b;
    if (std::fabs(a - b) > worst_d) worst_d = std::fabs(a - b), worst = i;
  }
  if (std::sqrt(diff) <= rtol * std::sqrt(norm)) return "";
  return fmt::format("relative difference {:.3e} (largest at element {}: {} vs {})", norm > 0 ? std::sqrt(diff / norm) : 1.0, worst,
                     got[worst], want[worst]);
}

// The relative difference as compare_rel measures it.
inline double max_rel(const std::vector<double>& got, const std::vector<double>& want) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < got.size() && i < want.size(); ++i)
    if (std::isfinite(got[i]) && std::isfinite(want[i])) {
      diff += (got[i] - want[i]) * (got[i] - want[i]);
      norm += want[i] * want[i];
    }
  return norm > 0 ? std::sqrt(diff / norm) : (diff > 0 ? 1.0 : 0.0);
}
}  // namespace smp::test
