#include "train/calibrate.hpp"

#include "comm/launch.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "core/version.hpp"
#include "cost/cost_model.hpp"
#include "graph/builder.hpp"
#include "graph/op_registry.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"
#include "train/machine_probe.hpp"
#include "train/profiler.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <functional>
#include <random>
#include <unistd.h>

namespace smp::train {

namespace fs = std::filesystem;
using cost::KernelFamily;
using graph::GraphBuilder;
using runtime::Tensor;
using clk = std::chrono::steady_clock;

namespace {

std::vector<float> randoms(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (auto& x : v) x = d(rng);
  return v;
}

// One measured kernel: a graph whose last node is the kernel, its activation inputs made from
// the graph input by a scale with a parameter (so that they need gradients, as inside a model).
struct Case {
  KernelFamily family;
  GraphBuilder b;
  int64_t batch = 1;  // the leading dimension of the graph input (the cost model's batch)
  int kernel = -1;    // node index
};

// x[shape] (input) -> Mul(x, s) with s a parameter [1]: an activation that needs a gradient.
int activation(GraphBuilder& b, const std::string& name, const Shape& shape) {
  const int x = b.input(name + "_x", DType::F32, shape);
  const int s = b.param(name + "_s", {1}, {0.5f});
  return b.node("Mul", {x, s}, {{name, DType::F32, shape}})[0];
}

Case make_case(KernelFamily f, const std::vector<int64_t>& d) {
  Case c;
  c.family = f;
  GraphBuilder& b = c.b;
  auto out = [&](const std::string& op, std::vector<int> ins, const Shape& s, std::map<std::string, graph::Attribute> at = {}) {
    const int y = b.node(op, std::move(ins), {{"y", DType::F32, s}}, std::move(at))[0];
    b.output(y);
    c.kernel = static_cast<int>(b.g.nodes.size()) - 1;
  };
  switch (f) {
    case KernelFamily::Gemm: {  // [M, K] x [K, N]
      const int64_t M = d[0], K = d[1], N = d[2];
      const int a = activation(b, "a", {M, K});
      const int w = b.param("w", {K, N}, randoms(K * N, 7));
      out("MatMul", {a, w}, {M, N});
      c.batch = M;
      break;
    }
    case KernelFamily::BatchedMatMul: {  // [B, H, T, D] x [B, H, D, T]
      const int64_t B = d[0], H = d[1], T = d[2], D = d[3];
      const int q = activation(b, "q", {B, H, T, D});
      const int k = activation(b, "k", {B, H, D, T});
      out("MatMul", {q, k}, {B, H, T, T});
      c.batch = B;
      break;
    }
    case KernelFamily::Conv: {  // [N, C, H, W] * [Co, C, 3, 3], pads 1
      const int64_t N = d[0], C = d[1], H = d[2], W = d[3], Co = d[4];
      const int x = activation(b, "x", {N, C, H, W});
      const int w = b.param("w", {Co, C, 3, 3}, randoms(Co * C * 9, 7));
      const int bias = b.param("bias", {Co}, randoms(Co, 8));
      out("Conv", {x, w, bias}, {N, Co, H, W},
          {{"kernel_shape", graph::attr_ints({3, 3})}, {"pads", graph::attr_ints({1, 1, 1, 1})}});
      c.batch = N;
      break;
    }
    case KernelFamily::Elementwise:
    case KernelFamily::Transcendental: {  // [R, 256] elementwise
      const int64_t R = d[0];
      const int a = activation(b, "a", {R, 256});
      if (f == KernelFamily::Elementwise) {
        const int a2 = activation(b, "a2", {R, 256});
        out("Add", {a, a2}, {R, 256});
      } else {
        out("Erf", {a}, {R, 256});
      }
      c.batch = R;
      break;
    }
    case KernelFamily::Norm:
    case KernelFamily::Softmax:
    case KernelFamily::Reduce: {  // [R, C] over the last axis
      const int64_t R = d[0], C = d[1];
      const int a = activation(b, "a", {R, C});
      if (f == KernelFamily::Norm) {
        const int g = b.param("gamma", {C}, randoms(C, 3));
        const int beta = b.param("beta", {C}, randoms(C, 4));
        out("LayerNormalization", {a, g, beta}, {R, C}, {{"axis", graph::attr_i(-1)}});
      } else if (f == KernelFamily::Softmax) {
        out("Softmax", {a}, {R, C}, {{"axis", graph::attr_i(-1)}});
      } else {
        out("ReduceMean", {a}, {R, 1}, {{"axes", graph::attr_ints({-1})}, {"keepdims", graph::attr_i(1)}});
      }
      c.batch = R;
      break;
    }
    case KernelFamily::Pool: {  // 2x2 max pooling of [N, C, H, W]
      const int64_t N = d[0], C = d[1], H = d[2];
      const int x = activation(b, "x", {N, C, H, H});
      out("MaxPool", {x}, {N, C, H / 2, H / 2},
          {{"kernel_shape", graph::attr_ints({2, 2})}, {"strides", graph::attr_ints({2, 2})}});
      c.batch = N;
      break;
    }
    case KernelFamily::Transpose: {  // [B, T, H, D] -> [B, H, T, D]
      const int64_t B = d[0], T = d[1], H = d[2], D = d[3];
      const int x = activation(b, "x", {B, T, H, D});
      out("Transpose", {x}, {B, H, T, D}, {{"perm", graph::attr_ints({0, 2, 1, 3})}});
      c.batch = B;
      break;
    }
    case KernelFamily::Movement: {  // concat of two [R, 256] along the last axis
      const int64_t R = d[0];
      const int a = activation(b, "a", {R, 256});
      const int a2 = activation(b, "a2", {R, 256});
      out("Concat", {a, a2}, {R, 512}, {{"axis", graph::attr_i(-1)}});
      c.batch = R;
      break;
    }
    case KernelFamily::kCount:
      break;
  }
  for (auto& n : c.b.g.nodes) n.cost = graph::node_cost(c.b.g, n);
  return c;
}

// The sizes measured per family (each a case's dimensions), small to large: from a few
// microseconds (the per-call floor) to tens of milliseconds on one core. The GEMMs all have at
// least 256 rows (M); fewer rows cost more per FLOP, measured apart (kGemmRows).
std::vector<std::pair<KernelFamily, std::vector<std::vector<int64_t>>>> suite() {
  using F = KernelFamily;
  return {
      {F::Gemm, {{256, 16, 8}, {256, 64, 32}, {256, 128, 128}, {256, 256, 512}, {256, 512, 512}, {512, 256, 2048}, {512, 1024, 1024}}},
      {F::BatchedMatMul, {{2, 2, 16, 16}, {4, 4, 32, 16}, {8, 4, 64, 32}, {8, 8, 128, 32}, {8, 8, 256, 64}}},
      {F::Conv, {{2, 3, 16, 16, 8}, {4, 16, 16, 16, 16}, {8, 16, 32, 32, 32}, {8, 64, 16, 16, 64}, {16, 64, 16, 16, 128}}},
      {F::Elementwise, {{4}, {64}, {1024}, {8192}, {32768}}},
      {F::Transcendental, {{4}, {64}, {1024}, {8192}, {32768}}},
      {F::Norm, {{8, 64}, {64, 256}, {256, 512}, {1024, 768}, {4096, 1024}}},
      {F::Softmax, {{8, 64}, {64, 256}, {256, 512}, {1024, 768}, {4096, 1024}}},
      {F::Reduce, {{8, 64}, {64, 256}, {256, 512}, {1024, 768}, {4096, 1024}}},
      {F::Pool, {{2, 8, 16}, {4, 16, 32}, {8, 32, 32}, {16, 64, 32}}},
      {F::Transpose, {{1, 16, 4, 16}, {4, 64, 4, 16}, {8, 128, 8, 32}, {16, 256, 8, 64}, {32, 512, 8, 64}}},
      {F::Movement, {{4}, {64}, {1024}, {8192}, {32768}}},
  };
}

// GEMMs of [M, 512] x [512, 512] for the rows factor; the last (most rows) is the reference.
constexpr int64_t kGemmRows[] = {1, 2, 4, 8, 16, 32, 64, 128, 256};

struct Timed {
  double work_f = 0, work_b = 0, f_s = 0, b_s = 0;
};

// Forward and backward of the case's kernel as a one-node stage, each the median of at least 3
// repeats after a warm-up, until the budget; the work as the cost model counts it.
Timed time_case(const Case& c, runtime::Backend& be, double budget_s, uint64_t seed) {
  const graph::Graph& g = c.b.g;
  cost::CostOptions co;
  co.loss = false;
  cost::GraphCost gc(g, c.batch, co);
  const cost::NodeModel& m = gc.node(c.kernel);
  const double u = static_cast<double>(c.batch);
  Timed t;
  const bool flops = cost::family_counts_flops(c.family);
  t.work_f = flops ? m.fwd.flops.at(u) : m.fwd.bytes.at(u);
  cost::Pass bw = m.bwd_in;
  bw.flops += m.bwd_w.flops;
  bw.bytes += m.bwd_w.bytes;
  t.work_b = flops ? bw.flops.at(u) : bw.bytes.at(u);

  runtime::StageExecutor ex(g, std::vector<int>{c.kernel}, be);
  std::vector<Tensor> ins;
  uint32_t k = static_cast<uint32_t>(seed);
  for (int v : ex.inputs()) ins.push_back(be.from_host(DType::F32, g.value(v).shape, randoms(g.value(v).numel(), ++k).data()));
  std::vector<Tensor> dout;
  for (int v : ex.outputs()) dout.push_back(be.from_host(DType::F32, g.value(v).shape, randoms(g.value(v).numel(), ++k).data()));
  std::vector<double> fs, bs;
  auto t_start = clk::now();
  for (int rep = 0;; ++rep) {
    auto t0 = clk::now();
    ex.forward(0, ins);
    const double f = seconds_since(t0);
    t0 = clk::now();
    ex.backward(0, dout);
    const double b = seconds_since(t0);
    if (rep == 0) {  // warm-up (first allocations, caches)
      t_start = clk::now();
      continue;
    }
    fs.push_back(f), bs.push_back(b);
    if (fs.size() >= 3 && seconds_since(t_start) >= budget_s) break;
    if (fs.size() >= 2000) break;
  }
  // The median, as smp-run reports a run's steps (the lower quartile used before priced every
  // kernel at the machine's fast moments, and plans came out 5-15 % fast). A calibration taken on
  // a loaded machine says so in the plan (its load average is recorded).
  t.f_s = quantile(fs, 0.5);
  t.b_s = quantile(bs, 0.5);
  return t;
}

// A small model for the contention copies: compute-bound (a chain of GEMMs) or memory-bound
// (elementwise, normalisation and softmax over arrays larger than the caches).
graph::Graph contention_graph(bool compute) {
  GraphBuilder b;
  const int64_t R = compute ? 128 : 2048, C = compute ? 512 : 1024;
  const int x = b.input("x", DType::F32, {R, C});
  int h = x;
  for (int i = 0; i < 3; ++i) {
    const std::string n = std::to_string(i);
    if (compute) {
      const int w = b.param("w" + n, {C, C}, randoms(C * C, 11 + static_cast<uint32_t>(i)));
      h = b.node("MatMul", {h, w}, {{"h" + n, DType::F32, {R, C}}})[0];
    } else {
      const int s = b.param("s" + n, {C}, randoms(C, 11 + static_cast<uint32_t>(i)));
      h = b.node("Mul", {h, s}, {{"m" + n, DType::F32, {R, C}}})[0];
      h = b.node("Softmax", {h}, {{"h" + n, DType::F32, {R, C}}}, {{"axis", graph::attr_i(-1)}})[0];
    }
  }
  b.output(h);
  for (auto& n : b.g.nodes) n.cost = graph::node_cost(b.g, n);
  return b.g;
}

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) {
      auto p = line.find(':');
      if (p != std::string::npos) return line.substr(line.find_first_not_of(' ', p + 1));
    }
  return {};
}

std::string utc_now() {
  std::time_t t = std::time(nullptr);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

cost::KernelCalibration calibrate_cpu(const CalibrateOptions& o, const Note& note) {
  auto say = [&](const std::string& s) {
    if (note) note(s);
  };
  const int cores = std::max(1, comm::online_cores());
  cost::KernelCalibration cal;
  cal.cpu = cpu_model();
  cal.cores = cores;
  cal.measured_at = utc_now();
  if (std::ifstream la("/proc/loadavg"); la) la >> cal.load_average;
  cal.smp_version = SMP_VERSION;

  // 1. Contention, in forked copies before this process starts a thread pool.
  cal.contention_compute = {1.0};
  cal.contention_memory = {1.0};
  if (cores > 1) {
    say(fmt::format("calibrating this machine's kernels (once; cached): 1 to {} concurrent copies", cores));
    cal.contention_compute = contention_slowdown(contention_graph(true), cores, 0.04, 3, o.seed);
    cal.contention_memory = contention_slowdown(contention_graph(false), cores, 0.04, 3, o.seed);
  }

  // 2. Every kernel family at every size, per thread count.
  std::vector<int> threads = o.threads;
  if (threads.empty()) {
    threads = {1};
    if (cores > 1) threads.push_back(cores);
  }
  const auto families = suite();
  // Every case, then the rows factor's, in one order; the whole list timed `rounds` times over and
  // each case's median kept, so that a phase of the machine running slow (on a shared VM its speed
  // moves by 20-40 % within seconds) reaches one round of each case, not all of one family.
  std::vector<std::pair<KernelFamily, std::vector<int64_t>>> cases;
  for (const auto& [fam, sizes] : families)
    for (const auto& d : sizes) cases.emplace_back(fam, d);
  const size_t first_rows = cases.size();
  for (int64_t m : kGemmRows) cases.push_back({KernelFamily::Gemm, {m, 512, 512}});
  const int rounds = std::max(1, o.rounds);
  for (int t : threads) {
    say(fmt::format("calibrating this machine's kernels: {} families with {} thread(s), {} rounds", families.size(), t, rounds));
    runtime::CpuBackend be(t);
    cost::CalibrationTable tab;
    tab.threads = t;
    std::vector<std::vector<Timed>> timed(cases.size());
    for (int r = 0; r < rounds; ++r)
      for (size_t i = 0; i < cases.size(); ++i)
        timed[i].push_back(time_case(make_case(cases[i].first, cases[i].second), be, o.budget_s, o.seed + 100 * (i + 1)));
    std::vector<Timed> med(cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      std::vector<double> f, b;
      for (const auto& x : timed[i]) f.push_back(x.f_s), b.push_back(x.b_s);
      med[i] = timed[i].front();
      med[i].f_s = quantile(f, 0.5);
      med[i].b_s = quantile(b, 0.5);
    }
    for (size_t i = 0; i < first_rows; ++i) {
      auto& curves = tab.curves[static_cast<size_t>(cases[i].first)];
      const Timed& tm = med[i];
      if (tm.work_f > 0 && tm.f_s > 0) curves[0].points.push_back({tm.work_f, tm.f_s});
      if (tm.work_b > 0 && tm.b_s > 0) curves[1].points.push_back({tm.work_b, tm.b_s});
    }
    for (auto& fam : tab.curves)
      for (auto& cv : fam)
        std::sort(cv.points.begin(), cv.points.end(), [](const auto& a, const auto& b) { return a.work < b.work; });
    // The rows factor: seconds per FLOP with M rows over seconds per FLOP with the most.
    {
      const std::vector<Timed> by_rows(med.begin() + static_cast<std::ptrdiff_t>(first_rows), med.end());
      const Timed& ref = by_rows.back();
      for (size_t i = 0; i < by_rows.size(); ++i) {
        const Timed& tm = by_rows[i];
        const double rows = static_cast<double>(kGemmRows[i]);
        if (tm.work_f > 0 && ref.work_f > 0 && ref.f_s > 0)
          tab.gemm_rows[0].points.emplace_back(rows, std::max(1.0, (tm.f_s / tm.work_f) / (ref.f_s / ref.work_f)));
        if (tm.work_b > 0 && ref.work_b > 0 && ref.b_s > 0)
          tab.gemm_rows[1].points.emplace_back(rows, std::max(1.0, (tm.b_s / tm.work_b) / (ref.b_s / ref.work_b)));
      }
    }
    const auto& gemm = tab.curves[static_cast<size_t>(KernelFamily::Gemm)][0].points;
    if (t == 1 && !gemm.empty()) cal.gemm_flops = gemm.back().work / gemm.back().seconds;
    const auto& ew = tab.curves[static_cast<size_t>(KernelFamily::Elementwise)][0].points;
    if (!ew.empty()) cal.memory_bandwidth = std::max(cal.memory_bandwidth, ew.back().work / ew.back().seconds);
    cal.tables.push_back(std::move(tab));
  }

  // 3. The optimizer step per parameter (2 M parameters: far beyond the caches, as real stages).
  {
    GraphBuilder b;
    b.param("w", {2048, 1024}, std::vector<float>(2048 * 1024, 0.01f));
    const auto per = optimizer_step_per_parameter(b.g, 0.05);
    for (auto& tab : cal.tables) tab.optimizer_s_per_parameter = per;
  }

  // 4. The link between two worker processes.
  if (!o.pingpong_program.empty() && fs::exists(o.pingpong_program)) {
    say("calibrating the link between two local worker processes (mpirun)");
    try {
      auto pp = measure_link(o.pingpong_program, 0.3);
      cal.link.latency = pp["latency_s"].get<double>();
      cal.link.bandwidth = pp["bandwidth"].get<double>();
      cal.link.allreduce_bandwidth = pp.value("allreduce_bandwidth", 0.0);
    } catch (const Error& e) {
      say(fmt::format("note: the link was not measured ({}); its estimate stays", e.what()));
    }
    // 5. Twice as many workers as cores: a ring of worker processes passing tokens, each chain
    //    ~5 ms, as the CPU work of cores then 2 x cores busy workers; against the same ring with a
    //    core each.
    if (cores > 1) {
      say(fmt::format("calibrating {} then {} worker processes on the {} cores (mpirun)", cores, 2 * cores, cores));
      try {
        constexpr int iters = 40;
        const auto own = measure_ring(o.pingpong_program, cores, cores, iters);
        const double per_op = own["cpu_per_op_s"].get<double>();
        const double ideal = 2.0 * cores * iters * per_op / cores;  // 2 x cores ranks' chains over the cores
        for (int tokens : {cores, 2 * cores}) {
          const auto over = measure_ring(o.pingpong_program, 2 * cores, tokens, iters);
          cal.oversubscription.push_back(std::max(1.0, over["wall_s"].get<double>() / ideal));
        }
      } catch (const Error& e) {
        cal.oversubscription.clear();
        say(fmt::format("note: workers beyond the cores were not measured ({})", e.what()));
      }
    }
  }
  return cal;
}

fs::path calibration_cache_path() {
  fs::path base;
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) base = x;
  else if (const char* h = std::getenv("HOME"); h && *h) base = fs::path(h) / ".cache";
  else base = fs::temp_directory_path();
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  const std::string key = fmt::format("{}|{}", cpu_model(), comm::online_cores());
  const size_t h = std::hash<std::string>{}(key);
  return base / "smp" / fmt::format("calibration-{}-{:08x}-{}.json", host, static_cast<uint32_t>(h), SMP_VERSION);
}

std::shared_ptr<const cost::KernelCalibration> load_or_calibrate(const CalibrateOptions& o, bool refresh, const Note& note) {
  const fs::path path = calibration_cache_path();
  if (!refresh && fs::exists(path)) {
    try {
      auto cal = std::make_shared<cost::KernelCalibration>(cost::calibration_from_json(read_json(path), path.string()));
      if (cal->cores == comm::online_cores() && cal->smp_version == SMP_VERSION) {
        cal->source = path.string();
        return cal;
      }
    } catch (const Error& e) {
      if (note) note(fmt::format("note: the cached calibration is unusable ({}); measuring again", e.what()));
    }
  }
  auto cal = std::make_shared<cost::KernelCalibration>(calibrate_cpu(o, note));
  try {
    fs::create_directories(path.parent_path());
    write_file_atomic(path, cost::to_json(*cal).dump(1) + "\n");
    cal->source = path.string();
  } catch (const std::exception& e) {
    if (note) note(fmt::format("note: the calibration could not be cached ({})", e.what()));
    cal->source = "measured now, not cached";
  }
  return cal;
}

}  // namespace smp::train
