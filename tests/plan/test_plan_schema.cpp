// Plans for every sample on every example cluster validate against schemas/plan.schema.json
// (python3-jsonschema); the example clusters against the cluster schema; a profile against
// the profile schema; and the GPT-3-175B-shaped graph plans on 128 x 8 H100 without its weights.
#include "../graph/test_util.hpp"

#include <doctest/doctest.h>
#include <nlohmann/json.hpp>

#include <fstream>

using smp::test::run_cmd;
using smp::test::sample;
using smp::test::tool;

namespace {

int lines_with(const std::string& s, const std::string& what) {
  int n = 0;
  for (size_t i = s.find(what); i != std::string::npos; i = s.find(what, i + 1)) ++n;
  return n;
}

std::string src(const std::string& p) { return std::string(SMP_SOURCE_DIR) + "/" + p; }
std::string validate(const std::string& schema, const std::string& files) {
  return std::string(SMP_PYTHON) + " " + src("tests/plan/validate_json.py") + " " + src("schemas") + " " + schema + " " + files;
}

}  // namespace

TEST_CASE("plans of every sample on every example cluster validate against the plan schema") {
  auto dir = smp::test::temp_dir("plan_schema");
  std::string files;
  int n = 0;
  for (std::string m : {"mlp", "cnn", "gpt"})
    for (std::string c : {"local-cpu", "a100-2x8", "h100-16x8", "h100-128x8", "hetero-h100-a100"}) {
      std::string out = (dir / (m + "-" + c + ".json")).string();
      auto r = run_cmd(tool("smp-plan") + " " + sample(m) + " -b 1024 --cluster " + src("clusters/" + c + ".json") + " -o " + out);
      INFO(m << " on " << c << "\n" << r.out);
      REQUIRE(r.exit_code == 0);
      files += " " + out;
      ++n;
    }
  // the local CPU split among workers, interleaved, recomputation forced
  std::string extra = (dir / "gpt-local-interleaved.json").string();
  REQUIRE(run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 32 --devices 4 --stages 2 --schedule interleaved --microbatches 4 "
                  "--recompute always -o " + extra).exit_code == 0);
  files += " " + extra;
  // tensor-parallel with the optimizer state split, and the MLP split 4 ways (uneven classes)
  std::string tp = (dir / "gpt-tp.json").string(), tp4 = (dir / "mlp-tp4.json").string();
  REQUIRE(run_cmd(tool("smp-plan") + " " + sample("gpt") + " -b 64 --cluster " + src("clusters/h100-16x8.json") +
                  " --tensor-parallel 2 --shard-optimizer -o " + tp).exit_code == 0);
  REQUIRE(run_cmd(tool("smp-plan") + " " + sample("mlp") + " -b 32 --devices 8 --tensor-parallel 4 -o " + tp4).exit_code == 0);
  files += " " + tp + " " + tp4;
  auto v = run_cmd(validate("plan", files));
  INFO(v.out);
  CHECK(v.exit_code == 0);
  CHECK(lines_with(v.out, ": valid") == n + 3);
  std::ifstream f(tp);
  auto j = nlohmann::json::parse(f);
  CHECK(j["degrees"]["tensor_parallel"] == 2);
  CHECK(j["options"]["shard_optimizer"] == true);
  CHECK(j["ranks"][1]["tp_rank"] == 1);
}

TEST_CASE("example clusters and a profile validate against their schemas") {
  auto v = run_cmd(validate("cluster", src("clusters/*.json")));
  INFO(v.out);
  CHECK(v.exit_code == 0);
  auto dir = smp::test::temp_dir("profile_schema");
  std::ofstream(dir / "p.json") << R"({"version": 1, "smp_version": "0.1.0", "device": {"name": "cpu", "kind": "cpu"},
    "threads": 2, "microbatch_size": 4, "nodes": {"/head/MatMul": {"forward_s": 0.001, "backward_input_s": 0.002,
    "backward_weight_s": 0.001, "spread": 0.05, "peak_bytes": 1048576}}})";
  auto p = run_cmd(validate("profile", (dir / "p.json").string()));
  INFO(p.out);
  CHECK(p.exit_code == 0);
  // and a detected description written by --save-cluster
  REQUIRE(run_cmd(tool("smp-plan") + " --save-cluster " + (dir / "c.json").string() + " --devices 3").exit_code == 0);
  auto c = run_cmd(validate("cluster", (dir / "c.json").string()));
  CHECK(c.exit_code == 0);
}

TEST_CASE("GPT-3-175B plans on 128 x 8 H100 without its weights") {
  auto dir = smp::test::temp_dir("plan_175b");
  auto g = run_cmd(std::string(SMP_PYTHON) + " " + src("scripts/giant_models.py") + " gpt3-175b --out " + dir.string());
  REQUIRE(g.exit_code == 0);
  CHECK(!std::filesystem::exists(dir / "gpt3-175b.weights"));
  std::string out = (dir / "plan.json").string();
  auto r = run_cmd(tool("smp-plan") + " " + (dir / "gpt3-175b.onnx").string() + " -b 1536 --cluster " +
                   src("clusters/h100-128x8.json") + " -o " + out);
  INFO(r.out.substr(0, 3000));
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("1024 devices") != std::string::npos);
  CHECK(r.out.find("predicted step") != std::string::npos);
  std::ifstream f(out);
  auto j = nlohmann::json::parse(f);
  CHECK(j["degrees"]["ranks"].get<int>() == 1024);
  CHECK(j["prediction"]["fits"] == true);
  for (double b : j["prediction"]["peak_bytes"]) CHECK(b <= 80.0 * (1 << 30));
  CHECK(j["model"]["parameters"].get<int64_t>() == 175221817344);
  // tensor parallelism in the search, and Megatron's layout priced beside the plan
  CHECK(j["tensor_parallel"]["degrees_searched"] == nlohmann::json::array({1, 2, 4, 8}));
  CHECK(j["megatron_baseline"]["available"] == true);
  CHECK(j["megatron_baseline"]["tensor_parallel"] == 8);
  auto v = run_cmd(validate("plan", out));
  CHECK(v.exit_code == 0);
}
