// What each op's prepare step (lib/runtime/cpu/*.cpp) parses from its node: attributes and
// static geometry, checked once at load. Every backend runs the same prepare and reads the same
// state, so that the CUDA kernels accept exactly the nodes, attributes and dtypes the CPU ones
// do and interpret them identically. No threading or device code here.
#pragma once

#include "runtime/backend.hpp"
#include "runtime/cpu/bcast.hpp"

#include <memory>
#include <span>
#include <string>
#include <vector>

namespace smp::runtime::cpu {

// ---- elementwise -------------------------------------------------------------------------

bool is_arith(graph::Op op);    // Add Sub Mul Div Pow Max Min
bool is_compare(graph::Op op);  // Equal Less Greater LessOrEqual GreaterOrEqual

struct BinState : KernelState {
  graph::Op op;
  Bcast plan;   // out <- a, b
  Bcast plan3;  // out <- dy(out), a, b  (backward)
  bool single = false;  // Max/Min with one input
  bool fmod = false;    // Mod: C's fmod (the dividend's sign) instead of Python's remainder
  bool left = false;    // BitShift: direction LEFT
};

struct WhereState : KernelState {
  Bcast plan;   // out <- c, x, y
};

struct UnState : KernelState {
  graph::Op op;
  // LeakyRelu's slope; HardSigmoid's alpha and beta; Elu's, Celu's and ThresholdedRelu's alpha;
  // Selu's alpha and gamma (as beta)
  float alpha = 0.01f, beta = 0.5f;
  bool gelu_tanh = false;
  bool detect_negative = true, detect_positive = true;  // IsInf
};

struct ClipState : KernelState {
  bool has_min_attr = false, has_max_attr = false;
  float min_attr = 0, max_attr = 0;
};

// Dropout: random when training_mode is set and the ratio is positive (the mask comes from the
// node's random stream, runtime/random.hpp); the identity otherwise.
struct DropoutState : KernelState {
  float ratio = 0;
  bool random = false;
};

struct CastState : KernelState {
  DType to;
};

// ---- normalisation, reductions -----------------------------------------------------------

struct SoftmaxState : KernelState {
  bool log = false;
  int64_t outer = 1, D = 1, inner = 1;
};

struct LayerNormState : KernelState {
  int64_t rows = 1, D = 1;
  float eps = 1e-5f;
  bool has_bias = false;
};

struct InstanceNormState : KernelState {
  int64_t N = 1, C = 1, D = 1;  // D: the spatial size
  float eps = 1e-5f;
};

struct BatchNormState : KernelState {
  int64_t N = 1, C = 1, HW = 1;
  float eps = 1e-5f, momentum = 0.9f;
  bool batch_stats = false;  // training_mode: normalize with the batch's statistics
  bool stats_out = false;    // the running-statistics outputs are wanted
};

struct ReduceState : KernelState {
  graph::Op op;
  bool keepdims = true;
  bool noop_empty = false;
  bool axes_known = false;
  std::vector<int64_t> axes;  // normalized, when known at load
};

// Reduction geometry for a set of axes.
struct RGeom {
  Shape kshape;                        // input shape with reduced dims set to 1
  std::vector<int64_t> kdims, kstr;    // kept dims and their input strides
  std::vector<int64_t> rdims, rstr;    // reduced dims and their input strides
  int64_t rcount = 1;
};
RGeom rgeom(const Shape& x, const std::vector<int64_t>& axes);
// The reduction's axes: known at load, else from the axes input (`in` on the host).
std::vector<int64_t> resolve_axes(const ReduceState& s, std::span<const Tensor> in);

struct ArgMaxState : KernelState {
  int64_t outer = 1, D = 1, inner = 1;
  bool last = false;
  bool min = false;   // ArgMin
  bool hard = false;  // Hardmax: the one-hot of the (first) maximum instead of its index
};

// CumSum along one axis: [outer, D, inner].
struct CumSumState : KernelState {
  int64_t outer = 1, D = 1, inner = 1;
  bool exclusive = false, reverse = false;
};

// ---- matrix products, convolution, pooling -----------------------------------------------

struct MatMulState : KernelState {
  int64_t M = 0, N = 0, K = 0;
  bool folded = false;  // B has no batch dims: A's batch folds into M
  std::vector<int64_t> a_off, b_off;  // per output batch, in matrices
  int64_t batches = 1;
  bool a_unique = true, b_unique = true;  // no two batches share an A (B) matrix
  int64_t a_mats = 1, b_mats = 1;
};

struct MatMulTbState : KernelState {
  int64_t rows = 0, N = 0, K = 0;  // A as [rows, K] (its batch dims folded), B [N, K]
};

struct GemmState : KernelState {
  bool ta = false, tb = false;
  float alpha = 1, beta = 1;
  int64_t M = 0, N = 0, K = 0;
  bool has_c = false;
  Bcast cplan;  // Y <- C
};

// Spatial geometry, 1-D treated as 2-D with a height of 1.
// Convolution and pooling geometry over the spatial axes (d, h, w): a 2-D input has the depth axis
// of size 1 (kernel 1, stride 1, no padding), a 1-D input also the height axis.
struct Geom {
  int spatial = 2;  // the input's spatial rank, 1 to 3
  int64_t id = 1, od = 1, kd = 1, sd = 1, dd = 1, pd = 0, pd_end = 0;
  int64_t ih = 1, iw = 1, oh = 1, ow = 1, kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int64_t ph = 0, pw = 0, ph_end = 0, pw_end = 0;
  int64_t in_size() const { return id * ih * iw; }
  int64_t out_size() const { return od * oh * ow; }
  int64_t kernel_size() const { return kd * kh * kw; }
};

struct ConvState : KernelState {
  Geom g;
  int64_t N = 0, C = 0, M = 0, groups = 1;
  bool pointwise = false;  // 1x1, stride 1, no pad: the input is its own column matrix
  bool has_bias = false;
  int64_t images_per_gemm = 1;  // > 1: the columns of that many images in one product (small outputs)
};

struct PoolState : KernelState {
  Geom g;
  int64_t NC = 0;
  int64_t p = 0;  // LpPool's norm (0: MaxPool or AveragePool)
  bool is_max = true;
  bool count_include_pad = false;
  bool simple = false;  // no padding, no dilation, every window inside the input
  // MaxPool's Indices output: each maximum's flat index into X, the spatial part row-major
  // (storage_order 0) or column-major (1), as ONNX defines them.
  bool indices = false, col_major = false;
};

struct GapState : KernelState {
  int64_t NC = 0, HW = 1;
  int64_t p = 0;  // GlobalLpPool's norm
};

// MaxUnpool: X and Indices of `n` elements scattered into an output of `out` elements. The
// indices are flat into the default shape `def` (MaxPool's input); an output_shape larger than it
// keeps each element's coordinates (`remap`).
struct MaxUnpoolState : KernelState {
  int64_t n = 0, out = 0;
  Shape def, out_shape;
  bool remap = false;
};

// Det: `batch` matrices of M x M.
struct DetState : KernelState {
  int64_t batch = 1, M = 1;
};

// ---- data movement, shape-only producers --------------------------------------------------

struct TransposeState : KernelState {
  std::vector<int64_t> perm;
  std::vector<int64_t> src_st;   // input strides in output dim order
  std::vector<int64_t> dst_st;   // for backward: input-grad strides in output dim order
};

struct ConcatState : KernelState {
  int64_t outer = 1, inner = 1;  // inner: elements after the axis
  std::vector<int64_t> sizes;    // per part, its extent along the axis
  int64_t total = 0;
};

struct SliceState : KernelState {
  bool known = false;
  int64_t base = 0;
  std::vector<int64_t> sst;  // input strides per output dim (times step)
};
// The slice's base offset and strides: known at load, else from its inputs (`in` on the host).
void slice_runtime(const SliceState& s, std::span<const Tensor> in, int64_t& base, std::vector<int64_t>& sst);

// RoiAlign: X [N, C, H, W], R regions, output [R, C, Ho, Wo].
struct RoiAlignState : KernelState {
  int64_t N = 0, C = 0, H = 0, W = 0, R = 0, Ho = 1, Wo = 1, sampling = 0;
  float scale = 1.0f;
  bool half_pixel = true, max_mode = false;
};

// ReverseSequence: x [T, B, inner...] (time_axis 0) or [B, T, inner...] (time_axis 1).
struct ReverseSequenceState : KernelState {
  int64_t T = 1, B = 1, inner = 1;
  bool time_first = true;
};

struct GatherState : KernelState {
  int64_t outer = 1, D = 1, inner = 1, nidx = 1;
};

struct GatherElementsState : KernelState {
  int64_t axis = 0;
  Shape index_shape;              // the output's shape
  std::vector<int64_t> data_strides;
  int64_t D = 1;                  // the data's size along the axis
};

// ScatterElements (the GatherElements geometry of its indices) and ScatterND (k = the index
// tuples' length; slice = the elements each tuple addresses).
struct ScatterState : GatherElementsState {
  enum class Red { None, Add, Mul } red = Red::None;
  bool nd = false;
  Shape data_shape;
  int64_t k = 0, slice = 1;
};

// GatherND: rows = the index tuples (batch_dims' batches included), each a slice of the data.
struct GatherNdState : KernelState {
  Shape data_shape;
  int64_t batch_dims = 0, k = 0, slice = 1, batch = 1, batch_stride = 1;
};

// DepthToSpace (DCR or CRD) and SpaceToDepth of [N, C, H, W] by a block b; y is [N, C', H', W'].
struct DepthSpaceState : KernelState {
  bool to_space = true, crd = false;
  int64_t N = 1, C = 1, H = 1, W = 1, b = 1;  // X's dims
};

// Sum, Mean: one broadcasting plan per input onto the output.
struct VariadicState : KernelState {
  bool mean = false;
  std::vector<Bcast> plans;
};

// LpNormalization and TopK along one axis: [outer, D, inner].
struct AxisState : KernelState {
  int64_t outer = 1, D = 1, inner = 1;
  int64_t p = 2;                     // LpNormalization
  int64_t k = 0;                     // TopK
  bool largest = true;
};

struct GridSampleState : KernelState {
  int64_t N = 0, C = 0, H = 0, W = 0, Ho = 0, Wo = 0;
  bool nearest = false, align_corners = false;
  enum Padding { Zeros, Border, Reflection } padding = Zeros;
};

struct RnnState : KernelState {
  enum Kind { Rnn, Gru, Lstm } kind = Rnn;
  int64_t G = 1;                     // gates: 1, 3 (z, r, h), 4 (i, o, f, c)
  int64_t T = 0, B = 0, I = 0, H = 0, dirs = 1, layout = 0;
  bool reverse = false;              // one direction, backwards in time
  bool linear_before_reset = false;  // GRU
};

struct LrnState : KernelState {
  int64_t N = 1, C = 1, inner = 1;  // X [N, C, spatial...], inner the spatial size
  int64_t lo = 0, hi = 0;           // channel c sums the squares of c - lo .. c + hi
  float scale = 1e-4f, beta = 0.75f, bias = 1.0f;  // scale: alpha / size
};

struct EyeLikeState : KernelState {
  int64_t rows = 0, cols = 0, k = 0;
};

struct OneHotState : KernelState {
  int64_t outer = 1, inner = 1, depth = 0;
};

struct ExpandState : KernelState {
  Shape shape;                // output-equivalent iteration shape
  std::vector<int64_t> sst;   // input strides per iteration dim
  Shape red_src, red_dst;     // backward: reduce dY (red_src) to dX (red_dst)
};

struct TriluState : KernelState {
  bool upper = true;
  bool k_known = true;
  int64_t k = 0;
  int64_t mats = 1, N = 1, M = 1;
};
// k: known at load, else from the second input (`in` on the host).
int64_t trilu_k(const TriluState& s, std::span<const Tensor> in);

struct ShapeState : KernelState {
  std::vector<int64_t> values;
};
struct ConstState : KernelState {
  std::shared_ptr<const graph::TensorData> data;
  std::string bytes;  // for value_float(s) / value_int(s) / ConstantOfShape
};

// ---- losses ------------------------------------------------------------------------------

struct SceState : KernelState {
  int64_t N = 1, C = 1, D = 1;
  int64_t start = 0, classes = 0;  // the classes [start, start + C) of `classes` (tensor-parallel split)
  enum class Red { Mean, Sum, None } red = Red::Mean;
  bool has_ignore = false;
  int64_t ignore = 0;
  bool has_weights = false;
  const char* op = "SoftmaxCrossEntropyLoss";  // or NegativeLogLikelihoodLoss (same attributes)
};

// Reads integer elements of an i64 or i32 host tensor.
std::vector<int64_t> tensor_ints(const Tensor& t);

}  // namespace smp::runtime::cpu
