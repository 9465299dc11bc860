// Signal processing (opset 17), forward only: DFT and STFT as direct sums over a table of
// twiddle factors in float64 (O(n^2) per transform: for the frame lengths of audio front-ends, not
// for long signals), and the Hann, Hamming and Blackman windows.
//
// DFT: X[k] = sum_m x[m] exp(-2 pi i k m / n) along `axis` (inverse: the + sign and 1 / n); the
// input's last axis holds the real part (size 1) or both parts (2); dft_length pads with zeros or
// truncates; onesided keeps bins 0 .. n / 2. STFT: frames of frame_length samples frame_step
// apart, each multiplied by the window, then transformed (onesided by default).
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <fmt/format.h>

#include <cmath>

namespace smp::runtime::cpu {

namespace {

constexpr double kTwoPi = 6.283185307179586;

struct DftState : KernelState {
  bool stft = false, inverse = false;
  int64_t outer = 1, L = 1, inner = 1, parts = 1;  // DFT: x as [outer, L, inner, parts]
  int64_t n = 1, bins = 1;                         // transform length, output bins
  int64_t frames = 1, step = 1;                    // STFT: x [outer, L, parts]
  bool window = false;
};

// The transform of one signal: len samples re[m * st], im[m * st] (im nullptr: real), zero past
// len, into bins out[k * ost], out[k * ost + 1].
void transform(const DftState& s, const std::vector<double>& cs, const std::vector<double>& sn, const double* re,
               const double* im, int64_t len, double* out) {
  const double sign = s.inverse ? 1.0 : -1.0, scale = s.inverse ? 1.0 / static_cast<double>(s.n) : 1.0;
  const int64_t m_end = std::min(len, s.n);
  for (int64_t k = 0; k < s.bins; ++k) {
    double ar = 0, ai = 0;
    int64_t idx = 0;  // k * m mod n
    for (int64_t m = 0; m < m_end; ++m) {
      const double c = cs[static_cast<size_t>(idx)], w = sign * sn[static_cast<size_t>(idx)];
      const double xr = re[m], xi = im ? im[m] : 0.0;
      ar += xr * c - xi * w;
      ai += xr * w + xi * c;
      idx += k;
      if (idx >= s.n) idx %= s.n;
    }
    out[2 * k] = ar * scale;
    out[2 * k + 1] = ai * scale;
  }
}

// A constant scalar input: its value, as an integer or a double.
int64_t scalar_int(const NodeView& n, int i, const char* role) {
  std::vector<int64_t> v;
  if (!n.constant_ints(i, v) || v.size() != 1) n.fail(fmt::format("{} must be a constant scalar", role));
  return v[0];
}
double scalar_value(const NodeView& n, int i, const char* role) {
  const graph::TensorData* d = n.constant_input(i);
  if (!d || d->numel() != 1) n.fail(fmt::format("{} must be a constant scalar", role));
  return d->get_f64(0);
}

}  // namespace

std::unique_ptr<KernelState> prep_dft(const NodeView& n) {
  auto s = std::make_unique<DftState>();
  s->stft = n.op() == graph::Op::STFT;
  n.require_dtype(n.input(0), {DType::F32}, s->stft ? "signal" : "input");
  n.require_dtype(n.output(0), {DType::F32}, "output");
  const Shape& x = n.input(0).shape;
  const Shape& y = n.output(0).shape;
  if (x.size() < 2 || (x.back() != 1 && x.back() != 2)) n.fail(fmt::format("input {} must end in an axis of 1 (real) or 2 (complex)", shape_str(x)));
  s->parts = x.back();
  const bool onesided = n.node().attr_int("onesided", s->stft ? 1 : 0) != 0;
  if (s->stft) {
    if (x.size() != 3) n.fail(fmt::format("signal {} must be [batch, length, 1 or 2]", shape_str(x)));
    s->outer = x[0];
    s->L = x[1];
    s->step = scalar_int(n, 1, "frame_step");
    int64_t len = -1;
    if (n.has_input(2)) {
      n.require_dtype(n.input(2), {DType::F32}, "window");
      if (n.input(2).shape.size() != 1) n.fail("window must be 1-D");
      len = n.input(2).shape[0];
      s->window = true;
    }
    if (n.has_input(3)) {
      const int64_t fl = scalar_int(n, 3, "frame_length");
      if (len >= 0 && fl != len) n.fail(fmt::format("frame_length {} differs from the window's {}", fl, len));
      len = fl;
    }
    if (len < 1) n.fail("needs a window or a frame_length");
    if (s->step < 1 || len > s->L) n.fail(fmt::format("frame_step {} and frame length {} do not fit the signal of {}", s->step, len, s->L));
    if (onesided && s->parts == 2) n.fail("onesided with a complex signal");
    s->n = len;
    s->frames = (s->L - len) / s->step + 1;
    s->bins = onesided ? len / 2 + 1 : len;
    if (y != Shape{s->outer, s->frames, s->bins, 2}) n.fail(fmt::format("output {} differs from the computed frames and bins", shape_str(y)));
  } else {
    int64_t axis = n.node().attr_int("axis", 1);
    const int64_t r = static_cast<int64_t>(x.size());
    if (axis < 0) axis += r;
    if (axis < 0 || axis >= r - 1) n.fail(fmt::format("axis {} must be one of the input's {} but its last", n.node().attr_int("axis", 1), shape_str(x)));
    s->inverse = n.node().attr_int("inverse", 0) != 0;
    if (s->inverse && onesided) n.fail("onesided with inverse is not supported");
    if (onesided && s->parts == 2) n.fail("onesided with a complex input");
    for (int64_t d = 0; d < axis; ++d) s->outer *= x[static_cast<size_t>(d)];
    s->L = x[static_cast<size_t>(axis)];
    for (int64_t d = axis + 1; d < r - 1; ++d) s->inner *= x[static_cast<size_t>(d)];
    s->n = n.has_input(1) ? scalar_int(n, 1, "dft_length") : s->L;
    if (s->n < 1) n.fail("dft_length must be positive");
    s->bins = onesided ? s->n / 2 + 1 : s->n;
    Shape want = x;
    want[static_cast<size_t>(axis)] = s->bins;
    want.back() = 2;
    if (y != want) n.fail(fmt::format("output {} differs from the computed {}", shape_str(y), shape_str(want)));
  }
  return s;
}

void fwd_dft(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const DftState&>(st);
  std::vector<double> cs(static_cast<size_t>(s.n)), sn(static_cast<size_t>(s.n));
  for (int64_t j = 0; j < s.n; ++j) {
    cs[static_cast<size_t>(j)] = std::cos(kTwoPi * static_cast<double>(j) / static_cast<double>(s.n));
    sn[static_cast<size_t>(j)] = std::sin(kTwoPi * static_cast<double>(j) / static_cast<double>(s.n));
  }
  const float* x = in[0].data<float>();
  float* y = out[0].data<float>();
  const bool complex = s.parts == 2;
  if (s.stft) {
    const float* win = s.window ? in[2].data<float>() : nullptr;
    pfor(s.outer * s.frames, 1, [&](int64_t f0, int64_t f1) {
      std::vector<double> re(static_cast<size_t>(s.n)), im(static_cast<size_t>(s.n)), o(static_cast<size_t>(2 * s.bins));
      for (int64_t f = f0; f < f1; ++f) {
        const int64_t b = f / s.frames, start = (f % s.frames) * s.step;
        for (int64_t m = 0; m < s.n; ++m) {
          const float* p = x + (b * s.L + start + m) * s.parts;
          const double w = win ? win[m] : 1.0;
          re[static_cast<size_t>(m)] = p[0] * w;
          im[static_cast<size_t>(m)] = complex ? p[1] * w : 0.0;
        }
        transform(s, cs, sn, re.data(), complex ? im.data() : nullptr, s.n, o.data());
        for (int64_t k = 0; k < 2 * s.bins; ++k) y[f * 2 * s.bins + k] = static_cast<float>(o[static_cast<size_t>(k)]);
      }
    });
    return;
  }
  pfor(s.outer * s.inner, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> re(static_cast<size_t>(s.L)), im(static_cast<size_t>(s.L)), o(static_cast<size_t>(2 * s.bins));
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t a = t / s.inner, c = t % s.inner;
      for (int64_t m = 0; m < s.L; ++m) {
        const float* p = x + ((a * s.L + m) * s.inner + c) * s.parts;
        re[static_cast<size_t>(m)] = p[0];
        im[static_cast<size_t>(m)] = complex ? p[1] : 0.0;
      }
      transform(s, cs, sn, re.data(), complex ? im.data() : nullptr, s.L, o.data());
      for (int64_t k = 0; k < s.bins; ++k) {
        float* q = y + ((a * s.bins + k) * s.inner + c) * 2;
        q[0] = static_cast<float>(o[static_cast<size_t>(2 * k)]);
        q[1] = static_cast<float>(o[static_cast<size_t>(2 * k + 1)]);
      }
    }
  });
}

// ---- HannWindow, HammingWindow, BlackmanWindow ------------------------------------------------
//
// w[j] = a0 - a1 cos(2 pi j / N) + a2 cos(4 pi j / N), N = size (periodic) or size - 1
// (symmetric): Hann 0.5, 0.5, 0; Hamming 25/46, 21/46, 0; Blackman 0.42, 0.5, 0.08.

namespace {
struct WindowState : KernelState {
  double a0 = 0.5, a1 = 0.5, a2 = 0;
  bool periodic = true;
};
}  // namespace

std::unique_ptr<KernelState> prep_window(const NodeView& n) {
  auto s = std::make_unique<WindowState>();
  n.require_dtype(n.output(0), {DType::F32, DType::F64}, "output");
  if (n.output(0).shape.size() != 1) n.fail("the output must be 1-D (size must be a constant scalar)");
  if (n.op() == graph::Op::HammingWindow) {
    s->a0 = 25.0 / 46.0;
    s->a1 = 21.0 / 46.0;
  } else if (n.op() == graph::Op::BlackmanWindow) {
    s->a0 = 0.42;
    s->a1 = 0.5;
    s->a2 = 0.08;
  }
  s->periodic = n.node().attr_int("periodic", 1) != 0;
  return s;
}

void fwd_window(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const WindowState&>(st);
  Tensor& y = out[0];
  const int64_t size = y.numel();
  const double N = static_cast<double>(s.periodic ? size : size - 1);
  for (int64_t j = 0; j < size; ++j) {
    const double t = N > 0 ? kTwoPi * static_cast<double>(j) / N : 0.0;
    const double v = s.a0 - s.a1 * std::cos(t) + s.a2 * std::cos(2 * t);
    if (y.dtype() == DType::F32) y.data<float>()[j] = static_cast<float>(v);
    else y.data<double>()[j] = v;
  }
}

// ---- MelWeightMatrix ---------------------------------------------------------------------------
//
// The [dft_length / 2 + 1, num_mel_bins] matrix of triangular mel filters that maps a onesided
// spectrogram's bins to mel bins, as ONNX's reference builds it: num_mel_bins + 2 points evenly
// spaced in mel (2595 log10(1 + f / 700)) from lower_edge_hertz to upper_edge_hertz, the step the
// range over num_mel_bins + 2, each point's bin floor((dft_length + 1) f / sample_rate); filter i
// rises from point i to point i + 1 and falls to point i + 2 (a zero-width rise is 1 at the
// center). The mel range in float32, as the reference's numpy scalars. Every input a constant.

namespace {
struct MelState : KernelState {
  std::vector<double> w;  // row-major [bins, mels]
};

}  // namespace

std::unique_ptr<KernelState> prep_mel_weights(const NodeView& n) {
  auto s = std::make_unique<MelState>();
  n.require_dtype(n.output(0), {DType::F32, DType::F64}, "output");
  const int64_t mels = scalar_int(n, 0, "num_mel_bins"), dft = scalar_int(n, 1, "dft_length");
  const double rate = static_cast<double>(scalar_int(n, 2, "sample_rate"));
  const float lo = static_cast<float>(scalar_value(n, 3, "lower_edge_hertz")), hi = static_cast<float>(scalar_value(n, 4, "upper_edge_hertz"));
  const int64_t bins = dft / 2 + 1;
  if (mels < 1 || dft < 1 || rate <= 0 || !(lo <= hi)) n.fail("num_mel_bins, dft_length and sample_rate must be positive, lower_edge_hertz at most upper_edge_hertz");
  if (n.output(0).shape != Shape{bins, mels}) n.fail(fmt::format("output {} is not [{}, {}]", shape_str(n.output(0).shape), bins, mels));
  const float lo_mel = 2595.0f * std::log10(1.0f + lo / 700.0f), hi_mel = 2595.0f * std::log10(1.0f + hi / 700.0f);
  const float step = (hi_mel - lo_mel) / static_cast<float>(mels + 2);
  std::vector<int64_t> point(static_cast<size_t>(mels + 2));
  for (int64_t k = 0; k < mels + 2; ++k) {
    const double mel = static_cast<double>(k) * static_cast<double>(step) + static_cast<double>(lo_mel);
    const double hz = 700.0 * (std::pow(10.0, mel / 2595.0) - 1.0);
    point[static_cast<size_t>(k)] = static_cast<int64_t>(std::floor(static_cast<double>(dft + 1) * hz / rate));
  }
  s->w.assign(static_cast<size_t>(bins * mels), 0.0);
  auto at = [&](int64_t j, int64_t i) -> double* {
    if (j < 0 || j >= bins) n.fail(fmt::format("a filter reaches bin {}, past the spectrogram's {} (upper_edge_hertz above half sample_rate?)", j, bins));
    return &s->w[static_cast<size_t>(j * mels + i)];
  };
  for (int64_t i = 0; i < mels; ++i) {
    const int64_t left = point[static_cast<size_t>(i)], center = point[static_cast<size_t>(i + 1)], right = point[static_cast<size_t>(i + 2)];
    if (center == left) *at(center, i) = 1;
    else
      for (int64_t j = left; j <= center; ++j) *at(j, i) = static_cast<double>(j - left) / static_cast<double>(center - left);
    for (int64_t j = center; j < right; ++j) *at(j, i) = static_cast<double>(right - j) / static_cast<double>(right - center);
  }
  return s;
}

void fwd_mel_weights(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const MelState&>(st);
  Tensor& y = out[0];
  for (size_t k = 0; k < s.w.size(); ++k) {
    if (y.dtype() == DType::F32) y.data<float>()[k] = static_cast<float>(s.w[k]);
    else y.data<double>()[k] = s.w[k];
  }
}

}  // namespace smp::runtime::cpu
