// The op registry's cost rules on hand-computed cases.
#include <doctest/doctest.h>

#include "graph/op_registry.hpp"

using namespace smp;
using namespace smp::graph;

namespace {

// A one-node graph with the given input shapes and output shapes (float32).
struct OneNode {
  Graph g;
  OneNode(const std::string& op, std::vector<Shape> ins, std::vector<Shape> outs,
          std::vector<ValueKind> kinds = {}) {
    Node n;
    n.name = "n";
    n.op_type = op;
    for (size_t i = 0; i < ins.size(); ++i) {
      Value v;
      v.name = "in" + std::to_string(i);
      v.dtype = DType::F32;
      v.shape = ins[i];
      v.kind = i < kinds.size() ? kinds[i] : ValueKind::Activation;
      n.inputs.push_back(static_cast<int>(g.values.size()));
      g.values.push_back(v);
    }
    for (size_t i = 0; i < outs.size(); ++i) {
      Value v;
      v.name = "out" + std::to_string(i);
      v.dtype = DType::F32;
      v.shape = outs[i];
      v.producer = 0;
      n.outputs.push_back(static_cast<int>(g.values.size()));
      g.values.push_back(v);
    }
    g.nodes.push_back(n);
  }
  Node& node() { return g.nodes[0]; }
  NodeCost cost() { return node_cost(g, g.nodes[0]); }
};

}  // namespace

TEST_CASE("every op has an entry, found by its ONNX type") {
  for (int i = 0; i < op_count(); ++i) {
    const OpDef& d = op_def(static_cast<Op>(i));
    CHECK(static_cast<int>(d.op) == i);
    CHECK(find_op(d.type) == &d);
    CHECK(static_cast<bool>(d.cost));
  }
  CHECK(find_op("NoSuchOp") == nullptr);
}

TEST_CASE("MatMul: 2·M·N·K, batched") {
  OneNode t("MatMul", {{2, 8, 16, 32}, {2, 8, 32, 64}}, {{2, 8, 16, 64}});
  CHECK(t.cost().flops == 2.0 * 2 * 8 * 16 * 64 * 32);
  CHECK(t.cost().bytes_read == 4.0 * (2 * 8 * 16 * 32 + 2 * 8 * 32 * 64));
  CHECK(t.cost().output_bytes == 4.0 * 2 * 8 * 16 * 64);
}

TEST_CASE("Gemm: 2·M·N·K plus the bias, transA respected, parameters counted") {
  OneNode t("Gemm", {{32, 256}, {512, 256}, {512}}, {{32, 512}},
            {ValueKind::Activation, ValueKind::Parameter, ValueKind::Parameter});
  t.node().attrs["transB"].i = 1;
  CHECK(t.cost().flops == 2.0 * 32 * 512 * 256 + 32 * 512);
  CHECK(t.cost().param_elems == 512 * 256 + 512);
  OneNode u("Gemm", {{256, 32}, {256, 512}}, {{32, 512}});
  u.node().attrs["transA"].i = 1;
  CHECK(u.cost().flops == 2.0 * 32 * 512 * 256);
}

TEST_CASE("Conv: 2·N·Cout·Hout·Wout·Cin·kh·kw / groups") {
  OneNode t("Conv", {{4, 16, 32, 32}, {32, 16, 3, 3}}, {{4, 32, 32, 32}});
  CHECK(t.cost().flops == 2.0 * 4 * 32 * 32 * 32 * 16 * 3 * 3);
  OneNode g("Conv", {{4, 16, 32, 32}, {32, 4, 3, 3}}, {{4, 32, 32, 32}});  // groups = 4
  g.node().attrs["group"].i = 4;
  CHECK(g.cost().flops == 2.0 * 4 * 32 * 32 * 32 * 4 * 3 * 3);
}

TEST_CASE("elementwise: one FLOP per output element; views move nothing") {
  OneNode t("Add", {{4, 128}, {128}}, {{4, 128}});
  CHECK(t.cost().flops == 4 * 128);
  OneNode r("Reshape", {{4, 128}, {2}}, {{512}});
  CHECK(r.cost().flops == 0);
  CHECK(r.cost().bytes_written == 0);
  CHECK(r.cost().output_bytes == 0);
}

TEST_CASE("Gather reads the rows it gathers, not the whole table") {
  OneNode t("Gather", {{50000, 1024}, {8, 64}}, {{8, 64, 1024}}, {ValueKind::Parameter, ValueKind::Input});
  t.g.values[1].dtype = DType::I64;
  NodeCost c = t.cost();
  CHECK(c.bytes_read == 4.0 * 8 * 64 * 1024 + 8.0 * 8 * 64);
  CHECK(c.param_elems == 50000 * 1024);
}

TEST_CASE("saved activations follow the declaration and skip parameters") {
  OneNode mm("MatMul", {{16, 32}, {32, 64}}, {{16, 64}}, {ValueKind::Activation, ValueKind::Parameter});
  CHECK(saved_activation_bytes(mm.g, mm.node()) == 16 * 32 * 4);
  OneNode relu("Relu", {{16, 32}}, {{16, 32}});
  CHECK(saved_activation_bytes(relu.g, relu.node()) == 16 * 32 * 4);
  OneNode add("Add", {{16, 32}, {16, 32}}, {{16, 32}});
  CHECK(saved_activation_bytes(add.g, add.node()) == 0);
}

TEST_CASE("an op without a rule gets a bytes-based estimate") {
  OneNode t("Frobnicate", {{10, 10}}, {{10, 10}});
  NodeCost c = t.cost();
  CHECK(c.estimated);
  CHECK(c.bytes_read == 400);
  CHECK(c.bytes_written == 400);
}
