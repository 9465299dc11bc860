// Tensor parallelism found in the graph alone (no module names needed): Megatron-LM's
// column- and row-parallel linears, attention split by heads, the vocabulary-parallel embedding
// and LM head; and the transformation that turns the graph into the graph of one rank of a
// tensor-parallel group of T ranks.
//
// What is recognised. A *column-parallel* product is a MatMul or Gemm whose right operand is a
// 2-D parameter (or Transpose(parameter), as PyTorch exports nn.Linear): each rank keeps a block
// of its output columns. The split is followed forward through the ops that keep it local —
// elementwise ops (a bias, a GELU), Softmax over another axis, Reshape (the split is tracked as
// a factor of the flat index, so [B, T, d] -> [B, T, H, hd] splits heads when T divides H),
// Transpose, Split / Slice / Gather of whole blocks (a fused q|k|v projection is split per
// third), products of two split activations over a batch axis (Q·Kᵀ and ·V per head) — until a
// *row-parallel* product, a MatMul / Gemm with a parameter weight whose contraction axis is the
// split one: each rank multiplies its rows, and one all-reduce forms the sum. Everything on the
// way is one *group* (an MLP, or an attention block when heads are split). A replicated
// activation entering a group passes Megatron's f (TpCopy: identity forward, all-reduce of its
// gradient); the row-parallel sum is Megatron's g (TpAllReduce: all-reduce forward, identity
// backward), placed before the row product's bias. The token embedding — Gather(parameter
// [V, d], token ids) — is split by vocabulary rows (TpVocabGather: ids outside the rank's rows
// give zeros, then TpAllReduce); an LM head — a column-parallel product whose split output is
// the model's only output — leaves the logits split over the vocabulary for the
// vocabulary-parallel cross-entropy (runtime/loss.hpp); one whose split logits (reshaped as
// PyTorch's F.cross_entropy does) reach a SoftmaxCrossEntropyLoss in the graph gets that loss
// computed vocabulary-parallel in place (TpSoftmaxCrossEntropyLoss, the loss replicated). Anything else stays replicated; a
// candidate whose split would reach an op that cannot keep it (a LayerNorm over the split axis,
// a replicated activation of full size on it, the output of the model) is not taken, with the
// reason kept for the summary.
//
// The vocabulary need not divide by T (GPT-3's 50257): the first V mod T ranks hold one row
// more. Every other split must be even (T divides the heads and the hidden sizes).
#pragma once

#include "graph/graph.hpp"

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace smp::graph {

// How a tensor is split over the T ranks of a group. Axis `axis` of size S is read as
// [outer, S / outer]; for every outer index each rank holds one block of the inner extent,
// rank r the r-th of T, in order. outer = 1: T contiguous blocks; outer = 3: each third (q, k,
// v of a fused projection) split separately. `uneven`: the inner extent need not divide by T
// (the first inner mod T ranks hold one more). axis < 0: replicated.
struct ShardSpec {
  int axis = -1;
  int64_t outer = 1;
  bool uneven = false;
  bool sharded() const { return axis >= 0; }
  friend bool operator==(const ShardSpec&, const ShardSpec&) = default;
};

// The block [shard_begin, shard_begin + shard_size) of an inner extent that rank r of T holds.
int64_t shard_begin(int64_t inner, int T, int r, bool uneven);
int64_t shard_size(int64_t inner, int T, int r, bool uneven);
// Rank r's shape of a tensor of shape `full`.
Shape shard_shape(const Shape& full, const ShardSpec& s, int T, int r);
// Rank r's part of `full`, and the whole from all T parts (in rank order).
TensorData shard_tensor(const TensorData& full, const ShardSpec& s, int T, int r);
TensorData unshard_tensor(const std::vector<TensorData>& parts, const ShardSpec& s, const Shape& full);
// Rank r's part of a tensor stored as ONNX external data, reading only the bytes of that part.
std::shared_ptr<const TensorData> read_tensor_shard(const Value& v, const ShardSpec& s, int T, int r);

enum class TpKind { Mlp, Attention, Embedding, LmHead };
std::string_view tp_kind_name(TpKind k);  // "mlp", "attention", "embedding", "lm_head"

struct TpGroup {
  TpKind kind = TpKind::Mlp;
  std::string name;             // the module path its products share, e.g. "blocks.0/attn"
  std::vector<int> nodes;       // node indices of the source graph, ascending
  std::vector<int> column;      // column-parallel products (split by output columns)
  std::vector<int> row;         // row-parallel products (split by input rows, all-reduce after)
  std::vector<int> parameters;  // the parameters it splits (value ids, ascending)
  int64_t sharded_elems = 0;    // their elements (whole)
};

// Per node of the source graph: the constants the transformation rewrites for a rank.
struct TpRewrite {
  bool reshape_shape = false;             // Reshape: input 1 becomes the output's local shape
  bool split_sizes = false;               // Split on the split axis: input 1 / attribute `split` local
  int slice_axis_pos = -1;                // Slice: position in `axes` of the split axis
  int64_t slice_inner = 0;                // its inner extent (whole)
  int64_t slice_begin_blocks = 0, slice_end_blocks = 0;
  std::map<int, ShardSpec> const_inputs;  // input index -> split of a full-size constant
  bool gemm_bias_after = false;           // row-parallel Gemm: its C is added after the all-reduce
  bool vocab_gather = false;              // the embedding Gather becomes TpVocabGather
  bool vocab_loss = false;                // SoftmaxCrossEntropyLoss over split classes becomes TpSoftmaxCrossEntropyLoss
};

struct TpAnalysis {
  int degree = 1;
  std::vector<TpGroup> groups;
  std::vector<int> group_of_node;      // per source node: its group, -1 replicated
  std::map<int, ShardSpec> params;     // split parameters
  std::map<int, ShardSpec> values;     // split activations
  std::set<int> copies;                // replicated values entering a group (f: TpCopy)
  std::set<int> partial;               // outputs of row-parallel products and the embedding (g: TpAllReduce)
  std::map<int, TpRewrite> rewrites;   // by node
  int sharded_output = -1;             // the graph output left split over the vocabulary (LM head)
  int64_t sharded_params = 0;          // parameter elements split (whole)
  int64_t replicated_params = 0;       // parameter elements every rank holds in full
  std::vector<std::string> notes;      // candidates not taken, and why
  bool any() const { return !groups.empty(); }
};

// The groups a split over `degree` ranks allows (degree 1: none).
TpAnalysis analyze_tensor_parallel(const Graph& g, int degree);

struct ShardOptions {
  // Give each split parameter rank r's part of its bytes: sliced from memory when the source
  // graph holds them, else read from its external data file (only that part's bytes).
  bool load_weights = false;
  // With load_weights: only the parameters this accepts (a worker reads its stages' weights).
  std::function<bool(const std::string&)> want_weight;
};

// The graph of rank `rank` of the group: split parameters and activations with their local
// shapes, shape constants rewritten, TpCopy / TpAllReduce / TpVocabGather nodes inserted (in
// topological order), node costs recomputed. Names of the source are kept; inserted nodes and
// values are named after the node or value they serve ("<value>/tp_copy", "<node>/tp_allreduce"),
// so a plan made on rank 0's graph names the same nodes on every rank.
Graph shard_graph(const Graph& g, const TpAnalysis& a, int rank, const ShardOptions& opt = {});

// The range [begin, begin + size) of the split graph output's last axis that rank r holds
// (the vocabulary for the vocabulary-parallel loss); {0, whole} when the output is not split.
struct VocabRange {
  int64_t begin = 0, size = 0, total = 0;
};
VocabRange output_vocab_range(const Graph& source, const TpAnalysis& a, int rank);

}  // namespace smp::graph
