#include "schedule/simulate.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace smp::schedule {

Costs Costs::uniform(int stages, double f_s, double b_s, double w_s) {
  Costs c;
  c.stage.assign(static_cast<size_t>(std::max(stages, 0)), StageCost{f_s, b_s, w_s});
  return c;
}

namespace {

// Directed links a rank sends on, with the time each is free again (few per rank: a list).
struct LinkClock {
  std::vector<std::pair<int, double>> free_at;  // (peer, time)
  double& at(int peer) {
    for (auto& [p, t] : free_at)
      if (p == peer) return t;
    free_at.emplace_back(peer, 0.0);
    return free_at.back().second;
  }
};

}  // namespace

SimResult simulate(const Schedule& s, const Costs& c, const SimOptions& opt, const std::string& where) {
  const int S = s.stages();
  const int p = s.ranks;
  const int m = s.microbatches;
  if (p < 1 || m < 1 || s.actions.size() != static_cast<size_t>(p))
    throw_bad_input(where, "the schedule has no ranks or microbatches, or its lists do not match its ranks");
  if (c.stage.size() != static_cast<size_t>(S))
    throw_bad_input(where, fmt::format("costs for {} stages, the schedule has {}", c.stage.size(), S));
  if (!c.link.empty() && c.link.size() != static_cast<size_t>(S - 1))
    throw_bad_input(where, fmt::format("costs for {} stage boundaries, the schedule has {}", c.link.size(), S - 1));
  if (!c.allreduce_s.empty() && c.allreduce_s.size() != static_cast<size_t>(p))
    throw_bad_input(where, fmt::format("all-reduce times for {} ranks, the schedule has {}", c.allreduce_s.size(), p));
  if (!c.update_s.empty() && c.update_s.size() != static_cast<size_t>(p))
    throw_bad_input(where, fmt::format("optimizer-step times for {} ranks, the schedule has {}", c.update_s.size(), p));

  const size_t n = static_cast<size_t>(S) * static_cast<size_t>(m);
  auto key = [m](int st, int mb) { return static_cast<size_t>(st) * static_cast<size_t>(m) + static_cast<size_t>(mb); };
  // -1: not yet. f_end / b_end: on the producer's rank; f_arr / g_arr: at the consumer's rank
  // (the forward output of stage s at stage s+1's rank; the input gradient of stage s at stage
  // s-1's rank).
  std::vector<double> f_end(n, -1), b_end(n, -1), f_arr(n, -1), g_arr(n, -1);
  std::vector<size_t> idx(static_cast<size_t>(p), 0);
  std::vector<double> free_at(static_cast<size_t>(p), 0.0);
  std::vector<LinkClock> links(static_cast<size_t>(p));

  SimResult res;
  res.rank.assign(static_cast<size_t>(p), {});
  res.stage.assign(static_cast<size_t>(S), {});
  std::vector<double> act(static_cast<size_t>(p), 0.0);
  std::vector<int> stashed(static_cast<size_t>(S), 0), pending_w(static_cast<size_t>(S), 0),
      in_flight(static_cast<size_t>(S), 0);
  if (opt.record_events) res.events.reserve(s.size() * 2 + static_cast<size_t>(p));
  for (int st = 0; st < S; ++st) {
    const auto& sc = c.stage[static_cast<size_t>(st)];
    res.rank[static_cast<size_t>(s.rank_of(st))].static_bytes += sc.weight_bytes + sc.grad_bytes + sc.optimizer_bytes;
  }

  auto transfer = [&](int from, int to, double ready, double cost, const Action& send) {
    double start = ready;
    if (c.serialize_links && cost > 0) {
      double& lf = links[static_cast<size_t>(from)].at(to);
      start = std::max(start, lf);
      lf = start + cost;
    }
    if (opt.record_events && cost > 0)
      res.events.push_back(Event{EventKind::Transfer, from, to, send, start, start + cost});
    return start + cost;
  };

  size_t left = 0;
  for (const auto& row : s.actions)
    for (const auto& a : row) left += a.is_compute();

  // Worklist of ranks that may be able to move: all at first, then the receivers of what was
  // just produced. A rank blocked on an input is retried only when some rank sends to it.
  std::vector<int> work(static_cast<size_t>(p));
  std::vector<uint8_t> queued(static_cast<size_t>(p), 1);
  for (int r = 0; r < p; ++r) work[static_cast<size_t>(r)] = p - 1 - r;
  auto wake = [&](int to) {
    if (!queued[static_cast<size_t>(to)]) {
      queued[static_cast<size_t>(to)] = 1;
      work.push_back(to);
    }
  };
  while (left > 0 && !work.empty()) {
    const int r = work.back();
    work.pop_back();
    queued[static_cast<size_t>(r)] = 0;
    const auto& row = s.actions[static_cast<size_t>(r)];
    size_t& i = idx[static_cast<size_t>(r)];
    while (i < row.size()) {
      const Action& a = row[i];
      if (a.is_comm()) {
        ++i;
        continue;
      }
      const int st = a.stage, mb = a.mb;
      if (st < 0 || st >= S || mb < 0 || mb >= m || s.rank_of(st) != r)
        throw_bad_input(where, fmt::format("rank {}, step {}: {} is out of range or on the wrong rank", r, i, to_string(a)),
                        "validate the schedule");
      const size_t k = key(st, mb);
      const StageCost& sc = c.stage[static_cast<size_t>(st)];
      double ready = 0, dur = 0, recv = 0;  // recv: the receiver's own work on an incoming message
      if (a.op == Op::Forward) {
        if (st > 0) {
          ready = f_arr[key(st - 1, mb)];
          if (ready < 0) break;
          if (!c.link.empty() && s.rank_of(st - 1) != r) recv = c.link[static_cast<size_t>(st - 1)].act_recv_s;
        }
        dur = sc.f_s;
      } else if (a.op == Op::BackwardInput || a.op == Op::Backward) {
        ready = f_end[k];
        if (ready < 0) break;
        if (st + 1 < S) {
          double g = g_arr[key(st + 1, mb)];
          if (g < 0) break;
          ready = std::max(ready, g);
          if (!c.link.empty() && s.rank_of(st + 1) != r) recv = c.link[static_cast<size_t>(st)].grad_recv_s;
        }
        dur = a.op == Op::Backward ? sc.b_s + sc.w_s : sc.b_s;
      } else {  // W
        ready = b_end[k];
        if (ready < 0) break;
        dur = sc.w_s;
      }
      double& fr = free_at[static_cast<size_t>(r)];
      const double start = std::max(fr, ready) + recv;
      const double end = start + dur;
      fr = end;
      res.rank[static_cast<size_t>(r)].busy_s += dur;
      if (opt.record_events) res.events.push_back(Event{EventKind::Compute, r, -1, a, start, end});

      double& cur = act[static_cast<size_t>(r)];
      StageStats& ss = res.stage[static_cast<size_t>(st)];
      int& stash = stashed[static_cast<size_t>(st)];
      int& pend = pending_w[static_cast<size_t>(st)];
      int& fl = in_flight[static_cast<size_t>(st)];
      switch (a.op) {
        case Op::Forward: {
          f_end[k] = end;
          cur += sc.act_bytes;
          ss.peak_stashed = std::max(ss.peak_stashed, ++stash);
          ss.peak_in_flight = std::max(ss.peak_in_flight, ++fl);
          if (st + 1 < S) {
            const int to = s.rank_of(st + 1);
            if (to != r && !c.link.empty()) fr += c.link[static_cast<size_t>(st)].act_send_s;  // the sender packs
            f_arr[k] = to == r ? end
                               : transfer(r, to, fr, c.link.empty() ? 0.0 : c.link[static_cast<size_t>(st)].act_s,
                                          comm(Op::SendAct, st, mb, to));
            if (to != r) wake(to);
          }
          break;
        }
        case Op::BackwardInput:
        case Op::Backward: {
          b_end[k] = end;
          --stash;
          if (a.op == Op::BackwardInput) {
            cur += sc.w_keep_bytes - sc.act_bytes;
            ss.peak_pending_w = std::max(ss.peak_pending_w, ++pend);
          } else {
            cur -= sc.act_bytes;
            --fl;
          }
          if (st > 0) {
            const int to = s.rank_of(st - 1);
            if (to != r && !c.link.empty()) fr += c.link[static_cast<size_t>(st - 1)].grad_send_s;
            g_arr[k] = to == r ? end
                               : transfer(r, to, fr, c.link.empty() ? 0.0 : c.link[static_cast<size_t>(st - 1)].grad_s,
                                          comm(Op::SendGrad, st, mb, to));
            if (to != r) wake(to);
          }
          break;
        }
        default:  // W
          cur -= sc.w_keep_bytes;
          --pend;
          --fl;
          break;
      }
      auto& rs = res.rank[static_cast<size_t>(r)];
      rs.peak_act_bytes = std::max(rs.peak_act_bytes, cur);
      ++i;
      --left;
    }
  }
  if (left > 0) {
    int r = 0;
    while (idx[static_cast<size_t>(r)] >= s.actions[static_cast<size_t>(r)].size()) ++r;
    throw_bad_input(where,
                    fmt::format("the lists cannot run to the end: rank {} waits forever at step {} ({})", r,
                                idx[static_cast<size_t>(r)], to_string(s.actions[static_cast<size_t>(r)][idx[static_cast<size_t>(r)]])),
                    "validate the schedule to see why");
  }

  double step = 0;
  for (int r = 0; r < p; ++r) {
    auto& rs = res.rank[static_cast<size_t>(r)];
    rs.allreduce_s = c.allreduce_s.empty() ? 0.0 : c.allreduce_s[static_cast<size_t>(r)];
    rs.update_s = c.update_s.empty() ? 0.0 : c.update_s[static_cast<size_t>(r)];
    const double reduced = free_at[static_cast<size_t>(r)] + rs.allreduce_s;
    rs.end_s = reduced + rs.update_s;
    if (opt.record_events && rs.allreduce_s > 0)
      res.events.push_back(Event{EventKind::AllReduce, r, -1, Action{}, free_at[static_cast<size_t>(r)], reduced});
    if (opt.record_events && rs.update_s > 0)
      res.events.push_back(Event{EventKind::Update, r, -1, Action{}, reduced, rs.end_s});
    rs.peak_bytes = rs.static_bytes + rs.peak_act_bytes;
    step = std::max(step, rs.end_s);
  }
  res.step_s = step;
  for (auto& rs : res.rank) {
    rs.idle_s = step - rs.busy_s - rs.allreduce_s - rs.update_s;
    res.compute_s += rs.busy_s;
    res.idle_s += rs.idle_s;
  }
  res.bubble = step > 0 ? res.idle_s / (static_cast<double>(p) * step) : 0.0;
  return res;
}

}  // namespace smp::schedule
