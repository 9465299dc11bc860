// Reductions, ArgMax, Softmax / LogSoftmax, LayerNormalization, BatchNormalization. Every sum
// runs in a fixed order (per-thread loops, warp and block trees, partial sums combined in index
// order), so results repeat bit for bit; statistics are computed in float32 (BatchNorm's in
// float64, as the CPU kernel does).
#include "graph/op_registry.hpp"
#include "runtime/cuda/common.cuh"

#include <algorithm>
#include <cfloat>

namespace smp::runtime::cuda {

namespace {

using graph::Op;
constexpr int kSum = static_cast<int>(Op::ReduceSum), kMean = static_cast<int>(Op::ReduceMean),
              kRMax = static_cast<int>(Op::ReduceMax), kRMin = static_cast<int>(Op::ReduceMin),
              kProd = static_cast<int>(Op::ReduceProd);

// The input offset of index i over n dims (row-major) at the given strides.
__device__ __forceinline__ int64_t dim_offset(int n, const int64_t* dims, const int64_t* str, int64_t i) {
  if (n == 1) return i * str[0];
  int64_t off = 0;
  for (int d = n - 1; d >= 0; --d) {
    const int64_t q = idiv(i, dims[d]);
    off += (i - q * dims[d]) * str[d];
    i = q;
  }
  return off;
}
// Output o's first input element, and the k-th element of its reduction.
__device__ __forceinline__ int64_t koff(const ReduceGeom& g, int64_t o) { return dim_offset(g.nk, g.kdims, g.kstr, o); }
__device__ __forceinline__ int64_t roff(const ReduceGeom& g, int64_t k) { return dim_offset(g.nr, g.rdims, g.rstr, k); }

template <class A>
__device__ __forceinline__ A rinit(int op) {
  if (op == kProd) return A(1);
  if (op == kRMax) {
    if constexpr (std::is_same_v<A, float>) return -FLT_MAX;
    else return INT64_MIN;
  }
  if (op == kRMin) {
    if constexpr (std::is_same_v<A, float>) return FLT_MAX;
    else return INT64_MAX;
  }
  return A(0);
}
template <class A>
__device__ __forceinline__ A rcombine(int op, A a, A v) {
  if (op == kProd) return a * v;
  if (op == kRMax) return v > a ? v : a;
  if (op == kRMin) return v < a ? v : a;
  return a + v;
}
template <class A>
__device__ __forceinline__ A rload(const void* x, int xt, int64_t i) {
  if constexpr (std::is_same_v<A, float>) return ldf(x, xt, i);
  else return ldi(x, xt, i);
}
template <class A>
__device__ __forceinline__ void rstore(int op, void* y, int yt, int64_t o, A a, int64_t rcount, bool acc) {
  if constexpr (std::is_same_v<A, float>) {
    if (op == kMean) a = a / static_cast<float>(rcount);
    put(y, yt, o, a, acc);
  } else {
    static_cast<int64_t*>(y)[o] = acc ? static_cast<int64_t*>(y)[o] + a : a;
  }
}

template <class A>
__device__ __forceinline__ A warp_combine(int op, A v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = rcombine<A>(op, v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// One warp per output; lanes stride over the reduced elements.
template <class A>
__global__ void reduce_warp_k(int op, ReduceGeom g, void* y, int yt, bool acc, const void* x, int xt) {
  const int64_t o = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (o >= g.nout) return;
  const int64_t base = koff(g, o);
  A a = rinit<A>(op);
  for (int64_t k = lane; k < g.rcount; k += 32) a = rcombine<A>(op, a, rload<A>(x, xt, base + roff(g, k)));
  a = warp_combine<A>(op, a);
  if (lane == 0) rstore<A>(op, y, yt, o, a, g.rcount, acc);
}

// One block per output.
template <class A>
__global__ void reduce_block_k(int op, ReduceGeom g, void* y, int yt, bool acc, const void* x, int xt) {
  __shared__ A sh[32];
  const int64_t o = blockIdx.x;
  const int64_t base = koff(g, o);
  A a = rinit<A>(op);
  for (int64_t k = threadIdx.x; k < g.rcount; k += blockDim.x) a = rcombine<A>(op, a, rload<A>(x, xt, base + roff(g, k)));
  a = warp_combine<A>(op, a);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) sh[warp] = a;
  __syncthreads();
  if (warp == 0) {
    A r = lane < static_cast<int>(blockDim.x >> 5) ? sh[lane] : rinit<A>(op);
    r = warp_combine<A>(op, r);
    if (lane == 0) rstore<A>(op, y, yt, o, r, g.rcount, acc);
  }
}

// One thread per (part, output): the outputs are contiguous kept elements, so neighbouring
// threads read neighbouring addresses. parts > 1: partial results, combined by reduce_final_k.
template <class A>
__global__ void reduce_thread_k(int op, ReduceGeom g, int parts, void* y, int yt, bool acc, const void* x, int xt, float* part) {
  const int64_t total = g.nout * parts;
  SMP_GRID_LOOP(t, total) {
    const int64_t p = idiv(t, g.nout), o = t - p * g.nout;
    const int64_t k0 = g.rcount * p / parts, k1 = g.rcount * (p + 1) / parts;
    const int64_t base = koff(g, o);
    A a = rinit<A>(op);
    for (int64_t k = k0; k < k1; ++k) a = rcombine<A>(op, a, rload<A>(x, xt, base + roff(g, k)));
    if (parts == 1) rstore<A>(op, y, yt, o, a, g.rcount, acc);
    else if constexpr (std::is_same_v<A, float>) part[p * g.nout + o] = a;
  }
}

__global__ void reduce_final_k(int op, int64_t nout, int64_t rcount, int parts, void* y, int yt, bool acc, const float* part) {
  SMP_GRID_LOOP(o, nout) {
    float a = rinit<float>(op);
    for (int p = 0; p < parts; ++p) a = rcombine<float>(op, a, part[static_cast<int64_t>(p) * nout + o]);
    rstore<float>(op, y, yt, o, a, rcount, acc);
  }
}

int reduce_parts(const ReduceGeom& g, int sm_count) {
  // split the reduced elements when there are too few outputs to fill the device
  const int64_t want = 4LL * std::max(sm_count, 1) * kThreads;
  if (g.nout >= want || g.rcount < 256) return 1;
  int64_t p = (want + g.nout - 1) / g.nout;
  p = std::min<int64_t>(p, g.rcount / 64);
  return static_cast<int>(std::clamp<int64_t>(p, 1, 1024));
}

bool inner_contiguous(const ReduceGeom& g) { return g.nr >= 1 && g.rstr[g.nr - 1] == 1; }

__global__ void reduce_grad_k(int op, Strided s, float k, void* dx, int dt, bool acc, const void* dy, int dyt, const void* x,
                              int xt, const void* y, int yt) {
  SMP_GRID_LOOP(i, s.total) {
    int64_t off[2];
    offsets<2>(s, i, off);
    float v;
    if (op == kSum || op == kMean) v = ldf(dy, dyt, off[1]) * k;
    else v = ldf(x, xt, i) == ldf(y, yt, off[1]) ? ldf(dy, dyt, off[1]) : 0.0f;
    put(dx, dt, i, v, acc);
  }
}

__global__ void reduce_prod_grad_k(ReduceGeom g, void* dx, int dt, bool acc, const void* dy, int dyt, const void* x, int xt) {
  SMP_GRID_LOOP(o, g.nout) {
    const int64_t base = koff(g, o);
    int zeros = 0;
    double nz = 1;
    for (int64_t k = 0; k < g.rcount; ++k) {
      float v = ldf(x, xt, base + roff(g, k));
      if (v == 0.0f) ++zeros;
      else nz *= v;
    }
    const float gy = ldf(dy, dyt, o);
    for (int64_t k = 0; k < g.rcount; ++k) {
      const int64_t off = base + roff(g, k);
      const float xv = ldf(x, xt, off);
      float v = zeros == 0 ? static_cast<float>(gy * nz / xv) : (zeros == 1 && xv == 0.0f ? static_cast<float>(gy * nz) : 0.0f);
      put(dx, dt, off, v, acc);
    }
  }
}

template <class A>
__global__ void argmax_k(int64_t outer, int64_t D, int64_t inner, bool last, int64_t* y, const void* x, int xt) {
  SMP_GRID_LOOP(t, outer * inner) {
    const int64_t o = idiv(t, inner), i = t - o * inner;
    const int64_t base = o * D * inner + i;
    int64_t best = 0;
    A b = rload<A>(x, xt, base);
    for (int64_t j = 1; j < D; ++j) {
      A v = rload<A>(x, xt, base + j * inner);
      if (v > b || (last && v == b)) {
        best = j;
        b = v;
      }
    }
    y[t] = best;
  }
}

// ---- softmax -------------------------------------------------------------------------------

// Rows of D contiguous elements: `group` threads per row (32: a warp, else the block).
template <int GROUP>
__device__ __forceinline__ float group_max(float v, float* sh) {
  if constexpr (GROUP == 32) return warp_max(v);
  else return block_max(v, sh);
}
template <int GROUP>
__device__ __forceinline__ float group_sum(float v, float* sh) {
  if constexpr (GROUP == 32) return warp_sum(v);
  else return block_sum(v, sh);
}

template <int GROUP>
__global__ void softmax_rows_k(bool lg, int64_t rows, int64_t D, void* y, int yt, const void* x, int xt) {
  __shared__ float sh[32];
  const int64_t r = GROUP == 32 ? (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5 : blockIdx.x;
  const int t = GROUP == 32 ? (threadIdx.x & 31) : threadIdx.x;
  if (GROUP == 32 && r >= rows) return;
  const int64_t base = r * D;
  float m = -INFINITY;
  for (int64_t j = t; j < D; j += GROUP) m = fmaxf(m, ldf(x, xt, base + j));
  m = group_max<GROUP>(m, sh);
  float s = 0;
  for (int64_t j = t; j < D; j += GROUP) s += vexp(ldf(x, xt, base + j) - m);
  s = group_sum<GROUP>(s, sh);
  if (lg) {
    const float ls = logf(s);
    for (int64_t j = t; j < D; j += GROUP) stf(y, yt, base + j, (ldf(x, xt, base + j) - m) - ls);
  } else {
    const float inv = 1.0f / s;
    for (int64_t j = t; j < D; j += GROUP) stf(y, yt, base + j, vexp(ldf(x, xt, base + j) - m) * inv);
  }
}

__global__ void softmax_strided_k(bool lg, int64_t outer, int64_t D, int64_t inner, void* y, int yt, const void* x, int xt) {
  SMP_GRID_LOOP(t, outer * inner) {
    const int64_t base = idiv(t, inner) * D * inner + imod(t, inner);
    float m = -INFINITY;
    for (int64_t j = 0; j < D; ++j) m = fmaxf(m, ldf(x, xt, base + j * inner));
    float s = 0;
    for (int64_t j = 0; j < D; ++j) s += expf(ldf(x, xt, base + j * inner) - m);
    if (lg) {
      const float ls = logf(s);
      for (int64_t j = 0; j < D; ++j) stf(y, yt, base + j * inner, (ldf(x, xt, base + j * inner) - m) - ls);
    } else {
      for (int64_t j = 0; j < D; ++j) stf(y, yt, base + j * inner, expf(ldf(x, xt, base + j * inner) - m) / s);
    }
  }
}

template <int GROUP>
__global__ void softmax_grad_rows_k(bool lg, int64_t rows, int64_t D, void* dx, int dt, bool acc, const void* y, int yt,
                                    const void* dy, int dyt) {
  __shared__ float sh[32];
  const int64_t r = GROUP == 32 ? (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5 : blockIdx.x;
  const int t = GROUP == 32 ? (threadIdx.x & 31) : threadIdx.x;
  if (GROUP == 32 && r >= rows) return;
  const int64_t base = r * D;
  float s = 0;
  for (int64_t j = t; j < D; j += GROUP) s += lg ? ldf(dy, dyt, base + j) : ldf(dy, dyt, base + j) * ldf(y, yt, base + j);
  s = group_sum<GROUP>(s, sh);
  for (int64_t j = t; j < D; j += GROUP) {
    const float g = ldf(dy, dyt, base + j), yv = ldf(y, yt, base + j);
    put(dx, dt, base + j, lg ? g - vexp(yv) * s : yv * (g - s), acc);
  }
}

__global__ void softmax_grad_strided_k(bool lg, int64_t outer, int64_t D, int64_t inner, void* dx, int dt, bool acc,
                                       const void* y, int yt, const void* dy, int dyt) {
  SMP_GRID_LOOP(t, outer * inner) {
    const int64_t base = idiv(t, inner) * D * inner + imod(t, inner);
    float s = 0;
    for (int64_t j = 0; j < D; ++j) {
      const int64_t i = base + j * inner;
      s += lg ? ldf(dy, dyt, i) : ldf(dy, dyt, i) * ldf(y, yt, i);
    }
    for (int64_t j = 0; j < D; ++j) {
      const int64_t i = base + j * inner;
      const float g = ldf(dy, dyt, i), yv = ldf(y, yt, i);
      put(dx, dt, i, lg ? g - vexp(yv) * s : yv * (g - s), acc);
    }
  }
}

// ---- LayerNormalization --------------------------------------------------------------------

template <int GROUP>
__device__ __forceinline__ void row_stats(const void* x, int xt, int64_t base, int64_t D, float eps, int t, float* sh, float& mean,
                                          float& rstd) {
  float s = 0;
  for (int64_t j = t; j < D; j += GROUP) s += ldf(x, xt, base + j);
  const float m = group_sum<GROUP>(s, sh) / static_cast<float>(D);
  float v = 0;
  for (int64_t j = t; j < D; j += GROUP) {
    const float d = ldf(x, xt, base + j) - m;
    v += d * d;
  }
  v = group_sum<GROUP>(v, sh) / static_cast<float>(D);
  mean = m;
  rstd = 1.0f / sqrtf(v + eps);
}

template <int GROUP>
__global__ void layernorm_k(int64_t rows, int64_t D, float eps, void* y, int yt, const void* x, int xt, const void* g, int gt,
                            const void* b, int bt, void* mo, int mt, void* ro, int rt) {
  __shared__ float sh[32];
  const int64_t r = GROUP == 32 ? (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5 : blockIdx.x;
  const int t = GROUP == 32 ? (threadIdx.x & 31) : threadIdx.x;
  if (GROUP == 32 && r >= rows) return;
  const int64_t base = r * D;
  float m, rs;
  row_stats<GROUP>(x, xt, base, D, eps, t, sh, m, rs);
  for (int64_t j = t; j < D; j += GROUP) {
    float v = (ldf(x, xt, base + j) - m) * rs * ldf(g, gt, j);
    if (b) v += ldf(b, bt, j);
    stf(y, yt, base + j, v);
  }
  if (t == 0) {
    if (mo) stf(mo, mt, r, m);
    if (ro) stf(ro, rt, r, rs);
  }
}

// dX per row; every row's mean and 1/std into `stats` (2 floats per row) for the column sums.
template <int GROUP>
__global__ void layernorm_grad_rows_k(int64_t rows, int64_t D, float eps, const void* x, int xt, const void* g, int gt,
                                      const void* dy, int dyt, void* dx, int dxt, bool accx, float* stats) {
  __shared__ float sh[32];
  const int64_t r = GROUP == 32 ? (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5 : blockIdx.x;
  const int t = GROUP == 32 ? (threadIdx.x & 31) : threadIdx.x;
  if (GROUP == 32 && r >= rows) return;
  const int64_t base = r * D;
  float m, rs;
  row_stats<GROUP>(x, xt, base, D, eps, t, sh, m, rs);
  if (t == 0) {
    stats[2 * r] = m;
    stats[2 * r + 1] = rs;
  }
  if (!dx) return;
  float s1 = 0, s2 = 0;
  for (int64_t j = t; j < D; j += GROUP) {
    const float dxh = ldf(dy, dyt, base + j) * ldf(g, gt, j);
    s1 += dxh;
    s2 += dxh * (ldf(x, xt, base + j) - m) * rs;
  }
  s1 = group_sum<GROUP>(s1, sh) / static_cast<float>(D);
  s2 = group_sum<GROUP>(s2, sh) / static_cast<float>(D);
  for (int64_t j = t; j < D; j += GROUP) {
    const float xv = ldf(x, xt, base + j);
    put(dx, dxt, base + j, rs * (ldf(dy, dyt, base + j) * ldf(g, gt, j) - s1 - (xv - m) * rs * s2), accx);
  }
}

// Column sums of dy * xhat and dy over a chunk of rows each: part[c][j], part[chunks + c][j].
__global__ void layernorm_grad_cols_k(int64_t rows, int64_t D, int chunks, const void* x, int xt, const void* dy, int dyt,
                                      const float* stats, float* part) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int c = blockIdx.y;
  if (j >= D) return;
  const int64_t r0 = rows * c / chunks, r1 = rows * (c + 1) / chunks;
  float sg = 0, sb = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const float g = ldf(dy, dyt, r * D + j);
    sg += g * (ldf(x, xt, r * D + j) - stats[2 * r]) * stats[2 * r + 1];
    sb += g;
  }
  part[static_cast<int64_t>(c) * D + j] = sg;
  part[static_cast<int64_t>(chunks + c) * D + j] = sb;
}

__global__ void layernorm_grad_final_k(int64_t D, int chunks, const float* part, void* dg, int dgt, bool accg, void* db, int dbt,
                                       bool accb) {
  SMP_GRID_LOOP(j, D) {
    float sg = 0, sb = 0;
    for (int c = 0; c < chunks; ++c) {
      sg += part[static_cast<int64_t>(c) * D + j];
      sb += part[static_cast<int64_t>(chunks + c) * D + j];
    }
    if (dg) put(dg, dgt, j, sg, accg);
    if (db) put(db, dbt, j, sb, accb);
  }
}

int ln_chunks(int64_t rows) { return static_cast<int>(std::clamp<int64_t>(rows / 32, 1, 256)); }

// ---- BatchNormalization --------------------------------------------------------------------

// Per channel, in one pass and in double (as the CPU's statistics): sum x, sum x^2 and, for the
// gradient, sum dy and sum dy * x. Block (c, p) covers part p of channel c's N * HW elements;
// bn_finalize_k adds the parts in order. part: [C][P][4].
__global__ void bn_partial_k(int64_t N, int64_t C, int64_t HW, int parts, const void* x, int xt, const void* dy, int dyt,
                             double* part) {
  __shared__ double sh[32];
  const int64_t c = blockIdx.x, p = blockIdx.y;
  const int64_t cnt = N * HW, k0 = cnt * p / parts, k1 = cnt * (p + 1) / parts;
  double s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  for (int64_t k = k0 + threadIdx.x; k < k1; k += blockDim.x) {
    const int64_t n = idiv(k, HW);
    const int64_t i = (n * C + c) * HW + (k - n * HW);
    const double xv = ldf(x, xt, i);
    s0 += xv;
    s1 += xv * xv;
    if (dy) {
      const double g = ldf(dy, dyt, i);
      s2 += g;
      s3 += g * xv;
    }
  }
  s0 = block_sum(s0, sh);
  s1 = block_sum(s1, sh);
  if (dy) {
    s2 = block_sum(s2, sh);
    s3 = block_sum(s3, sh);
  }
  if (threadIdx.x == 0) {
    double* o = part + (c * parts + p) * 4;
    o[0] = s0;
    o[1] = s1;
    o[2] = s2;
    o[3] = s3;
  }
}

// Per channel: mean and 1/std (of the batch when training, else the running ones), and for the
// gradient sum(dy) and sum(dy * xhat).
__global__ void bn_finalize_k(int64_t C, int parts, int64_t cnt, float eps, bool training, const double* part, const void* mean_in,
                              int mt, const void* var, int vt, float* mean, float* rstd, float* sdy, float* sdx) {
  SMP_GRID_LOOP(c, C) {
    double s[4] = {0, 0, 0, 0};
    for (int p = 0; p < parts; ++p)
      for (int j = 0; j < 4; ++j) s[j] += part[(c * parts + p) * 4 + j];
    double m, r;
    if (training) {
      m = s[0] / static_cast<double>(cnt);
      const double v = fmax(s[1] / static_cast<double>(cnt) - m * m, 0.0);
      r = 1.0 / sqrt(v + eps);
    } else {
      m = ldf(mean_in, mt, c);
      r = 1.0f / sqrtf(ldf(var, vt, c) + eps);
    }
    mean[c] = static_cast<float>(m);
    rstd[c] = static_cast<float>(r);
    if (sdy) {
      sdy[c] = static_cast<float>(s[2]);
      sdx[c] = static_cast<float>((s[3] - static_cast<double>(mean[c]) * s[2]) * static_cast<double>(rstd[c]));
    }
  }
}

__global__ void bn_apply_k(int64_t N, int64_t C, int64_t HW, void* y, int yt, const void* x, int xt, const void* g, int gt,
                           const void* b, int bt, const float* mean, const float* rstd) {
  SMP_GRID_LOOP(i, N * C * HW) {
    const int64_t c = imod(idiv(i, HW), C);
    const float a = ldf(g, gt, c) * rstd[c], bb = ldf(b, bt, c) - mean[c] * a;
    stf(y, yt, i, ldf(x, xt, i) * a + bb);
  }
}

__global__ void bn_grad_params_k(int64_t C, const float* sdy, const float* sdx, void* dg, int dgt, bool accg, void* db, int dbt,
                                 bool accb) {
  SMP_GRID_LOOP(c, C) {
    if (dg) put(dg, dgt, c, sdx[c], accg);
    if (db) put(db, dbt, c, sdy[c], accb);
  }
}

__global__ void bn_grad_x_k(int64_t N, int64_t C, int64_t HW, bool training, const void* x, int xt, const void* g, int gt,
                            const void* dy, int dyt, const float* mean, const float* rstd, const float* sdy, const float* sdx,
                            void* dx, int dxt, bool acc) {
  const float cnt = static_cast<float>(N * HW);
  SMP_GRID_LOOP(i, N * C * HW) {
    const int64_t c = imod(idiv(i, HW), C);
    const float rs = rstd[c], m = mean[c], k = ldf(g, gt, c) * rs;
    const float a = sdy[c] / cnt, b = sdx[c] / cnt;
    const float gv = ldf(dy, dyt, i);
    const float v = training ? k * (gv - a - (ldf(x, xt, i) - m) * rs * b) : k * gv;
    put(dx, dxt, i, v, acc);
  }
}

}  // namespace

int64_t reduce_scratch_floats(const ReduceGeom& g, int sm_count) {
  if (inner_contiguous(g)) return 0;
  const int p = reduce_parts(g, sm_count);
  return p > 1 ? p * g.nout : 0;
}

void reduce(int op, const ReduceGeom& g, void* y, Tag yt, bool acc, const void* x, Tag xt, float* part, int sm_count, cudaStream_t st) {
  if (g.nout == 0) return;
  const bool flt = is_float_tag(xt);
  if (inner_contiguous(g) && g.rcount > 0) {
    if (g.rcount >= 2048 && g.nout < 64LL * std::max(sm_count, 1)) {
      if (flt) reduce_block_k<float><<<static_cast<unsigned>(g.nout), kThreads, 0, st>>>(op, g, y, yt, acc, x, xt);
      else reduce_block_k<int64_t><<<static_cast<unsigned>(g.nout), kThreads, 0, st>>>(op, g, y, yt, acc, x, xt);
    } else {
      const unsigned blocks = static_cast<unsigned>((g.nout * 32 + kThreads - 1) / kThreads);
      if (flt) reduce_warp_k<float><<<blocks, kThreads, 0, st>>>(op, g, y, yt, acc, x, xt);
      else reduce_warp_k<int64_t><<<blocks, kThreads, 0, st>>>(op, g, y, yt, acc, x, xt);
    }
  } else {
    const int parts = flt ? reduce_parts(g, sm_count) : 1;
    SMP_CUDA_REQUIRE(parts == 1 || part, "reduction without its scratch");
    if (flt) reduce_thread_k<float><<<blocks_for(g.nout * parts), kThreads, 0, st>>>(op, g, parts, y, yt, acc, x, xt, part);
    else reduce_thread_k<int64_t><<<blocks_for(g.nout * parts), kThreads, 0, st>>>(op, g, parts, y, yt, acc, x, xt, part);
    if (parts > 1) {
      SMP_CUDA_LAUNCHED();
      reduce_final_k<<<blocks_for(g.nout), kThreads, 0, st>>>(op, g.nout, g.rcount, parts, y, yt, acc, part);
    }
  }
  SMP_CUDA_LAUNCHED();
}

void reduce_grad(int op, const Strided& s, float k, void* dx, Tag dt, bool acc, const void* dy, Tag dyt, const void* x, Tag xt,
                 const void* y, Tag yt, cudaStream_t st) {
  check_dims(s, "reduction gradient");
  if (s.total == 0) return;
  reduce_grad_k<<<blocks_for(s.total), kThreads, 0, st>>>(op, s, k, dx, dt, acc, dy, dyt, x, xt, y, yt);
  SMP_CUDA_LAUNCHED();
}

void reduce_prod_grad(const ReduceGeom& g, void* dx, Tag dt, bool acc, const void* dy, Tag dyt, const void* x, Tag xt, cudaStream_t st) {
  if (g.nout == 0) return;
  reduce_prod_grad_k<<<blocks_for(g.nout), kThreads, 0, st>>>(g, dx, dt, acc, dy, dyt, x, xt);
  SMP_CUDA_LAUNCHED();
}

void argmax(int64_t outer, int64_t D, int64_t inner, bool last, int64_t* y, const void* x, Tag xt, cudaStream_t st) {
  if (outer * inner == 0) return;
  if (is_float_tag(xt)) argmax_k<float><<<blocks_for(outer * inner), kThreads, 0, st>>>(outer, D, inner, last, y, x, xt);
  else argmax_k<int64_t><<<blocks_for(outer * inner), kThreads, 0, st>>>(outer, D, inner, last, y, x, xt);
  SMP_CUDA_LAUNCHED();
}

void softmax(bool log, int64_t outer, int64_t D, int64_t inner, void* y, Tag yt, const void* x, Tag xt, cudaStream_t st) {
  if (outer * D * inner == 0) return;
  if (inner == 1) {
    if (D <= 1024) softmax_rows_k<32><<<static_cast<unsigned>((outer * 32 + kThreads - 1) / kThreads), kThreads, 0, st>>>(log, outer, D, y, yt, x, xt);
    else softmax_rows_k<kThreads><<<static_cast<unsigned>(outer), kThreads, 0, st>>>(log, outer, D, y, yt, x, xt);
  } else {
    softmax_strided_k<<<blocks_for(outer * inner), kThreads, 0, st>>>(log, outer, D, inner, y, yt, x, xt);
  }
  SMP_CUDA_LAUNCHED();
}

void softmax_grad(bool log, int64_t outer, int64_t D, int64_t inner, void* dx, Tag dt, bool acc, const void* y, Tag yt,
                  const void* dy, Tag dyt, cudaStream_t st) {
  if (outer * D * inner == 0) return;
  if (inner == 1) {
    if (D <= 1024)
      softmax_grad_rows_k<32><<<static_cast<unsigned>((outer * 32 + kThreads - 1) / kThreads), kThreads, 0, st>>>(log, outer, D, dx, dt, acc, y, yt, dy, dyt);
    else
      softmax_grad_rows_k<kThreads><<<static_cast<unsigned>(outer), kThreads, 0, st>>>(log, outer, D, dx, dt, acc, y, yt, dy, dyt);
  } else {
    softmax_grad_strided_k<<<blocks_for(outer * inner), kThreads, 0, st>>>(log, outer, D, inner, dx, dt, acc, y, yt, dy, dyt);
  }
  SMP_CUDA_LAUNCHED();
}

void layernorm(int64_t rows, int64_t D, float eps, void* y, Tag yt, const void* x, Tag xt, const void* g, Tag gt, const void* b,
               Tag bt, void* mean, Tag mt, void* rstd, Tag rt, cudaStream_t st) {
  if (rows * D == 0) return;
  if (D <= 1024)
    layernorm_k<32><<<static_cast<unsigned>((rows * 32 + kThreads - 1) / kThreads), kThreads, 0, st>>>(rows, D, eps, y, yt, x, xt, g, gt, b, bt, mean, mt, rstd, rt);
  else
    layernorm_k<kThreads><<<static_cast<unsigned>(rows), kThreads, 0, st>>>(rows, D, eps, y, yt, x, xt, g, gt, b, bt, mean, mt, rstd, rt);
  SMP_CUDA_LAUNCHED();
}

int64_t layernorm_grad_scratch_floats(int64_t rows, int64_t D) { return 2 * rows + 2LL * ln_chunks(rows) * D; }

void layernorm_grad(int64_t rows, int64_t D, float eps, const void* x, Tag xt, const void* g, Tag gt, const void* dy, Tag dyt,
                    void* dx, Tag dxt, bool accx, void* dg, Tag dgt, bool accg, void* db, Tag dbt, bool accb, float* part,
                    cudaStream_t st) {
  if (rows * D == 0) return;
  float* stats = part;
  if (D <= 1024)
    layernorm_grad_rows_k<32><<<static_cast<unsigned>((rows * 32 + kThreads - 1) / kThreads), kThreads, 0, st>>>(rows, D, eps, x, xt, g, gt, dy, dyt, dx, dxt, accx, stats);
  else
    layernorm_grad_rows_k<kThreads><<<static_cast<unsigned>(rows), kThreads, 0, st>>>(rows, D, eps, x, xt, g, gt, dy, dyt, dx, dxt, accx, stats);
  SMP_CUDA_LAUNCHED();
  if (!dg && !db) return;
  const int chunks = ln_chunks(rows);
  float* cols = part + 2 * rows;
  dim3 grid(static_cast<unsigned>((D + kThreads - 1) / kThreads), static_cast<unsigned>(chunks));
  layernorm_grad_cols_k<<<grid, kThreads, 0, st>>>(rows, D, chunks, x, xt, dy, dyt, stats, cols);
  SMP_CUDA_LAUNCHED();
  layernorm_grad_final_k<<<blocks_for(D), kThreads, 0, st>>>(D, chunks, cols, dg, dgt, accg, db, dbt, accb);
  SMP_CUDA_LAUNCHED();
}

int batchnorm_parts(int64_t N, int64_t C, int64_t HW, int sm_count) {
  // enough blocks to fill the device twice, at least 16 K elements each
  const int64_t want = (2LL * std::max(sm_count, 1) + C - 1) / std::max<int64_t>(C, 1);
  return static_cast<int>(std::clamp<int64_t>(std::min<int64_t>(want, N * HW / 16384), 1, 256));
}

int64_t batchnorm_scratch_floats(int64_t N, int64_t C, int64_t HW, int sm_count) {
  return 4 * C + 2 + 2 * 4 * C * batchnorm_parts(N, C, HW, sm_count);  // floats, then the parts' doubles
}

namespace {
// The statistics (and with dy, the gradient sums) into stats = [mean | rstd | sdy | sdx | parts].
void bn_stats(int64_t N, int64_t C, int64_t HW, float eps, bool training, const void* x, Tag xt, const void* dy, Tag dyt,
              const void* mean, Tag mt, const void* var, Tag vt, float* stats, int sm_count, cudaStream_t st) {
  const int parts = batchnorm_parts(N, C, HW, sm_count);
  double* part = reinterpret_cast<double*>(stats + 4 * C + (C % 2));  // 8-byte aligned: stats is 256-aligned
  if (training || dy) {
    SMP_CUDA_REQUIRE(C <= 0x7fffffffLL, "too many channels for the BatchNormalization kernels");
    bn_partial_k<<<dim3(static_cast<unsigned>(C), static_cast<unsigned>(parts)), kThreads, 0, st>>>(N, C, HW, parts, x, xt, dy, dyt, part);
    SMP_CUDA_LAUNCHED();
  }
  bn_finalize_k<<<blocks_for(C), kThreads, 0, st>>>(C, parts, N * HW, eps, training, part, mean, mt, var, vt, stats, stats + C,
                                                    dy ? stats + 2 * C : nullptr, dy ? stats + 3 * C : nullptr);
  SMP_CUDA_LAUNCHED();
}
}  // namespace

void batchnorm(int64_t N, int64_t C, int64_t HW, float eps, bool training, void* y, Tag yt, const void* x, Tag xt, const void* g,
               Tag gt, const void* b, Tag bt, const void* mean, Tag mt, const void* var, Tag vt, float* stats, int sm_count,
               cudaStream_t st) {
  if (N * C * HW == 0) return;
  bn_stats(N, C, HW, eps, training, x, xt, nullptr, kF32, mean, mt, var, vt, stats, sm_count, st);
  bn_apply_k<<<blocks_for(N * C * HW), kThreads, 0, st>>>(N, C, HW, y, yt, x, xt, g, gt, b, bt, stats, stats + C);
  SMP_CUDA_LAUNCHED();
}

void batchnorm_grad(int64_t N, int64_t C, int64_t HW, float eps, bool training, const void* x, Tag xt, const void* g, Tag gt,
                    const void* mean, Tag mt, const void* var, Tag vt, const void* dy, Tag dyt, void* dx, Tag dxt, bool accx,
                    void* dg, Tag dgt, bool accg, void* db, Tag dbt, bool accb, float* stats, int sm_count, cudaStream_t st) {
  if (N * C * HW == 0) return;
  bn_stats(N, C, HW, eps, training, x, xt, dy, dyt, mean, mt, var, vt, stats, sm_count, st);
  if (dg || db) {
    bn_grad_params_k<<<blocks_for(C), kThreads, 0, st>>>(C, stats + 2 * C, stats + 3 * C, dg, dgt, accg, db, dbt, accb);
    SMP_CUDA_LAUNCHED();
  }
  if (dx) {
    bn_grad_x_k<<<blocks_for(N * C * HW), kThreads, 0, st>>>(N, C, HW, training, x, xt, g, gt, dy, dyt, stats, stats + C, stats + 2 * C,
                                                             stats + 3 * C, dx, dxt, accx);
    SMP_CUDA_LAUNCHED();
  }
}

}  // namespace smp::runtime::cuda
