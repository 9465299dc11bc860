// Training on the CUDA backend (needs a CUDA device; skipped without one): the sample models
// (exported from PyTorch by scripts/sample_models.py) for 20 SGD steps on the same batches as the
// CPU, float32 within 1e-4 relative of the CPU's losses and bf16 within 2 %, repeated bit for bit;
// a GPT step that allocates nothing on the device once the first step ran; the optimizers against
// the host's update; the errors a user meets (a missing device, out of memory at load, an op the
// backend lacks).
#include <doctest/doctest.h>

#include "backend_compare.hpp"
#include "tiny_graph.hpp"

#include "graph/loader.hpp"
#include "runtime/backends.hpp"
#include "runtime/loss.hpp"
#include "train/optimizer.hpp"

#include <fmt/format.h>

#include <random>

using namespace smp;
using namespace smp::test;
using runtime::Tensor;

namespace {

std::tuple<std::string, DType, Shape> F(const std::string& n, Shape s) { return {n, DType::F32, s}; }

graph::Graph load_sample(const std::string& name, int64_t batch) {
  graph::LoadOptions lo;
  lo.batch_size = batch;
  lo.load_weights = true;
  return graph::load_graph(source_dir() / "sample_models" / (name + ".onnx"), lo);
}

// Host bytes of step k's batch: inputs and labels, the same for every backend.
struct HostBatch {
  DType xdt;
  Shape xs, ys;
  std::vector<char> x;
  std::vector<int64_t> y;
};

HostBatch batch_of(const graph::Graph& g, uint32_t seed) {
  const graph::Value& in = g.value(g.inputs[0]);
  const graph::Value& out = g.value(g.outputs[0]);
  HostBatch b;
  b.xdt = in.dtype;
  b.xs = in.shape;
  b.ys = Shape(out.shape.begin(), out.shape.end() - 1);
  std::mt19937 rng(seed);
  if (in.dtype == DType::I64) {
    std::vector<int64_t> v(static_cast<size_t>(in.numel()));
    for (auto& t : v) t = static_cast<int64_t>(rng() % 4096);
    b.x.assign(reinterpret_cast<const char*>(v.data()), reinterpret_cast<const char*>(v.data() + v.size()));
  } else {
    auto v = random_floats(static_cast<size_t>(in.numel()), seed);
    b.x.assign(reinterpret_cast<const char*>(v.data()), reinterpret_cast<const char*>(v.data() + v.size()));
  }
  b.y.resize(static_cast<size_t>(numel(b.ys)));
  for (auto& t : b.y) t = static_cast<int64_t>(rng() % static_cast<uint32_t>(out.shape.back()));
  return b;
}

// Losses of `steps` SGD steps on `be` (compute dtype `dt`).
std::vector<double> train_steps(runtime::Backend& be, const graph::Graph& g, DType dt, int steps, double lr,
                          runtime::MemoryStats* after_first = nullptr, runtime::MemoryStats* at_end = nullptr) {
  runtime::ExecutorOptions eo;
  eo.compute_dtype = dt;
  runtime::StageExecutor ex(g, be, eo);
  std::vector<double> losses;
  for (int k = 0; k < steps; ++k) {
    HostBatch b = batch_of(g, 100 + static_cast<uint32_t>(k));
    Tensor x = be.from_host(b.xdt, b.xs, b.x.data());
    Tensor y = be.from_host(DType::I64, b.ys, b.y.data());
    ex.zero_grad();
    auto out = ex.forward(0, {&x, 1});
    auto l = runtime::cross_entropy(be, out[0], y);
    ex.backward(0, {&l.grad, 1});
    ex.sgd_step(static_cast<float>(lr));
    losses.push_back(l.loss);
    if (k == 0 && after_first) *after_first = be.memory();
  }
  be.synchronize();
  if (at_end) *at_end = be.memory();
  CHECK(ex.pending() == 0);
  return losses;
}

}  // namespace

TEST_CASE("sample models: 20 SGD steps on CUDA follow the CPU (float32 within 1e-4, bf16 within 2 %), bit for bit twice") {
  const int steps = 20, batch = 8;
  const double lr = 0.05;
  for (std::string name : {"mlp", "cnn", "gpt"}) {
    CAPTURE(name);
    graph::Graph g = load_sample(name, batch);
    runtime::CpuBackend cpu(4);
    auto cuda = runtime::make_backend("cuda");
    const auto want = train_steps(cpu, g, DType::F32, steps, lr);
    const auto f32 = train_steps(*cuda, g, DType::F32, steps, lr);
    const auto f32_again = train_steps(*cuda, g, DType::F32, steps, lr);
    const auto bf16 = train_steps(*cuda, g, DType::BF16, steps, lr);
    const auto bf16_again = train_steps(*cuda, g, DType::BF16, steps, lr);
    double worst32 = 0, worst16 = 0;
    for (int k = 0; k < steps; ++k) {
      INFO(fmt::format("{} step {}: cpu {:.8f} cuda f32 {:.8f} bf16 {:.8f}", name, k, want[k], f32[k], bf16[k]));
      const double r32 = std::fabs(f32[k] - want[k]) / std::fabs(want[k]);
      const double r16 = std::fabs(bf16[k] - want[k]) / std::fabs(want[k]);
      worst32 = std::max(worst32, r32);
      worst16 = std::max(worst16, r16);
      CHECK(r32 <= 1e-4);
      CHECK(r16 <= 0.02);
    }
    CHECK_MESSAGE(f32 == f32_again, "two float32 runs differ");
    CHECK_MESSAGE(bf16 == bf16_again, "two bf16 runs differ");
    CHECK(want.back() < want.front());
    fmt::print("{}: {} steps, largest relative loss difference to the CPU: float32 {:.2e}, bf16 {:.2e}\n", name, steps, worst32, worst16);
  }
}

TEST_CASE("a GPT step with a stage's memory arena: no device allocation after the first step") {
  graph::Graph g = load_sample("gpt", 8);
  for (DType dt : {DType::F32, DType::BF16}) {
    CAPTURE(dtype_name(dt));
    auto cuda = runtime::make_backend("cuda");
    runtime::MemoryStats first, end;
    train_steps(*cuda, g, dt, 6, 0.05, &first, &end);
    fmt::print("gpt {}: {} device allocation(s) by the end of step 1, {} at the end of step 6; {:.1f} MiB reserved; peak of "
               "live tensors {:.1f} MiB\n",
               dtype_name(dt), first.device_allocations, end.device_allocations, static_cast<double>(end.reserved_bytes) / (1 << 20),
               static_cast<double>(end.peak_bytes) / (1 << 20));
    CHECK(end.device_allocations == first.device_allocations);
    CHECK(end.reserved_bytes == first.reserved_bytes);
    CHECK(first.allocations > 0);
  }
  // The plan the arena was sized from covers what one microbatch needed.
  auto cuda = runtime::make_backend("cuda");
  runtime::StageExecutor ex(g, *cuda);
  HostBatch b = batch_of(g, 7);
  Tensor x = cuda->from_host(b.xdt, b.xs, b.x.data());
  Tensor y = cuda->from_host(DType::I64, b.ys, b.y.data());
  ex.reset_peak();
  auto out = ex.forward(0, {&x, 1});
  auto l = runtime::cross_entropy(*cuda, out[0], y);
  ex.backward(0, {&l.grad, 1});
  const int64_t planned = ex.memory_plan().arena_bytes(1);
  fmt::print("gpt float32: one microbatch's peak above the resident tensors {:.1f} MiB, planned arena {:.1f} MiB\n",
             static_cast<double>(ex.peak_bytes()) / (1 << 20), static_cast<double>(planned) / (1 << 20));
  CHECK(ex.peak_bytes() <= planned);
}

TEST_CASE("optimizers on the device follow the host's update within 1e-6") {
  auto cuda = runtime::make_backend("cuda");
  runtime::CpuBackend cpu(1);
  const Shape s{1000, 37};
  auto p0 = random_floats(37000, 1), g0 = random_floats(37000, 2);
  for (auto kind : {train::OptimizerKind::Sgd, train::OptimizerKind::Momentum, train::OptimizerKind::AdamW}) {
    CAPTURE(train::optimizer_name(kind));
    train::OptimizerConfig c;
    c.kind = kind;
    c.lr = 0.01;
    c.weight_decay = 0.1;
    Tensor pc = cpu.from_host(DType::F32, s, p0.data()), gc = cpu.from_host(DType::F32, s, g0.data());
    Tensor pd = cuda->from_host(DType::F32, s, p0.data()), gd = cuda->from_host(DType::F32, s, g0.data());
    train::DeviceParamState sc, sd;
    for (int k = 0; k < 5; ++k) {
      train::apply_update(c, train::lr_at(c, k), cpu, pc, gc, sc);
      train::apply_update(c, train::lr_at(c, k), *cuda, pd, gd, sd);
    }
    std::string d = compare_rel(host_values(*cuda, pd), host_values(cpu, pc), 1e-6);
    CHECK_MESSAGE(d.empty(), d);
    std::vector<Tensor> gs{gd};
    std::vector<Tensor> gh{gc};
    CHECK(std::fabs(cuda->sum_of_squares(gs) - cpu.sum_of_squares(gh)) <= 1e-9 * cpu.sum_of_squares(gh));
  }
}

TEST_CASE("failures: no such device, out of memory at load, an op without a kernel; each one clear error") {
  const int n = runtime::cuda_device_count();
  try {
    runtime::BackendOptions o;
    o.device = n + 3;
    runtime::make_backend("cuda", o);
    FAIL("a device that does not exist was opened");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::BadInput);
    CHECK(std::string(e.what()).find(fmt::format("cuda:{}: no such device", n + 3)) == 0);
  }
  // A stage whose activations cannot fit: the arena reservation at load fails, naming it.
  auto cuda = runtime::make_backend("cuda");
  {
    TinyGraph tg;
    int x = tg.input("x", DType::F32, {int64_t{1} << 40});
    tg.output(tg.node("Relu", {x}, {F("y", {int64_t{1} << 40})})[0]);
    try {
      runtime::StageExecutor ex(tg.g, *cuda);
      FAIL("a 4 TiB activation was planned");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::Failure);
      const std::string m = e.what();
      CHECK(m.find("out of GPU memory") != std::string::npos);
      CHECK(m.find("activation arena") != std::string::npos);
    }
  }
  {
    TinyGraph tg;
    int x = tg.input("x", DType::F32, {4});
    tg.output(tg.node("NoSuchOp", {x}, {F("y", {4})})[0]);
    try {
      runtime::StageExecutor ex(tg.g, *cuda);
      FAIL("an unknown op was accepted");
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::BadInput);
      CHECK(std::string(e.what()).find("op NoSuchOp is not supported by the cuda backend") != std::string::npos);
    }
  }
  // A label out of range: reported at the loss, as on the CPU.
  Tensor logits = cuda->zeros(DType::F32, {2, 5});
  std::vector<int64_t> lab{1, 7};
  Tensor y = cuda->from_host(DType::I64, {2}, lab.data());
  try {
    runtime::cross_entropy(*cuda, logits, y);
    FAIL("label 7 of 5 classes accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "labels: class 7 out of range [0, 5)");
  }
}
