// The backend interface: buffers and kernels of one kind of device. The stage executor only
// talks to this interface, so a CUDA backend slots in beside the CPU one (no device headers here).
//
// Kernels: one table per backend, indexed by graph::Op (the op registry's enum), one entry per op
// with a prepare step (checks attributes and dtypes when a stage is loaded, never while running),
// a forward and a backward. Conventions (llm.c): outputs first, then inputs; gradients `d...`.
#pragma once

#include "core/clock.hpp"
#include "graph/graph.hpp"
#include "graph/op_registry.hpp"
#include "runtime/collectives.hpp"
#include "runtime/tensor.hpp"
#include "runtime/update_rule.hpp"

#include <algorithm>
#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace smp::runtime {

class Backend;

// What a kernel knows about its node at load time.
class NodeView {
 public:
  NodeView(const graph::Graph& g, const graph::Node& n, graph::Op op) : g_(g), n_(n), op_(op) {}
  const graph::Graph& graph() const { return g_; }
  const graph::Node& node() const { return n_; }
  graph::Op op() const { return op_; }
  int num_inputs() const { return static_cast<int>(n_.inputs.size()); }
  int num_outputs() const { return static_cast<int>(n_.outputs.size()); }
  bool has_input(int i) const { return i < num_inputs() && n_.inputs[static_cast<size_t>(i)] >= 0; }
  bool has_output(int i) const { return i < num_outputs() && n_.outputs[static_cast<size_t>(i)] >= 0; }
  const graph::Value& input(int i) const;
  const graph::Value& output(int i) const;
  // The input's bytes when it is a constant (or a parameter loaded with weights): nullptr otherwise.
  const graph::TensorData* constant_input(int i) const;
  // Integers of a constant input; false when the input is absent or not constant.
  bool constant_ints(int i, std::vector<int64_t>& out) const;
  // Load-time rejection: "node <name> (<op>): <what>", bad input.
  [[noreturn]] void fail(const std::string& what) const;
  void require_dtype(const graph::Value& v, std::initializer_list<DType> ok, const char* role) const;

 private:
  const graph::Graph& g_;
  const graph::Node& n_;
  graph::Op op_;
};

// How an op with running statistics (graph::OpDef::state: BatchNormalization with
// training_mode = 1) fills its statistics outputs. It always normalizes with the batch's own
// statistics; the outputs are
//   Onnx:     the updated running mean and variance, with the batch's biased variance (ONNX's
//             definition; smp-run --forward),
//   Unbiased: the same with the batch's unbiased variance (PyTorch's running_var; training),
//   Batch:    the batch's mean and biased variance themselves (the executor defers the update).
enum class StatsOutput { Onnx, Unbiased, Batch };

// What a device backend builds for one node at load (descriptors, chosen algorithms); owned by
// the node's KernelState.
struct DeviceState {
  virtual ~DeviceState() = default;
};

// Parsed attributes and static shapes of one node; made by prepare, read-only afterwards (shared
// by every microbatch). Kernels derive their own state from it.
struct KernelState {
  virtual ~KernelState() = default;
  std::string node_name;
  std::vector<Shape> in_shapes, out_shapes;
  // The dtypes the tensors have at run time (with bf16 compute, float activations are bf16 while
  // the graph says float32).
  std::vector<DType> in_dtypes, out_dtypes;
  StatsOutput stats = StatsOutput::Onnx;  // set by the executor after prepare
  // The dtype matrix products and convolutions compute in (F32 or BF16); operands of another
  // float dtype are converted first.
  DType compute = DType::F32;
  std::unique_ptr<DeviceState> device;  // set by the kernel's setup step, if it has one
};

struct ExecContext {
  Backend* backend = nullptr;
  // The tensor-parallel group of the stage (nullptr when the graph was not split).
  Collectives* collectives = nullptr;
  // Key of this node's random stream for this microbatch (Dropout's mask): a function of the
  // run's seed, the step, the global microbatch index and the node only, so that the forward and
  // the backward, and a pipelined and a sequential run, draw the same numbers. See random.hpp.
  uint64_t random_key = 0;
};

// Backward of one node. Only the forward tensors the registry declares saved are defined in
// `in` / `out`. dout[i] undefined: no gradient reaches output i (zero). din[i] defined: wanted,
// already allocated with input i's shape; accumulate[i] says add into it, else overwrite.
struct GradIO {
  std::span<const Tensor> in;
  std::span<const Tensor> out;
  std::span<const Tensor> dout;
  std::span<Tensor> din;
  std::span<const uint8_t> accumulate;
};

using PrepareFn = std::unique_ptr<KernelState> (*)(const NodeView& n);
using ForwardFn = void (*)(const KernelState& s, ExecContext& ctx, std::span<Tensor> out,
                           std::span<const Tensor> in);
using BackwardFn = void (*)(const KernelState& s, ExecContext& ctx, const GradIO& io);
// Load-time work on the device after prepare (descriptors, algorithm choice); may fill s.device.
using SetupFn = void (*)(KernelState& s, ExecContext& ctx);

enum KernelFlags : uint32_t {
  kNone = 0,
  kView = 1,  // forward makes out[0] a view of in[0]; the executor allocates nothing for it
};

struct OpKernel {
  graph::Op op;
  PrepareFn prepare;    // nullptr: the backend has no kernel for this op
  ForwardFn forward;
  BackwardFn backward;  // nullptr: no gradient rule (the op is not differentiable here)
  uint32_t flags;
  SetupFn setup;        // nullptr: nothing to do on the device at load
};

using KernelTable = std::array<OpKernel, static_cast<size_t>(graph::Op::kCount)>;

struct MemoryStats {
  int64_t live_bytes = 0;   // bytes of live tensors
  int64_t peak_bytes = 0;   // their most since the last reset_peak()
  int64_t allocations = 0;  // tensors allocated
  // Device backends: bytes obtained from the device (cudaMalloc) and how many times it was
  // asked; the CPU backend reports 0.
  int64_t reserved_bytes = 0;
  int64_t device_allocations = 0;
};

// Where a buffer lives on a device backend: long-lived buffers (parameters, their gradients,
// optimizer state) each in one allocation of their own, everything else in the activation
// arena. The CPU backend ignores pools.
enum class MemoryPool : uint8_t { Activations, Parameters, Gradients, OptimizerState, kCount };
// The room a tensor of `bytes` takes in a pool (device backends hand out 256-byte units).
inline int64_t pool_bytes(int64_t bytes) { return (std::max<int64_t>(bytes, 1) + 255) / 256 * 256; }

// The update on host floats (the CPU backend's, and the reference the device kernels follow).
// s0 / s1: the optimizer state (momentum buffer; AdamW's moments), n elements each or nullptr.
void update_host(const UpdateRule& r, float* p, const float* g, float* s0, float* s1, int64_t n);
// Sum of squares accumulated in double, in element order.
double sum_of_squares_host(const float* g, int64_t n);

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string_view name() const = 0;
  virtual const KernelTable& kernels() const = 0;

  // Buffers (64-byte aligned, row-major).
  virtual Tensor empty(DType dtype, const Shape& shape) = 0;
  virtual Tensor zeros(DType dtype, const Shape& shape) = 0;
  virtual Tensor from_host(DType dtype, const Shape& shape, const void* data) = 0;
  virtual void to_host(const Tensor& t, void* dst) = 0;
  virtual void fill_zero(Tensor& t) = 0;
  virtual void copy(Tensor& dst, const Tensor& src) = 0;
  // y += alpha * x (elementwise, same shape; f32): gradient accumulation, SGD.
  virtual void axpy(float alpha, const Tensor& x, Tensor& y) = 0;
  // x *= alpha (f32)
  virtual void scale(float alpha, Tensor& x) = 0;
  // dst = src converted to dst's dtype (same element count).
  virtual void convert(Tensor& dst, const Tensor& src) = 0;
  // Waits for the work queued so far (a device backend runs asynchronously).
  virtual void synchronize() {}
  // The queue the backend's work runs on, for a device communicator to order its transfers
  // against (a cudaStream_t on CUDA); nullptr on the CPU.
  virtual void* native_stream() const { return nullptr; }

  // Losses (runtime/loss.hpp checks the arguments first). Cross-entropy over the last axis of
  // `logits` with integer class labels, mean over the label positions; squared error averaged
  // over all elements. Both return the unscaled mean loss and write grad = d(scale * loss)/d(x).
  virtual double softmax_cross_entropy(const Tensor& logits, const Tensor& labels, float scale, Tensor& grad) = 0;
  virtual double squared_error(const Tensor& pred, const Tensor& target, float scale, Tensor& grad) = 0;

  // Optimizer step of one parameter, in place (slots: the state update_host names; undefined
  // when the rule needs none). Sum of the squares of every element of `ts` (f32), in double.
  virtual void update(const UpdateRule& r, Tensor& param, const Tensor& grad, Tensor& slot0, Tensor& slot1) = 0;
  virtual double sum_of_squares(std::span<const Tensor> ts) = 0;

  // Memory pools: allocations made while `pool` is selected come from it; reserve() makes room
  // for `bytes` more in it at once (a device backend: one allocation).
  virtual void reserve(MemoryPool pool, int64_t bytes) {}
  MemoryPool pool() const { return pool_; }
  void set_pool(MemoryPool p) { pool_ = p; }

  virtual void set_num_threads(int n) = 0;
  virtual int num_threads() const = 0;
  // CPU time so far of the threads that run this backend's kernels when the calling thread
  // launches them: the caller's own, and the CPU backend adds its pool's. Not the process's
  // other threads (a communicator's progress thread, MPI's own), so that over a kernel's wall
  // time it is at most num_threads() and less only when a thread waited for a core.
  virtual double compute_cpu_s() const { return thread_cpu_s(); }
  // "cpu (4 threads)", "cuda:0 (NVIDIA H200)"
  virtual std::string device_name() const = 0;

  virtual MemoryStats memory() const;
  void reset_peak();

 protected:
  std::shared_ptr<MemoryCounter> counter_ = std::make_shared<MemoryCounter>();
  MemoryPool pool_ = MemoryPool::Activations;
};

// Selects a memory pool for the allocations of a scope.
class PoolScope {
 public:
  PoolScope(Backend& be, MemoryPool p) : be_(be), saved_(be.pool()) { be.set_pool(p); }
  ~PoolScope() { be_.set_pool(saved_); }
  PoolScope(const PoolScope&) = delete;
  PoolScope& operator=(const PoolScope&) = delete;

 private:
  Backend& be_;
  MemoryPool saved_;
};

// Element type check for kernels and the executor.
inline bool is_f32(const Tensor& t) { return t.dtype() == DType::F32; }

}  // namespace smp::runtime
