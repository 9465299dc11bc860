// The event simulator: the acceptance sweeps and hand-checked small cases.
#include <doctest/doctest.h>

#include "core/error.hpp"
#include "schedule/generators.hpp"
#include "schedule/simulate.hpp"
#include "schedule/validate.hpp"

#include <cmath>

using namespace smp;
using namespace smp::schedule;

namespace {

// Idle over ideal compute: sum of idle / sum of busy.
double idle_ratio(const SimResult& r) { return r.idle_s / r.compute_s; }

bool close(double a, double b) { return std::abs(a - b) <= 1e-12 * std::max(1.0, std::abs(b)); }

const Event* find_event(const SimResult& r, EventKind kind, const std::string& action) {
  for (const auto& e : r.events)
    if (e.kind == kind && to_string(e.action) == action) return &e;
  return nullptr;
}

}  // namespace

TEST_CASE("acceptance: idle / ideal compute = (p-1)/m for gpipe and 1f1b, (p-1)/(v m) for interleaved") {
  for (auto [f, b, w] : {std::tuple{1.0, 1.0, 0.0}, std::tuple{1.0, 1.0, 1.0}, std::tuple{2.0, 3.0, 2.0}})
    for (int p = 1; p <= 16; ++p)
      for (int m = 1; m <= 64; ++m) {
        CAPTURE(p);
        CAPTURE(m);
        const double want = static_cast<double>(p - 1) / m;
        for (const Schedule& s : {gpipe(p, m), one_f_one_b(p, m)}) {
          CAPTURE(s.name);
          SimResult r = simulate(s, Costs::uniform(p, f, b, w), SimOptions{false});
          CHECK(close(idle_ratio(r), want));
          CHECK(close(r.bubble, (p - 1.0) / (m + p - 1.0)));
        }
        if (m % p == 0)
          for (int v = 2; v <= 4; ++v) {
            CAPTURE(v);
            SimResult r = simulate(interleaved(p, m, v), Costs::uniform(p * v, f, b, w), SimOptions{false});
            CHECK(close(idle_ratio(r), (p - 1.0) / (v * m)));
          }
      }
}

TEST_CASE("lowered lists simulate exactly like compute-only ones") {
  for (const Schedule& s : {one_f_one_b(4, 8), interleaved(4, 8, 2), zb_h1(4, 8), gpipe(3, 5, 2)}) {
    Costs c = Costs::uniform(s.stages(), 1.0, 2.0, 1.5);
    c.link.assign(static_cast<size_t>(s.stages() - 1), LinkCost{0.3, 0.2});
    SimResult a = simulate(s, c), b = simulate(lower(s), c);
    CHECK(a.step_s == b.step_s);
    CHECK(a.events.size() == b.events.size());
  }
}

TEST_CASE("acceptance: peak stashed microbatches per stage") {
  for (int p = 1; p <= 16; ++p)
    for (int m = 1; m <= 64; m += 3) {
      CAPTURE(p);
      CAPTURE(m);
      SimResult g = simulate(gpipe(p, m), Costs::uniform(p, 1, 1, 1), SimOptions{false});
      SimResult o = simulate(one_f_one_b(p, m), Costs::uniform(p, 1, 1, 1), SimOptions{false});
      SimResult z = simulate(zb_h1(p, m), Costs::uniform(p, 1, 1, 1), SimOptions{false});
      for (int s = 0; s < p; ++s) {
        CAPTURE(s);
        CHECK(g.stage[s].peak_stashed == m);
        CHECK(o.stage[s].peak_stashed == std::min(m, p - s));
        CHECK(z.stage[s].peak_stashed <= o.stage[s].peak_stashed);
        CHECK(z.stage[s].peak_stashed == std::min(m, p - s));
        // zb-h1 keeps at most s+1 microbatches between B and W (rank s defers s W passes).
        CHECK(z.stage[s].peak_pending_w <= std::min(m, s + 1));
        CHECK(o.stage[s].peak_pending_w == 0);
      }
    }
}

TEST_CASE("acceptance: zb-h1 peak memory never above 1f1b's") {
  for (int p = 1; p <= 16; ++p)
    for (int m : {1, 2, p, 2 * p, 64}) {
      CAPTURE(p);
      CAPTURE(m);
      Costs c = Costs::uniform(p, 1, 1, 1);
      for (auto& st : c.stage) {
        st.weight_bytes = 100;
        st.grad_bytes = 100;
        st.optimizer_bytes = 200;
        st.act_bytes = 10;
        st.w_keep_bytes = 4;  // W needs part of what B needed
      }
      SimResult o = simulate(one_f_one_b(p, m), c, SimOptions{false});
      SimResult z = simulate(zb_h1(p, m), c, SimOptions{false});
      double peak_o = 0, peak_z = 0;
      for (int r = 0; r < p; ++r) {
        peak_o = std::max(peak_o, o.rank[r].peak_bytes);
        peak_z = std::max(peak_z, z.rank[r].peak_bytes);
        CHECK(o.rank[r].static_bytes == 400);
        CHECK(o.rank[r].peak_act_bytes == 10.0 * std::min(m, p - r));
      }
      CHECK(peak_z <= peak_o);
    }
}

TEST_CASE("acceptance: zb-h1 with F = B = W beats 1f1b's bubble") {
  for (int p = 2; p <= 16; ++p)
    for (int m = p; m <= 64; m += 5) {
      CAPTURE(p);
      CAPTURE(m);
      SimResult o = simulate(one_f_one_b(p, m), Costs::uniform(p, 1, 1, 1), SimOptions{false});
      SimResult z = simulate(zb_h1(p, m), Costs::uniform(p, 1, 1, 1), SimOptions{false});
      CHECK(z.bubble < o.bubble);
      // 1F1B idles (p-1)(F+B+W) per rank; ZB-H1 (p-1)(F+B-W) (Qi et al., table 1).
      CHECK(o.step_s == 3.0 * m + 3.0 * (p - 1));
      CHECK(z.step_s == 3.0 * m + 1.0 * (p - 1));
    }
}

TEST_CASE("hand-checked: two stages, unequal times, transfers and an all-reduce") {
  Schedule s = one_f_one_b(2, 1);
  Costs c;
  c.stage = {StageCost{1, 2, 1}, StageCost{2, 3, 1}};  // X = 3 and 4
  c.link = {LinkCost{0.5, 0.25}};
  SimResult r = simulate(s, c);
  // 0F0 [0,1]; activation [1,1.5]; 1F0 [1.5,3.5]; 1X0 [3.5,7.5]; gradient [7.5,7.75]; 0X0 [7.75,10.75]
  CHECK(find_event(r, EventKind::Compute, "1F0")->start_s == 1.5);
  CHECK(find_event(r, EventKind::Compute, "1X0")->end_s == 7.5);
  CHECK(find_event(r, EventKind::Transfer, "1SB0>0")->start_s == 7.5);
  CHECK(find_event(r, EventKind::Transfer, "1SB0>0")->end_s == 7.75);
  CHECK(find_event(r, EventKind::Compute, "0X0")->start_s == 7.75);
  CHECK(r.step_s == 10.75);
  CHECK(r.rank[0].busy_s == 4);
  CHECK(r.rank[1].busy_s == 6);
  CHECK(r.rank[0].idle_s == 6.75);
  CHECK(r.rank[1].idle_s == 4.75);
  CHECK(r.bubble == doctest::Approx(11.5 / 21.5));
  CHECK(r.events.size() == 6);

  c.allreduce_s = {1.0, 0.5};
  SimResult a = simulate(s, c);
  CHECK(a.step_s == 11.75);
  CHECK(a.rank[1].end_s == 8.0);
  CHECK(a.rank[1].idle_s == 11.75 - 6 - 0.5);
  int all_reduces = 0;
  for (const auto& e : a.events) all_reduces += e.kind == EventKind::AllReduce;
  CHECK(all_reduces == 2);

  // The optimizer step follows each rank's all-reduce; it is neither compute nor idle.
  c.update_s = {0.25, 2.0};
  SimResult u = simulate(s, c);
  CHECK(u.rank[0].end_s == 11.75 + 0.25);
  CHECK(u.rank[1].end_s == 8.0 + 2.0);
  CHECK(u.step_s == 12.0);
  CHECK(u.rank[0].update_s == 0.25);
  CHECK(u.rank[1].idle_s == 12.0 - 6 - 0.5 - 2.0);
  CHECK(u.rank[1].busy_s == 6);
  const Event* up = nullptr;
  for (const auto& e : u.events)
    if (e.kind == EventKind::Update && e.rank == 1) up = &e;
  REQUIRE(up != nullptr);
  CHECK(up->start_s == 8.0);
  CHECK(up->end_s == 10.0);
  c.update_s = {1.0};
  CHECK_THROWS_WITH(simulate(s, c, {}, "t"), doctest::Contains("optimizer-step times for 1 ranks"));
}

TEST_CASE("hand-checked: the endpoints' own work per message delays both ranks and is not compute") {
  Schedule s = one_f_one_b(2, 1);
  Costs c;
  c.stage = {StageCost{1, 2, 1}, StageCost{2, 3, 1}};
  LinkCost l{0.5, 0.25};
  l.act_send_s = 0.125;
  l.act_recv_s = 0.375;
  l.grad_send_s = 0.0625;
  l.grad_recv_s = 0.25;
  c.link = {l};
  SimResult r = simulate(s, c);
  // 0F0 [0,1]; packed until 1.125; link [1.125,1.625]; unpacked until 2; 1F0 [2,4]; 1X0 [4,8];
  // packed until 8.0625; link [8.0625,8.3125]; unpacked until 8.5625; 0X0 [8.5625,11.5625]
  CHECK(find_event(r, EventKind::Transfer, "0SF0>1")->start_s == 1.125);
  CHECK(find_event(r, EventKind::Compute, "1F0")->start_s == 2);
  CHECK(find_event(r, EventKind::Transfer, "1SB0>0")->start_s == 8.0625);
  CHECK(find_event(r, EventKind::Compute, "0X0")->start_s == 8.5625);
  CHECK(r.step_s == 11.5625);
  CHECK(r.rank[0].busy_s == 4);  // packing and unpacking are not compute
  CHECK(r.rank[1].busy_s == 6);
  CHECK(r.rank[1].end_s == 8.0625);  // rank 1 is done once it has packed its gradient
}

TEST_CASE("hand-checked: transfers on one link run one after the other") {
  Schedule s = gpipe(2, 2);
  Costs c = Costs::uniform(2, 1, 1, 0);
  c.link = {LinkCost{3, 0}};
  SimResult r = simulate(s, c);
  // 0F0 [0,1], 0F1 [1,2]; transfers [1,4] and [4,7]; 1F0 [4,5], 1F1 [7,8].
  CHECK(find_event(r, EventKind::Compute, "1F0")->start_s == 4);
  CHECK(find_event(r, EventKind::Compute, "1F1")->start_s == 7);
  c.serialize_links = false;
  SimResult u = simulate(s, c);
  CHECK(find_event(u, EventKind::Compute, "1F1")->start_s == 5);
}

TEST_CASE("hand-checked: memory follows the list order") {
  // 1f1b p=2 m=3: rank 0 holds two microbatches at its peak, rank 1 one.
  Costs c = Costs::uniform(2, 1, 1, 1);
  c.stage[0].act_bytes = 10;
  c.stage[1].act_bytes = 20;
  c.stage[0].weight_bytes = 1000;
  c.stage[1].optimizer_bytes = 3000;
  SimResult r = simulate(one_f_one_b(2, 3), c);
  CHECK(r.rank[0].peak_act_bytes == 20);
  CHECK(r.rank[1].peak_act_bytes == 20);
  CHECK(r.rank[0].peak_bytes == 1020);
  CHECK(r.rank[1].peak_bytes == 3020);
  // zb-h1: B keeps w_keep_bytes until W.
  c.stage[1].w_keep_bytes = 5;
  SimResult z = simulate(zb_h1(2, 3), c);
  // rank 1: F0 B0 (5) F1 (25) B1 (10) W0 (5) F2 (25) B2 (10) W1 W2: peak 25.
  CHECK(z.rank[1].peak_act_bytes == 25);
  CHECK(z.stage[1].peak_pending_w == 2);
  CHECK(z.stage[1].peak_in_flight == 2);
}

TEST_CASE("the simulator rejects costs that do not fit and lists that cannot finish") {
  CHECK_THROWS_AS(simulate(one_f_one_b(2, 2), Costs::uniform(3, 1, 1, 1)), Error);
  Costs c = Costs::uniform(2, 1, 1, 1);
  c.link = {LinkCost{}, LinkCost{}};
  CHECK_THROWS_AS(simulate(one_f_one_b(2, 2), c), Error);
  Schedule bad = one_f_one_b(2, 2);
  std::swap(bad.actions[1][0], bad.actions[1][1]);  // 1X0 before 1F0
  try {
    simulate(bad, Costs::uniform(2, 1, 1, 1));
    FAIL("accepted");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("the lists cannot run to the end") != std::string::npos);
  }
}
