// Constant folding: a small reference evaluator for the nodes whose inputs are all known
// without running the model — the Shape / Gather / Unsqueeze / Concat / Constant chains that
// PyTorch exports, masks built from ConstantOfShape or Trilu, scale factors computed from
// shapes. It works on host TensorData of any numeric dtype; it is exact, not fast.
#pragma once

#include "graph/graph.hpp"

#include <optional>
#include <string>
#include <vector>

namespace smp::graph {

// One input of a node being folded: its data when constant; for shape-only ops (Shape, Size)
// only `shape` needs to be known (data may be null).
struct FoldInput {
  const TensorData* data = nullptr;
  const Shape* shape = nullptr;  // static shape, when known
  bool present = false;          // false for an omitted optional input
};

// The outputs when `node` can be evaluated; nullopt when the op, a dtype or an attribute is
// outside what the evaluator handles, or a result would exceed `max_bytes` (then the node stays
// in the graph as compute). Throws smp::Error (bad input) for inputs that make the op invalid.
std::optional<std::vector<TensorData>> fold_node(const Node& node, const std::vector<FoldInput>& inputs,
                                                 int64_t opset, int64_t max_bytes);

// True when the op reads only its inputs' shapes, so it folds once those are static.
bool is_shape_only_op(const std::string& op_type);

}  // namespace smp::graph
