#include "plan/planner.hpp"

#include "core/error.hpp"
#include "cost/calibration.hpp"
#include "plan/dp.hpp"
#include "schedule/generators.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <queue>
#include <limits>
#include <regex>
#include <set>
#include <tuple>
#include <unordered_map>

namespace smp::plan {

using cost::Affine;
using cost::GraphCost;
using graph::ValueKind;

RecomputePolicy parse_recompute(const std::string& s, const std::string& where) {
  if (s == "auto") return RecomputePolicy::Auto;
  if (s == "never") return RecomputePolicy::Never;
  if (s == "always") return RecomputePolicy::Always;
  throw_bad_input(where, fmt::format("unknown value '{}'", s), "one of auto, never, always");
}

std::string_view recompute_name(RecomputePolicy r) {
  switch (r) {
    case RecomputePolicy::Never: return "never";
    case RecomputePolicy::Always: return "always";
    default: return "auto";
  }
}

std::string_view layout_name(Layout l) { return l == Layout::PipelineMajor ? "pipeline-major" : "replica-major"; }

double Prediction::peak_max() const {
  double m = 0;
  for (double x : peak_bytes) m = std::max(m, x);
  return m;
}

// ---- candidate cut positions ------------------------------------------------------------------

std::vector<int> candidate_positions(const GraphCost& gc, int max_positions) {
  const int N = gc.nodes();
  std::vector<int> all;
  for (int q = 1; q < N; ++q)
    if (gc.cut_fixed_tensors(q) == 0) all.push_back(q);  // never between a weight and its Transpose
  if (all.empty())
    for (int q = 1; q < N; ++q) all.push_back(q);
  if (static_cast<int>(all.size()) <= max_positions) return all;
  // Narrowest points first: include every position with at most c crossing tensors, for the
  // smallest c that gives enough positions (at least half the cap, or all).
  int want = std::max(1, max_positions / 2);
  std::vector<int> counts;
  for (int q : all) counts.push_back(gc.cut_tensors(q));
  std::vector<int> sorted = counts;
  std::sort(sorted.begin(), sorted.end());
  int c = sorted[static_cast<size_t>(std::min<int>(want, static_cast<int>(sorted.size())) - 1)];
  std::vector<int> pos;
  for (size_t k = 0; k < all.size(); ++k)
    if (counts[k] <= c) pos.push_back(all[k]);
  if (static_cast<int>(pos.size()) <= max_positions) return pos;
  // Too many: drop the cut between the two adjacent segments of least combined forward cost
  // (a heap with lazy deletion over a linked list of segments).
  std::vector<double> node_cost(static_cast<size_t>(N));
  for (int i = 0; i < N; ++i) {
    const auto& m = gc.node(i);
    node_cost[static_cast<size_t>(i)] = m.fwd.flops.at(1.0) + m.fwd.bytes.at(1.0) + 1.0;
  }
  std::vector<int> b = {0};
  b.insert(b.end(), pos.begin(), pos.end());
  b.push_back(N);
  const int segs = static_cast<int>(b.size()) - 1;
  std::vector<double> cost(static_cast<size_t>(segs));
  for (int s = 0; s < segs; ++s)
    for (int i = b[static_cast<size_t>(s)]; i < b[static_cast<size_t>(s) + 1]; ++i) cost[static_cast<size_t>(s)] += node_cost[static_cast<size_t>(i)];
  std::vector<int> prv(static_cast<size_t>(segs)), nxt(static_cast<size_t>(segs));
  std::vector<uint8_t> alive(static_cast<size_t>(segs), 1);
  for (int s = 0; s < segs; ++s) {
    prv[static_cast<size_t>(s)] = s - 1;
    nxt[static_cast<size_t>(s)] = s + 1 < segs ? s + 1 : -1;
  }
  using E = std::pair<double, std::pair<int, int>>;  // combined cost, (left seg, right seg)
  std::priority_queue<E, std::vector<E>, std::greater<E>> heap;
  for (int s = 0; s + 1 < segs; ++s) heap.push({cost[static_cast<size_t>(s)] + cost[static_cast<size_t>(s) + 1], {s, s + 1}});
  int cuts = segs - 1;
  while (cuts > max_positions && !heap.empty()) {
    auto [w, lr] = heap.top();
    heap.pop();
    auto [l, r] = lr;
    if (!alive[static_cast<size_t>(l)] || !alive[static_cast<size_t>(r)] || nxt[static_cast<size_t>(l)] != r ||
        w != cost[static_cast<size_t>(l)] + cost[static_cast<size_t>(r)])
      continue;
    // merge r into l
    cost[static_cast<size_t>(l)] += cost[static_cast<size_t>(r)];
    alive[static_cast<size_t>(r)] = 0;
    nxt[static_cast<size_t>(l)] = nxt[static_cast<size_t>(r)];
    if (nxt[static_cast<size_t>(r)] >= 0) prv[static_cast<size_t>(nxt[static_cast<size_t>(r)])] = l;
    --cuts;
    if (prv[static_cast<size_t>(l)] >= 0)
      heap.push({cost[static_cast<size_t>(prv[static_cast<size_t>(l)])] + cost[static_cast<size_t>(l)], {prv[static_cast<size_t>(l)], l}});
    if (nxt[static_cast<size_t>(l)] >= 0)
      heap.push({cost[static_cast<size_t>(l)] + cost[static_cast<size_t>(nxt[static_cast<size_t>(l)])], {l, nxt[static_cast<size_t>(l)]}});
  }
  std::vector<int> out;
  for (int s = 1; s < segs; ++s)
    if (alive[static_cast<size_t>(s)]) out.push_back(b[static_cast<size_t>(s)]);
  return out;
}

// ---- layers and baselines ---------------------------------------------------------------------

namespace {

// Module index in a node name: "/blocks.3/attn/MatMul" -> "blocks.3".
std::string module_index(const std::string& name) {
  // A pure function of the name, asked again for every stage count and every degree's graph:
  // remembered (the regex costs microseconds per name).
  static std::unordered_map<std::string, std::string> seen;
  auto it = seen.find(name);
  if (it != seen.end()) return it->second;
  static const std::regex re(R"(([A-Za-z_][A-Za-z0-9_]*)[./](\d+)(?=[./]|$))");
  std::smatch m;
  std::string r = std::regex_search(name, m, re) ? m[1].str() + "." + m[2].str() : "";
  if (seen.size() > (1u << 20)) seen.clear();
  return seen.emplace(name, std::move(r)).first->second;
}

bool has_params(const graph::Graph& g, const graph::Node& n) {
  for (int id : n.inputs)
    if (id >= 0 && g.value(id).kind == ValueKind::Parameter) return true;
  return false;
}

}  // namespace

Layers find_layers(const graph::Graph& g, int want) {
  const int N = static_cast<int>(g.nodes.size());
  Layers L;
  // 1. by module index, groups without parameters folded into the previous one
  {
    std::vector<int> starts;
    std::vector<std::string> keys;
    int first = -1, last = -1;
    std::string cur;
    for (int i = 0; i < N; ++i) {
      std::string k = module_index(g.nodes[static_cast<size_t>(i)].name);
      if (k.empty()) continue;
      if (first < 0) first = i;
      last = i;
      if (k != cur && std::find(keys.begin(), keys.end(), k) == keys.end()) {
        starts.push_back(i);
        keys.push_back(k);
        cur = k;
      }
    }
    if (first >= 0) {
      // parameter check per group
      std::vector<int> kept;
      for (size_t s = 0; s < starts.size(); ++s) {
        int a = starts[s], b = s + 1 < starts.size() ? starts[s + 1] : last + 1;
        bool p = false;
        for (int i = a; i < b; ++i) p |= has_params(g, g.nodes[static_cast<size_t>(i)]);
        if (p || kept.empty()) kept.push_back(a);
      }
      std::string prefix = keys.empty() ? "" : keys[0].substr(0, keys[0].rfind('.'));
      if (static_cast<int>(kept.size()) >= want) {
        L.starts = kept;
        L.pre_end = kept[0];
        L.post_begin = last + 1;
        L.unit = fmt::format("{} layers ({}.N modules)", kept.size(), prefix);
        return L;
      }
    }
  }
  // 2. a layer starts at each node with parameters
  {
    std::vector<int> starts;
    for (int i = 0; i < N; ++i)
      if (has_params(g, g.nodes[static_cast<size_t>(i)])) starts.push_back(i);
    if (static_cast<int>(starts.size()) >= want) {
      L.starts = starts;
      L.pre_end = starts[0];
      L.post_begin = N;
      L.unit = fmt::format("{} layers (one per node with parameters)", starts.size());
      return L;
    }
  }
  // 3. single nodes
  for (int i = 0; i < N; ++i) L.starts.push_back(i);
  L.pre_end = 0;
  L.post_begin = N;
  L.unit = fmt::format("{} nodes (equal node counts)", N);
  return L;
}

std::vector<int> equal_layers_bounds(const graph::Graph& g, int S, std::string* unit, std::string* why) {
  Layers L = find_layers(g, S);
  const int N = static_cast<int>(g.nodes.size());
  const int n = static_cast<int>(L.starts.size());
  if (unit) *unit = L.unit;
  if (n < S) {
    if (why) *why = fmt::format("{} layers for {} stages", n, S);
    return {};
  }
  std::vector<int> b(static_cast<size_t>(S) + 1);
  b[0] = 0;
  b[static_cast<size_t>(S)] = N;
  for (int s = 1; s < S; ++s) {
    int layer = static_cast<int>((static_cast<int64_t>(s) * n) / S);
    b[static_cast<size_t>(s)] = L.starts[static_cast<size_t>(layer)];
  }
  for (int s = 0; s < S; ++s)
    if (b[static_cast<size_t>(s)] >= b[static_cast<size_t>(s) + 1]) {
      if (why) *why = "an empty stage";
      return {};
    }
  return b;
}

std::vector<int> equal_params_bounds(const graph::Graph& g, int S, std::string* unit, std::string* why) {
  const int N = static_cast<int>(g.nodes.size());
  Layers L = find_layers(g, S);
  // units: pre (if any), layers, post (if any)
  std::vector<int> starts;
  if (L.pre_end > 0) starts.push_back(0);
  for (int s : L.starts) starts.push_back(s);
  if (L.post_begin < N && L.post_begin > starts.back()) starts.push_back(L.post_begin);
  const int U = static_cast<int>(starts.size());
  if (unit) *unit = fmt::format("{} units: {}{}{}", U, L.pre_end > 0 ? "the nodes before the first layer, " : "", L.unit,
                                L.post_begin < N ? ", the nodes after the last" : "");
  if (U < S) {
    if (why) *why = fmt::format("{} units for {} stages", U, S);
    return {};
  }
  std::vector<double> w(static_cast<size_t>(U), 0);
  for (int u = 0; u < U; ++u) {
    int a = starts[static_cast<size_t>(u)], b = u + 1 < U ? starts[static_cast<size_t>(u) + 1] : N;
    std::set<int> seen;
    for (int i = a; i < b; ++i)
      for (int id : g.nodes[static_cast<size_t>(i)].inputs)
        if (id >= 0 && g.value(id).kind == ValueKind::Parameter && seen.insert(id).second)
          w[static_cast<size_t>(u)] += static_cast<double>(g.value(id).numel());
  }
  // Minimise the largest part (exact DP over units), ties to the earliest split.
  const double inf = kInf;
  std::vector<double> pre(static_cast<size_t>(U) + 1, 0);
  for (int u = 0; u < U; ++u) pre[static_cast<size_t>(u) + 1] = pre[static_cast<size_t>(u)] + w[static_cast<size_t>(u)];
  std::vector<std::vector<double>> f(static_cast<size_t>(S) + 1, std::vector<double>(static_cast<size_t>(U) + 1, inf));
  std::vector<std::vector<int>> arg(static_cast<size_t>(S) + 1, std::vector<int>(static_cast<size_t>(U) + 1, -1));
  f[0][0] = 0;
  // f[s][j] = min over i of max(f[s-1][i], pre[j] - pre[i]): the first term does not decrease
  // with i, the second does not increase, so the minimum sits where they cross (found by
  // bisection); among equal minima the earliest i is taken, as a scan from the left would.
  for (int s = 1; s <= S; ++s) {
    const auto& A = f[static_cast<size_t>(s) - 1];
    for (int j = s; j <= U - (S - s); ++j) {
      auto Bv = [&](int i) { return pre[static_cast<size_t>(j)] - pre[static_cast<size_t>(i)]; };
      int lo = s - 1, hi = j;  // the first i in [s-1, j) with A(i) >= B(i); j when none
      while (lo < hi) {
        const int mid = lo + (hi - lo) / 2;
        if (A[static_cast<size_t>(mid)] >= Bv(mid)) hi = mid;
        else lo = mid + 1;
      }
      const int ic = lo;
      double best = inf;
      int besti = -1;
      if (ic > s - 1) {
        // left of the crossing g(i) = B(i), smallest at ic - 1; its earliest equal value
        const double v = Bv(ic - 1);
        int a = s - 1, b = ic - 1;  // the first i in [s-1, ic-1] with B(i) == v (B does not increase)
        while (a < b) {
          const int mid = a + (b - a) / 2;
          if (Bv(mid) <= v) b = mid;
          else a = mid + 1;
        }
        best = v;
        besti = a;
      }
      if (ic < j && A[static_cast<size_t>(ic)] < best) {
        best = A[static_cast<size_t>(ic)];
        besti = ic;
      }
      f[static_cast<size_t>(s)][static_cast<size_t>(j)] = best;
      arg[static_cast<size_t>(s)][static_cast<size_t>(j)] = besti;
    }
  }
  std::vector<int> ub(static_cast<size_t>(S) + 1);
  ub[static_cast<size_t>(S)] = U;
  for (int s = S; s >= 1; --s) ub[static_cast<size_t>(s) - 1] = arg[static_cast<size_t>(s)][static_cast<size_t>(ub[static_cast<size_t>(s)])];
  std::vector<int> b(static_cast<size_t>(S) + 1);
  for (int s = 0; s <= S; ++s) b[static_cast<size_t>(s)] = ub[static_cast<size_t>(s)] == U ? N : starts[static_cast<size_t>(ub[static_cast<size_t>(s)])];
  return b;
}

// ---- the search -------------------------------------------------------------------------------

namespace {

struct Tables {
  int K = 0;
  std::vector<int> pos;  // K + 1 node positions: atom k = nodes [pos[k], pos[k+1])
  std::vector<double> P;
  std::vector<Affine> A, R, Wk;
  size_t at(int i, int j) const { return static_cast<size_t>(i) * static_cast<size_t>(K + 1) + static_cast<size_t>(j); }
};

Tables build_tables(const GraphCost& gc, const std::vector<int>& cuts) {
  const graph::Graph& g = gc.graph();
  const int N = gc.nodes();
  Tables t;
  t.pos.push_back(0);
  for (int q : cuts) t.pos.push_back(q);
  t.pos.push_back(N);
  t.K = static_cast<int>(t.pos.size()) - 1;
  const size_t sz = static_cast<size_t>(t.K + 1) * static_cast<size_t>(t.K + 1);
  t.P.assign(sz, 0);
  t.A.assign(sz, {});
  t.R.assign(sz, {});
  t.Wk.assign(sz, {});
  const size_t V = g.values.size();
  std::vector<int> sp(V, -1), ss(V, -1), sw(V, -1), sr(V, -1);
  for (int i = 0; i < t.K; ++i) {
    const int a = t.pos[static_cast<size_t>(i)];
    double P = 0;
    Affine A, R, W;
    int j = i + 1;
    for (int n = a; n < N; ++n) {
      const auto& m = gc.node(n);
      for (int p : m.params)
        if (sp[static_cast<size_t>(p)] != i) {
          sp[static_cast<size_t>(p)] = i;
          P += static_cast<double>(g.value(p).bytes());
        }
      for (int r : m.saved)
        if (ss[static_cast<size_t>(r)] != i) {
          ss[static_cast<size_t>(r)] = i;
          A += gc.value_bytes(r);
        }
      for (int r : m.w_keep)
        if (sw[static_cast<size_t>(r)] != i) {
          sw[static_cast<size_t>(r)] = i;
          W += gc.value_bytes(r);
        }
      for (int id : g.nodes[static_cast<size_t>(n)].inputs) {
        if (id < 0) continue;
        const auto& v = g.value(id);
        if (!(v.kind == ValueKind::Input || (v.kind == ValueKind::Activation && v.producer < a))) continue;
        if (sr[static_cast<size_t>(id)] == i) continue;
        sr[static_cast<size_t>(id)] = i;
        R += gc.value_bytes(id);
        int root = gc.storage_root(id);
        if (ss[static_cast<size_t>(root)] != i) {
          ss[static_cast<size_t>(root)] = i;
          A += gc.value_bytes(id);
        }
      }
      if (n + 1 == t.pos[static_cast<size_t>(j)]) {
        size_t k = t.at(i, j);
        t.P[k] = P;
        t.A[k] = A;
        t.R[k] = R;
        t.Wk[k] = W;
        ++j;
      }
    }
  }
  return t;
}

// Per microbatch size: atom times per device kind and workspace maxima.
struct UData {
  double u = 0;
  std::vector<std::vector<double>> PF, PB, PW;  // [kind][K+1] prefix sums
  std::vector<std::vector<double>> ws;          // sparse table of per-atom workspace maxima
  std::vector<double> cut_act, cut_grad;        // at atom boundary j (bytes)
  double total_fast = 0;                        // F+B+W of the whole graph on the fastest kind
  double ws_max(int i, int j) const {
    const int k = 31 - __builtin_clz(static_cast<unsigned>(j - i));
    return std::max(ws[static_cast<size_t>(k)][static_cast<size_t>(i)], ws[static_cast<size_t>(k)][static_cast<size_t>(j - (1 << k))]);
  }
};

UData make_udata(const GraphCost& gc, const cost::Cluster& cl, const Tables& t, double u) {
  UData d;
  d.u = u;
  const int K = t.K;
  const size_t nk = cl.kinds.size();
  d.PF.assign(nk, std::vector<double>(static_cast<size_t>(K) + 1, 0));
  d.PB = d.PF;
  d.PW = d.PF;
  std::vector<double> wsa(static_cast<size_t>(K), 0);
  for (size_t k = 0; k < nk; ++k) {
    for (int a = 0; a < K; ++a) {
      cost::PassTimes s;
      for (int n = t.pos[static_cast<size_t>(a)]; n < t.pos[static_cast<size_t>(a) + 1]; ++n) s += gc.node_time(n, u, cl.kinds[k]);
      d.PF[k][static_cast<size_t>(a) + 1] = d.PF[k][static_cast<size_t>(a)] + s.f;
      d.PB[k][static_cast<size_t>(a) + 1] = d.PB[k][static_cast<size_t>(a)] + s.b;
      d.PW[k][static_cast<size_t>(a) + 1] = d.PW[k][static_cast<size_t>(a)] + s.w;
    }
  }
  d.total_fast = kInf;
  for (size_t k = 0; k < nk; ++k) d.total_fast = std::min(d.total_fast, d.PF[k][static_cast<size_t>(K)] + d.PB[k][static_cast<size_t>(K)] + d.PW[k][static_cast<size_t>(K)]);
  for (int a = 0; a < K; ++a) {
    double w = 0;
    for (int n = t.pos[static_cast<size_t>(a)]; n < t.pos[static_cast<size_t>(a) + 1]; ++n) w = std::max(w, gc.node(n).workspace.at(u));
    wsa[static_cast<size_t>(a)] = w;
  }
  d.ws.push_back(wsa);
  for (int k = 1; (1 << k) <= K; ++k) {
    const auto& prev = d.ws.back();
    std::vector<double> cur(static_cast<size_t>(K), 0);
    for (int i = 0; i + (1 << k) <= K; ++i) cur[static_cast<size_t>(i)] = std::max(prev[static_cast<size_t>(i)], prev[static_cast<size_t>(i + (1 << (k - 1)))]);
    d.ws.push_back(cur);
  }
  d.cut_act.assign(static_cast<size_t>(K) + 1, 0);
  d.cut_grad.assign(static_cast<size_t>(K) + 1, 0);
  for (int j = 1; j < K; ++j) {
    d.cut_act[static_cast<size_t>(j)] = gc.cut_bytes(t.pos[static_cast<size_t>(j)]).at(u);
    d.cut_grad[static_cast<size_t>(j)] = gc.cut_grad_bytes(t.pos[static_cast<size_t>(j)]).at(u);
  }
  return d;
}

struct Config {
  int p = 1, d = 1, v = 1, m = 1;
  std::string schedule;
  Layout layout = Layout::PipelineMajor;
  double u = 0;
  double est = 0, lb = 0;
  int space = 0;      // index of its tensor-parallel degree's search space
  bool zero = false;  // optimizer state split over the d replicas
  // Optimizer state and update per weight byte on one replica.
  double optimizer_share() const { return zero ? 1.0 / d : 1.0; }
};

// What a slot (stage position) runs on.
struct Slot {
  std::vector<int> kinds;                  // distinct device kinds over the replicas
  double cap = 0;                          // memory budget for this stage
  std::vector<std::pair<double, double>> pts;  // (stashed, pending W) microbatch counts, Pareto maxima
  std::vector<cost::LinkSpec> next_links;  // to the next slot, one per distinct link over replicas
  std::vector<int> devices;                // per replica
};

int device_of(const Config& c, int replica, int prank) {
  return c.layout == Layout::PipelineMajor ? replica * c.p + prank : prank * c.d + replica;
}

// Per stage of a compute schedule: the Pareto maxima of (microbatches stashed between F and B/X,
// microbatches between B and W) over the stage's rank's list order. A rank's memory depends only
// on its list order, so these give the simulator's peak exactly.
std::vector<std::vector<std::pair<double, double>>> frontiers(const schedule::Schedule& s) {
  const int S = s.stages();
  std::vector<std::vector<int>> best_y(static_cast<size_t>(S));  // by stashed count: the most pending
  std::vector<int> stash(static_cast<size_t>(S), 0), pend(static_cast<size_t>(S), 0);
  for (const auto& row : s.actions)
    for (const auto& a : row) {
      if (!a.is_compute()) continue;
      const size_t st = static_cast<size_t>(a.stage);
      switch (a.op) {
        case schedule::Op::Forward: ++stash[st]; break;
        case schedule::Op::BackwardInput: --stash[st]; ++pend[st]; break;
        case schedule::Op::Backward: --stash[st]; break;
        default: --pend[st]; break;
      }
      auto& by = best_y[st];
      const size_t x = static_cast<size_t>(std::max(stash[st], 0));
      if (by.size() <= x) by.resize(x + 1, -1);
      by[x] = std::max(by[x], pend[st]);
    }
  std::vector<std::vector<std::pair<double, double>>> out(static_cast<size_t>(S));
  for (int st = 0; st < S; ++st) {
    const auto& by = best_y[static_cast<size_t>(st)];
    int seen = -1;
    for (size_t x = by.size(); x-- > 0;)
      if (by[x] > seen) {
        out[static_cast<size_t>(st)].emplace_back(static_cast<double>(x), static_cast<double>(by[x]));
        seen = by[x];
      }
  }
  return out;
}

std::vector<Slot> make_slots(const Config& c, const schedule::Schedule& s, const cost::Cluster& cl,
                             const std::vector<std::vector<std::pair<double, double>>>& fr) {
  const int S = s.stages();
  std::vector<Slot> slots(static_cast<size_t>(S));
  for (int st = 0; st < S; ++st) {
    Slot& sl = slots[static_cast<size_t>(st)];
    const int r = s.rank_of(st);
    sl.cap = kInf;
    for (int rep = 0; rep < c.d; ++rep) {
      int dev = device_of(c, rep, r);
      sl.devices.push_back(dev);
      int k = cl.devices[static_cast<size_t>(dev)].kind;
      if (std::find(sl.kinds.begin(), sl.kinds.end(), k) == sl.kinds.end()) sl.kinds.push_back(k);
      sl.cap = std::min(sl.cap, cl.kinds[static_cast<size_t>(k)].memory_bytes);
      if (st + 1 < S) {
        int dev2 = device_of(c, rep, s.rank_of(st + 1));
        cost::LinkSpec l = cl.link(dev, dev2);
        bool have = false;
        for (auto& x : sl.next_links) have |= x.bandwidth == l.bandwidth && x.latency == l.latency;
        if (!have) sl.next_links.push_back(l);
      }
    }
    sl.cap /= c.v;  // interleaved: each chunk gets its share (conservative)
    const auto& f = fr[static_cast<size_t>(st)];
    if (c.v == 1) {
      sl.pts = f;
    } else {
      double x = 0, y = 0;
      for (auto& q : f) x = std::max(x, q.first), y = std::max(y, q.second);
      sl.pts = {{x, y}};
    }
  }
  return slots;
}

std::vector<Slot> make_slots(const Config& c, const schedule::Schedule& s, const cost::Cluster& cl) {
  return make_slots(c, s, cl, frontiers(s));
}

double link_pair_time(const std::vector<cost::LinkSpec>& links, double act, double grad) {
  double t = 0;
  for (const auto& l : links) t = std::max(t, l.time(act) + l.time(grad));
  return t;
}

struct Oracle {
  const Tables* T;
  const UData* U;
  const std::vector<Slot>* sl_;
  double static_factor;
  RecomputePolicy pol;
  double sum_lb;

  int atoms() const { return T->K; }
  int slots() const { return static_cast<int>(sl_->size()); }
  double times(int s, int i, int j, double* f) const {
    const Slot& sl = (*sl_)[static_cast<size_t>(s)];
    if (sl.kinds.size() == 1) {
      const size_t kk = static_cast<size_t>(sl.kinds[0]);
      const double* pf = U->PF[kk].data();
      const double* pb = U->PB[kk].data();
      const double* pw = U->PW[kk].data();
      const double ff = pf[j] - pf[i];
      if (f) *f = ff;
      return ff + (pb[j] - pb[i]) + (pw[j] - pw[i]);
    }
    double best = -1, bf = 0;
    for (int k : sl.kinds) {
      const size_t kk = static_cast<size_t>(k);
      double ff = U->PF[kk][static_cast<size_t>(j)] - U->PF[kk][static_cast<size_t>(i)];
      double t = ff + U->PB[kk][static_cast<size_t>(j)] - U->PB[kk][static_cast<size_t>(i)] + U->PW[kk][static_cast<size_t>(j)] -
                 U->PW[kk][static_cast<size_t>(i)];
      if (t > best) best = t, bf = ff;
    }
    if (f) *f = bf;
    return best;
  }
  double t_lower(int s, int i, int j) const { return times(s, i, j, nullptr); }
  // Stage choices do not depend on the DP's bound: cached per (slot, i, j) across the DP runs of
  // one solve (when the table is not too large).
  mutable std::vector<uint8_t> cache_rc;
  mutable std::vector<double> cache_td;
  void enable_cache() {
    const size_t n = sl_->size() * static_cast<size_t>(T->K + 1) * static_cast<size_t>(T->K + 1);
    if (n <= (size_t{1} << 23)) {
      cache_td.assign(n, std::numeric_limits<double>::quiet_NaN());
      cache_rc.assign(n, 0);
    }
  }
  StageChoice stage(int s, int i, int j) const {
    if (!cache_td.empty()) {
      const size_t k = (static_cast<size_t>(s) * static_cast<size_t>(T->K + 1) + static_cast<size_t>(i)) * static_cast<size_t>(T->K + 1) +
                       static_cast<size_t>(j);
      double t = cache_td[k];
      if (t == t) return {t, cache_rc[k] != 0};
      StageChoice c = compute_stage(s, i, j);
      cache_td[k] = c.t;
      cache_rc[k] = c.recompute;
      return c;
    }
    return compute_stage(s, i, j);
  }
  StageChoice compute_stage(int s, int i, int j) const {
    const Slot& sl = (*sl_)[static_cast<size_t>(s)];
    const size_t k = T->at(i, j);
    const double u = U->u;
    const double stat = T->P[k] * static_factor;
    const double A = T->A[k].at(u), R = T->R[k].at(u), W = T->Wk[k].at(u);
    const double ws = U->ws_max(i, j);
    auto front = [&](double a) {
      double mx = 0;
      for (auto& [x, y] : sl.pts) mx = std::max(mx, x * a + y * W);
      return mx;
    };
    double f = 0;
    double t = times(s, i, j, &f);
    if (pol != RecomputePolicy::Always && stat + front(A) + ws <= sl.cap) return {t, false};
    if (pol != RecomputePolicy::Never && stat + front(R) + ws + A <= sl.cap) return {t + f, true};
    return {};
  }
  double comm(int s, int j) const {
    return link_pair_time((*sl_)[static_cast<size_t>(s)].next_links, U->cut_act[static_cast<size_t>(j)], U->cut_grad[static_cast<size_t>(j)]);
  }
  double sum_lower_bound() const { return sum_lb; }
};

// The messages over the boundary after stage st (the slowest replica's). Between GPUs the
// link moves them (latency + bytes / bandwidth) while both ranks compute. A CPU rank does the
// copies itself: the sender packs the tensors into a message (one pass over the bytes at its
// memory bandwidth) and the receiver unpacks them; on one host the receiver also copies the
// message out of the sender's memory (cross-memory attach, or the shared-memory transport's
// copy), at the link's bandwidth, so only the latency is left to the link.
schedule::LinkCost boundary_cost(const cost::Cluster& cl, const Config& c, const schedule::Schedule& s, int st,
                                 double act, double grad) {
  schedule::LinkCost best;
  for (int rep = 0; rep < c.d; ++rep) {
    const int d0 = device_of(c, rep, s.rank_of(st)), d1 = device_of(c, rep, s.rank_of(st + 1));
    const cost::LinkSpec l = cl.link(d0, d1);
    const auto& k0 = cl.kinds[static_cast<size_t>(cl.devices[static_cast<size_t>(d0)].kind)];
    const auto& k1 = cl.kinds[static_cast<size_t>(cl.devices[static_cast<size_t>(d1)].kind)];
    schedule::LinkCost lc;
    auto copy = [](double bytes, const cost::DeviceSpec& k) {
      return k.kind == "cpu" && bytes > 0 && k.memory_bandwidth > 0 ? bytes / k.memory_bandwidth : 0.0;
    };
    const bool pull = d0 != d1 && k0.kind == "cpu" && k1.kind == "cpu" &&
                      cl.devices[static_cast<size_t>(d0)].host == cl.devices[static_cast<size_t>(d1)].host;
    auto over = [&](double bytes) { return pull ? (bytes > 0 ? l.latency : 0.0) : l.time(bytes); };
    auto pulled = [&](double bytes) { return pull && bytes > 0 ? bytes / l.bandwidth : 0.0; };
    lc.act_s = over(act);
    lc.grad_s = over(grad);
    lc.act_send_s = copy(act, k0);
    lc.act_recv_s = pulled(act) + copy(act, k1);
    lc.grad_send_s = copy(grad, k1);
    lc.grad_recv_s = pulled(grad) + copy(grad, k0);
    auto total = [](const schedule::LinkCost& x) {
      return x.act_s + x.grad_s + x.act_send_s + x.act_recv_s + x.grad_send_s + x.grad_recv_s;
    };
    if (rep == 0 || total(lc) > total(best)) best = lc;
  }
  return best;
}

// The data-parallel sum of a stage's gradients over its replicas' devices: a ring at the
// slowest link's all-reduce (bus) bandwidth. A GPU sums its gradients where they lie; a CPU
// worker packs them into one host buffer and copies the sum back out (Worker::reduce_and_update:
// one pass over the bytes in, two out), at its memory bandwidth.
double ring_time(const cost::Cluster& cl, const std::vector<int>& devs, double bytes) {
  const size_t d = devs.size();
  if (d <= 1 || bytes <= 0) return 0;
  double bw = kInf, lat = 0, copies = 0;
  for (size_t i = 0; i < d; ++i) {
    cost::LinkSpec l = cl.link(devs[i], devs[(i + 1) % d]);
    bw = std::min(bw, l.bus_bandwidth());
    lat = std::max(lat, l.latency);
    const cost::DeviceSpec& k = cl.spec(devs[i]);
    if (k.kind == "cpu" && k.memory_bandwidth > 0) copies = std::max(copies, 3.0 * bytes / k.memory_bandwidth);
  }
  const double dd = static_cast<double>(d);
  return 2.0 * (dd - 1) / dd * bytes / bw + 2.0 * (dd - 1) * lat + copies;
}

struct Evaluated {
  Prediction pred;
  std::vector<StagePlan> stages;
  double worst_ratio = kInf;  // max over ranks of peak / capacity
};

class Search {
 public:
  Search(const PlanInputs& in, const PlanOptions& opt) : in_(in), opt_(opt), gc_(*in.cost), cl_(*in.cluster) {}

  Evaluated evaluate(const Config& c, const schedule::Schedule& s, const std::vector<Slot>& slots,
                     const std::vector<int>& bounds, schedule::SimResult* sim_out = nullptr) const {
    Evaluated ev;
    const int S = s.stages();
    const double u = c.u;
    const double opt_f = cost::optimizer_factor(gc_.options().optimizer) * c.optimizer_share();
    schedule::Costs costs;
    costs.stage.resize(static_cast<size_t>(S));
    costs.link.resize(static_cast<size_t>(std::max(S - 1, 0)));
    std::vector<double> extra(static_cast<size_t>(c.p), 0);  // workspace per pipeline rank
    ev.stages.resize(static_cast<size_t>(S));
    // Workers of a calibrated machine computing at once on average (a pipeline of p stages over
    // m microbatches keeps p m / (m + p - 1) busy, as smp-profile's contention model has it): each
    // runs slower by the calibration's slow-down for that many. A tensor-parallel group is one
    // device here (the graph is split for it) and its ranks all compute at once.
    const int tp = std::max(gc_.options().tp_degree, 1);
    const double busy = static_cast<double>(c.d) * tp * c.p * c.m / (c.m + c.p - 1.0);
    // activations of one microbatch of the whole model as one stage (only a profile needs it)
    const double act_whole = gc_.options().profile ? gc_.stage_memory(0, gc_.nodes(), u).act.at(u) : 0.0;
    for (int st = 0; st < S; ++st) {
      const Slot& sl = slots[static_cast<size_t>(st)];
      const int a = bounds[static_cast<size_t>(st)], b = bounds[static_cast<size_t>(st) + 1];
      StagePlan& sp = ev.stages[static_cast<size_t>(st)];
      sp.index = st;
      sp.begin = a;
      sp.end = b;
      sp.pipeline_rank = s.rank_of(st);
      auto mem = gc_.stage_memory(a, b, u);
      // Measured times move from one microbatch in flight towards the profile's many in flight
      // as the stage keeps more activations between a microbatch's forward and its backward:
      // by (in flight x the stage's activations - the whole model's) / ((D - 1) x the whole
      // model's), 0 to 1 (a one-stage plan with D in flight gets the many-in-flight times).
      double depth = 0;
      for (const auto& pt : sl.pts) depth = std::max(depth, pt.first);
      auto in_flight = [&](const cost::DeviceSpec& dev) {
        const int D = gc_.profile_in_flight(dev, u);
        if (D < 2 || act_whole <= 0) return 0.0;
        return std::clamp((depth * mem.act.at(u) - act_whole) / ((D - 1) * act_whole), 0.0, 1.0);
      };
      // the slowest kind among the replicas
      cost::PassTimes worst;
      int measured = 0, total = 0;
      bool first = true;
      sp.update_s = 0;
      for (int k : sl.kinds) {
        cost::PassTimes tt;
        int ms_count = 0;
        const cost::DeviceSpec& dev = cl_.kinds[static_cast<size_t>(k)];
        sp.update_s = std::max(sp.update_s, gc_.optimizer_step_s(mem.param_bytes * c.optimizer_share(), dev, nullptr, c.p * c.d * tp));
        const double x = in_flight(dev);
        for (int n = a; n < b; ++n) {
          bool ms = false;
          tt += gc_.node_time(n, u, dev, &ms, x, busy);
          ms_count += ms;
        }
        if (first || tt.total() > worst.total()) {
          worst = tt;
          measured = ms_count;
          total = b - a;
          first = false;
        }
      }
      sp.timing = measured == 0 ? "estimated" : measured == total ? "measured" : "partly measured";
      const double A = mem.act.at(u), R = mem.received.at(u), W = mem.w_keep.at(u), ws = mem.workspace.c;
      const double stat = mem.param_bytes * (gc_.weight_grad_factor() + opt_f);
      auto front = [&](double act) {
        double mx = 0;
        for (auto& [x, y] : sl.pts) mx = std::max(mx, x * act + y * W);
        return mx;
      };
      bool rc;
      if (opt_.recompute == RecomputePolicy::Always) rc = true;
      else if (opt_.recompute == RecomputePolicy::Never) rc = false;
      else rc = !(stat + front(A) + ws <= sl.cap) && (stat + front(R) + ws + A <= sl.cap);
      sp.recompute = rc;
      sp.f_s = worst.f;
      sp.b_s = worst.b + (rc ? worst.f : 0);
      sp.w_s = worst.w;
      sp.param_bytes = mem.param_bytes;
      int64_t elems = 0;
      {
        std::set<int> seen;
        for (int n = a; n < b; ++n)
          for (int p : gc_.node(n).params)
            if (seen.insert(p).second) elems += in_.graph->value(p).numel();
      }
      sp.params = elems;
      sp.static_bytes = stat;
      sp.act_bytes = rc ? R : A;
      sp.w_keep_bytes = W;
      sp.workspace_bytes = ws + (rc ? A : 0);
      sp.send_bytes = st + 1 < S ? gc_.cut_bytes(b).at(u) : 0;
      sp.grad_bytes = st > 0 ? gc_.cut_grad_bytes(a).at(u) : 0;
      auto& sc = costs.stage[static_cast<size_t>(st)];
      sc.f_s = sp.f_s;
      sc.b_s = sp.b_s;
      sc.w_s = sp.w_s;
      sc.weight_bytes = mem.param_bytes * (gc_.weight_grad_factor() - 1);  // with a bf16 copy
      sc.grad_bytes = mem.param_bytes;
      sc.optimizer_bytes = mem.param_bytes * opt_f;
      sc.act_bytes = sp.act_bytes;
      sc.w_keep_bytes = W;
      extra[static_cast<size_t>(sp.pipeline_rank)] = std::max(extra[static_cast<size_t>(sp.pipeline_rank)], sp.workspace_bytes);
      if (st + 1 < S)
        costs.link[static_cast<size_t>(st)] =
            boundary_cost(cl_, c, s, st, gc_.cut_bytes(b).at(u), gc_.cut_grad_bytes(b).at(u));
    }
    costs.update_s.assign(static_cast<size_t>(c.p), 0);
    for (int st = 0; st < S; ++st)
      costs.update_s[static_cast<size_t>(s.rank_of(st))] += ev.stages[static_cast<size_t>(st)].update_s;
    if (c.d > 1) {
      costs.allreduce_s.assign(static_cast<size_t>(c.p), 0);
      for (int st = 0; st < S; ++st)
        costs.allreduce_s[static_cast<size_t>(s.rank_of(st))] +=
            ring_time(cl_, slots[static_cast<size_t>(st)].devices, ev.stages[static_cast<size_t>(st)].param_bytes);
    }
    schedule::SimOptions so;
    so.record_events = sim_out != nullptr;
    schedule::SimResult r = schedule::simulate(s, costs, so, "plan");
    Prediction& pr = ev.pred;
    pr.simulated_step_s = r.step_s;
    pr.step_s = std::max(r.step_s, cores_floor(c, r, slots, busy));
    pr.cores_bound = pr.step_s > r.step_s;
    pr.samples_per_s = pr.step_s > 0 ? static_cast<double>(opt_.batch_size) / pr.step_s : 0;
    pr.bubble = r.bubble;
    pr.peak_bytes.resize(static_cast<size_t>(c.p));
    pr.capacity_bytes.assign(static_cast<size_t>(c.p), kInf);
    for (int st = 0; st < S; ++st) {
      int rk = s.rank_of(st);
      for (int dev : slots[static_cast<size_t>(st)].devices)
        pr.capacity_bytes[static_cast<size_t>(rk)] = std::min(pr.capacity_bytes[static_cast<size_t>(rk)], cl_.spec(dev).memory_bytes);
    }
    pr.fits = true;
    double worst = 0;
    for (int rk = 0; rk < c.p; ++rk) {
      pr.peak_bytes[static_cast<size_t>(rk)] = r.rank[static_cast<size_t>(rk)].peak_bytes + extra[static_cast<size_t>(rk)];
      pr.allreduce_s = std::max(pr.allreduce_s, r.rank[static_cast<size_t>(rk)].allreduce_s);
      pr.update_s = std::max(pr.update_s, r.rank[static_cast<size_t>(rk)].update_s);
      double ratio = pr.peak_bytes[static_cast<size_t>(rk)] / pr.capacity_bytes[static_cast<size_t>(rk)];
      worst = std::max(worst, ratio);
      if (ratio > 1.0) pr.fits = false;
    }
    ev.worst_ratio = worst;
    for (auto& sp : ev.stages) {
      sp.peak_bytes = pr.peak_bytes[static_cast<size_t>(sp.pipeline_rank)];
      sp.capacity_bytes = pr.capacity_bytes[static_cast<size_t>(sp.pipeline_rank)];
    }
    if (sim_out) *sim_out = std::move(r);
    return ev;
  }

  // Workers sharing a calibrated machine finish a step no sooner than its cores can do the
  // step's work. The simulator prices every action at the slow-down of the average number of
  // busy workers (time-slicing beyond the cores) and keeps the pipeline's bubbles at that
  // speed, while in them the kernel's scheduler gives the cores to the other workers' actions;
  // with more workers than cores the simulated step can come out shorter than the work over the
  // cores. The floor: every rank's compute, end-of-step update and gradient sum as CPU time
  // (without the time-slicing, with the contention), over the cores; with more workers than
  // cores, times what the calibration's ring of twice as many workers as cores lost beyond its
  // CPU work (KernelCalibration::oversubscription). Not with a profile: its times carry its own
  // measured slow-down (smp-profile's contention and pipelined probe).
  double cores_floor(const Config& c, const schedule::SimResult& r, const std::vector<Slot>& slots, double busy) const {
    if (slots.empty() || slots.front().devices.empty() || gc_.options().profile) return 0;
    const cost::DeviceSpec& dev = cl_.spec(slots.front().devices.front());
    if (dev.kind != "cpu" || !dev.calibration) return 0;
    const double cores = std::max(dev.calibration->cores, 1), threads = std::max(dev.threads, 1);
    const int tp = std::max(gc_.options().tp_degree, 1);
    const double workers = static_cast<double>(c.p) * c.d * tp;
    const double slice_c = std::max(1.0, busy * threads / cores), slice_u = std::max(1.0, workers * threads / cores);
    double cpu = 0;  // one replica's pipeline (one tensor-parallel lane): the others do as much
    for (const auto& rs : r.rank) cpu += rs.busy_s / slice_c + rs.update_s / slice_u + rs.allreduce_s;
    const double over = workers * threads > cores ? dev.calibration->oversubscription_factor(busy * threads / cores) : 1.0;
    return cpu * c.d * tp * threads / cores * over;
  }

  const cost::Cluster& cluster() const { return cl_; }
  const GraphCost& gc() const { return gc_; }

 private:
  const PlanInputs& in_;
  const PlanOptions& opt_;
  const GraphCost& gc_;
  const cost::Cluster& cl_;
};

std::vector<int> divisors(int64_t n) {
  std::vector<int> r;
  for (int64_t i = 1; i * i <= n; ++i)
    if (n % i == 0) {
      r.push_back(static_cast<int>(i));
      if (i * i != n) r.push_back(static_cast<int>(n / i));
    }
  std::sort(r.begin(), r.end());
  return r;
}

std::string human_bytes(double x) {
  const char* p[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (x >= 1024 && i < 5) x /= 1024, ++i;
  return fmt::format("{:.3g} {}", x, p[i]);
}

}  // namespace

namespace {

// One tensor-parallel degree's search: the graph one rank of a group runs, its cost, the cluster
// with one device per group, and the tables the DP and the simulator read.
struct Space {
  int tp = 1;
  std::shared_ptr<const TpContext> ctx;  // null for tp 1
  PlanInputs in;
  std::vector<int> cuts;
  Tables T;
  std::map<int64_t, UData> udata;
  std::unique_ptr<Search> search;
  std::map<int, std::pair<std::vector<int>, std::vector<int>>> baseline_cache;  // by stage count
  std::vector<std::pair<int, int>> pds;  // (p, d) over the groups it uses
  int n_used = 0;                        // groups used
  double param_bytes = 0;                // the weights of one rank's graph

  const UData& get_u(double u) {
    const int64_t key = static_cast<int64_t>(std::llround(u));
    auto it = udata.find(key);
    if (it == udata.end()) it = udata.emplace(key, make_udata(*in.cost, *in.cluster, T, u)).first;
    return it->second;
  }
  const std::pair<std::vector<int>, std::vector<int>>& baselines_for(int S) {
    auto bl = baseline_cache.find(S);
    if (bl == baseline_cache.end())
      bl = baseline_cache.emplace(S, std::make_pair(equal_layers_bounds(*in.graph, S, nullptr, nullptr),
                                                    equal_params_bounds(*in.graph, S, nullptr, nullptr))).first;
    return bl->second;
  }
  // Global rank -> device of the source cluster (rank_layout()).
  std::vector<int> devices_of_ranks(const Config& c) const {
    std::vector<int> out;
    for (int rep = 0; rep < c.d; ++rep)
      for (int r = 0; r < c.p; ++r) {
        const int gd = device_of(c, rep, r);
        for (int t = 0; t < tp; ++t) out.push_back(ctx ? ctx->first_device[static_cast<size_t>(gd)] + t : gd);
      }
    return out;
  }
};

std::unique_ptr<Space> make_space(const PlanInputs& in, const PlanOptions& opt, int tp, std::string* why) {
  auto sp = std::make_unique<Space>();
  sp->tp = tp;
  if (tp == 1) {
    sp->in = in;
  } else {
    std::string problem = tp_cluster_problem(*in.cluster, tp);
    if (!problem.empty()) {
      if (why) *why = problem;
      return nullptr;
    }
    sp->ctx = make_tp_context(*in.graph, opt.batch_size, in.cost->options(), *in.cluster, tp);
    if (!sp->ctx) {
      if (why) *why = fmt::format("the graph has no groups that split {} ways", tp);
      return nullptr;
    }
    sp->in = PlanInputs{&sp->ctx->graph, sp->ctx->cost.get(), &sp->ctx->cluster};
  }
  sp->cuts = candidate_positions(*sp->in.cost, opt.max_positions);
  sp->T = build_tables(*sp->in.cost, sp->cuts);
  sp->search = std::make_unique<Search>(sp->in, opt);
  double param_bytes = 0;
  for (int p : sp->in.graph->parameters) param_bytes += static_cast<double>(sp->in.graph->value(p).bytes());
  sp->param_bytes = param_bytes;
  return sp;
}

}  // namespace

PlanInputs plan_inputs(const Plan& plan, const PlanInputs& in) {
  if (!plan.tp) return in;
  return PlanInputs{&plan.tp->graph, plan.tp->cost.get(), &plan.tp->cluster};
}

ShardOptimizer parse_shard_optimizer(const std::string& s, const std::string& where) {
  if (s == "auto") return ShardOptimizer::Auto;
  if (s == "always" || s == "on") return ShardOptimizer::Always;
  if (s == "never" || s == "off") return ShardOptimizer::Never;
  throw_bad_input(where, fmt::format("unknown value '{}'", s), "one of auto, always, never");
}

Plan make_plan(const PlanInputs& in, const PlanOptions& opt) {
  const graph::Graph& g = *in.graph;
  const GraphCost& gc = *in.cost;
  const cost::Cluster& cl = *in.cluster;
  const int N = gc.nodes();
  const int64_t B = opt.batch_size;
  if (B < 1) throw_bad_input("--batch-size", "must be at least 1");
  if (N < 1) throw_bad_input(g.model_path.string(), "the graph has no compute nodes", "nothing to partition");
  if (cl.size() < 1) throw_bad_input("cluster", "has no devices");
  if (opt.stages > N)
    throw_bad_input("--stages", fmt::format("{} stages for a graph of {} nodes", opt.stages, N),
                    fmt::format("use at most {} stages", N));
  if (opt.microbatches > 0 && B % opt.microbatches != 0)
    throw_bad_input("--microbatches", fmt::format("the batch of {} is not divisible into {} microbatches", B, opt.microbatches),
                    "choose a divisor of --batch-size");
  if (opt.data_parallel > 0 && B % opt.data_parallel != 0)
    throw_bad_input("--data-parallel", fmt::format("the batch of {} does not split into {} replicas", B, opt.data_parallel),
                    "choose a divisor of --batch-size");
  if (opt.microbatches > 0 && opt.data_parallel > 0 && B % (int64_t{opt.microbatches} * opt.data_parallel) != 0)
    throw_bad_input("--microbatches", fmt::format("the batch of {} does not split into {} replicas x {} microbatches", B,
                                                  opt.data_parallel, opt.microbatches));
  const std::vector<std::string> known = {"gpipe", "1f1b", "interleaved", "zb-h1"};
  if (opt.schedule != "auto" && std::find(known.begin(), known.end(), opt.schedule) == known.end())
    throw_bad_input("--schedule", fmt::format("unknown schedule '{}'", opt.schedule), "one of auto, gpipe, 1f1b, interleaved, zb-h1");
  if (opt.chunks > 1 && opt.schedule != "auto" && opt.schedule != "interleaved" && opt.schedule != "gpipe")
    throw_bad_input("--chunks", fmt::format("{} runs one stage per rank", opt.schedule), "use --schedule interleaved or gpipe");
  if (opt.tensor_parallel < 0) throw_bad_input("--tensor-parallel", "must be at least 1");
  const cost::Profile* prof = gc.options().profile;
  if (prof) {
    bool match = false;
    for (const auto& k : cl.kinds) match |= k.name == prof->device_name;
    if (!match)
      throw_bad_input(prof->path, fmt::format("measured on device \"{}\", which the cluster does not have", prof->device_name),
                      "profile on the cluster's devices, or leave --profile out");
    if (opt.tensor_parallel > 1)
      throw_bad_input("--tensor-parallel", "a profile measured whole nodes, not their tensor-parallel parts",
                      "leave out --profile, or plan without tensor parallelism");
  }

  for (int q : opt.split_cuts) {
    if (q < 1 || q >= N) throw_bad_input("--split", fmt::format("a cut before node {}: cuts lie before nodes 1 to {}", q, N - 1));
    if (gc.cut_fixed_tensors(q) > 0)
      throw_bad_input("--split", fmt::format("a cut before node {} ({}) would send a tensor computed from weights alone every "
                                             "microbatch", q, g.nodes[static_cast<size_t>(q)].name),
                      "move the cut by a node");
  }

  const auto t0 = std::chrono::steady_clock::now();
  Plan plan;
  plan.model_path = g.model_path.string();
  plan.model_name = g.name;
  plan.batch_size = B;
  plan.positions_total = std::max(N - 1, 0);
  plan.devices_total = cl.size();

  // The degrees: the one asked for, else 1 and the powers of two a host's devices split into
  // (a measured profile keeps the search at 1).
  std::vector<std::unique_ptr<Space>> spaces;
  {
    std::vector<int> degrees;
    if (opt.tensor_parallel > 0) degrees = {opt.tensor_parallel};
    else if (prof) degrees = {1};
    else degrees = {1, 2, 4, 8};
    for (int T : degrees) {
      if (T > cl.size()) {
        if (opt.tensor_parallel > 0)
          throw_bad_input("--tensor-parallel", fmt::format("{} ranks per group, the cluster has {} devices", T, cl.size()));
        continue;
      }
      std::string why;
      auto sp = make_space(in, opt, T, &why);
      if (!sp) {
        if (opt.tensor_parallel > 0) throw_bad_input("--tensor-parallel", fmt::format("{}: {}", T, why), "choose another degree, or 1");
        continue;
      }
      plan.degrees_searched.push_back(T);
      spaces.push_back(std::move(sp));
    }
  }

  // Pipeline x data-parallel degrees over each space's groups.
  int K_max = 0;
  for (auto& sp : spaces) {
    const int K = sp->T.K;
    K_max = std::max(K_max, K);
    const int G = sp->in.cluster->size();
    auto valid_pd = [&](int p, int d) {
      if (opt.stages && p != opt.stages) return false;
      if (opt.data_parallel && d != opt.data_parallel) return false;
      if (p > K) return false;
      if (B % d != 0) return false;
      if (opt.microbatches && (B / d) % opt.microbatches != 0) return false;
      if (prof && (B / d) % prof->microbatch_size != 0) return false;
      if (prof && opt.microbatches && (B / d) / opt.microbatches != prof->microbatch_size) return false;
      if (opt.fixed_microbatch && (B / d) % opt.fixed_microbatch != 0) return false;
      if (opt.fixed_microbatch && opt.microbatches && (B / d) / opt.microbatches != opt.fixed_microbatch) return false;
      return true;
    };
    if (opt.stages && opt.data_parallel && opt.tensor_parallel > 0) {
      int64_t need = int64_t{opt.stages} * opt.data_parallel * sp->tp;
      if (need > cl.size())
        throw_bad_input("--stages", fmt::format("{} stages x {} replicas x {} tensor-parallel ranks need {} devices, the cluster has {}",
                                                opt.stages, opt.data_parallel, sp->tp, need, cl.size()));
    } else if (opt.stages && opt.data_parallel && sp->tp == 1) {
      int64_t need = int64_t{opt.stages} * opt.data_parallel;
      if (need > cl.size())
        throw_bad_input("--stages", fmt::format("{} stages x {} replicas need {} devices, the cluster has {}", opt.stages,
                                                opt.data_parallel, need, cl.size()));
    }
    for (int n = G; n >= 1 && sp->pds.empty(); --n) {
      for (int p = 1; p <= n; ++p)
        if (n % p == 0 && valid_pd(p, n / p)) sp->pds.emplace_back(p, n / p);
      if (!sp->pds.empty()) sp->n_used = n;
    }
  }
  {
    bool any = false;
    for (auto& sp : spaces) any |= !sp->pds.empty();
    if (!any) {
      if (opt.stages > cl.size())
        throw_bad_input("--stages", fmt::format("{} pipeline ranks need {} devices, the cluster has {}", opt.stages, opt.stages, cl.size()),
                        "lower --stages (--chunks puts several stages on one rank) or add devices");
      if (opt.data_parallel > cl.size())
        throw_bad_input("--data-parallel", fmt::format("{} replicas need {} devices, the cluster has {}", opt.data_parallel,
                                                       opt.data_parallel, cl.size()));
      if (opt.stages > K_max)
        throw_bad_input("--stages", fmt::format("{} stages, but the DP sees only {} cut positions ({} segments)", opt.stages,
                                                K_max - 1, K_max));
      if (prof)
        throw_bad_input(prof->path, fmt::format("measured at microbatches of {}, which no split of the batch of {} over {} devices{} gives",
                                                prof->microbatch_size, B, cl.size(),
                                                opt.microbatches ? fmt::format(" into {} microbatches", opt.microbatches) : ""),
                        "profile at the planned microbatch size, or leave --profile out");
      if (opt.fixed_microbatch)
        throw_bad_input(g.model_path.string(),
                        fmt::format("its inputs fix the batch dimension at {}, so every microbatch holds {} samples, which no split "
                                    "of the batch of {}{}{} gives",
                                    opt.fixed_microbatch, opt.fixed_microbatch, B,
                                    opt.microbatches ? fmt::format(" into {} microbatches", opt.microbatches) : "",
                                    opt.data_parallel ? fmt::format(" over {} replicas", opt.data_parallel) : ""),
                        "re-export the model with a dynamic batch axis to pipeline microbatches");
      throw_bad_input("--batch-size", fmt::format("no pipeline x data-parallel split of {} devices fits a batch of {}", cl.size(), B),
                      "change --batch-size, --stages or --data-parallel");
    }
  }

  // Candidate configurations of every space, pooled.
  const double opt_f = cost::optimizer_factor(gc.options().optimizer);
  std::vector<Config> configs;
  bool interleaved_possible = false;
  double bw_min = kInf;
  for (const auto& h : cl.hosts) bw_min = std::min(bw_min, h.link.bandwidth);
  if (cl.hosts.size() > 1) bw_min = std::min(bw_min, cl.interconnect.bandwidth);
  for (size_t si = 0; si < spaces.size(); ++si) {
    Space& sp = *spaces[si];
    const int K = sp.T.K;
    for (auto [p, d] : sp.pds) {
      std::vector<int> ms;
      if (opt.microbatches) ms = {opt.microbatches};
      else if (prof) ms = {static_cast<int>((B / d) / prof->microbatch_size)};
      else if (opt.fixed_microbatch) ms = {static_cast<int>((B / d) / opt.fixed_microbatch)};
      else ms = divisors(B / d);
      // Optimizer-state sharding: with one replica there is nothing to split.
      std::vector<bool> zeros = {false};
      if (d > 1 && opt.shard_optimizer == ShardOptimizer::Always) zeros = {true};
      for (int m : ms) {
        if (int64_t{p} * m > (1 << 22)) continue;
        std::vector<std::string> names;
        if (opt.schedule == "auto") {
          names = p == 1 ? std::vector<std::string>{"gpipe"} : known;
        } else {
          names = {opt.schedule};
        }
        for (const auto& name : names) {
          int v = 1;
          if (name == "interleaved") {
            v = opt.chunks ? opt.chunks : 2;
            if (p < 2 || m % p != 0 || p * v > K || v < 2) continue;
            interleaved_possible = true;
          } else if (name == "gpipe" && opt.chunks > 1 && opt.schedule == "gpipe") {
            v = opt.chunks;
            if (p * v > K) continue;
          }
          if (opt.split == PlanOptions::Split::Cuts && p * v != static_cast<int>(opt.split_cuts.size()) + 1) continue;
          std::vector<Layout> layouts = {Layout::PipelineMajor};
          if (p > 1 && d > 1 && cl.hosts.size() > 1) layouts.push_back(Layout::ReplicaMajor);
          for (Layout lay : layouts)
            for (bool z : zeros) {
              Config c;
              c.p = p;
              c.d = d;
              c.v = v;
              c.m = m;
              c.schedule = name;
              c.layout = lay;
              c.u = static_cast<double>(B) / d / m;
              c.space = static_cast<int>(si);
              c.zero = z;
              configs.push_back(c);
            }
        }
      }
    }
  }
  if (opt.split == PlanOptions::Split::Cuts && configs.empty())
    throw_bad_input("--split", fmt::format("{} cut(s) make {} stages, which no configuration gives (stages x chunks per rank "
                                           "must equal it, on at most {} devices)",
                                           opt.split_cuts.size(), opt.split_cuts.size() + 1, cl.size()),
                    "give as many cuts as stages - 1, or leave --stages / --chunks / --data-parallel out");
  if (opt.schedule == "interleaved" && !interleaved_possible)
    throw_bad_input("--schedule", "interleaved needs at least 2 stages, microbatches a multiple of the stages, and stages x chunks within the graph's cut positions",
                    "choose --stages and --microbatches accordingly, or another schedule");
  plan.configs_considered = static_cast<int>(configs.size());

  // Estimates (balanced stages) and lower bounds (m * work / p). The estimate adds a forward
  // where the first rank's weights, gradients, optimizer state and the activations of the
  // microbatches it keeps in flight (p of them, all m with gpipe) would not fit the smallest
  // device: the DP's plan then recomputes, and a configuration that looks fast on time alone
  // must not crowd out the ones that fit without it.
  double cap_min = kInf;
  for (const auto& k : cl.kinds) cap_min = std::min(cap_min, static_cast<double>(k.memory_bytes));
  for (auto& c : configs) {
    Space& sp = *spaces[static_cast<size_t>(c.space)];
    const UData& U = sp.get_u(c.u);
    const int K = sp.T.K;
    double total_param_bytes = sp.param_bytes;
    double per_rank = U.total_fast / c.p;
    double bf = c.schedule == "interleaved" ? 1.0 / c.v : c.schedule == "zb-h1" ? 1.0 / 3 : 1.0;
    double ar = c.d > 1 ? 2.0 * (c.d - 1) / c.d * total_param_bytes / c.p / bw_min : 0;
    c.lb = c.m * per_rank;
    const double in_flight = c.schedule == "gpipe" ? c.m : std::min(c.m, c.p);
    const double act = sp.T.A[sp.T.at(0, K)].at(c.u) / c.p * in_flight;
    const double stat = total_param_bytes / c.p * (sp.in.cost->weight_grad_factor() + opt_f * c.optimizer_share());
    double fwd = kInf;
    for (size_t k = 0; k < U.PF.size(); ++k) fwd = std::min(fwd, U.PF[k][static_cast<size_t>(K)]);
    const double rc = stat + act > cap_min ? fwd / c.p : 0;
    c.est = (c.m + bf * (c.p - 1)) * (per_rank + rc) + ar;
  }
  std::stable_sort(configs.begin(), configs.end(), [](const Config& a, const Config& b) { return a.est < b.est; });

  struct Best {
    bool have = false;
    Config c;
    std::vector<int> bounds;
    std::string source;
    Evaluated ev;
    double dp_obj = 0;
    bool dp_exact = true;
    bool enumerated = false;
  } best;
  double closest_ratio = kInf;
  Config closest;
  double closest_peak = 0, closest_cap = 0;
  int evaluated = 0;
  std::map<std::tuple<std::string, int, int, int>,
           std::pair<schedule::Schedule, std::vector<std::vector<std::pair<double, double>>>>>
      sched_cache;
  // Configurations no partition fits (memory), by everything but the placement: on one kind of
  // device the placement changes no capacity, so the other placement need not be tried.
  std::set<std::tuple<int, int, int, int, int, std::string, bool>> unfit;
  const bool one_kind = cl.kinds.size() == 1;
  // Evaluates one configuration; true when a plan of it fits.
  auto try_config = [&](const Config& c) {
    Space& sp = *spaces[static_cast<size_t>(c.space)];
    const cost::Cluster& scl = *sp.in.cluster;
    const auto fit_key = std::make_tuple(c.space, c.p, c.d, c.m, c.v, c.schedule, c.zero);
    if (one_kind && unfit.count(fit_key)) return false;
    auto key = std::make_tuple(c.schedule, c.p, c.m, c.v);
    auto sit = sched_cache.find(key);
    if (sit == sched_cache.end()) {
      schedule::Schedule sc = schedule::make_schedule(c.schedule, c.p, c.m, c.v, "--schedule");
      auto fr = frontiers(sc);
      sit = sched_cache.emplace(key, std::make_pair(std::move(sc), std::move(fr))).first;
    }
    const schedule::Schedule& s = sit->second.first;
    std::vector<Slot> slots = make_slots(c, s, scl, sit->second.second);
    // Quick memory check: all the slots together must hold the weights, gradients and optimizer.
    const double static_total = sp.param_bytes * (sp.in.cost->weight_grad_factor() + opt_f * c.optimizer_share());
    double cap_sum = 0;
    for (const auto& sl : slots) cap_sum += sl.cap;
    if (cap_sum < static_total) {
      double ratio = static_total / cap_sum;
      if (ratio < closest_ratio) {
        closest_ratio = ratio;
        closest = c;
        closest_peak = static_total / static_cast<double>(slots.size());
        closest_cap = cap_sum / static_cast<double>(slots.size());
      }
      return false;
    }
    ++evaluated;
    const int K = sp.T.K;
    const UData& U = sp.get_u(c.u);
    double sum_lb = kInf;
    for (size_t k = 0; k < scl.kinds.size(); ++k)
      sum_lb = std::min(sum_lb, U.PF[k][static_cast<size_t>(K)] + U.PB[k][static_cast<size_t>(K)] + U.PW[k][static_cast<size_t>(K)]);
    Oracle o{&sp.T, &U, &slots, sp.in.cost->weight_grad_factor() + opt_f * c.optimizer_share(), opt.recompute, sum_lb, {}, {}};

    DpOptions dpo;
    if (opt.max_walk > 0) dpo.max_walk = opt.max_walk;
    if (opt.max_work > 0) dpo.max_work = opt.max_work;
    dpo.enumerate_below = 2e5;
    DpSolution sol = solve_partition(o, c.m, dpo);
    plan.dp_runs += sol.dp_runs;
    plan.splits_enumerated += sol.splits_enumerated;
    std::vector<std::pair<std::string, std::vector<int>>> cands;
    if (sol.feasible) {
      std::vector<int> b;
      for (int x : sol.bounds) b.push_back(sp.T.pos[static_cast<size_t>(x)]);
      cands.emplace_back("dp", b);
    }
    // The baselines' splits are candidates too: here when the DP finds nothing (its positions may
    // exclude theirs), and for the chosen configuration below, so that the plan is never
    // predicted slower than either.
    if (!sol.feasible) {
      const auto& bl = sp.baselines_for(s.stages());
      if (!bl.first.empty()) cands.emplace_back("equal-layers", bl.first);
      if (!bl.second.empty()) cands.emplace_back("equal-parameters", bl.second);
    }
    bool fit = false;
    for (auto& [src, b] : cands) {
      Evaluated ev = sp.search->evaluate(c, s, slots, b);
      if (!ev.pred.fits) {
        if (ev.worst_ratio < closest_ratio) {
          closest_ratio = ev.worst_ratio;
          closest = c;
          closest_peak = ev.pred.peak_max();
          closest_cap = *std::min_element(ev.pred.capacity_bytes.begin(), ev.pred.capacity_bytes.end());
        }
        continue;
      }
      fit = true;
      if (!best.have || ev.pred.step_s < best.ev.pred.step_s) {
        best.have = true;
        best.c = c;
        best.bounds = b;
        best.source = src;
        best.ev = ev;
        best.dp_obj = sol.feasible ? sol.objective : 0;
        best.dp_exact = !sol.truncated;
        best.enumerated = sol.splits_enumerated > 0;
      }
    }
    if (!sol.feasible && !fit) unfit.insert(fit_key);
    return fit;
  };
  for (const Config& c : configs) {
    if (best.have && c.lb >= best.ev.pred.step_s) continue;
    if (evaluated >= opt.max_evaluated && best.have) break;
    if (try_config(c)) continue;
    // Optimizer-state sharding where the configuration fits only with it.
    if (!c.zero && c.d > 1 && opt.shard_optimizer == ShardOptimizer::Auto) {
      Config z = c;
      z.zero = true;
      try_config(z);
    }
  }
  plan.configs_evaluated = evaluated;

  if (!best.have) {
    // Say what would fit.
    double cap_max = 0;
    for (const auto& k : cl.kinds) cap_max = std::max(cap_max, k.memory_bytes);
    double total_param_bytes = 0;
    for (int p : g.parameters) total_param_bytes += static_cast<double>(g.value(p).bytes());
    const double static_total = total_param_bytes * (gc.weight_grad_factor() + opt_f);
    std::string what = fmt::format("no plan fits in memory on {}", cl.summary());
    std::string hint;
    if (static_total > static_cast<double>(cl.size()) * cap_max) {
      int64_t need = static_cast<int64_t>(std::ceil(static_total / cap_max));
      what += fmt::format(": weights + gradients + {} state alone take {}, the {} devices hold {}", 
                          cost::optimizer_name(gc.options().optimizer), human_bytes(static_total), cl.size(),
                          human_bytes(static_cast<double>(cl.size()) * cap_max));
      hint = fmt::format("needs at least {} devices of {} (or {} per device){}", need, human_bytes(cap_max),
                         human_bytes(static_total / cl.size()),
                         gc.options().optimizer != cost::Optimizer::SGD ? "; --optimizer sgd or --shard-optimizer need less" : "");
    } else if (closest_ratio < kInf) {
      const int ctp = spaces[static_cast<size_t>(closest.space)]->tp;
      what += fmt::format(": the closest candidate ({} stages x {} replicas{}, {} microbatches of {:g}, {}) needs {} per device, "
                          "devices have {}",
                          closest.p, closest.d, ctp > 1 ? fmt::format(" x {} tensor-parallel", ctp) : "", closest.m,
                          closest.u, closest.schedule, human_bytes(closest_peak), human_bytes(closest_cap));
      hint = opt.recompute == RecomputePolicy::Never ? "allow recomputation (--recompute auto)"
                                                     : "use more stages or devices, more microbatches (smaller ones), or --optimizer sgd";
    }
    throw_failure(g.model_path.string(), what, hint);
  }

  // Fill the plan.
  const Config& c = best.c;
  Space& sp = *spaces[static_cast<size_t>(c.space)];
  const graph::Graph& pg = *sp.in.graph;
  plan.tensor_parallel = sp.tp;
  plan.tp = sp.ctx;
  plan.shard_optimizer = c.zero;
  plan.positions_seen = static_cast<int>(sp.cuts.size());
  plan.positions_total = std::max(sp.in.cost->nodes() - 1, 0);
  plan.devices_used = sp.n_used * sp.tp;
  if (plan.devices_used < cl.size())
    plan.notes.push_back(fmt::format("uses {} of the {} devices: no split of all {} fits the batch and the graph",
                                     plan.devices_used, cl.size(), cl.size()));
  plan.stages = c.p;
  plan.data_parallel = c.d;
  plan.chunks = c.v;
  plan.microbatches = c.m;
  plan.microbatch_size = c.u;
  plan.schedule_name = c.schedule;
  plan.schedule = schedule::make_schedule(c.schedule, c.p, c.m, c.v, "--schedule");
  plan.layout = c.layout;
  plan.bounds = best.bounds;
  plan.stage_plans = best.ev.stages;
  plan.prediction = best.ev.pred;
  plan.partition = best.source;
  plan.dp_objective_s = best.dp_obj;
  plan.dp_exact = best.dp_exact;
  plan.split_enumerated = best.enumerated;
  if (!best.dp_exact)
    plan.notes.push_back("the DP's t_max walk for this configuration stopped at its cap (--dp-work): the split is the best "
                         "seen, not proven optimal for the DP's objective (--dp-work 0 for exact)");
  if (plan.prediction.cores_bound)
    plan.notes.push_back(fmt::format("the step is bound by this machine's cores: the workers' CPU work over the cores ({:.4g} ms, "
                                     "with what more workers than cores lose, as calibrated) exceeds the simulated schedule "
                                     "({:.4g} ms); splits and schedules of the same work predict alike",
                                     plan.prediction.step_s * 1e3, plan.prediction.simulated_step_s * 1e3));
  if (c.zero && opt.shard_optimizer == ShardOptimizer::Auto)
    plan.notes.push_back(fmt::format("the optimizer state is split over the {} replicas (ZeRO stage 1): the plan does not fit "
                                     "without it",
                                     c.d));
  plan.device_of_rank = sp.devices_of_ranks(c);
  {
    std::vector<Slot> slots = make_slots(c, plan.schedule, *sp.in.cluster);
    const int S = plan.schedule.stages();
    for (int which = 0; which < 2; ++which) {
      Baseline bl;
      bl.name = which == 0 ? "equal-layers" : "equal-parameters";
      std::string why;
      bl.bounds = which == 0 ? equal_layers_bounds(pg, S, &bl.unit, &why) : equal_params_bounds(pg, S, &bl.unit, &why);
      if (bl.bounds.empty()) {
        bl.note = why;
      } else {
        Evaluated ev = sp.search->evaluate(c, plan.schedule, slots, bl.bounds);
        bl.prediction = ev.pred;
        bl.available = true;
        if (!ev.pred.fits) bl.note = "does not fit in memory";
        if (ev.pred.fits && ev.pred.step_s < plan.prediction.step_s) {
          // The DP's objective approximates the simulator's step: keep the faster split.
          plan.bounds = bl.bounds;
          plan.stage_plans = ev.stages;
          plan.prediction = ev.pred;
          plan.partition = bl.name;
        }
      }
      plan.baselines.push_back(bl);
    }
  }
  if (opt.split == PlanOptions::Split::Auto) {
    if (plan.partition != "dp")
      plan.notes.push_back(fmt::format("the DP's split simulated no faster than {}'s, which the plan keeps (the DP's "
                                       "objective approximates the simulator's step time)",
                                       plan.partition));
  } else {
    // --split: exactly the split asked for, on the configuration the search chose.
    std::string name;
    std::vector<int> bounds;
    if (opt.split == PlanOptions::Split::Dp) {
      name = "dp";
      if (best.source != "dp")
        throw_failure("--split", fmt::format("dp: the DP found no split that fits for {} stages x {} replicas, {} microbatches",
                                             c.p, c.d, c.m),
                      "leave --split out to take a baseline's split");
      bounds = best.bounds;
    } else if (opt.split == PlanOptions::Split::Cuts) {
      name = "cuts";
      // The cuts name nodes of the model; a tensor-parallel plan's graph holds them under the
      // same names, with its collectives inserted.
      bounds.push_back(0);
      for (int q : opt.split_cuts) {
        const std::string& at = g.nodes[static_cast<size_t>(q)].name;
        int pos = -1;
        for (size_t i = 0; i < pg.nodes.size() && pos < 0; ++i)
          if (pg.nodes[i].name == at) pos = static_cast<int>(i);
        if (pos < 0)
          throw_bad_input("--split", fmt::format("node '{}' is not in the {}-way tensor-parallel graph", at, sp.tp),
                          "--tensor-parallel 1, or cut before another node");
        bounds.push_back(pos);
      }
      bounds.push_back(static_cast<int>(pg.nodes.size()));
    } else {
      const Baseline& bl = plan.baselines[opt.split == PlanOptions::Split::EqualLayers ? 0 : 1];
      name = bl.name;
      if (!bl.available) throw_bad_input("--split", fmt::format("{}: {}", bl.name, bl.note), "choose another split");
      bounds = bl.bounds;
    }
    std::vector<Slot> slots = make_slots(c, plan.schedule, *sp.in.cluster);
    Evaluated ev = sp.search->evaluate(c, plan.schedule, slots, bounds);
    if (!ev.pred.fits)
      throw_failure("--split", fmt::format("the {} split does not fit in memory on {} ({} stages x {} replicas, {} microbatches: "
                                           "{} needed, {} per device)",
                                           name, cl.summary(), c.p, c.d, c.m, human_bytes(ev.pred.peak_max()),
                                           human_bytes(*std::min_element(ev.pred.capacity_bytes.begin(),
                                                                         ev.pred.capacity_bytes.end()))),
                    "another split, more stages, or --recompute auto");
    if (name != plan.partition) {
      // Say what the split the search would have kept predicts, next to this one.
      plan.notes.push_back(fmt::format("the {} split, as --split asks; the search's own split ({}) predicts {:.4g} ms, a "
                                       "speedup of {:.2f}x over it",
                                       name, plan.partition == "dp" ? "the DP's" : plan.partition, plan.prediction.step_s * 1e3,
                                       ev.pred.step_s / plan.prediction.step_s));
    }
    plan.bounds = bounds;
    plan.stage_plans = ev.stages;
    plan.prediction = ev.pred;
    plan.partition = name;
  }

  // Megatron-LM's usual layout: tensor parallelism over a host's devices, the fewest pipeline
  // stages (equal layers, 1f1b) that fit, data parallelism for the rest, microbatches of one
  // (of the model's fixed batch where its inputs fix one).
  if (opt.megatron_baseline && !prof) {
    MegatronBaseline& mb = plan.megatron;
    const int Th = devices_per_host(cl);
    Space* ms = nullptr;
    std::unique_ptr<Space> own;
    std::string why;
    if (Th < 1) {
      mb.note = "hosts of different sizes";
    } else {
      for (auto& x : spaces)
        if (x->tp == Th) ms = x.get();
      if (!ms) {
        own = make_space(in, opt, Th, &why);
        ms = own.get();
      }
      if (!ms) mb.note = fmt::format("tensor parallelism over a host's {} devices: {}", Th, why);
    }
    if (ms) {
      mb.tensor_parallel = Th;
      const int G = ms->in.cluster->size();
      mb.note = "does not fit at any pipeline depth";
      for (int p = 1; p <= G && p <= ms->T.K; ++p) {
        if (G % p) continue;
        const int d = G / p;
        const int64_t u = opt.fixed_microbatch > 0 ? opt.fixed_microbatch : 1;
        if (B % (d * u)) continue;
        Config mc;
        mc.p = p;
        mc.d = d;
        mc.m = static_cast<int>(B / (d * u));
        mc.u = static_cast<double>(u);
        mc.schedule = p == 1 ? "gpipe" : "1f1b";
        std::string unit, why2;
        std::vector<int> bounds = equal_layers_bounds(*ms->in.graph, p, &unit, &why2);
        if (bounds.empty()) continue;
        schedule::Schedule s = schedule::make_schedule(mc.schedule, p, mc.m, 1, "megatron baseline");
        std::vector<Slot> slots = make_slots(mc, s, *ms->in.cluster);
        Evaluated ev = ms->search->evaluate(mc, s, slots, bounds);
        if (!ev.pred.fits) continue;
        mb.available = true;
        mb.note.clear();
        mb.stages = p;
        mb.data_parallel = d;
        mb.microbatches = mc.m;
        mb.microbatch_size = u;
        mb.prediction = ev.pred;
        break;
      }
    }
  }
  (void)t0;
  return plan;
}

void parse_split(const graph::Graph& g, const std::string& value, PlanOptions& opt, const std::string& where) {
  using S = PlanOptions::Split;
  opt.split_cuts.clear();
  if (value == "auto") { opt.split = S::Auto; return; }
  if (value == "dp") { opt.split = S::Dp; return; }
  if (value == "equal-layers") { opt.split = S::EqualLayers; return; }
  if (value == "equal-params" || value == "equal-parameters") { opt.split = S::EqualParams; return; }
  opt.split = S::Cuts;
  const int N = static_cast<int>(g.nodes.size());
  std::map<std::string, int> by_name;
  for (int i = 0; i < N; ++i) by_name.emplace(g.nodes[static_cast<size_t>(i)].name, i);
  size_t start = 0;
  while (start <= value.size()) {
    size_t comma = value.find(',', start);
    std::string tok = value.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    start = comma == std::string::npos ? value.size() + 1 : comma + 1;
    if (tok.empty())
      throw_bad_input(where, fmt::format("'{}': an empty cut", value),
                      "auto, dp, equal-layers, equal-params, or node names / positions separated by commas");
    int pos = -1;
    auto it = by_name.find(tok);
    if (it != by_name.end()) {
      pos = it->second;
    } else if (tok.find_first_not_of("0123456789") == std::string::npos && tok.size() < 10) {
      pos = std::stoi(tok);
    } else {
      throw_bad_input(where, fmt::format("no node named '{}' in the folded graph", tok),
                      "auto, dp, equal-layers, equal-params, or the nodes that begin stages 1, 2, ... by name or position "
                      "(the report's first -> last node column names them)");
    }
    if (pos < 1 || pos >= N)
      throw_bad_input(where, fmt::format("cut before node {} ('{}'): a cut lies before one of nodes 1 to {}", pos, tok, N - 1));
    if (!opt.split_cuts.empty() && pos <= opt.split_cuts.back())
      throw_bad_input(where, fmt::format("cut before node {} ('{}') does not come after the previous cut (node {})", pos, tok,
                                         opt.split_cuts.back()),
                      "list the cuts in the graph's order");
    opt.split_cuts.push_back(pos);
  }
}

namespace {

Config config_of(const Plan& plan) {
  Config c;
  c.p = plan.stages;
  c.d = plan.data_parallel;
  c.v = plan.chunks;
  c.m = plan.microbatches;
  c.u = plan.microbatch_size;
  c.layout = plan.layout;
  c.schedule = plan.schedule_name;
  c.zero = plan.shard_optimizer;
  return c;
}

}  // namespace

DpCheck dp_against_brute_force(const PlanInputs& in0, const Plan& plan, const PlanOptions& opt) {
  const PlanInputs in = plan_inputs(plan, in0);
  const GraphCost& gc = *in.cost;
  const cost::Cluster& cl = *in.cluster;
  Config c = config_of(plan);
  std::vector<int> cuts = candidate_positions(gc, opt.max_positions);
  Tables T = build_tables(gc, cuts);
  UData U = make_udata(gc, cl, T, c.u);
  std::vector<Slot> slots = make_slots(c, plan.schedule, cl);
  double sum_lb = kInf;
  for (size_t k = 0; k < cl.kinds.size(); ++k)
    sum_lb = std::min(sum_lb, U.PF[k][static_cast<size_t>(T.K)] + U.PB[k][static_cast<size_t>(T.K)] + U.PW[k][static_cast<size_t>(T.K)]);
  Oracle o{&T, &U, &slots, gc.weight_grad_factor() + cost::optimizer_factor(gc.options().optimizer) * c.optimizer_share(), opt.recompute, sum_lb, {}, {}};
  DpCheck r;
  r.atoms = T.K;
  r.stages = static_cast<int>(slots.size());
  r.dp = solve_partition(o, c.m).objective;
  r.brute_force = brute_force_partition(o, c.m).objective;
  return r;
}

schedule::SimResult simulate_plan(const PlanInputs& in0, const Plan& plan, const PlanOptions& opt) {
  const PlanInputs in = plan_inputs(plan, in0);
  Search search(in, opt);
  Config c = config_of(plan);
  std::vector<Slot> slots = make_slots(c, plan.schedule, *in.cluster);
  schedule::SimResult r;
  search.evaluate(c, plan.schedule, slots, plan.bounds, &r);
  return r;
}

std::vector<StageMemoryCheck> check_memory_agreement(const PlanInputs& in0, const Plan& plan, const PlanOptions& opt) {
  const PlanInputs in = plan_inputs(plan, in0);
  Search search(in, opt);
  Config c = config_of(plan);
  std::vector<Slot> slots = make_slots(c, plan.schedule, *in.cluster);
  Evaluated ev = search.evaluate(c, plan.schedule, slots, plan.bounds);
  std::vector<StageMemoryCheck> out;
  const double opt_f = in.cost->weight_grad_factor() + cost::optimizer_factor(in.cost->options().optimizer) * c.optimizer_share();
  for (const auto& sp : ev.stages) {
    const Slot& sl = slots[static_cast<size_t>(sp.index)];
    double front = 0;
    for (auto& [x, y] : sl.pts) front = std::max(front, x * sp.act_bytes + y * sp.w_keep_bytes);
    StageMemoryCheck m;
    m.dp_bytes = sp.param_bytes * opt_f + front + sp.workspace_bytes;
    m.sim_bytes = ev.pred.peak_bytes[static_cast<size_t>(sp.pipeline_rank)];
    m.recompute = sp.recompute;
    out.push_back(m);
  }
  return out;
}

}  // namespace smp::plan
