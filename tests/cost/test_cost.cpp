// Cluster descriptions, the roofline node costs, the backward rules, stage memory and cut bytes.
#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "cost/profile.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "hand_graph.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <string>
#include <tuple>

using namespace smp;
using nlohmann::json;

namespace {

std::string clusters(const std::string& f) { return std::string(SMP_SOURCE_DIR) + "/clusters/" + f; }

// The message of the bad-input error `f` throws ("" when it does not throw).
std::string bad_input(const std::function<void()>& f) {
  try {
    f();
  } catch (const smp::Error& e) {
    CHECK(e.kind() == ErrorKind::BadInput);
    return e.what();
  }
  return "";
}

cost::DeviceSpec device(double peak = 1e12, double bw = 1e11, double ovh = 1e-6) {
  cost::DeviceSpec d;
  d.kind = "gpu";
  d.name = "test";
  d.memory_bytes = 1e9;
  d.peak_flops_fp32 = peak;
  d.peak_flops_bf16 = 4 * peak;
  d.memory_bandwidth = bw;
  d.kernel_overhead_s = ovh;
  return d;
}

// x [8,64] -> MatMul W1 [64,32] -> h -> Relu -> r -> MatMul W2 [32,16] -> y (output)
struct Mlp {
  test::HandGraph h;
  int x, w1, hh, r, w2, y;
  Mlp() {
    x = h.input("x", {8, 64});
    w1 = h.param("W1", {64, 32});
    w2 = h.param("W2", {32, 16});
    hh = h.node("MatMul", "mm1", {x, w1}, {8, 32});
    r = h.node("Relu", "relu", {hh}, {8, 32});
    y = h.node("MatMul", "mm2", {r, w2}, {8, 16});
    h.finish({y});
  }
};

}  // namespace

TEST_CASE("example clusters parse and flatten") {
  auto a = cost::read_cluster(clusters("a100-2x8.json"));
  CHECK(a.size() == 16);
  REQUIRE(a.hosts.size() == 2);
  CHECK(a.hosts[0].name == "a100-0");
  CHECK(a.hosts[1].name == "a100-1");
  CHECK(a.kinds.size() == 1);
  CHECK(a.spec(3).peak_flops_fp32 == doctest::Approx(19.5e12));
  CHECK(a.spec(3).peak_flops(cost::Precision::BF16) == doctest::Approx(312e12));
  CHECK(a.link(0, 7).bandwidth == doctest::Approx(300e9));  // NVLink
  CHECK(a.link(7, 8).bandwidth == doctest::Approx(50e9));   // 400 Gb/s between hosts
  CHECK(a.devices[9].host == 1);
  CHECK(a.devices[9].local == 1);
  auto h = cost::read_cluster(clusters("h100-128x8.json"));
  CHECK(h.size() == 1024);
  CHECK(h.hosts.size() == 128);
  CHECK(cost::read_cluster(clusters("h100-16x8.json")).size() == 128);
  auto het = cost::read_cluster(clusters("hetero-h100-a100.json"));
  CHECK(het.heterogeneous());
  CHECK(het.size() == 16);
  CHECK(het.spec(0).peak_flops_fp32 > 3 * het.spec(15).peak_flops_fp32);
  CHECK(het.spec(0).memory_bytes == 2 * het.spec(15).memory_bytes);
  auto local = cost::read_cluster(clusters("local-cpu.json"));
  CHECK(local.size() >= 1);
  CHECK(local.name.find("estimated") != std::string::npos);
  CHECK(a.summary().find("2 hosts x (8 x A100-SXM4-40GB)") != std::string::npos);
}

TEST_CASE("a bad cluster field is named by its path") {
  const json base = read_json(clusters("a100-2x8.json"));
  struct Case {
    std::function<void(json&)> edit;
    std::string expect;
  };
  std::vector<Case> cases = {
      {[](json& j) { j.erase("version"); }, "x.json: version: missing"},
      {[](json& j) { j["version"] = 2; }, "x.json: version: unsupported version 2"},
      {[](json& j) { j["version"] = "1"; }, "x.json: version: must be an integer"},
      {[](json& j) { j.erase("name"); }, "x.json: name: missing"},
      {[](json& j) { j["name"] = 3; }, "x.json: name: must be a string"},
      {[](json& j) { j["hosts"] = json::array(); }, "x.json: hosts: must not be empty"},
      {[](json& j) { j["hosts"] = json::object(); }, "x.json: hosts: must be an array"},
      {[](json& j) { j["hosts"][0]["devices"][0]["memory_bytes"] = -1; }, "x.json: hosts[0].devices[0].memory_bytes: must be a positive number"},
      {[](json& j) { j["hosts"][0]["devices"][0]["memory_bytes"] = "40GB"; }, "x.json: hosts[0].devices[0].memory_bytes: must be a positive number"},
      {[](json& j) { j["hosts"][0]["devices"][0]["memory_bytes"] = 0; }, "x.json: hosts[0].devices[0].memory_bytes: must be a positive number"},
      {[](json& j) { j["hosts"][0]["devices"][0]["peak_flops"].erase("bf16"); }, "x.json: hosts[0].devices[0].peak_flops.bf16: missing"},
      {[](json& j) { j["hosts"][0]["devices"][0]["peak_flops"]["fp32"] = -19.5e12; }, "x.json: hosts[0].devices[0].peak_flops.fp32: must be a positive number"},
      {[](json& j) { j["hosts"][0]["devices"][0]["kind"] = "tpu"; }, "x.json: hosts[0].devices[0].kind: must be \"cpu\" or \"gpu\""},
      {[](json& j) { j["hosts"][0]["devices"][0]["count"] = 0; }, "x.json: hosts[0].devices[0].count: must be a positive integer"},
      {[](json& j) { j["hosts"][0]["devices"][0].erase("memory_bandwidth"); }, "x.json: hosts[0].devices[0].memory_bandwidth: missing"},
      {[](json& j) { j["hosts"][0]["devices"][0]["kernel_overhead_s"] = -1; }, "x.json: hosts[0].devices[0].kernel_overhead_s: must be a non-negative number"},
      {[](json& j) { j["hosts"][0]["link"]["latency"] = -1e-6; }, "x.json: hosts[0].link.latency: must be a non-negative number"},
      {[](json& j) { j["hosts"][0]["link"].erase("bandwidth"); }, "x.json: hosts[0].link.bandwidth: missing"},
      {[](json& j) { j["hosts"][0].erase("link"); }, "x.json: hosts[0].link: missing"},
      {[](json& j) { j["hosts"][0]["count"] = -2; }, "x.json: hosts[0].count: must be a positive integer"},
      {[](json& j) { j.erase("interconnect"); }, "x.json: interconnect: missing"},
      {[](json& j) { j["interconnect"]["bandwidth"] = -50e9; }, "x.json: interconnect.bandwidth: must be a positive number"},
      {[](json& j) {
         json h = j["hosts"][0];
         h["count"] = 1;
         h["devices"][0]["memory_bytes"] = -5;
         j["hosts"].push_back(h);
       },
       "x.json: hosts[1].devices[0].memory_bytes: must be a positive number"},
  };
  for (const auto& c : cases) {
    json j = base;
    c.edit(j);
    std::string msg = bad_input([&] { cost::cluster_from_json(j, "x.json"); });
    INFO(c.expect);
    CHECK(msg.rfind(c.expect, 0) == 0);
  }
  CHECK(bad_input([&] { cost::cluster_from_json(base, "x.json"); }).empty());
}

TEST_CASE("the local CPU splits its cores, FLOP/s and memory among --devices workers") {
  auto one = cost::detect_local_cpu(1);
  auto four = cost::detect_local_cpu(4);
  REQUIRE(one.size() == 1);
  REQUIRE(four.size() == 4);
  CHECK(four.spec(0).memory_bytes * 4 == doctest::Approx(one.spec(0).memory_bytes).epsilon(1e-6));
  CHECK(four.spec(0).peak_flops_fp32 * 4 == doctest::Approx(one.spec(0).peak_flops_fp32));
  CHECK(four.spec(0).memory_bandwidth * 4 == doctest::Approx(one.spec(0).memory_bandwidth));
  CHECK(cost::detect_local_cpu(0).size() >= 1);  // one per core
  CHECK(four.name.find("estimated") != std::string::npos);
  CHECK(four.link(0, 1).bandwidth > 0);
}

TEST_CASE("roofline node times on hand-computed cases") {
  Mlp m;
  cost::CostOptions opt;
  opt.loss = false;
  cost::GraphCost gc(m.h.g, 8, opt);
  const auto d = device();
  // mm1 forward at u = 8: 2*8*32*64 FLOPs, (8*64 + 64*32 + 8*32) * 4 bytes: memory bound.
  auto t0 = gc.node_time(0, 8, d);
  CHECK(t0.f == doctest::Approx(11264 / 1e11 + 1e-6));
  CHECK(t0.b == 0);  // x is a graph input: no gradient
  // W1's gradient: the forward's product FLOPs; reads dY (1024) and x (2048), writes dW1 (8192)
  CHECK(t0.w == doctest::Approx(11264 / 1e11 + 1e-6));
  // relu: B only, the forward's FLOPs; dY + saved output + dX = 3 * 1024 bytes
  auto t1 = gc.node_time(1, 8, d);
  CHECK(t1.f == doctest::Approx(2048 / 1e11 + 1e-6));
  CHECK(t1.b == doctest::Approx(3072 / 1e11 + 1e-6));
  CHECK(t1.w == 0);
  // mm2: both gradients; B reads dY (512) + W2 (2048), writes dr (1024)
  auto t2 = gc.node_time(2, 8, d);
  CHECK(t2.b == doctest::Approx(3584 / 1e11 + 1e-6));
  CHECK(t2.w == doctest::Approx(3584 / 1e11 + 1e-6));
  // microbatch of 4: the batch-proportional bytes halve, the weight's do not
  CHECK(gc.node_time(0, 4, d).f == doctest::Approx((1024 + 8192 + 512) / 1e11 + 1e-6));
  // compute bound: fp32 vs bf16 peaks
  const auto fast_mem = device(1e12, 1e18, 0);
  CHECK(gc.node_time(0, 8, fast_mem).f == doctest::Approx(32768 / 1e12));
  cost::CostOptions bf = opt;
  bf.precision = cost::Precision::BF16;
  cost::GraphCost gb(m.h.g, 8, bf);
  CHECK(gb.node_time(0, 8, fast_mem).f == doctest::Approx(32768 / 4e12));
  // needs-gradient and batch-dependence
  CHECK(!gc.needs_grad(m.x));
  CHECK(gc.needs_grad(m.hh));
  CHECK(gc.needs_grad(m.w1));
  CHECK(gc.batch_dependent(m.hh));
  CHECK(!gc.batch_dependent(m.w1));
}

TEST_CASE("a gradient flowing to Transpose(weight) is a weight gradient; the loss is charged to the output") {
  test::HandGraph h;
  int x = h.input("x", {4, 16});
  int w = h.param("W", {8, 16});
  int wt = h.node("Transpose", "wt", {w}, {16, 8});
  int a = h.node("Relu", "act", {x}, {4, 16});
  int y = h.node("MatMul", "mm", {a, wt}, {4, 8});
  h.finish({y});
  cost::GraphCost gc(h.g, 4, cost::CostOptions{});
  CHECK(!gc.batch_dependent(wt));
  CHECK(gc.needs_grad(wt));
  const auto& mm = gc.node(2);
  CHECK(mm.bwd_w.runs);
  CHECK(mm.bwd_w.flops.at(4) == doctest::Approx(2.0 * 4 * 8 * 16));
  CHECK(gc.node(0).bwd_w.runs);  // Transpose's gradient goes to W
  // loss on y: 6 FLOPs per element forward, 2 backward
  CHECK(mm.fwd.flops.at(4) == doctest::Approx(2.0 * 4 * 8 * 16 + 6 * 32));
  // relu(x) does not depend on a parameter: no product for it in B, only the loss's backward
  CHECK(mm.bwd_in.flops.at(4) == doctest::Approx(2 * 32));
}

TEST_CASE("stage memory: saved tensors deduplicated, received inputs, w_keep, workspace") {
  Mlp m;
  cost::CostOptions opt;
  opt.loss = false;
  opt.optimizer = cost::Optimizer::AdamW;
  cost::GraphCost gc(m.h.g, 8, opt);
  auto all = gc.stage_memory(0, 3, 8);
  CHECK(all.param_bytes == (64 * 32 + 32 * 16) * 4);
  CHECK(gc.static_bytes(all.param_bytes) == 4 * all.param_bytes);  // weights + grads + 2x adam
  // saved: x (mm1), r (relu's output, also mm2's input: once); received: x (already counted)
  CHECK(all.act.at(8) == 2048 + 1024);
  CHECK(all.act.at(4) == (2048 + 1024) / 2.0);
  CHECK(all.received.at(8) == 2048);
  // W needs after B: mm1's x and dY (h), mm2's r and dY (y)
  CHECK(all.w_keep.at(8) == 2048 + 1024 + 1024 + 512);
  CHECK(all.workspace.c == 2048 + 1024);  // mm1: x + h
  auto tail = gc.stage_memory(1, 3, 8);
  CHECK(tail.received.at(8) == 1024);     // h
  CHECK(tail.act.at(8) == 1024 + 1024);   // r saved, h received
  CHECK(tail.param_bytes == 32 * 16 * 4);
  cost::CostOptions sgd = opt;
  sgd.optimizer = cost::Optimizer::SGD;
  CHECK(cost::GraphCost(m.h.g, 8, sgd).static_bytes(100) == 200);
  CHECK(cost::optimizer_factor(cost::parse_optimizer("momentum")) == 1);
  CHECK(cost::parse_optimizer("adam") == cost::Optimizer::AdamW);
  CHECK(bad_input([] { cost::parse_optimizer("lion"); }).rfind("--optimizer: unknown optimizer 'lion'", 0) == 0);
}

TEST_CASE("every tensor crossing a cut counts, skip connections included") {
  // x -> A = MatMul(x, Wa) -> B = Relu(A) -> C = MatMul(B, Wc) -> D = Add(A, C) -> E = MatMul(D, We)
  test::HandGraph h;
  int x = h.input("x", {8, 32});
  int wa = h.param("Wa", {32, 32}), wc = h.param("Wc", {32, 32}), we = h.param("We", {32, 16});
  int A = h.node("MatMul", "A", {x, wa}, {8, 32});
  int B = h.node("Relu", "B", {A}, {8, 32});
  int C = h.node("MatMul", "C", {B, wc}, {8, 32});
  int D = h.node("Add", "D", {A, C}, {8, 32});
  int E = h.node("MatMul", "E", {D, we}, {8, 16});
  h.finish({E});
  cost::GraphCost gc(h.g, 8, cost::CostOptions{});
  CHECK(gc.cut_tensors(1) == 1);  // A
  CHECK(gc.cut_tensors(2) == 2);  // A (skip) and B
  CHECK(gc.crossing(2) == std::vector<int>{A, B});
  CHECK(gc.cut_bytes(2).at(8) == 2 * 1024);
  CHECK(gc.cut_bytes(2).at(2) == 2 * 256);
  CHECK(gc.cut_grad_bytes(2).at(8) == 2 * 1024);
  CHECK(gc.cut_tensors(3) == 2);  // A and C
  CHECK(gc.cut_tensors(4) == 1);  // D
  CHECK(gc.stage_inputs(2, 4) == std::vector<int>{A, B});
  CHECK(gc.stage_outputs(0, 2) == std::vector<int>{A, B});
  CHECK(gc.stage_outputs(2, 4) == std::vector<int>{D});
  (void)x;
}

TEST_CASE("a profile replaces the roofline times where device and microbatch match") {
  Mlp m;
  json pj = {{"version", 1},
             {"device", {{"name", "test"}, {"kind", "gpu"}}},
             {"threads", 1},
             {"microbatch_size", 8},
             {"nodes", {{"mm1", {{"forward_s", 0.5}, {"backward_input_s", 0.25}, {"backward_weight_s", 0.125}}}}}};
  cost::Profile p = cost::profile_from_json(pj, "p.json");
  cost::CostOptions opt;
  opt.profile = &p;
  cost::GraphCost gc(m.h.g, 8, opt);
  bool measured = false;
  auto t = gc.node_time(0, 8, device(), &measured);
  CHECK(measured);
  CHECK(t.f == 0.5);
  CHECK(t.w == 0.125);
  gc.node_time(1, 8, device(), &measured);
  CHECK(!measured);  // not in the profile
  gc.node_time(0, 4, device(), &measured);
  CHECK(!measured);  // another microbatch size
  auto other = device();
  other.name = "other";
  gc.node_time(0, 8, other, &measured);
  CHECK(!measured);
  json bad = pj;
  bad["nodes"]["mm1"]["forward_s"] = -1;
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); }).rfind("p.json: nodes[\"mm1\"].forward_s: must be a non-negative number", 0) == 0);
  bad = pj;
  bad.erase("microbatch_size");
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); }).rfind("p.json: microbatch_size", 0) == 0);

  // Times with several microbatches in flight: node_time moves towards them by `in_flight`.
  CHECK(gc.profile_in_flight(device(), 8) == 0);
  json deep = pj;
  deep["in_flight_microbatches"] = 4;
  deep["nodes"]["mm1"]["in_flight"] = {{"forward_s", 1.5}, {"backward_input_s", 0.5}, {"backward_weight_s", 0.125}};
  cost::Profile pd = cost::profile_from_json(deep, "p.json");
  cost::CostOptions od;
  od.profile = &pd;
  cost::GraphCost gd(m.h.g, 8, od);
  CHECK(gd.profile_in_flight(device(), 8) == 4);
  CHECK(gd.profile_in_flight(device(), 4) == 0);
  CHECK(gd.node_time(0, 8, device()).f == 0.5);
  auto half = gd.node_time(0, 8, device(), nullptr, 0.5);
  CHECK(half.f == 1.0);
  CHECK(half.b == 0.375);
  CHECK(half.w == 0.125);
  CHECK(gd.node_time(0, 8, device(), nullptr, 3.0).f == 1.5);  // clamped to the measured depth
  bad = deep;
  bad.erase("in_flight_microbatches");
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); }).find("in_flight: given without in_flight_microbatches") !=
        std::string::npos);
  bad = deep;
  bad["nodes"]["mm1"]["in_flight"].erase("forward_s");
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); }).rfind("p.json: nodes[\"mm1\"].in_flight.forward_s: missing", 0) == 0);
  bad = deep;
  bad["in_flight_microbatches"] = 1;
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); }).rfind("p.json: in_flight_microbatches", 0) == 0);
}

TEST_CASE("the optimizer step: measured per parameter where the profile has it, else a roofline") {
  Mlp m;
  const double params = 64 * 32 + 32 * 16, bytes = 4 * params;
  // Roofline: fp32 bytes 12 (norm) + 12 (update) + 8 per state tensor; FLOPs 2 + 2 / 3 / 12.
  for (auto [o, b, f] : {std::tuple{cost::Optimizer::SGD, 24.0, 4.0}, std::tuple{cost::Optimizer::Momentum, 32.0, 5.0},
                         std::tuple{cost::Optimizer::AdamW, 40.0, 14.0}}) {
    cost::CostOptions opt;
    opt.optimizer = o;
    cost::GraphCost gc(m.h.g, 8, opt);
    bool measured = true;
    CHECK(gc.optimizer_step_s(bytes, device(1e12, 1e11, 1e-6), &measured) == doctest::Approx(params * b / 1e11 + 2e-6));
    CHECK(!measured);
    // compute-bound on a device with little FLOP/s
    CHECK(gc.optimizer_step_s(bytes, device(1e6, 1e11, 0)) == doctest::Approx(params * f / 1e6));
    CHECK(gc.optimizer_step_s(0, device()) == 0);
  }
  json pj = {{"version", 1},
             {"device", {{"name", "test"}, {"kind", "cpu"}}},
             {"microbatch_size", 8},
             {"optimizer_step_s_per_parameter", {{"sgd", 1e-9}, {"adamw", 4e-9}}},
             {"nodes", json::object()}};
  cost::Profile p = cost::profile_from_json(pj, "p.json");
  CHECK(p.optimizer_step_s.at("adamw") == 4e-9);
  for (auto [o, want] : {std::pair{cost::Optimizer::SGD, 1e-9}, std::pair{cost::Optimizer::AdamW, 4e-9}}) {
    cost::CostOptions opt;
    opt.optimizer = o;
    opt.profile = &p;
    cost::GraphCost gc(m.h.g, 8, opt);
    bool measured = false;
    CHECK(gc.optimizer_step_s(bytes, device(), &measured) == doctest::Approx(params * want));
    CHECK(measured);
    auto other = device();
    other.name = "other";
    gc.optimizer_step_s(bytes, other, &measured);
    CHECK(!measured);  // the profile is for another device
  }
  cost::CostOptions om;
  om.optimizer = cost::Optimizer::Momentum;  // not in the profile: the roofline
  om.profile = &p;
  bool measured = true;
  cost::GraphCost gm(m.h.g, 8, om);
  gm.optimizer_step_s(bytes, device(), &measured);
  CHECK(!measured);
  json bad = pj;
  bad["optimizer_step_s_per_parameter"]["lion"] = 1e-9;
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); })
            .rfind("p.json: optimizer_step_s_per_parameter.lion: unknown optimizer", 0) == 0);
  bad = pj;
  bad["optimizer_step_s_per_parameter"]["sgd"] = -1;
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); })
            .rfind("p.json: optimizer_step_s_per_parameter.sgd: must be a non-negative number", 0) == 0);
  bad = pj;
  bad["optimizer_step_s_per_parameter"] = 3;
  CHECK(bad_input([&] { cost::profile_from_json(bad, "p.json"); })
            .rfind("p.json: optimizer_step_s_per_parameter: must be an object", 0) == 0);
}

TEST_CASE("tensor-parallel collectives: a ring all-reduce on the group's link, in place on a GPU") {
  // x -> TpCopy -> MatMul(W1) -> TpAllReduce -> out (the shapes of one rank of a group of 4)
  test::HandGraph h;
  int x = h.input("x", {8, 64});
  int w = h.param("w", {64, 32});
  int w0 = h.param("w0", {64, 64});
  int a = h.node("MatMul", "pre", {x, w0}, {8, 64});  // an activation, so that the copy's gradient flows
  int c = h.node("TpCopy", "copy", {a}, {8, 64});
  int y = h.node("MatMul", "mm", {c, w}, {8, 32});
  int r = h.node("TpAllReduce", "reduce", {y}, {8, 32});
  h.finish({r});
  cost::CostOptions opt;
  opt.loss = false;
  opt.tp_degree = 4;
  opt.tp_link = cost::LinkSpec{1e9, 1e-5};
  cost::GraphCost gc(h.g, 8, opt);
  const double ring_out = 2.0 * 3 / 4 * (8 * 32 * 4) / 1e9 + 6 * 1e-5;  // reduce's 1 KiB output
  const double ring_in = 2.0 * 3 / 4 * (8 * 64 * 4) / 1e9 + 6 * 1e-5;   // copy's gradient
  CHECK(cost::ring_allreduce_s(8 * 32 * 4, 4, opt.tp_link) == doctest::Approx(ring_out));
  CHECK(cost::ring_allreduce_s(1e6, 1, opt.tp_link) == 0);
  const auto gpu = device();
  auto tr = gc.node_time(3, 8, gpu);
  CHECK(tr.f == doctest::Approx(ring_out));  // in place: the link only
  auto tc = gc.node_time(1, 8, gpu);
  CHECK(tc.f == 0);                          // forward: a view
  CHECK(tc.b == doctest::Approx(ring_in));   // backward: the gradient all-reduced
  auto cpu = device();
  cpu.kind = "cpu";
  CHECK(gc.node_time(3, 8, cpu).f > ring_out);  // a CPU worker copies through its memory too
  CHECK(gc.node_time(1, 8, cpu).b > ring_in);
  // no group: no all-reduce
  cost::CostOptions one = opt;
  one.tp_degree = 1;
  cost::GraphCost g1(h.g, 8, one);
  CHECK(g1.node_time(3, 8, gpu).f == 0);
}
