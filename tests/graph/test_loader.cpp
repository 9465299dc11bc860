// The ONNX loader: sample models load into a static, ordered, costed graph; every kind of bad
// input gives one clear line naming the file, with exit status 2 from the tool.
#include "test_util.hpp"

#include "core/error.hpp"
#include "core/io.hpp"
#include "graph/export.hpp"
#include "graph/loader.hpp"
#include "graph/op_registry.hpp"
#include "runtime/npy.hpp"

#include <onnx/onnx_pb.h>

#include <sys/stat.h>

#include <cstring>
#include <fstream>
#include <set>

using namespace smp;
using namespace smp::graph;
namespace fs = std::filesystem;

namespace {

LoadOptions batch(int64_t b) {
  LoadOptions o;
  o.batch_size = b;
  return o;
}

// Checks the invariants every loaded graph must satisfy.
void check_well_formed(const Graph& g) {
  std::vector<bool> defined(g.values.size(), false);
  for (size_t i = 0; i < g.values.size(); ++i)
    if (g.values[i].producer < 0) defined[i] = true;
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const Node& n = g.nodes[k];
    for (int in : n.inputs) {
      if (in < 0) continue;
      INFO("node ", n.name, " input ", g.value(in).name);
      CHECK(defined[static_cast<size_t>(in)]);  // topological order
    }
    for (int out : n.outputs) {
      if (out < 0) continue;
      CHECK(g.value(out).producer == static_cast<int>(k));
      defined[static_cast<size_t>(out)] = true;
    }
  }
  for (const auto& v : g.values) {
    INFO("value ", v.name);
    CHECK(v.dtype != DType::Undefined);
    for (int64_t d : v.shape) CHECK(d >= 0);
    if (v.kind == ValueKind::Constant) CHECK(v.data != nullptr);
  }
}

// A minimal valid model: x[N,4] -> Relu -> y, opset 17.
// A float32 array of zeros, as smp-run --forward hands its .npy files to the loader.
std::shared_ptr<TensorData> array(Shape s) {
  auto d = std::make_shared<TensorData>();
  d->dtype = DType::F32;
  d->shape = s;
  d->bytes.assign(static_cast<size_t>(smp::numel(s)) * 4, '\0');
  return d;
}

onnx::ModelProto tiny_model() {
  onnx::ModelProto m;
  m.set_ir_version(8);
  auto* op = m.add_opset_import();
  op->set_domain("");
  op->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("tiny");
  auto add_io = [](onnx::ValueInfoProto* v, const std::string& name, std::vector<int64_t> dims) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    auto* s = t->mutable_shape();
    for (int64_t d : dims) {
      if (d < 0) s->add_dim()->set_dim_param("N");
      else s->add_dim()->set_dim_value(d);
    }
  };
  add_io(g->add_input(), "x", {-1, 4});
  add_io(g->add_output(), "y", {-1, 4});
  auto* n = g->add_node();
  n->set_name("relu");
  n->set_op_type("Relu");
  n->add_input("x");
  n->add_output("y");
  return m;
}

// tiny_model without its node, x and y of shape [n].
onnx::ModelProto vector_model(int64_t n) {
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  for (auto* v : {g->mutable_input(0), g->mutable_output(0)}) {
    auto* dims = v->mutable_type()->mutable_tensor_type()->mutable_shape();
    dims->clear_dim();
    dims->add_dim()->set_dim_value(n);
  }
  return m;
}

// A node of `op` reading `in`, writing `out`, named after its output.
onnx::NodeProto* node(onnx::GraphProto* g, const char* op, std::vector<std::string> in, const std::string& out) {
  auto* n = g->add_node();
  n->set_op_type(op);
  n->set_name(out);
  for (const auto& i : in) n->add_input(i);
  n->add_output(out);
  return n;
}

// k parameters w0 .. w{k-1} of 4 values (w_i[j] = i + sign * j) and nodes mul{i}: m{i} = x * w{i}.
void add_scaled_copies(onnx::GraphProto* g, int k, int sign) {
  const std::string x = "x";  // (add_input("x") inlined in a loop trips a GCC 12 -Wrestrict false positive)
  for (int i = 0; i < k; ++i) {
    auto* w = g->add_initializer();
    w->set_name(fmt::format("w{}", i));
    w->set_data_type(onnx::TensorProto::FLOAT);
    w->add_dims(4);
    for (int j = 0; j < 4; ++j) w->add_float_data(static_cast<float>(i + sign * j));
    auto* mul = g->add_node();
    mul->set_name(fmt::format("mul{}", i));
    mul->set_op_type("Mul");
    mul->add_input(x);
    mul->add_input(w->name());
    mul->add_output(fmt::format("m{}", i));
  }
}

fs::path write_model(const fs::path& dir, const std::string& name, const onnx::ModelProto& m) {
  fs::path p = dir / name;
  std::ofstream out(p, std::ios::binary);
  REQUIRE(m.SerializeToOstream(&out));
  return p;
}

fs::path write_bytes(const fs::path& dir, const std::string& name, const std::string& bytes) {
  fs::path p = dir / name;
  std::ofstream out(p, std::ios::binary);
  out << bytes;
  return p;
}

// The library throws bad input naming the file; the tool prints exactly one line
// "error: <file>: ..." containing `what`, and exits 2 (not by a signal).
void expect_bad(const fs::path& file, const std::string& what, const std::string& extra_args = "-b 2") {
  INFO("file ", file.string());
  try {
    load_graph(file, batch(2));
    FAIL("loading succeeded");
  } catch (const Error& e) {
    INFO("error: ", std::string(e.what()));
    CHECK(e.exit_code() == 2);
    CHECK(std::string(e.what()).rfind(file.string() + ": ", 0) == 0);
    CHECK(std::string(e.what()).find(what) != std::string::npos);
  }
  auto r = test::run_cmd(test::tool("smp-plan") + " " + file.string() + " --summary " + extra_args);
  CHECK(r.signal == 0);
  CHECK(r.exit_code == 2);
  CHECK(r.out.rfind("error: " + file.string() + ": ", 0) == 0);
  CHECK(r.out.find(what) != std::string::npos);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
}

}  // namespace

TEST_CASE("every sample loads into a static, ordered, costed graph, the same each time") {
  for (const char* name : {"mlp", "gpt", "cnn"}) {
    INFO(name);
    Graph g = load_graph(test::sample(name), batch(4));
    check_well_formed(g);
    CHECK(g.opset == 17);
    REQUIRE(g.inputs.size() == 1);
    REQUIRE(g.outputs.size() == 1);
    CHECK(g.value(g.inputs[0]).shape.at(0) == 4);
    CHECK(g.value(g.outputs[0]).shape.at(0) == 4);
    CHECK(g.parameter_count() > 0);
    CHECK(g.forward_flops() > 0);
    for (const auto& n : g.nodes) CHECK_FALSE(n.cost.estimated);
    CHECK(g.warnings.empty());
    // Parameters carry no bytes unless asked for.
    for (int p : g.parameters) CHECK(g.value(p).data == nullptr);

    Graph again = load_graph(test::sample(name), batch(4));
    REQUIRE(again.nodes.size() == g.nodes.size());
    for (size_t k = 0; k < g.nodes.size(); ++k) {
      CHECK(again.nodes[k].name == g.nodes[k].name);
      CHECK(again.nodes[k].cost.flops == g.nodes[k].cost.flops);
    }
  }
}

TEST_CASE("weights load on request, with the exact bytes of the initializers") {
  LoadOptions o = batch(2);
  o.load_weights = true;
  Graph g = load_graph(test::sample("mlp"), o);
  for (int p : g.parameters) {
    const Value& v = g.value(p);
    REQUIRE(v.data != nullptr);
    CHECK(static_cast<int64_t>(v.data->bytes.size()) == v.bytes());
  }
}

TEST_CASE("a worker reads only the weights it asks for") {
  LoadOptions o = batch(2);
  o.load_weights = true;
  Graph all = load_graph(test::sample("mlp"), o);
  REQUIRE(all.parameters.size() >= 2);
  std::string wanted = all.value(all.parameters[1]).name;
  o.want_weight = [&](const std::string& n) { return n == wanted; };
  Graph g = load_graph(test::sample("mlp"), o);
  for (int p : g.parameters) {
    INFO(g.value(p).name);
    CHECK((g.value(p).data != nullptr) == (g.value(p).name == wanted));
  }
  CHECK(g.value(g.find_value(wanted)).data->bytes == all.value(all.find_value(wanted)).data->bytes);
}

TEST_CASE("a model parsed once loads many times: its weights and large known values are shared, never copied") {
  // y = Relu(x) * w, with w a weight of 2048 floats stored as raw data (as exporters write it).
  onnx::ModelProto m = vector_model(2048);
  auto* g = m.mutable_graph();
  std::vector<float> wv(2048);
  for (size_t i = 0; i < wv.size(); ++i) wv[i] = 0.5f * static_cast<float>(i) - 7;
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(2048);
  w->set_raw_data(std::string(reinterpret_cast<const char*>(wv.data()), wv.size() * 4));
  node(g, "Relu", {"x"}, "r");
  node(g, "Mul", {"r", "w"}, "y");
  auto dir = test::temp_dir("parsed_once");
  auto path = write_model(dir, "shared.onnx", m);

  const ParsedModel parsed(path);
  LoadOptions o;
  o.load_weights = true;
  Graph a = load_graph(parsed, o);
  Graph b = load_graph(parsed, o);
  check_well_formed(a);
  const Value& wa = a.value(a.find_value("w"));
  const Value& wb = b.value(b.find_value("w"));
  CHECK(wa.kind == ValueKind::Parameter);
  REQUIRE(wa.data);
  CHECK(wa.data.get() == wb.data.get());
  CHECK(wa.data->bytes == w->raw_data());
  // Without load_weights, no bytes (the planner's load), from the same parsed model.
  Graph plan = load_graph(parsed, LoadOptions{});
  CHECK(plan.value(plan.find_value("w")).data == nullptr);
  CHECK(plan.parameter_count() == 2048);

  // An earlier stage's large float result is bound without a copy: the Relu goes, the Mul reads it.
  auto r = std::make_shared<TensorData>(*array({2048}));
  std::memcpy(r->bytes.data(), wv.data(), r->bytes.size());
  o.known["r"] = r;
  Graph c = load_graph(parsed, o);
  check_well_formed(c);
  REQUIRE(c.nodes.size() == 1);
  CHECK(c.nodes[0].op_type == "Mul");
  const Value& rc = c.value(c.find_value("r"));
  CHECK(rc.kind == ValueKind::Constant);
  CHECK(rc.data.get() == r.get());
  CHECK(c.value(c.find_value("w")).data.get() == wa.data.get());

  // Before IR 4 every initializer is also a graph input: the checker sees a held one once.
  onnx::ModelProto old = m;
  old.set_ir_version(3);
  old.mutable_opset_import(0)->set_version(8);
  auto* win = old.mutable_graph()->add_input();
  *win = old.graph().input(0);
  win->set_name("w");
  Graph g3 = load_graph(ParsedModel(write_model(dir, "ir3.onnx", old)), o);
  check_well_formed(g3);
  CHECK(g3.value(g3.find_value("w")).kind == ValueKind::Parameter);
  CHECK(g3.value(g3.find_value("w")).data->bytes == w->raw_data());

  // A weight whose raw data is short of its shape is reported, as before.
  w->mutable_raw_data()->resize(2047 * 4);
  expect_bad(write_model(dir, "short.onnx", m), "tensor 'w': holds 8188 bytes of data, its shape [2048] needs 8192", "");
  fs::remove_all(dir);
}

namespace {
void put_varint(std::string& out, uint64_t v) {
  for (; v >= 0x80; v >>= 7) out += static_cast<char>((v & 0x7f) | 0x80);
  out += static_cast<char>(v);
}
// A length-delimited protobuf field: its key, its length, its bytes.
std::string wire_field(int field, const std::string& bytes) {
  std::string out;
  put_varint(out, static_cast<uint64_t>(field) << 3 | 2);
  put_varint(out, bytes.size());
  return out + bytes;
}
std::string floats_bytes(size_t n, float scale) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = scale * static_cast<float>(i) - 3;
  return std::string(reinterpret_cast<const char*>(v.data()), n * 4);
}
}  // namespace

TEST_CASE("a model file's weights are read where they lie in the file, never copied at parse, byte for byte its parse") {
  // y = Relu(x) * w + Gather(w2, idx): w and w2 floats (held), idx int64 of 16 KiB (cut out of
  // the parse with them, then put back: not a weight), and w2's raw_data written twice (protobuf
  // keeps the last).
  onnx::ModelProto m = vector_model(2048);
  auto* g = m.mutable_graph();
  const std::string wb = floats_bytes(2048, 0.5f), w2_first = floats_bytes(2048, 2.0f), w2b = floats_bytes(2048, -0.25f);
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(2048);
  w->set_raw_data(wb);
  std::vector<int64_t> idx(2048);
  for (size_t i = 0; i < idx.size(); ++i) idx[i] = static_cast<int64_t>(idx.size() - 1 - i);
  auto* it = g->add_initializer();
  it->set_name("idx");
  it->set_data_type(onnx::TensorProto::INT64);
  it->add_dims(2048);
  it->set_raw_data(std::string(reinterpret_cast<const char*>(idx.data()), idx.size() * 8));
  node(g, "Relu", {"x"}, "r");
  node(g, "Mul", {"r", "w"}, "p");
  node(g, "Gather", {"w2", "idx"}, "q");
  node(g, "Add", {"p", "q"}, "y");
  // w2 goes in by hand, last among the initializers: its fields, then raw_data again.
  onnx::TensorProto w2;
  w2.set_name("w2");
  w2.set_data_type(onnx::TensorProto::FLOAT);
  w2.add_dims(2048);
  w2.set_raw_data(w2_first);
  const std::string w2_wire = w2.SerializeAsString() + wire_field(9, w2b);
  onnx::ModelProto no_graph = m;
  no_graph.clear_graph();
  const std::string bytes = no_graph.SerializeAsString() + wire_field(7, g->SerializeAsString() + wire_field(5, w2_wire));

  auto dir = test::temp_dir("borrowed");
  const fs::path path = write_bytes(dir, "borrowed.onnx", bytes);
  LoadOptions o;
  o.load_weights = true;
  const ParsedModel parsed(path);
  Graph a = load_graph(parsed, o);
  Graph b = load_graph_from_bytes(bytes, "borrowed.onnx", o);
  check_well_formed(a);
  REQUIRE(a.values.size() == b.values.size());
  for (size_t i = 0; i < a.values.size(); ++i) {
    const Value& va = a.values[i];
    INFO(va.name);
    const int j = b.find_value(va.name);
    REQUIRE(j >= 0);
    const Value& vb = b.value(j);
    CHECK(va.kind == vb.kind);
    REQUIRE((va.data == nullptr) == (vb.data == nullptr));
    if (va.data) CHECK(va.data->bytes == vb.data->bytes);
  }
  const Value& aw = a.value(a.find_value("w"));
  const Value& aw2 = a.value(a.find_value("w2"));
  CHECK(aw.kind == ValueKind::Parameter);
  CHECK(aw2.kind == ValueKind::Parameter);
  // Read from the file's mapping (the file's own bytes), where the bytes path owns copies.
  CHECK(aw.data->bytes.borrowed());
  CHECK(aw2.data->bytes.borrowed());
  CHECK(aw.data->bytes == wb);
  CHECK(aw2.data->bytes == w2b);
  CHECK(!b.value(b.find_value("w")).data->bytes.borrowed());
  CHECK(!a.value(a.find_value("idx")).data->bytes.borrowed());
  CHECK(a.value(a.find_value("idx")).data->get_i64(0) == 2047);
  // Copy on write: a copy of the data borrows too, and writing makes it its own.
  TensorData c = *aw.data;
  CHECK(c.bytes.borrowed());
  c.as_mut<float>()[0] = 42.0f;
  CHECK(!c.bytes.borrowed());
  CHECK(aw.data->get_f64(0) == -3.0);
  CHECK(c.get_f64(0) == 42.0);

  // The graph outlives its parsed model: the weights keep the mapping.
  Graph kept = load_graph(ParsedModel(path), o);
  CHECK(kept.value(kept.find_value("w2")).data->bytes == w2b);

  // A model to convert (opset 6) gets its raw data back before the converter sees it.
  onnx::ModelProto six = no_graph;
  six.mutable_opset_import(0)->set_version(6);
  const fs::path old = write_bytes(dir, "opset6.onnx", six.SerializeAsString() + bytes.substr(no_graph.ByteSizeLong()));
  Graph c6 = load_graph(ParsedModel(old), o);
  CHECK(c6.opset == 7);
  CHECK(c6.value(c6.find_value("w")).data->bytes == wb);
  CHECK(c6.value(c6.find_value("w2")).data->bytes == w2b);
  CHECK(c6.value(c6.find_value("idx")).data->get_i64(2047) == 0);

  // External data is read where it lies too: a mapping of its range of the file (here at an
  // offset that is neither page- nor float-aligned).
  onnx::ModelProto ext = m;
  onnx::TensorProto* ew = ext.mutable_graph()->mutable_initializer(0);
  REQUIRE(ew->name() == "w");
  ew->clear_raw_data();
  ew->set_data_location(onnx::TensorProto::EXTERNAL);
  auto kv = [&](const char* k, const std::string& v) {
    auto* e = ew->add_external_data();
    e->set_key(k);
    e->set_value(v);
  };
  kv("location", "weights.bin");
  kv("offset", "4099");
  kv("length", "8192");
  write_bytes(dir, "weights.bin", std::string(4099, 'x') + wb + "tail");
  // (w2 is not in `m`: these graphs read w and idx only, y = Relu(x) * w + Gather(w2, idx) with w2 a graph input.)
  auto* w2in = ext.mutable_graph()->add_input();
  *w2in = ext.graph().input(0);
  w2in->set_name("w2");
  const fs::path ext_path = write_model(dir, "ext.onnx", ext);
  Graph e = load_graph(ParsedModel(ext_path), o);
  const Value& ewv = e.value(e.find_value("w"));
  REQUIRE(ewv.data);
  CHECK(ewv.data->bytes.borrowed());
  CHECK(ewv.data->bytes == wb);
  CHECK(ewv.data->get_f64(3) == 0.5 * 3 - 3);
  // `ext` as it is now, written as NAME and loaded.
  auto load_ext = [&](const char* name) { return load_graph(ParsedModel(write_model(dir, name, ext)), o); };
  // Its bounds are checked before it is mapped.
  ew->mutable_external_data(1)->set_value("4104");
  CHECK_THROWS_WITH(load_ext("ext_past.onnx"),
                    doctest::Contains("weights.bin: tensor 'w': external data runs past the end of the file"));
  ew->mutable_external_data(1)->set_value("4099");
  ew->mutable_external_data(2)->set_value("4096");
  CHECK_THROWS_WITH(load_ext("ext_len.onnx"),
                    doctest::Contains("weights.bin: tensor 'w': external data holds 4096 bytes, expected 8192"));
  // Its external_data entries must be numbers, read whole (std::stoll took "4k" for 4), by the
  // loader and the export alike.
  ew->mutable_external_data(1)->set_value("4k");
  const fs::path nan_path = write_model(dir, "ext_nan.onnx", ext);
  const char* nan_msg = "ext_nan.onnx: initializer 'w': external_data offset '4k' is not a number";
  CHECK_THROWS_WITH(load_graph(ParsedModel(nan_path), o), doctest::Contains(nan_msg));
  CHECK_THROWS_WITH(export_with_weights(nan_path, dir / "nan_out.onnx", {}), doctest::Contains(nan_msg));
  CHECK(!fs::exists(dir / "nan_out.onnx"));
  ew->mutable_external_data(1)->set_value("99999999999999999999");
  CHECK_THROWS_WITH(load_ext("ext_huge.onnx"),
                    doctest::Contains("ext_huge.onnx: initializer 'w': external_data offset 99999999999999999999 is too large"));
  ew->mutable_external_data(1)->set_value("99999");  // past the end: said so, not as a negative length
  CHECK_THROWS_WITH(load_ext("ext_off.onnx"),
                    doctest::Contains("weights.bin: tensor 'w': external data offset 99999 is past the end of the file (12295 bytes)"));
  ew->mutable_external_data(0)->set_value(".");  // a directory opens, but holds no weights
  ew->mutable_external_data(1)->set_value("4099");
  CHECK_THROWS_WITH(load_ext("ext_dir.onnx"),
                    doctest::Contains("the external weight file for tensor 'w' is not a regular file"));
  REQUIRE(::mkfifo((dir / "fifo.bin").c_str(), 0600) == 0);  // a FIFO no one writes: refused, not waited on
  ew->mutable_external_data(0)->set_value("fifo.bin");
  CHECK_THROWS_WITH(load_ext("ext_fifo.onnx"),
                    doctest::Contains("the external weight file for tensor 'w' is not a regular file"));
  ew->mutable_external_data(0)->set_value("weights.bin");
  ew->mutable_external_data(2)->set_value("-8");
  CHECK_THROWS_WITH(load_ext("ext_neg.onnx"),
                    doctest::Contains("ext_neg.onnx: initializer 'w': external_data length is negative"));
  // --export inlines the external weights it was not given, read through the same checks.
  ew->mutable_external_data(2)->set_value("8192");
  export_with_weights(write_model(dir, "ext_ok.onnx", ext), dir / "inlined.onnx", {});
  Graph inl = load_graph(ParsedModel(dir / "inlined.onnx"), o);
  const Value& iw = inl.value(inl.find_value("w"));
  CHECK(!iw.external);
  REQUIRE(iw.data);
  CHECK(iw.data->bytes == wb);
  int compared = 0;  // every other tensor as it was (the export sets their raw data back from the mapping)
  for (const Value& v : e.values)
    if (v.data) {
      CAPTURE(v.name);
      const Value& w = inl.value(inl.find_value(v.name));
      REQUIRE(w.data);
      CHECK(w.data->bytes == v.data->bytes);
      ++compared;
    }
  CHECK(compared >= 2);
  // A weight file cut short since the model was loaded: a clear error and no export, never a
  // model whose weights end in zeros.
  ew->mutable_external_data(0)->set_value("short.bin");
  write_bytes(dir, "short.bin", std::string(4099, 'x') + wb.substr(0, 100));
  CHECK_THROWS_WITH(export_with_weights(write_model(dir, "ext_short.onnx", ext), dir / "short_out.onnx", {}),
                    doctest::Contains("short.bin: tensor 'w': external data runs past the end of the file"));
  CHECK(!fs::exists(dir / "short_out.onnx"));

  // Cut short inside a weight: protobuf's own message, as before.
  expect_bad(write_bytes(dir, "short.onnx", bytes.substr(0, bytes.size() - 100)), "not an ONNX model (protobuf parsing failed)");
  fs::remove_all(dir);
}

TEST_CASE("--freeze: named or matched initializers stay constant with their bytes; a pattern matching none is bad input") {
  Graph all = load_graph(test::sample("mlp"), batch(2));
  LoadOptions o = batch(2);
  o.frozen = {"layers.0.weight", "layers.[12].bias"};
  Graph g = load_graph(test::sample("mlp"), o);
  CHECK(g.frozen == o.frozen);
  CHECK(g.parameters.size() == all.parameters.size() - 3);
  CHECK(g.parameter_count() == all.parameter_count() - 512 * 256 - 2 * 512);
  for (const char* name : {"layers.0.weight", "layers.1.bias", "layers.2.bias"}) {
    CAPTURE(name);
    const Value& v = g.value(g.find_value(name));
    CHECK(v.kind == ValueKind::Constant);
    REQUIRE(v.data != nullptr);  // the runtime reads it without --load-weights' filter
    CHECK(static_cast<int64_t>(v.data->bytes.size()) == v.bytes());
  }
  CHECK(g.value(g.find_value("layers.3.bias")).kind == ValueKind::Parameter);
  o.frozen = {"layers.0.weight", "no_such_*"};
  try {
    load_graph(test::sample("mlp"), o);
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).rfind("--freeze: 'no_such_*' matches no floating-point initializer", 0) == 0);
  }
}

TEST_CASE("a Concat of more than 32 inputs trains every one (DenseNet-169's blocks concatenate 33)") {
  // y = Concat(x * w0, ..., x * w39): 40 parameters of 4 values, each reaching the output through
  // its own Concat input.
  auto dir = test::temp_dir("concat40");
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  const int k = 40;
  add_scaled_copies(g, k, 1);
  auto* cat = g->add_node();
  cat->set_name("cat");
  cat->set_op_type("Concat");
  auto* axis = cat->add_attribute();
  axis->set_name("axis");
  axis->set_type(onnx::AttributeProto::INT);
  axis->set_i(1);
  for (int i = 0; i < k; ++i) cat->add_input(fmt::format("m{}", i));
  cat->add_output("y");
  g->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(1)->set_dim_value(4 * k);
  auto path = write_model(dir, "concat40.onnx", m);
  Graph gr = load_graph(path, batch(2));
  CHECK(gr.parameters.size() == static_cast<size_t>(k));
  CHECK(gr.parameter_count() == 4 * k);
  fs::remove_all(dir);
}

TEST_CASE("Max and Min of three or more inputs load as chains of two-input nodes, every input trained") {
  // y = Max(x * w0, x * w1, x * w2, x * w3), z = Min(x * w0, x * w1, x * w2): the chains
  // Max(Max(Max(m0, m1), m2), m3) and Min(Min(m0, m1), m2), each keeping its node's name and output.
  auto dir = test::temp_dir("variadic_max");
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  *g->add_output() = g->output(0);
  g->mutable_output(1)->set_name("z");
  add_scaled_copies(g, 4, -1);
  for (const char* op : {"Max", "Min"}) {
    auto* n = g->add_node();
    n->set_name(op == std::string("Max") ? "top" : "bottom");
    n->set_op_type(op);
    for (int i = 0; i < (op == std::string("Max") ? 4 : 3); ++i) n->add_input(fmt::format("m{}", i));
    n->add_output(op == std::string("Max") ? "y" : "z");
  }
  auto path = write_model(dir, "max4.onnx", m);
  Graph gr = load_graph(path, batch(2));
  check_well_formed(gr);
  CHECK(gr.onnx_nodes == 6);
  std::vector<std::string> maxes, mins;
  for (const auto& n : gr.nodes) {
    if (n.op_type == "Max" || n.op_type == "Min") {
      CHECK(n.inputs.size() == 2);
      (n.op_type == "Max" ? maxes : mins).push_back(n.name);
    }
  }
  CHECK(maxes == std::vector<std::string>{"top/1", "top/2", "top"});
  CHECK(mins == std::vector<std::string>{"bottom/1", "bottom"});
  CHECK(gr.nodes[static_cast<size_t>(gr.value(gr.find_value("y")).producer)].name == "top");
  CHECK(gr.value(gr.find_value("y")).shape == Shape{2, 4});
  // the first link reads the first two inputs, the next the chain and the third
  const Node& first = gr.nodes[static_cast<size_t>(gr.value(gr.find_value("m0")).consumers.back())];
  CHECK(first.name == "bottom/1");
  CHECK(gr.parameters.size() == 4);  // a gradient reaches every input of each chain
  fs::remove_all(dir);
}

TEST_CASE("an If whose condition folds is replaced by the branch it takes (PyTorch's shape tests)") {
  // c = Equal(Size(Shape(x)), 2), known once the shapes are: true for x [N, 4]. then: y = Relu(x * w
  // + k) with k a branch initializer; else: y = Relu(-x). The branch reads x and w from outside.
  for (bool then : {true, false}) {
    CAPTURE(then);
    auto dir = test::temp_dir("if_inline");
    onnx::ModelProto m = tiny_model();
    auto* g = m.mutable_graph();
    g->clear_node();
    auto floats = [](onnx::TensorProto* t, const std::string& name, float base) {
      t->set_name(name);
      t->set_data_type(onnx::TensorProto::FLOAT);
      t->add_dims(4);
      for (int j = 0; j < 4; ++j) t->add_float_data(base + static_cast<float>(j));
    };
    floats(g->add_initializer(), "w", 1);
    auto* two = g->add_initializer();
    two->set_name("two");
    two->set_data_type(onnx::TensorProto::INT64);
    two->add_int64_data(then ? 2 : 3);
    auto node = [](onnx::GraphProto* gr, const char* op, std::vector<std::string> in, const std::string& out) {
      auto* n = gr->add_node();
      n->set_op_type(op);
      for (const auto& i : in) n->add_input(i);
      n->add_output(out);
      return n;
    };
    node(g, "Shape", {"x"}, "s");
    node(g, "Size", {"s"}, "rank");
    node(g, "Equal", {"rank", "two"}, "c");
    auto* iff = node(g, "If", {"c"}, "h");
    iff->set_name("check");
    auto branch = [&](const char* name, bool mul) {
      auto* a = iff->add_attribute();
      a->set_name(name);
      a->set_type(onnx::AttributeProto::GRAPH);
      auto* b = a->mutable_g();
      b->set_name(name);
      if (mul) {
        floats(b->add_initializer(), "k", 10);
        node(b, "Mul", {"x", "w"}, "t");
        node(b, "Add", {"t", "k"}, "u");
      } else {
        node(b, "Neg", {"x"}, "u");  // the same local name in both branches
      }
      auto* o = b->add_output();
      o->set_name("u");
      o->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
    };
    branch("then_branch", true);
    branch("else_branch", false);
    node(g, "Relu", {"h"}, "y");
    auto path = write_model(dir, "if.onnx", m);
    LoadOptions o = batch(2);
    o.load_weights = true;
    Graph gr = load_graph(path, o);
    check_well_formed(gr);
    std::multiset<std::string> ops;
    for (const auto& n : gr.nodes) ops.insert(n.op_type);
    CHECK(ops.count("If") == 0);
    CHECK(ops.count("Mul") == (then ? 1u : 0u));
    CHECK(ops.count("Add") == (then ? 1u : 0u));
    CHECK(ops.count("Neg") == (then ? 0u : 1u));
    CHECK(ops.count("Relu") == 1);
    CHECK(gr.value(gr.find_value("y")).shape == Shape{2, 4});
    // the branch's values live under the If's name; its initializer is a constant with its values
    const std::string local = then ? "check/then_branch/u" : "check/else_branch/u";
    CHECK(gr.find_value(local) >= 0);
    if (then) {
      const Value& k = gr.value(gr.find_value("check/then_branch/k"));
      CHECK(k.kind == ValueKind::Constant);
      REQUIRE(k.data);
      CHECK(reinterpret_cast<const float*>(k.data->bytes.data())[3] == 13.0f);
    }
    CHECK(gr.parameters.size() == (then ? 1u : 0u));  // w is trained only where the branch reads it
    fs::remove_all(dir);
  }
}

// x [4]: h = If(ReduceSum(x) > 0, then x * 2, else -x); kept = Compress(x, x > 0); nz = NonZero(x):
// what a detection model decides by its data, in small.
onnx::ModelProto data_decided_model() {
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  g->clear_output();
  g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->clear_dim();
  g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(4);
  auto scalar = [&](const std::string& name, float v) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_float_data(v);
  };
  scalar("zero", 0);
  scalar("two", 2);
  node(g, "ReduceSum", {"x"}, "s")->add_attribute()->set_name("keepdims");
  g->mutable_node(0)->mutable_attribute(0)->set_type(onnx::AttributeProto::INT);
  g->mutable_node(0)->mutable_attribute(0)->set_i(0);
  node(g, "Greater", {"s", "zero"}, "c");
  auto* iff = node(g, "If", {"c"}, "h");
  for (bool then : {true, false}) {
    auto* a = iff->add_attribute();
    a->set_name(then ? "then_branch" : "else_branch");
    a->set_type(onnx::AttributeProto::GRAPH);
    auto* b = a->mutable_g();
    b->set_name(a->name());
    if (then) node(b, "Mul", {"x", "two"}, "u");
    else node(b, "Neg", {"x"}, "u");
    auto* o = b->add_output();
    o->set_name("u");
    o->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  }
  node(g, "Greater", {"x", "zero"}, "pos");
  node(g, "Compress", {"x", "pos"}, "kept");
  node(g, "NonZero", {"x"}, "nz");
  for (const char* o : {"h", "kept", "nz"}) {
    auto* v = g->add_output();
    v->set_name(o);
    auto* t = v->mutable_type()->mutable_tensor_type();
    const std::string name = o;
    t->set_elem_type(name == "nz" ? onnx::TensorProto::INT64 : onnx::TensorProto::FLOAT);
    if (name == "nz") t->mutable_shape()->add_dim()->set_dim_value(1);
    if (name == "h") t->mutable_shape()->add_dim()->set_dim_value(4);
    else t->mutable_shape()->add_dim()->set_dim_param(name + "_count");  // as exporters name them
  }
  return m;
}

TEST_CASE("staged loading: what data decides is cut off, its inputs become outputs; once known, it folds") {
  auto dir = test::temp_dir("staged");
  auto path = write_model(dir, "decided.onnx", data_decided_model());
  for (float sign : {1.0f, -1.0f}) {
    CAPTURE(sign);
    auto x = std::make_shared<TensorData>(*array({4}));
    const float xv[4] = {3 * sign, -1 * sign, 0, 2 * sign};
    std::memcpy(x->bytes.data(), xv, sizeof(xv));
    LoadOptions o;
    o.input_array = [&](const std::string& name) { return name == "x" ? x : nullptr; };
    // Without stages the If decided by data is refused.
    CHECK_THROWS_WITH_AS(load_graph(path, o), doctest::Contains("its condition is known only at run time"), Error);

    o.staged = true;
    Graph first = load_graph(path, o);
    check_well_formed(first);
    CHECK(first.partial);
    std::set<std::string> outs, ops;
    for (int v : first.outputs) outs.insert(first.value(v).name);
    for (const auto& n : first.nodes) ops.insert(n.op_type);
    // The If reads c (and x and the initializer two in its branches), Compress x and pos, NonZero
    // x; h, kept and nz wait.
    CHECK(outs == std::set<std::string>{"c", "x", "pos", "two"});
    CHECK(ops == std::set<std::string>{"ReduceSum", "Greater"});

    // The next stage knows them (what smp-run computed): everything folds.
    auto boolean = [](std::vector<uint8_t> v, Shape s) {
      auto d = std::make_shared<TensorData>();
      d->dtype = DType::Bool;
      d->shape = std::move(s);
      d->bytes = std::string(v.begin(), v.end());
      return d;
    };
    o.known["c"] = boolean({static_cast<uint8_t>(sign > 0)}, {});
    o.known["x"] = x;
    o.known["pos"] = boolean({sign > 0, sign < 0, 0, sign > 0}, {4});
    Graph second = load_graph(path, o);
    check_well_formed(second);
    CHECK_FALSE(second.partial);
    // The branch taken is inlined: x * two stays compute (two, a float initializer, may be a weight);
    // -x of the known x folds, as do the Compress (a Gather of constants) and the NonZero.
    if (sign > 0) {
      REQUIRE(second.nodes.size() == 2);  // the branch's Mul, and an Identity to the If's output
      CHECK(second.nodes[0].op_type == "Mul");
      CHECK(second.value(second.nodes[0].inputs[0]).kind == ValueKind::Constant);
      CHECK(second.nodes[1].op_type == "Identity");
      CHECK(second.value(second.nodes[1].outputs[0]).name == "h");
    } else {
      CHECK(second.nodes.empty());
    }
    auto floats_of = [&](const std::string& name) {
      const Value& v = second.value(second.find_value(name));
      REQUIRE(v.data);
      std::vector<float> r(static_cast<size_t>(v.data->numel()));
      std::memcpy(r.data(), v.data->bytes.data(), r.size() * 4);
      return r;
    };
    if (sign < 0) CHECK(floats_of("h") == std::vector<float>{3, -1, 0, 2});
    CHECK(floats_of("kept") == (sign > 0 ? std::vector<float>{3, 2} : std::vector<float>{1}));
    const Value& nz = second.value(second.find_value("nz"));
    REQUIRE(nz.data);
    CHECK(nz.data->shape == Shape{1, 3});
    CHECK(std::vector<int64_t>{nz.data->get_i64(0), nz.data->get_i64(1), nz.data->get_i64(2)} == std::vector<int64_t>{0, 1, 3});

    // smp-run --forward does both stages: the If's branch, the Compress and the NonZero as above.
    fs::remove_all(dir / "in");
    fs::remove_all(dir / "out");
    fs::create_directories(dir / "in");
    runtime::write_npy(dir / "in" / "x.npy", DType::F32, {4}, xv);
    auto r = test::run_cmd(fmt::format("{} {} --forward --data {} --output {}", test::tool("smp-run"), path.string(),
                                       (dir / "in").string(), (dir / "out").string()));
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    CHECK(r.out.find("ran in 2 stages") != std::string::npos);
    auto got = [&](const std::string& name) {
      auto a = runtime::read_npy(dir / "out" / (name + ".npy"));
      std::vector<double> v;
      for (int64_t i = 0; i < smp::numel(a.shape); ++i)
        v.push_back(a.dtype == DType::F32 ? reinterpret_cast<const float*>(a.bytes.data())[i]
                                          : static_cast<double>(reinterpret_cast<const int64_t*>(a.bytes.data())[i]));
      return v;
    };
    CHECK(got("h") == (sign > 0 ? std::vector<double>{6, -2, 0, 4} : std::vector<double>{3, -1, 0, 2}));
    CHECK(got("kept") == (sign > 0 ? std::vector<double>{3, 2} : std::vector<double>{1}));
    CHECK(got("nz") == std::vector<double>{0, 1, 3});
  }
  fs::remove_all(dir);
}

TEST_CASE("staged loading: what only fed a value that folded is not run again in the next stage") {
  // r = Relu(x) feeds a NonZero (decided by data) through a mask, and its Shape (static: it
  // folds) is added to the NonZero's result. The next stage knows the mask: the Shape folds
  // there too, and nothing reads r any more, so the Relu must go (a detector's backbone, read
  // by a Shape, ran twice before).
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  g->clear_output();
  auto* dims = g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  dims->clear_dim();
  dims->add_dim()->set_dim_value(4);
  auto* zero = g->add_initializer();
  zero->set_name("zero");
  zero->set_data_type(onnx::TensorProto::FLOAT);
  zero->add_float_data(0);
  node(g, "Relu", {"x"}, "r");
  node(g, "Shape", {"r"}, "sh");
  node(g, "Greater", {"r", "zero"}, "pos");
  node(g, "NonZero", {"pos"}, "nz");
  node(g, "Add", {"nz", "sh"}, "y");
  auto* y = g->add_output();
  y->set_name("y");
  y->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::INT64);
  y->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(1);
  y->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_param("count");
  auto dir = test::temp_dir("staged_dead");
  auto path = write_model(dir, "dead.onnx", m);
  auto x = std::make_shared<TensorData>(*array({4}));
  const float xv[4] = {1, -1, 0, 2};
  std::memcpy(x->bytes.data(), xv, sizeof(xv));
  LoadOptions o;
  o.input_array = [&](const std::string& name) { return name == "x" ? x : nullptr; };
  o.staged = true;
  Graph first = load_graph(path, o);
  check_well_formed(first);
  REQUIRE(first.partial);
  REQUIRE(first.outputs.size() == 1);
  CHECK(first.value(first.outputs[0]).name == "pos");
  std::set<std::string> ops;
  for (const auto& n : first.nodes) ops.insert(n.op_type);
  CHECK(ops == std::set<std::string>{"Relu", "Greater"});

  auto mask = std::make_shared<TensorData>();
  mask->dtype = DType::Bool;
  mask->shape = {4};
  mask->bytes = {1, 0, 0, 1};
  o.known["pos"] = mask;
  Graph second = load_graph(path, o);
  check_well_formed(second);
  CHECK_FALSE(second.partial);
  CHECK(second.nodes.empty());  // the Relu went with the Shape that folded
  const Value& out = second.value(second.find_value("y"));
  REQUIRE(out.data);
  CHECK(out.data->shape == Shape{1, 2});
  CHECK(std::vector<int64_t>{out.data->get_i64(0), out.data->get_i64(1)} == std::vector<int64_t>{4, 7});
  fs::remove_all(dir);
}

TEST_CASE("a Gather from an empty int64 constant loads (a detector's stage once it found no box)") {
  // ONNX 1.12's data propagation reads the empty constant as a rank-0 shape and fails the Gather.
  // (Two indices into nothing would fail at run time: what is tested is the load's inference.)
  auto dir = test::temp_dir("empty_gather");
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  g->clear_input();
  g->clear_output();
  auto* d = g->add_initializer();
  d->set_name("none");
  d->set_data_type(onnx::TensorProto::INT64);
  d->add_dims(0);
  d->set_raw_data("");  // as smp writes a known value, and numpy_helper an array
  for (const char* name : {"i", "o"}) {
    auto* v = std::string(name) == "i" ? g->add_input() : g->add_output();
    v->set_name(name);
    v->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::INT64);
    v->mutable_type()->mutable_tensor_type()->mutable_shape()->add_dim()->set_dim_value(2);
  }
  // The axis written out, as PyTorch writes it: the propagation fails only then.
  auto* axis = node(g, "Gather", {"none", "i"}, "o")->add_attribute();
  axis->set_name("axis");
  axis->set_type(onnx::AttributeProto::INT);
  axis->set_i(0);
  Graph gr = load_graph(write_model(dir, "empty.onnx", m), LoadOptions{});
  check_well_formed(gr);
  CHECK(gr.value(gr.find_value("o")).shape == Shape{2});
  fs::remove_all(dir);
}

// x [N, 6] split into pieces of 2 columns by a Loop (trip count Shape(x)[1] / 2, known once the
// shapes are), each piece scaled by the weight w and inserted into a sequence, which
// ConcatFromSequence joins again: torch.tensor_split's export (mvit's pooling) in small. The
// body reads x, w and the folded column count from outside. With `runtime_trips`, the trip
// count is a graph input instead.
onnx::ModelProto loop_model(bool runtime_trips) {
  onnx::ModelProto m = tiny_model();
  m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(1)->set_dim_value(6);
  m.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(1)->set_dim_value(6);
  auto* g = m.mutable_graph();
  g->clear_node();
  auto ints = [](onnx::TensorProto* t, const std::string& name, std::vector<int64_t> v, bool scalar) {
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    if (!scalar) t->add_dims(static_cast<int64_t>(v.size()));
    for (int64_t x : v) t->add_int64_data(x);
  };
  ints(g->add_initializer(), "one", {1}, true);
  ints(g->add_initializer(), "two", {2}, true);
  ints(g->add_initializer(), "axes0", {0}, false);
  ints(g->add_initializer(), "axes1", {1}, false);
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(2);
  w->add_float_data(3);
  w->add_float_data(5);
  node(g, "Shape", {"x"}, "s");
  node(g, "Gather", {"s", "one"}, "cols");
  if (runtime_trips) {
    auto* in = g->add_input();
    in->set_name("trips");
    in->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::INT64);
    in->mutable_type()->mutable_tensor_type()->mutable_shape();
  } else {
    node(g, "Div", {"cols", "two"}, "trips");
  }
  auto* empty = node(g, "SequenceEmpty", {}, "seq0");
  auto* dt = empty->add_attribute();
  dt->set_name("dtype");
  dt->set_type(onnx::AttributeProto::INT);
  dt->set_i(onnx::TensorProto::FLOAT);
  auto* loop = node(g, "Loop", {"trips", "", "seq0"}, "seq");
  loop->set_name("split");
  auto* a = loop->add_attribute();
  a->set_name("body");
  a->set_type(onnx::AttributeProto::GRAPH);
  auto* b = a->mutable_g();
  b->set_name("body");
  auto body_input = [&](const char* name, int type, bool scalar) {
    auto* v = b->add_input();
    v->set_name(name);
    if (type == 0) {
      v->mutable_type()->mutable_sequence_type()->mutable_elem_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
      return;
    }
    v->mutable_type()->mutable_tensor_type()->set_elem_type(type);
    if (scalar) v->mutable_type()->mutable_tensor_type()->mutable_shape();
  };
  body_input("i", onnx::TensorProto::INT64, true);
  body_input("cond_in", onnx::TensorProto::BOOL, true);
  body_input("seq_in", 0, false);
  node(b, "Mul", {"i", "two"}, "start");
  node(b, "Add", {"start", "two"}, "stop");
  node(b, "Min", {"stop", "cols"}, "end");
  node(b, "Unsqueeze", {"start", "axes0"}, "st");
  node(b, "Unsqueeze", {"end", "axes0"}, "en");
  node(b, "Slice", {"x", "st", "en", "axes1"}, "piece");
  node(b, "Mul", {"piece", "w"}, "scaled");
  node(b, "SequenceInsert", {"seq_in", "scaled"}, "seq_out");
  node(b, "Identity", {"cond_in"}, "cond_out");
  for (const char* o : {"cond_out", "seq_out"}) b->add_output()->set_name(o);
  b->mutable_output(0)->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::BOOL);
  b->mutable_output(1)->mutable_type()->mutable_sequence_type()->mutable_elem_type()->mutable_tensor_type()->set_elem_type(
      onnx::TensorProto::FLOAT);
  auto* cat = node(g, "ConcatFromSequence", {"seq"}, "y");
  auto* axis = cat->add_attribute();
  axis->set_name("axis");
  axis->set_type(onnx::AttributeProto::INT);
  axis->set_i(1);
  return m;
}

TEST_CASE("a Loop whose trip count folds is unrolled, and its sequence resolved into tensors") {
  auto dir = test::temp_dir("loop_unroll");
  auto path = write_model(dir, "loop.onnx", loop_model(false));
  Graph g = load_graph(path, batch(2));
  check_well_formed(g);
  std::multiset<std::string> ops;
  for (const auto& n : g.nodes) ops.insert(n.op_type);
  for (const char* gone : {"Loop", "SequenceEmpty", "SequenceInsert", "ConcatFromSequence"}) CHECK(ops.count(gone) == 0);
  CHECK(ops.count("Slice") == 3);  // 6 columns, pieces of 2
  CHECK(ops.count("Concat") == 1);
  CHECK(g.value(g.find_value("y")).shape == Shape{2, 6});
  // each iteration's piece is scaled by w, which trains (read 3 times)
  REQUIRE(g.parameters.size() == 1);
  CHECK(g.value(g.parameters[0]).name == "w");
  CHECK(g.value(g.parameters[0]).consumers.size() == 3);
  const Node& cat = g.nodes[static_cast<size_t>(g.value(g.find_value("y")).producer)];
  REQUIRE(cat.inputs.size() == 3);
  for (size_t k = 0; k < 3; ++k) CHECK(g.value(cat.inputs[k]).name == fmt::format("seq/iter{}/scaled", k));
  // a trip count known only at run time: refused, naming the Loop
  expect_bad(write_model(dir, "runtime_loop.onnx", loop_model(true)), "node 'split' (Loop): its trip count or condition is known only at run time");
  fs::remove_all(dir);
}

TEST_CASE("a Scan over a static axis is unrolled: its directions pick the elements and order the outputs") {
  // s0 [2, 2], x [2, 3, 2] scanned along axis 1 backwards; body: s' = s + x_t, o = s' + s'; the
  // outputs stacked along axis 1, the last iteration's first (scan_output_directions 1).
  auto dir = test::temp_dir("scan_unroll");
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  g->clear_input();
  g->clear_output();
  auto io = [](onnx::ValueInfoProto* v, const char* name, std::vector<int64_t> dims) {
    v->set_name(name);
    auto* t = v->mutable_type()->mutable_tensor_type();
    t->set_elem_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->mutable_shape()->add_dim()->set_dim_value(d);
  };
  io(g->add_input(), "s0", {2, 2});
  io(g->add_input(), "x", {2, 3, 2});
  io(g->add_output(), "sf", {2, 2});
  io(g->add_output(), "ys", {2, 3, 2});
  auto* scan = g->add_node();
  scan->set_name("scan");
  scan->set_op_type("Scan");
  for (const char* i : {"s0", "x"}) scan->add_input(i);
  for (const char* o : {"sf", "ys"}) scan->add_output(o);
  auto ints = [&](const char* name, int64_t v) {
    auto* a = scan->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    a->add_ints(v);
  };
  ints("scan_input_axes", 1);
  ints("scan_input_directions", 1);
  ints("scan_output_axes", 1);
  ints("scan_output_directions", 1);
  auto* n = scan->add_attribute();
  n->set_name("num_scan_inputs");
  n->set_type(onnx::AttributeProto::INT);
  n->set_i(1);
  auto* a = scan->add_attribute();
  a->set_name("body");
  a->set_type(onnx::AttributeProto::GRAPH);
  auto* b = a->mutable_g();
  b->set_name("body");
  io(b->add_input(), "s", {2, 2});
  io(b->add_input(), "xt", {2, 2});
  io(b->add_output(), "s2", {2, 2});
  io(b->add_output(), "o", {2, 2});
  auto add = [&](const char* x, const char* y, const char* out) {
    auto* k = b->add_node();
    k->set_op_type("Add");
    k->add_input(x);
    k->add_input(y);
    k->add_output(out);
  };
  add("s", "xt", "s2");
  add("s2", "s2", "o");
  Graph gr = load_graph(write_model(dir, "scan.onnx", m), LoadOptions{});
  check_well_formed(gr);
  for (const auto& node : gr.nodes) CHECK(node.op_type != "Scan");
  CHECK(gr.value(gr.find_value("ys")).shape == Shape{2, 3, 2});
  CHECK(gr.value(gr.find_value("sf")).shape == Shape{2, 2});
  auto producer = [&](const std::string& v) -> const Node& {
    return gr.nodes[static_cast<size_t>(gr.value(gr.find_value(v)).producer)];
  };
  for (int t = 0; t < 3; ++t) {
    CAPTURE(t);
    // iteration t reads element 2 - t of axis 1 (backwards) and carries the state of t - 1
    const Node& gather = producer(fmt::format("sf/iter{}/#element0", t));
    CHECK(gather.op_type == "Gather");
    CHECK(gather.attr_int("axis", 0) == 1);
    const Value& index = gr.value(gather.inputs[1]);
    REQUIRE(index.data);
    CHECK(index.data->get_i64(0) == 2 - t);
    CHECK(gr.value(producer(fmt::format("sf/iter{}/s2", t)).inputs[0]).name == (t == 0 ? "s0" : fmt::format("sf/iter{}/s2", t - 1)));
  }
  // the stacked output: the last iteration's first
  const Node& cat = producer("ys");
  REQUIRE(cat.inputs.size() == 3);
  for (int k = 0; k < 3; ++k)
    CHECK(gr.value(producer(gr.value(cat.inputs[static_cast<size_t>(k)]).name).inputs[0]).name == fmt::format("sf/iter{}/o", 2 - k));
  CHECK(gr.value(producer("sf").inputs[0]).name == "sf/iter2/s2");
  fs::remove_all(dir);
}

// Model-local functions: Scale(x, w) = LeakyRelu(x * w, alpha = the call's "slope"), whose
// default (0.1) sits in attribute_proto (field 11, which onnx 1.12's types keep as an unknown
// field); Block(x, a, b) = Scale(Scale(x, a), b), passing its own "slope" on. The model:
// h = Block(x, wa, wb) with slope 0.25, y = Scale(h, wc) without one.
onnx::ModelProto functions_model() {
  onnx::ModelProto m = tiny_model();
  m.add_opset_import()->set_domain("my.fn");
  m.mutable_opset_import(1)->set_version(1);
  auto* g = m.mutable_graph();
  g->clear_node();
  for (const char* w : {"wa", "wb", "wc"}) {
    auto* t = g->add_initializer();
    t->set_name(w);
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(4);
    for (int j = 0; j < 4; ++j) t->add_float_data(static_cast<float>(j + 1));
  }
  auto node = [](auto* owner, const char* op, const char* domain, std::vector<std::string> in, const std::string& out) {
    auto* n = owner->add_node();
    n->set_op_type(op);
    n->set_domain(domain);
    for (const auto& i : in) n->add_input(i);
    n->add_output(out);
    return n;
  };
  auto slope_ref = [](onnx::NodeProto* n, const char* name) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::FLOAT);
    a->set_ref_attr_name("slope");
  };
  auto* scale = m.add_functions();
  scale->set_name("Scale");
  scale->set_domain("my.fn");
  for (const char* i : {"x", "w"}) scale->add_input(i);
  scale->add_output("y");
  scale->add_attribute("slope");
  scale->add_opset_import()->set_version(17);
  node(scale, "Mul", "", {"x", "w"}, "t");
  slope_ref(node(scale, "LeakyRelu", "", {"t"}, "y"), "alpha");
  onnx::AttributeProto dflt;
  dflt.set_name("slope");
  dflt.set_type(onnx::AttributeProto::FLOAT);
  dflt.set_f(0.1f);
  scale->mutable_unknown_fields()->AddLengthDelimited(11, dflt.SerializeAsString());
  auto* block = m.add_functions();
  block->set_name("Block");
  block->set_domain("my.fn");
  for (const char* i : {"x", "a", "b"}) block->add_input(i);
  block->add_output("y");
  block->add_attribute("slope");
  block->add_opset_import()->set_version(17);
  auto* s1 = node(block, "Scale", "my.fn", {"x", "a"}, "t");
  s1->set_name("s1");
  slope_ref(s1, "slope");
  slope_ref(node(block, "Scale", "my.fn", {"t", "b"}, "y"), "slope");
  auto* call = node(g, "Block", "my.fn", {"x", "wa", "wb"}, "h");
  call->set_name("blk");
  auto* slope = call->add_attribute();
  slope->set_name("slope");
  slope->set_type(onnx::AttributeProto::FLOAT);
  slope->set_f(0.25f);
  node(g, "Scale", "my.fn", {"h", "wc"}, "y");
  return m;
}

TEST_CASE("model-local functions are inlined: each call's inputs, attribute references and defaults, nested calls") {
  auto dir = test::temp_dir("functions");
  Graph g = load_graph(write_model(dir, "functions.onnx", functions_model()), batch(2));
  check_well_formed(g);
  std::vector<std::pair<std::string, double>> relus;  // (name, alpha) in order
  std::vector<std::string> muls;
  for (const auto& n : g.nodes) {
    CHECK(n.domain.empty());
    if (n.op_type == "LeakyRelu") relus.emplace_back(n.name, n.attr_float("alpha", -1));
    if (n.op_type == "Mul") muls.push_back(g.value(n.inputs[1]).name);
  }
  // the calls' names prefix their nodes (unnamed: the op and its place in the body): blk/s1, blk/Scale_1, Scale
  REQUIRE(relus.size() == 3);
  CHECK(relus[0].first == "blk/s1/LeakyRelu_1");
  CHECK(relus[1].first == "blk/Scale_1/LeakyRelu_1");
  CHECK(relus[2].first == "Scale/LeakyRelu_1");
  // Block's slope reaches both inner calls; the last call has none: attribute_proto's 0.1
  CHECK(relus[0].second == doctest::Approx(0.25));
  CHECK(relus[1].second == doctest::Approx(0.25));
  CHECK(relus[2].second == doctest::Approx(0.1));
  // each call reads its own weights, which train
  CHECK(muls == std::vector<std::string>{"wa", "wb", "wc"});
  CHECK(g.parameters.size() == 3);
  CHECK(g.value(g.find_value("h")).shape == Shape{2, 4});

  // A function that calls itself; a call with more inputs than its function.
  onnx::ModelProto rec = functions_model();
  rec.mutable_functions(0)->mutable_node(0)->set_op_type("Scale");
  rec.mutable_functions(0)->mutable_node(0)->set_domain("my.fn");
  expect_bad(write_model(dir, "recursive.onnx", rec), "functions nested deeper than 64");
  onnx::ModelProto wide = functions_model();
  wide.mutable_graph()->mutable_node(1)->add_input("x");
  expect_bad(write_model(dir, "wide.onnx", wide), "3 inputs and 1 outputs, function 'Scale' takes 2 and 1");
  // A body written for opset 11 in a model of opset 17: Mul and LeakyRelu read the same at both
  // and inline; Unsqueeze took its axes as an attribute before 13, and is refused.
  onnx::ModelProto old = functions_model();
  old.mutable_functions(0)->mutable_opset_import(0)->set_version(11);
  CHECK(load_graph(write_model(dir, "old.onnx", old), batch(2)).nodes.size() == g.nodes.size());
  old.mutable_functions(0)->mutable_node(0)->set_op_type("Unsqueeze");
  expect_bad(write_model(dir, "old_unsqueeze.onnx", old),
             "function 'Scale' is written for opset 11, and its Unsqueeze takes other inputs or attributes at the model's opset 17");
  fs::remove_all(dir);
}

TEST_CASE("a standard op without a kernel is expanded by its function body (MeanVarianceNormalization, opset 17)") {
  // MVN's body is written for opset 13; its Pow (bfloat16 added at 15) reads the same at 17.
  auto dir = test::temp_dir("mvn");
  onnx::ModelProto m = tiny_model();
  auto* n = m.mutable_graph()->mutable_node(0);
  n->set_op_type("MeanVarianceNormalization");
  n->set_name("mvn");
  auto* axes = n->add_attribute();
  axes->set_name("axes");
  axes->set_type(onnx::AttributeProto::INTS);
  for (int64_t a : {0, 1}) axes->add_ints(a);
  Graph g = load_graph(write_model(dir, "mvn.onnx", m), batch(2));
  check_well_formed(g);
  std::multiset<std::string> ops;
  for (const auto& node : g.nodes) {
    ops.insert(node.op_type);
    CHECK(node.name.rfind("mvn/", 0) == 0);
  }
  CHECK(ops.count("MeanVarianceNormalization") == 0);
  CHECK(ops.count("ReduceMean") == 2);  // E[X] and E[X^2]
  CHECK(ops.count("Sqrt") == 1);
  CHECK(g.value(g.find_value("y")).shape == Shape{2, 4});
  fs::remove_all(dir);
}

TEST_CASE("a Resize's float scales initializer is a constant with its bytes, read by shape inference, not a weight") {
  // y = Resize(x * w, scales = [1, 2]) with x [N, 4]: y [N, 8].
  auto dir = test::temp_dir("resize_scales");
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  auto add_floats = [&](const std::string& name, std::vector<float> v) {
    auto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    t->add_dims(static_cast<int64_t>(v.size()));
    t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float)));
  };
  add_floats("w", {1, 2, 3, 4});
  add_floats("scales", {1, 2});
  auto* mul = g->add_node();
  mul->set_op_type("Mul");
  mul->add_input("x");
  mul->add_input("w");
  mul->add_output("h");
  auto* rs = g->add_node();
  rs->set_op_type("Resize");
  for (const char* in : {"h", "", "scales"}) rs->add_input(in);
  rs->add_output("y");
  g->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(1)->set_dim_value(8);
  auto path = write_model(dir, "resize.onnx", m);
  for (bool weights : {false, true}) {  // a worker loads the weights: their bytes leave the model
    CAPTURE(weights);
    LoadOptions o = batch(2);
    o.load_weights = weights;
    Graph gr = load_graph(path, o);
    check_well_formed(gr);
    const Value& sc = gr.value(gr.find_value("scales"));
    CHECK(sc.kind == ValueKind::Constant);
    REQUIRE(sc.data);
    CHECK(sc.data->numel() == 2);
    CHECK(gr.parameters.size() == 1);  // w
    CHECK(gr.value(gr.find_value("y")).shape == Shape{2, 8});
  }
  fs::remove_all(dir);
}

TEST_CASE("costs scale with the batch: FLOPs and activations double, parameters do not") {
  Graph a = load_graph(test::sample("cnn"), batch(4));
  Graph b = load_graph(test::sample("cnn"), batch(8));
  CHECK(b.forward_flops() == doctest::Approx(2 * a.forward_flops()));
  CHECK(b.activation_bytes() == doctest::Approx(2 * a.activation_bytes()));
  CHECK(b.parameter_count() == a.parameter_count());
}

TEST_CASE("folding removes PyTorch's shape chains from the GPT") {
  Graph g = load_graph(test::sample("gpt"), batch(3));
  CHECK(g.onnx_nodes > static_cast<int>(g.nodes.size()));
  std::set<std::string> ops;
  for (const auto& n : g.nodes) ops.insert(n.op_type);
  for (const char* gone : {"Shape", "Constant", "ConstantOfShape", "Unsqueeze", "Concat", "Trilu", "Cast"}) {
    INFO(gone);
    CHECK(ops.count(gone) == 0);
  }
  // The reshapes now have constant targets that match the bound batch.
  int reshapes = 0;
  for (const auto& n : g.nodes) {
    if (n.op_type != "Reshape") continue;
    ++reshapes;
    const Value& target = g.value(n.inputs[1]);
    REQUIRE(target.kind == ValueKind::Constant);
    REQUIRE(target.data != nullptr);
    CHECK(target.data->get_i64(0) == 3);
  }
  CHECK(reshapes > 0);
  // The causal mask became a constant feeding each Where, not a parameter.
  for (const auto& n : g.nodes)
    if (n.op_type == "Where") CHECK(g.value(n.inputs[0]).kind == ValueKind::Constant);
}

TEST_CASE("symbolic dimensions bind by --batch-size and --dim") {
  auto dir = test::temp_dir("dims");
  onnx::ModelProto m = tiny_model();
  // Give y's input a second symbolic dim named "feat".
  auto* s = m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  s->mutable_dim(1)->set_dim_param("feat");
  m.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(1)->set_dim_param("feat");
  auto path = write_model(dir, "sym.onnx", m);
  CHECK_THROWS_WITH_AS(load_graph(path, batch(5)), doctest::Contains("--dim feat=SIZE"), Error);
  LoadOptions o = batch(5);
  o.dims["feat"] = 7;
  Graph g = load_graph(path, o);
  CHECK(g.value(g.outputs[0]).shape == Shape{5, 7});
  CHECK(g.dims.at("feat") == 7);
  CHECK_THROWS_WITH_AS(load_graph(path, LoadOptions{}), doctest::Contains("give --batch-size"), Error);

  // Shapes from the caller's arrays bind every symbolic dimension, of any axis, by name.
  LoadOptions a;
  a.input_array = [&](const std::string& n) { return n == "x" ? array({3, 9}) : nullptr; };
  Graph ga = load_graph(path, a);
  CHECK(ga.value(ga.outputs[0]).shape == Shape{3, 9});
  CHECK(ga.dims.at("N") == 3);
  CHECK(ga.dims.at("feat") == 9);
  CHECK(ga.inputs.size() == 1);  // a float array of several elements stays an input
  a.input_array = [&](const std::string& n) { return n == "x" ? array({3, 9, 1}) : nullptr; };
  CHECK_THROWS_WITH_AS(load_graph(path, a), doctest::Contains("has rank 2, its array [3, 9, 1] rank 3"), Error);
  fs::remove_all(dir);
}

TEST_CASE("array shapes: fixed dimensions must match, inputs need no batch axis") {
  auto dir = test::temp_dir("arrays");
  onnx::ModelProto m = tiny_model();
  auto* s = m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  s->mutable_dim(0)->set_dim_value(10);  // a fixed leading dimension that is no batch
  m.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0)->set_dim_value(10);
  auto path = write_model(dir, "fixed.onnx", m);
  LoadOptions a;
  a.input_array = [&](const std::string&) { return array({10, 4}); };
  Graph g = load_graph(path, a);
  CHECK(g.value(g.outputs[0]).shape == Shape{10, 4});
  a.input_array = [&](const std::string&) { return array({2, 4}); };
  CHECK_THROWS_WITH_AS(load_graph(path, a), doctest::Contains("graph input 'x' has size 10 on axis 0, its array [2, 4]"), Error);
  fs::remove_all(dir);
}

TEST_CASE("a model of opset 6 is converted to opset 7 by ONNX's version converter") {
  auto dir = test::temp_dir("convert");
  onnx::ModelProto m = tiny_model();
  m.mutable_opset_import(0)->set_version(6);
  m.set_ir_version(3);
  Graph g = load_graph(write_model(dir, "opset6.onnx", m), batch(2));
  CHECK(g.opset == 7);
  CHECK(g.nodes.size() == 1);
  CHECK(g.value(g.outputs[0]).shape == Shape{2, 4});
  fs::remove_all(dir);
}

TEST_CASE("the batch axis read without loading; smp-plan without --batch-size takes it, or 8 per device") {
  auto dir = test::temp_dir("batch_axis");
  auto fixed = [](onnx::ModelProto m, int64_t n) {
    m.mutable_graph()->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0)->set_dim_value(n);
    m.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0)->set_dim_value(n);
    return m;
  };
  auto sym = write_model(dir, "sym.onnx", tiny_model());
  auto six = write_model(dir, "six.onnx", fixed(tiny_model(), 6));
  BatchAxis a = inspect_batch_axis(sym);
  CHECK(a.fixed.empty());
  CHECK(a.symbolic == std::vector<std::string>{"x"});
  BatchAxis b = inspect_batch_axis(six);
  CHECK(b.symbolic.empty());
  CHECK(b.fixed.at("x") == 6);
  CHECK(inspect_batch_axis(dir / "absent.onnx").fixed.empty());
  // Two inputs whose fixed leading dimensions disagree: no batch to take.
  onnx::ModelProto two = fixed(tiny_model(), 6);
  {
    auto* g = two.mutable_graph();
    *g->add_input() = g->input(0);
    g->mutable_input(1)->set_name("z");
    g->mutable_input(1)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim(0)->set_dim_value(3);
    g->mutable_node(0)->set_op_type("Add");
    g->mutable_node(0)->add_input("z");
    g->mutable_node(0)->set_input(1, "x");
  }
  auto mixed = write_model(dir, "mixed.onnx", two);
  CHECK(inspect_batch_axis(mixed).fixed.size() == 2);

  auto plan = [&](const fs::path& model, const std::string& args) {
    return test::run_cmd(test::tool("smp-plan") + " " + model.string() + " " + args + " -o " + (dir / "p.json").string());
  };
  auto r6 = plan(six, "--devices 2");
  INFO(r6.out);
  CHECK(r6.exit_code == 0);
  CHECK(r6.out.find("batch 6: the model's fixed batch dimension") != std::string::npos);
  CHECK(r6.out.find("), batch 6\n") != std::string::npos);
  // a worker loads the graph at the microbatch size: every microbatch holds the fixed 6 samples
  CHECK(read_json(dir / "p.json")["microbatch_size"] == 6);
  auto r6m = plan(six, "--devices 2 --microbatches 2");
  CHECK(r6m.exit_code == 2);
  CHECK(r6m.out.rfind("error: " + six.string() + ": its inputs fix the batch dimension at 6, so every microbatch holds 6 samples", 0) == 0);
  CHECK(std::count(r6m.out.begin(), r6m.out.end(), '\n') == 1);
  auto rs = plan(sym, "--devices 3");
  INFO(rs.out);
  CHECK(rs.exit_code == 0);
  CHECK(rs.out.find("batch 24: --batch-size not given and the model's batch axis is symbolic") != std::string::npos);
  CHECK(rs.out.find("), batch 24\n") != std::string::npos);
  auto rm = plan(mixed, "--devices 2");
  CHECK(rm.exit_code == 2);
  CHECK(rm.out.rfind("error: --batch-size: not given, and the inputs of", 0) == 0);
  CHECK(rm.out.find("x 6, z 3") != std::string::npos);
  // --summary too
  auto ss = test::run_cmd(test::tool("smp-plan") + " " + six.string() + " --summary");
  CHECK(ss.exit_code == 0);
  CHECK(ss.out.find("batch size       6") != std::string::npos);
  CHECK(ss.out.find("note: the summary describes") == std::string::npos);
  // at a multiple of the fixed batch it says how a step's figures relate to the graph's; elsewhere
  // it refuses the batch, as planning does
  auto s18 = test::run_cmd(test::tool("smp-plan") + " " + six.string() + " --summary -b 18");
  CHECK(s18.exit_code == 0);
  CHECK(s18.out.find("batch size       6") != std::string::npos);
  CHECK(s18.out.find("note: the summary describes one run of the graph at its fixed batch 6; --batch-size 18 runs it 3 times a step") !=
        std::string::npos);
  auto s8 = test::run_cmd(test::tool("smp-plan") + " " + six.string() + " --summary -b 8");
  CHECK(s8.exit_code == 2);
  CHECK(s8.out.rfind("error: --batch-size: 8 is not a multiple of 6: the inputs of " + six.string(), 0) == 0);
  CHECK(std::count(s8.out.begin(), s8.out.end(), '\n') == 1);
  fs::remove_all(dir);
}

TEST_CASE("a parameter read through an Identity (eval-mode export's merged initializers) is warned of") {
  // y = (x * w) * w2 with w2 = Identity(w): torch.onnx.export in eval mode makes this of two
  // equal initializers, and they would train as one.
  auto dir = test::temp_dir("identity_tie");
  onnx::ModelProto m = tiny_model();
  auto* g = m.mutable_graph();
  g->clear_node();
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(4);
  for (int j = 0; j < 4; ++j) w->add_float_data(1.0f);
  auto node = [&](const char* op, std::vector<std::string> in, const std::string& out) {
    auto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(out);
    for (const auto& i : in) n->add_input(i);
    n->add_output(out);
  };
  node("Identity", {"w"}, "w2");
  node("Mul", {"x", "w"}, "t");
  node("Mul", {"t", "w2"}, "y");
  const fs::path path = write_model(dir, "tied.onnx", m);
  auto tied = [](const Graph& gr) {
    return std::count_if(gr.warnings.begin(), gr.warnings.end(),
                         [](const std::string& s) { return s.find("1 parameter is another's copy through an Identity (w2 = w)") != std::string::npos; });
  };
  CHECK(tied(load_graph(path, batch(2))) == 1);
  LoadOptions frozen = batch(2);
  frozen.frozen = {"w"};
  CHECK(tied(load_graph(path, frozen)) == 0);  // not trained: nothing is tied
  // smp-plan prints it.
  auto r = test::run_cmd(test::tool("smp-plan") + " " + path.string() + " --summary");
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("warning: " + path.string() + ": 1 parameter is another's copy") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("a BatchNormalization in inference mode (an eval-mode export's) is warned of; in training mode it is not") {
  auto dir = test::temp_dir("bn_inference");
  for (bool training : {false, true}) {
    CAPTURE(training);
    onnx::ModelProto m = tiny_model();
    m.mutable_opset_import(0)->set_version(15);
    auto* g = m.mutable_graph();
    g->clear_node();
    for (const char* name : {"scale", "bias", "mean", "var"}) {
      auto* t = g->add_initializer();
      t->set_name(name);
      t->set_data_type(onnx::TensorProto::FLOAT);
      t->add_dims(4);
      for (int j = 0; j < 4; ++j) t->add_float_data(std::string(name) == "var" || std::string(name) == "scale" ? 1.0f : 0.0f);
    }
    auto* n = g->add_node();
    n->set_op_type("BatchNormalization");
    n->set_name("bn");
    for (const char* in : {"x", "scale", "bias", "mean", "var"}) n->add_input(in);
    n->add_output("y");
    if (training) {
      n->add_output("mean_out");
      n->add_output("var_out");
      auto* a = n->add_attribute();
      a->set_name("training_mode");
      a->set_type(onnx::AttributeProto::INT);
      a->set_i(1);
    }
    const Graph gr = load_graph(write_model(dir, fmt::format("bn{}.onnx", training), m), batch(2));
    const auto warned = std::count_if(gr.warnings.begin(), gr.warnings.end(), [](const std::string& s) {
      return s.find("1 BatchNormalization node is in inference mode") != std::string::npos;
    });
    CHECK(warned == (training ? 0 : 1));
  }
  fs::remove_all(dir);
}

TEST_CASE("bad input: one line naming the file, exit status 2, never a crash") {
  auto dir = test::temp_dir("bad");

  SUBCASE("missing file") { expect_bad(dir / "absent.onnx", "no such file"); }
  SUBCASE("empty file") { expect_bad(write_bytes(dir, "empty.onnx", ""), "empty file"); }
  SUBCASE("bytes that are not ONNX") {
    expect_bad(write_bytes(dir, "text.onnx", "this is plain text, not a protobuf\n"), "not an ONNX model");
    std::string noise;
    for (int i = 0; i < 4096; ++i) noise.push_back(static_cast<char>((i * 7919 + 13) % 251));
    expect_bad(write_bytes(dir, "noise.onnx", noise), "not an ONNX model");
  }
  SUBCASE("truncated model") {
    std::string whole;
    {
      std::ifstream in(test::sample("mlp"), std::ios::binary);
      whole.assign(std::istreambuf_iterator<char>(in), {});
    }
    for (size_t keep : {size_t{16}, whole.size() / 3, whole.size() - 7}) {
      INFO("kept ", keep, " bytes");
      expect_bad(write_bytes(dir, "trunc.onnx", whole.substr(0, keep)), "not an ONNX model");
    }
  }
  SUBCASE("unsupported opset") {
    onnx::ModelProto m = tiny_model();
    m.mutable_opset_import(0)->set_version(99);
    expect_bad(write_model(dir, "opset99.onnx", m), "unsupported opset 99");
    m.mutable_opset_import(0)->set_version(0);
    expect_bad(write_model(dir, "opset0.onnx", m), "unsupported opset 0");
  }
  SUBCASE("dangling input") {
    onnx::ModelProto m = tiny_model();
    m.mutable_graph()->mutable_node(0)->set_input(0, "nowhere");
    expect_bad(write_model(dir, "dangling.onnx", m), "reads 'nowhere', which no node");
  }
  SUBCASE("cycle") {
    onnx::ModelProto m = tiny_model();
    auto* g = m.mutable_graph();
    // a = Add(x, c); c = Relu(a); y = Relu(c)
    g->clear_node();
    auto* add = g->add_node();
    add->set_name("add");
    add->set_op_type("Add");
    add->add_input("x");
    add->add_input("c");
    add->add_output("a");
    auto* r1 = g->add_node();
    r1->set_name("loop");
    r1->set_op_type("Relu");
    r1->add_input("a");
    r1->add_output("c");
    auto* r2 = g->add_node();
    r2->set_name("out");
    r2->set_op_type("Relu");
    r2->add_input("c");
    r2->add_output("y");
    expect_bad(write_model(dir, "cycle.onnx", m), "cycle");
  }
  SUBCASE("a node whose shape cannot be inferred") {
    onnx::ModelProto m = tiny_model();
    auto* g = m.mutable_graph();
    // The Reshape target comes from a graph input: its output shape depends on data.
    auto* t = g->add_input();
    t->set_name("target");
    auto* tt = t->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::INT64);
    tt->mutable_shape()->add_dim()->set_dim_value(2);
    g->mutable_node(0)->set_output(0, "r");
    auto* rs = g->add_node();
    rs->set_name("reshape");
    rs->set_op_type("Reshape");
    rs->add_input("r");
    rs->add_input("target");
    rs->add_output("y");
    auto* ys = g->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
    ys->mutable_dim(0)->set_dim_param("p");  // the exporter did not know either
    ys->mutable_dim(1)->set_dim_param("q");
    expect_bad(write_model(dir, "noshape.onnx", m), "node 'reshape' (Reshape): cannot infer a static shape");
  }
  SUBCASE("an op ONNX does not define") {
    onnx::ModelProto m = tiny_model();
    m.mutable_graph()->mutable_node(0)->set_op_type("Frobnicate");
    expect_bad(write_model(dir, "unknown_op.onnx", m), "invalid ONNX model");
  }
  SUBCASE("two nodes writing the same value") {
    onnx::ModelProto m = tiny_model();
    *m.mutable_graph()->add_node() = m.graph().node(0);
    m.mutable_graph()->mutable_node(1)->set_name("relu2");
    expect_bad(write_model(dir, "twice.onnx", m), "also writes");
  }
  SUBCASE("a node ONNX's own shape inference faults on (found by the fuzzer)") {
    onnx::ModelProto m = tiny_model();
    auto* g = m.mutable_graph();
    // Gemm with a rank-1 input: ONNX 1.12 reads a dimension that is not there.
    g->mutable_input(0)->mutable_type()->mutable_tensor_type()->mutable_shape()->mutable_dim()->RemoveLast();
    auto* w = g->add_initializer();
    w->set_name("w");
    w->set_data_type(onnx::TensorProto::FLOAT);
    w->add_dims(8);
    w->add_dims(4);
    for (int i = 0; i < 32; ++i) w->add_float_data(0.5f);
    auto* n = g->mutable_node(0);
    n->set_op_type("Gemm");
    n->add_input("w");
    auto* tb = n->add_attribute();
    tb->set_name("transB");
    tb->set_type(onnx::AttributeProto::INT);
    tb->set_i(1);
    expect_bad(write_model(dir, "gemm_rank1.onnx", m), "shape inference");
  }
  SUBCASE("an inconsistent shape") {
    onnx::ModelProto m = tiny_model();
    auto* g = m.mutable_graph();
    g->mutable_node(0)->set_op_type("MatMul");
    g->mutable_node(0)->add_input("x");  // [2,4] x [2,4]
    expect_bad(write_model(dir, "matmul.onnx", m), "shape inference failed");
  }
  fs::remove_all(dir);
}

TEST_CASE("a custom-domain op with a known output shape plans with a bytes-based estimate and a warning") {
  auto dir = test::temp_dir("custom");
  onnx::ModelProto m = tiny_model();
  auto* dom = m.add_opset_import();
  dom->set_domain("com.example");
  dom->set_version(1);
  auto* n = m.mutable_graph()->mutable_node(0);
  n->set_domain("com.example");
  n->set_op_type("Fancy");
  // No schema: shape inference cannot know y, unless the model declares it.
  auto* vi = m.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  vi->mutable_dim(0)->set_dim_value(2);
  auto path = write_model(dir, "custom.onnx", m);
  Graph g = load_graph(path, batch(2));
  REQUIRE(g.nodes.size() == 1);
  CHECK(g.nodes[0].cost.estimated);
  CHECK(g.nodes[0].cost.bytes_read == 2 * 4 * 4);
  REQUIRE(g.warnings.size() == 1);
  CHECK(g.warnings[0].find("com.example:Fancy") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("QuantizeLinear -> Clip -> DequantizeLinear with one scale and zero point loads as one FakeQuantize, a weight behind it trainable") {
  // y = DequantizeLinear(Clip(QuantizeLinear(x * w, s, z), max 100), s, z), as PyTorch exports a
  // FakeQuantize of reduce_range; variant 1: the integers are also a graph output; variant 2: the
  // QuantizeLinear reads int32 (x * w cast). Both stay as they are.
  for (int variant : {0, 1, 2}) {
    CAPTURE(variant);
    const bool keep = variant == 1, ints = variant == 2;
    auto dir = test::temp_dir("fake_quant");
    onnx::ModelProto m = tiny_model();
    auto* g = m.mutable_graph();
    g->clear_node();
    auto init = [&](const std::string& name, int type, std::vector<int64_t> dims) {
      auto* t = g->add_initializer();
      t->set_name(name);
      t->set_data_type(type);
      for (auto d : dims) t->add_dims(d);
      return t;
    };
    auto* w = init("w", onnx::TensorProto::FLOAT, {4});
    for (int j = 0; j < 4; ++j) w->add_float_data(0.5f + static_cast<float>(j));
    init("s", onnx::TensorProto::FLOAT, {})->add_float_data(0.1f);
    init("z", onnx::TensorProto::UINT8, {})->add_int32_data(3);
    init("top", onnx::TensorProto::UINT8, {})->add_int32_data(100);
    auto node = [&](const char* op, std::vector<std::string> in, const std::string& out) {
      auto* n = g->add_node();
      n->set_op_type(op);
      n->set_name(out + "_node");
      for (const auto& i : in) n->add_input(i);
      n->add_output(out);
    };
    node("Mul", {"x", "w"}, "m");
    if (ints) {
      node("Cast", {"m"}, "mi");
      auto* to = g->mutable_node(g->node_size() - 1)->add_attribute();
      to->set_name("to");
      to->set_type(onnx::AttributeProto::INT);
      to->set_i(onnx::TensorProto::INT32);
    }
    node("QuantizeLinear", {ints ? "mi" : "m", "s", "z"}, "q");
    node("Clip", {"q", "", "top"}, "qc");
    node("DequantizeLinear", {"qc", "s", "z"}, "y");
    if (keep) {
      auto* o = g->add_output();
      o->set_name("q");
      auto* t = o->mutable_type()->mutable_tensor_type();
      t->set_elem_type(onnx::TensorProto::UINT8);
      t->mutable_shape()->add_dim()->set_dim_param("N");
      t->mutable_shape()->add_dim()->set_dim_value(4);
    }
    auto path = write_model(dir, "fq.onnx", m);
    Graph gr = load_graph(path, batch(2));
    check_well_formed(gr);
    std::vector<std::string> ops;
    for (const auto& n : gr.nodes) ops.push_back(n.op_type);
    if (keep || ints) {
      CHECK(ops == (ints ? std::vector<std::string>{"Mul", "Cast", "QuantizeLinear", "Clip", "DequantizeLinear"}
                         : std::vector<std::string>{"Mul", "QuantizeLinear", "Clip", "DequantizeLinear"}));
      CHECK(gr.parameters.empty());  // no gradient crosses the integers
    } else {
      REQUIRE(ops == std::vector<std::string>{"Mul", "FakeQuantize"});
      const Node& f = gr.nodes[1];
      CHECK(f.name == "y_node");
      CHECK(f.attr_int("qmin", -1) == 0);
      CHECK(f.attr_int("qmax", -1) == 100);
      CHECK(gr.value(f.outputs[0]).name == "y");
      REQUIRE(gr.parameters.size() == 1);
      CHECK(gr.value(gr.parameters[0]).name == "w");
    }
    fs::remove_all(dir);
  }
}
