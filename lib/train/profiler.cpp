#include "train/profiler.hpp"

#include "comm/launch.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "core/version.hpp"
#include "graph/loader.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"
#include "runtime/loss.hpp"
#include "train/optimizer.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

namespace smp::train {

using nlohmann::json;
using runtime::Tensor;
using clk = std::chrono::steady_clock;

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  double f = pos - static_cast<double>(lo);
  return v[lo] * (1 - f) + v[hi] * f;
}

namespace {

// Random contents of the right dtype and shape. Integers lie in [0, limit).
class Filler {
 public:
  explicit Filler(uint64_t seed) : rng_(seed) {}
  Tensor make(runtime::Backend& be, DType dt, const Shape& shape, int64_t limit) {
    const int64_t n = smp::numel(shape);
    switch (dt) {
      case DType::F32: {
        std::vector<float> v(static_cast<size_t>(n));
        std::uniform_real_distribution<float> d(-1.0f, 1.0f);
        for (auto& x : v) x = d(rng_);
        return be.from_host(dt, shape, v.data());
      }
      case DType::F64: {
        std::vector<double> v(static_cast<size_t>(n));
        std::uniform_real_distribution<double> d(-1.0, 1.0);
        for (auto& x : v) x = d(rng_);
        return be.from_host(dt, shape, v.data());
      }
      case DType::I64: {
        std::vector<int64_t> v(static_cast<size_t>(n));
        std::uniform_int_distribution<int64_t> d(0, std::max<int64_t>(limit, 1) - 1);
        for (auto& x : v) x = d(rng_);
        return be.from_host(dt, shape, v.data());
      }
      case DType::I32: {
        std::vector<int32_t> v(static_cast<size_t>(n));
        std::uniform_int_distribution<int64_t> d(0, std::max<int64_t>(limit, 1) - 1);
        for (auto& x : v) x = static_cast<int32_t>(d(rng_));
        return be.from_host(dt, shape, v.data());
      }
      case DType::Bool:
      case DType::U8: {
        std::vector<uint8_t> v(static_cast<size_t>(n));
        std::uniform_int_distribution<int> d(0, 1);
        for (auto& x : v) x = static_cast<uint8_t>(d(rng_));
        return be.from_host(dt, shape, v.data());
      }
      default: {
        Tensor t = be.zeros(dt, shape);
        return t;
      }
    }
  }

 private:
  std::mt19937_64 rng_;
};

// Largest valid index for an integer value: the smallest Gather table dimension it indexes.
int64_t index_limit(const graph::Graph& g, int vid) {
  int64_t lim = 0;
  for (int c : g.value(vid).consumers) {
    const auto& n = g.nodes[static_cast<size_t>(c)];
    if (n.op_type != "Gather" || n.inputs.size() < 2 || n.inputs[1] != vid) continue;
    const auto& data = g.value(n.inputs[0]);
    int64_t axis = n.attr_int("axis", 0);
    if (axis < 0) axis += static_cast<int64_t>(data.shape.size());
    if (axis < 0 || axis >= static_cast<int64_t>(data.shape.size())) continue;
    int64_t d = data.shape[static_cast<size_t>(axis)];
    lim = lim == 0 ? d : std::min(lim, d);
  }
  return lim > 0 ? lim : 2;
}

bool is_float(DType d) { return d == DType::F32 || d == DType::F64; }

std::vector<Tensor> make_inputs(const graph::Graph& g, runtime::Backend& be, Filler& fill, const std::vector<int>& ids) {
  std::vector<Tensor> r;
  for (int v : ids) {
    const auto& val = g.value(v);
    r.push_back(fill.make(be, val.dtype, val.shape, index_limit(g, v)));
  }
  return r;
}

std::vector<Tensor> make_grads(const graph::Graph& g, runtime::Backend& be, Filler& fill, const std::vector<int>& ids) {
  std::vector<Tensor> r;
  for (int v : ids) {
    const auto& val = g.value(v);
    r.push_back(is_float(val.dtype) ? fill.make(be, val.dtype, val.shape, 0) : Tensor{});
  }
  return r;
}

// Loss on a float graph output as the worker applies it: cross-entropy over the last axis
// (labels < C) for rank >= 2, the value itself when it has one element, else squared error.
runtime::LossResult run_loss(runtime::Backend& be, Filler& fill, const Tensor& out) {
  if (out.numel() == 1) return runtime::scalar_loss(be, out);
  if (out.rank() >= 2) {
    Shape ls(out.shape().begin(), out.shape().end() - 1);
    Tensor labels = fill.make(be, DType::I64, ls, out.dim(-1));
    return runtime::cross_entropy(be, out, labels);
  }
  Tensor target = fill.make(be, out.dtype(), out.shape(), 0);
  return runtime::mean_squared_error(be, out, target);
}


int loss_output(const graph::Graph& g, const std::vector<int>& outputs) {
  for (int v : outputs)
    if (is_float(g.value(v).dtype)) return v;
  return -1;
}

// One step of the whole model as one stage: `depth` microbatches' forwards (each with its loss),
// then their backwards, as gpipe runs them; adds the seconds spent in each part to tf, tl, tb.
void run_whole_once(runtime::StageExecutor& whole, runtime::Backend& be, Filler& fill, const std::vector<Tensor>& wins,
                    int loss_value, int depth, double& tf, double& tl, double& tb) {
  std::vector<std::vector<Tensor>> grads(static_cast<size_t>(depth));
  for (int mb = 0; mb < depth; ++mb) {
    auto t0 = clk::now();
    auto outs = whole.forward(mb, wins);
    tf += seconds_since(t0);
    auto& gr = grads[static_cast<size_t>(mb)];
    gr.resize(outs.size());
    for (size_t k = 0; k < outs.size(); ++k)
      if (whole.outputs()[k] == loss_value) {
        t0 = clk::now();
        auto lr = run_loss(be, fill, outs[k]);
        tl += seconds_since(t0);
        gr[k] = lr.grad;
      }
  }
  for (int mb = 0; mb < depth; ++mb) {
    auto t0 = clk::now();
    whole.backward(mb, grads[static_cast<size_t>(mb)]);
    tb += seconds_since(t0);
  }
}

// One measurement of the whole model as one stage, as smp-run runs a one-stage plan: forward,
// loss and the fused backward per microbatch (medians), and every node's forward and backward
// timed in context (the executor's after_node hook). Which part of a node's
// backward is input gradient and which weight gradient depends on the stage's boundary (in the
// whole model, where no stage input needs a gradient, it is all weight gradient), so the caller
// splits it by the node's own ratio measured alone.
struct WholeRun {
  double f = 0, loss = 0, b = 0;         // medians: forward, loss, fused backward
  std::vector<double> node_f, node_bw;   // per graph node, medians in context
  std::vector<double> node_spread;       // (p90 - p10) / median of the node's forward + backward
};

// `depth` microbatches in flight: all their forwards (and losses), then all their backwards, as
// gpipe runs them; times per microbatch.
WholeRun measure_whole(const graph::Graph& g, int threads, uint64_t seed, int warmup, double budget_s, int depth) {
  const size_t N = g.nodes.size();
  std::vector<double> cur_f(N), cur_bw(N);
  runtime::CpuBackend be(threads);
  Filler fill(seed);
  runtime::ExecutorOptions eo;
  eo.after_node = [&](int node, char pass, double s) { (pass == 'F' ? cur_f : cur_bw)[static_cast<size_t>(node)] += s; };
  runtime::StageExecutor whole(g, be, eo);
  std::vector<Tensor> wins = make_inputs(g, be, fill, whole.inputs());
  std::vector<double> wf, wl, wb;
  std::vector<std::vector<double>> sf(N), sbw(N), stot(N);
  const int loss_value = loss_output(g, whole.outputs());
  auto t_start = clk::now();
  for (int rep = 0;; ++rep) {
    if (rep == warmup) t_start = clk::now();
    std::fill(cur_f.begin(), cur_f.end(), 0.0);
    std::fill(cur_bw.begin(), cur_bw.end(), 0.0);
    double tf = 0, tl = 0, tb = 0;
    run_whole_once(whole, be, fill, wins, loss_value, depth, tf, tl, tb);
    if (rep < warmup) continue;
    const double per = 1.0 / depth;
    wf.push_back(tf * per), wl.push_back(tl * per), wb.push_back(tb * per);
    for (size_t i = 0; i < sf.size(); ++i) {
      sf[i].push_back(cur_f[i] * per), sbw[i].push_back(cur_bw[i] * per);
      stot[i].push_back((cur_f[i] + cur_bw[i]) * per);
    }
    if (wf.size() >= 3 && seconds_since(t_start) >= budget_s) break;
  }
  WholeRun r{quantile(wf, 0.5), quantile(wl, 0.5), quantile(wb, 0.5), {}, {}, {}};
  for (size_t i = 0; i < sf.size(); ++i) {
    r.node_f.push_back(quantile(sf[i], 0.5));
    r.node_bw.push_back(quantile(sbw[i], 0.5));
    double med = quantile(stot[i], 0.5);
    r.node_spread.push_back(med > 0 ? std::max(0.0, quantile(stot[i], 0.9) - quantile(stot[i], 0.1)) / med : 0.0);
  }
  return r;
}

// measure_whole in a child process (forked, so that this process starts no thread pool of its
// own before the contention copies fork).
WholeRun measure_whole_in_child(const graph::Graph& g, int threads, uint64_t seed, int warmup, double budget_s, int depth = 1) {
  const size_t N = g.nodes.size();
  const size_t doubles = 3 + 3 * N;
  std::fflush(stdout);
  std::fflush(stderr);
  int fds[2];
  if (::pipe(fds) != 0) throw_failure("smp-profile", "pipe() failed");
  pid_t pid = ::fork();
  if (pid < 0) throw_failure("smp-profile", "fork() failed");
  if (pid == 0) {
    ::close(fds[0]);
    std::vector<double> out(doubles, -1.0);
    try {
      WholeRun w = measure_whole(g, threads, seed + 1000, warmup, budget_s, depth);
      out[0] = w.f, out[1] = w.loss, out[2] = w.b;
      for (size_t i = 0; i < N; ++i) out[3 + i] = w.node_f[i], out[3 + N + i] = w.node_bw[i], out[3 + 2 * N + i] = w.node_spread[i];
    } catch (const std::exception& e) {
      std::fprintf(stderr, "error: smp-profile: whole-model measurement: %s\n", e.what());
    }
    bool ok = write_all(fds[1], out.data(), out.size() * sizeof(double));
    ::_exit(ok && out[0] >= 0 ? 0 : 1);
  }
  ::close(fds[1]);
  std::vector<double> in(doubles, -1.0);
  bool got = read_all(fds[0], in.data(), in.size() * sizeof(double));
  ::close(fds[0]);
  int st = 0;
  ::waitpid(pid, &st, 0);
  if (!got || in[0] < 0) throw_failure("smp-profile", "the whole-model measurement failed in a worker process");
  WholeRun w{in[0], in[1], in[2], {}, {}, {}};
  auto at = [&](size_t k) { return std::vector<double>(in.begin() + static_cast<std::ptrdiff_t>(3 + k * N),
                                                       in.begin() + static_cast<std::ptrdiff_t>(3 + (k + 1) * N)); };
  w.node_f = at(0), w.node_bw = at(1), w.node_spread = at(2);
  return w;
}

// Per value (whole-model times, each node's), the median over the rounds.
WholeRun median_run(const std::vector<WholeRun>& runs, size_t nodes) {
  auto med = [&](auto get) {
    std::vector<double> v;
    for (const auto& w : runs) v.push_back(get(w));
    return quantile(v, 0.5);
  };
  WholeRun r;
  r.f = med([](const WholeRun& w) { return w.f; });
  r.loss = med([](const WholeRun& w) { return w.loss; });
  r.b = med([](const WholeRun& w) { return w.b; });
  for (size_t i = 0; i < nodes; ++i) {
    r.node_f.push_back(med([i](const WholeRun& w) { return w.node_f[i]; }));
    r.node_bw.push_back(med([i](const WholeRun& w) { return w.node_bw[i]; }));
    r.node_spread.push_back(med([i](const WholeRun& w) { return w.node_spread[i]; }));
  }
  return r;
}

// Contention: how much more work the same step is when c workers compute at once (caches, memory
// bandwidth, and with more copies than cores the switches between them), measured as CPU time,
// which time-slicing does not stretch: alpha(c) = cpu(c) / cpu(1) per step. `copies` processes,
// each with the whole model as one stage, are forked once and kept warm; then, per round, short
// windows: copy 0 alone, c = 2 copies at once, copy 0 alone, c = 3, ..., alone. A window's value
// is the median CPU time of a step of its copies (medians: this machine has slow phases of tens
// of milliseconds); cpu(1) is the mean of the alone windows on either side, since its speed also
// drifts over seconds, and only windows close in time compare. Every recorded step of a window
// ran with all of its copies busy (they meet first, and keep computing until the last is done).
// Returns, per c (index c, 2..copies), alpha of each round.
struct Conductor {
  std::atomic<int> ready{0}, done{0}, abort{0};
};

std::vector<std::vector<double>> measure_contention(const graph::Graph& g, int copies, int threads, uint64_t seed, int warmup,
                                                    double window_s, int rounds) {
  std::vector<std::vector<double>> ratios(static_cast<size_t>(copies) + 1);
  if (copies < 2) return ratios;
  void* shared = ::mmap(nullptr, sizeof(Conductor), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (shared == MAP_FAILED) throw_failure("smp-profile", "mmap() of the copies' meeting point failed");
  auto* cond = new (shared) Conductor();
  struct Kid {
    pid_t pid;
    int cmd, result;  // the parent's ends: command pipe (write), result pipe (read)
  };
  std::vector<Kid> kids;
  std::fflush(stdout);
  std::fflush(stderr);
  for (int c = 0; c < copies; ++c) {
    int to_kid[2], from_kid[2];
    if (::pipe(to_kid) != 0 || ::pipe(from_kid) != 0) throw_failure("smp-profile", "pipe() failed");
    pid_t pid = ::fork();
    if (pid < 0) throw_failure("smp-profile", "fork() failed");
    if (pid == 0) {
      ::close(to_kid[1]);
      ::close(from_kid[0]);
      for (const auto& k : kids) ::close(k.cmd), ::close(k.result);
      int code = 0;
      try {
        runtime::CpuBackend be(threads);
        Filler fill(seed + 1000 + static_cast<uint64_t>(c));
        runtime::ExecutorOptions eo;
        runtime::StageExecutor whole(g, be, eo);
        std::vector<Tensor> wins = make_inputs(g, be, fill, whole.inputs());
        const int loss_value = loss_output(g, whole.outputs());
        auto step = [&] {
          double tf = 0, tl = 0, tb = 0;
          run_whole_once(whole, be, fill, wins, loss_value, 1, tf, tl, tb);
        };
        for (int w = 0; w < warmup; ++w) step();
        auto wait_for = [&](const std::atomic<int>& n, int target) {
          while (n.load() < target && !cond->abort.load()) std::this_thread::yield();
        };
        int active = 0;
        while (read_all(to_kid[0], &active, sizeof active) && active > 0) {
          cond->ready.fetch_add(1);
          wait_for(cond->ready, active);
          std::vector<double> cpu;
          bool finished = false;
          auto t_start = clk::now();
          while (!cond->abort.load()) {
            const double c0 = process_cpu_s();
            step();
            if (!finished) {
              cpu.push_back(process_cpu_s() - c0);
              if (cpu.size() >= 2 && seconds_since(t_start) >= window_s) {
                finished = true;
                cond->done.fetch_add(1);
              }
            }
            if (finished && cond->done.load() >= active) break;
          }
          const double med = cpu.empty() ? -1.0 : quantile(cpu, 0.5);
          if (!write_all(from_kid[1], &med, sizeof med)) break;
        }
      } catch (const std::exception& e) {
        std::fprintf(stderr, "error: smp-profile: contention measurement: %s\n", e.what());
        cond->abort.store(1);
        code = 1;
      }
      ::_exit(code);
    }
    ::close(to_kid[0]);
    ::close(from_kid[1]);
    kids.push_back({pid, to_kid[1], from_kid[0]});
  }
  // One window: copies 0..c-1 at once; the mean of their median CPU times (-1: a copy failed).
  auto window = [&](int c) {
    cond->ready.store(0);
    cond->done.store(0);
    for (int k = 0; k < c; ++k)
      if (!write_all(kids[static_cast<size_t>(k)].cmd, &c, sizeof c)) {
        cond->abort.store(1);  // the ones already told must not wait for this one
        return -1.0;
      }
    double sum = 0;
    for (int k = 0; k < c; ++k) {
      double med = -1;
      if (!read_all(kids[static_cast<size_t>(k)].result, &med, sizeof med) || med <= 0) {
        cond->abort.store(1);  // the others stop waiting for this one
        return -1.0;
      }
      sum += med;
    }
    return sum / c;
  };
  bool ok = true;
  for (int r = 0; r < rounds && ok; ++r) {
    double before = window(1);
    ok = before > 0;
    for (int c = 2; c <= copies && ok; ++c) {
      const double tc = window(c), after = window(1);
      ok = tc > 0 && after > 0;
      if (ok) ratios[static_cast<size_t>(c)].push_back(tc / (0.5 * (before + after)));
      before = after;
    }
  }
  for (const auto& k : kids) {
    ::close(k.cmd);  // end of commands: the copy exits
    ::close(k.result);
  }
  for (const auto& k : kids) {
    int st = 0;
    ::waitpid(k.pid, &st, 0);
    ok = ok && WIFEXITED(st) && WEXITSTATUS(st) == 0;
  }
  ::munmap(shared, sizeof(Conductor));
  if (!ok) throw_failure("smp-profile", "the contention measurement failed in a worker process");
  return ratios;
}

// A worker's end-of-step work on its weights (Worker::reduce_and_update without the all-reduces):
// every gradient copied out and its squares summed (the global norm), then the optimizer's
// update, on tensors of the model's parameter sizes. Per optimizer, seconds per parameter: the
// median of the repeats within `budget_s` (after one warm-up, which also allocates the state).
std::vector<std::pair<OptimizerKind, double>> measure_optimizer_steps(const graph::Graph& g, double budget_s) {
  std::vector<std::vector<float>> w, gr;
  int64_t total = 0;
  for (const auto& v : g.values)
    if (v.kind == graph::ValueKind::Parameter && smp::numel(v.shape) > 0) {
      const auto n = static_cast<size_t>(smp::numel(v.shape));
      w.emplace_back(n, 0.02f);
      gr.emplace_back(n, 0.001f);
      total += smp::numel(v.shape);
    }
  std::vector<std::pair<OptimizerKind, double>> r;
  if (total == 0) return r;
  std::vector<float> host;
  for (OptimizerKind kind : {OptimizerKind::Sgd, OptimizerKind::Momentum, OptimizerKind::AdamW}) {
    OptimizerConfig c;
    c.kind = kind;
    c.lr = 1e-3;
    std::vector<ParamState> state(w.size());
    std::vector<double> samples;
    double norm = 0;
    auto t_start = clk::now();
    for (int rep = 0;; ++rep) {
      auto t0 = clk::now();
      for (const auto& x : gr) {
        host.resize(x.size());
        std::memcpy(host.data(), x.data(), x.size() * sizeof(float));
        norm += sum_of_squares(host);
      }
      for (size_t i = 0; i < w.size(); ++i) apply_update(c, c.lr, w[i], gr[i], state[i]);
      if (rep == 0) {
        t_start = clk::now();
        continue;
      }
      samples.push_back(seconds_since(t0));
      if (samples.size() >= 3 && seconds_since(t_start) >= budget_s) break;
    }
    if (!std::isfinite(norm)) throw_failure("smp-profile", "optimizer step measurement: the gradient norm is not finite");
    r.emplace_back(kind, quantile(samples, 0.5) / static_cast<double>(total));
  }
  return r;
}

// The most microbatches kept in flight for the many-in-flight timing (memory grows with them).
constexpr int kMaxInFlight = 16;

struct Samples {
  std::vector<double> f, b, w;
};

}  // namespace

std::vector<double> contention_slowdown(const graph::Graph& g, int copies, double window_s, int rounds, uint64_t seed) {
  const auto per_round = measure_contention(g, copies, 1, seed, 2, window_s, rounds);
  std::vector<double> alpha(static_cast<size_t>(std::max(copies, 1)), 1.0);
  for (int c = 2; c <= copies; ++c)
    alpha[static_cast<size_t>(c) - 1] = std::clamp(quantile(per_round[static_cast<size_t>(c)], 0.5), 1.0, 4.0);
  return alpha;
}

std::array<double, 3> optimizer_step_per_parameter(const graph::Graph& g, double budget_s) {
  std::array<double, 3> r{};
  for (const auto& [kind, s] : measure_optimizer_steps(g, budget_s))
    r[kind == OptimizerKind::Sgd ? 0 : kind == OptimizerKind::Momentum ? 1 : 2] = s;
  return r;
}

json profile_nodes(const NodeProfileOptions& o, const ProfileOutput& out) {
  auto note = [&](const std::string& s) {
    if (out.note) out.note(s);
  };
  auto say = [&](const std::string& s) {
    if (out.summary) out.summary(s);
  };
  auto progress = [&](int done, int total, const std::string& what) {
    if (out.progress) out.progress(done, total, what);
  };
  if (o.batch_size < 1) throw_bad_input("--batch-size", "must be at least 1");
  if (o.microbatches < 1) throw_bad_input("--microbatches", "must be at least 1");
  if (o.batch_size % o.microbatches != 0)
    throw_bad_input("--microbatches", fmt::format("{} does not divide the batch size {}", o.microbatches, o.batch_size),
                    "choose a divisor of --batch-size");
  const int64_t u = o.batch_size / o.microbatches;
  graph::LoadOptions lo;
  lo.batch_size = u;
  lo.dims = o.dims;
  lo.frozen = o.frozen;
  lo.load_weights = true;
  graph::Graph g = graph::load_graph(o.model, lo);
  const int N = static_cast<int>(g.nodes.size());
  const int P = std::max(1, o.concurrent);

  // 1. Every node timed in context: the whole model as one stage, alone (in a child process, so
  //    that this one starts no thread pool before them), three rounds; per node the median.
  const int rounds = 3;
  // With more than one microbatch per batch, the nodes are also timed with D of them in flight.
  const int D = std::min(o.microbatches, kMaxInFlight);
  note(fmt::format("timing every node in context (the whole model as one stage{}), {} rounds",
                   D > 1 ? fmt::format(", with 1 and with {} microbatches in flight", D) : "", rounds));
  std::vector<WholeRun> alone, deep;
  for (int r = 0; r < rounds; ++r) {
    alone.push_back(measure_whole_in_child(g, o.threads, o.seed, o.warmup, o.whole_budget_s / rounds));
    if (D > 1) deep.push_back(measure_whole_in_child(g, o.threads, o.seed, o.warmup, o.whole_budget_s / rounds, D));
  }
  // 2. Contention (measure_contention): c = 2..P copies of the whole model at once, in windows
  //    of at least 2 steps (time-slicing averages out) or 1/30 of the budget; as many rounds as
  //    fit in twice the budget, 3 to 9 (the median is only as good as the share of rounds in
  //    the machine's usual state).
  const double cores_fit = static_cast<double>(std::max(1, comm::online_cores() / std::max(1, o.threads)));
  const double step_s = alone.front().f + alone.front().loss + alone.front().b;
  const double window_s = std::max(2 * step_s, o.whole_budget_s / 30);
  double round_s = P * window_s;  // the alone windows
  for (int c = 2; c <= P; ++c) round_s += window_s * std::max(1.0, c / cores_fit);
  const int c_rounds = std::clamp(static_cast<int>(2 * o.whole_budget_s / round_s), 3, 9);
  if (P > 1)
    note(fmt::format("measuring contention: {} rounds of windows with 1 and with 2 to {} copies of the model at once", c_rounds, P));
  const auto alpha_rounds = measure_contention(g, P, o.threads, o.seed, o.warmup, window_s, c_rounds);
  const WholeRun ctx = median_run(alone, static_cast<size_t>(N));
  const WholeRun ctx_deep = D > 1 ? median_run(deep, static_cast<size_t>(N)) : WholeRun{};
  // eff(c) = c / (alpha(c) max(1, c / cores)): copies' worth of work the machine does with c
  // workers busy, each doing alpha(c) times the work and, beyond the cores, time-sharing them.
  std::vector<double> alpha(static_cast<size_t>(P) + 1, 1.0), eff(static_cast<size_t>(P) + 1, 1.0);
  for (int c = 2; c <= P; ++c) {
    const auto q = static_cast<size_t>(c);
    alpha[q] = std::clamp(quantile(alpha_rounds[q], 0.5), 1.0, 4.0);  // never less work than alone
    eff[q] = c / (alpha[q] * std::max(1.0, c / cores_fit));
  }
  // Workers computing at once in a pipeline of P balanced stages over m microbatches (the rest
  // of the time they wait at its ends): P m / (m + P - 1). Each runs slower by busy / eff(busy),
  // eff interpolated between the measured counts.
  const double m = o.microbatches;
  const double busy = P * m / (m + P - 1);
  const auto lo_c = static_cast<size_t>(std::max(1.0, std::floor(busy)));
  const size_t hi_c = std::min(lo_c + 1, static_cast<size_t>(P));
  const double eff_busy = eff[lo_c] + (busy - static_cast<double>(lo_c)) * (eff[hi_c] - eff[lo_c]);
  const double share = std::max(1.0, busy / eff_busy);

  // 3. Every node alone (a one-node stage on random inputs): its peak memory, the split of its
  //    backward into input and weight gradient, and its isolated times for comparison.
  runtime::CpuBackend be(o.threads);
  Filler fill(o.seed);
  runtime::ExecutorOptions eo;
  std::vector<Samples> samples(static_cast<size_t>(N));
  std::vector<double> peak(static_cast<size_t>(N), 0.0);
  for (int i = 0; i < N; ++i) {
    const auto& node = g.nodes[static_cast<size_t>(i)];
    progress(i, N, node.name);
    runtime::StageExecutor ex(g, std::vector<int>{i}, be, eo);
    std::vector<Tensor> ins = make_inputs(g, be, fill, ex.inputs());
    std::vector<Tensor> dout = make_grads(g, be, fill, ex.outputs());
    bool any_grad = false;
    for (auto& t : dout) any_grad = any_grad || t.defined();
    bool has_backward = any_grad;
    Samples& s = samples[static_cast<size_t>(i)];
    auto t_start = clk::now();
    for (int rep = 0;; ++rep) {
      ex.reset_peak();
      auto t0 = clk::now();
      ex.forward(0, ins);
      double tf = seconds_since(t0), tb = 0, tw = 0;
      if (has_backward) {
        try {
          t0 = clk::now();
          ex.backward_input(0, dout);
          tb = seconds_since(t0);
          // A stage with no weight-gradient part is done after B (nothing left to run).
          if (ex.pending() > 0) {
            t0 = clk::now();
            ex.backward_weight(0);
            tw = seconds_since(t0);
          }
        } catch (const smp::Error& e) {
          has_backward = false;
          tb = tw = 0;
          ex.drop(0);
        }
      } else {
        ex.drop(0);
      }
      peak[static_cast<size_t>(i)] = std::max(peak[static_cast<size_t>(i)], static_cast<double>(ex.peak_bytes()));
      if (rep < o.warmup) {
        t_start = clk::now();
        continue;
      }
      s.f.push_back(tf), s.b.push_back(tb), s.w.push_back(tw);
      if (static_cast<int>(s.f.size()) >= o.min_reps && seconds_since(t_start) >= o.budget_s) break;
      if (s.f.size() >= 100000) break;
    }
  }
  progress(N, N, "done");
  // 4. The optimizer step (its time per parameter, for each optimizer).
  const auto opt_steps = measure_optimizer_steps(g, std::max(0.05, o.whole_budget_s / 15));

  // A node's backward in context split into input and weight gradient by its ratio alone.
  std::vector<double> wshare(static_cast<size_t>(N));
  double iso_f = 0, iso_b = 0, iso_w = 0;
  for (int i = 0; i < N; ++i) {
    auto q = static_cast<size_t>(i);
    const auto& s = samples[q];
    const double fi = quantile(s.f, 0.5), bi = quantile(s.b, 0.5), wi = quantile(s.w, 0.5);
    iso_f += fi, iso_b += bi, iso_w += wi;
    wshare[q] = bi + wi > 0 ? wi / (bi + wi) : 0.0;
  }
  const int loss_value = [&] {
    std::vector<int> outs;
    for (size_t v = 0; v < g.values.size(); ++v)
      if (g.values[v].is_output) outs.push_back(static_cast<int>(v));
    return loss_output(g, outs);
  }();
  const double k = std::max(1.0, o.oversubscription) * (o.calibrate ? share : 1.0);
  // Per node: forward, input gradient, weight gradient of one in-context measurement. What the
  // stage spends outside its nodes' turns (the executor's own bookkeeping) is spread over the
  // nodes in proportion, so that they add up to the whole stage (forward, and the fused backward
  // smp-run runs for gpipe and 1f1b); `ratios` returns those factors.
  auto node_times = [&](const WholeRun& w, double ratios[2]) {
    std::vector<std::array<double, 3>> t(static_cast<size_t>(N));
    double sf = 0, sbw = 0;
    for (size_t q = 0; q < static_cast<size_t>(N); ++q) sf += w.node_f[q], sbw += w.node_bw[q];
    ratios[0] = sf > 0 ? w.f / sf : 1.0;
    ratios[1] = sbw > 0 ? w.b / sbw : 1.0;
    for (size_t q = 0; q < static_cast<size_t>(N); ++q) {
      double f = w.node_f[q] * ratios[0] * k;
      for (int ov : g.nodes[q].outputs)
        if (ov >= 0 && ov == loss_value) f += w.loss * k;  // the loss is charged to its producer, as the planner does
      const double bw = w.node_bw[q] * ratios[1] * k;
      t[q] = {f, bw * (1 - wshare[q]), bw * wshare[q]};
    }
    return t;
  };
  double r1[2] = {1, 1}, rd[2] = {1, 1};
  const auto one = node_times(ctx, r1);
  const auto many = D > 1 ? node_times(ctx_deep, rd) : one;
  double sum_f = 0, sum_b = 0, sum_w = 0;
  for (int i = 0; i < N; ++i) {
    auto q = static_cast<size_t>(i);
    sum_f += ctx.node_f[q], sum_b += ctx.node_bw[q] * (1 - wshare[q]), sum_w += ctx.node_bw[q] * wshare[q];
  }
  const double rf = r1[0], rb = r1[1];

  json nodes = json::object();
  for (int i = 0; i < N; ++i) {
    const auto& node = g.nodes[static_cast<size_t>(i)];
    auto q = static_cast<size_t>(i);
    json e{{"forward_s", one[q][0]},
           {"backward_input_s", one[q][1]},
           {"backward_weight_s", one[q][2]},
           {"spread", ctx.node_spread[q]},
           {"peak_bytes", peak[q]}};
    if (D > 1) e["in_flight"] = json{{"forward_s", many[q][0]}, {"backward_input_s", many[q][1]}, {"backward_weight_s", many[q][2]}};
    nodes[node.name] = std::move(e);
  }
  if (out.summary) {
    say(fmt::format("microbatch of {} samples, {} thread(s), device {}", u, o.threads, o.device_name));
    say(fmt::format("whole model as one stage: forward {:.3f} ms (+ loss {:.3f} ms), backward {:.3f} ms", ctx.f * 1e3,
               ctx.loss * 1e3, ctx.b * 1e3));
    say(fmt::format("its {} nodes timed in context: forward {:.3f} ms, input gradient {:.3f} ms, weight gradient {:.3f} ms "
               "(the stage's own bookkeeping spread over them: x {:.3f} forward, x {:.3f} backward)",
               N, sum_f * 1e3, sum_b * 1e3, sum_w * 1e3, rf, rb));
    say(fmt::format("the same nodes run alone:   forward {:.3f} ms, input gradient {:.3f} ms, weight gradient {:.3f} ms "
               "(isolated / in context: {:.2f}, {:.2f})",
               iso_f * 1e3, iso_b * 1e3, iso_w * 1e3, sum_f > 0 ? iso_f / sum_f : 0, sum_b + sum_w > 0 ? (iso_b + iso_w) / (sum_b + sum_w) : 0));
    if (P > 1) {
      std::string alphas, effs;
      for (int c = 2; c <= P; ++c) {
        alphas += fmt::format("{}{} at once: x {:.2f} ({:.2f})", c > 2 ? "; " : "", c, alpha[static_cast<size_t>(c)],
                              fmt::join(alpha_rounds[static_cast<size_t>(c)], " "));
        effs += fmt::format("{}{}: {:.2f}", c > 2 ? ", " : "", c, eff[static_cast<size_t>(c)]);
      }
      say(fmt::format("concurrent copies, CPU time of a step against one alone (median of rounds): {}", alphas));
      say(fmt::format("effective parallelism with {:.0f} core(s) for workers: {}", cores_fit, effs));
      say(fmt::format("busy workers in a {}-stage pipeline of {} microbatches {:.2f} -> each runs x {:.3f} slower{}", P,
                 o.microbatches, busy, share, o.calibrate ? "" : " (not applied: --no-calibrate)"));
    }
    if (D > 1) {
      const double t1 = ctx.f + ctx.loss + ctx.b, td = ctx_deep.f + ctx_deep.loss + ctx_deep.b;
      say(fmt::format("with {} microbatches in flight (all forwards, then all backwards): forward {:.3f} ms (+ loss {:.3f} ms), "
                 "backward {:.3f} ms per microbatch, x {:.3f} of one in flight",
                 D, ctx_deep.f * 1e3, ctx_deep.loss * 1e3, ctx_deep.b * 1e3, t1 > 0 ? td / t1 : 0.0));
    }
    if (!opt_steps.empty()) {
      std::string parts;
      for (const auto& [kind, s] : opt_steps)
        parts += fmt::format("{}{} {:.2f} ns", parts.empty() ? "" : ", ", optimizer_name(kind), s * k * 1e9);
      say(fmt::format("optimizer step (gradient norm + update) per parameter: {}", parts));
    }
    if (o.oversubscription > 1) say(fmt::format("--oversubscription: every time multiplied by {:.2f}", o.oversubscription));
  }
  json result{{"version", 1},
           {"smp_version", SMP_VERSION},
           {"device", {{"kind", "cpu"}, {"name", o.device_name}}},
           {"threads", o.threads},
           {"microbatch_size", u},
           {"model", o.model.string()},
           {"nodes", nodes}};
  if (D > 1) result["in_flight_microbatches"] = D;
  if (P > 1) {
    json ratio = json::object();
    for (int c = 2; c <= P; ++c) ratio[std::to_string(c)] = alpha[static_cast<size_t>(c)];
    result["contention"] = json{{"workers", P},         {"cores", cores_fit}, {"cpu_time_ratio", ratio},
                                {"busy_workers", busy}, {"slowdown", share},  {"applied", o.calibrate}};
  }
  if (!opt_steps.empty()) {
    json os = json::object();
    for (const auto& [kind, s] : opt_steps) os[optimizer_name(kind)] = s * k;
    result["optimizer_step_s_per_parameter"] = os;
  }
  return result;
}

}  // namespace smp::train
