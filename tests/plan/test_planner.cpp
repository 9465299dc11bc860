// The planner on the samples: the win over equal layers on the GPT, never slower than either
// baseline, the DP's memory constraint equal to the simulator's peak, recomputation,
// heterogeneous devices, infeasible and bad input, the plan file round trip.
#include "core/error.hpp"
#include "cost/calibration.hpp"
#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "graph/loader.hpp"
#include "plan/plan_io.hpp"
#include "plan/planner.hpp"
#include "plan/report.hpp"
#include "plan/sha256.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <functional>
#include <memory>
#include <string>

using namespace smp;
using nlohmann::json;

namespace {

std::string sample(const std::string& n) { return std::string(SMP_SOURCE_DIR) + "/sample_models/" + n + ".onnx"; }
std::string cluster_file(const std::string& f) { return std::string(SMP_SOURCE_DIR) + "/clusters/" + f + ".json"; }

// A fixed one-host cluster of `n` devices (test numbers, independent of the machine).
cost::Cluster fixed_cluster(int n, double memory = 8e9, double flops = 1e11, double bw = 2e10,
                            const std::string& kind = "cpu") {
  json j = {{"version", 1},
            {"name", "test"},
            {"hosts", {{{"name", "h"},
                        {"devices", {{{"kind", kind}, {"name", "dev"}, {"count", n}, {"memory_bytes", memory},
                                      {"peak_flops", {{"fp32", flops}, {"bf16", flops}}}, {"memory_bandwidth", bw},
                                      {"kernel_overhead_s", 2e-6}}}},
                        {"link", {{"bandwidth", 5e9}, {"latency", 1e-6}}}}}}};
  return cost::cluster_from_json(j, "test cluster");
}

// A calibration of 2 cores with one 1-thread table: every family's forward 1 us per 1e3 of work
// (linear above), its backward twice that; the given contention.
std::shared_ptr<cost::KernelCalibration> two_core_calibration(std::vector<double> compute, std::vector<double> memory) {
  auto cal = std::make_shared<cost::KernelCalibration>();
  cal->cpu = "test cpu";
  cal->cores = 2;
  cost::CalibrationTable t;
  t.threads = 1;
  for (auto& fam : t.curves) {
    fam[0].points = {{1e3, 1e-6}, {1e9, 1.0}};
    fam[1].points = {{1e3, 2e-6}, {1e9, 2.0}};
  }
  t.optimizer_s_per_parameter = {1e-9, 2e-9, 4e-9};
  cal->tables.push_back(t);
  cal->contention_compute = std::move(compute);
  cal->contention_memory = std::move(memory);
  return cal;
}

struct Setup {
  graph::Graph g;
  std::unique_ptr<cost::GraphCost> gc;
  cost::Cluster cl;
  plan::PlanInputs in() const { return plan::PlanInputs{&g, gc.get(), &cl}; }
  Setup(const std::string& model, int64_t batch, cost::Cluster c, cost::CostOptions copt = {}) : cl(std::move(c)) {
    graph::LoadOptions lo;
    lo.batch_size = batch;
    g = graph::load_graph(model, lo);
    gc = std::make_unique<cost::GraphCost>(g, batch, copt);
  }
};

plan::PlanOptions options(int64_t batch, int stages = 0, int dp = 0, int m = 0, const std::string& sched = "auto") {
  plan::PlanOptions o;
  o.batch_size = batch;
  o.stages = stages;
  o.data_parallel = dp;
  o.microbatches = m;
  o.schedule = sched;
  return o;
}

std::pair<ErrorKind, std::string> error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const smp::Error& e) {
    return {e.kind(), e.what()};
  }
  return {ErrorKind::Failure, ""};
}

void check_not_slower_than_baselines(const plan::Plan& p) {
  REQUIRE(p.prediction.fits);
  for (const auto& b : p.baselines) {
    if (!b.available || !b.prediction.fits) continue;
    INFO(b.name);
    CHECK(p.prediction.step_s <= b.prediction.step_s * (1 + 1e-12));
  }
}

}  // namespace

TEST_CASE("GPT sample on 4 stages: the plan beats equal layers visibly, and the report shows it") {
  Setup s(sample("gpt"), 32, fixed_cluster(4));
  auto o = options(32, 4, 1);
  plan::Plan p = plan::make_plan(s.in(), o);
  CHECK(p.stages == 4);
  CHECK(p.data_parallel == 1);
  CHECK(p.partition == "dp");
  check_not_slower_than_baselines(p);
  REQUIRE(p.baselines.size() == 2);
  const auto& el = p.baselines[0];
  REQUIRE(el.name == "equal-layers");
  REQUIRE(el.available);
  // equal layers put the 4096-way head on the last block's stage
  CHECK(el.prediction.step_s / p.prediction.step_s > 1.2);
  std::string report = plan::format_report(p, s.in());
  MESSAGE(report);
  CHECK(report.find("equal-layers") != std::string::npos);
  CHECK(report.find("equal-parameters") != std::string::npos);
  CHECK(report.find(fmt::format("plan speedup {:.2f}x", el.prediction.step_s / p.prediction.step_s)) != std::string::npos);
  CHECK(report.find("predicted step") != std::string::npos);
  CHECK(report.find("/head/MatMul") != std::string::npos);
  // every position but those between a weight and its Transpose (17 of them: 4 x 4 linears + head)
  CHECK(report.find("the DP saw 127 of 144 cut positions") != std::string::npos);
  json rj = plan::report_json(p, s.in());
  CHECK(rj["rows"].size() == 4);
  CHECK(rj["baselines"][0]["speedup"].get<double>() > 1.2);
  // the same with the schedule fixed to each generator
  for (std::string sched : {"gpipe", "1f1b", "zb-h1"}) {
    auto o2 = options(32, 4, 1, 8, sched);
    plan::Plan q = plan::make_plan(s.in(), o2);
    CHECK(q.schedule_name == sched);
    CHECK(q.microbatches == 8);
    check_not_slower_than_baselines(q);
    CHECK(q.baselines[0].prediction.step_s / q.prediction.step_s > 1.15);
  }
}

TEST_CASE("the DP's memory constraint and the simulator's peak agree") {
  for (std::string model : {"gpt", "mlp", "cnn"}) {
    for (std::string sched : {"gpipe", "1f1b", "zb-h1"}) {
      for (auto rec : {plan::RecomputePolicy::Never, plan::RecomputePolicy::Always}) {
        Setup s(sample(model), 64, fixed_cluster(4));
        auto o = options(64, 4, 1, 8, sched);
        o.recompute = rec;
        plan::Plan p = plan::make_plan(s.in(), o);
        auto checks = plan::check_memory_agreement(s.in(), p, o);
        REQUIRE(checks.size() == 4);
        for (const auto& c : checks) {
          INFO(model << " " << sched);
          CHECK(c.dp_bytes == doctest::Approx(c.sim_bytes).epsilon(1e-9));
          CHECK(c.recompute == (rec == plan::RecomputePolicy::Always));
        }
      }
    }
  }
  // interleaved: the DP's per-chunk bound is conservative (sums to at least the rank's peak)
  Setup s(sample("gpt"), 64, fixed_cluster(4));
  auto o = options(64, 4, 1, 8, "interleaved");
  plan::Plan p = plan::make_plan(s.in(), o);
  CHECK(p.chunks == 2);
  auto checks = plan::check_memory_agreement(s.in(), p, o);
  REQUIRE(checks.size() == 8);
  for (int r = 0; r < 4; ++r) {
    double dp = 0;
    for (int st = 0; st < 8; ++st)
      if (p.schedule.rank_of(st) == r) dp += checks[static_cast<size_t>(st)].dp_bytes;
    CHECK(dp >= checks[static_cast<size_t>(r)].sim_bytes * (1 - 1e-9));
  }
}

TEST_CASE("in-flight microbatches follow the schedule: gpipe m, 1f1b p - s") {
  Setup s(sample("mlp"), 64, fixed_cluster(4));
  auto o = options(64, 4, 1, 8, "gpipe");
  o.recompute = plan::RecomputePolicy::Never;
  plan::Plan g = plan::make_plan(s.in(), o);
  for (const auto& st : g.stage_plans)
    CHECK(st.peak_bytes == doctest::Approx(st.static_bytes + 8 * st.act_bytes + st.workspace_bytes));
  o.schedule = "1f1b";
  plan::Plan f = plan::make_plan(s.in(), o);
  for (const auto& st : f.stage_plans)
    CHECK(st.peak_bytes == doctest::Approx(st.static_bytes + (4 - st.index) * st.act_bytes + st.workspace_bytes));
}

TEST_CASE("messages between CPU workers on one host cost the workers their copies; GPUs leave them to the link") {
  const double bw = 2e10, link_bw = 5e9, latency = 1e-6;  // fixed_cluster's
  auto event = [](const schedule::SimResult& r, schedule::EventKind kind, const std::string& a) {
    for (const auto& e : r.events)
      if (e.kind == kind && schedule::to_string(e.action) == a) return e;
    FAIL("no event " << a);
    return schedule::Event{};
  };
  for (std::string kind : {"cpu", "gpu"}) {
    CAPTURE(kind);
    Setup s(sample("mlp"), 8, fixed_cluster(2, 8e9, 1e11, bw, kind));
    auto o = options(8, 2, 1, 1, "1f1b");
    plan::Plan p = plan::make_plan(s.in(), o);
    schedule::SimResult r = plan::simulate_plan(s.in(), p, o);
    const double act = p.stage_plans.at(0).send_bytes;
    REQUIRE(act > 0);
    auto f0 = event(r, schedule::EventKind::Compute, "0F0");
    auto tr = event(r, schedule::EventKind::Transfer, "0SF0>1");
    auto f1 = event(r, schedule::EventKind::Compute, "1F0");
    if (kind == "cpu") {
      // rank 0 packs the activations, the link adds its latency, rank 1 copies them over and unpacks
      CHECK(tr.start_s == doctest::Approx(f0.end_s + act / bw));
      CHECK(tr.end_s - tr.start_s == doctest::Approx(latency));
      CHECK(f1.start_s == doctest::Approx(tr.end_s + act / link_bw + act / bw));
    } else {
      CHECK(tr.start_s == doctest::Approx(f0.end_s));
      CHECK(tr.end_s - tr.start_s == doctest::Approx(latency + act / link_bw));
      CHECK(f1.start_s == doctest::Approx(tr.end_s));
    }
  }
}

TEST_CASE("data-parallel gradient sums: a ring at the link's all-reduce bandwidth; CPU workers also copy them in and out") {
  const double bw = 2e10, link_bw = 5e9, latency = 1e-6;
  for (std::string kind : {"cpu", "gpu"})
    for (double ar_bw : {0.0, 1e9}) {
      CAPTURE(kind);
      CAPTURE(ar_bw);
      cost::Cluster cl = fixed_cluster(2, 8e9, 1e11, bw, kind);
      json j = cl.source;
      if (ar_bw > 0) j["hosts"][0]["link"]["allreduce_bandwidth"] = ar_bw;
      Setup s(sample("mlp"), 8, cost::cluster_from_json(j, "test cluster"));
      plan::Plan p = plan::make_plan(s.in(), options(8, 1, 2, 1, "gpipe"));
      REQUIRE(p.data_parallel == 2);
      const double bytes = p.stage_plans.at(0).param_bytes;
      REQUIRE(bytes > 0);
      // 2 ranks: 2 (n - 1) / n = 1 of the bytes over the bus bandwidth, 2 (n - 1) latencies
      const double ring = bytes / (ar_bw > 0 ? ar_bw : link_bw) + 2 * latency;
      // a CPU worker packs its gradients into one buffer and copies the sum back (3 passes)
      const double copies = kind == "cpu" ? 3 * bytes / bw : 0.0;
      CHECK(p.prediction.allreduce_s == doctest::Approx(ring + copies));
    }
}

TEST_CASE("workers sharing a calibrated machine: a step never takes less than its CPU work over the cores") {
  // 4 one-thread workers on a calibration of 2 cores. The simulator slows every action by the
  // average number of busy workers; zb-h1 fills its bubbles with deferred weight gradients, which
  // on a shared machine only move work from one worker to another (the cores are busy anyway).
  auto cal = two_core_calibration({1.0, 1.1}, {1.0, 1.3});
  // What the calibration's ring of 4 workers on 2 cores lost beyond its CPU work: x1.5 with 2
  // tokens (one core's worth each), x1.2 with 4.
  cal->oversubscription = {1.5, 1.2};
  cost::Cluster cl = fixed_cluster(4);
  for (auto& k : cl.kinds) {
    k.calibration = cal;
    k.threads = 1;
  }
  Setup s(sample("gpt"), 16, cl);
  for (std::string sched : {"gpipe", "1f1b", "zb-h1"}) {
    CAPTURE(sched);
    auto o = options(16, 4, 1, 4, sched);
    o.tensor_parallel = 1;
    plan::Plan p = plan::make_plan(s.in(), o);
    REQUIRE(p.stage_plans.size() == 4);
    // The stages' times carry the time-slicing of p m / (m + p - 1) busy workers on 2 cores (the
    // update, of all 4); without it, their sum is the CPU work.
    const double busy = 4.0 * 4 / (4 + 4 - 1), slice = busy / 2, slice_u = 4.0 / 2;
    double cpu = 0;
    for (const auto& sp : p.stage_plans) cpu += 4 * (sp.f_s + sp.b_s + sp.w_s) / slice + sp.update_s / slice_u;
    // 4 workers on 2 cores, busy / cores = 8 / 7 of the way from 1 to 2: the ring's factor there.
    const double over = 1.5 + (busy / 2 - 1) * (1.2 - 1.5);
    CHECK(p.prediction.step_s >= cpu / 2 * over * (1 - 1e-9));
    CHECK(p.prediction.samples_per_s == doctest::Approx(16 / p.prediction.step_s));
    // Where the cores bind, the plan says so.
    bool noted = false;
    for (const auto& n : p.notes) noted = noted || n.find("the step is bound by this machine's cores") != std::string::npos;
    CHECK(noted == p.prediction.cores_bound);
    if (sched == "zb-h1") CHECK(p.prediction.cores_bound);
  }
}

TEST_CASE("a profile's many-in-flight times apply as the stage keeps more microbatches' activations") {
  // Every node measured at 1 ms forward with one microbatch in flight, 3 ms with 4 (backward 0).
  Setup probe(sample("mlp"), 16, fixed_cluster(2));
  json nodes = json::object();
  for (const auto& n : probe.g.nodes)
    nodes[n.name] = {{"forward_s", 1e-3}, {"backward_input_s", 0.0}, {"backward_weight_s", 0.0},
                     {"in_flight", {{"forward_s", 3e-3}, {"backward_input_s", 0.0}, {"backward_weight_s", 0.0}}}};
  const std::string dev = fixed_cluster(2).kinds.at(0).name;
  cost::Profile prof = cost::profile_from_json(
      json{{"version", 1}, {"device", {{"name", dev}}}, {"microbatch_size", 4}, {"in_flight_microbatches", 4}, {"nodes", nodes}},
      "p.json");
  cost::CostOptions copt;
  copt.profile = &prof;
  Setup s(sample("mlp"), 16, fixed_cluster(2), copt);
  const double N = static_cast<double>(s.g.nodes.size());
  auto o = options(16, 1, 1, 4, "gpipe");  // one stage: all 4 microbatches in flight
  o.recompute = plan::RecomputePolicy::Never;
  CHECK(plan::make_plan(s.in(), o).stage_plans.at(0).f_s == doctest::Approx(3e-3 * N));
  o.schedule = "1f1b";  // one stage: one in flight
  CHECK(plan::make_plan(s.in(), o).stage_plans.at(0).f_s == doctest::Approx(1e-3 * N));
  // Two stages under gpipe: each keeps 4 microbatches of its own (smaller) activations, so its
  // times lie between the two, by (4 x its activations - the whole model's) / (3 x the whole's).
  auto o2 = options(16, 2, 1, 4, "gpipe");
  o2.recompute = plan::RecomputePolicy::Never;
  plan::Plan p2 = plan::make_plan(s.in(), o2);
  const double whole = s.gc->stage_memory(0, s.gc->nodes(), 4).act.at(4);
  int between = 0;
  for (const auto& st : p2.stage_plans) {
    CAPTURE(st.index);
    const double act = s.gc->stage_memory(st.begin, st.end, 4).act.at(4);
    const double x = std::clamp((4 * act - whole) / (3 * whole), 0.0, 1.0);
    between += x > 0 && x < 1;
    CHECK(st.f_s == doctest::Approx((1e-3 + x * 2e-3) * (st.end - st.begin)));
  }
  CHECK(between >= 1);  // the case is not only the two ends
}

TEST_CASE("each rank's optimizer step ends its step: per stage from its parameters, measured or estimated") {
  Setup probe(sample("mlp"), 16, fixed_cluster(2));
  json nodes = json::object();
  for (const auto& n : probe.g.nodes) nodes[n.name] = {{"forward_s", 1e-3}, {"backward_input_s", 1e-3}, {"backward_weight_s", 1e-3}};
  const cost::DeviceSpec dev = fixed_cluster(2).kinds.at(0);
  auto plan_with = [&](double per_param, cost::Optimizer optimizer) {
    json pj{{"version", 1}, {"device", {{"name", dev.name}}}, {"microbatch_size", 4}, {"nodes", nodes}};
    if (per_param >= 0) pj["optimizer_step_s_per_parameter"] = {{"sgd", per_param}};
    auto prof = std::make_shared<cost::Profile>(cost::profile_from_json(pj, "p.json"));
    cost::CostOptions copt;
    copt.profile = prof.get();
    copt.optimizer = optimizer;
    Setup s(sample("mlp"), 16, fixed_cluster(2), copt);
    auto o = options(16, 2, 1, 4, "1f1b");
    o.recompute = plan::RecomputePolicy::Never;
    plan::Plan p = plan::make_plan(s.in(), o);
    for (const auto& st : p.stage_plans) {
      CAPTURE(st.index);
      CHECK(st.update_s == doctest::Approx(s.gc->optimizer_step_s(st.param_bytes, dev)));
      if (per_param >= 0 && optimizer == cost::Optimizer::SGD) CHECK(st.update_s == doctest::Approx(st.param_bytes / 4 * per_param));
    }
    return std::pair{p, prof};
  };
  const auto [none, p0] = plan_with(0.0, cost::Optimizer::SGD);
  const auto [slow, p1] = plan_with(1e-6, cost::Optimizer::SGD);
  double lo = 1e30, hi = 0;
  for (const auto& st : slow.stage_plans) lo = std::min(lo, st.update_s), hi = std::max(hi, st.update_s);
  REQUIRE(lo > 0);
  CHECK(none.prediction.update_s == 0);
  CHECK(slow.prediction.update_s == doctest::Approx(hi));
  // Every rank's end moves by its own step: the step by between the smallest and the largest.
  CHECK(slow.prediction.step_s - none.prediction.step_s >= lo * (1 - 1e-9));
  CHECK(slow.prediction.step_s - none.prediction.step_s <= hi * (1 + 1e-9));
  // Not measured for adamw: the roofline, with two state tensors more than sgd's.
  const auto [adam, p2] = plan_with(-1, cost::Optimizer::AdamW);
  const auto [sgd, p3] = plan_with(-1, cost::Optimizer::SGD);
  CHECK(adam.prediction.update_s > sgd.prediction.update_s);
}

TEST_CASE("recomputation where memory needs it; nothing fits says what would") {
  // GPT at batch 64 on 4 devices: find a memory size where only recomputation fits.
  Setup big(sample("gpt"), 64, fixed_cluster(4));
  auto o = options(64, 4, 1, 4, "gpipe");
  o.recompute = plan::RecomputePolicy::Never;
  plan::Plan never = plan::make_plan(big.in(), o);
  double peak = never.prediction.peak_max();
  o.recompute = plan::RecomputePolicy::Always;
  plan::Plan always = plan::make_plan(big.in(), o);
  double peak_rc = always.prediction.peak_max();
  REQUIRE(peak_rc < peak);
  Setup tight(sample("gpt"), 64, fixed_cluster(4, (peak + peak_rc) / 2));
  o.recompute = plan::RecomputePolicy::Auto;
  plan::Plan a = plan::make_plan(tight.in(), o);
  CHECK(a.prediction.fits);
  int rc = 0;
  for (const auto& st : a.stage_plans) rc += st.recompute;
  CHECK(rc >= 1);
  CHECK(a.prediction.peak_max() <= (peak + peak_rc) / 2);
  // never: nothing fits at that size
  o.recompute = plan::RecomputePolicy::Never;
  auto [kind, msg] = error_of([&] { plan::make_plan(tight.in(), o); });
  CHECK(kind == ErrorKind::Failure);
  CHECK(msg.find("no plan fits in memory") != std::string::npos);
  CHECK(msg.find("needs") != std::string::npos);
  CHECK(msg.find("--recompute auto") != std::string::npos);
  // 1 MB devices: not even the weights fit; say how many devices would
  Setup tiny(sample("gpt"), 64, fixed_cluster(4, 1e6));
  auto [k2, m2] = error_of([&] { plan::make_plan(tiny.in(), options(64)); });
  CHECK(k2 == ErrorKind::Failure);
  CHECK(m2.find("needs at least") != std::string::npos);
  CHECK(m2.find("devices of") != std::string::npos);
}

TEST_CASE("bad input: more stages than nodes, a batch not divisible, impossible degrees") {
  Setup s(sample("mlp"), 32, fixed_cluster(4));
  auto e1 = error_of([&] { plan::make_plan(s.in(), options(32, 12, 1)); });
  CHECK(e1.first == ErrorKind::BadInput);
  CHECK(e1.second.rfind("--stages: 12 stages for a graph of 11 nodes", 0) == 0);
  auto e2 = error_of([&] { plan::make_plan(s.in(), options(32, 0, 0, 3)); });
  CHECK(e2.first == ErrorKind::BadInput);
  CHECK(e2.second.rfind("--microbatches: the batch of 32 is not divisible into 3 microbatches", 0) == 0);
  auto e3 = error_of([&] { plan::make_plan(s.in(), options(32, 4, 2)); });
  CHECK(e3.first == ErrorKind::BadInput);
  CHECK(e3.second.find("need 8 devices, the cluster has 4") != std::string::npos);
  auto e4 = error_of([&] { plan::make_plan(s.in(), options(32, 0, 3)); });
  CHECK(e4.second.rfind("--data-parallel", 0) == 0);
  auto o6 = options(32, 2, 1, 4, "1f1b");
  o6.chunks = 2;
  auto e6 = error_of([&] { plan::make_plan(s.in(), o6); });
  CHECK(e6.second.rfind("--chunks: 1f1b runs one stage per rank", 0) == 0);
  auto e5 = error_of([&] { plan::make_plan(s.in(), options(32, 0, 0, 0, "pipedream")); });
  CHECK(e5.second.rfind("--schedule: unknown schedule 'pipedream'", 0) == 0);
}

TEST_CASE("every sample on every example cluster: a plan, never slower than either baseline") {
  for (std::string model : {"mlp", "cnn", "gpt"})
    for (std::string c : {"local-cpu", "a100-2x8", "h100-16x8", "h100-128x8", "hetero-h100-a100"}) {
      INFO(model << " on " << c);
      Setup s(sample(model), 1024, cost::read_cluster(cluster_file(c)));
      plan::Plan p = plan::make_plan(s.in(), options(1024));
      check_not_slower_than_baselines(p);
      CHECK(p.stages * p.data_parallel * p.tensor_parallel == p.devices_used);
      CHECK(p.device_of_rank.size() == static_cast<size_t>(p.devices_used));
    }
}

TEST_CASE("heterogeneous devices: the faster ones get the larger stages") {
  // 16 stages over 8 H100 (slots 0-7) and 8 A100 (slots 8-15); compute-bound microbatches.
  Setup s(sample("gpt"), 1024, cost::read_cluster(cluster_file("hetero-h100-a100")));
  auto o = options(1024, 16, 1, 16, "1f1b");
  plan::Plan p = plan::make_plan(s.in(), o);
  REQUIRE(p.stages == 16);
  // Work measured on one reference device (an A100): the H100 stages hold more of it.
  const auto& ref = s.cl.spec(15);
  double fast = 0, slow = 0;
  for (const auto& st : p.stage_plans) {
    double t = 0;
    for (int n = st.begin; n < st.end; ++n) t += s.gc->node_time(n, p.microbatch_size, ref).total();
    (s.cl.spec(p.device_of_rank[static_cast<size_t>(st.pipeline_rank)]).name == "H100-SXM5-80GB" ? fast : slow) += t;
  }
  MESSAGE("reference time on the H100 stages " << fast << " s, on the A100 stages " << slow << " s");
  CHECK(fast > 1.5 * slow);
  check_not_slower_than_baselines(p);
}

TEST_CASE("plan file: written, read back, checksummed") {
  Setup s(sample("gpt"), 32, fixed_cluster(4));
  auto o = options(32, 2, 2);
  plan::Plan p = plan::make_plan(s.in(), o);
  plan::PlanContext ctx;
  ctx.model_sha256 = plan::sha256_file(sample("gpt"));
  json j = plan::plan_to_json(p, s.in(), o, ctx);
  plan::PlanFile f = plan::plan_from_json(j, "plan.json");
  CHECK(f.stages == 2);
  CHECK(f.data_parallel == 2);
  CHECK(f.batch_size == 32);
  CHECK(f.microbatches * f.microbatch_size * f.data_parallel == 32);
  REQUIRE(f.stage.size() == 2);
  CHECK(f.stage[0].nodes.front() == s.g.nodes.front().name);
  CHECK(f.stage[1].nodes.back() == s.g.nodes.back().name);
  CHECK(f.stage[0].nodes.size() + f.stage[1].nodes.size() == s.g.nodes.size());
  CHECK(f.stage[0].inputs.size() == 1);  // input_ids
  CHECK(f.stage[0].inputs[0].peer == -1);
  CHECK(f.stage[0].inputs[0].shape[0] == f.microbatch_size);
  REQUIRE(!f.stage[1].inputs.empty());
  CHECK(f.stage[1].inputs[0].peer == 0);
  CHECK(f.stage[0].outputs[0].peer == 1);
  CHECK(f.ranks.size() == 4);
  CHECK(f.ranks[3].replica == 1);
  CHECK(f.ranks[3].pipeline_rank == 1);
  CHECK(f.stage[1].ranks == std::vector<int>{1, 3});
  CHECK(f.schedule.lowered());
  size_t params = 0;
  for (const auto& st : f.stage) params += st.parameters.size();
  CHECK(params == s.g.parameters.size());
  plan::check_model_checksum(f, sample("gpt"));
  auto e = error_of([&] { plan::check_model_checksum(f, sample("mlp")); });
  CHECK(e.first == ErrorKind::BadInput);
  json bad = j;
  bad["degrees"]["pipeline"] = 3;
  auto e2 = error_of([&] { plan::plan_from_json(bad, "plan.json"); });
  CHECK(e2.first == ErrorKind::BadInput);
  bad = j;
  bad["stages"][0].erase("nodes");
  auto e3 = error_of([&] { plan::plan_from_json(bad, "plan.json"); });
  CHECK(e3.second.rfind("plan.json: stages[0].nodes: missing", 0) == 0);
}

TEST_CASE("coarsening keeps the narrowest cut positions up to the cap") {
  Setup s(sample("gpt"), 8, fixed_cluster(2));
  auto all = plan::candidate_positions(*s.gc, 1000);
  size_t free_positions = 0;
  for (int q = 1; q < static_cast<int>(s.g.nodes.size()); ++q) free_positions += s.gc->cut_fixed_tensors(q) == 0;
  CHECK(all.size() == free_positions);
  CHECK(free_positions == s.g.nodes.size() - 1 - 17);
  for (int q : all) CHECK(s.gc->cut_fixed_tensors(q) == 0);
  auto few = plan::candidate_positions(*s.gc, 20);
  CHECK(few.size() <= 20);
  CHECK(few.size() >= 5);
  for (size_t i = 1; i < few.size(); ++i) CHECK(few[i - 1] < few[i]);
  // the block boundaries (only the residual stream crosses) are among them
  int min_cross = 1 << 30;
  for (int q : all) min_cross = std::min(min_cross, s.gc->cut_tensors(q));
  for (int q : few) CHECK(s.gc->cut_tensors(q) <= 2);
}

TEST_CASE("on the real cost model the DP finds the brute-force optimum too") {
  int checked = 0;
  for (std::string model : {"mlp", "cnn"})
    for (int stages : {2, 3, 4})
      for (std::string sched : {"gpipe", "1f1b", "zb-h1"})
        for (double mem : {8e9, 3e6}) {
          Setup s(sample(model), 64, fixed_cluster(stages, mem));
          auto o = options(64, stages, 1, 8, sched);
          plan::Plan p;
          try {
            p = plan::make_plan(s.in(), o);
          } catch (const smp::Error&) {
            continue;  // nothing fits: covered elsewhere
          }
          auto r = plan::dp_against_brute_force(s.in(), p, o);
          INFO(model << " " << stages << " stages " << sched << " memory " << mem);
          CHECK(r.dp == doctest::Approx(r.brute_force).epsilon(1e-12));
          ++checked;
        }
  CHECK(checked >= 12);
}

// ---- tensor parallelism and optimizer-state sharding ------------------------------------------

TEST_CASE("tensor parallelism: the ranks of a group are consecutive, on consecutive devices of a host") {
  Setup s(sample("gpt"), 32, fixed_cluster(8));
  auto o = options(32, 2, 2, 4, "1f1b");
  o.tensor_parallel = 2;
  plan::Plan p = plan::make_plan(s.in(), o);
  REQUIRE(p.tensor_parallel == 2);
  REQUIRE(p.tp);
  const plan::RankLayout L = p.rank_layout();
  CHECK(L.size() == 8);
  REQUIRE(p.device_of_rank.size() == 8);
  for (int q = 0; q < 8; ++q) {
    auto c = L.coords(q);
    CHECK(L.rank(c.replica, c.pipeline_rank, c.tp_rank) == q);
    CHECK(c.tp_rank == q % 2);
    CHECK(p.device_of_rank[static_cast<size_t>(q)] == p.device_of_rank[static_cast<size_t>(L.rank(c.replica, c.pipeline_rank, 0))] + c.tp_rank);
  }
  CHECK(L.tp_group(1, 0) == std::vector<int>{4, 5});
  CHECK(L.dp_group(1, 1) == std::vector<int>{3, 7});
  // The stages run rank 0's graph: split parameters, the inserted all-reduces among the nodes.
  const plan::PlanInputs ein = plan::plan_inputs(p, s.in());
  int tp_nodes = 0;
  for (const auto& n : ein.graph->nodes) tp_nodes += n.op_type == "TpCopy" || n.op_type == "TpAllReduce";
  CHECK(tp_nodes == 18);
  CHECK(p.stage_plans.back().end == static_cast<int>(ein.graph->nodes.size()));
  int64_t local = 0;
  for (const auto& sp : p.stage_plans) local += sp.params;
  const auto& a = p.tp->analysis;
  CHECK(local == a.sharded_params / 2 + a.replicated_params);
  // the DP's memory constraint still equals the simulator's peak
  for (const auto& c : plan::check_memory_agreement(s.in(), p, o)) CHECK(c.dp_bytes == doctest::Approx(c.sim_bytes).epsilon(1e-9));
  // the plan file
  plan::PlanContext ctx;
  ctx.model_sha256 = plan::sha256_file(sample("gpt"));
  json j = plan::plan_to_json(p, s.in(), o, ctx);
  CHECK(j["degrees"]["tensor_parallel"] == 2);
  CHECK(j["degrees"]["ranks"] == 8);
  CHECK(j["tensor_parallel"]["groups"].size() == 10);
  CHECK(j["model"]["nodes"] == static_cast<int>(s.g.nodes.size()));
  plan::PlanFile f = plan::plan_from_json(j, "plan.json");
  CHECK(f.tensor_parallel == 2);
  REQUIRE(f.ranks.size() == 8);
  CHECK(f.ranks[5].tp_rank == 1);
  CHECK(f.ranks[5].replica == 1);
  CHECK(f.stage[1].ranks == std::vector<int>{2, 3, 6, 7});
  bool copy_named = false;
  for (const auto& n : f.stage[0].nodes) copy_named |= n.find("/tp_copy") != std::string::npos;
  CHECK(copy_named);
  json bad = j;
  bad["ranks"][5]["tp_rank"] = 0;
  auto e = error_of([&] { plan::plan_from_json(bad, "plan.json"); });
  CHECK(e.second.rfind("plan.json: ranks[5].rank:", 0) == 0);
  std::string report = plan::format_report(p, s.in());
  CHECK(report.find("x 2 tensor-parallel") != std::string::npos);
  CHECK(report.find("tensor    2-way within each host") != std::string::npos);
}

TEST_CASE("on a calibrated machine a tensor-parallel group's ranks count as busy workers, all computing at once") {
  // 4 one-thread workers on a calibration of 2 cores; one stage, one replica, TP 2, one
  // microbatch: 2 workers compute at once, so every node runs at the 2-copy contention (compute
  // x 1.1, memory-bound x 1.5) against a calibration without contention. Counted as one busy
  // worker (the group as one device), the two would price the same.
  auto stage_times = [](std::vector<double> compute, std::vector<double> memory) {
    auto cal = two_core_calibration(std::move(compute), std::move(memory));
    cost::Cluster cl = fixed_cluster(4);
    for (auto& k : cl.kinds) {
      k.calibration = cal;
      k.threads = 1;
    }
    Setup s(sample("gpt"), 8, cl);
    auto o = options(8, 1, 1, 1, "1f1b");
    o.tensor_parallel = 2;
    plan::Plan p = plan::make_plan(s.in(), o);
    REQUIRE(p.tensor_parallel == 2);
    REQUIRE(p.stage_plans.size() == 1);
    return std::pair{p.stage_plans[0].f_s + p.stage_plans[0].b_s + p.stage_plans[0].w_s, p.stage_plans[0].update_s};
  };
  const auto alone = stage_times({1.0, 1.0}, {1.0, 1.0});
  const auto shared = stage_times({1.0, 1.1}, {1.0, 1.5});
  const double ratio = shared.first / alone.first;
  CHECK(ratio > 1.1 - 1e-9);
  CHECK(ratio < 1.5 + 1e-9);
  // the optimizer step (memory-bound) too
  CHECK(shared.second == doctest::Approx(alone.second * 1.5));
}

TEST_CASE("tensor parallelism: searched over 1, 2, 4, 8 within a host; impossible degrees are bad input") {
  Setup s(sample("gpt"), 1024, cost::read_cluster(cluster_file("h100-16x8")));
  plan::Plan p = plan::make_plan(s.in(), options(1024));
  CHECK(p.degrees_searched == std::vector<int>{1, 2, 4, 8});
  CHECK(p.prediction.fits);
  for (int T : {1, 2, 4, 8}) {
    auto o = options(1024);
    o.tensor_parallel = T;
    plan::Plan q = plan::make_plan(s.in(), o);
    INFO("T = ", T);
    CHECK(q.tensor_parallel == T);
    CHECK(p.prediction.step_s <= q.prediction.step_s * (1 + 1e-9));  // the search keeps the fastest
  }
  Setup t(sample("gpt"), 32, fixed_cluster(8));
  auto o3 = options(32);
  o3.tensor_parallel = 3;
  auto e3 = error_of([&] { plan::make_plan(t.in(), o3); });
  CHECK(e3.first == ErrorKind::BadInput);
  CHECK(e3.second.rfind("--tensor-parallel: 3: host h has 8 devices, not a multiple of 3", 0) == 0);
  auto o16 = options(32);
  o16.tensor_parallel = 16;
  auto e16 = error_of([&] { plan::make_plan(t.in(), o16); });
  CHECK(e16.second.rfind("--tensor-parallel: 16 ranks per group, the cluster has 8 devices", 0) == 0);
}

TEST_CASE("optimizer-state sharding: the memory model knows it, and auto uses it where a plan fits only with it") {
  Setup s(sample("gpt"), 32, fixed_cluster(4));
  auto o = options(32, 1, 4, 2, "gpipe");
  o.tensor_parallel = 1;
  o.recompute = plan::RecomputePolicy::Never;
  o.shard_optimizer = plan::ShardOptimizer::Never;
  plan::Plan whole = plan::make_plan(s.in(), o);
  o.shard_optimizer = plan::ShardOptimizer::Always;
  plan::Plan split = plan::make_plan(s.in(), o);
  CHECK_FALSE(whole.shard_optimizer);
  CHECK(split.shard_optimizer);
  // adamw: weights + gradients + 2x state; split over 4 replicas: 2 + 2/4
  const double P = whole.stage_plans[0].param_bytes;
  CHECK(whole.stage_plans[0].static_bytes == doctest::Approx(4 * P));
  CHECK(split.stage_plans[0].static_bytes == doctest::Approx(2.5 * P));
  CHECK(split.prediction.peak_max() == doctest::Approx(whole.prediction.peak_max() - 1.5 * P));
  CHECK(split.stage_plans[0].update_s < whole.stage_plans[0].update_s);
  // A device between the two peaks: only the split state fits; auto takes it and says so.
  const double cap = (whole.prediction.peak_max() + split.prediction.peak_max()) / 2;
  Setup tight(sample("gpt"), 32, fixed_cluster(4, cap));
  o.shard_optimizer = plan::ShardOptimizer::Auto;
  plan::Plan p = plan::make_plan(tight.in(), o);
  CHECK(p.shard_optimizer);
  bool noted = false;
  for (const auto& n : p.notes) noted |= n.find("does not fit without it") != std::string::npos;
  CHECK(noted);
  o.shard_optimizer = plan::ShardOptimizer::Never;
  auto e = error_of([&] { plan::make_plan(tight.in(), o); });
  CHECK(e.first == ErrorKind::Failure);
  // with room to spare, auto leaves the state whole
  o.shard_optimizer = plan::ShardOptimizer::Auto;
  CHECK_FALSE(plan::make_plan(s.in(), o).shard_optimizer);
}

TEST_CASE("Megatron's usual layout is priced beside the plan") {
  Setup s(sample("gpt"), 1024, cost::read_cluster(cluster_file("h100-16x8")));
  plan::Plan p = plan::make_plan(s.in(), options(1024));
  const auto& m = p.megatron;
  REQUIRE(m.available);
  CHECK(m.tensor_parallel == 8);  // a host's devices
  CHECK(m.stages * m.data_parallel * m.tensor_parallel == 128);
  CHECK(m.microbatches * m.data_parallel == 1024);  // microbatches of one sample
  CHECK(m.prediction.fits);
  CHECK(p.prediction.step_s <= m.prediction.step_s * (1 + 1e-9));
  CHECK(plan::format_report(p, s.in()).find("megatron") != std::string::npos);
}
