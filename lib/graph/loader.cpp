#include "graph/loader.hpp"

#include "core/error.hpp"
#include "core/io.hpp"
#include "graph/control_flow.hpp"
#include "graph/einsum.hpp"
#include "graph/fold.hpp"
#include "graph/functions.hpp"
#include "graph/op_registry.hpp"
#include "graph/wire.hpp"

#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#include <onnx/version_converter/convert.h>

#include <fnmatch.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <csetjmp>
#include <csignal>
#include <cstring>
#include <queue>
#include <set>
#include <unordered_map>
#include <unordered_set>

namespace smp::graph {

namespace fs = std::filesystem;

namespace {

constexpr int64_t kMinOpset = 7;
// Folding never creates a constant larger than this: bigger ones stay as compute.
constexpr int64_t kMaxFoldBytes = int64_t{256} << 20;
// Nor do the folded constants together hold more than this, but for values of up to
// kMaxFoldedInitializerBytes (those that decide shapes are small): mvit_v2_s's exported index
// tensors, which depend on shapes only, would fold into over 10 GB.
constexpr int64_t kMaxFoldTotalBytes = int64_t{2} << 30;
// A folded value larger than this is held once, in the loader's constants, and shown to shape
// inference as a typed graph input rather than an initializer.
constexpr int64_t kMaxFoldedInitializerBytes = int64_t{1} << 20;
// Embedded floating-point initializers of at least this many bytes are held apart from the
// parsed model (ParsedModel): weights. Shape inference never reads their values (the float
// values it reads, a Resize's scales or a Range's bounds, are a few elements).
constexpr int64_t kHeldBytes = 4096;

// Tensors held apart from the model, by initializer name (ParsedModel; known values of a stage).
using HeldMap = std::unordered_map<std::string, std::shared_ptr<const TensorData>>;

int64_t max_supported_opset() {
  const auto& m = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map();
  auto it = m.find(onnx::ONNX_DOMAIN);
  return it == m.end() ? 17 : it->second.second;
}

std::string first_line(const std::string& s) {
  auto p = s.find('\n');
  std::string r = p == std::string::npos ? s : s.substr(0, p);
  while (!r.empty() && (r.back() == ' ' || r.back() == '\r')) r.pop_back();
  return r;
}

}  // namespace

Bytes read_external_bytes(const ExternalData& ext, int64_t expected, const std::string& what) {
  const ReadOnlyFile f(ext.file);
  if (!f.ok()) throw_bad_input(ext.file.string(), "cannot open external weight file for " + what,
                               "the planner does not need it, but training does");
  if (!f.regular()) throw_bad_input(ext.file.string(), "the external weight file for " + what + " is not a regular file");
  const int64_t size = f.size();
  if (ext.offset > size)
    throw_bad_input(ext.file.string(), fmt::format("{}: external data offset {} is past the end of the file ({} bytes)", what,
                                                   ext.offset, size));
  const int64_t len = ext.length >= 0 ? ext.length : size - ext.offset;
  if (len != expected)
    throw_bad_input(ext.file.string(), fmt::format("{}: external data holds {} bytes, expected {}", what, len, expected));
  if (len > size - ext.offset)  // offset <= size, checked above
    throw_bad_input(ext.file.string(), fmt::format("{}: external data runs past the end of the file", what));
  return map_range(f.fd(), ext.offset, len, ext.file);
}

namespace {

template <class T, class R>
void append_elems(Bytes& out, const R& field) {
  out.resize(static_cast<size_t>(field.size()) * sizeof(T));
  T* p = reinterpret_cast<T*>(out.data());
  for (int i = 0; i < field.size(); ++i) p[i] = static_cast<T>(field.Get(i));
}

// Tensor bytes from a TensorProto held in the model (raw or typed fields). `steal` moves
// raw_data out of the proto instead of copying it.
// With check_only, only the size of embedded raw data is checked and no bytes are copied.
TensorData tensor_from_proto(onnx::TensorProto& t, const std::string& file, const fs::path& base_dir, bool steal,
                             bool check_only = false) {
  TensorData d;
  d.dtype = dtype_from_onnx(t.data_type());
  for (int64_t x : t.dims()) {
    if (x < 0) throw_bad_input(file, "tensor '" + t.name() + "' has a negative dimension");
    d.shape.push_back(x);
  }
  std::string where = "tensor '" + t.name() + "'";
  if (d.dtype == DType::Undefined || d.dtype == DType::String)
    throw_bad_input(file, where + fmt::format(": unsupported data type {}", t.data_type()));
  if (d.numel() >= kMaxElements) throw_bad_input(file, where + ": " + shape_str(d.shape) + " is too large a shape");
  int64_t expected = d.numel() * dtype_size(d.dtype);
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    d.bytes = read_external_bytes(external_data_of(t, base_dir, file), expected, where);
    return d;
  }
  if (t.has_raw_data()) {
    if (check_only) {
      if (static_cast<int64_t>(t.raw_data().size()) != expected)
        throw_bad_input(file, where + fmt::format(": holds {} bytes of data, its shape {} needs {}", t.raw_data().size(),
                                                  shape_str(d.shape), expected),
                        "the file may be truncated");
      return d;
    }
    if (steal) d.bytes.swap(*t.mutable_raw_data());
    else d.bytes = t.raw_data();
  } else {
    switch (d.dtype) {
      case DType::F32: append_elems<float>(d.bytes, t.float_data()); break;
      case DType::F64: append_elems<double>(d.bytes, t.double_data()); break;
      case DType::I64: append_elems<int64_t>(d.bytes, t.int64_data()); break;
      case DType::I32: append_elems<int32_t>(d.bytes, t.int32_data()); break;
      case DType::I16: append_elems<int16_t>(d.bytes, t.int32_data()); break;
      case DType::I8: append_elems<int8_t>(d.bytes, t.int32_data()); break;
      case DType::U8: case DType::Bool: append_elems<uint8_t>(d.bytes, t.int32_data()); break;
      case DType::U16: case DType::F16: case DType::BF16: append_elems<uint16_t>(d.bytes, t.int32_data()); break;
      case DType::U32: append_elems<uint32_t>(d.bytes, t.uint64_data()); break;
      case DType::U64: append_elems<uint64_t>(d.bytes, t.uint64_data()); break;
      default: throw_bad_input(file, where + ": unsupported data type");
    }
  }
  if (static_cast<int64_t>(d.bytes.size()) != expected)
    throw_bad_input(file, where + fmt::format(": holds {} bytes of data, its shape {} needs {}", d.bytes.size(),
                                              shape_str(d.shape), expected),
                    "the file may be truncated");
  return d;
}

void tensor_to_proto(const TensorData& d, const std::string& name, onnx::TensorProto* t) {
  t->Clear();
  t->set_name(name);
  t->set_data_type(static_cast<int32_t>(d.dtype));
  for (int64_t x : d.shape) t->add_dims(x);
  t->set_raw_data(d.bytes.data(), d.bytes.size());
}

Attribute attr_from_proto(onnx::AttributeProto& a, const std::string& file, const fs::path& base_dir) {
  Attribute r;
  using A = onnx::AttributeProto;
  switch (a.type()) {
    case A::FLOAT: r.kind = Attribute::Kind::Float; r.f = a.f(); break;
    case A::INT: r.kind = Attribute::Kind::Int; r.i = a.i(); break;
    case A::STRING: r.kind = Attribute::Kind::String; r.s = a.s(); break;
    case A::TENSOR:
      r.kind = Attribute::Kind::Tensor;
      r.t = std::make_shared<TensorData>(tensor_from_proto(*a.mutable_t(), file, base_dir, false));
      break;
    case A::FLOATS: r.kind = Attribute::Kind::Floats; r.floats.assign(a.floats().begin(), a.floats().end()); break;
    case A::INTS: r.kind = Attribute::Kind::Ints; r.ints.assign(a.ints().begin(), a.ints().end()); break;
    case A::STRINGS: r.kind = Attribute::Kind::Strings; r.strings.assign(a.strings().begin(), a.strings().end()); break;
    default: r.kind = Attribute::Kind::Unsupported; break;
  }
  return r;
}

// Our Node from a NodeProto, without value ids (used for folding and for the final graph).
Node node_from_proto(onnx::NodeProto& p, const std::string& file, const fs::path& base_dir) {
  Node n;
  n.name = p.name();
  n.op_type = p.op_type();
  n.domain = p.domain() == "ai.onnx" ? "" : p.domain();
  for (auto& a : *p.mutable_attribute()) n.attrs[a.name()] = attr_from_proto(a, file, base_dir);
  return n;
}

// Checks that every node input is provided and that there is no cycle, and reorders the nodes
// topologically (stable: file order among ready nodes).
void check_structure_and_sort(onnx::GraphProto& g, const std::string& file) {
  std::unordered_set<std::string> sources;
  for (const auto& i : g.input()) sources.insert(i.name());
  for (const auto& t : g.initializer()) sources.insert(t.name());
  std::unordered_map<std::string, int> producer;
  for (int k = 0; k < g.node_size(); ++k) {
    auto& n = *g.mutable_node(k);
    if (n.name().empty()) n.set_name(fmt::format("{}_{}", n.op_type(), k));
    for (const auto& o : n.output()) {
      if (o.empty()) continue;
      if (sources.count(o)) throw_bad_input(file, node_label(n) + " writes '" + o + "', which is already a graph input or initializer");
      if (!producer.emplace(o, k).second)
        throw_bad_input(file, node_label(n) + " writes '" + o + "', which " + node_label(g.node(producer[o])) + " also writes");
    }
  }
  std::vector<std::vector<int>> users(static_cast<size_t>(g.node_size()));
  std::vector<int> pending(static_cast<size_t>(g.node_size()), 0);
  for (int k = 0; k < g.node_size(); ++k) {
    const auto& n = g.node(k);
    std::set<int> deps;
    for (const auto& in : n.input()) {
      if (in.empty() || sources.count(in)) continue;
      auto it = producer.find(in);
      if (it == producer.end())
        throw_bad_input(file, node_label(n) + " reads '" + in + "', which no node, graph input or initializer provides",
                        "a dangling input");
      deps.insert(it->second);
    }
    for (int d : deps) users[static_cast<size_t>(d)].push_back(k);
    pending[static_cast<size_t>(k)] = static_cast<int>(deps.size());
  }
  for (const auto& o : g.output())
    if (!sources.count(o.name()) && !producer.count(o.name()))
      throw_bad_input(file, "graph output '" + o.name() + "' is not produced by any node");

  std::priority_queue<int, std::vector<int>, std::greater<int>> ready;
  for (int k = 0; k < g.node_size(); ++k)
    if (pending[static_cast<size_t>(k)] == 0) ready.push(k);
  std::vector<int> order;
  while (!ready.empty()) {
    int k = ready.top();
    ready.pop();
    order.push_back(k);
    for (int u : users[static_cast<size_t>(k)])
      if (--pending[static_cast<size_t>(u)] == 0) ready.push(u);
  }
  if (static_cast<int>(order.size()) != g.node_size()) {
    // Walk back from a node still pending to name a cycle.
    int start = 0;
    while (pending[static_cast<size_t>(start)] == 0) ++start;
    std::vector<int> path;
    std::unordered_map<int, size_t> seen;
    int cur = start;
    while (!seen.count(cur)) {
      seen[cur] = path.size();
      path.push_back(cur);
      int next = -1;
      for (const auto& in : g.node(cur).input()) {
        auto it = producer.find(in);
        if (it != producer.end() && pending[static_cast<size_t>(it->second)] > 0) { next = it->second; break; }
      }
      if (next < 0) break;
      cur = next;
    }
    std::string cyc;
    for (size_t i = seen.count(cur) ? seen[cur] : 0; i < path.size(); ++i) cyc = "'" + g.node(path[i]).name() + "' <- " + cyc;
    cyc += "'" + g.node(cur).name() + "'";
    throw_bad_input(file, "the graph has a cycle: " + cyc, "ONNX graphs must be acyclic");
  }
  google::protobuf::RepeatedPtrField<onnx::NodeProto> sorted;
  sorted.Reserve(g.node_size());
  for (int k : order) *sorted.Add() = std::move(*g.mutable_node(k));
  g.mutable_node()->Swap(&sorted);
}

// Max and Min of three or more inputs become chains of two-input nodes, Max(Max(a, b), c), which
// both backends' kernels and gradient rules implement. The forward is exact (a maximum of maxima);
// a tie splits the gradient evenly between the two sides of its link, so three equal inputs get
// 1/4, 1/4 and 1/2 (ONNX leaves Max's gradient undefined; PyTorch's chained torch.maximum does
// the same). The last link keeps the node's name and output; the others are named after it.
void split_variadic(onnx::GraphProto& g) {
  auto wide = [](const onnx::NodeProto& n) {
    if (!onnx_op(n, "Max") && !onnx_op(n, "Min")) return false;
    return std::count_if(n.input().begin(), n.input().end(), [](const std::string& s) { return !s.empty(); }) > 2;
  };
  if (std::none_of(g.node().begin(), g.node().end(), wide)) return;
  std::unordered_set<std::string> taken;
  for (const auto& v : g.input()) taken.insert(v.name());
  for (const auto& t : g.initializer()) taken.insert(t.name());
  for (const auto& n : g.node()) {
    taken.insert(n.name());
    for (const auto& o : n.output()) taken.insert(o);
  }
  auto fresh = [&](const std::string& base) {
    std::string s = base;
    for (int k = 2; !taken.insert(s).second; ++k) s = fmt::format("{}_{}", base, k);
    return s;
  };
  google::protobuf::RepeatedPtrField<onnx::NodeProto> out;
  out.Reserve(g.node_size());
  for (auto& n : *g.mutable_node()) {
    if (!wide(n)) {
      *out.Add() = std::move(n);
      continue;
    }
    std::vector<std::string> in;
    for (const auto& s : n.input())
      if (!s.empty()) in.push_back(s);
    std::string acc = in[0];
    for (size_t k = 1; k < in.size(); ++k) {
      auto& link = *out.Add();
      link.set_op_type(n.op_type());
      link.set_domain(n.domain());
      const bool last = k + 1 == in.size();
      link.set_name(last ? n.name() : fresh(fmt::format("{}/{}", n.name(), k)));
      link.add_input(acc);
      link.add_input(in[k]);
      acc = last ? n.output(0) : fresh(fmt::format("{}/{}", n.output(0), k));
      link.add_output(acc);
    }
  }
  g.mutable_node()->Swap(&out);
}

// The ONNX checker, on a copy where externally stored initializers become graph inputs (the
// checker would otherwise look for their files relative to the working directory, and the
// planner must work without them), and so do those held apart (without their bytes the checker
// would find no value in them).
void run_checker(const onnx::ModelProto& model, const std::string& file, const HeldMap& held) {
  auto apart = [&](const onnx::TensorProto& t) {
    return t.data_location() == onnx::TensorProto::EXTERNAL || held.count(t.name()) != 0;
  };
  bool has_external = false;
  for (const auto& t : model.graph().initializer())
    if (apart(t)) { has_external = true; break; }
  try {
    if (!has_external) {
      onnx::checker::check_model(model);
      return;
    }
    onnx::ModelProto copy;
    *copy.mutable_opset_import() = model.opset_import();
    copy.set_ir_version(model.ir_version());
    auto* g = copy.mutable_graph();
    const auto& src = model.graph();
    g->set_name(src.name());
    *g->mutable_node() = src.node();
    *g->mutable_input() = src.input();
    *g->mutable_output() = src.output();
    std::unordered_set<std::string> inputs;  // before IR 4 every initializer is also one
    for (const auto& in : src.input()) inputs.insert(in.name());
    for (const auto& t : src.initializer()) {
      if (!apart(t)) {
        *g->add_initializer() = t;
        continue;
      }
      if (inputs.count(t.name())) continue;
      auto* in = g->add_input();
      in->set_name(t.name());
      auto* tt = in->mutable_type()->mutable_tensor_type();
      tt->set_elem_type(t.data_type());
      auto* sh = tt->mutable_shape();
      for (int64_t d : t.dims()) sh->add_dim()->set_dim_value(d);
    }
    onnx::checker::check_model(copy);
  } catch (const onnx::checker::ValidationError& e) {
    throw_bad_input(file, "invalid ONNX model: " + first_line(e.what()), "onnx.checker rejects it");
  }
}

void bind_dims(onnx::GraphProto& g, const std::unordered_set<std::string>& initializer_names, const LoadOptions& opts,
               const std::string& file, std::map<std::string, int64_t>& bound) {
  for (auto& in : *g.mutable_input()) {
    if (initializer_names.count(in.name())) continue;
    if (!in.type().has_tensor_type())
      throw_bad_input(file, "graph input '" + in.name() + "' is not a tensor", "only tensor inputs are supported");
    auto* tt = in.mutable_type()->mutable_tensor_type();
    if (auto given = opts.input_array ? opts.input_array(in.name()) : nullptr) {
      // Every dimension from the caller's array.
      const Shape& a = given->shape;
      if (!tt->has_shape()) {
        for (int64_t x : a) tt->mutable_shape()->add_dim()->set_dim_value(x);
        continue;
      }
      auto* shape = tt->mutable_shape();
      if (shape->dim_size() != static_cast<int>(a.size()))
        throw_bad_input(file, fmt::format("graph input '{}' has rank {}, its array {} rank {}", in.name(), shape->dim_size(),
                                          shape_str(a), a.size()),
                        "give an array of the input's rank");
      for (int k = 0; k < shape->dim_size(); ++k) {
        auto* d = shape->mutable_dim(k);
        const int64_t v = a[static_cast<size_t>(k)];
        if (d->has_dim_value()) {
          if (d->dim_value() != v)
            throw_bad_input(file, fmt::format("graph input '{}' has size {} on axis {}, its array {}", in.name(), d->dim_value(),
                                              k, shape_str(a)),
                            "the model fixes that size");
          continue;
        }
        const std::string sym = d->dim_param();
        if (!sym.empty()) {
          auto [pos, fresh] = bound.emplace(sym, v);
          if (!fresh && pos->second != v)
            throw_bad_input(file, fmt::format("symbolic dimension '{}' is {} in the array for '{}', {} in another input's", sym,
                                              v, in.name(), pos->second),
                            "the arrays must agree on shared dimensions");
        }
        d->clear_dim_param();
        d->set_dim_value(v);
      }
      continue;
    }
    if (!tt->has_shape())
      throw_bad_input(file, "graph input '" + in.name() + "' has no shape", "export the model with input shapes");
    auto* shape = tt->mutable_shape();
    for (int k = 0; k < shape->dim_size(); ++k) {
      auto* d = shape->mutable_dim(k);
      if (d->has_dim_value()) {
        if (d->dim_value() < 0) throw_bad_input(file, "graph input '" + in.name() + "' has a negative dimension");
        if (k == 0 && opts.batch_size > 0 && d->dim_value() != opts.batch_size && !opts.dims.count("batch"))
          throw_bad_input(file, fmt::format("graph input '{}' has a fixed batch dimension {}, not {}", in.name(),
                                            d->dim_value(), opts.batch_size),
                          "re-export it with a dynamic batch axis, or use that batch size");
        continue;
      }
      std::string sym = d->dim_param();
      int64_t v = 0;
      auto it = sym.empty() ? opts.dims.end() : opts.dims.find(sym);
      // The batch size wins on the leading axis (a plan may also record the batch symbol).
      if (k == 0 && opts.batch_size > 0) v = opts.batch_size;
      else if (it != opts.dims.end()) v = it->second;
      else if (k == 0)
        throw_bad_input(file, fmt::format("graph input '{}' has a symbolic batch dimension{}", in.name(),
                                          sym.empty() ? "" : " '" + sym + "'"),
                        "give --batch-size");
      else
        throw_bad_input(file, fmt::format("graph input '{}' has a symbolic dimension {} on axis {}", in.name(),
                                          sym.empty() ? "(unnamed)" : "'" + sym + "'", k),
                        sym.empty() ? "export the model with a static size there" : "bind it with --dim " + sym + "=SIZE");
      if (!sym.empty()) {
        auto [pos, fresh] = bound.emplace(sym, v);
        if (!fresh && pos->second != v)
          throw_bad_input(file, fmt::format("symbolic dimension '{}' bound to both {} and {}", sym, pos->second, v));
      }
      d->clear_dim_param();
      d->set_dim_value(v);
    }
  }
  // Declared shapes of outputs and intermediates: bound symbols become sizes, other symbols
  // (exporters' made-up names) become unknown for shape inference to fill in. Static sizes stay,
  // so a custom op's declared output shape still counts, and a contradiction is caught.
  auto rebind = [&](onnx::ValueInfoProto& v) {
    if (!v.type().has_tensor_type() || !v.type().tensor_type().has_shape()) return;
    for (auto& d : *v.mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim()) {
      if (!d.has_dim_param()) continue;
      auto it = bound.find(d.dim_param());
      if (it != bound.end()) d.set_dim_value(it->second);
      else d.clear_dim_param();
    }
  };
  for (auto& v : *g.mutable_value_info()) rebind(v);
  for (auto& v : *g.mutable_output()) rebind(v);
}

// ONNX 1.12's shape inference (and its version converter, which runs it) dereferences missing
// dimensions on some ill-formed nodes (e.g. a Gemm whose input has rank 1: found by the fuzzer)
// instead of reporting them. Those faults are turned into bad input here, so that a hostile file
// never crashes smp. The model is discarded afterwards. Not reentrant: loading runs on one thread.
sigjmp_buf g_infer_jmp;
volatile sig_atomic_t g_in_infer = 0;

void on_infer_fault(int sig) {
  if (g_in_infer) siglongjmp(g_infer_jmp, sig);
  std::signal(sig, SIG_DFL);
  std::raise(sig);
}

// Runs `fn` (an ONNX library call) with its faults caught: returns the signal (0 when none) and
// sets `error` to the first line of what it threw.
template <class F>
int run_guarded(F&& fn, std::string& error) {
  struct sigaction sa {}, old_segv {}, old_bus {}, old_fpe {};
  sa.sa_handler = on_infer_fault;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGSEGV, &sa, &old_segv);
  sigaction(SIGBUS, &sa, &old_bus);
  sigaction(SIGFPE, &sa, &old_fpe);
  auto restore = [&] {
    g_in_infer = 0;
    sigaction(SIGSEGV, &old_segv, nullptr);
    sigaction(SIGBUS, &old_bus, nullptr);
    sigaction(SIGFPE, &old_fpe, nullptr);
  };
  int sig = sigsetjmp(g_infer_jmp, 1);
  if (sig == 0) {
    g_in_infer = 1;
    try {
      fn();
    } catch (const std::exception& e) {
      error = first_line(e.what());
    }
  }
  restore();
  return sig;
}

void infer_shapes(onnx::ModelProto& model, const std::string& file) {
  onnx::ShapeInferenceOptions options(/*check_type=*/true, /*error_mode=*/1, /*data_propagation=*/true);
  std::string error;
  int sig = run_guarded([&] { onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), options); },
                        error);
  if (sig == 0 && !error.empty()) {
    // ONNX 1.12's data propagation takes an empty int64 constant for a rank-0 shape: a Gather from
    // it fails ("axis must be in [-rank, rank-1]"), as a detector's does once it found no box.
    // Without propagation (smp's folding computes those shapes itself) inference may pass.
    options.enable_data_propagation = false;
    std::string again;
    sig = run_guarded([&] { onnx::shape_inference::InferShapes(model, onnx::OpSchemaRegistry::Instance(), options); }, again);
    if (again.empty()) error.clear();
  }
  if (sig != 0)
    throw_bad_input(file, fmt::format("ONNX's shape inference faulted (signal {}) on this model", sig),
                    "a node's inputs have a rank or type its op does not accept");
  if (!error.empty())
    throw_bad_input(file, "shape inference failed: " + error, "check the input shapes and the bound dimensions");
}

// A model of an older opset, converted by ONNX's version converter to `target`.
void convert_opset(onnx::ModelProto& model, int64_t from, int64_t target, const std::string& file) {
  std::string error;
  onnx::ModelProto converted;
  int sig = run_guarded([&] { converted = onnx::version_conversion::ConvertVersion(model, static_cast<int>(target)); },
                        error);
  std::string what = fmt::format("ONNX's version converter cannot bring opset {} to {}", from, target);
  if (sig != 0) throw_bad_input(file, fmt::format("{} (it faulted with signal {})", what, sig), "convert it with a newer onnx");
  if (!error.empty()) throw_bad_input(file, what + ": " + error, "convert it with a newer onnx");
  model = std::move(converted);
}

// Output shapes ONNX 1.12's shape inference leaves unknown although the inputs' are static: an
// Einsum gets only a rank. Returns how many outputs got a shape (the next inference pass carries
// them on).
int complete_shapes(onnx::ModelProto& model) {
  auto& g = *model.mutable_graph();
  std::unordered_map<std::string, onnx::ValueInfoProto*> info;
  std::unordered_map<std::string, std::pair<DType, Shape>> known;
  auto note = [&](onnx::ValueInfoProto& v) {
    info[v.name()] = &v;
    if (auto st = static_type(v.type())) known[v.name()] = *st;
  };
  for (auto& v : *g.mutable_input()) note(v);
  for (auto& v : *g.mutable_value_info()) note(v);
  for (auto& v : *g.mutable_output()) note(v);
  for (const auto& t : g.initializer())
    known[t.name()] = {dtype_from_onnx(t.data_type()), Shape(t.dims().begin(), t.dims().end())};
  int completed = 0;
  for (const auto& n : g.node()) {
    if (!onnx_op(n, "Einsum") || n.output_size() != 1) continue;
    if (known.count(n.output(0))) continue;
    std::vector<Shape> shapes;
    DType dt = DType::Undefined;
    for (const auto& in : n.input()) {
      auto it = known.find(in);
      if (it == known.end()) break;
      shapes.push_back(it->second.second);
      dt = it->second.first;
    }
    if (static_cast<int>(shapes.size()) != n.input_size()) continue;
    std::string eq;
    for (const auto& a : n.attribute())
      if (a.name() == "equation") eq = a.s();
    EinsumSpec spec;
    if (!parse_einsum(eq, shapes, spec).empty()) continue;  // the kernel reports it
    onnx::ValueInfoProto* v = info.count(n.output(0)) ? info[n.output(0)] : g.add_value_info();
    v->set_name(n.output(0));
    auto* tt = v->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(static_cast<int32_t>(dt));
    tt->clear_shape();
    auto* sh = tt->mutable_shape();
    for (int64_t d : spec.output_shape()) sh->add_dim()->set_dim_value(d);
    known[n.output(0)] = {dt, spec.output_shape()};
    ++completed;
  }
  return completed;
}

// One folding pass over the model: evaluates every node whose inputs are known constants (or,
// for Shape/Size, whose input shape is static), replaces its outputs by initializers and drops
// the node. Returns how many nodes were folded.
int fold_pass(onnx::ModelProto& model, ConstMap& consts,
              std::unordered_set<std::string>& folded_names, int64_t opset, const std::string& file,
              const fs::path& base_dir) {
  auto& g = *model.mutable_graph();
  std::unordered_map<std::string, Shape> shapes = static_shapes(g);

  int64_t held_bytes = 0;
  for (const auto& [name, d] : consts) held_bytes += static_cast<int64_t>(d->bytes.size());
  int folded = 0;
  google::protobuf::RepeatedPtrField<onnx::NodeProto> kept;
  std::vector<std::string> new_consts;
  for (auto& p : *g.mutable_node()) {
    bool shape_only = is_shape_only_op(p.op_type()) && onnx_domain(p.domain());
    bool all_const = true;
    std::vector<FoldInput> ins;
    for (const auto& name : p.input()) {
      FoldInput fi;
      if (name.empty()) { ins.push_back(fi); continue; }
      fi.present = true;
      auto c = consts.find(name);
      if (c != consts.end()) fi.data = c->second.get();
      auto s = shapes.find(name);
      if (s != shapes.end()) fi.shape = &s->second;
      if (!fi.data && !(shape_only && fi.shape)) all_const = false;
      ins.push_back(fi);
    }
    std::optional<std::vector<TensorData>> out;
    if (all_const) {
      Node n = node_from_proto(p, file, base_dir);
      n.outputs.assign(static_cast<size_t>(p.output_size()), -1);  // how many (Split's pieces)
      out = fold_node(n, ins, opset, std::clamp(kMaxFoldTotalBytes - held_bytes, kMaxFoldedInitializerBytes, kMaxFoldBytes));
    }
    if (!out || static_cast<int>(out->size()) < p.output_size()) {
      *kept.Add() = std::move(p);
      continue;
    }
    for (int k = 0; k < p.output_size(); ++k) {
      const std::string& o = p.output(k);
      if (o.empty()) continue;
      consts[o] = std::make_shared<TensorData>(std::move((*out)[static_cast<size_t>(k)]));
      held_bytes += static_cast<int64_t>(consts[o]->bytes.size());
      shapes[o] = consts[o]->shape;
      folded_names.insert(o);
      new_consts.push_back(o);
    }
    ++folded;
  }
  g.mutable_node()->Swap(&kept);
  if (folded == 0) return 0;

  // Folded values still read by a node, or graph outputs, become initializers; large ones (index
  // tensors, masks: they decide no shape) become typed graph inputs instead, so that shape
  // inference sees their shapes without a second copy of their bytes in the model.
  const std::unordered_set<std::string> used = names_read(g);
  for (const auto& name : new_consts) {
    if (!used.count(name)) continue;
    const TensorData& d = *consts[name];
    if (static_cast<int64_t>(d.bytes.size()) <= kMaxFoldedInitializerBytes) {
      tensor_to_proto(d, name, g.add_initializer());
      continue;
    }
    auto& in = *g.add_input();
    in.set_name(name);
    auto& tt = *in.mutable_type()->mutable_tensor_type();
    tt.set_elem_type(static_cast<int32_t>(d.dtype));
    for (int64_t x : d.shape) tt.mutable_shape()->add_dim()->set_dim_value(x);
  }
  // Their value_info entries are now stale.
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> vi;
  for (auto& v : *g.mutable_value_info())
    if (!folded_names.count(v.name())) *vi.Add() = std::move(v);
  g.mutable_value_info()->Swap(&vi);
  return folded;
}

// Folded values that nothing reads any more (the intermediates of a folded chain: mvit's index
// tensors pass through Expand, Unsqueeze and Concat, 150 MB each) are released, and the
// initializers or inputs folding wrote for them dropped, so that folding holds only what the
// graph reads.
void drop_dead_constants(onnx::GraphProto& g, ConstMap& consts, const std::unordered_set<std::string>& folded_names) {
  const std::unordered_set<std::string> used = names_read(g);
  google::protobuf::RepeatedPtrField<onnx::TensorProto> kept;
  for (auto& t : *g.mutable_initializer())
    if (used.count(t.name()) || !folded_names.count(t.name())) *kept.Add() = std::move(t);
  g.mutable_initializer()->Swap(&kept);
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> inputs;
  for (auto& v : *g.mutable_input())
    if (used.count(v.name()) || !folded_names.count(v.name())) *inputs.Add() = std::move(v);
  g.mutable_input()->Swap(&inputs);
  std::unordered_set<std::string> initializers;
  for (const auto& t : g.initializer()) initializers.insert(t.name());
  for (auto it = consts.begin(); it != consts.end();)
    it = used.count(it->first) || initializers.count(it->first) ? std::next(it) : consts.erase(it);
}

// STFT's onesided defaults to 1, but the shape inference of onnx 1.12 reads a missing attribute
// as 0 (16 bins where a 16-sample frame has 9): the default is written out before inferring.
// (1.12 also counts frames right only where the frame step divides the frame length; other
// models fail inference with its message.)
void explicit_stft_defaults(onnx::GraphProto& g) {
  for (auto& n : *g.mutable_node()) {
    if (!onnx_op(n, "STFT")) continue;
    bool has = false;
    for (const auto& a : n.attribute()) has = has || a.name() == "onesided";
    if (has) continue;
    onnx::AttributeProto& a = *n.add_attribute();
    a.set_name("onesided");
    a.set_type(onnx::AttributeProto::INT);
    a.set_i(1);
  }
}

// QuantizeLinear -> (Clip ->) DequantizeLinear with one scale and zero point (fixed): the
// fake quantization of quantization-aware training, as PyTorch exports its FakeQuantize modules
// (the Clip narrows the range, quant_max 127 of reduce_range). Each becomes one FakeQuantize node
// (x, scale, zero point; axis, qmin, qmax) under the DequantizeLinear's name and output, whose
// gradient passes where x was not clamped, so that such a model trains; its forward gives the
// pair's values. Pairs whose integers are read elsewhere, or are graph outputs, stay. Returns
// how many were fused.
int fuse_fake_quant(onnx::GraphProto& g, const ConstMap& consts) {
  std::unordered_map<std::string, std::vector<int>> readers;
  for (int i = 0; i < g.node_size(); ++i)
    for (const auto& in : g.node(i).input())
      if (!in.empty()) readers[in].push_back(i);
  std::unordered_set<std::string> outputs;
  for (const auto& o : g.output()) outputs.insert(o.name());
  // The one node reading `v` (none when v is a graph output or read by several).
  auto only_reader = [&](const std::string& v) -> int {
    auto it = readers.find(v);
    if (outputs.count(v) || it == readers.end() || it->second.size() != 1) return -1;
    return it->second[0];
  };
  auto attr_int = [](const onnx::NodeProto& n, const char* name, int64_t dflt) {
    for (const auto& a : n.attribute())
      if (a.name() == name) return static_cast<int64_t>(a.i());
    return dflt;
  };
  auto input = [](const onnx::NodeProto& n, int i) { return i < n.input_size() ? n.input(i) : std::string(); };
  // Two parameter inputs agree: the same value, or constants of equal bytes.
  auto same = [&](const std::string& a, const std::string& b) {
    if (a == b) return true;
    auto x = consts.find(a), y = consts.find(b);
    return x != consts.end() && y != consts.end() && x->second->dtype == y->second->dtype && x->second->shape == y->second->shape &&
           x->second->bytes == y->second->bytes;
  };
  // Elements of the values fixed before the run: constants, and initializers (a float scale is
  // one, loaded as a weight candidate).
  std::unordered_map<std::string, int64_t> fixed;
  for (const auto& [name, d] : consts) fixed[name] = d->numel();
  for (const auto& t : g.initializer()) {
    int64_t k = 1;
    for (auto d : t.dims()) k *= d;
    fixed[t.name()] = k;
  }
  // Values known to be float32 (FakeQuantize takes float32; a QuantizeLinear of int32 stays).
  std::unordered_set<std::string> float32;
  auto note = [&](const onnx::ValueInfoProto& v) {
    if (v.type().has_tensor_type() && v.type().tensor_type().elem_type() == onnx::TensorProto::FLOAT) float32.insert(v.name());
  };
  for (const auto& v : g.input()) note(v);
  for (const auto& v : g.value_info()) note(v);
  for (const auto& v : g.output()) note(v);
  for (const auto& t : g.initializer())
    if (t.data_type() == onnx::TensorProto::FLOAT) float32.insert(t.name());
  std::vector<bool> drop(static_cast<size_t>(g.node_size()), false);
  std::unordered_map<int, onnx::NodeProto> replace;  // at the QuantizeLinear's position
  int fused = 0;
  for (int qi = 0; qi < g.node_size(); ++qi) {
    const onnx::NodeProto& q = g.node(qi);
    if (!onnx_op(q, "QuantizeLinear") || q.input_size() < 2 || q.output_size() != 1 || !float32.count(q.input(0))) continue;
    const std::string scale = q.input(1), zero = input(q, 2);
    if (!fixed.count(scale) || (!zero.empty() && !consts.count(zero))) continue;
    DType qtype = zero.empty() ? DType::U8 : consts.at(zero)->dtype;
    if (qtype != DType::U8 && qtype != DType::I8) continue;
    double lo = qtype == DType::U8 ? 0 : -128, hi = qtype == DType::U8 ? 255 : 127;
    int ci = -1, di = only_reader(q.output(0));
    if (di >= 0 && onnx_op(g.node(di), "Clip")) {
      ci = di;
      const onnx::NodeProto& c = g.node(ci);
      bool constant = true;
      for (int k = 1; k < 3; ++k) {
        const std::string b = input(c, k);
        if (b.empty()) continue;
        auto it = consts.find(b);
        if (it == consts.end() || it->second->numel() != 1) constant = false;
        else if (k == 1) lo = std::max(lo, std::ceil(it->second->get_f64(0)));
        else hi = std::min(hi, std::floor(it->second->get_f64(0)));
      }
      for (const auto& a : c.attribute()) {  // Clip before opset 11
        if (a.name() == "min") lo = std::max(lo, std::ceil(static_cast<double>(a.f())));
        if (a.name() == "max") hi = std::min(hi, std::floor(static_cast<double>(a.f())));
      }
      di = constant && c.output_size() == 1 ? only_reader(c.output(0)) : -1;
    }
    if (di < 0 || lo > hi) continue;
    const onnx::NodeProto& d = g.node(di);
    if (!onnx_op(d, "DequantizeLinear") || d.input_size() < 2 || d.output_size() != 1 || !same(d.input(1), scale)) continue;
    const std::string dzero = input(d, 2);
    if (zero.empty() != dzero.empty() || (!zero.empty() && !same(zero, dzero))) continue;
    if (fixed.at(scale) > 1 && attr_int(q, "axis", 1) != attr_int(d, "axis", 1)) continue;
    onnx::NodeProto f;
    f.set_op_type("FakeQuantize");
    f.set_name(d.name().empty() ? q.name() : d.name());
    f.add_input(q.input(0));
    f.add_input(scale);
    f.add_input(zero);
    f.add_output(d.output(0));
    auto set_int = [&](const char* name, int64_t v) {
      onnx::AttributeProto& a = *f.add_attribute();
      a.set_name(name);
      a.set_type(onnx::AttributeProto::INT);
      a.set_i(v);
    };
    set_int("axis", attr_int(q, "axis", 1));
    set_int("qmin", static_cast<int64_t>(lo));
    set_int("qmax", static_cast<int64_t>(hi));
    replace[qi] = std::move(f);
    drop[static_cast<size_t>(qi)] = drop[static_cast<size_t>(di)] = true;
    if (ci >= 0) drop[static_cast<size_t>(ci)] = true;
    ++fused;
  }
  if (fused == 0) return 0;
  google::protobuf::RepeatedPtrField<onnx::NodeProto> out;
  for (int i = 0; i < g.node_size(); ++i) {
    if (auto r = replace.find(i); r != replace.end()) *out.Add() = std::move(r->second);
    else if (!drop[static_cast<size_t>(i)]) *out.Add() = std::move(*g.mutable_node(i));
  }
  g.mutable_node()->Swap(&out);
  return fused;
}

// Drops the nodes none of whose outputs is read (by a node, a subgraph or as a graph output),
// directly or through other nodes: what only fed values a stage now knows. One walk back from the
// graph's outputs through each value's producer (in any node order: the graph is sorted later).
void drop_dead_nodes(onnx::GraphProto& g) {
  std::unordered_map<std::string, int> producer;
  for (int i = 0; i < g.node_size(); ++i)
    for (const auto& o : g.node(i).output())
      if (!o.empty()) producer.emplace(o, i);
  std::vector<char> live(static_cast<size_t>(g.node_size()), 0);
  std::vector<std::string> todo;
  std::unordered_set<std::string> seen;
  auto need = [&](const std::string& v) {
    if (!v.empty() && seen.insert(v).second) todo.push_back(v);
  };
  for (const auto& o : g.output()) need(o.name());
  while (!todo.empty()) {
    const std::string v = std::move(todo.back());
    todo.pop_back();
    auto it = producer.find(v);
    if (it == producer.end() || live[static_cast<size_t>(it->second)]) continue;
    live[static_cast<size_t>(it->second)] = 1;
    const auto& p = g.node(it->second);
    for (const auto& i : p.input()) need(i);
    std::unordered_set<std::string> sub;
    subgraph_reads(p, sub);  // an If's branch or a Loop's body reads the values around it
    for (const auto& i : sub) need(i);
  }
  google::protobuf::RepeatedPtrField<onnx::NodeProto> kept;
  for (int i = 0; i < g.node_size(); ++i)
    if (live[static_cast<size_t>(i)]) *kept.Add() = std::move(*g.mutable_node(i));
  g.mutable_node()->Swap(&kept);
}

// `d` as the initializer `name`: a large floating-point one without its bytes, which are held
// apart (as a ParsedModel's weights are: never copied).
void bind_initializer(onnx::GraphProto& g, const std::string& name, const std::shared_ptr<const TensorData>& d,
                      HeldMap& held) {
  onnx::TensorProto& t = *g.add_initializer();
  if (!is_floating(d->dtype) || static_cast<int64_t>(d->bytes.size()) < kHeldBytes) {
    tensor_to_proto(*d, name, &t);
    return;
  }
  t.set_name(name);
  t.set_data_type(static_cast<int32_t>(d->dtype));
  for (int64_t x : d->shape) t.add_dims(x);
  held[name] = d;
}

// LoadOptions::known for node outputs: each becomes an initializer (bind_initializer; a constant,
// in `shaping`, as a known initializer becomes); a node all of whose outputs are known goes, one
// with others still needed writes its known ones under fresh names (computed again, unread); then
// what fed only known values goes.
void bind_known_values(onnx::ModelProto& model, const LoadOptions& opts, std::unordered_set<std::string>& shaping,
                       HeldMap& held) {
  auto& g = *model.mutable_graph();
  std::unordered_set<std::string> bound;
  for (auto& p : *g.mutable_node()) {
    bool all = true;
    for (const auto& o : p.output())
      if (!o.empty() && !opts.known.count(o)) all = false;
    for (int k = 0; k < p.output_size(); ++k) {
      const std::string o = p.output(k);
      if (o.empty() || !opts.known.count(o)) continue;
      bound.insert(o);
      if (!all) p.set_output(k, o + "__smp_stage_recomputed");
    }
    if (all) p.clear_output();  // dropped below: nothing reads a node without outputs
  }
  // A known initializer (a float one, read as data by a node decided by data) is a constant now.
  for (const auto& t : g.initializer())
    if (opts.known.count(t.name())) shaping.insert(t.name());
  for (const auto& name : bound) {
    bind_initializer(g, name, opts.known.at(name), held);
    shaping.insert(name);
    if (model.ir_version() < 4) {  // every initializer is also a graph input there
      auto& in = *g.add_input();
      in.set_name(name);
      auto& tt = *in.mutable_type()->mutable_tensor_type();
      tt.set_elem_type(static_cast<int32_t>(opts.known.at(name)->dtype));
      for (int64_t x : opts.known.at(name)->shape) tt.mutable_shape()->add_dim()->set_dim_value(x);
    }
  }
  // Their declared types may leave dimensions unknown (a value of data-dependent shape): they give
  // way to the constants' (ONNX's inference would read a value_info entry over an initializer).
  auto set_type = [&](onnx::ValueInfoProto& v) {
    const TensorData& d = *opts.known.at(v.name());
    auto& tt = *v.mutable_type()->mutable_tensor_type();
    tt.set_elem_type(static_cast<int32_t>(d.dtype));
    tt.clear_shape();
    for (int64_t x : d.shape) tt.mutable_shape()->add_dim()->set_dim_value(x);
  };
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> infos;
  for (auto& v : *g.mutable_value_info())
    if (!bound.count(v.name())) *infos.Add() = std::move(v);
  g.mutable_value_info()->Swap(&infos);
  for (auto& o : *g.mutable_output())
    if (bound.count(o.name())) set_type(o);
  drop_dead_nodes(g);
}

// LoadOptions::staged: the nodes still decided by data after folding (an If, Loop or Scan whose
// condition or length did not fold, a sequence op left, a node whose output shape is not static,
// such as a NonZero or NonMaxSuppression of computed values) and everything downstream of them
// are cut off; the graph's outputs become the values the cut nodes read from what stays (and the
// model's outputs that do not depend on them). Returns false, changing nothing, when there is
// nothing to cut or the cut nodes read only constants (another stage would know nothing new: the
// usual refusal follows).
bool cut_at_data_dependence(onnx::GraphProto& g, const ConstMap& consts, int64_t opset) {
  const std::unordered_map<std::string, Shape> shapes = static_shapes(g);
  std::unordered_map<std::string, std::vector<int>> readers;
  for (int k = 0; k < g.node_size(); ++k) {
    std::unordered_set<std::string> reads(g.node(k).input().begin(), g.node(k).input().end());
    subgraph_reads(g.node(k), reads);
    for (const auto& r : reads)
      if (!r.empty()) readers[r].push_back(k);
  }
  std::vector<bool> cut(static_cast<size_t>(g.node_size()), false);
  std::vector<int> work;
  for (int k = 0; k < g.node_size(); ++k) {
    const auto& p = g.node(k);
    // Control flow left; ops whose output shapes depend on their data (however the file declares
    // them); ops without a kernel, which the next stage may fold once their inputs are known.
    bool blocked = onnx_op(p, "If") || onnx_op(p, "Loop") || (onnx_op(p, "Scan") && opset >= 9) || is_sequence_op(p) ||
                   onnx_op(p, "NonZero") || onnx_op(p, "NonMaxSuppression") || onnx_op(p, "Unique") || onnx_op(p, "Compress") ||
                   (onnx_domain(p.domain()) && !find_op(p.op_type()));
    for (const auto& o : p.output())
      if (!o.empty() && !shapes.count(o)) blocked = true;
    if (blocked) {
      cut[static_cast<size_t>(k)] = true;
      work.push_back(k);
    }
  }
  while (!work.empty()) {
    const int k = work.back();
    work.pop_back();
    for (const auto& o : g.node(k).output()) {
      auto it = readers.find(o);
      if (o.empty() || it == readers.end()) continue;
      for (int r : it->second)
        if (!cut[static_cast<size_t>(r)]) {
          cut[static_cast<size_t>(r)] = true;
          work.push_back(r);
        }
    }
  }
  std::unordered_set<std::string> made_by_cut, made_by_kept, inputs;
  for (int k = 0; k < g.node_size(); ++k)
    for (const auto& o : g.node(k).output()) (cut[static_cast<size_t>(k)] ? made_by_cut : made_by_kept).insert(o);
  // Graph inputs, and float initializers (weights to training, data here: NonMaxSuppression's
  // boxes may be one).
  for (const auto& in : g.input()) inputs.insert(in.name());
  for (const auto& t : g.initializer()) inputs.insert(t.name());
  // The frontier, in node order (a subgraph's own names are made by neither and are skipped).
  std::vector<std::string> frontier;
  std::unordered_set<std::string> seen;
  for (int k = 0; k < g.node_size(); ++k) {
    if (!cut[static_cast<size_t>(k)]) continue;
    std::unordered_set<std::string> sub;
    subgraph_reads(g.node(k), sub);
    std::vector<std::string> reads(g.node(k).input().begin(), g.node(k).input().end());
    reads.insert(reads.end(), sub.begin(), sub.end());
    std::sort(reads.begin() + g.node(k).input_size(), reads.end());
    for (const auto& r : reads) {
      if (r.empty() || consts.count(r) || made_by_cut.count(r)) continue;
      if (!made_by_kept.count(r) && !inputs.count(r)) continue;
      if (seen.insert(r).second) frontier.push_back(r);
    }
  }
  if (frontier.empty()) return false;
  google::protobuf::RepeatedPtrField<onnx::NodeProto> kept;
  for (int k = 0; k < g.node_size(); ++k)
    if (!cut[static_cast<size_t>(k)]) *kept.Add() = std::move(*g.mutable_node(k));
  g.mutable_node()->Swap(&kept);
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> outputs;
  std::unordered_set<std::string> listed;
  for (auto& o : *g.mutable_output())
    if (!made_by_cut.count(o.name()) && listed.insert(o.name()).second) *outputs.Add() = std::move(o);
  for (const auto& name : frontier)
    if (listed.insert(name).second) outputs.Add()->set_name(name);  // typed by value_info or its input
  g.mutable_output()->Swap(&outputs);
  return true;
}

}  // namespace

struct ParsedModel::Impl {
  onnx::ModelProto model;  // without the bytes of the initializers in `held`
  HeldMap held;  // borrowed from the file's mapping, which they keep alive, or owned
  std::string file;
  fs::path base_dir;
  int64_t opset = -1;
};

namespace {

// An initializer's raw bytes are held apart (a weight) when it is floating point, embedded, at
// least kHeldBytes, and of the size its shape needs (the loader reports any other); its TensorData
// then, else null.
std::shared_ptr<TensorData> holdable(const onnx::TensorProto& t, size_t bytes) {
  const DType dt = dtype_from_onnx(t.data_type());
  if (!is_floating(dt) || t.data_location() == onnx::TensorProto::EXTERNAL || static_cast<int64_t>(bytes) < kHeldBytes)
    return nullptr;
  Shape shape(t.dims().begin(), t.dims().end());
  int64_t numel = 1;
  for (int64_t x : shape) numel = numel < 0 || x < 0 || (x != 0 && numel > kMaxElements / x) ? -1 : numel * x;
  if (numel < 0 || numel >= kMaxElements || numel * dtype_size(dt) != static_cast<int64_t>(bytes)) return nullptr;
  auto d = std::make_shared<TensorData>();
  d->dtype = dt;
  d->shape = std::move(shape);
  return d;
}

// `keeper`: what keeps `data` alive (a file's mapping); given, the weights are read where they
// lie (Bytes::borrow), else copied.
std::shared_ptr<const ParsedModel::Impl> parse_model(const char* data, size_t size, const std::string& file,
                                                     const fs::path& base_dir, std::shared_ptr<const void> keeper) {
  auto impl = std::make_shared<ParsedModel::Impl>();
  impl->file = file;
  impl->base_dir = base_dir;
  onnx::ModelProto& model = impl->model;
  if (size == 0) throw_bad_input(file, "empty file", "expected an ONNX model");
  if (size > static_cast<size_t>(INT_MAX))
    throw_bad_input(file, "larger than 2 GiB", "store the weights as ONNX external data");
  std::vector<RawSpan> spans;
  if (!parse_model_proto(data, size, keeper ? kHeldBytes : -1, model, spans))
    throw_bad_input(file, "not an ONNX model (protobuf parsing failed)", "the file may be truncated or of another format");
  const bool was_cut = !spans.empty();
  if (model.ir_version() <= 0 || !model.has_graph())
    throw_bad_input(file, "not an ONNX model (no IR version or no graph)", "the file may be of another format");

  int64_t opset = -1;
  for (const auto& o : model.opset_import())
    if (onnx_domain(o.domain())) opset = o.version();
  int64_t max_opset = max_supported_opset();
  auto hold = [&](const onnx::TensorProto& t, std::shared_ptr<TensorData> d) {
    if (!impl->held.emplace(t.name(), std::move(d)).second)
      throw_bad_input(file, "initializer '" + t.name() + "' appears twice");
  };

  // The cut-out weights: held, read where they lie in the file; any other raw data goes back.
  // A model of an older opset, which may be converted, first gets all of it back (the converter
  // rewrites initializers; the loop below then holds them).
  if (was_cut) {
    auto& inits = *model.mutable_graph()->mutable_initializer();
    SMP_CHECK(static_cast<size_t>(inits.size()) == spans.size(), "{}: {} initializers, {} raw-data spans", file,
              inits.size(), spans.size());
    for (int i = 0; i < inits.size(); ++i) {
      const RawSpan& r = spans[static_cast<size_t>(i)];
      if (r.length < 0) continue;
      onnx::TensorProto& t = inits[i];
      const char* bytes = data + r.offset;
      const auto n = static_cast<size_t>(r.length);
      std::shared_ptr<TensorData> d = opset < kMinOpset ? nullptr : holdable(t, n);
      if (!d) {
        t.set_raw_data(bytes, n);
        continue;
      }
      d->bytes = Bytes::borrow(bytes, n, keeper);
      hold(t, std::move(d));
    }
  }

  if (opset < 0) throw_bad_input(file, "the model imports no ai.onnx opset");
  if (opset >= 1 && opset <= max_opset) inline_functions(model, opset, file);
  if (opset >= 1 && opset < kMinOpset && model.graph().node_size() > 0) {
    convert_opset(model, opset, kMinOpset, file);
    opset = kMinOpset;
  }
  if (opset < kMinOpset || opset > max_opset)
    throw_bad_input(file, fmt::format("unsupported opset {}", opset),
                    fmt::format("smp reads ai.onnx opsets {} to {}; convert with onnx.version_converter", kMinOpset,
                                max_opset));
  impl->opset = opset;

  // Weights are held apart: each load copies the model's structure, never their bytes.
  for (auto& t : *model.mutable_graph()->mutable_initializer()) {
    if (!t.has_raw_data()) continue;
    std::shared_ptr<TensorData> d = holdable(t, t.raw_data().size());
    if (!d) continue;
    d->bytes.swap(*t.mutable_raw_data());
    t.clear_raw_data();
    hold(t, std::move(d));
  }
  return impl;
}

}  // namespace

ParsedModel::ParsedModel(const fs::path& path) {
  auto bytes = std::make_shared<const Bytes>(map_file(path));
  impl_ = parse_model(bytes->data(), bytes->size(), path.string(),
                      path.parent_path().empty() ? fs::path(".") : path.parent_path(), bytes);
}

ParsedModel::ParsedModel(const std::string& bytes, const std::string& file, const fs::path& base_dir)
    : impl_(parse_model(bytes.data(), bytes.size(), file, base_dir, nullptr)) {}

Graph load_graph(const ParsedModel& parsed, const LoadOptions& opts) {
  const ParsedModel::Impl& pm = parsed.impl();
  const std::string& file = pm.file;
  const fs::path& base_dir = pm.base_dir;
  const int64_t opset = pm.opset;
  onnx::ModelProto model = pm.model;  // its structure: the loader rewrites it
  HeldMap held = pm.held;

  auto& gp = *model.mutable_graph();
  // Float values that decide shapes (a Resize's roi and scales, an Upsample's scales): as arrays
  // or initializers they are constants, held for shape inference, never weights. So are the
  // arrays given for inputs that become initializers below.
  std::unordered_set<std::string> shaping;
  for (const auto& n : gp.node()) {
    const bool resize = onnx_op(n, "Resize"), upsample = onnx_op(n, "Upsample");
    if (!resize && !upsample) continue;
    for (int k = 1; k < std::min(n.input_size(), resize ? 3 : 2); ++k) shaping.insert(n.input(k));
  }
  if (opts.input_array || !opts.known.empty()) {
    // Inputs whose values decide shapes become initializers (kept among the inputs before IR 4,
    // where every initializer must be one); so do those an earlier stage knows.
    google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> kept;
    for (auto& in : *gp.mutable_input()) {
      auto it = opts.known.find(in.name());
      const bool known = it != opts.known.end();
      auto a = known ? it->second : opts.input_array ? opts.input_array(in.name()) : nullptr;
      if (!a || (is_floating(a->dtype) && a->numel() > 1 && !shaping.count(in.name()) && !known)) {
        *kept.Add() = std::move(in);
        continue;
      }
      const TensorData& d = *a;
      const auto& tt = in.type().tensor_type();
      if (in.type().has_tensor_type() && dtype_from_onnx(tt.elem_type()) != d.dtype)
        throw_bad_input(file, fmt::format("graph input '{}' is {}, its array {}", in.name(),
                                          dtype_name(dtype_from_onnx(tt.elem_type())), dtype_name(d.dtype)),
                        "give an array of the input's dtype");
      if (in.type().has_tensor_type() && tt.has_shape()) {
        bool fits = tt.shape().dim_size() == static_cast<int>(d.shape.size());
        for (int k = 0; fits && k < tt.shape().dim_size(); ++k)
          if (tt.shape().dim(k).has_dim_value() && tt.shape().dim(k).dim_value() != d.shape[static_cast<size_t>(k)]) fits = false;
        if (!fits)
          throw_bad_input(file, fmt::format("graph input '{}' does not fit its array {}", in.name(), shape_str(d.shape)),
                          "give an array of the input's shape");
      }
      bind_initializer(gp, in.name(), a, held);
      shaping.insert(in.name());  // data, not a weight: a float scalar folds (a Range's bounds, a Loop's trip count)
      if (model.ir_version() < 4) *kept.Add() = std::move(in);
    }
    gp.mutable_input()->Swap(&kept);
  }
  if (gp.node_size() == 0) throw_bad_input(file, "the graph has no nodes");
  if (!opts.known.empty()) bind_known_values(model, opts, shaping, held);
  if (gp.output_size() == 0) throw_bad_input(file, "the graph has no outputs");
  const int onnx_nodes = gp.node_size();

  check_structure_and_sort(gp, file);
  run_checker(model, file, held);
  split_variadic(gp);
  explicit_stft_defaults(gp);

  Graph g;
  g.model_path = file;
  g.name = gp.name();
  g.opset = opset;
  g.onnx_nodes = onnx_nodes;

  // Initializers: constants (non-float, loaded now: folding needs them) and float candidates
  // for parameters (bytes only when asked for; external ones stay where they are).
  std::unordered_set<std::string> initializer_names;
  ConstMap consts;
  std::unordered_map<std::string, ExternalData> externals;
  std::unordered_map<std::string, std::shared_ptr<const TensorData>> weights;
  std::vector<std::string> initializer_order;
  for (auto& t : *gp.mutable_initializer()) {
    if (!initializer_names.insert(t.name()).second) throw_bad_input(file, "initializer '" + t.name() + "' appears twice");
    initializer_order.push_back(t.name());
    // A float initializer may be a weight; others (and shape-deciding floats) are constants.
    const bool weight = is_floating(dtype_from_onnx(t.data_type())) && !shaping.count(t.name());
    const bool wanted = opts.load_weights && (!opts.want_weight || opts.want_weight(t.name()));
    if (auto h = held.find(t.name()); h != held.end()) {
      if (!weight) consts[t.name()] = h->second;
      else if (wanted) weights[t.name()] = h->second;
      continue;
    }
    if (t.data_location() == onnx::TensorProto::EXTERNAL) {
      externals[t.name()] = external_data_of(t, fs::absolute(base_dir), file);
      if (!weight || wanted) {
        auto d = std::make_shared<TensorData>(tensor_from_proto(t, file, base_dir, false));
        (weight ? weights : consts)[t.name()] = d;
      }
      continue;
    }
    if (weight) {
      // Sizes are checked even when the bytes are not wanted.
      if (wanted) weights[t.name()] = std::make_shared<TensorData>(tensor_from_proto(t, file, base_dir, true));
      else tensor_from_proto(t, file, base_dir, false, /*check_only=*/true);
    } else {
      consts[t.name()] = std::make_shared<TensorData>(tensor_from_proto(t, file, base_dir, false));
    }
  }

  bind_dims(gp, initializer_names, opts, file, g.dims);

  std::unordered_set<std::string> folded_names;
  for (int iter = 0; iter < 32; ++iter) {
    infer_shapes(model, file);
    int completed = complete_shapes(model);
    int folded = fold_pass(model, consts, folded_names, opset, file, base_dir);
    // Ifs whose condition folded, Loops and Scans of static length, sequences of known contents
    int inlined = inline_constant_ifs(gp, consts, file) + unroll_static_loops(gp, consts, opset, file);
    if (inlined > 0) check_structure_and_sort(gp, file);  // a body may read values produced after its node
    inlined += resolve_sequences(gp, consts, opset, file) + lower_constant_compress(gp, consts, file);
    drop_dead_constants(gp, consts, folded_names);
    if (folded == 0 && completed == 0 && inlined == 0) break;
  }
  if (opts.staged) {
    // What folding left unread goes before anything runs: a stage that knows the scores of a
    // detector would otherwise run its backbone again for a Shape that has since folded
    // (fcos_resnet50_fpn: 86 of its 116 convolutions a second time).
    drop_dead_nodes(gp);
    drop_dead_constants(gp, consts, folded_names);
    g.partial = cut_at_data_dependence(gp, consts, opset);
  }
  refuse_unresolved_control_flow(gp, opset, file);
  fuse_fake_quant(gp, consts);

  // Every value must now have a static shape.
  std::unordered_map<std::string, std::pair<DType, Shape>> types;
  auto note = [&](const onnx::ValueInfoProto& v) {
    if (auto st = static_type(v.type())) types[v.name()] = *st;
  };
  for (const auto& v : gp.input()) note(v);
  for (const auto& v : gp.value_info()) note(v);
  for (const auto& v : gp.output()) note(v);
  for (const auto& t : gp.initializer())
    types[t.name()] = {dtype_from_onnx(t.data_type()), Shape(t.dims().begin(), t.dims().end())};

  auto add_value = [&](const std::string& name, ValueKind kind) -> int {
    auto it = g.value_index.find(name);
    if (it != g.value_index.end()) return it->second;
    Value v;
    v.name = name;
    v.kind = kind;
    auto t = types.find(name);
    if (t != types.end()) {
      v.dtype = t->second.first;
      v.shape = t->second.second;
    }
    if (v.numel() >= kMaxElements)
      throw_bad_input(file, "value '" + name + "' has shape " + shape_str(v.shape) + ", too large to plan");
    int id = static_cast<int>(g.values.size());
    g.values.push_back(std::move(v));
    g.value_index[name] = id;
    return id;
  };

  for (const auto& in : gp.input()) {
    if (initializer_names.count(in.name())) continue;
    if (folded_names.count(in.name())) {  // a large folded value (fold_pass)
      g.value(add_value(in.name(), ValueKind::Constant)).data = consts.at(in.name());
      continue;
    }
    int id = add_value(in.name(), ValueKind::Input);
    if (!types.count(in.name())) throw_bad_input(file, "graph input '" + in.name() + "' has no static shape");
    g.inputs.push_back(id);
  }
  std::vector<int> float_initializers;
  for (const auto& t : gp.initializer()) {
    bool folded = folded_names.count(t.name()) != 0;
    const bool weight = is_floating(dtype_from_onnx(t.data_type())) && !shaping.count(t.name());
    int id = add_value(t.name(), ValueKind::Constant);
    Value& v = g.value(id);
    if (!folded && weight) {
      float_initializers.push_back(id);
      if (auto w = weights.find(t.name()); w != weights.end()) v.data = w->second;
      if (auto e = externals.find(t.name()); e != externals.end()) v.external = e->second;
    } else {
      v.data = consts.at(t.name());
    }
  }
  for (auto& p : *gp.mutable_node()) {
    Node n = node_from_proto(p, file, base_dir);
    int nid = static_cast<int>(g.nodes.size());
    for (const auto& in : p.input()) {
      if (in.empty()) { n.inputs.push_back(-1); continue; }
      int id = g.find_value(in);
      SMP_CHECK(id >= 0, "input '{}' of {} not yet defined after sorting", in, node_label(p));
      n.inputs.push_back(id);
      g.value(id).consumers.push_back(nid);
    }
    for (const auto& out : p.output()) {
      if (out.empty()) { n.outputs.push_back(-1); continue; }
      if (!types.count(out))
        throw_bad_input(file, node_label(p) + ": cannot infer a static shape for its output '" + out + "'",
                        "bind symbolic dimensions with --batch-size / --dim, or the op's shape depends on data");
      int id = add_value(out, ValueKind::Activation);
      g.value(id).producer = nid;
      n.outputs.push_back(id);
    }
    g.nodes.push_back(std::move(n));
  }
  for (const auto& o : gp.output()) {
    int id = g.find_value(o.name());
    SMP_CHECK(id >= 0, "graph output '{}' has no value", o.name());
    g.value(id).is_output = true;
    g.outputs.push_back(id);
  }
  // A consumer list may repeat a node that reads a value twice.
  for (auto& v : g.values) v.consumers.erase(std::unique(v.consumers.begin(), v.consumers.end()), v.consumers.end());

  // Trainable parameters: float initializers from which a graph output is reachable through
  // differentiable inputs (unknown ops: every floating input counts).
  std::vector<bool> grad_flows(g.values.size(), false);
  for (int id : g.outputs)
    if (is_floating(g.value(id).dtype)) grad_flows[static_cast<size_t>(id)] = true;
  for (auto n = g.nodes.rbegin(); n != g.nodes.rend(); ++n) {
    bool any = false;
    for (int o : n->outputs)
      if (o >= 0 && grad_flows[static_cast<size_t>(o)]) any = true;
    if (!any) continue;
    const OpDef* def = n->domain.empty() ? find_op(n->op_type) : nullptr;
    uint32_t mask = def ? def->differentiable_inputs : 0xFFFFFFFFu;
    for (size_t i = 0; i < n->inputs.size(); ++i) {
      int id = n->inputs[i];
      if (id < 0 || !is_floating(g.value(id).dtype)) continue;
      if (mask_has(mask, i)) grad_flows[static_cast<size_t>(id)] = true;
    }
  }
  // --freeze: initializers the user keeps constant (each pattern must match one of them).
  g.frozen = opts.frozen;
  std::vector<bool> pattern_used(opts.frozen.size(), false);
  auto frozen = [&](const std::string& name) {
    bool any = false;
    for (size_t k = 0; k < opts.frozen.size(); ++k)
      if (::fnmatch(opts.frozen[k].c_str(), name.c_str(), 0) == 0) any = pattern_used[k] = true;
    return any;
  };
  for (const auto& name : initializer_order) {
    int id = g.find_value(name);
    if (id < 0) continue;  // an initializer nothing reads
    Value& v = g.value(id);
    if (std::find(float_initializers.begin(), float_initializers.end(), id) == float_initializers.end()) continue;
    const bool freeze = frozen(name);
    if (grad_flows[static_cast<size_t>(id)] && !freeze) {
      v.kind = ValueKind::Parameter;
      g.parameters.push_back(id);
    } else if (!v.data) {
      // A float buffer that is not trained (e.g. a mask): the runtime needs its bytes.
      if ((opts.load_weights && (!opts.want_weight || opts.want_weight(name))) || !v.external) {
        if (auto h = held.find(name); h != held.end()) {
          v.data = h->second;
          continue;
        }
        onnx::TensorProto* tp = nullptr;
        for (auto& t : *gp.mutable_initializer())
          if (t.name() == name) tp = &t;
        if (tp) v.data = std::make_shared<TensorData>(tensor_from_proto(*tp, file, base_dir, true));
      }
    }
  }

  for (size_t k = 0; k < opts.frozen.size(); ++k)
    if (!pattern_used[k])
      throw_bad_input("--freeze", fmt::format("'{}' matches no floating-point initializer of {}",
                                              opts.frozen[k], file.empty() ? std::string("the model") : file),
                      "name a floating-point initializer of the model, or a pattern such as '*relative_coords_table'");

  // Running statistics: float initializers that a node's training forward overwrites (the
  // registry's OpDef::state). Each belongs to one node: two writers would race.
  std::unordered_map<int, int> buffer_owner;
  for (size_t ni = 0; ni < g.nodes.size(); ++ni) {
    const Node& n = g.nodes[ni];
    const OpDef* def = n.domain.empty() ? find_op(n.op_type) : nullptr;
    if (!def) continue;
    for (const StateUpdate& su : def->state) {
      if (su.output < 0 || static_cast<size_t>(su.output) >= n.outputs.size() || n.outputs[static_cast<size_t>(su.output)] < 0)
        continue;
      if (static_cast<size_t>(su.input) >= n.inputs.size() || n.inputs[static_cast<size_t>(su.input)] < 0) continue;
      int id = n.inputs[static_cast<size_t>(su.input)];
      if (std::find(float_initializers.begin(), float_initializers.end(), id) == float_initializers.end()) continue;
      Value& v = g.value(id);
      if (v.kind == ValueKind::Parameter) continue;
      auto [it, fresh] = buffer_owner.emplace(id, static_cast<int>(ni));
      if (!fresh && it->second != static_cast<int>(ni))
        throw_bad_input(file, "initializer '" + v.name + "' holds the running statistics of both node '" +
                                  g.nodes[static_cast<size_t>(it->second)].name + "' and node '" + n.name + "'",
                        "give each BatchNormalization its own running mean and variance");
      v.kind = ValueKind::Buffer;
    }
  }
  for (const auto& name : initializer_order) {
    int id = g.find_value(name);
    if (id >= 0 && g.value(id).kind == ValueKind::Buffer) g.buffers.push_back(id);
  }

  std::map<std::string, int> unknown;
  for (auto& n : g.nodes) {
    n.cost = node_cost(g, n);
    if (n.cost.estimated) ++unknown[n.domain.empty() ? n.op_type : n.domain + ":" + n.op_type];
  }
  for (const auto& [op, count] : unknown)
    g.warnings.push_back(fmt::format("no cost rule for op {} ({} node{}): estimated from the bytes it moves", op,
                                     count, count == 1 ? "" : "s"));
  // A parameter read under another name through an Identity: what torch.onnx.export's eval mode
  // makes of initializers with equal values (all LayerNorm scales start at 1), one tensor
  // trained for all of them. A weight tied on purpose is exported once and read directly.
  std::vector<std::string> copies;
  for (const Node& n : g.nodes)
    if (n.domain.empty() && n.op_type == "Identity" && n.inputs.size() == 1 && n.inputs[0] >= 0 && n.outputs.size() == 1 &&
        n.outputs[0] >= 0 && g.value(n.inputs[0]).kind == ValueKind::Parameter)
      copies.push_back(fmt::format("{} = {}", g.value(n.outputs[0]).name, g.value(n.inputs[0]).name));
  if (!copies.empty()) {
    std::string listed;
    for (size_t k = 0; k < copies.size() && k < 3; ++k) listed += (k ? ", " : "") + copies[k];
    if (copies.size() > 3) listed += fmt::format(", and {} more", copies.size() - 3);
    g.warnings.push_back(fmt::format(
        "{} parameter{} another's copy through an Identity ({}), so they train as one tensor: torch.onnx.export in eval "
        "mode merges initializers of equal values; if they are separate parameters, re-export with "
        "training=TrainingMode.TRAINING, do_constant_folding=False",
        copies.size(), copies.size() == 1 ? " is" : "s are", listed));
  }
  // BatchNormalization with its one output: inference mode, the stored statistics. Trained so,
  // it never normalises a batch by its own statistics nor updates them, unlike PyTorch's training
  // (an eval-mode export's BatchNormalizations are all so; a training-mode export's have three).
  int inference_bn = 0;
  for (const Node& n : g.nodes)
    if (n.domain.empty() && n.op_type == "BatchNormalization" &&
        std::count_if(n.outputs.begin(), n.outputs.end(), [](int o) { return o >= 0; }) == 1)
      ++inference_bn;
  if (inference_bn > 0 && !g.parameters.empty())
    g.warnings.push_back(fmt::format(
        "{} BatchNormalization node{} in inference mode: training normalises with the stored running statistics "
        "and never updates them, unlike PyTorch's training mode; to train as PyTorch does, export with "
        "training=TrainingMode.TRAINING, do_constant_folding=False",
        inference_bn, inference_bn == 1 ? " is" : "s are"));
  return g;
}

Graph load_graph(const fs::path& path, const LoadOptions& opts) { return load_graph(ParsedModel(path), opts); }

Graph load_graph_from_bytes(const std::string& bytes, const std::string& file, const LoadOptions& opts,
                            const fs::path& base_dir) {
  return load_graph(ParsedModel(bytes, file, base_dir), opts);
}

BatchAxis inspect_batch_axis(const fs::path& path) {
  BatchAxis out;
  onnx::ModelProto model;
  std::vector<RawSpan> spans;  // the weights stay in the file: only the inputs are read
  try {
    const Bytes bytes = map_file(path);
    if (!parse_model_proto(bytes.data(), bytes.size(), 0, model, spans)) return out;
  } catch (const Error&) {
    return out;
  }
  std::unordered_set<std::string> inits;
  for (const auto& t : model.graph().initializer()) inits.insert(t.name());
  for (const auto& in : model.graph().input()) {
    if (inits.count(in.name()) || !in.type().has_tensor_type() || !in.type().tensor_type().has_shape()) continue;
    const auto& shape = in.type().tensor_type().shape();
    if (shape.dim_size() == 0) continue;
    const auto& d = shape.dim(0);
    if (d.has_dim_value()) out.fixed[in.name()] = d.dim_value();
    else out.symbolic.push_back(in.name());
  }
  return out;
}

std::shared_ptr<const TensorData> read_tensor(const Value& v) {
  if (v.data) return v.data;
  if (!v.external) throw_failure(v.name, "no data loaded for this tensor", "load the graph with weights");
  auto d = std::make_shared<TensorData>();
  d->dtype = v.dtype;
  d->shape = v.shape;
  d->bytes = read_external_bytes(*v.external, v.bytes(), "tensor '" + v.name + "'");
  return d;
}

}  // namespace smp::graph
