// Cost model: per-node forward, input-gradient (B) and weight-gradient (W) times on a device,
// stage memory, and the bytes that cross a cut. All sizes follow the microbatch size u: the
// graph is loaded at the global batch B, and every value reachable from a graph input is taken
// as proportional to the batch (bytes(u) = bytes(B) * u / B), every other value (parameters,
// constants, and activations computed from parameters only, e.g. Transpose(weight)) as fixed.
//
// Time of one pass of one node on a device (roofline):
//   t = max(FLOPs / peak FLOP/s (fp32 or bf16), bytes / memory bandwidth) + kernel overhead
// with the peak (compute-bound families) or the bandwidth (the rest) scaled by the kernel
// family's efficiency where the device has them (DeviceSpec::efficiency: a GPU's published ones).
// (no overhead for a pass that does not run: views, or a backward nothing needs). On a device
// with a kernel calibration (this machine, measured: cost/calibration.hpp) a pass is priced by its
// kernel family's measured curve at the pass's work (FLOPs of the products, bytes of the rest),
// the loss by the softmax curve. A profile (--profile) replaces the three times of every node it
// lists when its device and microbatch size match.
//
// Backward rules (from the registry's differentiable inputs). An input *needs a gradient* when
// it is a parameter, or an activation that depends (through differentiable inputs) on one;
// graph inputs (token ids, images) never do. A needed gradient is a *weight gradient* (W) when
// the input is a parameter or an activation computed from parameters only (Transpose(weight)),
// else an *input gradient* (B).
//   MatMul / Gemm / Conv: each needed gradient of the two operands costs the forward's product
//     FLOPs (2·M·N·K) and reads dY and the other operand, writes the gradient; a bias gradient is
//     a reduction of dY (one FLOP per output element) in W.
//   every other op: B (when any activation input needs a gradient) costs the forward's FLOPs and
//     reads dY and the saved tensors, writes the input gradients; W (when a weight input needs
//     one: LayerNorm scale / bias, a bias Add, an embedding Gather) is a reduction over dY, one
//     FLOP per output element, reading dY and the saved tensors and writing the weight gradient.
//   views (Reshape, Flatten, Squeeze, Unsqueeze, Identity) cost nothing either way.
//   tensor-parallel collectives (graph/tensor_parallel.hpp): TpAllReduce all-reduces its output
//     in the forward, TpCopy its gradient in the backward (B): a ring all-reduce over the
//     group's T devices on the host link, 2 (T - 1) / T x bytes / bandwidth + 2 (T - 1) x latency,
//     in the critical path (Megatron's all-reduces are not overlapped); on a GPU that is all
//     (NCCL reduces in place), a CPU worker also pays the copy through its memory.
//   loss: each float graph output is followed by a softmax cross-entropy (6 FLOPs per element,
//     reads the output once, forward and backward), charged to the node that produces it.
//
// Memory of a stage for one microbatch:
//   static = weights + gradients + optimizer state (sgd 0, momentum 1x, adamw 2x the weights),
//            + a bfloat16 copy of the weights (0.5x) with bf16 compute
// With bf16 compute (--dtype bf16) float32 activations are stored, sent and all-reduced as
// bfloat16 (2 bytes an element), as the CUDA backend runs them; weights, gradients, optimizer
// state and the data-parallel gradient all-reduce stay float32.
//   act    = saved tensors of its nodes (registry declaration, deduplicated, views resolved to the
//            tensor they alias) + the tensors it receives (stage inputs it consumes)
//   w_keep = with B / W split: what W still needs after B (the activation inputs of the nodes
//            with a weight gradient, and their output gradients)
//   workspace = the largest node's activation inputs + outputs
//   recompute: act = the received inputs only; one microbatch's full act is rebuilt during its
//            backward and counts as workspace; the stage pays one more forward.
//
// Optimizer step of a stage, once per step after its last backward: the gradient norm (copy the
// gradients out, sum their squares) and the update. Measured per parameter where the profile
// applies to the device; else a roofline over fp32 parameters: bytes 12 (norm) + 12 (sgd: read
// w, g, write w) + 8 per state tensor (read and write: momentum 1, adamw 2), FLOPs 2 (norm) +
// 2 (sgd) / 3 (momentum) / 12 (adamw).
#pragma once

#include "cost/cluster.hpp"
#include "cost/profile.hpp"
#include "graph/graph.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace smp::cost {

enum class Optimizer { SGD, Momentum, AdamW };
// "sgd" | "momentum" | "adamw" (also "adam"); bad input naming `where` otherwise.
Optimizer parse_optimizer(const std::string& s, const std::string& where = "--optimizer");
std::string_view optimizer_name(Optimizer o);
double optimizer_factor(Optimizer o);  // optimizer state bytes per weight byte

// q(u) = c + b * u for a microbatch of u samples.
struct Affine {
  double c = 0, b = 0;
  double at(double u) const { return c + b * u; }
  Affine& operator+=(const Affine& o) { c += o.c; b += o.b; return *this; }
};

struct Pass {
  Affine flops, bytes;
  bool runs = false;  // a kernel is launched (pays the overhead)
};

struct NodeModel {
  Pass fwd, bwd_in, bwd_w;
  // Of fwd / bwd_in, the softmax cross-entropy charged to a float graph output the node makes.
  Pass loss_fwd, loss_bwd;
  int family = -1;                   // cost::KernelFamily (calibrated devices, efficiencies); -1: none (free, or roofline)
  Affine rows;                       // a GEMM's output rows (M of [M, K] x [K, N]); 0: not a GEMM
  Affine allreduce_fwd, allreduce_bwd;  // bytes all-reduced over the tensor-parallel group
  Affine workspace;                  // activation inputs + outputs
  std::vector<int> saved;            // storage roots of the saved activations
  std::vector<int> w_keep;           // storage roots W needs after B
  std::vector<int> params;           // parameter value ids it reads
};

struct PassTimes {
  double f = 0, b = 0, w = 0;
  double total() const { return f + b + w; }
  PassTimes& operator+=(const PassTimes& o) { f += o.f; b += o.b; w += o.w; return *this; }
};

struct CostOptions {
  Precision precision = Precision::FP32;
  Optimizer optimizer = Optimizer::AdamW;
  bool loss = true;                 // charge a softmax cross-entropy to each float output
  const Profile* profile = nullptr;
  // Tensor parallelism: the group size the graph was split for and the link its all-reduces
  // use (the host's).
  int tp_degree = 1;
  LinkSpec tp_link;
};

// Ring all-reduce of `bytes` over `ranks` devices joined by `link`.
double ring_allreduce_s(double bytes, int ranks, const LinkSpec& link);

class GraphCost {
 public:
  GraphCost(const graph::Graph& g, int64_t batch_size, const CostOptions& opt);

  const graph::Graph& graph() const { return *g_; }
  const CostOptions& options() const { return opt_; }
  int64_t batch_size() const { return batch_; }
  int nodes() const { return static_cast<int>(g_->nodes.size()); }
  const NodeModel& node(int i) const { return model_[static_cast<size_t>(i)]; }

  bool batch_dependent(int value) const { return batch_dep_[static_cast<size_t>(value)] != 0; }
  bool needs_grad(int value) const { return needs_grad_[static_cast<size_t>(value)] != 0; }
  int storage_root(int value) const { return root_[static_cast<size_t>(value)]; }
  // Bytes at microbatch u, in the dtype the executor stores the value in: with bf16 compute, float32
  // activations are bfloat16 (runtime::exec_dtype); inputs, parameters and constants keep theirs.
  Affine value_bytes(int value) const;

  // One microbatch of u samples on `dev`; `measured` set when the profile supplied it.
  // `in_flight` in [0, 1] moves a measured time from the profile's one-microbatch-in-flight value
  // (0) to its in_flight_microbatches value (1), where the profile has both.
  // On a calibrated device, `busy` is how many workers of this machine compute at once on average
  // (the plan's), which slows each one down (KernelCalibration::slowdown); 1 prices a worker alone.
  PassTimes node_time(int node, double u, const DeviceSpec& dev, bool* measured = nullptr, double in_flight = 0,
                      double busy = 1) const;
  // The profile's in_flight_microbatches where it applies to `dev` at u, else 0.
  int profile_in_flight(const DeviceSpec& dev, double u) const;
  // node_time without the tensor-parallel all-reduces.
  PassTimes compute_time(int node, double u, const DeviceSpec& dev, bool* measured = nullptr, double in_flight = 0,
                         double busy = 1) const;
  // True when the profile applies to this device at this microbatch size.
  bool profile_applies(const DeviceSpec& dev, double u) const;
  // The optimizer step of a stage holding `param_bytes` of (fp32) weights on `dev`; `measured`
  // set when the profile supplied it.
  // On a calibrated device `busy` workers take their step at once (a memory-bound kernel's slow-down).
  double optimizer_step_s(double param_bytes, const DeviceSpec& dev, bool* measured = nullptr, double busy = 1) const;

  // Values crossing the cut before node position q (0 < q < nodes): activations produced at
  // a position < q and consumed at >= q (skip connections included; graph inputs excluded: each
  // stage reads them from the data). Ascending value ids.
  std::vector<int> crossing(int q) const;
  // Bytes crossing the cut before q (forward) and the gradient bytes coming back.
  Affine cut_bytes(int q) const { return cut_act_[static_cast<size_t>(q)]; }
  Affine cut_grad_bytes(int q) const { return cut_grad_[static_cast<size_t>(q)]; }
  int cut_tensors(int q) const { return cut_count_[static_cast<size_t>(q)]; }
  // Of those, the ones computed from parameters only (e.g. Transpose(weight)): a cut there would
  // send a weight-sized tensor every microbatch; the planner avoids such positions.
  int cut_fixed_tensors(int q) const { return cut_fixed_[static_cast<size_t>(q)]; }

  // Stage [a, b) memory pieces (for one microbatch where it applies).
  struct StageMemory {
    double param_bytes = 0;      // weights (deduplicated)
    Affine act;                  // saved + received
    Affine received;             // stage inputs it consumes (activations and graph inputs)
    Affine w_keep;
    Affine workspace;            // evaluated at u by stage_memory(); max over nodes
  };
  StageMemory stage_memory(int a, int b, double u) const;
  // Bytes per weight byte of the weights and their gradients: 2, or 2.5 with bf16 compute (the
  // float32 master weights keep a bfloat16 copy, as the executor's memory plan does).
  double weight_grad_factor() const { return opt_.precision == Precision::BF16 ? 2.5 : 2.0; }
  double static_bytes(double param_bytes) const { return param_bytes * (weight_grad_factor() + optimizer_factor(opt_.optimizer)); }

  // Stage [a, b) input (received) and output (sent) tensors, ascending value ids.
  std::vector<int> stage_inputs(int a, int b) const;   // produced before a (or graph inputs), consumed in [a, b)
  std::vector<int> stage_outputs(int a, int b) const;  // produced in [a, b), consumed at >= b

 private:
  PassTimes calibrated_time(const NodeModel& m, double u, const DeviceSpec& dev, double busy) const;

  const graph::Graph* g_;
  int64_t batch_;
  CostOptions opt_;
  std::vector<NodeModel> model_;
  std::vector<uint8_t> batch_dep_, needs_grad_;
  std::vector<int> root_;
  std::vector<int> last_use_;  // per value: last consumer position (-1 none)
  std::vector<Affine> cut_act_, cut_grad_;
  std::vector<int> cut_count_, cut_fixed_;
};

}  // namespace smp::cost
