// Tensor parallelism in one process: the graph split for T ranks (graph/tensor_parallel.hpp), each
// rank's executor in its own thread, the all-reduces through an in-memory group. The loss, the
// logits and every parameter gradient (joined from the ranks' parts) must equal the unsplit
// graph's — the graph transformation, the inserted kernels and the vocabulary-parallel loss
// checked without MPI.
#include "graph/loader.hpp"
#include "graph/tensor_parallel.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"
#include "runtime/loss.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <barrier>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <thread>

using namespace smp;
using runtime::Tensor;

namespace {

// T threads reducing through shared slots (every rank sums the slots in rank order, so all get
// the same bits, as MPI_Allreduce guarantees).
struct Shared {
  explicit Shared(int t) : T(t), bar(t), slots(static_cast<size_t>(t)) {}
  int T;
  std::barrier<> bar;
  std::vector<std::vector<float>> slots;
};

class ThreadGroup final : public runtime::Collectives {
 public:
  ThreadGroup(Shared& s, int r) : s_(s), r_(r) {}
  int size() const override { return s_.T; }
  int rank() const override { return r_; }
  void all_reduce(float* data, size_t n, runtime::ReduceOp op) override {
    ++calls;
    s_.slots[static_cast<size_t>(r_)].assign(data, data + n);
    s_.bar.arrive_and_wait();
    for (size_t i = 0; i < n; ++i) {
      float v = s_.slots[0][i];
      for (int k = 1; k < s_.T; ++k) {
        float w = s_.slots[static_cast<size_t>(k)][i];
        v = op == runtime::ReduceOp::Sum ? v + w : std::max(v, w);
      }
      data[i] = v;
    }
    s_.bar.arrive_and_wait();
  }
  int calls = 0;

 private:
  Shared& s_;
  int r_;
};

struct Result {
  double loss = 0;
  std::vector<float> logits;                     // the whole output
  std::map<std::string, graph::TensorData> grads;  // whole parameter gradients
  int allreduces = 0;
};

graph::TensorData host(runtime::Backend& be, const Tensor& t) {
  graph::TensorData d{t.dtype(), t.shape(), std::string(static_cast<size_t>(t.bytes()), '\0')};
  be.to_host(t, d.bytes.data());
  return d;
}

// Inputs: random token ids or floats; labels: random classes of the output's last axis.
struct Batch {
  std::vector<graph::TensorData> inputs;
  graph::TensorData labels;
};

Batch make_batch(const graph::Graph& g) {
  std::mt19937 rng(7);
  Batch b;
  const graph::Value& out = g.value(g.outputs[0]);
  const int64_t classes = out.shape.back();
  for (int v : g.inputs) {
    const graph::Value& val = g.value(v);
    graph::TensorData d{val.dtype, val.shape, std::string(static_cast<size_t>(val.bytes()), '\0')};
    if (val.dtype == DType::I64) {
      // token ids: the embedding's rows (the output's classes for a language model)
      std::uniform_int_distribution<int64_t> u(0, classes - 1);
      for (int64_t i = 0; i < d.numel(); ++i) d.as_mut<int64_t>()[i] = u(rng);
    } else {
      std::normal_distribution<float> n(0, 1);
      for (int64_t i = 0; i < d.numel(); ++i) d.as_mut<float>()[i] = n(rng);
    }
    b.inputs.push_back(d);
  }
  Shape ls(out.shape.begin(), out.shape.end() - 1);
  b.labels = graph::TensorData{DType::I64, ls, std::string(static_cast<size_t>(numel(ls) * 8), '\0')};
  std::uniform_int_distribution<int64_t> u(0, classes - 1);
  for (int64_t i = 0; i < b.labels.numel(); ++i) b.labels.as_mut<int64_t>()[i] = u(rng);
  return b;
}

Result run_whole(const graph::Graph& g, const Batch& b) {
  runtime::CpuBackend be(1);
  runtime::StageExecutor ex(g, be);
  std::vector<Tensor> in;
  for (const auto& d : b.inputs) in.push_back(be.from_host(d.dtype, d.shape, d.bytes.data()));
  auto out = ex.forward(0, in);
  Tensor labels = be.from_host(DType::I64, b.labels.shape, b.labels.bytes.data());
  auto l = runtime::cross_entropy(be, out[0], labels);
  ex.backward(0, std::vector<Tensor>{l.grad});
  Result r;
  r.loss = l.loss;
  auto o = host(be, out[0]);
  r.logits.assign(o.as<float>(), o.as<float>() + o.numel());
  for (int p : ex.parameters()) r.grads[g.value(p).name] = host(be, ex.gradient(p));
  return r;
}

Result run_split(const graph::Graph& g, const Batch& b, int T) {
  graph::TpAnalysis a = graph::analyze_tensor_parallel(g, T);
  REQUIRE(a.any());
  Shared shared(T);
  std::vector<Result> per(static_cast<size_t>(T));
  std::vector<std::map<std::string, graph::TensorData>> parts(static_cast<size_t>(T));
  std::vector<graph::TensorData> outs(static_cast<size_t>(T));
  std::vector<std::string> errors(static_cast<size_t>(T));
  std::vector<std::thread> threads;
  for (int r = 0; r < T; ++r)
    threads.emplace_back([&, r] {
      try {
        graph::Graph local = graph::shard_graph(g, a, r);
        runtime::CpuBackend be(1);
        ThreadGroup grp(shared, r);
        runtime::ExecutorOptions eo;
        eo.collectives = &grp;
        runtime::StageExecutor ex(local, be, eo);
        std::vector<Tensor> in;
        for (const auto& d : b.inputs) in.push_back(be.from_host(d.dtype, d.shape, d.bytes.data()));
        auto out = ex.forward(0, in);
        Tensor labels = be.from_host(DType::I64, b.labels.shape, b.labels.bytes.data());
        runtime::LossResult l;
        if (a.sharded_output >= 0) {
          auto vr = graph::output_vocab_range(g, a, r);
          l = runtime::cross_entropy_vocab_parallel(be, out[0], labels, vr.begin, vr.total, grp);
        } else {
          l = runtime::cross_entropy(be, out[0], labels);
        }
        ex.backward(0, std::vector<Tensor>{l.grad});
        per[static_cast<size_t>(r)].loss = l.loss;
        per[static_cast<size_t>(r)].allreduces = grp.calls;
        outs[static_cast<size_t>(r)] = host(be, out[0]);
        for (int p : ex.parameters()) parts[static_cast<size_t>(r)][local.value(p).name] = host(be, ex.gradient(p));
      } catch (const std::exception& e) {
        errors[static_cast<size_t>(r)] = e.what();
        std::abort();  // the other threads would wait at the barrier forever
      }
    });
  for (auto& t : threads) t.join();
  Result res;
  res.loss = per[0].loss;
  res.allreduces = per[0].allreduces;
  for (int r = 1; r < T; ++r) {
    CHECK(per[static_cast<size_t>(r)].loss == per[0].loss);  // every rank computes the same loss
    CHECK(per[static_cast<size_t>(r)].allreduces == per[0].allreduces);
  }
  const int out_id = g.outputs[0];
  graph::ShardSpec os = a.sharded_output >= 0 ? a.values.at(out_id) : graph::ShardSpec{};
  auto whole = graph::unshard_tensor(a.sharded_output >= 0 ? outs : std::vector<graph::TensorData>{outs[0]}, os,
                                     g.value(out_id).shape);
  res.logits.assign(whole.as<float>(), whole.as<float>() + whole.numel());
  for (int p : g.parameters) {
    const std::string& name = g.value(p).name;
    auto it = a.params.find(p);
    if (it == a.params.end()) {
      // replicated: the same gradient on every rank
      for (int r = 1; r < T; ++r)
        CHECK_MESSAGE(parts[static_cast<size_t>(r)][name].bytes == parts[0][name].bytes, name, " differs on rank ", r);
      res.grads[name] = parts[0][name];
      continue;
    }
    std::vector<graph::TensorData> ps;
    for (int r = 0; r < T; ++r) ps.push_back(parts[static_cast<size_t>(r)].at(name));
    res.grads[name] = graph::unshard_tensor(ps, it->second, g.value(p).shape);
  }
  return res;
}

double max_abs(const float* x, int64_t n) {
  double m = 0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(static_cast<double>(x[i])));
  return m;
}

void check_same(const graph::Graph& g, int T) {
  Batch b = make_batch(g);
  Result whole = run_whole(g, b);
  Result split = run_split(g, b, T);
  INFO("T = ", T);
  CHECK(split.loss == doctest::Approx(whole.loss).epsilon(1e-6));
  REQUIRE(split.logits.size() == whole.logits.size());
  const double scale = max_abs(whole.logits.data(), static_cast<int64_t>(whole.logits.size()));
  double worst = 0;
  for (size_t i = 0; i < whole.logits.size(); ++i)
    worst = std::max(worst, std::fabs(static_cast<double>(split.logits[i]) - whole.logits[i]));
  CHECK(worst <= 1e-5 * scale);
  REQUIRE(split.grads.size() == whole.grads.size());
  for (const auto& [name, gw] : whole.grads) {
    const auto& gs = split.grads.at(name);
    REQUIRE(gs.shape == gw.shape);
    const double m = max_abs(gw.as<float>(), gw.numel());
    double d = 0;
    for (int64_t i = 0; i < gw.numel(); ++i) d = std::max(d, std::fabs(static_cast<double>(gs.as<float>()[i]) - gw.as<float>()[i]));
    CHECK_MESSAGE(d <= 1e-4 * m + 1e-9, name, ": largest difference ", d, " of a gradient up to ", m);
  }
  MESSAGE(g.model_path.filename().string(), " split ", T, " ways: loss ", split.loss, " (whole ", whole.loss, "), ",
          split.allreduces, " all-reduces per rank");
}

graph::Graph load(const std::string& name, int64_t batch) {
  graph::LoadOptions lo;
  lo.batch_size = batch;
  lo.load_weights = true;
  return graph::load_graph(std::string(SMP_SOURCE_DIR) + "/sample_models/" + name, lo);
}

}  // namespace

TEST_CASE("GPT sample split 2 and 4 ways computes what the whole graph computes") {
  graph::Graph g = load("gpt.onnx", 2);
  check_same(g, 2);
  check_same(g, 4);
}

TEST_CASE("MLP sample split 2 ways (Gemm pairs, the classifier as a split head)") {
  graph::Graph g = load("mlp.onnx", 4);
  graph::TpAnalysis a = graph::analyze_tensor_parallel(g, 2);
  CHECK(a.groups.size() == 3);
  check_same(g, 2);
}

TEST_CASE("shard and unshard are inverse, for fused and uneven splits") {
  graph::TensorData t{DType::F32, {5, 12}, std::string(5 * 12 * 4, '\0')};
  for (int i = 0; i < 60; ++i) t.as_mut<float>()[i] = static_cast<float>(i);
  for (graph::ShardSpec s : {graph::ShardSpec{1, 3, false}, graph::ShardSpec{1, 1, false}, graph::ShardSpec{0, 1, true}}) {
    for (int T : {2, 4}) {
      if (!s.uneven && (12 / s.outer) % T) continue;
      std::vector<graph::TensorData> parts;
      for (int r = 0; r < T; ++r) parts.push_back(graph::shard_tensor(t, s, T, r));
      auto back = graph::unshard_tensor(parts, s, t.shape);
      CHECK(back.bytes == t.bytes);
    }
  }
  // outer 3, T 2: rank 1 holds columns 2-3, 6-7, 10-11 of each row
  auto p = graph::shard_tensor(t, graph::ShardSpec{1, 3, false}, 2, 1);
  CHECK(p.shape == Shape{5, 6});
  CHECK(p.as<float>()[0] == 2.0f);
  CHECK(p.as<float>()[2] == 6.0f);
  CHECK(p.as<float>()[5] == 11.0f);
  // uneven rows: 5 over 2 ranks -> 3 + 2
  CHECK(graph::shard_shape({5, 12}, graph::ShardSpec{0, 1, true}, 2, 0) == Shape{3, 12});
  CHECK(graph::shard_shape({5, 12}, graph::ShardSpec{0, 1, true}, 2, 1) == Shape{2, 12});
}
