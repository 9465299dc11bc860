// Shared by the quantized kernels (quant.cpp; ConvInteger and QLinearConv in conv.cpp): 8-bit
// tensors with a scale and a zero point, ONNX's linear quantization
//   q = saturate(round(x / scale) + zero_point),   x' = (q - zero_point) * scale,
// rounding half to even, saturating to the integer type's range; a scale or zero point holds one
// value for the tensor (a scalar, or a 1-D of one element) or one per channel of an axis.
#pragma once

#include "runtime/cpu/common.hpp"

#include <array>
#include <climits>
#include <cstdint>
#include <span>
#include <vector>

namespace smp::runtime::cpu {

// State of the integer products (MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv): which
// inputs hold the operands' scales and zero points (-1: none), and how many values each has.
struct QuantIO {
  int a_scale = -1, a_zero = -1, b_scale = -1, b_zero = -1, y_scale = -1, y_zero = -1, bias = -1;
  bool requantize = false;  // QLinear*: the output is quantized again (else int32 sums)
};

// The inputs of an integer product with operand names a and b ("A", "B"; "x", "w"): MatMulInteger
// and ConvInteger read (a, b, a_zero, b_zero), QLinearMatMul and QLinearConv (a, a_scale, a_zero,
// b, b_scale, b_zero, y_scale, y_zero[, bias]); the operands must be uint8 or int8.
QuantIO integer_product_inputs(const NodeView& n, bool qlinear, const char* a, const char* b);
// The operand index of a (0) and b (1 or 3).
inline int operand_b(const QuantIO& q) { return q.requantize ? 3 : 1; }
// Load-time checks of an integer product's scales and zero points: a's per tensor or a_ch values,
// b's per tensor or b_ch, y's per tensor or y_ch; zero points of their data's dtype; the output
// int32 (or, requantized, the y zero point's uint8 / int8).
void check_integer_product(const NodeView& n, const QuantIO& q, const char* a, const char* b, int64_t a_ch, int64_t b_ch,
                           int64_t y_ch);

// Element i of an integer tensor (uint8, int8, int32).
inline int32_t int_at(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::U8: return t.data<uint8_t>()[i];
    case DType::I8: return t.data<int8_t>()[i];
    default: return t.data<int32_t>()[i];
  }
}

// The integer type's range.
inline int32_t qmin(DType t) { return t == DType::I8 ? -128 : (t == DType::U8 ? 0 : INT32_MIN); }
inline int32_t qmax(DType t) { return t == DType::I8 ? 127 : (t == DType::U8 ? 255 : INT32_MAX); }

// saturate(round_half_even(v) + zero) in t's range, stored as element i of out (uint8 or int8).
inline void store_quantized(Tensor& out, int64_t i, float v, int32_t zero) {
  const float r = std::nearbyint(v) + static_cast<float>(zero);
  const DType t = out.dtype();
  const float lo = static_cast<float>(qmin(t)), hi = static_cast<float>(qmax(t));
  const float c = std::isnan(r) ? lo : std::min(std::max(r, lo), hi);
  if (t == DType::U8) out.data<uint8_t>()[i] = static_cast<uint8_t>(c);
  else out.data<int8_t>()[i] = static_cast<int8_t>(c);
}

// Load time: input `i` (a scale when `scale`, else a zero point) holds one value or `channels`;
// returns how many (1 when the input is absent). Scales are float32; zero points uint8, int8 or
// int32 (each op checks that its zero points have their data's dtype).
int64_t check_qparam(const NodeView& n, int i, int64_t channels, bool scale, const char* role);

// Run time: a scale input's values, a zero point input's values ({0} when the input is absent).
std::vector<float> scale_values(std::span<const Tensor> in, int i);
std::vector<int32_t> zero_values(std::span<const Tensor> in, int i);

// v[k] of a per-tensor (1 value) or per-channel parameter
template <class T>
inline T at(const std::vector<T>& v, int64_t k) {
  return v.size() == 1 ? v[0] : v[static_cast<size_t>(k)];
}

// Writes an integer product's output from its exact sums acc[0, total): int32 (saturated), or
// requantized, saturate(round((acc + bias) * a_scale * b_scale / y_scale) + y_zero), where
// channels(i) gives element i's (a, b, y) parameter indices and bias (or nullptr) is per b channel.
template <class Channels>
void write_integer_product(Tensor& Y, const double* acc, int64_t total, const QuantIO& q, std::span<const Tensor> in,
                           const int32_t* bias, Channels channels) {
  if (!q.requantize) {
    int32_t* y = Y.data<int32_t>();
    pfor(total, kGrain, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) y[i] = static_cast<int32_t>(std::min<double>(std::max<double>(acc[i], INT32_MIN), INT32_MAX));
    });
    return;
  }
  const std::vector<float> sa = scale_values(in, q.a_scale), sb = scale_values(in, q.b_scale), sy = scale_values(in, q.y_scale);
  const std::vector<int32_t> zy = zero_values(in, q.y_zero);
  pfor(total, kGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const auto [ka, kb, ky] = channels(i);
      const float mult = at(sa, ka) * at(sb, kb) / at(sy, ky);
      store_quantized(Y, i, static_cast<float>(acc[i] + (bias ? bias[kb] : 0)) * mult, at(zy, ky));
    }
  });
}

}  // namespace smp::runtime::cpu
