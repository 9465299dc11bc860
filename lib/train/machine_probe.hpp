// smp-profile --machine: this machine's sustained GEMM FLOP/s, memory bandwidth and the
// point-to-point bandwidth and latency between two local worker processes over the MPI
// transport smp-run uses; written as a cluster description (schemas/cluster.schema.json).
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <functional>

#include <string>
#include <vector>

namespace smp::train {

struct MachineOptions {
  int devices = 0;          // worker processes sharing the cores (0: one per core), as smp-plan --devices
  double budget_s = 0.5;    // per measurement
  std::string self;         // this program, started twice under mpirun for the ping-pong
};

// GEMM FLOP/s with `threads` threads, each running single-threaded sgemm on its own matrices.
double measure_gemm_flops(int threads, double budget_s);
// STREAM triad a[i] = b[i] + s * c[i] over arrays far larger than the caches; bytes/s counted
// as 3 arrays (2 read, 1 written) per element, with `threads` threads.
double measure_triad_bandwidth(int threads, double budget_s);

// The hidden ping-pong worker (run under mpirun as 2 ranks): rank 0 writes
// {"latency_s", "bandwidth", "sizes": [{"bytes", "one_way_s"}]} to `out`.
int pingpong_worker(int argc, char** argv, const std::string& out, double budget_s);

// The ping-pong run: `program` (smp-profile) started as 2 ranks under mpirun as smp-run starts its
// workers, in its hidden --pingpong-worker mode; returns what rank 0 wrote. Failure when it fails.
nlohmann::json measure_link(const std::filesystem::path& program, double budget_s);

// The hidden ring worker (run under mpirun as W ranks, possibly more than the cores): `tokens`
// tokens travel round the ranks, each rank computing a ~5 ms sgemm chain (one thread) per token
// it holds before passing it on, `iters` times, and waiting as smp-run's workers wait. Rank 0
// writes {"ranks", "tokens", "cpu_per_op_s" (the ranks' mean CPU time per chain), "wall_s"}.
int ring_worker(int argc, char** argv, const std::string& out, int tokens, int iters);

// What workers sharing this machine's cores lose beyond their CPU time: the ring above with
// `ranks` workers and `tokens` tokens, started by `program` (smp-profile) under mpirun as
// smp-run starts its workers; returns what rank 0 wrote.
nlohmann::json measure_ring(const std::filesystem::path& program, int ranks, int tokens, int iters);

// Runs everything and returns the cluster JSON; what it is doing and measuring goes to `note`
// line by line (the app prints it).
nlohmann::json measure_machine(const MachineOptions& o, const std::function<void(const std::string&)>& note = {});

}  // namespace smp::train
