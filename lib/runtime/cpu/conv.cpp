// Conv (1-D to 3-D; groups, dilations, pads, auto_pad) as im2col + sgemm; ConvTranspose as col2im
// of sgemm; MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"
#include "runtime/cpu/quant.hpp"

#include <cblas.h>
#include <fmt/format.h>

#include <cfloat>
#include <cmath>
#include <limits>

namespace smp::runtime::cpu {

using graph::Op;

namespace {

// Fills the last `sp` of Geom's (d, h, w) axes: input, output, kernel, stride, dilation sizes and
// begin/end padding per spatial axis.
void set_axes(Geom& g, size_t sp, const std::vector<int64_t>& in, const std::vector<int64_t>& out,
              const std::vector<int64_t>& kernel, const std::vector<int64_t>& strides, const std::vector<int64_t>& dil,
              const std::vector<int64_t>& pb, const std::vector<int64_t>& pe) {
  int64_t* axes[3][7] = {{&g.id, &g.od, &g.kd, &g.sd, &g.dd, &g.pd, &g.pd_end},
                         {&g.ih, &g.oh, &g.kh, &g.sh, &g.dh, &g.ph, &g.ph_end},
                         {&g.iw, &g.ow, &g.kw, &g.sw, &g.dw, &g.pw, &g.pw_end}};
  g.spatial = static_cast<int>(sp);
  for (size_t i = 0; i < sp; ++i) {
    int64_t** a = axes[3 - sp + i];
    *a[0] = in[i];
    *a[1] = out[i];
    *a[2] = kernel[i];
    *a[3] = strides[i];
    *a[4] = dil[i];
    *a[5] = pb[i];
    *a[6] = pe[i];
  }
}

// Reads kernel_shape/strides/dilations/pads/auto_pad; checks the graph's output size against the
// computed one. `ceil` for pooling's ceil_mode.
Geom make_geom(const NodeView& n, const Shape& x, const Shape& y, std::vector<int64_t> kernel, bool ceil) {
  size_t sp = x.size() - 2;
  if (sp < 1 || sp > 3) n.fail(fmt::format("{}-D spatial input not supported (1-D to 3-D)", sp));
  if (kernel.size() != sp) n.fail("kernel_shape does not match the input's spatial rank");
  auto strides = n.node().attr_ints("strides", std::vector<int64_t>(sp, 1));
  auto dil = n.node().attr_ints("dilations", std::vector<int64_t>(sp, 1));
  auto pads = n.node().attr_ints("pads", std::vector<int64_t>(2 * sp, 0));
  std::string ap = n.node().attr_string("auto_pad", "NOTSET");
  if (strides.size() != sp || dil.size() != sp || pads.size() != 2 * sp) n.fail("strides, dilations or pads of the wrong length");
  std::vector<int64_t> in(x.begin() + 2, x.end());
  std::vector<int64_t> out(sp), pb(sp), pe(sp);
  for (size_t i = 0; i < sp; ++i) {
    int64_t ek = (kernel[i] - 1) * dil[i] + 1;
    if (ap == "NOTSET") {
      pb[i] = pads[i];
      pe[i] = pads[i + sp];
      int64_t num = in[i] + pb[i] + pe[i] - ek;
      out[i] = (ceil ? (num + strides[i] - 1) / strides[i] : num / strides[i]) + 1;
      if (ceil && (out[i] - 1) * strides[i] >= in[i] + pb[i]) --out[i];
    } else if (ap == "VALID") {
      pb[i] = pe[i] = 0;
      out[i] = (in[i] - ek) / strides[i] + 1;
      if (ceil) out[i] = (in[i] - ek + strides[i] - 1) / strides[i] + 1;
    } else if (ap == "SAME_UPPER" || ap == "SAME_LOWER") {
      out[i] = (in[i] + strides[i] - 1) / strides[i];
      int64_t total = std::max<int64_t>(0, (out[i] - 1) * strides[i] + ek - in[i]);
      pb[i] = ap == "SAME_UPPER" ? total / 2 : total - total / 2;
      pe[i] = total - pb[i];
    } else {
      n.fail(fmt::format("auto_pad '{}' not supported", ap));
    }
  }
  for (size_t i = 0; i < sp; ++i)
    if (y[2 + i] != out[i])
      n.fail(fmt::format("output spatial size {} differs from the computed {}", shape_str(y), out[i]));
  Geom g;
  set_axes(g, sp, in, out, kernel, strides, dil, pb, pe);
  return g;
}

// col [C * kd * kh * kw, nimg * od * oh * ow] (rows ld apart) from nimg images x [C, id, ih, iw]
// (x_stride apart): image j's columns are [j * od * oh * ow, (j + 1) * od * oh * ow) of each row.
template <class T>
void im2col(const Geom& g, int64_t C, const T* x, int64_t x_stride, int64_t nimg, T* col, int64_t ld) {
  const int64_t ohw = g.oh * g.ow, out = g.out_size(), kk = g.kernel_size();
  pfor(C * kk, std::max<int64_t>(1, 8 / nimg), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t c = r / kk, kz = (r / (g.kh * g.kw)) % g.kd, ki = (r / g.kw) % g.kh, kj = r % g.kw;
      for (int64_t j = 0; j < nimg; ++j)
        for (int64_t oz = 0; oz < g.od; ++oz) {
          T* dst = col + r * ld + j * out + oz * ohw;
          int64_t iz = oz * g.sd - g.pd + kz * g.dd;
          if (iz < 0 || iz >= g.id) {
            std::memset(dst, 0, static_cast<size_t>(ohw) * sizeof(T));
            continue;
          }
          const T* xc = x + j * x_stride + (c * g.id + iz) * g.ih * g.iw;
          for (int64_t oy = 0; oy < g.oh; ++oy) {
            int64_t iy = oy * g.sh - g.ph + ki * g.dh;
            T* d = dst + oy * g.ow;
            if (iy < 0 || iy >= g.ih) {
              std::memset(d, 0, static_cast<size_t>(g.ow) * sizeof(T));
              continue;
            }
            const T* xr = xc + iy * g.iw;
            int64_t off = kj * g.dw - g.pw;
            if (g.sw == 1 && off >= 0 && off + g.ow <= g.iw) {
              std::memcpy(d, xr + off, static_cast<size_t>(g.ow) * sizeof(T));
              continue;
            }
            for (int64_t ox = 0; ox < g.ow; ++ox) {
              int64_t ix = ox * g.sw + off;
              d[ox] = (ix >= 0 && ix < g.iw) ? xr[ix] : T(0);
            }
          }
        }
    }
  });
}

// nimg images dx [C, id, ih, iw] (dx_stride apart) += col2im(dcol), dcol laid out as im2col's col
void col2im(const Geom& g, int64_t C, const float* col, int64_t ld, int64_t nimg, float* dx, int64_t dx_stride) {
  const int64_t ohw = g.oh * g.ow, out = g.out_size(), kk = g.kernel_size();
  pfor(C * nimg, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t c = i / nimg, j = i % nimg;
      for (int64_t k = 0; k < kk; ++k) {
        const int64_t kz = k / (g.kh * g.kw), ki = (k / g.kw) % g.kh, kj = k % g.kw;
        for (int64_t oz = 0; oz < g.od; ++oz) {
          int64_t iz = oz * g.sd - g.pd + kz * g.dd;
          if (iz < 0 || iz >= g.id) continue;
          float* xc = dx + j * dx_stride + (c * g.id + iz) * g.ih * g.iw;
          const float* src = col + (c * kk + k) * ld + j * out + oz * ohw;
          for (int64_t oy = 0; oy < g.oh; ++oy) {
            int64_t iy = oy * g.sh - g.ph + ki * g.dh;
            if (iy < 0 || iy >= g.ih) continue;
            float* xr = xc + iy * g.iw;
            const float* s = src + oy * g.ow;
            int64_t off = kj * g.dw - g.pw;
            for (int64_t ox = 0; ox < g.ow; ++ox) {
              int64_t ix = ox * g.sw + off;
              if (ix >= 0 && ix < g.iw) xr[ix] += s[ox];
            }
          }
        }
      }
    }
  });
}

// y [N, M, hw] += the bias of each channel (Conv, ConvTranspose).
void add_bias(const float* B, float* Y, int64_t N, int64_t M, int64_t hw) {
  pfor(N * M, std::max<int64_t>(1, kGrain / std::max<int64_t>(hw, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      float bv = B[r % M];
      float* y = Y + r * hw;
#pragma omp simd
      for (int64_t i = 0; i < hw; ++i) y[i] += bv;
    }
  });
}

// dB (=, or += with acc) the sum of dy [N, M, hw] over all but the channel: float per plane, double across.
void bias_grad(const float* dY, float* dB, int64_t N, int64_t M, int64_t hw, bool acc) {
  std::vector<double> sum(static_cast<size_t>(M), 0.0);
  for (int64_t b = 0; b < N; ++b)
    for (int64_t m = 0; m < M; ++m) {
      const float* p = dY + (b * M + m) * hw;
      float t = 0;
#pragma omp simd reduction(+ : t)
      for (int64_t i = 0; i < hw; ++i) t += p[i];
      sum[static_cast<size_t>(m)] += t;
    }
  for (int64_t m = 0; m < M; ++m) dB[m] = (acc ? dB[m] : 0.0f) + static_cast<float>(sum[static_cast<size_t>(m)]);
}

// Rows [b0, b0 + nimg) x [m0, m0 + rows) of t [N, M, ohw] to / from w [rows, nimg * ohw]
// (image j's columns at j * ohw), the layout of a product over several images' columns.
void gather_images(const float* t, int64_t M, int64_t ohw, int64_t b0, int64_t nimg, int64_t m0, int64_t rows, float* w) {
  pfor(rows * nimg, std::max<int64_t>(1, kGrain / std::max<int64_t>(ohw, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t m = i / nimg, j = i % nimg;
      std::memcpy(w + m * nimg * ohw + j * ohw, t + ((b0 + j) * M + m0 + m) * ohw, static_cast<size_t>(ohw) * sizeof(float));
    }
  });
}
// Images per product of a chunk: the state's choice, but at least one chunk per thread.
int64_t images_per_chunk(const ConvState& s) {
  const int64_t nt = pool_threads();
  return nt > 1 ? std::max<int64_t>(1, std::min(s.images_per_gemm, (s.N + nt - 1) / nt)) : s.images_per_gemm;
}

// dW += the sum of n per-thread partial sums of `size` floats each
void add_parts(const std::vector<float>& parts, int64_t n, int64_t size, float* dW) {
  pfor(size, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t t = 0; t < n; ++t) {
      const float* p = parts.data() + t * size;
      for (int64_t i = i0; i < i1; ++i) dW[i] += p[i];
    }
  });
}

void scatter_images(const float* w, int64_t M, int64_t ohw, int64_t b0, int64_t nimg, int64_t m0, int64_t rows, float* t) {
  pfor(rows * nimg, std::max<int64_t>(1, kGrain / std::max<int64_t>(ohw, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      int64_t m = i / nimg, j = i % nimg;
      std::memcpy(t + ((b0 + j) * M + m0 + m) * ohw, w + m * nimg * ohw + j * ohw, static_cast<size_t>(ohw) * sizeof(float));
    }
  });
}

}  // namespace

// Conv's layout (N, C, M, groups, geometry) from input x_input and weight w_input.
static void conv_layout(const NodeView& n, int x_input, int w_input, ConvState& s) {
  const Shape &x = n.input(x_input).shape, &w = n.input(w_input).shape, &y = n.output(0).shape;
  if (x.size() < 3 || w.size() != x.size()) n.fail("X and W must have the same rank, at least 3");
  s.N = x[0];
  s.C = x[1];
  s.M = w[0];
  s.groups = n.node().attr_int("group", 1);
  if (s.groups < 1 || s.C % s.groups != 0 || s.M % s.groups != 0 || w[1] * s.groups != s.C)
    n.fail(fmt::format("group {} does not divide the channels", s.groups));
  std::vector<int64_t> kernel(w.begin() + 2, w.end());
  auto ks = n.node().attr_ints("kernel_shape", kernel);
  if (ks != kernel) n.fail("kernel_shape differs from the weight's shape");
  s.g = make_geom(n, x, y, kernel, false);
  const Geom& g = s.g;
  s.pointwise = g.kernel_size() == 1 && g.sd == 1 && g.sh == 1 && g.sw == 1 && g.pd == 0 && g.ph == 0 && g.pw == 0 &&
                g.pd_end == 0 && g.ph_end == 0 && g.pw_end == 0;
  if (y[1] != s.M) n.fail("output channels differ from the weight's");
}

std::unique_ptr<KernelState> prep_conv(const NodeView& n) {
  auto s = std::make_unique<ConvState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  n.require_dtype(n.input(1), {DType::F32}, "weight W");
  conv_layout(n, 0, 1, *s);
  const Geom& g = s->g;
  if (n.has_input(2)) {
    n.require_dtype(n.input(2), {DType::F32}, "bias B");
    if (n.input(2).shape != Shape{s->M}) n.fail("bias must be [M]");
    s->has_bias = true;
  }
  // Images per product: a small output (ResNet's later stages, 8x8 down to 1x1) makes one image's
  // product thin (oh * ow columns, down to a matrix-vector product), which OpenBLAS runs far below
  // its peak; the columns of several images side by side make it wide (at least kWideColumns),
  // bounded to 1 Mi floats of columns.
  constexpr int64_t kWideColumns = 512;
  const int64_t ohw = g.out_size(), ckk = s->C / s->groups * g.kernel_size();
  if (ohw < kWideColumns) {
    int64_t nb = std::min(s->N, (kWideColumns + ohw - 1) / ohw);
    s->images_per_gemm = std::max<int64_t>(1, std::min(nb, (int64_t{1} << 20) / std::max<int64_t>(ckk * ohw, 1)));
  }
  return s;
}

void fwd_conv(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ConvState&>(st);
  const Geom& g = s.g;
  const float* X = in[0].data<float>();
  const float* W = in[1].data<float>();
  float* Y = out[0].data<float>();
  int64_t Cg = s.C / s.groups, Mg = s.M / s.groups, kk = g.kernel_size(), ohw = g.out_size(), ihw = g.in_size();
  if (s.images_per_gemm > 1) {  // several images per product: [Mg, Cg*kk] . [Cg*kk, nb*ohw], then into Y's layout
    const int64_t nb = images_per_chunk(s), chunks = (s.N + nb - 1) / nb;
    auto chunk = [&](int64_t ci, float* col, float* yt, bool serial) {
      const int64_t b0 = ci * nb, nc = std::min(nb, s.N - b0), ld = nc * ohw;
      for (int64_t gr = 0; gr < s.groups; ++gr) {
        im2col(g, Cg, X + (b0 * s.C + gr * Cg) * ihw, s.C * ihw, nc, col, ld);
        (serial ? gemm_serial : gemm)(false, false, Mg, ld, Cg * kk, 1.0f, W + gr * Mg * Cg * kk, Cg * kk, col, ld, 0.0f, yt, ld);
        scatter_images(yt, s.M, ohw, b0, nc, gr * Mg, Mg, Y);
      }
    };
    // chunks across threads (each its own serial products), as the one-image path does images
    pfor(chunks, 1, [&](int64_t c0, int64_t c1) {
      Tensor colt = scratch(ctx, DType::F32, {Cg * kk, nb * ohw}), yt = scratch(ctx, DType::F32, {Mg, nb * ohw});
      for (int64_t ci = c0; ci < c1; ++ci) chunk(ci, colt.data<float>(), yt.data<float>(), c1 - c0 < chunks);
    });
  } else {
    bool by_image = s.N >= 2 && pool_threads() > 1;
    auto image = [&](int64_t b, float* col_buf, bool serial) {
      for (int64_t gr = 0; gr < s.groups; ++gr) {
        const float* xg = X + (b * s.C + gr * Cg) * ihw;
        const float* col = xg;
        if (!s.pointwise) {
          im2col(g, Cg, xg, 0, 1, col_buf, ohw);
          col = col_buf;
        }
        (serial ? gemm_serial : gemm)(false, false, Mg, ohw, Cg * kk, 1.0f, W + gr * Mg * Cg * kk, Cg * kk, col, ohw, 0.0f,
                                      Y + (b * s.M + gr * Mg) * ohw, ohw);
      }
    };
    if (by_image) {
      pfor(s.N, 1, [&](int64_t b0, int64_t b1) {
        Tensor colt;
        if (!s.pointwise) colt = scratch(ctx, DType::F32, {Cg * kk, ohw});
        for (int64_t b = b0; b < b1; ++b) image(b, s.pointwise ? nullptr : colt.data<float>(), true);
      });
    } else {
      Tensor colt;
      if (!s.pointwise) colt = scratch(ctx, DType::F32, {Cg * kk, ohw});
      for (int64_t b = 0; b < s.N; ++b) image(b, s.pointwise ? nullptr : colt.data<float>(), false);
    }
  }
  if (s.has_bias) add_bias(in[2].data<float>(), Y, s.N, s.M, ohw);
}

void bwd_conv(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const ConvState&>(st);
  if (!io.dout[0].defined()) return;
  const Geom& g = s.g;
  const float* dY = io.dout[0].data<float>();
  int64_t Cg = s.C / s.groups, Mg = s.M / s.groups, kk = g.kernel_size(), ohw = g.out_size(), ihw = g.in_size();
  bool want_dx = io.din[0].defined(), want_dw = io.din[1].defined();
  const float* X = want_dw ? io.in[0].data<float>() : nullptr;
  const float* W = want_dx ? io.in[1].data<float>() : nullptr;
  if (want_dw) SMP_CHECK(io.in[0].defined(), "node {}: Conv backward needs X (not declared saved)", s.node_name);
  if (want_dx) SMP_CHECK(io.in[1].defined(), "node {}: Conv backward needs W (not declared saved)", s.node_name);
  float* dX = want_dx ? io.din[0].data<float>() : nullptr;
  bool accx = want_dx && io.accumulate[0];
  int64_t wsize = s.M * Cg * kk;
  // one image: dW_part += dY_g . col^T; dX = col2im(W_g^T . dY_g)
  auto image = [&](int64_t b, float* col, float* dW, bool serial) {
    auto mm = serial ? gemm_serial : gemm;
    for (int64_t gr = 0; gr < s.groups; ++gr) {
      const float* dy = dY + (b * s.M + gr * Mg) * ohw;
      if (dW) {
        const float* xg = X + (b * s.C + gr * Cg) * ihw;
        const float* c = xg;
        if (!s.pointwise) {
          im2col(g, Cg, xg, 0, 1, col, ohw);
          c = col;
        }
        mm(false, true, Mg, Cg * kk, ohw, 1.0f, dy, ohw, c, ohw, 1.0f, dW + gr * Mg * Cg * kk, Cg * kk);
      }
      if (dX) {
        float* dxg = dX + (b * s.C + gr * Cg) * ihw;
        const float* wg = W + gr * Mg * Cg * kk;
        if (s.pointwise) {
          mm(true, false, Cg, ohw, Mg, 1.0f, wg, Cg * kk, dy, ohw, accx ? 1.0f : 0.0f, dxg, ohw);
        } else {
          mm(true, false, Cg * kk, ohw, Mg, 1.0f, wg, Cg * kk, dy, ohw, 0.0f, col, ohw);
          if (!accx) std::memset(dxg, 0, static_cast<size_t>(Cg * ihw) * sizeof(float));
          col2im(g, Cg, col, ohw, 1, dxg, 0);
        }
      }
    }
  };
  if (want_dx || want_dw) {
    float* dW = want_dw ? io.din[1].data<float>() : nullptr;
    if (want_dw && !io.accumulate[1]) std::memset(dW, 0, static_cast<size_t>(wsize) * sizeof(float));
    int nt = pool_threads();
    if (s.images_per_gemm > 1) {  // several images per product, as the forward
      const int64_t nb = images_per_chunk(s), chunks = (s.N + nb - 1) / nb;
      auto chunk = [&](int64_t ci, float* col, float* dyt, float* dWp, bool serial) {
        auto mm = serial ? gemm_serial : gemm;
        const int64_t b0 = ci * nb, nc = std::min(nb, s.N - b0), ld = nc * ohw;
        for (int64_t gr = 0; gr < s.groups; ++gr) {
          gather_images(dY, s.M, ohw, b0, nc, gr * Mg, Mg, dyt);
          if (dWp) {
            im2col(g, Cg, X + (b0 * s.C + gr * Cg) * ihw, s.C * ihw, nc, col, ld);
            mm(false, true, Mg, Cg * kk, ld, 1.0f, dyt, ld, col, ld, 1.0f, dWp + gr * Mg * Cg * kk, Cg * kk);
          }
          if (dX) {
            float* dxg = dX + (b0 * s.C + gr * Cg) * ihw;
            mm(true, false, Cg * kk, ld, Mg, 1.0f, W + gr * Mg * Cg * kk, Cg * kk, dyt, ld, 0.0f, col, ld);
            if (!accx)
              for (int64_t j = 0; j < nc; ++j) std::memset(dxg + j * s.C * ihw, 0, static_cast<size_t>(Cg * ihw) * sizeof(float));
            col2im(g, Cg, col, ld, nc, dxg, s.C * ihw);
          }
        }
      };
      const int64_t parts_n = std::min<int64_t>(nt, chunks);
      if (parts_n > 1) {  // chunks across threads, each its own weight-gradient sum, added up after
        std::vector<float> parts(want_dw ? static_cast<size_t>(parts_n * wsize) : 0, 0.0f);
        parallel_region(static_cast<int>(parts_n), [&](int64_t t, int64_t c) {
          Tensor colt = scratch(ctx, DType::F32, {Cg * kk, nb * ohw}), dyt = scratch(ctx, DType::F32, {Mg, nb * ohw});
          for (int64_t ci = chunks * t / c; ci < chunks * (t + 1) / c; ++ci)
            chunk(ci, colt.data<float>(), dyt.data<float>(), want_dw ? parts.data() + t * wsize : nullptr, true);
        });
        if (want_dw) add_parts(parts, parts_n, wsize, dW);
      } else {
        Tensor colt = scratch(ctx, DType::F32, {Cg * kk, nb * ohw}), dyt = scratch(ctx, DType::F32, {Mg, nb * ohw});
        for (int64_t ci = 0; ci < chunks; ++ci) chunk(ci, colt.data<float>(), dyt.data<float>(), dW, false);
      }
    } else if (s.N >= 2 && nt > 1) {
      int64_t chunks = std::min<int64_t>(nt, s.N);
      std::vector<float> parts(want_dw ? static_cast<size_t>(chunks * wsize) : 0, 0.0f);
      parallel_region(static_cast<int>(chunks), [&](int64_t t, int64_t c) {
        Tensor colt;
        if (!s.pointwise) colt = scratch(ctx, DType::F32, {Cg * kk, ohw});
        for (int64_t b = s.N * t / c; b < s.N * (t + 1) / c; ++b)
          image(b, s.pointwise ? nullptr : colt.data<float>(), want_dw ? parts.data() + t * wsize : nullptr, true);
      });
      if (want_dw) add_parts(parts, chunks, wsize, dW);
    } else {
      Tensor colt;
      if (!s.pointwise) colt = scratch(ctx, DType::F32, {Cg * kk, ohw});
      for (int64_t b = 0; b < s.N; ++b) image(b, s.pointwise ? nullptr : colt.data<float>(), dW, false);
    }
  }
  if (io.din.size() > 2 && io.din[2].defined()) bias_grad(dY, io.din[2].data<float>(), s.N, s.M, ohw, io.accumulate[2]);
}

// ---- ConvTranspose -------------------------------------------------------------------------
//
// Conv's gradient with respect to its input, run forward: Y = col2im(Wᵀ X) per image and group,
// W [C_in, C_out / group, k...]. The state's Geom is that of the Conv whose input has Y's shape
// and whose output has X's (ih, iw: Y's spatial size; oh, ow: X's), so that im2col and col2im
// serve both directions; C is X's channels, M is Y's.

namespace {
// floor(t / 2) for negative t too (ONNX's formulas are Python's)
int64_t floor_half(int64_t t) { return t >= 0 ? t / 2 : -((1 - t) / 2); }
}  // namespace

std::unique_ptr<KernelState> prep_conv_transpose(const NodeView& n) {
  auto s = std::make_unique<ConvState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  n.require_dtype(n.input(1), {DType::F32}, "weight W");
  const Shape &x = n.input(0).shape, &w = n.input(1).shape, &y = n.output(0).shape;
  if (x.size() < 3 || w.size() != x.size() || y.size() != x.size()) n.fail("X, W and Y must have the same rank, at least 3");
  const size_t sp = x.size() - 2;
  if (sp > 3) n.fail(fmt::format("{}-D spatial input not supported (1-D to 3-D)", sp));
  s->N = x[0];
  s->C = x[1];
  s->groups = n.node().attr_int("group", 1);
  if (s->groups < 1 || w[0] != s->C || s->C % s->groups != 0)
    n.fail(fmt::format("W {} does not fit X {} with group {}", shape_str(w), shape_str(x), s->groups));
  s->M = w[1] * s->groups;
  if (y[1] != s->M) n.fail(fmt::format("Y has {} channels, W and group give {}", y[1], s->M));
  std::vector<int64_t> kernel(w.begin() + 2, w.end());
  if (n.node().attr_ints("kernel_shape", kernel) != kernel) n.fail("kernel_shape differs from the weight's shape");
  auto strides = n.node().attr_ints("strides", std::vector<int64_t>(sp, 1));
  auto dil = n.node().attr_ints("dilations", std::vector<int64_t>(sp, 1));
  auto pads = n.node().attr_ints("pads", std::vector<int64_t>(2 * sp, 0));
  auto outpad = n.node().attr_ints("output_padding", std::vector<int64_t>(sp, 0));
  const bool has_output_shape = n.node().has_attr("output_shape");
  const std::string ap = n.node().attr_string("auto_pad", "NOTSET");
  if (strides.size() != sp || dil.size() != sp || pads.size() != 2 * sp || outpad.size() != sp)
    n.fail("strides, dilations, pads or output_padding of the wrong length");
  if (ap != "NOTSET" && ap != "VALID" && ap != "SAME_UPPER" && ap != "SAME_LOWER") n.fail(fmt::format("auto_pad '{}' not supported", ap));
  std::vector<int64_t> pb(sp);
  for (size_t i = 0; i < sp; ++i) {
    if (strides[i] < 1 || dil[i] < 1) n.fail("strides and dilations must be positive");
    const int64_t full = strides[i] * (x[2 + i] - 1) + outpad[i] + (kernel[i] - 1) * dil[i] + 1, out = y[2 + i];
    if (has_output_shape || ap == "SAME_UPPER" || ap == "SAME_LOWER") {  // the padding that gives Y's size
      const int64_t total = full - out;
      pb[i] = ap == "SAME_UPPER" ? floor_half(total) : total - floor_half(total);
    } else if (ap == "VALID") {
      pb[i] = 0;
      if (out != full) n.fail(fmt::format("output spatial size {} differs from the computed {}", shape_str(y), full));
    } else {
      pb[i] = pads[i];
      if (out != full - pads[i] - pads[i + sp])
        n.fail(fmt::format("output spatial size {} differs from the computed {}", shape_str(y), full - pads[i] - pads[i + sp]));
    }
  }
  // Conv's geometry with Y as its input and X as its output (end pads unused by im2col/col2im)
  set_axes(s->g, sp, std::vector<int64_t>(y.begin() + 2, y.end()), std::vector<int64_t>(x.begin() + 2, x.end()), kernel,
           strides, dil, pb, std::vector<int64_t>(sp, 0));
  if (n.has_input(2)) {
    n.require_dtype(n.input(2), {DType::F32}, "bias B");
    if (n.input(2).shape != Shape{s->M}) n.fail(fmt::format("bias must be [{}]", s->M));
    s->has_bias = true;
  }
  return s;
}

void fwd_conv_transpose(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ConvState&>(st);
  const Geom& g = s.g;
  const float *X = in[0].data<float>(), *W = in[1].data<float>();
  const float* B = s.has_bias ? in[2].data<float>() : nullptr;
  float* Y = out[0].data<float>();
  const int64_t Cg = s.C / s.groups, Mg = s.M / s.groups, kk = g.kernel_size(), xhw = g.out_size(), yhw = g.in_size();
  std::memset(Y, 0, static_cast<size_t>(s.N * s.M * yhw) * sizeof(float));
  Tensor colt = scratch(ctx, DType::F32, {Mg * kk, xhw});
  float* col = colt.data<float>();
  for (int64_t b = 0; b < s.N; ++b)
    for (int64_t gr = 0; gr < s.groups; ++gr) {
      // col [Mg * kk, xhw] = W_gᵀ X_g, W_g [Cg, Mg * kk]
      gemm(true, false, Mg * kk, xhw, Cg, 1.0f, W + gr * Cg * Mg * kk, Mg * kk, X + (b * s.C + gr * Cg) * xhw, xhw, 0.0f, col, xhw);
      col2im(g, Mg, col, xhw, 1, Y + (b * s.M + gr * Mg) * yhw, 0);
    }
  if (B) add_bias(B, Y, s.N, s.M, yhw);
}

void bwd_conv_transpose(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const ConvState&>(st);
  if (!io.dout[0].defined()) return;
  const Geom& g = s.g;
  const float* dY = io.dout[0].data<float>();
  const bool want_dx = io.din[0].defined(), want_dw = io.din[1].defined();
  const int64_t Cg = s.C / s.groups, Mg = s.M / s.groups, kk = g.kernel_size(), xhw = g.out_size(), yhw = g.in_size();
  if (want_dx || want_dw) {
    SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: ConvTranspose backward needs X and W", s.node_name);
    const float *X = io.in[0].data<float>(), *W = io.in[1].data<float>();
    float* dX = want_dx ? io.din[0].data<float>() : nullptr;
    float* dW = want_dw ? io.din[1].data<float>() : nullptr;
    const int64_t wsize = s.C * Mg * kk;
    if (dW && !io.accumulate[1]) std::memset(dW, 0, static_cast<size_t>(wsize) * sizeof(float));
    Tensor colt = scratch(ctx, DType::F32, {Mg * kk, xhw});
    float* col = colt.data<float>();
    for (int64_t b = 0; b < s.N; ++b)
      for (int64_t gr = 0; gr < s.groups; ++gr) {
        im2col(g, Mg, dY + (b * s.M + gr * Mg) * yhw, 0, 1, col, xhw);  // dY's columns at X's positions
        const float* Wg = W + gr * Cg * Mg * kk;
        if (dX) {  // dX_g = W_g col
          const bool first = !io.accumulate[0];
          gemm(false, false, Cg, xhw, Mg * kk, 1.0f, Wg, Mg * kk, col, xhw, first ? 0.0f : 1.0f, dX + (b * s.C + gr * Cg) * xhw, xhw);
        }
        if (dW)  // dW_g += X_g colᵀ
          gemm(false, true, Cg, Mg * kk, xhw, 1.0f, X + (b * s.C + gr * Cg) * xhw, xhw, col, xhw, 1.0f, dW + gr * Cg * Mg * kk, Mg * kk);
      }
  }
  if (io.din.size() > 2 && io.din[2].defined()) bias_grad(dY, io.din[2].data<float>(), s.N, s.M, yhw, io.accumulate[2]);
}

// ---- MaxPool, AveragePool ----------------------------------------------------------------

std::unique_ptr<KernelState> prep_pool(const NodeView& n) {
  auto s = std::make_unique<PoolState>();
  s->is_max = n.op() == Op::MaxPool;
  if (n.op() == Op::LpPool) {
    s->p = n.node().attr_int("p", 2);
    if (s->p < 1) n.fail(fmt::format("p {} (at least 1)", s->p));
  }
  if (s->is_max) n.require_dtype(n.input(0), {DType::F32, DType::F64, DType::I8, DType::U8}, "input X");
  else n.require_dtype(n.input(0), {DType::F32}, "input X");
  const Shape &x = n.input(0).shape, &y = n.output(0).shape;
  if (x.size() < 3) n.fail("input must be at least 3-D");
  if (!n.node().has_attr("kernel_shape")) n.fail("kernel_shape missing");
  if (s->is_max) {
    s->indices = n.has_output(1);
    const int64_t order = n.node().attr_int("storage_order", 0);
    if (order != 0 && order != 1) n.fail(fmt::format("storage_order {} (0 or 1)", order));
    s->col_major = order == 1;
  }
  if (n.op() == Op::AveragePool && n.node().has_attr("dilations")) {
    for (int64_t d : n.node().attr_ints("dilations"))
      if (d != 1) n.fail("dilated AveragePool not supported");
  }
  s->count_include_pad = n.node().attr_int("count_include_pad", 0) != 0;
  s->g = make_geom(n, x, y, n.node().attr_ints("kernel_shape"), n.node().attr_int("ceil_mode", 0) != 0);
  s->NC = x[0] * x[1];
  const Geom& g = s->g;
  s->simple = g.spatial < 3 && g.ph == 0 && g.pw == 0 && g.dh == 1 && g.dw == 1 && (g.oh - 1) * g.sh + g.kh <= g.ih &&
              (g.ow - 1) * g.sw + g.kw <= g.iw;
  return s;
}

namespace {
// The p-norm's pieces (LpPool, GlobalLpPool), exact for p 1 and 2: |a|^p, t^(1/p), and the
// gradient d y / d v = sign(v) |v|^(p-1) / y^(p-1) as slope(v) x scale(dy, y) (0 where y is 0).
template <class T>
T lp_term(T a, int64_t p) {
  a = std::fabs(a);
  return p == 1 ? a : p == 2 ? a * a : std::pow(a, static_cast<T>(p));
}
template <class T>
T lp_root(T t, int64_t p) {
  return p == 1 ? t : p == 2 ? std::sqrt(t) : std::pow(t, T(1) / static_cast<T>(p));
}
float lp_slope(float v, int64_t p) {
  return p == 1 ? static_cast<float>((v > 0.0f) - (v < 0.0f)) : p == 2 ? v : std::copysign(std::pow(std::fabs(v), static_cast<float>(p - 1)), v);
}
float lp_scale(float dy, float y, int64_t p) {
  return y == 0.0f ? 0.0f : p == 1 ? dy : p == 2 ? dy / y : dy / std::pow(y, static_cast<float>(p - 1));
}

// MaxPool without padding or dilation: y = max over each window; with `dx`, routes dy to the
// first maximum of each window instead.
void maxpool_simple(const Geom& g, int64_t NC, const float* X, float* Y, const float* dY, float* dX) {
  pfor(NC, 1, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* x = X + c * g.ih * g.iw;
      for (int64_t oy = 0; oy < g.oh; ++oy) {
        const float* xr = x + oy * g.sh * g.iw;
        if (!dX) {
          float* y = Y + (c * g.oh + oy) * g.ow;
          if (g.kh == 2 && g.kw == 2 && g.sw == 2) {
            const float* r0 = xr;
            const float* r1 = xr + g.iw;
            for (int64_t ox = 0; ox < g.ow; ++ox) {
              float a = std::max(r0[2 * ox], r0[2 * ox + 1]), b = std::max(r1[2 * ox], r1[2 * ox + 1]);
              y[ox] = std::max(a, b);
            }
            continue;
          }
          for (int64_t ox = 0; ox < g.ow; ++ox) {
            const float* w = xr + ox * g.sw;
            float m = w[0];
            for (int64_t ki = 0; ki < g.kh; ++ki)
              for (int64_t kj = 0; kj < g.kw; ++kj) m = std::max(m, w[ki * g.iw + kj]);
            y[ox] = m;
          }
        } else {
          const float* dy = dY + (c * g.oh + oy) * g.ow;
          float* dxr = dX + c * g.ih * g.iw + oy * g.sh * g.iw;
          for (int64_t ox = 0; ox < g.ow; ++ox) {
            const float* w = xr + ox * g.sw;
            float m = w[0];
            int64_t arg = 0;
            for (int64_t ki = 0; ki < g.kh; ++ki)
              for (int64_t kj = 0; kj < g.kw; ++kj)
                if (w[ki * g.iw + kj] > m) {
                  m = w[ki * g.iw + kj];
                  arg = ki * g.iw + kj;
                }
            dxr[ox * g.sw + arg] += dy[ox];
          }
        }
      }
    }
  });
}
}  // namespace

namespace {
// Visits the window of output (oz, oy, ox) in order: f(the position's flat index within the input
// plane, iz, iy, ix) for each position inside the input. Returns how many positions lie inside the
// padded input (AveragePool's divisor with count_include_pad).
template <class F>
int64_t for_window(const Geom& g, int64_t oz, int64_t oy, int64_t ox, F f) {
  int64_t inside_pads = 0;
  for (int64_t kz = 0; kz < g.kd; ++kz) {
    const int64_t iz = oz * g.sd - g.pd + kz * g.dd;
    const bool z_in = iz >= 0 && iz < g.id, z_pad = iz >= -g.pd && iz < g.id + g.pd_end;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      const int64_t iy = oy * g.sh - g.ph + ki * g.dh;
      const bool y_in = z_in && iy >= 0 && iy < g.ih, y_pad = z_pad && iy >= -g.ph && iy < g.ih + g.ph_end;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t ix = ox * g.sw - g.pw + kj * g.dw;
        if (y_pad && ix >= -g.pw && ix < g.iw + g.pw_end) ++inside_pads;
        if (y_in && ix >= 0 && ix < g.iw) f((iz * g.ih + iy) * g.iw + ix, iz, iy, ix);
      }
    }
  }
  return inside_pads;
}

// Calls f(plane, oz, oy, ox, flat output index) for every output of planes [c0, c1).
template <class F>
void for_outputs(const Geom& g, int64_t c0, int64_t c1, F f) {
  for (int64_t c = c0; c < c1; ++c)
    for (int64_t oz = 0; oz < g.od; ++oz)
      for (int64_t oy = 0; oy < g.oh; ++oy)
        for (int64_t ox = 0; ox < g.ow; ++ox) f(c, oz, oy, ox, ((c * g.od + oz) * g.oh + oy) * g.ow + ox);
}

// MaxPool but the simple float32 case (maxpool_simple), with the Indices output where `I` is
// given: each window's first maximum (NaN never is one, as in the float32 kernels; a window
// without a number gives -inf, or the dtype's lowest, and the index of its first element inside
// X). Indices are flat into X, the spatial part row-major (storage_order 0) or column-major (1).
template <class T>
void maxpool_generic(const PoolState& s, const T* X, T* Y, int64_t* I) {
  const Geom& g = s.g;
  pfor(s.NC, 1, [&](int64_t c0, int64_t c1) {
    for_outputs(g, c0, c1, [&](int64_t c, int64_t oz, int64_t oy, int64_t ox, int64_t o) {
      const T* x = X + c * g.in_size();
      T m = std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
      int64_t az = -1, ay = -1, ax = -1;
      for_window(g, oz, oy, ox, [&](int64_t e, int64_t iz, int64_t iy, int64_t ix) {
        const T v = x[e];
        if (ay < 0 ? v == v : v > m) {  // the first number, then a larger one (NaN, v != v, never)
          m = v;
          az = iz;
          ay = iy;
          ax = ix;
        }
      });
      Y[o] = m;
      if (!I) return;
      if (ay < 0) {  // no number in the window: its first element inside X
        az = std::clamp<int64_t>(oz * g.sd - g.pd, 0, g.id - 1);
        ay = std::clamp<int64_t>(oy * g.sh - g.ph, 0, g.ih - 1);
        ax = std::clamp<int64_t>(ox * g.sw - g.pw, 0, g.iw - 1);
      }
      I[o] = c * g.in_size() + (s.col_major ? (ax * g.ih + ay) * g.id + az : (az * g.ih + ay) * g.iw + ax);
    });
  });
}
}  // namespace

void fwd_pool(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const PoolState&>(st);
  const Geom& g = s.g;
  if (s.is_max && (s.indices || in[0].dtype() != DType::F32 || !s.simple)) {
    int64_t* I = s.indices && out.size() > 1 && out[1].defined() ? out[1].data<int64_t>() : nullptr;
    switch (in[0].dtype()) {
      case DType::F32: maxpool_generic(s, in[0].data<float>(), out[0].data<float>(), I); break;
      case DType::F64: maxpool_generic(s, in[0].data<double>(), out[0].data<double>(), I); break;
      case DType::I8: maxpool_generic(s, in[0].data<int8_t>(), out[0].data<int8_t>(), I); break;
      case DType::U8: maxpool_generic(s, in[0].data<uint8_t>(), out[0].data<uint8_t>(), I); break;
      default: SMP_CHECK(false, "node {}: MaxPool of {}", s.node_name, dtype_name(in[0].dtype()));
    }
    return;
  }
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  if (s.is_max) {  // float32, without padding or dilation, no Indices
    maxpool_simple(g, s.NC, X, Y, nullptr, nullptr);
    return;
  }
  if (s.p > 0) {  // LpPool: (sum of |x|^p over the window)^(1/p); the padding adds nothing
    pfor(s.NC, 1, [&](int64_t c0, int64_t c1) {
      for_outputs(g, c0, c1, [&](int64_t c, int64_t oz, int64_t oy, int64_t ox, int64_t o) {
        const float* x = X + c * g.in_size();
        float t = 0.0f;
        for_window(g, oz, oy, ox, [&](int64_t e, int64_t, int64_t, int64_t) { t += lp_term(x[e], s.p); });
        Y[o] = lp_root(t, s.p);
      });
    });
    return;
  }
  pfor(s.NC, 1, [&](int64_t c0, int64_t c1) {  // AveragePool
    for_outputs(g, c0, c1, [&](int64_t c, int64_t oz, int64_t oy, int64_t ox, int64_t o) {
      const float* x = X + c * g.in_size();
      float m = 0.0f;
      int64_t cnt = 0;
      const int64_t cnt_pad = for_window(g, oz, oy, ox, [&](int64_t e, int64_t, int64_t, int64_t) {
        m += x[e];
        ++cnt;
      });
      Y[o] = m / static_cast<float>(s.count_include_pad ? cnt_pad : std::max<int64_t>(cnt, 1));
    });
  });
}

void bwd_pool(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const PoolState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  const Geom& g = s.g;
  const float* dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  if (!io.accumulate[0]) std::memset(dX, 0, static_cast<size_t>(io.din[0].numel()) * sizeof(float));
  const float* X = nullptr;
  if (s.is_max) {
    SMP_CHECK(io.in[0].defined(), "node {}: MaxPool backward needs X (not declared saved)", s.node_name);
    X = io.in[0].data<float>();
    if (s.simple) {
      maxpool_simple(g, s.NC, X, nullptr, dY, dX);
      return;
    }
  }
  if (s.p > 0) {  // LpPool: d y / d x = sign(x) |x|^(p-1) / y^(p-1); nothing where y is 0
    SMP_CHECK(io.in[0].defined() && io.out[0].defined(), "node {}: LpPool backward needs X and Y (not declared saved)", s.node_name);
    X = io.in[0].data<float>();
    const float* Y = io.out[0].data<float>();
    pfor(s.NC, 1, [&](int64_t c0, int64_t c1) {
      for_outputs(g, c0, c1, [&](int64_t c, int64_t oz, int64_t oy, int64_t ox, int64_t o) {
        const float w = lp_scale(dY[o], Y[o], s.p);
        if (w == 0.0f) return;
        const float* x = X + c * g.in_size();
        float* dx = dX + c * g.in_size();
        for_window(g, oz, oy, ox, [&](int64_t e, int64_t, int64_t, int64_t) { dx[e] += w * lp_slope(x[e], s.p); });
      });
    });
    return;
  }
  pfor(s.NC, 1, [&](int64_t c0, int64_t c1) {
    for_outputs(g, c0, c1, [&](int64_t c, int64_t oz, int64_t oy, int64_t ox, int64_t o) {
      float* dx = dX + c * g.in_size();
      const float gval = dY[o];
      if (s.is_max) {  // to the window's first maximum
        const float* x = X + c * g.in_size();
        float m = -INFINITY;
        int64_t arg = -1;
        for_window(g, oz, oy, ox, [&](int64_t e, int64_t, int64_t, int64_t) {
          if (arg < 0 || x[e] > m) {
            m = x[e];
            arg = e;
          }
        });
        if (arg >= 0) dx[arg] += gval;
        return;
      }
      int64_t cnt = 0;
      const int64_t cnt_pad = for_window(g, oz, oy, ox, [&](int64_t, int64_t, int64_t, int64_t) { ++cnt; });
      const float w = gval / static_cast<float>(s.count_include_pad ? cnt_pad : std::max<int64_t>(cnt, 1));
      for_window(g, oz, oy, ox, [&](int64_t e, int64_t, int64_t, int64_t) { dx[e] += w; });
    });
  });
}

// ---- GlobalAveragePool -------------------------------------------------------------------

std::unique_ptr<KernelState> prep_global_avgpool(const NodeView& n) {
  auto s = std::make_unique<GapState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  const Shape& x = n.input(0).shape;
  if (x.size() < 3) n.fail("input must be at least 3-D");
  s->NC = x[0] * x[1];
  s->HW = prod(x, 2, x.size());
  return s;
}

void fwd_global_avgpool(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GapState&>(st);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  pfor(s.NC, std::max<int64_t>(1, kGrain / s.HW), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* x = X + c * s.HW;
      float t = 0;
#pragma omp simd reduction(+ : t)
      for (int64_t i = 0; i < s.HW; ++i) t += x[i];
      Y[c] = t / static_cast<float>(s.HW);
    }
  });
}

void bwd_global_avgpool(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GapState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  const float* dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  bool acc = io.accumulate[0];
  float inv = 1.0f / static_cast<float>(s.HW);
  pfor(s.NC, std::max<int64_t>(1, kGrain / s.HW), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      float v = dY[c] * inv;
      float* dx = dX + c * s.HW;
      if (acc) {
        for (int64_t i = 0; i < s.HW; ++i) dx[i] += v;
      } else {
        for (int64_t i = 0; i < s.HW; ++i) dx[i] = v;
      }
    }
  });
}

// ---- GlobalMaxPool -----------------------------------------------------------------------

std::unique_ptr<KernelState> prep_global_maxpool(const NodeView& n) { return prep_global_avgpool(n); }  // one geometry

void fwd_global_maxpool(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GapState&>(st);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  pfor(s.NC, std::max<int64_t>(1, kGrain / s.HW), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* x = X + c * s.HW;
      float m = -INFINITY;
      for (int64_t i = 0; i < s.HW; ++i) m = x[i] > m ? x[i] : m;
      Y[c] = m;
    }
  });
}

// Each plane's gradient to its first maximum, as MaxPool's.
void bwd_global_maxpool(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GapState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined(), "node {}: GlobalMaxPool backward needs X (not declared saved)", s.node_name);
  const float *X = io.in[0].data<float>(), *dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  if (!io.accumulate[0]) std::memset(dX, 0, static_cast<size_t>(io.din[0].numel()) * sizeof(float));
  pfor(s.NC, std::max<int64_t>(1, kGrain / s.HW), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* x = X + c * s.HW;
      int64_t arg = 0;
      for (int64_t i = 1; i < s.HW; ++i)
        if (x[i] > x[arg]) arg = i;
      dX[c * s.HW + arg] += dY[c];
    }
  });
}

// ---- GlobalLpPool -------------------------------------------------------------------------
//
// Each plane's p-norm, (sum |x|^p)^(1/p); the gradient sign(x) |x|^(p-1) / y^(p-1) (none where
// the plane is all zeros).

std::unique_ptr<KernelState> prep_global_lppool(const NodeView& n) {
  auto s = prep_global_avgpool(n);
  auto& gs = static_cast<GapState&>(*s);
  gs.p = n.node().attr_int("p", 2);
  if (gs.p < 1) n.fail(fmt::format("p {} (at least 1)", gs.p));
  return s;
}

void fwd_global_lppool(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GapState&>(st);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  pfor(s.NC, std::max<int64_t>(1, kGrain / s.HW), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* x = X + c * s.HW;
      double t = 0;
      for (int64_t i = 0; i < s.HW; ++i) t += lp_term(static_cast<double>(x[i]), s.p);
      Y[c] = static_cast<float>(lp_root(t, s.p));
    }
  });
}

void bwd_global_lppool(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GapState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.out[0].defined(), "node {}: GlobalLpPool backward needs X and Y (not declared saved)", s.node_name);
  const float *X = io.in[0].data<float>(), *Y = io.out[0].data<float>(), *dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  const bool acc = io.accumulate[0];
  pfor(s.NC, std::max<int64_t>(1, kGrain / s.HW), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const float* x = X + c * s.HW;
      float* dx = dX + c * s.HW;
      const float w = lp_scale(dY[c], Y[c], s.p);
      for (int64_t i = 0; i < s.HW; ++i) {
        const float d = w * lp_slope(x[i], s.p);
        dx[i] = acc ? dx[i] + d : d;
      }
    }
  });
}

// ---- MaxUnpool ---------------------------------------------------------------------------
//
// Y = zeros, Y[I[j]] = X[j] with I flat into the default output shape ((in - 1) stride + kernel -
// pads: MaxPool's input, whose Indices I are); a larger output_shape keeps each element's
// coordinates (the rows and columns beyond are zeros), as ONNX's case with output_shape does.
// Where two elements name one position, the later one is kept, and only it gets that
// position's gradient.

std::unique_ptr<KernelState> prep_max_unpool(const NodeView& n) {
  auto s = std::make_unique<MaxUnpoolState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  n.require_dtype(n.input(1), {DType::I64}, "input I");
  if (n.input(1).shape != n.input(0).shape)
    n.fail(fmt::format("I has shape {}, X {}: they must be equal", shape_str(n.input(1).shape), shape_str(n.input(0).shape)));
  const Shape& x = n.input(0).shape;
  if (x.size() < 3) n.fail("input must be at least 3-D");
  const size_t sp = x.size() - 2;
  const auto kernel = n.node().attr_ints("kernel_shape");
  auto strides = n.node().attr_ints("strides"), pads = n.node().attr_ints("pads");
  if (strides.empty()) strides.assign(sp, 1);
  if (pads.empty()) pads.assign(2 * sp, 0);
  if (kernel.size() != sp || strides.size() != sp || pads.size() != 2 * sp)
    n.fail(fmt::format("kernel_shape, strides and pads for {} spatial axes expected", sp));
  s->out_shape = n.output(0).shape;
  s->def = {x[0], x[1]};
  for (size_t k = 0; k < sp; ++k) s->def.push_back((x[k + 2] - 1) * strides[k] + kernel[k] - pads[k] - pads[k + sp]);
  bool fits = s->out_shape.size() == x.size() && s->out_shape[0] == x[0] && s->out_shape[1] == x[1];
  for (size_t k = 2; fits && k < x.size(); ++k) fits = s->out_shape[k] >= s->def[k];
  if (!fits)
    n.fail(fmt::format("output shape {} for the default {}: N and C must be X's, the spatial sizes at least the default's",
                       shape_str(s->out_shape), shape_str(s->def)));
  s->remap = s->def != s->out_shape;
  s->n = prod(x, 0, x.size());
  s->out = prod(s->out_shape, 0, s->out_shape.size());
  return s;
}

namespace {
// Each element's position in Y: its index, or where the output is larger than the default shape,
// its coordinates there.
std::vector<int64_t> unpool_targets(const MaxUnpoolState& s, const Tensor& I) {
  const int64_t* idx = I.data<int64_t>();
  const int64_t limit = prod(s.def, 0, s.def.size());
  std::vector<int64_t> t(static_cast<size_t>(s.n));
  for (int64_t j = 0; j < s.n; ++j) {
    int64_t i = idx[j];
    if (i < 0 || i >= limit)
      throw_bad_input("node " + s.node_name + " (MaxUnpool)", fmt::format("index {} at {} is outside the {} elements of shape {}", i, j, limit, shape_str(s.def)));
    if (s.remap) {
      int64_t flat = 0, stride = 1;
      for (size_t k = s.def.size(); k-- > 0;) {
        flat += (i % s.def[k]) * stride;
        i /= s.def[k];
        stride *= s.out_shape[k];
      }
      i = flat;
    }
    t[static_cast<size_t>(j)] = i;
  }
  return t;
}
}  // namespace

void fwd_max_unpool(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const MaxUnpoolState&>(st);
  const auto idx = unpool_targets(s, in[1]);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  std::memset(Y, 0, static_cast<size_t>(s.out) * sizeof(float));
  for (int64_t j = 0; j < s.n; ++j) Y[idx[static_cast<size_t>(j)]] = X[j];
}

void bwd_max_unpool(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const MaxUnpoolState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: MaxUnpool backward needs I (not declared saved)", s.node_name);
  const auto idx = unpool_targets(s, io.in[1]);
  const float* dY = io.dout[0].data<float>();
  float* dX = io.din[0].data<float>();
  if (!io.accumulate[0]) std::memset(dX, 0, static_cast<size_t>(s.n) * sizeof(float));
  std::vector<char> taken(static_cast<size_t>(s.out), 0);
  for (int64_t j = s.n - 1; j >= 0; --j) {  // the last writer of each position
    const int64_t y = idx[static_cast<size_t>(j)];
    char& t = taken[static_cast<size_t>(y)];
    if (!t) dX[j] += dY[y];
    t = 1;
  }
}

// ---- ConvInteger, QLinearConv ------------------------------------------------------------
//
// ConvInteger (x, w, x_zero_point, w_zero_point): Y = conv(x - x_zero, w - w_zero) in int32, the
// padding reading x_zero (zero once shifted); x_zero per tensor, w_zero per tensor or per output
// channel. QLinearConv (x, x_scale, x_zero, w, w_scale, w_zero, y_scale, y_zero, B): the same sums
// plus the int32 bias B, then y = saturate(round(sum * x_scale * w_scale / y_scale) + y_zero), w's
// parameters per tensor or per output channel. As the float Conv: im2col, then products, here of
// the shifted operands in float64 (exact, see quant.cpp).

namespace {
struct QConvState : ConvState {
  QuantIO q;
};
}  // namespace

std::unique_ptr<KernelState> prep_conv_integer(const NodeView& n) {
  auto s = std::make_unique<QConvState>();
  const QuantIO& q = s->q = integer_product_inputs(n, n.op() == Op::QLinearConv, "x", "w");
  conv_layout(n, 0, operand_b(q), *s);
  check_integer_product(n, q, "x", "w", 1, s->M, 1);
  if (q.bias >= 0) {
    n.require_dtype(n.input(q.bias), {DType::I32}, "bias B");
    if (n.input(q.bias).shape != Shape{s->M}) n.fail("bias B must be [M]");
  }
  return s;
}

void fwd_conv_integer(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const QConvState&>(st);
  const QuantIO& q = s.q;
  const Geom& g = s.g;
  const Tensor& X = in[0];
  const Tensor& W = in[static_cast<size_t>(operand_b(q))];
  const int64_t Cg = s.C / s.groups, Mg = s.M / s.groups, ckk = Cg * g.kernel_size(), ohw = g.out_size(), ihw = g.in_size();
  const std::vector<int32_t> zx = zero_values(in, q.a_zero), zw = zero_values(in, q.b_zero);
  Tensor xt = scratch(ctx, DType::F64, {X.numel()}), wt = scratch(ctx, DType::F64, {W.numel()});
  Tensor acct = scratch(ctx, DType::F64, {s.N * s.M * ohw});
  double *xd = xt.data<double>(), *wd = wt.data<double>(), *acc = acct.data<double>();
  pfor(X.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) xd[i] = int_at(X, i) - zx[0];
  });
  pfor(W.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) wd[i] = int_at(W, i) - at(zw, i / ckk);
  });
  pfor(s.N, 1, [&](int64_t b0, int64_t b1) {
    Tensor colt;
    if (!s.pointwise) colt = scratch(ctx, DType::F64, {ckk, ohw});
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t gr = 0; gr < s.groups; ++gr) {
        const double* col = xd + (b * s.C + gr * Cg) * ihw;
        if (!s.pointwise) {
          im2col(g, Cg, col, 0, 1, colt.data<double>(), ohw);
          col = colt.data<double>();
        }
        cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(Mg), static_cast<int>(ohw), static_cast<int>(ckk),
                    1.0, wd + gr * Mg * ckk, static_cast<int>(std::max<int64_t>(ckk, 1)), col, static_cast<int>(ohw), 0.0,
                    acc + (b * s.M + gr * Mg) * ohw, static_cast<int>(ohw));
      }
  });
  const int32_t* bias = q.bias >= 0 ? in[static_cast<size_t>(q.bias)].data<int32_t>() : nullptr;
  write_integer_product(out[0], acc, s.N * s.M * ohw, q, in, bias, [&](int64_t i) {
    return std::array<int64_t, 3>{0, (i / ohw) % s.M, 0};
  });
}

}  // namespace smp::runtime::cpu
