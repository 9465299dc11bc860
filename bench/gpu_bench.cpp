// gpu_bench: one stage's training throughput on one device (smp's side of the GPU benchmark;
// bench/gpu_models.py is PyTorch's, on the same model, batch and precision).
//
//   gpu_bench --model gpt2s.onnx --batch 8 --dtype bf16 [--steps 10] [--warmup 3] [--backend cuda]
//
// The model comes from `gpu_models.py export` (graph only: its parameters are initialised here,
// normal(0, 0.02) for matrices, 1/sqrt(fan-in) for convolution filters, ones for 1-D weights and
// zeros for biases). A step: forward, fused softmax cross-entropy, backward, AdamW on every
// parameter; the median step after the warm-up is reported as one JSON line with the model's
// FLOPs per step (three times the forward's, from smp's cost model) and the utilisation of the
// device's dense peak.
#include "core/error.hpp"
#include "graph/loader.hpp"
#include "graph/op_registry.hpp"
#include "runtime/backends.hpp"
#include "runtime/executor.hpp"
#include "runtime/loss.hpp"
#include "train/optimizer.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>

using namespace smp;
using runtime::Tensor;

namespace {

// Dense peak FLOP/s of the device, from its name (datasheet figures; 0 when unknown).
double peak_flops(const std::string& device, const std::string& dtype) {
  struct Peak {
    const char* name;
    double fp32, tf32, bf16;
  };
  static const Peak peaks[] = {
      {"H200", 67e12, 494.5e12, 989e12}, {"H100", 67e12, 494.5e12, 989e12}, {"A100", 19.5e12, 156e12, 312e12},
      {"L40S", 91.6e12, 183e12, 366e12}, {"A10", 31.2e12, 62.5e12, 125e12},
  };
  for (const auto& p : peaks)
    if (device.find(p.name) != std::string::npos) return dtype == "bf16" ? p.bf16 : dtype == "tf32" ? p.tf32 : p.fp32;
  return 0;
}

void init_parameters(graph::Graph& g, uint32_t seed) {
  std::mt19937 rng(seed);
  for (auto& v : g.values) {
    if (v.kind != graph::ValueKind::Parameter || v.data) continue;
    SMP_CHECK(v.dtype == DType::F32, "parameter {} of {}", v.name, dtype_name(v.dtype));
    auto d = std::make_shared<graph::TensorData>();
    d->dtype = v.dtype;
    d->shape = v.shape;
    d->bytes.resize(static_cast<size_t>(v.bytes()));
    float* p = reinterpret_cast<float*>(d->bytes.data());
    const int64_t n = v.numel();
    if (v.shape.size() >= 2) {
      const double fan_in = static_cast<double>(n / std::max<int64_t>(v.shape[0], 1));
      std::normal_distribution<float> nd(0.0f, v.shape.size() >= 3 ? static_cast<float>(1.0 / std::sqrt(fan_in)) : 0.02f);
      for (int64_t i = 0; i < n; ++i) p[i] = nd(rng);
    } else {
      const bool bias = v.name.size() >= 4 && v.name.compare(v.name.size() - 4, 4, "bias") == 0;
      std::fill(p, p + n, bias ? 0.0f : 1.0f);
    }
    v.data = d;
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"gpu_bench: training throughput of one stage on one device (bench/gpu_models.py export makes the models)"};
  std::string model, dtype = "bf16", backend = "cuda";
  int64_t batch = 8;
  int steps = 10, warmup = 3, device = 0;
  app.add_option("--model", model, "ONNX file from gpu_models.py export")->required();
  app.add_option("--batch", batch, "batch size")->check(CLI::PositiveNumber);
  app.add_option("--dtype", dtype, "fp32 | tf32 | bf16")->check(CLI::IsMember({"fp32", "tf32", "bf16"}));
  app.add_option("--steps", steps, "timed steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "steps before timing")->check(CLI::NonNegativeNumber);
  app.add_option("--backend", backend, "cuda | cpu")->check(CLI::IsMember({"cuda", "cpu"}));
  app.add_option("--device", device, "CUDA device")->check(CLI::NonNegativeNumber);
  CLI11_PARSE(app, argc, argv);
  try {
    runtime::BackendOptions bo;
    bo.device = device;
    bo.tf32 = dtype == "tf32";
    auto be = runtime::make_backend(backend, bo);  // first: a missing device fails at once
    graph::LoadOptions lo;
    lo.batch_size = batch;
    graph::Graph g = graph::load_graph(model, lo);
    init_parameters(g, 1234);
    if (g.inputs.size() != 1 || g.outputs.size() != 1) throw_bad_input(model, "expected one input and one output");
    double fwd_flops = 0;
    for (const auto& n : g.nodes) fwd_flops += graph::node_cost(g, n).flops;
    runtime::ExecutorOptions eo;
    eo.compute_dtype = dtype == "bf16" ? DType::BF16 : DType::F32;
    const auto t_load = std::chrono::steady_clock::now();
    runtime::StageExecutor ex(g, *be, eo);
    const double load_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load).count();

    // one batch, on the device for every step (PyTorch's side does the same)
    const graph::Value& in = g.value(g.inputs[0]);
    const graph::Value& out = g.value(g.outputs[0]);
    std::mt19937 rng(7);
    Tensor x;
    if (in.dtype == DType::I64) {
      std::vector<int64_t> v(static_cast<size_t>(in.numel()));
      for (auto& t : v) t = static_cast<int64_t>(rng() % static_cast<uint32_t>(out.shape.back()));
      x = be->from_host(DType::I64, in.shape, v.data());
    } else {
      std::normal_distribution<float> nd;
      std::vector<float> v(static_cast<size_t>(in.numel()));
      for (auto& t : v) t = nd(rng);
      x = be->from_host(in.dtype, in.shape, v.data());
    }
    Shape ls(out.shape.begin(), out.shape.end() - 1);
    std::vector<int64_t> lab(static_cast<size_t>(numel(ls)));
    for (auto& t : lab) t = static_cast<int64_t>(rng() % static_cast<uint32_t>(out.shape.back()));
    Tensor y = be->from_host(DType::I64, ls, lab.data());

    train::OptimizerConfig oc;
    oc.kind = train::OptimizerKind::AdamW;
    oc.lr = 1e-4;
    oc.weight_decay = 0.01;
    std::map<int, train::DeviceParamState> state;
    std::vector<double> times;
    double loss = 0;
    runtime::MemoryStats after_first{};
    for (int k = 0; k < warmup + steps; ++k) {
      be->synchronize();
      const auto t0 = std::chrono::steady_clock::now();
      ex.zero_grad();
      auto o = ex.forward(0, {&x, 1});
      auto l = runtime::cross_entropy(*be, o[0], y);
      ex.backward(0, {&l.grad, 1});
      for (int p : ex.parameters()) train::apply_update(oc, oc.lr, *be, ex.parameter(p), ex.gradient(p), state[p]);
      be->synchronize();
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      loss = l.loss;
      if (!std::isfinite(loss)) throw_failure(model, fmt::format("step {}: the loss is {}", k + 1, loss));
      if (k == 0) after_first = be->memory();
      if (k >= warmup) times.push_back(dt);
    }
    std::sort(times.begin(), times.end());
    const double t = times[times.size() / 2];
    const runtime::MemoryStats m = be->memory();
    const double flops = 3.0 * fwd_flops;
    const std::string dev = be->device_name();
    const double peak = peak_flops(dev, dtype);
    const bool lm = in.dtype == DType::I64;
    nlohmann::json j{{"side", "smp"},
                     {"model", std::filesystem::path(model).stem().string()},
                     {"batch", batch},
                     {"dtype", dtype},
                     {"device", dev},
                     {"steps", steps},
                     {"step_s", t},
                     {"step_s_min", times.front()},
                     {"step_s_max", times.back()},
                     {"samples_per_s", static_cast<double>(batch) / t},
                     {"tokens_per_s", lm ? nlohmann::json(static_cast<double>(in.numel()) / t) : nlohmann::json(nullptr)},
                     {"flops_per_step", flops},
                     {"peak_flops", peak},
                     {"mfu", peak > 0 ? flops / t / peak : 0.0},
                     {"loss", loss},
                     {"load_s", load_s},
                     {"peak_bytes", m.peak_bytes},
                     {"reserved_bytes", m.reserved_bytes},
                     {"planned_arena_bytes", ex.memory_plan().arena_bytes(1)},
                     {"device_allocations_after_first_step", m.device_allocations - after_first.device_allocations}};
    std::printf("%s\n", j.dump().c_str());
    return 0;
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  }
}
