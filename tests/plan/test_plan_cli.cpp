// smp-plan's planning mode end to end: the report, --json, the plan file, bad input (exit 2),
// nothing fits (exit 1); the summary and the schedule mode still work.
#include "../graph/test_util.hpp"
#include "cost/calibration.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <thread>

using smp::test::run_cmd;
using smp::test::sample;
using smp::test::tool;
using nlohmann::json;

namespace {

std::string cluster(const std::string& c) { return std::string(SMP_SOURCE_DIR) + "/clusters/" + c + ".json"; }

int lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace

TEST_CASE("smp-plan plans the GPT sample and writes the plan") {
  auto dir = smp::test::temp_dir("plan_cli");
  std::string out = (dir / "p.json").string();
  auto r = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 32 --devices 4 --stages 4 -o " + out);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("first -> last node") != std::string::npos);
  CHECK(r.out.find("predicted step") != std::string::npos);
  CHECK(r.out.find("equal-layers") != std::string::npos);
  CHECK(r.out.find("plan speedup") != std::string::npos);
  CHECK(r.out.find("wrote " + out) != std::string::npos);
  std::ifstream f(out);
  json j = json::parse(f);
  CHECK(j["version"] == 1);
  CHECK(j["degrees"]["pipeline"] == 4);
  // 4 ranks, each with the schedule's chunks (interleaved: 2 or more)
  const size_t stages = 4 * j["degrees"]["chunks"].get<size_t>();
  CHECK(j["stages"].size() == stages);
  CHECK(j["model"]["sha256"].get<std::string>().size() == 64);
  // --json: the report as one object
  auto rj = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 32 --devices 4 --stages 4 --json -o " + out + " 2>/dev/null");
  REQUIRE(rj.exit_code == 0);
  json rep = json::parse(rj.out);
  CHECK(rep["rows"].size() == stages);
  CHECK(rep["baselines"].size() == 2);
  CHECK(rep["plan_file"] == out);
  // --timeline / --trace / --show with a model
  auto rt = run_cmd(tool("smp-plan") + " " + sample("mlp") + " -b 16 --devices 2 --stages 2 -o " + out + " --show --timeline " +
                    (dir / "t.svg").string() + " --trace " + (dir / "t.json").string());
  INFO(rt.out);
  CHECK(rt.exit_code == 0);
  CHECK(std::filesystem::file_size(dir / "t.svg") > 1000);
  CHECK(std::filesystem::file_size(dir / "t.json") > 100);
  CHECK(rt.out.find("schedule ") != std::string::npos);
  // The MLP's few nodes give few splits: every one is scored, no DP runs, and the report says so
  // (the split itself may be a baseline's, where the simulator prefers it).
  CHECK(rt.out.find("(exhaustively: ") != std::string::npos);
  std::ifstream fm(out);
  json search = json::parse(fm)["search"];
  CHECK(search["dp_runs"] == 0);
  CHECK(search["splits_enumerated"].get<int64_t>() > 0);
}

TEST_CASE("smp-plan --help states the default plan file; --summary and --show still work") {
  auto h = run_cmd(tool("smp-plan") + " --help");
  CHECK(h.exit_code == 0);
  CHECK(h.out.find("plan.json") != std::string::npos);
  CHECK(h.out.find("--cluster") != std::string::npos);
  auto s = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 4 --summary");
  CHECK(s.exit_code == 0);
  CHECK(s.out.find("ONNX nodes") != std::string::npos);
  // the shardable groups found in the graph, and what stays replicated
  CHECK(s.out.find("10 groups (4 attention, 1 embedding, 1 lm_head, 4 mlp); every one splits up to 4 ways") != std::string::npos);
  CHECK(s.out.find("replicated: 11.5 K parameters in 27 tensors (read by 18 LayerNormalization, 9 Add)") != std::string::npos);
  CHECK(s.out.find("attention  blocks.0/attn") != std::string::npos);
  auto sj = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 4 --summary --json");
  REQUIRE(sj.exit_code == 0);
  CHECK(json::parse(sj.out)["tensor_parallel"]["groups"].size() == 10);
  auto sh = run_cmd(tool("smp-plan") + " --schedule 1f1b --stages 4 --microbatches 8 --show");
  CHECK(sh.exit_code == 0);
  CHECK(sh.out.find("bubble") != std::string::npos);
}

TEST_CASE("smp-plan bad input: one line naming the file or option, exit 2") {
  auto dir = smp::test::temp_dir("plan_cli_bad");
  std::string out = " -o " + (dir / "p.json").string();
  {
    std::ifstream in(cluster("a100-2x8"));
    json j = json::parse(in);
    j["hosts"][0]["devices"][0]["memory_bytes"] = -1;
    std::ofstream(dir / "bad.json") << j.dump();
  }
  struct Case {
    std::string args, expect;
  };
  std::vector<Case> cases = {
      {sample("gpt") + " -b 32 --cluster " + (dir / "bad.json").string(),
       "error: " + (dir / "bad.json").string() + ": hosts[0].devices[0].memory_bytes: must be a positive number"},
      {sample("gpt") + " -b 32 --devices 0", "error: --devices: must be at least 1"},
      {sample("mlp") + " -b 32 --devices 4 --stages 12", "error: --stages: 12 stages for a graph of 11 nodes"},
      {sample("mlp") + " -b 10 --devices 2 --microbatches 3", "error: --microbatches: the batch of 10 is not divisible into 3 microbatches"},
      {sample("gpt") + " -b 32 --devices 4 --split /no/such/node", "error: --split: no node named '/no/such/node'"},
      {sample("gpt") + " -b 32 --devices 4 --split 72,37", "error: --split: cut before node 37 ('37') does not come after"},
      {sample("gpt") + " -b 32 --devices 4 --split 0", "error: --split: cut before node 0 ('0'): a cut lies before one of nodes 1 to 144"},
      {sample("gpt") + " -b 32 --devices 4 --split 37,,72", "error: --split: '37,,72': an empty cut"},
      {sample("gpt") + " -b 32 --devices 4 --stages 4 --split 37", "error: --split: 1 cut(s) make 2 stages, which no configuration gives"},
      {sample("mlp") + " -b 8 --devices 2 --optimizer lion", "error: --optimizer: unknown optimizer 'lion'"},
      {sample("mlp") + " -b 8 --devices 2 --recompute sometimes", "error: --recompute: unknown value 'sometimes'"},
      {sample("mlp") + " -b 8 --devices 2 --dtype fp8", "error: --dtype: unknown dtype 'fp8'"},
      {sample("mlp") + " -b 8 --devices 2 --cluster " + cluster("a100-2x8"), "error: --devices: applies to this machine's CPU"},
      {sample("mlp") + " -b 8 --cluster " + (dir / "missing.json").string(), "error: " + (dir / "missing.json").string() + ": no such file"},
      {sample("mlp") + " -b 8 --devices 4 --tensor-parallel 3", "error: --tensor-parallel: 3: host localhost has 4 devices, not a multiple of 3"},
      {sample("mlp") + " -b 8 --devices 4 --tensor-parallel 0", "error: --tensor-parallel: Value 0 not in range 1 to 65536"},
      {sample("mlp") + " -b 0 --devices 2", "error: --batch-size: must be a positive whole number, not 0"},
      {sample("mlp") + " -b 2.5 --devices 2", "error: --batch-size: must be a positive whole number, not 2.5"},
      {sample("mlp") + " -b 8 --devices 2 --dp-work nan", "error: --dp-work: must be a number >= 0, not nan"},
      {sample("mlp") + " -b 8 --devices 2 --stages 5", "error: --stages: 5 pipeline ranks need 5 devices, the cluster has 2"},
      {sample("mlp") + " -b 12 --devices 2 --data-parallel 3", "error: --data-parallel: 3 replicas need 3 devices, the cluster has 2"},
      {sample("mlp") + " -b 8 --devices 4 --shard-optimizer --no-shard-optimizer", "error: --shard-optimizer: given with --no-shard-optimizer"},
      {sample("mlp") + " -b 8 --devices 2 --freeze 'layers.0.*,norm*'", "error: --freeze: 'norm*' matches no floating-point initializer of "},
  };
  for (const auto& c : cases) {
    auto r = run_cmd(tool("smp-plan") + " " + c.args + out);
    INFO(c.args << "\n" << r.out);
    CHECK(r.exit_code == 2);
    CHECK(r.out.rfind(c.expect, 0) == 0);
    CHECK(lines(r.out) == 1);
  }
  // a profile measured on a device the cluster lacks
  std::ofstream(dir / "prof.json") << R"({"version": 1, "device": {"name": "TPU-v9"}, "microbatch_size": 4, "nodes": {}})";
  auto r = run_cmd(tool("smp-plan") + " " + sample("mlp") + " -b 8 --cluster " + cluster("a100-2x8") + " --profile " +
                   (dir / "prof.json").string() + out);
  CHECK(r.exit_code == 2);
  CHECK(r.out.find("TPU-v9") != std::string::npos);
}

TEST_CASE("smp-plan when nothing fits: exit 1, says what would fit") {
  auto dir = smp::test::temp_dir("plan_cli_nofit");
  json j = {{"version", 1},
            {"name", "small"},
            {"hosts", {{{"name", "h"},
                        {"devices", {{{"kind", "gpu"}, {"name", "tiny"}, {"count", 2}, {"memory_bytes", 2e6},
                                      {"peak_flops", {{"fp32", 1e12}, {"bf16", 1e12}}}, {"memory_bandwidth", 1e11}}}},
                        {"link", {{"bandwidth", 1e10}, {"latency", 1e-6}}}}}}};
  std::ofstream(dir / "small.json") << j.dump();
  auto r = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 8 --cluster " + (dir / "small.json").string() + " -o " +
                   (dir / "p.json").string());
  INFO(r.out);
  CHECK(r.exit_code == 1);
  CHECK(r.out.find("no plan fits in memory") != std::string::npos);
  CHECK(r.out.find("needs at least") != std::string::npos);
  CHECK(lines(r.out) == 1);
}

TEST_CASE("smp-plan --profile: measured times replace the estimates, and the report says so") {
  auto dir = smp::test::temp_dir("plan_cli_profile");
  REQUIRE(run_cmd(tool("smp-plan") + " --save-cluster " + (dir / "c.json").string() + " --devices 2").exit_code == 0);
  std::ifstream cf(dir / "c.json");
  json c = json::parse(cf);
  std::string dev = c["hosts"][0]["devices"][0]["name"];
  json nodes = json::object();
  for (std::string n : {"/layers.0/Gemm", "/Relu", "/layers.1/Gemm", "/Relu_1", "/layers.2/Gemm", "/Relu_2", "/layers.3/Gemm",
                        "/Relu_3", "/layers.4/Gemm", "/Relu_4", "/layers.5/Gemm"})
    nodes[n] = {{"forward_s", 0.001}, {"backward_input_s", 0.002}, {"backward_weight_s", 0.001}};
  json p = {{"version", 1}, {"device", {{"name", dev}, {"kind", "cpu"}}}, {"threads", 1}, {"microbatch_size", 4}, {"nodes", nodes}};
  std::ofstream(dir / "p.json") << p.dump();
  std::string base = tool("smp-plan") + " " + sample("mlp") + " -b 8 --cluster " + (dir / "c.json").string() +
                     " --stages 2 --data-parallel 1 -o " + (dir / "plan.json").string() + " --profile " + (dir / "p.json").string();
  auto r = run_cmd(base);
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("measured") != std::string::npos);
  CHECK(r.out.find("2 microbatches of 4") != std::string::npos);
  // 11 nodes x 4 ms per microbatch, 2 microbatches on 2 stages: the step is at least 2 x 22 ms
  std::ifstream pf(dir / "plan.json");
  json plan = json::parse(pf);
  CHECK(plan["prediction"]["step_s"].get<double>() >= 0.044);
  CHECK(plan["options"]["profile"] == (dir / "p.json").string());
  // a microbatch size the profile was not measured at
  auto bad = run_cmd(base + " --microbatches 1");
  CHECK(bad.exit_code == 2);
  CHECK(bad.out.rfind("error: " + (dir / "p.json").string() + ": measured at microbatches of 4", 0) == 0);
}

TEST_CASE("smp-plan --split: the DP's split, a baseline's or given cuts, on the configuration the search chose") {
  auto dir = smp::test::temp_dir("plan_cli_split");
  // 4 CPU devices as described, not this machine's calibration: on 2 cores, 4 workers' step is
  // bound by the cores, and every split would price the same.
  const std::string cluster = (dir / "c4.json").string();
  {
    auto sc = run_cmd(tool("smp-plan") + " --devices 4 --no-calibration --save-cluster " + cluster);
    REQUIRE_MESSAGE(sc.exit_code == 0, sc.out);
  }
  auto plan = [&](const std::string& split, const std::string& name) {
    std::string out = (dir / (name + ".json")).string();
    auto r = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 32 --cluster " + cluster +
                     " --stages 4 --schedule 1f1b --microbatches 8" + (split.empty() ? "" : " --split " + split) + " -o " + out);
    INFO(split << "\n" << r.out);
    REQUIRE(r.exit_code == 0);
    std::ifstream f(out);
    return std::make_pair(json::parse(f), r.out);
  };
  auto [dflt, dflt_out] = plan("", "auto");
  auto [dp, dp_out] = plan("dp", "dp");
  auto [el, el_out] = plan("equal-layers", "el");
  auto [ep, ep_out] = plan("equal-params", "ep");
  auto cut_names = [](const json& p) {
    std::vector<std::string> v;
    for (size_t s = 1; s < p["stages"].size(); ++s) v.push_back(p["stages"][s]["nodes"][0].get<std::string>());
    return v;
  };
  // Same degrees, microbatches and schedule in every plan.
  for (const json* p : {&dp, &el, &ep}) {
    CHECK((*p)["degrees"] == dflt["degrees"]);
    CHECK((*p)["microbatches"] == dflt["microbatches"]);
    CHECK((*p)["schedule"]["name"] == dflt["schedule"]["name"]);
  }
  CHECK(dp["partition"] == "dp");
  CHECK(el["partition"] == "equal-layers");
  CHECK(ep["partition"] == "equal-parameters");
  // The baselines' plans are the splits the report's baselines rows price, with their predictions.
  for (const auto& b : dflt["baselines"]) {
    const json& p = b["name"] == "equal-layers" ? el : ep;
    CHECK(p["prediction"]["step_s"].get<double>() == doctest::Approx(b["prediction"]["step_s"].get<double>()).epsilon(1e-9));
  }
  CHECK(el_out.find("the equal-layers split, as --split asks") != std::string::npos);
  CHECK(dp["prediction"]["step_s"].get<double>() < el["prediction"]["step_s"].get<double>());
  // Given cuts, by name and by position, make the same plan as the baseline they repeat.
  std::vector<std::string> names = cut_names(el);
  REQUIRE(names.size() == 3);
  auto [byname, byname_out] = plan(names[0] + "," + names[1] + "," + names[2], "byname");
  CHECK(byname["partition"] == "cuts");
  CHECK(cut_names(byname) == names);
  CHECK(byname["prediction"]["step_s"].get<double>() == doctest::Approx(el["prediction"]["step_s"].get<double>()).epsilon(1e-9));
  std::string positions;
  for (size_t i = 1; i + 1 < dflt["baselines"][0]["stage_boundaries"].size(); ++i) {
    if (!positions.empty()) positions += ',';
    positions += std::to_string(dflt["baselines"][0]["stage_boundaries"][i].get<int>());
  }
  auto [bypos, bypos_out] = plan(positions, "bypos");
  CHECK(cut_names(bypos) == names);
  // Without --stages, the cuts fix the stage count.
  auto r = run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 32 --devices 2 --split " + names[1] + " -o " +
                   (dir / "two.json").string());
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  std::ifstream f(dir / "two.json");
  json two = json::parse(f);
  CHECK(two["stages"].size() == 2);
  CHECK(two["stages"][1]["nodes"][0] == names[1]);
}

TEST_CASE("smp-plan without --cluster measures this machine once, caches it, and says so") {
  auto dir = smp::test::temp_dir("plan_cli_calibration");
  const std::string env = "XDG_CACHE_HOME=" + (dir / "cache").string() + " ";
  const std::string plan = tool("smp-plan") + " " + sample("mlp") + " -b 16 --devices 2 -o " + (dir / "p.json").string();
  auto first = run_cmd(env + plan);
  INFO(first.out);
  REQUIRE(first.exit_code == 0);
  CHECK(first.out.find("calibrating this machine's kernels") != std::string::npos);
  CHECK(first.out.find("cluster   local-cpu (measured)") != std::string::npos);
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::directory_iterator(dir / "cache" / "smp")) files.push_back(e.path());
  REQUIRE(files.size() == 1);
  json cal = json::parse(std::ifstream(files[0]));
  CHECK(cal["version"] == smp::cost::kCalibrationVersion);
  CHECK(cal["tables"].size() >= 1);
  for (const auto& t : cal["tables"])
    for (const auto& [fam, passes] : t["families"].items()) {
      CAPTURE(fam);
      CHECK(passes["forward"].size() >= 4);
      for (const auto& p : passes["forward"]) CHECK(p[1].get<double>() > 0);
    }
  // The GEMM's slow-down with few rows: never below 1, 1 at the most rows.
  for (const auto& t : cal["tables"]) {
    REQUIRE(t["gemm_rows"]["forward"].size() >= 4);
    for (const auto& p : t["gemm_rows"]["forward"]) CHECK(p[1].get<double>() >= 1);
    CHECK(t["gemm_rows"]["forward"].back()[1].get<double>() == 1);
  }
  CHECK(cal["link"]["bandwidth"].get<double>() > 0);  // smp-profile beside smp-plan ran the ping-pong
  CHECK(cal["link"]["allreduce_bandwidth"].get<double>() > 0);  // and the all-reduce over both ranks
  // Twice as many workers as cores (2 rings): never faster than their CPU work over the cores.
  if (std::thread::hardware_concurrency() > 1) {
    REQUIRE(cal["oversubscription"].size() == 2);
    for (const auto& f : cal["oversubscription"]) CHECK(f.get<double>() >= 1);
  }
  const auto written = std::filesystem::last_write_time(files[0]);
  // The second plan reads the cache: nothing measured, the same file.
  auto second = run_cmd(env + plan);
  CHECK(second.exit_code == 0);
  CHECK(second.out.find("calibrating") == std::string::npos);
  CHECK(std::filesystem::last_write_time(files[0]) == written);
  // The estimates on request; bad combinations with --cluster.
  auto est = run_cmd(env + plan + " --no-calibration");
  CHECK(est.out.find("cluster   local-cpu (estimated)") != std::string::npos);
  auto both = run_cmd(env + plan + " --recalibrate --cluster " + cluster("a100-2x8"));
  CHECK(both.exit_code == 2);
  // A damaged cache is measured again, with a note, never an error.
  std::ofstream(files[0]) << "{ not json";
  auto again = run_cmd(env + plan);
  CHECK(again.exit_code == 0);
  CHECK(again.out.find("the cached calibration is unusable") != std::string::npos);
  CHECK(json::parse(std::ifstream(files[0]))["version"] == smp::cost::kCalibrationVersion);
}
