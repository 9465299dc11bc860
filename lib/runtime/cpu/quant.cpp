// Quantized tensors (ONNX's linear quantization, quant.hpp): QuantizeLinear, DequantizeLinear and
// DynamicQuantizeLinear; MatMulInteger (int32 sums of the zero-point-shifted operands) and
// QLinearMatMul (the sums requantized with the scales). The products run as float64 GEMMs of the
// shifted operands, exact for sums below 2^53 (an int32 accumulator's results, without its
// overflow). Forward only: integers take no gradient. ConvInteger and QLinearConv are in conv.cpp.
#include "runtime/cpu/quant.hpp"
#include "runtime/cpu/kernels.hpp"

#include <cblas.h>
#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace smp::runtime::cpu {

int64_t check_qparam(const NodeView& n, int i, int64_t channels, bool scale, const char* role) {
  if (!n.has_input(i)) return 1;
  const graph::Value& v = n.input(i);
  if (scale) n.require_dtype(v, {DType::F32}, role);
  else n.require_dtype(v, {DType::U8, DType::I8, DType::I32}, role);
  const int64_t k = v.numel();
  if (v.shape.size() > 1 || (k != 1 && k != channels))
    n.fail(fmt::format("{} '{}' {} must be a scalar or hold {} values (one per channel)", role, v.name, shape_str(v.shape),
                       channels));
  return k;
}

QuantIO integer_product_inputs(const NodeView& n, bool qlinear, const char* a, const char* b) {
  QuantIO q;
  if (qlinear) {
    if (n.num_inputs() < 8) n.fail("needs at least 8 inputs");
    q = QuantIO{1, 2, 4, 5, 6, 7, n.has_input(8) ? 8 : -1, true};
  } else {
    q.a_zero = 2;
    q.b_zero = 3;
  }
  n.require_dtype(n.input(0), {DType::U8, DType::I8}, a);
  n.require_dtype(n.input(operand_b(q)), {DType::U8, DType::I8}, b);
  return q;
}

void check_integer_product(const NodeView& n, const QuantIO& q, const char* a, const char* b, int64_t a_ch, int64_t b_ch,
                           int64_t y_ch) {
  auto zero_of = [&](int i, int operand, int64_t channels, const std::string& role) {
    check_qparam(n, i, channels, false, role.c_str());
    if (n.has_input(i) && n.input(i).dtype != n.input(operand).dtype) n.fail(fmt::format("{}'s dtype differs from {}'s", role, operand ? b : a));
  };
  zero_of(q.a_zero, 0, a_ch, fmt::format("{}_zero_point", a));
  zero_of(q.b_zero, operand_b(q), b_ch, fmt::format("{}_zero_point", b));
  if (!q.requantize) {
    n.require_dtype(n.output(0), {DType::I32}, "output");
    return;
  }
  check_qparam(n, q.a_scale, a_ch, true, fmt::format("{}_scale", a).c_str());
  check_qparam(n, q.b_scale, b_ch, true, fmt::format("{}_scale", b).c_str());
  check_qparam(n, q.y_scale, y_ch, true, "y_scale");
  check_qparam(n, q.y_zero, y_ch, false, "y_zero_point");
  n.require_dtype(n.output(0), {DType::U8, DType::I8}, "output y");
  if (n.input(q.y_zero).dtype != n.output(0).dtype) n.fail("y_zero_point's dtype differs from the output's");
}

std::vector<float> scale_values(std::span<const Tensor> in, int i) {
  const Tensor& t = in[static_cast<size_t>(i)];
  return std::vector<float>(t.data<float>(), t.data<float>() + t.numel());
}

std::vector<int32_t> zero_values(std::span<const Tensor> in, int i) {
  if (i < 0 || static_cast<size_t>(i) >= in.size() || !in[static_cast<size_t>(i)].defined()) return {0};
  const Tensor& t = in[static_cast<size_t>(i)];
  std::vector<int32_t> v(static_cast<size_t>(t.numel()));
  for (int64_t k = 0; k < t.numel(); ++k) v[static_cast<size_t>(k)] = int_at(t, k);
  return v;
}

namespace {

// x as [outer, C, inner], C the quantization axis (1 when per tensor).
struct QuantizeState : KernelState {
  int64_t outer = 1, C = 1, inner = 1;
};

struct QMatMulState : MatMulState {
  QuantIO q;
};

// The axis attribute of (De)QuantizeLinear: x as [outer, C, inner] around it where the scale
// (input 1) has one value per channel.
void axis_layout(const NodeView& n, const Shape& x, QuantizeState& s) {
  const int64_t r = static_cast<int64_t>(x.size());
  int64_t axis = n.node().attr_int("axis", 1);
  const int64_t count = n.input(1).numel();
  if (count == 1) {  // per tensor
    s.inner = smp::numel(x);
    return;
  }
  if (axis < -r || axis >= r) n.fail(fmt::format("axis {} out of range for the input {}", axis, shape_str(x)));
  if (axis < 0) axis += r;
  for (int64_t d = 0; d < axis; ++d) s.outer *= x[static_cast<size_t>(d)];
  s.C = x[static_cast<size_t>(axis)];
  for (int64_t d = axis + 1; d < r; ++d) s.inner *= x[static_cast<size_t>(d)];
}

// The per-tensor or per-channel parameters of (De)QuantizeLinear and FakeQuantize: the scale
// (input 1, required) and the zero point (input 2, optional) hold one value or one per channel of
// the axis, as many of each; x's layout around the axis into s.
void channel_params(const NodeView& n, QuantizeState& s, const char* scale, const char* zero) {
  if (!n.has_input(1)) n.fail(fmt::format("needs {}", scale));
  axis_layout(n, n.input(0).shape, s);
  check_qparam(n, 1, s.C, true, scale);
  if (n.has_input(2) && check_qparam(n, 2, s.C, false, zero) != n.input(1).numel())
    n.fail(fmt::format("{} and {} hold different numbers of values", scale, zero));
}

// f(i, scale, zero) for every element i of x, with its channel's scale and zero point (the
// inputs `scale_input` and `scale_input` + 1 of `in`), channels across threads.
template <class F>
void for_channels(const QuantizeState& s, std::span<const Tensor> in, int scale_input, F f) {
  const std::vector<float> scale = scale_values(in, scale_input);
  const std::vector<int32_t> zero = zero_values(in, scale_input + 1);
  pfor(s.outer * s.C, std::max<int64_t>(1, kGrain / s.inner), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t c = r % s.C;
      const float sc = at(scale, c);
      const int32_t z = at(zero, c);
      for (int64_t i = r * s.inner; i < (r + 1) * s.inner; ++i) f(i, sc, z);
    }
  });
}

}  // namespace

// ---- QuantizeLinear, DequantizeLinear --------------------------------------------------------

std::unique_ptr<KernelState> prep_quantize(const NodeView& n) {
  auto s = std::make_unique<QuantizeState>();
  n.require_dtype(n.input(0), {DType::F32, DType::I32}, "input x");
  n.require_dtype(n.output(0), {DType::U8, DType::I8}, "output y");
  channel_params(n, *s, "y_scale", "y_zero_point");
  if (n.has_input(2) && n.input(2).dtype != n.output(0).dtype) n.fail("y_zero_point's dtype differs from the output's");
  return s;
}

void fwd_quantize(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const Tensor& x = in[0];
  Tensor& y = out[0];
  for_channels(static_cast<const QuantizeState&>(st), in, 1, [&](int64_t i, float sc, int32_t z) {
    const float v = x.dtype() == DType::F32 ? x.data<float>()[i] : static_cast<float>(x.data<int32_t>()[i]);
    store_quantized(y, i, v / sc, z);
  });
}

std::unique_ptr<KernelState> prep_dequantize(const NodeView& n) {
  auto s = std::make_unique<QuantizeState>();
  n.require_dtype(n.input(0), {DType::U8, DType::I8, DType::I32}, "input x");
  n.require_dtype(n.output(0), {DType::F32}, "output y");
  channel_params(n, *s, "x_scale", "x_zero_point");
  if (n.has_input(2) && n.input(2).dtype != n.input(0).dtype) n.fail("x_zero_point's dtype differs from x's");
  return s;
}

void fwd_dequantize(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const Tensor& x = in[0];
  float* y = out[0].data<float>();
  for_channels(static_cast<const QuantizeState&>(st), in, 1, [&](int64_t i, float sc, int32_t z) {
    y[i] = static_cast<float>(static_cast<int64_t>(int_at(x, i)) - z) * sc;
  });
}

// ---- DynamicQuantizeLinear -------------------------------------------------------------------
//
// uint8 with the scale and zero point that map [min(0, min x), max(0, max x)] onto [0, 255]
// (ONNX's formulas, in float32): scale = (hi - lo) / 255, zero = saturate(round(0 - lo / scale)).
// An all-zero x (scale 0) gives scale 0, zero point 0 and zeros.

std::unique_ptr<KernelState> prep_dynamic_quantize(const NodeView& n) {
  auto s = std::make_unique<KernelState>();
  n.require_dtype(n.input(0), {DType::F32}, "input x");
  if (n.num_outputs() != 3) n.fail("needs 3 outputs (y, y_scale, y_zero_point)");
  return s;
}

void fwd_dynamic_quantize(const KernelState&, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const float* x = in[0].data<float>();
  const int64_t n = in[0].numel();
  float lo = 0, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  const float scale = (hi - lo) / 255.0f;
  int32_t zero = 0;
  if (scale > 0) zero = static_cast<int32_t>(std::nearbyint(std::min(std::max(0.0f - lo / scale, 0.0f), 255.0f)));
  if (out.size() > 1 && out[1].defined()) out[1].data<float>()[0] = scale;
  if (out.size() > 2 && out[2].defined()) out[2].data<uint8_t>()[0] = static_cast<uint8_t>(zero);
  pfor(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      if (scale > 0) store_quantized(out[0], i, x[i] / scale, zero);
      else out[0].data<uint8_t>()[i] = 0;
    }
  });
}

// ---- MatMulInteger, QLinearMatMul ------------------------------------------------------------
//
// MatMulInteger (A, B, a_zero_point, b_zero_point): Y = (A - a_zero) . (B - b_zero) in int32,
// a_zero per tensor or per row of A, b_zero per tensor or per column of B.
// QLinearMatMul (a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero): the same sums, then
// y = saturate(round(sum * a_scale * b_scale / y_scale) + y_zero), the a and y parameters per
// tensor or per row, the b ones per tensor or per column.

std::unique_ptr<KernelState> prep_matmul_integer(const NodeView& n) {
  auto s = std::make_unique<QMatMulState>();
  const bool qlinear = n.op() == graph::Op::QLinearMatMul;
  if (qlinear && n.num_inputs() != 8) n.fail("needs 8 inputs");
  s->q = integer_product_inputs(n, qlinear, "a", "b");
  matmul_layout(n, 0, operand_b(s->q), *s);
  check_integer_product(n, s->q, "a", "b", s->M, s->N, s->M);
  return s;
}

void fwd_matmul_integer(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const QMatMulState&>(st);
  const QuantIO& q = s.q;
  const Tensor& A = in[0];
  const Tensor& B = in[static_cast<size_t>(operand_b(q))];
  const int64_t M = s.M, N = s.N, K = s.K;
  const std::vector<int32_t> za = zero_values(in, q.a_zero), zb = zero_values(in, q.b_zero);
  // The shifted operands in float64 (exact), then one float64 product per batch.
  Tensor ad = scratch(ctx, DType::F64, {A.numel()}), bd = scratch(ctx, DType::F64, {B.numel()});
  Tensor acc = scratch(ctx, DType::F64, {s.batches * M * N});
  double *a = ad.data<double>(), *b = bd.data<double>(), *c = acc.data<double>();
  pfor(A.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) a[i] = int_at(A, i) - at(za, (i / K) % M);
  });
  pfor(B.numel(), kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) b[i] = int_at(B, i) - at(zb, i % N);
  });
  auto dgemm = [](int64_t m, int64_t n, int64_t k, const double* x, const double* y, double* z) {
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(m), static_cast<int>(n), static_cast<int>(k), 1.0,
                x, static_cast<int>(std::max<int64_t>(k, 1)), y, static_cast<int>(std::max<int64_t>(n, 1)), 0.0, z,
                static_cast<int>(std::max<int64_t>(n, 1)));
  };
  if (s.folded) {
    const int64_t rows = s.a_mats * M;
    pfor(rows, std::max<int64_t>(8, (int64_t{1} << 16) / std::max<int64_t>(N * K, 1)), [&](int64_t r0, int64_t r1) {
      dgemm(r1 - r0, N, K, a + r0 * K, b, c + r0 * N);
    });
  } else {
    pfor(s.batches, 1, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        dgemm(M, N, K, a + s.a_off[static_cast<size_t>(i)] * M * K, b + s.b_off[static_cast<size_t>(i)] * K * N, c + i * M * N);
    });
  }
  write_integer_product(out[0], c, s.batches * M * N, q, in, nullptr, [&](int64_t i) {
    const int64_t m = (i / N) % M;
    return std::array<int64_t, 3>{m, i % N, m};
  });
}

// ---- FakeQuantize ------------------------------------------------------------------------
//
// The loader's fusion of QuantizeLinear (-> Clip) -> DequantizeLinear (graph/loader.cpp):
// y = (clamp(round(x / scale) + zero, qmin, qmax) - zero) * scale, the integers in between never
// stored; dx = dy where round(x / scale) + zero lies in [qmin, qmax], else 0 (PyTorch's
// fake_quantize gradient). Attributes axis (as QuantizeLinear's), qmin, qmax.

namespace {
struct FakeQuantState : QuantizeState {
  float qmin = 0, qmax = 255;
};

// Calls f(i, q, s, z) for every element, q = round(x_i / s) + z unclamped.
template <class F>
void for_quantized(const FakeQuantState& s, std::span<const Tensor> in, F f) {
  const float* x = in[0].data<float>();
  for_channels(s, in, 1, [&](int64_t i, float sc, int32_t zero) {
    const float z = static_cast<float>(zero);
    f(i, std::nearbyint(x[i] / sc) + z, sc, z);
  });
}
}  // namespace

std::unique_ptr<KernelState> prep_fake_quantize(const NodeView& n) {
  auto s = std::make_unique<FakeQuantState>();
  n.require_dtype(n.input(0), {DType::F32}, "input x");
  channel_params(n, *s, "scale", "zero point");
  s->qmin = static_cast<float>(n.node().attr_int("qmin", 0));
  s->qmax = static_cast<float>(n.node().attr_int("qmax", 255));
  if (s->qmin > s->qmax) n.fail("qmin above qmax");
  return s;
}

void fwd_fake_quantize(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const FakeQuantState&>(st);
  float* y = out[0].data<float>();
  for_quantized(s, in, [&](int64_t i, float q, float sc, float z) {
    y[i] = (std::min(std::max(q, s.qmin), s.qmax) - z) * sc;
  });
}

void bwd_fake_quantize(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const FakeQuantState&>(st);
  if (!io.dout[0].defined() || !io.din[0].defined()) return;
  const float* dy = io.dout[0].data<float>();
  float* dx = io.din[0].data<float>();
  const bool acc = io.accumulate[0];
  for_quantized(s, io.in, [&](int64_t i, float q, float, float) {
    const float g = q >= s.qmin && q <= s.qmax ? dy[i] : 0.0f;
    dx[i] = acc ? dx[i] + g : g;
  });
}

}  // namespace smp::runtime::cpu
