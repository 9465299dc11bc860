// Tensors, the CPU backend, forward kernels against hand-computed references, load-time errors,
// the executor's lifetimes and losses.
#include <doctest/doctest.h>

#include "runtime/loss.hpp"
#include "runtime/npy.hpp"
#include "runtime/cpu/vmath.hpp"

#include <unistd.h>

#include <fstream>
#include "tiny_graph.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

using namespace smp;
using namespace smp::test;
using runtime::Tensor;

namespace {

std::tuple<std::string, DType, Shape> F(const std::string& n, Shape s) { return {n, DType::F32, s}; }
std::tuple<std::string, DType, Shape> T(const std::string& n, DType d, Shape s) { return {n, d, s}; }

// Runs a one-node graph (inputs as constants) forward and returns its outputs.
struct OneNode {
  TinyGraph tg;
  runtime::CpuBackend be{1};
  std::vector<int> ins;
  int cf(const Shape& s, std::vector<float> v) { int id = tg.constant<float>("c" + std::to_string(ins.size()), DType::F32, s, v); ins.push_back(id); return id; }
  int ci(const Shape& s, std::vector<int64_t> v) { int id = tg.constant<int64_t>("c" + std::to_string(ins.size()), DType::I64, s, v); ins.push_back(id); return id; }
  int cb(const Shape& s, std::vector<uint8_t> v) { int id = tg.constant<uint8_t>("c" + std::to_string(ins.size()), DType::Bool, s, v); ins.push_back(id); return id; }
  std::vector<Tensor> run(const std::string& op, std::vector<std::tuple<std::string, DType, Shape>> outs,
                          std::map<std::string, graph::Attribute> attrs = {}) {
    auto o = tg.node(op, ins, outs, attrs);
    for (int id : o) tg.output(id);
    runtime::ExecutorOptions opts;
    opts.training = false;
    runtime::StageExecutor ex(tg.g, be, opts);
    return ex.forward(0, {});
  }
};

void near(const std::vector<float>& got, const std::vector<float>& want, double tol = 1e-5) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("element " << i);
    CHECK(std::fabs(got[i] - want[i]) <= tol * (1 + std::fabs(want[i])));
  }
}

}  // namespace

TEST_CASE("tensors share 64-byte aligned buffers; the backend counts live and peak bytes") {
  runtime::CpuBackend be(1);
  int64_t base = be.memory().live_bytes;
  {
    Tensor a = be.zeros(DType::F32, {3, 5});
    CHECK(reinterpret_cast<uintptr_t>(a.raw()) % 64 == 0);
    CHECK(a.bytes() == 60);
    CHECK(be.memory().live_bytes == base + 60);
    Tensor v = a.view({15});
    CHECK(v.raw() == a.raw());
    CHECK(v.str() == "float32[15]");
    Tensor b = be.empty(DType::I64, {4});
    CHECK(be.memory().live_bytes == base + 92);
    CHECK_THROWS(a.data<int64_t>());
    CHECK_THROWS(a.view({4}));
  }
  CHECK(be.memory().live_bytes == base);
  CHECK(be.memory().peak_bytes >= base + 92);
}

TEST_CASE("every graph::Op has a CPU table entry in enum order") {
  const auto& t = runtime::cpu_kernel_table();
  for (size_t i = 0; i < t.size(); ++i) CHECK(static_cast<size_t>(t[i].op) == i);
  // differentiable ops of the registry that have a forward kernel also have a gradient rule
  for (size_t i = 0; i < t.size(); ++i) {
    const auto& def = graph::op_def(static_cast<graph::Op>(i));
    if (t[i].prepare && def.differentiable_inputs != 0) {
      INFO(def.type);
      CHECK((t[i].backward != nullptr));
    }
  }
}

TEST_CASE("binary ops broadcast as ONNX defines it") {
  OneNode n;
  n.cf({2, 1, 3}, {1, 2, 3, 4, 5, 6});
  n.cf({2, 1}, {10, 20});
  auto y = n.run("Add", {F("y", {2, 2, 3})});
  near(to_vec(y[0]), {11, 12, 13, 21, 22, 23, 14, 15, 16, 24, 25, 26});
  OneNode m;
  m.cf({3}, {1, 4, 9});
  m.cf({}, {2});
  near(to_vec(m.run("Div", {F("y", {3})})[0]), {0.5f, 2, 4.5f});
  OneNode p;
  p.cf({2}, {2, 3});
  p.ci({}, {2});
  near(to_vec(p.run("Pow", {F("y", {2})})[0]), {4, 9});
  OneNode e;
  e.ci({3}, {1, 2, 3});
  e.ci({1}, {2});
  auto eq = e.run("Equal", {T("y", DType::Bool, {3})});
  const uint8_t* b = eq[0].data<uint8_t>();
  CHECK((b[0] == 0 && b[1] == 1 && b[2] == 0));
}

TEST_CASE("Where, Cast, unary math") {
  OneNode w;
  w.cb({2}, {1, 0});
  w.cf({2}, {1, 2});
  w.cf({1}, {-7});
  near(to_vec(w.run("Where", {F("y", {2})})[0]), {1, -7});
  OneNode c;
  c.ci({3}, {1, -2, 3});
  near(to_vec(c.run("Cast", {F("y", {3})}, {{"to", attr_i(1)}})[0]), {1, -2, 3});
  OneNode u;
  u.cf({4}, {-1, 0, 0.5f, 2});
  near(to_vec(u.run("Relu", {F("y", {4})})[0]), {0, 0, 0.5f, 2});
  OneNode g;
  g.cf({2}, {0, 1});
  near(to_vec(g.run("Gelu", {F("y", {2})})[0]), {0, 0.8413447f});
  OneNode s;
  s.cf({2}, {0, 2});
  near(to_vec(s.run("Sigmoid", {F("y", {2})})[0]), {0.5f, 0.8807971f});
}

TEST_CASE("MatMul, Gemm") {
  OneNode m;
  m.cf({2, 2}, {1, 2, 3, 4});
  m.cf({2, 3}, {1, 0, 1, 0, 1, 1});
  near(to_vec(m.run("MatMul", {F("y", {2, 3})})[0]), {1, 2, 3, 3, 4, 7});
  OneNode b;  // batched with broadcasting: [2,1,2] x [3,2,1] -> [2,3,1,1]... use [2,1,1,2] x [3,2,1]
  b.cf({2, 1, 1, 2}, {1, 2, 3, 4});
  b.cf({3, 2, 1}, {1, 1, 1, 0, 0, 1});
  near(to_vec(b.run("MatMul", {F("y", {2, 3, 1, 1})})[0]), {3, 1, 2, 7, 3, 4});
  OneNode g;
  g.cf({2, 2}, {1, 2, 3, 4});
  g.cf({3, 2}, {1, 0, 0, 1, 1, 1});
  g.cf({3}, {10, 20, 30});
  near(to_vec(g.run("Gemm", {F("y", {2, 3})}, {{"transB", attr_i(1)}, {"beta", attr_f(0.5)}})[0]),
       {6, 12, 18, 8, 14, 22});
}

TEST_CASE("Conv, pooling") {
  OneNode c;  // 1x1x3x3 input, 2x2 kernel of ones, bias 1
  c.cf({1, 1, 3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  c.cf({1, 1, 2, 2}, {1, 1, 1, 1});
  c.cf({1}, {1});
  near(to_vec(c.run("Conv", {F("y", {1, 1, 2, 2})})[0]), {13, 17, 25, 29});
  OneNode p;
  p.cf({1, 1, 2, 4}, {1, 5, 2, 0, 3, 4, 8, 1});
  near(to_vec(p.run("MaxPool", {F("y", {1, 1, 1, 2})}, {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}})[0]),
       {5, 8});
  OneNode a;
  a.cf({1, 1, 2, 4}, {1, 5, 2, 0, 3, 4, 8, 1});
  near(to_vec(a.run("AveragePool", {F("y", {1, 1, 1, 2})}, {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}})[0]),
       {3.25f, 2.75f});
  OneNode g;
  g.cf({1, 2, 1, 2}, {1, 3, 5, 7});
  near(to_vec(g.run("GlobalAveragePool", {F("y", {1, 2, 1, 1})})[0]), {2, 6});
}

TEST_CASE("MaxPool's Indices output (row- and column-major, padding), integer MaxPool and Clip, Pow of mixed dtypes") {
  // 1x2x2x3, windows 2x2 at stride 1: channel 0's maxima are its (0,1) twice, channel 1's its
  // (0,0) and (0,2); flat indices count channel 1 from 6.
  const std::vector<float> x = {1, 9, 2, 3, 4, 8, 7, 0, 12, 6, 2, 11};
  for (int order : {0, 1}) {
    OneNode p;
    p.cf({1, 2, 2, 3}, x);
    auto o = p.run("MaxPool", {F("y", {1, 2, 1, 2}), T("i", DType::I64, {1, 2, 1, 2})},
                   {{"kernel_shape", attr_ints({2, 2})}, {"storage_order", attr_i(order)}});
    near(to_vec(o[0]), {9, 9, 7, 12});
    const int64_t* i = o[1].data<int64_t>();
    INFO("storage_order " << order);
    if (order == 0) CHECK(std::vector<int64_t>(i, i + 4) == std::vector<int64_t>{1, 1, 6, 8});
    else CHECK(std::vector<int64_t>(i, i + 4) == std::vector<int64_t>{2, 2, 6, 10});
  }
  {  // padding: indices are of X's own (unpadded) positions
    OneNode p;
    p.cf({1, 1, 2, 3}, {1, 9, 2, 3, 4, 8});
    auto o = p.run("MaxPool", {F("y", {1, 1, 2, 2}), T("i", DType::I64, {1, 1, 2, 2})},
                   {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}, {"pads", attr_ints({1, 1, 1, 1})}});
    near(to_vec(o[0]), {1, 9, 3, 8});
    const int64_t* i = o[1].data<int64_t>();
    CHECK(std::vector<int64_t>(i, i + 4) == std::vector<int64_t>{0, 1, 3, 5});
  }
  {
    OneNode p;
    p.ins.push_back(p.tg.constant<uint8_t>("x", DType::U8, {1, 1, 2, 3}, {1, 9, 2, 3, 4, 200}));
    auto o = p.run("MaxPool", {T("y", DType::U8, {1, 1, 1, 2})}, {{"kernel_shape", attr_ints({2, 2})}});
    const uint8_t* y = o[0].data<uint8_t>();
    CHECK(std::vector<int>(y, y + 2) == std::vector<int>{9, 200});
  }
  {
    OneNode c;
    c.ins.push_back(c.tg.constant<int8_t>("x", DType::I8, {5}, {-128, -3, 0, 5, 127}));
    c.ins.push_back(c.tg.constant<int8_t>("lo", DType::I8, {}, {-2}));
    c.ins.push_back(c.tg.constant<int8_t>("hi", DType::I8, {}, {4}));
    auto o = c.run("Clip", {T("y", DType::I8, {5})});
    const int8_t* y = o[0].data<int8_t>();
    CHECK(std::vector<int>(y, y + 5) == std::vector<int>{-2, -2, 0, 4, 4});
  }
  {  // an integer base to a float exponent is float64's power cast back: 4^0.5 is 2, not 4^0
    OneNode w;
    w.ci({3}, {2, 4, 3});
    w.cf({3}, {3, 0.5f, 2});
    auto o = w.run("Pow", {T("y", DType::I64, {3})});
    const int64_t* y = o[0].data<int64_t>();
    CHECK(std::vector<int64_t>(y, y + 3) == std::vector<int64_t>{8, 2, 9});
    OneNode u;
    u.cf({2}, {2, 1.5f});
    u.ins.push_back(u.tg.constant<uint32_t>("e", DType::U32, {2}, {3, 2}));
    near(to_vec(u.run("Pow", {F("y", {2})})[0]), {8, 2.25f});
  }
}

TEST_CASE("LpNormalization (no ONNX node case covers it): p 2 and p 1 along the last axis") {
  for (int p : {2, 1}) {
    OneNode n;
    n.cf({2, 2}, {3, 4, 1, -1});
    auto y = to_vec(n.run("LpNormalization", {F("y", {2, 2})}, {{"p", attr_i(p)}})[0]);
    const float r = 1.0f / std::sqrt(2.0f);
    if (p == 2) near(y, {0.6f, 0.8f, r, -r});
    else near(y, {3.0f / 7, 4.0f / 7, 0.5f, -0.5f});
  }
}

TEST_CASE("Det: values by hand; the gradient of a singular matrix is its cofactor matrix") {
  OneNode n;
  n.cf({2, 2, 2}, {3, 1, 4, 2, 0, 1, 1, 0});
  near(to_vec(n.run("Det", {F("d", {2})})[0]), {2, -1});
  // A = [[1, 2, 3], [4, 5, 6], [7, 8, 9]] has det 0 (exactly, in the LU); d det / dA = the
  // cofactors C_ij = (-1)^(i+j) det(minor_ij), not det(A) A^-T
  runtime::CpuBackend be(1);
  TinyGraph t;
  int a = t.boundary("a", {3, 3});
  t.output(t.node("Det", {a}, {F("d", {})})[0]);
  runtime::StageExecutor ex(t.g, be);
  std::vector<float> av{1, 2, 3, 4, 5, 6, 7, 8, 9}, one{1};
  Tensor at = be.from_host(DType::F32, {3, 3}, av.data()), gy = be.from_host(DType::F32, {}, one.data());
  ex.zero_grad();
  near(to_vec(ex.forward(0, {&at, 1})[0]), {0});
  near(to_vec(ex.backward(0, {&gy, 1})[0]), {-3, 6, -3, 6, -12, 6, -3, 6, -3});
}

TEST_CASE("BitShift of unsigned integers, broadcast; a shift by the width or more gives 0") {
  for (const char* dir : {"LEFT", "RIGHT"}) {
    CAPTURE(dir);
    OneNode n;
    n.ins.push_back(n.tg.constant<uint8_t>("x", DType::U8, {4}, {1, 3, 255, 16}));
    n.ins.push_back(n.tg.constant<uint8_t>("s", DType::U8, {4}, {1, 2, 8, 3}));
    auto y = n.run("BitShift", {T("y", DType::U8, {4})}, {{"direction", attr_s(dir)}})[0];
    const uint8_t* v = y.data<uint8_t>();
    const std::vector<int> want = std::string(dir) == "LEFT" ? std::vector<int>{2, 12, 0, 128} : std::vector<int>{0, 0, 0, 2};
    for (size_t i = 0; i < 4; ++i) CHECK(static_cast<int>(v[i]) == want[i]);
  }
  OneNode n;
  n.ins.push_back(n.tg.constant<uint32_t>("x", DType::U32, {2, 1}, {1, 0x80000000u}));
  n.ins.push_back(n.tg.constant<uint32_t>("s", DType::U32, {2}, {31, 32}));
  auto y = n.run("BitShift", {T("y", DType::U32, {2, 2})}, {{"direction", attr_s("LEFT")}})[0];
  const uint32_t* v = y.data<uint32_t>();
  CHECK(v[0] == 0x80000000u);
  CHECK(v[1] == 0u);
  CHECK(v[2] == 0u);
  CHECK(v[3] == 0u);
}

TEST_CASE("LpPool, GlobalLpPool and MaxUnpool by hand") {
  {  // p 2 over 2 x 2 windows of a 2 x 3 plane, stride 1: sqrt of the sums of squares
    OneNode n;
    n.cf({1, 1, 2, 3}, {1, -2, 2, 2, 4, -1});
    near(to_vec(n.run("LpPool", {F("y", {1, 1, 1, 2})}, {{"kernel_shape", attr_ints({2, 2})}, {"p", attr_i(2)}})[0]),
         {5, 5});
  }
  {  // p 1 and p 3 of a plane [3, -4]
    for (int p : {1, 3}) {
      OneNode n;
      n.cf({1, 1, 1, 2}, {3, -4});
      near(to_vec(n.run("GlobalLpPool", {F("y", {1, 1, 1, 1})}, {{"p", attr_i(p)}})[0]),
           {p == 1 ? 7.0f : static_cast<float>(std::cbrt(91.0))});
    }
  }
  {  // each X element to its index in a zero output
    OneNode n;
    n.cf({1, 1, 1, 2}, {7, 9});
    n.ci({1, 1, 1, 2}, {3, 0});
    near(to_vec(n.run("MaxUnpool", {F("y", {1, 1, 2, 2})}, {{"kernel_shape", attr_ints({2, 1})}, {"strides", attr_ints({2, 1})}})[0]),
         {9, 0, 0, 7});
  }
}

TEST_CASE("Softmax, LayerNormalization, reductions") {
  OneNode s;
  s.cf({2, 2}, {0, 0, 0, std::log(3.0f)});
  near(to_vec(s.run("Softmax", {F("y", {2, 2})})[0]), {0.5f, 0.5f, 0.25f, 0.75f});
  OneNode l;
  l.cf({1, 2}, {1, 3});
  l.cf({2}, {2, 2});
  l.cf({2}, {1, 0});
  near(to_vec(l.run("LayerNormalization", {F("y", {1, 2})}, {{"epsilon", attr_f(0)}})[0]), {-1, 2});
  OneNode r;
  r.cf({2, 3}, {1, 2, 3, 4, 5, 6});
  r.ci({1}, {1});
  near(to_vec(r.run("ReduceMean", {F("y", {2, 1})})[0]), {2, 5});
  OneNode r2;
  r2.cf({2, 3}, {1, 2, 3, 4, 5, 6});
  near(to_vec(r2.run("ReduceSum", {F("y", {})}, {{"keepdims", attr_i(0)}})[0]), {21});
}

TEST_CASE("data movement") {
  OneNode t;
  t.cf({2, 3}, {1, 2, 3, 4, 5, 6});
  near(to_vec(t.run("Transpose", {F("y", {3, 2})})[0]), {1, 4, 2, 5, 3, 6});
  OneNode c;
  c.cf({2, 1}, {1, 2});
  c.cf({2, 2}, {3, 4, 5, 6});
  near(to_vec(c.run("Concat", {F("y", {2, 3})}, {{"axis", attr_i(1)}})[0]), {1, 3, 4, 2, 5, 6});
  OneNode s;
  s.cf({2, 4}, {1, 2, 3, 4, 5, 6, 7, 8});
  s.ci({1}, {1});
  s.ci({1}, {100});
  s.ci({1}, {1});
  s.ci({1}, {2});
  near(to_vec(s.run("Slice", {F("y", {2, 2})})[0]), {2, 4, 6, 8});
  OneNode g;
  g.cf({3, 2}, {1, 2, 3, 4, 5, 6});
  g.ci({2}, {2, -3});
  near(to_vec(g.run("Gather", {F("y", {2, 2})})[0]), {5, 6, 1, 2});
  OneNode e;
  e.cf({2, 1}, {1, 2});
  e.ci({2}, {2, 3});
  near(to_vec(e.run("Expand", {F("y", {2, 3})})[0]), {1, 1, 1, 2, 2, 2});
  OneNode tr;
  tr.cf({3, 3}, {1, 2, 3, 4, 5, 6, 7, 8, 9});
  near(to_vec(tr.run("Trilu", {F("y", {3, 3})}, {{"upper", attr_i(0)}})[0]), {1, 0, 0, 4, 5, 0, 7, 8, 9});
  OneNode sp;
  sp.cf({5}, {1, 2, 3, 4, 5});
  auto parts = sp.run("Split", {F("a", {2}), F("b", {3})});
  near(to_vec(parts[0]), {1, 2});
  near(to_vec(parts[1]), {3, 4, 5});
}

TEST_CASE("unsupported ops, attributes and dtypes fail when the stage is loaded, naming node and op") {
  auto load_error = [](auto build) {
    TinyGraph tg;
    build(tg);
    runtime::CpuBackend be(1);
    try {
      runtime::StageExecutor ex(tg.g, be);
    } catch (const Error& e) {
      CHECK(e.kind() == ErrorKind::BadInput);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  std::string m1 = load_error([](TinyGraph& t) {
    int x = t.boundary("x", {2});
    t.output(t.node("NoSuchOp", {x}, {F("y", {2})})[0]);
  });
  CHECK(m1.find("node NoSuchOp_0 (NoSuchOp): op NoSuchOp is not supported") == 0);
  std::string m2 = load_error([](TinyGraph& t) {
    int x = t.boundary("x", {2});
    t.output(t.node("Gelu", {x}, {F("y", {2})}, {{"approximate", attr_s("cubic")}})[0]);
  });
  CHECK(m2.find("node Gelu_0 (Gelu): approximate='cubic' not supported") == 0);
  std::string m3 = load_error([](TinyGraph& t) {
    int x = t.input("x", DType::I64, {2, 2});
    int y = t.input("w", DType::I64, {2, 2});
    t.output(t.node("MatMul", {x, y}, {T("y", DType::I64, {2, 2})})[0]);
  });
  CHECK(m3.find("node MatMul_0 (MatMul): input A 'x' has dtype int64") == 0);
  std::string m4 = load_error([](TinyGraph& t) {
    int x = t.boundary("x", {2, 3});
    int y = t.input("y", DType::I64, {2});
    t.output(t.node("SoftmaxCrossEntropyLoss", {x, y}, {F("l", {})}, {{"reduction", attr_s("avg")}})[0]);
  });
  CHECK(m4.find("node SoftmaxCrossEntropyLoss_0 (SoftmaxCrossEntropyLoss): reduction 'avg' not supported") == 0);
  std::string unpool = load_error([](TinyGraph& t) {  // output_shape with one channel fewer than X
    int x = t.boundary("x", {1, 2, 2, 2});
    int i = t.constant<int64_t>("i", DType::I64, {1, 2, 2, 2}, {0, 1, 2, 3, 4, 5, 6, 7});
    int os = t.constant<int64_t>("os", DType::I64, {4}, {1, 1, 4, 4});
    t.output(t.node("MaxUnpool", {x, i, os}, {F("y", {1, 1, 4, 4})}, {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}})[0]);
  });
  CHECK(unpool.find("node MaxUnpool_0 (MaxUnpool): output shape [1, 1, 4, 4] for the default [1, 2, 4, 4]") == 0);
  std::string m5 = load_error([](TinyGraph& t) {
    int x = t.boundary("x", {1, 1, 2, 2, 2, 2});
    int w = t.param("w", {1, 1, 1, 1, 1, 1}, {1});
    t.output(t.node("Conv", {x, w}, {F("y", {1, 1, 2, 2, 2, 2})})[0]);
  });
  CHECK(m5.find("node Conv_0 (Conv): 4-D spatial input not supported (1-D to 3-D)") == 0);
}

namespace {
// x [N, 4] -> Gemm(W [3,4], b) -> Relu -> MatMul(V [3, 5]) -> logits [N, 5]
TinyGraph small_mlp(int64_t N) {
  TinyGraph t;
  int x = t.input("x", DType::F32, {N, 4});
  int w = t.param("w", {3, 4}, random_floats(12, 1));
  int b = t.param("b", {3}, random_floats(3, 2));
  int v = t.param("v", {3, 5}, random_floats(15, 3));
  int h = t.node("Gemm", {x, w, b}, {F("h", {N, 3})}, {{"transB", attr_i(1)}})[0];
  int r = t.node("Relu", {h}, {F("r", {N, 3})})[0];
  t.output(t.node("MatMul", {r, v}, {F("logits", {N, 5})})[0]);
  return t;
}
}  // namespace

TEST_CASE("cross-entropy: value, gradient, and microbatches add up to the minibatch") {
  runtime::CpuBackend be(1);
  std::vector<float> lg{0, 0, std::log(3.0f), 0};
  Tensor logits = be.from_host(DType::F32, {2, 2}, lg.data());
  std::vector<int64_t> lab{0, 0};
  Tensor labels = be.from_host(DType::I64, {2}, lab.data());
  auto r = runtime::cross_entropy(be, logits, labels);
  CHECK(r.loss == doctest::Approx((std::log(2.0) + std::log(4.0 / 3.0)) / 2).epsilon(1e-6));
  near(to_vec(r.grad), {-0.25f, 0.25f, -0.125f, 0.125f});

  // minibatch of 4 vs two microbatches of 2 on the same weights
  auto xs = random_floats(16, 7);
  std::vector<int64_t> ys{1, 4, 0, 2};
  TinyGraph big = small_mlp(4), half = small_mlp(2);
  runtime::StageExecutor eb(big.g, be), eh(half.g, be);
  Tensor xb = be.from_host(DType::F32, {4, 4}, xs.data());
  Tensor yb = be.from_host(DType::I64, {4}, ys.data());
  auto ob = eb.forward(0, {&xb, 1});
  auto lb = runtime::cross_entropy(be, ob[0], yb);
  eb.backward(0, {&lb.grad, 1});
  double lsum = 0;
  for (int m = 0; m < 2; ++m) {
    Tensor xm = be.from_host(DType::F32, {2, 4}, xs.data() + 8 * m);
    Tensor ym = be.from_host(DType::I64, {2}, ys.data() + 2 * m);
    auto om = eh.forward(m, {&xm, 1});
    auto lm = runtime::cross_entropy(be, om[0], ym, 0.5f);
    lsum += 0.5 * lm.loss;
    eh.backward_input(m, {&lm.grad, 1});
  }
  eh.backward_weight(1);
  eh.backward_weight(0);
  CHECK(eh.pending() == 0);
  CHECK(lsum == doctest::Approx(lb.loss).epsilon(1e-6));
  for (size_t i = 0; i < eb.parameters().size(); ++i)
    near(to_vec(eh.gradient(eh.parameters()[i])), to_vec(eb.gradient(eb.parameters()[i])), 1e-5);
}

TEST_CASE("NegativeLogLikelihoodLoss: the label's negated score, mean over the weights; a label out of range names the op") {
  OneNode a;
  a.cf({2, 2}, {-1, -2, -3, -4});
  a.ci({2}, {1, 0});
  near(to_vec(a.run("NegativeLogLikelihoodLoss", {F("l", {})})[0]), {2.5f});
  OneNode b;  // class weights 2, 0.5; the row labelled 1 is ignored: (2·3 + 2·5) / (2 + 2)
  b.cf({3, 2}, {-1, -2, -3, -4, -5, -6});
  b.ci({3}, {1, 0, 0});
  b.cf({2}, {2.0f, 0.5f});
  near(to_vec(b.run("NegativeLogLikelihoodLoss", {F("l", {})}, {{"ignore_index", attr_i(1)}})[0]), {(2 * 3.0f + 2 * 5.0f) / 4});
  OneNode c;
  c.cf({1, 2}, {-1, -2});
  c.ci({1}, {2});
  try {
    c.run("NegativeLogLikelihoodLoss", {F("l", {})});
    FAIL("no error");
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("(NegativeLogLikelihoodLoss): label 2 out of range [0, 2)") != std::string::npos);
  }
}

TEST_CASE("mean squared error and scalar losses") {
  runtime::CpuBackend be(1);
  std::vector<float> p{1, 2, 3}, t{1, 0, 0};
  auto r = runtime::mean_squared_error(be, be.from_host(DType::F32, {3}, p.data()), be.from_host(DType::F32, {3}, t.data()), 0.5f);
  CHECK(r.loss == doctest::Approx(13.0 / 3));
  near(to_vec(r.grad), {0, 2.0f / 3, 1});
  std::vector<float> s{4};
  auto q = runtime::scalar_loss(be, be.from_host(DType::F32, {}, s.data()), 0.25f);
  CHECK(q.loss == 4);
  near(to_vec(q.grad), {0.25f});
  CHECK(runtime::choose_loss({}, DType::F32) == runtime::LossKind::Scalar);
  CHECK(runtime::choose_loss({4, 5}, DType::I64) == runtime::LossKind::CrossEntropy);
  CHECK(runtime::choose_loss({4, 5}, DType::F32) == runtime::LossKind::MeanSquaredError);
}

TEST_CASE("the stash holds only declared tensors and is empty after each backward") {
  runtime::CpuBackend be(1);
  TinyGraph t = small_mlp(64);
  runtime::StageExecutor ex(t.g, be);
  auto xs = random_floats(256, 9);
  Tensor x = be.from_host(DType::F32, {64, 4}, xs.data());
  int64_t live0 = be.memory().live_bytes;
  auto out = ex.forward(0, {&x, 1});
  // kept: x (Gemm input 0), r (Relu output, also MatMul input 0); h is freed. Plus the output.
  int64_t kept = be.memory().live_bytes - live0;
  CHECK(kept == 64 * 3 * 4 + 64 * 5 * 4);
  CHECK(ex.pending() == 1);
  Tensor g = be.zeros(DType::F32, {64, 5});
  ex.backward_input(0, {&g, 1});
  CHECK(ex.pending() == 1);  // W still needs x and r
  ex.backward_weight(0);
  CHECK(ex.pending() == 0);
  CHECK_THROWS_AS(ex.backward_weight(0), Error);
}

TEST_CASE("after_node: called once per node and pass, in execution order, naming input / weight / fused gradients") {
  runtime::CpuBackend be(1);
  TinyGraph t = small_mlp(8);
  std::vector<std::pair<int, char>> calls;
  bool negative = false;
  runtime::ExecutorOptions eo;
  eo.after_node = [&](int node, char pass, double s) {
    calls.emplace_back(node, pass);
    negative = negative || s < 0;
  };
  // The stage Relu -> MatMul: its input h needs a gradient (B), the MatMul weight v a W part.
  runtime::StageExecutor ex(t.g, std::vector<int>{1, 2}, be, eo);
  auto hs = random_floats(24, 4);
  Tensor h = be.from_host(DType::F32, {8, 3}, hs.data());
  Tensor g = be.zeros(DType::F32, {8, 5});
  ex.forward(0, {&h, 1});
  CHECK(calls == std::vector<std::pair<int, char>>{{1, 'F'}, {2, 'F'}});
  calls.clear();
  ex.backward_input(0, {&g, 1});
  CHECK(calls == std::vector<std::pair<int, char>>{{2, 'B'}, {1, 'B'}});
  calls.clear();
  ex.backward_weight(0);
  CHECK(calls == std::vector<std::pair<int, char>>{{2, 'W'}});
  calls.clear();
  ex.forward(1, {&h, 1});
  calls.clear();
  ex.backward(1, {&g, 1});
  CHECK(calls == std::vector<std::pair<int, char>>{{2, 'G'}, {1, 'B'}});
  CHECK(!negative);
}

TEST_CASE(".npy files round-trip; bad ones are bad input naming the file") {
  runtime::CpuBackend be(1);
  auto dir = std::filesystem::temp_directory_path() / fmt::format("smp_npy_{}", ::getpid());
  std::filesystem::create_directories(dir);
  std::vector<int64_t> v{1, -2, 3, 4, 5, 6};
  Tensor t = be.from_host(DType::I64, {2, 3}, v.data());
  runtime::save_npy(be, dir / "a.npy", t);
  Tensor u = runtime::load_npy(be, dir / "a.npy");
  CHECK(u.shape() == Shape{2, 3});
  CHECK(u.dtype() == DType::I64);
  CHECK(std::memcmp(u.raw(), v.data(), 48) == 0);
  float s = 2.5f;
  runtime::write_npy(dir / "s.npy", DType::F32, {}, &s);
  CHECK(runtime::read_npy(dir / "s.npy").shape.empty());
  std::ofstream(dir / "bad.npy") << "hello";
  try {
    runtime::read_npy(dir / "bad.npy");
    CHECK(false);
  } catch (const Error& e) {
    CHECK(std::string(e.what()).find("bad.npy: not a .npy file") != std::string::npos);
    CHECK(e.kind() == ErrorKind::BadInput);
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("vector math (vmath.hpp) against the C library over a wide range, body and tail alike") {
  using namespace smp::runtime::cpu;
  std::vector<float> x;
  for (float v = -30.0f; v <= 30.0f; v += 0.00731f) x.push_back(v);
  for (float v : {0.0f, -0.0f, 1e-30f, -1e-30f, 1e-6f, -1e-6f, 0.0624f, 0.0626f, -0.0624f, 88.0f, 88.7f, -87.0f, -87.5f, -100.0f, 100.0f})
    x.push_back(v);
  size_t n = x.size();  // not a multiple of 8: the tail path runs too
  std::vector<float> y(n), g(n, 1.0f), d(n);
  auto check = [&](std::string what, auto ref, double rtol, double atol) {
    for (size_t i = 0; i < n; ++i) {
      double want = ref(static_cast<double>(x[i]));
      INFO(what << "(" << x[i] << ") = " << y[i] << ", want " << want);
      if (std::isinf(want)) CHECK(y[i] == want);
      else CHECK(std::fabs(y[i] - want) <= atol + rtol * std::fabs(want));
    }
  };
  vmap1(x.data(), y.data(), static_cast<int64_t>(n), [](v8f v) { return vexp8(v); });
  check("exp", [](double v) { return v < -87.33654 ? 0.0 : static_cast<double>(std::exp(static_cast<float>(v))); }, 3e-7, 1e-37);
  vmap1(x.data(), y.data(), static_cast<int64_t>(n), [](v8f v) { return verf8(v); });
  check("erf", [](double v) { return std::erf(v); }, 0, 4e-7);  // the formula's 1.5e-7 plus float rounding
  vmap1(x.data(), y.data(), static_cast<int64_t>(n), [](v8f v) { return vtanh8(v); });
  check("tanh", [](double v) { return std::tanh(v); }, 5e-7, 1e-38);
  vmap1(x.data(), y.data(), static_cast<int64_t>(n), [](v8f v) { return vsigmoid8(v); });
  check("sigmoid", [](double v) { return 1.0 / (1.0 + std::exp(-v)); }, 5e-7, 1e-38);
  vmap1(x.data(), y.data(), static_cast<int64_t>(n), [](v8f v) { return vgelu8(v); });
  check("gelu", [](double v) { return 0.5 * v * (1.0 + std::erf(v / std::sqrt(2.0))); }, 1e-6, 3e-6);
  vmap2(g.data(), x.data(), y.data(), static_cast<int64_t>(n), false, [](v8f a, v8f v) { return a * vgelu_grad8(v); });
  check("gelu'", [](double v) { return 0.5 * (1.0 + std::erf(v / std::sqrt(2.0))) + v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI); },
        1e-6, 3e-7);
  // accumulate adds to what is there
  std::fill(d.begin(), d.end(), 2.0f);
  vmap2(g.data(), x.data(), d.data(), static_cast<int64_t>(n), true, [](v8f a, v8f v) { return a * v; });
  for (size_t i = 0; i < n; ++i) CHECK(d[i] == 2.0f + x[i]);
  // row helpers: max, exp-sum, scale on rows of every length 0..19
  for (int64_t len = 0; len < 20; ++len) {
    std::vector<float> r(x.begin() + 100, x.begin() + 100 + len), e(static_cast<size_t>(len));
    float m = row_max(r.data(), len);
    float want_m = len ? *std::max_element(r.begin(), r.end()) : -INFINITY;
    CHECK(m == want_m);
    if (!len) continue;
    float s = exp_row(r.data(), e.data(), len, m);
    double ws = 0;
    for (int64_t j = 0; j < len; ++j) {
      ws += std::exp(static_cast<double>(r[static_cast<size_t>(j)]) - m);
      CHECK(e[static_cast<size_t>(j)] == doctest::Approx(std::exp(static_cast<double>(r[static_cast<size_t>(j)]) - m)).epsilon(1e-6));
    }
    CHECK(s == doctest::Approx(ws).epsilon(1e-6));
    vscale_row(e.data(), len, 2.0f);
    CHECK(e[0] == doctest::Approx(2 * std::exp(static_cast<double>(r[0]) - m)).epsilon(1e-6));
  }
}

namespace {
// x [N, 6] param-fed: h = x W (a weight gets a gradient), then PyTorch's exported GELU of h
// (0.5 last, or x * 0.5 first when half_first; x * (1/sqrt2) instead of x / sqrt2 when mul_form),
// then a MatMul to [N, 5]. `extra_use`: the Erf output is a graph output too (must not fuse).
TinyGraph exported_gelu(int64_t N, bool half_first, bool mul_form, bool extra_use = false) {
  TinyGraph t;
  int x = t.boundary("x", {N, 6});
  int w = t.param("w", {6, 6}, random_floats(36, 11));
  int v = t.param("v", {6, 5}, random_floats(30, 12));
  int h = t.node("MatMul", {x, w}, {F("h", {N, 6})})[0];
  int c_div = mul_form ? t.constant<float>("c_isq2", DType::F32, {}, {0.70710678118654752f})
                       : t.constant<float>("c_sq2", DType::F32, {}, {1.41421356237309504f});
  int one = t.constant<float>("c_one", DType::F32, {}, {1.0f});
  int half = t.constant<float>("c_half", DType::F32, {}, {0.5f});
  int d = t.node(mul_form ? "Mul" : "Div", {h, c_div}, {F("d", {N, 6})})[0];
  int e = t.node("Erf", {d}, {F("e", {N, 6})})[0];
  int a = t.node("Add", {one, e}, {F("a", {N, 6})})[0];
  int y;
  if (half_first) {
    int hh = t.node("Mul", {h, half}, {F("hh", {N, 6})})[0];
    y = t.node("Mul", {hh, a}, {F("y", {N, 6})})[0];
  } else {
    int m = t.node("Mul", {h, a}, {F("m", {N, 6})})[0];
    y = t.node("Mul", {m, half}, {F("y", {N, 6})})[0];
  }
  t.output(t.node("MatMul", {y, v}, {F("logits", {N, 5})})[0]);
  if (extra_use) t.output(e);
  return t;
}
}  // namespace

TEST_CASE("fusion: PyTorch's exported GELU runs as one Gelu kernel, with the unfused chain's values and gradients") {
  runtime::CpuBackend be(1);
  for (int variant = 0; variant < 4; ++variant) {
    bool half_first = variant & 1, mul_form = variant & 2;
    CAPTURE(variant);
    TinyGraph t = exported_gelu(7, half_first, mul_form);
    runtime::ExecutorOptions off;
    off.fuse = false;
    runtime::StageExecutor fused(t.g, be), plain(t.g, be, off);
    REQUIRE(fused.fusions().size() == 1);
    CHECK(fused.fusions()[0].op == graph::Op::Gelu);
    CHECK(fused.fusions()[0].nodes.size() == 5);
    CHECK(plain.fusions().empty());
    auto xs = random_floats(42, 13, -3, 3);
    Tensor x = be.from_host(DType::F32, {7, 6}, xs.data());
    auto gs = random_floats(35, 14);
    Tensor g = be.from_host(DType::F32, {7, 5}, gs.data());
    auto of = fused.forward(0, {&x, 1}), op = plain.forward(0, {&x, 1});
    near(to_vec(of[0]), to_vec(op[0]), 1e-6);
    auto gf = fused.backward(0, {&g, 1}), gp = plain.backward(0, {&g, 1});
    near(to_vec(gf[0]), to_vec(gp[0]), 1e-5);
    for (int p : fused.parameters()) near(to_vec(fused.gradient(p)), to_vec(plain.gradient(p)), 1e-5);
    CHECK(fused.pending() == 0);
  }
  // an intermediate read elsewhere (here a graph output) keeps the chain as exported
  TinyGraph u = exported_gelu(3, false, false, true);
  runtime::StageExecutor ue(u.g, be);
  CHECK(ue.fusions().empty());
  // a stage holding only part of the chain: nothing to fuse
  TinyGraph p = exported_gelu(3, false, false);
  runtime::StageExecutor pe(p.g, std::vector<int>{0, 1, 2, 3}, be);
  CHECK(pe.fusions().empty());
  // a wrong constant (x / 2) is not GELU
  TinyGraph w = exported_gelu(3, false, false);
  for (auto& v : w.g.values)
    if (v.name == "c_sq2") v.data = graph::tensor_data<float>(DType::F32, {}, {2.0f});
  runtime::StageExecutor we(w.g, be);
  CHECK(we.fusions().empty());
}

TEST_CASE("a gradient handed on unchanged (no copy) is not the one kept for the weight gradient") {
  // hb = h + b keeps its output gradient from B for W (db); h's gradient, handed on in that
  // gradient's buffer, later takes Relu's contribution: W must still see the untouched one.
  runtime::CpuBackend be(1);
  TinyGraph t;
  int x = t.boundary("x", {4, 6});
  int w = t.param("w", {6, 6}, random_floats(36, 21));
  int b = t.param("b", {6}, random_floats(6, 22));
  int h = t.node("MatMul", {x, w}, {F("h", {4, 6})})[0];
  int q = t.node("Relu", {h}, {F("q", {4, 6})})[0];
  int hb = t.node("Add", {h, b}, {F("hb", {4, 6})})[0];
  t.output(t.node("Add", {hb, q}, {F("y", {4, 6})})[0]);
  runtime::StageExecutor split(t.g, be), fused(t.g, be);
  auto xs = random_floats(24, 23);
  auto gs = random_floats(24, 24);
  Tensor xt = be.from_host(DType::F32, {4, 6}, xs.data());
  for (auto* ex : {&split, &fused}) {
    Tensor gy = be.from_host(DType::F32, {4, 6}, gs.data());
    ex->zero_grad();
    ex->forward(0, {&xt, 1});
    if (ex == &split) {
      ex->backward_input(0, {&gy, 1});
      ex->backward_weight(0);
    } else {
      ex->backward(0, {&gy, 1});
    }
  }
  std::vector<float> db(6, 0.0f);
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 6; ++c) db[static_cast<size_t>(c)] += gs[static_cast<size_t>(r * 6 + c)];
  near(to_vec(split.gradient(b)), db);
  near(to_vec(fused.gradient(b)), db);
  near(to_vec(split.gradient(w)), to_vec(fused.gradient(w)));
}

TEST_CASE("Transpose of rows (inner dim kept) split across threads mid-way equals the naive copy") {
  // [8, 32, 24, 4] -> perm [0, 2, 1, 3]: 6,144 rows of 4, enough for two threads to split
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    runtime::CpuBackend be(threads);
    TinyGraph t;
    int x = t.input("x", DType::F32, {8, 32, 24, 4});
    t.output(t.node("Transpose", {x}, {F("y", {8, 24, 32, 4})}, {{"perm", attr_ints({0, 2, 1, 3})}})[0]);
    runtime::ExecutorOptions eo;
    eo.training = false;
    runtime::StageExecutor ex(t.g, be, eo);
    auto xs = random_floats(8 * 32 * 24 * 4, 31);
    Tensor xt = be.from_host(DType::F32, {8, 32, 24, 4}, xs.data());
    auto y = to_vec(ex.forward(0, {&xt, 1})[0]);
    size_t bad = 0;
    for (int a = 0; a < 8; ++a)
      for (int b = 0; b < 24; ++b)
        for (int c = 0; c < 32; ++c)
          for (int d = 0; d < 4; ++d)
            if (y[static_cast<size_t>(((a * 24 + b) * 32 + c) * 4 + d)] != xs[static_cast<size_t>(((a * 32 + c) * 24 + b) * 4 + d)]) ++bad;
    CHECK(bad == 0);
  }
}

TEST_CASE("Transpose(W) -> MatMul runs fused as one product (MatMulTransB): values and accumulated gradients") {
  // x [2, 5, 6] . Transpose(w [4, 6]): y = x wᵀ, dx = dy w, dw = sum over microbatches of dyᵀ x,
  // on 1 and 2 threads; a transposed weight that something else also reads is left alone.
  const int64_t B = 2, T = 5, K = 6, N = 4;
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    runtime::CpuBackend be(threads);
    TinyGraph t;
    int x = t.boundary("x", {B, T, K});
    auto ws = random_floats(static_cast<size_t>(N * K), 61);
    int w = t.param("w", {N, K}, ws);
    int wt = t.node("Transpose", {w}, {F("wt", {K, N})}, {{"perm", attr_ints({1, 0})}})[0];
    t.output(t.node("MatMul", {x, wt}, {F("y", {B, T, N})})[0]);
    runtime::StageExecutor ex(t.g, be);
    REQUIRE(ex.fusions().size() == 1);
    CHECK(ex.fusions()[0].op == graph::Op::MatMulTransB);
    ex.zero_grad();
    std::vector<float> dw(static_cast<size_t>(N * K), 0.0f);
    for (int mb = 0; mb < 2; ++mb) {
      auto xs = random_floats(static_cast<size_t>(B * T * K), 62 + static_cast<uint32_t>(mb));
      auto gs = random_floats(static_cast<size_t>(B * T * N), 64 + static_cast<uint32_t>(mb));
      Tensor xt = be.from_host(DType::F32, {B, T, K}, xs.data());
      Tensor gy = be.from_host(DType::F32, {B, T, N}, gs.data());
      auto y = to_vec(ex.forward(mb, {&xt, 1})[0]);
      auto dx = ex.backward(mb, {&gy, 1});
      REQUIRE(dx.size() == 1);
      auto dxs = to_vec(dx[0]);
      for (int64_t r = 0; r < B * T; ++r)
        for (int64_t n = 0; n < N; ++n) {
          double want = 0;
          for (int64_t k = 0; k < K; ++k) want += static_cast<double>(xs[static_cast<size_t>(r * K + k)]) * ws[static_cast<size_t>(n * K + k)];
          CHECK(y[static_cast<size_t>(r * N + n)] == doctest::Approx(want).epsilon(1e-5));
          for (int64_t k = 0; k < K; ++k)
            dw[static_cast<size_t>(n * K + k)] += gs[static_cast<size_t>(r * N + n)] * xs[static_cast<size_t>(r * K + k)];
        }
      for (int64_t r = 0; r < B * T; ++r)
        for (int64_t k = 0; k < K; ++k) {
          double want = 0;
          for (int64_t n = 0; n < N; ++n) want += static_cast<double>(gs[static_cast<size_t>(r * N + n)]) * ws[static_cast<size_t>(n * K + k)];
          CHECK(dxs[static_cast<size_t>(r * K + k)] == doctest::Approx(want).epsilon(1e-5));
        }
    }
    near(to_vec(ex.gradient(w)), dw);
  }
  // wt read twice (also a graph output): no fusion
  runtime::CpuBackend be(1);
  TinyGraph t;
  int x = t.boundary("x", {B, T, K});
  int w = t.param("w", {N, K}, random_floats(static_cast<size_t>(N * K), 61));
  int wt = t.node("Transpose", {w}, {F("wt", {K, N})})[0];
  t.output(t.node("MatMul", {x, wt}, {F("y", {B, T, N})})[0]);
  t.output(wt);
  runtime::StageExecutor ex(t.g, be);
  CHECK(ex.fusions().empty());
}

TEST_CASE("a transposed weight's gradient accumulated over microbatches (tiled) equals the naive sum") {
  // w -> Transpose -> y, backward of two microbatches: dw = dy0^T + dy1^T, the second added into
  // the first (strided_add's tiled path), for a 2-D weight and a 3-D one with perm (0, 2, 1),
  // sizes not multiples of the 16 x 16 tile, on 1 and 2 threads.
  for (bool three : {false, true})
    for (int threads : {1, 2}) {
      CAPTURE(three);
      CAPTURE(threads);
      runtime::CpuBackend be(threads);
      const int64_t B = three ? 3 : 1, R = 40, C = 36;
      const Shape ws = three ? Shape{B, R, C} : Shape{R, C}, ys = three ? Shape{B, C, R} : Shape{C, R};
      TinyGraph t;
      int w = t.param("w", ws, random_floats(static_cast<size_t>(B * R * C), 41));
      std::map<std::string, Attribute> attrs;
      if (three) attrs = {{"perm", attr_ints({0, 2, 1})}};
      t.output(t.node("Transpose", {w}, {F("y", ys)}, attrs)[0]);
      runtime::StageExecutor ex(t.g, be);
      ex.zero_grad();
      std::vector<std::vector<float>> gys;
      for (int mb = 0; mb < 2; ++mb) {
        gys.push_back(random_floats(static_cast<size_t>(B * R * C), 50 + static_cast<uint32_t>(mb)));
        Tensor gy = be.from_host(DType::F32, ys, gys.back().data());
        ex.forward(mb, {});
        ex.backward(mb, {&gy, 1});
      }
      auto dw = to_vec(ex.gradient(w));
      size_t bad = 0;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t r = 0; r < R; ++r)
          for (int64_t c = 0; c < C; ++c) {
            const auto yi = static_cast<size_t>((b * C + c) * R + r);
            const float want = gys[0][yi] + gys[1][yi];
            if (std::abs(dw[static_cast<size_t>((b * R + r) * C + c)] - want) > 1e-6f) ++bad;
          }
      CHECK(bad == 0);
    }
}

TEST_CASE("Conv over several images per product (small outputs) equals one image at a time, values and gradients") {
  // [5, 4, 12, 12]: 144 output columns per image, so 4 images share a product and the last one
  // runs alone; a batch of 1 takes the one-image path. Grouped 3x3 with padding, strided 3x3,
  // and 1x1 (the pointwise shortcut of the one-image path).
  struct Geo {
    int64_t M, groups, k, stride, pad, oh;
  };
  for (Geo c : {Geo{6, 2, 3, 1, 1, 12}, Geo{6, 1, 3, 2, 0, 5}, Geo{8, 1, 1, 1, 0, 12}})
    for (int threads : {1, 2}) {
      CAPTURE(c.groups);
      CAPTURE(c.stride);
      CAPTURE(c.k);
      CAPTURE(threads);
      runtime::CpuBackend be(threads);
      const int64_t N = 5, C = 4, H = 12, Cg = C / c.groups;
      const Shape ws{c.M, Cg, c.k, c.k};
      auto wv = random_floats(static_cast<size_t>(c.M * Cg * c.k * c.k), 51);
      auto bv = random_floats(static_cast<size_t>(c.M), 52);
      auto make = [&](int64_t n, TinyGraph& t, int& w, int& b) {
        int x = t.boundary("x", {n, C, H, H});
        w = t.param("w", ws, wv);
        b = t.param("b", {c.M}, bv);
        t.output(t.node("Conv", {x, w, b}, {F("y", {n, c.M, c.oh, c.oh})},
                        {{"group", graph::attr_i(c.groups)}, {"strides", attr_ints({c.stride, c.stride})},
                         {"pads", attr_ints({c.pad, c.pad, c.pad, c.pad})}})[0]);
      };
      TinyGraph tb, t1;
      int wb, bb, w1, b1;
      make(N, tb, wb, bb);
      make(1, t1, w1, b1);
      runtime::StageExecutor batched(tb.g, be), single(t1.g, be);
      const int64_t img = C * H * H, out = c.M * c.oh * c.oh;
      auto xs = random_floats(static_cast<size_t>(N * img), 53);
      auto gs = random_floats(static_cast<size_t>(N * out), 54);
      Tensor x = be.from_host(DType::F32, {N, C, H, H}, xs.data());
      Tensor gy = be.from_host(DType::F32, {N, c.M, c.oh, c.oh}, gs.data());
      batched.zero_grad();
      auto y = to_vec(batched.forward(0, {&x, 1})[0]);
      auto dx = to_vec(batched.backward(0, {&gy, 1})[0]);
      single.zero_grad();  // the weight gradients add up over the five one-image steps
      std::vector<float> y1, dx1;
      for (int64_t n = 0; n < N; ++n) {
        Tensor xi = be.from_host(DType::F32, {1, C, H, H}, xs.data() + n * img);
        Tensor gi = be.from_host(DType::F32, {1, c.M, c.oh, c.oh}, gs.data() + n * out);
        auto yi = to_vec(single.forward(0, {&xi, 1})[0]);
        auto di = to_vec(single.backward(0, {&gi, 1})[0]);
        y1.insert(y1.end(), yi.begin(), yi.end());
        dx1.insert(dx1.end(), di.begin(), di.end());
      }
      near(y, y1, 1e-5);
      near(dx, dx1, 1e-5);
      near(to_vec(batched.gradient(wb)), to_vec(single.gradient(w1)), 1e-4);
      near(to_vec(batched.gradient(bb)), to_vec(single.gradient(b1)), 1e-4);
    }
}

TEST_CASE("MaxPool 2x2 stride 2 backward routes each gradient to the window's first maximum (ties, odd sizes)") {
  // [1, 1, 3, 5]: one row of 2 windows; the last row and column (9s) are in no window. Window 0
  // is all ties (its top-left wins); window 1 holds its maximum 4 twice, top right and bottom
  // left: the top row comes first.
  runtime::CpuBackend be(1);
  TinyGraph t;
  int x = t.boundary("x", {1, 1, 3, 5});
  t.output(t.node("MaxPool", {x}, {F("y", {1, 1, 1, 2})}, {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}})[0]);
  runtime::StageExecutor ex(t.g, be);
  std::vector<float> xs{1, 1, 2, 4, 9,  //
                        1, 1, 4, 3, 9,  //
                        9, 9, 9, 9, 9};
  Tensor xt = be.from_host(DType::F32, {1, 1, 3, 5}, xs.data());
  std::vector<float> gs{10, 20};
  Tensor gy = be.from_host(DType::F32, {1, 1, 1, 2}, gs.data());
  near(to_vec(ex.forward(0, {&xt, 1})[0]), {1, 4});
  near(to_vec(ex.backward(0, {&gy, 1})[0]), {10, 0, 0, 20, 0,  //
                                             0, 0, 0, 0, 0,   //
                                             0, 0, 0, 0, 0});
}

namespace {
template <class T>
std::vector<T> random_ints(size_t n, int lo, int hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(lo, hi);
  std::vector<T> v(n);
  for (auto& x : v) x = static_cast<T>(d(rng));
  return v;
}
float requantized(double acc, float mult, int zero, int lo, int hi) {
  return std::min<float>(std::max<float>(std::nearbyint(static_cast<float>(acc) * mult) + static_cast<float>(zero), static_cast<float>(lo)),
                         static_cast<float>(hi));
}
}  // namespace

// The integer products at layer sizes against direct integer loops: sums past 2^24 (what float32
// would round), groups, strides, padding that reads the zero point, per-channel weight parameters.
TEST_CASE("ConvInteger and QLinearConv (grouped, strided, padded, per-channel int8 weights) equal direct integer loops") {
  const int64_t N = 2, C = 384, H = 9, W = 7, M = 8, G = 2, K = 3, S = 2, P = 1;
  const int64_t Cg = C / G, Mg = M / G, OH = (H + 2 * P - K) / S + 1, OW = (W + 2 * P - K) / S + 1;
  // mostly one sign, so that sums grow past 2^24
  auto x = random_ints<uint8_t>(static_cast<size_t>(N * C * H * W), 150, 255, 1);
  auto w = random_ints<int8_t>(static_cast<size_t>(M * Cg * K * K), 20, 127, 2);
  auto wz = random_ints<int8_t>(static_cast<size_t>(M), -3, 3, 3);
  auto bias = random_ints<int32_t>(static_cast<size_t>(M), -5000, 5000, 4);
  const uint8_t xz = 21;
  std::vector<double> acc(static_cast<size_t>(N * M * OH * OW), 0.0);
  double largest = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t m = 0; m < M; ++m)
      for (int64_t oy = 0; oy < OH; ++oy)
        for (int64_t ox = 0; ox < OW; ++ox) {
          int64_t sum = 0, g = m / Mg;
          for (int64_t c = 0; c < Cg; ++c)
            for (int64_t ky = 0; ky < K; ++ky)
              for (int64_t kx = 0; kx < K; ++kx) {
                int64_t iy = oy * S - P + ky, ix = ox * S - P + kx;
                int64_t xv = (iy < 0 || iy >= H || ix < 0 || ix >= W) ? xz : x[static_cast<size_t>(((n * C + g * Cg + c) * H + iy) * W + ix)];
                sum += (xv - xz) * (w[static_cast<size_t>(((m * Cg + c) * K + ky) * K + kx)] - wz[static_cast<size_t>(m)]);
              }
          acc[static_cast<size_t>(((n * M + m) * OH + oy) * OW + ox)] = static_cast<double>(sum);
          largest = std::max(largest, std::fabs(static_cast<double>(sum)));
        }
  CHECK(largest > (1 << 24));  // float32 could not hold every sum
  const std::map<std::string, graph::Attribute> attrs = {{"group", attr_i(G)}, {"strides", attr_ints({S, S})},
                                                         {"pads", attr_ints({P, P, P, P})}};
  {
    OneNode c;
    c.ins.push_back(c.tg.constant<uint8_t>("x", DType::U8, {N, C, H, W}, x));
    c.ins.push_back(c.tg.constant<int8_t>("w", DType::I8, {M, Cg, K, K}, w));
    c.ins.push_back(c.tg.constant<uint8_t>("xz", DType::U8, {}, {xz}));
    c.ins.push_back(c.tg.constant<int8_t>("wz", DType::I8, {M}, wz));
    auto y = c.run("ConvInteger", {T("y", DType::I32, {N, M, OH, OW})}, attrs)[0];
    for (size_t i = 0; i < acc.size(); ++i) {
      INFO("element " << i);
      REQUIRE(y.data<int32_t>()[i] == static_cast<int32_t>(acc[i]));
    }
  }
  {
    const float sx = 0.02f, sy = 9.0f;
    std::vector<float> sw = random_floats(static_cast<size_t>(M), 5, 0.001f, 0.004f);
    const uint8_t yz = 10;
    OneNode c;
    c.ins.push_back(c.tg.constant<uint8_t>("x", DType::U8, {N, C, H, W}, x));
    c.ins.push_back(c.tg.constant<float>("sx", DType::F32, {}, {sx}));
    c.ins.push_back(c.tg.constant<uint8_t>("xz", DType::U8, {}, {xz}));
    c.ins.push_back(c.tg.constant<int8_t>("w", DType::I8, {M, Cg, K, K}, w));
    c.ins.push_back(c.tg.constant<float>("sw", DType::F32, {M}, sw));
    c.ins.push_back(c.tg.constant<int8_t>("wz", DType::I8, {M}, wz));
    c.ins.push_back(c.tg.constant<float>("sy", DType::F32, {}, {sy}));
    c.ins.push_back(c.tg.constant<uint8_t>("yz", DType::U8, {}, {yz}));
    c.ins.push_back(c.tg.constant<int32_t>("b", DType::I32, {M}, bias));
    auto y = c.run("QLinearConv", {T("y", DType::U8, {N, M, OH, OW})}, attrs)[0];
    int clamped = 0, inside = 0;
    for (size_t i = 0; i < acc.size(); ++i) {
      const int64_t m = static_cast<int64_t>(i) / (OH * OW) % M;
      const float want = requantized(acc[i] + bias[static_cast<size_t>(m)], sx * sw[static_cast<size_t>(m)] / sy, yz, 0, 255);
      INFO("element " << i);
      REQUIRE(static_cast<float>(y.data<uint8_t>()[i]) == want);
      (want == 0 || want == 255 ? clamped : inside)++;
    }
    CHECK(inside > clamped);  // the scales put most outputs inside the range
  }
}

TEST_CASE("MatMulInteger (per-row / per-column zero points) and QLinearMatMul (batched, per-column b scale) equal direct integer loops") {
  const int64_t B = 3, Mr = 5, Kd = 300, Nc = 4;
  auto a = random_ints<uint8_t>(static_cast<size_t>(B * Mr * Kd), 0, 255, 11);
  auto b = random_ints<uint8_t>(static_cast<size_t>(Kd * Nc), 0, 255, 12);
  auto az = random_ints<uint8_t>(static_cast<size_t>(Mr), 100, 140, 13);
  auto bz = random_ints<uint8_t>(static_cast<size_t>(Nc), 100, 140, 14);
  auto sum = [&](int64_t bt, int64_t i, int64_t j, bool per_row) {
    int64_t s = 0;
    for (int64_t k = 0; k < Kd; ++k)
      s += (a[static_cast<size_t>((bt * Mr + i) * Kd + k)] - (per_row ? az[static_cast<size_t>(i)] : az[0])) *
           (b[static_cast<size_t>(k * Nc + j)] - (per_row ? bz[static_cast<size_t>(j)] : bz[0]));
    return s;
  };
  {
    OneNode c;
    c.ins.push_back(c.tg.constant<uint8_t>("a", DType::U8, {B, Mr, Kd}, a));
    c.ins.push_back(c.tg.constant<uint8_t>("b", DType::U8, {Kd, Nc}, b));
    c.ins.push_back(c.tg.constant<uint8_t>("az", DType::U8, {Mr}, az));
    c.ins.push_back(c.tg.constant<uint8_t>("bz", DType::U8, {Nc}, bz));
    auto y = c.run("MatMulInteger", {T("y", DType::I32, {B, Mr, Nc})})[0];
    for (int64_t bt = 0; bt < B; ++bt)
      for (int64_t i = 0; i < Mr; ++i)
        for (int64_t j = 0; j < Nc; ++j) REQUIRE(y.data<int32_t>()[(bt * Mr + i) * Nc + j] == sum(bt, i, j, true));
  }
  {
    const float sa = 0.05f, sy = 40.0f;
    const std::vector<float> sb = {0.01f, 0.02f, 0.03f, 0.04f};
    const int8_t yz = -7;
    OneNode c;
    c.ins.push_back(c.tg.constant<uint8_t>("a", DType::U8, {B, Mr, Kd}, a));
    c.ins.push_back(c.tg.constant<float>("sa", DType::F32, {}, {sa}));
    c.ins.push_back(c.tg.constant<uint8_t>("az", DType::U8, {}, {az[0]}));
    c.ins.push_back(c.tg.constant<uint8_t>("b", DType::U8, {Kd, Nc}, b));
    c.ins.push_back(c.tg.constant<float>("sb", DType::F32, {Nc}, sb));
    c.ins.push_back(c.tg.constant<uint8_t>("bz", DType::U8, {}, {bz[0]}));
    c.ins.push_back(c.tg.constant<float>("sy", DType::F32, {}, {sy}));
    c.ins.push_back(c.tg.constant<int8_t>("yz", DType::I8, {}, {yz}));
    auto y = c.run("QLinearMatMul", {T("y", DType::I8, {B, Mr, Nc})})[0];
    for (int64_t bt = 0; bt < B; ++bt)
      for (int64_t i = 0; i < Mr; ++i)
        for (int64_t j = 0; j < Nc; ++j) {
          const float want = requantized(static_cast<double>(sum(bt, i, j, false)), sa * sb[static_cast<size_t>(j)] / sy, yz, -128, 127);
          REQUIRE(static_cast<float>(y.data<int8_t>()[(bt * Mr + i) * Nc + j]) == want);
        }
  }
}

TEST_CASE("DynamicQuantizeLinear of all zeros gives scale 0, zero point 0 and zeros; QuantizeLinear refuses a scale of the wrong length") {
  OneNode z;
  z.cf({4}, {0, 0, 0, 0});
  auto o = z.run("DynamicQuantizeLinear", {T("y", DType::U8, {4}), F("s", {}), T("z", DType::U8, {})});
  CHECK(o[1].data<float>()[0] == 0.0f);
  CHECK(o[2].data<uint8_t>()[0] == 0);
  for (int i = 0; i < 4; ++i) CHECK(o[0].data<uint8_t>()[i] == 0);
  OneNode q;
  q.cf({2, 3}, {1, 2, 3, 4, 5, 6});
  q.cf({2}, {0.5f, 0.25f});  // axis 1 has 3 channels
  try {
    q.run("QuantizeLinear", {T("y", DType::U8, {2, 3})});
    FAIL("a 2-value scale for 3 channels loaded");
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::BadInput);
    CHECK(std::string(e.what()).find("one per channel") != std::string::npos);
  }
}
