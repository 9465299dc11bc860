// smp-profile's per-node measurement: each node of the model run alone (a one-node stage
// executor at the microbatch size, random inputs), forward / input gradient / weight gradient
// timed until a per-node time budget; then the whole model once as one stage, to calibrate the
// sum of the isolated nodes against the real stage (per-node overheads, cache effects).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>

namespace smp::app {

struct NodeProfileOptions {
  std::filesystem::path model;
  int64_t batch_size = 0;
  int microbatches = 1;
  std::map<std::string, int64_t> dims;
  int threads = 1;
  std::string device_name;     // written as device.name (the planner's name for this machine's devices)
  double budget_s = 0.05;      // per node (all three passes together)
  double whole_budget_s = 1.0; // the whole-model calibration run
  int warmup = 2;
  int min_reps = 5;
  int concurrent = 1;          // worker processes measuring the whole model at once (the plan's workers)
  bool calibrate = true;       // scale node times so that their sum equals the whole stage
  // More worker threads than cores (devices x threads > cores): the workers time-share the cores
  // when they all compute, so each measured time is multiplied by this factor (1: none).
  double oversubscription = 1.0;
  bool quiet = false;
  uint64_t seed = 1;
};

// Returns the profile JSON (schemas/profile.schema.json). Prints progress (unless quiet) and a
// summary to stdout.
nlohmann::json profile_nodes(const NodeProfileOptions& o);

}  // namespace smp::app
