// smp-profile MODEL: the profile validates against schemas/profile.schema.json, lists every node
// of the folded graph with non-negative times, names the device the planner gives this machine
// for the same --devices; smp-plan --profile marks its stages measured and refuses a profile made
// for another set-up; bad input is one line and exit 2. Times are never compared.
#include "profile_util.hpp"

#include "comm/launch.hpp"
#include "cost/cluster.hpp"
#include "graph/loader.hpp"

#include <doctest/doctest.h>

#include <algorithm>

using namespace smp::test;
using nlohmann::json;

namespace {
const char* kFast = " --budget-ms 1 --whole-budget-ms 20 ";

std::string device_name(int workers) {
  return smp::cost::local_cpu_json(workers)["hosts"][0]["devices"][0]["name"].get<std::string>();
}
}  // namespace

TEST_CASE("smp-profile writes a valid profile with every node of the model") {
  auto dir = temp_dir("profile");
  for (std::string m : {"mlp", "gpt", "cnn"}) {
    CAPTURE(m);
    std::string out = (dir / (m + ".json")).string();
    auto r = run_cmd(tool("smp-profile") + " " + sample(m) + " -b 8 -m 2 --devices 2 -q" + kFast + "-o " + out);
    REQUIRE_MESSAGE(r.exit_code == 0, r.out);
    CHECK(r.out.empty());  // --quiet
    auto v = validate("profile", out);
    CHECK_MESSAGE(v.exit_code == 0, v.out);
    json p = read_json_file(out);
    CHECK(p["version"] == 1);
    CHECK(p["microbatch_size"] == 4);
    CHECK(p["in_flight_microbatches"] == 2);
    CHECK(p["device"]["name"] == device_name(2));
    CHECK(p["device"]["kind"] == "cpu");
    CHECK(p["threads"].get<int>() >= 1);
    CHECK(p["smp_version"].is_string());
    // 2 workers with cores / 2 threads each: no pipelined probe.
    CHECK(!p["contention"].contains("pipeline_probe"));
    // Contention with the other worker, and the slowdown derived from it: 2 workers over 2
    // microbatches are busy 2 x 2 / (2 + 1) at once; each runs busy / eff(busy) slower, with
    // eff(2) = 2 / (ratio(2) max(1, 2 / cores)) and eff interpolated from eff(1) = 1.
    REQUIRE(p.contains("contention"));
    const json& c = p["contention"];
    CHECK(c["workers"] == 2);
    CHECK(c["applied"] == true);
    CHECK(c["busy_workers"].get<double>() == doctest::Approx(4.0 / 3.0));
    const double ratio = c["cpu_time_ratio"]["2"].get<double>(), cores = c["cores"].get<double>();
    CHECK(ratio >= 1.0);
    const double eff2 = 2.0 / (ratio * std::max(1.0, 2.0 / cores));
    const double eff_busy = 1.0 + (4.0 / 3.0 - 1.0) * (eff2 - 1.0);
    CHECK(c["slowdown"].get<double>() == doctest::Approx(std::max(1.0, (4.0 / 3.0) / eff_busy)));
    // The optimizer step of every optimizer, per parameter.
    for (const char* k : {"sgd", "momentum", "adamw"}) {
      CAPTURE(k);
      REQUIRE(p["optimizer_step_s_per_parameter"].contains(k));
      CHECK(p["optimizer_step_s_per_parameter"][k].get<double>() > 0);
    }
    smp::graph::LoadOptions lo;
    lo.batch_size = 4;
    auto g = smp::graph::load_graph(sample(m), lo);
    CHECK(p["nodes"].size() == g.nodes.size());
    for (const auto& n : g.nodes) {
      CAPTURE(n.name);
      REQUIRE(p["nodes"].contains(n.name));
      const json& e = p["nodes"][n.name];
      for (const char* k : {"forward_s", "backward_input_s", "backward_weight_s", "spread", "peak_bytes"}) {
        REQUIRE(e.contains(k));
        CHECK(e[k].get<double>() >= 0);
      }
      // -m 2: the times with both microbatches in flight too
      REQUIRE(e.contains("in_flight"));
      for (const char* k : {"forward_s", "backward_input_s", "backward_weight_s"}) CHECK(e["in_flight"][k].get<double>() >= 0);
    }
  }
}

TEST_CASE("smp-profile progress and summary; --threads and --devices set the recorded set-up") {
  auto dir = temp_dir("profile_text");
  std::string out = (dir / "p.json").string();
  auto r = run_cmd(tool("smp-profile") + " " + sample("mlp") + " -b 4 --devices 3 --threads 2" + kFast + "-o " + out);
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  CHECK(r.out.find("nodes") != std::string::npos);
  CHECK(r.out.find("ETA") != std::string::npos);
  CHECK(r.out.find("timed in context") != std::string::npos);
  CHECK(r.out.find("effective parallelism") != std::string::npos);
  json p = read_json_file(out);
  // One microbatch per batch: one worker busy at a time, whatever the contention measured.
  REQUIRE(p.contains("contention"));
  CHECK(p["contention"]["workers"] == 3);
  CHECK(p["contention"]["cpu_time_ratio"].size() == 2);
  CHECK(p["contention"]["busy_workers"].get<double>() == doctest::Approx(1.0));
  // 3 workers x 2 threads: where that is more than the cores, the slow-down was measured by running
  // the model as a 3-stage pipeline (and with one busy worker at a time, it is that probe's factor
  // alone); elsewhere, no probe.
  if (3 * 2 > smp::comm::online_cores()) {
    REQUIRE(p["contention"].contains("pipeline_probe"));
    const json& pp = p["contention"]["pipeline_probe"];
    CHECK(pp["stages"] == 3);
    CHECK(pp["schedule"] == "1f1b");
    CHECK(pp["steps"].get<int>() >= 11);
    // The factor is measured / predicted, held within the sanity bound [0.25, 8] (pipeline_probe.cpp):
    // a 4-sample MLP with 6 threads on 2 cores can run 8x slower than predicted.
    CHECK(pp["factor"].get<double>() ==
          doctest::Approx(std::clamp(pp["step_s"]["measured"].get<double>() / pp["step_s"]["predicted"].get<double>(), 0.25, 8.0)));
    CHECK(pp["per_stage"].size() == 3);
    CHECK(pp["factor"].get<double>() > 0);
    CHECK(p["contention"]["slowdown"].get<double>() == doctest::Approx(pp["factor"].get<double>()));
    CHECK(r.out.find("pipelined probe (3 stages, 1f1b") != std::string::npos);
    auto v = validate("profile", out);
    CHECK_MESSAGE(v.exit_code == 0, v.out);
    // --pipeline-probe never keeps the copies' slow-down.
    auto q = run_cmd(tool("smp-profile") + " " + sample("mlp") + " -b 4 --devices 3 --threads 2 -q --pipeline-probe never" + kFast +
                     "-o " + out);
    REQUIRE_MESSAGE(q.exit_code == 0, q.out);
    json p2 = read_json_file(out);
    CHECK(!p2["contention"].contains("pipeline_probe"));
    CHECK(p2["contention"]["slowdown"].get<double>() == doctest::Approx(1.0));
  } else {
    CHECK(!p["contention"].contains("pipeline_probe"));
    CHECK(p["contention"]["slowdown"].get<double>() == doctest::Approx(1.0));
  }
  CHECK(p["threads"] == 2);
  CHECK(p["microbatch_size"] == 4);
  CHECK(p["device"]["name"] == device_name(3));
  // one microbatch per batch: nothing else to keep in flight
  CHECK(!p.contains("in_flight_microbatches"));
  for (const auto& [name, e] : p["nodes"].items()) CHECK(!e.contains("in_flight"));
}

TEST_CASE("smp-plan uses the profile: stages marked measured; another set-up is refused") {
  auto dir = temp_dir("profile_plan");
  std::string prof = (dir / "gpt.json").string();
  auto r = run_cmd(tool("smp-profile") + " " + sample("gpt") + " -b 16 -m 4 --devices 2 -q" + kFast + "-o " + prof);
  REQUIRE_MESSAGE(r.exit_code == 0, r.out);
  std::string plan = (dir / "plan.json").string();
  // --schedule 1f1b: one stage per rank (with measured times the search may pick interleaved
  // chunks, 4 stages, and the optimizer step of a rank's two chunks).
  auto pl = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 16 --devices 2 --stages 2 --microbatches 4 --schedule 1f1b --profile " +
                    prof + " -o " + plan);
  REQUIRE_MESSAGE(pl.exit_code == 0, pl.out);
  int measured = 0;
  size_t at = 0;
  while ((at = pl.out.find(" measured\n", at)) != std::string::npos) ++measured, ++at;
  CHECK_MESSAGE(measured == 2, pl.out);
  CHECK(pl.out.find(" estimated\n") == std::string::npos);
  // Without the profile, the same plan is estimated.
  auto pe = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 16 --devices 2 --stages 2 --microbatches 4 --schedule 1f1b -o " + plan);
  REQUIRE(pe.exit_code == 0);
  CHECK(pe.out.find(" measured\n") == std::string::npos);
  // The measured optimizer step (smp-plan's default optimizer, adamw) per stage's parameters.
  REQUIRE(run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 16 --devices 2 --stages 2 --microbatches 4 --schedule 1f1b --profile " +
                  prof + " -o " + plan).exit_code == 0);
  auto pj = read_json_file(prof);
  auto planj = read_json_file(plan);
  REQUIRE(planj["options"]["optimizer"] == "adamw");
  double longest = 0;
  for (const auto& st : planj["stages"]) {
    const double want = pj["optimizer_step_s_per_parameter"]["adamw"].get<double>() * st["parameter_count"].get<double>();
    CHECK(st["time"]["update_s"].get<double>() == doctest::Approx(want));
    longest = std::max(longest, want);
  }
  CHECK(planj["prediction"]["update_s"].get<double>() == doctest::Approx(longest));

  // Another worker count: a different device name, refused in one line.
  auto other = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 16 --devices 4 --stages 2 --microbatches 4 --profile " +
                       prof + " -o " + plan);
  CHECK(other.exit_code == 2);
  CHECK(count_lines(other.out) == 1);
  CHECK(other.out.find("which the cluster does not have") != std::string::npos);
  // Another microbatch size: refused.
  auto mb = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 16 --devices 2 --stages 2 --microbatches 8 --profile " +
                    prof + " -o " + plan);
  CHECK(mb.exit_code == 2);
  CHECK(count_lines(mb.out) == 1);
  CHECK(mb.out.find("microbatch") != std::string::npos);
}

TEST_CASE("smp-profile MODEL and smp-plan MODEL alone: the default batch, microbatches and files fit together") {
  auto dir = temp_dir("profile_alone");
  // No --batch-size, -m or -o: the MLP's batch axis is symbolic, so 8 samples for each of the 2
  // workers, 4 microbatches (2 per worker) of 4, into ./profile.json.
  auto r = run_cmd("cd " + dir.string() + " && " + tool("smp-profile") + " " + sample("mlp") + " --devices 2" + kFast);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("note: batch 16: --batch-size not given") != std::string::npos);
  CHECK(r.out.find("4 microbatch(es) of 4") != std::string::npos);
  auto p = read_json_file((dir / "profile.json").string());
  CHECK(p["microbatch_size"] == 4);
  // The planner's defaults take it: the same batch, every stage measured.
  auto pl = run_cmd("cd " + dir.string() + " && " + tool("smp-plan") + " " + sample("mlp") + " --devices 2 --profile profile.json");
  INFO(pl.out);
  REQUIRE(pl.exit_code == 0);
  CHECK(pl.out.find("), batch 16\n") != std::string::npos);
  CHECK(pl.out.find(" estimated\n") == std::string::npos);
  CHECK(std::filesystem::exists(dir / "plan.json"));
}

TEST_CASE("smp-profile bad input: one line, exit 2") {
  auto dir = temp_dir("profile_bad");
  std::string out = " -o " + (dir / "p.json").string();
  std::string gpt = sample("gpt");
  struct Case {
    std::string args, expect;
  };
  std::vector<Case> cases = {
      {"/nonexistent/model.onnx -b 8" + out, "/nonexistent/model.onnx"},
      {"-b 8" + out, "MODEL"},
      {gpt + " -b 0" + out, "--batch-size"},
      {gpt + " -b 8 -m 3" + out, "--microbatches"},
      {gpt + " -b 8 -m 0" + out, "--microbatches"},
      {gpt + " -b 8 --device gpu" + out, "--device"},
      {gpt + " -b 8 --threads 0" + out, "--threads"},
      {gpt + " -b 8 --devices 0" + out, "--devices"},
      {gpt + " -b 8 --budget-ms 0" + out, "--budget-ms"},
      {gpt + " -b 8 --budget-ms nan" + out, "--budget-ms: must be a positive number, not nan"},
      {gpt + " -b 8 --whole-budget-ms inf" + out, "--whole-budget-ms: must be a positive number, not inf"},
      {gpt + " -b 8 --oversubscription 0.5" + out, "--oversubscription"},
      {gpt + " -b 8 --no-such-option" + out, "no-such-option"},
      {gpt + " --machine" + out, "--machine"},
      {src("README.md") + " -b 8" + out, "README.md"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.args);
    auto r = run_cmd(tool("smp-profile") + " " + c.args);
    CHECK(r.exit_code == 2);
    CHECK_MESSAGE(count_lines(r.out) == 1, r.out);
    CHECK(r.out.rfind("error: ", 0) == 0);
    CHECK_MESSAGE(r.out.find(c.expect) != std::string::npos, r.out);
  }
  CHECK(!std::filesystem::exists(dir / "p.json"));
}
