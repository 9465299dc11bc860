// Broadcasting plans shared by the kernels of every backend (no threading, no device code).
#pragma once

#include "core/shape.hpp"

#include <cstdint>
#include <vector>

namespace smp::runtime::cpu {

// Right-aligned broadcasting of up to 3 inputs onto an output shape, with adjacent dims merged
// where every input is contiguous (or broadcast) across them. The last dim is the inner loop;
// an input's inner stride is 0 (broadcast) or 1.
struct Bcast {
  std::vector<int64_t> dims;                 // merged output dims (at least one)
  std::vector<std::vector<int64_t>> st;      // per input, element strides per merged dim
  int64_t total = 0;
  int64_t inner() const { return dims.back(); }
  int64_t rows() const { return inner() == 0 ? 0 : total / inner(); }
  // Offsets of row r for every input.
  void row_offsets(int64_t r, int64_t* off) const {
    size_t n = st.size();
    for (size_t k = 0; k < n; ++k) off[k] = 0;
    for (int d = static_cast<int>(dims.size()) - 2; d >= 0; --d) {
      int64_t i = r % dims[static_cast<size_t>(d)];
      r /= dims[static_cast<size_t>(d)];
      for (size_t k = 0; k < n; ++k) off[k] += i * st[k][static_cast<size_t>(d)];
    }
  }
};

Bcast make_bcast(const Shape& out, const std::vector<Shape>& ins);
// True when `in` broadcasts to `out` (right-aligned, ONNX multidirectional rules).
bool broadcastable_to(const Shape& in, const Shape& out);

// Normalizes an axis in [-rank, rank) to [0, rank); false when out of range.
inline bool norm_axis(int64_t& axis, int64_t rank) {
  if (axis < -rank || axis >= rank) return false;
  if (axis < 0) axis += rank;
  return true;
}

inline int64_t prod(const Shape& s, size_t b, size_t e) {
  int64_t p = 1;
  for (size_t i = b; i < e; ++i) p *= s[i];
  return p;
}

// Row-major element strides of a shape.
std::vector<int64_t> strides_of(const Shape& s);

}  // namespace smp::runtime::cpu
