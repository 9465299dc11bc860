// The CPU kernel table: one entry per graph::Op, in the enum's order. A forgotten entry does not
// compile (size) and a misplaced one does not either (order).
#include "runtime/cpu/kernels.hpp"
#include "runtime/cpu_backend.hpp"

#include <iterator>

namespace smp::runtime {

namespace {
using graph::Op;
using namespace cpu;

#define K(op, name) OpKernel{Op::op, prep_##name, fwd_##name, bwd_##name, kNone, nullptr}
#define KV(op, name) OpKernel{Op::op, prep_##name, fwd_##name, bwd_##name, kView, nullptr}
#define KF(op, name) OpKernel{Op::op, prep_##name, fwd_##name, nullptr, kNone, nullptr}   // no gradient
#define NO_KERNEL(op) OpKernel{Op::op, nullptr, nullptr, nullptr, kNone, nullptr}

constexpr OpKernel kTable[] = {
    K(MatMul, matmul), K(Gemm, gemm), K(Conv, conv), K(Einsum, einsum), K(ConvTranspose, conv_transpose), K(RNN, rnn), K(GRU, rnn), K(LSTM, rnn),
    K(Add, binary), K(Sub, binary), K(Mul, binary), K(Div, binary), K(Pow, binary), K(Max, binary), K(Min, binary),
    KF(Equal, binary), KF(Less, binary), KF(Greater, binary), KF(LessOrEqual, binary), KF(GreaterOrEqual, binary),
    KF(And, binary), KF(Or, binary), KF(Xor, binary), K(Where, where), K(PRelu, prelu), K(Mod, binary),
    K(Sum, variadic), K(Mean, variadic), KF(BitShift, binary),
    K(Sqrt, unary), K(Reciprocal, unary), K(Neg, unary), K(Abs, unary), K(Exp, unary), K(Log, unary), K(Relu, unary),
    K(LeakyRelu, unary), K(Tanh, unary), K(Sigmoid, unary), K(Erf, unary), K(Gelu, unary), KF(Floor, unary),
    KF(Ceil, unary), KF(Not, unary), K(Clip, clip), K(Cast, cast), KV(Identity, identity), KV(Dropout, dropout),
    K(Sin, unary), K(Cos, unary), K(HardSigmoid, unary), K(HardSwish, unary), K(Elu, unary), K(Selu, unary),
    K(Celu, unary), K(Softplus, unary), K(Softsign, unary), K(ThresholdedRelu, unary), KF(Sign, unary),
    KF(Round, unary), K(Tan, unary), K(Asin, unary), K(Acos, unary), K(Atan, unary), K(Sinh, unary), K(Cosh, unary),
    K(Asinh, unary), K(Acosh, unary), K(Atanh, unary), KF(IsNaN, unary), KF(IsInf, unary),
    K(Shrink, unary), K(CastLike, cast),
    K(Softmax, softmax), K(LogSoftmax, softmax), K(LayerNormalization, layernorm), K(BatchNormalization, batchnorm),
    K(InstanceNormalization, instancenorm), K(LpNormalization, lpnorm), KF(Hardmax, argmax), K(LRN, lrn),
    K(ReduceMean, reduce), K(ReduceSum, reduce), K(ReduceMax, reduce), K(ReduceMin, reduce), K(ReduceProd, reduce),
    KF(ArgMax, argmax), K(ReduceL2, reduce), K(ReduceL1, reduce), K(ReduceSumSquare, reduce), K(ReduceLogSum, reduce),
    K(ReduceLogSumExp, reduce), KF(ArgMin, argmax), K(TopK, topk), K(Det, det),
    K(MaxPool, pool), K(AveragePool, pool), K(GlobalAveragePool, global_avgpool), K(GlobalMaxPool, global_maxpool),
    K(LpPool, pool), K(GlobalLpPool, global_lppool), K(MaxUnpool, max_unpool),
    KV(Reshape, reshape), K(Transpose, transpose), KV(Flatten, reshape), KV(Squeeze, reshape), KV(Unsqueeze, reshape),
    K(Concat, concat), K(Split, split), K(Slice, slice), K(Gather, gather), K(Expand, expand), K(Tile, tile),
    K(Trilu, trilu), K(Pad, pad), K(GatherElements, gather_elements),
    K(Resize, resize), K(Upsample, resize), K(CumSum, cumsum), K(ScatterElements, scatter), K(ScatterND, scatter),
    K(GatherND, gather_nd), K(DepthToSpace, depth_space), K(SpaceToDepth, depth_space), KF(OneHot, one_hot), K(GridSample, grid_sample),
    K(ReverseSequence, reverse_sequence), K(RoiAlign, roi_align),
    KF(QuantizeLinear, quantize), KF(DequantizeLinear, dequantize), KF(DynamicQuantizeLinear, dynamic_quantize),
    KF(MatMulInteger, matmul_integer), KF(ConvInteger, conv_integer), KF(QLinearMatMul, matmul_integer),
    KF(QLinearConv, conv_integer),
    KF(RandomNormal, random), KF(RandomNormalLike, random), KF(RandomUniform, random), KF(RandomUniformLike, random),
    KF(Bernoulli, random),
    KF(DFT, dft), KF(STFT, dft), KF(HannWindow, window), KF(HammingWindow, window), KF(BlackmanWindow, window),
    KF(MelWeightMatrix, mel_weights),
    KF(Shape, shape), KF(Size, size), KF(Constant, constant), KF(ConstantOfShape, constant_of_shape), KF(Range, range),
    KF(EyeLike, eye_like),
    K(SoftmaxCrossEntropyLoss, sce_loss), K(NegativeLogLikelihoodLoss, nll_loss),
    KV(TpCopy, tp_copy), K(TpAllReduce, tp_allreduce), K(TpVocabGather, tp_vocab_gather),
    K(TpSoftmaxCrossEntropyLoss, tp_sce_loss),
    K(MatMulTransB, matmul_tb),
    K(FakeQuantize, fake_quantize),
};

static_assert(std::size(kTable) == static_cast<size_t>(Op::kCount), "one CPU kernel entry per graph::Op");

constexpr bool in_enum_order() {
  for (size_t i = 0; i < std::size(kTable); ++i)
    if (static_cast<size_t>(kTable[i].op) != i) return false;
  return true;
}
static_assert(in_enum_order(), "CPU kernel entries must follow graph::Op's order");

KernelTable make_table() {
  KernelTable t{};
  for (size_t i = 0; i < std::size(kTable); ++i) t[i] = kTable[i];
  return t;
}
}  // namespace

const KernelTable& cpu_kernel_table() {
  static const KernelTable table = make_table();
  return table;
}

}  // namespace smp::runtime
