// smp-profile's per-node measurement at the microbatch size, on random inputs:
//  1. every node timed in context: the whole model as one stage (forward, loss, fused backward,
//     as smp-run runs it), each node's forward and backward timed by the executor's hook;
//  2. contention: the whole model in 1..K concurrent processes (K = the plan's workers on this
//     machine), in short alternating windows, giving how much more CPU time a step takes with
//     c of them busy; with time-sharing beyond the cores, how much slower each runs when the
//     pipeline keeps several busy;
//  3. every node alone (a one-node stage): its peak memory, and the split of its backward into
//     input gradient (B) and weight gradient (W), which the whole model cannot tell apart.
#pragma once

#include "graph/graph.hpp"

#include <nlohmann/json.hpp>

#include <array>

#include <functional>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace smp::train {

struct NodeProfileOptions {
  std::filesystem::path model;
  int64_t batch_size = 0;
  int microbatches = 1;
  std::map<std::string, int64_t> dims;
  std::vector<std::string> frozen;  // initializers kept constant (graph::LoadOptions::frozen)
  int threads = 1;
  std::string device_name;     // written as device.name (the planner's name for this machine's devices)
  double budget_s = 0.02;      // per node alone (all three passes together)
  double whole_budget_s = 1.5; // the in-context timing; half as much again per count of concurrent copies
  int warmup = 2;
  int min_reps = 5;
  int concurrent = 1;          // the plan's workers on this machine: up to this many copies at once
  bool calibrate = true;       // multiply the times by the measured slow-down of sharing the machine
  // More worker threads than cores (devices x threads > cores): the workers time-share the cores
  // when they all compute, so each measured time is multiplied by this factor (1: none).
  double oversubscription = 1.0;
  uint64_t seed = 1;
};

// Where the profiler's text goes (the app prints it; any of them may be empty).
struct ProfileOutput {
  std::function<void(const std::string&)> note;                         // what it is doing now
  std::function<void(int done, int total, const std::string& what)> progress;  // per node measured alone
  std::function<void(const std::string&)> summary;                      // the result, line by line
};

// The q-quantile of v (0 <= q <= 1), interpolated linearly between neighbours; 0 when v is empty.
double quantile(std::vector<double> v, double q);

// Returns the profile JSON (schemas/profile.schema.json); reports through `out`.
nlohmann::json profile_nodes(const NodeProfileOptions& o, const ProfileOutput& out = {});

// Pieces the kernel calibration (calibrate.hpp) shares with the profile, on a graph of its own:
// the median CPU-time slow-down of c = 1 .. `copies` single-threaded copies of the whole graph
// (with its loss) computing at once, index c - 1, forked processes as the profile's contention
// windows; and the worker's end-of-step work (gradient norm + update) per parameter of the graph's
// parameters for sgd, momentum, adamw. Call the first before this process starts a thread pool.
std::vector<double> contention_slowdown(const graph::Graph& g, int copies, double window_s, int rounds, uint64_t seed);
std::array<double, 3> optimizer_step_per_parameter(const graph::Graph& g, double budget_s);

}  // namespace smp::train
