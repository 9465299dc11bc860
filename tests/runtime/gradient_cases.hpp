// The gradient test cases: small graphs of every op with a gradient rule, built by hand with
// random float inputs (as activations of an earlier stage or as parameters). Shared by the
// finite-difference check on the CPU (test_gradients.cpp) and the CUDA-against-CPU check
// (test_cuda_kernels.cpp).
#pragma once

#include "tiny_graph.hpp"

#include <fmt/format.h>

#include <functional>
#include <map>
#include <string>
#include <tuple>
#include <vector>

namespace smp::test {

using runtime::Tensor;
struct Maker {
  TinyGraph& tg;
  bool as_param;
  uint32_t seed = 1;
  std::map<int, std::vector<float>> float_inputs;  // boundary activations: values
  std::map<int, Tensor> feeds;                      // graph inputs (ints, bools)
  runtime::Backend* be;

  int f(const std::string& name, const Shape& s, float lo = -1, float hi = 1) {
    auto v = random_floats(static_cast<size_t>(numel(s)), seed++, lo, hi);
    if (as_param) return tg.param(name, s, v);
    int id = tg.boundary(name, s);
    float_inputs[id] = v;
    return id;
  }
  int i64(const std::string& name, const Shape& s, const std::vector<int64_t>& v) {
    int id = tg.input(name, DType::I64, s);
    feeds[id] = be->from_host(DType::I64, s, v.data());
    return id;
  }
  int i32(const std::string& name, const Shape& s, const std::vector<int32_t>& v) {
    int id = tg.input(name, DType::I32, s);
    feeds[id] = be->from_host(DType::I32, s, v.data());
    return id;
  }
  int boolean(const std::string& name, const Shape& s, const std::vector<uint8_t>& v) {
    int id = tg.input(name, DType::Bool, s);
    feeds[id] = be->from_host(DType::Bool, s, v.data());
    return id;
  }
  int ci64(const std::string& name, const std::vector<int64_t>& v) {
    return tg.constant(name, DType::I64, {static_cast<int64_t>(v.size())}, v);
  }
};

using Build = std::function<void(TinyGraph&, Maker&)>;

struct Case {
  std::string name;
  Build build;
};

inline std::tuple<std::string, DType, Shape> F(const std::string& n, Shape s) { return {n, DType::F32, s}; }

inline std::vector<Case> gradient_cases() {
  using M = Maker;
  std::vector<Case> cs;
  auto binary = [&](const std::string& op, Shape a, Shape b, Shape y, float lo = -1, float hi = 1) {
    cs.push_back({fmt::format("{} {}x{}", op, shape_str(a), shape_str(b)), [=](TinyGraph& t, M& m) {
                    int x = m.f("a", a, lo, hi), z = m.f("b", b, lo, hi);
                    t.output(t.node(op, {x, z}, {F("y", y)})[0]);
                  }});
  };
  for (std::string op : {"Add", "Sub", "Mul", "Div"}) {
    float lo = op == "Div" ? 0.5f : -1.0f;
    binary(op, {2, 3, 4}, {2, 3, 4}, {2, 3, 4}, lo, 2.0f);
    binary(op, {2, 3, 4}, {4}, {2, 3, 4}, lo, 2.0f);
    binary(op, {3, 1}, {2, 1, 4}, {2, 3, 4}, lo, 2.0f);
    binary(op, {}, {3, 4}, {3, 4}, lo, 2.0f);
  }
  binary("Pow", {2, 3}, {2, 3}, {2, 3}, 0.5f, 2.0f);
  binary("Pow", {2, 3}, {}, {2, 3}, 0.5f, 2.0f);
  binary("Max", {2, 3}, {3}, {2, 3});
  binary("PRelu", {2, 3, 4}, {3, 1}, {2, 3, 4});  // a slope per channel, as PyTorch exports nn.PReLU
  binary("PRelu", {2, 3}, {2, 3}, {2, 3});
  binary("Min", {2, 3}, {2, 3}, {2, 3});
  cs.push_back({"Where (a broadcast mask over x, a scalar y, x read twice)", [](TinyGraph& t, M& m) {
                  int c = m.boolean("c", {4}, {1, 0, 0, 1});
                  int x = m.f("x", {2, 3, 4}), y = m.f("y", {});
                  int o = t.node("Where", {c, y, x}, {F("o", {2, 3, 4})})[0];
                  t.output(t.node("Mul", {o, x}, {F("z", {2, 3, 4})})[0]);
                }});
  cs.push_back({"Where", [](TinyGraph& t, M& m) {
                  int c = m.boolean("c", {2, 3}, {1, 0, 1, 0, 0, 1});
                  int x = m.f("x", {2, 3}), y = m.f("y", {3});
                  t.output(t.node("Where", {c, x, y}, {F("o", {2, 3})})[0]);
                }});
  auto unary = [&](const std::string& op, float lo, float hi, std::map<std::string, graph::Attribute> attrs = {}) {
    cs.push_back({op + (attrs.empty() ? "" : " (attrs)"), [=](TinyGraph& t, M& m) {
                    int x = m.f("x", {3, 5}, lo, hi);
                    t.output(t.node(op, {x}, {F("y", {3, 5})}, attrs)[0]);
                  }});
  };
  unary("Sqrt", 0.5f, 2.0f);
  unary("Reciprocal", 0.5f, 2.0f);
  unary("Neg", -1, 1);
  unary("Abs", -1, 1);
  unary("Exp", -1, 1);
  unary("Log", 0.5f, 2.0f);
  unary("Relu", -1, 1);
  unary("LeakyRelu", -1, 1, {{"alpha", attr_f(0.2)}});
  unary("Tanh", -1, 1);
  unary("Sigmoid", -2, 2);
  unary("Erf", -1, 1);
  unary("Gelu", -2, 2);
  unary("Gelu", -2, 2, {{"approximate", attr_s("tanh")}});
  unary("Sin", -2, 2);
  unary("Cos", -2, 2);
  unary("HardSigmoid", -4, 4, {{"alpha", attr_f(1.0 / 6)}, {"beta", attr_f(0.5)}});
  unary("HardSigmoid", -4, 4);
  unary("HardSwish", -5, 5);
  unary("Elu", -2, 2);
  unary("Elu", -2, 2, {{"alpha", attr_f(0.5)}});
  unary("Selu", -2, 2);
  unary("Celu", -2, 2, {{"alpha", attr_f(0.5)}});
  unary("Softplus", -3, 3);
  unary("Softsign", -3, 3);
  unary("ThresholdedRelu", -2, 3);
  unary("Shrink", -2, 2, {{"lambd", attr_f(0.4)}, {"bias", attr_f(0.2)}});
  unary("Tan", -1, 1);
  unary("Asin", -0.8f, 0.8f);
  unary("Acos", -0.8f, 0.8f);
  unary("Atan", -2, 2);
  unary("Sinh", -2, 2);
  unary("Cosh", -2, 2);
  unary("Asinh", -2, 2);
  unary("Acosh", 1.2f, 3);
  unary("Atanh", -0.8f, 0.8f);
  cs.push_back({"Sum of 3 (broadcast), Mean of 2", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {2, 3}), b = m.f("b", {3}), c = m.f("c", {2, 1});
                  int s = t.node("Sum", {a, b, c}, {F("s", {2, 3})})[0];
                  t.output(t.node("Mean", {s, b}, {F("y", {2, 3})})[0]);
                }});
  cs.push_back({"CastLike (float32 to float32)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3}), like = m.f("like", {1});
                  t.output(t.node("CastLike", {x, like}, {F("y", {2, 3})})[0]);
                }});
  cs.push_back({"Mod (fmod 1; a / b between 2.1 and 2.8)", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {2, 3}, 2.2f, 2.8f), b = m.f("b", {3}, 1.0f, 1.05f);
                  t.output(t.node("Mod", {a, b}, {F("y", {2, 3})}, {{"fmod", attr_i(1)}})[0]);
                }});
  unary("Identity", -1, 1);
  unary("Softmax", -2, 2);
  unary("Softmax", -2, 2, {{"axis", attr_i(0)}});
  unary("LogSoftmax", -2, 2);
  unary("Cast", -1, 1, {{"to", attr_i(1)}});
  // Gradients passed through Add / Sub / Reshape unchanged move on in the same buffer (the
  // executor's run_backward): residuals, a bias, reshapes back and forth, values read twice and a
  // graph output also read inside.
  cs.push_back({"pass-through chain (Add, Sub, Reshape, residual)", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {4, 6}), w = m.f("w", {6, 6}), b = m.f("b", {6});
                  int h = t.node("MatMul", {a, w}, {F("h", {4, 6})})[0];
                  int hb = t.node("Add", {h, b}, {F("hb", {4, 6})})[0];
                  int r = t.node("Reshape", {hb, m.ci64("s1", {2, 12})}, {F("r", {2, 12})})[0];
                  int r2 = t.node("Reshape", {r, m.ci64("s2", {4, 6})}, {F("r2", {4, 6})})[0];
                  int s = t.node("Add", {r2, a}, {F("s", {4, 6})})[0];
                  int d = t.node("Sub", {s, hb}, {F("d", {4, 6})})[0];
                  int y = t.node("Mul", {d, h}, {F("y", {4, 6})})[0];
                  int z = t.node("Add", {y, y}, {F("z", {4, 6})})[0];
                  t.output(z);
                  t.output(hb);
                }});
  cs.push_back({"Dropout (identity)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3});
                  t.output(t.node("Dropout", {x}, {F("y", {2, 3})})[0]);
                }});
  cs.push_back({"Clip", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 4}, -2, 2);
                  int lo = t.constant<float>("lo", DType::F32, {}, {-0.5f});
                  int hi = t.constant<float>("hi", DType::F32, {}, {0.7f});
                  t.output(t.node("Clip", {x, lo, hi}, {F("y", {3, 4})})[0]);
                }});
  cs.push_back({"MatMul 2-D", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {3, 4}), b = m.f("b", {4, 5});
                  t.output(t.node("MatMul", {a, b}, {F("y", {3, 5})})[0]);
                }});
  cs.push_back({"MatMul batched x 2-D", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {2, 3, 4}), b = m.f("b", {4, 5});
                  t.output(t.node("MatMul", {a, b}, {F("y", {2, 3, 5})})[0]);
                }});
  cs.push_back({"MatMul broadcast batch", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {2, 1, 3, 4}), b = m.f("b", {3, 4, 2});
                  t.output(t.node("MatMul", {a, b}, {F("y", {2, 3, 3, 2})})[0]);
                }});
  cs.push_back({"MatMul 1-D", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {4}), b = m.f("b", {2, 4, 3});
                  t.output(t.node("MatMul", {a, b}, {F("y", {2, 3})})[0]);
                }});
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb)
      cs.push_back({fmt::format("Gemm transA={} transB={}", ta, tb), [=](TinyGraph& t, M& m) {
                      int a = m.f("a", ta ? Shape{4, 3} : Shape{3, 4});
                      int b = m.f("b", tb ? Shape{5, 4} : Shape{4, 5});
                      int c = m.f("c", {5});
                      t.output(t.node("Gemm", {a, b, c}, {F("y", {3, 5})},
                                      {{"transA", attr_i(ta)}, {"transB", attr_i(tb)}, {"alpha", attr_f(0.7)}, {"beta", attr_f(1.3)}})[0]);
                    }});
  cs.push_back({"Conv pads strides bias", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 5, 5}), w = m.f("w", {4, 3, 3, 3}), b = m.f("b", {4});
                  t.output(t.node("Conv", {x, w, b}, {F("y", {2, 4, 3, 3})},
                                  {{"pads", attr_ints({1, 1, 1, 1})}, {"strides", attr_ints({2, 2})}})[0]);
                }});
  cs.push_back({"Conv groups dilation", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 4, 6, 5}), w = m.f("w", {6, 2, 2, 2});
                  t.output(t.node("Conv", {x, w}, {F("y", {1, 6, 4, 3})},
                                  {{"group", attr_i(2)}, {"dilations", attr_ints({2, 2})}})[0]);
                }});
  cs.push_back({"Conv 1x1", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2, 3}), w = m.f("w", {2, 3, 1, 1});
                  t.output(t.node("Conv", {x, w}, {F("y", {2, 2, 2, 3})})[0]);
                }});
  cs.push_back({"Conv 1-D", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 2, 7}), w = m.f("w", {3, 2, 3});
                  t.output(t.node("Conv", {x, w}, {F("y", {2, 3, 7})}, {{"auto_pad", attr_s("SAME_UPPER")}})[0]);
                }});
  // 3-D: pads [d, h, w begins, d, h, w ends]
  cs.push_back({"Conv 3-D pads strides dilation bias", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 2, 4, 5, 3}), w = m.f("w", {3, 2, 3, 2, 2}), b = m.f("b", {3});
                  t.output(t.node("Conv", {x, w, b}, {F("y", {2, 3, 2, 3, 3})},
                                  {{"pads", attr_ints({1, 0, 1, 1, 0, 0})}, {"strides", attr_ints({2, 1, 1})},
                                   {"dilations", attr_ints({1, 2, 1})}})[0]);
                }});
  cs.push_back({"Conv 3-D groups 2", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 4, 3, 3, 3}), w = m.f("w", {4, 2, 2, 2, 2});
                  t.output(t.node("Conv", {x, w}, {F("y", {1, 4, 2, 2, 2})}, {{"group", attr_i(2)}})[0]);
                }});
  cs.push_back({"MaxPool 3-D", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 4, 4, 4});
                  t.output(t.node("MaxPool", {x}, {F("y", {1, 2, 4, 2, 2})},
                                  {{"kernel_shape", attr_ints({3, 2, 2})}, {"strides", attr_ints({1, 2, 2})},
                                   {"pads", attr_ints({1, 0, 0, 1, 0, 0})}})[0]);
                }});
  for (int include : {0, 1})
    cs.push_back({fmt::format("AveragePool 3-D count_include_pad {}", include), [include](TinyGraph& t, M& m) {
                    int x = m.f("x", {1, 2, 3, 4, 4});
                    t.output(t.node("AveragePool", {x}, {F("y", {1, 2, 3, 2, 2})},
                                    {{"kernel_shape", attr_ints({2, 3, 2})}, {"strides", attr_ints({1, 2, 2})},
                                     {"pads", attr_ints({1, 1, 0, 0, 1, 1})}, {"count_include_pad", attr_i(include)}})[0]);
                  }});
  // Recurrent ops, hidden size 2, 3 steps, 2 rows; the outputs Y, Y_h (and Y_c) all feed the loss.
  cs.push_back({"LSTM forward, biases, initial states, peepholes", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 2, 3}), w = m.f("w", {1, 8, 3}), r = m.f("r", {1, 8, 2}), b = m.f("b", {1, 16});
                  int h0 = m.f("h0", {1, 2, 2}), c0 = m.f("c0", {1, 2, 2}), p = m.f("p", {1, 6});
                  auto o = t.node("LSTM", {x, w, r, b, -1, h0, c0, p}, {F("y", {3, 1, 2, 2}), F("yh", {1, 2, 2}), F("yc", {1, 2, 2})},
                                  {{"hidden_size", attr_i(2)}});
                  for (int v : o) t.output(v);
                }});
  cs.push_back({"LSTM bidirectional, layout 1", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2}), w = m.f("w", {2, 8, 2}), r = m.f("r", {2, 8, 2});
                  auto o = t.node("LSTM", {x, w, r}, {F("y", {2, 3, 2, 2}), F("yh", {2, 2, 2})},
                                  {{"hidden_size", attr_i(2)}, {"direction", attr_s("bidirectional")}, {"layout", attr_i(1)}});
                  for (int v : o) t.output(v);
                }});
  for (int lbr : {1, 0})
    for (std::string dir : {"forward", "reverse"})
      cs.push_back({fmt::format("GRU {}, linear_before_reset {}", dir, lbr), [lbr, dir](TinyGraph& t, M& m) {
                      int x = m.f("x", {3, 2, 3}), w = m.f("w", {1, 6, 3}), r = m.f("r", {1, 6, 2}), b = m.f("b", {1, 12});
                      int h0 = m.f("h0", {1, 2, 2});
                      auto o = t.node("GRU", {x, w, r, b, -1, h0}, {F("y", {3, 1, 2, 2}), F("yh", {1, 2, 2})},
                                      {{"hidden_size", attr_i(2)}, {"direction", attr_s(dir)}, {"linear_before_reset", attr_i(lbr)}});
                      for (int v : o) t.output(v);
                    }});
  cs.push_back({"GRU bidirectional, layout 1", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2}), w = m.f("w", {2, 6, 2}), r = m.f("r", {2, 6, 2}), b = m.f("b", {2, 12});
                  auto o = t.node("GRU", {x, w, r, b}, {F("y", {2, 3, 2, 2})},
                                  {{"hidden_size", attr_i(2)}, {"direction", attr_s("bidirectional")}, {"layout", attr_i(1)}});
                  t.output(o[0]);
                }});
  // sequence_lens: a row of 2 steps, one of none, one of all 3
  cs.push_back({"LSTM bidirectional, sequence_lens 2, 0, 3", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 3, 2}), w = m.f("w", {2, 8, 2}), r = m.f("r", {2, 8, 2}), b = m.f("b", {2, 16});
                  int len = m.i32("len", {3}, {2, 0, 3}), h0 = m.f("h0", {2, 3, 2}), c0 = m.f("c0", {2, 3, 2});
                  auto o = t.node("LSTM", {x, w, r, b, len, h0, c0}, {F("y", {3, 2, 3, 2}), F("yh", {2, 3, 2}), F("yc", {2, 3, 2})},
                                  {{"hidden_size", attr_i(2)}, {"direction", attr_s("bidirectional")}});
                  for (int v : o) t.output(v);
                }});
  cs.push_back({"GRU reverse, layout 1, sequence_lens 1, 3", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2}), w = m.f("w", {1, 6, 2}), r = m.f("r", {1, 6, 2});
                  int len = m.i32("len", {2}, {1, 3}), h0 = m.f("h0", {2, 1, 2});
                  auto o = t.node("GRU", {x, w, r, -1, len, h0}, {F("y", {2, 3, 1, 2}), F("yh", {2, 1, 2})},
                                  {{"hidden_size", attr_i(2)}, {"direction", attr_s("reverse")}, {"layout", attr_i(1)}});
                  for (int v : o) t.output(v);
                }});
  cs.push_back({"RNN bidirectional, initial state", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 2, 3}), w = m.f("w", {2, 2, 3}), r = m.f("r", {2, 2, 2}), b = m.f("b", {2, 4});
                  int h0 = m.f("h0", {2, 2, 2});
                  auto o = t.node("RNN", {x, w, r, b, -1, h0}, {F("y", {3, 2, 2, 2}), F("yh", {2, 2, 2})},
                                  {{"hidden_size", attr_i(2)}, {"direction", attr_s("bidirectional")}});
                  for (int v : o) t.output(v);
                }});
  // grid positions past [-1, 1] too (padding, reflections); seeded values, away from the kinks
  for (std::string pad : {"zeros", "border", "reflection"})
    for (int ac : {0, 1})
      cs.push_back({fmt::format("GridSample bilinear, {} padding, align_corners {}", pad, ac), [pad, ac](TinyGraph& t, M& m) {
                      int x = m.f("x", {2, 2, 3, 4}), g = m.f("grid", {2, 2, 3, 2}, -1.6f, 1.6f);
                      t.output(t.node("GridSample", {x, g}, {F("y", {2, 2, 2, 3})},
                                      {{"padding_mode", attr_s(pad)}, {"align_corners", attr_i(ac)}})[0]);
                    }});
  cs.push_back({"MaxPool", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 5, 5});
                  t.output(t.node("MaxPool", {x}, {F("y", {1, 2, 3, 3})},
                                  {{"kernel_shape", attr_ints({3, 3})}, {"strides", attr_ints({2, 2})}, {"pads", attr_ints({1, 1, 1, 1})}})[0]);
                }});
  cs.push_back({"MaxPool 2x2 stride 2 (no padding)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 2, 4, 6});
                  t.output(t.node("MaxPool", {x}, {F("y", {2, 2, 2, 3})},
                                  {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}})[0]);
                }});
  cs.push_back({"MaxPool 3x2 stride 1 (no padding)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 4, 4});
                  t.output(t.node("MaxPool", {x}, {F("y", {1, 2, 2, 3})}, {{"kernel_shape", attr_ints({3, 2})}})[0]);
                }});
  cs.push_back({"AveragePool", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 5, 5});
                  t.output(t.node("AveragePool", {x}, {F("y", {1, 2, 3, 3})},
                                  {{"kernel_shape", attr_ints({3, 3})}, {"strides", attr_ints({2, 2})}, {"pads", attr_ints({1, 1, 1, 1})}})[0]);
                }});
  for (int p : {2, 3})
    cs.push_back({fmt::format("LpPool p {}, strides, pads", p), [p](TinyGraph& t, M& m) {
                    int x = m.f("x", {1, 2, 5, 5});
                    t.output(t.node("LpPool", {x}, {F("y", {1, 2, 3, 3})},
                                    {{"kernel_shape", attr_ints({3, 3})}, {"strides", attr_ints({2, 2})},
                                     {"pads", attr_ints({1, 1, 1, 1})}, {"p", attr_i(p)}})[0]);
                  }});
  for (int p : {2, 3})
    cs.push_back({fmt::format("GlobalLpPool p {}", p), [p](TinyGraph& t, M& m) {
                    int x = m.f("x", {2, 3, 2, 3});
                    t.output(t.node("GlobalLpPool", {x}, {F("y", {2, 3, 1, 1})}, {{"p", attr_i(p)}})[0]);
                  }});
  // X [1, 2, 2, 2] into [1, 2, 4, 4] at MaxPool-style indices; two elements name position 5 (the
  // later one, X's element 2, is kept and gets its gradient).
  cs.push_back({"MaxUnpool, a position named twice", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 2, 2});
                  int i = t.constant<int64_t>("i", DType::I64, {1, 2, 2, 2}, {5, 3, 5, 15, 16, 18, 27, 30});
                  t.output(t.node("MaxUnpool", {x, i}, {F("y", {1, 2, 4, 4})},
                                  {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}})[0]);
                }});
  cs.push_back({"MaxUnpool into a larger output_shape (coordinates kept)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 2, 2});
                  int i = t.constant<int64_t>("i", DType::I64, {1, 2, 2, 2}, {5, 3, 10, 15, 16, 18, 27, 30});
                  int os = t.constant<int64_t>("os", DType::I64, {4}, {1, 2, 5, 6});
                  t.output(t.node("MaxUnpool", {x, i, os}, {F("y", {1, 2, 5, 6})},
                                  {{"kernel_shape", attr_ints({2, 2})}, {"strides", attr_ints({2, 2})}})[0]);
                }});
  // 3 regions of 2 images (two of image 0, one partly outside), 2 x 2 bins
  for (std::string mode : {"avg", "max"})
    cs.push_back({"RoiAlign mode " + mode, [mode](TinyGraph& t, M& m) {
                    int x = m.f("x", {2, 2, 6, 6});
                    int rois = t.constant<float>("rois", DType::F32, {3, 4}, {0.5f, 1.0f, 4.2f, 5.1f, 2.0f, 0.3f, 5.5f, 3.9f, 3.1f, 2.2f, 7.5f, 6.8f});
                    int bi = t.constant<int64_t>("bi", DType::I64, {3}, {0, 1, 0});
                    t.output(t.node("RoiAlign", {x, rois, bi}, {F("y", {3, 2, 2, 2})},
                                    {{"output_height", attr_i(2)}, {"output_width", attr_i(2)}, {"sampling_ratio", attr_i(2)},
                                     {"spatial_scale", attr_f(0.9f)}, {"mode", attr_s(mode)}})[0]);
                  }});
  cs.push_back({"Det of a batch of 3 x 3 matrices", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {2, 3, 3});
                  t.output(t.node("Det", {a}, {F("d", {2})})[0]);
                }});
  // A rank-2 3 x 3 product: det 0, its gradient the cofactors of the minors.
  cs.push_back({"Det of a singular matrix (B C, rank 2)", [](TinyGraph& t, M& m) {
                  int b = m.f("b", {3, 2}), c = m.f("c", {2, 3});
                  int a = t.node("MatMul", {b, c}, {F("a", {3, 3})})[0];
                  t.output(t.node("Det", {a}, {F("d", {})})[0]);
                }});
  cs.push_back({"AveragePool count_include_pad", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 1, 4, 4});
                  t.output(t.node("AveragePool", {x}, {F("y", {1, 1, 4, 4})},
                                  {{"kernel_shape", attr_ints({2, 2})}, {"count_include_pad", attr_i(1)}, {"pads", attr_ints({1, 1, 0, 0})}})[0]);
                }});
  for (std::string red : {"none", "add"}) {
    cs.push_back({"ScatterElements axis 0, reduction " + red, [red](TinyGraph& t, M& m) {
                    int x = m.f("x", {3, 4}), u = m.f("u", {2, 4});
                    int i = m.i64("i", {2, 4}, {0, 2, 1, 0, 2, 0, 2, 1});
                    t.output(t.node("ScatterElements", {x, i, u}, {F("y", {3, 4})}, {{"axis", attr_i(0)}, {"reduction", attr_s(red)}})[0]);
                  }});
    cs.push_back({"ScatterND slices, reduction " + red, [red](TinyGraph& t, M& m) {
                    int x = m.f("x", {4, 3}), u = m.f("u", {2, 3});
                    int i = m.i64("i", {2, 1}, {3, 1});
                    t.output(t.node("ScatterND", {x, i, u}, {F("y", {4, 3})}, {{"reduction", attr_s(red)}})[0]);
                  }});
  }
  cs.push_back({"GatherND (a tuple read twice)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 4, 2});
                  int i = m.i64("i", {3, 2}, {0, 1, 2, 3, 0, 1});
                  t.output(t.node("GatherND", {x, i}, {F("y", {3, 2})})[0]);
                }});
  cs.push_back({"GatherND batch_dims 1", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2});
                  int i = m.i64("i", {2, 1}, {1, 2});
                  t.output(t.node("GatherND", {x, i}, {F("y", {2, 2})}, {{"batch_dims", attr_i(1)}})[0]);
                }});
  for (std::string mode : {"DCR", "CRD"})
    cs.push_back({"DepthToSpace " + mode, [mode](TinyGraph& t, M& m) {
                    int x = m.f("x", {1, 8, 2, 3});
                    t.output(t.node("DepthToSpace", {x}, {F("y", {1, 2, 4, 6})}, {{"blocksize", attr_i(2)}, {"mode", attr_s(mode)}})[0]);
                  }});
  cs.push_back({"SpaceToDepth", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 4, 6});
                  t.output(t.node("SpaceToDepth", {x}, {F("y", {1, 8, 2, 3})}, {{"blocksize", attr_i(2)}})[0]);
                }});
  for (int p : {1, 2})
    cs.push_back({fmt::format("LpNormalization p {} axis 1", p), [p](TinyGraph& t, M& m) {
                    int x = m.f("x", {2, 4, 3});
                    t.output(t.node("LpNormalization", {x}, {F("y", {2, 4, 3})}, {{"axis", attr_i(1)}, {"p", attr_i(p)}})[0]);
                  }});
  // size 3 (a centered window) and 4 (one more channel after than before); alpha large enough that
  // the cross-channel term of the gradient matters
  for (int size : {3, 4})
    cs.push_back({fmt::format("LRN size {}", size), [size](TinyGraph& t, M& m) {
                    int x = m.f("x", {2, 5, 2, 3});
                    t.output(t.node("LRN", {x}, {F("y", {2, 5, 2, 3})},
                                    {{"size", attr_i(size)}, {"alpha", attr_f(0.8)}, {"beta", attr_f(0.75)}, {"bias", attr_f(1.5)}})[0]);
                  }});
  cs.push_back({"TopK 2 of 5 along axis 1 (values)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 5, 2});
                  int k = t.constant<int64_t>("k", DType::I64, {1}, {2});
                  auto o = t.node("TopK", {x, k}, {F("v", {3, 2, 2}), {"i", DType::I64, {3, 2, 2}}}, {{"axis", attr_i(1)}});
                  t.output(o[0]);
                }});
  cs.push_back({"GlobalMaxPool", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2, 3});
                  t.output(t.node("GlobalMaxPool", {x}, {F("y", {2, 3, 1, 1})})[0]);
                }});
  for (int ex : {0, 1})
    for (int rev : {0, 1})
      cs.push_back({fmt::format("CumSum axis 1, exclusive {}, reverse {}", ex, rev), [ex, rev](TinyGraph& t, M& m) {
                      int x = m.f("x", {2, 4, 3});
                      int axis = t.constant<int64_t>("axis", DType::I64, {}, {1});
                      t.output(t.node("CumSum", {x, axis}, {F("y", {2, 4, 3})}, {{"exclusive", attr_i(ex)}, {"reverse", attr_i(rev)}})[0]);
                    }});
  for (int time_axis : {0, 1})
    cs.push_back({fmt::format("ReverseSequence time_axis {}", time_axis), [time_axis](TinyGraph& t, M& m) {
                    const Shape shape = time_axis == 0 ? Shape{4, 3, 2} : Shape{3, 4, 2};  // T 4, B 3
                    int x = m.f("x", shape);
                    int lens = t.constant<int64_t>("lens", DType::I64, {3}, {time_axis == 0 ? int64_t{4} : int64_t{2}, 1, time_axis == 0 ? int64_t{3} : int64_t{0}});
                    t.output(t.node("ReverseSequence", {x, lens}, {F("y", shape)},
                                    {{"time_axis", attr_i(time_axis)}, {"batch_axis", attr_i(1 - time_axis)}})[0]);
                  }});
  cs.push_back({"GlobalAveragePool", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2, 2});
                  t.output(t.node("GlobalAveragePool", {x}, {F("y", {2, 3, 1, 1})})[0]);
                }});
  cs.push_back({"ConvTranspose stride 2, pads, output_padding, bias", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 4, 3, 3}), w = m.f("w", {4, 3, 3, 3}), b = m.f("b", {3});
                  t.output(t.node("ConvTranspose", {x, w, b}, {F("y", {2, 3, 6, 6})},
                                  {{"strides", attr_ints({2, 2})}, {"pads", attr_ints({1, 1, 1, 1})}, {"output_padding", attr_ints({1, 1})}})[0]);
                }});
  cs.push_back({"ConvTranspose 3-D strides", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {1, 2, 2, 3, 2}), w = m.f("w", {2, 3, 2, 2, 2});
                  t.output(t.node("ConvTranspose", {x, w}, {F("y", {1, 3, 4, 4, 4})}, {{"strides", attr_ints({2, 1, 2})}})[0]);
                }});
  cs.push_back({"ConvTranspose groups 2, dilations 2, 1-D", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 4, 5}), w = m.f("w", {4, 3, 2});
                  t.output(t.node("ConvTranspose", {x, w}, {F("y", {2, 6, 7})}, {{"group", attr_i(2)}, {"dilations", attr_ints({2})}})[0]);
                }});
  cs.push_back({"LayerNormalization", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 6}), g = m.f("g", {6}), b = m.f("b", {6});
                  t.output(t.node("LayerNormalization", {x, g, b}, {F("y", {2, 3, 6})}, {{"epsilon", attr_f(1e-5)}})[0]);
                }});
  cs.push_back({"LayerNormalization axis 1", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 4}), g = m.f("g", {3, 4});
                  t.output(t.node("LayerNormalization", {x, g}, {F("y", {2, 3, 4})}, {{"axis", attr_i(1)}})[0]);
                }});
  cs.push_back({"InstanceNormalization", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 2, 3}), g = m.f("g", {3}), b = m.f("b", {3});
                  t.output(t.node("InstanceNormalization", {x, g, b}, {F("y", {2, 3, 2, 3})}, {{"epsilon", attr_f(1e-3)}})[0]);
                }});
  for (int train : {1, 0}) {
    cs.push_back({std::string("BatchNormalization ") + (train ? "training mode" : "inference mode"), [train](TinyGraph& t, M& m) {
                    int x = m.f("x", {3, 2, 2, 2}), g = m.f("g", {2}), b = m.f("b", {2});
                    int mean = t.constant<float>("mean", DType::F32, {2}, {0.1f, -0.2f});
                    int var = t.constant<float>("var", DType::F32, {2}, {0.5f, 1.5f});
                    t.output(t.node("BatchNormalization", {x, g, b, mean, var}, {F("y", {3, 2, 2, 2})},
                                    {{"training_mode", attr_i(train)}})[0]);
                  }});
  }
  // Training mode with running statistics that the forwards update (they do not reach Y).
  cs.push_back({"BatchNormalization training mode, running statistics updated", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {4, 3}), g = m.f("g", {3}), b = m.f("b", {3});
                  int mean = t.buffer("mean", {3}, {0.1f, -0.2f, 0.3f});
                  int var = t.buffer("var", {3}, {0.5f, 1.5f, 1.0f});
                  auto o = t.node("BatchNormalization", {x, g, b, mean, var}, {F("y", {4, 3}), F("rm", {3}), F("rv", {3})},
                                  {{"training_mode", attr_i(1)}, {"momentum", attr_f(0.7)}});
                  t.output(o[0]);
                }});
  auto reduce = [&](const std::string& op, Shape x, std::vector<int64_t> axes, int keep, Shape y) {
    cs.push_back({fmt::format("{} axes {} keepdims {}", op, shape_str(axes), keep), [=](TinyGraph& t, M& m) {
                    int xi = m.f("x", x);
                    int ax = m.ci64("axes", axes);
                    t.output(t.node(op, {xi, ax}, {F("y", y)}, {{"keepdims", attr_i(keep)}})[0]);
                  }});
  };
  reduce("ReduceSum", {2, 3, 4}, {1}, 1, {2, 1, 4});
  reduce("ReduceL2", {2, 3, 4}, {2}, 1, {2, 3, 1});
  reduce("ReduceL2", {2, 3, 4}, {0, 1}, 0, {4});
  reduce("ReduceSum", {2, 3, 4}, {0, 2}, 0, {3});
  reduce("ReduceMean", {2, 3, 4}, {-1}, 1, {2, 3, 1});
  reduce("ReduceMean", {2, 3, 4}, {0, 1}, 0, {4});
  reduce("ReduceProd", {2, 3, 4}, {0, 2}, 1, {1, 3, 1});
  reduce("ReduceL1", {2, 3, 4}, {1}, 1, {2, 1, 4});
  reduce("ReduceSumSquare", {2, 3, 4}, {0, 2}, 0, {3});
  cs.push_back({"ReduceLogSum (positive input)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 4}, 0.5f, 2.0f);
                  t.output(t.node("ReduceLogSum", {x}, {F("y", {3, 1})}, {{"axes", attr_ints({1})}})[0]);
                }});
  reduce("ReduceLogSumExp", {2, 3, 4}, {-1}, 1, {2, 3, 1});
  reduce("ReduceLogSumExp", {2, 3, 4}, {0, 1}, 0, {4});
  cs.push_back({"ReduceMax", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 4});
                  t.output(t.node("ReduceMax", {x}, {F("y", {3, 1})}, {{"axes", attr_ints({1})}})[0]);
                }});
  cs.push_back({"ReduceMin", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 4});
                  t.output(t.node("ReduceMin", {x}, {F("y", {4})}, {{"axes", attr_ints({0})}, {"keepdims", attr_i(0)}})[0]);
                }});
  cs.push_back({"Reshape, Flatten, Squeeze, Unsqueeze", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 4});
                  int s = m.ci64("shape", {6, 4});
                  int r = t.node("Reshape", {x, s}, {F("r", {6, 4})})[0];
                  int f = t.node("Flatten", {r}, {F("f", {6, 4})}, {{"axis", attr_i(1)}})[0];
                  int u = t.node("Unsqueeze", {f, m.ci64("ax", {0})}, {F("u", {1, 6, 4})})[0];
                  int q = t.node("Squeeze", {u, m.ci64("ax2", {0})}, {F("q", {6, 4})})[0];
                  int w = m.f("w", {6, 4});
                  t.output(t.node("Mul", {q, w}, {F("y", {6, 4})})[0]);
                }});
  cs.push_back({"Transpose", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 4});
                  t.output(t.node("Transpose", {x}, {F("y", {4, 2, 3})}, {{"perm", attr_ints({2, 0, 1})}})[0]);
                }});
  cs.push_back({"Transpose 2-D (tiled)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {20, 18});
                  t.output(t.node("Transpose", {x}, {F("y", {18, 20})})[0]);
                }});
  cs.push_back({"Transpose heads (tiled)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 9, 3, 10});
                  t.output(t.node("Transpose", {x}, {F("y", {2, 3, 10, 9})}, {{"perm", attr_ints({0, 2, 3, 1})}})[0]);
                }});
  cs.push_back({"Concat", [](TinyGraph& t, M& m) {
                  int a = m.f("a", {2, 3}), b = m.f("b", {2, 1});
                  t.output(t.node("Concat", {a, b, a}, {F("y", {2, 7})}, {{"axis", attr_i(1)}})[0]);
                }});
  cs.push_back({"Concat of 35 inputs (the executor's input masks end at 32)", [](TinyGraph& t, M& m) {
                  std::vector<int> parts;
                  for (int i = 0; i < 35; ++i) parts.push_back(m.f(fmt::format("p{}", i), {2, 1}));
                  t.output(t.node("Concat", parts, {F("y", {2, 35})}, {{"axis", attr_i(1)}})[0]);
                }});
  cs.push_back({"Split", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 6});
                  auto o = t.node("Split", {x, m.ci64("split", {2, 4})}, {F("a", {2, 2}), F("b", {2, 4})}, {{"axis", attr_i(1)}});
                  t.output(o[0]);
                  t.output(o[1]);
                }});
  cs.push_back({"Split, one part unused", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {4, 3});
                  auto o = t.node("Split", {x}, {F("a", {2, 3}), F("b", {2, 3})}, {{"axis", attr_i(0)}});
                  t.output(o[1]);
                }});
  cs.push_back({"Slice steps", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {4, 6});
                  t.output(t.node("Slice", {x, m.ci64("s", {1, 5}), m.ci64("e", {4, 0}), m.ci64("a", {0, 1}), m.ci64("st", {2, -2})},
                                  {F("y", {2, 3})})[0]);
                }});
  cs.push_back({"Gather axis 0 (repeated indices)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {5, 3});
                  int i = m.i64("i", {2, 2}, {1, 4, 1, -1});
                  t.output(t.node("Gather", {x, i}, {F("y", {2, 2, 3})})[0]);
                }});
  cs.push_back({"Gather axis 1", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 4, 3});
                  int i = m.i64("i", {3}, {3, 0, 3});
                  t.output(t.node("Gather", {x, i}, {F("y", {2, 3, 3})}, {{"axis", attr_i(1)}})[0]);
                }});
  cs.push_back({"GatherElements axis 1 (repeated and negative indices, indices smaller than the data)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 4, 2});
                  int i = m.i64("i", {2, 3, 2}, {0, 3, -1, 1, 3, 3, 2, 0, 0, 0, -4, 1});
                  t.output(t.node("GatherElements", {x, i}, {F("y", {2, 3, 2})}, {{"axis", attr_i(1)}})[0]);
                }});
  cs.push_back({"Expand", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 1});
                  t.output(t.node("Expand", {x, m.ci64("s", {2, 3, 4})}, {F("y", {2, 3, 4})})[0]);
                }});
  cs.push_back({"Tile", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3});
                  t.output(t.node("Tile", {x, m.ci64("r", {2, 2})}, {F("y", {4, 6})})[0]);
                }});
  cs.push_back({"Trilu lower k=1", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 4});
                  int k = t.constant<int64_t>("k", DType::I64, {}, {1});
                  t.output(t.node("Trilu", {x, k}, {F("y", {2, 3, 4})}, {{"upper", attr_i(0)}})[0]);
                }});
  for (std::string mode : {"constant", "reflect", "edge"}) {
    cs.push_back({"Pad " + mode, [mode](TinyGraph& t, M& m) {
                    int x = m.f("x", {2, 3, 4});
                    // axis 1: 2 before, 1 after; axis 2: 1 cropped before, 3 after (reflect: 2)
                    int64_t e = mode == "reflect" ? 2 : 3;
                    int p = m.ci64("pads", {0, 2, -1, 0, 1, e});
                    int v = t.constant<float>("v", DType::F32, {}, {0.25f});
                    t.output(t.node("Pad", {x, p, v}, {F("y", {2, 6, 3 + e})}, {{"mode", attr_s(mode)}})[0]);
                  }});
  }
  // Resize: scales or sizes, each interpolation mode and coordinate transformation PyTorch and
  // TensorFlow export, enlarging and shrinking, taps at the edges (clamped, or excluded).
  auto resize = [&](const std::string& what, Shape x, std::vector<float> scales, std::vector<int64_t> sizes, Shape y,
                    std::map<std::string, graph::Attribute> attrs, std::vector<float> roi = {}) {
    cs.push_back({"Resize " + what, [=](TinyGraph& t, M& m) {
                    int xi = m.f("x", x);
                    const int64_t R = static_cast<int64_t>(x.size());
                    int r = roi.empty() ? -1 : t.constant<float>("roi", DType::F32, {2 * R}, roi);
                    int sc = scales.empty() ? -1 : t.constant<float>("scales", DType::F32, {R}, scales);
                    std::vector<int> ins{xi, r, sc};
                    if (!sizes.empty()) ins.push_back(m.ci64("sizes", sizes));
                    t.output(t.node("Resize", ins, {F("y", y)}, attrs)[0]);
                  }});
  };
  using A = std::map<std::string, graph::Attribute>;
  resize("nearest x2 (asymmetric, floor: PyTorch's)", {1, 2, 3, 3}, {1, 1, 2, 2}, {}, {1, 2, 6, 6},
         A{{"mode", attr_s("nearest")}, {"coordinate_transformation_mode", attr_s("asymmetric")}, {"nearest_mode", attr_s("floor")}});
  resize("nearest to sizes (half_pixel, round_prefer_ceil)", {2, 1, 5, 4}, {}, {2, 1, 3, 7}, {2, 1, 3, 7},
         A{{"mode", attr_s("nearest")}, {"nearest_mode", attr_s("round_prefer_ceil")}});
  resize("linear x2 (pytorch_half_pixel: bilinear, align_corners=False)", {1, 2, 3, 4}, {1, 1, 2, 2}, {}, {1, 2, 6, 8},
         A{{"mode", attr_s("linear")}, {"coordinate_transformation_mode", attr_s("pytorch_half_pixel")}});
  resize("linear to sizes (align_corners)", {1, 2, 4, 3}, {}, {1, 2, 7, 5}, {1, 2, 7, 5},
         A{{"mode", attr_s("linear")}, {"coordinate_transformation_mode", attr_s("align_corners")}});
  resize("linear shrink 0.6 (half_pixel)", {1, 1, 5, 6}, {1, 1, 0.6f, 0.6f}, {}, {1, 1, 3, 3}, A{{"mode", attr_s("linear")}});
  resize("cubic x1.5 (half_pixel)", {1, 2, 4, 4}, {1, 1, 1.5f, 1.5f}, {}, {1, 2, 6, 6}, A{{"mode", attr_s("cubic")}});
  resize("cubic A=-0.5, exclude_outside, 3-D", {2, 5, 3}, {1, 0.8f, 2}, {}, {2, 4, 6},
         A{{"mode", attr_s("cubic")}, {"cubic_coeff_a", attr_f(-0.5)}, {"exclude_outside", attr_i(1)}});
  resize("linear tf_crop_and_resize (extrapolated edges)", {1, 1, 4, 4}, {}, {1, 1, 3, 5}, {1, 1, 3, 5},
         A{{"mode", attr_s("linear")}, {"coordinate_transformation_mode", attr_s("tf_crop_and_resize")},
           {"extrapolation_value", attr_f(0.5)}},
         {0, 0, -0.2f, 0.3f, 1, 1, 0.8f, 1.25f});
  auto einsum = [&](const std::string& eq, std::vector<Shape> ins, Shape y) {
    cs.push_back({"Einsum " + eq, [=](TinyGraph& t, M& m) {
                    std::vector<int> xs;
                    for (size_t i = 0; i < ins.size(); ++i) xs.push_back(m.f(fmt::format("x{}", i), ins[i]));
                    t.output(t.node("Einsum", xs, {F("y", y)}, {{"equation", attr_s(eq)}})[0]);
                  }});
  };
  einsum("bghid,bghjd->bghij", {{1, 2, 2, 3, 4}, {1, 2, 2, 5, 4}}, {1, 2, 2, 3, 5});  // MaxViT's q.k
  einsum("bij,bjd->bid", {{2, 3, 4}, {2, 4, 5}}, {2, 3, 5});
  einsum("ij,kj->ki", {{3, 4}, {2, 4}}, {2, 3});
  einsum("abc,cd->", {{2, 3, 4}, {4, 2}}, {});                  // everything summed
  einsum("ab,c->acb", {{2, 3}, {4}}, {2, 4, 3});                // outer product
  einsum("...ij,...jk", {{2, 3, 4}, {2, 4, 2}}, {2, 3, 2});     // implicit output, ellipsis
  einsum("ijk->ki", {{2, 3, 4}}, {4, 2});                       // one operand: sum and permute
  cs.push_back({"SoftmaxCrossEntropyLoss mean, weights, ignore_index", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {5, 4}, -2, 2);
                  int y = m.i64("y", {5}, {1, 3, 0, 3, 2});
                  int w = t.constant<float>("w", DType::F32, {4}, {0.5f, 1.0f, 2.0f, 1.5f});
                  t.output(t.node("SoftmaxCrossEntropyLoss", {x, y, w}, {F("l", {})}, {{"ignore_index", attr_i(2)}})[0]);
                }});
  cs.push_back({"SoftmaxCrossEntropyLoss none, [N, C, D], log_prob", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 4}, -2, 2);
                  int y = m.i64("y", {2, 4}, {0, 1, 2, 1, 2, 2, 0, 1});
                  auto o = t.node("SoftmaxCrossEntropyLoss", {x, y}, {F("l", {2, 4}), F("lp", {2, 3, 4})}, {{"reduction", attr_s("none")}});
                  t.output(o[0]);
                  t.output(o[1]);
                }});
  cs.push_back({"NegativeLogLikelihoodLoss mean, weights, ignore_index", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {5, 4}, -2, 2);
                  int y = m.i64("y", {5}, {1, 3, 0, 3, 2});
                  int w = t.constant<float>("w", DType::F32, {4}, {0.5f, 1.0f, 2.0f, 1.5f});
                  t.output(t.node("NegativeLogLikelihoodLoss", {x, y, w}, {F("l", {})}, {{"ignore_index", attr_i(2)}})[0]);
                }});
  cs.push_back({"NegativeLogLikelihoodLoss none, [N, C, D] after LogSoftmax", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {2, 3, 4}, -2, 2);
                  int y = m.i64("y", {2, 4}, {0, 1, 2, 1, 2, 2, 0, 1});
                  int lp = t.node("LogSoftmax", {x}, {F("lp", {2, 3, 4})}, {{"axis", attr_i(1)}})[0];
                  t.output(t.node("NegativeLogLikelihoodLoss", {lp, y}, {F("l", {2, 4})}, {{"reduction", attr_s("none")}})[0]);
                }});
  cs.push_back({"chain: attention-like block", [](TinyGraph& t, M& m) {
                  // x [2,4,6] -> q = x Wq, s = q x^T, softmax, s x, layernorm; x used 3 times
                  int x = m.f("x", {2, 4, 6}), wq = m.f("wq", {6, 6}), g = m.f("g", {6});
                  int q = t.node("MatMul", {x, wq}, {F("q", {2, 4, 6})})[0];
                  int xt = t.node("Transpose", {x}, {F("xt", {2, 6, 4})}, {{"perm", attr_ints({0, 2, 1})}})[0];
                  int s = t.node("MatMul", {q, xt}, {F("s", {2, 4, 4})})[0];
                  int p = t.node("Softmax", {s}, {F("p", {2, 4, 4})}, {{"axis", attr_i(-1)}})[0];
                  int o = t.node("MatMul", {p, x}, {F("o", {2, 4, 6})})[0];
                  int r = t.node("Add", {o, x}, {F("r", {2, 4, 6})})[0];
                  t.output(t.node("LayerNormalization", {r, g}, {F("y", {2, 4, 6})})[0]);
                }});
  cs.push_back({"chain: transposed weight (weight-only path)", [](TinyGraph& t, M& m) {
                  int x = m.f("x", {3, 4}), w = m.f("w", {5, 4}), b = m.f("b", {5});
                  int wt = t.node("Transpose", {w}, {F("wt", {4, 5})}, {{"perm", attr_ints({1, 0})}})[0];
                  int y = t.node("MatMul", {x, wt}, {F("y", {3, 5})})[0];
                  int z = t.node("Add", {b, y}, {F("z", {3, 5})})[0];
                  t.output(t.node("Tanh", {z}, {F("o", {3, 5})})[0]);
                }});
  return cs;
}


}  // namespace smp::test
