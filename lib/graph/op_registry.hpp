// The op registry: one entry per ONNX op type. The graph layer's part of an entry holds what the
// planner needs without running anything: the forward cost rule, which inputs a gradient flows
// to, and which forward tensors the backward keeps (the planner's activation estimate and the
// runtime's stash both read that declaration). The runtime adds the kernels and the gradient
// rule for the same Op in its own table (lib/runtime), indexed by the same enum, with a
// static_assert on the count so that a forgotten entry is a build error.
#pragma once

#include "graph/graph.hpp"

#include <cstdint>
#include <string_view>

namespace smp::graph {

// Every op smp knows. Append-only within a group; the tables assert their sizes against kCount.
enum class Op : int {
  // matrix products and convolution
  MatMul, Gemm, Conv, Einsum, ConvTranspose, RNN, GRU, LSTM,
  // elementwise, binary with broadcasting
  Add, Sub, Mul, Div, Pow, Max, Min, Equal, Less, Greater, LessOrEqual, GreaterOrEqual, And, Or, Xor, Where, PRelu, Mod, Sum, Mean,
  BitShift,
  // elementwise, unary
  Sqrt, Reciprocal, Neg, Abs, Exp, Log, Relu, LeakyRelu, Tanh, Sigmoid, Erf, Gelu, Floor, Ceil, Not,
  Clip, Cast, Identity, Dropout, Sin, Cos, HardSigmoid, HardSwish, Elu, Selu, Celu, Softplus, Softsign,
  ThresholdedRelu, Sign, Round, Tan, Asin, Acos, Atan, Sinh, Cosh, Asinh, Acosh, Atanh, IsNaN, IsInf, Shrink, CastLike,
  // normalisation and softmax
  Softmax, LogSoftmax, LayerNormalization, BatchNormalization, InstanceNormalization, LpNormalization, Hardmax, LRN,
  // reductions
  ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceProd, ArgMax, ReduceL2, ReduceL1, ReduceSumSquare, ReduceLogSum,
  ReduceLogSumExp, ArgMin, TopK, Det,
  // pooling
  MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, LpPool, GlobalLpPool, MaxUnpool,
  // data movement
  Reshape, Transpose, Flatten, Squeeze, Unsqueeze, Concat, Split, Slice, Gather, Expand, Tile, Trilu, Pad, GatherElements,
  Resize, Upsample, CumSum, ScatterElements, ScatterND, GatherND, DepthToSpace, SpaceToDepth, OneHot, GridSample,
  ReverseSequence, RoiAlign,
  // quantized tensors (8-bit integers with a scale and a zero point): forward only
  QuantizeLinear, DequantizeLinear, DynamicQuantizeLinear, MatMulInteger, ConvInteger, QLinearMatMul, QLinearConv,
  // random numbers from the run's streams (runtime/random.hpp)
  RandomNormal, RandomNormalLike, RandomUniform, RandomUniformLike, Bernoulli,
  // signal processing: forward only
  DFT, STFT, HannWindow, HammingWindow, BlackmanWindow, MelWeightMatrix,
  // shape-only and constant producers (folded away before planning)
  Shape, Size, Constant, ConstantOfShape, Range, EyeLike,
  // losses
  SoftmaxCrossEntropyLoss, NegativeLogLikelihoodLoss,
  // tensor parallelism: inserted by graph/tensor_parallel.hpp, never read from a file
  TpCopy, TpAllReduce, TpVocabGather, TpSoftmaxCrossEntropyLoss,
  // fusion: A . Bᵀ for a 2-D B, formed by runtime/fusion.hpp from Transpose(B) -> MatMul, never
  // read from a file
  MatMulTransB,
  // fusion: QuantizeLinear (-> Clip) -> DequantizeLinear with one scale and zero point, formed by
  // the loader (quantization-aware training's fake quantization), never read from a file
  FakeQuantize,
  kCount
};

enum class OpClass { MatMulLike, Elementwise, Normalization, Reduction, Pooling, DataMovement, View,
                     ShapeOnly, Loss };

// A running statistic the op keeps (ValueKind::Buffer): while training, its output `output` is the
// new value of its input `input`. The pairs of an op are (running mean, running variance) per
// channel of input 0, updated as new = old * momentum + batch * (1 - momentum) (ONNX's
// convention, attribute "momentum"); the runtime owns the update (runtime/executor.hpp).
struct StateUpdate {
  int8_t output = -1;
  int8_t input = -1;
};

struct OpDef {
  Op op;
  std::string_view type;       // ONNX op type (domain ai.onnx)
  OpClass cls;
  // Gradient flows to input i when bit i is set (e.g. MatMul: both; Gather: the table, not the
  // indices; Where: the two branches, not the condition).
  uint32_t differentiable_inputs;
  // Forward tensors the backward keeps: bit i of saved_inputs keeps input i, bit i of
  // saved_outputs keeps output i.
  uint32_t saved_inputs;
  uint32_t saved_outputs;
  // Forward cost at the graph's bound shapes. Uses the node's input/output values' shapes only.
  NodeCost (*cost)(const Graph& g, const Node& n);
  // Running statistics (BatchNormalization: outputs 1, 2 update inputs 3, 4); unused entries -1.
  StateUpdate state[2] = {};
};

// Whether bit i of an input/output mask of OpDef is set. Every bit set means every position,
// however many: variadic ops (Concat, Max, ...) take more than 32 inputs (DenseNet-169's blocks
// concatenate 33).
constexpr bool mask_has(uint32_t mask, size_t i) { return mask == 0xFFFFFFFFu || (i < 32 && ((mask >> i) & 1u)); }

// nullptr when the op is unknown to smp (its nodes still plan, with a bytes-based estimate).
const OpDef* find_op(std::string_view op_type);
const OpDef& op_def(Op op);
int op_count();

// The registry's cost rule, or for unknown ops a bytes-based estimate with `estimated` set.
NodeCost node_cost(const Graph& g, const Node& n);

// Bytes of the forward tensors the node's backward keeps (per the registry's declaration;
// unknown ops keep their inputs). Constants and parameters are not counted.
int64_t saved_activation_bytes(const Graph& g, const Node& n);

}  // namespace smp::graph
