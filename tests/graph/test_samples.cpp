// The samples against PyTorch and closed forms; the 175B-shaped graph without its weights.
#include "test_util.hpp"

#include "graph/loader.hpp"
#include "graph/tensor_parallel.hpp"

#include <nlohmann/json.hpp>

#include <map>
#include <regex>

using namespace smp;
using namespace smp::graph;
namespace fs = std::filesystem;

namespace {

std::string python() { return SMP_PYTHON; }
std::string script(const std::string& s) { return std::string(SMP_SOURCE_DIR) + "/scripts/" + s; }

LoadOptions batch(int64_t b) {
  LoadOptions o;
  o.batch_size = b;
  return o;
}

}  // namespace

TEST_CASE("parameter counts equal PyTorch's for the same modules") {
  for (const char* name : {"mlp", "gpt", "cnn"}) {
    INFO(name);
    auto r = test::run_cmd(python() + " " + script("sample_models.py") + " count " + name);
    REQUIRE(r.exit_code == 0);
    int64_t torch_count = std::stoll(r.out);
    Graph g = load_graph(test::sample(name), batch(2));
    CHECK(g.parameter_count() == torch_count);
  }
}

TEST_CASE("GPT forward FLOPs equal the closed form for its configuration") {
  auto r = test::run_cmd(python() + " " + script("sample_models.py") + " config gpt");
  REQUIRE(r.exit_code == 0);
  auto cfg = nlohmann::json::parse(r.out);
  const double L = cfg["layers"], d = cfg["d_model"], H = cfg["heads"], T = cfg["seq"], V = cfg["vocab"],
               F = cfg["d_ff"];
  const double B = 6;
  const double hd = d / H;
  Graph g = load_graph(test::sample("gpt"), batch(static_cast<int64_t>(B)));

  // Matrix products: q/k/v, attention scores and values, projection, MLP, LM head.
  double matmul = L * (2 * B * T * d * 3 * d + 2 * B * H * T * T * hd * 2 + 2 * B * T * d * d + 2 * 2 * B * T * d * F) +
                  2 * B * T * d * V;
  // One FLOP per output element of each elementwise op, 5 per softmax element, 8 per
  // LayerNorm element: biases and residuals, scale, mask, softmax, GELU (Div, Erf, Add, 2 Mul),
  // the position add, and 2 LayerNorms per block plus the final one.
  double bhtt = B * H * T * T, btd = B * T * d, btf = B * T * F;
  double elementwise = L * (B * T * 3 * d + 4 * btd + btf       // biases and residuals
                            + bhtt + bhtt + 5 * bhtt            // scale, mask, softmax
                            + 5 * btf)                          // GELU
                       + btd + (2 * L + 1) * 8 * btd;
  double mm = 0;
  for (const auto& n : g.nodes)
    if (n.op_type == "MatMul" || n.op_type == "Gemm") mm += n.cost.flops;
  CHECK(mm == matmul);
  CHECK(g.forward_flops() == matmul + elementwise);
}

TEST_CASE("smp-plan --summary --json carries the summary's keys and the graph's numbers") {
  auto r = test::run_cmd(test::tool("smp-plan") + " " + test::sample("cnn") + " --batch-size 16 --summary --json");
  REQUIRE(r.exit_code == 0);
  auto j = nlohmann::json::parse(r.out);
  Graph g = load_graph(test::sample("cnn"), batch(16));
  CHECK(j["onnx_nodes"] == g.onnx_nodes);
  CHECK(j["nodes"] == g.nodes.size());
  CHECK(j["parameters"] == g.parameter_count());
  CHECK(j["forward_flops"].get<double>() == g.forward_flops());
  CHECK(j["activation_bytes"].get<double>() == g.activation_bytes());
  REQUIRE(j["ops"].contains("Conv"));
  CHECK(j["ops"]["Conv"]["count"] == 3);
  double sum = 0;
  for (auto& [op, st] : j["ops"].items()) sum += st["flops"].get<double>();
  CHECK(sum == doctest::Approx(g.forward_flops()));

  auto text = test::run_cmd(test::tool("smp-plan") + " " + test::sample("cnn") + " -b 16 --summary");
  REQUIRE(text.exit_code == 0);
  CHECK(text.out.find("parameters       113738") != std::string::npos);
}

TEST_CASE("the GPT-3 175B-shaped graph loads and counts without its weights present") {
  auto dir = test::temp_dir("giant");
  auto r = test::run_cmd(python() + " " + script("giant_models.py") + " gpt3-175b --out " + dir.string());
  REQUIRE(r.exit_code == 0);
  std::smatch m;
  REQUIRE(std::regex_search(r.out, m, std::regex("([0-9]+) parameters")));
  int64_t expected = std::stoll(m[1]);
  fs::path model = dir / "gpt3-175b.onnx";
  REQUIRE(fs::exists(model));
  CHECK_FALSE(fs::exists(dir / "gpt3-175b.weights"));
  CHECK(fs::file_size(model) < 10u << 20);

  Graph g = load_graph(model, batch(1));
  CHECK(g.parameter_count() == expected);
  CHECK(g.parameter_count() > 175'000'000'000);
  for (int p : g.parameters) {
    const Value& v = g.value(p);
    CHECK(v.data == nullptr);
    REQUIRE(v.external.has_value());
    CHECK(v.external->length == v.bytes());
  }
  // 96 layers of 4 d×d-class products plus attention, all static.
  int matmuls = 0;
  for (const auto& n : g.nodes) matmuls += n.op_type == "MatMul";
  CHECK(matmuls == 96 * 6 + 1);
  // Asking for the weights names the missing file.
  LoadOptions with = batch(1);
  with.load_weights = true;
  CHECK_THROWS_WITH(load_graph(model, with), doctest::Contains("gpt3-175b.weights"));
  fs::remove_all(dir);
}

TEST_CASE("the 175B-shaped graph splits 8 ways: 96 attention blocks, 96 MLPs, the vocabulary unevenly") {
  auto dir = test::temp_dir("giant_tp");
  for (bool tied : {false, true}) {
    auto r = test::run_cmd(python() + " " + script("giant_models.py") + " gpt3-175b --out " + dir.string() + (tied ? " --tied" : ""));
    REQUIRE(r.exit_code == 0);
    Graph g = load_graph(dir / "gpt3-175b.onnx", batch(1));
    TpAnalysis a = analyze_tensor_parallel(g, 8);
    std::map<std::string, int> kinds;
    for (const auto& grp : a.groups) ++kinds[std::string(tp_kind_name(grp.kind))];
    INFO("tied: ", tied);
    CHECK(kinds == std::map<std::string, int>{{"attention", 96}, {"embedding", 1}, {"lm_head", 1}, {"mlp", 96}});
    // everything but LayerNorms, positions and the row-parallel biases
    CHECK(a.replicated_params == 96 * (4 * 12288 + 2 * 12288) + 2048 * 12288 + 2 * 12288);
    // 50257 rows over 8 ranks: 6283 on rank 0, 6282 on rank 7
    const int tok = g.find_value("tok_emb.weight");
    REQUIRE(a.params.count(tok));
    CHECK(a.params.at(tok).uneven);
    Graph s0 = shard_graph(g, a, 0), s7 = shard_graph(g, a, 7);
    CHECK(s0.value(tok).shape == Shape{6283, 12288});
    CHECK(s7.value(tok).shape == Shape{6282, 12288});
    CHECK(s7.value(s7.outputs[0]).shape == Shape{1, 2048, 6282});
    CHECK(output_vocab_range(g, a, 7).begin == 50257 - 6282);
    // the fused q|k|v [d, 3d] splits per third, 12 of the 96 heads each
    const int qkv = g.find_value("blocks.0.attn.qkv.weight");
    CHECK(s0.value(qkv).shape == Shape{12288, 3 * 12288 / 8});
  }
  fs::remove_all(dir);
}
