// Softmax, LogSoftmax, LayerNormalization, InstanceNormalization, BatchNormalization,
// reductions, ArgMax, ArgMin, Hardmax, CumSum, LpNormalization, LRN, TopK.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"
#include "runtime/cpu/vmath.hpp"

#include <fmt/format.h>

#include <cfloat>
#include <cmath>
#include <limits>

namespace smp::runtime::cpu {

using graph::Op;

// ---- Softmax, LogSoftmax -----------------------------------------------------------------

namespace {
// Applies f(row_ptr_in, row_ptr_out, stride) on every softmax row (D elements at `inner` stride).
template <class F>
void softmax_rows(const SoftmaxState& s, F f) {
  int64_t rows = s.outer * s.inner;
  pfor(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(s.D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t o = r / s.inner, i = r % s.inner;
      f(o * s.D * s.inner + i);
    }
  });
}
}  // namespace

std::unique_ptr<KernelState> prep_softmax(const NodeView& n) {
  auto s = std::make_unique<SoftmaxState>();
  s->log = n.op() == Op::LogSoftmax;
  n.require_dtype(n.input(0), {DType::F32}, "input");
  const Shape& x = n.input(0).shape;
  int64_t R = static_cast<int64_t>(x.size());
  bool new_semantics = n.graph().opset >= 13 || n.graph().opset == 0;
  int64_t axis = n.node().attr_int("axis", new_semantics ? -1 : 1);
  if (R == 0) {
    s->outer = s->D = s->inner = 1;
    return s;
  }
  if (!norm_axis(axis, R)) n.fail(fmt::format("axis {} out of range for rank {}", axis, R));
  s->outer = prod(x, 0, static_cast<size_t>(axis));
  if (new_semantics) {
    s->D = x[static_cast<size_t>(axis)];
    s->inner = prod(x, static_cast<size_t>(axis) + 1, x.size());
  } else {
    s->D = prod(x, static_cast<size_t>(axis), x.size());
    s->inner = 1;
  }
  return s;
}

void fwd_softmax(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const SoftmaxState&>(st);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  int64_t D = s.D, inc = s.inner;
  softmax_rows(s, [&](int64_t base) {
    const float* x = X + base;
    float* y = Y + base;
    float m = -INFINITY;
    if (inc == 1) {
      m = row_max(x, D);
      float sum = exp_row(x, y, D, m);
      if (s.log) {
        float ls = std::log(sum);
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) y[j] = (x[j] - m) - ls;
      } else {
        vscale_row(y, D, 1.0f / sum);
      }
      return;
    }
    for (int64_t j = 0; j < D; ++j) m = std::max(m, x[j * inc]);
    float sum = 0;
    for (int64_t j = 0; j < D; ++j) {
      float e = vexp(x[j * inc] - m);
      y[j * inc] = e;
      sum += e;
    }
    if (s.log) {
      float ls = std::log(sum);
      for (int64_t j = 0; j < D; ++j) y[j * inc] = (x[j * inc] - m) - ls;
    } else {
      for (int64_t j = 0; j < D; ++j) y[j * inc] /= sum;
    }
  });
}

void bwd_softmax(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const SoftmaxState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.out[0].defined(), "node {}: softmax backward needs its output (not declared saved)", s.node_name);
  const float* Y = io.out[0].data<float>();
  const float* dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  bool acc = io.accumulate[0];
  int64_t D = s.D, inc = s.inner;
  softmax_rows(s, [&](int64_t base) {
    const float* y = Y + base;
    const float* g = dY + base;
    float* d = dX + base;
    float t = 0;
    if (inc == 1) {
      v8f vt = vsplat(0.0f);
      int64_t j = 0;
      if (s.log) {  // dx = g - exp(y) * sum(g)
        for (; j + kLanes <= D; j += kLanes) vt += vload(g + j);
        for (t = hsum(vt); j < D; ++j) t += g[j];
        vmap2(g, y, d, D, acc, [t](v8f gv, v8f yv) { return gv - vexp8(yv) * t; });
      } else {  // dx = y * (g - sum(g * y))
        for (; j + kLanes <= D; j += kLanes) vt += vload(g + j) * vload(y + j);
        for (t = hsum(vt); j < D; ++j) t += g[j] * y[j];
        vmap2(g, y, d, D, acc, [t](v8f gv, v8f yv) { return yv * (gv - t); });
      }
      return;
    }
    if (s.log) {  // dx = g - exp(y) * sum(g)
      for (int64_t j = 0; j < D; ++j) t += g[j * inc];
      for (int64_t j = 0; j < D; ++j) {
        float v = g[j * inc] - vexp(y[j * inc]) * t;
        d[j * inc] = acc ? d[j * inc] + v : v;
      }
    } else {  // dx = y * (g - sum(g * y))
      for (int64_t j = 0; j < D; ++j) t += g[j * inc] * y[j * inc];
      for (int64_t j = 0; j < D; ++j) {
        float v = y[j * inc] * (g[j * inc] - t);
        d[j * inc] = acc ? d[j * inc] + v : v;
      }
    }
  });
}

// ---- LayerNormalization ------------------------------------------------------------------

namespace {
// mean and 1/std of one row
inline void row_stats(const float* x, int64_t D, float eps, float& mean, float& rstd) {
  float m = 0;
#pragma omp simd reduction(+ : m)
  for (int64_t j = 0; j < D; ++j) m += x[j];
  m /= static_cast<float>(D);
  float v = 0;
#pragma omp simd reduction(+ : v)
  for (int64_t j = 0; j < D; ++j) v += (x[j] - m) * (x[j] - m);
  v /= static_cast<float>(D);
  mean = m;
  rstd = 1.0f / std::sqrt(v + eps);
}
}  // namespace

std::unique_ptr<KernelState> prep_layernorm(const NodeView& n) {
  auto s = std::make_unique<LayerNormState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  n.require_dtype(n.input(1), {DType::F32}, "scale");
  const Shape& x = n.input(0).shape;
  int64_t axis = n.node().attr_int("axis", -1);
  if (!norm_axis(axis, static_cast<int64_t>(x.size()))) n.fail("axis out of range");
  s->rows = prod(x, 0, static_cast<size_t>(axis));
  s->D = prod(x, static_cast<size_t>(axis), x.size());
  s->eps = static_cast<float>(n.node().attr_float("epsilon", 1e-5));
  if (n.input(1).numel() != s->D) n.fail("scale must have the normalized shape");
  if (n.has_input(2)) {
    n.require_dtype(n.input(2), {DType::F32}, "bias");
    if (n.input(2).numel() != s->D) n.fail("bias must have the normalized shape");
    s->has_bias = true;
  }
  for (int i = 1; i < 3; ++i)
    if (n.has_output(i)) n.require_dtype(n.output(i), {DType::F32}, "statistics output");
  return s;
}

void fwd_layernorm(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const LayerNormState&>(st);
  const float* X = in[0].data<float>();
  const float* G = in[1].data<float>();
  const float* B = s.has_bias ? in[2].data<float>() : nullptr;
  float* Y = out[0].data<float>();
  float* Mo = out.size() > 1 && out[1].defined() ? out[1].data<float>() : nullptr;
  float* Ro = out.size() > 2 && out[2].defined() ? out[2].data<float>() : nullptr;
  int64_t D = s.D;
  pfor(s.rows, std::max<int64_t>(1, kGrain / D), [&](int64_t r0, int64_t r1) {
    const float* __restrict Gl = G;
    const float* __restrict Bl = B;
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict x = X + r * D;
      float* __restrict y = Y + r * D;
      float m, rs;
      row_stats(x, D, s.eps, m, rs);
      if (Bl) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) y[j] = (x[j] - m) * rs * Gl[j] + Bl[j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) y[j] = (x[j] - m) * rs * Gl[j];
      }
      if (Mo) Mo[r] = m;
      if (Ro) Ro[r] = rs;
    }
  });
}

void bwd_layernorm(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const LayerNormState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: LayerNormalization backward needs X and scale", s.node_name);
  const float* X = io.in[0].data<float>();
  const float* G0 = io.in[1].data<float>();
  const float* dY = io.dout[0].data<float>();
  int64_t D = s.D, rows = s.rows;
  bool want_dx = io.din[0].defined();
  bool want_dg = io.din[1].defined();
  bool want_db = io.din.size() > 2 && io.din[2].defined();
  float* dX0 = want_dx ? io.din[0].data<float>() : nullptr;
  bool accx = want_dx && io.accumulate[0];
  int nt = pool_threads();
  std::vector<float> pg, pb;
  if (want_dg) pg.assign(static_cast<size_t>(nt * D), 0.0f);
  if (want_db) pb.assign(static_cast<size_t>(nt * D), 0.0f);
  int64_t chunks = std::min<int64_t>(nt, rows);
  parallel_region(static_cast<int>(std::max<int64_t>(chunks, 1)), [&](int64_t t, int64_t c) {
    float* __restrict g_acc = want_dg ? pg.data() + t * D : nullptr;
    float* __restrict b_acc = want_db ? pb.data() + t * D : nullptr;
    const float* __restrict G = G0;
    float* dX = dX0;
    for (int64_t r = rows * t / c; r < rows * (t + 1) / c; ++r) {
      const float* x = X + r * D;
      const float* dy = dY + r * D;
      float m, rs;
      row_stats(x, D, s.eps, m, rs);
      if (g_acc) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) g_acc[j] += dy[j] * (x[j] - m) * rs;
      }
      if (b_acc) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) b_acc[j] += dy[j];
      }
      if (dX) {
        float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t j = 0; j < D; ++j) {
          float dxh = dy[j] * G[j];
          s1 += dxh;
          s2 += dxh * (x[j] - m) * rs;
        }
        s1 /= static_cast<float>(D);
        s2 /= static_cast<float>(D);
        float* __restrict dx = dX + r * D;
        if (accx) {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) dx[j] += rs * (dy[j] * G[j] - s1 - (x[j] - m) * rs * s2);
        } else {
#pragma omp simd
          for (int64_t j = 0; j < D; ++j) dx[j] = rs * (dy[j] * G[j] - s1 - (x[j] - m) * rs * s2);
        }
      }
    }
  });
  auto finish = [&](std::vector<float>& p, Tensor& d, bool acc) {
    float* o = d.data<float>();
    for (int64_t j = 0; j < D; ++j) {
      float v = 0;
      for (int t = 0; t < nt; ++t) v += p[static_cast<size_t>(t * D + j)];
      o[j] = acc ? o[j] + v : v;
    }
  };
  if (want_dg) finish(pg, io.din[1], io.accumulate[1]);
  if (want_db) finish(pb, io.din[2], io.accumulate[2]);
}

// ---- InstanceNormalization ---------------------------------------------------------------
//
// Each (sample, channel) row of X [N, C, spatial...] normalized over its spatial values (biased
// variance), then scaled and shifted by its channel's scale and B: LayerNormalization's rows
// with a per-row scalar scale.

std::unique_ptr<KernelState> prep_instancenorm(const NodeView& n) {
  auto s = std::make_unique<InstanceNormState>();
  if (n.num_inputs() != 3 || !n.has_input(1) || !n.has_input(2)) n.fail("needs 3 inputs (input, scale, B)");
  n.require_dtype(n.input(0), {DType::F32}, "input");
  n.require_dtype(n.input(1), {DType::F32}, "scale");
  n.require_dtype(n.input(2), {DType::F32}, "B");
  const Shape& x = n.input(0).shape;
  if (x.size() < 3) n.fail(fmt::format("input {} must be at least 3-D (N, C, spatial...)", shape_str(x)));
  s->N = x[0];
  s->C = x[1];
  s->D = prod(x, 2, x.size());
  if (n.input(1).numel() != s->C || n.input(2).numel() != s->C)
    n.fail(fmt::format("scale and B must have C = {} elements", s->C));
  s->eps = static_cast<float>(n.node().attr_float("epsilon", 1e-5));
  return s;
}

void fwd_instancenorm(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const InstanceNormState&>(st);
  const float *X = in[0].data<float>(), *G = in[1].data<float>(), *B = in[2].data<float>();
  float* Y = out[0].data<float>();
  const int64_t D = s.D;
  pfor(s.N * s.C, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* __restrict x = X + r * D;
      float* __restrict y = Y + r * D;
      float m, rs;
      row_stats(x, D, s.eps, m, rs);
      const float a = rs * G[r % s.C], b = B[r % s.C] - m * a;
#pragma omp simd
      for (int64_t j = 0; j < D; ++j) y[j] = x[j] * a + b;
    }
  });
}

void bwd_instancenorm(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const InstanceNormState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: InstanceNormalization backward needs X and scale", s.node_name);
  const float *X = io.in[0].data<float>(), *G = io.in[1].data<float>(), *dY = io.dout[0].data<float>();
  const int64_t D = s.D, rows = s.N * s.C;
  float* dX = io.din[0].defined() ? io.din[0].data<float>() : nullptr;
  const bool accx = dX && io.accumulate[0];
  // per row: sum(dy) and sum(dy * xhat), for the scale's and B's gradients (summed over samples)
  std::vector<double> sdy(static_cast<size_t>(rows)), sdyx(static_cast<size_t>(rows));
  pfor(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const float* x = X + r * D;
      const float* dy = dY + r * D;
      float m, rs;
      row_stats(x, D, s.eps, m, rs);
      float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
      for (int64_t j = 0; j < D; ++j) {
        s1 += dy[j];
        s2 += dy[j] * (x[j] - m) * rs;
      }
      sdy[static_cast<size_t>(r)] = s1;
      sdyx[static_cast<size_t>(r)] = s2;
      if (!dX) continue;
      // dx = rs * g * (dy - mean(dy) - xhat * mean(dy * xhat))
      const float gr = G[r % s.C] * rs, m1 = s1 / static_cast<float>(D), m2 = s2 / static_cast<float>(D);
      float* __restrict dx = dX + r * D;
      if (accx) {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) dx[j] += gr * (dy[j] - m1 - (x[j] - m) * rs * m2);
      } else {
#pragma omp simd
        for (int64_t j = 0; j < D; ++j) dx[j] = gr * (dy[j] - m1 - (x[j] - m) * rs * m2);
      }
    }
  });
  auto per_channel = [&](const std::vector<double>& v, Tensor& d, bool acc) {
    float* o = d.data<float>();
    for (int64_t c = 0; c < s.C; ++c) {
      double t = 0;
      for (int64_t b = 0; b < s.N; ++b) t += v[static_cast<size_t>(b * s.C + c)];
      o[c] = acc ? o[c] + static_cast<float>(t) : static_cast<float>(t);
    }
  };
  if (io.din[1].defined()) per_channel(sdyx, io.din[1], io.accumulate[1]);
  if (io.din.size() > 2 && io.din[2].defined()) per_channel(sdy, io.din[2], io.accumulate[2]);
}

// ---- BatchNormalization ------------------------------------------------------------------
//
// training_mode = 1 (opset 14+; before: the running-statistics outputs present) normalizes with
// the batch's statistics over N and the spatial dims and fills outputs 1, 2 as s.stats says
// (backend.hpp: ONNX's running update, PyTorch's with the unbiased variance, or the batch's own
// mean and variance); training_mode = 0 normalizes with the mean and variance inputs.

namespace {
// Sums over one plane of a channel (HW contiguous floats), vectorized: float partials per plane
// (8 lanes of at most a plane's length each), added across planes in double. Scalar double
// loops were 15 % of a BatchNorm CNN's training step.
inline float plane_sum(const float* x, int64_t n) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += x[i];
  return s;
}
inline float plane_sq_dev(const float* x, int64_t n, float m) {
  float s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < n; ++i) s += (x[i] - m) * (x[i] - m);
  return s;
}

// Per channel: the mean over N and the spatial dims.
double channel_mean(const BatchNormState& s, const float* X, int64_t c) {
  double sum = 0;
  for (int64_t b = 0; b < s.N; ++b) sum += plane_sum(X + (b * s.C + c) * s.HW, s.HW);
  return sum / static_cast<double>(s.N * s.HW);
}

// Per channel: mean and biased variance over N and the spatial dims (two passes).
void channel_stats(const BatchNormState& s, const float* X, std::vector<double>& mean, std::vector<double>& var) {
  mean.assign(static_cast<size_t>(s.C), 0);
  var.assign(static_cast<size_t>(s.C), 0);
  pfor(s.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double m = channel_mean(s, X, c);
      const auto mf = static_cast<float>(m);
      double sq = 0;
      for (int64_t b = 0; b < s.N; ++b) sq += plane_sq_dev(X + (b * s.C + c) * s.HW, s.HW, mf);
      // the float mean's offset from the exact one: sum (x - mf)^2 = sum (x - m)^2 + n (m - mf)^2
      const double cnt = static_cast<double>(s.N * s.HW), off = m - mf;
      mean[static_cast<size_t>(c)] = m;
      var[static_cast<size_t>(c)] = std::max(0.0, sq / cnt - off * off);
    }
  });
}
}  // namespace

std::unique_ptr<KernelState> prep_batchnorm(const NodeView& n) {
  auto s = std::make_unique<BatchNormState>();
  if (n.num_inputs() != 5) n.fail("needs 5 inputs");
  for (int i = 0; i < 5; ++i) n.require_dtype(n.input(i), {DType::F32}, "input");
  const bool stats_out = n.has_output(1) || n.has_output(2);
  s->stats_out = stats_out;
  if (n.graph().opset >= 14 || n.graph().opset == 0) {
    s->batch_stats = n.node().attr_int("training_mode", 0) != 0;
    if (stats_out && !s->batch_stats) n.fail("running-statistics outputs need training_mode = 1");
  } else {
    // Before opset 14 the outputs say it: Y alone is inference; outputs 3, 4 (saved mean and
    // inverse std) are a cuDNN detail no exporter relies on.
    if (n.has_output(3) || n.has_output(4)) n.fail("the saved_mean / saved_var outputs (opset < 14) are not supported");
    s->batch_stats = stats_out;
  }
  for (int i = 1; i < 3; ++i)
    if (n.has_output(i)) n.require_dtype(n.output(i), {DType::F32}, "running-statistics output");
  const Shape& x = n.input(0).shape;
  if (x.size() < 2) n.fail("input must be at least 2-D");
  s->N = x[0];
  s->C = x[1];
  s->HW = prod(x, 2, x.size());
  for (int i = 1; i < 5; ++i)
    if (n.input(i).numel() != s->C) n.fail("scale, bias, mean and var must be [C]");
  s->eps = static_cast<float>(n.node().attr_float("epsilon", 1e-5));
  s->momentum = static_cast<float>(n.node().attr_float("momentum", 0.9));
  return s;
}

void fwd_batchnorm(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const BatchNormState&>(st);
  const float* X = in[0].data<float>();
  const float* G = in[1].data<float>();
  const float* B = in[2].data<float>();
  const float* M = in[3].data<float>();
  const float* V = in[4].data<float>();
  std::vector<float> mean, rstd;
  std::vector<double> bm, bv;
  const bool want_stats = out.size() > 1 && (out[1].defined() || (out.size() > 2 && out[2].defined()));
  if (s.batch_stats) {
    channel_stats(s, X, bm, bv);
    mean.resize(bm.size());
    rstd.resize(bm.size());
    for (size_t c = 0; c < bm.size(); ++c) {
      mean[c] = static_cast<float>(bm[c]);
      rstd[c] = static_cast<float>(1.0 / std::sqrt(bv[c] + s.eps));
    }
  } else {
    mean.resize(static_cast<size_t>(s.C));
    rstd.resize(static_cast<size_t>(s.C));
    for (int64_t c = 0; c < s.C; ++c) {
      mean[static_cast<size_t>(c)] = M[c];
      rstd[static_cast<size_t>(c)] = 1.0f / std::sqrt(V[c] + s.eps);
    }
  }
  float* Y = out[0].data<float>();
  pfor(s.N * s.C, std::max<int64_t>(1, kGrain / std::max<int64_t>(s.HW, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      size_t c = static_cast<size_t>(r % s.C);
      float a = G[c] * rstd[c], b = B[c] - mean[c] * a;
      const float* x = X + r * s.HW;
      float* y = Y + r * s.HW;
#pragma omp simd
      for (int64_t i = 0; i < s.HW; ++i) y[i] = x[i] * a + b;
    }
  });
  if (!want_stats || !s.batch_stats) return;
  const double n = static_cast<double>(s.N * s.HW);
  const double mom = s.momentum;
  // PyTorch's unbiased variance; one value per channel has none (PyTorch refuses it too).
  const double unbias = n > 1 ? n / (n - 1) : std::numeric_limits<double>::quiet_NaN();
  float* Mo = out[1].defined() ? out[1].data<float>() : nullptr;
  float* Vo = out.size() > 2 && out[2].defined() ? out[2].data<float>() : nullptr;
  for (int64_t c = 0; c < s.C; ++c) {
    size_t k = static_cast<size_t>(c);
    double m = bm[k], v = bv[k];
    switch (s.stats) {
      case StatsOutput::Batch: break;
      case StatsOutput::Onnx: m = M[c] * mom + m * (1 - mom); v = V[c] * mom + v * (1 - mom); break;
      case StatsOutput::Unbiased: m = M[c] * mom + m * (1 - mom); v = V[c] * mom + v * unbias * (1 - mom); break;
    }
    if (Mo) Mo[c] = static_cast<float>(m);
    if (Vo) Vo[c] = static_cast<float>(v);
  }
}

void bwd_batchnorm(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const BatchNormState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: BatchNormalization backward needs X and scale", s.node_name);
  const float* X = io.in[0].data<float>();
  const float* G = io.in[1].data<float>();
  const float* dY = io.dout[0].data<float>();
  if (!s.batch_stats)
    SMP_CHECK(io.in[3].defined() && io.in[4].defined(), "node {}: BatchNormalization backward needs mean and var", s.node_name);
  const float* M = s.batch_stats ? nullptr : io.in[3].data<float>();
  const float* V = s.batch_stats ? nullptr : io.in[4].data<float>();
  // Per channel, the mean and 1/std normalized with, sum(dy) and sum(dy * xhat). With the batch's
  // statistics: a pass for the mean, then one for the variance and both sums together.
  const auto C = static_cast<size_t>(s.C);
  std::vector<float> mean(C), rstd(C);
  std::vector<double> sdy(C), sdx(C);
  const double cnt = static_cast<double>(s.N * s.HW);
  pfor(s.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double m = s.batch_stats ? channel_mean(s, X, c) : M[c];
      const auto mf = static_cast<float>(m);
      double sq = 0, a = 0, b = 0;
      for (int64_t n = 0; n < s.N; ++n) {
        const float* x = X + (n * s.C + c) * s.HW;
        const float* g = dY + (n * s.C + c) * s.HW;
        float psq = 0, pa = 0, pb = 0;
#pragma omp simd reduction(+ : psq, pa, pb)
        for (int64_t i = 0; i < s.HW; ++i) {
          const float d = x[i] - mf;
          psq += d * d;
          pa += g[i];
          pb += g[i] * d;
        }
        sq += psq, a += pa, b += pb;
      }
      const double off = m - mf;
      const double var = s.batch_stats ? std::max(0.0, sq / cnt - off * off) : V[c];
      const double r = 1.0 / std::sqrt(var + s.eps);
      const auto k = static_cast<size_t>(c);
      mean[k] = mf;
      rstd[k] = static_cast<float>(r);
      sdy[k] = a;
      sdx[k] = (b - off * a) * r;  // sum g (x - m) r, from the deviations from mf
    }
  });
  if (io.din[1].defined()) {
    float* d = io.din[1].data<float>();
    for (int64_t c = 0; c < s.C; ++c) d[c] = (io.accumulate[1] ? d[c] : 0.0f) + static_cast<float>(sdx[static_cast<size_t>(c)]);
  }
  if (io.din[2].defined()) {
    float* d = io.din[2].data<float>();
    for (int64_t c = 0; c < s.C; ++c) d[c] = (io.accumulate[2] ? d[c] : 0.0f) + static_cast<float>(sdy[static_cast<size_t>(c)]);
  }
  if (io.din[0].defined()) {
    float* dX = io.din[0].data<float>();
    const bool acc = io.accumulate[0];
    const auto fcnt = static_cast<float>(cnt);
    pfor(s.N * s.C, std::max<int64_t>(1, kGrain / std::max<int64_t>(s.HW, 1)), [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const auto c = static_cast<size_t>(r % s.C);
        const float rs = rstd[c], m = mean[c], k = G[c] * rs;
        // batch statistics: dx = k (g - mean(g) - xhat mean(g xhat)) = k g + p (x - m) + q
        const float a = s.batch_stats ? static_cast<float>(sdy[c]) / fcnt : 0.0f;
        const float b = s.batch_stats ? static_cast<float>(sdx[c]) / fcnt : 0.0f;
        const float p = -k * rs * b, q = -k * a;
        const float* x = X + r * s.HW;
        const float* g = dY + r * s.HW;
        float* d = dX + r * s.HW;
        if (acc) {
#pragma omp simd
          for (int64_t i = 0; i < s.HW; ++i) d[i] += k * g[i] + p * (x[i] - m) + q;
        } else {
#pragma omp simd
          for (int64_t i = 0; i < s.HW; ++i) d[i] = k * g[i] + p * (x[i] - m) + q;
        }
      }
    });
  }
}

// ---- reductions --------------------------------------------------------------------------

RGeom rgeom(const Shape& x, const std::vector<int64_t>& axes) {
  RGeom g;
  g.kshape = x;
  std::vector<bool> red(x.size(), false);
  for (int64_t a : axes) red[static_cast<size_t>(a)] = true;
  int64_t stride = 1;
  std::vector<int64_t> strides(x.size());
  for (size_t i = x.size(); i-- > 0;) {
    strides[i] = stride;
    stride *= x[i];
  }
  for (size_t i = 0; i < x.size(); ++i) {
    if (red[i]) {
      g.kshape[i] = 1;
      g.rdims.push_back(x[i]);
      g.rstr.push_back(strides[i]);
      g.rcount *= x[i];
    } else {
      g.kdims.push_back(x[i]);
      g.kstr.push_back(strides[i]);
    }
  }
  return g;
}

std::vector<int64_t> resolve_axes(const ReduceState& s, std::span<const Tensor> in) {
  if (s.axes_known) return s.axes;
  int64_t R = static_cast<int64_t>(s.in_shapes[0].size());
  std::vector<int64_t> axes;
  if (in.size() > 1 && in[1].defined()) axes = tensor_ints(in[1]);
  if (axes.empty()) {
    if (s.noop_empty) return {};
    for (int64_t i = 0; i < R; ++i) axes.push_back(i);
  }
  for (auto& a : axes) {
    if (!norm_axis(a, R)) throw_failure("node " + s.node_name, fmt::format("reduction axis {} out of range", a));
  }
  std::sort(axes.begin(), axes.end());
  axes.erase(std::unique(axes.begin(), axes.end()), axes.end());
  return axes;
}

namespace {
template <class T, class Init, class Acc, class Fin>
void reduce_loop(const RGeom& g, const T* X, T* Y, Init init, Acc acc, Fin fin) {
  int64_t nout = 1;
  for (int64_t d : g.kdims) nout *= d;
  size_t nr = g.rdims.size();
  // trailing reduced dims that are contiguous in memory form the inner loop
  size_t ntail = 0;
  int64_t tail = 1, expect = 1;
  for (size_t i = nr; i-- > 0;) {
    if (g.rstr[i] != expect) break;
    tail *= g.rdims[i];
    expect *= g.rdims[i];
    ++ntail;
  }
  size_t nouter = nr - ntail;
  int64_t outer_count = tail == 0 ? 0 : g.rcount / tail;
  pfor(nout, std::max<int64_t>(1, kGrain / std::max<int64_t>(g.rcount, 1)), [&](int64_t o0, int64_t o1) {
    for (int64_t o = o0; o < o1; ++o) {
      int64_t base = 0, r = o;
      for (size_t d = g.kdims.size(); d-- > 0;) {
        base += (r % g.kdims[d]) * g.kstr[d];
        r /= g.kdims[d];
      }
      auto a = init();  // the accumulator: T, or (max, sum) for ReduceLogSumExp
      for (int64_t k = 0; k < outer_count; ++k) {
        int64_t off = base, rem = k;
        for (size_t e = nouter; e-- > 0;) {
          off += (rem % g.rdims[e]) * g.rstr[e];
          rem /= g.rdims[e];
        }
        const T* p = X + off;
        for (int64_t i = 0; i < tail; ++i) a = acc(a, p[i]);
      }
      Y[o] = fin(a, g.rcount);
    }
  });
}
}  // namespace

std::unique_ptr<KernelState> prep_reduce(const NodeView& n) {
  auto s = std::make_unique<ReduceState>();
  s->op = n.op();
  if (n.op() == Op::ReduceMean || n.op() == Op::ReduceSum || n.op() == Op::ReduceProd || n.op() == Op::ReduceL2 ||
      n.op() == Op::ReduceL1 || n.op() == Op::ReduceSumSquare || n.op() == Op::ReduceLogSum || n.op() == Op::ReduceLogSumExp)
    n.require_dtype(n.input(0), {DType::F32, DType::F64}, "input");
  else
    n.require_dtype(n.input(0), {DType::F32, DType::F64, DType::I64}, "input");
  s->keepdims = n.node().attr_int("keepdims", 1) != 0;
  s->noop_empty = n.node().attr_int("noop_with_empty_axes", 0) != 0;
  int64_t R = static_cast<int64_t>(n.input(0).shape.size());
  std::vector<int64_t> axes;
  if (n.node().has_attr("axes")) {
    axes = n.node().attr_ints("axes");
    s->axes_known = true;
  } else if (n.has_input(1)) {
    if (n.constant_ints(1, axes)) s->axes_known = true;
  } else {
    s->axes_known = true;
  }
  if (s->axes_known) {
    if (axes.empty() && !s->noop_empty)
      for (int64_t i = 0; i < R; ++i) axes.push_back(i);
    for (auto& a : axes)
      if (!norm_axis(a, R)) n.fail(fmt::format("axis {} out of range", a));
    std::sort(axes.begin(), axes.end());
    axes.erase(std::unique(axes.begin(), axes.end()), axes.end());
    s->axes = axes;
  }
  return s;
}

void fwd_reduce(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ReduceState&>(st);
  RGeom g = rgeom(s.in_shapes[0], resolve_axes(s, in));
  auto run = [&](auto* X, auto* Y) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(X)>>;
    switch (s.op) {
      case Op::ReduceSum: reduce_loop<T>(g, X, Y, [] { return T(0); }, [](T a, T v) { return a + v; }, [](T a, int64_t) { return a; }); break;
      case Op::ReduceMean: reduce_loop<T>(g, X, Y, [] { return T(0); }, [](T a, T v) { return a + v; }, [](T a, int64_t c) { return a / T(c); }); break;
      case Op::ReduceProd: reduce_loop<T>(g, X, Y, [] { return T(1); }, [](T a, T v) { return a * v; }, [](T a, int64_t) { return a; }); break;
      case Op::ReduceMax: reduce_loop<T>(g, X, Y, [] { return std::numeric_limits<T>::lowest(); }, [](T a, T v) { return v > a ? v : a; }, [](T a, int64_t) { return a; }); break;
      case Op::ReduceMin: reduce_loop<T>(g, X, Y, [] { return std::numeric_limits<T>::max(); }, [](T a, T v) { return v < a ? v : a; }, [](T a, int64_t) { return a; }); break;
      case Op::ReduceL2:
        if constexpr (std::is_floating_point_v<T>)
          reduce_loop<T>(g, X, Y, [] { return T(0); }, [](T a, T v) { return a + v * v; }, [](T a, int64_t) { return std::sqrt(a); });
        break;
      case Op::ReduceL1:
        if constexpr (std::is_floating_point_v<T>)
          reduce_loop<T>(g, X, Y, [] { return T(0); }, [](T a, T v) { return a + std::fabs(v); }, [](T a, int64_t) { return a; });
        break;
      case Op::ReduceSumSquare: reduce_loop<T>(g, X, Y, [] { return T(0); }, [](T a, T v) { return a + v * v; }, [](T a, int64_t) { return a; }); break;
      case Op::ReduceLogSum:
        if constexpr (std::is_floating_point_v<T>)
          reduce_loop<T>(g, X, Y, [] { return T(0); }, [](T a, T v) { return a + v; }, [](T a, int64_t) { return std::log(a); });
        break;
      case Op::ReduceLogSumExp:  // online: (max so far, sum of exp(v - max)), no overflow
        if constexpr (std::is_floating_point_v<T>)
          reduce_loop<T>(
              g, X, Y, [] { return std::pair<T, T>(-std::numeric_limits<T>::infinity(), T(0)); },
              [](std::pair<T, T> a, T v) {
                if (v <= a.first) return std::pair<T, T>(a.first, a.second + std::exp(v - a.first));
                return std::pair<T, T>(v, a.second * std::exp(a.first - v) + T(1));
              },
              [](std::pair<T, T> a, int64_t) { return a.second > 0 ? a.first + std::log(a.second) : a.first; });
        break;
      default: SMP_CHECK(false, "not a reduction");
    }
  };
  if (in[0].dtype() == DType::F32) run(in[0].data<float>(), out[0].data<float>());
  else if (in[0].dtype() == DType::F64) run(in[0].data<double>(), out[0].data<double>());
  else run(in[0].data<int64_t>(), out[0].data<int64_t>());
}

void bwd_reduce(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const ReduceState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  RGeom g = rgeom(s.in_shapes[0], resolve_axes(s, io.in));
  const Shape& xs = s.in_shapes[0];
  Bcast b = make_bcast(xs, {g.kshape, g.kshape, g.kshape});
  const float* dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  bool acc = io.accumulate[0];
  if (s.op == Op::ReduceSum || s.op == Op::ReduceMean) {
    float k = s.op == Op::ReduceMean ? 1.0f / static_cast<float>(g.rcount) : 1.0f;
    bcast_rows(b, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      for (int64_t i = 0; i < L; ++i) {
        float v = dY[off[0] + i * ist[0]] * k;
        dX[oo + i] = acc ? dX[oo + i] + v : v;
      }
    });
  } else if (s.op == Op::ReduceL2) {  // dx = dy * x / y (0 where the norm is 0, as PyTorch's)
    SMP_CHECK(io.in[0].defined() && io.out[0].defined(), "node {}: backward needs input and output", s.node_name);
    const float* X = io.in[0].data<float>();
    const float* Y = io.out[0].data<float>();
    bcast_rows(b, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      for (int64_t i = 0; i < L; ++i) {
        float y = Y[off[0] + i * ist[0]];
        float v = y > 0 ? dY[off[0] + i * ist[0]] * X[oo + i] / y : 0.0f;
        dX[oo + i] = acc ? dX[oo + i] + v : v;
      }
    });
  } else if (s.op == Op::ReduceL1 || s.op == Op::ReduceSumSquare) {  // dy * sign(x), dy * 2x
    SMP_CHECK(io.in[0].defined(), "node {}: backward needs its input", s.node_name);
    const float* X = io.in[0].data<float>();
    const bool l1 = s.op == Op::ReduceL1;
    bcast_rows(b, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      for (int64_t i = 0; i < L; ++i) {
        const float x = X[oo + i], g = dY[off[0] + i * ist[0]];
        const float v = l1 ? (x > 0 ? g : (x < 0 ? -g : 0.0f)) : 2.0f * g * x;
        dX[oo + i] = acc ? dX[oo + i] + v : v;
      }
    });
  } else if (s.op == Op::ReduceLogSum || s.op == Op::ReduceLogSumExp) {  // dy / sum(x) = dy e^-y; dy e^(x - y)
    SMP_CHECK(io.out[0].defined() && (s.op == Op::ReduceLogSum || io.in[0].defined()), "node {}: backward needs its output (and input)",
              s.node_name);
    const float* Y = io.out[0].data<float>();
    const float* X = s.op == Op::ReduceLogSumExp ? io.in[0].data<float>() : nullptr;
    bcast_rows(b, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      for (int64_t i = 0; i < L; ++i) {
        const float y = Y[off[0] + i * ist[0]], g = dY[off[0] + i * ist[0]];
        const float v = X ? g * std::exp(X[oo + i] - y) : g * std::exp(-y);
        dX[oo + i] = acc ? dX[oo + i] + v : v;
      }
    });
  } else if (s.op == Op::ReduceMax || s.op == Op::ReduceMin) {
    SMP_CHECK(io.in[0].defined() && io.out[0].defined(), "node {}: backward needs input and output", s.node_name);
    const float* X = io.in[0].data<float>();
    const float* Y = io.out[0].data<float>();
    bcast_rows(b, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      for (int64_t i = 0; i < L; ++i) {
        float v = X[oo + i] == Y[off[0] + i * ist[0]] ? dY[off[0] + i * ist[0]] : 0.0f;
        dX[oo + i] = acc ? dX[oo + i] + v : v;
      }
    });
  } else {  // ReduceProd: dx_i = dy * (product of the others in its group)
    SMP_CHECK(io.in[0].defined(), "node {}: ReduceProd backward needs its input", s.node_name);
    const float* X = io.in[0].data<float>();
    int64_t nout = 1;
    for (int64_t d : g.kdims) nout *= d;
    size_t nr = g.rdims.size();
    pfor(nout, 1, [&](int64_t o0, int64_t o1) {
      std::vector<int64_t> offs(static_cast<size_t>(g.rcount));
      for (int64_t o = o0; o < o1; ++o) {
        int64_t base = 0, r = o;
        for (size_t d = g.kdims.size(); d-- > 0;) {
          base += (r % g.kdims[d]) * g.kstr[d];
          r /= g.kdims[d];
        }
        for (int64_t k = 0; k < g.rcount; ++k) {
          int64_t off = base, rem = k;
          for (size_t e = nr; e-- > 0;) {
            off += (rem % g.rdims[e]) * g.rstr[e];
            rem /= g.rdims[e];
          }
          offs[static_cast<size_t>(k)] = off;
        }
        int zeros = 0;
        double nz = 1;
        for (int64_t off : offs) {
          if (X[off] == 0) ++zeros;
          else nz *= X[off];
        }
        float gy = dY[o];
        for (int64_t off : offs) {
          float v = zeros == 0 ? static_cast<float>(gy * nz / X[off]) : (zeros == 1 && X[off] == 0 ? static_cast<float>(gy * nz) : 0.0f);
          dX[off] = acc ? dX[off] + v : v;
        }
      }
    });
  }
}

// ---- ArgMax ------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_argmax(const NodeView& n) {
  auto s = std::make_unique<ArgMaxState>();
  s->hard = n.op() == Op::Hardmax;
  if (s->hard) n.require_dtype(n.input(0), {DType::F32}, "input");
  else n.require_dtype(n.input(0), {DType::F32, DType::I64}, "input");
  const Shape& x = n.input(0).shape;
  int64_t axis = n.node().attr_int("axis", s->hard ? -1 : 0);
  if (!norm_axis(axis, static_cast<int64_t>(x.size()))) n.fail("axis out of range");
  s->outer = prod(x, 0, static_cast<size_t>(axis));
  s->D = x[static_cast<size_t>(axis)];
  s->inner = prod(x, static_cast<size_t>(axis) + 1, x.size());
  s->last = n.node().attr_int("select_last_index", 0) != 0;
  s->min = n.op() == Op::ArgMin;
  return s;
}

void fwd_argmax(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ArgMaxState&>(st);
  if (s.hard) {  // one-hot of the first maximum
    const float* X = in[0].data<float>();
    float* Y = out[0].data<float>();
    std::memset(Y, 0, static_cast<size_t>(out[0].bytes()));
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        const float* x = X + o * s.D * s.inner + i;
        int64_t best = 0;
        for (int64_t j = 1; j < s.D; ++j)
          if (x[j * s.inner] > x[best * s.inner]) best = j;
        Y[(o * s.D + best) * s.inner + i] = 1.0f;
      }
    return;
  }
  int64_t* Y = out[0].data<int64_t>();
  auto run = [&](auto* X) {
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t i = 0; i < s.inner; ++i) {
        auto* x = X + o * s.D * s.inner + i;
        int64_t best = 0;
        for (int64_t j = 1; j < s.D; ++j) {
          auto v = x[j * s.inner], b = x[best * s.inner];
          if ((s.min ? v < b : v > b) || (s.last && v == b)) best = j;
        }
        Y[o * s.inner + i] = best;
      }
  };
  if (in[0].dtype() == DType::F32) run(in[0].data<float>());
  else run(in[0].data<int64_t>());
}

void bwd_argmax(const KernelState&, ExecContext&, const GradIO&) {}

// ---- CumSum ------------------------------------------------------------------------------
//
// y_j = sum of x_i for i <= j (i < j exclusive; i >= j, i > j reverse) along the axis; the
// gradient is the same sum of dy in the other direction.

std::unique_ptr<KernelState> prep_cumsum(const NodeView& n) {
  auto s = std::make_unique<CumSumState>();
  n.require_dtype(n.input(0), {DType::F32, DType::F64, DType::I64, DType::I32}, "input x");
  std::vector<int64_t> axis;
  if (!n.has_input(1) || !n.constant_ints(1, axis) || axis.size() != 1)
    n.fail("the axis must be a constant scalar (an initializer or a --data array)");
  const Shape& x = n.input(0).shape;
  int64_t a = axis[0];
  if (!norm_axis(a, static_cast<int64_t>(x.size()))) n.fail(fmt::format("axis {} out of range", axis[0]));
  s->outer = prod(x, 0, static_cast<size_t>(a));
  s->D = x[static_cast<size_t>(a)];
  s->inner = prod(x, static_cast<size_t>(a) + 1, x.size());
  s->exclusive = n.node().attr_int("exclusive", 0) != 0;
  s->reverse = n.node().attr_int("reverse", 0) != 0;
  return s;
}

namespace {
template <class T>
void cumsum_loop(const CumSumState& s, const T* X, T* Y, bool reverse, bool accumulate) {
  pfor(s.outer, 1, [&](int64_t o0, int64_t o1) {
    std::vector<T> run(static_cast<size_t>(s.inner));
    for (int64_t o = o0; o < o1; ++o) {
      std::fill(run.begin(), run.end(), T(0));
      for (int64_t k = 0; k < s.D; ++k) {
        const int64_t j = reverse ? s.D - 1 - k : k;
        const T* x = X + (o * s.D + j) * s.inner;
        T* y = Y + (o * s.D + j) * s.inner;
        for (int64_t i = 0; i < s.inner; ++i) {
          const T before = run[static_cast<size_t>(i)];
          run[static_cast<size_t>(i)] += x[i];
          const T v = s.exclusive ? before : run[static_cast<size_t>(i)];
          y[i] = accumulate ? y[i] + v : v;
        }
      }
    }
  });
}
}  // namespace

void fwd_cumsum(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const CumSumState&>(st);
  switch (in[0].dtype()) {
    case DType::F32: cumsum_loop(s, in[0].data<float>(), out[0].data<float>(), s.reverse, false); break;
    case DType::F64: cumsum_loop(s, in[0].data<double>(), out[0].data<double>(), s.reverse, false); break;
    case DType::I64: cumsum_loop(s, in[0].data<int64_t>(), out[0].data<int64_t>(), s.reverse, false); break;
    case DType::I32: cumsum_loop(s, in[0].data<int32_t>(), out[0].data<int32_t>(), s.reverse, false); break;
    default: SMP_CHECK(false, "node {}: CumSum of {}", s.node_name, dtype_name(in[0].dtype()));
  }
}

// ---- LpNormalization -----------------------------------------------------------------------

namespace {
// [outer, D, inner] around X's axis; returns the axis, normalized.
int64_t axis_geometry(const NodeView& n, AxisState& s, int64_t axis) {
  const Shape& x = n.input(0).shape;
  if (!norm_axis(axis, static_cast<int64_t>(x.size()))) n.fail(fmt::format("axis {} out of range", axis));
  s.outer = prod(x, 0, static_cast<size_t>(axis));
  s.D = x[static_cast<size_t>(axis)];
  s.inner = prod(x, static_cast<size_t>(axis) + 1, x.size());
  return axis;
}
}  // namespace

std::unique_ptr<KernelState> prep_lpnorm(const NodeView& n) {
  auto s = std::make_unique<AxisState>();
  n.require_dtype(n.input(0), {DType::F32}, "input");
  axis_geometry(n, *s, n.node().attr_int("axis", -1));
  s->p = n.node().attr_int("p", 2);
  if (s->p != 1 && s->p != 2) n.fail(fmt::format("p {} (1 or 2)", s->p));
  return s;
}

namespace {
// Each lane's p-norm (0 where the lane is all zeros: y is 0 there, as is its gradient).
template <class F>
void lp_lanes(const AxisState& s, const float* X, F f) {
  pfor(s.outer * s.inner, 1, [&](int64_t l0, int64_t l1) {
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t base = (l / s.inner) * s.D * s.inner + l % s.inner;
      double t = 0;
      for (int64_t j = 0; j < s.D; ++j) {
        const double v = X[base + j * s.inner];
        t += s.p == 1 ? std::fabs(v) : v * v;
      }
      f(base, static_cast<float>(s.p == 1 ? t : std::sqrt(t)));
    }
  });
}
}  // namespace

void fwd_lpnorm(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const AxisState&>(st);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  lp_lanes(s, X, [&](int64_t base, float norm) {
    for (int64_t j = 0; j < s.D; ++j) Y[base + j * s.inner] = norm > 0 ? X[base + j * s.inner] / norm : 0.0f;
  });
}

// dx = (dy - g(x) sum(dy y)) / norm, g(x) = y for p 2, sign(x) for p 1.
void bwd_lpnorm(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const AxisState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.out[0].defined(), "node {}: LpNormalization backward needs X and Y", s.node_name);
  const float *X = io.in[0].data<float>(), *Y = io.out[0].data<float>(), *dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  const bool acc = io.accumulate[0];
  lp_lanes(s, X, [&](int64_t base, float norm) {
    float t = 0;
    for (int64_t j = 0; j < s.D; ++j) t += dY[base + j * s.inner] * Y[base + j * s.inner];
    for (int64_t j = 0; j < s.D; ++j) {
      const int64_t e = base + j * s.inner;
      const float gx = s.p == 2 ? Y[e] : (X[e] > 0 ? 1.0f : (X[e] < 0 ? -1.0f : 0.0f));
      const float v = norm > 0 ? (dY[e] - gx * t) / norm : 0.0f;
      dX[e] = acc ? dX[e] + v : v;
    }
  });
}

// ---- LRN -----------------------------------------------------------------------------------
//
// Local response normalization across channels: y = x / d^beta, with d = bias + alpha / size *
// (the sum of x² over channels c - floor((size - 1) / 2) .. c + ceil((size - 1) / 2), clipped to
// the tensor). What the original AlexNet and GoogLeNet (the ONNX model zoo's) normalize with.

std::unique_ptr<KernelState> prep_lrn(const NodeView& n) {
  auto s = std::make_unique<LrnState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  const Shape& x = n.input(0).shape;
  if (x.size() < 3) n.fail(fmt::format("input {} must be at least 3-D (N, C, spatial...)", shape_str(x)));
  s->N = x[0];
  s->C = x[1];
  s->inner = prod(x, 2, x.size());
  const int64_t size = n.node().attr_int("size", 0);
  if (size < 1) n.fail(fmt::format("attribute size {} (a positive channel count is required)", size));
  s->lo = (size - 1) / 2;
  s->hi = size - 1 - s->lo;
  s->scale = static_cast<float>(n.node().attr_float("alpha", 1e-4) / static_cast<double>(size));
  s->beta = static_cast<float>(n.node().attr_float("beta", 0.75));
  s->bias = static_cast<float>(n.node().attr_float("bias", 1.0));
  return s;
}

namespace {
// For each (sample, channel) row r of X, d of its inner values: f(r, d) (d a scratch row).
template <class F>
void lrn_rows(const LrnState& s, const float* X, F f) {
  const int64_t I = s.inner;
  pfor(s.N * s.C, std::max<int64_t>(1, kGrain / std::max<int64_t>(I * (s.lo + s.hi + 1), 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> d(static_cast<size_t>(I));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / s.C, c = r % s.C;
      std::fill(d.begin(), d.end(), 0.0f);
      for (int64_t k = std::max<int64_t>(0, c - s.lo); k <= std::min(s.C - 1, c + s.hi); ++k) {
        const float* __restrict x = X + (n * s.C + k) * I;
#pragma omp simd
        for (int64_t i = 0; i < I; ++i) d[static_cast<size_t>(i)] += x[i] * x[i];
      }
      for (int64_t i = 0; i < I; ++i) d[static_cast<size_t>(i)] = s.bias + s.scale * d[static_cast<size_t>(i)];
      f(r, d.data());
    }
  });
}
}  // namespace

void fwd_lrn(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const LrnState&>(st);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  lrn_rows(s, X, [&](int64_t r, const float* d) {
    const float* x = X + r * s.inner;
    float* y = Y + r * s.inner;
    for (int64_t i = 0; i < s.inner; ++i) y[i] = x[i] * std::pow(d[i], -s.beta);
  });
}

// dx_k = dy_k d_k^-beta - 2 beta alpha / size x_k (the sum over the channels c whose window holds
// k, c = k - hi .. k + lo, of dy_c x_c d_c^(-beta-1)).
void bwd_lrn(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const LrnState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined(), "node {}: LRN backward needs X", s.node_name);
  const float *X = io.in[0].data<float>(), *dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  const bool acc = io.accumulate[0];
  const int64_t I = s.inner;
  const size_t total = static_cast<size_t>(s.N * s.C * I);
  std::vector<float> pw(total), t(total);  // d^-beta, dy x d^(-beta-1)
  lrn_rows(s, X, [&](int64_t r, const float* d) {
    for (int64_t i = 0; i < I; ++i) {
      const int64_t e = r * I + i;
      const float p = std::pow(d[i], -s.beta);
      pw[static_cast<size_t>(e)] = p;
      t[static_cast<size_t>(e)] = dY[e] * X[e] * p / d[i];
    }
  });
  const float k2 = 2.0f * s.beta * s.scale;
  pfor(s.N * s.C, std::max<int64_t>(1, kGrain / std::max<int64_t>(I * (s.lo + s.hi + 1), 1)), [&](int64_t r0, int64_t r1) {
    std::vector<float> sum(static_cast<size_t>(I));
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t n = r / s.C, k = r % s.C;
      std::fill(sum.begin(), sum.end(), 0.0f);
      for (int64_t c = std::max<int64_t>(0, k - s.hi); c <= std::min(s.C - 1, k + s.lo); ++c) {
        const float* __restrict tc = t.data() + (n * s.C + c) * I;
#pragma omp simd
        for (int64_t i = 0; i < I; ++i) sum[static_cast<size_t>(i)] += tc[i];
      }
      for (int64_t i = 0; i < I; ++i) {
        const int64_t e = r * I + i;
        const float v = dY[e] * pw[static_cast<size_t>(e)] - k2 * X[e] * sum[static_cast<size_t>(i)];
        dX[e] = acc ? dX[e] + v : v;
      }
    }
  });
}

// ---- TopK --------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_topk(const NodeView& n) {
  auto s = std::make_unique<AxisState>();
  n.require_dtype(n.input(0), {DType::F32, DType::F64, DType::I64, DType::I32}, "input X");
  const int64_t a = axis_geometry(n, *s, n.node().attr_int("axis", -1));
  if (!n.has_output(0) || n.output(0).shape.size() != n.input(0).shape.size()) n.fail("cannot infer the output's shape (K must be a constant)");
  s->k = n.output(0).shape[static_cast<size_t>(a)];
  if (s->k < 0 || s->k > s->D) n.fail(fmt::format("K {} exceeds the axis' size {}", s->k, s->D));
  s->largest = n.node().attr_int("largest", 1) != 0;  // sorted 0 allows any order: sorted is one
  return s;
}

namespace {
// Per lane: the k indices of the largest (smallest) values, ties to the lower index, in order.
template <class T>
void topk_lanes(const AxisState& s, const T* X, T* V, int64_t* I) {
  pfor(s.outer * s.inner, 1, [&](int64_t l0, int64_t l1) {
    std::vector<int64_t> order(static_cast<size_t>(s.D));
    for (int64_t l = l0; l < l1; ++l) {
      const int64_t o = l / s.inner, i = l % s.inner;
      const T* x = X + o * s.D * s.inner + i;
      for (int64_t j = 0; j < s.D; ++j) order[static_cast<size_t>(j)] = j;
      auto before = [&](int64_t a, int64_t b) {  // a strict weak order, NaN too: as PyTorch, NaN is the largest
        const T va = x[a * s.inner], vb = x[b * s.inner];
        const bool na = va != va, nb = vb != vb;
        if (na || nb) return na && nb ? a < b : (s.largest ? na : nb);
        if (va != vb) return s.largest ? va > vb : va < vb;
        return a < b;
      };
      std::partial_sort(order.begin(), order.begin() + s.k, order.end(), before);
      for (int64_t j = 0; j < s.k; ++j) {
        const int64_t e = (o * s.k + j) * s.inner + i;
        if (V) V[e] = x[order[static_cast<size_t>(j)] * s.inner];
        I[e] = order[static_cast<size_t>(j)];
      }
    }
  });
}
}  // namespace

void fwd_topk(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const AxisState&>(st);
  Tensor idx_scratch;
  int64_t* I = nullptr;
  if (out.size() > 1 && out[1].defined()) {
    I = out[1].data<int64_t>();
  } else {
    idx_scratch = scratch(ctx, DType::I64, s.out_shapes[0]);
    I = idx_scratch.data<int64_t>();
  }
  switch (in[0].dtype()) {
    case DType::F32: topk_lanes(s, in[0].data<float>(), out[0].data<float>(), I); break;
    case DType::F64: topk_lanes(s, in[0].data<double>(), out[0].data<double>(), I); break;
    case DType::I64: topk_lanes(s, in[0].data<int64_t>(), out[0].data<int64_t>(), I); break;
    case DType::I32: topk_lanes(s, in[0].data<int32_t>(), out[0].data<int32_t>(), I); break;
    default: SMP_CHECK(false, "node {}: TopK of {}", s.node_name, dtype_name(in[0].dtype()));
  }
}

// dx: dy of each value at its index, 0 elsewhere.
void bwd_topk(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const AxisState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.out.size() > 1 && io.out[1].defined(), "node {}: TopK backward needs the Indices output (not declared saved)", s.node_name);
  const int64_t* I = io.out[1].data<int64_t>();
  const float* dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  if (!io.accumulate[0]) std::memset(dX, 0, static_cast<size_t>(io.din[0].numel()) * sizeof(float));
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t j = 0; j < s.k; ++j)
      for (int64_t i = 0; i < s.inner; ++i) {
        const int64_t e = (o * s.k + j) * s.inner + i;
        dX[(o * s.D + I[e]) * s.inner + i] += dY[e];
      }
}

void bwd_cumsum(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const CumSumState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  cumsum_loop(s, io.dout[0].data<float>(), io.din[0].data<float>(), !s.reverse, io.accumulate[0]);
}

}  // namespace smp::runtime::cpu
