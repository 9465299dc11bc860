#include "train/machine_probe.hpp"

#include "comm/comm.hpp"
#include "comm/launch.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "cost/cluster.hpp"
#include "train/profiler.hpp"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>
#include <unistd.h>
#include <vector>

namespace smp::train {

using nlohmann::json;
using clk = std::chrono::steady_clock;
namespace fs = std::filesystem;

namespace {

// Runs body(thread index) on `threads` threads at once and returns the wall time.
template <class F>
double parallel_time(int threads, F&& body) {
  std::vector<std::thread> ts;
  auto t0 = clk::now();
  for (int t = 1; t < threads; ++t) ts.emplace_back([&, t] { body(t); });
  body(0);
  for (auto& t : ts) t.join();
  return seconds_since(t0);
}
}  // namespace

double measure_gemm_flops(int threads, double budget_s) {
  openblas_set_num_threads(1);
  const int n = 1024;  // 8 GFLOP... per product: 2 n^3 = 2.1 GFLOP
  std::vector<std::vector<float>> a(static_cast<size_t>(threads)), b(a.size()), c(a.size());
  for (int t = 0; t < threads; ++t) {
    a[static_cast<size_t>(t)].assign(static_cast<size_t>(n) * n, 0.5f);
    b[static_cast<size_t>(t)].assign(static_cast<size_t>(n) * n, 0.25f);
    c[static_cast<size_t>(t)].assign(static_cast<size_t>(n) * n, 0.0f);
  }
  auto one = [&](int t) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a[static_cast<size_t>(t)].data(), n,
                b[static_cast<size_t>(t)].data(), n, 0.0f, c[static_cast<size_t>(t)].data(), n);
  };
  parallel_time(threads, one);  // warm-up
  double best = 0, total = 0;
  int reps = 0;
  while (reps < 3 || total < budget_s) {
    double dt = parallel_time(threads, one);
    total += dt, ++reps;
    best = std::max(best, 2.0 * n * n * static_cast<double>(n) * threads / dt);
    if (reps >= 1000) break;
  }
  // Sustained: the mean over the repeats, not the best one.
  return 2.0 * n * n * static_cast<double>(n) * threads * reps / total;
}

double measure_triad_bandwidth(int threads, double budget_s) {
  const size_t n = 32u << 20;  // 32 Mi floats = 128 MiB per array, 384 MiB in all
  std::vector<float> a(n), b(n, 1.0f), c(n, 2.0f);
  const float s = 3.0f;
  auto one = [&](int t) {
    size_t lo = n * static_cast<size_t>(t) / static_cast<size_t>(threads);
    size_t hi = n * static_cast<size_t>(t + 1) / static_cast<size_t>(threads);
    float* __restrict pa = a.data();
    const float* __restrict pb = b.data();
    const float* __restrict pc = c.data();
    for (size_t i = lo; i < hi; ++i) pa[i] = pb[i] + s * pc[i];
  };
  parallel_time(threads, one);
  double total = 0;
  int reps = 0;
  while (reps < 3 || total < budget_s) {
    total += parallel_time(threads, one), ++reps;
    if (reps >= 1000) break;
  }
  volatile float sink = a[n / 2];
  (void)sink;
  return 3.0 * sizeof(float) * static_cast<double>(n) * reps / total;
}

int pingpong_worker(int argc, char** argv, const std::string& out, double budget_s) {
  auto c = comm::init_mpi(&argc, &argv);
  if (c->size() != 2) throw_failure("smp-profile --machine", fmt::format("the ping-pong needs 2 ranks, got {}", c->size()));
  const int me = c->rank(), peer = 1 - me;
  c->set_spin_wait(2 <= comm::online_cores());  // as smp-run's workers wait when each has a core
  const std::vector<size_t> sizes = {8, 1024, 64 << 10, 1 << 20, 16 << 20};
  std::vector<char> buf(sizes.back(), 1), rbuf(sizes.back(), 0);
  json rows = json::array();
  double latency = 0, bandwidth = 0;
  for (size_t bytes : sizes) {
    // Warm-up, then as many round trips as the budget allows (rank 0 decides, tells rank 1).
    int reps = 0;
    double total = 0;
    for (int round = 0;; ++round) {
      int go = 1;
      if (me == 0) go = (round < 2 || reps < 5 || total < budget_s / static_cast<double>(sizes.size())) && reps < 20000;
      {
        auto rq = me == 0 ? c->isend(&go, sizeof go, peer, 1) : c->irecv(&go, sizeof go, peer, 1);
        c->wait(rq, "ping-pong control");
      }
      if (!go) break;
      auto t0 = clk::now();
      if (me == 0) {
        auto s = c->isend(buf.data(), bytes, peer, 2);
        c->wait(s, "ping");
        auto r = c->irecv(rbuf.data(), bytes, peer, 3);
        c->wait(r, "pong");
      } else {
        auto r = c->irecv(rbuf.data(), bytes, peer, 2);
        c->wait(r, "ping");
        auto s = c->isend(buf.data(), bytes, peer, 3);
        c->wait(s, "pong");
      }
      double dt = seconds_since(t0);
      if (round >= 2) total += dt, ++reps;
    }
    double one_way = reps > 0 ? total / reps / 2 : 0;
    rows.push_back(json{{"bytes", bytes}, {"one_way_s", one_way}, {"round_trips", reps}});
    // Latency: the fastest small message (the first size also pays the connection's warm-up).
    if (bytes <= 1024 && one_way > 0) latency = latency > 0 ? std::min(latency, one_way) : one_way;
  }
  // Bandwidth from the largest message, its latency taken off.
  const auto& last = rows.back();
  double t = last["one_way_s"].get<double>() - latency;
  bandwidth = t > 0 ? static_cast<double>(sizes.back()) / t : 0;
  // A sum over both ranks of the largest size, through the communicator's all-reduce (smp-run's
  // data-parallel gradient sum between CPU workers): the median of the repeats, as bus
  // bandwidth, which for 2 ranks is bytes / time (2 (n - 1) / n = 1).
  std::vector<float> sum(sizes.back() / sizeof(float), 1.0f);
  const std::vector<int> both = {0, 1};
  std::vector<double> ar;
  for (int round = 0;; ++round) {
    int go = 1;
    if (me == 0) go = round < 7;  // 2 warm-ups, 5 timed
    {
      auto rq = me == 0 ? c->isend(&go, sizeof go, peer, 1) : c->irecv(&go, sizeof go, peer, 1);
      c->wait(rq, "all-reduce control");
    }
    if (!go) break;
    auto t0 = clk::now();
    c->allreduce_sum(sum.data(), sum.size(), both);
    if (round >= 2) ar.push_back(seconds_since(t0));
  }
  const double ar_s = ar.empty() ? 0.0 : quantile(ar, 0.5);
  const double allreduce_bandwidth = ar_s > 0 ? static_cast<double>(sizes.back()) / ar_s : 0;
  if (me == 0) {
    json r{{"latency_s", latency}, {"bandwidth", bandwidth}, {"allreduce_bandwidth", allreduce_bandwidth},
           {"allreduce_bytes", sizes.back()}, {"sizes", rows}, {"transport", c->transport()}};
    write_file_atomic(out, r.dump(2) + "\n");
  }
  c->barrier();
  return 0;
}

int ring_worker(int argc, char** argv, const std::string& out, int tokens, int iters) {
  auto c = comm::init_mpi(&argc, &argv);
  const int W = c->size(), me = c->rank();
  if (tokens < 1 || tokens > W || iters < 3) throw_failure("smp-profile", fmt::format("a ring of {} ranks with {} tokens", W, tokens));
  // As smp-run's workers wait: spinning only when every rank has a core of its own.
  c->set_spin_wait(W <= comm::online_cores());
  openblas_set_num_threads(1);
  const int M = 256, K = 512, N = 512;
  std::vector<float> a(static_cast<size_t>(M) * K, 0.5f), b(static_cast<size_t>(K) * N, 0.25f), y(static_cast<size_t>(M) * N);
  // The calling thread's CPU clock: the sgemm runs on it alone (one OpenBLAS thread), and the
  // process clock would also count Open MPI's own threads.
  auto op = [&] {
    const double c0 = thread_cpu_s();
    for (int r = 0; r < 3; ++r)
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, M, N, K, 1.0f, a.data(), K, b.data(), N, 0.0f, y.data(), N);
    return thread_cpu_s() - c0;
  };
  op();  // warm-up
  c->barrier();
  const int prev = (me + W - 1) % W, next = (me + 1) % W;
  char token = 0;
  double cpu = 0;
  int counted = 0;
  const auto t0 = clk::now();
  for (int it = 0; it < iters; ++it) {
    if (it > 0 || me >= tokens) {  // ranks 0 .. tokens-1 start with one
      auto r = c->irecv(&token, 1, prev, 7);
      c->wait(r, "the ring's token");
    }
    const double t = op();
    if (it >= 2) cpu += t, ++counted;
    auto s = c->isend(&token, 1, next, 7);
    c->wait(s, "the ring's token");
  }
  if (me < tokens) {  // the last pass of each token
    auto r = c->irecv(&token, 1, prev, 7);
    c->wait(r, "the ring's token");
  }
  double sums[2] = {cpu / std::max(counted, 1), seconds_since(t0)};
  c->allreduce_sum(sums, 2, [&] {
    std::vector<int> all(static_cast<size_t>(W));
    for (int r = 0; r < W; ++r) all[static_cast<size_t>(r)] = r;
    return all;
  }());
  if (me == 0) {
    json r{{"ranks", W}, {"tokens", tokens}, {"cpu_per_op_s", sums[0] / W}, {"wall_s", sums[1] / W}};
    write_file_atomic(out, r.dump(2) + "\n");
  }
  c->barrier();
  return 0;
}

json measure_ring(const fs::path& program, int ranks, int tokens, int iters) {
  TempDir dir("smp-ring");
  fs::path out = dir.path() / "ring.json";
  comm::MpirunOptions mo;
  mo.ranks = ranks;
  mo.session_dir = dir.path().string();
  comm::Command cmd = comm::mpirun_command(mo, program.string(), {"--ring-worker", out.string(), std::to_string(tokens), std::to_string(iters)});
  cmd.env["OMP_WAIT_POLICY"] = "PASSIVE";
  int rc = comm::run_command(cmd);
  if (rc != 0 || !fs::exists(out))
    throw_failure("smp-plan", fmt::format("the ring of {} local worker processes failed (exit {})", ranks, rc),
                  "check that mpirun works: mpirun -n 2 true");
  return read_json(out);
}

json measure_link(const fs::path& program, double budget_s) {
  TempDir dir("smp-pingpong");
  fs::path out = dir.path() / "pingpong.json";
  comm::MpirunOptions mo;
  mo.ranks = 2;
  mo.session_dir = dir.path().string();
  comm::Command cmd = comm::mpirun_command(mo, program.string(), {"--pingpong-worker", out.string(), "--budget-ms",
                                                                  fmt::format("{:.0f}", budget_s * 1e3)});
  cmd.env["OMP_WAIT_POLICY"] = "PASSIVE";
  int rc = comm::run_command(cmd);
  if (rc != 0 || !fs::exists(out)) {
    throw_failure("smp-profile --machine", fmt::format("the ping-pong between 2 local processes failed (exit {})", rc),
                  "check that mpirun works: mpirun -n 2 true");
  }
  return read_json(out);
}

json measure_machine(const MachineOptions& o, const std::function<void(const std::string&)>& note) {
  const int cores = comm::online_cores();
  const int workers = o.devices > 0 ? o.devices : cores;
  auto say = [&](const std::string& s) {
    if (note) note(s);
  };
  say(fmt::format("measuring GEMM (sgemm 1024^3, single-threaded OpenBLAS per thread) on 1..{} thread(s)", cores));
  std::vector<double> gemm;
  for (int t = 1; t <= cores; ++t) {
    gemm.push_back(measure_gemm_flops(t, o.budget_s));
    say(fmt::format("  {} thread(s): {:.2f} GFLOP/s", t, gemm.back() / 1e9));
  }
  say("measuring memory bandwidth (triad over 3 x 128 MiB)");
  double bw1 = measure_triad_bandwidth(1, o.budget_s);
  double bwn = cores > 1 ? measure_triad_bandwidth(cores, o.budget_s) : bw1;
  say(fmt::format("  1 thread: {:.2f} GB/s, {} threads: {:.2f} GB/s", bw1 / 1e9, cores, bwn / 1e9));

  say("measuring point-to-point latency and bandwidth between 2 local worker processes (mpirun, as smp-run)");
  json pp = measure_link(o.self, o.budget_s);
  double lat = pp["latency_s"].get<double>(), lbw = pp["bandwidth"].get<double>();
  say(fmt::format("  latency {:.2f} us, bandwidth {:.2f} GB/s ({}); all-reduce of {} bytes over both: {:.2f} GB/s", lat * 1e6,
                  lbw / 1e9, pp.value("transport", std::string("mpi")), pp.value("allreduce_bytes", 0), pp.value("allreduce_bandwidth", 0.0) / 1e9));
  for (const auto& r : pp["sizes"])
    say(fmt::format("    {:>9} bytes: {:10.2f} us one way ({} round trips)", r["bytes"].get<int64_t>(),
                    r["one_way_s"].get<double>() * 1e6, r["round_trips"].get<int64_t>()));

  // The planner's description of this machine as `workers` devices (same device name, so that a
  // profile made for it applies), with the measured figures in place of the estimates.
  json cl = cost::local_cpu_json(workers);
  json& dev = cl["hosts"][0]["devices"][0];
  const double share = static_cast<double>(cores) / workers;
  // Per worker: the FLOP/s of its share of the threads when all cores run (sustained together).
  double flops_machine = gemm.back();
  dev["peak_flops"] = json{{"fp32", flops_machine / workers}, {"bf16", flops_machine / workers}};
  dev["memory_bandwidth"] = bwn / workers;
  cl["hosts"][0]["link"] = json{{"bandwidth", std::max(lbw, 1.0)}, {"latency", std::max(lat, 1e-9)}};
  if (pp.value("allreduce_bandwidth", 0.0) > 0) cl["hosts"][0]["link"]["allreduce_bandwidth"] = pp["allreduce_bandwidth"];
  cl["name"] = "local-cpu (measured)";
  std::string gemm_list;
  for (size_t t = 0; t < gemm.size(); ++t) gemm_list += fmt::format("{}{}: {:.1f}", t ? ", " : "", t + 1, gemm[t] / 1e9);
  cl["description"] = fmt::format(
      "This machine ({} cores) as {} worker process{} sharing the cores ({:.2f} cores each), measured by smp-profile "
      "--machine: sustained sgemm GFLOP/s by threads [{}], triad memory bandwidth {:.2f} GB/s (1 thread {:.2f}), "
      "MPI point-to-point between 2 local processes {:.2f} GB/s and {:.2f} us. Each worker gets 1/{} of the "
      "machine's FLOP/s and bandwidth.",
      cores, workers, workers == 1 ? "" : "es", share, gemm_list, bwn / 1e9, bw1 / 1e9, lbw / 1e9, lat * 1e6, workers);
  return cl;
}

}  // namespace smp::train
