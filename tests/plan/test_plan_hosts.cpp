// Planning for several hosts: the link between two hosts is priced by the cluster file, so a
// pipeline over 2 hosts crosses between them where the fewest bytes flow, and keeps its heavier
// boundaries inside a host; on one host the same model is cut elsewhere. The example multi-host
// cluster descriptions plan the same way.
#include "../cost/hand_graph.hpp"

#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "plan/planner.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>

using namespace smp;
using nlohmann::json;

namespace {

// A chain of equal blocks ([B, 1024] -> MatMul 1024x1024 -> Relu), with a bottleneck
// ([B, 1024] -> [B, 8] -> [B, 1024]) after block `narrow_after`: the one narrow boundary.
graph::Graph hourglass(int64_t batch, int blocks, int narrow_after) {
  test::HandGraph h;
  int x = h.input("x", {batch, 1024});
  for (int b = 0; b < blocks; ++b) {
    int w = h.param(fmt::format("w{}", b), {1024, 1024});
    x = h.node("MatMul", fmt::format("mm{}", b), {x, w}, {batch, 1024});
    x = h.node("Relu", fmt::format("relu{}", b), {x}, {batch, 1024});
    if (b == narrow_after) {
      int down = h.param("down", {1024, 8}), up = h.param("up", {8, 1024});
      x = h.node("MatMul", "squeeze", {x, down}, {batch, 8});
      x = h.node("MatMul", "expand", {x, up}, {batch, 1024});
    }
  }
  return h.finish({x});
}

// `hosts` hosts of `per_host` GPUs; within a host 300 GB/s, between hosts `between` bytes/s.
cost::Cluster gpus(int hosts, int per_host, double between) {
  json dev = {{"kind", "gpu"},         {"name", "gpu"},
              {"count", per_host},     {"memory_bytes", 40e9},
              {"peak_flops", {{"fp32", 20e12}, {"bf16", 300e12}}},
              {"memory_bandwidth", 1.5e12}, {"kernel_overhead_s", 5e-6}};
  json j = {{"version", 1},
            {"name", "test"},
            {"hosts", {{{"name", "node"}, {"count", hosts}, {"devices", {dev}}, {"link", {{"bandwidth", 300e9}, {"latency", 3e-6}}}}}},
            {"interconnect", {{"bandwidth", between}, {"latency", 5e-6}}}};
  return cost::cluster_from_json(j, "test cluster");
}

struct Boundary {
  int after_stage;
  double bytes;  // activations per microbatch
  bool crosses;  // between two hosts
};

std::vector<Boundary> boundaries(const plan::Plan& p, const cost::Cluster& cl) {
  std::vector<Boundary> out;
  for (size_t s = 0; s + 1 < p.stage_plans.size(); ++s) {
    const int d0 = p.device_of_rank.at(static_cast<size_t>(p.stage_plans[s].pipeline_rank));
    const int d1 = p.device_of_rank.at(static_cast<size_t>(p.stage_plans[s + 1].pipeline_rank));
    out.push_back({static_cast<int>(s), p.stage_plans[s].send_bytes,
                   cl.devices[static_cast<size_t>(d0)].host != cl.devices[static_cast<size_t>(d1)].host});
  }
  return out;
}

plan::Plan plan_on(const graph::Graph& g, const cost::Cluster& cl, int64_t batch, int stages) {
  cost::GraphCost gc(g, batch, {});
  plan::PlanOptions o;
  o.batch_size = batch;
  o.stages = stages;
  o.data_parallel = 1;
  o.microbatches = 8;
  o.schedule = "1f1b";
  return plan::make_plan(plan::PlanInputs{&g, &gc, &cl}, o);
}

}  // namespace

TEST_CASE("a 2-host pipeline crosses between the hosts at its lightest boundary; on one host it need not") {
  const int64_t batch = 512;
  // The bottleneck after block 2: an even split (2 blocks per stage) would cut after blocks 1,
  // 3 and 5, all wide.
  graph::Graph g = hourglass(batch, 8, 2);
  const cost::Cluster two = gpus(2, 2, 1e9), one = gpus(1, 4, 1e9);

  plan::Plan p2 = plan_on(g, two, batch, 4);
  auto b2 = boundaries(p2, two);
  REQUIRE(b2.size() == 3);
  int crossing = 0;
  double lightest = b2[0].bytes, heaviest_inside = 0, crossing_bytes = 0;
  for (const auto& b : b2) {
    lightest = std::min(lightest, b.bytes);
    if (b.crosses) ++crossing, crossing_bytes = b.bytes;
    else heaviest_inside = std::max(heaviest_inside, b.bytes);
  }
  REQUIRE(crossing == 1);
  MESSAGE("2 hosts: crossing boundary " << crossing_bytes << " B per microbatch, heaviest inside a host " << heaviest_inside << " B");
  CHECK(crossing_bytes == lightest);
  CHECK(crossing_bytes < heaviest_inside);

  // One host, the same links everywhere: no boundary is worth its imbalance.
  plan::Plan p1 = plan_on(g, one, batch, 4);
  double lightest1 = 1e300;
  for (const auto& b : boundaries(p1, one)) lightest1 = std::min(lightest1, b.bytes);
  MESSAGE("1 host: lightest boundary " << lightest1 << " B per microbatch");
  CHECK(lightest1 > crossing_bytes);
  CHECK(p2.bounds != p1.bounds);
}

TEST_CASE("the example multi-host clusters price the link between hosts from their files") {
  for (std::string name : {"a100-2x8", "h100-16x8", "h100-128x8", "hetero-h100-a100"}) {
    INFO(name);
    cost::Cluster cl = cost::read_cluster(std::string(SMP_SOURCE_DIR) + "/clusters/" + name + ".json");
    REQUIRE(cl.hosts.size() >= 2);
    // The first device of the first two hosts, and two devices of the first host.
    int a = 0, b = -1, c = 1;
    for (int d = 0; d < cl.size(); ++d)
      if (cl.devices[static_cast<size_t>(d)].host == 1) {
        b = d;
        break;
      }
    REQUIRE(b > 0);
    const json& src = cl.source;
    CHECK(cl.link(a, b).bandwidth == src["interconnect"]["bandwidth"].get<double>());
    CHECK(cl.link(a, b).latency == src["interconnect"]["latency"].get<double>());
    CHECK(cl.link(a, c).bandwidth == src["hosts"][0]["link"]["bandwidth"].get<double>());
    CHECK(cl.link(a, b).time(1e9) > cl.link(a, c).time(1e9));
  }
  // 16 stages on a100-2x8 (8 A100 per host, NVLink 300 GB/s, 50 GB/s between hosts): an even
  // split of 32 blocks would cross after block 15; the bottleneck after block 14 is cheaper.
  const int64_t batch = 512;
  graph::Graph g = hourglass(batch, 32, 14);
  cost::Cluster cl = cost::read_cluster(std::string(SMP_SOURCE_DIR) + "/clusters/a100-2x8.json");
  plan::Plan p = plan_on(g, cl, batch, 16);
  auto bs = boundaries(p, cl);
  REQUIRE(bs.size() == 15);
  for (const auto& b : bs) {
    INFO("after stage ", b.after_stage);
    if (b.crosses) {
      CHECK(b.after_stage == 7);
      CHECK(b.bytes == std::min_element(bs.begin(), bs.end(), [](auto& x, auto& y) { return x.bytes < y.bytes; })->bytes);
    } else {
      CHECK(b.bytes > 8 * 64 * 4);
    }
  }
}
