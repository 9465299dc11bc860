#include "schedule/validate.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <optional>

namespace smp::schedule {

namespace {

// The message a compute action sends after it runs, if its consumer is on another rank.
std::optional<Action> send_after(const Schedule& s, const Action& a, int rank) {
  const int S = s.stages();
  if (a.op == Op::Forward && a.stage + 1 < S && s.rank_of(a.stage + 1) != rank)
    return comm(Op::SendAct, a.stage, a.mb, s.rank_of(a.stage + 1));
  if ((a.op == Op::BackwardInput || a.op == Op::Backward) && a.stage > 0 && s.rank_of(a.stage - 1) != rank)
    return comm(Op::SendGrad, a.stage, a.mb, s.rank_of(a.stage - 1));
  return std::nullopt;
}

// The receive a compute action waits for, if its producer is on another rank.
std::optional<Action> recv_before(const Schedule& s, const Action& a, int rank) {
  const int S = s.stages();
  if (a.op == Op::Forward && a.stage > 0 && s.rank_of(a.stage - 1) != rank)
    return comm(Op::RecvAct, a.stage, a.mb, s.rank_of(a.stage - 1));
  if ((a.op == Op::BackwardInput || a.op == Op::Backward) && a.stage + 1 < S && s.rank_of(a.stage + 1) != rank)
    return comm(Op::RecvGrad, a.stage, a.mb, s.rank_of(a.stage + 1));
  return std::nullopt;
}

}  // namespace

Schedule lower(const Schedule& s, const LowerOptions& opt) {
  if (s.lowered()) throw_bad_input(s.name, "is already lowered (it has sends and receives)");
  Schedule out = s;
  const int look = std::max(0, opt.recv_lookahead);
  for (size_t r = 0; r < s.actions.size(); ++r) {
    const auto& in = s.actions[r];
    const int rank = static_cast<int>(r);
    std::vector<std::vector<Action>> pre(in.size());
    for (size_t i = 0; i < in.size(); ++i)
      if (auto rv = recv_before(s, in[i], rank)) pre[i >= static_cast<size_t>(look) ? i - static_cast<size_t>(look) : 0].push_back(*rv);
    auto& o = out.actions[r];
    o.clear();
    o.reserve(in.size() * 2);
    for (size_t i = 0; i < in.size(); ++i) {
      for (const auto& rv : pre[i]) o.push_back(rv);
      o.push_back(in[i]);
      if (auto sd = send_after(s, in[i], rank)) o.push_back(*sd);
    }
  }
  return out;
}

int64_t message_id(const Schedule& s, const Action& a) {
  SMP_CHECK(a.is_comm(), "{} is not a message", to_string(a));
  int boundary = 0, dir = 0;
  switch (a.op) {
    case Op::SendAct: boundary = a.stage; break;
    case Op::RecvAct: boundary = a.stage - 1; break;
    case Op::SendGrad: boundary = a.stage - 1; dir = 1; break;
    default: boundary = a.stage; dir = 1; break;  // RecvGrad
  }
  const int64_t boundaries = std::max(s.stages() - 1, 1);
  return (dir * boundaries + boundary) * s.microbatches + a.mb;
}

Schedule compute_only(const Schedule& s) {
  Schedule out = s;
  for (auto& row : out.actions)
    std::erase_if(row, [](const Action& a) { return a.is_comm(); });
  return out;
}

namespace {

constexpr int kNone = -1;

// Positions (step in the rank's list) of every kind of action, per (stage, microbatch).
struct Positions {
  int m = 0;
  std::vector<int> pos[8];  // indexed by Op
  explicit Positions(size_t n, int mbs) : m(mbs) {
    for (auto& v : pos) v.assign(n, kNone);
  }
  size_t key(int stage, int mb) const { return static_cast<size_t>(stage) * static_cast<size_t>(m) + static_cast<size_t>(mb); }
  int& at(Op op, int stage, int mb) { return pos[static_cast<int>(op)][key(stage, mb)]; }
  int get(Op op, int stage, int mb) const { return pos[static_cast<int>(op)][key(stage, mb)]; }
};

struct Failure {
  Validation v;
};

[[noreturn]] void fail(const Schedule& s, int rank, int step, const std::string& what) {
  Validation v;
  v.ok = false;
  v.rank = rank;
  v.step = step;
  if (rank >= 0 && step >= 0)
    v.message = fmt::format("rank {}, step {} ({}): {}", rank, step,
                            to_string(s.actions[static_cast<size_t>(rank)][static_cast<size_t>(step)]), what);
  else if (rank >= 0)
    v.message = fmt::format("rank {}: {}", rank, what);
  else
    v.message = what;
  throw Failure{std::move(v)};
}

void check_shape(const Schedule& s) {
  if (s.ranks < 1 || s.chunks < 1 || s.microbatches < 1)
    fail(s, -1, -1, fmt::format("sizes {} ranks, {} chunks, {} microbatches must all be at least 1", s.ranks,
                                s.chunks, s.microbatches));
  if (s.actions.size() != static_cast<size_t>(s.ranks))
    fail(s, -1, -1, fmt::format("{} action lists for {} ranks", s.actions.size(), s.ranks));
  if (s.stage_rank.size() != static_cast<size_t>(s.ranks) * static_cast<size_t>(s.chunks))
    fail(s, -1, -1, fmt::format("stage_rank has {} entries, expected ranks x chunks = {}", s.stage_rank.size(),
                                s.ranks * s.chunks));
  for (size_t st = 0; st < s.stage_rank.size(); ++st)
    if (s.stage_rank[st] < 0 || s.stage_rank[st] >= s.ranks)
      fail(s, -1, -1, fmt::format("stage {} is placed on rank {}, which does not exist", st, s.stage_rank[st]));
}

// Pass 1: bounds, placement, peers, duplicates; records positions.
void check_actions(const Schedule& s, Positions& P) {
  const int S = s.stages();
  for (int r = 0; r < s.ranks; ++r) {
    const auto& row = s.actions[static_cast<size_t>(r)];
    for (int i = 0; i < static_cast<int>(row.size()); ++i) {
      const Action& a = row[static_cast<size_t>(i)];
      if (a.stage < 0 || a.stage >= S) fail(s, r, i, fmt::format("stage {} does not exist (stages 0..{})", a.stage, S - 1));
      if (a.mb < 0 || a.mb >= s.microbatches)
        fail(s, r, i, fmt::format("microbatch {} does not exist (0..{})", a.mb, s.microbatches - 1));
      if (static_cast<uint8_t>(a.op) > static_cast<uint8_t>(Op::RecvGrad)) fail(s, r, i, "unknown operation");
      if (s.rank_of(a.stage) != r)
        fail(s, r, i, fmt::format("stage {} runs on rank {}, not here", a.stage, s.rank_of(a.stage)));
      if (a.is_comm()) {
        const bool to_next = a.op == Op::SendAct || a.op == Op::RecvGrad;
        const int other = to_next ? a.stage + 1 : a.stage - 1;
        if (other < 0 || other >= S)
          fail(s, r, i, fmt::format("stage {} has no {} stage to exchange with", a.stage, to_next ? "next" : "previous"));
        if (s.rank_of(other) == r)
          fail(s, r, i, fmt::format("stage {} is on this rank too: no message is needed", other));
        if (a.peer != s.rank_of(other))
          fail(s, r, i, fmt::format("the peer must be rank {} (where stage {} runs), not {}", s.rank_of(other), other, a.peer));
      } else if (a.peer != -1) {
        fail(s, r, i, "a compute action has no peer");
      }
      int& p = P.at(a.op, a.stage, a.mb);
      if (p != kNone) fail(s, r, i, fmt::format("appears twice (first at step {})", p));
      p = i;
    }
  }
}

std::string name_of(Op op, int stage, int mb, int peer = -1) {
  return to_string(Action{op, stage, mb, peer});
}

// Pass 2 and 3: order on each rank and completeness.
void check_order(const Schedule& s, const Positions& P, bool lowered) {
  const int S = s.stages();
  for (int r = 0; r < s.ranks; ++r) {
    const auto& row = s.actions[static_cast<size_t>(r)];
    for (int i = 0; i < static_cast<int>(row.size()); ++i) {
      const Action& a = row[static_cast<size_t>(i)];
      const int st = a.stage, mb = a.mb;
      auto before = [&](Op op, const char* what) {
        int p = P.get(op, st, mb);
        if (p == kNone) fail(s, r, i, fmt::format("{} {} is missing", what, name_of(op, st, mb)));
        if (p > i) fail(s, r, i, fmt::format("runs before its {} {} (step {})", what, name_of(op, st, mb), p));
      };
      switch (a.op) {
        case Op::Forward:
          if (P.get(Op::Backward, st, mb) == kNone && P.get(Op::BackwardInput, st, mb) == kNone) {
            if (int w = P.get(Op::BackwardWeight, st, mb); w != kNone)
              fail(s, r, i, fmt::format("has no input backward {} (its {} is at step {})",
                                        name_of(Op::BackwardInput, st, mb), name_of(Op::BackwardWeight, st, mb), w));
            fail(s, r, i, fmt::format("has no backward ({} or {} with {})", name_of(Op::Backward, st, mb),
                                      name_of(Op::BackwardInput, st, mb), name_of(Op::BackwardWeight, st, mb)));
          }
          break;
        case Op::BackwardInput:
          before(Op::Forward, "forward");
          if (P.get(Op::Backward, st, mb) != kNone)
            fail(s, r, i, fmt::format("the full backward {} is there too", name_of(Op::Backward, st, mb)));
          if (P.get(Op::BackwardWeight, st, mb) == kNone)
            fail(s, r, i, fmt::format("has no weight backward {}", name_of(Op::BackwardWeight, st, mb)));
          break;
        case Op::BackwardWeight:
          if (P.get(Op::Backward, st, mb) != kNone)
            fail(s, r, i, fmt::format("the full backward {} is there too", name_of(Op::Backward, st, mb)));
          before(Op::BackwardInput, "input backward");
          break;
        case Op::Backward:
          before(Op::Forward, "forward");
          break;
        default:
          break;
      }
      if (a.is_compute()) {
        auto rv = recv_before(s, a, r);
        if (rv && lowered) {
          int p = P.get(rv->op, st, mb);
          if (p == kNone) fail(s, r, i, fmt::format("no receive {} is posted for its input", to_string(*rv)));
          if (p > i) fail(s, r, i, fmt::format("runs before its receive {} is posted (step {})", to_string(*rv), p));
        }
      } else if (a.is_send()) {
        // Sent after the producer; received exactly once by the peer.
        before(a.op == Op::SendAct ? Op::Forward : (P.get(Op::Backward, st, mb) != kNone ? Op::Backward : Op::BackwardInput),
               "producer");
        const Op rop = a.op == Op::SendAct ? Op::RecvAct : Op::RecvGrad;
        const int rstage = a.op == Op::SendAct ? st + 1 : st - 1;
        if (P.get(rop, rstage, mb) == kNone)
          fail(s, r, i, fmt::format("send with no receive ({} is missing on rank {})", name_of(rop, rstage, mb, r), a.peer));
      } else {  // receive
        const Op sop = a.op == Op::RecvAct ? Op::SendAct : Op::SendGrad;
        const int sstage = a.op == Op::RecvAct ? st - 1 : st + 1;
        if (P.get(sop, sstage, mb) == kNone)
          fail(s, r, i, fmt::format("receive with no send ({} is missing on rank {})", name_of(sop, sstage, mb, r), a.peer));
        const Op consumer = a.op == Op::RecvAct ? Op::Forward : Op::Backward;
        if (a.op == Op::RecvGrad && P.get(Op::Backward, st, mb) == kNone && P.get(Op::BackwardInput, st, mb) == kNone)
          fail(s, r, i, "nothing consumes this receive (no backward of the microbatch here)");
        if (a.op == Op::RecvAct && P.get(consumer, st, mb) == kNone)
          fail(s, r, i, fmt::format("nothing consumes this receive ({} is missing)", name_of(Op::Forward, st, mb)));
      }
    }
  }
  // Whatever has no action at all for a (stage, microbatch).
  for (int st = 0; st < S; ++st)
    for (int mb = 0; mb < s.microbatches; ++mb) {
      bool any = false;
      for (int op = 0; op <= static_cast<int>(Op::Backward); ++op) any = any || P.get(static_cast<Op>(op), st, mb) != kNone;
      if (!any)
        fail(s, s.rank_of(st), -1,
             fmt::format("stage {} microbatch {} never runs ({} and its backward are missing)", st, mb,
                         name_of(Op::Forward, st, mb)));
    }
}

// Pass 4: execute the lists under the chosen semantics (validate.hpp); a state where nothing can
// move before the end is a deadlock, reported with its cycle of waits.
void check_progress(const Schedule& s, const Positions& P, bool lowered, CommSemantics sem) {
  const int S = s.stages();
  const size_t n = static_cast<size_t>(S) * static_cast<size_t>(s.microbatches);
  // What cross-rank consumers wait on: the producer (compute-only lists) or its send (lowered
  // lists). Receives posted, per receiving (stage, microbatch).
  std::vector<uint8_t> fwd_out(n, 0), bwd_out(n, 0), rf_posted(n, 0), rb_posted(n, 0);
  std::vector<size_t> idx(static_cast<size_t>(s.ranks), 0);
  auto head = [&](int r) -> const Action* {
    const auto& row = s.actions[static_cast<size_t>(r)];
    return idx[static_cast<size_t>(r)] < row.size() ? &row[idx[static_cast<size_t>(r)]] : nullptr;
  };
  // The message that matches a send or a receive.
  auto match = [&](const Action& a) {
    switch (a.op) {
      case Op::SendAct: return comm(Op::RecvAct, a.stage + 1, a.mb, s.rank_of(a.stage));
      case Op::RecvAct: return comm(Op::SendAct, a.stage - 1, a.mb, s.rank_of(a.stage));
      case Op::SendGrad: return comm(Op::RecvGrad, a.stage - 1, a.mb, s.rank_of(a.stage));
      default: return comm(Op::SendGrad, a.stage + 1, a.mb, s.rank_of(a.stage));
    }
  };
  // What the action at the head of rank r waits for, if anything: an action on another rank.
  auto blocker = [&](int r, const Action& a) -> std::optional<Action> {
    if (a.is_compute()) {
      auto rv = recv_before(s, a, r);
      if (!rv) return std::nullopt;
      if (a.op == Op::Forward) {
        if (fwd_out[P.key(a.stage - 1, a.mb)]) return std::nullopt;
        return lowered ? comm(Op::SendAct, a.stage - 1, a.mb, r) : compute(Op::Forward, a.stage - 1, a.mb);
      }
      if (bwd_out[P.key(a.stage + 1, a.mb)]) return std::nullopt;
      Op prod = P.get(Op::Backward, a.stage + 1, a.mb) != kNone ? Op::Backward : Op::BackwardInput;
      return lowered ? comm(Op::SendGrad, a.stage + 1, a.mb, r) : compute(prod, a.stage + 1, a.mb);
    }
    if (sem == CommSemantics::Posted) return std::nullopt;
    const Action m = match(a);
    const size_t mk = P.key(m.stage, m.mb);
    if (a.is_send()) {
      const bool posted = a.op == Op::SendAct ? rf_posted[mk] : rb_posted[mk];
      if (posted) return std::nullopt;
      if (sem == CommSemantics::Rendezvous) {
        const Action* h = head(a.peer);
        if (h && *h == m) return std::nullopt;  // both sides are there: they pass together
      }
      return m;
    }
    // A receive blocks only under rendezvous, until its send has passed.
    if (sem != CommSemantics::Rendezvous) return std::nullopt;
    const bool sent = a.op == Op::RecvAct ? fwd_out[mk] : bwd_out[mk];
    return sent ? std::nullopt : std::optional<Action>(m);
  };
  auto execute = [&](const Action& a) {
    const size_t k = P.key(a.stage, a.mb);
    if (lowered) {
      if (a.op == Op::SendAct) fwd_out[k] = 1;
      if (a.op == Op::SendGrad) bwd_out[k] = 1;
      if (a.op == Op::RecvAct) rf_posted[k] = 1;
      if (a.op == Op::RecvGrad) rb_posted[k] = 1;
    } else {
      if (a.op == Op::Forward) fwd_out[k] = 1;
      if (a.op == Op::BackwardInput || a.op == Op::Backward) bwd_out[k] = 1;
    }
  };
  size_t left = s.size();
  while (left > 0) {
    bool moved = false;
    for (int r = 0; r < s.ranks; ++r) {
      while (const Action* a = head(r)) {
        if (blocker(r, *a)) break;
        if (sem == CommSemantics::Rendezvous && a->is_send()) {
          // The receive at the peer's head passes with it.
          const Action* h = head(a->peer);
          if (h && *h == match(*a)) {
            execute(*h);
            ++idx[static_cast<size_t>(a->peer)];
            --left;
          }
        }
        execute(*a);
        ++idx[static_cast<size_t>(r)];
        --left;
        moved = true;
      }
    }
    if (moved) continue;
    // Deadlock: follow the waits from the lowest stuck rank until a rank repeats; that rank is on
    // the cycle, which is reported from there.
    int first = 0;
    while (!head(first)) ++first;
    auto waits_on = [&](int r) {
      auto b = blocker(r, *head(r));
      SMP_CHECK(b.has_value(), "stuck rank {} is not waiting", r);
      return *b;
    };
    auto owner_of = [&](const Action& b) { return s.rank_of(b.stage); };
    std::vector<uint8_t> seen(static_cast<size_t>(s.ranks), 0);
    int r = first;
    while (!seen[static_cast<size_t>(r)]) {
      seen[static_cast<size_t>(r)] = 1;
      r = owner_of(waits_on(r));
      SMP_CHECK(head(r) != nullptr, "rank {} is done", r);
    }
    first = r;
    std::string chain;
    do {
      Action b = waits_on(r);
      int owner = owner_of(b);
      chain += fmt::format("{}rank {} waits at {} for {} on rank {}", chain.empty() ? "" : "; ", r, to_string(*head(r)),
                           to_string(b), owner);
      r = owner;
    } while (r != first);
    fail(s, first, static_cast<int>(idx[static_cast<size_t>(first)]), "deadlock: " + chain);
  }
}

}  // namespace

Validation validate(const Schedule& s, const ValidateOptions& opt) {
  try {
    check_shape(s);
    Positions P(static_cast<size_t>(s.stages()) * static_cast<size_t>(s.microbatches), s.microbatches);
    check_actions(s, P);
    const bool lowered = s.lowered();
    check_order(s, P, lowered);
    check_progress(s, P, lowered, opt.semantics);
  } catch (const Failure& f) {
    return f.v;
  }
  return {};
}

void check_valid(const Schedule& s, const std::string& where) {
  Validation v = validate(s);
  if (!v.ok) throw_bad_input(where, v.message, "print it with smp-plan --schedule-file FILE --show");
}

}  // namespace smp::schedule
