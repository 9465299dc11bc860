// Pipelined training equals single-device training and PyTorch: 20 SGD steps of the GPT and MLP
// samples with plans of (pipeline, data-parallel) = (1,1), (2,1), (4,1), (2,2) under gpipe, 1f1b,
// zb-h1 and interleaved, each run by real worker processes under mpirun.
#include "run_util.hpp"

#include <cmath>

using namespace smp;
namespace fs = std::filesystem;

namespace {

constexpr int kSteps = 20;
constexpr int kBatch = 8;
constexpr int kMicro = 4;
const char* kLr = "0.05";

struct Config {
  int p, d;
  const char* schedule;
  int chunks;
};

void check_model(const std::string& model) {
  auto dir = test::temp_dir("pipe_" + model);
  auto ref = test::sh(fmt::format("{} {} {} {} {} {} {}", SMP_PYTHON, test::src("tests/run/make_reference.py"), model,
                                  dir.string(), kSteps, kBatch, kLr));
  INFO(ref.out);
  REQUIRE(ref.exit_code == 0);
  auto torch = test::read_losses(dir / "torch_losses.txt");
  REQUIRE(torch.size() == kSteps);

  std::vector<Config> configs = {
      {1, 1, "1f1b", 1},
      {2, 1, "gpipe", 1}, {2, 1, "1f1b", 1}, {2, 1, "zb-h1", 1}, {2, 1, "interleaved", 2},
      {4, 1, "gpipe", 1}, {4, 1, "1f1b", 1}, {4, 1, "zb-h1", 1}, {4, 1, "interleaved", 2},
      {2, 2, "gpipe", 1}, {2, 2, "1f1b", 1}, {2, 2, "zb-h1", 1}, {2, 2, "interleaved", 2},
  };
  std::vector<double> single;
  for (const auto& c : configs) {
    std::string label = fmt::format("{} (p={}, d={}) {} v={}", model, c.p, c.d, c.schedule, c.chunks);
    INFO(label);
    auto plan = test::make_plan(dir, model, kBatch, c.p, c.d, kMicro, c.schedule, c.chunks);
    fs::path losses = dir / "losses.txt";
    auto r = test::sh(fmt::format("{} {} --steps {} --lr {} --data {} --losses {} --quiet --timeout 60", test::bin("smp-run"),
                                  plan.string(), kSteps, kLr, dir.string(), losses.string()));
    INFO(r.out);
    REQUIRE(r.exit_code == 0);
    auto got = test::read_losses(losses);
    REQUIRE(got.size() == kSteps);
    if (single.empty()) single = got;
    for (int k = 0; k < kSteps; ++k) {
      INFO("step ", k + 1, ": smp ", got[k], ", single process ", single[k], ", PyTorch ", torch[k]);
      CHECK(std::fabs(got[k] - torch[k]) <= 1e-4 * std::fabs(torch[k]));
      CHECK(std::fabs(got[k] - single[k]) <= 1e-4 * std::fabs(single[k]));
    }
    MESSAGE(label, ": last loss ", got.back(), " (PyTorch ", torch.back(), ")");
  }
  fs::remove_all(dir);
}

}  // namespace

TEST_CASE("MLP: every plan and schedule trains like one device and like PyTorch") { check_model("mlp"); }

TEST_CASE("GPT: every plan and schedule trains like one device and like PyTorch") { check_model("gpt"); }
