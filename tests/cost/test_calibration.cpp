// The kernel calibration's model (cost/calibration.hpp): curves, families, the slow-down of
// workers sharing the cores, the file format, and the cost model pricing nodes by it.
#include "cost/calibration.hpp"
#include "cost/cost_model.hpp"
#include "core/error.hpp"
#include "hand_graph.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <cmath>
#include <memory>

using namespace smp;
using cost::KernelFamily;

namespace {

cost::CalibrationCurve curve(std::vector<std::pair<double, double>> pts) {
  cost::CalibrationCurve c;
  for (auto [w, s] : pts) c.points.push_back({w, s});
  return c;
}

// A calibration with one table of `threads` in which every family's forward takes 1 us per unit
// of work above 1e3 (a floor of 1 ms below) and its backward twice that.
cost::KernelCalibration linear(int threads = 1) {
  cost::KernelCalibration c;
  c.cpu = "test cpu";
  c.cores = 4;
  cost::CalibrationTable t;
  t.threads = threads;
  for (auto& fam : t.curves) {
    fam[0] = curve({{1e3, 1e-3}, {1e6, 1.0}});
    fam[1] = curve({{1e3, 2e-3}, {1e6, 2.0}});
  }
  t.optimizer_s_per_parameter = {1e-9, 2e-9, 4e-9};
  c.tables.push_back(t);
  c.contention_compute = {1.0, 1.1, 1.2, 1.3};
  c.contention_memory = {1.0, 1.5, 2.0, 2.5};
  return c;
}

// A CPU device priced by `cal`.
cost::DeviceSpec calibrated_device(std::shared_ptr<const cost::KernelCalibration> cal) {
  cost::DeviceSpec d;
  d.kind = "cpu";
  d.name = "calibrated";
  d.memory_bytes = 1e9;
  d.peak_flops_fp32 = d.peak_flops_bf16 = 1e12;
  d.memory_bandwidth = 1e11;
  d.calibration = std::move(cal);
  return d;
}

}  // namespace

TEST_CASE("a curve interpolates in log-log, floors below its first point, extrapolates at its last rate") {
  auto c = curve({{100, 1e-6}, {10000, 1e-3}});
  CHECK(c.time(100) == doctest::Approx(1e-6));
  CHECK(c.time(10000) == doctest::Approx(1e-3));
  // halfway in log(work) is halfway in log(time)
  CHECK(c.time(1000) == doctest::Approx(std::sqrt(1e-6 * 1e-3)));
  CHECK(c.time(10) == doctest::Approx(1e-6));       // the per-call floor
  CHECK(c.time(40000) == doctest::Approx(4e-3));    // the largest point's rate
  CHECK(c.time(0) == 0);
  CHECK(cost::CalibrationCurve{}.time(5) == 0);
}

TEST_CASE("families: products with a weight are GEMMs, of two activations batched; math apart from streaming") {
  test::HandGraph h;
  int x = h.input("x", {4, 16});
  int w = h.param("W", {8, 16});
  int wt = h.node("Transpose", "wt", {w}, {16, 8});
  int a = h.node("Relu", "act", {x}, {4, 16});
  int y = h.node("MatMul", "mm", {a, wt}, {4, 8});
  int s = h.node("MatMul", "scores", {y, h.node("Transpose", "yt", {y}, {8, 4})}, {4, 4});
  int e = h.node("Erf", "erf", {s}, {4, 4});
  int sm = h.node("Softmax", "sm", {e}, {4, 4});
  int r = h.node("Reshape", "view", {sm}, {16});
  h.finish({r});
  auto fam = [&](int node) { return cost::kernel_family(h.g, h.g.nodes[static_cast<size_t>(node)]); };
  CHECK(fam(0) == KernelFamily::Transpose);
  CHECK(fam(1) == KernelFamily::Elementwise);
  CHECK(fam(2) == KernelFamily::Gemm);  // a Transpose of a weight counts as the weight
  CHECK(fam(4) == KernelFamily::BatchedMatMul);
  CHECK(fam(5) == KernelFamily::Transcendental);
  CHECK(fam(6) == KernelFamily::Softmax);
  CHECK(!fam(7).has_value());  // a view costs nothing
  for (int f = 0; f < cost::kKernelFamilies; ++f) {
    auto k = static_cast<KernelFamily>(f);
    CHECK(cost::family_from_name(cost::family_name(k)) == k);
  }
  CHECK(!cost::family_from_name("warp_drive").has_value());
}

TEST_CASE("workers sharing the cores: contention up to the cores, time-slicing beyond") {
  auto c = linear();
  CHECK(c.slowdown(KernelFamily::Gemm, 1, 1) == doctest::Approx(1.0));
  CHECK(c.slowdown(KernelFamily::Gemm, 2, 1) == doctest::Approx(1.1));
  CHECK(c.slowdown(KernelFamily::Elementwise, 2, 1) == doctest::Approx(1.5));
  CHECK(c.slowdown(KernelFamily::Elementwise, 2.5, 1) == doctest::Approx(1.75));  // interpolated
  // 8 busy workers of 1 thread on 4 cores: each gets half a core, and the 4-copy contention
  CHECK(c.slowdown(KernelFamily::Gemm, 8, 1) == doctest::Approx(2.0 * 1.3));
  // 2 workers of 4 threads: 8 threads on 4 cores
  CHECK(c.slowdown(KernelFamily::Transcendental, 2, 4) == doctest::Approx(2.0 * 1.3));
  CHECK(c.slowdown(KernelFamily::Gemm, 0.5, 1) == doctest::Approx(1.0));  // never faster than alone
}

TEST_CASE("workers beyond the cores: the ring's factor by how much of the cores the busy workers fill") {
  cost::KernelCalibration c;
  CHECK(c.oversubscription_factor(1.5) == 1.0);  // not measured
  c.oversubscription = {1.8, 1.2};
  CHECK(c.oversubscription_factor(0.5) == doctest::Approx(1.8));  // below one core's worth: the first
  CHECK(c.oversubscription_factor(1.0) == doctest::Approx(1.8));
  CHECK(c.oversubscription_factor(1.5) == doctest::Approx(1.5));
  CHECK(c.oversubscription_factor(2.0) == doctest::Approx(1.2));
  CHECK(c.oversubscription_factor(3.0) == doctest::Approx(1.2));
}

TEST_CASE("the table for a worker's threads: the largest measured not above them") {
  auto c = linear(1);
  auto t4 = linear(4).tables[0];
  c.tables.push_back(t4);
  CHECK(c.table(1).threads == 1);
  CHECK(c.table(3).threads == 1);
  CHECK(c.table(4).threads == 4);
  CHECK(c.table(16).threads == 4);
}

TEST_CASE("a calibrated device prices nodes by their family's curve; the loss by the softmax curve") {
  test::HandGraph h;
  int x = h.input("x", {4, 16});
  int w = h.param("W", {16, 8});
  int a = h.node("Relu", "act", {x}, {4, 16});
  int y = h.node("MatMul", "mm", {a, w}, {4, 8});
  h.finish({y});
  auto cal = std::make_shared<cost::KernelCalibration>(linear());
  cal->tables[0].curves[static_cast<size_t>(KernelFamily::Softmax)][0] = curve({{1, 7e-6}, {1e9, 7e3}});
  cal->tables[0].curves[static_cast<size_t>(KernelFamily::Softmax)][1] = curve({{1, 9e-6}, {1e9, 9e3}});
  const cost::DeviceSpec d = calibrated_device(cal);
  cost::GraphCost gc(h.g, 4, cost::CostOptions{});
  const auto& mm = gc.node(1);
  const double prod = 2.0 * 4 * 8 * 16;  // the product's FLOPs, the loss's taken out
  const double out_bytes = 4 * 8 * 4;
  auto t = gc.node_time(1, 4, d);
  CHECK(t.f == doctest::Approx(cal->tables[0].curves[0][0].time(prod) + 7e-6 * out_bytes));
  CHECK(t.w == doctest::Approx(cal->tables[0].curves[0][1].time(mm.bwd_w.flops.at(4))));
  // the loss's backward (2 x the output's bytes) is the only input gradient: relu(x) needs none
  CHECK(t.b == doctest::Approx(9e-6 * 2 * out_bytes));
  // relu: elementwise, priced at its bytes; no gradient (x is data)
  auto r = gc.node_time(0, 4, d);
  CHECK(r.f == doctest::Approx(cal->tables[0].curves[static_cast<size_t>(KernelFamily::Elementwise)][0].time(
                   gc.node(0).fwd.bytes.at(4))));
  CHECK(r.b == 0);
  // Two busy workers: every pass slower by the family's contention.
  auto t2 = gc.node_time(1, 4, d, nullptr, 0, 2);
  CHECK(t2.w == doctest::Approx(t.w * 1.1));
  // The optimizer step per parameter, for the plan's optimizer (adamw by default).
  CHECK(gc.optimizer_step_s(4000, d) == doctest::Approx(1000 * 4e-9));
  CHECK(gc.optimizer_step_s(4000, d, nullptr, 3) == doctest::Approx(1000 * 4e-9 * 2.0));
}

TEST_CASE("a backward with input and weight gradients is priced as the one call the calibration timed") {
  // x -> Mul(x, s) -> MatMul(., W) -> Relu: the product's input and its weight both need
  // gradients, so its backward has two halves of equal work.
  test::HandGraph h;
  int x = h.input("x", {4, 16});
  int s = h.param("s", {1});
  int w = h.param("W", {16, 8});
  int a = h.node("Mul", "scale", {x, s}, {4, 16});
  int y = h.node("MatMul", "mm", {a, w}, {4, 8});
  int r = h.node("Relu", "act", {y}, {4, 8});
  h.finish({r});
  auto cal = std::make_shared<cost::KernelCalibration>(linear());
  // A backward curve whose rate rises with the work (the per-call floor weighs on small calls).
  auto& bwd = cal->tables[0].curves[static_cast<size_t>(KernelFamily::Gemm)][1];
  bwd = curve({{1e3, 1e-3}, {1e5, 1e-2}});
  const cost::DeviceSpec d = calibrated_device(cal);
  cost::GraphCost gc(h.g, 4, cost::CostOptions{});
  const auto& mm = gc.node(1);
  const double wb = mm.bwd_in.flops.at(4), ww = mm.bwd_w.flops.at(4);
  REQUIRE(wb > 0);
  REQUIRE(ww > 0);
  auto t = gc.node_time(1, 4, d);
  CHECK(t.b + t.w == doctest::Approx(bwd.time(wb + ww)));
  CHECK(t.b / t.w == doctest::Approx(wb / ww));
  // Priced apart, the halves would cost more: the curve is steeper than linear at small work.
  CHECK(bwd.time(wb) + bwd.time(ww) > 1.2 * (t.b + t.w));
}

TEST_CASE("a GEMM with few rows is priced slower by the table's rows factor; other families are not") {
  cost::RowsFactor rf;
  rf.points = {{1, 8.0}, {4, 2.0}, {64, 1.0}};
  CHECK(rf.at(0.5) == 8.0);  // below the first point: its factor
  CHECK(rf.at(1) == 8.0);
  CHECK(rf.at(2) == doctest::Approx(5.0));  // log-linear in the rows
  CHECK(rf.at(16) == doctest::Approx(1.5));
  CHECK(rf.at(64) == 1.0);
  CHECK(rf.at(1e6) == 1.0);
  CHECK(cost::RowsFactor{}.at(2) == 1.0);

  // x [2, 16] -> MatMul with W [16, 8]: 2 rows at batch 2, 64 at batch 64.
  test::HandGraph h;
  int x = h.input("x", {2, 16});
  int w = h.param("W", {16, 8});
  int y = h.node("MatMul", "mm", {x, w}, {2, 8});
  int r = h.node("Relu", "act", {y}, {2, 8});
  int w2 = h.param("W2", {8, 4});
  int z = h.node("MatMul", "head", {r, w2}, {2, 4});  // the loss is charged here
  h.finish({z});
  auto cal = std::make_shared<cost::KernelCalibration>(linear());
  cal->tables[0].gemm_rows[0] = rf;
  cal->tables[0].gemm_rows[1].points = {{1, 3.0}, {2, 3.0}, {64, 1.0}};
  const cost::DeviceSpec d = calibrated_device(cal);
  cost::GraphCost gc(h.g, 2, cost::CostOptions{});
  CHECK(gc.node(0).rows.at(2) == doctest::Approx(2));
  CHECK(gc.node(0).rows.at(64) == doctest::Approx(64));
  CHECK(gc.node(1).rows.at(2) == 0);  // not a GEMM
  const auto& curves = cal->tables[0].curves[static_cast<size_t>(KernelFamily::Gemm)];
  auto t2 = gc.node_time(0, 2, d);
  CHECK(t2.f == doctest::Approx(curves[0].time(gc.node(0).fwd.flops.at(2)) * 5.0));
  CHECK(t2.w == doctest::Approx(curves[1].time(gc.node(0).bwd_w.flops.at(2)) * 3.0));
  auto t64 = gc.node_time(0, 64, d);
  CHECK(t64.f == doctest::Approx(curves[0].time(gc.node(0).fwd.flops.at(64))));
  // The Relu after it keeps its family's price.
  CHECK(gc.node_time(1, 2, d).f ==
        doctest::Approx(cal->tables[0].curves[static_cast<size_t>(KernelFamily::Elementwise)][0].time(gc.node(1).fwd.bytes.at(2))));
}

TEST_CASE("calibration files round-trip; a bad field is named") {
  auto c = linear();
  c.link = {3e9, 1e-6, 1.5e9};
  c.gemm_flops = 5e10;
  c.tables[0].gemm_rows[1].points = {{1, 6.0}, {8, 2.0}, {256, 1.0}};
  auto back = cost::calibration_from_json(cost::to_json(c), "cal.json");
  REQUIRE(back.tables.size() == 1);
  CHECK(back.cores == 4);
  CHECK(back.link.bandwidth == 3e9);
  CHECK(back.link.allreduce_bandwidth == 1.5e9);
  CHECK(back.tables[0].gemm_rows[1].points == c.tables[0].gemm_rows[1].points);
  CHECK(back.tables[0].gemm_rows[0].points.empty());
  CHECK(back.oversubscription.empty());
  c.oversubscription = {1.6, 1.2};
  CHECK(cost::calibration_from_json(cost::to_json(c), "cal.json").oversubscription == c.oversubscription);
  CHECK(back.contention_memory == c.contention_memory);
  CHECK(back.tables[0].optimizer_s_per_parameter == c.tables[0].optimizer_s_per_parameter);
  CHECK(back.tables[0].curves[3][1].time(5e4) == doctest::Approx(c.tables[0].curves[3][1].time(5e4)));
  auto msg = [](nlohmann::json j) {
    try {
      cost::calibration_from_json(j, "cal.json");
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  auto j = cost::to_json(c);
  j["version"] = 99;
  CHECK(msg(j).find(fmt::format("cal.json: version: must be {}", cost::kCalibrationVersion)) == 0);
  j = cost::to_json(c);
  j["tables"][0]["families"]["gemm"]["forward"][0] = {1, -2};
  CHECK(msg(j).find("tables[0].families.gemm.forward: points must be") != std::string::npos);
  j = cost::to_json(c);
  j["tables"][0]["gemm_rows"]["backward"][1] = {8, 0.5};  // faster than with the most rows: not a slow-down
  CHECK(msg(j).find("tables[0].gemm_rows.backward: points must be [rows > 0, factor >= 1]") != std::string::npos);
  j = cost::to_json(c);
  j["oversubscription"] = {0.8, 1.2};
  CHECK(msg(j).find("cal.json: oversubscription: must be an array of at most 2 numbers >= 1") == 0);
  j = cost::to_json(c);
  j["tables"][0]["families"]["warp"] = j["tables"][0]["families"]["gemm"];
  CHECK(msg(j).find("unknown kernel family") != std::string::npos);
  j = cost::to_json(c);
  j.erase("cores");
  CHECK(msg(j).find("cores: must be a number") != std::string::npos);
}

TEST_CASE("a calibration taken on a busy machine says so in the local machine's description, and its load round-trips") {
  auto quiet = std::make_shared<cost::KernelCalibration>(linear());
  quiet->load_average = 0.5;
  auto busy = std::make_shared<cost::KernelCalibration>(linear());
  busy->load_average = 9.5;  // above the 4 cores
  CHECK(cost::calibrated_local_cpu(quiet, 2).description.find("busy") == std::string::npos);
  CHECK(cost::calibrated_local_cpu(busy, 2).description.find("while the machine was busy: load average 9.5 on 4 cores") !=
        std::string::npos);
  CHECK(cost::calibration_from_json(cost::to_json(*busy), "x.json").load_average == 9.5);
  auto old = cost::to_json(*busy);
  old.erase("load_average");  // a file from before the field: unknown
  CHECK(cost::calibration_from_json(old, "x.json").load_average == -1);
}
