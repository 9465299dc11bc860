// The kernel calibration behind smp-plan's estimates for this machine (cost/calibration.hpp):
// smp's own CPU kernels timed on shapes of every kernel family at several sizes, with 1 and with
// all cores' threads; the slow-down of concurrent copies; the optimizer step per parameter; and
// the link between two worker processes. Taken once in a few seconds and cached per machine and
// smp version, so that the first plan of a new user is priced by what this machine really does.
#pragma once

#include "cost/calibration.hpp"

#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace smp::train {

struct CalibrateOptions {
  std::vector<int> threads;       // thread counts to measure (empty: 1 and all cores)
  double budget_s = 0.012;        // per kernel size and round, forward and backward (at least 3 repeats each)
  int rounds = 3;                 // times over the whole list of sizes; per size the median
  // Program whose hidden --pingpong-worker and --ring-worker modes measure the link and workers
  // beyond the cores under mpirun (smp-profile); empty or missing: neither is measured (the
  // link's stated estimate stays).
  std::filesystem::path pingpong_program;
  uint64_t seed = 1;
};

using Note = std::function<void(const std::string&)>;

// Measures (seconds; nothing written).
cost::KernelCalibration calibrate_cpu(const CalibrateOptions& o, const Note& note = {});

// $XDG_CACHE_HOME/smp (else $HOME/.cache/smp) / calibration-<host>-<cpu and cores hash>-<smp version>.json
std::filesystem::path calibration_cache_path();

// The cached calibration of this machine when there is a valid one (and `refresh` is false), else
// a fresh measurement, written to the cache atomically. `source` of the result names the file.
// A cache that cannot be read or written is not an error: it is measured again (with a note).
std::shared_ptr<const cost::KernelCalibration> load_or_calibrate(const CalibrateOptions& o, bool refresh,
                                                                 const Note& note = {});

}  // namespace smp::train
