// Training pieces: optimizers against PyTorch, learning-rate schedule, clipping, checkpoints,
// data loading and its errors, the synthetic task.
#include <doctest/doctest.h>

#include "core/error.hpp"
#include "graph/loader.hpp"
#include "runtime/npy.hpp"
#include "train/checkpoint.hpp"
#include "train/data.hpp"
#include "train/optimizer.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <unistd.h>

using namespace smp;
using namespace smp::train;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir(const std::string& tag) {
  auto d = fs::temp_directory_path() / fmt::format("smp_train_{}_{}", tag, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

std::string sample(const std::string& n) { return std::string(SMP_SOURCE_DIR) + "/sample_models/" + n + ".onnx"; }

graph::Graph load(const std::string& n, int64_t b) {
  graph::LoadOptions o;
  o.batch_size = b;
  return graph::load_graph(sample(n), o);
}

template <class T>
void save(const fs::path& f, DType t, Shape s, const std::vector<T>& v) {
  runtime::write_npy(f, t, s, v.data());
}

}  // namespace

TEST_CASE("optimizers, warm-up + cosine and clipping follow PyTorch step by step") {
  auto dir = temp_dir("optim");
  const int n = 257, steps = 12;
  std::vector<float> p(n);
  for (int i = 0; i < n; ++i) p[i] = std::sin(0.37f * static_cast<float>(i));
  save(dir / "p.npy", DType::F32, {n}, p);
  std::vector<std::vector<float>> grads(steps, std::vector<float>(n));
  for (int k = 0; k < steps; ++k) {
    for (int i = 0; i < n; ++i) grads[k][i] = std::cos(0.11f * static_cast<float>(i * (k + 1))) * (k % 3 == 0 ? 5.0f : 0.3f);
    save(dir / fmt::format("g{}.npy", k), DType::F32, {n}, grads[k]);
  }
  OptimizerConfig base;
  base.lr = 0.05;
  base.weight_decay = 0.01;
  base.warmup_steps = 3;
  base.total_steps = steps;
  base.cosine = true;
  base.clip_norm = 4.0;
  std::string cfg = fmt::format(R"({{"lr": 0.05, "wd": 0.01, "warmup": 3, "total": {}, "steps": {}, "clip": 4.0}})", steps, steps);
  std::string cmd = fmt::format("{} {}/tests/train/torch_optim.py {} '{}'", SMP_PYTHON, SMP_SOURCE_DIR, dir.string(), cfg);
  REQUIRE(std::system(cmd.c_str()) == 0);

  for (auto kind : {OptimizerKind::Sgd, OptimizerKind::Momentum, OptimizerKind::AdamW}) {
    INFO(optimizer_name(kind));
    OptimizerConfig c = base;
    c.kind = kind;
    std::vector<float> q = p;
    ParamState st;
    for (int k = 0; k < steps; ++k) {
      std::vector<float> g = grads[k];
      double f = clip_factor(c, std::sqrt(sum_of_squares(g)));
      for (auto& x : g) x = static_cast<float>(x * f);
      apply_update(c, lr_at(c, k), q, g, st);
      auto want = runtime::read_npy(dir / fmt::format("{}_{}.npy", optimizer_name(kind), k));
      const float* w = reinterpret_cast<const float*>(want.bytes.data());
      double worst = 0;
      int wi = 0;
      for (int i = 0; i < n; ++i) { double e = std::fabs(q[i] - w[i]) / std::max(1e-3, std::fabs(double(w[i]))); if (e > worst) worst = e, wi = i; }
      if (worst > 1e-5) MESSAGE("i=", wi, " smp=", q[wi], " torch=", w[wi], " g=", grads[k][wi]);
      INFO("step ", k);
      CHECK(worst < 1e-5);
    }
  }
  fs::remove_all(dir);
}

TEST_CASE("learning-rate schedule: linear warm-up, then cosine to min_lr") {
  OptimizerConfig c;
  c.lr = 1.0;
  c.warmup_steps = 4;
  c.total_steps = 14;
  c.cosine = true;
  c.min_lr = 0.1;
  CHECK(lr_at(c, 0) == doctest::Approx(0.25));
  CHECK(lr_at(c, 3) == doctest::Approx(1.0));
  CHECK(lr_at(c, 4) == doctest::Approx(1.0));
  CHECK(lr_at(c, 9) == doctest::Approx(0.55));
  CHECK(lr_at(c, 14) == doctest::Approx(0.1));
  c.cosine = false;
  CHECK(lr_at(c, 100) == 1.0);
  CHECK(parse_optimizer("adamw") == OptimizerKind::AdamW);
  CHECK_THROWS_WITH_AS(parse_optimizer("lion"), doctest::Contains("unknown optimizer 'lion'"), Error);
}

TEST_CASE("checkpoints round-trip bit for bit; only steps with a manifest count") {
  auto dir = temp_dir("ckpt");
  StageCheckpoint c;
  c.step = 10;
  c.stage = 2;
  NamedTensor t;
  t.name = "w";
  t.shape = {3, 5};
  t.bytes.resize(60);
  for (size_t i = 0; i < 60; ++i) t.bytes.data()[i] = static_cast<char>(i * 13);
  c.tensors.push_back(t);
  c.meta = {{"optimizer", "adamw"}, {"steps", {{"w", 10}}}};
  write_stage_checkpoint(dir, c);
  CHECK_FALSE(latest_checkpoint(dir).has_value());  // no manifest yet
  commit_checkpoint(dir, 10, {{"stages", 3}});
  REQUIRE(latest_checkpoint(dir) == 10);
  auto back = read_stage_checkpoint(stage_file(dir, 10, 2));
  CHECK(back.step == 10);
  CHECK(back.stage == 2);
  REQUIRE(back.tensors.size() == 1);
  CHECK(back.tensors[0].bytes == t.bytes);
  CHECK(back.tensors[0].bytes.borrowed());  // read where it lies in the file
  CHECK(back.tensors[0].shape == t.shape);
  CHECK(back.meta["optimizer"] == "adamw");
  // A later step written but not committed (a crash mid-way) does not count.
  c.step = 20;
  write_stage_checkpoint(dir, c);
  CHECK(latest_checkpoint(dir) == 10);
  commit_checkpoint(dir, 20, {});
  CHECK(latest_checkpoint(dir) == 20);
  prune_checkpoints(dir, 1);
  CHECK_FALSE(fs::exists(step_dir(dir, 10)));
  CHECK(back.tensors[0].bytes == t.bytes);  // still readable: its file is unlinked, not truncated
  CHECK(fs::exists(step_dir(dir, 20)));
  // Damage is bad input naming the file.
  fs::path f = stage_file(dir, 20, 2);
  auto bytes = fs::file_size(f);
  fs::resize_file(f, bytes - 7);
  CHECK_THROWS_WITH_AS(read_stage_checkpoint(f), doctest::Contains("stage-002.bin"), Error);
  fs::remove_all(dir);
}

TEST_CASE("batches take consecutive rows and wrap; shuffled ones permute each epoch") {
  auto b = batch_rows(10, 3, 4, false, 0);  // rows 12..15 -> 2..5
  CHECK(b == std::vector<int64_t>{2, 3, 4, 5});
  auto w = batch_rows(10, 2, 4, false, 0);  // rows 8..11 -> 8, 9, 0, 1
  CHECK(w == std::vector<int64_t>{8, 9, 0, 1});
  std::set<int64_t> epoch0;
  for (int s = 0; s < 5; ++s)
    for (auto r : batch_rows(10, s, 2, true, 7)) epoch0.insert(r);
  CHECK(epoch0.size() == 10);
  CHECK(batch_rows(10, 0, 10, true, 7) != batch_rows(10, 1, 10, true, 7));
  CHECK(batch_rows(10, 0, 10, true, 7) == batch_rows(10, 0, 10, true, 7));
  CHECK(batch_rows(10, 0, 10, true, 7) != batch_rows(10, 0, 10, true, 8));
}

TEST_CASE("a data directory is checked against the model: files, dtypes, shapes, rows, labels") {
  auto dir = temp_dir("data");
  graph::Graph g = load("mlp", 4);
  std::vector<float> x(6 * 256, 0.5f);
  std::vector<int64_t> y = {0, 1, 2, 3, 4, 5};
  CHECK_THROWS_WITH_AS(load_dataset(dir, g, 4), doctest::Contains("x.npy: missing"), Error);
  save(dir / "x.npy", DType::F32, {6, 256}, x);
  CHECK_THROWS_WITH_AS(load_dataset(dir, g, 4), doctest::Contains("labels.npy: missing"), Error);
  save(dir / "labels.npy", DType::I64, {6}, y);
  Dataset d = load_dataset(dir, g, 4);
  CHECK(d.rows == 6);
  CHECK(d.has_labels);
  CHECK_THROWS_WITH_AS(load_dataset(dir, g, 8), doctest::Contains("fewer than one batch of 8"), Error);
  save(dir / "labels.npy", DType::I64, {5}, std::vector<int64_t>{0, 1, 2, 3, 4});
  CHECK_THROWS_WITH_AS(load_dataset(dir, g, 4), doctest::Contains("5 rows, x.npy has 6"), Error);
  save(dir / "labels.npy", DType::I64, {6}, std::vector<int64_t>{0, 1, 2, 3, 4, 10});
  CHECK_THROWS_WITH_AS(load_dataset(dir, g, 4), doctest::Contains("class index 10"), Error);
  save(dir / "labels.npy", DType::I64, {6}, y);
  save(dir / "x.npy", DType::F32, {6, 128}, std::vector<float>(6 * 128));
  CHECK_THROWS_WITH_AS(load_dataset(dir, g, 4), doctest::Contains("rows of shape [128]"), Error);
  save(dir / "x.npy", DType::F64, {6, 256}, std::vector<double>(6 * 256));
  CHECK_THROWS_WITH_AS(load_dataset(dir, g, 4), doctest::Contains("holds float64"), Error);
  fs::remove_all(dir);
}

TEST_CASE("the synthetic task matches the inputs and is learnable by construction") {
  graph::Graph gpt = load("gpt", 2);
  Dataset d = synthetic_dataset(gpt, 64, 1);
  REQUIRE(d.inputs.size() == 1);
  CHECK(d.inputs[0].sample == Shape{64});
  REQUIRE(d.has_labels);
  CHECK(d.labels.sample == Shape{64});
  const int64_t* x = reinterpret_cast<const int64_t*>(d.inputs[0].bytes.data());
  const int64_t* y = reinterpret_cast<const int64_t*>(d.labels.bytes.data());
  for (int64_t r = 0; r < 64; ++r)
    for (int64_t t = 0; t + 1 < 64; ++t) CHECK(y[r * 64 + t] == x[r * 64 + t + 1]);  // the next token
  graph::Graph cnn = load("cnn", 2);
  Dataset c = synthetic_dataset(cnn, 32, 1);
  CHECK(c.inputs[0].sample == Shape{3, 32, 32});
  CHECK(c.labels.sample.empty());
  std::set<int64_t> classes;
  for (int64_t r = 0; r < 32; ++r) classes.insert(reinterpret_cast<const int64_t*>(c.labels.bytes.data())[r]);
  CHECK(classes.size() > 1);
  CHECK(synthetic_dataset(cnn, 32, 1).inputs[0].bytes == c.inputs[0].bytes);
}
