// Static tensor shapes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace smp {

using Shape = std::vector<int64_t>;

// Number of elements (1 for a scalar). Saturates at INT64_MAX instead of overflowing, so a
// shape read from a hostile file cannot cause undefined behaviour; callers reject such sizes.
int64_t numel(const Shape& s);
// numel(s) * elem_size, saturating likewise.
int64_t byte_size(const Shape& s, int64_t elem_size);
// Largest element count smp accepts for one tensor (exact in a double).
constexpr int64_t kMaxElements = int64_t{1} << 53;
// "[2, 3, 4]"; "[]" for a scalar.
std::string shape_str(const Shape& s);

}  // namespace smp
