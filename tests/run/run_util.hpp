// Helpers for the smp-run tests: commands, plans, data from PyTorch's reference batches.
#pragma once

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <sys/wait.h>
#include <unistd.h>
#include <vector>

namespace smp::test {

namespace fs = std::filesystem;

struct Cmd {
  int exit_code = -1;
  std::string out;
  double seconds = 0;
};

inline Cmd sh(const std::string& cmd) {
  Cmd r;
  auto t0 = std::chrono::steady_clock::now();
  FILE* p = ::popen(("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + cmd + " 2>&1").c_str(), "r");
  REQUIRE(p);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  r.exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

inline std::string bin(const std::string& tool) { return std::string(SMP_BIN_DIR) + "/" + tool; }
inline std::string src(const std::string& p) { return std::string(SMP_SOURCE_DIR) + "/" + p; }

inline fs::path temp_dir(const std::string& tag) {
  auto d = fs::temp_directory_path() / fmt::format("smp_run_{}_{}", tag, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// smp-plan for `model` with fixed degrees on `p*d` local CPU devices; returns the plan path.
inline fs::path make_plan(const fs::path& dir, const std::string& model, int64_t batch, int p, int d, int m,
                          const std::string& schedule, int chunks = 1) {
  fs::path plan = dir / fmt::format("{}-{}x{}-{}-v{}.json", model, p, d, schedule, chunks);
  std::string cmd = fmt::format("{} {} --batch-size {} --stages {} --data-parallel {} --devices {} --microbatches {} "
                                "--schedule {} {} -o {}",
                                bin("smp-plan"), src("sample_models/" + model + ".onnx"), batch, p, d, p * d, m, schedule,
                                chunks > 1 ? fmt::format("--chunks {}", chunks) : "", plan.string());
  Cmd r = sh(cmd);
  INFO(cmd, "\n", r.out);
  REQUIRE(r.exit_code == 0);
  return plan;
}

inline std::vector<double> read_losses(const fs::path& f) {
  std::ifstream in(f);
  std::vector<double> v;
  double x;
  while (in >> x) v.push_back(x);
  return v;
}

}  // namespace smp::test
