// The partition DP against brute force on thousands of random small instances.
#include "plan/dp.hpp"

#include <doctest/doctest.h>

#include <cmath>
#include <random>

namespace {

using smp::plan::kInf;
using smp::plan::StageChoice;

// Random chain: per atom and device kind F/B/W, per atom weights and saved activations, per cut
// the bytes a stage receives there; per slot a device kind, a memory capacity, an in-flight
// count and a link to the next slot. Recompute keeps only the received input per microbatch
// and rebuilds one microbatch's activations as workspace, at the price of one more forward.
struct RandomChain {
  int K = 0, S = 0, kinds = 1;
  std::vector<std::vector<double>> F, B, W;  // [kind][atom]
  std::vector<double> weight, act, recv;     // recv: per cut position 0..K
  std::vector<int> slot_kind, inflight;
  std::vector<double> cap, inv_bw, lat;
  std::vector<double> cut_bytes;
  int policy = 0;  // 0 auto, 1 never, 2 always

  int atoms() const { return K; }
  int slots() const { return S; }
  double sum_k(const std::vector<double>& v, int i, int j) const {
    double x = 0;
    for (int a = i; a < j; ++a) x += v[static_cast<size_t>(a)];
    return x;
  }
  double t0(int s, int i, int j) const {
    int k = slot_kind[static_cast<size_t>(s)];
    return sum_k(F[static_cast<size_t>(k)], i, j) + sum_k(B[static_cast<size_t>(k)], i, j) +
           sum_k(W[static_cast<size_t>(k)], i, j);
  }
  StageChoice stage(int s, int i, int j) const {
    int k = slot_kind[static_cast<size_t>(s)];
    double w = sum_k(weight, i, j) * 3, a = sum_k(act, i, j), r = recv[static_cast<size_t>(i)];
    double x = inflight[static_cast<size_t>(s)], c = cap[static_cast<size_t>(s)];
    double t = t0(s, i, j);
    if (policy != 2 && w + x * (a + r) <= c) return {t, false};
    if (policy != 1 && w + x * r + a <= c) return {t + sum_k(F[static_cast<size_t>(k)], i, j), true};
    return {};
  }
  double t_lower(int s, int i, int j) const { return t0(s, i, j); }
  double comm(int s, int j) const {
    return cut_bytes[static_cast<size_t>(j)] * inv_bw[static_cast<size_t>(s)] + lat[static_cast<size_t>(s)];
  }
  double sum_lower_bound() const {
    double x = 0;
    for (int a = 0; a < K; ++a) {
      double mn = kInf;
      for (int k = 0; k < kinds; ++k)
        mn = std::min(mn, F[static_cast<size_t>(k)][static_cast<size_t>(a)] + B[static_cast<size_t>(k)][static_cast<size_t>(a)] +
                              W[static_cast<size_t>(k)][static_cast<size_t>(a)]);
      x += mn;
    }
    return x;
  }
};

RandomChain random_chain(std::mt19937_64& rng) {
  RandomChain c;
  auto uni = [&](double a, double b) { return std::uniform_real_distribution<double>(a, b)(rng); };
  auto irand = [&](int a, int b) { return std::uniform_int_distribution<int>(a, b)(rng); };
  const bool integral = irand(0, 2) == 0;  // small integers: many ties
  auto val = [&](double a, double b) { return integral ? std::floor(uni(a, b)) : uni(a, b); };
  c.K = irand(6, 12);
  c.S = irand(2, 4);
  c.kinds = irand(1, 2);
  c.policy = irand(0, 5) < 4 ? 0 : irand(1, 2);
  for (int k = 0; k < c.kinds; ++k) {
    double speed = k == 0 ? 1.0 : uni(0.3, 3.0);
    std::vector<double> f, b, w;
    for (int a = 0; a < c.K; ++a) {
      f.push_back(val(0, 10) * speed);
      b.push_back(val(0, 10) * speed);
      w.push_back(val(0, 6) * speed);
    }
    c.F.push_back(f);
    c.B.push_back(b);
    c.W.push_back(w);
  }
  for (int a = 0; a < c.K; ++a) {
    c.weight.push_back(val(0, 8));
    c.act.push_back(val(0, 8));
  }
  for (int q = 0; q <= c.K; ++q) {
    c.recv.push_back(val(0, 4));
    c.cut_bytes.push_back(val(0, 5));
  }
  double total = 0;
  for (int a = 0; a < c.K; ++a) total += c.weight[static_cast<size_t>(a)] * 3 + c.act[static_cast<size_t>(a)];
  for (int s = 0; s < c.S; ++s) {
    c.slot_kind.push_back(irand(0, c.kinds - 1));
    c.inflight.push_back(irand(1, 4));
    c.cap.push_back(uni(0.2, 1.5) * total / c.S * 2);  // sometimes nothing fits
    c.inv_bw.push_back(uni(0, 1));
    c.lat.push_back(val(0, 2));
  }
  return c;
}

}  // namespace

TEST_CASE("the partition DP finds the brute-force optimum on random chains") {
  std::mt19937_64 rng(20261129);
  int feasible = 0, infeasible = 0, with_recompute = 0, hetero = 0;
  const int instances = 4000;
  for (int n = 0; n < instances; ++n) {
    RandomChain c = random_chain(rng);
    int m = std::uniform_int_distribution<int>(1, 16)(rng);
    auto dp = smp::plan::solve_partition(c, m);
    auto bf = smp::plan::brute_force_partition(c, m);
    INFO("instance " << n << ": K=" << c.K << " S=" << c.S << " m=" << m);
    REQUIRE(dp.feasible == bf.feasible);
    if (!bf.feasible) {
      ++infeasible;
      continue;
    }
    ++feasible;
    hetero += c.kinds > 1;
    for (auto r : dp.recompute) with_recompute += r;
    REQUIRE(dp.objective <= bf.objective * (1 + 1e-12));
    REQUIRE(dp.objective >= bf.objective * (1 - 1e-12));
    // The DP's partition is a real one: re-priced, it gives its objective.
    auto again = smp::plan::evaluate_partition(c, dp.bounds, m);
    REQUIRE(again.feasible);
    CHECK(again.objective == dp.objective);
    CHECK(!dp.truncated);
  }
  MESSAGE(feasible << " feasible, " << infeasible << " infeasible, " << with_recompute
                   << " recomputed stages in DP optima, " << hetero << " heterogeneous");
  CHECK(feasible > instances / 4);
  CHECK(infeasible > 20);
  CHECK(with_recompute > 20);
}

TEST_CASE("more stages than atoms is infeasible, one stage is the whole chain") {
  std::mt19937_64 rng(7);
  RandomChain c = random_chain(rng);
  c.S = c.K + 1;
  c.slot_kind.assign(static_cast<size_t>(c.S), 0);
  c.inflight.assign(static_cast<size_t>(c.S), 1);
  c.cap.assign(static_cast<size_t>(c.S), 1e18);
  c.inv_bw.assign(static_cast<size_t>(c.S), 0);
  c.lat.assign(static_cast<size_t>(c.S), 0);
  CHECK(!smp::plan::solve_partition(c, 4).feasible);
  c.S = 1;
  auto one = smp::plan::solve_partition(c, 4);
  REQUIRE(one.feasible);
  CHECK(one.bounds == std::vector<int>{0, c.K});
}

TEST_CASE("enumerating the splits of a small instance gives the DP's optimum") {
  std::mt19937_64 rng(99);
  smp::plan::DpOptions enumerate;
  enumerate.enumerate_below = 1e9;
  CHECK(smp::plan::split_count(10, 3) == 36);
  CHECK(smp::plan::split_count(5, 6) == 0);
  for (int n = 0; n < 300; ++n) {
    RandomChain c = random_chain(rng);
    int m = std::uniform_int_distribution<int>(1, 16)(rng);
    auto dp = smp::plan::solve_partition(c, m);
    auto en = smp::plan::solve_partition(c, m, enumerate);
    // Each says how it searched (the plan's report counts both): the DP ran, or every split
    // was scored and none was run.
    CHECK(dp.splits_enumerated == 0);
    CHECK(dp.dp_runs >= 1);
    CHECK(en.dp_runs == 0);
    CHECK(static_cast<double>(en.splits_enumerated) == smp::plan::split_count(c.K, c.slots()));
    REQUIRE(dp.feasible == en.feasible);
    if (dp.feasible) CHECK(dp.objective == doctest::Approx(en.objective).epsilon(1e-12));
  }
}
