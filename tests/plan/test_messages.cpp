// The per-channel message lists (plan/messages.hpp): both ends of every channel derive the same
// ordered list for every schedule generator, pipeline x data-parallel shape and chunking; run as
// NCCL runs them (one FIFO per channel) the lists never deadlock; a hand-edited order, another
// precision at one end or another cut is named precisely.
#include <doctest/doctest.h>

#include "core/error.hpp"
#include "plan/messages.hpp"
#include "plan/rank_layout.hpp"
#include "schedule/generators.hpp"
#include "schedule/validate.hpp"

#include <fmt/format.h>

#include <deque>
#include <map>
#include <optional>
#include <random>
#include <set>
#include <tuple>

using namespace smp;
using plan::Boundary;
using plan::Channel;
using plan::Direction;
using plan::RankPlace;

namespace {

// Replica-major global ranks, as smp-plan numbers them: rank = replica * p + pipeline rank.
std::vector<RankPlace> places(int p, int d) {
  std::vector<RankPlace> out;
  for (int rep = 0; rep < d; ++rep)
    for (int r = 0; r < p; ++r) out.push_back({rep, r});
  return out;
}

// 1-3 tensors per boundary, some of them integers (no gradient), in a given precision.
std::vector<Boundary> cuts(int stages, uint32_t seed, const std::string& float_dtype = "float32") {
  std::mt19937 rng(seed);
  std::vector<Boundary> out(static_cast<size_t>(std::max(stages - 1, 0)));
  for (size_t b = 0; b < out.size(); ++b) {
    const int n = 1 + static_cast<int>(rng() % 3);
    for (int t = 0; t < n; ++t) {
      const bool is_float = t == 0 || rng() % 3 != 0;
      const int64_t elems = 1 + static_cast<int64_t>(rng() % 5000);
      const int64_t size = is_float ? (float_dtype == "bfloat16" ? 2 : 4) : 8;
      plan::BoundaryTensor bt{fmt::format("b{}_t{}", b, t), is_float ? float_dtype : "int64", elems * size};
      out[b].activations.push_back(bt);
      if (is_float) out[b].gradients.push_back(bt);
    }
  }
  return out;
}

struct Shape {
  std::string gen;
  int p, m, v;
};

std::vector<Shape> shapes() {
  std::vector<Shape> out;
  for (int p = 1; p <= 5; ++p)
    for (int m = 1; m <= 9; ++m) {
      out.push_back({"gpipe", p, m, 1});
      out.push_back({"1f1b", p, m, 1});
      out.push_back({"zb-h1", p, m, 1});
      if (p <= 3) out.push_back({"gpipe", p, m, 2});
      for (int v = 2; v <= 3; ++v)
        if (m % p == 0) out.push_back({"interleaved", p, m, v});
    }
  return out;
}

using Key = std::tuple<int, int, Direction>;

std::map<Key, Channel> views(const std::vector<Channel>& cs) {
  std::map<Key, Channel> out;
  for (const auto& c : cs) out[{c.from, c.to, c.dir}] = c;
  return out;
}

// Runs every rank's lowered list as the device communicator does: sends and receives are issued
// where the list has them and never block the rank; each goes into a FIFO (a communicator and
// its stream) named by `fifo_of(from, to, dir)`, of which only the oldest operation runs; a send
// and a receive at the heads of the two ranks' FIFOs of one name meet and complete; a compute
// action waits for the receive that feeds it. Returns "" when every list runs to its end, else
// where it stalled, or the first pair of heads that met with different messages (NCCL has no
// tags: that would be a silent mix-up).
template <class FifoOf>
std::string run_fifo(const schedule::Schedule& s, FifoOf fifo_of) {
  const int p = s.ranks;
  struct Op {
    bool send;
    int peer;
    int64_t id;
  };
  using FifoKey = std::tuple<int, int, int>;
  std::map<std::pair<int, FifoKey>, std::deque<Op>> queues;  // (rank, fifo) -> issued, not completed
  std::set<std::pair<int, int64_t>> received;                // (rank, message id) completed
  std::vector<size_t> pc(static_cast<size_t>(p), 0);
  bool moved = true;
  while (moved) {
    moved = false;
    for (int r = 0; r < p; ++r) {
      const auto& row = s.actions[static_cast<size_t>(r)];
      while (pc[static_cast<size_t>(r)] < row.size()) {
        const schedule::Action& a = row[pc[static_cast<size_t>(r)]];
        if (a.is_comm()) {
          const int dir = a.op == schedule::Op::SendAct || a.op == schedule::Op::RecvAct ? 0 : 1;
          const FifoKey key = a.is_send() ? fifo_of(r, a.peer, dir) : fifo_of(a.peer, r, dir);
          queues[{r, key}].push_back(Op{a.is_send(), a.peer, schedule::message_id(s, a)});
        } else {
          std::optional<schedule::Action> feed;
          if (a.op == schedule::Op::Forward && a.stage > 0 && s.rank_of(a.stage - 1) != r)
            feed = schedule::comm(schedule::Op::RecvAct, a.stage, a.mb, s.rank_of(a.stage - 1));
          if ((a.op == schedule::Op::Backward || a.op == schedule::Op::BackwardInput) && a.stage + 1 < s.stages() &&
              s.rank_of(a.stage + 1) != r)
            feed = schedule::comm(schedule::Op::RecvGrad, a.stage, a.mb, s.rank_of(a.stage + 1));
          if (feed && !received.count({r, schedule::message_id(s, *feed)})) break;
        }
        ++pc[static_cast<size_t>(r)];
        moved = true;
      }
    }
    // Heads that meet.
    for (auto& [rk, q] : queues) {
      if (q.empty() || !q.front().send) continue;
      const int from = rk.first;
      const Op op = q.front();
      auto it = queues.find({op.peer, rk.second});
      if (it == queues.end() || it->second.empty()) continue;
      const Op other = it->second.front();
      if (other.send || other.peer != from) continue;
      if (other.id != op.id) return fmt::format("rank {}'s send of message {} met rank {}'s receive of message {}", from, op.id, op.peer, other.id);
      received.insert({op.peer, other.id});
      q.pop_front();
      it->second.pop_front();
      moved = true;
    }
  }
  std::string stalled;
  for (int r = 0; r < p; ++r)
    if (pc[static_cast<size_t>(r)] < s.actions[static_cast<size_t>(r)].size())
      stalled += fmt::format(" rank {} at {};", r, schedule::to_string(s.actions[static_cast<size_t>(r)][pc[static_cast<size_t>(r)]]));
  for (const auto& [rk, q] : queues)
    if (!q.empty()) stalled += fmt::format(" rank {} holds {} message(s);", rk.first, q.size());
  return stalled.empty() ? "" : "stalled:" + stalled;
}

}  // namespace

TEST_CASE("both ends of every channel derive the same list, for every generator and shape") {
  int checked_channels = 0;
  for (const Shape& sh : shapes()) {
    for (int look : {0, 1, 3}) {
      const schedule::Schedule s = schedule::lower(schedule::make_schedule(sh.gen, sh.p, sh.m, sh.v), {look});
      for (int d : {1, 2, 3}) {
        if (d > 1 && look != 1) continue;  // replicas only repeat the pipeline
        const auto pl = places(sh.p, d);
        const auto bt = cuts(s.stages(), static_cast<uint32_t>(sh.p * 100 + sh.m * 10 + sh.v));
        std::vector<std::map<Key, Channel>> all;
        for (int r = 0; r < static_cast<int>(pl.size()); ++r) all.push_back(views(plan::rank_channels(s, pl, bt, r)));
        for (int r = 0; r < static_cast<int>(pl.size()); ++r)
          for (const auto& [key, mine] : all[static_cast<size_t>(r)]) {
            INFO(sh.gen, " p=", sh.p, " m=", sh.m, " v=", sh.v, " d=", d, " lookahead=", look, " rank ", r, ": ", plan::describe(mine));
            CHECK((mine.from == r || mine.to == r));
            const int peer = mine.from == r ? mine.to : mine.from;
            // Never across replicas.
            CHECK(pl[static_cast<size_t>(peer)].replica == pl[static_cast<size_t>(r)].replica);
            const auto& theirs = all[static_cast<size_t>(peer)];
            auto it = theirs.find(key);
            REQUIRE(it != theirs.end());
            CHECK(plan::compare_channel(mine, r, it->second, peer) == "");
            // One direction per channel, and its messages in the cut's order within a microbatch.
            for (size_t i = 0; i < mine.messages.size(); ++i) {
              CHECK(mine.messages[i].dir == mine.dir);
              if (i > 0 && mine.messages[i].tag == mine.messages[i - 1].tag)
                CHECK(mine.messages[i].tensor == mine.messages[i - 1].tensor + 1);
            }
            ++checked_channels;
          }
        // Every cross-rank dependency of the step appears once per tensor on exactly one channel.
        for (int r = 0; r < static_cast<int>(pl.size()); ++r) {
          size_t sent = 0, expected = 0;
          for (const auto& [key, c] : all[static_cast<size_t>(r)])
            if (c.from == r) sent += c.messages.size();
          for (const auto& a : s.actions[static_cast<size_t>(pl[static_cast<size_t>(r)].pipeline_rank)])
            if (a.is_send()) {
              const bool act = a.op == schedule::Op::SendAct;
              const auto& b = bt[static_cast<size_t>(act ? a.stage : a.stage - 1)];
              expected += act ? b.activations.size() : b.gradients.size();
            }
          CHECK(sent == expected);
        }
      }
    }
  }
  CHECK(checked_channels > 1000);
}

TEST_CASE("one FIFO per channel never deadlocks; one FIFO per pair of ranks does") {
  // What NCCL does with the lists: the k-th send of a communicator meets its k-th receive, in
  // order. With a communicator (and stream) per channel, every generator runs to its end.
  for (const Shape& sh : shapes())
    for (int look : {0, 1, 2}) {
      const schedule::Schedule s = schedule::lower(schedule::make_schedule(sh.gen, sh.p, sh.m, sh.v), {look});
      INFO(sh.gen, " p=", sh.p, " m=", sh.m, " v=", sh.v, " lookahead=", look);
      CHECK(run_fifo(s, [](int from, int to, int dir) { return std::make_tuple(from, to, dir); }) == "");
    }
  // One FIFO per pair of ranks (both directions, both kinds): 1F1B's rank 0 posts the receive
  // of gradient 0 before it sends activation 1, rank 1 the receive of activation 1 before it
  // sends gradient 0.
  const schedule::Schedule s = schedule::lower(schedule::one_f_one_b(2, 4));
  const std::string e = run_fifo(s, [](int from, int to, int) { return std::make_tuple(std::min(from, to), std::max(from, to), 0); });
  CHECK(e.find("stalled") != std::string::npos);
}

TEST_CASE("a receive order that differs from the send order is named: message, both ranks, both sides") {
  // Receives posted 2 compute actions ahead: rank 1 posts those of activations 1 and 2 next to
  // each other.
  schedule::Schedule s = schedule::lower(schedule::one_f_one_b(2, 3), {2});
  // Rank 1 posts the receive of activation 2 before that of activation 1 (still a valid
  // schedule under tags, as MPI runs it: the receives are matched by tag).
  auto& row = s.actions[1];
  auto find = [&](int mb) {
    return std::find(row.begin(), row.end(), schedule::comm(schedule::Op::RecvAct, 1, mb, 0)) - row.begin();
  };
  const auto i1 = find(1), i2 = find(2);
  REQUIRE(static_cast<size_t>(i1) < row.size());
  REQUIRE(static_cast<size_t>(i2) < row.size());
  std::swap(row[static_cast<size_t>(i1)], row[static_cast<size_t>(i2)]);
  CHECK(schedule::validate(s).ok);
  const auto pl = places(2, 1);
  const auto bt = cuts(2, 7);
  const auto r0 = views(plan::rank_channels(s, pl, bt, 0));
  const auto r1 = views(plan::rank_channels(s, pl, bt, 1));
  const Key act{0, 1, Direction::Activation};
  const std::string e = plan::compare_channel(r1.at(act), 1, r0.at(act), 0);
  // Message index of the first tensor of microbatch 1 (after microbatch 0's tensors).
  const size_t per_mb = bt[0].activations.size();
  CHECK(e == fmt::format("on rank 0 -> rank 1, activations, message {} is {} on rank 1 but {} on rank 0", per_mb,
                         plan::describe(r1.at(act).messages[per_mb]), plan::describe(r0.at(act).messages[per_mb])));
  CHECK(e.find("microbatch 2") != std::string::npos);
  CHECK(e.find("microbatch 1") != std::string::npos);
  // The gradients' channel is unaffected.
  const Key grad{1, 0, Direction::Gradient};
  CHECK(plan::compare_channel(r1.at(grad), 1, r0.at(grad), 0) == "");
  // Run as NCCL would, the swapped order is a mismatch, not a silent success.
  CHECK(run_fifo(s, [](int from, int to, int dir) { return std::make_tuple(from, to, dir); }) != "");
}

TEST_CASE("ends that hold a boundary in different precisions or cuts disagree on the first message") {
  const schedule::Schedule s = schedule::lower(schedule::zb_h1(3, 4));
  const auto pl = places(3, 1);
  const auto f32 = cuts(3, 11, "float32"), bf16 = cuts(3, 11, "bfloat16");
  const auto sender = views(plan::rank_channels(s, pl, f32, 1));
  const auto receiver = views(plan::rank_channels(s, pl, bf16, 2));
  const Key act{1, 2, Direction::Activation};
  const std::string e = plan::compare_channel(receiver.at(act), 2, sender.at(act), 1);
  CHECK(e.find("message 0 is activations of stage 1 -> 2, microbatch 0, tensor 'b1_t0' (bfloat16, ") != std::string::npos);
  CHECK(e.find("(float32, ") != std::string::npos);
  // One tensor fewer at one end: the count and the extra message are named.
  auto fewer = f32;
  fewer[1].activations.pop_back();
  fewer[1].activations.push_back({"other", "float32", 4});
  const auto other = views(plan::rank_channels(s, pl, fewer, 2));
  CHECK(plan::compare_channel(other.at(act), 2, sender.at(act), 1).find("tensor 'other'") != std::string::npos);
  auto missing = f32;
  missing[1].activations.pop_back();
  const auto shorter = views(plan::rank_channels(s, pl, missing, 2));
  if (f32[1].activations.size() > 1) {
    const std::string m = plan::compare_channel(shorter.at(act), 2, sender.at(act), 1);
    CHECK(!m.empty());
  }
  // Views of different channels are not compared message by message.
  CHECK(plan::compare_channel(sender.at(act), 1, sender.at({1, 0, Direction::Gradient}), 0).find("compared channel") !=
        std::string::npos);
}

TEST_CASE("interleaved chunks: the wrap-around boundary and several boundaries share one channel per direction") {
  // p = 2, v = 2: stages 0..3 on ranks 0 1 0 1. Rank 0 -> 1 carries activations of boundaries 0
  // and 2; rank 1 -> 0 the activations of boundary 1 (the wrap) and the gradients of boundaries
  // 0 and 2; rank 0 -> 1 also the gradients of boundary 1.
  const schedule::Schedule s = schedule::lower(schedule::interleaved(2, 4, 2));
  const auto pl = places(2, 1);
  const auto bt = cuts(4, 3);
  const auto r0 = views(plan::rank_channels(s, pl, bt, 0));
  CHECK(r0.size() == 4);
  std::set<int> act01, act10, grad10, grad01;
  for (const auto& m : r0.at({0, 1, Direction::Activation}).messages) act01.insert(m.boundary);
  for (const auto& m : r0.at({1, 0, Direction::Activation}).messages) act10.insert(m.boundary);
  for (const auto& m : r0.at({1, 0, Direction::Gradient}).messages) grad10.insert(m.boundary);
  for (const auto& m : r0.at({0, 1, Direction::Gradient}).messages) grad01.insert(m.boundary);
  CHECK(act01 == std::set<int>{0, 2});
  CHECK(act10 == std::set<int>{1});
  CHECK(grad10 == std::set<int>{0, 2});
  CHECK(grad01 == std::set<int>{1});
}

TEST_CASE("data-parallel replicas: channels stay within a replica; global ranks as the plan numbers them") {
  const schedule::Schedule s = schedule::lower(schedule::one_f_one_b(2, 2));
  const auto pl = places(2, 2);  // ranks 0 1 | 2 3
  const auto bt = cuts(2, 5);
  const auto r3 = plan::rank_channels(s, pl, bt, 3);
  REQUIRE(r3.size() == 2);
  CHECK(r3[0].from == 2);
  CHECK(r3[0].to == 3);
  CHECK(r3[1].from == 3);
  CHECK(r3[1].to == 2);
  // A one-stage plan sends nothing.
  const schedule::Schedule one = schedule::lower(schedule::one_f_one_b(1, 4));
  CHECK(plan::rank_channels(one, places(1, 2), {}, 1).empty());
}

TEST_CASE("tensor-parallel lanes: channels stay within a replica and a lane (plan::RankLayout's numbering)") {
  // 2 stages x 2 replicas x 2 tensor-parallel ranks: rank = (replica * 2 + pipeline rank) * 2 + lane.
  const schedule::Schedule s = schedule::lower(schedule::one_f_one_b(2, 2));
  const plan::RankLayout layout{2, 2, 2};
  std::vector<RankPlace> pl;
  for (int r = 0; r < layout.size(); ++r) {
    const auto c = layout.coords(r);
    pl.push_back({c.replica, c.pipeline_rank, c.tp_rank});
  }
  const auto bt = cuts(2, 9);
  for (int r = 0; r < layout.size(); ++r) {
    const auto c = layout.coords(r);
    const int peer = layout.rank(c.replica, 1 - c.pipeline_rank, c.tp_rank);
    const auto chans = plan::rank_channels(s, pl, bt, r);
    REQUIRE(chans.size() == 2);
    for (const auto& ch : chans) {
      CHECK((ch.from == r || ch.to == r));
      CHECK((ch.from == peer || ch.to == peer));
    }
    // Both ends of each channel agree.
    for (const auto& ch : chans)
      for (const auto& other : plan::rank_channels(s, pl, bt, peer))
        if (other.from == ch.from && other.to == ch.to && other.dir == ch.dir) CHECK(plan::compare_channel(ch, r, other, peer).empty());
  }
}

TEST_CASE("the text form round-trips exactly") {
  const schedule::Schedule s = schedule::lower(schedule::interleaved(3, 6, 2));
  const auto bt = cuts(6, 9, "bfloat16");
  for (const auto& c : plan::rank_channels(s, places(3, 1), bt, 1)) {
    const Channel back = plan::parse_channel(plan::serialize(c));
    CHECK(plan::compare_channel(c, 1, back, 1) == "");
    CHECK(back.messages == c.messages);
  }
  CHECK_THROWS_AS(plan::parse_channel("{\"from\": 1}"), Error);
}
