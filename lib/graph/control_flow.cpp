#include "graph/control_flow.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_set>

namespace smp::graph {

namespace {

using Nodes = google::protobuf::RepeatedPtrField<onnx::NodeProto>;

int64_t attr_int(const onnx::NodeProto& p, const std::string& name, int64_t dflt) {
  for (const auto& a : p.attribute())
    if (a.name() == name) return a.i();
  return dflt;
}

// An ints attribute, or `n` copies of 0 when absent.
std::vector<int64_t> attr_ints(const onnx::NodeProto& p, const std::string& name, size_t n) {
  for (const auto& a : p.attribute())
    if (a.name() == name) return {a.ints().begin(), a.ints().end()};
  return std::vector<int64_t>(n, 0);
}

const onnx::GraphProto* attr_graph(const onnx::NodeProto& p, const std::string& name) {
  for (const auto& a : p.attribute())
    if (a.name() == name && a.has_g()) return &a.g();
  return nullptr;
}

onnx::NodeProto& add_node(Nodes& out, const std::string& op, const std::string& name, std::vector<std::string> inputs,
                          std::vector<std::string> outputs) {
  onnx::NodeProto& n = *out.Add();
  n.set_op_type(op);
  n.set_name(name);
  for (auto& i : inputs) n.add_input(std::move(i));
  for (auto& o : outputs) n.add_output(std::move(o));
  return n;
}

void set_int(onnx::NodeProto& n, const std::string& name, int64_t v) {
  auto& a = *n.add_attribute();
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INT);
  a.set_i(v);
}

void set_ints(onnx::NodeProto& n, const std::string& name, const std::vector<int64_t>& v) {
  auto& a = *n.add_attribute();
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a.add_ints(x);
}

// A Constant node writing an int64 tensor (a scalar when `scalar`) or a bool scalar.
void add_constant(Nodes& out, const std::string& name, const std::vector<int64_t>& values, bool scalar,
                  bool as_bool = false) {
  auto& n = add_node(out, "Constant", name, {}, {name});
  auto& a = *n.add_attribute();
  a.set_name("value");
  a.set_type(onnx::AttributeProto::TENSOR);
  auto& t = *a.mutable_t();
  t.set_data_type(as_bool ? onnx::TensorProto::BOOL : onnx::TensorProto::INT64);
  if (!scalar) t.add_dims(static_cast<int64_t>(values.size()));
  for (int64_t v : values) {
    if (as_bool) t.add_int32_data(v != 0);
    else t.add_int64_data(v);
  }
}

// Unsqueeze / Squeeze of one axis: the axes are an input from opset 13, an attribute before.
void add_axis_op(Nodes& out, const char* op, int64_t opset, const std::string& x, int64_t axis, const std::string& y) {
  if (opset >= 13) {
    add_constant(out, y + "#axes", {axis}, false);
    add_node(out, op, y, {x, y + "#axes"}, {y});
  } else {
    set_ints(add_node(out, op, y, {x}, {y}), "axes", {axis});
  }
}

// A constant's value as one integer, when it is a constant of one element.
std::optional<int64_t> const_int(const ConstMap& consts, const std::string& name) {
  auto c = consts.find(name);
  if (name.empty() || c == consts.end() || c->second->numel() != 1) return std::nullopt;
  return c->second->get_i64(0);
}

// Moves a subgraph's initializers into Constant nodes named by `to` (already renamed).
void initializers_to_constants(onnx::GraphProto& sub, const std::unordered_map<std::string, std::string>& to,
                               const std::string& prefix, Nodes& out) {
  for (auto& t : *sub.mutable_initializer()) {
    onnx::NodeProto& k = *out.Add();
    k.set_op_type("Constant");
    k.set_name(prefix + t.name());
    k.add_output(to.at(t.name()));
    onnx::AttributeProto& a = *k.add_attribute();
    a.set_name("value");
    a.set_type(onnx::AttributeProto::TENSOR);
    *a.mutable_t() = std::move(t);
    a.mutable_t()->clear_name();
  }
}

// One copy of `body` appended to `out`: its inputs read `inputs` (by position; an empty name is
// left unmapped), its own values renamed under `prefix`, its node names under `node_prefix`.
// Returns the names of its outputs.
std::vector<std::string> inline_body(const onnx::GraphProto& body, const std::vector<std::string>& inputs,
                                     const std::string& prefix, const std::string& node_prefix, Nodes& out,
                                     const std::string& file, const onnx::NodeProto& owner) {
  onnx::GraphProto b = body;
  if (b.sparse_initializer_size() > 0) throw_bad_input(file, node_label(owner) + ": sparse initializers in its body are not supported");
  std::unordered_map<std::string, std::string> to;
  for (size_t k = 0; k < inputs.size(); ++k)
    if (!inputs[k].empty()) to[b.input(static_cast<int>(k)).name()] = inputs[k];
  for (const auto& t : b.initializer()) to[t.name()] = prefix + t.name();
  for (const auto& n : b.node())
    for (const auto& o : n.output())
      if (!o.empty()) to[o] = prefix + o;
  rename_values(b, to);
  initializers_to_constants(b, to, node_prefix, out);
  int index = 0;
  for (auto& n : *b.mutable_node()) {
    n.set_name(node_prefix + (n.name().empty() ? fmt::format("{}_{}", n.op_type(), index) : n.name()));
    ++index;
    *out.Add() = std::move(n);
  }
  std::vector<std::string> outs;
  for (const auto& o : b.output()) outs.push_back(o.name());
  return outs;
}

// `name` inside `body`, followed back through the body's Identity nodes.
std::string through_identities(const onnx::GraphProto& body, std::string name) {
  std::unordered_map<std::string, const onnx::NodeProto*> producer;
  for (const auto& n : body.node())
    for (const auto& o : n.output()) producer[o] = &n;
  for (size_t hops = 0; hops <= producer.size(); ++hops) {
    auto it = producer.find(name);
    if (it == producer.end() || !onnx_op(*it->second, "Identity") || it->second->input_size() != 1) break;
    name = it->second->input(0);
  }
  return name;
}

// The values a node's outputs are named under: its first named output (outputs are unique).
std::string value_prefix(const onnx::NodeProto& p) {
  for (const auto& o : p.output())
    if (!o.empty()) return o;
  return {};
}

// Per scan output, the per-iteration values stacked along `axis` (Unsqueeze, Concat) into `out`.
void stack(Nodes& out, int64_t opset, const std::vector<std::string>& values, int64_t axis, const std::string& y) {
  std::vector<std::string> parts;
  for (size_t i = 0; i < values.size(); ++i) {
    parts.push_back(fmt::format("{}#part{}", y, i));
    add_axis_op(out, "Unsqueeze", opset, values[i], axis, parts.back());
  }
  set_int(add_node(out, "Concat", y, parts, {y}), "axis", axis);
}

// Loop (see unroll_static_loops); false when it must stay.
bool unroll_loop(const onnx::NodeProto& p, Nodes& out, const ConstMap& consts, int64_t opset, const std::string& file) {
  const onnx::GraphProto* body = attr_graph(p, "body");
  if (!body) throw_bad_input(file, node_label(p) + ": no body graph");
  const int carried = p.input_size() - 2, scans = p.output_size() - carried;
  if (carried < 0 || scans < 0 || body->input_size() != 2 + carried || body->output_size() != 1 + carried + scans)
    throw_bad_input(file, fmt::format("{}: its body has {} inputs and {} outputs, for {} inputs and {} outputs", node_label(p),
                                      body->input_size(), body->output_size(), p.input_size(), p.output_size()));
  auto trips = const_int(consts, p.input(0));
  if (!trips || *trips > kMaxUnrolledNodes) return false;
  bool cond = true;
  if (!p.input(1).empty()) {
    auto c = const_int(consts, p.input(1));
    if (!c) return false;
    cond = *c != 0;
  }
  // The condition after each iteration: passed through (it stays what it was) or a constant.
  const std::string next = through_identities(*body, body->output(0).name());
  bool again = true;
  if (next != body->input(1).name()) {
    auto c = const_int(consts, next);
    if (!c) return false;
    again = *c != 0;
  }
  const int64_t iterations = !cond ? 0 : again ? std::max<int64_t>(*trips, 0) : std::min<int64_t>(*trips, 1);
  if (iterations * std::max(body->node_size(), 1) > kMaxUnrolledNodes) return false;
  if (scans > 0 && iterations == 0) return false;  // empty scan outputs: their shape is not known
  const std::string vp = value_prefix(p), np = p.name().empty() ? vp : p.name();
  if (vp.empty()) return true;  // nothing is read from it

  std::string cond_value = p.input(1);
  if (cond_value.empty()) {
    cond_value = vp + "#cond";
    add_constant(out, cond_value, {1}, true, true);
  }
  std::vector<std::string> state(p.input().begin() + 2, p.input().end());
  std::vector<std::vector<std::string>> scanned(static_cast<size_t>(scans));
  for (int64_t i = 0; i < iterations; ++i) {
    const std::string pre = fmt::format("{}/iter{}/", vp, i);
    std::vector<std::string> inputs{pre + "#iteration", cond_value};
    add_constant(out, inputs[0], {i}, true);
    inputs.insert(inputs.end(), state.begin(), state.end());
    auto outs = inline_body(*body, inputs, pre, fmt::format("{}/iter{}/", np, i), out, file, p);
    cond_value = outs[0];
    std::copy(outs.begin() + 1, outs.begin() + 1 + carried, state.begin());
    for (int j = 0; j < scans; ++j) scanned[static_cast<size_t>(j)].push_back(outs[static_cast<size_t>(1 + carried + j)]);
  }
  for (int k = 0; k < carried; ++k)
    if (!p.output(k).empty()) add_node(out, "Identity", fmt::format("{}/output{}", np, k), {state[static_cast<size_t>(k)]}, {p.output(k)});
  for (int j = 0; j < scans; ++j)
    if (!p.output(carried + j).empty()) stack(out, opset, scanned[static_cast<size_t>(j)], 0, p.output(carried + j));
  return true;
}

// Scan, opset 9 and later (see unroll_static_loops); false when it must stay.
bool unroll_scan(const onnx::NodeProto& p, Nodes& out, const std::unordered_map<std::string, Shape>& shapes,
                 int64_t opset, const std::string& file) {
  const onnx::GraphProto* body = attr_graph(p, "body");
  if (!body) throw_bad_input(file, node_label(p) + ": no body graph");
  const int scan_in = static_cast<int>(attr_int(p, "num_scan_inputs", -1));
  const int states = p.input_size() - scan_in, scan_out = p.output_size() - states;
  if (scan_in < 1 || states < 0 || scan_out < 0 || body->input_size() != p.input_size() || body->output_size() != p.output_size())
    throw_bad_input(file, fmt::format("{}: its body has {} inputs and {} outputs, for {} inputs ({} scanned) and {} outputs",
                                      node_label(p), body->input_size(), body->output_size(), p.input_size(), scan_in,
                                      p.output_size()));
  const auto in_axes = attr_ints(p, "scan_input_axes", static_cast<size_t>(scan_in));
  const auto in_dirs = attr_ints(p, "scan_input_directions", static_cast<size_t>(scan_in));
  const auto out_axes = attr_ints(p, "scan_output_axes", static_cast<size_t>(scan_out));
  const auto out_dirs = attr_ints(p, "scan_output_directions", static_cast<size_t>(scan_out));
  if (in_axes.size() != static_cast<size_t>(scan_in) || in_dirs.size() != static_cast<size_t>(scan_in) ||
      out_axes.size() != static_cast<size_t>(scan_out) || out_dirs.size() != static_cast<size_t>(scan_out))
    throw_bad_input(file, node_label(p) + ": its scan axes or directions do not match its scanned inputs and outputs");
  int64_t length = -1;
  for (int j = 0; j < scan_in; ++j) {
    auto s = shapes.find(p.input(states + j));
    if (s == shapes.end()) return false;
    const int64_t rank = static_cast<int64_t>(s->second.size());
    const int64_t axis = in_axes[static_cast<size_t>(j)] < 0 ? in_axes[static_cast<size_t>(j)] + rank : in_axes[static_cast<size_t>(j)];
    if (axis < 0 || axis >= rank) throw_bad_input(file, fmt::format("{}: scan axis {} of a rank-{} input", node_label(p), in_axes[static_cast<size_t>(j)], rank));
    const int64_t n = s->second[static_cast<size_t>(axis)];
    if (length >= 0 && n != length)
      throw_bad_input(file, fmt::format("{}: its scanned inputs have lengths {} and {}", node_label(p), length, n));
    length = n;
  }
  if (length * std::max(body->node_size(), 1) > kMaxUnrolledNodes) return false;
  if (scan_out > 0 && length == 0) return false;
  const std::string vp = value_prefix(p), np = p.name().empty() ? vp : p.name();
  if (vp.empty()) return true;

  std::vector<std::string> state(p.input().begin(), p.input().begin() + states);
  std::vector<std::vector<std::string>> scanned(static_cast<size_t>(scan_out));
  for (int64_t t = 0; t < length; ++t) {
    const std::string pre = fmt::format("{}/iter{}/", vp, t);
    std::vector<std::string> inputs = state;
    for (int j = 0; j < scan_in; ++j) {
      const std::string index = fmt::format("{}#index{}", pre, j), element = fmt::format("{}#element{}", pre, j);
      add_constant(out, index, {in_dirs[static_cast<size_t>(j)] == 1 ? length - 1 - t : t}, true);
      set_int(add_node(out, "Gather", element, {p.input(states + j), index}, {element}), "axis", in_axes[static_cast<size_t>(j)]);
      inputs.push_back(element);
    }
    auto outs = inline_body(*body, inputs, pre, fmt::format("{}/iter{}/", np, t), out, file, p);
    std::copy(outs.begin(), outs.begin() + states, state.begin());
    for (int j = 0; j < scan_out; ++j) scanned[static_cast<size_t>(j)].push_back(outs[static_cast<size_t>(states + j)]);
  }
  for (int k = 0; k < states; ++k)
    if (!p.output(k).empty()) add_node(out, "Identity", fmt::format("{}/output{}", np, k), {state[static_cast<size_t>(k)]}, {p.output(k)});
  for (int j = 0; j < scan_out; ++j) {
    auto& values = scanned[static_cast<size_t>(j)];
    if (out_dirs[static_cast<size_t>(j)] == 1) std::reverse(values.begin(), values.end());
    if (!p.output(states + j).empty()) stack(out, opset, values, out_axes[static_cast<size_t>(j)], p.output(states + j));
  }
  return true;
}

// A position in a sequence of `size` elements, negative from the end; `past_end` admits `size`
// (an insertion at the end).
int64_t position(const onnx::NodeProto& p, int64_t pos, int64_t size, bool past_end, const std::string& file) {
  const int64_t k = pos < 0 ? pos + size : pos;
  if (k < 0 || k > size || (k == size && !past_end))
    throw_bad_input(file, fmt::format("{}: position {} is outside its sequence of {} tensors", node_label(p), pos, size));
  return k;
}

}  // namespace

bool is_sequence_op(const onnx::NodeProto& p) {
  for (const char* t : {"SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt", "SequenceLength",
                        "ConcatFromSequence", "SplitToSequence", "SequenceMap"})
    if (onnx_op(p, t)) return true;
  return false;
}

bool onnx_domain(const std::string& domain) { return domain.empty() || domain == "ai.onnx"; }

bool onnx_op(const onnx::NodeProto& p, const char* type) { return p.op_type() == type && onnx_domain(p.domain()); }

std::optional<std::pair<DType, Shape>> static_type(const onnx::TypeProto& t) {
  if (!t.has_tensor_type() || !t.tensor_type().has_shape()) return std::nullopt;
  Shape s;
  for (const auto& d : t.tensor_type().shape().dim()) {
    if (!d.has_dim_value() || d.dim_value() < 0) return std::nullopt;
    s.push_back(d.dim_value());
  }
  return std::make_pair(dtype_from_onnx(t.tensor_type().elem_type()), s);
}

std::unordered_map<std::string, Shape> static_shapes(const onnx::GraphProto& g) {
  std::unordered_map<std::string, Shape> shapes;
  auto note = [&](const onnx::ValueInfoProto& v) {
    if (auto st = static_type(v.type())) shapes[v.name()] = st->second;
  };
  for (const auto& v : g.input()) note(v);
  for (const auto& v : g.value_info()) note(v);
  for (const auto& v : g.output()) note(v);
  for (const auto& t : g.initializer()) shapes[t.name()] = Shape(t.dims().begin(), t.dims().end());
  return shapes;
}

std::unordered_set<std::string> names_read(const onnx::GraphProto& g) {
  std::unordered_set<std::string> reads;
  for (const auto& o : g.output()) reads.insert(o.name());
  for (const auto& p : g.node()) {
    for (const auto& i : p.input()) reads.insert(i);
    subgraph_reads(p, reads);  // an If's branch or a Loop's body reads the values around it
  }
  return reads;
}

void subgraph_reads(const onnx::NodeProto& p, std::unordered_set<std::string>& reads) {
  for (const auto& a : p.attribute()) {
    std::vector<const onnx::GraphProto*> subs;
    if (a.has_g()) subs.push_back(&a.g());
    for (const auto& s : a.graphs()) subs.push_back(&s);
    for (const auto* s : subs)
      for (const auto& n : s->node()) {
        for (const auto& i : n.input()) reads.insert(i);
        subgraph_reads(n, reads);
      }
  }
}

std::string node_label(const onnx::NodeProto& n) {
  std::string op = n.domain().empty() ? n.op_type() : n.domain() + ":" + n.op_type();
  return "node '" + n.name() + "' (" + op + ")";
}

void rename_values(onnx::GraphProto& g, const std::unordered_map<std::string, std::string>& to) {
  auto fix = [&](std::string* name) {
    if (auto it = to.find(*name); it != to.end()) *name = it->second;
  };
  for (auto& n : *g.mutable_node()) {
    for (auto& in : *n.mutable_input()) fix(&in);
    for (auto& o : *n.mutable_output()) fix(&o);
    for (auto& a : *n.mutable_attribute()) {
      if (a.has_g()) rename_values(*a.mutable_g(), to);
      for (auto& sub : *a.mutable_graphs()) rename_values(sub, to);
    }
  }
  for (auto& o : *g.mutable_output()) fix(o.mutable_name());
}

// PyTorch exports shape tests as If nodes (the rank test of F.local_response_norm, size checks of
// interpolations). The branch's own values are renamed under the If's name (two Ifs may inline the
// same names), its initializers become Constant nodes, and Identity nodes carry its outputs to the
// If's. An If with a condition known only at run time stays (and is refused).
int inline_constant_ifs(onnx::GraphProto& g, const ConstMap& consts, const std::string& file) {
  int inlined = 0;
  Nodes out;
  for (auto& p : *g.mutable_node()) {
    auto c = onnx_op(p, "If") && p.input_size() == 1 ? const_int(consts, p.input(0)) : std::nullopt;
    if (!c) {
      *out.Add() = std::move(p);
      continue;
    }
    const std::string which = *c != 0 ? "then_branch" : "else_branch";
    const onnx::GraphProto* br = attr_graph(p, which);
    if (!br) throw_bad_input(file, node_label(p) + ": no " + which + " graph");
    if (br->output_size() != p.output_size())
      throw_bad_input(file, fmt::format("{}: its {} has {} outputs, the node {}", node_label(p), which, br->output_size(),
                                        p.output_size()));
    const std::string prefix = p.name() + "/" + which + "/";
    auto outs = inline_body(*br, {}, prefix, prefix, out, file, p);
    for (int k = 0; k < p.output_size(); ++k)
      if (!p.output(k).empty()) add_node(out, "Identity", fmt::format("{}output_{}", prefix, k), {outs[static_cast<size_t>(k)]}, {p.output(k)});
    ++inlined;
  }
  g.mutable_node()->Swap(&out);
  return inlined;
}

int unroll_static_loops(onnx::GraphProto& g, const ConstMap& consts, int64_t opset, const std::string& file) {
  const bool any = std::any_of(g.node().begin(), g.node().end(),
                               [](const onnx::NodeProto& p) { return onnx_op(p, "Loop") || onnx_op(p, "Scan"); });
  if (!any) return 0;
  const auto shapes = static_shapes(g);
  int unrolled = 0;
  Nodes out;
  for (auto& p : *g.mutable_node()) {
    bool done = false;
    if (onnx_op(p, "Loop")) done = unroll_loop(p, out, consts, opset, file);
    else if (onnx_op(p, "Scan") && opset >= 9) done = unroll_scan(p, out, shapes, opset, file);
    if (done) ++unrolled;
    else *out.Add() = std::move(p);
  }
  g.mutable_node()->Swap(&out);
  return unrolled;
}

int lower_constant_compress(onnx::GraphProto& g, const ConstMap& consts, const std::string& file) {
  if (std::none_of(g.node().begin(), g.node().end(), [](const onnx::NodeProto& p) { return onnx_op(p, "Compress"); })) return 0;
  const auto shapes = static_shapes(g);
  int lowered = 0;
  Nodes out;
  for (auto& p : *g.mutable_node()) {
    auto c = onnx_op(p, "Compress") && p.input_size() == 2 && p.output_size() == 1 ? consts.find(p.input(1)) : consts.end();
    auto s = c != consts.end() ? shapes.find(p.input(0)) : shapes.end();
    if (s == shapes.end()) {
      *out.Add() = std::move(p);
      continue;
    }
    const TensorData& cond = *c->second;
    if (cond.shape.size() != 1) throw_bad_input(file, fmt::format("{}: its condition has shape {}, 1-D expected", node_label(p), shape_str(cond.shape)));
    const Shape& x = s->second;
    const int64_t rank = static_cast<int64_t>(x.size());
    const bool has_axis = std::any_of(p.attribute().begin(), p.attribute().end(), [](const auto& a) { return a.name() == "axis"; });
    int64_t axis = attr_int(p, "axis", 0);
    if (has_axis && (axis < -rank || axis >= rank))
      throw_bad_input(file, fmt::format("{}: axis {} for an input of rank {}", node_label(p), axis, rank));
    if (axis < 0) axis += rank;
    const int64_t len = has_axis ? x[static_cast<size_t>(axis)] : smp::numel(x);
    if (cond.numel() > len)
      throw_bad_input(file, fmt::format("{}: a condition of {} elements for {} positions", node_label(p), cond.numel(), len));
    std::vector<int64_t> kept;
    for (int64_t k = 0; k < cond.numel(); ++k)
      if (cond.get_i64(k) != 0) kept.push_back(k);
    const std::string y = p.output(0), name = p.name().empty() ? y : p.name();
    std::string from = p.input(0);
    if (!has_axis) {
      add_constant(out, y + "#shape", {-1}, false);
      add_node(out, "Reshape", name + "#flat", {from, y + "#shape"}, {y + "#flat"});
      from = y + "#flat";
      axis = 0;
    }
    add_constant(out, y + "#kept", kept, false);
    set_int(add_node(out, "Gather", name, {from, y + "#kept"}, {y}), "axis", axis);
    ++lowered;
  }
  g.mutable_node()->Swap(&out);
  return lowered;
}

int resolve_sequences(onnx::GraphProto& g, const ConstMap& consts, int64_t opset, const std::string& file) {
  if (std::none_of(g.node().begin(), g.node().end(), is_sequence_op)) return 0;
  const auto shapes = static_shapes(g);
  // First what every sequence holds, without changing anything: all are known or nothing changes.
  std::unordered_map<std::string, std::vector<std::string>> seqs;
  std::unordered_map<std::string, std::vector<int64_t>> split_sizes;  // per SplitToSequence, its pieces
  auto known = [&](const std::string& name) { return seqs.find(name); };
  for (const auto& p : g.node()) {
    const std::string y = p.output_size() > 0 ? p.output(0) : std::string();
    if (y.empty()) continue;  // a sequence nothing can read
    auto in = p.input_size() > 0 ? known(p.input(0)) : seqs.end();
    if (onnx_op(p, "SequenceEmpty")) {
      seqs[y] = {};
    } else if (onnx_op(p, "SequenceConstruct")) {
      seqs[y] = {p.input().begin(), p.input().end()};
    } else if (onnx_op(p, "Identity") && in != seqs.end()) {
      seqs[y] = in->second;
    } else if (onnx_op(p, "SequenceInsert") || onnx_op(p, "SequenceErase")) {
      const bool insert = onnx_op(p, "SequenceInsert");
      const int at = insert ? 2 : 1;
      const bool has_pos = p.input_size() > at && !p.input(at).empty();
      std::optional<int64_t> pos = has_pos ? const_int(consts, p.input(at)) : int64_t{-1};  // Erase: the last
      if (in == seqs.end() || !pos) return 0;
      auto list = in->second;
      const int64_t size = static_cast<int64_t>(list.size());
      if (insert) {
        list.insert(list.begin() + (has_pos ? position(p, *pos, size, true, file) : size), p.input(1));
      } else {
        list.erase(list.begin() + position(p, *pos, size, false, file));
      }
      seqs[y] = std::move(list);
    } else if (onnx_op(p, "SplitToSequence")) {
      auto s = shapes.find(p.input(0));
      const bool sized = p.input_size() > 1 && !p.input(1).empty();
      if (s == shapes.end() || (sized && !consts.count(p.input(1)))) return 0;
      const int64_t rank = static_cast<int64_t>(s->second.size()), axis0 = attr_int(p, "axis", 0);
      const int64_t axis = axis0 < 0 ? axis0 + rank : axis0;
      if (axis < 0 || axis >= rank) throw_bad_input(file, fmt::format("{}: axis {} of a rank-{} input", node_label(p), axis0, rank));
      const int64_t dim = s->second[static_cast<size_t>(axis)];
      std::vector<int64_t> sizes;
      if (!sized) {
        sizes.assign(static_cast<size_t>(dim), 1);
      } else {
        const TensorData& split = *consts.at(p.input(1));
        if (split.shape.empty()) {
          const int64_t step = split.get_i64(0);
          if (step <= 0) throw_bad_input(file, fmt::format("{}: split {} is not positive", node_label(p), step));
          for (int64_t at = 0; at < dim; at += step) sizes.push_back(std::min(step, dim - at));
        } else {
          int64_t sum = 0;
          for (int64_t k = 0; k < split.numel(); ++k) {
            sizes.push_back(split.get_i64(k));
            if (sizes.back() < 0) throw_bad_input(file, fmt::format("{}: a negative split {}", node_label(p), sizes.back()));
            sum += sizes.back();
          }
          if (sum != dim) throw_bad_input(file, fmt::format("{}: its splits sum to {}, the axis has {}", node_label(p), sum, dim));
        }
      }
      auto& list = seqs[y];
      for (size_t k = 0; k < sizes.size(); ++k) list.push_back(fmt::format("{}#{}", y, k));
      split_sizes[y] = std::move(sizes);
    }
  }
  if (seqs.empty()) return 0;
  // Every reader of a known sequence must be a sequence op that is resolved below.
  std::unordered_set<std::string> elsewhere;
  for (const auto& o : g.output()) elsewhere.insert(o.name());
  for (const auto& p : g.node()) {
    subgraph_reads(p, elsewhere);
    const bool reads_first = onnx_op(p, "SequenceInsert") || onnx_op(p, "SequenceErase") || onnx_op(p, "Identity") ||
                             onnx_op(p, "SequenceLength") || onnx_op(p, "SequenceAt") || onnx_op(p, "ConcatFromSequence");
    for (int k = 0; k < p.input_size(); ++k) {
      if (!seqs.count(p.input(k))) {
        if (k == 0 && reads_first && !onnx_op(p, "Identity")) return 0;  // a sequence not known here
        continue;
      }
      if (k != 0 || !reads_first) return 0;
    }
    if (onnx_op(p, "SequenceAt") && !const_int(consts, p.input_size() > 1 ? p.input(1) : std::string())) return 0;
    if (onnx_op(p, "ConcatFromSequence") && seqs.at(p.input(0)).empty())
      throw_bad_input(file, node_label(p) + ": concatenates an empty sequence");
  }
  for (const auto& [name, list] : seqs)
    if (elsewhere.count(name)) return 0;

  // Then the rewrite.
  int changed = 0;
  Nodes out;
  for (auto& p : *g.mutable_node()) {
    const std::string y = p.output_size() > 0 ? p.output(0) : std::string();
    if (onnx_op(p, "SequenceEmpty") || onnx_op(p, "SequenceConstruct") || onnx_op(p, "SequenceInsert") ||
        onnx_op(p, "SequenceErase") || (onnx_op(p, "Identity") && seqs.count(p.input(0)))) {
      ++changed;  // dropped: its list is known
    } else if (onnx_op(p, "SequenceAt")) {
      const auto& list = seqs.at(p.input(0));
      const int64_t k = position(p, *const_int(consts, p.input(1)), static_cast<int64_t>(list.size()), false, file);
      add_node(out, "Identity", p.name(), {list[static_cast<size_t>(k)]}, {y});
      ++changed;
    } else if (onnx_op(p, "SequenceLength")) {
      add_constant(out, y, {static_cast<int64_t>(seqs.at(p.input(0)).size())}, true);
      ++changed;
    } else if (onnx_op(p, "ConcatFromSequence")) {
      const auto& list = seqs.at(p.input(0));
      const int64_t axis = attr_int(p, "axis", 0);
      if (attr_int(p, "new_axis", 0) != 0) {
        stack(out, opset, list, axis, y);
      } else {
        set_int(add_node(out, "Concat", p.name(), list, {y}), "axis", axis);
      }
      ++changed;
    } else if (onnx_op(p, "SplitToSequence")) {
      const auto& list = seqs[y];
      const int64_t axis = attr_int(p, "axis", 0);
      const bool squeeze = attr_int(p, "keepdims", 1) == 0 && (p.input_size() < 2 || p.input(1).empty());
      if (!list.empty()) {
        std::vector<std::string> parts;
        for (const auto& e : list) parts.push_back(squeeze ? e + "#kept" : e);
        const auto& sizes = split_sizes[y];
        std::vector<std::string> split_inputs{p.input(0)};
        if (opset >= 13) {
          split_inputs.push_back(y + "#split");
          add_constant(out, split_inputs.back(), sizes, false);
        }
        auto& s = add_node(out, "Split", p.name(), split_inputs, parts);
        set_int(s, "axis", axis);
        if (opset < 13) set_ints(s, "split", sizes);
        if (squeeze)
          for (size_t k = 0; k < list.size(); ++k) add_axis_op(out, "Squeeze", opset, parts[k], axis, list[k]);
      }
      ++changed;
    } else {
      *out.Add() = std::move(p);
    }
  }
  g.mutable_node()->Swap(&out);
  // The sequences' value_info entries name values that are gone.
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> vi;
  for (auto& v : *g.mutable_value_info())
    if (!seqs.count(v.name())) *vi.Add() = std::move(v);
  g.mutable_value_info()->Swap(&vi);
  return changed;
}

void refuse_unresolved_control_flow(const onnx::GraphProto& g, int64_t opset, const std::string& file) {
  for (const auto& p : g.node()) {
    if (onnx_op(p, "Scan") && opset < 9)
      throw_bad_input(file, node_label(p) + ": the Scan of opset 8 (with a batch axis) is not supported",
                      "convert the model to opset 9 or later");
    if (onnx_op(p, "If"))
      throw_bad_input(file, node_label(p) + ": its condition is known only at run time",
                      "smp takes the branch of an If whose condition folds at load, from constants and static shapes");
    if (onnx_op(p, "Loop"))
      throw_bad_input(file, node_label(p) + ": its trip count or condition is known only at run time, or it unrolls into over " +
                                std::to_string(kMaxUnrolledNodes) + " nodes",
                      "smp unrolls a Loop at load whose trip count and condition fold there");
    if (onnx_op(p, "Scan"))
      throw_bad_input(file, node_label(p) + ": its scanned length is not static, or it unrolls into over " +
                                std::to_string(kMaxUnrolledNodes) + " nodes",
                      "smp unrolls a Scan at load over an axis of static length");
  }
  // Sequences last: one that a Loop fills is unknown because of the Loop.
  for (const auto& p : g.node())
    if (is_sequence_op(p))
      throw_bad_input(file, node_label(p) + ": a sequence whose contents are known only at run time",
                      "smp resolves sequences at load where every position is a constant and only sequence ops read them");
}

}  // namespace smp::graph
