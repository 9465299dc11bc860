// BatchNormalization and Dropout in training mode under real worker processes
// (tests/run/make_bn_model.py: a CNN exported as PyTorch trains it):
//   - one stage and a 2-stage pipeline, and 2 microbatches on one replica and 1 on each of two,
//     draw the same Dropout masks and update the same running statistics (the same losses and
//     exported statistics);
//   - a run resumed from a checkpoint ends with the running statistics of an uninterrupted run;
//   - --deferred-batch-norm: the running statistics do not depend on the microbatch count or on
//     the replicas (those of one microbatch of the whole batch);
//   - --export-mode inference writes BatchNormalization in inference mode and Dropout without
//     its training_mode, --export-mode training the graph as given.
#include "run_util.hpp"

#include "graph/loader.hpp"

#include <cmath>

using namespace smp;
namespace fs = std::filesystem;

namespace {

struct Run {
  std::vector<double> losses;
  std::map<std::string, std::vector<float>> stats;  // running statistics of the exported model
  int bn_training = 0;                             // BatchNormalization nodes still in training mode
  int dropout_training = 0;                        // Dropout nodes with a training_mode input
};

Run train(const fs::path& dir, const fs::path& plan, int steps, const std::string& extra, const std::string& tag) {
  fs::path losses = dir / (tag + ".losses"), out = dir / (tag + ".onnx");
  auto r = test::sh(fmt::format("{} {} --steps {} --lr 0.05 --seed 3 --data {} --losses {} --export {} --threads-per-worker 1 "
                                "--quiet --timeout 60 {}",
                                test::bin("smp-run"), plan.string(), steps, (dir / "data").string(), losses.string(),
                                out.string(), extra));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  Run run;
  run.losses = test::read_losses(losses);
  graph::LoadOptions lo;
  lo.batch_size = 2;
  lo.load_weights = true;
  graph::Graph g = graph::load_graph(out, lo);
  for (const auto& n : g.nodes) {
    if (n.op_type == "BatchNormalization") {
      run.bn_training += n.attr_int("training_mode", 0) != 0;
      for (int i : {3, 4}) {
        const auto& v = g.value(n.inputs[static_cast<size_t>(i)]);
        REQUIRE(v.data);
        const float* p = reinterpret_cast<const float*>(v.data->bytes.data());
        run.stats[v.name] = std::vector<float>(p, p + v.numel());
      }
    }
    if (n.op_type == "Dropout") run.dropout_training += n.inputs.size() > 2;
  }
  return run;
}

void same_losses(const Run& a, const Run& b, double tol) {
  REQUIRE(a.losses.size() == b.losses.size());
  for (size_t k = 0; k < a.losses.size(); ++k) {
    INFO("step ", k + 1, ": ", a.losses[k], " vs ", b.losses[k]);
    CHECK(std::fabs(a.losses[k] - b.losses[k]) <= tol * std::fabs(b.losses[k]));
  }
}

void same_stats(const Run& a, const Run& b, double tol) {
  REQUIRE(!a.stats.empty());
  REQUIRE(a.stats.size() == b.stats.size());
  for (const auto& [name, v] : a.stats) {
    const auto& w = b.stats.at(name);
    REQUIRE(v.size() == w.size());
    for (size_t i = 0; i < v.size(); ++i) {
      INFO(name, "[", i, "]: ", v[i], " vs ", w[i]);
      CHECK(std::fabs(v[i] - w[i]) <= tol * std::max(1.0f, std::fabs(w[i])));
    }
  }
}

}  // namespace

TEST_CASE("BatchNorm and Dropout in training mode: pipelines, replicas, checkpoints, deferred statistics, export forms") {
  auto dir = test::temp_dir("bn");
  auto mk = test::sh(fmt::format("{} {} {}", SMP_PYTHON, test::src("tests/run/make_bn_model.py"), (dir / "data").string()));
  INFO(mk.out);
  REQUIRE(mk.exit_code == 0);
  const fs::path model = dir / "data" / "bn.onnx";
  const int steps = 4;

  auto one = train(dir, test::make_plan_for(dir, model, 8, 1, 1, 2, "1f1b"), steps, "", "one");
  auto pipe = train(dir, test::make_plan_for(dir, model, 8, 2, 1, 2, "1f1b"), steps, "", "pipe");
  auto reps = train(dir, test::make_plan_for(dir, model, 8, 1, 2, 1, "1f1b"), steps, "", "reps");
  // The losses move (Dropout is random, the model learns), and every split agrees.
  CHECK(one.losses.front() != one.losses.back());
  same_losses(pipe, one, 1e-6);
  same_losses(reps, one, 1e-6);
  REQUIRE(one.stats.size() == 4);
  same_stats(pipe, one, 1e-6);
  // Two replicas keep their own statistics (as PyTorch's DDP does); replica 0's saw microbatch
  // 0 only, so they differ from one replica's that saw both.
  bool differ = false;
  for (const auto& [name, v] : reps.stats) differ = differ || v != one.stats.at(name);
  CHECK(differ);

  // The inference form: BatchNormalization uses its statistics, Dropout keeps all.
  CHECK(one.bn_training == 0);
  CHECK(one.dropout_training == 0);
  auto as_trained = train(dir, test::make_plan_for(dir, model, 8, 1, 1, 2, "1f1b"), steps, "--export-mode training", "form");
  CHECK(as_trained.bn_training == 2);
  CHECK(as_trained.dropout_training == 1);
  same_stats(as_trained, one, 0);

  // A resumed run ends with the statistics of an uninterrupted one.
  auto plan = test::make_plan_for(dir, model, 8, 2, 1, 2, "1f1b");
  auto ck = (dir / "ck").string();
  train(dir, plan, 2, "--checkpoint-dir " + ck, "first");
  auto resumed = train(dir, plan, steps, "--checkpoint-dir " + ck + " --resume", "resumed");
  same_stats(resumed, pipe, 0);

  // Deferred: the statistics of the whole batch, however it is split — those of one microbatch
  // of 8. Compared where the inputs of a BatchNormalization do not depend on the split: the
  // first one ("1."), in the first step (later, each microbatch's normalization changes the
  // gradients, and the second one's inputs).
  auto first_bn = [](Run r) {
    std::map<std::string, std::vector<float>> keep;
    for (auto& [name, v] : r.stats)
      if (name.rfind("1.", 0) == 0) keep[name] = v;
    r.stats = keep;
    return r;
  };
  auto whole = first_bn(train(dir, test::make_plan_for(dir, model, 8, 1, 1, 1, "1f1b"), 1, "", "whole"));
  auto d_pipe = first_bn(train(dir, test::make_plan_for(dir, model, 8, 2, 1, 2, "1f1b"), 1, "--deferred-batch-norm", "dpipe"));
  auto d_reps = first_bn(train(dir, test::make_plan_for(dir, model, 8, 1, 2, 2, "1f1b"), 1, "--deferred-batch-norm", "dreps"));
  auto per_mb = first_bn(train(dir, test::make_plan_for(dir, model, 8, 2, 1, 2, "1f1b"), 1, "", "permb"));
  REQUIRE(whole.stats.size() == 2);
  same_stats(d_pipe, whole, 1e-5);
  same_stats(d_reps, whole, 1e-5);
  bool moved = false;
  for (const auto& [name, v] : per_mb.stats)
    for (size_t i = 0; i < v.size(); ++i) moved = moved || std::fabs(v[i] - whole.stats.at(name)[i]) > 1e-3f;
  CHECK(moved);  // per microbatch, they would differ
  fs::remove_all(dir);
}
