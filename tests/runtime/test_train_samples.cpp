// The sample models on the engine: every node loads, a training step runs and leaves nothing
// stashed; memory; PyTorch comparison (20 SGD steps).
#include <doctest/doctest.h>

#include "core/io.hpp"
#include "cost/cost_model.hpp"
#include "graph/loader.hpp"
#include "graph/op_registry.hpp"
#include "runtime/npy.hpp"
#include "runtime/loss.hpp"
#include "tiny_graph.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <set>

#include <sys/wait.h>

using namespace smp;
using runtime::Tensor;

namespace {
std::filesystem::path sample(const std::string& name) {
  return std::filesystem::path(SMP_SOURCE_DIR) / "sample_models" / (name + ".onnx");
}

// A sample at `batch` with its weights, ready to run.
graph::Graph load_sample(const std::string& name, int64_t batch = 4) {
  graph::LoadOptions lo;
  lo.batch_size = batch;
  lo.load_weights = true;
  return graph::load_graph(sample(name), lo);
}

// deterministic inputs and labels for a sample graph
std::pair<Tensor, Tensor> batch_for(runtime::Backend& be, const graph::Graph& g, uint32_t seed) {
  const graph::Value& in = g.value(g.inputs[0]);
  const graph::Value& out = g.value(g.outputs[0]);
  Tensor x;
  std::mt19937 rng(seed);
  if (in.dtype == DType::I64) {
    std::vector<int64_t> v(static_cast<size_t>(in.numel()));
    for (auto& t : v) t = static_cast<int64_t>(rng() % 4096);
    x = be.from_host(DType::I64, in.shape, v.data());
  } else {
    auto v = test::random_floats(static_cast<size_t>(in.numel()), seed);
    x = be.from_host(DType::F32, in.shape, v.data());
  }
  Shape ls(out.shape.begin(), out.shape.end() - 1);
  std::vector<int64_t> lab(static_cast<size_t>(numel(ls)));
  for (auto& t : lab) t = static_cast<int64_t>(rng() % static_cast<uint32_t>(out.shape.back()));
  return {x, be.from_host(DType::I64, ls, lab.data())};
}
}  // namespace

TEST_CASE("sample models: load, one training step, nothing left stashed") {
  for (std::string name : {"mlp", "cnn", "gpt"}) {
    CAPTURE(name);
    graph::Graph g = load_sample(name);
    runtime::CpuBackend be(2);
    runtime::StageExecutor ex(g, be);
    REQUIRE(ex.inputs().size() == 1);
    REQUIRE(ex.outputs().size() == 1);
    auto [x, y] = batch_for(be, g, 5);
    double first = 0, last = 0;
    for (int step = 0; step < 3; ++step) {
      ex.zero_grad();
      auto out = ex.forward(0, {&x, 1});
      auto l = runtime::cross_entropy(be, out[0], y);
      ex.backward(0, {&l.grad, 1});
      CHECK(ex.pending() == 0);
      ex.sgd_step(0.05f);
      CHECK(std::isfinite(l.loss));
      if (step == 0) first = l.loss;
      last = l.loss;
    }
    CHECK(last < first);  // same batch three times: the loss goes down
  }
}

namespace {
int run(const std::string& cmd, std::string* out = nullptr) {
  std::string log = std::string(SMP_TEST_DATA) + "/smp_run_test.out";
  std::string full = cmd + " > " + log + " 2>&1";
  int rc = std::system(full.c_str());
  if (out) *out = smp::read_file(log);
  return WEXITSTATUS(rc);
}
}  // namespace

TEST_CASE("smp-run --forward writes one .npy per graph output, equal to the engine's forward") {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(SMP_TEST_DATA) / "smp_run_forward";
  fs::remove_all(dir);
  fs::create_directories(dir / "in");
  runtime::CpuBackend be(1);
  for (std::string name : {"mlp", "gpt"}) {
    CAPTURE(name);
    graph::Graph g = load_sample(name, 3);
    auto [x, y] = batch_for(be, g, 11);
    fs::remove_all(dir / "in");
    fs::create_directories(dir / "in");
    runtime::save_npy(be, dir / "in" / (g.value(g.inputs[0]).name + ".npy"), x);
    std::string out;
    int rc = run(fmt::format("{}/smp-run {} --forward --data {} --output {} --threads 1", SMP_BIN_DIR, sample(name).string(),
                             (dir / "in").string(), (dir / "out").string()), &out);
    INFO(out);
    REQUIRE(rc == 0);
    runtime::ExecutorOptions eo;
    eo.training = false;
    runtime::StageExecutor ex(g, be, eo);
    auto want = ex.forward(0, {&x, 1});
    auto got = runtime::read_npy(dir / "out" / "logits.npy");
    REQUIRE(got.shape == want[0].shape());
    CHECK(std::memcmp(got.bytes.data(), want[0].raw(), got.bytes.size()) == 0);
  }
  // bad input: exit 2, one line naming the file
  std::string out;
  fs::remove_all(dir / "in");
  fs::create_directories(dir / "in");
  std::vector<float> wrong(5, 0.0f);
  runtime::write_npy(dir / "in" / "x.npy", DType::F32, {1, 5}, wrong.data());
  CHECK(run(fmt::format("{}/smp-run {} --forward --data {} --output {}", SMP_BIN_DIR, sample("mlp").string(),
                        (dir / "in").string(), (dir / "out").string()), &out) == 2);
  CHECK(out.find("error: " + sample("mlp").string() + ": graph input 'x' has size 256 on axis 1, its array [1, 5] (the model fixes that size)") == 0);
  CHECK(run(fmt::format("{}/smp-run {} --forward --data {} --output {}", SMP_BIN_DIR, sample("gpt").string(),
                        (dir / "in").string(), (dir / "out").string()), &out) == 2);
  CHECK(out.find("input_ids.npy: missing: graph input 'input_ids' needs it") != std::string::npos);
  CHECK(run(fmt::format("{}/smp-run {} --forward --output {}", SMP_BIN_DIR, sample("mlp").string(), (dir / "out").string()), &out) == 2);
  CHECK(out.find("error: --data: no input directory given") == 0);
}

TEST_CASE("memory: the stash holds exactly what the registry declares; planned and measured agree within 10%") {
  for (std::string name : {"mlp", "cnn", "gpt"}) {
    CAPTURE(name);
    graph::Graph g = load_sample(name);
    runtime::CpuBackend be(1);
    runtime::ExecutorOptions unfused;
    unfused.fuse = false;  // the nodes as exported, as the planner counts them
    runtime::StageExecutor ex(g, be, unfused);
    auto [x, y] = batch_for(be, g, 3);
    // the planner's estimate from the registry's declarations: per node, and per distinct value
    int64_t per_node = 0, distinct = 0;
    std::set<int> kept;
    for (const auto& n : g.nodes) {
      per_node += graph::saved_activation_bytes(g, n);
      const graph::OpDef* d = graph::find_op(n.op_type);
      REQUIRE(d);
      for (size_t i = 0; i < n.inputs.size(); ++i)
        if ((d->saved_inputs >> i & 1u) && n.inputs[i] >= 0) kept.insert(n.inputs[i]);
      for (size_t k = 0; k < n.outputs.size(); ++k)
        if ((d->saved_outputs >> k & 1u) && n.outputs[k] >= 0) kept.insert(n.outputs[k]);
    }
    for (int v : kept) {
      const auto& val = g.value(v);
      if (val.kind != graph::ValueKind::Parameter && val.kind != graph::ValueKind::Constant) distinct += val.bytes();
    }
    ex.reset_peak();
    for (int mb = 0; mb < 2; ++mb) ex.forward(mb, {&x, 1});
    int64_t measured = ex.peak_stash_bytes();
    fmt::print("{}: stash after 2 microbatches of 4: measured {} B; declared per distinct value {} B; per node (graph::saved_activation_bytes) {} B; peak above resident {} B\n",
               name, measured, 2 * distinct, 2 * per_node, ex.peak_bytes());
    CHECK(std::fabs(static_cast<double>(measured) - 2.0 * distinct) <= 0.10 * 2.0 * distinct);
    // The planner's own estimate (lib/cost: activations kept per microbatch of the whole graph
    // as one stage, received inputs included) for the same 2 microbatches.
    cost::GraphCost gc(g, 4, cost::CostOptions{});
    double planned = gc.stage_memory(0, static_cast<int>(g.nodes.size()), 4).act.at(4);
    fmt::print("{}: planner's activation estimate {} B per microbatch\n", name, planned);
    CHECK(std::fabs(static_cast<double>(measured) - 2.0 * planned) <= 0.10 * 2.0 * planned);
    for (int mb = 0; mb < 2; ++mb) {
      auto out = ex.forward(10 + mb, {&x, 1});
      auto l = runtime::cross_entropy(be, out[0], y);
      ex.drop(10 + mb);
      ex.backward(mb, {&l.grad, 1});
    }
    CHECK(ex.pending() == 0);
    CHECK(ex.stash_bytes() == 0);

    // Fused (the default): the stash holds what the executed ops declare, the fused ones' own
    // declarations in place of their chains'.
    runtime::StageExecutor fx(g, be);
    std::vector<uint8_t> skipped(g.nodes.size(), 0);
    std::set<int> fkept;
    auto keep = [&](const graph::Node& n, const graph::OpDef& d) {
      for (size_t i = 0; i < n.inputs.size(); ++i)
        if ((d.saved_inputs >> i & 1u) && n.inputs[i] >= 0) fkept.insert(n.inputs[i]);
      for (size_t k = 0; k < n.outputs.size(); ++k)
        if ((d.saved_outputs >> k & 1u) && n.outputs[k] >= 0) fkept.insert(n.outputs[k]);
    };
    for (const auto& f : fx.fusions()) {
      for (int n : f.nodes) skipped[static_cast<size_t>(n)] = 1;
      keep(f.node, graph::op_def(f.op));
    }
    for (size_t i = 0; i < g.nodes.size(); ++i)
      if (!skipped[i]) keep(g.nodes[i], *graph::find_op(g.nodes[i].op_type));
    int64_t fdistinct = 0;
    for (int v : fkept) {
      const auto& val = g.value(v);
      if (val.kind != graph::ValueKind::Parameter && val.kind != graph::ValueKind::Constant) fdistinct += val.bytes();
    }
    fx.reset_peak();
    for (int mb = 0; mb < 2; ++mb) fx.forward(mb, {&x, 1});
    int64_t fmeasured = fx.peak_stash_bytes();
    fmt::print("{}: fused ({} chains): stash {} B, declared {} B\n", name, fx.fusions().size(), fmeasured, 2 * fdistinct);
    // exactly the declared difference (what the unfused stash leaves out of its declaration, e.g.
    // tensors of nodes that need no gradient, it leaves out here too)
    CHECK(fmeasured - 2 * fdistinct == measured - 2 * distinct);
    CHECK(fmeasured <= measured);
    if (name == "gpt") {
      int gelu = 0, tb = 0;
      for (const auto& f : fx.fusions()) gelu += f.op == graph::Op::Gelu, tb += f.op == graph::Op::MatMulTransB;
      CHECK(gelu == 4);  // one GELU per block
      CHECK(tb == 17);   // each block's 4 Linear layers' Transpose(W) -> MatMul, and the head's
      CHECK(fx.fusions().size() == 21);
      CHECK(fmeasured < measured);
    }
    for (int mb = 0; mb < 2; ++mb) fx.drop(mb);
  }
}
