// Random ops and running statistics in the stage executor: Dropout's masks (deterministic from
// seed, step, global microbatch and node; the keep rate; the backward uses the forward's mask;
// the same masks whether the graph runs as one stage or two, on any thread count) and
// BatchNormalization's running statistics (per microbatch as PyTorch updates them; deferred
// over the minibatch and across replicas, independent of the split).
#include <doctest/doctest.h>

#include "runtime/random.hpp"
#include "tiny_graph.hpp"

#include <fmt/format.h>

#include <cmath>

using namespace smp;
using namespace smp::test;
using runtime::Tensor;

namespace {

// x [rows, cols] -> Dropout(ratio, training) -> Relu -> Dropout -> y, with the masks as outputs.
struct DropoutNet {
  TinyGraph tg;
  int x = -1;
  int64_t rows, cols;
  DropoutNet(int64_t r, int64_t c, float ratio) : rows(r), cols(c) {
    x = tg.boundary("x", {r, c});
    int ratio_v = tg.constant<float>("ratio", DType::F32, {}, {ratio});
    int train = tg.constant<uint8_t>("training", DType::Bool, {}, {1});
    auto d1 = tg.node("Dropout", {x, ratio_v, train}, {{"h", DType::F32, {r, c}}, {"m1", DType::Bool, {r, c}}});
    auto h = tg.node("Relu", {d1[0]}, {{"hr", DType::F32, {r, c}}});
    auto d2 = tg.node("Dropout", {h[0], ratio_v, train}, {{"y", DType::F32, {r, c}}, {"m2", DType::Bool, {r, c}}});
    tg.output(d2[0]);
    tg.output(d1[1]);
    tg.output(d2[1]);
  }
};

std::vector<uint8_t> mask_of(const Tensor& t) {
  REQUIRE(t.dtype() == DType::Bool);
  const uint8_t* p = static_cast<const uint8_t*>(t.raw());
  return std::vector<uint8_t>(p, p + t.numel());
}

// The stage output named `name` among `outs` (in ex.outputs() order).
Tensor output(const runtime::StageExecutor& ex, const std::vector<Tensor>& outs, const std::string& name) {
  int v = ex.graph().find_value(name);
  auto it = std::find(ex.outputs().begin(), ex.outputs().end(), v);
  REQUIRE(it != ex.outputs().end());
  return outs[static_cast<size_t>(it - ex.outputs().begin())];
}

}  // namespace

TEST_CASE("Dropout in training mode: masks are a function of (seed, step, microbatch, node) only") {
  DropoutNet net(64, 256, 0.3f);
  auto xs = random_floats(static_cast<size_t>(64 * 256), 3);
  auto run = [&](int threads, uint64_t seed, int64_t step, int64_t first_mb, int mb) {
    runtime::CpuBackend be(threads);
    runtime::ExecutorOptions o;
    o.seed = seed;
    runtime::StageExecutor ex(net.tg.g, be, o);
    ex.set_random_step(step, first_mb);
    Tensor x = be.from_host(DType::F32, {64, 256}, xs.data());
    auto outs = ex.forward(mb, {&x, 1});
    ex.drop(mb);
    return std::make_pair(mask_of(output(ex, outs, "m1")), mask_of(output(ex, outs, "m2")));
  };
  auto base = run(1, 7, 3, 0, 1);
  CHECK(base == run(2, 7, 3, 0, 1));  // thread count
  CHECK(base == run(1, 7, 3, 1, 0));  // the global microbatch index, however split
  CHECK(base.first != base.second);   // each node its own stream
  CHECK(base != run(1, 8, 3, 0, 1));  // seed
  CHECK(base != run(1, 7, 4, 0, 1));  // step
  CHECK(base != run(1, 7, 3, 0, 2));  // microbatch
}

TEST_CASE("Dropout keeps 1 - ratio of the elements and scales them by 1 / (1 - ratio)") {
  for (float ratio : {0.1f, 0.5f, 0.9f}) {
    CAPTURE(ratio);
    const int64_t n = 200000;
    TinyGraph tg;
    int x = tg.boundary("x", {n});
    int r = tg.constant<float>("ratio", DType::F32, {}, {ratio});
    int t = tg.constant<uint8_t>("training", DType::Bool, {}, {1});
    auto d = tg.node("Dropout", {x, r, t}, {{"y", DType::F32, {n}}, {"m", DType::Bool, {n}}});
    tg.output(d[0]);
    tg.output(d[1]);
    runtime::CpuBackend be(2);
    runtime::StageExecutor ex(tg.g, be);
    std::vector<float> ones(static_cast<size_t>(n), 1.0f);
    Tensor xt = be.from_host(DType::F32, {n}, ones.data());
    auto outs = ex.forward(0, {&xt, 1});
    auto m = mask_of(output(ex, outs, "m"));
    const float* y = output(ex, outs, "y").data<float>();
    int64_t kept = 0;
    for (int64_t i = 0; i < n; ++i) {
      kept += m[static_cast<size_t>(i)];
      CHECK(y[i] == doctest::Approx(m[static_cast<size_t>(i)] ? 1.0f / (1.0f - ratio) : 0.0f));
      if (y[i] != doctest::Approx(m[static_cast<size_t>(i)] ? 1.0f / (1.0f - ratio) : 0.0f)) break;
    }
    // binomial: within 5 standard deviations of n (1 - ratio)
    double mean = static_cast<double>(n) * (1.0 - ratio), sd = std::sqrt(static_cast<double>(n) * ratio * (1.0 - ratio));
    CHECK(std::fabs(static_cast<double>(kept) - mean) <= 5 * sd);
    ex.drop(0);
  }
}

TEST_CASE("Dropout's backward uses the forward's mask") {
  DropoutNet net(8, 32, 0.5f);
  runtime::CpuBackend be(2);
  runtime::StageExecutor ex(net.tg.g, be);
  ex.set_random_step(5, 2);
  auto xs = random_floats(8 * 32, 11);
  Tensor x = be.from_host(DType::F32, {8, 32}, xs.data());
  auto outs = ex.forward(1, {&x, 1});
  auto m1 = mask_of(output(ex, outs, "m1")), m2 = mask_of(output(ex, outs, "m2"));
  auto gs = random_floats(8 * 32, 12);
  Tensor g = be.from_host(DType::F32, {8, 32}, gs.data());
  std::vector<Tensor> grads(ex.outputs().size());
  for (size_t i = 0; i < grads.size(); ++i)
    if (ex.outputs()[i] == net.tg.g.find_value("y")) grads[i] = g;
  auto dx = ex.backward(1, grads);
  REQUIRE(dx[0].defined());
  const float* d = dx[0].data<float>();
  int differing = 0;
  for (size_t i = 0; i < gs.size(); ++i) {
    // y = m2 * relu(m1 * x * 2) * 2
    float want = m2[i] && m1[i] && xs[i] > 0 ? gs[i] * 4.0f : 0.0f;
    if (std::fabs(d[i] - want) > 1e-6f) ++differing;
  }
  CHECK(differing == 0);
  CHECK(ex.pending() == 0);
}

TEST_CASE("Dropout: a graph split into two stages draws the masks of the whole graph") {
  DropoutNet net(16, 64, 0.4f);
  auto xs = random_floats(16 * 64, 21);
  runtime::CpuBackend be(1);
  runtime::ExecutorOptions o;
  o.seed = 99;
  runtime::StageExecutor whole(net.tg.g, be, o), first(net.tg.g, {0, 1}, be, o), second(net.tg.g, {2}, be, o);
  for (auto* e : {&whole, &first, &second}) e->set_random_step(2, 4);
  Tensor x = be.from_host(DType::F32, {16, 64}, xs.data());
  auto all = whole.forward(3, {&x, 1});
  auto a = first.forward(3, {&x, 1});
  // first's outputs: hr (to the second stage) and m1
  int hr = net.tg.g.find_value("hr");
  std::vector<Tensor> in2;
  for (int v : second.inputs()) {
    auto it = std::find(first.outputs().begin(), first.outputs().end(), v);
    REQUIRE(it != first.outputs().end());
    in2.push_back(a[static_cast<size_t>(it - first.outputs().begin())]);
  }
  CHECK(second.inputs() == std::vector<int>{hr});
  auto b = second.forward(3, in2);
  CHECK(mask_of(output(whole, all, "m1")) == mask_of(output(first, a, "m1")));
  CHECK(mask_of(output(whole, all, "m2")) == mask_of(output(second, b, "m2")));
  CHECK(to_vec(output(whole, all, "y")) == to_vec(output(second, b, "y")));
}

// The random number ops draw from the same streams: RandomNormalLike (a VAE's noise, as
// torch.randn_like exports), RandomUniform (torch.rand), Bernoulli.
TEST_CASE("RandomNormalLike, RandomUniform, Bernoulli: their distributions, and a function of (seed, step, microbatch, node) only") {
  const int64_t n = 200000;
  TinyGraph tg;
  int x = tg.boundary("x", {n});
  int p = tg.boundary("p", {n});
  auto z = tg.node("RandomNormalLike", {x}, {{"z", DType::F32, {n}}}, {{"mean", attr_f(1.5)}, {"scale", attr_f(2.0)}});
  auto z2 = tg.node("RandomNormalLike", {x}, {{"z2", DType::F32, {n}}});
  auto u = tg.node("RandomUniform", {}, {{"u", DType::F64, {n}}},
                   {{"shape", attr_ints({n})}, {"low", attr_f(-2.0)}, {"high", attr_f(3.0)}, {"dtype", attr_i(11)}});
  auto b = tg.node("Bernoulli", {p}, {{"b", DType::Bool, {n}}});
  for (int o : {z[0], z2[0], u[0], b[0]}) tg.output(o);
  std::vector<float> probs(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) probs[static_cast<size_t>(i)] = i % 4 == 0 ? 0.0f : (i % 4 == 1 ? 1.0f : 0.3f);
  auto run = [&](uint64_t seed, int64_t step, int mb) {
    runtime::CpuBackend be(2);
    runtime::ExecutorOptions o;
    o.seed = seed;
    o.training = false;
    runtime::StageExecutor ex(tg.g, be, o);
    ex.set_random_step(step, 0);
    std::vector<float> zeros(static_cast<size_t>(n), 0.0f);
    std::vector<Tensor> in;
    for (int v : ex.inputs())
      in.push_back(be.from_host(DType::F32, {n}, v == p ? probs.data() : zeros.data()));
    auto outs = ex.forward(mb, in);
    std::vector<std::vector<double>> r;
    for (const char* name : {"z", "z2", "u", "b"}) {
      Tensor t = output(ex, outs, name);
      std::vector<double> v(static_cast<size_t>(n));
      for (int64_t i = 0; i < n; ++i)
        v[static_cast<size_t>(i)] = t.dtype() == DType::F32 ? t.data<float>()[i]
                                    : t.dtype() == DType::F64 ? t.data<double>()[i]
                                                              : static_cast<const uint8_t*>(t.raw())[i];
      r.push_back(v);
    }
    ex.drop(mb);
    return r;
  };
  auto base = run(5, 1, 0);
  auto moments = [&](const std::vector<double>& v, double& mean, double& sd) {
    double s = 0, q = 0;
    for (double e : v) s += e;
    mean = s / static_cast<double>(v.size());
    for (double e : v) q += (e - mean) * (e - mean);
    sd = std::sqrt(q / static_cast<double>(v.size()));
  };
  double m, sd;
  moments(base[0], m, sd);  // normal(1.5, 2): mean within 5 standard errors, sd within 1 %
  CHECK(std::fabs(m - 1.5) < 5 * 2 / std::sqrt(static_cast<double>(n)));
  CHECK(std::fabs(sd - 2.0) < 0.02);
  int64_t within = 0;
  for (double e : base[0]) within += std::fabs(e - 1.5) < 2.0;
  CHECK(std::fabs(static_cast<double>(within) / static_cast<double>(n) - 0.6827) < 0.005);  // the normal's shape
  moments(base[2], m, sd);  // uniform(-2, 3): mean 0.5, sd 5 / sqrt(12), inside [low, high)
  CHECK(std::fabs(m - 0.5) < 5 * (5 / std::sqrt(12.0)) / std::sqrt(static_cast<double>(n)));
  CHECK(std::fabs(sd - 5 / std::sqrt(12.0)) < 0.01);
  CHECK(*std::min_element(base[2].begin(), base[2].end()) >= -2.0);
  CHECK(*std::max_element(base[2].begin(), base[2].end()) < 3.0);
  int64_t ones = 0, wrong = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double v = base[3][static_cast<size_t>(i)];
    if (i % 4 == 0) wrong += v != 0;
    else if (i % 4 == 1) wrong += v != 1;
    else ones += v == 1;
  }
  CHECK(wrong == 0);  // p 0 never, p 1 always
  CHECK(std::fabs(static_cast<double>(ones) / static_cast<double>(n / 2) - 0.3) < 0.01);
  CHECK(base == run(5, 1, 0));
  CHECK(base[0] != base[1]);  // each node its own stream
  CHECK(base[0] != run(6, 1, 0)[0]);  // seed
  CHECK(base[0] != run(5, 2, 0)[0]);  // step
  CHECK(base[0] != run(5, 1, 1)[0]);  // microbatch
}

namespace {

// x [N, C, 2] -> BatchNormalization(training_mode 1, momentum 0.8) with running statistics.
struct BnNet {
  TinyGraph tg;
  int64_t N, C;
  int mean, var;
  BnNet(int64_t n, int64_t c) : N(n), C(c) {
    int x = tg.boundary("x", {n, c, 2});
    int g = tg.param("g", {c}, random_floats(static_cast<size_t>(c), 31, 0.5f, 1.5f));
    int b = tg.param("b", {c}, random_floats(static_cast<size_t>(c), 32));
    mean = tg.buffer("mean", {c}, random_floats(static_cast<size_t>(c), 33));
    var = tg.buffer("var", {c}, random_floats(static_cast<size_t>(c), 34, 0.5f, 2.0f));
    auto o = tg.node("BatchNormalization", {x, g, b, mean, var},
                     {{"y", DType::F32, {n, c, 2}}, {"rm", DType::F32, {c}}, {"rv", DType::F32, {c}}},
                     {{"training_mode", attr_i(1)}, {"momentum", attr_f(0.8)}});
    tg.output(o[0]);
  }
};

// The running statistics after the forwards of `parts` (each [N, C, 2]) in `mode`; with
// `commit`, deferred sums committed (optionally plus `extra` sums from another replica).
std::pair<std::vector<float>, std::vector<float>> bn_run(BnNet& net, const std::vector<std::vector<float>>& parts,
                                                         runtime::ExecutorOptions::RunningStats mode,
                                                         std::vector<double>* sums_out = nullptr,
                                                         const std::vector<double>* extra = nullptr) {
  runtime::CpuBackend be(1);
  runtime::ExecutorOptions o;
  o.running_stats = mode;
  runtime::StageExecutor ex(net.tg.g, be, o);
  for (size_t k = 0; k < parts.size(); ++k) {
    Tensor x = be.from_host(DType::F32, {net.N, net.C, 2}, parts[k].data());
    ex.forward(static_cast<int>(k), {&x, 1});
    ex.drop(static_cast<int>(k));
  }
  if (mode == runtime::ExecutorOptions::RunningStats::Deferred) {
    auto s = ex.running_stat_sums();
    if (sums_out) *sums_out = s;
    if (extra)
      for (size_t i = 0; i < s.size(); ++i) s[i] += (*extra)[i];
    ex.commit_running_stats(s);
  }
  return {to_vec(ex.buffer(net.mean)), to_vec(ex.buffer(net.var))};
}

// PyTorch's update: new = old * momentum + batch * (1 - momentum), the batch's unbiased variance.
std::pair<std::vector<float>, std::vector<float>> torch_update(const BnNet& net, std::vector<float> mean, std::vector<float> var,
                                                               const std::vector<float>& x, int64_t n) {
  for (int64_t c = 0; c < net.C; ++c) {
    double s = 0, q = 0;
    int64_t cnt = 0;
    for (int64_t i = 0; i < n; ++i)
      for (int k = 0; k < 2; ++k, ++cnt) s += x[static_cast<size_t>((i * net.C + c) * 2 + k)];
    double m = s / static_cast<double>(cnt);
    for (int64_t i = 0; i < n; ++i)
      for (int k = 0; k < 2; ++k) {
        double d = x[static_cast<size_t>((i * net.C + c) * 2 + k)] - m;
        q += d * d;
      }
    double v = q / static_cast<double>(cnt - 1);
    mean[static_cast<size_t>(c)] = static_cast<float>(mean[static_cast<size_t>(c)] * 0.8 + m * 0.2);
    var[static_cast<size_t>(c)] = static_cast<float>(var[static_cast<size_t>(c)] * 0.8 + v * 0.2);
  }
  return {mean, var};
}

void check_close(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) CHECK(a[i] == doctest::Approx(b[i]).epsilon(1e-5));
}

}  // namespace

TEST_CASE("BatchNormalization's running statistics: per microbatch as PyTorch, deferred over the minibatch") {
  using RS = runtime::ExecutorOptions::RunningStats;
  const int64_t C = 3;
  BnNet half(2, C), whole(4, C), quarter(1, C);
  auto a = random_floats(static_cast<size_t>(2 * C * 2), 41, -2, 3), b = random_floats(static_cast<size_t>(2 * C * 2), 42, -1, 1);
  std::vector<float> ab = a;
  ab.insert(ab.end(), b.begin(), b.end());
  std::vector<float> mean0(reinterpret_cast<const float*>(half.tg.g.value(half.mean).data->bytes.data()),
                           reinterpret_cast<const float*>(half.tg.g.value(half.mean).data->bytes.data()) + C);
  std::vector<float> var0(reinterpret_cast<const float*>(half.tg.g.value(half.var).data->bytes.data()),
                          reinterpret_cast<const float*>(half.tg.g.value(half.var).data->bytes.data()) + C);

  // Per microbatch: two updates, each with its microbatch's statistics (PyTorch's sequence).
  auto per = bn_run(half, {a, b}, RS::PerMicrobatch);
  auto t1 = torch_update(half, mean0, var0, a, 2);
  auto t2 = torch_update(half, t1.first, t1.second, b, 2);
  check_close(per.first, t2.first);
  check_close(per.second, t2.second);

  // Deferred: one update with the statistics of both microbatches together, which is what one
  // microbatch of 4 gives, per microbatch.
  auto def = bn_run(half, {a, b}, RS::Deferred);
  auto one = bn_run(whole, {ab}, RS::PerMicrobatch);
  auto t = torch_update(whole, mean0, var0, ab, 4);
  check_close(def.first, t.first);
  check_close(def.second, t.second);
  check_close(one.first, t.first);
  check_close(one.second, t.second);

  // Deferred across replicas: each replica's sums added before the commit give the same.
  std::vector<double> ra, rb;
  std::vector<float> a0(a.begin(), a.begin() + C * 2), a1(a.begin() + C * 2, a.end());
  std::vector<float> b0(b.begin(), b.begin() + C * 2), b1(b.begin() + C * 2, b.end());
  bn_run(quarter, {b0, b1}, RS::Deferred, &rb);
  auto rep = bn_run(quarter, {a0, a1}, RS::Deferred, &ra, &rb);
  check_close(rep.first, t.first);
  check_close(rep.second, t.second);

  // ONNX's semantics (smp-run --forward): the buffers stay.
  auto onnx = bn_run(half, {a, b}, RS::Onnx);
  CHECK(onnx.first == mean0);
  CHECK(onnx.second == var0);
}

TEST_CASE("a training forward with one value per channel is refused at load") {
  BnNet net(1, 2);
  // [1, C, 2] has two values per channel: fine; [1, C, 1] has one.
  TinyGraph tg;
  int x = tg.boundary("x", {1, 2, 1});
  int g = tg.param("g", {2}, {1, 1}), b = tg.param("b", {2}, {0, 0});
  int m = tg.buffer("m", {2}, {0, 0}), v = tg.buffer("v", {2}, {1, 1});
  auto o = tg.node("BatchNormalization", {x, g, b, m, v},
                   {{"y", DType::F32, {1, 2, 1}}, {"rm", DType::F32, {2}}, {"rv", DType::F32, {2}}}, {{"training_mode", attr_i(1)}});
  tg.output(o[0]);
  runtime::CpuBackend be(1);
  CHECK_THROWS_WITH_AS(runtime::StageExecutor(tg.g, be), doctest::Contains("one value per channel"), Error);
  runtime::ExecutorOptions onnx;
  onnx.running_stats = runtime::ExecutorOptions::RunningStats::Onnx;
  CHECK_NOTHROW(runtime::StageExecutor(tg.g, be, onnx));
  CHECK_NOTHROW(runtime::StageExecutor(net.tg.g, be));
}
