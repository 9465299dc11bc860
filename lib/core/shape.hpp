// Static tensor shapes.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace smp {

using Shape = std::vector<int64_t>;

// Number of elements (1 for a scalar).
int64_t numel(const Shape& s);
// "[2, 3, 4]"; "[]" for a scalar.
std::string shape_str(const Shape& s);

}  // namespace smp
