// MatMul (numpy semantics, batched with broadcasting) and Gemm, on OpenBLAS sgemm.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <cblas.h>
#include <fmt/format.h>

#include <atomic>

namespace smp::runtime::cpu {

namespace {

inline void sgemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                  const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// one product per batch: across threads when there are enough batches, else threaded gemms
template <class F>
void batched(int64_t batches, int64_t flops_each, F f) {
  if (batches >= pool_threads() * 2 || flops_each < (int64_t{1} << 18)) {
    pfor(batches, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t i = b0; i < b1; ++i) f(i, true);
    });
  } else {
    for (int64_t i = 0; i < batches; ++i) f(i, false);
  }
}

}  // namespace

std::unique_ptr<KernelState> prep_matmul(const NodeView& n) {
  auto s = std::make_unique<MatMulState>();
  if (n.num_inputs() != 2) n.fail("needs 2 inputs");
  n.require_dtype(n.input(0), {DType::F32}, "input A");
  n.require_dtype(n.input(1), {DType::F32}, "input B");
  matmul_layout(n, 0, 1, *s);
  return s;
}

void matmul_layout(const NodeView& n, int a_input, int b_input, MatMulState& s) {
  Shape a = n.input(a_input).shape, b = n.input(b_input).shape;
  if (a.empty() || b.empty()) n.fail("scalar operands");
  if (a.size() == 1) a.insert(a.begin(), 1);
  if (b.size() == 1) b.push_back(1);
  s.M = a[a.size() - 2];
  s.K = a.back();
  s.N = b.back();
  if (b[b.size() - 2] != s.K)
    n.fail(fmt::format("inner dimensions differ: {} and {}", shape_str(n.input(a_input).shape), shape_str(n.input(b_input).shape)));
  Shape ab(a.begin(), a.end() - 2), bb(b.begin(), b.end() - 2);
  size_t R = std::max(ab.size(), bb.size());
  Shape ob(R, 1);
  while (ab.size() < R) ab.insert(ab.begin(), 1);
  while (bb.size() < R) bb.insert(bb.begin(), 1);
  for (size_t i = 0; i < R; ++i) {
    if (ab[i] != bb[i] && ab[i] != 1 && bb[i] != 1) n.fail("batch dimensions do not broadcast");
    ob[i] = std::max(ab[i], bb[i]);
  }
  s.batches = smp::numel(ob);
  s.a_mats = smp::numel(ab);
  s.b_mats = smp::numel(bb);
  if (n.output(0).numel() != s.batches * s.M * s.N) n.fail("output shape does not match the operands");
  s.folded = s.b_mats == 1;
  if (!s.folded) {
    s.a_off.resize(static_cast<size_t>(s.batches));
    s.b_off.resize(static_cast<size_t>(s.batches));
    for (int64_t i = 0; i < s.batches; ++i) {
      int64_t r = i, ao = 0, bo = 0, as = 1, bs = 1;
      for (size_t d = R; d-- > 0;) {
        int64_t idx = r % ob[d];
        r /= ob[d];
        ao += (ab[d] == 1 ? 0 : idx) * as;
        bo += (bb[d] == 1 ? 0 : idx) * bs;
        as *= ab[d];
        bs *= bb[d];
      }
      s.a_off[static_cast<size_t>(i)] = ao;
      s.b_off[static_cast<size_t>(i)] = bo;
    }
    s.a_unique = s.a_mats == s.batches;
    s.b_unique = s.b_mats == s.batches;
  }
}

void fwd_matmul(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const MatMulState&>(st);
  const float* A = in[0].data<float>();
  const float* B = in[1].data<float>();
  float* Y = out[0].data<float>();
  int64_t M = s.M, N = s.N, K = s.K;
  if (s.folded) {
    sgemm(false, false, s.a_mats * M, N, K, 1.0f, A, K, B, N, 0.0f, Y, N);
    return;
  }
  batched(s.batches, M * N * K, [&](int64_t i, bool serial) {
    (serial ? gemm_serial : gemm)(false, false, M, N, K, 1.0f, A + s.a_off[static_cast<size_t>(i)] * M * K, K,
                                  B + s.b_off[static_cast<size_t>(i)] * K * N, N, 0.0f, Y + i * M * N, N);
  });
}

void bwd_matmul(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const MatMulState&>(st);
  if (!io.dout[0].defined()) return;
  const float* dY = io.dout[0].data<float>();
  int64_t M = s.M, N = s.N, K = s.K;
  if (io.din[0].defined()) {  // dA = dY . B^T
    SMP_CHECK(io.in[1].defined(), "node {}: MatMul backward needs B (not declared saved)", s.node_name);
    const float* B = io.in[1].data<float>();
    float* dA = io.din[0].data<float>();
    float beta = io.accumulate[0] ? 1.0f : 0.0f;
    if (s.folded) {
      sgemm(false, true, s.a_mats * M, K, N, 1.0f, dY, N, B, N, beta, dA, K);
    } else {
      if (!s.a_unique && beta == 0) {
        std::memset(dA, 0, static_cast<size_t>(io.din[0].numel()) * sizeof(float));
        beta = 1;
      }
      auto one = [&](int64_t i, bool serial) {
        (serial ? gemm_serial : gemm)(false, true, M, K, N, 1.0f, dY + i * M * N, N, B + s.b_off[static_cast<size_t>(i)] * K * N,
                                      N, beta, dA + s.a_off[static_cast<size_t>(i)] * M * K, K);
      };
      if (s.a_unique) batched(s.batches, M * N * K, one);
      else for (int64_t i = 0; i < s.batches; ++i) one(i, false);
    }
  }
  if (io.din[1].defined()) {  // dB = A^T . dY
    SMP_CHECK(io.in[0].defined(), "node {}: MatMul backward needs A (not declared saved)", s.node_name);
    const float* A = io.in[0].data<float>();
    float* dB = io.din[1].data<float>();
    float beta = io.accumulate[1] ? 1.0f : 0.0f;
    if (s.folded) {
      sgemm(true, false, K, N, s.a_mats * M, 1.0f, A, K, dY, N, beta, dB, N);
    } else {
      if (!s.b_unique && beta == 0) {
        std::memset(dB, 0, static_cast<size_t>(io.din[1].numel()) * sizeof(float));
        beta = 1;
      }
      auto one = [&](int64_t i, bool serial) {
        (serial ? gemm_serial : gemm)(true, false, K, N, M, 1.0f, A + s.a_off[static_cast<size_t>(i)] * M * K, K, dY + i * M * N,
                                      N, beta, dB + s.b_off[static_cast<size_t>(i)] * K * N, N);
      };
      if (s.b_unique) batched(s.batches, M * N * K, one);
      else for (int64_t i = 0; i < s.batches; ++i) one(i, false);
    }
  }
}

// ---- MatMulTransB (fused Transpose(B) -> MatMul) -------------------------------------------

std::unique_ptr<KernelState> prep_matmul_tb(const NodeView& n) {
  auto s = std::make_unique<MatMulTbState>();
  if (n.num_inputs() != 2) n.fail("needs 2 inputs");
  n.require_dtype(n.input(0), {DType::F32}, "input A");
  n.require_dtype(n.input(1), {DType::F32}, "input B");
  const Shape &a = n.input(0).shape, &b = n.input(1).shape;
  if (a.size() < 2 || b.size() != 2) n.fail("A must be at least 2-D and B 2-D");
  s->K = a.back();
  s->N = b[0];
  if (b[1] != s->K) n.fail(fmt::format("inner dimensions differ: {} and {} transposed", shape_str(a), shape_str(b)));
  s->rows = smp::numel(a) / s->K;
  if (n.output(0).numel() != s->rows * s->N) n.fail("output shape does not match the operands");
  return s;
}

void fwd_matmul_tb(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const MatMulTbState&>(st);
  sgemm(false, true, s.rows, s.N, s.K, 1.0f, in[0].data<float>(), s.K, in[1].data<float>(), s.K, 0.0f,
        out[0].data<float>(), s.N);
}

void bwd_matmul_tb(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const MatMulTbState&>(st);
  if (!io.dout[0].defined()) return;
  const float* dY = io.dout[0].data<float>();
  if (io.din[0].defined()) {  // dA [rows, K] = dY . B
    SMP_CHECK(io.in[1].defined(), "node {}: MatMulTransB backward needs B (not declared saved)", s.node_name);
    sgemm(false, false, s.rows, s.K, s.N, 1.0f, dY, s.N, io.in[1].data<float>(), s.K, io.accumulate[0] ? 1.0f : 0.0f,
          io.din[0].data<float>(), s.K);
  }
  if (io.din[1].defined()) {  // dB [N, K] = dYᵀ . A, in B's own layout
    SMP_CHECK(io.in[0].defined(), "node {}: MatMulTransB backward needs A (not declared saved)", s.node_name);
    sgemm(true, false, s.N, s.K, s.rows, 1.0f, dY, s.N, io.in[0].data<float>(), s.K, io.accumulate[1] ? 1.0f : 0.0f,
          io.din[1].data<float>(), s.K);
  }
}

// ---- Gemm --------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_gemm(const NodeView& n) {
  auto s = std::make_unique<GemmState>();
  if (n.num_inputs() < 2) n.fail("needs at least 2 inputs");
  n.require_dtype(n.input(0), {DType::F32}, "input A");
  n.require_dtype(n.input(1), {DType::F32}, "input B");
  s->ta = n.node().attr_int("transA", 0) != 0;
  s->tb = n.node().attr_int("transB", 0) != 0;
  s->alpha = static_cast<float>(n.node().attr_float("alpha", 1.0));
  s->beta = static_cast<float>(n.node().attr_float("beta", 1.0));
  const Shape &a = n.input(0).shape, &b = n.input(1).shape;
  if (a.size() != 2 || b.size() != 2) n.fail("A and B must be matrices");
  s->M = s->ta ? a[1] : a[0];
  s->K = s->ta ? a[0] : a[1];
  s->N = s->tb ? b[0] : b[1];
  if ((s->tb ? b[1] : b[0]) != s->K) n.fail("inner dimensions differ");
  Shape ys{s->M, s->N};
  if (n.output(0).shape != ys) n.fail("output shape does not match the operands");
  if (n.has_input(2)) {
    n.require_dtype(n.input(2), {DType::F32}, "input C");
    if (!broadcastable_to(n.input(2).shape, ys)) n.fail("C does not broadcast to [M, N]");
    s->has_c = true;
    s->cplan = make_bcast(ys, {n.input(2).shape});
  }
  return s;
}

void fwd_gemm(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GemmState&>(st);
  float* Y = out[0].data<float>();
  float beta = 0;
  if (s.has_c && s.beta != 0) {
    const float* C = in[2].data<float>();
    bcast_rows(s.cplan, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      if (ist[0] == 1) {
        std::memcpy(Y + oo, C + off[0], static_cast<size_t>(L) * sizeof(float));
      } else {
        const float v = C[off[0]];
        for (int64_t i = 0; i < L; ++i) Y[oo + i] = v;
      }
    });
    beta = s.beta;
  }
  sgemm(s.ta, s.tb, s.M, s.N, s.K, s.alpha, in[0].data<float>(), s.ta ? s.M : s.K, in[1].data<float>(),
        s.tb ? s.K : s.N, beta, Y, s.N);
}

void bwd_gemm(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GemmState&>(st);
  if (!io.dout[0].defined()) return;
  const float* dY = io.dout[0].data<float>();
  int64_t M = s.M, N = s.N, K = s.K;
  if (io.din[0].defined()) {
    SMP_CHECK(io.in[1].defined(), "node {}: Gemm backward needs B (not declared saved)", s.node_name);
    const float* B = io.in[1].data<float>();
    float* dA = io.din[0].data<float>();
    float beta = io.accumulate[0] ? 1.0f : 0.0f;
    int64_t ldb = s.tb ? K : N;
    if (!s.ta) sgemm(false, !s.tb, M, K, N, s.alpha, dY, N, B, ldb, beta, dA, K);   // dA[M,K] = dY . opB^T
    else sgemm(s.tb, true, K, M, N, s.alpha, B, ldb, dY, N, beta, dA, M);           // dA[K,M] = opB . dY^T
  }
  if (io.din[1].defined()) {
    SMP_CHECK(io.in[0].defined(), "node {}: Gemm backward needs A (not declared saved)", s.node_name);
    const float* A = io.in[0].data<float>();
    float* dB = io.din[1].data<float>();
    float beta = io.accumulate[1] ? 1.0f : 0.0f;
    int64_t lda = s.ta ? M : K;
    if (!s.tb) sgemm(!s.ta, false, K, N, M, s.alpha, A, lda, dY, N, beta, dB, N);   // dB[K,N] = opA^T . dY
    else sgemm(true, s.ta, N, K, M, s.alpha, dY, N, A, lda, beta, dB, K);           // dB[N,K] = dY^T . opA
  }
  if (io.din.size() > 2 && io.din[2].defined()) {
    float* dC = io.din[2].data<float>();
    const Shape& cs = s.in_shapes[2];
    bool acc = io.accumulate[2];
    if (s.beta == 1.0f) {
      reduce_sum_to(dC, cs, dY, s.out_shapes[0], acc);
    } else {
      std::vector<float> t(static_cast<size_t>(smp::numel(cs)));
      reduce_sum_to(t.data(), cs, dY, s.out_shapes[0], false);
      for (size_t i = 0; i < t.size(); ++i) dC[i] = (acc ? dC[i] : 0.0f) + s.beta * t[i];
    }
  }
}

// ---- Det -----------------------------------------------------------------------------------
//
// The determinant of each M x M matrix of the last two axes: LU with partial pivoting, in double.
// Its gradient is dy times the cofactor matrix: det(A) A^-T where A is invertible; a singular
// matrix's cofactors are the determinants of its minors (up to 32 x 32).

std::unique_ptr<KernelState> prep_det(const NodeView& n) {
  auto s = std::make_unique<DetState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  const Shape& x = n.input(0).shape;
  if (x.size() < 2 || x[x.size() - 1] != x[x.size() - 2])
    n.fail(fmt::format("input of shape {}: square matrices in the last two axes needed", shape_str(x)));
  s->M = x.back();
  s->batch = prod(x, 0, x.size() - 2);
  return s;
}

namespace {

constexpr int64_t kMaxMinorsDet = 32;

// LU of the M x M row-major `a` in place (PA = LU, L's unit diagonal implied); the rows' order
// in `perm`. Returns the determinant (0 at the first zero pivot, `a` then incomplete).
double lu(std::vector<double>& a, int64_t M, std::vector<int64_t>& perm) {
  perm.resize(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) perm[static_cast<size_t>(i)] = i;
  double det = 1;
  for (int64_t k = 0; k < M; ++k) {
    int64_t piv = k;
    for (int64_t i = k + 1; i < M; ++i)
      if (std::fabs(a[static_cast<size_t>(i * M + k)]) > std::fabs(a[static_cast<size_t>(piv * M + k)])) piv = i;
    const double d = a[static_cast<size_t>(piv * M + k)];
    if (d == 0.0) return 0.0;
    if (piv != k) {
      for (int64_t j = 0; j < M; ++j) std::swap(a[static_cast<size_t>(k * M + j)], a[static_cast<size_t>(piv * M + j)]);
      std::swap(perm[static_cast<size_t>(k)], perm[static_cast<size_t>(piv)]);
      det = -det;
    }
    det *= d;
    for (int64_t i = k + 1; i < M; ++i) {
      double& f = a[static_cast<size_t>(i * M + k)];
      f /= d;
      for (int64_t j = k + 1; j < M; ++j) a[static_cast<size_t>(i * M + j)] -= f * a[static_cast<size_t>(k * M + j)];
    }
  }
  return det;
}

// The cofactor matrix of A (M x M, row-major) into `c`; false for a singular A over
// kMaxMinorsDet x kMaxMinorsDet.
bool cofactors(const float* A, int64_t M, std::vector<double>& c) {
  const size_t mm = static_cast<size_t>(M * M);
  c.assign(mm, 0.0);
  if (M == 1) {
    c[0] = 1.0;
    return true;
  }
  std::vector<double> a(A, A + mm);
  std::vector<int64_t> perm;
  const double det = lu(a, M, perm);
  if (det != 0.0) {
    // row i of C = det x column i of A^-1: solve A x = e_i (L U x = P e_i)
    std::vector<double> x(static_cast<size_t>(M));
    for (int64_t i = 0; i < M; ++i) {
      for (int64_t k = 0; k < M; ++k) {
        double v = perm[static_cast<size_t>(k)] == i ? 1.0 : 0.0;
        for (int64_t j = 0; j < k; ++j) v -= a[static_cast<size_t>(k * M + j)] * x[static_cast<size_t>(j)];
        x[static_cast<size_t>(k)] = v;
      }
      for (int64_t k = M - 1; k >= 0; --k) {
        double v = x[static_cast<size_t>(k)];
        for (int64_t j = k + 1; j < M; ++j) v -= a[static_cast<size_t>(k * M + j)] * x[static_cast<size_t>(j)];
        x[static_cast<size_t>(k)] = v / a[static_cast<size_t>(k * M + k)];
      }
      for (int64_t j = 0; j < M; ++j) c[static_cast<size_t>(i * M + j)] = det * x[static_cast<size_t>(j)];
    }
    return true;
  }
  if (M > kMaxMinorsDet) return false;
  std::vector<double> minor(static_cast<size_t>((M - 1) * (M - 1)));
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < M; ++j) {
      size_t t = 0;
      for (int64_t r = 0; r < M; ++r)
        for (int64_t q = 0; q < M; ++q)
          if (r != i && q != j) minor[t++] = A[r * M + q];
      c[static_cast<size_t>(i * M + j)] = ((i + j) % 2 ? -1.0 : 1.0) * lu(minor, M - 1, perm);
    }
  return true;
}

}  // namespace

void fwd_det(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const DetState&>(st);
  const float* A = in[0].data<float>();
  float* Y = out[0].data<float>();
  const int64_t mm = s.M * s.M;
  pfor(s.batch, std::max<int64_t>(1, kGrain / std::max<int64_t>(mm * s.M, 1)), [&](int64_t b0, int64_t b1) {
    std::vector<double> a;
    std::vector<int64_t> perm;
    for (int64_t b = b0; b < b1; ++b) {
      a.assign(A + b * mm, A + (b + 1) * mm);
      Y[b] = static_cast<float>(lu(a, s.M, perm));
    }
  });
}

void bwd_det(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const DetState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined(), "node {}: Det backward needs X (not declared saved)", s.node_name);
  const float *A = io.in[0].data<float>(), *dY = io.dout[0].data<float>();
  float* dA = io.din[0].data<float>();
  const bool acc = io.accumulate[0];
  const int64_t mm = s.M * s.M;
  std::atomic<bool> too_large{false};
  pfor(s.batch, 1, [&](int64_t b0, int64_t b1) {
    std::vector<double> c;
    for (int64_t b = b0; b < b1; ++b) {
      if (!cofactors(A + b * mm, s.M, c)) {
        too_large = true;
        return;
      }
      float* d = dA + b * mm;
      for (int64_t i = 0; i < mm; ++i) {
        const float v = static_cast<float>(dY[b] * c[static_cast<size_t>(i)]);
        d[i] = acc ? d[i] + v : v;
      }
    }
  });
  if (too_large)
    throw_bad_input("node " + s.node_name + " (Det)", fmt::format("the gradient of a singular {} x {} matrix is not supported (its cofactors are computed from minors up to {} x {})",
                                                                  s.M, s.M, kMaxMinorsDet, kMaxMinorsDet));
}

}  // namespace smp::runtime::cpu
