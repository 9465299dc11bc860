// Helpers shared by the CPU kernels: parallel loops, broadcasting plans, reductions to a shape.
#pragma once

#include "runtime/backend.hpp"
#include "runtime/cpu/bcast.hpp"
#include "runtime/cpu/pool.hpp"
#include "runtime/cpu/states.hpp"
#include "runtime/cpu/vmath.hpp"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

namespace smp::runtime::cpu {

// f(begin, end) over [0, n) split across the pool's threads; serial below `grain` elements.
template <class F>
inline void pfor(int64_t n, int64_t grain, F&& f) {
  if (n <= 0) return;
  int nt = pool_threads();
  if (n <= grain || nt <= 1 || pool_in_parallel()) {
    f(int64_t{0}, n);
    return;
  }
  int64_t chunks = std::min<int64_t>(nt, (n + grain - 1) / grain);
  parallel_region(static_cast<int>(chunks), [&](int64_t t, int64_t c) {
    int64_t b = n * t / c, e = n * (t + 1) / c;
    if (b < e) f(b, e);
  });
}

inline constexpr int64_t kGrain = 16384;

// f(out_offset, in_offsets[], len, in_inner_strides[]) for each row, rows spread over threads.
template <class F>
inline void bcast_rows(const Bcast& b, F&& f) {
  int64_t rows = b.rows(), L = b.inner();
  size_t n = b.st.size();
  int64_t inner_st[3] = {0, 0, 0};
  for (size_t k = 0; k < n; ++k) inner_st[k] = b.st[k].back();
  pfor(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(L, 1)), [&](int64_t r0, int64_t r1) {
    int64_t off[3];
    for (int64_t r = r0; r < r1; ++r) {
      b.row_offsets(r, off);
      f(r * L, off, L, inner_st);
    }
  });
}

// dst (shape dst_shape, broadcastable to src_shape) = or += the sum of src over broadcast axes.
void reduce_sum_to(float* dst, const Shape& dst_shape, const float* src, const Shape& src_shape, bool accumulate);

// dst = or += src, n floats.
inline void store(float* dst0, const float* src0, int64_t n, bool accumulate) {
  pfor(n, kGrain, [dst0, src0, accumulate](int64_t b, int64_t e) {
    float* __restrict dst = dst0;
    const float* __restrict src = src0;
    if (accumulate) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) dst[i] += src[i];
    } else {
      std::memcpy(dst + b, src + b, static_cast<size_t>(e - b) * sizeof(float));
    }
  });
}

// MatMul's operand layout (numpy semantics: batch axes broadcast, a 1-D A is a row, a 1-D B a
// column) of inputs a_input and b_input, checked against the node's output (matmul.cpp).
void matmul_layout(const NodeView& n, int a_input, int b_input, MatMulState& s);

// Fills a state's shapes from the node (the executor also does this; kernels' prepare may use it).
void fill_shapes(KernelState& s, const NodeView& n);

// Scratch buffer from the backend (counted in its memory).
inline Tensor scratch(ExecContext& ctx, DType dt, const Shape& shape) { return ctx.backend->empty(dt, shape); }

// C[M,N] = alpha * op(A) op(B) + beta * C, row-major. gemm_serial runs in the calling thread;
// gemm splits the output's rows (or columns) across the OpenMP threads, each calling a
// single-threaded OpenBLAS sgemm (OpenBLAS's own threads stay off: one thread pool only).
void gemm_serial(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
                 const float* B, int64_t ldb, float beta, float* C, int64_t ldc);
void gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda, const float* B,
          int64_t ldb, float beta, float* C, int64_t ldc);

}  // namespace smp::runtime::cpu
