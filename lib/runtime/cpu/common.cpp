#include "runtime/cpu/common.hpp"

#include <cblas.h>

namespace smp::runtime::cpu {

std::vector<int64_t> strides_of(const Shape& s) {
  std::vector<int64_t> st(s.size());
  int64_t k = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = k;
    k *= s[i];
  }
  return st;
}

bool broadcastable_to(const Shape& in, const Shape& out) {
  if (in.size() > out.size()) return false;
  size_t off = out.size() - in.size();
  for (size_t i = 0; i < in.size(); ++i)
    if (in[i] != 1 && in[i] != out[i + off]) return false;
  return true;
}

Bcast make_bcast(const Shape& out, const std::vector<Shape>& ins) {
  size_t R = out.size(), n = ins.size();
  SMP_CHECK(n <= 3, "broadcast of more than 3 inputs");
  // per input strides aligned to out (0 for broadcast dims)
  std::vector<std::vector<int64_t>> st(n, std::vector<int64_t>(R, 0));
  for (size_t k = 0; k < n; ++k) {
    const Shape& s = ins[k];
    SMP_CHECK(broadcastable_to(s, out), "{} does not broadcast to {}", shape_str(s), shape_str(out));
    size_t off = R - s.size();
    int64_t stride = 1;
    for (size_t i = s.size(); i-- > 0;) {
      st[k][i + off] = s[i] == 1 ? 0 : stride;
      stride *= s[i];
    }
  }
  Bcast b;
  b.total = smp::numel(out);
  b.st.assign(n, {});
  // drop size-1 dims, then merge
  std::vector<int64_t> dims;
  std::vector<std::vector<int64_t>> mst(n);
  for (size_t i = 0; i < R; ++i) {
    if (out[i] == 1) continue;
    if (!dims.empty()) {
      bool merge = true;
      for (size_t k = 0; k < n; ++k) {
        int64_t prev = mst[k].back(), cur = st[k][i];
        if (!((prev == 0 && cur == 0) || (cur != 0 && prev == cur * out[i]))) merge = false;
      }
      if (merge) {
        dims.back() *= out[i];
        for (size_t k = 0; k < n; ++k) mst[k].back() = st[k][i];
        continue;
      }
    }
    dims.push_back(out[i]);
    for (size_t k = 0; k < n; ++k) mst[k].push_back(st[k][i]);
  }
  if (dims.empty()) {
    dims.push_back(b.total == 0 ? 0 : 1);
    for (size_t k = 0; k < n; ++k) mst[k].push_back(0);
  }
  b.dims = dims;
  b.st = mst;
  return b;
}

void reduce_sum_to(float* dst, const Shape& dst_shape, const float* src, const Shape& src_shape, bool accumulate) {
  int64_t nd = smp::numel(dst_shape), ns = smp::numel(src_shape);
  if (nd == ns) {
    store(dst, src, ns, accumulate);
    return;
  }
  if (!accumulate) std::memset(dst, 0, static_cast<size_t>(nd) * sizeof(float));
  if (ns == 0) return;
  Bcast b = make_bcast(src_shape, {dst_shape});
  int64_t rows = b.rows(), L = b.inner(), ist = b.st[0].back();
  int nt = pool_threads();
  auto run = [&](float* out, int64_t r0, int64_t r1) {
    int64_t off[3];
    for (int64_t r = r0; r < r1; ++r) {
      b.row_offsets(r, off);
      const float* s = src + r * L;
      float* d = out + off[0];
      if (ist == 0) {
        float acc = 0;
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < L; ++i) acc += s[i];
        *d += acc;
      } else {
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) d[i] += s[i];
      }
    }
  };
  if (nt <= 1 || ns < 4 * kGrain || nd * nt > (int64_t{1} << 22) || rows < nt) {
    run(dst, 0, rows);
    return;
  }
  // per-thread partial sums, then added up
  std::vector<float> part(static_cast<size_t>(nd * nt), 0.0f);
  parallel_region(nt, [&](int64_t t, int64_t c) {
    run(part.data() + t * nd, rows * t / c, rows * (t + 1) / c);
  });
  for (int t = 0; t < nt; ++t) {
    const float* p = part.data() + t * nd;
#pragma omp simd
    for (int64_t i = 0; i < nd; ++i) dst[i] += p[i];
  }
}

void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == 0 ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, static_cast<int>(M),
              static_cast<int>(N), static_cast<int>(K), alpha, A, static_cast<int>(lda), B, static_cast<int>(ldb), beta, C,
              static_cast<int>(ldc));
}

void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc) {
  int nt = pool_threads();
  if (nt <= 1 || pool_in_parallel() || M * N * K < (int64_t{1} << 18) || K <= 0) {
    gemm_serial(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  bool by_rows = M >= N;
  int64_t len = by_rows ? M : N, unit = by_rows ? 8 : 16;
  int64_t parts = std::max<int64_t>(1, std::min<int64_t>(nt, len / unit));
  parallel_region(static_cast<int>(parts), [&](int64_t t, int64_t c) {
    int64_t b = (len * t / c) / unit * unit, e = t + 1 == c ? len : (len * (t + 1) / c) / unit * unit;
    if (e > b) {
      if (by_rows) {
        const float* a = ta ? A + b : A + b * lda;
        gemm_serial(ta, tb, e - b, N, K, alpha, a, lda, B, ldb, beta, C + b * ldc, ldc);
      } else {
        const float* bb = tb ? B + b * ldb : B + b;
        gemm_serial(ta, tb, M, e - b, K, alpha, A, lda, bb, ldb, beta, C + b, ldc);
      }
    }
  });
}

void fill_shapes(KernelState& s, const NodeView& n) {
  s.node_name = n.node().name;
  s.in_shapes.clear();
  s.in_dtypes.clear();
  s.out_shapes.clear();
  s.out_dtypes.clear();
  for (int i = 0; i < n.num_inputs(); ++i) {
    s.in_shapes.push_back(n.has_input(i) ? n.input(i).shape : Shape{});
    s.in_dtypes.push_back(n.has_input(i) ? n.input(i).dtype : DType::Undefined);
  }
  for (int i = 0; i < n.num_outputs(); ++i) {
    s.out_shapes.push_back(n.has_output(i) ? n.output(i).shape : Shape{});
    s.out_dtypes.push_back(n.has_output(i) ? n.output(i).dtype : DType::Undefined);
  }
}

std::vector<int64_t> tensor_ints(const Tensor& t) {
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  if (t.dtype() == DType::I64) {
    const int64_t* p = t.data<int64_t>();
    for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = p[i];
  } else if (t.dtype() == DType::I32) {
    const int32_t* p = t.data<int32_t>();
    for (int64_t i = 0; i < t.numel(); ++i) v[static_cast<size_t>(i)] = p[i];
  } else {
    SMP_CHECK(false, "expected integer tensor, got {}", t.str());
  }
  return v;
}

}  // namespace smp::runtime::cpu
