// Training steps per second of smp's CPU engine and of PyTorch (python3-torch) on the sample
// models (mlp, cnn, gpt) and the models of scripts/bench_models.py (mha, gated_mlp, bn_cnn,
// resnet18, lstm), batch 32, same thread count (1 and 2); prints the ratio smp / torch, per second of
// wall-clock and per second of CPU time (the process's, all its threads: on a loaded machine the
// one-thread CPU-time ratio is the steadier figure).
//
// usage: runtime_bench [--models mlp,cnn,gpt,...] [--threads 1,2] [--batch 32] [--steps 20] [--no-torch] [--profile]
#include "graph/loader.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"
#include "runtime/loss.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <sstream>
#include <string>
#include <vector>

using namespace smp;

namespace {

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(item);
  return out;
}

bool is_sample(const std::string& name) { return name == "mlp" || name == "cnn" || name == "gpt"; }

// A bundled sample, or a model of scripts/bench_models.py exported once into build/bench-models/.
std::filesystem::path model_path(const std::string& name) {
  if (is_sample(name)) return std::filesystem::path(SMP_SOURCE_DIR) / "sample_models" / (name + ".onnx");
  std::filesystem::path p = std::filesystem::path(SMP_BINARY_DIR) / "bench-models" / (name + ".onnx");
  if (!std::filesystem::exists(p)) {
    std::filesystem::create_directories(p.parent_path());
    std::string cmd = fmt::format("{} {}/scripts/bench_models.py export {} {} 2>/dev/null", SMP_PYTHON, SMP_SOURCE_DIR, name,
                                  p.string());
    if (std::system(cmd.c_str()) != 0 || !std::filesystem::exists(p)) {
      fmt::print(stderr, "error: {}: the export failed ({})\n", name, cmd);
      std::exit(1);
    }
  }
  return p;
}

struct Rate {
  double wall = 0, cpu = 0;  // steps per second of wall-clock and of the process's CPU time
};

double cpu_now_s() {
  timespec ts{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

Rate smp_steps_per_s(const std::string& name, int threads, int batch, int steps, bool profile) {
  graph::LoadOptions lo;
  lo.batch_size = batch;
  lo.load_weights = true;
  graph::Graph g = graph::load_graph(model_path(name), lo);
  runtime::CpuBackend be(threads);
  runtime::ExecutorOptions eo;
  eo.profile = profile;
  runtime::StageExecutor ex(g, be, eo);
  const graph::Value& in = g.value(g.inputs[0]);
  const graph::Value& out = g.value(g.outputs[0]);
  std::mt19937 rng(0);
  runtime::Tensor x;
  if (in.dtype == DType::I64) {
    std::vector<int64_t> v(static_cast<size_t>(in.numel()));
    for (auto& t : v) t = static_cast<int64_t>(rng() % 4096);
    x = be.from_host(DType::I64, in.shape, v.data());
  } else {
    std::normal_distribution<float> d;
    std::vector<float> v(static_cast<size_t>(in.numel()));
    for (auto& t : v) t = d(rng);
    x = be.from_host(DType::F32, in.shape, v.data());
  }
  Shape ls(out.shape.begin(), out.shape.end() - 1);
  std::vector<int64_t> lab(static_cast<size_t>(numel(ls)));
  for (auto& t : lab) t = static_cast<int64_t>(rng() % static_cast<uint32_t>(out.shape.back()));
  runtime::Tensor y = be.from_host(DType::I64, ls, lab.data());
  auto step = [&] {
    ex.zero_grad();
    auto o = ex.forward(0, {&x, 1});
    auto l = runtime::cross_entropy(be, o[0], y);
    ex.backward(0, {&l.grad, 1});
    ex.sgd_step(0.01f);
  };
  for (int i = 0; i < 3; ++i) step();
  auto t0 = std::chrono::steady_clock::now();
  double c0 = cpu_now_s();
  for (int i = 0; i < steps; ++i) step();
  double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  double dc = cpu_now_s() - c0;
  if (profile) {
    fmt::print("  {} x{} threads: per step {:.1f} ms ({:.1f} ms of CPU time); kernel time per op type (ms per step, forward + backward):\n",
               name, threads, 1e3 * dt / steps, 1e3 * dc / steps);
    for (const auto& p : ex.profile())
      fmt::print("    {:<22} {:8.2f} + {:8.2f}\n", p.op, 1e3 * p.forward_s / (steps + 3), 1e3 * p.backward_s / (steps + 3));
  }
  return {steps / dt, steps / dc};
}

Rate torch_steps_per_s(const std::string& name, int threads, int batch, int steps) {
  std::string cmd = fmt::format("OMP_NUM_THREADS={} {} {}/scripts/{} bench {} --threads {} --batch {} --steps {}", threads,
                                SMP_PYTHON, SMP_SOURCE_DIR, is_sample(name) ? "torch_reference.py" : "bench_models.py", name,
                                threads, batch, steps);
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return {};
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  if (pclose(p) != 0) return {};
  auto j = nlohmann::json::parse(out);
  return {j["steps_per_s"].get<double>(), j.value("steps_per_cpu_s", 0.0)};
}

}  // namespace

int main(int argc, char** argv) {
  // PyTorch's processes use glibc's malloc: ask it for huge pages, as this program does through
  // jemalloc (docs/engine.md, "Memory and process start").
  ::setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1", 0);
  std::vector<std::string> models{"mlp", "cnn", "gpt"};
  std::vector<int> threads{1, 2};
  int batch = 32, steps = 20;
  bool torch = true, profile = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&] { return i + 1 < argc ? std::string(argv[++i]) : std::string(); };
    if (a == "--models") models = split(next());
    else if (a == "--threads") { threads.clear(); for (auto& t : split(next())) threads.push_back(std::stoi(t)); }
    else if (a == "--batch") batch = std::stoi(next());
    else if (a == "--steps") steps = std::stoi(next());
    else if (a == "--no-torch") torch = false;
    else if (a == "--profile") profile = true;
    else { fmt::print(stderr, "usage: runtime_bench [--models mlp,cnn,gpt,mha,gated_mlp,bn_cnn,resnet18] [--threads 1,2] [--batch 32] [--steps 20] [--no-torch] [--profile]\n"); return 2; }
  }
  fmt::print("training steps/s, batch {}: smp cpu engine vs PyTorch {}\n", batch, torch ? "(python3-torch)" : "(skipped)");
  fmt::print("{:<10} {:>7} {:>12} {:>12} {:>8} {:>12} {:>12} {:>8}\n", "model", "threads", "smp", "torch", "ratio", "smp/cpu-s",
             "torch/cpu-s", "ratio");
  for (const auto& m : models)
    for (int t : threads) {
      Rate s = smp_steps_per_s(m, t, batch, steps, profile);
      Rate p = torch ? torch_steps_per_s(m, t, batch, steps) : Rate{};
      auto ratio = [](double a, double b) { return b > 0 ? fmt::format("{:.2f}", a / b) : std::string("-"); };
      fmt::print("{:<10} {:>7} {:>12.2f} {:>12.2f} {:>8} {:>12.2f} {:>12.2f} {:>8}\n", m, t, s.wall, p.wall, ratio(s.wall, p.wall), s.cpu,
                 p.cpu, ratio(s.cpu, p.cpu));
      std::fflush(stdout);
    }
  return 0;
}
