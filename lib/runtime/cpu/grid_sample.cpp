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

// ---- RoiAlign ------------------------------------------------------------------------------
//
// Region r of image batch_indices[r], corners (x1, y1, x2, y2) times spatial_scale (less half a
// pixel with half_pixel), cut into Ho x Wo bins; each bin samples X bilinearly on a grid of
// sampling_ratio (or ceil(bin size)) points per axis and averages them, or with mode max takes
// the largest of the sample points' largest weighted corner, as ONNX's reference and onnxruntime
// compute it. The gradient flows to X only (to the four corners of each sample, or max's chosen
// one), as torchvision's roi_align's.

std::unique_ptr<KernelState> prep_roi_align(const NodeView& n) {
  auto s = std::make_unique<RoiAlignState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  n.require_dtype(n.input(1), {DType::F32}, "rois");
  n.require_dtype(n.input(2), {DType::I64}, "batch_indices");
  const Shape &x = n.input(0).shape, &r = n.input(1).shape, &bi = n.input(2).shape;
  if (x.size() != 4) n.fail(fmt::format("X {} must be 4-D (N, C, H, W)", shape_str(x)));
  if (r.size() != 2 || r[1] != 4) n.fail(fmt::format("rois {} must be [num_rois, 4]", shape_str(r)));
  if (bi != Shape{r[0]}) n.fail(fmt::format("batch_indices {} must be [{}]", shape_str(bi), r[0]));
  s->N = x[0];
  s->C = x[1];
  s->H = x[2];
  s->W = x[3];
  s->R = r[0];
  s->Ho = n.node().attr_int("output_height", 1);
  s->Wo = n.node().attr_int("output_width", 1);
  s->sampling = n.node().attr_int("sampling_ratio", 0);
  s->scale = static_cast<float>(n.node().attr_float("spatial_scale", 1.0));
  if (s->Ho < 1 || s->Wo < 1 || s->sampling < 0) n.fail("output_height and output_width must be positive, sampling_ratio not negative");
  const std::string mode = n.node().attr_string("mode", "avg");
  if (mode != "avg" && mode != "max") n.fail(fmt::format("mode '{}' (avg or max)", mode));
  s->max_mode = mode == "max";
  const std::string ct = n.node().attr_string("coordinate_transformation_mode", n.graph().opset >= 16 || n.graph().opset == 0 ? "half_pixel" : "output_half_pixel");
  if (ct != "half_pixel" && ct != "output_half_pixel")
    n.fail(fmt::format("coordinate_transformation_mode '{}' (half_pixel or output_half_pixel)", ct));
  s->half_pixel = ct == "half_pixel";
  return s;
}

namespace {

// One bilinear sample: the four corners' flat offsets in an H x W plane and their weights (all
// zero outside the plane).
struct Corners {
  int64_t at[4] = {0, 0, 0, 0};
  float w[4] = {0, 0, 0, 0};
};

Corners corners(const RoiAlignState& s, float y, float x) {
  Corners c;
  if (y < -1.0f || y > static_cast<float>(s.H) || x < -1.0f || x > static_cast<float>(s.W)) return c;
  y = std::max(y, 0.0f);
  x = std::max(x, 0.0f);
  int64_t y0 = static_cast<int64_t>(y), x0 = static_cast<int64_t>(x), y1, x1;
  if (y0 >= s.H - 1) {
    y0 = y1 = s.H - 1;
    y = static_cast<float>(y0);
  } else {
    y1 = y0 + 1;
  }
  if (x0 >= s.W - 1) {
    x0 = x1 = s.W - 1;
    x = static_cast<float>(x0);
  } else {
    x1 = x0 + 1;
  }
  const float ly = y - static_cast<float>(y0), lx = x - static_cast<float>(x0), hy = 1.0f - ly, hx = 1.0f - lx;
  c.at[0] = y0 * s.W + x0;
  c.at[1] = y0 * s.W + x1;
  c.at[2] = y1 * s.W + x0;
  c.at[3] = y1 * s.W + x1;
  c.w[0] = hy * hx;
  c.w[1] = hy * lx;
  c.w[2] = ly * hx;
  c.w[3] = ly * lx;
  return c;
}

// A region's geometry: its corner, size and sampling grid per bin.
struct Region {
  float x1 = 0, y1 = 0, rw = 0, rh = 0;
  int64_t gh = 1, gw = 1;
};

Region region(const RoiAlignState& s, const float* roi) {
  const float off = s.half_pixel ? 0.5f : 0.0f;
  Region r;
  r.x1 = roi[0] * s.scale - off;
  r.y1 = roi[1] * s.scale - off;
  r.rw = roi[2] * s.scale - off - r.x1;
  r.rh = roi[3] * s.scale - off - r.y1;
  if (!s.half_pixel) {
    r.rw = std::max(r.rw, 1.0f);
    r.rh = std::max(r.rh, 1.0f);
  }
  if (s.sampling > 0) {
    r.gh = r.gw = s.sampling;
  } else if (std::isfinite(r.rh) && std::isfinite(r.rw)) {
    r.gh = static_cast<int64_t>(std::ceil(std::clamp(r.rh / static_cast<float>(s.Ho), -1.0f, 1e9f)));
    r.gw = static_cast<int64_t>(std::ceil(std::clamp(r.rw / static_cast<float>(s.Wo), -1.0f, 1e9f)));
  }
  return r;
}

// Every region's image index and geometry valid (a region of NaN or huge coordinates would
// sample without end): bad input naming the node otherwise.
void check_regions(const RoiAlignState& s, const Tensor& rois, const Tensor& batch_indices) {
  for (int64_t r = 0; r < s.R; ++r) {
    const int64_t b = batch_indices.data<int64_t>()[r];
    if (b < 0 || b >= s.N)
      throw_bad_input("node " + s.node_name + " (RoiAlign)", fmt::format("batch index {} of region {} is outside [0, {})", b, r, s.N));
    const float* roi = rois.data<float>() + r * 4;
    const Region g = region(s, roi);
    if (!std::isfinite(g.x1) || !std::isfinite(g.y1) || !std::isfinite(g.rw) || !std::isfinite(g.rh) || g.gh * g.gw > (int64_t{1} << 20))
      throw_bad_input("node " + s.node_name + " (RoiAlign)",
                      fmt::format("region {} ({}, {}, {}, {}) is not finite or needs over 2^20 samples per bin", r, roi[0], roi[1], roi[2], roi[3]));
  }
}

// Calls f(bin index, the bin's samples, the sample count) for each bin of a region.
template <class F>
void for_bins(const RoiAlignState& s, const float* roi, F f) {
  const Region g = region(s, roi);
  const float x1 = g.x1, y1 = g.y1, rw = g.rw, rh = g.rh;
  const int64_t gh = g.gh, gw = g.gw;
  const float bh = rh / static_cast<float>(s.Ho), bw = rw / static_cast<float>(s.Wo);
  const int64_t count = std::max<int64_t>(gh * gw, 1);
  std::vector<Corners> samples;
  for (int64_t ph = 0; ph < s.Ho; ++ph)
    for (int64_t pw = 0; pw < s.Wo; ++pw) {
      samples.clear();
      for (int64_t iy = 0; iy < gh; ++iy) {
        const float y = y1 + static_cast<float>(ph) * bh + (static_cast<float>(iy) + 0.5f) * bh / static_cast<float>(gh);
        for (int64_t ix = 0; ix < gw; ++ix) {
          const float x = x1 + static_cast<float>(pw) * bw + (static_cast<float>(ix) + 0.5f) * bw / static_cast<float>(gw);
          samples.push_back(corners(s, y, x));
        }
      }
      f(ph * s.Wo + pw, samples, count);
    }
}

// Max mode: each sample's largest weighted corner (its index into the corners), and the sample
// whose is largest.
std::pair<size_t, int> max_sample(const std::vector<Corners>& samples, const float* x) {
  std::pair<size_t, int> best{0, -1};
  float m = 0.0f;
  for (size_t k = 0; k < samples.size(); ++k)
    for (int j = 0; j < 4; ++j) {
      const float v = samples[k].w[j] * x[samples[k].at[j]];
      if (best.second < 0 || v > m) {
        m = v;
        best = {k, j};
      }
    }
  return best;
}

}  // namespace

void fwd_roi_align(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const RoiAlignState&>(st);
  const float *X = in[0].data<float>(), *rois = in[1].data<float>();
  float* Y = out[0].data<float>();
  check_regions(s, in[1], in[2]);
  const int64_t plane = s.H * s.W, bins = s.Ho * s.Wo;
  pfor(s.R * s.C, 1, [&](int64_t q0, int64_t q1) {
    for (int64_t q = q0; q < q1; ++q) {
      const int64_t r = q / s.C, c = q % s.C;
      const float* x = X + (in[2].data<int64_t>()[r] * s.C + c) * plane;
      float* y = Y + q * bins;
      for_bins(s, rois + r * 4, [&](int64_t bin, const std::vector<Corners>& samples, int64_t count) {
        if (s.max_mode) {
          const auto [k, j] = max_sample(samples, x);
          y[bin] = j < 0 ? 0.0f : samples[k].w[j] * x[samples[k].at[j]];
          return;
        }
        float t = 0.0f;
        for (const auto& sm : samples)
          for (int j = 0; j < 4; ++j) t += sm.w[j] * x[sm.at[j]];
        y[bin] = t / static_cast<float>(count);
      });
    }
  });
}

void bwd_roi_align(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const RoiAlignState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined() && io.in[2].defined(), "node {}: RoiAlign backward needs X, rois and batch_indices (not declared saved)", s.node_name);
  const float *X = io.in[0].data<float>(), *rois = io.in[1].data<float>(), *dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  if (!io.accumulate[0]) std::memset(dX, 0, static_cast<size_t>(io.din[0].numel()) * sizeof(float));
  check_regions(s, io.in[1], io.in[2]);
  const int64_t plane = s.H * s.W, bins = s.Ho * s.Wo;
  // regions may share an image: parallel over channels, each writing its own planes
  pfor(s.C, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c)
      for (int64_t r = 0; r < s.R; ++r) {
        const int64_t img = io.in[2].data<int64_t>()[r];
        const float* x = X + (img * s.C + c) * plane;
        float* dx = dX + (img * s.C + c) * plane;
        const float* dy = dY + (r * s.C + c) * bins;
        for_bins(s, rois + r * 4, [&](int64_t bin, const std::vector<Corners>& samples, int64_t count) {
          if (s.max_mode) {
            const auto [k, j] = max_sample(samples, x);
            if (j >= 0) dx[samples[k].at[j]] += samples[k].w[j] * dy[bin];
            return;
          }
          const float g = dy[bin] / static_cast<float>(count);
          for (const auto& sm : samples)
            for (int j = 0; j < 4; ++j) dx[sm.at[j]] += sm.w[j] * g;
        });
      }
  });
}

}  // namespace smp::runtime::cpu
