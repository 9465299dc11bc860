// Timelines, the SVG Gantt chart and the Chrome trace.
#include <doctest/doctest.h>

#include "schedule/generators.hpp"
#include "schedule/timeline.hpp"

#include <set>

using namespace smp;
using namespace smp::schedule;

namespace {
size_t occurrences(const std::string& s, const std::string& needle) {
  size_t n = 0;
  for (size_t pos = s.find(needle); pos != std::string::npos; pos = s.find(needle, pos + 1)) ++n;
  return n;
}
}  // namespace

TEST_CASE("a simulated schedule becomes a timeline: rows = ranks, spans labelled by microbatch") {
  Schedule s = interleaved(2, 4, 2);
  Costs c = Costs::uniform(4, 1, 1, 1);
  c.link.assign(3, LinkCost{0.1, 0.1});
  SimResult r = simulate(s, c);
  Timeline t = make_timeline(s, r, "interleaved");
  CHECK(t.rows == std::vector<std::string>{"rank 0", "rank 1"});
  CHECK(t.spans.size() == r.events.size());
  int comm = 0, darker = 0;
  for (const auto& sp : t.spans) {
    CHECK(sp.end > sp.start);
    comm += sp.lane == 1;
    darker += sp.shade == 1 && sp.lane == 0;
    if (sp.name == "2F3") {
      CHECK(sp.row == 0);
      CHECK(sp.label == "3");
      CHECK(sp.shade == 1);  // stage 2 is rank 0's second chunk
      CHECK(sp.kind == SpanKind::Forward);
    }
  }
  CHECK(comm == 3 * 4 * 2);  // every boundary crosses ranks, forward and backward
  CHECK(darker == 2 * 2 * 4);
}

TEST_CASE("the SVG has a bar per span, the microbatch numbers, a legend and an axis") {
  Schedule s = zb_h1(4, 8);
  SimResult r = simulate(s, Costs::uniform(4, 1, 1, 1));
  Timeline t = make_timeline(s, r, "zb-h1 <p=4>", "units", 1e-3);
  t.footer = "step 27";
  std::string svg = to_svg(t);
  CHECK(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  CHECK(svg.find("</svg>") != std::string::npos);
  CHECK(occurrences(svg, "<title>") == t.spans.size());
  CHECK(svg.find("zb-h1 &lt;p=4&gt;") != std::string::npos);  // escaped
  CHECK(svg.find("backward, weights (W)") != std::string::npos);
  CHECK(svg.find("backward, inputs (B)") != std::string::npos);
  CHECK(svg.find(">idle<") != std::string::npos);
  CHECK(svg.find("time (units)") != std::string::npos);
  CHECK(svg.find(">step 27<") != std::string::npos);
  CHECK(svg.find(">7</text>") != std::string::npos);  // microbatch 7 is written in its bar
  CHECK(svg.find("full backward") == std::string::npos);  // not present in zb-h1
  // A longer time axis, to draw several timelines on one scale.
  CHECK(svg.find(">30</text>") == std::string::npos);
  CHECK(to_svg(t, SvgOptions{.time_max = 33}).find(">30</text>") != std::string::npos);
}

TEST_CASE("the Chrome trace has one complete event per span and names its threads") {
  Schedule s = one_f_one_b(3, 4);
  Costs c = Costs::uniform(3, 1, 1, 1);
  c.link.assign(2, LinkCost{0.5, 0.5});
  SimResult r = simulate(s, c);
  Timeline t = make_timeline(s, r, "1f1b", "unit", 1e-3);
  nlohmann::json j = to_chrome_trace(t);
  REQUIRE(j.contains("traceEvents"));
  size_t complete = 0;
  std::set<std::string> threads;
  for (const auto& e : j["traceEvents"]) {
    if (e["ph"] == "X") {
      ++complete;
      CHECK(e["dur"].get<double>() > 0);
      CHECK(e.contains("ts"));
    }
    if (e["name"] == "thread_name") threads.insert(e["args"]["name"].get<std::string>());
  }
  CHECK(complete == t.spans.size());
  CHECK(threads.count("rank 0") == 1);
  CHECK(threads.count("rank 1 comm") == 1);
  // 1 unit = 1 ms: 1F0 starts at 1.5 units (after a 0.5 transfer) = 1500 us.
  for (const auto& e : j["traceEvents"])
    if (e["name"] == "1F0") CHECK(e["ts"].get<double>() == doctest::Approx(1500));
}
