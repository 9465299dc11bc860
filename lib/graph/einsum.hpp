// Einsum equations: the labels of every operand and of the output, and each label's size. Shared
// by the loader (ONNX 1.12's shape inference gives an Einsum's output only a rank), the cost rule
// and the kernels.
#pragma once

#include "core/shape.hpp"

#include <map>
#include <string>
#include <vector>

namespace smp::graph {

struct EinsumSpec {
  std::vector<std::vector<int>> inputs;  // per operand, a label per dim
  std::vector<int> output;               // a label per output dim
  std::map<int, int64_t> size;           // label -> size
  Shape output_shape() const;
};

// Letters are labels (their char code); the dims an ellipsis stands for get labels 256, 257, …
// counted from the right, so that they align across operands. Without "->", the output is the
// ellipsis dims then the letters that occur once, in alphabetical order. Returns an empty string
// when the equation fits the shapes, else what is wrong. Diagonals (a label twice in one operand)
// are refused.
std::string parse_einsum(const std::string& equation, const std::vector<Shape>& shapes, EinsumSpec& out);

}  // namespace smp::graph
