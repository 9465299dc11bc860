// MatMul and Gemm on cuBLASLt: forward Y = X·W, input gradient dX = dY·Wᵀ, weight gradient
// dW (+)= Xᵀ·dY accumulated with beta = 1 into its f32 buffer, Gemm's bias through the BIAS
// epilogue. Row-major products run as their column-major transposes (Cᵀ = op(B)ᵀ op(A)ᵀ).
#include "runtime/cuda/gemm.hpp"
#include "runtime/cuda/ops.hpp"

#include <fmt/format.h>

#include <array>

namespace smp::runtime::cuda {

uint32_t pointer_alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a == 0) return 256;
  uint32_t al = 1;
  while (al < 256 && (a & al) == 0) al <<= 1;
  return al;
}

namespace {

cudaDataType_t cuda_type(Tag t) { return t == kBF16 ? CUDA_R_16BF : CUDA_R_32F; }

}  // namespace

struct GemmPlan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
  size_t workspace = 0;
  bool lt = false;  // false: the fallback kernel runs this shape
  ~GemmPlan() {
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (c) cublasLtMatrixLayoutDestroy(c);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

GemmCache::GemmCache() = default;
GemmCache::~GemmCache() = default;

namespace {

struct PrefGuard {
  cublasLtMatmulPreference_t p = nullptr;
  ~PrefGuard() {
    if (p) cublasLtMatmulPreferenceDestroy(p);
  }
};

void set_batch(cublasLtMatrixLayout_t l, int64_t batch, int64_t stride) {
  if (batch <= 1) return;
  const int32_t n = static_cast<int32_t>(batch);
  SMP_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &n, sizeof n));
  SMP_CUBLAS_CHECK(cublasLtMatrixLayoutSetAttribute(l, CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET, &stride, sizeof stride));
}

}  // namespace

GemmPlan& GemmCache::plan(CudaBackend& be, const GemmShape& s, uint32_t align_a, uint32_t align_b, uint32_t align_c,
                          bool beta_nonzero) {
  std::array<int64_t, 22> k = {s.ta, s.tb, s.M, s.N, s.K, s.lda, s.ldb, s.ldc, s.sA, s.sB, s.sC, s.batch, s.ab, s.c, s.bias,
                               align_a, align_b, align_c, beta_nonzero, be.tf32(), be.workspace_bytes(), 0};
  std::string key(reinterpret_cast<const char*>(k.data()), sizeof k);
  auto it = plans_.find(std::make_tuple(key));
  if (it != plans_.end()) return *it->second;
  auto p = std::make_unique<GemmPlan>();
  SMP_CHECK(s.batch <= 0x7fffffffLL, "a batch of {} matrix products", s.batch);
  const cublasComputeType_t compute =
      s.ab == kF32 && be.tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  SMP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p->op, compute, CUDA_R_32F));
  // Column-major: cuBLASLt's A is our B, its B our A, its C/D our C transposed.
  const cublasOperation_t op_a = s.tb ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = s.ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  SMP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &op_a, sizeof op_a));
  SMP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &op_b, sizeof op_b));
  if (s.bias) {
    const uint32_t epi = CUBLASLT_EPILOGUE_BIAS;
    SMP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epi, sizeof epi));
    const int32_t bt = cuda_type(s.c);
    SMP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bt, sizeof bt));
  }
  const uint64_t a_rows = s.tb ? s.K : s.N, a_cols = s.tb ? s.N : s.K;
  const uint64_t b_rows = s.ta ? s.M : s.K, b_cols = s.ta ? s.K : s.M;
  SMP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->a, cuda_type(s.ab), a_rows, a_cols, s.ldb));
  SMP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->b, cuda_type(s.ab), b_rows, b_cols, s.lda));
  SMP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p->c, cuda_type(s.c), static_cast<uint64_t>(s.N), static_cast<uint64_t>(s.M), s.ldc));
  set_batch(p->a, s.batch, s.sB);
  set_batch(p->b, s.batch, s.sA);
  set_batch(p->c, s.batch, s.sC);

  PrefGuard pref;
  SMP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref.p));
  const uint64_t ws = static_cast<uint64_t>(be.workspace_bytes());
  SMP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
  SMP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align_b, sizeof align_b));
  SMP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align_a, sizeof align_a));
  SMP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align_c, sizeof align_c));
  SMP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref.p, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align_c, sizeof align_c));
  cublasLtMatmulHeuristicResult_t res[8] = {};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(be.lt(), p->op, p->a, p->b, p->c, p->c, pref.p, 8, res, &found);
  if (st == CUBLAS_STATUS_SUCCESS) {
    for (int i = 0; i < found; ++i)
      if (res[i].state == CUBLAS_STATUS_SUCCESS && res[i].workspaceSize <= ws) {
        p->algo = res[i].algo;
        p->workspace = res[i].workspaceSize;
        p->lt = true;
        break;
      }
  } else if (st != CUBLAS_STATUS_NOT_SUPPORTED) {
    fail_cublas(st, "cublasLtMatmulAlgoGetHeuristic", __FILE__, __LINE__);
  }
  if (!p->lt) ++fallbacks_;
  GemmPlan& ref = *p;
  plans_.emplace(std::make_tuple(key), std::move(p));
  return ref;
}

void GemmCache::run(CudaBackend& be, const GemmShape& s, float alpha, const void* A, const void* B, float beta, void* C,
                    const void* bias) {
  if (s.M == 0 || s.N == 0 || s.batch == 0) return;
  if (s.K == 0) {  // no products: C = beta C (+ bias), as the CPU's gemm
    gemm_fallback(s.ta, s.tb, s.M, s.N, 0, alpha, A, s.ab, s.lda, s.sA, B, s.ab, s.ldb, s.sB, beta, C, s.c, s.ldc, s.sC, s.batch,
                  bias, s.c, be.stream());
    return;
  }
  const uint32_t al_c = std::min(pointer_alignment(C), bias ? pointer_alignment(bias) : 256u);
  GemmPlan& p = plan(be, s, pointer_alignment(A), pointer_alignment(B), al_c, beta != 0.0f);
  if (p.lt) {
    if (s.bias)
      SMP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof bias));
    const cublasStatus_t st = cublasLtMatmul(be.lt(), p.op, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo,
                                             be.workspace(), p.workspace, be.stream());
    if (st == CUBLAS_STATUS_SUCCESS) return;
    if (st != CUBLAS_STATUS_NOT_SUPPORTED) fail_cublas(st, "cublasLtMatmul", __FILE__, __LINE__);
    p.lt = false;  // the algorithm refused the call: this shape takes the fallback from now on
    ++fallbacks_;
  }
  gemm_fallback(s.ta, s.tb, s.M, s.N, s.K, alpha, A, s.ab, s.lda, s.sA, B, s.ab, s.ldb, s.sB, beta, C, s.c, s.ldc, s.sC, s.batch,
                bias, s.c, be.stream());
}

void gemm(ExecContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda, int64_t sA,
          const void* B, int64_t ldb, int64_t sB, Tag ab, float beta, void* C, int64_t ldc, int64_t sC, Tag c, int64_t batch,
          const void* bias) {
  GemmShape s;
  s.ta = ta;
  s.tb = tb;
  s.M = M;
  s.N = N;
  s.K = K;
  s.lda = std::max<int64_t>(lda, 1);
  s.ldb = std::max<int64_t>(ldb, 1);
  s.ldc = std::max<int64_t>(ldc, 1);
  s.sA = sA;
  s.sB = sB;
  s.sC = sC;
  s.batch = batch;
  s.ab = ab;
  s.c = c;
  s.bias = bias != nullptr;
  CudaBackend& be = backend_of(ctx);
  be.gemm().run(be, s, alpha, A, B, beta, C, bias);
}

// ---- MatMul --------------------------------------------------------------------------------

namespace {

// How the batches of a MatMul map onto one strided cuBLASLt call: batch i reads A matrix i
// and B matrix i (both unique). Otherwise the batches run one product each.
struct MatMulDev : DeviceState {
  bool strided = false;
};

const MatMulDev* dev_of(const cpu::MatMulState& s) { return static_cast<const MatMulDev*>(s.device.get()); }

}  // namespace

void setup_matmul(KernelState& st, ExecContext& ctx) {
  auto& s = static_cast<cpu::MatMulState&>(st);
  auto d = std::make_unique<MatMulDev>();
  if (!s.folded && s.a_unique && s.b_unique) {
    d->strided = true;
    for (int64_t i = 0; i < s.batches; ++i)
      if (s.a_off[static_cast<size_t>(i)] != i || s.b_off[static_cast<size_t>(i)] != i) d->strided = false;
  }
  s.device = std::move(d);
  // Settle the algorithms of the three products at load (whole tensors: 256-byte aligned).
  CudaBackend& be = backend_of(ctx);
  const Tag ab = tag_of(s.compute), y = tag_of(s.out_dtypes[0]);
  const int64_t M = s.M, N = s.N, K = s.K;
  auto warm = [&](bool ta, bool tb, int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc, int64_t sA, int64_t sB,
                  int64_t sC, int64_t batch, Tag c, bool beta) {
    if (m == 0 || n == 0 || k == 0) return;
    GemmShape g{ta, tb, m, n, k, lda, ldb, ldc, sA, sB, sC, batch, ab, c, false};
    be.gemm().plan(be, g, 256, 256, 256, beta);
  };
  const bool dd = s.in_dtypes.size() > 1;
  if (!dd) return;
  const Tag da = tag_of(s.in_dtypes[0]), db = tag_of(s.in_dtypes[1]);
  // f32 gradient buffers of parameters accumulate (beta 1); activation gradients overwrite.
  const Tag ga = da == kBF16 ? kBF16 : kF32, gb = db == kBF16 ? kBF16 : kF32;
  if (s.folded) {
    warm(false, false, s.a_mats * M, N, K, K, N, N, 0, 0, 0, 1, y, false);
    warm(false, true, s.a_mats * M, K, N, N, N, K, 0, 0, 0, 1, ga, false);
    warm(true, false, K, N, s.a_mats * M, K, N, N, 0, 0, 0, 1, gb, gb == kF32);
  } else if (dev_of(s)->strided) {
    warm(false, false, M, N, K, K, N, N, M * K, K * N, M * N, s.batches, y, false);
    warm(false, true, M, K, N, N, N, K, M * N, K * N, M * K, s.batches, ga, false);
    warm(true, false, K, N, M, K, N, N, M * K, M * N, K * N, s.batches, gb, false);
  }
}

void fwd_matmul(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::MatMulState&>(st);
  Tensor ha, hb;
  const Tensor& A = as_dtype(ctx, in[0], s.compute, ha);
  const Tensor& B = as_dtype(ctx, in[1], s.compute, hb);
  const Tag ab = tag_of(s.compute), yt = tag(out[0]);
  const int64_t M = s.M, N = s.N, K = s.K;
  const int64_t ea = dtype_size_of_tag(ab), ey = dtype_size_of_tag(yt);
  void* Y = ptr(out[0]);
  if (s.folded) {
    gemm(ctx, false, false, s.a_mats * M, N, K, 1.0f, ptr(A), K, 0, ptr(B), N, 0, ab, 0.0f, Y, N, 0, yt);
  } else if (dev_of(s)->strided) {
    gemm(ctx, false, false, M, N, K, 1.0f, ptr(A), K, M * K, ptr(B), N, K * N, ab, 0.0f, Y, N, M * N, yt, s.batches);
  } else {
    const char* a = static_cast<const char*>(ptr(A));
    const char* b = static_cast<const char*>(ptr(B));
    for (int64_t i = 0; i < s.batches; ++i)
      gemm(ctx, false, false, M, N, K, 1.0f, a + s.a_off[static_cast<size_t>(i)] * M * K * ea, K, 0,
           b + s.b_off[static_cast<size_t>(i)] * K * N * ea, N, 0, ab, 0.0f, static_cast<char*>(Y) + i * M * N * ey, N, 0, yt);
  }
}

void bwd_matmul(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::MatMulState&>(st);
  if (!io.dout[0].defined()) return;
  const Tag ab = tag_of(s.compute);
  const int64_t M = s.M, N = s.N, K = s.K, ea = dtype_size_of_tag(ab);
  Tensor hdy;
  const Tensor& dY = as_dtype(ctx, io.dout[0], s.compute, hdy);
  const char* dy = static_cast<const char*>(ptr(dY));
  if (io.din[0].defined()) {  // dA = dY . B^T
    SMP_CHECK(io.in[1].defined(), "node {}: MatMul backward needs B (not declared saved)", s.node_name);
    Tensor hb;
    const char* b = static_cast<const char*>(ptr(as_dtype(ctx, io.in[1], s.compute, hb)));
    Tensor& dA = io.din[0];
    const Tag dt = tag(dA);
    const int64_t ed = dtype_size_of_tag(dt);
    float beta = io.accumulate[0] ? 1.0f : 0.0f;
    if (s.folded) {
      gemm(ctx, false, true, s.a_mats * M, K, N, 1.0f, dy, N, 0, b, N, 0, ab, beta, ptr(dA), K, 0, dt);
    } else if (dev_of(s)->strided) {
      gemm(ctx, false, true, M, K, N, 1.0f, dy, N, M * N, b, N, K * N, ab, beta, ptr(dA), K, M * K, dt, s.batches);
    } else {
      if (!s.a_unique && beta == 0.0f) {
        ctx.backend->fill_zero(dA);
        beta = 1.0f;
      }
      for (int64_t i = 0; i < s.batches; ++i)
        gemm(ctx, false, true, M, K, N, 1.0f, dy + i * M * N * ea, N, 0, b + s.b_off[static_cast<size_t>(i)] * K * N * ea, N, 0, ab,
             beta, static_cast<char*>(ptr(dA)) + s.a_off[static_cast<size_t>(i)] * M * K * ed, K, 0, dt);
    }
  }
  if (io.din[1].defined()) {  // dB = A^T . dY
    SMP_CHECK(io.in[0].defined(), "node {}: MatMul backward needs A (not declared saved)", s.node_name);
    Tensor ha;
    const char* a = static_cast<const char*>(ptr(as_dtype(ctx, io.in[0], s.compute, ha)));
    Tensor& dB = io.din[1];
    const Tag dt = tag(dB);
    const int64_t ed = dtype_size_of_tag(dt);
    float beta = io.accumulate[1] ? 1.0f : 0.0f;
    if (s.folded) {
      gemm(ctx, true, false, K, N, s.a_mats * M, 1.0f, a, K, 0, dy, N, 0, ab, beta, ptr(dB), N, 0, dt);
    } else if (dev_of(s)->strided) {
      gemm(ctx, true, false, K, N, M, 1.0f, a, K, M * K, dy, N, M * N, ab, beta, ptr(dB), N, K * N, dt, s.batches);
    } else {
      if (!s.b_unique && beta == 0.0f) {
        ctx.backend->fill_zero(dB);
        beta = 1.0f;
      }
      for (int64_t i = 0; i < s.batches; ++i)
        gemm(ctx, true, false, K, N, M, 1.0f, a + s.a_off[static_cast<size_t>(i)] * M * K * ea, K, 0, dy + i * M * N * ea, N, 0, ab,
             beta, static_cast<char*>(ptr(dB)) + s.b_off[static_cast<size_t>(i)] * K * N * ed, N, 0, dt);
    }
  }
}

// ---- Gemm ----------------------------------------------------------------------------------

namespace {

struct GemmDev : DeviceState {
  bool bias_epilogue = false;  // C is a row of N added to every row, beta 1, in Y's dtype
};

}  // namespace

void setup_gemm(KernelState& st, ExecContext& ctx) {
  auto& s = static_cast<cpu::GemmState&>(st);
  auto d = std::make_unique<GemmDev>();
  if (s.has_c && s.beta == 1.0f && smp::numel(s.in_shapes[2]) == s.N && (s.in_shapes[2].size() < 2 || s.in_shapes[2][0] == 1) &&
      s.in_dtypes[2] == s.out_dtypes[0])
    d->bias_epilogue = true;
  CudaBackend& be = backend_of(ctx);
  const Tag ab = tag_of(s.compute), y = tag_of(s.out_dtypes[0]);
  if (s.M > 0 && s.N > 0 && s.K > 0) {
    GemmShape g{s.ta, s.tb, s.M, s.N, s.K, s.ta ? s.M : s.K, s.tb ? s.K : s.N, s.N, 0, 0, 0, 1, ab, y, d->bias_epilogue};
    be.gemm().plan(be, g, 256, 256, 256, s.has_c && !d->bias_epilogue && s.beta != 0.0f);
  }
  s.device = std::move(d);
}

void fwd_gemm(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::GemmState&>(st);
  const auto* d = static_cast<const GemmDev*>(s.device.get());
  Tensor ha, hb;
  const Tensor& A = as_dtype(ctx, in[0], s.compute, ha);
  const Tensor& B = as_dtype(ctx, in[1], s.compute, hb);
  const Tag ab = tag_of(s.compute), yt = tag(out[0]);
  float beta = 0;
  const void* bias = nullptr;
  if (s.has_c && s.beta != 0.0f) {
    if (d->bias_epilogue) {
      bias = ptr(in[2]);
    } else {
      gather_copy(strided_from_bcast(s.cplan), ptr(out[0]), yt, false, ptr(in[2]), tag(in[2]), stream(ctx));
      beta = s.beta;
    }
  }
  gemm(ctx, s.ta, s.tb, s.M, s.N, s.K, s.alpha, ptr(A), s.ta ? s.M : s.K, 0, ptr(B), s.tb ? s.K : s.N, 0, ab, beta, ptr(out[0]),
       s.N, 0, yt, 1, bias);
}

void bwd_gemm(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::GemmState&>(st);
  if (!io.dout[0].defined()) return;
  const Tag ab = tag_of(s.compute);
  const int64_t M = s.M, N = s.N, K = s.K;
  Tensor hdy;
  const void* dY = ptr(as_dtype(ctx, io.dout[0], s.compute, hdy));
  if (io.din[0].defined()) {
    SMP_CHECK(io.in[1].defined(), "node {}: Gemm backward needs B (not declared saved)", s.node_name);
    Tensor hb;
    const void* B = ptr(as_dtype(ctx, io.in[1], s.compute, hb));
    Tensor& dA = io.din[0];
    const float beta = io.accumulate[0] ? 1.0f : 0.0f;
    const int64_t ldb = s.tb ? K : N;
    if (!s.ta) gemm(ctx, false, !s.tb, M, K, N, s.alpha, dY, N, 0, B, ldb, 0, ab, beta, ptr(dA), K, 0, tag(dA));
    else gemm(ctx, s.tb, true, K, M, N, s.alpha, B, ldb, 0, dY, N, 0, ab, beta, ptr(dA), M, 0, tag(dA));
  }
  if (io.din[1].defined()) {
    SMP_CHECK(io.in[0].defined(), "node {}: Gemm backward needs A (not declared saved)", s.node_name);
    Tensor ha;
    const void* A = ptr(as_dtype(ctx, io.in[0], s.compute, ha));
    Tensor& dB = io.din[1];
    const float beta = io.accumulate[1] ? 1.0f : 0.0f;
    const int64_t lda = s.ta ? M : K;
    if (!s.tb) gemm(ctx, !s.ta, false, K, N, M, s.alpha, A, lda, 0, dY, N, 0, ab, beta, ptr(dB), N, 0, tag(dB));
    else gemm(ctx, true, s.ta, N, K, M, s.alpha, dY, N, 0, A, lda, 0, ab, beta, ptr(dB), K, 0, tag(dB));
  }
  if (io.din.size() > 2 && io.din[2].defined()) {
    Tensor& dC = io.din[2];
    const Shape& cs = s.in_shapes[2];
    if (s.beta == 1.0f) {
      reduce_sum_to(ctx, dC, cs, io.dout[0], s.out_shapes[0], io.accumulate[2]);
    } else {
      Tensor t = scratch(ctx, DType::F32, cs);
      reduce_sum_to(ctx, t, cs, io.dout[0], s.out_shapes[0], false);
      axpby(t.numel(), s.beta, ptr(t), kF32, ptr(dC), tag(dC), io.accumulate[2], stream(ctx));
    }
  }
}

}  // namespace smp::runtime::cuda
