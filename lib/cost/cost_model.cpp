#include "cost/cost_model.hpp"

#include "cost/calibration.hpp"

#include "core/error.hpp"
#include "graph/op_registry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace smp::cost {

using graph::OpClass;
using graph::ValueKind;

Optimizer parse_optimizer(const std::string& s, const std::string& where) {
  if (s == "sgd") return Optimizer::SGD;
  if (s == "momentum") return Optimizer::Momentum;
  if (s == "adamw" || s == "adam") return Optimizer::AdamW;
  throw_bad_input(where, fmt::format("unknown optimizer '{}'", s), "one of sgd, momentum, adamw");
}

std::string_view optimizer_name(Optimizer o) {
  switch (o) {
    case Optimizer::SGD: return "sgd";
    case Optimizer::Momentum: return "momentum";
    default: return "adamw";
  }
}

double optimizer_factor(Optimizer o) {
  switch (o) {
    case Optimizer::SGD: return 0.0;
    case Optimizer::Momentum: return 1.0;
    default: return 2.0;
  }
}

namespace {

const graph::OpDef* def_of(const graph::Node& n) {
  return (n.domain.empty() || n.domain == "ai.onnx") ? graph::find_op(n.op_type) : nullptr;
}

// With bf16 compute the executor stores float32 activations as bfloat16 (runtime::exec_dtype).
bool stored_as_bf16(const graph::Value& v, Precision p) {
  return p == Precision::BF16 && v.dtype == DType::F32 && v.kind == ValueKind::Activation;
}

}  // namespace

Affine GraphCost::value_bytes(int v) const {
  const auto& val = g_->value(v);
  double bytes = static_cast<double>(val.bytes());
  if (stored_as_bf16(val, opt_.precision)) bytes /= 2;
  if (batch_dependent(v)) return Affine{0, bytes / static_cast<double>(batch_)};
  return Affine{bytes, 0};
}

GraphCost::GraphCost(const graph::Graph& g, int64_t batch_size, const CostOptions& opt)
    : g_(&g), batch_(batch_size), opt_(opt) {
  SMP_CHECK(batch_size > 0, "batch size {}", batch_size);
  const size_t V = g.values.size(), N = g.nodes.size();
  batch_dep_.assign(V, 0);
  needs_grad_.assign(V, 0);
  root_.resize(V);
  last_use_.assign(V, -1);
  for (size_t v = 0; v < V; ++v) {
    root_[v] = static_cast<int>(v);
    const auto& val = g.values[v];
    if (val.kind == ValueKind::Input) batch_dep_[v] = 1;
    if (val.kind == ValueKind::Parameter) needs_grad_[v] = 1;
    if (!val.consumers.empty()) last_use_[v] = val.consumers.back();
  }
  // Forward propagation in topological order.
  for (size_t i = 0; i < N; ++i) {
    const auto& n = g.nodes[i];
    const graph::OpDef* d = def_of(n);
    bool dep = false, grad = false;
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      int id = n.inputs[k];
      if (id < 0) continue;
      dep |= batch_dep_[static_cast<size_t>(id)] != 0;
      bool diff = d ? graph::mask_has(d->differentiable_inputs, k) : is_floating(g.value(id).dtype);
      if (diff && needs_grad_[static_cast<size_t>(id)]) grad = true;
    }
    for (int o : n.outputs) {
      if (o < 0) continue;
      batch_dep_[static_cast<size_t>(o)] = dep;
      needs_grad_[static_cast<size_t>(o)] = grad && is_floating(g.value(o).dtype);
      if (d && d->cls == OpClass::View && !n.inputs.empty() && n.inputs[0] >= 0)
        root_[static_cast<size_t>(o)] = root_[static_cast<size_t>(n.inputs[0])];
    }
  }

  auto bytes_of = [&](int id) { return id < 0 ? Affine{} : value_bytes(id); };
  auto elems_of = [&](int id) {
    if (id < 0) return Affine{};
    Affine b = value_bytes(id);
    const auto& val = g.value(id);
    const double es = stored_as_bf16(val, opt_.precision) ? 2.0 : static_cast<double>(std::max<int64_t>(1, dtype_size(val.dtype)));
    return Affine{b.c / es, b.b / es};
  };
  auto scale = [&](double x, bool dep) {
    return dep ? Affine{0, x / static_cast<double>(batch_)} : Affine{x, 0};
  };
  auto is_act = [&](int id) {
    if (id < 0) return false;
    auto k = g.value(id).kind;
    return k == ValueKind::Activation || k == ValueKind::Input;
  };

  model_.resize(N);
  for (size_t i = 0; i < N; ++i) {
    const auto& n = g.nodes[i];
    const graph::OpDef* d = def_of(n);
    NodeModel& m = model_[i];
    bool dep = false;
    for (int id : n.inputs)
      if (id >= 0 && batch_dep_[static_cast<size_t>(id)]) dep = true;
    const OpClass cls = d ? d->cls : OpClass::Elementwise;
    const bool view = cls == OpClass::View;
    const bool shape_only = cls == OpClass::ShapeOnly;
    if (auto fam = kernel_family(g, n)) m.family = static_cast<int>(*fam);

    Affine dy, out_elems;
    for (int o : n.outputs) {
      dy += bytes_of(o);
      out_elems += elems_of(o);
    }
    if (m.family == static_cast<int>(KernelFamily::Gemm) && !n.outputs.empty() && n.outputs[0] >= 0) {
      const auto& shape = g.value(n.outputs[0]).shape;
      const double cols = shape.empty() ? 0.0 : static_cast<double>(shape.back());
      const Affine e = elems_of(n.outputs[0]);
      if (cols > 0) m.rows = Affine{e.c / cols, e.b / cols};
    }
    for (int id : n.inputs)
      if (id >= 0 && g.value(id).kind == ValueKind::Parameter &&
          std::find(m.params.begin(), m.params.end(), id) == m.params.end())
        m.params.push_back(id);

    // Forward.
    if (!view && !shape_only) {
      m.fwd.runs = true;
      m.fwd.flops = scale(n.cost.flops, dep);
      const bool reads_what_it_writes =
          n.op_type == "Slice" || n.op_type == "Split" || n.op_type == "Gather" || n.op_type == "TpVocabGather";
      Affine rd;
      for (size_t k = 0; k < n.inputs.size(); ++k)
        if (!(reads_what_it_writes && k == 0)) rd += bytes_of(n.inputs[k]);
      if (reads_what_it_writes) rd += dy;
      m.fwd.bytes = rd;
      m.fwd.bytes += dy;
      for (int id : n.inputs)
        if (is_act(id)) m.workspace += bytes_of(id);
      m.workspace += dy;
    }

    // Which inputs need which gradient.
    std::vector<int> act_grad, w_grad;  // input positions
    for (size_t k = 0; k < n.inputs.size(); ++k) {
      int id = n.inputs[k];
      if (id < 0) continue;
      bool diff = d ? graph::mask_has(d->differentiable_inputs, k) : is_floating(g.value(id).dtype);
      if (!diff || !needs_grad_[static_cast<size_t>(id)]) continue;
      const auto kind = g.value(id).kind;
      bool weight_like = kind == ValueKind::Parameter || (kind == ValueKind::Activation && !batch_dep_[static_cast<size_t>(id)]);
      (weight_like ? w_grad : act_grad).push_back(static_cast<int>(k));
    }
    const bool any_grad = !act_grad.empty() || !w_grad.empty();

    // Saved tensors (only when the backward runs).
    if (any_grad) {
      uint32_t keep_in = d ? d->saved_inputs : 0xFFFFFFFFu;
      uint32_t keep_out = d ? d->saved_outputs : 0u;
      auto save = [&](int id) {
        if (id < 0) return;
        auto k = g.value(id).kind;
        if (k == ValueKind::Parameter || k == ValueKind::Constant || k == ValueKind::Buffer) return;
        int r = root_[static_cast<size_t>(id)];
        if (std::find(m.saved.begin(), m.saved.end(), r) == m.saved.end()) m.saved.push_back(r);
      };
      for (size_t k = 0; k < n.inputs.size(); ++k)
        if (graph::mask_has(keep_in, k)) save(n.inputs[k]);
      for (size_t k = 0; k < n.outputs.size(); ++k)
        if (graph::mask_has(keep_out, k)) save(n.outputs[k]);
      if (!w_grad.empty()) {
        for (int r : m.saved)
          if (batch_dep_[static_cast<size_t>(r)]) m.w_keep.push_back(r);
        for (int o : n.outputs)
          if (o >= 0) {
            int r = root_[static_cast<size_t>(o)];
            if (std::find(m.w_keep.begin(), m.w_keep.end(), r) == m.w_keep.end()) m.w_keep.push_back(r);
          }
      }
    }
    Affine saved_bytes;
    for (int r : m.saved) saved_bytes += bytes_of(r);

    // A backward pass of `flops` reading dY, the saved tensors and the inputs at positions ks.
    auto whole_pass = [&](Pass& p, Affine flops, const std::vector<int>& ks) {
      p.runs = true;
      p.flops = flops;
      p.bytes = dy;
      p.bytes += saved_bytes;
      for (int k : ks) p.bytes += bytes_of(n.inputs[static_cast<size_t>(k)]);
    };
    const bool recurrent = d && (d->op == graph::Op::LSTM || d->op == graph::Op::GRU || d->op == graph::Op::RNN);
    if (any_grad && !view && !shape_only) {
      if (recurrent) {
        // The backward runs the forward again, then per step the gradients of the state and the
        // input (two products as large as the forward's), and the weights' (one more) at the end.
        if (!act_grad.empty()) whole_pass(m.bwd_in, Affine{2 * m.fwd.flops.c, 2 * m.fwd.flops.b}, {});
        if (!w_grad.empty()) whole_pass(m.bwd_w, m.fwd.flops, w_grad);
      } else if (cls == OpClass::MatMulLike) {
        bool has_bias = n.inputs.size() > 2 && n.inputs[2] >= 0;
        Affine fl = scale(n.cost.flops, dep);
        Affine bias_fl = has_bias ? out_elems : Affine{};
        Affine prod{fl.c - bias_fl.c, fl.b - bias_fl.b};
        auto add = [&](Pass& p, int k) {
          p.runs = true;
          if (k == 2) {
            p.flops += out_elems;
            p.bytes += dy;
            p.bytes += bytes_of(n.inputs[2]);
            return;
          }
          p.flops += prod;
          p.bytes += dy;
          p.bytes += bytes_of(n.inputs[k < 2 ? static_cast<size_t>(1 - k) : 0]);  // the other operand (Einsum's third on: the first)
          p.bytes += bytes_of(n.inputs[static_cast<size_t>(k)]);
        };
        for (int k : act_grad) add(m.bwd_in, k);
        for (int k : w_grad) add(m.bwd_w, k);
      } else {
        if (!act_grad.empty()) whole_pass(m.bwd_in, m.fwd.flops, act_grad);
        if (!w_grad.empty()) whole_pass(m.bwd_w, out_elems, w_grad);
      }
    }

    // Tensor-parallel collectives.
    if (d && d->op == graph::Op::TpAllReduce) m.allreduce_fwd = dy;
    if (d && d->op == graph::Op::TpSoftmaxCrossEntropyLoss) {
      // a float per position for the maxima, two for the sums and target scores, both passes
      Affine pos = elems_of(n.inputs[1]);
      m.allreduce_fwd = Affine{12 * pos.c, 12 * pos.b};
      if (!act_grad.empty()) m.allreduce_bwd = m.allreduce_fwd;
    }
    if (d && d->op == graph::Op::TpCopy && !act_grad.empty()) {
      m.bwd_in.runs = true;  // copy the gradient, all-reduce it, add it
      m.bwd_in.bytes = Affine{3 * dy.c, 3 * dy.b};
      m.allreduce_bwd = dy;
    }

    // Loss on float graph outputs.
    if (opt_.loss)
      for (int o : n.outputs) {
        if (o < 0 || !g.value(o).is_output || !is_floating(g.value(o).dtype)) continue;
        Affine e = elems_of(o), b = bytes_of(o);
        m.fwd.runs = true;
        m.fwd.flops += Affine{6 * e.c, 6 * e.b};
        m.fwd.bytes += b;
        m.loss_fwd.runs = true;
        m.loss_fwd.flops += Affine{6 * e.c, 6 * e.b};
        m.loss_fwd.bytes += b;
        if (needs_grad_[static_cast<size_t>(o)]) {
          m.bwd_in.runs = true;
          m.bwd_in.flops += Affine{2 * e.c, 2 * e.b};
          m.bwd_in.bytes += Affine{2 * b.c, 2 * b.b};
          m.loss_bwd.runs = true;
          m.loss_bwd.flops += Affine{2 * e.c, 2 * e.b};
          m.loss_bwd.bytes += Affine{2 * b.c, 2 * b.b};
        }
      }
  }

  // Cuts: difference arrays over positions.
  cut_act_.assign(N + 1, Affine{});
  cut_grad_.assign(N + 1, Affine{});
  cut_count_.assign(N + 1, 0);
  cut_fixed_.assign(N + 1, 0);
  std::vector<Affine> da(N + 2), dg(N + 2);
  std::vector<int> dc(N + 2, 0), df(N + 2, 0);
  for (size_t v = 0; v < V; ++v) {
    const auto& val = g.values[v];
    if (val.kind != ValueKind::Activation || val.producer < 0) continue;
    int p = val.producer, L = last_use_[v];
    if (L <= p) continue;
    Affine b = value_bytes(static_cast<int>(v));
    da[static_cast<size_t>(p + 1)] += b;
    da[static_cast<size_t>(L + 1)] += Affine{-b.c, -b.b};
    dc[static_cast<size_t>(p + 1)] += 1;
    dc[static_cast<size_t>(L + 1)] -= 1;
    if (!batch_dep_[v]) {
      df[static_cast<size_t>(p + 1)] += 1;
      df[static_cast<size_t>(L + 1)] -= 1;
    }
    if (needs_grad_[v]) {
      dg[static_cast<size_t>(p + 1)] += b;
      dg[static_cast<size_t>(L + 1)] += Affine{-b.c, -b.b};
    }
  }
  Affine ra, rg;
  int rc = 0, rf = 0;
  for (size_t q = 0; q <= N; ++q) {
    ra += da[q];
    rg += dg[q];
    rc += dc[q];
    rf += df[q];
    cut_act_[q] = ra;
    cut_grad_[q] = rg;
    cut_count_[q] = rc;
    cut_fixed_[q] = rf;
  }
  cut_act_[0] = cut_grad_[0] = Affine{};
  cut_count_[0] = 0;
}

bool GraphCost::profile_applies(const DeviceSpec& dev, double u) const {
  return opt_.profile && dev.name == opt_.profile->device_name &&
         std::abs(u - static_cast<double>(opt_.profile->microbatch_size)) < 0.5;
}

int GraphCost::profile_in_flight(const DeviceSpec& dev, double u) const {
  return profile_applies(dev, u) ? opt_.profile->in_flight_microbatches : 0;
}

double ring_allreduce_s(double bytes, int ranks, const LinkSpec& link) {
  if (ranks <= 1 || bytes <= 0) return 0.0;
  const double r = static_cast<double>(ranks);
  return 2.0 * (r - 1) / r * bytes / link.bus_bandwidth() + 2.0 * (r - 1) * link.latency;
}

PassTimes GraphCost::node_time(int node, double u, const DeviceSpec& dev, bool* measured, double in_flight, double busy) const {
  const NodeModel& m = model_[static_cast<size_t>(node)];
  // A GPU all-reduces in place (NCCL on the product's output, on the gradient): the link's time
  // only. A CPU worker also copies the tensor through its memory.
  const bool in_place = dev.kind == "gpu" && (m.allreduce_fwd.c + m.allreduce_fwd.b + m.allreduce_bwd.c + m.allreduce_bwd.b) > 0;
  PassTimes t = in_place ? PassTimes{} : compute_time(node, u, dev, measured, in_flight, busy);
  if (in_place && measured) *measured = false;
  t.f += ring_allreduce_s(m.allreduce_fwd.at(u), opt_.tp_degree, opt_.tp_link);
  t.b += ring_allreduce_s(m.allreduce_bwd.at(u), opt_.tp_degree, opt_.tp_link);
  return t;
}

PassTimes GraphCost::compute_time(int node, double u, const DeviceSpec& dev, bool* measured, double in_flight,
                                  double busy) const {
  if (measured) *measured = false;
  if (profile_applies(dev, u)) {
    auto it = opt_.profile->nodes.find(g_->nodes[static_cast<size_t>(node)].name);
    if (it != opt_.profile->nodes.end()) {
      if (measured) *measured = true;
      const NodeMeasure& n = it->second;
      const double x = n.has_in_flight ? std::clamp(in_flight, 0.0, 1.0) : 0.0;
      auto mix = [x](double one, double many) { return one + x * (many - one); };
      return PassTimes{mix(n.forward_s, n.in_flight_forward_s), mix(n.backward_input_s, n.in_flight_backward_input_s),
                       mix(n.backward_weight_s, n.in_flight_backward_weight_s)};
    }
  }
  const NodeModel& m = model_[static_cast<size_t>(node)];
  if (dev.calibration) return calibrated_time(m, u, dev, busy);
  double peak = dev.peak_flops(opt_.precision), bw = dev.memory_bandwidth;
  if (!dev.efficiency.empty() && m.family >= 0) {
    // The family's efficiency on its bound; a product's operands stream at the elementwise one.
    const auto f = static_cast<KernelFamily>(m.family);
    const double e = dev.efficiency[static_cast<size_t>(m.family)];
    if (family_compute_bound(f)) {
      peak *= e;
      bw *= dev.efficiency[static_cast<size_t>(KernelFamily::Elementwise)];
    } else {
      bw *= e;
    }
  }
  auto t = [&](const Pass& p) {
    if (!p.runs) return 0.0;
    return std::max(p.flops.at(u) / peak, p.bytes.at(u) / bw) + dev.kernel_overhead_s;
  };
  return PassTimes{t(m.fwd), t(m.bwd_in), t(m.bwd_w)};
}

PassTimes GraphCost::calibrated_time(const NodeModel& m, double u, const DeviceSpec& dev, double busy) const {
  const KernelCalibration& cal = *dev.calibration;
  const CalibrationTable& tab = cal.table(dev.threads);
  // A GEMM with few rows runs below the Gemm curve's rate (calibrated apart: RowsFactor).
  const double rows = m.family == static_cast<int>(KernelFamily::Gemm) ? m.rows.at(u) : 0.0;
  auto priced = [&](KernelFamily f, int pass, double work) {
    const double few = f == KernelFamily::Gemm && rows > 0 ? tab.gemm_rows[static_cast<size_t>(pass)].at(rows) : 1.0;
    return tab.curves[static_cast<size_t>(f)][static_cast<size_t>(pass)].time(work) * few * cal.slowdown(f, busy, dev.threads);
  };
  // The work of one pass of the node's own kernel, its loss taken out (priced apart).
  auto work = [&](const Pass& p, const Pass& loss) {
    if (!p.runs || m.family < 0) return 0.0;
    const auto f = static_cast<KernelFamily>(m.family);
    return std::max(0.0, family_counts_flops(f) ? p.flops.at(u) - loss.flops.at(u) : p.bytes.at(u) - loss.bytes.at(u));
  };
  auto loss_time = [&](const Pass& loss, int pass) {
    return loss.runs ? priced(KernelFamily::Softmax, pass, loss.bytes.at(u)) : 0.0;
  };
  PassTimes t;
  const double wf = work(m.fwd, m.loss_fwd);
  if (wf > 0) t.f = priced(static_cast<KernelFamily>(m.family), 0, wf);
  t.f += loss_time(m.loss_fwd, 0);
  // The backward curve was measured on the whole backward (input and weight gradient in one
  // call, calibrate_cpu's time_case), so it prices their summed work, shared out by work: each
  // half priced on its own would land lower on the curve, where the per-call floor weighs more.
  const double wb = work(m.bwd_in, m.loss_bwd), ww = work(m.bwd_w, Pass{});
  if (wb + ww > 0) {
    const double whole = priced(static_cast<KernelFamily>(m.family), 1, wb + ww);
    t.b = whole * wb / (wb + ww);
    t.w = whole * ww / (wb + ww);
  }
  t.b += loss_time(m.loss_bwd, 1);
  return t;
}

double GraphCost::optimizer_step_s(double param_bytes, const DeviceSpec& dev, bool* measured, double busy) const {
  if (measured) *measured = false;
  if (param_bytes <= 0) return 0.0;
  const double params = param_bytes / 4.0;
  const std::string name(optimizer_name(opt_.optimizer));
  if (opt_.profile && dev.name == opt_.profile->device_name) {
    auto it = opt_.profile->optimizer_step_s.find(name);
    if (it != opt_.profile->optimizer_step_s.end()) {
      if (measured) *measured = true;
      return params * it->second;
    }
  }
  if (dev.calibration) {
    const auto& per = dev.calibration->table(dev.threads).optimizer_s_per_parameter;
    const double s = per[opt_.optimizer == Optimizer::SGD ? 0 : opt_.optimizer == Optimizer::Momentum ? 1 : 2];
    if (s > 0) return params * s * dev.calibration->slowdown(KernelFamily::Elementwise, busy, dev.threads);
  }
  const double state = optimizer_factor(opt_.optimizer);
  const double bytes = params * (12.0 + 12.0 + 8.0 * state);
  const double flops = params * (2.0 + (opt_.optimizer == Optimizer::SGD ? 2.0 : opt_.optimizer == Optimizer::Momentum ? 3.0 : 12.0));
  return std::max(flops / dev.peak_flops(Precision::FP32), bytes / dev.memory_bandwidth) + 2 * dev.kernel_overhead_s;
}

std::vector<int> GraphCost::crossing(int q) const {
  std::vector<int> r;
  for (size_t v = 0; v < g_->values.size(); ++v) {
    const auto& val = g_->values[v];
    if (val.kind != ValueKind::Activation || val.producer < 0) continue;
    if (val.producer < q && last_use_[v] >= q) r.push_back(static_cast<int>(v));
  }
  return r;
}

std::vector<int> GraphCost::stage_inputs(int a, int b) const {
  std::vector<int> r;
  for (int i = a; i < b; ++i)
    for (int id : g_->nodes[static_cast<size_t>(i)].inputs) {
      if (id < 0) continue;
      const auto& v = g_->value(id);
      if (v.kind == ValueKind::Input || (v.kind == ValueKind::Activation && v.producer < a)) r.push_back(id);
    }
  std::sort(r.begin(), r.end());
  r.erase(std::unique(r.begin(), r.end()), r.end());
  return r;
}

std::vector<int> GraphCost::stage_outputs(int a, int b) const {
  std::vector<int> r;
  for (int i = a; i < b; ++i)
    for (int o : g_->nodes[static_cast<size_t>(i)].outputs)
      if (o >= 0 && last_use_[static_cast<size_t>(o)] >= b) r.push_back(o);
  std::sort(r.begin(), r.end());
  return r;
}

GraphCost::StageMemory GraphCost::stage_memory(int a, int b, double u) const {
  StageMemory sm;
  const size_t V = g_->values.size();
  std::vector<uint8_t> seen_p(V, 0), seen_s(V, 0), seen_w(V, 0);
  auto once = [](std::vector<uint8_t>& seen, int id) {
    if (seen[static_cast<size_t>(id)]) return false;
    seen[static_cast<size_t>(id)] = 1;
    return true;
  };
  double ws = 0;
  for (int i = a; i < b; ++i) {
    const NodeModel& m = model_[static_cast<size_t>(i)];
    for (int p : m.params)
      if (once(seen_p, p)) sm.param_bytes += static_cast<double>(g_->value(p).bytes());
    for (int r : m.saved)
      if (once(seen_s, r)) sm.act += value_bytes(r);
    for (int r : m.w_keep)
      if (once(seen_w, r)) sm.w_keep += value_bytes(r);
    ws = std::max(ws, m.workspace.at(u));
  }
  for (int id : stage_inputs(a, b)) {
    sm.received += value_bytes(id);
    if (once(seen_s, root_[static_cast<size_t>(id)])) sm.act += value_bytes(id);
  }
  sm.workspace = Affine{ws, 0};
  return sm;
}

}  // namespace smp::cost
