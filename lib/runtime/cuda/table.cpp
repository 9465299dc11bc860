// The CUDA kernel table: one entry per graph::Op, in the enum's order, parallel to the CPU's
// (lib/runtime/cpu/table.cpp): the prepare step is the CPU's (the same nodes accepted and parsed
// the same way), the forward and backward are this directory's, the setup step runs at load on
// the device where an op needs one. A forgotten entry does not compile (size), nor a misplaced
// one (order). NO_KERNEL: the CPU runs the op, the CUDA backend refuses it at load (Einsum,
// HardSigmoid, HardSwish, ReduceL2 and Pad of the torchvision exports, GatherElements,
// NegativeLogLikelihoodLoss, Resize and Upsample, PRelu, Elu, Selu, Celu, Softplus, Softsign,
// ThresholdedRelu, Sign, Round, InstanceNormalization, ConvTranspose, RNN, GRU, LSTM, Mod, the
// trigonometric and hyperbolic ops, IsNaN, IsInf, ReduceL1, ReduceSumSquare, ReduceLogSum,
// ReduceLogSumExp, ArgMin, Det, GlobalMaxPool, LpPool, GlobalLpPool, MaxUnpool, CumSum, ScatterElements, ScatterND, GatherND,
// DepthToSpace, SpaceToDepth, OneHot, GridSample, ReverseSequence, RoiAlign, Sum, Mean, BitShift, Shrink, CastLike, LpNormalization,
// Hardmax, LRN, TopK, EyeLike, the quantized, random and signal ops have no CUDA kernels yet).
#include "runtime/cpu/kernels.hpp"
#include "runtime/cuda/cuda_backend.hpp"
#include "runtime/cuda/ops.hpp"

#include <iterator>

namespace smp::runtime::cuda {

namespace {
using graph::Op;

#define K(op, name) OpKernel{Op::op, cpu::prep_##name, fwd_##name, bwd_##name, kNone, nullptr}
#define KS(op, name) OpKernel{Op::op, cpu::prep_##name, fwd_##name, bwd_##name, kNone, setup_##name}   // with a setup step
#define KV(op, name) OpKernel{Op::op, cpu::prep_##name, fwd_##name, bwd_##name, kView, nullptr}
#define KF(op, name) OpKernel{Op::op, cpu::prep_##name, fwd_##name, nullptr, kNone, nullptr}           // no gradient
#define KP(op, name) OpKernel{Op::op, prep_##name, fwd_##name, bwd_##name, kNone, nullptr}  // this directory's prepare
#define KPS(op, name) OpKernel{Op::op, prep_##name, fwd_##name, bwd_##name, kNone, setup_##name}  // both
#define KPV(op, name) OpKernel{Op::op, prep_##name, fwd_##name, bwd_##name, kView, nullptr}
#define NO_KERNEL(op) OpKernel{Op::op, nullptr, nullptr, nullptr, kNone, nullptr}

constexpr OpKernel kTable[] = {
    KS(MatMul, matmul), KS(Gemm, gemm), KPS(Conv, conv), NO_KERNEL(Einsum), NO_KERNEL(ConvTranspose), NO_KERNEL(RNN), NO_KERNEL(GRU),
    NO_KERNEL(LSTM),
    KP(Add, binary), KP(Sub, binary), KP(Mul, binary), KP(Div, binary), KP(Pow, binary), KP(Max, binary), KP(Min, binary),
    KF(Equal, binary), KF(Less, binary), KF(Greater, binary), KF(LessOrEqual, binary), KF(GreaterOrEqual, binary),
    KF(And, binary), KF(Or, binary), KF(Xor, binary), K(Where, where), NO_KERNEL(PRelu), NO_KERNEL(Mod), NO_KERNEL(Sum),
    NO_KERNEL(Mean), NO_KERNEL(BitShift),
    K(Sqrt, unary), K(Reciprocal, unary), K(Neg, unary), K(Abs, unary), K(Exp, unary), K(Log, unary), K(Relu, unary),
    K(LeakyRelu, unary), K(Tanh, unary), K(Sigmoid, unary), K(Erf, unary), K(Gelu, unary), KF(Floor, unary),
    KF(Ceil, unary), KF(Not, unary), KP(Clip, clip), KP(Cast, cast), KV(Identity, identity), KPV(Dropout, dropout),
    K(Sin, unary), K(Cos, unary), NO_KERNEL(HardSigmoid), NO_KERNEL(HardSwish), NO_KERNEL(Elu), NO_KERNEL(Selu),
    NO_KERNEL(Celu), NO_KERNEL(Softplus), NO_KERNEL(Softsign), NO_KERNEL(ThresholdedRelu), NO_KERNEL(Sign),
    NO_KERNEL(Round), NO_KERNEL(Tan), NO_KERNEL(Asin), NO_KERNEL(Acos), NO_KERNEL(Atan), NO_KERNEL(Sinh), NO_KERNEL(Cosh),
    NO_KERNEL(Asinh), NO_KERNEL(Acosh), NO_KERNEL(Atanh), NO_KERNEL(IsNaN), NO_KERNEL(IsInf),
    NO_KERNEL(Shrink), NO_KERNEL(CastLike),
    K(Softmax, softmax), K(LogSoftmax, softmax), K(LayerNormalization, layernorm), KP(BatchNormalization, batchnorm),
    NO_KERNEL(InstanceNormalization), NO_KERNEL(LpNormalization), NO_KERNEL(Hardmax), NO_KERNEL(LRN),
    KP(ReduceMean, reduce), KP(ReduceSum, reduce), KP(ReduceMax, reduce), KP(ReduceMin, reduce), KP(ReduceProd, reduce),
    KF(ArgMax, argmax), NO_KERNEL(ReduceL2), NO_KERNEL(ReduceL1), NO_KERNEL(ReduceSumSquare), NO_KERNEL(ReduceLogSum),
    NO_KERNEL(ReduceLogSumExp), NO_KERNEL(ArgMin), NO_KERNEL(TopK), NO_KERNEL(Det),
    KPS(MaxPool, pool), KPS(AveragePool, pool), K(GlobalAveragePool, global_avgpool), NO_KERNEL(GlobalMaxPool),
    NO_KERNEL(LpPool), NO_KERNEL(GlobalLpPool), NO_KERNEL(MaxUnpool),
    KV(Reshape, reshape), K(Transpose, transpose), KV(Flatten, reshape), KV(Squeeze, reshape), KV(Unsqueeze, reshape),
    K(Concat, concat), K(Split, split), K(Slice, slice), K(Gather, gather), K(Expand, expand), K(Tile, tile),
    K(Trilu, trilu), NO_KERNEL(Pad), NO_KERNEL(GatherElements),
    NO_KERNEL(Resize), NO_KERNEL(Upsample), NO_KERNEL(CumSum), NO_KERNEL(ScatterElements), NO_KERNEL(ScatterND),
    NO_KERNEL(GatherND), NO_KERNEL(DepthToSpace), NO_KERNEL(SpaceToDepth), NO_KERNEL(OneHot), NO_KERNEL(GridSample), NO_KERNEL(ReverseSequence), NO_KERNEL(RoiAlign),
    NO_KERNEL(QuantizeLinear), NO_KERNEL(DequantizeLinear), NO_KERNEL(DynamicQuantizeLinear), NO_KERNEL(MatMulInteger),
    NO_KERNEL(ConvInteger), NO_KERNEL(QLinearMatMul), NO_KERNEL(QLinearConv),
    NO_KERNEL(RandomNormal), NO_KERNEL(RandomNormalLike), NO_KERNEL(RandomUniform), NO_KERNEL(RandomUniformLike),
    NO_KERNEL(Bernoulli),
    NO_KERNEL(DFT), NO_KERNEL(STFT), NO_KERNEL(HannWindow), NO_KERNEL(HammingWindow), NO_KERNEL(BlackmanWindow),
    NO_KERNEL(MelWeightMatrix),
    KF(Shape, shape), KF(Size, size), KF(Constant, constant), KF(ConstantOfShape, constant_of_shape), KF(Range, range),
    NO_KERNEL(EyeLike),
    K(SoftmaxCrossEntropyLoss, sce_loss), NO_KERNEL(NegativeLogLikelihoodLoss),
    // Tensor parallelism runs on CPU workers only until the GPU workers carry its collectives.
    NO_KERNEL(TpCopy), NO_KERNEL(TpAllReduce), NO_KERNEL(TpVocabGather), NO_KERNEL(TpSoftmaxCrossEntropyLoss),
    // The fused transposed-weight product: without a kernel here the CUDA backend runs the
    // Transpose and the MatMul as exported (runtime/fusion.hpp fuses only where one exists).
    NO_KERNEL(MatMulTransB),
    // The loader's fusion of quantization-aware training's QuantizeLinear -> DequantizeLinear.
    NO_KERNEL(FakeQuantize),
};

static_assert(std::size(kTable) == static_cast<size_t>(Op::kCount), "one CUDA kernel entry per graph::Op");

constexpr bool in_enum_order() {
  for (size_t i = 0; i < std::size(kTable); ++i)
    if (static_cast<size_t>(kTable[i].op) != i) return false;
  return true;
}
static_assert(in_enum_order(), "CUDA kernel entries must follow graph::Op's order");

KernelTable make_table() {
  KernelTable t{};
  for (size_t i = 0; i < std::size(kTable); ++i) t[i] = kTable[i];
  return t;
}
}  // namespace

const KernelTable& cuda_kernel_table() {
  static const KernelTable table = make_table();
  return table;
}

}  // namespace smp::runtime::cuda
