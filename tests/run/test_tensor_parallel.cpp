// Tensor parallelism and optimizer-state sharding train like one process: 20 AdamW steps (with
// gradient clipping, so that the global norm over split and replicated parameters counts) of the
// GPT sample and of a decoder built from torch.nn.MultiheadAttention (scripts/mha_decoder.py,
// exported into the test's directory), under (pipeline, tensor, data) = (1, 2, 1), (2, 2, 1) and
// (1, 2, 2), each with and without --shard-optimizer, for 1f1b and zb-h1, each run by real worker
// processes under mpirun. The losses must equal the single-process run's within 1e-4 relative;
// likewise the decoder with its loss in the graph (the LM head's SoftmaxCrossEntropyLoss split).
// Then checkpoints: a split run resumed from its shards continues exactly, and its --export
// (the shards joined) holds the weights the single process trains (with momentum SGD).
#include "run_util.hpp"

#include "train/checkpoint.hpp"

#include <nlohmann/json.hpp>

#include <cmath>

using namespace smp;
namespace fs = std::filesystem;

namespace {

constexpr int kSteps = 20;
constexpr int kBatch = 8;
constexpr int kMicro = 2;
const char* kTrain = "--optimizer adamw --lr 0.002 --clip-norm 0.5 --seed 3";
// For comparing trained weights: momentum keeps state (checkpointed, split with the optimizer
// state) but no per-element normalisation, which would blow rounding differences of gradients
// near zero up to whole steps.
const char* kTrainLinear = "--optimizer momentum --lr 0.05 --clip-norm 0.5 --seed 3";

struct Config {
  int p, t, d;
  const char* schedule;
  bool shard;
};

fs::path plan_for(const fs::path& dir, const std::string& model, const Config& c) {
  fs::path plan = dir / fmt::format("plan-{}-{}-{}-{}{}.json", c.p, c.t, c.d, c.schedule, c.shard ? "-zero" : "");
  std::string cmd = fmt::format("{} {} --batch-size {} --stages {} --data-parallel {} --tensor-parallel {} --devices {} "
                                "--microbatches {} --schedule {} --optimizer adamw {} -o {}",
                                test::bin("smp-plan"), model, kBatch, c.p, c.d, c.t, c.p * c.d * c.t, kMicro, c.schedule,
                                c.shard ? "--shard-optimizer" : "--no-shard-optimizer", plan.string());
  auto r = test::sh(cmd);
  INFO(cmd, "\n", r.out);
  REQUIRE(r.exit_code == 0);
  return plan;
}

std::vector<double> run_plan(const fs::path& plan, const fs::path& dir, const std::string& extra = "",
                             const char* training = kTrain) {
  fs::path losses = dir / "losses.txt";
  std::string cmd = fmt::format("{} {} --steps {} {} --losses {} --quiet --timeout 60 {}", test::bin("smp-run"), plan.string(),
                                kSteps, training, losses.string(), extra);
  auto r = test::sh(cmd);
  INFO(cmd, "\n", r.out);
  REQUIRE(r.exit_code == 0);
  auto got = test::read_losses(losses);
  REQUIRE(got.size() == kSteps);
  return got;
}

std::vector<Config> every_config() {
  std::vector<Config> configs;
  for (const char* sched : {"1f1b", "zb-h1"})
    for (bool shard : {false, true})
      for (auto [p, t, d] : {std::tuple{1, 2, 1}, std::tuple{2, 2, 1}, std::tuple{1, 2, 2}})
        configs.push_back({p, t, d, sched, shard});
  return configs;
}

void check_model(const std::string& name, const fs::path& model, const fs::path& dir,
                 const std::vector<Config>& configs = every_config()) {
  const std::vector<double> single = run_plan(plan_for(dir, model.string(), {1, 1, 1, "1f1b", false}), dir);
  for (const auto& c : configs) {
    std::string label = fmt::format("{}: pipeline {}, tensor {}, data {}, {}{}", name, c.p, c.t, c.d, c.schedule,
                                    c.shard ? ", optimizer state split" : "");
    INFO(label);
    auto got = run_plan(plan_for(dir, model.string(), c), dir);
    for (int k = 0; k < kSteps; ++k) {
      INFO("step ", k + 1, ": split ", got[k], ", single process ", single[k]);
      CHECK(std::fabs(got[k] - single[k]) <= 1e-4 * std::fabs(single[k]));
    }
    MESSAGE(label, ": last loss ", got.back(), " (single process ", single.back(), ")");
  }
}

// The weights of an ONNX file (python: onnx.numpy_helper), as name -> floats.
double max_weight_difference(const fs::path& a, const fs::path& b, const fs::path& dir) {
  fs::path script = dir / "diff.py";
  std::ofstream(script) << "import sys, onnx, numpy as np\n"
                           "from onnx import numpy_helper as h\n"
                           "a = {t.name: h.to_array(t) for t in onnx.load(sys.argv[1]).graph.initializer}\n"
                           "b = {t.name: h.to_array(t) for t in onnx.load(sys.argv[2]).graph.initializer}\n"
                           "assert a.keys() == b.keys() and all(a[k].shape == b[k].shape for k in a)\n"
                           "print(max(float(np.abs(a[k] - b[k]).max()) for k in a))\n";
  auto r = test::sh(fmt::format("{} {} {} {}", SMP_PYTHON, script.string(), a.string(), b.string()));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  return std::stod(r.out);
}

}  // namespace

TEST_CASE("GPT sample: tensor-parallel and optimizer-sharded plans train like one process") {
  auto dir = test::temp_dir("tp_gpt");
  check_model("gpt", test::src("sample_models/gpt.onnx"), dir);
  fs::remove_all(dir);
}

TEST_CASE("nn.MultiheadAttention decoder: tensor-parallel and optimizer-sharded plans train like one process") {
  auto dir = test::temp_dir("tp_mha");
  fs::path model = dir / "mha.onnx";
  auto e = test::sh(fmt::format("{} {} {}", SMP_PYTHON, test::src("scripts/mha_decoder.py"), model.string()));
  INFO(e.out);
  REQUIRE(e.exit_code == 0);
  check_model("mha", model, dir);
  fs::remove_all(dir);
}

TEST_CASE("the decoder with its loss in the graph: the LM head's SoftmaxCrossEntropyLoss runs vocabulary-parallel") {
  auto dir = test::temp_dir("tp_mha_loss");
  fs::path model = dir / "mha-loss.onnx";
  auto e = test::sh(fmt::format("{} {} {} --with-loss", SMP_PYTHON, test::src("scripts/mha_decoder.py"), model.string()));
  INFO(e.out);
  REQUIRE(e.exit_code == 0);
  // the plan names the split loss's group
  auto plan = plan_for(dir, model.string(), {1, 2, 1, "1f1b", false});
  std::ifstream f(plan);
  auto j = nlohmann::json::parse(f);
  bool head = false;
  for (const auto& g : j["tensor_parallel"]["groups"])
    head |= g["kind"] == "lm_head" && g["last_node"] == "/SoftmaxCrossEntropyLoss";
  CHECK(head);
  check_model("mha with its loss", model, dir,
              {{1, 2, 1, "1f1b", false}, {2, 2, 1, "zb-h1", true}, {1, 2, 2, "1f1b", true}});
  fs::remove_all(dir);
}

TEST_CASE("split checkpoints resume exactly; --export joins the shards into the single process's model") {
  auto dir = test::temp_dir("tp_ckpt");
  const std::string gpt = test::src("sample_models/gpt.onnx");
  fs::path single_plan = plan_for(dir, gpt, {1, 1, 1, "1f1b", false});
  run_plan(single_plan, dir, "--export " + (dir / "single.onnx").string(), kTrainLinear);
  for (Config c : {Config{2, 2, 1, "1f1b", false}, Config{1, 2, 2, "zb-h1", true}}) {
    INFO("pipeline ", c.p, ", tensor ", c.t, ", data ", c.d, std::string(c.shard ? ", optimizer state split" : ""));
    fs::path plan = plan_for(dir, gpt, c);
    fs::path ck = dir / "ck";
    fs::remove_all(ck);
    auto whole = run_plan(plan, dir, "--export " + (dir / "split.onnx").string(), kTrainLinear);
    // stop after 8 steps (a checkpoint), resume to 20
    auto first = test::sh(fmt::format("{} {} --steps 8 {} --quiet --timeout 60 --checkpoint-dir {}", test::bin("smp-run"),
                                      plan.string(), kTrainLinear, ck.string()));
    REQUIRE(first.exit_code == 0);
    CHECK(fs::exists(train::stage_file(ck, 8, 0, 1)));  // one file per rank of the group
    CHECK_FALSE(fs::exists(train::stage_file(ck, 8, 0)));
    fs::path rl = dir / "resumed.txt";
    fs::remove(rl);
    auto again = test::sh(fmt::format("{} {} --steps {} {} --quiet --timeout 60 --checkpoint-dir {} --resume --losses {}",
                                      test::bin("smp-run"), plan.string(), kSteps, kTrainLinear, ck.string(), rl.string()));
    INFO(again.out);
    REQUIRE(again.exit_code == 0);
    // the resumed run trained steps 9-20: the uninterrupted run's losses
    auto resumed = test::read_losses(rl);
    REQUIRE(resumed.size() == kSteps - 8);
    for (int k = 8; k < kSteps; ++k) CHECK(resumed[static_cast<size_t>(k - 8)] == doctest::Approx(whole[k]).epsilon(1e-12));
    // the joined model: every tensor of the model's shape, the weights the single process trained
    double diff = max_weight_difference(dir / "single.onnx", dir / "split.onnx", dir);
    MESSAGE("largest weight difference to the single process after ", kSteps, " steps: ", diff);
    CHECK(diff < 1e-5);
  }
  fs::remove_all(dir);
}
