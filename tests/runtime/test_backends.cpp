// Backends by name, what the executor allocates with bf16 compute, and the memory plan a device
// arena is sized from, checked against what the CPU backend measures (no GPU needed).
#include <doctest/doctest.h>

#include "tiny_graph.hpp"

#include "core/io.hpp"
#include "graph/loader.hpp"
#include "runtime/backends.hpp"
#include "runtime/loss.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <random>

#include <sys/wait.h>

using namespace smp;
using runtime::Tensor;

namespace {
namespace fs = std::filesystem;

graph::Graph load_sample(const std::string& name, int64_t batch) {
  graph::LoadOptions lo;
  lo.batch_size = batch;
  lo.load_weights = true;
  return graph::load_graph(fs::path(SMP_SOURCE_DIR) / "sample_models" / (name + ".onnx"), lo);
}

std::pair<Tensor, Tensor> batch_for(runtime::Backend& be, const graph::Graph& g) {
  const graph::Value& in = g.value(g.inputs[0]);
  const graph::Value& out = g.value(g.outputs[0]);
  std::mt19937 rng(3);
  Tensor x;
  if (in.dtype == DType::I64) {
    std::vector<int64_t> v(static_cast<size_t>(in.numel()));
    for (auto& t : v) t = static_cast<int64_t>(rng() % 4096);
    x = be.from_host(DType::I64, in.shape, v.data());
  } else {
    auto v = test::random_floats(static_cast<size_t>(in.numel()), 3);
    x = be.from_host(DType::F32, in.shape, v.data());
  }
  Shape ls(out.shape.begin(), out.shape.end() - 1);
  std::vector<int64_t> lab(static_cast<size_t>(numel(ls)));
  for (auto& t : lab) t = static_cast<int64_t>(rng() % static_cast<uint32_t>(out.shape.back()));
  return {x, be.from_host(DType::I64, ls, lab.data())};
}

int run(const std::string& cmd, std::string* out) {
  std::string log = std::string(SMP_TEST_DATA) + "/test_backends.out";
  int rc = std::system((cmd + " > " + log + " 2>&1").c_str());
  *out = read_file(log);
  return WEXITSTATUS(rc);
}
}  // namespace

TEST_CASE("backends by name; a CUDA backend where there is none is one clear error") {
  auto cpu = runtime::make_backend("cpu", {2, 0, false});
  CHECK(cpu->name() == "cpu");
  try {
    runtime::make_backend("tpu");
    FAIL("an unknown backend was made");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::BadInput);
    CHECK(std::string(e.what()) == "--backend: unknown backend 'tpu' (use cpu or cuda)");
  }
  if (runtime::cuda_device_count() > 0) {
    auto cuda = runtime::make_backend("cuda");
    CHECK(cuda->name() == "cuda");
    CHECK(cuda->device_name().rfind("cuda:0 (", 0) == 0);
  } else {
    CHECK(!runtime::cuda_unavailable_reason().empty());
    try {
      runtime::make_backend("cuda");
      FAIL("a CUDA backend without a device");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::BadInput);
      const std::string m = e.what();
      CHECK(m.rfind("cuda:0: ", 0) == 0);
      CHECK(m.find("CUDA") != std::string::npos);
      CHECK(m.find('\n') == std::string::npos);
    }
  }
}

TEST_CASE("bf16 compute: float activations are bf16, everything else keeps its dtype; the CPU refuses it") {
  test::TinyGraph tg;
  int x = tg.input("x", DType::F32, {2, 3});
  int w = tg.param("w", {3, 4}, test::random_floats(12, 1));
  int ids = tg.input("ids", DType::I64, {2});
  int y = tg.node("MatMul", {x, w}, {{"y", DType::F32, Shape{2, 4}}})[0];
  int c = tg.constant<float>("c", DType::F32, {}, {2.0f});
  tg.output(tg.node("Mul", {y, c}, {{"z", DType::F32, Shape{2, 4}}})[0]);
  const auto& g = tg.g;
  CHECK(runtime::exec_dtype(g.value(y), DType::BF16) == DType::BF16);
  CHECK(runtime::exec_dtype(g.value(y), DType::F32) == DType::F32);
  CHECK(runtime::exec_dtype(g.value(x), DType::BF16) == DType::F32);    // data from the user
  CHECK(runtime::exec_dtype(g.value(w), DType::BF16) == DType::F32);    // master weights
  CHECK(runtime::exec_dtype(g.value(c), DType::BF16) == DType::F32);    // constants
  CHECK(runtime::exec_dtype(g.value(ids), DType::BF16) == DType::I64);
  runtime::CpuBackend be(1);
  runtime::ExecutorOptions eo;
  eo.compute_dtype = DType::BF16;
  try {
    runtime::StageExecutor ex(tg.g, be, eo);
    FAIL("the cpu backend accepted bf16 compute");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::BadInput);
    CHECK(std::string(e.what()).find("the cpu backend computes in float32 only") != std::string::npos);
  }
}

TEST_CASE("the memory plan covers what the CPU backend measures, for one and two microbatches in flight") {
  for (std::string name : {"mlp", "cnn", "gpt"}) {
    CAPTURE(name);
    graph::Graph g = load_sample(name, 4);
    runtime::CpuBackend be(1);
    runtime::StageExecutor ex(g, be);
    auto [x, y] = batch_for(be, g);
    const runtime::StageMemoryPlan& mp = ex.memory_plan();
    // the resident part: parameters and their gradients as planned
    int64_t params = 0;
    for (int p : ex.parameters()) params += g.value(p).bytes();
    CHECK(mp.parameter_bytes == params);
    CHECK(mp.gradient_bytes == params);
    // one microbatch: forward, loss, backward
    ex.reset_peak();
    {
      auto out = ex.forward(0, {&x, 1});
      auto l = runtime::cross_entropy(be, out[0], y);
      ex.backward(0, {&l.grad, 1});
    }
    const int64_t one = ex.peak_bytes();
    // the stash the plan counts is the one the executor keeps
    ex.reset_peak();
    ex.forward(1, {&x, 1});
    CHECK(ex.peak_stash_bytes() == mp.stash_bytes);
    ex.drop(1);
    // two in flight (1F1B's warm-up: two forwards, then their backwards)
    ex.reset_peak();
    {
      std::vector<Tensor> grads;
      for (int mb = 0; mb < 2; ++mb) {
        auto out = ex.forward(mb, {&x, 1});
        grads.push_back(runtime::cross_entropy(be, out[0], y).grad);
      }
      for (int mb = 0; mb < 2; ++mb) ex.backward(mb, {&grads[static_cast<size_t>(mb)], 1});
    }
    const int64_t two = ex.peak_bytes();
    fmt::print("{}: measured peak above resident {} B (1 microbatch), {} B (2 in flight); planned arena {} B, {} B "
               "(stash {} B per microbatch)\n",
               name, one, two, mp.arena_bytes(1), mp.arena_bytes(2), mp.stash_bytes);
    CHECK(one <= mp.arena_bytes(1));
    CHECK(two <= mp.arena_bytes(2));
    // and not wildly more than needed: 16 MiB and 10 % of slack, a factor 2 of estimate
    CHECK(mp.arena_bytes(1) <= 2 * one + (int64_t{20} << 20));
  }
}

TEST_CASE("smp-run: a CUDA or bf16 run this machine cannot do is one line naming rank, stage and device") {
  fs::path dir = fs::path(SMP_TEST_DATA) / "test_backends";
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string model = (fs::path(SMP_SOURCE_DIR) / "sample_models" / "mlp.onnx").string();
  std::string out;
  for (std::string dtype : {"fp32", "bf16"}) {
    REQUIRE(run(fmt::format("{}/smp-plan {} --batch-size 8 --stages 2 --microbatches 2 --cluster {}/clusters/local-cpu.json --dtype {} -o {}/{}.json",
                            SMP_BIN_DIR, model, SMP_SOURCE_DIR, dtype, dir.string(), dtype),
                &out) == 0);
  }
  // bf16 on the CPU
  CHECK(run(fmt::format("{}/smp-run {}/bf16.json --steps 1", SMP_BIN_DIR, dir.string()), &out) == 2);
  CHECK(out.find("the plan trains in bf16 (smp-plan --dtype bf16), which needs the cuda backend") != std::string::npos);
  CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  if (runtime::cuda_device_count() == 0) {
    // --backend cuda without a device: one line, before any worker starts
    CHECK(run(fmt::format("{}/smp-run {}/fp32.json --steps 1 --backend cuda", SMP_BIN_DIR, dir.string()), &out) == 2);
    CHECK(out.rfind("error: rank 0 (stage 0) on cuda:0: ", 0) == 0);
    CHECK(std::count(out.begin(), out.end(), '\n') == 1);
  } else {
    // a device index that does not exist
    const int n = runtime::cuda_device_count();
    CHECK(run(fmt::format("{}/smp-run {}/fp32.json --steps 1 --backend cuda --device {}", SMP_BIN_DIR, dir.string(), n), &out) == 2);
    CHECK(out.find(fmt::format("on cuda:{}: no such device", n)) != std::string::npos);
  }
}
