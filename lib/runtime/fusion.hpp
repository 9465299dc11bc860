// Op-chain fusion decided when a stage is loaded: chains of exported nodes that one registry op
// computes (PyTorch exports F.gelu as Div, Erf, Add, Mul, Mul) run as that op's kernel, in one
// pass over memory instead of five, keeping one tensor for the backward instead of three; a
// Linear layer's Transpose(W) -> MatMul runs as one product with W transposed in place
// (MatMulTransB), without copying W every microbatch and its gradient back.
//
// A chain is fused only when the backend has a kernel for the fused op (a backend without one
// runs the nodes as exported: nothing else changes for it), every node of the chain is in the
// stage, and its intermediate values have exactly one consumer and are not graph outputs (so no
// stage boundary or other reader can need them). The fused run takes the place of the chain's
// last node: after_node hooks and per-node profiles see that node's index.
//
// Memory: the fused op's saved tensors are its registry declaration (Gelu keeps its input), so a
// fused stage stashes less than graph::saved_activation_bytes over the chain's nodes (the
// planner's per-node estimate stays an upper bound).
#pragma once

#include "graph/graph.hpp"
#include "graph/op_registry.hpp"
#include "runtime/backend.hpp"

#include <vector>

namespace smp::runtime {

struct Fusion {
  graph::Op op{};           // the registry op that computes the chain
  graph::Node node;         // its node: op_type, inputs, outputs, attributes; named after the last node
  std::vector<int> nodes;   // graph node indices of the chain, ascending (the last one produces the output)
};

// Chains among `stage_nodes` (graph node indices in topological order) that `kernels` can run
// fused. A node belongs to at most one chain.
std::vector<Fusion> find_fusions(const graph::Graph& g, const std::vector<int>& stage_nodes, const KernelTable& kernels);

}  // namespace smp::runtime
