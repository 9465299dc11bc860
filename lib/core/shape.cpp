#include "core/shape.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cstdint>

namespace smp {

int64_t numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    if (d < 0) return INT64_MAX;
    if (__builtin_mul_overflow(n, d, &n)) return INT64_MAX;
  }
  return n;
}

int64_t byte_size(const Shape& s, int64_t elem_size) {
  int64_t n = numel(s), b = 0;
  if (__builtin_mul_overflow(n, elem_size, &b)) return INT64_MAX;
  return b;
}

std::string shape_str(const Shape& s) { return fmt::format("[{}]", fmt::join(s, ", ")); }

}  // namespace smp
