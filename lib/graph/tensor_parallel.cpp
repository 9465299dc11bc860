#include "graph/tensor_parallel.hpp"

#include "core/error.hpp"
#include "graph/loader.hpp"
#include "graph/op_registry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <functional>
#include <numeric>

namespace smp::graph {

// ---- split arithmetic -------------------------------------------------------------------------

int64_t shard_begin(int64_t inner, int T, int r, bool uneven) {
  if (!uneven) return inner / T * r;
  const int64_t base = inner / T, extra = inner % T;
  return base * r + std::min<int64_t>(r, extra);
}

int64_t shard_size(int64_t inner, int T, int r, bool uneven) {
  if (!uneven) return inner / T;
  return inner / T + (r < inner % T ? 1 : 0);
}

Shape shard_shape(const Shape& full, const ShardSpec& s, int T, int r) {
  if (!s.sharded()) return full;
  SMP_CHECK(s.axis < static_cast<int>(full.size()) && s.outer > 0 && full[static_cast<size_t>(s.axis)] % s.outer == 0,
            "split axis {} / outer {} does not fit shape {}", s.axis, s.outer, shape_str(full));
  Shape out = full;
  const int64_t inner = full[static_cast<size_t>(s.axis)] / s.outer;
  out[static_cast<size_t>(s.axis)] = s.outer * shard_size(inner, T, r, s.uneven);
  return out;
}

namespace {

// A tensor of `shape` viewed as [before, outer, inner, after] around the split axis.
struct Geometry {
  int64_t before = 1, outer = 1, inner = 1, after = 1;
};

Geometry geometry(const Shape& shape, const ShardSpec& s) {
  Geometry g;
  const size_t a = static_cast<size_t>(s.axis);
  for (size_t i = 0; i < a; ++i) g.before *= shape[i];
  for (size_t i = a + 1; i < shape.size(); ++i) g.after *= shape[i];
  g.outer = s.outer;
  g.inner = shape[a] / s.outer;
  return g;
}

// Calls f(offset in the whole tensor, offset in rank r's part, length), in elements, for every
// contiguous run of rank r's part.
template <class F>
void for_each_run(const Shape& full, const ShardSpec& s, int T, int r, F&& f) {
  const Geometry g = geometry(full, s);
  const int64_t b = shard_begin(g.inner, T, r, s.uneven), n = shard_size(g.inner, T, r, s.uneven);
  int64_t local = 0;
  for (int64_t p = 0; p < g.before; ++p)
    for (int64_t o = 0; o < g.outer; ++o) {
      const int64_t whole = ((p * g.outer + o) * g.inner + b) * g.after;
      f(whole, local, n * g.after);
      local += n * g.after;
    }
}

}  // namespace

TensorData shard_tensor(const TensorData& full, const ShardSpec& s, int T, int r) {
  if (!s.sharded()) return full;
  TensorData out;
  out.dtype = full.dtype;
  out.shape = shard_shape(full.shape, s, T, r);
  const int64_t es = dtype_size(full.dtype);
  out.bytes.resize(static_cast<size_t>(out.numel() * es));
  for_each_run(full.shape, s, T, r, [&](int64_t whole, int64_t local, int64_t len) {
    std::memcpy(out.bytes.data() + local * es, full.bytes.data() + whole * es, static_cast<size_t>(len * es));
  });
  return out;
}

TensorData unshard_tensor(const std::vector<TensorData>& parts, const ShardSpec& s, const Shape& full) {
  SMP_CHECK(!parts.empty(), "no parts to join");
  if (!s.sharded()) return parts[0];
  const int T = static_cast<int>(parts.size());
  TensorData out;
  out.dtype = parts[0].dtype;
  out.shape = full;
  const int64_t es = dtype_size(out.dtype);
  out.bytes.resize(static_cast<size_t>(out.numel() * es));
  for (int r = 0; r < T; ++r) {
    const TensorData& p = parts[static_cast<size_t>(r)];
    SMP_CHECK(p.shape == shard_shape(full, s, T, r) && p.dtype == out.dtype, "part {} is {}{}, expected {}", r,
              dtype_name(p.dtype), shape_str(p.shape), shape_str(shard_shape(full, s, T, r)));
    for_each_run(full, s, T, r, [&](int64_t whole, int64_t local, int64_t len) {
      std::memcpy(out.bytes.data() + whole * es, p.bytes.data() + local * es, static_cast<size_t>(len * es));
    });
  }
  return out;
}

std::shared_ptr<const TensorData> read_tensor_shard(const Value& v, const ShardSpec& s, int T, int r) {
  if (v.data) return std::make_shared<TensorData>(shard_tensor(*v.data, s, T, r));
  if (!v.external) throw_failure(v.name, "no data loaded for this tensor", "load the graph with weights");
  // The whole tensor mapped (read_external_bytes' checks and messages), only this rank's runs
  // copied out: the other ranks' pages are never read.
  const TensorData whole{v.dtype, v.shape, read_external_bytes(*v.external, v.bytes(), "tensor '" + v.name + "'")};
  return std::make_shared<TensorData>(shard_tensor(whole, s, T, r));
}

std::string_view tp_kind_name(TpKind k) {
  switch (k) {
    case TpKind::Mlp: return "mlp";
    case TpKind::Attention: return "attention";
    case TpKind::Embedding: return "embedding";
    case TpKind::LmHead: return "lm_head";
  }
  return "mlp";
}

// ---- analysis -----------------------------------------------------------------------------------

namespace {

bool default_domain(const Node& n) { return n.domain.empty() || n.domain == "ai.onnx"; }

bool is_elementwise(const std::string& op) {
  static const std::set<std::string> ops = {"Add",  "Sub",     "Mul",  "Div",     "Pow",     "Max",  "Min",  "Where",
                                            "Sqrt", "Reciprocal", "Neg", "Abs",   "Exp",     "Log",  "Relu", "LeakyRelu",
                                            "Tanh", "Sigmoid", "Erf",  "Gelu",    "Clip",    "Cast", "Identity",
                                            "Sin",  "Cos",     "Equal", "Less",   "Greater", "Not",  "Floor", "Ceil",
                                            "Dropout", "HardSigmoid", "HardSwish", "Elu", "Selu", "Celu", "Softplus",
                                            "Softsign", "ThresholdedRelu", "Sign", "Round"};
  return ops.count(op) != 0;
}

int64_t prod(const Shape& s, size_t a, size_t b) {
  int64_t p = 1;
  for (size_t i = a; i < b && i < s.size(); ++i) p *= s[i];
  return p;
}

int norm_axis(int64_t axis, size_t rank) {
  int64_t a = axis < 0 ? axis + static_cast<int64_t>(rank) : axis;
  return a < 0 || a >= static_cast<int64_t>(rank) ? -1 : static_cast<int>(a);
}

bool const_ints(const Graph& g, int v, std::vector<int64_t>& out) {
  if (v < 0) return false;
  const Value& val = g.value(v);
  if (val.kind != ValueKind::Constant || !val.data || !is_integer(val.data->dtype)) return false;
  out.clear();
  for (int64_t i = 0; i < val.data->numel(); ++i) out.push_back(val.data->get_i64(i));
  return true;
}

// Where the split factor of an input split `s` (shape `in`) lands in a reshaped shape `out`.
// The split is a factor of the flat index: the inner extent m at flat stride `stride`. It maps
// to the output axis holding the factor's top; below that axis every rank holds everything.
std::optional<ShardSpec> reshape_spec(const Shape& in, const ShardSpec& s, const Shape& out, int T) {
  if (s.uneven) return std::nullopt;
  const size_t a = static_cast<size_t>(s.axis);
  const int64_t m = in[a] / s.outer;
  const int64_t stride = prod(in, a + 1, in.size());
  const int64_t top = stride * m;
  int64_t lo = 1;
  for (int b = static_cast<int>(out.size()) - 1; b >= 0; --b) {
    const int64_t hi = lo * out[static_cast<size_t>(b)];
    if (top > lo && top <= hi) {
      int64_t n_here = 0;  // the part of the factor in axis b, times what lies below it in b
      if (stride >= lo) {
        if (stride % lo) return std::nullopt;
        n_here = m * (stride / lo);
        if (m % T) return std::nullopt;
      } else {
        if (lo % stride || top % lo) return std::nullopt;
        n_here = top / lo;
        if (n_here % T) return std::nullopt;
      }
      if (out[static_cast<size_t>(b)] % n_here) return std::nullopt;
      return ShardSpec{b, out[static_cast<size_t>(b)] / n_here, false};
    }
    lo = hi;
  }
  return std::nullopt;
}

// One attempt at growing a group from a set of column-parallel products.
class Attempt {
 public:
  Attempt(const Graph& g, int T, const std::set<int>& taken, const std::map<int, ShardSpec>& taken_params)
      : g_(g), T_(T), taken_(taken), taken_params_(taken_params) {}

  // Seeds: (node, outer). Returns true when the group closes.
  bool run(const std::vector<std::pair<int, int64_t>>& seeds) {
    for (auto [n, outer] : seeds)
      if (!seed(n, outer)) return false;
    while (!pending_.empty()) {
      int n = *pending_.begin();
      pending_.erase(pending_.begin());
      if (!visit(n)) return false;
    }
    return finish();
  }

  const std::string& why() const { return why_; }
  int extra_seed() const { return extra_seed_; }

  std::map<int, ShardSpec> spec, params;
  std::set<int> nodes, partial, copies;
  std::vector<int> column, row;
  std::map<int, TpRewrite> rewrites;
  int out_value = -1;
  bool attention = false;
  bool vocab_loss = false;  // the split closes in a vocabulary-parallel SoftmaxCrossEntropyLoss

 private:
  bool fail(const Node& n, const std::string& what) {
    if (why_.empty()) why_ = fmt::format("{} ({}): {}", n.name, n.op_type, what);
    return false;
  }

  ShardSpec spec_of(int v) const {
    auto it = spec.find(v);
    return it == spec.end() ? ShardSpec{} : it->second;
  }

  bool set_spec(const Node& at, int v, const ShardSpec& s) {
    if (v < 0) return true;
    const Value& val = g_.value(v);
    const int64_t size = val.shape[static_cast<size_t>(s.axis)];
    if (s.outer <= 0 || size % s.outer) return fail(at, "the split does not divide " + val.name);
    const int64_t inner = size / s.outer;
    if (!s.uneven && inner % T_) return fail(at, fmt::format("{}: {} does not split {} ways", val.name, inner, T_));
    if (s.uneven && inner < T_) return fail(at, fmt::format("{}: {} rows for {} ranks", val.name, inner, T_));
    auto it = spec.find(v);
    if (it != spec.end()) return it->second == s ? true : fail(at, val.name + " is split two ways");
    spec[v] = s;
    if (val.is_output) out_value = v;
    for (int c : val.consumers) {
      if (nodes.count(c)) return fail(g_.nodes[static_cast<size_t>(c)], "its split input arrives after it was placed");
      pending_.insert(c);
    }
    return true;
  }

  bool add_param(const Node& at, int p, const ShardSpec& s) {
    auto t = taken_params_.find(p);
    if (t != taken_params_.end() && !(t->second == s)) return fail(at, g_.value(p).name + " is split another way by another group");
    auto it = params.find(p);
    if (it != params.end()) return it->second == s ? true : fail(at, g_.value(p).name + " is split two ways");
    const int64_t size = g_.value(p).shape[static_cast<size_t>(s.axis)];
    if (size % s.outer || (!s.uneven && (size / s.outer) % T_)) return fail(at, g_.value(p).name + " does not split evenly");
    params[p] = s;
    return true;
  }

  bool add_node(int n) {
    if (taken_.count(n)) return fail(g_.nodes[static_cast<size_t>(n)], "already in another group");
    nodes.insert(n);
    return true;
  }

  // A replicated input of a group node: floats that may carry a gradient pass Megatron's f.
  void replicated_input(int v) {
    const Value& val = g_.value(v);
    if (!is_floating(val.dtype)) return;
    if (val.kind == ValueKind::Activation || val.kind == ValueKind::Parameter) copies.insert(v);
  }

  // The parameter behind the weight operand `v` of a product: the parameter itself ([K, N] as
  // MatMul reads it: *param_axis_of_n = 1), or Transpose(parameter [N, K]) (*param_axis_of_n = 0;
  // *tnode the Transpose). -1 otherwise.
  int weight_param(int v, int* tnode, int* param_axis_of_n) const {
    *tnode = -1;
    if (v < 0) return -1;
    const Value& val = g_.value(v);
    if (val.shape.size() != 2) return -1;
    if (val.kind == ValueKind::Parameter) {
      *param_axis_of_n = 1;
      return v;
    }
    if (val.kind != ValueKind::Activation || val.producer < 0 || val.consumers.size() != 1) return -1;
    const Node& t = g_.nodes[static_cast<size_t>(val.producer)];
    if (t.op_type != "Transpose" || !default_domain(t) || t.inputs.empty()) return -1;
    auto perm = t.attr_ints("perm", {1, 0});
    if (perm != std::vector<int64_t>{1, 0}) return -1;
    const int p = t.inputs[0];
    if (p < 0 || g_.value(p).kind != ValueKind::Parameter || g_.value(p).shape.size() != 2) return -1;
    *tnode = val.producer;
    *param_axis_of_n = 0;
    return p;
  }

  bool seed(int n, int64_t outer) {
    const Node& node = g_.nodes[static_cast<size_t>(n)];
    if (!add_node(n)) return false;
    column.push_back(n);
    const int y = node.outputs.empty() ? -1 : node.outputs[0];
    if (y < 0) return fail(node, "no output");
    const Shape& ys = g_.value(y).shape;
    const int64_t N = ys.back();
    if (N % outer) return fail(node, "columns do not divide");
    const bool uneven = outer == 1 && (N % T_) != 0;
    const ShardSpec out{static_cast<int>(ys.size()) - 1, outer, uneven};
    if (node.op_type == "MatMul") {
      int tnode = -1, axis_n = 1;
      int p = weight_param(node.inputs[1], &tnode, &axis_n);
      if (p < 0) return fail(node, "its weight is not a parameter");
      if (tnode >= 0) {
        if (!add_node(tnode)) return false;
        if (!set_local(node, node.inputs[1], ShardSpec{1, outer, uneven})) return false;
      }
      if (!add_param(node, p, ShardSpec{axis_n, outer, uneven})) return false;
    } else {  // Gemm
      if (node.attr_int("transA", 0) != 0) return fail(node, "transA");
      const int b = node.inputs[1];
      if (b < 0 || g_.value(b).kind != ValueKind::Parameter) return fail(node, "its weight is not a parameter");
      if (!add_param(node, b, ShardSpec{node.attr_int("transB", 0) ? 0 : 1, outer, uneven})) return false;
      if (node.inputs.size() > 2 && node.inputs[2] >= 0) {
        const int c = node.inputs[2];
        const Value& cv = g_.value(c);
        if (cv.shape.size() == 1 && cv.shape[0] == N) {
          if (cv.kind == ValueKind::Parameter) {
            if (!add_param(node, c, ShardSpec{0, outer, uneven})) return false;
          } else if (cv.kind == ValueKind::Constant) {
            rewrites[n].const_inputs[2] = ShardSpec{0, outer, uneven};
          } else {
            return fail(node, "its bias is an activation");
          }
        } else if (cv.numel() != 1) {
          return fail(node, "its bias is not a vector of its columns");
        }
      }
    }
    const int x = node.inputs[0];
    if (x < 0 || spec.count(x)) return fail(node, "its input is split");
    replicated_input(x);
    return set_spec(node, y, out);
  }

  // A value split inside a weight path (Transpose(W)): no consumers to follow.
  bool set_local(const Node& at, int v, const ShardSpec& s) {
    if (spec.count(v) && !(spec[v] == s)) return fail(at, "split two ways");
    spec[v] = s;
    return true;
  }

  // Elementwise with broadcasting: every split input on the same output axis.
  bool elementwise(int n) {
    const Node& node = g_.nodes[static_cast<size_t>(n)];
    const int y = node.outputs[0];
    const Shape& O = g_.value(y).shape;
    const int rO = static_cast<int>(O.size());
    int a_out = -1;
    ShardSpec s;
    for (int v : node.inputs) {
      if (v < 0 || !spec.count(v)) continue;
      const ShardSpec& sv = spec[v];
      const int rin = static_cast<int>(g_.value(v).shape.size());
      const int a = sv.axis + (rO - rin);
      if (g_.value(v).shape[static_cast<size_t>(sv.axis)] != O[static_cast<size_t>(a)]) return fail(node, "a split input is broadcast");
      if (a_out >= 0 && (a != a_out || !(sv.outer == s.outer && sv.uneven == s.uneven)))
        return fail(node, "inputs split on different axes");
      a_out = a;
      s = sv;
    }
    for (size_t i = 0; i < node.inputs.size(); ++i) {
      const int v = node.inputs[i];
      if (v < 0 || spec.count(v)) continue;
      const Value& val = g_.value(v);
      const int rin = static_cast<int>(val.shape.size());
      const int a_in = a_out - (rO - rin);
      const bool full = a_in >= 0 && val.shape[static_cast<size_t>(a_in)] == O[static_cast<size_t>(a_out)] && O[static_cast<size_t>(a_out)] > 1;
      if (!full) {
        replicated_input(v);
        continue;
      }
      const ShardSpec sin{a_in, s.outer, s.uneven};
      if (val.kind == ValueKind::Constant && val.data) {
        rewrites[n].const_inputs[static_cast<int>(i)] = sin;
      } else if (val.kind == ValueKind::Parameter) {
        if (!add_param(node, v, sin)) return false;
      } else {
        // A replicated activation of full size on the split axis: another column-parallel
        // product may produce it (separate q, k, v projections); the caller retries with it.
        find_upstream_seed(v);
        return fail(node, "a replicated activation " + val.name + " meets the split axis");
      }
    }
    for (int o : node.outputs)
      if (o >= 0 && !set_spec(node, o, ShardSpec{a_out, s.outer, s.uneven})) return false;
    return true;
  }

  // Walks up from `v` through single-activation ops to a product with a parameter weight.
  void find_upstream_seed(int v) {
    for (int step = 0; step < 12 && v >= 0; ++step) {
      const Value& val = g_.value(v);
      if (val.kind != ValueKind::Activation || val.producer < 0) return;
      const int p = val.producer;
      const Node& n = g_.nodes[static_cast<size_t>(p)];
      if (!default_domain(n)) return;
      if ((n.op_type == "MatMul" || n.op_type == "Gemm") && !taken_.count(p) && !nodes.count(p)) {
        int t = -1, ax = 1;
        if (n.op_type == "Gemm" ? (n.inputs.size() > 1 && n.inputs[1] >= 0 && g_.value(n.inputs[1]).kind == ValueKind::Parameter)
                                : weight_param(n.inputs[1], &t, &ax) >= 0) {
          extra_seed_ = p;
          return;
        }
        return;
      }
      int next = -1;
      for (int in : n.inputs)
        if (in >= 0 && g_.value(in).kind == ValueKind::Activation) {
          if (next >= 0) return;  // more than one activation input
          next = in;
        }
      v = next;
    }
  }

  bool visit(int n) {
    const Node& node = g_.nodes[static_cast<size_t>(n)];
    if (nodes.count(n)) return fail(node, "reached twice");
    if (!default_domain(node)) return fail(node, "an op of domain " + node.domain);
    if (!add_node(n)) return false;
    const std::string& op = node.op_type;
    const int y = node.outputs.empty() ? -1 : node.outputs[0];
    if (is_elementwise(op)) return elementwise(n);
    if (op == "Softmax" || op == "LogSoftmax") {
      const ShardSpec s = spec_of(node.inputs[0]);
      const int ax = norm_axis(node.attr_int("axis", g_.opset >= 13 ? -1 : 1), g_.value(node.inputs[0]).shape.size());
      if (g_.opset < 13) return fail(node, "opset < 13 softmax flattens axes");
      if (ax == s.axis) return fail(node, "normalises over the split axis");
      attention = true;
      return set_spec(node, y, s);
    }
    if (op == "MatMul") return matmul(n);
    if (op == "Gemm") return gemm(n);
    if (op == "Transpose") {
      const ShardSpec s = spec_of(node.inputs[0]);
      const size_t R = g_.value(node.inputs[0]).shape.size();
      std::vector<int64_t> dflt(R);
      for (size_t i = 0; i < R; ++i) dflt[i] = static_cast<int64_t>(R - 1 - i);
      auto perm = node.attr_ints("perm", dflt);
      for (size_t j = 0; j < perm.size(); ++j)
        if (perm[j] == s.axis) return set_spec(node, y, ShardSpec{static_cast<int>(j), s.outer, s.uneven});
      return fail(node, "bad perm");
    }
    if (op == "Reshape" || op == "Flatten") {
      if (op == "Reshape" && (node.inputs.size() < 2 || spec.count(node.inputs[1]))) return fail(node, "its shape is split");
      std::vector<int64_t> tmp;
      if (op == "Reshape" && !const_ints(g_, node.inputs[1], tmp)) return fail(node, "its shape is not a constant");
      const ShardSpec s = spec_of(node.inputs[0]);
      auto o = reshape_spec(g_.value(node.inputs[0]).shape, s, g_.value(y).shape, T_);
      if (!o)
        return fail(node, fmt::format("the split of {} does not map onto {} ({} parts must divide the factor it lands on)",
                                      shape_str(g_.value(node.inputs[0]).shape), shape_str(g_.value(y).shape), T_));
      if (op == "Reshape") rewrites[n].reshape_shape = true;
      return set_spec(node, y, *o);
    }
    if (op == "Squeeze" || op == "Unsqueeze") {
      // The split axis keeps its place among the axes of size > 1 that both shapes share.
      const Shape& in = g_.value(node.inputs[0]).shape;
      const ShardSpec s = spec_of(node.inputs[0]);
      auto o = reshape_spec(in, s, g_.value(y).shape, T_);
      if (!o) return fail(node, "the split does not map onto the new shape");
      return set_spec(node, y, *o);
    }
    if (op == "SoftmaxCrossEntropyLoss") {
      // scores [N, C, ...] split over the classes: the loss (replicated) closes the group
      const ShardSpec s = spec_of(node.inputs[0]);
      if (s.axis != 1 || s.outer != 1) return fail(node, "its scores are split on another axis than the classes");
      if (node.inputs.size() < 2 || node.inputs[1] < 0 || spec.count(node.inputs[1])) return fail(node, "its labels are split");
      if (node.inputs.size() > 2 && node.inputs[2] >= 0) return fail(node, "class weights");
      if (node.outputs.size() > 1 && node.outputs[1] >= 0) return fail(node, "its log-probability output");
      rewrites[n].vocab_loss = true;
      vocab_loss = true;
      return true;
    }
    if (op == "Split") return split(n);
    if (op == "Slice") return slice(n);
    if (op == "Gather") {
      const ShardSpec s = spec_of(node.inputs[0]);
      if (!s.sharded() || spec.count(node.inputs[1])) return fail(node, "its indices are split");
      const Value& idx = g_.value(node.inputs[1]);
      if (idx.kind != ValueKind::Constant) return fail(node, "its indices are not constant");
      const int ax = norm_axis(node.attr_int("axis", 0), g_.value(node.inputs[0]).shape.size());
      if (ax == s.axis) return fail(node, "gathers along the split axis");
      const int r_idx = static_cast<int>(idx.shape.size());
      const int a = s.axis < ax ? s.axis : s.axis - 1 + r_idx;
      return set_spec(node, y, ShardSpec{a, s.outer, s.uneven});
    }
    return fail(node, "this op does not keep the split");
  }

  bool matmul(int n) {
    const Node& node = g_.nodes[static_cast<size_t>(n)];
    const int A = node.inputs[0], Bv = node.inputs[1], y = node.outputs[0];
    const ShardSpec sa = spec_of(A), sb = spec_of(Bv);
    const int rA = static_cast<int>(g_.value(A).shape.size()), rB = static_cast<int>(g_.value(Bv).shape.size());
    if (sa.sharded() && !sb.sharded()) {
      int tnode = -1, axis_n = 1;
      const int p = weight_param(Bv, &tnode, &axis_n);
      if (p < 0) {
        find_upstream_seed(Bv);
        return fail(node, "multiplies a split activation by a replicated one");
      }
      if (sa.axis != rA - 1 || sa.outer != 1 || sa.uneven) return fail(node, "a replicated weight meets a split batch axis");
      // Row-parallel: the weight's rows (K) split like the activation's columns.
      if (tnode >= 0) {
        if (!add_node(tnode)) return false;
        if (!set_local(node, Bv, ShardSpec{0, 1, false})) return false;
      }
      if (!add_param(node, p, ShardSpec{axis_n == 1 ? 0 : 1, 1, false})) return false;
      row.push_back(n);
      partial.insert(y);
      return true;
    }
    if (sa.sharded() && sb.sharded()) {
      if (rA < 3 || rB < 3 || sa.axis >= rA - 2 || sb.axis >= rB - 2) return fail(node, "contracts over a split axis");
      const int rO = static_cast<int>(g_.value(y).shape.size());
      const int a1 = sa.axis + (rO - rA), a2 = sb.axis + (rO - rB);
      if (a1 != a2 || sa.outer != sb.outer || sa.uneven || sb.uneven) return fail(node, "operands split on different axes");
      attention = true;
      return set_spec(node, y, ShardSpec{a1, sa.outer, false});
    }
    // Only the right operand is split: the left one must be too.
    find_upstream_seed(A);
    return fail(node, "multiplies a replicated activation by a split one");
  }

  bool gemm(int n) {
    const Node& node = g_.nodes[static_cast<size_t>(n)];
    const int A = node.inputs[0], Bv = node.inputs[1], y = node.outputs[0];
    const ShardSpec sa = spec_of(A);
    if (!sa.sharded() || spec.count(Bv)) return fail(node, "its weight is split");
    if (node.attr_int("transA", 0) != 0 || sa.axis != 1 || sa.outer != 1 || sa.uneven) return fail(node, "split on its rows");
    if (Bv < 0 || g_.value(Bv).kind != ValueKind::Parameter) return fail(node, "its weight is not a parameter");
    if (!add_param(node, Bv, ShardSpec{node.attr_int("transB", 0) ? 1 : 0, 1, false})) return false;
    if (node.inputs.size() > 2 && node.inputs[2] >= 0) {
      if (spec.count(node.inputs[2])) return fail(node, "its bias is split");
      if (node.attr_float("beta", 1.0) != 1.0) return fail(node, "beta != 1 with a bias");
      rewrites[n].gemm_bias_after = true;
    }
    row.push_back(n);
    partial.insert(y);
    return true;
  }

  bool split(int n) {
    const Node& node = g_.nodes[static_cast<size_t>(n)];
    const ShardSpec s = spec_of(node.inputs[0]);
    const Shape& in = g_.value(node.inputs[0]).shape;
    const int ax = norm_axis(node.attr_int("axis", 0), in.size());
    if (ax != s.axis) {
      for (int o : node.outputs)
        if (o >= 0 && !set_spec(node, o, s)) return false;
      return true;
    }
    if (s.uneven) return fail(node, "splits an uneven split");
    const int64_t m = in[static_cast<size_t>(ax)] / s.outer;
    for (int o : node.outputs) {
      if (o < 0) return fail(node, "an absent output");
      const int64_t size = g_.value(o).shape[static_cast<size_t>(ax)];
      if (size % m) return fail(node, "parts cut through the split blocks");
      if (!set_spec(node, o, ShardSpec{ax, size / m, false})) return false;
    }
    if ((node.inputs.size() > 1 && node.inputs[1] >= 0) || node.has_attr("split")) rewrites[n].split_sizes = true;
    if (node.inputs.size() > 1 && node.inputs[1] >= 0) {
      std::vector<int64_t> tmp;
      if (!const_ints(g_, node.inputs[1], tmp)) return fail(node, "its sizes are not constant");
    }
    return true;
  }

  bool slice(int n) {
    const Node& node = g_.nodes[static_cast<size_t>(n)];
    const ShardSpec s = spec_of(node.inputs[0]);
    const Shape& in = g_.value(node.inputs[0]).shape;
    if (node.has_attr("starts")) return fail(node, "opset < 10 slice");
    std::vector<int64_t> starts, ends, axes, steps;
    for (size_t i = 1; i < node.inputs.size(); ++i)
      if (node.inputs[i] >= 0 && spec.count(node.inputs[i])) return fail(node, "a split slice parameter");
    if (!const_ints(g_, node.inputs[1], starts) || !const_ints(g_, node.inputs[2], ends))
      return fail(node, "its bounds are not constant");
    if (node.inputs.size() > 3 && node.inputs[3] >= 0 && !const_ints(g_, node.inputs[3], axes)) return fail(node, "axes not constant");
    if (node.inputs.size() > 4 && node.inputs[4] >= 0 && !const_ints(g_, node.inputs[4], steps)) return fail(node, "steps not constant");
    if (axes.empty())
      for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
    const int y = node.outputs[0];
    for (size_t k = 0; k < axes.size(); ++k) {
      if (norm_axis(axes[k], in.size()) != s.axis) continue;
      if (s.uneven) return fail(node, "slices an uneven split");
      if (!steps.empty() && steps[k] != 1) return fail(node, "a strided slice of the split axis");
      const int64_t S = in[static_cast<size_t>(s.axis)], m = S / s.outer;
      auto clampv = [S](int64_t v) { return std::clamp<int64_t>(v < 0 ? v + S : v, 0, S); };
      const int64_t b = clampv(starts[k]), e = clampv(ends[k]);
      if (b % m || e % m || e <= b) return fail(node, "cuts through the split blocks");
      TpRewrite& rw = rewrites[n];
      rw.slice_axis_pos = static_cast<int>(k);
      rw.slice_inner = m;
      rw.slice_begin_blocks = b / m;
      rw.slice_end_blocks = e / m;
      return set_spec(node, y, ShardSpec{s.axis, (e - b) / m, false});
    }
    return set_spec(node, y, s);
  }

  bool finish() {
    bool uneven = false;
    for (auto& [v, s] : spec) uneven |= s.uneven;
    if (out_value >= 0) {
      const Value& o = g_.value(out_value);
      const ShardSpec s = spec[out_value];
      const Node& at = g_.nodes[static_cast<size_t>(o.producer)];
      if (g_.outputs.size() != 1 || !row.empty() || s.axis != static_cast<int>(o.shape.size()) - 1 || s.outer != 1 ||
          o.shape.size() < 2)
        return fail(at, "the split reaches the model's output");
      for (int v : g_.value(out_value).consumers) return fail(g_.nodes[static_cast<size_t>(v)], "reads the split output");
      return true;
    }
    if (vocab_loss) {
      if (!row.empty()) return fail(g_.nodes[static_cast<size_t>(row[0])], "a row-parallel product before the loss");
      return true;
    }
    if (uneven) return fail(g_.nodes[static_cast<size_t>(column[0])], "columns do not split evenly");
    if (row.empty()) return fail(g_.nodes[static_cast<size_t>(column[0])], "no row-parallel product closes the split");
    return true;
  }

  const Graph& g_;
  int T_;
  const std::set<int>& taken_;
  const std::map<int, ShardSpec>& taken_params_;
  std::set<int> pending_;
  std::string why_;
  int extra_seed_ = -1;
};

bool column_candidate(const Graph& g, const Node& n) {
  if (!default_domain(n) || n.outputs.empty() || n.outputs[0] < 0 || n.inputs.size() < 2) return false;
  if (n.op_type == "Gemm") return n.inputs[1] >= 0 && g.value(n.inputs[1]).kind == ValueKind::Parameter;
  if (n.op_type != "MatMul") return false;
  const int w = n.inputs[1];
  if (w < 0 || g.value(w).shape.size() != 2) return false;
  const Value& wv = g.value(w);
  if (wv.kind == ValueKind::Parameter) return true;
  if (wv.kind != ValueKind::Activation || wv.producer < 0) return false;
  const Node& t = g.nodes[static_cast<size_t>(wv.producer)];
  return t.op_type == "Transpose" && !t.inputs.empty() && t.inputs[0] >= 0 &&
         g.value(t.inputs[0]).kind == ValueKind::Parameter;
}

// The module path shared by the names of a group's first and last products, cut at a '/' or '.'
// boundary: "/blocks.0/attn/qkv/MatMul" and "/blocks.0/attn/proj/MatMul" -> "blocks.0/attn";
// when they differ by a layer index or share nothing, both: "layers.0+layers.1".
std::string group_name(const Graph& g, const std::vector<int>& products) {
  auto module = [&](int n) {
    std::string s = g.nodes[static_cast<size_t>(n)].name;
    while (!s.empty() && s.front() == '/') s.erase(s.begin());
    const size_t cut = s.rfind('/');
    return cut == std::string::npos ? s : s.substr(0, cut);  // without the op's own name
  };
  const std::string a = module(products.front()), b = module(products.back());
  auto sep = [](const std::string& x, size_t k) { return k == x.size() || x[k] == '/' || x[k] == '.'; };
  size_t k = 0;
  while (k < a.size() && k < b.size() && a[k] == b[k]) ++k;
  while (k > 0 && !(sep(a, k) && sep(b, k))) --k;
  auto digit_after = [&](const std::string& x) { return k + 1 < x.size() && std::isdigit(static_cast<unsigned char>(x[k + 1])); };
  if (a == b) return a;
  if (k == 0 || digit_after(a) || digit_after(b)) return a + "+" + b;
  return a.substr(0, k);
}

}  // namespace

TpAnalysis analyze_tensor_parallel(const Graph& g, int T) {
  TpAnalysis a;
  a.degree = T;
  a.group_of_node.assign(g.nodes.size(), -1);
  if (T > 1) {
    std::set<int> taken;
    auto accept = [&](TpGroup grp, Attempt& at) {
      const int gi = static_cast<int>(a.groups.size());
      for (int n : at.nodes) {
        taken.insert(n);
        a.group_of_node[static_cast<size_t>(n)] = gi;
      }
      grp.nodes.assign(at.nodes.begin(), at.nodes.end());
      grp.column = at.column;
      grp.row = at.row;
      std::sort(grp.column.begin(), grp.column.end());
      for (auto& [p, s] : at.params) {
        a.params[p] = s;
        grp.parameters.push_back(p);
        grp.sharded_elems += g.value(p).numel();
      }
      for (auto& [v, s] : at.spec) a.values[v] = s;
      a.copies.insert(at.copies.begin(), at.copies.end());
      a.partial.insert(at.partial.begin(), at.partial.end());
      for (auto& [n, rw] : at.rewrites) a.rewrites[n] = rw;
      if (at.out_value >= 0) a.sharded_output = at.out_value;
      std::vector<int> products = grp.column;
      products.insert(products.end(), grp.row.begin(), grp.row.end());
      if (!products.empty()) grp.name = group_name(g, products);
      a.groups.push_back(std::move(grp));
    };
    for (size_t i = 0; i < g.nodes.size(); ++i) {
      const Node& n = g.nodes[i];
      if (taken.count(static_cast<int>(i))) continue;
      // The token embedding: Gather(parameter [V, d], integer ids) along the rows.
      if (n.op_type == "Gather" && default_domain(n) && n.inputs.size() == 2 && n.inputs[0] >= 0 && n.inputs[1] >= 0 &&
          g.value(n.inputs[0]).kind == ValueKind::Parameter && g.value(n.inputs[0]).shape.size() == 2 &&
          is_integer(g.value(n.inputs[1]).dtype) && g.value(n.inputs[1]).kind != ValueKind::Constant &&
          norm_axis(n.attr_int("axis", 0), 2) == 0) {
        const int p = n.inputs[0];
        const int64_t V = g.value(p).shape[0];
        const ShardSpec s{0, 1, V % T != 0};
        auto t = a.params.find(p);
        if (V < T || (t != a.params.end() && !(t->second == s))) {
          a.notes.push_back(fmt::format("{} (Gather): the embedding's rows do not split {} ways", n.name, T));
          continue;
        }
        Attempt at(g, T, taken, a.params);
        at.nodes.insert(static_cast<int>(i));
        at.params[p] = s;
        at.partial.insert(n.outputs[0]);
        at.rewrites[static_cast<int>(i)].vocab_gather = true;
        TpGroup grp;
        grp.kind = TpKind::Embedding;
        accept(std::move(grp), at);
        a.groups.back().name = g.value(p).name;
        continue;
      }
      if (!column_candidate(g, n)) continue;
      // The output columns may be one block per rank (outer 1) or blocks within each of a few
      // fused parts (q|k|v: 3; gate|up: 2).
      const int64_t N = g.value(n.outputs[0]).shape.empty() ? 0 : g.value(n.outputs[0]).shape.back();
      std::string why;  // from the attempt that got furthest
      size_t furthest = 0;
      bool done = false;
      for (int64_t outer : {1, 3, 2, 4}) {
        if (N <= 0 || N % outer) continue;
        std::vector<std::pair<int, int64_t>> seeds = {{static_cast<int>(i), outer}};
        for (int retry = 0; retry < 4 && !done; ++retry) {
          Attempt at(g, T, taken, a.params);
          if (at.run(seeds)) {
            TpGroup grp;
            grp.kind = at.out_value >= 0 || at.vocab_loss ? TpKind::LmHead : at.attention ? TpKind::Attention : TpKind::Mlp;
            accept(std::move(grp), at);
            done = true;
            break;
          }
          if (why.empty() || at.nodes.size() > furthest) {
            why = at.why();
            furthest = at.nodes.size();
          }
          if (at.extra_seed() < 0) break;
          seeds.push_back({at.extra_seed(), outer});  // separate q, k, v projections: split together
        }
        if (done) break;
      }
      if (!done && !why.empty()) a.notes.push_back(fmt::format("{} ({}) not split: {}", n.name, n.op_type, why));
    }
    // A split parameter must be read by its groups only (a tied embedding whose head stays
    // replicated cannot be split): drop groups until that holds.
    bool changed = true;
    while (changed) {
      changed = false;
      for (auto& [p, s] : a.params) {
        int bad = -1;
        for (int c : g.value(p).consumers)
          if (a.group_of_node[static_cast<size_t>(c)] < 0) bad = c;
        if (bad < 0) continue;
        // Drop every group that splits p.
        std::vector<TpGroup> kept;
        std::vector<int> remap(a.groups.size(), -1);
        for (size_t gi = 0; gi < a.groups.size(); ++gi) {
          const auto& ps = a.groups[gi].parameters;
          if (std::find(ps.begin(), ps.end(), p) != ps.end()) {
            a.notes.push_back(fmt::format("{} not split: {} is also read by {}, which stays replicated", a.groups[gi].name,
                                          g.value(p).name, g.nodes[static_cast<size_t>(bad)].name));
            continue;
          }
          remap[gi] = static_cast<int>(kept.size());
          kept.push_back(a.groups[gi]);
        }
        // Rebuild the maps from the kept groups (a second analysis pass restricted to them is
        // simpler than undoing): recompute everything from scratch without the dropped seeds.
        TpAnalysis b;
        b.degree = T;
        b.group_of_node.assign(g.nodes.size(), -1);
        for (size_t gi = 0; gi < kept.size(); ++gi)
          for (int n : kept[gi].nodes) b.group_of_node[static_cast<size_t>(n)] = static_cast<int>(gi);
        for (const auto& [v, sv] : a.values)
          if (g.value(v).producer >= 0 && b.group_of_node[static_cast<size_t>(g.value(v).producer)] >= 0) b.values[v] = sv;
        for (const auto& grp : kept)
          for (int q : grp.parameters) b.params[q] = a.params[q];
        for (int v : a.copies) {
          bool used = false;
          for (int c : g.value(v).consumers) used |= b.group_of_node[static_cast<size_t>(c)] >= 0;
          if (used) b.copies.insert(v);
        }
        for (int v : a.partial)
          if (b.group_of_node[static_cast<size_t>(g.value(v).producer)] >= 0) b.partial.insert(v);
        for (const auto& [n, rw] : a.rewrites)
          if (b.group_of_node[static_cast<size_t>(n)] >= 0) b.rewrites[n] = rw;
        if (a.sharded_output >= 0 && b.values.count(a.sharded_output)) b.sharded_output = a.sharded_output;
        b.groups = std::move(kept);
        b.notes = std::move(a.notes);
        a = std::move(b);
        changed = true;
        break;
      }
    }
  }
  for (int p : g.parameters) (a.params.count(p) ? a.sharded_params : a.replicated_params) += g.value(p).numel();
  return a;
}

VocabRange output_vocab_range(const Graph& g, const TpAnalysis& a, int rank) {
  VocabRange r;
  if (g.outputs.empty()) return r;
  const Value& o = g.value(g.outputs[0]);
  r.total = o.shape.empty() ? 0 : o.shape.back();
  r.size = r.total;
  if (a.sharded_output < 0) return r;
  const ShardSpec& s = a.values.at(a.sharded_output);
  r.begin = shard_begin(r.total, a.degree, rank, s.uneven);
  r.size = shard_size(r.total, a.degree, rank, s.uneven);
  return r;
}

// ---- the per-rank graph ---------------------------------------------------------------------------

namespace {

std::shared_ptr<TensorData> int_tensor(const std::vector<int64_t>& v) {
  auto t = std::make_shared<TensorData>();
  t->dtype = DType::I64;
  t->shape = {static_cast<int64_t>(v.size())};
  t->bytes.resize(v.size() * sizeof(int64_t));
  std::memcpy(t->bytes.data(), v.data(), t->bytes.size());
  return t;
}

}  // namespace

Graph shard_graph(const Graph& g, const TpAnalysis& a, int rank, const ShardOptions& opt) {
  const int T = a.degree;
  SMP_CHECK(rank >= 0 && rank < T, "rank {} of a group of {}", rank, T);
  Graph out;
  out.model_path = g.model_path;
  out.name = g.name;
  out.opset = g.opset;
  out.onnx_nodes = g.onnx_nodes;
  out.values = g.values;
  out.value_index = g.value_index;
  out.inputs = g.inputs;
  out.outputs = g.outputs;
  out.parameters = g.parameters;
  out.dims = g.dims;
  out.warnings = g.warnings;
  for (auto& v : out.values) {
    v.consumers.clear();
    v.producer = -1;
  }
  for (const auto& [v, s] : a.values) out.value(v).shape = shard_shape(g.value(v).shape, s, T, rank);
  for (const auto& [p, s] : a.params) {
    Value& v = out.value(p);
    v.shape = shard_shape(g.value(p).shape, s, T, rank);
    if (opt.load_weights && (!opt.want_weight || opt.want_weight(v.name))) v.data = read_tensor_shard(g.value(p), s, T, rank);
    else if (v.data) v.data = std::make_shared<TensorData>(shard_tensor(*v.data, s, T, rank));
    v.external.reset();  // it describes the whole tensor
  }
  auto add_value = [&](const std::string& name, DType dt, const Shape& shape, ValueKind kind,
                       std::shared_ptr<const TensorData> data) {
    SMP_CHECK(out.find_value(name) < 0, "value '{}' exists already", name);
    Value v;
    v.name = name;
    v.dtype = dt;
    v.shape = shape;
    v.kind = kind;
    v.data = std::move(data);
    const int id = static_cast<int>(out.values.size());
    out.values.push_back(std::move(v));
    out.value_index[name] = id;
    return id;
  };
  auto const_value = [&](const std::string& name, std::shared_ptr<const TensorData> d) {
    const DType dt = d->dtype;
    const Shape shape = d->shape;
    return add_value(name, dt, shape, ValueKind::Constant, std::move(d));
  };

  std::map<int, int> copy_of;  // replicated value -> its TpCopy output
  std::vector<Node> nodes;
  nodes.reserve(g.nodes.size() + a.copies.size() + a.partial.size() * 2);
  auto tp_node = [&](const std::string& name, const std::string& op, std::vector<int> ins, std::vector<int> outs) {
    Node n;
    n.name = name;
    n.op_type = op;
    n.inputs = std::move(ins);
    n.outputs = std::move(outs);
    Attribute grp;
    grp.kind = Attribute::Kind::Int;
    grp.i = T;
    n.attrs["group_size"] = grp;
    return n;
  };

  for (size_t i = 0; i < g.nodes.size(); ++i) {
    Node n = g.nodes[i];
    const int grp = a.group_of_node[i];
    // Megatron's f before the first group node that reads a replicated value.
    if (grp >= 0)
      for (int& v : n.inputs) {
        if (v < 0 || !a.copies.count(v)) continue;
        auto it = copy_of.find(v);
        if (it == copy_of.end()) {
          const Value& src = out.value(v);
          const int c = add_value(src.name + "/tp_copy", src.dtype, src.shape, ValueKind::Activation, nullptr);
          nodes.push_back(tp_node(n.name + "/tp_copy", "TpCopy", {v}, {c}));
          it = copy_of.emplace(v, c).first;
        }
        v = it->second;
      }
    auto rw_it = a.rewrites.find(static_cast<int>(i));
    const TpRewrite* rw = rw_it == a.rewrites.end() ? nullptr : &rw_it->second;
    int bias = -1;
    if (rw) {
      if (rw->reshape_shape) {
        const Shape& local = out.value(n.outputs[0]).shape;
        n.inputs[1] = const_value(n.name + "/tp_shape", int_tensor(std::vector<int64_t>(local.begin(), local.end())));
      }
      if (rw->split_sizes) {
        const int ax = [&] {
          int64_t x = n.attr_int("axis", 0);
          return static_cast<int>(x < 0 ? x + static_cast<int64_t>(g.value(n.inputs[0]).shape.size()) : x);
        }();
        std::vector<int64_t> sizes;
        for (int o : n.outputs) sizes.push_back(out.value(o).shape[static_cast<size_t>(ax)]);
        if (n.inputs.size() > 1 && n.inputs[1] >= 0) n.inputs[1] = const_value(n.name + "/tp_split", int_tensor(sizes));
        if (n.has_attr("split")) n.attrs["split"].ints = sizes;
      }
      if (rw->slice_axis_pos >= 0) {
        const ShardSpec& s = a.values.at(n.inputs[0]);
        const int64_t lm = shard_size(rw->slice_inner, T, rank, s.uneven);
        std::vector<int64_t> starts, ends;
        const_ints(g, g.nodes[i].inputs[1], starts);
        const_ints(g, g.nodes[i].inputs[2], ends);
        starts[static_cast<size_t>(rw->slice_axis_pos)] = rw->slice_begin_blocks * lm;
        ends[static_cast<size_t>(rw->slice_axis_pos)] = rw->slice_end_blocks * lm;
        n.inputs[1] = const_value(n.name + "/tp_starts", int_tensor(starts));
        n.inputs[2] = const_value(n.name + "/tp_ends", int_tensor(ends));
      }
      for (const auto& [k, s] : rw->const_inputs) {
        const int v = n.inputs[static_cast<size_t>(k)];
        n.inputs[static_cast<size_t>(k)] =
            const_value(fmt::format("{}/tp_input{}", n.name, k), std::make_shared<TensorData>(shard_tensor(*g.value(v).data, s, T, rank)));
      }
      if (rw->gemm_bias_after) {
        bias = n.inputs[2];
        n.inputs.resize(2);
      }
      if (rw->vocab_loss) {
        n.op_type = "TpSoftmaxCrossEntropyLoss";
        const ShardSpec& s = a.values.at(n.inputs[0]);
        const int64_t classes = g.value(n.inputs[0]).shape[1];
        Attribute at;
        at.kind = Attribute::Kind::Int;
        at.i = shard_begin(classes, T, rank, s.uneven);
        n.attrs["start"] = at;
        at.i = classes;
        n.attrs["classes"] = at;
      }
      if (rw->vocab_gather) {
        n.op_type = "TpVocabGather";
        const ShardSpec& s = a.params.at(n.inputs[0]);
        Attribute st;
        st.kind = Attribute::Kind::Int;
        st.i = shard_begin(g.value(n.inputs[0]).shape[0], T, rank, s.uneven);
        n.attrs["start"] = st;
        st.i = g.value(n.inputs[0]).shape[0];
        n.attrs["vocab"] = st;
        n.attrs.erase("axis");
      }
    }
    // Megatron's g after a row-parallel product (before its bias) and the split embedding.
    const int y = n.outputs.empty() ? -1 : n.outputs[0];
    if (y >= 0 && a.partial.count(y)) {
      const Value& yv = out.value(y);
      const int part = add_value(yv.name + "/tp_partial", yv.dtype, yv.shape, ValueKind::Activation, nullptr);
      n.outputs[0] = part;
      const std::string name = n.name;
      nodes.push_back(std::move(n));
      if (bias >= 0) {
        const int red = add_value(out.value(y).name + "/tp_reduced", out.value(y).dtype, out.value(y).shape, ValueKind::Activation, nullptr);
        nodes.push_back(tp_node(name + "/tp_allreduce", "TpAllReduce", {part}, {red}));
        Node add;
        add.name = name + "/tp_bias";
        add.op_type = "Add";
        add.inputs = {red, bias};
        add.outputs = {y};
        nodes.push_back(std::move(add));
      } else {
        nodes.push_back(tp_node(name + "/tp_allreduce", "TpAllReduce", {part}, {y}));
      }
      continue;
    }
    nodes.push_back(std::move(n));
  }
  out.nodes = std::move(nodes);
  for (size_t i = 0; i < out.nodes.size(); ++i) {
    Node& n = out.nodes[i];
    for (int v : n.inputs)
      if (v >= 0) out.value(v).consumers.push_back(static_cast<int>(i));
    for (int v : n.outputs)
      if (v >= 0) out.value(v).producer = static_cast<int>(i);
  }
  for (auto& v : out.values) v.consumers.erase(std::unique(v.consumers.begin(), v.consumers.end()), v.consumers.end());
  for (auto& n : out.nodes) n.cost = node_cost(out, n);
  return out;
}

}  // namespace smp::graph
