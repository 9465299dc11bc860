// Pipelines on one GPU (skipped, CTest code 77, without a CUDA device): 2- and 4-stage plans and
// a data-parallel pair, every rank on device 0 (ranks that share a GPU exchange tensors through
// CUDA IPC, or host memory), started by smp's local launcher (no MPI: the GPU machines have none),
// train like the single-stage plan on the same GPU: fp32 losses within 1e-4 relative.
#include "run_util.hpp"

#include <cmath>
#include <cstdlib>

using namespace smp;
namespace fs = std::filesystem;

namespace {

// The build tree's programs and sources, or the device bundle's (scripts/device-check.sh sets
// SMP_BIN_DIR and SMP_SOURCE_DIR).
std::string bin(const std::string& tool) {
  const char* e = std::getenv("SMP_BIN_DIR");
  return e ? std::string(e) + "/" + tool : test::bin(tool);
}
std::string src(const std::string& p) {
  const char* e = std::getenv("SMP_SOURCE_DIR");
  return e ? std::string(e) + "/" + p : test::src(p);
}

constexpr int kSteps = 8;

// A cluster of one host with `n` GPUs: the plan puts every rank on CUDA (no calibration of this
// machine needed).
fs::path cluster(const fs::path& dir, int n, const std::string& memory = "40000000000") {
  fs::path f = dir / fmt::format("gpus{}-{}.json", n, memory);
  std::ofstream(f) << fmt::format(
      R"({{"version": 1, "name": "one-gpu-host", "hosts": [{{"name": "local", "count": 1, "devices": [{{"kind": "gpu", "name": "GPU", )"
      R"("count": {}, "memory_bytes": {}, "peak_flops": {{"fp32": 2e13, "bf16": 2e14}}, "memory_bandwidth": 1.5e12, )"
      R"("kernel_overhead_s": 5e-6}}], "link": {{"bandwidth": 1e11, "latency": 5e-6}}}}]}})",
      n, memory);
  return f;
}

std::vector<double> train(const fs::path& dir, const std::string& model, int p, int d, const std::string& schedule,
                          const std::string& env, std::string* out) {
  const fs::path plan = dir / fmt::format("{}-{}x{}-{}.json", model, p, d, schedule);
  auto pr = test::sh(fmt::format("{} {} --batch-size 8 --stages {} --data-parallel {} --microbatches 4 --schedule {} --cluster {} "
                                 "--optimizer sgd -o {}",
                                 bin("smp-plan"), src("sample_models/" + model + ".onnx"), p, d, schedule,
                                 cluster(dir, p * d).string(), plan.string()));
  INFO(pr.out);
  REQUIRE(pr.exit_code == 0);
  const fs::path losses = dir / "losses.txt";
  fs::remove(losses);
  auto r = test::sh(fmt::format("{} {} {} --backend cuda --device 0 --launcher local --steps {} --lr 0.05 --losses {} --timeout 60",
                           env, bin("smp-run"), plan.string(), kSteps, losses.string()));
  *out = r.out;
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  auto got = test::read_losses(losses);
  REQUIRE(got.size() == kSteps);
  return got;
}

void compare(const std::vector<double>& got, const std::vector<double>& single) {
  for (int k = 0; k < kSteps; ++k) {
    INFO("step ", k + 1, ": ", got[static_cast<size_t>(k)], " against one stage's ", single[static_cast<size_t>(k)]);
    CHECK(std::fabs(got[static_cast<size_t>(k)] - single[static_cast<size_t>(k)]) <= 1e-4 * std::fabs(single[static_cast<size_t>(k)]));
  }
}

}  // namespace

TEST_CASE("GPT on one GPU: 2 and 4 stages (1f1b, zb-h1) and 2 replicas train like one stage; tensors stay on the GPU") {
  auto dir = test::temp_dir("gpu_pipe");
  std::string out;
  const auto single = train(dir, "gpt", 1, 1, "1f1b", "", &out);
  struct Config {
    int p, d;
    const char* schedule;
    const char* env;
    const char* transport;
  };
  for (const Config& c : {Config{2, 1, "1f1b", "", "channels over cuda-ipc"}, Config{2, 1, "zb-h1", "", "channels over cuda-ipc"},
                          Config{4, 1, "1f1b", "", "channels over cuda-ipc"},
                          Config{2, 1, "1f1b", "SMP_SAME_GPU=host", "channels over host-staged"},
                          Config{1, 2, "1f1b", "", "gradient group through the host"},
                          Config{2, 1, "1f1b", "SMP_DEVICE_COMM=off", "through host memory over"}}) {
    INFO(c.p, " stages x ", c.d, " replicas, ", c.schedule, " ", c.env);
    const auto got = train(dir, "gpt", c.p, c.d, c.schedule, c.env, &out);
    INFO(out);
    CHECK(out.find(c.transport) != std::string::npos);
    compare(got, single);
  }
  fs::remove_all(dir);
}

TEST_CASE("smp-run's pre-flight check: a plan that predicts more memory than the GPU has is refused before any worker starts") {
  // A cluster file that claims GPUs of a petabyte: the plan fits there and predicts far more than
  // any real GPU holds.
  auto dir = test::temp_dir("gpu_mem");
  const fs::path plan = dir / "huge.json";
  auto pr = test::sh(fmt::format("{} {} --batch-size 262144 --stages 1 --microbatches 1 --cluster {} --optimizer sgd -o {}",
                                 bin("smp-plan"), src("sample_models/gpt.onnx"), cluster(dir, 1, "1e15").string(), plan.string()));
  INFO(pr.out);
  REQUIRE(pr.exit_code == 0);
  auto r = test::sh(fmt::format("{} {} --backend cuda --device 0 --launcher local --steps 1", bin("smp-run"), plan.string()));
  INFO(r.out);
  CHECK(r.exit_code == 2);
  CHECK(r.out.find("error: cuda:0: the plan predicts a peak of") != std::string::npos);
  CHECK(r.out.find("for rank 0 on it, more than its") != std::string::npos);
  fs::remove_all(dir);
}
