// The validator: hand-made broken schedules are rejected with a message naming the action.
#include <doctest/doctest.h>

#include "core/error.hpp"
#include "schedule/generators.hpp"
#include "schedule/validate.hpp"

#include <algorithm>
#include <map>

using namespace smp;
using namespace smp::schedule;

namespace {

Schedule from_rows(int ranks, int m, std::vector<std::vector<std::string>> rows, int chunks = 1) {
  Schedule s = empty_schedule("hand", ranks, m, chunks);
  for (size_t r = 0; r < rows.size(); ++r)
    for (const auto& t : rows[r]) s.actions[r].push_back(parse_action(t));
  return s;
}

// Expects a rejection at (rank, step) whose message contains every needle.
void rejects(const Schedule& s, int rank, int step, std::initializer_list<const char*> needles) {
  Validation v = validate(s);
  CAPTURE(v.message);
  REQUIRE_FALSE(v.ok);
  CHECK(v.rank == rank);
  CHECK(v.step == step);
  for (const char* n : needles) CHECK(v.message.find(n) != std::string::npos);
  CHECK(v.message.find('\n') == std::string::npos);
  if (step >= 0) {
    std::string grid = format_grid(s, GridOptions{v.rank, v.step});
    CHECK(grid.find(fmt::format("[{}]", to_string(s.actions[static_cast<size_t>(rank)][static_cast<size_t>(step)]))) !=
          std::string::npos);
  }
}

void erase(Schedule& s, int rank, const std::string& text) {
  auto& row = s.actions[static_cast<size_t>(rank)];
  auto it = std::find(row.begin(), row.end(), parse_action(text));
  REQUIRE(it != row.end());
  row.erase(it);
}

}  // namespace

TEST_CASE("a correct hand-made schedule passes") {
  Schedule s = from_rows(2, 2, {{"0F0", "0F1", "0X0", "0X1"}, {"1F0", "1X0", "1F1", "1X1"}});
  Validation v = validate(s);
  CHECK_MESSAGE(v.ok, v.message);
  CHECK(validate(lower(s)).ok);
}

TEST_CASE("a B before its F") {
  Schedule s = from_rows(2, 2, {{"0F0", "0F1", "0X0", "0X1"}, {"1X0", "1F0", "1F1", "1X1"}});
  rejects(s, 1, 0, {"rank 1, step 0 (1X0)", "runs before its forward 1F0 (step 1)"});
  Schedule z = zb_h1(3, 4);
  std::swap(z.actions[1][2], z.actions[1][0]);  // 1B0 ahead of 1F0
  rejects(z, 1, 0, {"(1B0)", "before its forward 1F0"});
}

TEST_CASE("a missing W") {
  Schedule z = zb_h1(4, 8);
  erase(z, 2, "2W5");
  Validation v = validate(z);
  rejects(z, 2, v.step, {"(2B5)", "has no weight backward 2W5"});
  // And a W whose B is missing: reported at the forward, which has no backward then.
  Schedule y = zb_h1(4, 8);
  erase(y, 3, "3B2");
  v = validate(y);
  rejects(y, 3, 4, {"(3F2)", "has no input backward 3B2 (its 3W2 is at step"});
}

TEST_CASE("a receive with no send, a send with no receive") {
  Schedule s = lower(one_f_one_b(3, 4));
  erase(s, 0, "0SF2>1");
  Validation v = validate(s);
  rejects(s, 1, v.step, {"(1RF2<0)", "receive with no send", "0SF2>1"});
  Schedule g = lower(one_f_one_b(3, 4));
  erase(g, 1, "1SB1>0");
  v = validate(g);
  rejects(g, 0, v.step, {"(0RB1<1)", "receive with no send (1SB1>0 is missing on rank 1)"});
  Schedule t = lower(one_f_one_b(3, 4));
  erase(t, 1, "1RB3<2");
  v = validate(t);
  rejects(t, 1, v.step, {"no receive 1RB3<2 is posted"});
  Schedule u = lower(one_f_one_b(3, 4));
  erase(u, 1, "1RF3<0");
  erase(u, 1, "1F3");
  erase(u, 1, "1X3");
  v = validate(u);
  CHECK_FALSE(v.ok);
  // The send's receiver is gone: reported at the send on rank 0 (found first).
  CHECK(v.message.find("(0SF3>1): send with no receive") != std::string::npos);
}

TEST_CASE("a receive posted after its consumer, a send before its producer") {
  Schedule s = lower(one_f_one_b(2, 3));
  auto& row = s.actions[1];
  auto rf = std::find(row.begin(), row.end(), parse_action("1RF1<0"));
  auto f = std::find(row.begin(), row.end(), parse_action("1F1"));
  std::iter_swap(rf, f);
  Validation v = validate(s);
  rejects(s, 1, v.step, {"(1F1)", "runs before its receive 1RF1<0 is posted"});
  Schedule t = lower(one_f_one_b(2, 3));
  auto& r0 = t.actions[0];
  auto sf = std::find(r0.begin(), r0.end(), parse_action("0SF0>1"));
  std::rotate(r0.begin(), sf, sf + 1);  // the send first
  v = validate(t);
  rejects(t, 0, 0, {"(0SF0>1)", "runs before its producer 0F0"});
}

TEST_CASE("duplicates, wrong ranks, wrong peers, messages on one rank") {
  rejects(from_rows(1, 1, {{"0F0", "0F0", "0X0"}}), 0, 1, {"appears twice (first at step 0)"});
  rejects(from_rows(2, 1, {{"0F0", "1F0", "0X0"}, {"1X0"}}), 0, 1, {"stage 1 runs on rank 1, not here"});
  Schedule s = lower(one_f_one_b(2, 1));
  REQUIRE(to_string(s.actions[0][2]) == "0SF0>1");
  s.actions[0][2].peer = 0;
  rejects(s, 0, 2, {"the peer must be rank 1"});
  s.actions[0][1].peer = 1;
  rejects(s, 0, 1, {"a compute action has no peer"});
  Schedule one = empty_schedule("one", 1, 1, 2);  // stages 0 and 1 both on rank 0
  one.actions[0] = {compute(Op::Forward, 0, 0), comm(Op::SendAct, 0, 0, 0), compute(Op::Forward, 1, 0),
                    compute(Op::Backward, 1, 0), compute(Op::Backward, 0, 0)};
  rejects(one, 0, 1, {"no message is needed"});
  rejects(from_rows(1, 2, {{"0F0", "0X0", "0X1"}}), 0, 2, {"forward 0F1 is missing"});
  rejects(from_rows(1, 2, {{"0F0", "0X0", "0F1"}}), 0, 2, {"has no backward"});
  rejects(from_rows(1, 2, {{"0F0", "0X0"}}), 0, -1, {"stage 0 microbatch 1 never runs"});
  rejects(from_rows(1, 1, {{"0F0", "0X0", "0W0"}}), 0, 2, {"the full backward 0X0 is there too"});
}

TEST_CASE("a deadlock is found and its cycle named") {
  // Rank 1 runs microbatch 1 first, rank 0 waits for microbatch 0's gradient.
  Schedule s = from_rows(2, 2, {{"0F0", "0X0", "0F1", "0X1"}, {"1F1", "1X1", "1F0", "1X0"}});
  rejects(s, 0, 1, {"deadlock", "rank 0 waits at 0X0 for 1X0 on rank 1", "rank 1 waits at 1F1 for 0F1 on rank 0"});
  Schedule low = lower(s);
  Validation v = validate(low);
  CAPTURE(v.message);
  CHECK_FALSE(v.ok);
  CHECK(v.message.find("deadlock") != std::string::npos);
  CHECK(v.message.find("for 1SB0>0 on rank 1") != std::string::npos);
}

TEST_CASE("a deadlock is marked on its cycle, not on a rank that merely waits") {
  Schedule s = from_rows(3, 2, {{"0F0", "0F1", "0X0", "0X1"}, {"1F0", "1X0", "1F1", "1X1"}, {"2F1", "2X1", "2F0", "2X0"}});
  rejects(s, 1, 1, {"deadlock: rank 1 waits at 1X0 for 2X0 on rank 2; rank 2 waits at 2F1 for 1F1 on rank 1"});
  CHECK(validate(s).message.find("rank 0") == std::string::npos);
}

TEST_CASE("check_valid throws one-line bad input") {
  Schedule s = from_rows(1, 1, {{"0X0", "0F0"}});
  try {
    check_valid(s, "sched.json");
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(e.exit_code() == 2);
    CHECK(std::string(e.what()).starts_with("sched.json: rank 0, step 0 (0X0): runs before its forward"));
  }
}

TEST_CASE("lowering: messages only across ranks, sends right after producers, receives ahead") {
  Schedule s = lower(one_f_one_b(2, 2));
  std::string r0, r1;
  for (const auto& a : s.actions[0]) r0 += to_string(a) + " ";
  for (const auto& a : s.actions[1]) r1 += to_string(a) + " ";
  CHECK(r0 == "0F0 0SF0>1 0RB0<1 0F1 0SF1>1 0RB1<1 0X0 0X1 ");
  CHECK(r1 == "1RF0<0 1F0 1RF1<0 1X0 1SB0>0 1F1 1X1 1SB1>0 ");
  // Same-rank neighbours (p = 1, several chunks; a V placement) need no messages.
  CHECK_FALSE(lower(gpipe(1, 4, 3)).lowered());
  Schedule v = empty_schedule("v", 2, 1, 2);
  v.stage_rank = {0, 1, 1, 0};
  v.actions = {{compute(Op::Forward, 0, 0), compute(Op::Forward, 3, 0), compute(Op::Backward, 3, 0), compute(Op::Backward, 0, 0)},
               {compute(Op::Forward, 1, 0), compute(Op::Forward, 2, 0), compute(Op::Backward, 2, 0), compute(Op::Backward, 1, 0)}};
  Schedule vl = lower(v);
  CHECK(validate(vl).ok);
  int msgs = 0;
  for (const auto& row : vl.actions)
    for (const auto& a : row) msgs += a.is_comm();
  CHECK(msgs == 8);  // 0->1, 2->3 forward; 3->2, 1->0 backward: 4 sends, 4 receives
  CHECK_THROWS_AS(lower(vl), Error);
}

TEST_CASE("lowered lists under stricter message semantics") {
  // Blocking sends (a send waits for the receive to be posted): safe with receives posted one
  // compute action ahead for the one-chunk schedules; looped placements (v >= 2) need their
  // receives posted further ahead: all at the start of the step always works.
  for (int p = 1; p <= 8; ++p)
    for (int m = 1; m <= 24; ++m) {
      CAPTURE(p);
      CAPTURE(m);
      for (const auto& s : {gpipe(p, m), one_f_one_b(p, m), zb_h1(p, m)}) {
        CAPTURE(s.name);
        Validation v = validate(lower(s), ValidateOptions{CommSemantics::BlockingSend});
        CHECK_MESSAGE(v.ok, v.message);
      }
      std::vector<Schedule> looped = {gpipe(p, m, 2)};
      if (m % p == 0) looped.push_back(interleaved(p, m, 2));
      for (const auto& s : looped) {
        CAPTURE(s.name);
        Validation v = validate(lower(s, LowerOptions{1 << 30}), ValidateOptions{CommSemantics::BlockingSend});
        CHECK_MESSAGE(v.ok, v.message);
      }
    }
  Validation ring = validate(lower(gpipe(4, 8, 2)), ValidateOptions{CommSemantics::BlockingSend});
  CAPTURE(ring.message);
  CHECK_FALSE(ring.ok);
  CHECK(ring.message.find("deadlock") != std::string::npos);
  // Posted right before the consumer, 1F1B's blocking sends deadlock: rank 0 sends 0F1 while
  // rank 1 sends the gradient of microbatch 0, neither has posted the other's receive.
  Schedule tight = lower(one_f_one_b(2, 2), LowerOptions{0});
  CHECK(validate(tight).ok);
  Validation v = validate(tight, ValidateOptions{CommSemantics::BlockingSend});
  CAPTURE(v.message);
  CHECK_FALSE(v.ok);
  CHECK(v.message.find("deadlock: rank 0 waits at 0SF1>1 for 1RF1<0 on rank 1; rank 1 waits at 1SB0>0 for 0RB0<1 on rank 0") !=
        std::string::npos);
  // Full rendezvous (send and receive both block where they stand): GPipe with each receive right
  // before its consumer passes; 1F1B's steady state cannot.
  CHECK(validate(lower(gpipe(4, 8), LowerOptions{0}), ValidateOptions{CommSemantics::Rendezvous}).ok);
  CHECK_FALSE(validate(lower(gpipe(4, 8)), ValidateOptions{CommSemantics::Rendezvous}).ok);
  Validation r = validate(lower(one_f_one_b(4, 8), LowerOptions{0}), ValidateOptions{CommSemantics::Rendezvous});
  CAPTURE(r.message);
  CHECK_FALSE(r.ok);
  CHECK(r.message.find("deadlock") != std::string::npos);
  // Compute-only lists do not depend on the semantics.
  CHECK(validate(one_f_one_b(4, 8), ValidateOptions{CommSemantics::Rendezvous}).ok);
}

TEST_CASE("message ids pair each send with its receive and tell messages apart") {
  for (const Schedule& s : {lower(one_f_one_b(4, 8)), lower(interleaved(4, 8, 3)), lower(zb_h1(3, 5)), lower(gpipe(2, 3, 2))}) {
    CAPTURE(s.name);
    std::map<int64_t, std::pair<int, int>> seen;  // id -> (sends, receives)
    for (const auto& row : s.actions)
      for (const auto& a : row)
        if (a.is_comm()) {
          int64_t id = message_id(s, a);
          CHECK(id >= 0);
          CHECK(id < 2 * (s.stages() - 1) * s.microbatches);
          (a.is_send() ? seen[id].first : seen[id].second) += 1;
        }
    CHECK(!seen.empty());
    for (const auto& [id, n] : seen) {
      CAPTURE(id);
      CHECK(n.first == 1);
      CHECK(n.second == 1);
    }
  }
}
