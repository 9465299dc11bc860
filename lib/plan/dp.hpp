// The partition dynamic program (Alpa's stage DP, Zheng et al., OSDI'22), generic over an oracle
// that prices a stage. The atoms 0..K-1 (nodes, or segments of nodes between candidate cut
// positions) are split into S contiguous non-empty stages; stage s runs on slot s of the
// pipeline's device order. Objective, for m microbatches:
//
//   latency = sum_s (t_s + c_s) + (m - 1) * max_s t_s
//
// where t_s is the stage's time per microbatch on its slot (F + B + W, plus F when recomputed)
// and c_s the transfer time to the next stage, subject to every stage fitting its slot's memory
// (the oracle answers infinity when it does not fit, and chooses recomputation: off when that
// fits, else on when that fits).
//
// Exact by enumerating t_max: for every candidate bound T on the largest stage time, a DP
// minimises sum_s (t_s + c_s) with every t_s <= T; the optimum is the best of
// DP(T) + (m - 1) * T over the T where DP(T) changes. Candidates are visited in increasing
// order, starting from the smallest feasible T (found by bisection), each next one being the
// smallest stage time the last DP excluded; the walk stops when (m - 1) * T + (a lower bound of
// the sum) cannot beat the best found.
//
// Oracle interface (all const):
//   int atoms(); int slots();
//   StageChoice stage(int s, int i, int j);   // atoms [i, j) on slot s
//   double t_lower(int s, int i, int j);      // a lower bound of stage(s,i,j).t that is
//                                             // non-decreasing as the interval grows
//   double comm(int s, int j);                // stage s (< S-1) ends at cut j: transfer time
//   double sum_lower_bound();                  // <= sum_s (t_s + c_s) of any feasible partition
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

namespace smp::plan {

inline constexpr double kInf = std::numeric_limits<double>::infinity();

struct StageChoice {
  double t = kInf;  // infinity: does not fit
  bool recompute = false;
};

struct DpSolution {
  bool feasible = false;
  std::vector<int> bounds;          // S + 1 atom positions: 0 = b_0 < b_1 < ... < b_S = K
  std::vector<uint8_t> recompute;   // per stage
  std::vector<double> t;            // per stage
  double sum = 0;                   // sum_s (t_s + c_s)
  double t_max = 0;
  double objective = kInf;          // sum + (m - 1) * t_max
  int dp_runs = 0;                  // DPs solved (bisection and the t_max walk)
  int64_t splits_enumerated = 0;    // splits scored one by one instead (few splits: no DP run)
  bool truncated = false;           // the walk hit DpOptions::max_runs
};

struct DpOptions {
  int max_runs = 100000;  // DPs in all
  int max_walk = 1 << 30; // steps of the t_max walk (the planner caps it on big searches; the
                          // answer is then the best seen, and `truncated` says so)
  double max_work = 1e300;  // the walk also stops after this many stage evaluations in all
  // Enumerate every split instead when there are at most this many stage evaluations to make
  // (few stages: the walk would visit most splits anyway). 0: always the DP.
  double enumerate_below = 0;
};

// Number of splits of K atoms into S non-empty stages, C(K-1, S-1), saturating at 1e300.
inline double split_count(int K, int S) {
  if (S < 1 || S > K) return 0;
  double c = 1;
  for (int i = 1; i <= S - 1; ++i) {
    c = c * static_cast<double>(K - S + i) / i;
    if (c > 1e300) return 1e300;
  }
  return c;
}

// The objective of one partition (bounds as in DpSolution), priced by the oracle.
template <class O>
DpSolution evaluate_partition(const O& o, const std::vector<int>& bounds, int m) {
  DpSolution r;
  const int S = static_cast<int>(bounds.size()) - 1;
  r.bounds = bounds;
  r.recompute.assign(static_cast<size_t>(S), 0);
  r.t.assign(static_cast<size_t>(S), kInf);
  double sum = 0, tmax = 0;
  for (int s = 0; s < S; ++s) {
    StageChoice c = o.stage(s, bounds[static_cast<size_t>(s)], bounds[static_cast<size_t>(s) + 1]);
    if (!(c.t < kInf)) return r;
    r.t[static_cast<size_t>(s)] = c.t;
    r.recompute[static_cast<size_t>(s)] = c.recompute;
    sum += c.t;
    if (s + 1 < S) sum += o.comm(s, bounds[static_cast<size_t>(s) + 1]);
    tmax = std::max(tmax, c.t);
  }
  r.feasible = true;
  r.sum = sum;
  r.t_max = tmax;
  r.objective = sum + static_cast<double>(m - 1) * tmax;
  return r;
}

namespace detail {

// min sum with every stage time <= T. Returns the partition (infeasible when none) and the
// smallest stage time above T that some transition with a reachable predecessor would need
// (the next T at which the DP can change; kInf when none).
template <class O>
DpSolution dp_bounded(const O& o, double T, double* next_t, double* work = nullptr) {
  const int K = o.atoms(), S = o.slots();
  const size_t W = static_cast<size_t>(K) + 1;
  std::vector<double> f(static_cast<size_t>(S + 1) * W, kInf);
  std::vector<int> arg(static_cast<size_t>(S + 1) * W, -1);
  std::vector<uint8_t> rec(static_cast<size_t>(S + 1) * W, 0);
  f[0] = 0;  // row 0: no stage yet, at cut 0
  double next = kInf;
  double evals = 0;
  for (int s = 0; s < S; ++s) {
    const double* prev = &f[static_cast<size_t>(s) * W];
    double* cur = &f[static_cast<size_t>(s + 1) * W];
    int* a = &arg[static_cast<size_t>(s + 1) * W];
    uint8_t* rc = &rec[static_cast<size_t>(s + 1) * W];
    const int j_lo = s + 1, j_hi = K - (S - 1 - s);
    int min_reach = K + 1;  // smallest reachable predecessor cut
    for (int k = s; k <= K; ++k)
      if (prev[k] < kInf) {
        min_reach = k;
        break;
      }
    for (int j = j_lo; j <= j_hi; ++j) {
      const double cj = s + 1 < S ? o.comm(s, j) : 0.0;
      double best = kInf;
      int besti = -1;
      bool bestrc = false;
      for (int i = j - 1; i >= s; --i) {
        const double tl = o.t_lower(s, i, j);
        if (tl > T) {
          // Larger intervals cost at least tl: the next bound at which any of them can enter.
          if (min_reach <= i) next = std::min(next, tl);
          break;
        }
        if (!(prev[i] < kInf)) continue;
        ++evals;
        StageChoice c = o.stage(s, i, j);
        if (!(c.t <= T)) {
          if (c.t < kInf) next = std::min(next, c.t);
          continue;
        }
        const double v = prev[i] + c.t + cj;
        if (v < best) {
          best = v;
          besti = i;
          bestrc = c.recompute;
        }
      }
      cur[j] = best;
      a[j] = besti;
      rc[j] = bestrc;
    }
  }
  if (next_t) *next_t = next;
  if (work) *work += evals;
  DpSolution r;
  if (!(f[static_cast<size_t>(S) * W + static_cast<size_t>(K)] < kInf)) return r;
  r.feasible = true;
  r.bounds.assign(static_cast<size_t>(S) + 1, 0);
  r.bounds[static_cast<size_t>(S)] = K;
  for (int s = S; s >= 1; --s)
    r.bounds[static_cast<size_t>(s) - 1] = arg[static_cast<size_t>(s) * W + static_cast<size_t>(r.bounds[static_cast<size_t>(s)])];
  return r;
}

}  // namespace detail

template <class O>
DpSolution brute_force_partition(const O& o, int m);

// The exact optimum of the objective above (infeasible when no partition fits).
template <class O>
DpSolution solve_partition(const O& o, int m, const DpOptions& opt = {}) {
  const int K = o.atoms(), S = o.slots();
  DpSolution best;
  if (S < 1 || S > K || m < 1) return best;
  if (opt.enumerate_below > 0 && split_count(K, S) * S <= opt.enumerate_below) {
    best = brute_force_partition(o, m);
    best.dp_runs = 0;
    return best;
  }
  int runs = 0;
  double work = 0;
  auto run = [&](double T, double* next) {
    ++runs;
    DpSolution d = detail::dp_bounded(o, T, next, &work);
    if (!d.feasible) return d;
    return evaluate_partition(o, d.bounds, m);
  };
  auto consider = [&](const DpSolution& d) {
    if (d.feasible && d.objective < best.objective) best = d;
  };
  // Unbounded first: no partition at all fits (memory) -> done in one run; else its sum is the
  // least sum of any partition, the walk's bound below.
  const DpSolution any = run(kInf, nullptr);
  consider(any);
  if (!any.feasible || m == 1 || S == 1) {
    best.dp_runs = runs;
    return best;
  }
  // Smallest feasible T: grow from a lower bound (the largest single atom: some stage holds it)
  // until feasible, then bisect.
  double lo = 0;
  for (int i = 0; i < K; ++i) {
    double mn = kInf;
    for (int s = 0; s < S; ++s) mn = std::min(mn, o.t_lower(s, i, i + 1));
    lo = std::max(lo, mn);
  }
  lo = std::nextafter(lo, 0.0);  // strictly below any stage that holds that atom
  double hi = lo > 0 ? lo * 2 : 1e-30;
  DpSolution feas = run(hi, nullptr);
  for (int k = 0; k < 5 && !feas.feasible; ++k) {
    lo = hi;
    hi *= 2;
    feas = run(hi, nullptr);
  }
  if (!feas.feasible) {
    lo = hi;
    feas = any;
  }
  consider(feas);
  hi = feas.t_max;  // the smallest feasible T lies in (lo, hi]
  // Bisect; an infeasible DP(mid) also says the smallest T at which it could change (next):
  // the smallest feasible T is at least next, and exactly next when DP(next) is feasible.
  while (hi - lo > hi * 1e-13 && runs < opt.max_runs) {
    double mid = lo + (hi - lo) / 2;
    if (!(mid > lo && mid < hi)) break;
    double next = kInf;
    DpSolution d = run(mid, &next);
    if (d.feasible) {
      consider(d);
      hi = d.t_max;
      continue;
    }
    lo = mid;
    if (next < hi && next > lo) {
      DpSolution e = run(next, nullptr);
      if (e.feasible) {
        consider(e);
        hi = e.t_max;
        lo = std::nextafter(hi, 0.0);
        break;
      }
      lo = next;
    }
  }
  // Walk the change points of DP(T) upward from the smallest feasible T.
  const double sum_lb = std::max(o.sum_lower_bound(), any.sum);
  double T = hi;
  int steps = 0;
  bool walk_cut = false;
  while (runs < opt.max_runs) {
    if (static_cast<double>(m - 1) * T + sum_lb >= best.objective) break;
    if (steps >= opt.max_walk || work >= opt.max_work) {
      walk_cut = true;
      break;
    }
    ++steps;
    double next = kInf;
    consider(run(T, &next));
    if (!(next < kInf)) break;
    T = next;
  }
  best.truncated = runs >= opt.max_runs || walk_cut;
  best.dp_runs = runs;
  return best;
}

// Brute force over every composition (for tests): the same objective, exhaustively.
template <class O>
DpSolution brute_force_partition(const O& o, int m) {
  const int K = o.atoms(), S = o.slots();
  DpSolution best;
  if (S < 1 || S > K) return best;
  std::vector<int> b(static_cast<size_t>(S) + 1, 0);
  b[static_cast<size_t>(S)] = K;
  // Enumerate b_1 < ... < b_{S-1} in (0, K).
  std::vector<int> c(static_cast<size_t>(S > 1 ? S - 1 : 0));
  for (int i = 0; i < S - 1; ++i) c[static_cast<size_t>(i)] = i + 1;
  int64_t enumerated = 0;
  while (true) {
    for (int i = 0; i < S - 1; ++i) b[static_cast<size_t>(i) + 1] = c[static_cast<size_t>(i)];
    DpSolution d = evaluate_partition(o, b, m);
    ++enumerated;
    if (d.feasible && d.objective < best.objective) best = d;
    int i = S - 2;
    while (i >= 0 && c[static_cast<size_t>(i)] == K - (S - 1 - i)) --i;
    if (i < 0) break;
    ++c[static_cast<size_t>(i)];
    for (int k = i + 1; k < S - 1; ++k) c[static_cast<size_t>(k)] = c[static_cast<size_t>(k) - 1] + 1;
  }
  best.splits_enumerated = enumerated;
  return best;
}

}  // namespace smp::plan
