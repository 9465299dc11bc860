// The stage executor: forward, backward-input (B) and backward-weight (W) of a contiguous range
// of a graph's nodes, per microbatch, on any Backend.
//
// Lifetimes: a forward tensor lives until its last forward use, unless a gradient rule keeps it
// (graph::OpDef::saved_inputs / saved_outputs); kept tensors are stashed per microbatch and
// released by the backward part that last needs them. backward_input keeps the output gradients
// of nodes with parameters until backward_weight of the same microbatch. Parameter gradients
// accumulate (+=) across microbatches until zero_grad(); activation gradients overwrite.
#pragma once

#include "graph/graph.hpp"
#include "graph/op_registry.hpp"
#include "runtime/backend.hpp"
#include "runtime/fusion.hpp"

#include <functional>
#include <map>
#include <memory>
#include <span>
#include <vector>

namespace smp::runtime {

// The dtype a value's tensors have on a backend computing in `compute` (F32 or BF16): with
// BF16, float32 activations (produced by nodes, or received from an earlier stage) are stored
// as bfloat16; graph inputs, parameters (master weights) and constants keep their dtype.
DType exec_dtype(const graph::Value& v, DType compute);

// What one stage needs on its device, from the tensors' lifetimes and the registry's saved-tensor
// declarations (the planner's), in the dtypes the executor allocates.
struct StageMemoryPlan {
  int64_t parameter_bytes = 0;   // master weights, plus their bf16 copies with bf16 compute
  int64_t gradient_bytes = 0;    // parameter gradients (f32)
  int64_t stash_bytes = 0;       // per microbatch: tensors kept from its forward for its backward
  int64_t w_keep_bytes = 0;      // per microbatch: output gradients kept from B for W
  int64_t boundary_bytes = 0;    // per microbatch: stage inputs and outputs
  int64_t forward_peak_bytes = 0;   // one microbatch's forward, its stash included
  int64_t backward_peak_bytes = 0;  // one microbatch's backward above its stash
  int64_t scratch_bytes = 0;     // the largest temporary a kernel may take
  // The activation arena for `in_flight` microbatches between their forward and last backward.
  int64_t arena_bytes(int in_flight) const;
};

struct ExecutorOptions {
  // Backward is wanted: every node whose gradient is needed must have a gradient rule (checked
  // at load) and forward stashes what the backward keeps.
  bool training = true;
  // Running statistics (graph::ValueKind::Buffer: BatchNormalization's running mean and variance
  // in training mode; the op always normalizes with the batch's own statistics there):
  //   Onnx:          the statistics outputs are computed as ONNX defines them (biased variance)
  //                  and the buffers are left alone (smp-run --forward, the conformance cases);
  //   PerMicrobatch: every forward updates the buffers with its microbatch's mean and unbiased
  //                  variance, as PyTorch does when it runs the microbatches one after the other;
  //   Deferred:      the forwards accumulate their statistics and commit_running_stats() updates
  //                  the buffers once with those of the whole minibatch (torchgpipe's deferred
  //                  batch norm, with the unbiased variance): the result does not depend on how
  //                  the minibatch is split.
  enum class RunningStats { Onnx, PerMicrobatch, Deferred };
  RunningStats running_stats = RunningStats::PerMicrobatch;
  // Seed of the random ops' streams (Dropout in training mode; runtime/random.hpp).
  uint64_t seed = 0;
  // Time every kernel call (see StageExecutor::profile()).
  bool profile = false;
  // Run op chains that one registry op computes as that op, where the backend has its kernel
  // (runtime/fusion.hpp).
  bool fuse = true;
  // Called on the calling thread after every node's forward and backward kernel with the graph
  // node index, the pass ('F' forward, 'B' input gradient, 'W' weight gradient, 'G' both fused)
  // and the seconds since that node's turn began (allocation and kernel). smp-run drives its
  // communication there, between kernels; smp-profile times the nodes in context.
  std::function<void(int node, char pass, double seconds)> after_node;
  // F32, or BF16: bf16 compute and stored activations, f32 master weights and gradients
  // (needs a backend with bfloat16 kernels).
  DType compute_dtype = DType::F32;
  // Microbatches the schedule keeps between their forward and their last backward: the
  // activation arena a device backend reserves at load is sized for this many.
  int microbatches_in_flight = 1;
  // The tensor-parallel group the TpCopy / TpAllReduce nodes of a split graph
  // (graph/tensor_parallel.hpp) reduce over; required when the stage has such nodes.
  Collectives* collectives = nullptr;
};

// Seconds spent per op type (with profile on).
struct OpTime {
  std::string op;
  double forward_s = 0, backward_s = 0;
  int64_t calls = 0;
};

class StageExecutor {
 public:
  // `nodes`: indices into g.nodes, in topological order. Prepares every kernel: an unsupported
  // op, attribute or dtype fails here with "node <name> (<op>): <what>". Parameters are copied
  // from the graph (load_graph with load_weights) and their gradients allocated (zero).
  StageExecutor(const graph::Graph& g, std::vector<int> nodes, Backend& backend, ExecutorOptions opts = {});
  // The whole graph as one stage.
  StageExecutor(const graph::Graph& g, Backend& backend, ExecutorOptions opts = {});
  ~StageExecutor();
  StageExecutor(const StageExecutor&) = delete;
  StageExecutor& operator=(const StageExecutor&) = delete;

  const graph::Graph& graph() const { return g_; }
  Backend& backend() { return be_; }
  // Boundary values: inputs (produced outside the stage: graph inputs or an earlier stage's
  // activations), outputs (graph outputs or consumed by a later stage), parameters.
  const std::vector<int>& inputs() const { return inputs_; }
  const std::vector<int>& outputs() const { return outputs_; }
  const std::vector<int>& parameters() const { return params_; }
  // The chains this stage runs fused (empty with options.fuse off).
  const std::vector<Fusion>& fusions() const { return fusions_; }
  // The dtype of value v's tensors here (exec_dtype with this stage's compute dtype).
  DType value_dtype(int v) const { return xdt_[static_cast<size_t>(v)]; }
  DType compute_dtype() const { return opts_.compute_dtype; }
  // Whether backward_input returns a gradient for inputs()[i] (a float activation of an
  // earlier stage); graph inputs get none.
  bool input_gets_gradient(size_t i) const { return input_grad_[i]; }

  // The master weights (f32). The non-const access counts as a change: with bf16 compute the
  // next forward refreshes the bf16 copy.
  Tensor& parameter(int value_id);
  Tensor& gradient(int value_id);
  // Running statistics this stage owns (value ids of graph::ValueKind::Buffer, ascending).
  const std::vector<int>& buffers() const { return buffers_; }
  Tensor& buffer(int value_id);

  // Deferred running statistics (RunningStats::Deferred): what the forwards since the last
  // commit accumulated, as sums that add across data-parallel replicas (all-reduce them, then
  // commit on every replica). Empty when the stage has no running statistics.
  std::vector<double> running_stat_sums() const;
  void commit_running_stats(std::span<const double> sums);

  // The step the next forwards belong to, and the global index of this replica's microbatch 0
  // (replica × microbatches): with the seed and the node, they key every random op's stream.
  void set_random_step(int64_t step, int64_t first_microbatch = 0);

  // Forward of microbatch `mb`; inputs in inputs() order. Returns the outputs in outputs() order.
  std::vector<Tensor> forward(int mb, std::span<const Tensor> inputs);
  // Gradients of the inputs (undefined where input_gets_gradient is false) from the gradients
  // of the outputs (outputs() order; an undefined one counts as zero).
  std::vector<Tensor> backward_input(int mb, std::span<const Tensor> output_grads);
  // Parameter gradients of microbatch `mb` (+=); needs backward_input(mb) first.
  void backward_weight(int mb);
  // backward_input then backward_weight, fused node by node (frees kept tensors soonest).
  std::vector<Tensor> backward(int mb, std::span<const Tensor> output_grads);

  // Forgets microbatch `mb`'s stash (an aborted step, or a forward run only for its value).
  void drop(int mb);

  // Parameter gradients to zero (lazily: the next contribution overwrites instead of adding).
  void zero_grad();
  // p -= lr * grad for every parameter.
  void sgd_step(float lr);

  // Microbatches with something still stashed (0 at the end of a step).
  size_t pending() const;
  // Kernel time per op type since construction, largest first (empty unless options.profile).
  std::vector<OpTime> profile() const;
  // Peak bytes on the backend above what the executor keeps resident (parameters, their
  // gradients, constants) since construction or reset_peak().
  int64_t peak_bytes() const;
  int64_t resident_bytes() const { return resident_bytes_; }
  void reset_peak();
  // Bytes of the distinct buffers kept for backward (declared saved tensors, output gradients
  // kept from B for W) over all microbatches in flight, now and at most since reset_peak().
  int64_t stash_bytes() const { return stash_bytes_; }
  int64_t peak_stash_bytes() const { return peak_stash_bytes_; }
  // The stage's memory, planned from lifetimes (what the device arena is sized from).
  const StageMemoryPlan& memory_plan() const { return mem_plan_; }

 private:
  struct NodeRun;
  struct Stash;
  struct StatsAcc;
  void update_running_stats(NodeRun& r, std::span<const Tensor> outs);
  void run_backward(int mb, std::span<const Tensor> output_grads, bool do_b, bool do_w, std::vector<Tensor>* input_grads);
  Tensor value_tensor(int vid, const std::vector<Tensor>& env) const;
  // A parameter or constant as kernels read it (a parameter's bf16 copy with bf16 compute).
  const Tensor& resident_input(int vid) const;
  void refresh_compute_copies();
  DType resident_input_dtype(int vid) const {
    return compute_copy_[static_cast<size_t>(vid)].defined() ? DType::BF16 : xdt_[static_cast<size_t>(vid)];
  }
  StageMemoryPlan plan_memory() const;

  const graph::Graph& g_;
  Backend& be_;
  ExecutorOptions opts_;
  std::vector<Fusion> fusions_;
  std::vector<NodeRun> runs_;
  std::vector<int> inputs_, outputs_, params_;
  std::vector<bool> input_grad_;
  std::vector<Tensor> resident_;  // by value id: parameters, buffers and constants
  std::vector<int> buffers_;
  std::vector<Tensor> compute_copy_;  // by value id: bf16 copies of parameters (bf16 compute)
  bool copies_stale_ = false;
  std::vector<DType> xdt_;        // by value id: the dtype of its tensors here
  StageMemoryPlan mem_plan_;
  std::vector<Tensor> grads_;     // by value id: parameter gradients
  std::vector<uint8_t> grad_zero_;  // by value id: the gradient is zero (its buffer not yet written)
  std::vector<uint8_t> dd_, wreq_;  // by value id: data-dependent gradient / weight-only gradient
  std::vector<int> last_use_;     // by value id: last position in runs_ that reads it
  std::vector<uint8_t> is_output_;
  std::map<int, std::unique_ptr<Stash>> stash_;
  void hold(const Tensor& t);
  void unhold(const Tensor& t);
  void unhold_all(std::vector<Tensor>& ts);
  std::map<const Storage*, int> held_;  // stash references per buffer
  int64_t stash_bytes_ = 0, peak_stash_bytes_ = 0;
  std::vector<OpTime> prof_;  // by graph::Op
  int64_t resident_bytes_ = 0;
  int64_t peak_base_ = 0;
  int64_t random_step_ = 0, first_microbatch_ = 0;
};

}  // namespace smp::runtime
