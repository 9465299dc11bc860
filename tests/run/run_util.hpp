// Helpers for the smp-run tests: commands, plans, data from PyTorch's reference batches.
#pragma once

#include "test_process.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>
#include <vector>

namespace smp::test {

namespace fs = std::filesystem;

using Cmd = CmdResult;

// Runs `cmd` allowed to start mpirun as root.
inline Cmd sh(const std::string& cmd) {
  return run_cmd("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + cmd);
}

inline std::string bin(const std::string& tool) { return std::string(SMP_BIN_DIR) + "/" + tool; }
inline std::string src(const std::string& p) { return std::string(SMP_SOURCE_DIR) + "/" + p; }

inline fs::path temp_dir(const std::string& tag) {
  auto d = fs::temp_directory_path() / fmt::format("smp_run_{}_{}", tag, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// smp-plan for the ONNX file `model` with fixed degrees on `p*d` local CPU devices; returns the
// plan path.
inline fs::path make_plan_for(const fs::path& dir, const fs::path& model, int64_t batch, int p, int d, int m,
                              const std::string& schedule, int chunks = 1) {
  fs::path plan = dir / fmt::format("{}-{}x{}-m{}-{}-v{}.json", model.stem().string(), p, d, m, schedule, chunks);
  std::string cmd = fmt::format("{} {} --batch-size {} --stages {} --data-parallel {} --devices {} --microbatches {} "
                                "--schedule {} {} --optimizer sgd -o {}",
                                bin("smp-plan"), model.string(), batch, p, d, p * d, m, schedule,
                                chunks > 1 ? fmt::format("--chunks {}", chunks) : "", plan.string());
  Cmd r = sh(cmd);
  INFO(cmd, "\n", r.out);
  REQUIRE(r.exit_code == 0);
  return plan;
}

// The same for a bundled sample model (sample_models/NAME.onnx).
inline fs::path make_plan(const fs::path& dir, const std::string& model, int64_t batch, int p, int d, int m,
                          const std::string& schedule, int chunks = 1) {
  return make_plan_for(dir, src("sample_models/" + model + ".onnx"), batch, p, d, m, schedule, chunks);
}

inline std::vector<double> read_losses(const fs::path& f) {
  std::ifstream in(f);
  std::vector<double> v;
  double x;
  while (in >> x) v.push_back(x);
  return v;
}

// Lines in a file written as a run goes (--metrics: one per step); 0 while it does not exist.
inline int lines_in(const fs::path& f) {
  std::ifstream in(f);
  int n = 0;
  for (std::string l; std::getline(in, l);) ++n;
  return n;
}

}  // namespace smp::test
