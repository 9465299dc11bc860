// Text form, generators, grid and schedule files.
#include <doctest/doctest.h>

#include "core/error.hpp"
#include "schedule/generators.hpp"
#include "schedule/schedule.hpp"
#include "schedule/validate.hpp"

#include <filesystem>
#include <fstream>

#include <unistd.h>

using namespace smp;
using namespace smp::schedule;
namespace fs = std::filesystem;

TEST_CASE("the text form of every action round-trips") {
  const Action cases[] = {
      compute(Op::Forward, 2, 5),          compute(Op::BackwardInput, 0, 0),
      compute(Op::BackwardWeight, 12, 63), compute(Op::Backward, 31, 1000),
      comm(Op::SendAct, 2, 5, 3),          comm(Op::RecvAct, 3, 5, 2),
      comm(Op::SendGrad, 2, 5, 1),         comm(Op::RecvGrad, 1, 5, 2),
  };
  const char* texts[] = {"2F5", "0B0", "12W63", "31X1000", "2SF5>3", "3RF5<2", "2SB5>1", "1RB5<2"};
  for (size_t i = 0; i < std::size(cases); ++i) {
    CHECK(to_string(cases[i]) == texts[i]);
    CHECK(parse_action(texts[i]) == cases[i]);
    CHECK(parse_action(to_string(cases[i])) == cases[i]);
  }
  CHECK(parse_action("2F5").is_compute());
  CHECK(parse_action("2SF5>3").is_send());
  CHECK(parse_action("2RB5<3").is_recv());
}

TEST_CASE("malformed actions are bad input naming the text") {
  for (const char* bad : {"", "F5", "2Q5", "2F", "2F5x", "2SF5", "2SF5<3", "2RF5>3", "-1F2", "2F5>3", "2SX5>1",
                          " 2F5", "2f5", "2F-5", "99999999999F1"}) {
    CAPTURE(bad);
    try {
      parse_action(bad, "sched.json: actions[0][1]");
      FAIL("accepted");
    } catch (const Error& e) {
      CHECK(e.exit_code() == 2);
      CHECK(std::string(e.what()).starts_with("sched.json: actions[0][1]: '"));
    }
  }
}

namespace {
int count(const Schedule& s, int rank, Op op) {
  int n = 0;
  for (const auto& a : s.actions[static_cast<size_t>(rank)]) n += a.op == op;
  return n;
}
std::string row_text(const Schedule& s, int rank) {
  std::string t;
  for (const auto& a : s.actions[static_cast<size_t>(rank)]) {
    if (!t.empty()) t += ' ';
    t += to_string(a);
  }
  return t;
}
}  // namespace

TEST_CASE("generators emit the expected lists") {
  SUBCASE("gpipe") {
    Schedule s = gpipe(2, 3);
    CHECK(row_text(s, 0) == "0F0 0F1 0F2 0X0 0X1 0X2");
    CHECK(row_text(s, 1) == "1F0 1F1 1F2 1X0 1X1 1X2");
  }
  SUBCASE("1f1b: p-r-1 warm-up forwards") {
    Schedule s = one_f_one_b(3, 4);
    CHECK(row_text(s, 0) == "0F0 0F1 0F2 0X0 0F3 0X1 0X2 0X3");
    CHECK(row_text(s, 1) == "1F0 1F1 1X0 1F2 1X1 1F3 1X2 1X3");
    CHECK(row_text(s, 2) == "2F0 2X0 2F1 2X1 2F2 2X2 2F3 2X3");
  }
  SUBCASE("interleaved: Megatron's order, stage s on rank s mod p") {
    Schedule s = interleaved(2, 4, 2);
    CHECK(s.stages() == 4);
    CHECK(s.rank_of(3) == 1);
    // rank 0: warm-up 2(p-1) + (v-1)p = 4 virtual microbatches.
    CHECK(row_text(s, 0) == "0F0 0F1 2F0 2F1 0F2 2X0 0F3 2X1 2F2 0X0 2F3 0X1 2X2 2X3 0X2 0X3");
    CHECK(row_text(s, 1) == "1F0 1F1 3F0 3X0 3F1 3X1 1F2 1X0 1F3 1X1 3F2 3X2 3F3 3X3 1X2 1X3");
  }
  SUBCASE("zb-h1: rank r defers r weight passes") {
    Schedule s = zb_h1(3, 4);
    CHECK(row_text(s, 0) == "0F0 0F1 0F2 0B0 0W0 0F3 0B1 0W1 0B2 0W2 0B3 0W3");
    CHECK(row_text(s, 2) == "2F0 2B0 2F1 2B1 2F2 2B2 2W0 2F3 2B3 2W1 2W2 2W3");
    for (int r = 0; r < 3; ++r) {
      CHECK(count(s, r, Op::Forward) == 4);
      CHECK(count(s, r, Op::BackwardInput) == 4);
      CHECK(count(s, r, Op::BackwardWeight) == 4);
    }
  }
}

TEST_CASE("every generator is valid, lowered or not, over a sweep") {
  for (int p = 1; p <= 16; ++p)
    for (int m = 1; m <= 64; m += (m < 20 ? 1 : 7)) {
      CAPTURE(p);
      CAPTURE(m);
      std::vector<Schedule> all = {gpipe(p, m), one_f_one_b(p, m), zb_h1(p, m), gpipe(p, m, 3)};
      if (m % p == 0)
        for (int v = 2; v <= 4; ++v) all.push_back(interleaved(p, m, v));
      for (const auto& s : all) {
        CAPTURE(s.name);
        CAPTURE(s.chunks);
        Validation v = validate(s);
        REQUIRE_MESSAGE(v.ok, v.message);
        Schedule low = lower(s);
        Validation vl = validate(low);
        REQUIRE_MESSAGE(vl.ok, vl.message);
        CHECK(compute_only(low).actions == s.actions);
        CHECK(low.lowered() == (p > 1));
        Schedule low0 = lower(s, LowerOptions{0});
        CHECK(validate(low0).ok);
      }
    }
}

TEST_CASE("make_schedule checks names and sizes") {
  CHECK(make_schedule("1f1b", 4, 8).name == "1f1b");
  CHECK(make_schedule("interleaved", 4, 8, 2).chunks == 2);
  auto bad = [](std::string_view name, int p, int m, int v, const char* needle) {
    try {
      make_schedule(name, p, m, v, "--schedule");
      FAIL("accepted");
    } catch (const Error& e) {
      CAPTURE(e.what());
      CHECK(e.exit_code() == 2);
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
      CHECK(std::string(e.what()).starts_with("--schedule: "));
    }
  };
  bad("pipedream", 4, 8, 1, "unknown schedule 'pipedream'");
  bad("interleaved", 4, 6, 2, "not a multiple of 4 ranks");
  bad("interleaved", 4, 8, 1, "at least 2 chunks");
  bad("1f1b", 4, 8, 2, "one chunk per rank");
  bad("zb-h1", 4, 8, 3, "one chunk per rank");
  bad("gpipe", 0, 8, 1, "0 ranks");
  bad("gpipe", 4, 0, 1, "0 microbatches");
}

TEST_CASE("the grid shows one row per rank and marks an action") {
  Schedule s = one_f_one_b(2, 2);
  std::string g = format_grid(s);
  CHECK(g.find("rank 0 ") != std::string::npos);
  CHECK(g.find("0F0 0F1 0X0 0X1") != std::string::npos);
  CHECK(g.find("1F0 1X0 1F1 1X1") != std::string::npos);
  std::string marked = format_grid(s, GridOptions{1, 2});
  CHECK(marked.find("[1F1]") != std::string::npos);
  CHECK(marked.find("^^^^^") != std::string::npos);
  // compute_only hides messages of a lowered schedule.
  Schedule low = lower(s);
  CHECK(format_grid(low).find("0SF0>1") != std::string::npos);
  CHECK(format_grid(low, GridOptions{.compute_only = true}).find("SF") == std::string::npos);
}

namespace {
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() / ("smp_sched_test_" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};
void write_text(const fs::path& p, const std::string& text) { std::ofstream(p) << text; }
}  // namespace

TEST_CASE("schedule files round-trip and bad files are reported with the field") {
  TempDir dir;
  for (const Schedule& s : {interleaved(4, 8, 2), lower(zb_h1(3, 5))}) {
    fs::path f = dir.path / "s.json";
    write_schedule(f, s);
    Schedule back = read_schedule(f);
    CHECK(back.name == s.name);
    CHECK(back.ranks == s.ranks);
    CHECK(back.chunks == s.chunks);
    CHECK(back.microbatches == s.microbatches);
    CHECK(back.stage_rank == s.stage_rank);
    CHECK(back.actions == s.actions);
  }
  // Custom placement survives.
  Schedule v = empty_schedule("v", 2, 1, 2);
  v.stage_rank = {0, 1, 1, 0};
  v.actions = {{compute(Op::Forward, 0, 0), compute(Op::Forward, 3, 0), compute(Op::Backward, 3, 0), compute(Op::Backward, 0, 0)},
               {compute(Op::Forward, 1, 0), compute(Op::Forward, 2, 0), compute(Op::Backward, 2, 0), compute(Op::Backward, 1, 0)}};
  write_schedule(dir.path / "v.json", v);
  CHECK(read_schedule(dir.path / "v.json").stage_rank == v.stage_rank);

  auto bad = [&](const std::string& text, const char* needle) {
    fs::path f = dir.path / "bad.json";
    write_text(f, text);
    try {
      read_schedule(f);
      FAIL("accepted");
    } catch (const Error& e) {
      CAPTURE(e.what());
      CHECK(e.exit_code() == 2);
      CHECK(std::string(e.what()).find(needle) != std::string::npos);
    }
  };
  bad(R"({"ranks": 1, "microbatches": 1, "actions": [["0F0", "0X0"]]})", "missing field \"version\"");
  bad(R"({"version": 2, "ranks": 1, "microbatches": 1, "actions": [["0F0", "0X0"]]})", "unsupported version 2");
  bad(R"({"version": 1, "ranks": 2, "microbatches": 1, "actions": [["0F0", "0X0"]]})", "array of 2 lists");
  bad(R"({"version": 1, "ranks": 1, "microbatches": 1, "actions": [["0F0", "0Y0"]]})",
      "bad.json: actions[0][1]: '0Y0' is not an action");
  bad(R"({"version": 1, "ranks": 1, "microbatches": 1, "actions": [["0F0", "0X1"]]})",
      "actions[0][1]: 0X1: microbatch 1 does not exist");
  bad(R"({"version": 1, "ranks": 1, "microbatches": 1, "actions": [["0F0", "1X0"]]})", "stage 1 does not exist");
  bad(R"({"version": 1, "ranks": 2, "chunks": 2, "microbatches": 1, "stage_ranks": [0, 0, 0, 1], "actions": [[], []]})",
      "stage_ranks gives rank 0 3 stages");
  bad(R"({"version": 1, "ranks": 0, "microbatches": 1, "actions": []})", "field \"ranks\" is 0");
  bad(R"({"version": 1, "ranks": 1, "microbatch": 1, "actions": [["0F0", "0X0"]]})", "unknown field \"microbatch\"");
}
