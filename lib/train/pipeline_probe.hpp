// smp-profile's pipelined probe: when the plan's workers outnumber the cores, the slow-down of a
// worker cannot be read off concurrent copies of the whole model. Measured on this machine, a
// 4-stage CNN pipeline on 2 cores spent ~1.5x the profile's CPU time per stage (its waits put
// the cores to sleep and its stages run in turns, cold), while four copies at once spent 1.0 to
// 1.1x; and its small stages, waiting for cores held by the large ones, held the pipeline back
// beyond what the simulator models. So the probe runs the real thing, briefly: it plans the model
// with the fresh profile (that many stages, 1f1b, the profile's microbatches), runs the plan with
// smp-run for about twice the profiling budget, and scales every time in the profile by the
// measured step (median) over the predicted one. The profile records what was run and the factor
// under contention.pipeline_probe.
#pragma once

#include "train/profiler.hpp"

#include <nlohmann/json.hpp>

#include <filesystem>

namespace smp::train {

struct PipelineProbeOptions {
  std::filesystem::path smp_run;  // the smp-run binary
  double budget_s = 3;            // how long the pipeline runs (at least 10 timed steps)
};

// Plans `what`'s model into what.concurrent stages (what.threads threads per worker), runs it
// and applies the factor to `profile` (smp-profile's JSON for `what`, times already scaled by the
// copies' slow-down). Returns false, after a note saying why, when the model cannot be split into
// that many stages; a failed run is an error.
bool probe_pipeline(const NodeProfileOptions& what, const PipelineProbeOptions& how, nlohmann::json& profile,
                    const ProfileOutput& out = {});

}  // namespace smp::train
