// Tensor parallelism found in the graph (graph/tensor_parallel.hpp): the groups of the samples,
// what a split of each size allows, the per-rank graph's shapes, rewritten constants and inserted
// nodes, and reading one rank's part of an externally stored tensor.
#include "graph/loader.hpp"
#include "graph/summary.hpp"
#include "graph/tensor_parallel.hpp"
#include "test_util.hpp"

#include <doctest/doctest.h>

#include <fstream>
#include <map>

using namespace smp;
using namespace smp::graph;

namespace {

Graph load(const std::string& name, int64_t batch) {
  LoadOptions lo;
  lo.batch_size = batch;
  return load_graph(test::sample(name), lo);
}

std::map<std::string, int> kinds(const TpAnalysis& a) {
  std::map<std::string, int> k;
  for (const auto& g : a.groups) ++k[std::string(tp_kind_name(g.kind))];
  return k;
}

const Node* find_node(const Graph& g, const std::string& name) {
  for (const auto& n : g.nodes)
    if (n.name == name) return &n;
  return nullptr;
}

std::vector<int64_t> ints(const Graph& g, int v) {
  std::vector<int64_t> r;
  const auto& d = *g.value(v).data;
  for (int64_t i = 0; i < d.numel(); ++i) r.push_back(d.get_i64(i));
  return r;
}

}  // namespace

TEST_CASE("GPT sample: embedding, 4 attention blocks by heads, 4 MLPs, the LM head") {
  Graph g = load("gpt", 8);
  TpAnalysis a = analyze_tensor_parallel(g, 2);
  CHECK(kinds(a) == std::map<std::string, int>{{"attention", 4}, {"embedding", 1}, {"lm_head", 1}, {"mlp", 4}});
  CHECK(a.sharded_output == g.outputs[0]);
  // every weight matrix and its bias split; LayerNorms, positions and row-parallel biases not
  CHECK(a.sharded_params + a.replicated_params == g.parameter_count());
  int64_t ln = 0;
  for (int p : g.parameters)
    if (!a.params.count(p)) {
      const std::string& n = g.value(p).name;
      CHECK_MESSAGE((n.find("ln") != std::string::npos || n == "pos_emb" || n.find("proj.bias") != std::string::npos), n);
      ln += g.value(p).numel();
    }
  CHECK(ln == a.replicated_params);
  const auto& attn = a.groups[1];
  CHECK(attn.name == "blocks.0/attn");
  CHECK(attn.column.size() == 1);  // the fused q|k|v projection
  CHECK(attn.row.size() == 1);
  int qkv = g.find_value("blocks.0.attn.qkv.weight");
  REQUIRE(a.params.count(qkv));
  CHECK(a.params.at(qkv) == ShardSpec{0, 3, false});  // [3d, d]: each of q, k, v by heads

  // 4 heads: a split 4 ways keeps the attention; 8 ways only the MLPs, the embedding and the head.
  CHECK(kinds(analyze_tensor_parallel(g, 4))["attention"] == 4);
  TpAnalysis a8 = analyze_tensor_parallel(g, 8);
  CHECK(kinds(a8)["attention"] == 0);
  CHECK(kinds(a8)["mlp"] == 4);
  bool said = false;
  for (const auto& n : a8.notes) said |= n.find("qkv") != std::string::npos && n.find("does not") != std::string::npos;
  CHECK_MESSAGE(said, "a note says why the attention does not split 8 ways");
  CHECK(analyze_tensor_parallel(g, 1).groups.empty());
}

TEST_CASE("the per-rank graph: local shapes, rewritten shape constants, f and g inserted") {
  Graph g = load("gpt", 8);
  TpAnalysis a = analyze_tensor_parallel(g, 2);
  for (int r = 0; r < 2; ++r) {
    Graph s = shard_graph(g, a, r);
    CHECK(s.value(s.find_value("blocks.0.attn.qkv.weight")).shape == Shape{192, 128});
    CHECK(s.value(s.find_value("blocks.0.fc_proj.weight")).shape == Shape{128, 256});
    CHECK(s.value(s.find_value("tok_emb.weight")).shape == Shape{2048, 128});
    CHECK(s.value(s.find_value("blocks.0.ln1.weight")).shape == Shape{128});
    CHECK(s.value(s.outputs[0]).shape == Shape{8, 64, 2048});
    // the q reshape now makes 2 heads of 32
    const Node* rs = find_node(s, "/blocks.0/attn/Reshape");
    REQUIRE(rs);
    CHECK(ints(s, rs->inputs[1]) == std::vector<int64_t>{8, 64, 2, 32});
    const Node* sp = find_node(s, "/blocks.0/attn/Split");
    REQUIRE(sp);
    CHECK(ints(s, sp->inputs[1]) == std::vector<int64_t>{64, 64, 64});
    // the embedding gathers this rank's rows, then the group sums
    const Node* emb = find_node(s, "/tok_emb/Gather");
    REQUIRE(emb);
    CHECK(emb->op_type == "TpVocabGather");
    CHECK(emb->attr_int("start", -1) == 2048 * r);
    REQUIRE(find_node(s, "/tok_emb/Gather/tp_allreduce"));
    // g after each row-parallel product, f before each group's replicated input
    int copies = 0, reduces = 0;
    for (const auto& n : s.nodes) {
      copies += n.op_type == "TpCopy";
      reduces += n.op_type == "TpAllReduce";
    }
    CHECK(copies == 9);   // 4 attention, 4 MLP, the head (the embedding reads token ids)
    CHECK(reduces == 9);  // 4 attention, 4 MLP, the embedding
    // topological order kept: every input produced before its consumer
    for (size_t i = 0; i < s.nodes.size(); ++i)
      for (int v : s.nodes[i].inputs)
        if (v >= 0 && s.value(v).producer >= 0) CHECK(s.value(v).producer < static_cast<int>(i));
    // half the FLOPs of every split product
    const Node* fc = find_node(s, "/blocks.0/fc/MatMul");
    const Node* fc0 = find_node(g, "/blocks.0/fc/MatMul");
    CHECK(fc->cost.flops == doctest::Approx(fc0->cost.flops / 2));
  }
}

TEST_CASE("MLP sample: Gemm pairs; the 10 classes split unevenly 4 ways") {
  Graph g = load("mlp", 8);
  TpAnalysis a = analyze_tensor_parallel(g, 2);
  CHECK(kinds(a) == std::map<std::string, int>{{"mlp", 3}});
  CHECK(a.groups[0].name == "layers.0+layers.1");
  // 5 Gemms would leave the classifier alone: it splits as a head (vocabulary-parallel loss);
  // here 6 pair up, and the last row-parallel Gemm's bias is added after the all-reduce.
  Graph s = shard_graph(g, a, 1);
  const Node* last = find_node(s, "/layers.5/Gemm");
  REQUIRE(last);
  CHECK(last->inputs.size() == 2);
  REQUIRE(find_node(s, "/layers.5/Gemm/tp_bias"));
  CHECK(shard_size(10, 4, 0, true) == 3);
  CHECK(shard_size(10, 4, 3, true) == 2);
  CHECK(shard_begin(10, 4, 3, true) == 8);
}

TEST_CASE("one rank's part of an externally stored tensor is read without the rest") {
  auto dir = test::temp_dir("tp_external");
  std::vector<float> all(6 * 8);
  for (size_t i = 0; i < all.size(); ++i) all[i] = static_cast<float>(i);
  {
    std::ofstream f(dir / "w.bin", std::ios::binary);
    f.write("0123456789abcdef", 16);  // the tensor starts at offset 16
    f.write(reinterpret_cast<const char*>(all.data()), static_cast<std::streamsize>(all.size() * 4));
  }
  Value v;
  v.name = "w";
  v.dtype = DType::F32;
  v.shape = {6, 8};
  v.kind = ValueKind::Parameter;
  v.external = ExternalData{dir / "w.bin", 16, 6 * 8 * 4};
  TensorData whole{DType::F32, {6, 8}, std::string(reinterpret_cast<const char*>(all.data()), all.size() * 4)};
  for (ShardSpec s : {ShardSpec{1, 1, false}, ShardSpec{1, 2, false}, ShardSpec{0, 1, true}})
    for (int r = 0; r < 4; ++r) {
      auto part = read_tensor_shard(v, s, 4, r);
      CHECK(part->bytes == shard_tensor(whole, s, 4, r).bytes);
    }
  v.external->length = 12;
  CHECK_THROWS_WITH(read_tensor_shard(v, ShardSpec{1, 1, false}, 2, 0), doctest::Contains("expected 192"));
  v.external = ExternalData{dir, 0, -1};  // a directory: refused, as the loader refuses it
  CHECK_THROWS_WITH(read_tensor_shard(v, ShardSpec{1, 1, false}, 2, 0), doctest::Contains("not a regular file"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("the summary lists the groups, what stays replicated, and the largest split") {
  Graph g = load("gpt", 8);
  TpSummary s = summarize_tensor_parallel(g);
  CHECK(s.groups.size() == 10);
  CHECK(s.max_degree == 4);  // the attention's 4 heads
  int embedding_max = 0;
  for (const auto& t : s.groups)
    if (t.kind == "embedding") embedding_max = t.max_degree;
  CHECK(embedding_max == 64);
  CHECK(s.replicated.size() == 27);  // 9 LayerNorms x 2, 8 row-parallel biases, pos_emb
  auto j = to_json(s);
  CHECK(j["groups"].size() == 10);
}
