// smp-profile --machine: the cluster description validates against schemas/cluster.schema.json,
// names the device as smp-plan does for the same --devices (so a profile applies), and plans.
#include "profile_util.hpp"

#include "cost/cluster.hpp"

#include <doctest/doctest.h>

using namespace smp::test;
using nlohmann::json;

TEST_CASE("smp-profile --machine writes a cluster that validates and plans") {
  auto dir = temp_dir("profile_machine");
  std::string cl = (dir / "cluster.json").string();
  auto r = run_cmd("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 " + tool("smp-profile") +
                   " --machine --devices 2 --budget-ms 5 -o " + cl);
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  CHECK(r.out.find("GFLOP/s") != std::string::npos);
  CHECK(r.out.find("latency") != std::string::npos);
  auto v = validate("cluster", cl);
  CHECK_MESSAGE(v.exit_code == 0, v.out);
  json c = read_json_file(cl);
  const json& dev = c["hosts"][0]["devices"][0];
  CHECK(dev["name"] == smp::cost::local_cpu_json(2)["hosts"][0]["devices"][0]["name"]);
  CHECK(dev["count"] == 2);
  CHECK(dev["peak_flops"]["fp32"].get<double>() > 0);
  CHECK(dev["memory_bandwidth"].get<double>() > 0);
  CHECK(c["hosts"][0]["link"]["bandwidth"].get<double>() > 0);
  CHECK(c["hosts"][0]["link"]["latency"].get<double>() > 0);
  CHECK_NOTHROW(smp::cost::read_cluster(cl));

  std::string plan = (dir / "plan.json").string();
  auto pl = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 16 --cluster " + cl + " --stages 2 -o " + plan);
  CHECK_MESSAGE(pl.exit_code == 0, pl.out);
  // A profile made for the same --devices applies to this cluster.
  std::string prof = (dir / "p.json").string();
  auto p = run_cmd(tool("smp-profile") + " " + sample("gpt") + " -b 16 -m 4 --devices 2 -q --budget-ms 1 --whole-budget-ms 20 -o " +
                   prof);
  REQUIRE_MESSAGE(p.exit_code == 0, p.out);
  auto pp = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 16 --cluster " + cl +
                    " --stages 2 --microbatches 4 --profile " + prof + " -o " + plan);
  CHECK_MESSAGE(pp.exit_code == 0, pp.out);
  CHECK(pp.out.find(" measured\n") != std::string::npos);
}

TEST_CASE("smp-profile --machine bad input: one line, exit 2") {
  auto r = run_cmd(tool("smp-profile") + " --machine --budget-ms 0 -o /tmp/x.json");
  CHECK(r.exit_code == 2);
  CHECK(count_lines(r.out) == 1);
  auto d = run_cmd(tool("smp-profile") + " --machine --devices -1 -o /tmp/x.json");
  CHECK(d.exit_code == 2);
  CHECK(count_lines(d.out) == 1);
}
