// Resize (opsets 10 to 17) and Upsample (opsets 7 to 9): nearest, linear and cubic interpolation
// over any axes, every coordinate transformation of ONNX, with the gradient to the input.
//
// Interpolation is separable: the output is one 1-D pass per resized axis, each output index o of
// an axis a weighted sum of a few input indices (its taps: 1 for nearest, 2 for linear, 4 for
// cubic), as in ONNX's reference (onnx/backend/test/case/node/resize.py), which evaluates the
// same product of per-axis weights nested. The taps follow the reference's choice: x the source
// coordinate, i0 = floor(x) (x - 1 when x is whole), r = x - i0 in (0, 1]; linear reads i0 and
// i0 + 1, cubic i0 - 1 .. i0 + 2, nearest one of i0, i0 + 1 by nearest_mode; indices outside the
// input read its edge (or, with exclude_outside, get weight 0 and the rest are renormalized).
// tf_crop_and_resize writes extrapolation_value where a coordinate falls outside the input on
// any axis. The backward runs the passes' transposes in reverse order (each input index gathers
// from the outputs whose taps read it: no write conflicts between threads).
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <fmt/format.h>

#include <array>
#include <cmath>

namespace smp::runtime::cpu {

namespace {

struct Axis {
  int64_t axis = 0, in = 1, out = 1;
  int taps = 1;
  std::vector<int64_t> idx;     // out * taps input indices
  std::vector<float> w;         // out * taps weights
  std::vector<uint8_t> outside;  // per output index: extrapolated (tf_crop_and_resize)
  // The transpose, per input index: the (output index, weight) pairs that read it.
  std::vector<int64_t> t_begin;  // in + 1 offsets into t_out / t_w
  std::vector<int64_t> t_out;
  std::vector<float> t_w;
};

struct ResizeState : KernelState {
  std::vector<Axis> passes;  // the resized axes, in the order the passes run
  bool extrapolates = false;
  float extrapolation = 0;
};

std::array<double, 4> cubic_coeffs(double r, double A) {
  const double s = 1 - r;
  return {((A * (r + 1) - 5 * A) * (r + 1) + 8 * A) * (r + 1) - 4 * A, ((A + 2) * r - (A + 3)) * r * r + 1,
          ((A + 2) * s - (A + 3)) * s * s + 1, ((A * (s + 1) - 5 * A) * (s + 1) + 8 * A) * (s + 1) - 4 * A};
}

}  // namespace

std::unique_ptr<KernelState> prep_resize(const NodeView& n) {
  auto s = std::make_unique<ResizeState>();
  n.require_dtype(n.input(0), {DType::F32}, "input X");
  const Shape &xs = n.input(0).shape, &ys = n.output(0).shape;
  const size_t R = xs.size();
  if (ys.size() != R) n.fail("output rank differs from the input's");
  const auto& node = n.node();
  const bool upsample = n.op() == graph::Op::Upsample;
  const int64_t opset = n.graph().opset;
  // Resize before opset 11 and Upsample: scales only, asymmetric coordinates, nearest rounds
  // down when enlarging and up when shrinking (onnxruntime's reading of those versions).
  const bool legacy = upsample || (opset > 0 && opset < 11);
  const std::string mode = node.attr_string("mode", "nearest");
  if (mode != "nearest" && mode != "linear" && mode != "cubic" && !(legacy && mode == "bilinear"))
    n.fail(fmt::format("mode '{}' not supported (nearest, linear, cubic)", mode));
  if (legacy && mode == "cubic") n.fail("mode 'cubic' needs Resize of opset 11 or later");
  const std::string ctm = legacy ? "asymmetric" : node.attr_string("coordinate_transformation_mode", "half_pixel");
  static const char* kModes[] = {"half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric", "tf_half_pixel_for_nn",
                                 "tf_crop_and_resize"};
  if (std::find(std::begin(kModes), std::end(kModes), ctm) == std::end(kModes))
    n.fail(fmt::format("coordinate_transformation_mode '{}' not supported", ctm));
  const std::string nearest = node.attr_string("nearest_mode", "round_prefer_floor");
  if (nearest != "round_prefer_floor" && nearest != "round_prefer_ceil" && nearest != "floor" && nearest != "ceil")
    n.fail(fmt::format("nearest_mode '{}' not supported", nearest));
  const double A = node.attr_float("cubic_coeff_a", -0.75);
  const bool exclude_outside = node.attr_int("exclude_outside", 0) != 0;
  s->extrapolation = static_cast<float>(node.attr_float("extrapolation_value", 0.0));
  if (node.has_attr("antialias") || node.has_attr("axes") || node.has_attr("keep_aspect_ratio_policy"))
    n.fail("the opset 18 attributes (antialias, axes, keep_aspect_ratio_policy) are not supported");

  // Scales (or sizes, whose scales are sizes / input) and, for tf_crop_and_resize, the roi.
  std::vector<double> scale(R, 1.0), roi;
  auto floats_of = [&](int i, const char* what) {
    const graph::TensorData* d = n.constant_input(i);
    if (!d) n.fail(fmt::format("{} must be a constant", what));
    std::vector<double> v(static_cast<size_t>(d->numel()));
    for (size_t k = 0; k < v.size(); ++k) v[k] = d->get_f64(static_cast<int64_t>(k));
    return v;
  };
  if (upsample && opset < 9) {
    const auto it = node.attrs.find("scales");
    if (it == node.attrs.end()) n.fail("the scales attribute is missing");
    scale = it->second.floats;
  } else {
    const int scales_at = legacy ? 1 : 2;
    std::vector<double> sc;
    if (n.has_input(scales_at)) sc = floats_of(scales_at, "scales");
    if (!sc.empty()) {
      scale = sc;
    } else {
      std::vector<int64_t> sizes;
      if (legacy || !n.constant_ints(3, sizes)) n.fail("needs constant scales or sizes");
      if (sizes.size() != R) n.fail(fmt::format("{} sizes for rank {}", sizes.size(), R));
      for (size_t d = 0; d < R; ++d)  // an empty axis keeps scale 1 (resized to anything but 0, it is refused below)
        scale[d] = xs[d] > 0 ? static_cast<double>(sizes[d]) / static_cast<double>(xs[d]) : 1.0;
    }
    if (ctm == "tf_crop_and_resize") {
      if (!n.has_input(1)) n.fail("tf_crop_and_resize needs the roi input");
      roi = floats_of(1, "roi");
      if (roi.size() != 2 * R) n.fail(fmt::format("{} roi values for rank {}", roi.size(), R));
    }
  }
  if (scale.size() != R) n.fail(fmt::format("{} scales for rank {}", scale.size(), R));
  for (size_t d = 0; d < R; ++d) {
    if (!(scale[d] > 0)) n.fail(fmt::format("scale {} on axis {} (must be positive)", scale[d], d));
    if (xs[d] == 0 && ys[d] != 0) n.fail(fmt::format("resizing an empty axis {}", d));
  }

  for (size_t d = 0; d < R; ++d) {
    const int64_t in = xs[d], out = ys[d];
    // The resized length in the formulas is scale * input, as ONNX's reference has it (its
    // align_corners cases with scales need it: 4 shrunk by 0.6 is 2 long, the formulas use 2.4),
    // and a pytorch_half_pixel output of length 1 reads coordinate -0.5, as the reference's.
    const double sc = scale[d], width = sc * static_cast<double>(in);
    // An axis kept at scale 1 maps each index to itself (not so with tf_half_pixel_for_nn, which
    // shifts by half a pixel, or tf_crop_and_resize).
    if (in == out && ctm != "tf_crop_and_resize" && ctm != "tf_half_pixel_for_nn" && (sc == 1.0 || out == 0)) continue;
    Axis ax;
    ax.axis = static_cast<int64_t>(d);
    ax.in = in;
    ax.out = out;
    ax.taps = mode == "cubic" ? 4 : (mode == "nearest" ? 1 : 2);
    const size_t nout = static_cast<size_t>(std::max<int64_t>(out, 0));
    ax.idx.resize(nout * static_cast<size_t>(ax.taps));
    ax.w.resize(nout * static_cast<size_t>(ax.taps));
    ax.outside.assign(nout, 0);
    for (int64_t o = 0; o < out; ++o) {
      const double x = static_cast<double>(o);
      double src;
      if (ctm == "half_pixel") src = (x + 0.5) / sc - 0.5;
      else if (ctm == "pytorch_half_pixel") src = width == 1 ? -0.5 : (x + 0.5) / sc - 0.5;
      else if (ctm == "align_corners") src = width == 1 ? 0.0 : x * static_cast<double>(in - 1) / (width - 1);
      else if (ctm == "asymmetric") src = x / sc;
      else if (ctm == "tf_half_pixel_for_nn") src = (x + 0.5) / sc;
      else {  // tf_crop_and_resize
        const double lo = roi[d], hi = roi[d + R];
        src = width == 1 ? (hi - lo) * static_cast<double>(in - 1) / 2 : x * (hi - lo) * static_cast<double>(in - 1) / (width - 1);
        src += lo * static_cast<double>(in - 1);
        if (src < 0 || src > static_cast<double>(in - 1)) {
          ax.outside[static_cast<size_t>(o)] = 1;
          s->extrapolates = true;
        }
      }
      if (!std::isfinite(src)) n.fail(fmt::format("output {} of axis {} maps to a non-finite input coordinate", o, d));
      // Far outside, every tap reads the edge: bounded so that the index arithmetic cannot overflow.
      src = std::clamp(src, -4.0 - static_cast<double>(in), 4.0 + static_cast<double>(in));
      auto clamp = [in](int64_t i) { return std::clamp<int64_t>(i, 0, in - 1); };
      int64_t* idx = ax.idx.data() + o * ax.taps;
      float* w = ax.w.data() + o * ax.taps;
      if (legacy && mode == "nearest") {  // floor when enlarging, ceil when shrinking
        idx[0] = clamp(static_cast<int64_t>(sc < 1 ? std::ceil(src) : std::floor(src)));
        w[0] = 1;
        continue;
      }
      int64_t i0 = static_cast<int64_t>(std::floor(src));
      double r = src - static_cast<double>(i0);
      if (r == 0) {
        i0 -= 1;
        r = 1;
      }
      if (mode == "nearest") {
        // the reference's nearest_coeffs: i0 + 1 when x is whole (r = 1), else by the mode
        const bool up = r == 1 || nearest == "ceil" || (nearest == "round_prefer_floor" && r > 0.5) ||
                        (nearest == "round_prefer_ceil" && r >= 0.5);
        idx[0] = clamp(up ? i0 + 1 : i0);
        w[0] = 1;
        continue;
      }
      std::array<double, 4> c{};
      int64_t first = i0;
      if (mode == "cubic") {
        c = cubic_coeffs(r, A);
        first = i0 - 1;
      } else {
        c = {1 - r, r, 0, 0};
      }
      if (exclude_outside) {
        double sum = 0;
        for (int t = 0; t < ax.taps; ++t) {
          const int64_t i = first + t;
          if (i < 0 || i >= in) c[static_cast<size_t>(t)] = 0;
          sum += c[static_cast<size_t>(t)];
        }
        if (sum == 0) n.fail(fmt::format("exclude_outside leaves no input under output {} of axis {}", o, d));
        for (int t = 0; t < ax.taps; ++t) c[static_cast<size_t>(t)] /= sum;
      }
      for (int t = 0; t < ax.taps; ++t) {
        idx[t] = clamp(first + t);
        w[t] = static_cast<float>(c[static_cast<size_t>(t)]);
      }
    }
    // The transpose (input index -> the outputs reading it), for the backward.
    const size_t nin = static_cast<size_t>(std::max<int64_t>(in, 1));  // in >= 1 here (an empty axis was refused)
    ax.t_begin.assign(nin + 1, 0);
    for (size_t k = 0; k < ax.idx.size(); ++k) ++ax.t_begin[static_cast<size_t>(ax.idx[k]) + 1];
    for (size_t i = 0; i < nin; ++i) ax.t_begin[i + 1] += ax.t_begin[i];
    ax.t_out.assign(nout * static_cast<size_t>(ax.taps), 0);
    ax.t_w.assign(nout * static_cast<size_t>(ax.taps), 0.0f);
    std::vector<int64_t> fill(ax.t_begin.begin(), ax.t_begin.begin() + static_cast<std::ptrdiff_t>(nin));
    for (int64_t o = 0; o < out; ++o)
      for (int t = 0; t < ax.taps; ++t) {
        const size_t k = static_cast<size_t>(o * ax.taps + t);
        const size_t at = static_cast<size_t>(fill[static_cast<size_t>(ax.idx[k])]++);
        ax.t_out[at] = o;
        ax.t_w[at] = ax.w[k];
      }
    s->passes.push_back(std::move(ax));
  }
  // Shrinking axes first: the later passes run over fewer elements.
  std::stable_sort(s->passes.begin(), s->passes.end(), [](const Axis& a, const Axis& b) {
    return static_cast<double>(a.out) / static_cast<double>(std::max<int64_t>(a.in, 1)) <
           static_cast<double>(b.out) / static_cast<double>(std::max<int64_t>(b.in, 1));
  });
  return s;
}

namespace {

// One pass along `ax` of a tensor whose shape is `shape` (shape[ax.axis] == ax.in): y's extent
// along the axis becomes ax.out. Rows (outer, o) run in parallel; `inner` elements are contiguous.
void pass_forward(const Axis& ax, const Shape& shape, const float* x, float* y) {
  int64_t outer = 1, inner = 1;
  for (int64_t k = 0; k < ax.axis; ++k) outer *= shape[static_cast<size_t>(k)];
  for (size_t k = static_cast<size_t>(ax.axis) + 1; k < shape.size(); ++k) inner *= shape[k];
  const int T = ax.taps;
  pfor(outer * ax.out, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner * T, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / ax.out, o = r % ax.out;
      const float* xb = x + b * ax.in * inner;
      float* __restrict yo = y + r * inner;
      const int64_t* idx = ax.idx.data() + o * T;
      const float* w = ax.w.data() + o * T;
      if (inner == 1) {
        float acc = 0;
        for (int t = 0; t < T; ++t) acc += w[t] * xb[idx[t]];
        yo[0] = acc;
        continue;
      }
      {
        const float* __restrict src = xb + idx[0] * inner;
        const float w0 = w[0];
#pragma omp simd
        for (int64_t i = 0; i < inner; ++i) yo[i] = w0 * src[i];
      }
      for (int t = 1; t < T; ++t) {
        const float* __restrict src = xb + idx[t] * inner;
        const float wt = w[t];
#pragma omp simd
        for (int64_t i = 0; i < inner; ++i) yo[i] += wt * src[i];
      }
    }
  });
}

// The transpose of pass_forward: dx (extent ax.in along the axis) from dy (extent ax.out); each
// input row gathers the output rows that read it.
void pass_backward(const Axis& ax, const Shape& in_shape, const float* dy, float* dx) {
  int64_t outer = 1, inner = 1;
  for (int64_t k = 0; k < ax.axis; ++k) outer *= in_shape[static_cast<size_t>(k)];
  for (size_t k = static_cast<size_t>(ax.axis) + 1; k < in_shape.size(); ++k) inner *= in_shape[k];
  pfor(outer * ax.in, std::max<int64_t>(1, kGrain / std::max<int64_t>(inner * ax.taps, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / ax.in, i = r % ax.in;
      const float* db = dy + b * ax.out * inner;
      float* __restrict di = dx + r * inner;
      std::fill(di, di + inner, 0.0f);
      for (int64_t k = ax.t_begin[static_cast<size_t>(i)]; k < ax.t_begin[static_cast<size_t>(i + 1)]; ++k) {
        const float* __restrict src = db + ax.t_out[static_cast<size_t>(k)] * inner;
        const float wk = ax.t_w[static_cast<size_t>(k)];
#pragma omp simd
        for (int64_t e = 0; e < inner; ++e) di[e] += wk * src[e];
      }
    }
  });
}

// f(offset) for every element of `shape` whose index is extrapolated on some pass's axis.
template <class F>
void for_outside(const ResizeState& s, const Shape& shape, F&& f) {
  const int64_t total = smp::numel(shape);
  const auto st = strides_of(shape);
  for (int64_t e = 0; e < total; ++e)
    for (const Axis& ax : s.passes) {
      const int64_t o = (e / st[static_cast<size_t>(ax.axis)]) % shape[static_cast<size_t>(ax.axis)];
      if (ax.outside[static_cast<size_t>(o)]) {
        f(e);
        break;
      }
    }
}

}  // namespace

void fwd_resize(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ResizeState&>(st);
  Tensor& y = out[0];
  if (s.passes.empty()) {
    ctx.backend->copy(y, in[0]);
    return;
  }
  Shape shape = s.in_shapes[0];
  Tensor cur = in[0];
  for (size_t p = 0; p < s.passes.size(); ++p) {
    const Axis& ax = s.passes[p];
    Shape next = shape;
    next[static_cast<size_t>(ax.axis)] = ax.out;
    Tensor dst = p + 1 == s.passes.size() ? y : scratch(ctx, DType::F32, next);
    pass_forward(ax, shape, cur.data<float>(), dst.data<float>());
    cur = dst;
    shape = next;
  }
  if (s.extrapolates) {
    float* py = y.data<float>();
    for_outside(s, shape, [&](int64_t e) { py[e] = s.extrapolation; });
  }
}

void bwd_resize(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const ResizeState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  Tensor& dx = io.din[0];
  const bool acc = io.accumulate[0];
  if (s.passes.empty()) {
    store(dx.data<float>(), io.dout[0].data<float>(), dx.numel(), acc);
    return;
  }
  // The shapes before each pass.
  std::vector<Shape> before{s.in_shapes[0]};
  for (const Axis& ax : s.passes) {
    Shape next = before.back();
    next[static_cast<size_t>(ax.axis)] = ax.out;
    before.push_back(next);
  }
  Tensor cur = io.dout[0];
  if (s.extrapolates) {  // extrapolated outputs read no input
    Tensor masked = scratch(ctx, DType::F32, before.back());
    std::memcpy(masked.data<float>(), cur.data<float>(), static_cast<size_t>(cur.numel()) * sizeof(float));
    float* pm = masked.data<float>();
    for_outside(s, before.back(), [&](int64_t e) { pm[e] = 0; });
    cur = masked;
  }
  for (size_t p = s.passes.size(); p-- > 0;) {
    const Axis& ax = s.passes[p];
    const bool last = p == 0;
    Tensor dst = last && !acc ? dx : scratch(ctx, DType::F32, before[p]);
    pass_backward(ax, before[p], cur.data<float>(), dst.data<float>());
    if (last && acc) store(dx.data<float>(), dst.data<float>(), dx.numel(), true);
    cur = dst;
  }
}

}  // namespace smp::runtime::cpu
