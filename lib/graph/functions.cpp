#include "graph/functions.hpp"

#include "core/error.hpp"
#include "graph/control_flow.hpp"
#include "graph/op_registry.hpp"

#include <onnx/defs/schema.h>

#include <fmt/format.h>
#include <google/protobuf/unknown_field_set.h>

#include <map>
#include <set>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

namespace smp::graph {

namespace {

using Nodes = google::protobuf::RepeatedPtrField<onnx::NodeProto>;

constexpr int kMaxDepth = 64;
// Nodes that inlining may create in all (a hostile file nesting functions that each call the
// next twice would otherwise grow without bound).
constexpr int64_t kMaxInlinedNodes = int64_t{1} << 20;

// The ai.onnx opset a function's body is written for (`fallback` where it imports none).
int64_t body_opset(const onnx::FunctionProto& f, int64_t fallback) {
  for (const auto& o : f.opset_import())
    if (onnx_domain(o.domain())) return o.version();
  return fallback;
}

// Default values of a local function's attributes: FunctionProto.attribute_proto (field 11, IR 9),
// which the protobuf types of onnx 1.12 do not know, read from the unknown fields it keeps.
std::unordered_map<std::string, onnx::AttributeProto> local_defaults(const onnx::FunctionProto& f, const std::string& file) {
  std::unordered_map<std::string, onnx::AttributeProto> out;
  const google::protobuf::UnknownFieldSet& unknown = f.unknown_fields();
  for (int i = 0; i < unknown.field_count(); ++i) {
    const auto& u = unknown.field(i);
    if (u.number() != 11 || u.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED) continue;
    onnx::AttributeProto a;
    if (!a.ParseFromString(u.length_delimited()))
      throw_bad_input(file, "function '" + f.name() + "': an attribute default cannot be read");
    out[a.name()] = std::move(a);
  }
  return out;
}

// Whether two versions of an op read the same inputs and attributes and write the same outputs:
// most version bumps only admit more dtypes (Pow 13 -> 15: bfloat16); those that move an
// attribute to an input (Unsqueeze 13, ReduceMean 18) or drop one do not pass.
bool same_signature(const onnx::OpSchema& a, const onnx::OpSchema& b) {
  if (a.since_version() == b.since_version()) return true;
  auto params = [](const std::vector<onnx::OpSchema::FormalParameter>& ps) {
    std::vector<std::pair<std::string, int>> out;
    for (const auto& p : ps) out.emplace_back(p.GetName(), static_cast<int>(p.GetOption()));
    return out;
  };
  auto names = [](const std::map<std::string, onnx::OpSchema::Attribute>& as) {
    std::vector<std::string> out;
    for (const auto& [name, attr] : as) out.push_back(name);
    return out;
  };
  return params(a.inputs()) == params(b.inputs()) && params(a.outputs()) == params(b.outputs()) &&
         names(a.attributes()) == names(b.attributes());
}

class Inliner {
 public:
  Inliner(onnx::ModelProto& model, int64_t opset, const std::string& file) : opset_(opset), file_(file) {
    for (const auto& f : model.functions()) {
      if (!local_.emplace(std::make_pair(f.domain(), f.name()), &f).second)
        throw_bad_input(file, fmt::format("function '{}' of domain '{}' is defined twice", f.name(), f.domain()));
    }
  }

  // Expands the calls among g's nodes and in their subgraphs.
  void graph(onnx::GraphProto& g, int depth) {
    Nodes out;
    for (auto& n : *g.mutable_node()) node(std::move(n), depth, out);
    g.mutable_node()->Swap(&out);
  }

 private:
  // The function `n` calls, nullptr for none; `schema` is set where it is a standard op's body.
  const onnx::FunctionProto* callee(const onnx::NodeProto& n, const onnx::OpSchema*& schema) const {
    if (auto it = local_.find({n.domain(), n.op_type()}); it != local_.end()) return it->second;
    if (!onnx_domain(n.domain()) || find_op(n.op_type())) return nullptr;
    const onnx::OpSchema* s = onnx::OpSchemaRegistry::Schema(n.op_type(), static_cast<int>(opset_), "");
    if (!s || !s->HasFunction()) return nullptr;
    schema = s;
    return s->GetFunction();
  }

  void node(onnx::NodeProto n, int depth, Nodes& out) {
    const onnx::OpSchema* schema = nullptr;
    const onnx::FunctionProto* f = callee(n, schema);
    if (!f) {
      for (auto& a : *n.mutable_attribute()) {
        if (a.has_g()) graph(*a.mutable_g(), depth);
        for (auto& sub : *a.mutable_graphs()) graph(sub, depth);
      }
      if (depth > 0 && ++inlined_nodes_ > kMaxInlinedNodes)
        throw_bad_input(file_, fmt::format("its functions expand to over {} nodes", kMaxInlinedNodes));
      *out.Add() = std::move(n);
      return;
    }
    if (depth >= kMaxDepth)
      throw_bad_input(file_, fmt::format("{}: functions nested deeper than {} (a function that calls itself?)", node_label(n), kMaxDepth));
    Nodes body = expand(n, *f, schema);
    for (auto& b : body) node(std::move(b), depth + 1, out);
  }

  // The body of `f` for the call `c`: values renamed under the call's name, attribute references
  // resolved. A formal output that is a formal input gets an Identity.
  Nodes expand(const onnx::NodeProto& c, const onnx::FunctionProto& f, const onnx::OpSchema* schema) {
    const std::string what = schema ? "the function body of " + c.op_type() : "function '" + f.name() + "'";
    if (c.input_size() > f.input_size() || c.output_size() > f.output_size())
      throw_bad_input(file_, fmt::format("{}: {} inputs and {} outputs, {} takes {} and {}", node_label(c), c.input_size(),
                                         c.output_size(), what, f.input_size(), f.output_size()));
    check_opset(c, f, what);
    // Unique per call: calls without a name, or with one another call has, are numbered.
    std::string base = c.name().empty() ? c.op_type() : c.name();
    for (int k = 2; !bases_.insert(base).second; ++k) base = fmt::format("{}#{}", c.name().empty() ? c.op_type() : c.name(), k);
    const std::string prefix = base + "/";

    // Attributes: the op's defaults (a standard op) or the function's (a local one), then the call's.
    std::unordered_map<std::string, onnx::AttributeProto> attrs;
    if (schema) {
      for (const auto& [name, a] : schema->attributes())
        if (a.default_value.type() != onnx::AttributeProto::UNDEFINED) attrs[name] = a.default_value;
    } else {
      attrs = local_defaults(f, file_);
    }
    for (const auto& a : c.attribute()) attrs[a.name()] = a;

    onnx::GraphProto b;
    for (const auto& n : f.node()) *b.add_node() = n;
    std::unordered_map<std::string, std::string> to;
    for (int k = 0; k < f.input_size(); ++k) to[f.input(k)] = k < c.input_size() ? c.input(k) : std::string();
    std::unordered_set<std::string> produced;
    for (const auto& n : f.node())
      for (const auto& o : n.output())
        if (!o.empty()) produced.insert(o);
    std::vector<std::pair<std::string, std::string>> passed;  // formal outputs that are formal inputs
    for (int k = 0; k < f.output_size(); ++k) {
      const bool named = k < c.output_size() && !c.output(k).empty();
      if (!produced.count(f.output(k))) {
        if (!to.count(f.output(k)))
          throw_bad_input(file_, fmt::format("{}: output '{}' of {} is computed by none of its nodes", node_label(c), f.output(k), what));
        if (named) passed.emplace_back(to[f.output(k)], c.output(k));
        continue;
      }
      to[f.output(k)] = named ? c.output(k) : prefix + f.output(k);
    }
    for (const auto& o : produced) to.emplace(o, prefix + o);
    rename_values(b, to);

    Nodes out;
    int index = 0;
    for (auto& n : *b.mutable_node()) {
      n.set_name(prefix + (n.name().empty() ? fmt::format("{}_{}", n.op_type(), index) : n.name()));
      ++index;
      resolve_refs(n, attrs);
      *out.Add() = std::move(n);
    }
    for (const auto& [from, y] : passed) {
      onnx::NodeProto* id = out.Add();
      id->set_op_type("Identity");
      id->set_name(prefix + "Identity_" + y);
      id->add_input(from);
      id->add_output(y);
    }
    return out;
  }

  // Attributes that refer to the call's (ref_attr_name) take its value, or are dropped when it
  // has none; also in the nodes of subgraphs.
  static void resolve_refs(onnx::NodeProto& n, const std::unordered_map<std::string, onnx::AttributeProto>& attrs) {
    google::protobuf::RepeatedPtrField<onnx::AttributeProto> kept;
    for (auto& a : *n.mutable_attribute()) {
      if (a.ref_attr_name().empty()) {
        if (a.has_g())
          for (auto& sub : *a.mutable_g()->mutable_node()) resolve_refs(sub, attrs);
        for (auto& g : *a.mutable_graphs())
          for (auto& sub : *g.mutable_node()) resolve_refs(sub, attrs);
        *kept.Add() = std::move(a);
        continue;
      }
      auto it = attrs.find(a.ref_attr_name());
      if (it == attrs.end()) continue;
      onnx::AttributeProto v = it->second;
      v.set_name(a.name());
      *kept.Add() = std::move(v);
    }
    n.mutable_attribute()->Swap(&kept);
  }

  // A body written for another ai.onnx opset than the model's is read as the model's opset reads
  // it: each of its ops must have the same signature at both (see same_signature).
  void check_opset(const onnx::NodeProto& c, const onnx::FunctionProto& f, const std::string& what) const {
    const int64_t v = body_opset(f, opset_);
    if (v == opset_) return;
    for (const auto& n : f.node()) {
      if (!onnx_domain(n.domain())) continue;
      const auto* at_body = onnx::OpSchemaRegistry::Schema(n.op_type(), static_cast<int>(v), "");
      const auto* at_model = onnx::OpSchemaRegistry::Schema(n.op_type(), static_cast<int>(opset_), "");
      if (at_body && at_model && !same_signature(*at_body, *at_model))
        throw_bad_input(file_, fmt::format("{}: {} is written for opset {}, and its {} takes other inputs or attributes at the model's opset {}",
                                           node_label(c), what, v, n.op_type(), opset_),
                        "export the model and its functions with one opset");
    }
  }

  int64_t opset_;
  const std::string& file_;
  std::map<std::pair<std::string, std::string>, const onnx::FunctionProto*> local_;
  std::unordered_set<std::string> bases_;  // the prefixes taken, one per call
  int64_t inlined_nodes_ = 0;
};

}  // namespace

void inline_functions(onnx::ModelProto& model, int64_t opset, const std::string& file) {
  Inliner in(model, opset, file);
  in.graph(*model.mutable_graph(), 0);
  // The inlined nodes may use domains that only their function imported (the checker wants an
  // import for each); ai.onnx's is the model's, the check above having passed.
  std::set<std::string> imported;
  for (const auto& o : model.opset_import()) imported.insert(onnx_domain(o.domain()) ? "" : o.domain());
  for (const auto& f : model.functions())
    for (const auto& o : f.opset_import())
      if (imported.insert(onnx_domain(o.domain()) ? "" : o.domain()).second) *model.add_opset_import() = o;
  model.clear_functions();
}

}  // namespace smp::graph
