// Measured per-node times (schemas/profile.schema.json), written by smp-profile:
// {"version": 1, "smp_version": "...", "device": {"kind", "name", ...}, "threads": N,
//  "microbatch_size": U, "nodes": {"<node name>": {"forward_s", "backward_input_s",
//  "backward_weight_s", "spread", "peak_bytes", "in_flight": {"forward_s", ...}}},
//  "in_flight_microbatches": D,
//  "optimizer_step_s_per_parameter": {"sgd": s, "momentum": s, "adamw": s}}
// Times are medians for one microbatch of U samples on one device of the named kind: with one
// microbatch in flight, and (in_flight) with D of them, all forwards before all backwards. The
// optimizer step (a worker's end-of-step gradient norm and weight update) is per fp32 parameter.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>
#include <unordered_map>

namespace smp::cost {

inline constexpr int kProfileFileVersion = 1;

struct NodeMeasure {
  double forward_s = 0, backward_input_s = 0, backward_weight_s = 0;
  double spread = 0;      // relative spread of the samples (e.g. (p90 - p10) / median)
  double peak_bytes = 0;
  bool has_in_flight = false;  // the same three times with Profile::in_flight_microbatches in flight
  double in_flight_forward_s = 0, in_flight_backward_input_s = 0, in_flight_backward_weight_s = 0;
};

struct Profile {
  std::string path;
  std::string device_name;  // matches DeviceSpec::name of the cluster's devices it applies to
  std::string device_kind;
  int threads = 0;
  int64_t microbatch_size = 0;
  int in_flight_microbatches = 0;  // 0: measured with one in flight only
  std::string smp_version;
  std::unordered_map<std::string, NodeMeasure> nodes;
  // Optimizer name ("sgd", "momentum", "adamw") -> seconds per parameter of its step; may be empty.
  std::unordered_map<std::string, double> optimizer_step_s;
};

Profile profile_from_json(const nlohmann::json& j, const std::string& where);
Profile read_profile(const std::filesystem::path& path);

}  // namespace smp::cost
