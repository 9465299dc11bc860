#include "runtime/executor.hpp"

#include "graph/loader.hpp"
#include "runtime/cpu/common.hpp"
#include "runtime/random.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <unordered_set>

namespace smp::runtime {

using graph::Op;
using graph::ValueKind;

struct StageExecutor::NodeRun {
  int node = -1;
  Op op{};
  const OpKernel* kernel = nullptr;
  std::unique_ptr<KernelState> state;
  std::vector<int> in, out;
  uint32_t diff = 0, saved_in = 0, saved_out = 0;
  bool has_b = false, has_w = false;  // a data-dependent / weight-only input gets a gradient
  std::vector<std::pair<int, int>> updates;  // running statistics: (output index, buffer value id)
  std::unique_ptr<StatsAcc> acc;             // RunningStats::Deferred: the statistics since the last commit
  // Inputs whose gradient is the output's gradient unchanged (Add / Sub's first operand without
  // broadcasting, the reshaping views, Identity): the backward may hand the output gradient's
  // buffer on instead of copying it (see run_backward).
  uint32_t pass_in = 0;
};

// One node's deferred running statistics (mean, variance per channel, as graph::OpDef::state
// orders them). Sums are taken around the running mean at the last commit (identical on every
// replica), so that the variance comes out without cancellation and the sums add across
// replicas.
struct StageExecutor::StatsAcc {
  int64_t channels = 0;
  double per_microbatch = 0;  // elements per channel in one forward
  double momentum = 0.9;
  double n = 0;
  std::vector<double> s1, s2;  // sum of n·(mean − ref), sum of n·(var + (mean − ref)²)
  void reset() {
    n = 0;
    s1.assign(static_cast<size_t>(channels), 0.0);
    s2.assign(static_cast<size_t>(channels), 0.0);
  }
};

namespace {
uint32_t passthrough_inputs(Op op, const graph::Graph& g, const graph::Node& n) {
  if (n.outputs.empty() || n.outputs[0] < 0 || n.inputs.empty()) return 0;
  const graph::Value& y = g.value(n.outputs[0]);
  auto same = [&](size_t i) { return i < n.inputs.size() && n.inputs[i] >= 0 && g.value(n.inputs[i]).shape == y.shape; };
  switch (op) {
    case Op::Add: return (same(0) ? 1u : 0u) | (same(1) ? 2u : 0u);
    case Op::Sub: return same(0) ? 1u : 0u;
    case Op::Reshape: case Op::Flatten: case Op::Squeeze: case Op::Unsqueeze: case Op::Identity:
      return n.inputs[0] >= 0 && g.value(n.inputs[0]).numel() == y.numel() ? 1u : 0u;
    default: return 0;
  }
}
}  // namespace

struct StageExecutor::Stash {
  std::vector<std::vector<Tensor>> saved_in, saved_out;  // per run position
  std::vector<std::vector<Tensor>> w_dout;                // per run position, kept from B for W
  std::vector<uint8_t> b_done;
  std::vector<std::pair<int, Tensor>> w_seeds;  // gradients of weight-only stage outputs, from B for W
  uint64_t random_key = 0;  // the microbatch's random streams (random::microbatch_key)
};

namespace {
bool is_float(DType d) { return d == DType::F32; }
}  // namespace

DType exec_dtype(const graph::Value& v, DType compute) {
  if (compute == DType::BF16 && v.dtype == DType::F32 && v.kind == ValueKind::Activation) return DType::BF16;
  return v.dtype;
}

int64_t StageMemoryPlan::arena_bytes(int in_flight) const {
  const int64_t per_mb = stash_bytes + w_keep_bytes + boundary_bytes;
  const int64_t one = std::max(forward_peak_bytes, stash_bytes + backward_peak_bytes) + scratch_bytes + boundary_bytes;
  const int64_t total = static_cast<int64_t>(std::max(in_flight, 1) - 1) * per_mb + one;
  return total + total / 10 + (int64_t{16} << 20);  // 10 % for the allocator's rounding and order, 16 MiB of small tensors
}

StageExecutor::StageExecutor(const graph::Graph& g, Backend& backend, ExecutorOptions opts)
    : StageExecutor(g, [&] {
        std::vector<int> all(g.nodes.size());
        for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<int>(i);
        return all;
      }(), backend, opts) {}

StageExecutor::StageExecutor(const graph::Graph& g, std::vector<int> nodes, Backend& backend, ExecutorOptions opts)
    : g_(g), be_(backend), opts_(opts) {
  size_t nv = g.values.size();
  if (opts.compute_dtype != DType::F32 && opts.compute_dtype != DType::BF16)
    throw_bad_input("compute dtype", fmt::format("{} is not supported (float32, bfloat16)", dtype_name(opts.compute_dtype)));
  if (opts.compute_dtype == DType::BF16 && be_.name() == "cpu")
    throw_bad_input("compute dtype", "the cpu backend computes in float32 only", "train bf16 on the cuda backend");
  xdt_.resize(nv);
  for (size_t v = 0; v < nv; ++v) xdt_[v] = exec_dtype(g.values[v], opts.compute_dtype);
  resident_.resize(nv);
  compute_copy_.resize(nv);
  grads_.resize(nv);
  grad_zero_.assign(nv, 0);
  dd_.assign(nv, 0);
  wreq_.assign(nv, 0);
  last_use_.assign(nv, -1);
  is_output_.assign(nv, 0);
  std::vector<uint8_t> produced(nv, 0), in_stage(g.nodes.size(), 0);
  for (size_t k = 1; k < nodes.size(); ++k)
    SMP_CHECK(nodes[k] > nodes[k - 1], "stage nodes must be in topological order");
  for (int ni : nodes) in_stage[static_cast<size_t>(ni)] = 1;
  const KernelTable& table = be_.kernels();

  // Fused chains: the fused op runs at the chain's last node, the others are skipped.
  std::vector<int> fused_at(g.nodes.size(), -1);  // fusion index at its last node; -2: inside a chain
  if (opts.fuse) {
    for (int ni : nodes) SMP_CHECK(ni >= 0 && static_cast<size_t>(ni) < g.nodes.size(), "stage node {} out of range", ni);
    fusions_ = find_fusions(g, nodes, be_.kernels());
    for (size_t f = 0; f < fusions_.size(); ++f) {
      for (int ni : fusions_[f].nodes) fused_at[static_cast<size_t>(ni)] = -2;
      fused_at[static_cast<size_t>(fusions_[f].nodes.back())] = static_cast<int>(f);
    }
  }

  // Kernels, load-time checks.
  for (int ni : nodes) {
    int fi = fused_at.at(static_cast<size_t>(ni));
    if (fi == -2) continue;
    const graph::Node& n = fi >= 0 ? fusions_[static_cast<size_t>(fi)].node : g.nodes.at(static_cast<size_t>(ni));
    std::string where = fmt::format("node {} ({})", n.name, n.op_type);
    const graph::OpDef* def = fi >= 0 ? &graph::op_def(fusions_[static_cast<size_t>(fi)].op)
                              : (n.domain.empty() || n.domain == "ai.onnx") ? graph::find_op(n.op_type) : nullptr;
    if (!def) throw_bad_input(where, fmt::format("op {}{} is not supported by the {} backend", n.domain.empty() ? "" : n.domain + ".", n.op_type, be_.name()));
    const OpKernel& k = table[static_cast<size_t>(def->op)];
    if (!k.prepare) throw_bad_input(where, fmt::format("the {} backend has no kernel for this op", be_.name()));
    NodeRun r;
    r.node = ni;
    r.op = def->op;
    r.kernel = &k;
    r.in = n.inputs;
    r.out = n.outputs;
    r.diff = def->differentiable_inputs;
    r.saved_in = def->saved_inputs;
    r.saved_out = def->saved_outputs;
    r.pass_in = passthrough_inputs(def->op, g, n);
    if ((def->op == Op::TpCopy || def->op == Op::TpAllReduce || def->op == Op::TpSoftmaxCrossEntropyLoss) && !opts.collectives)
      throw_bad_input(where, "a tensor-parallel collective, but the stage has no tensor-parallel group",
                      "run the graph split by graph::shard_graph with ExecutorOptions::collectives");
    NodeView view(g, n, def->op);
    r.state = k.prepare(view);
    cpu::fill_shapes(*r.state, view);
    // Running statistics: the outputs that update the stage's buffers (in Onnx mode none do).
    if (opts.running_stats != ExecutorOptions::RunningStats::Onnx)
      for (const graph::StateUpdate& su : def->state) {
        if (su.output < 0 || static_cast<size_t>(su.output) >= n.outputs.size() || n.outputs[static_cast<size_t>(su.output)] < 0)
          continue;
        if (static_cast<size_t>(su.input) >= n.inputs.size() || n.inputs[static_cast<size_t>(su.input)] < 0) continue;
        int b = n.inputs[static_cast<size_t>(su.input)];
        if (g.value(b).kind == ValueKind::Buffer) r.updates.push_back({su.output, b});
      }
    if (!r.updates.empty()) {
      const Shape& x = g.value(n.inputs.at(0)).shape;
      int64_t channels = x.size() >= 2 ? x[1] : 1;
      double per_channel = static_cast<double>(smp::numel(x)) / static_cast<double>(std::max<int64_t>(channels, 1));
      if (per_channel < 2)
        throw_bad_input(where, fmt::format("one value per channel ({}) in a training forward: the batch has no variance "
                                           "to update the running statistics with",
                                           shape_str(x)),
                        "train with microbatches of 2 or more samples (PyTorch refuses this too)");
      if (opts.running_stats == ExecutorOptions::RunningStats::Deferred) {
        if (r.updates.size() != 2 || r.updates[0].first != def->state[0].output)
          throw_bad_input(where, "deferred running statistics need both the running mean and variance outputs");
        r.acc = std::make_unique<StatsAcc>();
        r.acc->channels = channels;
        r.acc->per_microbatch = per_channel;
        r.acc->momentum = n.attr_float("momentum", 0.9);
        r.acc->reset();
      }
      r.state->stats = opts.running_stats == ExecutorOptions::RunningStats::Deferred ? StatsOutput::Batch : StatsOutput::Unbiased;
    }
    r.state->compute = opts.compute_dtype;
    for (int o : n.outputs)
      if (o >= 0) produced[static_cast<size_t>(o)] = 1;
    runs_.push_back(std::move(r));
  }

  // Boundary inputs, parameters, constants; last forward uses.
  std::vector<uint8_t> seen(nv, 0);
  std::vector<int> first_use_order;
  std::vector<std::pair<int, std::shared_ptr<const graph::TensorData>>> residents;  // value, its data
  for (size_t p = 0; p < runs_.size(); ++p)
    for (int v : runs_[p].in) {
      if (v < 0) continue;
      last_use_[static_cast<size_t>(v)] = static_cast<int>(p);
      if (produced[static_cast<size_t>(v)] || seen[static_cast<size_t>(v)]) continue;
      seen[static_cast<size_t>(v)] = 1;
      const graph::Value& val = g.value(v);
      if (val.kind == ValueKind::Parameter || val.kind == ValueKind::Constant || val.kind == ValueKind::Buffer) {
        std::shared_ptr<const graph::TensorData> data = val.data;
        if (!data && val.external && val.kind != ValueKind::Parameter) data = graph::read_tensor(val);
        if (!data) {
          if (val.kind == ValueKind::Parameter)
            throw_bad_input(val.name, "parameter has no data", "load the graph with its weights");
          throw_bad_input(val.name, "constant has no data");
        }
        SMP_CHECK(data->dtype == val.dtype && data->shape == val.shape, "value {}: data of {}{} for {}{}",
                  val.name, dtype_name(data->dtype), shape_str(data->shape), dtype_name(val.dtype), shape_str(val.shape));
        residents.push_back({v, std::move(data)});
        if (val.kind == ValueKind::Buffer) buffers_.push_back(v);
        if (val.kind == ValueKind::Parameter && is_float(val.dtype)) {
          params_.push_back(v);
          grad_zero_[static_cast<size_t>(v)] = 1;
          wreq_[static_cast<size_t>(v)] = 1;
        }
      } else {
        first_use_order.push_back(v);
      }
    }
  // Parameters (and their bf16 copies), their gradients, constants: one reservation each.
  {
    const bool copies = opts.compute_dtype == DType::BF16;
    int64_t pbytes = 0, gbytes = 0;
    for (int v : params_) {
      pbytes += pool_bytes(g.value(v).bytes()) + (copies ? pool_bytes(g.value(v).numel() * 2) : 0);
      gbytes += pool_bytes(g.value(v).bytes());
    }
    be_.reserve(MemoryPool::Parameters, pbytes);
    be_.reserve(MemoryPool::Gradients, gbytes);
    for (const auto& [v, data] : residents) {
      const graph::Value& val = g.value(v);
      const bool param = val.kind == ValueKind::Parameter && is_float(val.dtype);
      PoolScope pool(be_, param ? MemoryPool::Parameters : MemoryPool::Activations);
      resident_[static_cast<size_t>(v)] = be_.from_host(val.dtype, val.shape, data->bytes.data());
      if (param && copies) compute_copy_[static_cast<size_t>(v)] = be_.empty(DType::BF16, val.shape);
    }
    PoolScope pool(be_, MemoryPool::Gradients);
    for (int v : params_) grads_[static_cast<size_t>(v)] = be_.empty(g.value(v).dtype, g.value(v).shape);
    copies_stale_ = copies;
  }
  for (int v : g.inputs)
    if (std::find(first_use_order.begin(), first_use_order.end(), v) != first_use_order.end()) inputs_.push_back(v);
  for (int v : first_use_order)
    if (std::find(inputs_.begin(), inputs_.end(), v) == inputs_.end()) inputs_.push_back(v);
  for (int v : inputs_) {
    const graph::Value& val = g.value(v);
    bool grad = val.kind == ValueKind::Activation && is_float(val.dtype);
    input_grad_.push_back(grad);
    if (grad) dd_[static_cast<size_t>(v)] = 1;
  }
  std::sort(params_.begin(), params_.end());
  std::sort(buffers_.begin(), buffers_.end());

  // Outputs: produced here and used outside the stage or graph outputs.
  for (const NodeRun& r : runs_)
    for (int o : r.out) {
      if (o < 0) continue;
      const graph::Value& val = g.value(o);
      bool outside = val.is_output;
      for (int c : val.consumers)
        if (!in_stage[static_cast<size_t>(c)]) outside = true;
      if (outside) {
        outputs_.push_back(o);
        is_output_[static_cast<size_t>(o)] = 1;
      }
    }

  // Gradient flow: data-dependent (B) and weight-only (W) values.
  for (NodeRun& r : runs_) {
    bool any_dd = false, any_w = false;
    for (size_t i = 0; i < r.in.size(); ++i) {
      int v = r.in[i];
      if (v < 0 || !graph::mask_has(r.diff, i)) continue;
      if (dd_[static_cast<size_t>(v)]) any_dd = true;
      else if (wreq_[static_cast<size_t>(v)]) any_w = true;
    }
    r.has_b = any_dd;
    r.has_w = any_w;
    for (int o : r.out) {
      if (o < 0 || !is_float(g.value(o).dtype)) continue;
      if (any_dd) dd_[static_cast<size_t>(o)] = 1;
      else if (any_w) wreq_[static_cast<size_t>(o)] = 1;
    }
    if (opts.training && (r.has_b || r.has_w) && !r.kernel->backward) {
      const graph::Node& n = g.nodes[static_cast<size_t>(r.node)];
      throw_bad_input(fmt::format("node {} ({})", n.name, n.op_type), "no gradient rule for this op, and a gradient must flow through it");
    }
  }
  prof_.resize(static_cast<size_t>(Op::kCount));
  for (size_t i = 0; i < prof_.size(); ++i) prof_[i].op = std::string(graph::op_def(static_cast<Op>(i)).type);

  // The dtypes kernels see at run time; then the device's load-time work (descriptors,
  // algorithms), once the activation arena is reserved.
  for (NodeRun& r : runs_) {
    for (size_t i = 0; i < r.in.size(); ++i)
      if (r.in[i] >= 0) r.state->in_dtypes[i] = resident_input_dtype(r.in[i]);
    for (size_t k = 0; k < r.out.size(); ++k)
      if (r.out[k] >= 0) r.state->out_dtypes[k] = xdt_[static_cast<size_t>(r.out[k])];
  }
  mem_plan_ = plan_memory();
  be_.reserve(MemoryPool::Activations, mem_plan_.arena_bytes(opts.microbatches_in_flight));
  ExecContext ctx{&be_, opts_.collectives};
  for (NodeRun& r : runs_)
    if (r.kernel->setup) r.kernel->setup(*r.state, ctx);
  resident_bytes_ = be_.memory().live_bytes;
  reset_peak();
}

namespace {
double now_s() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
}  // namespace

void StageExecutor::hold(const Tensor& t) {
  if (!t.defined()) return;
  if (held_[t.storage().get()]++ == 0) {
    stash_bytes_ += t.storage()->bytes;
    peak_stash_bytes_ = std::max(peak_stash_bytes_, stash_bytes_);
  }
}

void StageExecutor::unhold(const Tensor& t) {
  if (!t.defined()) return;
  auto it = held_.find(t.storage().get());
  SMP_CHECK(it != held_.end(), "stash accounting: buffer not held");
  if (--it->second == 0) {
    stash_bytes_ -= t.storage()->bytes;
    held_.erase(it);
  }
}

void StageExecutor::unhold_all(std::vector<Tensor>& ts) {
  for (const Tensor& t : ts) unhold(t);
  ts.clear();
}

std::vector<OpTime> StageExecutor::profile() const {
  std::vector<OpTime> r;
  for (const auto& p : prof_)
    if (p.calls > 0) r.push_back(p);
  std::sort(r.begin(), r.end(), [](const OpTime& a, const OpTime& b) { return a.forward_s + a.backward_s > b.forward_s + b.backward_s; });
  return r;
}

StageExecutor::~StageExecutor() = default;

Tensor& StageExecutor::parameter(int v) {
  SMP_CHECK(v >= 0 && static_cast<size_t>(v) < resident_.size() && grads_[static_cast<size_t>(v)].defined(), "value {} is not a parameter of this stage", v);
  if (compute_copy_[static_cast<size_t>(v)].defined()) copies_stale_ = true;
  return resident_[static_cast<size_t>(v)];
}

const Tensor& StageExecutor::resident_input(int v) const {
  const Tensor& c = compute_copy_[static_cast<size_t>(v)];
  return c.defined() ? c : resident_[static_cast<size_t>(v)];
}

void StageExecutor::refresh_compute_copies() {
  if (!copies_stale_) return;
  for (int v : params_)
    if (compute_copy_[static_cast<size_t>(v)].defined()) be_.convert(compute_copy_[static_cast<size_t>(v)], resident_[static_cast<size_t>(v)]);
  copies_stale_ = false;
}

Tensor& StageExecutor::gradient(int v) {
  SMP_CHECK(v >= 0 && static_cast<size_t>(v) < grads_.size() && grads_[static_cast<size_t>(v)].defined(), "value {} is not a parameter of this stage", v);
  if (grad_zero_[static_cast<size_t>(v)]) {
    be_.fill_zero(grads_[static_cast<size_t>(v)]);
    grad_zero_[static_cast<size_t>(v)] = 0;
  }
  return grads_[static_cast<size_t>(v)];
}

Tensor& StageExecutor::buffer(int v) {
  SMP_CHECK(std::binary_search(buffers_.begin(), buffers_.end(), v), "value {} is not a buffer of this stage", v);
  return resident_[static_cast<size_t>(v)];
}

void StageExecutor::set_random_step(int64_t step, int64_t first_microbatch) {
  random_step_ = step;
  first_microbatch_ = first_microbatch;
}

void StageExecutor::update_running_stats(NodeRun& r, std::span<const Tensor> outs) {
  if (!r.acc) {  // PerMicrobatch: the outputs are the new running values
    for (auto [k, b] : r.updates) be_.copy(resident_[static_cast<size_t>(b)], outs[static_cast<size_t>(k)]);
    return;
  }
  StatsAcc& a = *r.acc;
  const size_t C = static_cast<size_t>(a.channels);
  std::vector<float> mean(C), var(C), ref(C);
  be_.to_host(outs[static_cast<size_t>(r.updates[0].first)], mean.data());
  be_.to_host(outs[static_cast<size_t>(r.updates[1].first)], var.data());
  be_.to_host(resident_[static_cast<size_t>(r.updates[0].second)], ref.data());
  const double n = a.per_microbatch;
  for (size_t c = 0; c < C; ++c) {
    double d = static_cast<double>(mean[c]) - ref[c];
    a.s1[c] += n * d;
    a.s2[c] += n * (static_cast<double>(var[c]) + d * d);
  }
  a.n += n;
}

std::vector<double> StageExecutor::running_stat_sums() const {
  std::vector<double> v;
  for (const NodeRun& r : runs_) {
    if (!r.acc) continue;
    v.push_back(r.acc->n);
    v.insert(v.end(), r.acc->s1.begin(), r.acc->s1.end());
    v.insert(v.end(), r.acc->s2.begin(), r.acc->s2.end());
  }
  return v;
}

void StageExecutor::commit_running_stats(std::span<const double> sums) {
  size_t off = 0;
  for (NodeRun& r : runs_) {
    if (!r.acc) continue;
    StatsAcc& a = *r.acc;
    const size_t C = static_cast<size_t>(a.channels);
    SMP_CHECK(off + 1 + 2 * C <= sums.size(), "running-statistics sums: {} values, more expected", sums.size());
    const double n = sums[off];
    const double* s1 = sums.data() + off + 1;
    const double* s2 = s1 + C;
    off += 1 + 2 * C;
    a.reset();
    if (n < 2) continue;
    Tensor& bm = resident_[static_cast<size_t>(r.updates[0].second)];
    Tensor& bv = resident_[static_cast<size_t>(r.updates[1].second)];
    std::vector<float> mean(C), var(C);
    be_.to_host(bm, mean.data());
    be_.to_host(bv, var.data());
    for (size_t c = 0; c < C; ++c) {
      double d = s1[c] / n;
      double batch_mean = mean[c] + d;
      double batch_var = std::max(0.0, s2[c] / n - d * d) * n / (n - 1);
      mean[c] = static_cast<float>(mean[c] * a.momentum + batch_mean * (1 - a.momentum));
      var[c] = static_cast<float>(var[c] * a.momentum + batch_var * (1 - a.momentum));
    }
    be_.copy(bm, be_.from_host(DType::F32, bm.shape(), mean.data()));
    be_.copy(bv, be_.from_host(DType::F32, bv.shape(), var.data()));
  }
  SMP_CHECK(off == sums.size(), "running-statistics sums: {} values, {} expected", sums.size(), off);
}

Tensor StageExecutor::value_tensor(int v, const std::vector<Tensor>& env) const {
  if (resident_[static_cast<size_t>(v)].defined()) return resident_input(v);
  return env[static_cast<size_t>(v)];
}

std::vector<Tensor> StageExecutor::forward(int mb, std::span<const Tensor> inputs) {
  if (inputs.size() != inputs_.size())
    throw_bad_input("stage inputs", fmt::format("{} tensors given, {} expected", inputs.size(), inputs_.size()));
  if (stash_.count(mb)) throw_failure("stage executor", fmt::format("microbatch {} is already in flight", mb));
  std::vector<Tensor> env(g_.values.size());
  for (size_t i = 0; i < inputs_.size(); ++i) {
    const graph::Value& val = g_.value(inputs_[i]);
    const Tensor& t = inputs[i];
    const DType want = xdt_[static_cast<size_t>(inputs_[i])];
    if (!t.defined() || t.dtype() != want || t.shape() != val.shape)
      throw_bad_input("input " + val.name,
                      fmt::format("got {}, expected {}{}", t.defined() ? t.str() : "nothing", dtype_name(want), shape_str(val.shape)));
    env[static_cast<size_t>(inputs_[i])] = t;
  }
  refresh_compute_copies();
  auto st = std::make_unique<Stash>();
  size_t P = runs_.size();
  st->saved_in.resize(P);
  st->saved_out.resize(P);
  st->w_dout.resize(P);
  st->b_done.assign(P, 0);
  st->random_key = random::microbatch_key(opts_.seed, random_step_, first_microbatch_ + mb);
  ExecContext ctx{&be_, opts_.collectives};
  std::vector<Tensor> ins, outs;
  const bool hooked = static_cast<bool>(opts_.after_node);
  for (size_t p = 0; p < P; ++p) {
    NodeRun& r = runs_[p];
    const double t_node = hooked ? now_s() : 0;
    ins.assign(r.in.size(), Tensor());
    for (size_t i = 0; i < r.in.size(); ++i)
      if (r.in[i] >= 0) ins[i] = value_tensor(r.in[i], env);
    outs.assign(r.out.size(), Tensor());
    if (!(r.kernel->flags & kView))
      for (size_t k = 0; k < r.out.size(); ++k)
        if (r.out[k] >= 0) {
          const graph::Value& val = g_.value(r.out[k]);
          outs[k] = be_.empty(xdt_[static_cast<size_t>(r.out[k])], val.shape);
        }
    double t0 = opts_.profile ? now_s() : 0;
    ctx.random_key = random::node_key(st->random_key, r.node);
    r.kernel->forward(*r.state, ctx, outs, ins);
    if (!r.updates.empty()) update_running_stats(r, outs);
    if (opts_.profile) {
      prof_[static_cast<size_t>(r.op)].forward_s += now_s() - t0;
      ++prof_[static_cast<size_t>(r.op)].calls;
    }
    if (hooked) opts_.after_node(r.node, 'F', now_s() - t_node);
    if (opts_.training && (r.has_b || r.has_w)) {
      auto& si = st->saved_in[p];
      si.assign(r.in.size(), Tensor());
      for (size_t i = 0; i < r.in.size(); ++i)
        if (graph::mask_has(r.saved_in, i) && r.in[i] >= 0 && !resident_[static_cast<size_t>(r.in[i])].defined()) {
          si[i] = ins[i];
          hold(si[i]);
        }
      auto& so = st->saved_out[p];
      so.assign(r.out.size(), Tensor());
      for (size_t k = 0; k < r.out.size(); ++k)
        if (graph::mask_has(r.saved_out, k)) {
          so[k] = outs[k];
          hold(so[k]);
        }
    }
    for (size_t k = 0; k < r.out.size(); ++k)
      if (r.out[k] >= 0 && (last_use_[static_cast<size_t>(r.out[k])] > static_cast<int>(p) || is_output_[static_cast<size_t>(r.out[k])]))
        env[static_cast<size_t>(r.out[k])] = outs[k];
    for (int v : r.in)
      if (v >= 0 && last_use_[static_cast<size_t>(v)] == static_cast<int>(p) && !is_output_[static_cast<size_t>(v)])
        env[static_cast<size_t>(v)] = Tensor();
    ins.clear();
    outs.clear();
  }
  std::vector<Tensor> result;
  for (int o : outputs_) result.push_back(env[static_cast<size_t>(o)]);
  if (opts_.training) stash_[mb] = std::move(st);
  return result;
}

std::vector<Tensor> StageExecutor::backward_input(int mb, std::span<const Tensor> output_grads) {
  std::vector<Tensor> r;
  run_backward(mb, output_grads, true, false, &r);
  return r;
}

void StageExecutor::backward_weight(int mb) { run_backward(mb, {}, false, true, nullptr); }

std::vector<Tensor> StageExecutor::backward(int mb, std::span<const Tensor> output_grads) {
  std::vector<Tensor> r;
  run_backward(mb, output_grads, true, true, &r);
  return r;
}

void StageExecutor::run_backward(int mb, std::span<const Tensor> output_grads, bool do_b, bool do_w,
                                 std::vector<Tensor>* input_grads) {
  auto it = stash_.find(mb);
  if (it == stash_.end()) throw_failure("stage executor", fmt::format("microbatch {} has no forward to differentiate", mb));
  Stash& st = *it->second;
  size_t P = runs_.size();
  std::vector<Tensor> g(g_.values.size());
  // Buffers this backward allocated and nothing else refers to: a gradient passed through a node
  // unchanged may be handed on in one of them instead of being copied (never the caller's output
  // gradients, nor a buffer the stash keeps for a later W).
  std::unordered_set<const Storage*> own;
  if (do_b) {
    if (output_grads.size() != outputs_.size())
      throw_bad_input("output gradients", fmt::format("{} tensors given, {} expected", output_grads.size(), outputs_.size()));
    for (size_t j = 0; j < outputs_.size(); ++j) {
      int o = outputs_[j];
      if (!output_grads[j].defined() || !(dd_[static_cast<size_t>(o)] || wreq_[static_cast<size_t>(o)])) continue;
      const graph::Value& val = g_.value(o);
      const DType want = xdt_[static_cast<size_t>(o)];
      if (output_grads[j].shape() != val.shape || output_grads[j].dtype() != want)
        throw_bad_input("gradient of " + val.name, fmt::format("got {}, expected {}{}", output_grads[j].str(), dtype_name(want), shape_str(val.shape)));
      if (last_use_[static_cast<size_t>(o)] >= 0) {  // also used inside: accumulate into a copy
        Tensor c = be_.empty(want, val.shape);
        be_.copy(c, output_grads[j]);
        g[static_cast<size_t>(o)] = c;
        own.insert(c.storage().get());
      } else {
        g[static_cast<size_t>(o)] = output_grads[j];
      }
    }
    if (!do_w)
      for (int o : outputs_)
        if (wreq_[static_cast<size_t>(o)] && g[static_cast<size_t>(o)].defined()) {
          st.w_seeds.push_back({o, g[static_cast<size_t>(o)]});
          hold(g[static_cast<size_t>(o)]);
        }
  } else {
    for (auto& [o, t] : st.w_seeds) {
      g[static_cast<size_t>(o)] = t;
      unhold(t);
    }
    st.w_seeds.clear();
    for (size_t p = 0; p < P; ++p)
      if (runs_[p].has_b && !st.b_done[p] && runs_[p].has_w)
        throw_failure("stage executor", fmt::format("backward_weight of microbatch {} before its backward_input", mb));
  }
  refresh_compute_copies();
  ExecContext ctx{&be_, opts_.collectives};
  std::vector<Tensor> ins, outs, dout, din;
  std::vector<uint8_t> acc;
  const bool hooked = static_cast<bool>(opts_.after_node);
  for (size_t p = P; p-- > 0;) {
    NodeRun& r = runs_[p];
    bool b_part = do_b && r.has_b, w_part = do_w && r.has_w;
    if (!b_part && !w_part) continue;
    const double t_node = hooked ? now_s() : 0;
    // gradients of the outputs
    dout.assign(r.out.size(), Tensor());
    bool any = false;
    for (size_t k = 0; k < r.out.size(); ++k) {
      int o = r.out[k];
      if (o < 0) continue;
      if (!do_b && dd_[static_cast<size_t>(o)]) {
        if (!st.w_dout[p].empty()) dout[k] = st.w_dout[p][k];
      } else {
        dout[k] = g[static_cast<size_t>(o)];
      }
      any = any || dout[k].defined();
    }
    bool release = (r.has_w ? w_part : b_part);
    if (any) {
      din.assign(r.in.size(), Tensor());
      acc.assign(r.in.size(), 0);
      bool wanted = false;
      // the output gradient may move on to one pass-through input when this node keeps no dout
      bool moved = false;
      bool can_move = r.pass_in && dout.size() == 1 && dout[0].defined() && own.count(dout[0].storage().get()) &&
                      !(do_b && !do_w && r.has_w && r.has_b);
      for (size_t i = 0; i < r.in.size(); ++i) {
        int v = r.in[i];
        if (v < 0 || !graph::mask_has(r.diff, i)) continue;
        bool is_dd = dd_[static_cast<size_t>(v)], is_w = wreq_[static_cast<size_t>(v)];
        if (!((b_part && is_dd) || (w_part && is_w))) continue;
        if (can_move && graph::mask_has(r.pass_in, i) && !grads_[static_cast<size_t>(v)].defined() && !g[static_cast<size_t>(v)].defined() &&
            std::count(r.in.begin(), r.in.end(), v) == 1) {
          g[static_cast<size_t>(v)] = dout[0].view(g_.value(v).shape);
          can_move = false;
          moved = true;
          continue;
        }
        wanted = true;
        if (grads_[static_cast<size_t>(v)].defined()) {
          din[i] = grads_[static_cast<size_t>(v)];
          acc[i] = !grad_zero_[static_cast<size_t>(v)];
          grad_zero_[static_cast<size_t>(v)] = 0;
        } else if (g[static_cast<size_t>(v)].defined()) {
          din[i] = g[static_cast<size_t>(v)];
          acc[i] = 1;
        } else {
          din[i] = be_.empty(xdt_[static_cast<size_t>(v)], g_.value(v).shape);
          g[static_cast<size_t>(v)] = din[i];
          own.insert(din[i].storage().get());
        }
      }
      if (wanted) {
        ins.assign(r.in.size(), Tensor());
        for (size_t i = 0; i < r.in.size(); ++i) {
          int v = r.in[i];
          if (v < 0) continue;
          if (resident_[static_cast<size_t>(v)].defined()) ins[i] = resident_input(v);
          else if (!st.saved_in[p].empty()) ins[i] = st.saved_in[p][i];
        }
        outs = st.saved_out[p];
        outs.resize(r.out.size());
        GradIO io{ins, outs, dout, din, acc};
        double t0 = opts_.profile ? now_s() : 0;
        ctx.random_key = random::node_key(st.random_key, r.node);
        r.kernel->backward(*r.state, ctx, io);
        if (opts_.profile) prof_[static_cast<size_t>(r.op)].backward_s += now_s() - t0;
        if (hooked) opts_.after_node(r.node, b_part && w_part ? 'G' : b_part ? 'B' : 'W', now_s() - t_node);
      } else if (moved && hooked) {
        opts_.after_node(r.node, b_part && w_part ? 'G' : b_part ? 'B' : 'W', now_s() - t_node);
      }
    }
    if (do_b && !do_w && r.has_w && r.has_b) {
      st.w_dout[p] = dout;
      for (const Tensor& t : st.w_dout[p]) hold(t);
    }
    if (do_b) st.b_done[p] = 1;
    for (int o : r.out)
      if (o >= 0) g[static_cast<size_t>(o)] = Tensor();
    if (release) {
      unhold_all(st.saved_in[p]);
      unhold_all(st.saved_out[p]);
      unhold_all(st.w_dout[p]);
    }
    ins.clear();
    outs.clear();
    dout.clear();
    din.clear();
  }
  if (input_grads) {
    input_grads->assign(inputs_.size(), Tensor());
    for (size_t i = 0; i < inputs_.size(); ++i) {
      if (!input_grad_[i]) continue;
      Tensor t = g[static_cast<size_t>(inputs_[i])];
      if (!t.defined()) t = be_.zeros(xdt_[static_cast<size_t>(inputs_[i])], g_.value(inputs_[i]).shape);
      (*input_grads)[i] = t;
    }
  }
  // done with this microbatch once W ran (or no node has a W part)
  bool left = false;
  for (size_t p = 0; p < P; ++p)
    if (!st.saved_in[p].empty() || !st.saved_out[p].empty() || !st.w_dout[p].empty()) left = true;
  bool any_w = false;
  for (const NodeRun& r : runs_) any_w = any_w || r.has_w;
  if (do_w || (!any_w && !left)) {
    if (do_w) SMP_CHECK(!left, "microbatch {}: tensors left in the stash after its backward", mb);
    stash_.erase(it);
  }
}

void StageExecutor::drop(int mb) {
  auto it = stash_.find(mb);
  if (it == stash_.end()) return;
  Stash& st = *it->second;
  for (auto& v : st.saved_in) unhold_all(v);
  for (auto& v : st.saved_out) unhold_all(v);
  for (auto& v : st.w_dout) unhold_all(v);
  for (auto& [o, t] : st.w_seeds) unhold(t);
  stash_.erase(it);
}

void StageExecutor::zero_grad() {
  for (int v : params_) grad_zero_[static_cast<size_t>(v)] = 1;
}

void StageExecutor::sgd_step(float lr) {
  for (int v : params_)
    if (!grad_zero_[static_cast<size_t>(v)]) be_.axpy(-lr, grads_[static_cast<size_t>(v)], resident_[static_cast<size_t>(v)]);
  copies_stale_ = copies_stale_ || opts_.compute_dtype == DType::BF16;
}

size_t StageExecutor::pending() const { return stash_.size(); }

StageMemoryPlan StageExecutor::plan_memory() const {
  StageMemoryPlan m;
  const size_t nv = g_.values.size();
  auto bytes = [&](int v) { return byte_size(g_.value(v).shape, dtype_size(xdt_[static_cast<size_t>(v)])); };
  for (int v : params_) {
    m.parameter_bytes += g_.value(v).bytes() + (compute_copy_[static_cast<size_t>(v)].defined() ? g_.value(v).numel() * 2 : 0);
    m.gradient_bytes += g_.value(v).bytes();
  }
  for (int v : inputs_) m.boundary_bytes += bytes(v);
  for (int v : outputs_) m.boundary_bytes += bytes(v);

  // Forward: buffers (a view shares its input's) live from their producer to their last use,
  // unless a stage output (to the end) or kept for the backward (in the stash).
  std::vector<int> buf(nv, -1);
  struct Buf {
    int64_t bytes = 0;
    int last = -1;
    bool out = false, saved = false;
    int release = -1;  // the backward releases it at this run position (the lowest that keeps it)
  };
  std::vector<Buf> bufs;
  auto buffer_of = [&](int v) {
    if (buf[static_cast<size_t>(v)] < 0) {
      buf[static_cast<size_t>(v)] = static_cast<int>(bufs.size());
      bufs.push_back({bytes(v), -1, false, false, -1});
    }
    return buf[static_cast<size_t>(v)];
  };
  for (int v : inputs_) buffer_of(v);
  for (size_t p = 0; p < runs_.size(); ++p) {
    const NodeRun& r = runs_[p];
    for (size_t k = 0; k < r.out.size(); ++k) {
      if (r.out[k] < 0) continue;
      if ((r.kernel->flags & kView) && k == 0 && r.in[0] >= 0 && !resident_[static_cast<size_t>(r.in[0])].defined())
        buf[static_cast<size_t>(r.out[k])] = buffer_of(r.in[0]);
      else
        buffer_of(r.out[k]);
    }
  }
  for (size_t p = 0; p < runs_.size(); ++p) {
    const NodeRun& r = runs_[p];
    const bool keeps = opts_.training && (r.has_b || r.has_w);
    for (size_t i = 0; i < r.in.size(); ++i) {
      int v = r.in[i];
      if (v < 0 || resident_[static_cast<size_t>(v)].defined()) continue;
      Buf& b = bufs[static_cast<size_t>(buffer_of(v))];
      b.last = std::max(b.last, static_cast<int>(p));
      if (keeps && graph::mask_has(r.saved_in, i)) {
        b.saved = true;
        b.release = b.release < 0 ? static_cast<int>(p) : std::min(b.release, static_cast<int>(p));
      }
    }
    for (size_t k = 0; k < r.out.size(); ++k) {
      int o = r.out[k];
      if (o < 0) continue;
      Buf& b = bufs[static_cast<size_t>(buf[static_cast<size_t>(o)])];
      b.last = std::max(b.last, static_cast<int>(p));
      if (is_output_[static_cast<size_t>(o)]) b.out = true;
      if (keeps && graph::mask_has(r.saved_out, k)) {
        b.saved = true;
        b.release = b.release < 0 ? static_cast<int>(p) : std::min(b.release, static_cast<int>(p));
      }
    }
  }
  int64_t live = 0, peak = 0;
  std::vector<uint8_t> born(bufs.size(), 0);
  for (int v : inputs_) {
    int b = buf[static_cast<size_t>(v)];
    if (!born[static_cast<size_t>(b)]) live += bufs[static_cast<size_t>(b)].bytes, born[static_cast<size_t>(b)] = 1;
  }
  peak = live;
  for (size_t p = 0; p < runs_.size(); ++p) {
    const NodeRun& r = runs_[p];
    int64_t node_bytes = 0;
    for (size_t k = 0; k < r.out.size(); ++k) {
      if (r.out[k] < 0) continue;
      int b = buf[static_cast<size_t>(r.out[k])];
      node_bytes = std::max(node_bytes, bufs[static_cast<size_t>(b)].bytes);
      if (!born[static_cast<size_t>(b)]) live += bufs[static_cast<size_t>(b)].bytes, born[static_cast<size_t>(b)] = 1;
    }
    for (int v : r.in)
      if (v >= 0) node_bytes = std::max(node_bytes, bytes(v));
    m.scratch_bytes = std::max(m.scratch_bytes, 2 * node_bytes);
    peak = std::max(peak, live);
    for (size_t b = 0; b < bufs.size(); ++b)
      if (born[b] == 1 && bufs[b].last == static_cast<int>(p) && !bufs[b].out && !bufs[b].saved) {
        live -= bufs[b].bytes;
        born[b] = 2;
      }
  }
  m.forward_peak_bytes = peak;
  for (const Buf& b : bufs)
    if (b.saved) m.stash_bytes += b.bytes;

  // Backward: the gradients of activations live from the first node that writes them to their
  // producer; kept buffers go when the lowest node keeping them is done.
  std::vector<uint8_t> has_grad(nv, 0);
  int64_t grads = 0, gpeak = 0, released = 0;
  for (int o : outputs_)
    if (dd_[static_cast<size_t>(o)] || wreq_[static_cast<size_t>(o)]) has_grad[static_cast<size_t>(o)] = 1, grads += bytes(o);
  gpeak = grads;
  for (size_t p = runs_.size(); p-- > 0;) {
    const NodeRun& r = runs_[p];
    if (!r.has_b && !r.has_w) continue;
    if (r.has_b && r.has_w)
      for (int o : r.out)
        if (o >= 0 && is_float(g_.value(o).dtype)) m.w_keep_bytes += bytes(o);
    for (size_t i = 0; i < r.in.size(); ++i) {
      int v = r.in[i];
      if (v < 0 || !graph::mask_has(r.diff, i) || grads_[static_cast<size_t>(v)].defined() || has_grad[static_cast<size_t>(v)]) continue;
      if (!dd_[static_cast<size_t>(v)] && !wreq_[static_cast<size_t>(v)]) continue;
      has_grad[static_cast<size_t>(v)] = 1;
      grads += bytes(v);
    }
    gpeak = std::max(gpeak, grads - released);
    for (int o : r.out)
      if (o >= 0 && has_grad[static_cast<size_t>(o)] == 1) has_grad[static_cast<size_t>(o)] = 2, grads -= bytes(o);
    for (const Buf& b : bufs)
      if (b.saved && b.release == static_cast<int>(p)) released += b.bytes;
  }
  m.backward_peak_bytes = gpeak;
  return m;
}

int64_t StageExecutor::peak_bytes() const { return be_.memory().peak_bytes - peak_base_; }

void StageExecutor::reset_peak() {
  peak_stash_bytes_ = stash_bytes_;
  be_.reset_peak();
  peak_base_ = be_.memory().live_bytes;
}

}  // namespace smp::runtime
