#include "graph/op_registry.hpp"

#include "core/error.hpp"
#include "graph/einsum.hpp"

#include <algorithm>
#include <array>
#include <unordered_map>

namespace smp::graph {

namespace {

// ---- helpers over a node's values ---------------------------------------------------------

double bytes_of(const Graph& g, int id) { return id < 0 ? 0.0 : static_cast<double>(g.value(id).bytes()); }
double elems_of(const Graph& g, int id) { return id < 0 ? 0.0 : static_cast<double>(g.value(id).numel()); }

double input_bytes(const Graph& g, const Node& n) {
  double b = 0;
  for (int id : n.inputs) b += bytes_of(g, id);
  return b;
}
double output_bytes(const Graph& g, const Node& n) {
  double b = 0;
  for (int id : n.outputs) b += bytes_of(g, id);
  return b;
}
double output_elems(const Graph& g, const Node& n) {
  double e = 0;
  for (int id : n.outputs) e += elems_of(g, id);
  return e;
}
int64_t param_elems(const Graph& g, const Node& n) {
  int64_t e = 0;
  for (int id : n.inputs)
    if (id >= 0 && g.value(id).kind == ValueKind::Parameter) e += g.value(id).numel();
  return e;
}
const Shape& in_shape(const Graph& g, const Node& n, size_t i) {
  static const Shape empty;
  return i < n.inputs.size() && n.inputs[i] >= 0 ? g.value(n.inputs[i]).shape : empty;
}

// A kernel that reads all its inputs and writes all its outputs, `per_elem` FLOPs per output
// element.
NodeCost streaming(const Graph& g, const Node& n, double per_out_elem) {
  NodeCost c;
  c.flops = per_out_elem * output_elems(g, n);
  c.bytes_read = input_bytes(g, n);
  c.bytes_written = output_bytes(g, n);
  c.output_bytes = c.bytes_written;
  c.param_elems = param_elems(g, n);
  return c;
}

// ---- cost rules ---------------------------------------------------------------------------

// One FLOP per output element (elementwise ops, as the summary defines them).
NodeCost cost_elementwise(const Graph& g, const Node& n) { return streaming(g, n, 1.0); }

// Moves bytes, computes nothing.
NodeCost cost_data_movement(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  // A slice, split or gather reads only what it writes (plus indices).
  if (n.op_type == "Slice" || n.op_type == "Split" || n.op_type == "Gather" || n.op_type == "TpVocabGather" ||
      n.op_type == "GatherElements") {
    c.bytes_read = c.bytes_written;
    for (size_t i = 1; i < n.inputs.size(); ++i) c.bytes_read += bytes_of(g, n.inputs[i]);
  }
  return c;
}

// Resize / Upsample: a multiply-add per tap (nearest 1, linear 2, cubic 4) per resized axis
// and output element (the kernel runs one pass per resized axis); reads the input, writes the
// output.
NodeCost cost_resize(const Graph& g, const Node& n) {
  const std::string mode = n.attr_string("mode", "nearest");
  const double taps = mode == "cubic" ? 4 : (mode == "nearest" ? 0 : 2);
  const Shape& x = in_shape(g, n, 0);
  const Shape& y = g.value(n.outputs[0]).shape;
  int resized = 0;
  for (size_t d = 0; d < x.size() && d < y.size(); ++d) resized += x[d] != y[d];
  return streaming(g, n, 2 * taps * resized);
}

// Re-labels a buffer (Reshape, Flatten, Squeeze, Unsqueeze, Identity): no bytes move, and the
// output aliases the input, so it adds no activation memory.
NodeCost cost_view(const Graph& g, const Node& n) {
  NodeCost c;
  c.param_elems = param_elems(g, n);
  return c;
}

NodeCost cost_shape_only(const Graph&, const Node&) { return {}; }

// 2·M·N·K per product: every output element is a K-long dot product.
NodeCost cost_matmul(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  const Shape& a = in_shape(g, n, 0);
  int64_t k = a.empty() ? 1 : a.back();
  c.flops = 2.0 * output_elems(g, n) * static_cast<double>(k);
  return c;
}

// 2·M·N·K, plus one per output element for the bias C.
NodeCost cost_gemm(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  const Shape& a = in_shape(g, n, 0);
  int64_t k = a.size() == 2 ? (n.attr_int("transA", 0) ? a[0] : a[1]) : 1;
  double out = output_elems(g, n);
  c.flops = 2.0 * out * static_cast<double>(k);
  if (n.inputs.size() > 2 && n.inputs[2] >= 0) c.flops += out;
  return c;
}

// 2·N·C_out·H_out·W_out·C_in·k_h·k_w / groups (any number of spatial dims), plus the bias; the
// weight is input w, the bias input bias.
NodeCost conv_cost(const Graph& g, const Node& n, size_t w_input, size_t bias_input) {
  NodeCost c = streaming(g, n, 0.0);
  const Shape& w = in_shape(g, n, w_input);  // [C_out, C_in/groups, k...]
  double per_out = 1;
  for (size_t i = 1; i < w.size(); ++i) per_out *= static_cast<double>(w[i]);
  double out = output_elems(g, n);
  c.flops = 2.0 * out * per_out;
  if (n.inputs.size() > bias_input && n.inputs[bias_input] >= 0) c.flops += out;
  return c;
}
NodeCost cost_conv(const Graph& g, const Node& n) { return conv_cost(g, n, 1, 2); }
// QLinearConv (x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, B)
NodeCost cost_qlinear_conv(const Graph& g, const Node& n) { return conv_cost(g, n, 3, 8); }

// Conv's backward-data: 2 FLOPs per input element and weight element of its group.
NodeCost cost_conv_transpose(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  const Shape& w = in_shape(g, n, 1);  // [C_in, C_out/groups, k...]
  double per_in = 1;
  for (size_t i = 1; i < w.size(); ++i) per_in *= static_cast<double>(w[i]);
  c.flops = 2.0 * static_cast<double>(elems_of(g, n.inputs[0])) * per_in;
  if (n.inputs.size() > 2 && n.inputs[2] >= 0) c.flops += output_elems(g, n);
  return c;
}

// Per direction and step: the input and recurrent products of every gate (2 FLOPs per
// multiply-add), plus ~10 elementwise FLOPs per gate value.
NodeCost cost_recurrent(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  const Shape &x = in_shape(g, n, 0), &w = in_shape(g, n, 1), &r = in_shape(g, n, 2);
  if (x.size() != 3 || w.size() != 3 || r.size() != 3) return c;
  const double steps_rows = static_cast<double>(x[0]) * static_cast<double>(x[1]);  // T·B either layout
  const double gate_values = static_cast<double>(w[0]) * static_cast<double>(w[1]);  // dirs · G·H
  c.flops = steps_rows * gate_values * (2.0 * static_cast<double>(w[2] + r[2]) + 10.0);
  return c;
}

// 2 FLOPs per point of the label space (every distinct label's size multiplied): a product and a
// sum.
NodeCost cost_einsum(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  std::vector<Shape> shapes;
  for (size_t i = 0; i < n.inputs.size(); ++i) shapes.push_back(in_shape(g, n, i));
  EinsumSpec e;
  if (!parse_einsum(n.attr_string("equation", ""), shapes, e).empty()) return c;
  double points = 1;
  for (auto& [l, v] : e.size) points *= static_cast<double>(v);
  c.flops = 2.0 * points;
  return c;
}

// Bilinear: 4 taps, a multiply-add each, per output element (every channel), plus the weights.
NodeCost cost_grid_sample(const Graph& g, const Node& n) { return streaming(g, n, 10.0); }

// DFT / STFT as direct sums: 8 FLOPs (a complex multiply-add) per output value and transform
// length; the length is the output's along the transform (DFT: its axis; STFT: 2·(bins - 1)).
NodeCost cost_dft(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  const Shape& y = g.value(n.outputs[0]).shape;
  double len = 1;
  if (n.op_type == "STFT" && y.size() >= 3) len = std::max<double>(1.0, 2.0 * static_cast<double>(y[y.size() - 2] - 1));
  else if (y.size() >= 3) len = static_cast<double>(y[static_cast<size_t>(std::clamp<int64_t>(n.attr_int("axis", 1), 0, static_cast<int64_t>(y.size()) - 2))]);
  c.flops = 8.0 * static_cast<double>(elems_of(g, n.outputs[0])) / 2 * len;
  return c;
}

// max, subtract, exp, sum, divide.
NodeCost cost_softmax(const Graph& g, const Node& n) { return streaming(g, n, 5.0); }

// mean, variance (2), subtract, multiply by rsqrt, scale, shift: ~8 per element of X.
NodeCost cost_layernorm(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  c.flops = 8.0 * elems_of(g, n.inputs[0]);
  // Mean and InvStdDev outputs are small and kept for the backward; count only Y as output.
  c.output_bytes = bytes_of(g, n.outputs[0]);
  return c;
}

NodeCost cost_batchnorm(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  c.flops = 8.0 * elems_of(g, n.inputs[0]);
  c.output_bytes = bytes_of(g, n.outputs[0]);
  return c;
}

// One FLOP per input element.
NodeCost cost_reduction(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  c.flops = elems_of(g, n.inputs[0]);
  return c;
}

// LU factorization: 2/3 M^3 per M x M matrix.
NodeCost cost_det(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  const Shape& a = g.value(n.inputs[0]).shape;
  const double m = a.empty() ? 1.0 : static_cast<double>(a.back());
  c.flops = 2.0 / 3.0 * m * elems_of(g, n.inputs[0]);
  return c;
}

// One FLOP per window element per output element.
NodeCost cost_pool(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  double window = 1;
  for (int64_t k : n.attr_ints("kernel_shape")) window *= static_cast<double>(k);
  c.flops = window * elems_of(g, n.outputs[0]);
  if (n.op_type == "MaxPool" && n.outputs.size() > 1) c.output_bytes = bytes_of(g, n.outputs[0]);
  return c;
}

NodeCost cost_global_pool(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  c.flops = elems_of(g, n.inputs[0]);
  return c;
}

// Softmax over the classes plus the gathered log-probability: ~6 per logit.
NodeCost cost_sce_loss(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  c.flops = 6.0 * elems_of(g, n.inputs[0]);
  return c;
}

// One score per position (the label's), weighted and summed.
NodeCost cost_nll_loss(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 0.0);
  c.flops = 2.0 * elems_of(g, n.inputs[1]);
  return c;
}

NodeCost cost_dropout(const Graph& g, const Node& n) {
  NodeCost c = streaming(g, n, 1.0);
  c.flops = elems_of(g, n.outputs[0]);
  return c;
}

constexpr uint32_t kNone = 0;
constexpr uint32_t kAll = 0xFFFFFFFFu;
constexpr uint32_t b(int i) { return 1u << i; }
// the recurrent ops' inputs that take a gradient (not sequence_lens, input 4)
constexpr uint32_t kRecurrent = b(0) | b(1) | b(2) | b(3) | b(5) | b(6) | b(7);

using C = OpClass;

// The registry. Columns: op, ONNX type, class, differentiable inputs, saved inputs, saved
// outputs, cost rule. Order must follow enum Op (checked at compile time below).
constexpr OpDef kOps[] = {
    {Op::MatMul, "MatMul", C::MatMulLike, b(0) | b(1), b(0) | b(1), kNone, cost_matmul},
    {Op::Gemm, "Gemm", C::MatMulLike, b(0) | b(1) | b(2), b(0) | b(1), kNone, cost_gemm},
    {Op::Conv, "Conv", C::MatMulLike, b(0) | b(1) | b(2), b(0) | b(1), kNone, cost_conv},
    {Op::Einsum, "Einsum", C::MatMulLike, kAll, kAll, kNone, cost_einsum},
    {Op::ConvTranspose, "ConvTranspose", C::MatMulLike, b(0) | b(1) | b(2), b(0) | b(1), kNone, cost_conv_transpose},
    // recurrent: X, W, R, B, sequence_lens, initial_h (, initial_c, P); the backward reruns the forward
    // (every input kept)
    {Op::RNN, "RNN", C::MatMulLike, kRecurrent, kRecurrent | b(4), kNone, cost_recurrent},
    {Op::GRU, "GRU", C::MatMulLike, kRecurrent, kRecurrent | b(4), kNone, cost_recurrent},
    {Op::LSTM, "LSTM", C::MatMulLike, kRecurrent, kRecurrent | b(4), kNone, cost_recurrent},

    {Op::Add, "Add", C::Elementwise, b(0) | b(1), kNone, kNone, cost_elementwise},
    {Op::Sub, "Sub", C::Elementwise, b(0) | b(1), kNone, kNone, cost_elementwise},
    {Op::Mul, "Mul", C::Elementwise, b(0) | b(1), b(0) | b(1), kNone, cost_elementwise},
    {Op::Div, "Div", C::Elementwise, b(0) | b(1), b(0) | b(1), kNone, cost_elementwise},
    {Op::Pow, "Pow", C::Elementwise, b(0) | b(1), b(0) | b(1), b(0), cost_elementwise},
    {Op::Max, "Max", C::Elementwise, kAll, kAll, kNone, cost_elementwise},
    {Op::Min, "Min", C::Elementwise, kAll, kAll, kNone, cost_elementwise},
    {Op::Equal, "Equal", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Less, "Less", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Greater, "Greater", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::LessOrEqual, "LessOrEqual", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::GreaterOrEqual, "GreaterOrEqual", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::And, "And", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Or, "Or", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Xor, "Xor", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Where, "Where", C::Elementwise, b(1) | b(2), b(0), kNone, cost_elementwise},
    // max(0, x) + slope * min(0, x), the slope broadcast to x (PyTorch's PReLU weight)
    {Op::PRelu, "PRelu", C::Elementwise, b(0) | b(1), b(0) | b(1), kNone, cost_elementwise},
    // integers: Python's remainder (fmod 0) or C's (fmod 1); floats: C's fmod
    {Op::Mod, "Mod", C::Elementwise, b(0) | b(1), b(0) | b(1), kNone, cost_elementwise},
    // any number of inputs, broadcast together
    {Op::Sum, "Sum", C::Elementwise, kAll, kNone, kNone, cost_elementwise},
    {Op::Mean, "Mean", C::Elementwise, kAll, kNone, kNone, cost_elementwise},
    // unsigned integers shifted left or right (attribute direction)
    {Op::BitShift, "BitShift", C::Elementwise, kNone, kNone, kNone, cost_elementwise},

    {Op::Sqrt, "Sqrt", C::Elementwise, b(0), kNone, b(0), cost_elementwise},
    {Op::Reciprocal, "Reciprocal", C::Elementwise, b(0), kNone, b(0), cost_elementwise},
    {Op::Neg, "Neg", C::Elementwise, b(0), kNone, kNone, cost_elementwise},
    {Op::Abs, "Abs", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Exp, "Exp", C::Elementwise, b(0), kNone, b(0), cost_elementwise},
    {Op::Log, "Log", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Relu, "Relu", C::Elementwise, b(0), kNone, b(0), cost_elementwise},
    {Op::LeakyRelu, "LeakyRelu", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Tanh, "Tanh", C::Elementwise, b(0), kNone, b(0), cost_elementwise},
    {Op::Sigmoid, "Sigmoid", C::Elementwise, b(0), kNone, b(0), cost_elementwise},
    {Op::Erf, "Erf", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Gelu, "Gelu", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Floor, "Floor", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Ceil, "Ceil", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Not, "Not", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Clip, "Clip", C::Elementwise, b(0), b(0) | b(1) | b(2), kNone, cost_elementwise},
    {Op::Cast, "Cast", C::Elementwise, b(0), kNone, kNone, cost_elementwise},
    {Op::Identity, "Identity", C::View, b(0), kNone, kNone, cost_view},
    {Op::Dropout, "Dropout", C::Elementwise, b(0), kNone, kNone, cost_dropout},  // the backward draws the mask again
    {Op::Sin, "Sin", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Cos, "Cos", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::HardSigmoid, "HardSigmoid", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::HardSwish, "HardSwish", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Elu, "Elu", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Selu, "Selu", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Celu, "Celu", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Softplus, "Softplus", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Softsign, "Softsign", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::ThresholdedRelu, "ThresholdedRelu", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Sign, "Sign", C::Elementwise, kNone, kNone, kNone, cost_elementwise},  // gradient 0 almost everywhere
    {Op::Round, "Round", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Tan, "Tan", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Asin, "Asin", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Acos, "Acos", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Atan, "Atan", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Sinh, "Sinh", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Cosh, "Cosh", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Asinh, "Asinh", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Acosh, "Acosh", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::Atanh, "Atanh", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::IsNaN, "IsNaN", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::IsInf, "IsInf", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Shrink, "Shrink", C::Elementwise, b(0), b(0), kNone, cost_elementwise},
    {Op::CastLike, "CastLike", C::Elementwise, b(0), kNone, kNone, cost_elementwise},

    {Op::Softmax, "Softmax", C::Normalization, b(0), kNone, b(0), cost_softmax},
    {Op::LogSoftmax, "LogSoftmax", C::Normalization, b(0), kNone, b(0), cost_softmax},
    {Op::LayerNormalization, "LayerNormalization", C::Normalization, b(0) | b(1) | b(2), b(0) | b(1), kNone,
     cost_layernorm},
    {Op::BatchNormalization, "BatchNormalization", C::Normalization, b(0) | b(1) | b(2), b(0) | b(1), kNone,
     cost_batchnorm, {{1, 3}, {2, 4}}},
    // per sample and channel over the spatial axes (PyTorch exports GroupNorm through it)
    {Op::InstanceNormalization, "InstanceNormalization", C::Normalization, b(0) | b(1) | b(2), b(0) | b(1), kNone,
     cost_layernorm},
    // x / its p-norm along an axis (p 1 or 2)
    {Op::LpNormalization, "LpNormalization", C::Normalization, b(0), b(0), b(0), cost_softmax},
    {Op::Hardmax, "Hardmax", C::Normalization, kNone, kNone, kNone, cost_softmax},
    // local response normalization across channels (AlexNet, GoogLeNet of the ONNX model zoo)
    {Op::LRN, "LRN", C::Normalization, b(0), b(0), kNone, cost_softmax},

    {Op::ReduceMean, "ReduceMean", C::Reduction, b(0), kNone, kNone, cost_reduction},
    {Op::ReduceSum, "ReduceSum", C::Reduction, b(0), kNone, kNone, cost_reduction},
    {Op::ReduceMax, "ReduceMax", C::Reduction, b(0), b(0), b(0), cost_reduction},
    {Op::ReduceMin, "ReduceMin", C::Reduction, b(0), b(0), b(0), cost_reduction},
    {Op::ReduceProd, "ReduceProd", C::Reduction, b(0), b(0), b(0), cost_reduction},
    {Op::ArgMax, "ArgMax", C::Reduction, kNone, kNone, kNone, cost_reduction},
    {Op::ReduceL2, "ReduceL2", C::Reduction, b(0), b(0), b(0), cost_reduction},
    {Op::ReduceL1, "ReduceL1", C::Reduction, b(0), b(0), kNone, cost_reduction},
    {Op::ReduceSumSquare, "ReduceSumSquare", C::Reduction, b(0), b(0), kNone, cost_reduction},
    {Op::ReduceLogSum, "ReduceLogSum", C::Reduction, b(0), kNone, b(0), cost_reduction},
    {Op::ReduceLogSumExp, "ReduceLogSumExp", C::Reduction, b(0), b(0), b(0), cost_reduction},
    {Op::ArgMin, "ArgMin", C::Reduction, kNone, kNone, kNone, cost_reduction},
    // the k largest (smallest) along an axis and their indices; the gradient goes to those
    {Op::TopK, "TopK", C::Reduction, b(0), kNone, b(1), cost_reduction},
    // the determinant of each M x M matrix of the last two axes (LU); the backward reads A and det
    {Op::Det, "Det", C::Reduction, b(0), b(0), b(0), cost_det},

    {Op::MaxPool, "MaxPool", C::Pooling, b(0), b(0), b(0), cost_pool},
    {Op::AveragePool, "AveragePool", C::Pooling, b(0), kNone, kNone, cost_pool},
    {Op::GlobalAveragePool, "GlobalAveragePool", C::Pooling, b(0), kNone, kNone, cost_global_pool},
    {Op::GlobalMaxPool, "GlobalMaxPool", C::Pooling, b(0), b(0), kNone, cost_global_pool},
    // the p-norm of each window (LpPool) or plane (GlobalLpPool); the backward reads x and y
    {Op::LpPool, "LpPool", C::Pooling, b(0), b(0), b(0), cost_pool},
    {Op::GlobalLpPool, "GlobalLpPool", C::Pooling, b(0), b(0), b(0), cost_global_pool},
    // X scattered to MaxPool's Indices in a zero output; the backward gathers dY there
    {Op::MaxUnpool, "MaxUnpool", C::DataMovement, b(0), b(1), kNone, cost_data_movement},

    {Op::Reshape, "Reshape", C::View, b(0), kNone, kNone, cost_view},
    {Op::Transpose, "Transpose", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::Flatten, "Flatten", C::View, b(0), kNone, kNone, cost_view},
    {Op::Squeeze, "Squeeze", C::View, b(0), kNone, kNone, cost_view},
    {Op::Unsqueeze, "Unsqueeze", C::View, b(0), kNone, kNone, cost_view},
    {Op::Concat, "Concat", C::DataMovement, kAll, kNone, kNone, cost_data_movement},
    {Op::Split, "Split", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::Slice, "Slice", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::Gather, "Gather", C::DataMovement, b(0), b(1), kNone, cost_data_movement},
    {Op::Expand, "Expand", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::Tile, "Tile", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::Trilu, "Trilu", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::Pad, "Pad", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::GatherElements, "GatherElements", C::DataMovement, b(0), b(1), kNone, cost_data_movement},
    // Interpolation (nearest, linear, cubic) over the axes whose size changes; the backward needs
    // only the shapes and the interpolation weights.
    {Op::Resize, "Resize", C::DataMovement, b(0), kNone, kNone, cost_resize},
    {Op::Upsample, "Upsample", C::DataMovement, b(0), kNone, kNone, cost_resize},
    {Op::CumSum, "CumSum", C::DataMovement, b(0), kNone, kNone, cost_elementwise},
    // data with updates written (or added, multiplied) at the indices; the gradient of 'mul' is refused
    {Op::ScatterElements, "ScatterElements", C::DataMovement, b(0) | b(2), b(1), kNone, cost_data_movement},
    {Op::ScatterND, "ScatterND", C::DataMovement, b(0) | b(2), b(1), kNone, cost_data_movement},
    {Op::GatherND, "GatherND", C::DataMovement, b(0), b(1), kNone, cost_data_movement},
    {Op::DepthToSpace, "DepthToSpace", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::SpaceToDepth, "SpaceToDepth", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    {Op::OneHot, "OneHot", C::DataMovement, kNone, kNone, kNone, cost_data_movement},
    // samples X at a grid of normalized positions (4 taps per output element and channel)
    {Op::GridSample, "GridSample", C::DataMovement, b(0) | b(1), b(0) | b(1), kNone, cost_grid_sample},
    {Op::ReverseSequence, "ReverseSequence", C::DataMovement, b(0), b(1), kNone, cost_data_movement},
    // bilinear samples of X averaged (or maxed) over each bin of each region; a gradient to X only
    {Op::RoiAlign, "RoiAlign", C::DataMovement, b(0), b(0) | b(1) | b(2), kNone, cost_grid_sample},

    // Quantized tensors. QuantizeLinear / DequantizeLinear map float32 to 8-bit integers and back
    // with a scale and zero point per tensor or per channel; the integer products accumulate in
    // 32 bits, the QLinear ones requantize their sums. Integers take no gradient.
    {Op::QuantizeLinear, "QuantizeLinear", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::DequantizeLinear, "DequantizeLinear", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::DynamicQuantizeLinear, "DynamicQuantizeLinear", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::MatMulInteger, "MatMulInteger", C::MatMulLike, kNone, kNone, kNone, cost_matmul},
    {Op::ConvInteger, "ConvInteger", C::MatMulLike, kNone, kNone, kNone, cost_conv},
    {Op::QLinearMatMul, "QLinearMatMul", C::MatMulLike, kNone, kNone, kNone, cost_matmul},
    {Op::QLinearConv, "QLinearConv", C::MatMulLike, kNone, kNone, kNone, cost_qlinear_conv},

    // Random numbers drawn from the node's stream of the microbatch (as Dropout's mask): normal,
    // uniform, or 0/1 with the input's probabilities. No gradient reaches the inputs: a *Like
    // op's input gives only the shape, and a Bernoulli draw is not differentiable.
    {Op::RandomNormal, "RandomNormal", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::RandomNormalLike, "RandomNormalLike", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::RandomUniform, "RandomUniform", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::RandomUniformLike, "RandomUniformLike", C::Elementwise, kNone, kNone, kNone, cost_elementwise},
    {Op::Bernoulli, "Bernoulli", C::Elementwise, kNone, kNone, kNone, cost_elementwise},

    // Discrete Fourier transforms (a complex multiply-add per input and output bin), the windows
    // an STFT multiplies its frames by, and the mel filter bank. Forward only.
    {Op::DFT, "DFT", C::MatMulLike, kNone, kNone, kNone, cost_dft},
    {Op::STFT, "STFT", C::MatMulLike, kNone, kNone, kNone, cost_dft},
    {Op::HannWindow, "HannWindow", C::DataMovement, kNone, kNone, kNone, cost_data_movement},
    {Op::HammingWindow, "HammingWindow", C::DataMovement, kNone, kNone, kNone, cost_data_movement},
    {Op::BlackmanWindow, "BlackmanWindow", C::DataMovement, kNone, kNone, kNone, cost_data_movement},
    {Op::MelWeightMatrix, "MelWeightMatrix", C::DataMovement, kNone, kNone, kNone, cost_data_movement},

    {Op::Shape, "Shape", C::ShapeOnly, kNone, kNone, kNone, cost_shape_only},
    {Op::Size, "Size", C::ShapeOnly, kNone, kNone, kNone, cost_shape_only},
    {Op::Constant, "Constant", C::ShapeOnly, kNone, kNone, kNone, cost_shape_only},
    {Op::ConstantOfShape, "ConstantOfShape", C::DataMovement, kNone, kNone, kNone, cost_data_movement},
    {Op::Range, "Range", C::DataMovement, kNone, kNone, kNone, cost_data_movement},
    {Op::EyeLike, "EyeLike", C::DataMovement, kNone, kNone, kNone, cost_data_movement},

    {Op::SoftmaxCrossEntropyLoss, "SoftmaxCrossEntropyLoss", C::Loss, b(0), b(0) | b(1), kNone, cost_sce_loss},
    // The scores are log-probabilities: the backward needs only the labels (and class weights).
    {Op::NegativeLogLikelihoodLoss, "NegativeLogLikelihoodLoss", C::Loss, b(0), b(1) | b(2), kNone, cost_nll_loss},

    // Megatron's f: identity forward (a view), all-reduce of the gradient over the group.
    {Op::TpCopy, "TpCopy", C::View, b(0), kNone, kNone, cost_view},
    // Megatron's g: all-reduce forward (a copy, then the sum over the group), identity backward.
    {Op::TpAllReduce, "TpAllReduce", C::DataMovement, b(0), kNone, kNone, cost_data_movement},
    // Gather of the rank's rows of a vocabulary-split table (attribute start): zeros elsewhere.
    {Op::TpVocabGather, "TpVocabGather", C::DataMovement, b(0), b(1), kNone, cost_data_movement},
    // SoftmaxCrossEntropyLoss over scores split by class (attributes start, classes): the row
    // maxima, sums of exponentials and target scores reduced over the group, forward and backward.
    {Op::TpSoftmaxCrossEntropyLoss, "TpSoftmaxCrossEntropyLoss", C::Loss, b(0), b(0) | b(1), kNone, cost_sce_loss},

    // A [..., M, K] . B [N, K]ᵀ: MatMul of a transposed 2-D B without the transpose (the
    // exported Linear layers' weights); 2 . output elements . K, as MatMul.
    {Op::MatMulTransB, "MatMulTransB", C::MatMulLike, b(0) | b(1), b(0) | b(1), kNone, cost_matmul},

    // (clamp(round(x / scale) + zero, qmin, qmax) - zero) * scale, per tensor or per channel: the
    // gradient passes where x was not clamped (the straight-through estimator of PyTorch's
    // FakeQuantize), so the backward keeps x and the (constant) scale and zero point.
    {Op::FakeQuantize, "FakeQuantize", C::Elementwise, b(0), b(0) | b(1) | b(2), kNone, cost_elementwise},
};

constexpr bool registry_in_enum_order() {
  for (size_t i = 0; i < std::size(kOps); ++i)
    if (static_cast<size_t>(kOps[i].op) != i) return false;
  return true;
}
static_assert(std::size(kOps) == static_cast<size_t>(Op::kCount), "every Op needs a registry entry");
static_assert(registry_in_enum_order(), "registry entries must follow enum Op's order");

const std::unordered_map<std::string_view, const OpDef*>& by_type() {
  static const auto m = [] {
    std::unordered_map<std::string_view, const OpDef*> r;
    for (const auto& d : kOps) r.emplace(d.type, &d);
    return r;
  }();
  return m;
}

}  // namespace

const OpDef* find_op(std::string_view op_type) {
  auto it = by_type().find(op_type);
  return it == by_type().end() ? nullptr : it->second;
}

const OpDef& op_def(Op op) {
  SMP_CHECK(op < Op::kCount, "bad op {}", static_cast<int>(op));
  return kOps[static_cast<size_t>(op)];
}

int op_count() { return static_cast<int>(Op::kCount); }

NodeCost node_cost(const Graph& g, const Node& n) {
  if (n.domain.empty() || n.domain == "ai.onnx") {
    if (const OpDef* d = find_op(n.op_type)) return d->cost(g, n);
  }
  // No rule: a memory-bound estimate from the bytes it touches.
  NodeCost c = streaming(g, n, 0.0);
  c.estimated = true;
  return c;
}

int64_t saved_activation_bytes(const Graph& g, const Node& n) {
  const OpDef* d = (n.domain.empty() || n.domain == "ai.onnx") ? find_op(n.op_type) : nullptr;
  uint32_t keep_in = d ? d->saved_inputs : kAll;
  uint32_t keep_out = d ? d->saved_outputs : kNone;
  int64_t total = 0;
  auto count = [&](int id) {
    if (id < 0) return;
    const Value& v = g.value(id);
    if (v.kind == ValueKind::Parameter || v.kind == ValueKind::Constant || v.kind == ValueKind::Buffer) return;
    total += v.bytes();
  };
  for (size_t i = 0; i < n.inputs.size(); ++i)
    if (mask_has(keep_in, i)) count(n.inputs[i]);
  for (size_t i = 0; i < n.outputs.size(); ++i)
    if (mask_has(keep_out, i)) count(n.outputs[i]);
  return total;
}

}  // namespace smp::graph
