// Control flow and sequences resolved at load (internal to the loader). smp runs static graphs:
// an If whose condition folds is replaced by the branch it takes; a Loop whose trip count and
// condition fold, or a Scan over a static axis, is unrolled into its iterations; and sequence
// values (SequenceEmpty / Construct / Insert / Erase, SplitToSequence) whose positions are
// constants become lists of tensor names, so that SequenceAt, SequenceLength and
// ConcatFromSequence become Identity, constants and Concat. What stays is refused with a reason.
#pragma once

#include "graph/graph.hpp"

#include <onnx/onnx_pb.h>

#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>

namespace smp::graph {

using ConstMap = std::unordered_map<std::string, std::shared_ptr<const TensorData>>;

// Whether `domain` names ai.onnx ("" or "ai.onnx").
bool onnx_domain(const std::string& domain);

// Whether the node is the ai.onnx op `type`.
bool onnx_op(const onnx::NodeProto& p, const char* type);

// Static dtype and shape of a value from its TypeProto; nullopt when not a tensor or not fully known.
std::optional<std::pair<DType, Shape>> static_type(const onnx::TypeProto& t);

// Static shapes of the graph's values (inputs, value_info, outputs, initializers).
std::unordered_map<std::string, Shape> static_shapes(const onnx::GraphProto& g);

// Every name the graph reads: its outputs, its nodes' inputs and what their subgraphs read.
std::unordered_set<std::string> names_read(const onnx::GraphProto& g);

// Whether the node is one of ai.onnx's sequence ops (SequenceEmpty ... SequenceMap).
bool is_sequence_op(const onnx::NodeProto& p);

// "node 'NAME' (OP)", domain-qualified where not ai.onnx: how errors name a node.
std::string node_label(const onnx::NodeProto& n);

// Renames references (node inputs and outputs, graph outputs) by `to`, in `g` and in the
// subgraphs of its nodes, which may read the names of the scopes around them.
void rename_values(onnx::GraphProto& g, const std::unordered_map<std::string, std::string>& to);

// Adds every name read in the subgraphs of `p` (a body may read the scopes around it) to `reads`.
void subgraph_reads(const onnx::NodeProto& p, std::unordered_set<std::string>& reads);

// Replaces each If whose condition folded to a constant by its branch's nodes. Returns how many.
int inline_constant_ifs(onnx::GraphProto& g, const ConstMap& consts, const std::string& file);

// Unrolls each Loop whose trip count is a constant and whose condition is a constant or stays
// what it was (the body passes it through), and each Scan (opset 9 and later) whose scanned axis
// has a static length, up to kMaxUnrolledNodes nodes. Returns how many were unrolled; the graph
// then needs sorting again.
int unroll_static_loops(onnx::GraphProto& g, const ConstMap& consts, int64_t opset, const std::string& file);

// Resolves the graph's sequence values when every one of them is known (made by sequence ops
// with constant positions, SplitToSequence of a static shape) and only sequence ops read them;
// otherwise changes nothing. Returns how many nodes were rewritten or dropped.
int resolve_sequences(onnx::GraphProto& g, const ConstMap& consts, int64_t opset, const std::string& file);

// Replaces each Compress whose condition is a constant (and whose input's shape is static) by a
// Gather of the kept positions along its axis (of the flattened input without one), which
// trains. Returns how many.
int lower_constant_compress(onnx::GraphProto& g, const ConstMap& consts, const std::string& file);

// Throws the reason a node that needs the resolutions above is still there (a Loop decided by
// data, a sequence read by another op), naming it; nothing when none is left.
void refuse_unresolved_control_flow(const onnx::GraphProto& g, int64_t opset, const std::string& file);

// The most nodes one Loop or Scan may unroll into.
constexpr int64_t kMaxUnrolledNodes = int64_t{1} << 18;

}  // namespace smp::graph
