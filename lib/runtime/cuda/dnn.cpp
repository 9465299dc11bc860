// Conv (forward, backward-data, backward-filter; groups and depthwise included) and pooling
// through cuDNN's C API. The algorithms are chosen once at load among the deterministic ones
// (cudnnFind...Ex on temporary buffers, freed afterwards; the heuristics when that finds none),
// never inside a step. Asymmetric padding, which cuDNN does not take, pads the input into a
// scratch buffer first. Strict float32 keeps to FMA kernels; TF32 (--tf32) and bf16 allow
// tensor cores.
#include "runtime/cuda/ops.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace smp::runtime::cuda {

namespace {

cudnnDataType_t dnn_type(Tag t) {
  SMP_CHECK(t == kF32 || t == kBF16, "cuDNN tensors of tag {}", static_cast<int>(t));
  return t == kBF16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
}

int to_int(int64_t v, const std::string& node) {
  if (v > 0x7fffffffLL) throw_bad_input("node " + node + " (Conv)", fmt::format("dimension {} exceeds cuDNN's int range", v));
  return static_cast<int>(v);
}

// Temporary device memory for the algorithm search (plain cudaMalloc, freed when it goes).
struct DevBuffer {
  void* p = nullptr;
  explicit DevBuffer(CudaBackend& be, int64_t bytes, const char* what) {
    if (bytes <= 0) return;
    cudaError_t e = cudaMalloc(&p, static_cast<size_t>(bytes));
    if (e == cudaErrorMemoryAllocation) {
      cudaGetLastError();
      be.fail_oom(what, bytes);
    }
    SMP_CUDA_CHECK(e);
  }
  ~DevBuffer() {
    if (p) cudaFree(p);
  }
  DevBuffer(const DevBuffer&) = delete;
  DevBuffer& operator=(const DevBuffer&) = delete;
};

struct ConvDev : DeviceState {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv[3] = {nullptr, nullptr, nullptr};  // forward, backward data, backward filter
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  size_t ws[3] = {0, 0, 0};
  bool found[3] = {false, false, false};
  bool padded = false;  // asymmetric padding: x is the input padded into a scratch buffer
  Shape xpad;           // [N, C, H + pads, W + pads]
  Tag t = kF32;
  ~ConvDev() override {
    for (auto* c : conv)
      if (c) cudnnDestroyConvolutionDescriptor(c);
    if (w) cudnnDestroyFilterDescriptor(w);
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
  }
};

// Picks the first result (fastest first) that succeeded, is deterministic, fits the workspace
// limit and has an allowed math type.
template <class Perf>
int pick(const Perf* r, int n, size_t limit, bool strict_fp32) {
  for (int i = 0; i < n; ++i) {
    if (r[i].status != CUDNN_STATUS_SUCCESS || r[i].determinism != CUDNN_DETERMINISTIC || r[i].memory > limit) continue;
    if (strict_fp32 && r[i].mathType != CUDNN_FMA_MATH) continue;
    return i;
  }
  return -1;
}

// cuDNN's search (`find`, timing every algorithm on the given buffers), else its heuristics
// (`get`); the first acceptable result is kept and its math type set on the pass's descriptor.
template <int N, class Perf, class Find, class Get>
bool choose(Find find, Get get, size_t limit, bool strict_fp32, cudnnConvolutionDescriptor_t conv, Perf& chosen) {
  Perf r[N] = {};
  int n = 0;
  int i = find(N, &n, r) == CUDNN_STATUS_SUCCESS ? pick(r, n, limit, strict_fp32) : -1;
  if (i < 0 && get(N, &n, r) == CUDNN_STATUS_SUCCESS) i = pick(r, n, limit, strict_fp32);
  if (i < 0) return false;
  chosen = r[i];
  SMP_CUDNN_CHECK(cudnnSetConvolutionMathType(conv, r[i].mathType));
  return true;
}

// The interior of the padded input: the original input's place in it.
Strided pad_interior(const cpu::ConvState& s, const Shape& xpad) {
  const cpu::Geom& g = s.g;
  Strided st;
  st.nd = 3;
  st.total = s.N * s.C * g.ih * g.iw;
  st.dims[0] = s.N * s.C;
  st.dims[1] = g.ih;
  st.dims[2] = g.iw;
  st.st[0][0] = g.ih * g.iw;
  st.st[0][1] = g.iw;
  st.st[0][2] = 1;
  st.st[1][0] = xpad[2] * xpad[3];
  st.st[1][1] = xpad[3];
  st.st[1][2] = 1;
  st.base[1] = g.ph * xpad[3] + g.pw;
  return st;
}

// The input as the convolution reads it: in the compute dtype, padded when needed.
const Tensor& conv_input(ExecContext& ctx, const cpu::ConvState& s, const ConvDev& d, const Tensor& x, Tensor& h1, Tensor& h2) {
  const Tensor& xc = as_dtype(ctx, x, s.compute, h1);
  if (!d.padded) return xc;
  h2 = scratch(ctx, s.compute, d.xpad);
  ctx.backend->fill_zero(h2);
  scatter_copy(pad_interior(s, d.xpad), ptr(h2), d.t, false, ptr(xc), d.t, stream(ctx));
  return h2;
}

}  // namespace

std::unique_ptr<KernelState> prep_conv(const NodeView& n) {
  auto s = cpu::prep_conv(n);
  if (static_cast<const cpu::ConvState&>(*s).g.spatial == 3) n.fail("3-D convolution has no CUDA kernel yet; run it with --backend cpu");
  return s;
}

void setup_conv(KernelState& st, ExecContext& ctx) {
  auto& s = static_cast<cpu::ConvState&>(st);
  CudaBackend& be = backend_of(ctx);
  const cpu::Geom& g = s.g;
  auto d = std::make_unique<ConvDev>();
  d->t = tag_of(s.compute);
  const cudnnDataType_t dt = dnn_type(d->t);
  const std::string& nm = s.node_name;
  d->padded = g.ph != g.ph_end || g.pw != g.pw_end;
  const int64_t H = d->padded ? g.ih + g.ph + g.ph_end : g.ih, W = d->padded ? g.iw + g.pw + g.pw_end : g.iw;
  d->xpad = {s.N, s.C, H, W};
  SMP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d->x));
  SMP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d->y));
  SMP_CUDNN_CHECK(cudnnCreateFilterDescriptor(&d->w));
  SMP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, dt, to_int(s.N, nm), to_int(s.C, nm), to_int(H, nm), to_int(W, nm)));
  SMP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, dt, to_int(s.N, nm), to_int(s.M, nm), to_int(g.oh, nm), to_int(g.ow, nm)));
  SMP_CUDNN_CHECK(cudnnSetFilter4dDescriptor(d->w, dt, CUDNN_TENSOR_NCHW, to_int(s.M, nm), to_int(s.C / s.groups, nm), to_int(g.kh, nm),
                                             to_int(g.kw, nm)));
  const bool strict = d->t == kF32 && !be.tf32();
  const cudnnMathType_t math = strict ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
  for (auto& c : d->conv) {
    SMP_CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&c));
    SMP_CUDNN_CHECK(cudnnSetConvolution2dDescriptor(c, d->padded ? 0 : to_int(g.ph, nm), d->padded ? 0 : to_int(g.pw, nm),
                                                    to_int(g.sh, nm), to_int(g.sw, nm), to_int(g.dh, nm), to_int(g.dw, nm),
                                                    CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    SMP_CUDNN_CHECK(cudnnSetConvolutionGroupCount(c, to_int(s.groups, nm)));
    SMP_CUDNN_CHECK(cudnnSetConvolutionMathType(c, math));
  }
  int on = 0, oc = 0, oh = 0, ow = 0;
  SMP_CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(d->conv[0], d->x, d->w, &on, &oc, &oh, &ow));
  SMP_CHECK(on == s.N && oc == s.M && oh == g.oh && ow == g.ow, "node {}: cuDNN computes output {}x{}x{}x{}, the graph says {}", nm, on, oc,
            oh, ow, shape_str(s.out_shapes[0]));

  // The search: temporary tensors and workspace, released when setup ends.
  const int64_t es = dtype_size_of_tag(d->t);
  size_t free_b = 0, total_b = 0;
  SMP_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  const size_t limit = std::min<size_t>(size_t{1} << 30, free_b / 4);
  DevBuffer bx(be, s.N * s.C * H * W * es, "the algorithm search of a convolution (input)");
  DevBuffer bw(be, s.M * (s.C / s.groups) * g.kh * g.kw * es, "the algorithm search of a convolution (weights)");
  DevBuffer by(be, s.N * s.M * g.oh * g.ow * es, "the algorithm search of a convolution (output)");
  DevBuffer bws(be, static_cast<int64_t>(limit), "the algorithm search of a convolution (workspace)");
  // Finite values in the inputs (some algorithms' timings suffer from NaN patterns).
  SMP_CUDA_CHECK(cudaMemsetAsync(bx.p, 0, static_cast<size_t>(s.N * s.C * H * W * es), be.stream()));
  SMP_CUDA_CHECK(cudaMemsetAsync(bw.p, 0, static_cast<size_t>(s.M * (s.C / s.groups) * g.kh * g.kw * es), be.stream()));
  SMP_CUDA_CHECK(cudaMemsetAsync(by.p, 0, static_cast<size_t>(s.N * s.M * g.oh * g.ow * es), be.stream()));
  SMP_CUDA_CHECK(cudaStreamSynchronize(be.stream()));
  cudnnHandle_t h = be.dnn();
  cudnnConvolutionFwdAlgoPerf_t pf;
  d->found[0] = choose<CUDNN_CONVOLUTION_FWD_ALGO_COUNT>(
      [&](int req, int* n, cudnnConvolutionFwdAlgoPerf_t* r) {
        return cudnnFindConvolutionForwardAlgorithmEx(h, d->x, bx.p, d->w, bw.p, d->conv[0], d->y, by.p, req, n, r, bws.p, limit);
      },
      [&](int req, int* n, cudnnConvolutionFwdAlgoPerf_t* r) {
        return cudnnGetConvolutionForwardAlgorithm_v7(h, d->x, d->w, d->conv[0], d->y, req, n, r);
      },
      limit, strict, d->conv[0], pf);
  if (d->found[0]) d->fwd = pf.algo, d->ws[0] = pf.memory;
  cudnnConvolutionBwdDataAlgoPerf_t pd;
  d->found[1] = choose<CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT>(
      [&](int req, int* n, cudnnConvolutionBwdDataAlgoPerf_t* r) {
        return cudnnFindConvolutionBackwardDataAlgorithmEx(h, d->w, bw.p, d->y, by.p, d->conv[1], d->x, bx.p, req, n, r, bws.p, limit);
      },
      [&](int req, int* n, cudnnConvolutionBwdDataAlgoPerf_t* r) {
        return cudnnGetConvolutionBackwardDataAlgorithm_v7(h, d->w, d->y, d->conv[1], d->x, req, n, r);
      },
      limit, strict, d->conv[1], pd);
  if (d->found[1]) d->bwd_data = pd.algo, d->ws[1] = pd.memory;
  cudnnConvolutionBwdFilterAlgoPerf_t pw;
  d->found[2] = choose<CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT>(
      [&](int req, int* n, cudnnConvolutionBwdFilterAlgoPerf_t* r) {
        return cudnnFindConvolutionBackwardFilterAlgorithmEx(h, d->x, bx.p, d->y, by.p, d->conv[2], d->w, bw.p, req, n, r, bws.p, limit);
      },
      [&](int req, int* n, cudnnConvolutionBwdFilterAlgoPerf_t* r) {
        return cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, d->x, d->y, d->conv[2], d->w, req, n, r);
      },
      limit, strict, d->conv[2], pw);
  if (d->found[2]) d->bwd_filter = pw.algo, d->ws[2] = pw.memory;
  SMP_CUDA_CHECK(cudaStreamSynchronize(be.stream()));
  if (!d->found[0])
    throw_failure("node " + nm + " (Conv)", fmt::format("cuDNN offers no deterministic forward algorithm for {} {} ({})",
                                                         shape_str(s.in_shapes[0]), shape_str(s.in_shapes[1]), strict ? "float32 without TF32" : dtype_name(s.compute)));
  be.ensure_workspace(static_cast<int64_t>(std::max({d->ws[0], d->ws[1], d->ws[2]})));
  s.device = std::move(d);
}

void fwd_conv(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::ConvState&>(st);
  const auto& d = *static_cast<const ConvDev*>(s.device.get());
  CudaBackend& be = backend_of(ctx);
  Tensor h1, h2, hw, hy;
  const Tensor& x = conv_input(ctx, s, d, in[0], h1, h2);
  const Tensor& w = as_dtype(ctx, in[1], s.compute, hw);
  Tensor& y0 = out[0];
  Tensor y = y0.dtype() == s.compute ? y0 : (hy = scratch(ctx, s.compute, y0.shape()));
  const float alpha = 1.0f, beta = 0.0f;
  SMP_CUDNN_CHECK(cudnnConvolutionForward(be.dnn(), &alpha, d.x, ptr(x), d.w, ptr(w), d.conv[0], d.fwd, be.workspace(), d.ws[0], &beta,
                                          d.y, ptr(y)));
  if (hy.defined()) ctx.backend->convert(y0, hy);
  if (s.has_bias) channel_bias(s.N, s.M, s.g.oh * s.g.ow, ptr(y0), tag(y0), ptr(in[2]), tag(in[2]), stream(ctx));
}

void bwd_conv(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::ConvState&>(st);
  const auto& d = *static_cast<const ConvDev*>(s.device.get());
  if (!io.dout[0].defined()) return;
  CudaBackend& be = backend_of(ctx);
  Tensor hdy;
  const Tensor& dy = as_dtype(ctx, io.dout[0], s.compute, hdy);
  const float one = 1.0f, zero = 0.0f;
  if (io.din[0].defined()) {
    SMP_CHECK(io.in[1].defined(), "node {}: Conv backward needs W (not declared saved)", s.node_name);
    if (!d.found[1])
      throw_failure("node " + s.node_name + " (Conv)", "cuDNN offers no deterministic backward-data algorithm for this convolution");
    Tensor hw;
    const Tensor& w = as_dtype(ctx, io.in[1], s.compute, hw);
    Tensor& dX = io.din[0];
    const bool acc = io.accumulate[0];
    if (!d.padded && dX.dtype() == s.compute) {
      SMP_CUDNN_CHECK(cudnnConvolutionBackwardData(be.dnn(), &one, d.w, ptr(w), d.y, ptr(dy), d.conv[1], d.bwd_data, be.workspace(),
                                                   d.ws[1], acc ? &one : &zero, d.x, ptr(dX)));
    } else {
      Tensor t = scratch(ctx, s.compute, d.xpad);
      SMP_CUDNN_CHECK(cudnnConvolutionBackwardData(be.dnn(), &one, d.w, ptr(w), d.y, ptr(dy), d.conv[1], d.bwd_data, be.workspace(),
                                                   d.ws[1], &zero, d.x, ptr(t)));
      Strided crop = d.padded ? pad_interior(s, d.xpad) : strided_gather(s.in_shapes[0], cpu::strides_of(s.in_shapes[0]), 0);
      gather_copy(crop, ptr(dX), tag(dX), acc, ptr(t), d.t, stream(ctx));
    }
  }
  if (io.din[1].defined()) {
    SMP_CHECK(io.in[0].defined(), "node {}: Conv backward needs X (not declared saved)", s.node_name);
    if (!d.found[2])
      throw_failure("node " + s.node_name + " (Conv)", "cuDNN offers no deterministic backward-filter algorithm for this convolution");
    Tensor h1, h2;
    const Tensor& x = conv_input(ctx, s, d, io.in[0], h1, h2);
    Tensor& dW = io.din[1];
    const bool acc = io.accumulate[1];
    if (dW.dtype() == s.compute) {
      SMP_CUDNN_CHECK(cudnnConvolutionBackwardFilter(be.dnn(), &one, d.x, ptr(x), d.y, ptr(dy), d.conv[2], d.bwd_filter, be.workspace(),
                                                     d.ws[2], acc ? &one : &zero, d.w, ptr(dW)));
    } else {  // bf16 compute: the filter gradient in bf16, added into its f32 buffer
      Tensor t = scratch(ctx, s.compute, dW.shape());
      SMP_CUDNN_CHECK(cudnnConvolutionBackwardFilter(be.dnn(), &one, d.x, ptr(x), d.y, ptr(dy), d.conv[2], d.bwd_filter, be.workspace(),
                                                     d.ws[2], &zero, d.w, ptr(t)));
      store(ctx, dW, t, acc);
    }
  }
  if (io.din.size() > 2 && io.din[2].defined())
    reduce_sum_to(ctx, io.din[2], {1, s.M, 1, 1}, io.dout[0], {s.N, s.M, s.g.oh, s.g.ow}, io.accumulate[2]);
}

// ---- pooling -------------------------------------------------------------------------------

namespace {

struct PoolDev : DeviceState {
  bool dnn = false;  // the forward runs on cuDNN (symmetric padding, no dilation, floor sizes)
  mutable bool refused = false;  // cuDNN declined the call once (a dtype it lacks): ours from then on
  cudnnPoolingDescriptor_t pool = nullptr;
  cudnnTensorDescriptor_t x = nullptr, y = nullptr;
  ~PoolDev() override {
    if (pool) cudnnDestroyPoolingDescriptor(pool);
    if (x) cudnnDestroyTensorDescriptor(x);
    if (y) cudnnDestroyTensorDescriptor(y);
  }
};

PoolGeom pool_geom(const cpu::PoolState& s) {
  const cpu::Geom& g = s.g;
  return PoolGeom{s.NC, g.ih, g.iw, g.oh, g.ow, g.kh, g.kw, g.sh, g.sw, g.dh, g.dw, g.ph, g.pw, g.ph_end, g.pw_end, s.is_max,
                  s.count_include_pad};
}

}  // namespace

std::unique_ptr<KernelState> prep_pool(const NodeView& n) {
  auto s = cpu::prep_pool(n);
  if (static_cast<const cpu::PoolState&>(*s).g.spatial == 3) n.fail("3-D pooling has no CUDA kernel yet; run it with --backend cpu");
  if (static_cast<const cpu::PoolState&>(*s).indices)
    n.fail("MaxPool's Indices output has no CUDA kernel yet; run it with --backend cpu");
  if (n.input(0).dtype != DType::F32)
    n.fail(fmt::format("MaxPool of {} has no CUDA kernel yet; run it with --backend cpu", dtype_name(n.input(0).dtype)));
  return s;
}

void setup_pool(KernelState& st, ExecContext& ctx) {
  auto& s = static_cast<cpu::PoolState&>(st);
  const cpu::Geom& g = s.g;
  auto d = std::make_unique<PoolDev>();
  const bool fits_int = s.NC <= 0x7fffffffLL && g.ih * g.iw <= 0x7fffffffLL;
  const bool same_tag = s.in_dtypes[0] == s.out_dtypes[0] && (s.in_dtypes[0] == DType::F32 || s.in_dtypes[0] == DType::BF16);
  if (fits_int && same_tag && g.ph == g.ph_end && g.pw == g.pw_end && g.dh == 1 && g.dw == 1 && g.ph < g.kh && g.pw < g.kw) {
    const cudnnDataType_t dt = dnn_type(tag_of(s.in_dtypes[0]));
    const cudnnPoolingMode_t mode = s.is_max ? CUDNN_POOLING_MAX_DETERMINISTIC
                                             : (s.count_include_pad ? CUDNN_POOLING_AVERAGE_COUNT_INCLUDE_PADDING
                                                                    : CUDNN_POOLING_AVERAGE_COUNT_EXCLUDE_PADDING);
    SMP_CUDNN_CHECK(cudnnCreatePoolingDescriptor(&d->pool));
    SMP_CUDNN_CHECK(cudnnSetPooling2dDescriptor(d->pool, mode, CUDNN_NOT_PROPAGATE_NAN, static_cast<int>(g.kh), static_cast<int>(g.kw),
                                                static_cast<int>(g.ph), static_cast<int>(g.pw), static_cast<int>(g.sh),
                                                static_cast<int>(g.sw)));
    SMP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d->x));
    SMP_CUDNN_CHECK(cudnnCreateTensorDescriptor(&d->y));
    SMP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d->x, CUDNN_TENSOR_NCHW, dt, 1, static_cast<int>(s.NC), static_cast<int>(g.ih),
                                               static_cast<int>(g.iw)));
    int n = 0, c = 0, h = 0, w = 0;
    SMP_CUDNN_CHECK(cudnnGetPooling2dForwardOutputDim(d->pool, d->x, &n, &c, &h, &w));
    if (h == g.oh && w == g.ow) {
      SMP_CUDNN_CHECK(cudnnSetTensor4dDescriptor(d->y, CUDNN_TENSOR_NCHW, dt, 1, static_cast<int>(s.NC), h, w));
      d->dnn = true;
    }
  }
  s.device = std::move(d);
}

void fwd_pool(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::PoolState&>(st);
  const auto& d = *static_cast<const PoolDev*>(s.device.get());
  if (d.dnn && !d.refused && in[0].dtype() == out[0].dtype()) {
    const float alpha = 1.0f, beta = 0.0f;
    const cudnnStatus_t e = cudnnPoolingForward(backend_of(ctx).dnn(), d.pool, &alpha, d.x, ptr(in[0]), &beta, d.y, ptr(out[0]));
    if (e == CUDNN_STATUS_SUCCESS) return;
    // cuDNN 9 reports "bad parameter" and "not supported" in the 2000s and 3000s (with sub-codes)
    const int family = static_cast<int>(e) / 1000;
    if (family != 2 && family != 3) fail_cudnn(e, "cudnnPoolingForward", __FILE__, __LINE__);
    d.refused = true;
  }
  pool(pool_geom(s), ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_pool(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::PoolState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  const void* x = nullptr;
  Tag xt = kF32;
  if (s.is_max) {
    SMP_CHECK(io.in[0].defined(), "node {}: MaxPool backward needs X (not declared saved)", s.node_name);
    x = ptr(io.in[0]);
    xt = tag(io.in[0]);
  }
  pool_grad(pool_geom(s), ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], ptr(io.dout[0]), tag(io.dout[0]), x, xt, stream(ctx));
}

void fwd_global_avgpool(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::GapState&>(st);
  global_avgpool(s.NC, s.HW, ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_global_avgpool(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::GapState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  global_avgpool_grad(s.NC, s.HW, ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], ptr(io.dout[0]), tag(io.dout[0]), stream(ctx));
}

}  // namespace smp::runtime::cuda
