#include "profile_nodes.hpp"

#include "core/error.hpp"
#include "core/version.hpp"
#include "graph/loader.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"
#include "runtime/loss.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <sys/wait.h>
#include <unistd.h>

namespace smp::app {

using nlohmann::json;
using runtime::Tensor;
using clk = std::chrono::steady_clock;

namespace {

double since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

double quantile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  double pos = q * static_cast<double>(v.size() - 1);
  size_t lo = static_cast<size_t>(std::floor(pos)), hi = std::min(lo + 1, v.size() - 1);
  double f = pos - static_cast<double>(lo);
  return v[lo] * (1 - f) + v[hi] * f;
}

std::string fmt_eta(double s) {
  if (s < 60) return fmt::format("{:.0f}s", s);
  return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
}

class Progress {
 public:
  Progress(int total, bool quiet) : total_(total), quiet_(quiet), tty_(isatty(2) != 0), t0_(clk::now()) {}
  void update(int done, const std::string& what) {
    if (quiet_) return;
    double el = since(t0_);
    double eta = done > 0 ? el / done * (total_ - done) : 0;
    int width = 30, filled = total_ > 0 ? width * done / total_ : width;
    std::string bar = std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(width - filled), '.');
    std::string line = fmt::format("[{}] {}/{} nodes  ETA {}  {}", bar, done, total_, fmt_eta(eta), what.substr(0, 40));
    if (tty_) {
      std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), done == total_ ? "\n" : "");
    } else {
      int pct = total_ > 0 ? 10 * done / total_ : 10;
      if (pct != last_pct_ || done == total_) std::fprintf(stderr, "%s\n", line.c_str());
      last_pct_ = pct;
    }
    std::fflush(stderr);
  }

 private:
  int total_;
  bool quiet_, tty_;
  clk::time_point t0_;
  int last_pct_ = -1;
};

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

struct WholeTimes {
  double f = 0, loss = 0, b = 0;
};

// The whole model as one stage: forward (+ loss) and the fused backward, as smp-run runs a
// one-stage gpipe / 1f1b plan; medians.
WholeTimes measure_whole(const graph::Graph& g, int threads, uint64_t seed, int warmup, double budget_s) {
  runtime::CpuBackend be(threads);
  Filler fill(seed);
  runtime::ExecutorOptions eo;
  runtime::StageExecutor whole(g, be, eo);
  std::vector<Tensor> wins = make_inputs(g, be, fill, whole.inputs());
  std::vector<double> wf, wl, wb;
  const int loss_value = loss_output(g, whole.outputs());
  auto t_start = clk::now();
  for (int rep = 0;; ++rep) {
    auto t0 = clk::now();
    auto outs = whole.forward(0, wins);
    double tf = since(t0);
    std::vector<Tensor> grads(outs.size());
    double tl = 0;
    for (size_t k = 0; k < outs.size(); ++k)
      if (whole.outputs()[k] == loss_value) {
        t0 = clk::now();
        auto lr = run_loss(be, fill, outs[k]);
        tl = since(t0);
        grads[k] = lr.grad;
      }
    outs.clear();
    t0 = clk::now();
    whole.backward(0, grads);
    double tb = since(t0);
    if (rep < warmup) {
      t_start = clk::now();
      continue;
    }
    wf.push_back(tf), wl.push_back(tl), wb.push_back(tb);
    if (wf.size() >= 3 && since(t_start) >= budget_s) break;
  }
  return WholeTimes{quantile(wf, 0.5), quantile(wl, 0.5), quantile(wb, 0.5)};
}

// `copies` worker processes (forked) measure the whole model at the same time, as the workers of
// a plan share the machine's cores, caches and memory bandwidth; the mean of their medians.
WholeTimes measure_whole_concurrent(const graph::Graph& g, int copies, int threads, uint64_t seed, int warmup,
                                    double budget_s) {
  std::vector<std::pair<pid_t, int>> kids;
  std::fflush(stdout);
  std::fflush(stderr);
  for (int c = 0; c < copies; ++c) {
    int fds[2];
    if (::pipe(fds) != 0) throw_failure("smp-profile", "pipe() failed");
    pid_t pid = ::fork();
    if (pid < 0) throw_failure("smp-profile", "fork() failed");
    if (pid == 0) {
      ::close(fds[0]);
      double r[3] = {-1, -1, -1};
      try {
        WholeTimes w = measure_whole(g, threads, seed + 1000 + static_cast<uint64_t>(c), warmup, budget_s);
        r[0] = w.f, r[1] = w.loss, r[2] = w.b;
      } catch (const std::exception& e) {
        std::fprintf(stderr, "error: smp-profile: whole-model measurement: %s\n", e.what());
      }
      ssize_t n = ::write(fds[1], r, sizeof r);
      (void)n;
      ::_exit(r[0] < 0 ? 1 : 0);
    }
    ::close(fds[1]);
    kids.emplace_back(pid, fds[0]);
  }
  WholeTimes sum;
  bool ok = true;
  for (auto [pid, fd] : kids) {
    double r[3] = {-1, -1, -1};
    ssize_t n = ::read(fd, r, sizeof r);
    ::close(fd);
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (n != static_cast<ssize_t>(sizeof r) || r[0] < 0) ok = false;
    sum.f += r[0], sum.loss += r[1], sum.b += r[2];
  }
  if (!ok) throw_failure("smp-profile", "the whole-model measurement failed in a worker process");
  const double k = static_cast<double>(copies);
  return WholeTimes{sum.f / k, sum.loss / k, sum.b / k};
}

struct Samples {
  std::vector<double> f, b, w, tot;
};

}  // namespace

json profile_nodes(const NodeProfileOptions& o) {
  if (o.batch_size < 1) throw_bad_input("--batch-size", "must be at least 1");
  if (o.microbatches < 1) throw_bad_input("--microbatches", "must be at least 1");
  if (o.batch_size % o.microbatches != 0)
    throw_bad_input("--microbatches", fmt::format("{} does not divide the batch size {}", o.microbatches, o.batch_size),
                    "choose a divisor of --batch-size");
  const int64_t u = o.batch_size / o.microbatches;
  graph::LoadOptions lo;
  lo.batch_size = u;
  lo.dims = o.dims;
  lo.load_weights = true;
  graph::Graph g = graph::load_graph(o.model, lo);
  // First (before this process starts its own thread pool): the whole model as one stage, alone
  // and then in as many concurrent worker processes as the plan runs (sharing the cores, caches
  // and memory bandwidth as they will).
  const int P = std::max(1, o.concurrent);
  if (!o.quiet) fmt::print(stderr, "measuring the whole model as one stage, alone{}\n", P > 1 ? fmt::format(" and in {} concurrent processes", P) : "");
  // Alone and concurrent in alternation (3 rounds), so that a change of the machine's load
  // during the measurement shows in both; the medians.
  const int rounds = P > 1 ? 3 : 1;
  std::vector<WholeTimes> alone, conc;
  std::vector<double> effs;
  for (int r = 0; r < rounds; ++r) {
    alone.push_back(measure_whole_concurrent(g, 1, o.threads, o.seed, o.warmup, o.whole_budget_s / rounds));
    if (P > 1) {
      conc.push_back(measure_whole_concurrent(g, P, o.threads, o.seed, o.warmup, o.whole_budget_s / rounds));
      const double a = alone.back().f + alone.back().loss + alone.back().b;
      const double c = conc.back().f + conc.back().loss + conc.back().b;
      effs.push_back(c > 0 ? P * a / c : 1.0);
    }
  }
  auto med = [&](const std::vector<WholeTimes>& v, double WholeTimes::*m) {
    std::vector<double> x;
    for (const auto& w : v) x.push_back(w.*m);
    return quantile(x, 0.5);
  };
  const WholeTimes w1{med(alone, &WholeTimes::f), med(alone, &WholeTimes::loss), med(alone, &WholeTimes::b)};
  const WholeTimes wp = P > 1 ? WholeTimes{med(conc, &WholeTimes::f), med(conc, &WholeTimes::loss), med(conc, &WholeTimes::b)} : w1;
  const double t1 = w1.f + w1.loss + w1.b, tp = wp.f + wp.loss + wp.b;
  // Effective parallelism: how many copies' worth of work the machine does at once.
  const double eff = P > 1 ? std::clamp(quantile(effs, 0.5), 0.5, static_cast<double>(P)) : 1.0;
  // Workers computing at once in a pipeline of P balanced stages over m microbatches (the rest
  // of the time they wait at its ends): P m / (m + P - 1). More of them than the machine runs
  // at once share it, and each is slowed down by busy / eff.
  const double m = o.microbatches;
  const double busy = P * m / (m + P - 1);
  const double share = std::max(1.0, busy / eff);
  const double whole_f = w1.f, whole_b = w1.b, loss_s = w1.loss;
  runtime::CpuBackend be(o.threads);
  Filler fill(o.seed);
  runtime::ExecutorOptions eo;
  const int loss_value = [&] {
    std::vector<int> outs;
    for (size_t v = 0; v < g.values.size(); ++v)
      if (g.values[v].is_output) outs.push_back(static_cast<int>(v));
    return loss_output(g, outs);
  }();

  const int N = static_cast<int>(g.nodes.size());
  std::vector<Samples> samples(static_cast<size_t>(N));
  std::vector<double> peak(static_cast<size_t>(N), 0.0);
  Progress prog(N, o.quiet);
  for (int i = 0; i < N; ++i) {
    const auto& node = g.nodes[static_cast<size_t>(i)];
    prog.update(i, node.name);
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
      double tf = since(t0), tb = 0, tw = 0;
      if (has_backward) {
        try {
          t0 = clk::now();
          ex.backward_input(0, dout);
          tb = since(t0);
          // A stage with no weight-gradient part is done after B (nothing left to run).
          if (ex.pending() > 0) {
            t0 = clk::now();
            ex.backward_weight(0);
            tw = since(t0);
          }
        } catch (const smp::Error& e) {
          if (getenv("SMP_PROFILE_DEBUG")) fmt::print(stderr, "node {}: no backward: {}\n", node.name, e.what());
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
      s.f.push_back(tf), s.b.push_back(tb), s.w.push_back(tw), s.tot.push_back(tf + tb + tw);
      if (static_cast<int>(s.f.size()) >= o.min_reps && since(t_start) >= o.budget_s) break;
      if (s.f.size() >= 100000) break;
    }
  }
  prog.update(N, "done");


  double sum_f = 0, sum_b = 0, sum_w = 0;
  for (auto& s : samples) sum_f += quantile(s.f, 0.5), sum_b += quantile(s.b, 0.5), sum_w += quantile(s.w, 0.5);
  const double k = std::max(1.0, o.oversubscription) * (o.calibrate ? share : 1.0);
  const double rf = (o.calibrate && sum_f > 0 ? whole_f / sum_f : 1.0) * k;
  const double rb = (o.calibrate && sum_b + sum_w > 0 ? whole_b / (sum_b + sum_w) : 1.0) * k;

  json nodes = json::object();
  for (int i = 0; i < N; ++i) {
    const auto& s = samples[static_cast<size_t>(i)];
    const auto& node = g.nodes[static_cast<size_t>(i)];
    double med = quantile(s.tot, 0.5);
    double spread = med > 0 ? (quantile(s.tot, 0.9) - quantile(s.tot, 0.1)) / med : 0.0;
    double f = quantile(s.f, 0.5) * rf;
    for (int ov : node.outputs)
      if (ov >= 0 && ov == loss_value) f += loss_s * k;  // the loss is charged to its producer, as the planner does
    nodes[node.name] = json{{"forward_s", f},
                            {"backward_input_s", quantile(s.b, 0.5) * rb},
                            {"backward_weight_s", quantile(s.w, 0.5) * rb},
                            {"spread", std::max(0.0, spread)},
                            {"peak_bytes", peak[static_cast<size_t>(i)]}};
  }
  if (!o.quiet) {
    fmt::print("microbatch of {} samples, {} thread(s), device {}\n", u, o.threads, o.device_name);
    fmt::print("sum of the {} nodes run alone: forward {:.3f} ms, input gradient {:.3f} ms, weight gradient {:.3f} ms\n",
               N, sum_f * 1e3, sum_b * 1e3, sum_w * 1e3);
    fmt::print("whole model as one stage:     forward {:.3f} ms (+ loss {:.3f} ms), backward {:.3f} ms\n", whole_f * 1e3,
               loss_s * 1e3, whole_b * 1e3);
    if (P > 1)
      fmt::print("{} concurrent copies: {:.3f} ms per microbatch each against {:.3f} ms alone: effective parallelism "
                 "{:.2f} of {} (median of {} rounds: {:.2f}); busy workers in the pipeline {:.2f} -> times x {:.3f}\n",
                 P, tp * 1e3, t1 * 1e3, eff, P, rounds, fmt::join(effs, " "), busy, share);
    fmt::print("whole / sum of nodes: forward {:.3f}, backward {:.3f}{}\n", sum_f > 0 ? whole_f / sum_f : 0,
               sum_b + sum_w > 0 ? whole_b / (sum_b + sum_w) : 0,
               o.calibrate ? " (node times scaled by these ratios; --no-calibrate keeps them raw)" : " (not applied: --no-calibrate)");
    if (o.oversubscription > 1) fmt::print("--oversubscription: every time multiplied by {:.2f}\n", o.oversubscription);
  }
  return json{{"version", 1},
              {"smp_version", SMP_VERSION},
              {"device", {{"kind", "cpu"}, {"name", o.device_name}}},
              {"threads", o.threads},
              {"microbatch_size", u},
              {"model", o.model.string()},
              {"nodes", nodes}};
}

}  // namespace smp::app
