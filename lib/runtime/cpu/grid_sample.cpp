// GridSample (opset 16, 2-D): Y[n, c, i, j] samples X[n, c] at the normalized position grid[n, i,
// j] = (x, y) in [-1, 1] (what PyTorch's F.grid_sample exports to): bilinear or nearest, with
// zeros, border or reflection padding, align_corners either way, as ONNX's reference and PyTorch
// compute it. Gradients to X (both modes) and to the grid (bilinear; nearest's is zero almost
// everywhere, as PyTorch's). Bicubic is refused.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>

namespace smp::runtime::cpu {

std::unique_ptr<KernelState> prep_grid_sample(const NodeView& n) {
  auto s = std::make_unique<GridSampleState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  n.require_dtype(n.input(1), {DType::F32}, "grid");
  const Shape &x = n.input(0).shape, &g = n.input(1).shape;
  if (x.size() != 4) n.fail(fmt::format("X {} must be 4-D (N, C, H, W): other ranks are not supported", shape_str(x)));
  if (g.size() != 4 || g[0] != x[0] || g[3] != 2) n.fail(fmt::format("grid {} must be [N, H_out, W_out, 2] for X {}", shape_str(g), shape_str(x)));
  s->N = x[0];
  s->C = x[1];
  s->H = x[2];
  s->W = x[3];
  s->Ho = g[1];
  s->Wo = g[2];
  const std::string mode = n.node().attr_string("mode", "bilinear");
  if (mode != "bilinear" && mode != "nearest") n.fail(fmt::format("mode '{}' not supported (bilinear, nearest)", mode));
  s->nearest = mode == "nearest";
  const std::string pad = n.node().attr_string("padding_mode", "zeros");
  if (pad == "zeros") s->padding = GridSampleState::Zeros;
  else if (pad == "border") s->padding = GridSampleState::Border;
  else if (pad == "reflection") s->padding = GridSampleState::Reflection;
  else n.fail(fmt::format("padding_mode '{}' (zeros, border or reflection)", pad));
  s->align_corners = n.node().attr_int("align_corners", 0) != 0;
  return s;
}

namespace {

// Reflects v into [lo, hi] (as often as needed); d (if given) is multiplied by the derivative's
// sign (-1 for an odd number of reflections).
float reflect(float v, float lo, float hi, float* d) {
  const float span = hi - lo;
  if (span <= 0) {
    if (d) *d = 0;
    return lo;
  }
  float sign = 1;
  if (v < lo) {
    v = 2 * lo - v;  // mirror to the right of lo
    sign = -sign;
  }
  const float off = v - lo;
  const float flips = std::floor(off / span);
  float r = off - flips * span;
  if (static_cast<int64_t>(flips) % 2 != 0) {
    r = span - r;
    sign = -sign;
  }
  if (d) *d *= sign;
  return lo + r;
}

// The source coordinate of normalized g on an axis of `size`, padding applied; dsrc is
// d(source) / d(g).
float source(const GridSampleState& s, float g, int64_t size, float* dsrc) {
  float scale = s.align_corners ? (static_cast<float>(size) - 1) / 2 : static_cast<float>(size) / 2;
  float v = s.align_corners ? (g + 1) * scale : ((g + 1) * static_cast<float>(size) - 1) / 2;
  *dsrc = scale;
  if (s.padding == GridSampleState::Border) {
    if (v < 0 || v > static_cast<float>(size - 1)) *dsrc = 0;
    v = std::clamp(v, 0.0f, static_cast<float>(size - 1));
  } else if (s.padding == GridSampleState::Reflection) {
    v = s.align_corners ? reflect(v, 0, static_cast<float>(size - 1), dsrc) : reflect(v, -0.5f, static_cast<float>(size) - 0.5f, dsrc);
    if (v < 0 || v > static_cast<float>(size - 1)) *dsrc = 0;
    v = std::clamp(v, 0.0f, static_cast<float>(size - 1));
  }
  return v;
}

// Visits the taps of output (n, i, j): f(flat index into an X plane, weight, d weight / d x,
// d weight / d y) for each tap inside the plane; dsx, dsy: d source / d grid.
template <class F>
void taps(const GridSampleState& s, const float* grid, int64_t n, int64_t i, int64_t j, float& dsx, float& dsy, F f) {
  const float* g = grid + ((n * s.Ho + i) * s.Wo + j) * 2;
  const float x = source(s, g[0], s.W, &dsx), y = source(s, g[1], s.H, &dsy);
  if (s.nearest) {
    const int64_t xi = static_cast<int64_t>(std::nearbyint(x)), yi = static_cast<int64_t>(std::nearbyint(y));
    if (xi >= 0 && xi < s.W && yi >= 0 && yi < s.H) f(yi * s.W + xi, 1.0f, 0.0f, 0.0f);
    return;
  }
  const float fx = std::floor(x), fy = std::floor(y), ax = x - fx, ay = y - fy;
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  for (int64_t dy = 0; dy < 2; ++dy)
    for (int64_t dx = 0; dx < 2; ++dx) {
      const int64_t xi = x0 + dx, yi = y0 + dy;
      if (xi < 0 || xi >= s.W || yi < 0 || yi >= s.H) continue;
      const float wx = dx ? ax : 1 - ax, wy = dy ? ay : 1 - ay;
      f(yi * s.W + xi, wx * wy, (dx ? 1.0f : -1.0f) * wy, (dy ? 1.0f : -1.0f) * wx);
    }
}

}  // namespace

void fwd_grid_sample(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GridSampleState&>(st);
  const float *X = in[0].data<float>(), *G = in[1].data<float>();
  float* Y = out[0].data<float>();
  const int64_t plane = s.H * s.W, oplane = s.Ho * s.Wo;
  pfor(s.N * oplane, 64, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const int64_t n = p / oplane, o = p % oplane;
      for (int64_t c = 0; c < s.C; ++c) Y[(n * s.C + c) * oplane + o] = 0;
      float dsx, dsy;
      taps(s, G, n, o / s.Wo, o % s.Wo, dsx, dsy, [&](int64_t e, float w, float, float) {
        for (int64_t c = 0; c < s.C; ++c) Y[(n * s.C + c) * oplane + o] += w * X[(n * s.C + c) * plane + e];
      });
    }
  });
}

void bwd_grid_sample(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GridSampleState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: GridSample backward needs X and the grid", s.node_name);
  const float *X = io.in[0].data<float>(), *G = io.in[1].data<float>(), *dY = io.dout[0].data<float>();
  float* dX = io.din[0].defined() ? io.din[0].data<float>() : nullptr;
  float* dG = io.din.size() > 1 && io.din[1].defined() ? io.din[1].data<float>() : nullptr;
  const int64_t plane = s.H * s.W, oplane = s.Ho * s.Wo;
  if (dX && !io.accumulate[0]) std::memset(dX, 0, static_cast<size_t>(s.N * s.C * plane) * sizeof(float));
  // dX: the samples' scatter (one thread per sample n: no two threads write one plane)
  pfor(s.N, 1, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t o = 0; o < oplane; ++o) {
        float dsx, dsy;
        float gx = 0, gy = 0;
        taps(s, G, n, o / s.Wo, o % s.Wo, dsx, dsy, [&](int64_t e, float w, float wdx, float wdy) {
          for (int64_t c = 0; c < s.C; ++c) {
            const float d = dY[(n * s.C + c) * oplane + o];
            if (dX) dX[(n * s.C + c) * plane + e] += w * d;
            const float v = X[(n * s.C + c) * plane + e] * d;
            gx += wdx * v;
            gy += wdy * v;
          }
        });
        if (!dG) continue;
        float* g = dG + (n * oplane + o) * 2;
        const float vx = gx * dsx, vy = gy * dsy;
        g[0] = io.accumulate[1] ? g[0] + vx : vx;
        g[1] = io.accumulate[1] ? g[1] + vy : vy;
      }
  });
}

}  // namespace smp::runtime::cpu
