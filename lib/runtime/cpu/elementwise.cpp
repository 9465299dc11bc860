// Elementwise kernels: binary ops with ONNX multidirectional broadcasting, unary math, Where,
// Clip, Cast, Identity, Dropout (inference semantics).
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"
#include "runtime/random.hpp"
#include "runtime/cpu/vmath.hpp"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace smp::runtime::cpu {

using graph::Op;

bool is_arith(Op op) {
  return op == Op::Add || op == Op::Sub || op == Op::Mul || op == Op::Div || op == Op::Pow || op == Op::Max || op == Op::Min ||
         op == Op::Mod;
}
bool is_compare(Op op) {
  return op == Op::Equal || op == Op::Less || op == Op::Greater || op == Op::LessOrEqual || op == Op::GreaterOrEqual;
}

namespace {

template <class T, class U, class R, class F>
void bin_loop(const Bcast& p, const T* a, const U* b, R* o, F f) {
  bcast_rows(p, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
    const F fn = f;
    const T* __restrict pa = a + off[0];
    const U* __restrict pb = b + off[1];
    R* __restrict po = o + oo;
    if (ist[0] == 1 && ist[1] == 1) {
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) po[i] = fn(pa[i], pb[i]);
    } else if (ist[0] == 1) {
      U vb = *pb;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) po[i] = fn(pa[i], vb);
    } else if (ist[1] == 1) {
      T va = *pa;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) po[i] = fn(va, pb[i]);
    } else {
      R v = fn(*pa, *pb);
      for (int64_t i = 0; i < L; ++i) po[i] = v;
    }
  });
}

template <class T>
void arith(Op op, const Bcast& p, const T* a, const T* b, T* o) {
  switch (op) {
    case Op::Add: bin_loop(p, a, b, o, [](T x, T y) { return static_cast<T>(x + y); }); break;
    case Op::Sub: bin_loop(p, a, b, o, [](T x, T y) { return static_cast<T>(x - y); }); break;
    case Op::Mul: bin_loop(p, a, b, o, [](T x, T y) { return static_cast<T>(x * y); }); break;
    case Op::Div:
      if constexpr (std::is_integral_v<T>) {
        // no trap on a zero divisor (0, as numpy) or on INT_MIN / -1 (wraps)
        bin_loop(p, a, b, o, [](T x, T y) -> T {
          if (y == 0) return T(0);
          if constexpr (std::is_signed_v<T>)
            if (y == T(-1)) return static_cast<T>(T(0) - static_cast<std::make_unsigned_t<T>>(x));
          return static_cast<T>(x / y);
        });
      } else {
        bin_loop(p, a, b, o, [](T x, T y) { return x / y; });
      }
      break;
    case Op::Mod:  // ModState's fmod decides for integers (arith_mod); floats are C's fmod
      if constexpr (std::is_floating_point_v<T>) bin_loop(p, a, b, o, [](T x, T y) { return std::fmod(x, y); });
      else SMP_CHECK(false, "integer Mod goes through arith_mod");
      break;
    case Op::Max: bin_loop(p, a, b, o, [](T x, T y) { return x > y ? x : y; }); break;
    case Op::Min: bin_loop(p, a, b, o, [](T x, T y) { return x < y ? x : y; }); break;
    case Op::Pow:
      if constexpr (std::is_floating_point_v<T>) {
        bin_loop(p, a, b, o, [](T x, T y) { return y == T(2) ? x * x : std::pow(x, y); });
      } else {
        bin_loop(p, a, b, o, [](T x, T y) { return static_cast<T>(std::pow(double(x), double(y))); });
      }
      break;
    default: SMP_CHECK(false, "not an arithmetic op");
  }
}

// Integer Mod: Python's remainder (the divisor's sign) or, with fmod, C's (the dividend's); 0
// for a zero divisor, as numpy.
template <class T>
void arith_mod(const Bcast& p, const T* a, const T* b, T* o, bool fmod) {
  bin_loop(p, a, b, o, [fmod](T x, T y) -> T {
    if (y == 0) return T(0);
    if constexpr (std::is_signed_v<T>) {
      if (y == T(-1)) return T(0);  // no trap on INT_MIN % -1
      T r = static_cast<T>(x % y);
      if (!fmod && r != 0 && ((r < 0) != (y < 0))) r = static_cast<T>(r + y);
      return r;
    } else {
      return static_cast<T>(x % y);
    }
  });
}

// BitShift of unsigned integers; a shift by the width or more gives 0 (numpy's, ONNX's reference).
template <class T>
void bit_shift(const Bcast& p, const T* a, const T* b, T* o, bool left) {
  constexpr T bits = static_cast<T>(sizeof(T) * 8);
  if (left) bin_loop(p, a, b, o, [](T x, T y) -> T { return y >= bits ? T(0) : static_cast<T>(x << y); });
  else bin_loop(p, a, b, o, [](T x, T y) -> T { return y >= bits ? T(0) : static_cast<T>(x >> y); });
}

// A numeric tensor's elements as doubles (exact for every integer below 2^53).
std::vector<double> tensor_doubles(const Tensor& t) {
  std::vector<double> v(static_cast<size_t>(t.numel()));
  auto copy = [&](const auto* p) {
    for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<double>(p[i]);
  };
  switch (t.dtype()) {
    case DType::F32: copy(t.data<float>()); break;
    case DType::F64: copy(t.data<double>()); break;
    case DType::I64: copy(t.data<int64_t>()); break;
    case DType::I32: copy(t.data<int32_t>()); break;
    case DType::I16: copy(t.data<int16_t>()); break;
    case DType::I8: copy(t.data<int8_t>()); break;
    case DType::U64: copy(t.data<uint64_t>()); break;
    case DType::U32: copy(t.data<uint32_t>()); break;
    case DType::U16: copy(t.data<uint16_t>()); break;
    case DType::U8: copy(t.data<uint8_t>()); break;
    default: SMP_CHECK(false, "expected a numeric tensor, got {}", t.str());
  }
  return v;
}

// Pow of a float64 or integer base and an exponent of another dtype, as numpy's power of the two
// promoted to float64 and cast back to the base's dtype (ONNX's reference): 4^0.5 is 2.
template <class T>
void pow_mixed(const Bcast& p, const T* a, const Tensor& b, T* o) {
  const auto e = tensor_doubles(b);
  bin_loop(p, a, e.data(), o, [](T x, double y) { return static_cast<T>(std::pow(static_cast<double>(x), y)); });
}

template <class T>
void compare(Op op, const Bcast& p, const T* a, const T* b, uint8_t* o) {
  switch (op) {
    case Op::Equal: bin_loop(p, a, b, o, [](T x, T y) -> uint8_t { return x == y; }); break;
    case Op::Less: bin_loop(p, a, b, o, [](T x, T y) -> uint8_t { return x < y; }); break;
    case Op::Greater: bin_loop(p, a, b, o, [](T x, T y) -> uint8_t { return x > y; }); break;
    case Op::LessOrEqual: bin_loop(p, a, b, o, [](T x, T y) -> uint8_t { return x <= y; }); break;
    case Op::GreaterOrEqual: bin_loop(p, a, b, o, [](T x, T y) -> uint8_t { return x >= y; }); break;
    default: SMP_CHECK(false, "not a comparison");
  }
}

}  // namespace

std::unique_ptr<KernelState> prep_binary(const NodeView& n) {
  auto s = std::make_unique<BinState>();
  s->op = n.op();
  if ((n.op() == Op::Max || n.op() == Op::Min) && n.num_inputs() == 1) {
    s->single = true;
    n.require_dtype(n.input(0), {DType::F32, DType::F64, DType::F16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U64,
                                 DType::U32, DType::U16, DType::U8}, "input");
    return s;
  }
  if (n.num_inputs() != 2 || !n.has_input(0) || !n.has_input(1))
    n.fail(fmt::format("{} inputs; supported: 2", n.num_inputs()));
  const auto &a = n.input(0), &b = n.input(1);
  const auto& y = n.output(0);
  if (is_arith(n.op())) {
    if (n.op() == Op::Pow) n.require_dtype(a, {DType::F32, DType::F64, DType::I64, DType::I32}, "input A");
    else  // float16 computes as numpy's: each result rounded from float32's
      n.require_dtype(a, {DType::F32, DType::F64, DType::F16, DType::I64, DType::I32, DType::I16, DType::I8, DType::U64,
                          DType::U32, DType::U16, DType::U8}, "input A");
    if (n.op() == Op::Pow) {  // ONNX's T1 (float32, float64, int64, int32 here) to any numeric T
      n.require_dtype(b, {DType::F32, DType::F64, DType::I64, DType::I32, DType::I16, DType::I8, DType::U64, DType::U32,
                          DType::U16, DType::U8}, "exponent");
    } else if (b.dtype != a.dtype) {
      n.fail(fmt::format("inputs of different dtypes ({} and {})", dtype_name(a.dtype), dtype_name(b.dtype)));
    }
    if (n.op() == Op::Mod) {
      s->fmod = n.node().attr_int("fmod", 0) != 0;
      if (is_floating(a.dtype) && !s->fmod) n.fail("fmod 0 on floats (ONNX requires fmod 1 for them)");
      if (a.dtype == DType::F16) n.fail("float16 Mod not supported");
    }
  } else if (n.op() == Op::BitShift) {
    n.require_dtype(a, {DType::U8, DType::U16, DType::U32, DType::U64}, "input X");
    if (b.dtype != a.dtype) n.fail(fmt::format("inputs of different dtypes ({} and {})", dtype_name(a.dtype), dtype_name(b.dtype)));
    const std::string dir = n.node().attr_string("direction", "");
    if (dir != "LEFT" && dir != "RIGHT") n.fail(fmt::format("direction '{}' (LEFT or RIGHT)", dir));
    s->left = dir == "LEFT";
  } else if (is_compare(n.op())) {
    if (n.op() == Op::Equal) n.require_dtype(a, {DType::F32, DType::F64, DType::I64, DType::I32, DType::Bool}, "input A");
    else n.require_dtype(a, {DType::F32, DType::F64, DType::I64, DType::I32}, "input A");
    if (b.dtype != a.dtype) n.fail("inputs of different dtypes");
  } else {  // And, Or, Xor
    n.require_dtype(a, {DType::Bool}, "input A");
    n.require_dtype(b, {DType::Bool}, "input B");
  }
  if (!broadcastable_to(a.shape, y.shape) || !broadcastable_to(b.shape, y.shape))
    n.fail(fmt::format("shapes {} and {} do not broadcast to {}", shape_str(a.shape), shape_str(b.shape), shape_str(y.shape)));
  s->plan = make_bcast(y.shape, {a.shape, b.shape});
  s->plan3 = make_bcast(y.shape, {y.shape, a.shape, b.shape});
  return s;
}

void fwd_binary(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const BinState&>(st);
  Tensor& y = out[0];
  if (s.single) {
    ctx.backend->copy(y, in[0]);
    return;
  }
  const Tensor &a = in[0], &b = in[1];
  if (s.op == Op::BitShift) {
    switch (a.dtype()) {
      case DType::U8: bit_shift(s.plan, a.data<uint8_t>(), b.data<uint8_t>(), y.data<uint8_t>(), s.left); break;
      case DType::U16: bit_shift(s.plan, a.data<uint16_t>(), b.data<uint16_t>(), y.data<uint16_t>(), s.left); break;
      case DType::U32: bit_shift(s.plan, a.data<uint32_t>(), b.data<uint32_t>(), y.data<uint32_t>(), s.left); break;
      case DType::U64: bit_shift(s.plan, a.data<uint64_t>(), b.data<uint64_t>(), y.data<uint64_t>(), s.left); break;
      default: SMP_CHECK(false, "dtype");
    }
    return;
  }
  if (s.op == Op::Mod && !is_floating(a.dtype())) {
    switch (a.dtype()) {
      case DType::I64: arith_mod(s.plan, a.data<int64_t>(), b.data<int64_t>(), y.data<int64_t>(), s.fmod); break;
      case DType::I32: arith_mod(s.plan, a.data<int32_t>(), b.data<int32_t>(), y.data<int32_t>(), s.fmod); break;
      case DType::I16: arith_mod(s.plan, a.data<int16_t>(), b.data<int16_t>(), y.data<int16_t>(), s.fmod); break;
      case DType::I8: arith_mod(s.plan, a.data<int8_t>(), b.data<int8_t>(), y.data<int8_t>(), s.fmod); break;
      case DType::U64: arith_mod(s.plan, a.data<uint64_t>(), b.data<uint64_t>(), y.data<uint64_t>(), s.fmod); break;
      case DType::U32: arith_mod(s.plan, a.data<uint32_t>(), b.data<uint32_t>(), y.data<uint32_t>(), s.fmod); break;
      case DType::U16: arith_mod(s.plan, a.data<uint16_t>(), b.data<uint16_t>(), y.data<uint16_t>(), s.fmod); break;
      case DType::U8: arith_mod(s.plan, a.data<uint8_t>(), b.data<uint8_t>(), y.data<uint8_t>(), s.fmod); break;
      default: SMP_CHECK(false, "dtype");
    }
    return;
  }
  if (is_arith(s.op)) {
    switch (a.dtype()) {
      case DType::F32: {
        if (b.dtype() == DType::F32) {
          arith<float>(s.op, s.plan, a.data<float>(), b.data<float>(), y.data<float>());
        } else {  // Pow with an exponent of another dtype: float32's pow of the exponent as a float
          auto v = tensor_doubles(b);
          std::vector<float> e(v.begin(), v.end());
          arith<float>(s.op, s.plan, a.data<float>(), e.data(), y.data<float>());
        }
        break;
      }
      case DType::F64:
        if (b.dtype() != DType::F64) pow_mixed(s.plan, a.data<double>(), b, y.data<double>());
        else arith<double>(s.op, s.plan, a.data<double>(), b.data<double>(), y.data<double>());
        break;
      case DType::I64:
        if (b.dtype() != DType::I64) pow_mixed(s.plan, a.data<int64_t>(), b, y.data<int64_t>());
        else arith<int64_t>(s.op, s.plan, a.data<int64_t>(), b.data<int64_t>(), y.data<int64_t>());
        break;
      case DType::I32:
        if (b.dtype() != DType::I32) pow_mixed(s.plan, a.data<int32_t>(), b, y.data<int32_t>());
        else arith<int32_t>(s.op, s.plan, a.data<int32_t>(), b.data<int32_t>(), y.data<int32_t>());
        break;
      case DType::F16:
        arith<_Float16>(s.op, s.plan, static_cast<const _Float16*>(a.raw()), static_cast<const _Float16*>(b.raw()),
                        static_cast<_Float16*>(y.raw()));
        break;
      case DType::I16: arith<int16_t>(s.op, s.plan, a.data<int16_t>(), b.data<int16_t>(), y.data<int16_t>()); break;
      case DType::I8: arith<int8_t>(s.op, s.plan, a.data<int8_t>(), b.data<int8_t>(), y.data<int8_t>()); break;
      case DType::U64: arith<uint64_t>(s.op, s.plan, a.data<uint64_t>(), b.data<uint64_t>(), y.data<uint64_t>()); break;
      case DType::U32: arith<uint32_t>(s.op, s.plan, a.data<uint32_t>(), b.data<uint32_t>(), y.data<uint32_t>()); break;
      case DType::U16: arith<uint16_t>(s.op, s.plan, a.data<uint16_t>(), b.data<uint16_t>(), y.data<uint16_t>()); break;
      case DType::U8: arith<uint8_t>(s.op, s.plan, a.data<uint8_t>(), b.data<uint8_t>(), y.data<uint8_t>()); break;
      default: SMP_CHECK(false, "dtype");
    }
  } else if (is_compare(s.op)) {
    uint8_t* o = y.data<uint8_t>();
    switch (a.dtype()) {
      case DType::F32: compare<float>(s.op, s.plan, a.data<float>(), b.data<float>(), o); break;
      case DType::F64: compare<double>(s.op, s.plan, a.data<double>(), b.data<double>(), o); break;
      case DType::I64: compare<int64_t>(s.op, s.plan, a.data<int64_t>(), b.data<int64_t>(), o); break;
      case DType::I32: compare<int32_t>(s.op, s.plan, a.data<int32_t>(), b.data<int32_t>(), o); break;
      case DType::Bool: compare<uint8_t>(s.op, s.plan, a.data<uint8_t>(), b.data<uint8_t>(), o); break;
      default: SMP_CHECK(false, "dtype");
    }
  } else {
    const uint8_t *pa = a.data<uint8_t>(), *pb = b.data<uint8_t>();
    uint8_t* o = y.data<uint8_t>();
    if (s.op == Op::And) bin_loop(s.plan, pa, pb, o, [](uint8_t x, uint8_t z) -> uint8_t { return (x != 0) & (z != 0); });
    else if (s.op == Op::Or) bin_loop(s.plan, pa, pb, o, [](uint8_t x, uint8_t z) -> uint8_t { return (x != 0) | (z != 0); });
    else bin_loop(s.plan, pa, pb, o, [](uint8_t x, uint8_t z) -> uint8_t { return (x != 0) ^ (z != 0); });
  }
}

namespace {

// din = (or +=) reduce_to_input_shape( f(dy, a, b) ) evaluated over the output shape.
template <class F>
void grad_to(const BinState& s, ExecContext& ctx, int which, const float* dy, const float* a, const float* b,
             Tensor& din, bool acc, F f) {
  const Shape& ys = s.out_shapes[0];
  const Shape& xs = s.in_shapes[static_cast<size_t>(which)];
  bool direct = smp::numel(xs) == smp::numel(ys);
  Tensor tmp;
  float* o = din.data<float>();
  if (!direct) {
    tmp = scratch(ctx, DType::F32, ys);
    o = tmp.data<float>();
  }
  bool add = direct && acc;
  static const float zero = 0;
  const float* pa = a ? a : &zero;
  const float* pb = b ? b : &zero;
  bcast_rows(s.plan3, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
    const F fn = f;
    const float* __restrict g = dy + off[0];
    const float* __restrict x = pa + (a ? off[1] : 0);
    const float* __restrict z = pb + (b ? off[2] : 0);
    int64_t sa = a ? ist[1] : 0, sb = b ? ist[2] : 0;
    float* __restrict po = o + oo;
    auto run = [&](auto xa, auto zb) {  // xa, zb: std::true_type when the operand varies along the row
      constexpr bool vx = decltype(xa)::value, vz = decltype(zb)::value;
      float x0 = *x, z0 = *z;
      if (add) {
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) po[i] += fn(g[i], vx ? x[i] : x0, vz ? z[i] : z0);
      } else {
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) po[i] = fn(g[i], vx ? x[i] : x0, vz ? z[i] : z0);
      }
    };
    if (sa && sb) run(std::true_type{}, std::true_type{});
    else if (sa) run(std::true_type{}, std::false_type{});
    else if (sb) run(std::false_type{}, std::true_type{});
    else run(std::false_type{}, std::false_type{});
  });
  if (!direct) reduce_sum_to(din.data<float>(), xs, o, ys, acc);
}

}  // namespace

void bwd_binary(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const BinState&>(st);
  if (!io.dout[0].defined()) return;
  const float* dy = io.dout[0].data<float>();
  if (s.single) {
    if (io.din[0].defined()) store(io.din[0].data<float>(), dy, io.dout[0].numel(), io.accumulate[0]);
    return;
  }
  auto need = [&](int i) -> const float* {
    SMP_CHECK(io.in[static_cast<size_t>(i)].defined(), "node {}: backward needs input {} (not declared saved)", s.node_name, i);
    return io.in[static_cast<size_t>(i)].data<float>();
  };
  for (int w = 0; w < 2; ++w) {
    if (!io.din[static_cast<size_t>(w)].defined()) continue;
    Tensor& d = io.din[static_cast<size_t>(w)];
    bool acc = io.accumulate[static_cast<size_t>(w)];
    if (s.op == Op::Add || (s.op == Op::Sub && w == 0)) {  // the gradient, summed over broadcast axes
      reduce_sum_to(d.data<float>(), s.in_shapes[static_cast<size_t>(w)], dy, s.out_shapes[0], acc);
      continue;
    }
    switch (s.op) {
      case Op::Add: grad_to(s, ctx, w, dy, nullptr, nullptr, d, acc, [](float g, float, float) { return g; }); break;
      case Op::Sub:
        if (w == 0) grad_to(s, ctx, w, dy, nullptr, nullptr, d, acc, [](float g, float, float) { return g; });
        else grad_to(s, ctx, w, dy, nullptr, nullptr, d, acc, [](float g, float, float) { return -g; });
        break;
      case Op::Mul:
        if (w == 0) grad_to(s, ctx, w, dy, nullptr, need(1), d, acc, [](float g, float, float b) { return g * b; });
        else grad_to(s, ctx, w, dy, need(0), nullptr, d, acc, [](float g, float a, float) { return g * a; });
        break;
      case Op::Div:
        if (w == 0) grad_to(s, ctx, w, dy, nullptr, need(1), d, acc, [](float g, float, float b) { return g / b; });
        else grad_to(s, ctx, w, dy, need(0), need(1), d, acc, [](float g, float a, float b) { return -g * a / (b * b); });
        break;
      case Op::Pow:
        SMP_CHECK(s.in_dtypes[1] == DType::F32 || w == 0, "integer exponent has no gradient");
        if (s.in_dtypes[1] != DType::F32) {
          auto e = tensor_doubles(io.in[1]);
          std::vector<float> ef(e.begin(), e.end());
          grad_to(s, ctx, w, dy, need(0), ef.data(), d, acc,
                  [](float g, float a, float b) { return b == 0 ? 0.0f : g * b * std::pow(a, b - 1); });
        } else if (w == 0) {
          grad_to(s, ctx, w, dy, need(0), need(1), d, acc,
                  [](float g, float a, float b) { return b == 0 ? 0.0f : g * b * std::pow(a, b - 1); });
        } else {
          grad_to(s, ctx, w, dy, need(0), need(1), d, acc,
                  [](float g, float a, float b) { return a > 0 ? g * std::pow(a, b) * std::log(a) : 0.0f; });
        }
        break;
      case Op::Mod:  // fmod(a, b) = a - trunc(a / b) b
        if (w == 0) grad_to(s, ctx, w, dy, nullptr, nullptr, d, acc, [](float g, float, float) { return g; });
        else grad_to(s, ctx, w, dy, need(0), need(1), d, acc, [](float g, float a, float b) { return -g * std::trunc(a / b); });
        break;
      case Op::Max:
      case Op::Min: {
        bool mx = s.op == Op::Max;
        if (w == 0)
          grad_to(s, ctx, w, dy, need(0), need(1), d, acc, [mx](float g, float a, float b) {
            return a == b ? 0.5f * g : ((a > b) == mx ? g : 0.0f);
          });
        else
          grad_to(s, ctx, w, dy, need(0), need(1), d, acc, [mx](float g, float a, float b) {
            return a == b ? 0.5f * g : ((b > a) == mx ? g : 0.0f);
          });
        break;
      }
      default: SMP_CHECK(false, "node {}: no gradient", s.node_name);
    }
  }
}

// ---- Where -------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_where(const NodeView& n) {
  auto s = std::make_unique<WhereState>();
  if (n.num_inputs() != 3) n.fail("needs 3 inputs");
  n.require_dtype(n.input(0), {DType::Bool}, "condition");
  if (n.input(1).dtype != n.input(2).dtype) n.fail("X and Y of different dtypes");
  int64_t es = dtype_size(n.input(1).dtype);
  if (es != 1 && es != 4 && es != 8) n.fail(fmt::format("dtype {} not supported", dtype_name(n.input(1).dtype)));
  const Shape& ys = n.output(0).shape;
  for (int i = 0; i < 3; ++i)
    if (!broadcastable_to(n.input(i).shape, ys)) n.fail("inputs do not broadcast to the output");
  s->plan = make_bcast(ys, {n.input(0).shape, n.input(1).shape, n.input(2).shape});
  return s;
}

namespace {
template <class T>
void where_loop(const Bcast& p, const uint8_t* c, const T* x, const T* y, T* o) {
  bcast_rows(p, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
    const uint8_t* pc = c + off[0];
    const T* px = x + off[1];
    const T* py = y + off[2];
    T* __restrict po = o + oo;
    int64_t sc = ist[0], sx = ist[1], sy = ist[2];
    if (sc == 1 && sx == 0 && sy == 1) {  // a mask selecting a constant over a tensor (attention masks)
      const T vx = *px;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) po[i] = pc[i] ? vx : py[i];
    } else if (sc == 1 && sx == 1 && sy == 0) {
      const T vy = *py;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) po[i] = pc[i] ? px[i] : vy;
    } else if (sc == 1 && sx == 1 && sy == 1) {
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) po[i] = pc[i] ? px[i] : py[i];
    } else {
      for (int64_t i = 0; i < L; ++i) po[i] = pc[i * sc] ? px[i * sx] : py[i * sy];
    }
  });
}
}  // namespace

void fwd_where(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const WhereState&>(st);
  const uint8_t* c = in[0].data<uint8_t>();
  switch (dtype_size(in[1].dtype())) {
    case 1: where_loop(s.plan, c, static_cast<const uint8_t*>(in[1].raw()), static_cast<const uint8_t*>(in[2].raw()), static_cast<uint8_t*>(out[0].raw())); break;
    case 4: where_loop(s.plan, c, static_cast<const uint32_t*>(in[1].raw()), static_cast<const uint32_t*>(in[2].raw()), static_cast<uint32_t*>(out[0].raw())); break;
    case 8: where_loop(s.plan, c, static_cast<const uint64_t*>(in[1].raw()), static_cast<const uint64_t*>(in[2].raw()), static_cast<uint64_t*>(out[0].raw())); break;
    default: SMP_CHECK(false, "dtype");
  }
}

void bwd_where(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const WhereState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined(), "node {}: Where backward needs the condition (not declared saved)", s.node_name);
  const uint8_t* c = io.in[0].data<uint8_t>();
  const float* dy = io.dout[0].data<float>();
  const Shape& ys = s.out_shapes[0];
  for (int w = 1; w <= 2; ++w) {
    Tensor& d = io.din[static_cast<size_t>(w)];
    if (!d.defined()) continue;
    bool take = w == 1, acc = io.accumulate[static_cast<size_t>(w)];
    // the branch's own shape: straight into its gradient, else through a scratch and a reduction
    bool direct = s.in_shapes[static_cast<size_t>(w)] == ys;
    Tensor tmp = direct ? Tensor() : scratch(ctx, DType::F32, ys);
    float* t = direct ? d.data<float>() : tmp.data<float>();
    bool add = direct && acc;
    bcast_rows(s.plan, [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      const uint8_t* __restrict pc = c + off[0];
      const float* __restrict g = dy + oo;
      float* __restrict o = t + oo;
      if (ist[0] == 1) {
        if (add) {
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) o[i] += (pc[i] != 0) == take ? g[i] : 0.0f;
        } else {
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) o[i] = (pc[i] != 0) == take ? g[i] : 0.0f;
        }
      } else {
        for (int64_t i = 0; i < L; ++i) {
          float v = (pc[i * ist[0]] != 0) == take ? g[i] : 0.0f;
          o[i] = add ? o[i] + v : v;
        }
      }
    });
    if (!direct) reduce_sum_to(d.data<float>(), s.in_shapes[static_cast<size_t>(w)], t, ys, acc);
  }
}

// ---- unary -------------------------------------------------------------------------------

namespace {
constexpr float kSqrt2OverPi = 0.79788456080286535588f;

template <class F>
void map_f32(const Tensor& x, Tensor& y, F f) {
  const float* px0 = x.data<float>();
  float* py0 = y.data<float>();
  pfor(x.numel(), kGrain / 4, [px0, py0, f](int64_t b, int64_t e) {
    const float* __restrict px = px0;
    float* __restrict py = py0;
    const F fn = f;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) py[i] = fn(px[i]);
  });
}

// y = f(x) with f on 8-lane vectors (vmath.hpp)
template <class F>
void map_v(const Tensor& x, Tensor& y, F f) {
  const float* px = x.data<float>();
  float* py = y.data<float>();
  pfor(x.numel(), kGrain / 4, [px, py, f](int64_t b, int64_t e) { vmap1(px + b, py + b, e - b, f); });
}

// din = (or +=) f(dy, v) with v the saved input or output
template <class F>
void grad_map(const Tensor& dy, const Tensor& v, Tensor& din, bool acc, F f) {
  const float* g0 = dy.data<float>();
  const float* pv0 = v.defined() ? v.data<float>() : g0;
  float* o0 = din.data<float>();
  pfor(dy.numel(), kGrain / 4, [g0, pv0, o0, acc, f](int64_t b, int64_t e) {
    const float* __restrict g = g0;
    const float* __restrict pv = pv0;
    float* __restrict o = o0;
    const F fn = f;
    if (acc) {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) o[i] += fn(g[i], pv[i]);
    } else {
#pragma omp simd
      for (int64_t i = b; i < e; ++i) o[i] = fn(g[i], pv[i]);
    }
  });
}

// din = (or +=) f(dy, v) on 8-lane vectors
template <class F>
void grad_map_v(const Tensor& dy, const Tensor& v, Tensor& din, bool acc, F f) {
  const float* g = dy.data<float>();
  const float* pv = v.data<float>();
  float* o = din.data<float>();
  pfor(dy.numel(), kGrain / 4, [g, pv, o, acc, f](int64_t b, int64_t e) { vmap2(g + b, pv + b, o + b, e - b, acc, f); });
}
}  // namespace

namespace {
// log(1 + e^x) without overflow: x + log(1 + e^-x) for positive x.
inline float softplus(float x) { return x > 0 ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x)); }
}  // namespace

std::unique_ptr<KernelState> prep_unary(const NodeView& n) {
  auto s = std::make_unique<UnState>();
  s->op = n.op();
  if (n.num_inputs() != 1) n.fail("needs 1 input");
  switch (n.op()) {
    case Op::Neg:
    case Op::Abs: n.require_dtype(n.input(0), {DType::F32, DType::I64, DType::I32}, "input"); break;
    case Op::Not: n.require_dtype(n.input(0), {DType::Bool}, "input"); break;
    case Op::IsNaN: case Op::IsInf: n.require_dtype(n.input(0), {DType::F32, DType::F64}, "input"); break;
    default: n.require_dtype(n.input(0), {DType::F32}, "input");
  }
  if (n.op() == Op::LeakyRelu) s->alpha = static_cast<float>(n.node().attr_float("alpha", 0.01));
  if (n.op() == Op::Elu || n.op() == Op::Celu || n.op() == Op::ThresholdedRelu)
    s->alpha = static_cast<float>(n.node().attr_float("alpha", 1.0));
  if (n.op() == Op::Celu && s->alpha == 0.0f) n.fail("alpha 0 (Celu divides by it)");
  if (n.op() == Op::Shrink) {
    s->alpha = static_cast<float>(n.node().attr_float("lambd", 0.5));
    s->beta = static_cast<float>(n.node().attr_float("bias", 0.0));
  }
  if (n.op() == Op::IsInf) {
    s->detect_negative = n.node().attr_int("detect_negative", 1) != 0;
    s->detect_positive = n.node().attr_int("detect_positive", 1) != 0;
  }
  if (n.op() == Op::Selu) {  // ONNX's defaults, PyTorch's constants
    s->alpha = static_cast<float>(n.node().attr_float("alpha", 1.67326319217681884765625));
    s->beta = static_cast<float>(n.node().attr_float("gamma", 1.05070102214813232421875));
  }
  if (n.op() == Op::HardSigmoid) {
    s->alpha = static_cast<float>(n.node().attr_float("alpha", 0.2));
    s->beta = static_cast<float>(n.node().attr_float("beta", 0.5));
  }
  if (n.op() == Op::Gelu) {
    std::string a = n.node().attr_string("approximate", "none");
    if (a == "tanh") s->gelu_tanh = true;
    else if (a != "none") n.fail(fmt::format("approximate='{}' not supported (none, tanh)", a));
  }
  return s;
}

void fwd_unary(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const UnState&>(st);
  const Tensor& x = in[0];
  Tensor& y = out[0];
  if (x.dtype() == DType::I64 || x.dtype() == DType::I32) {
    int64_t n = x.numel();
    auto run = [&](auto* px, auto* py) {
      for (int64_t i = 0; i < n; ++i) py[i] = s.op == Op::Neg ? -px[i] : (px[i] < 0 ? -px[i] : px[i]);
    };
    if (x.dtype() == DType::I64) run(x.data<int64_t>(), y.data<int64_t>());
    else run(x.data<int32_t>(), y.data<int32_t>());
    return;
  }
  if (s.op == Op::Not) {
    const uint8_t* px = x.data<uint8_t>();
    uint8_t* py = y.data<uint8_t>();
    for (int64_t i = 0; i < x.numel(); ++i) py[i] = !px[i];
    return;
  }
  if (s.op == Op::IsNaN || s.op == Op::IsInf) {
    uint8_t* py = y.data<uint8_t>();
    auto run = [&](const auto* px) {
      for (int64_t i = 0; i < x.numel(); ++i) {
        const auto v = px[i];
        py[i] = s.op == Op::IsNaN ? std::isnan(v) : std::isinf(v) && (v > 0 ? s.detect_positive : s.detect_negative);
      }
    };
    if (x.dtype() == DType::F64) run(x.data<double>());
    else run(x.data<float>());
    return;
  }
  switch (s.op) {
    case Op::Sqrt: map_f32(x, y, [](float v) { return std::sqrt(v); }); break;
    case Op::Reciprocal: map_f32(x, y, [](float v) { return 1.0f / v; }); break;
    case Op::Neg: map_f32(x, y, [](float v) { return -v; }); break;
    case Op::Abs: map_f32(x, y, [](float v) { return std::fabs(v); }); break;
    case Op::Exp: map_v(x, y, [](v8f v) { return vexp8(v); }); break;
    case Op::Log: map_f32(x, y, [](float v) { return std::log(v); }); break;
    case Op::Relu: map_f32(x, y, [](float v) { return v > 0 ? v : 0.0f; }); break;
    case Op::LeakyRelu: { float a = s.alpha; map_f32(x, y, [a](float v) { return v >= 0 ? v : a * v; }); break; }
    case Op::Tanh: map_v(x, y, [](v8f v) { return vtanh8(v); }); break;
    case Op::Sigmoid: map_v(x, y, [](v8f v) { return vsigmoid8(v); }); break;
    case Op::Erf: map_v(x, y, [](v8f v) { return verf8(v); }); break;
    case Op::Gelu:
      if (s.gelu_tanh) {
        map_v(x, y, [](v8f v) { return 0.5f * v * (1.0f + vtanh8(kSqrt2OverPi * (v + 0.044715f * v * v * v))); });
      } else {
        map_v(x, y, [](v8f v) { return vgelu8(v); });
      }
      break;
    case Op::Floor: map_f32(x, y, [](float v) { return std::floor(v); }); break;
    case Op::Ceil: map_f32(x, y, [](float v) { return std::ceil(v); }); break;
    case Op::Sin: map_f32(x, y, [](float v) { return std::sin(v); }); break;
    case Op::Cos: map_f32(x, y, [](float v) { return std::cos(v); }); break;
    case Op::HardSigmoid: {
      float a = s.alpha, b = s.beta;
      map_f32(x, y, [a, b](float v) { return std::max(0.0f, std::min(1.0f, a * v + b)); });
      break;
    }
    // x * relu6(x + 3) / 6, as PyTorch computes it
    case Op::HardSwish: map_f32(x, y, [](float v) { return v * std::max(0.0f, std::min(6.0f, v + 3.0f)) / 6.0f; }); break;
    case Op::Elu: { float a = s.alpha; map_f32(x, y, [a](float v) { return v > 0 ? v : a * std::expm1(v); }); break; }
    case Op::Selu: {
      float a = s.alpha, g = s.beta;
      map_f32(x, y, [a, g](float v) { return v > 0 ? g * v : g * a * std::expm1(v); });
      break;
    }
    case Op::Celu: { float a = s.alpha; map_f32(x, y, [a](float v) { return v > 0 ? v : a * std::expm1(v / a); }); break; }
    case Op::Softplus: map_f32(x, y, [](float v) { return softplus(v); }); break;
    case Op::Softsign: map_f32(x, y, [](float v) { return v / (1.0f + std::fabs(v)); }); break;
    case Op::ThresholdedRelu: { float a = s.alpha; map_f32(x, y, [a](float v) { return v > a ? v : 0.0f; }); break; }
    case Op::Sign: map_f32(x, y, [](float v) { return v > 0 ? 1.0f : (v < 0 ? -1.0f : v); }); break;  // NaN stays NaN
    case Op::Round: map_f32(x, y, [](float v) { return std::nearbyint(v); }); break;  // halves to even
    case Op::Shrink: {
      float l = s.alpha, b = s.beta;
      map_f32(x, y, [l, b](float v) { return v < -l ? v + b : (v > l ? v - b : 0.0f); });
      break;
    }
    case Op::Tan: map_f32(x, y, [](float v) { return std::tan(v); }); break;
    case Op::Asin: map_f32(x, y, [](float v) { return std::asin(v); }); break;
    case Op::Acos: map_f32(x, y, [](float v) { return std::acos(v); }); break;
    case Op::Atan: map_f32(x, y, [](float v) { return std::atan(v); }); break;
    case Op::Sinh: map_f32(x, y, [](float v) { return std::sinh(v); }); break;
    case Op::Cosh: map_f32(x, y, [](float v) { return std::cosh(v); }); break;
    case Op::Asinh: map_f32(x, y, [](float v) { return std::asinh(v); }); break;
    case Op::Acosh: map_f32(x, y, [](float v) { return std::acosh(v); }); break;
    case Op::Atanh: map_f32(x, y, [](float v) { return std::atanh(v); }); break;
    default: SMP_CHECK(false, "node {}: not a unary op", s.node_name);
  }
}

void bwd_unary(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const UnState&>(st);
  Tensor& d = io.din[0];
  if (!d.defined() || !io.dout[0].defined()) return;
  bool acc = io.accumulate[0];
  const Tensor& dy = io.dout[0];
  auto X = [&]() -> const Tensor& {
    SMP_CHECK(io.in[0].defined(), "node {}: backward needs the input (not declared saved)", s.node_name);
    return io.in[0];
  };
  auto Y = [&]() -> const Tensor& {
    SMP_CHECK(io.out[0].defined(), "node {}: backward needs the output (not declared saved)", s.node_name);
    return io.out[0];
  };
  switch (s.op) {
    case Op::Sqrt: grad_map(dy, Y(), d, acc, [](float g, float y) { return 0.5f * g / y; }); break;
    case Op::Reciprocal: grad_map(dy, Y(), d, acc, [](float g, float y) { return -g * y * y; }); break;
    case Op::Neg: grad_map(dy, Tensor(), d, acc, [](float g, float) { return -g; }); break;
    case Op::Abs: grad_map(dy, X(), d, acc, [](float g, float x) { return x > 0 ? g : (x < 0 ? -g : 0.0f); }); break;
    case Op::Exp: grad_map_v(dy, Y(), d, acc, [](v8f g, v8f y) { return g * y; }); break;
    case Op::Log: grad_map(dy, X(), d, acc, [](float g, float x) { return g / x; }); break;
    case Op::Relu: grad_map(dy, Y(), d, acc, [](float g, float y) { return y > 0 ? g : 0.0f; }); break;
    case Op::LeakyRelu: { float a = s.alpha; grad_map(dy, X(), d, acc, [a](float g, float x) { return x > 0 ? g : a * g; }); break; }
    case Op::Tanh: grad_map_v(dy, Y(), d, acc, [](v8f g, v8f y) { return g * (1.0f - y * y); }); break;
    case Op::Sigmoid: grad_map_v(dy, Y(), d, acc, [](v8f g, v8f y) { return g * y * (1.0f - y); }); break;
    case Op::Erf: grad_map_v(dy, X(), d, acc, [](v8f g, v8f x) { return g * 1.12837916709551257390f * vexp8(-x * x); }); break;
    case Op::Gelu:
      if (s.gelu_tanh) {
        grad_map_v(dy, X(), d, acc, [](v8f g, v8f x) {
          v8f t = vtanh8(kSqrt2OverPi * (x + 0.044715f * x * x * x));
          v8f du = kSqrt2OverPi * (1.0f + 3.0f * 0.044715f * x * x);
          return g * (0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * du);
        });
      } else {
        grad_map_v(dy, X(), d, acc, [](v8f g, v8f x) { return g * vgelu_grad8(x); });
      }
      break;
    case Op::Sin: grad_map(dy, X(), d, acc, [](float g, float x) { return g * std::cos(x); }); break;
    case Op::Cos: grad_map(dy, X(), d, acc, [](float g, float x) { return -g * std::sin(x); }); break;
    // PyTorch's hardsigmoid_backward / hardswish_backward (open interval, slope inside)
    case Op::HardSigmoid: {
      float a = s.alpha, b = s.beta;
      grad_map(dy, X(), d, acc, [a, b](float g, float x) {
        float t = a * x + b;
        return t > 0.0f && t < 1.0f ? g * a : 0.0f;
      });
      break;
    }
    case Op::HardSwish:
      grad_map(dy, X(), d, acc, [](float g, float x) { return x < -3.0f ? 0.0f : (x <= 3.0f ? g * (x / 3.0f + 0.5f) : g); });
      break;
    case Op::Elu: { float a = s.alpha; grad_map(dy, X(), d, acc, [a](float g, float x) { return x > 0 ? g : g * a * std::exp(x); }); break; }
    case Op::Selu: {
      float a = s.alpha, gm = s.beta;
      grad_map(dy, X(), d, acc, [a, gm](float g, float x) { return x > 0 ? g * gm : g * gm * a * std::exp(x); });
      break;
    }
    case Op::Celu: { float a = s.alpha; grad_map(dy, X(), d, acc, [a](float g, float x) { return x > 0 ? g : g * std::exp(x / a); }); break; }
    case Op::Softplus: grad_map(dy, X(), d, acc, [](float g, float x) { return g / (1.0f + std::exp(-x)); }); break;
    case Op::Softsign:
      grad_map(dy, X(), d, acc, [](float g, float x) {
        float t = 1.0f + std::fabs(x);
        return g / (t * t);
      });
      break;
    case Op::ThresholdedRelu: { float a = s.alpha; grad_map(dy, X(), d, acc, [a](float g, float x) { return x > a ? g : 0.0f; }); break; }
    case Op::Shrink: { float l = s.alpha; grad_map(dy, X(), d, acc, [l](float g, float x) { return x < -l || x > l ? g : 0.0f; }); break; }
    case Op::Tan:
      grad_map(dy, X(), d, acc, [](float g, float x) {
        float c = std::cos(x);
        return g / (c * c);
      });
      break;
    case Op::Asin: grad_map(dy, X(), d, acc, [](float g, float x) { return g / std::sqrt(1.0f - x * x); }); break;
    case Op::Acos: grad_map(dy, X(), d, acc, [](float g, float x) { return -g / std::sqrt(1.0f - x * x); }); break;
    case Op::Atan: grad_map(dy, X(), d, acc, [](float g, float x) { return g / (1.0f + x * x); }); break;
    case Op::Sinh: grad_map(dy, X(), d, acc, [](float g, float x) { return g * std::cosh(x); }); break;
    case Op::Cosh: grad_map(dy, X(), d, acc, [](float g, float x) { return g * std::sinh(x); }); break;
    case Op::Asinh: grad_map(dy, X(), d, acc, [](float g, float x) { return g / std::sqrt(x * x + 1.0f); }); break;
    case Op::Acosh: grad_map(dy, X(), d, acc, [](float g, float x) { return g / std::sqrt(x * x - 1.0f); }); break;
    case Op::Atanh: grad_map(dy, X(), d, acc, [](float g, float x) { return g / (1.0f - x * x); }); break;
    default: SMP_CHECK(false, "node {}: no gradient", s.node_name);
  }
}

// ---- Sum, Mean ----------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_variadic(const NodeView& n) {
  auto s = std::make_unique<VariadicState>();
  s->mean = n.op() == Op::Mean;
  if (n.num_inputs() < 1) n.fail("needs at least 1 input");
  const Shape& y = n.output(0).shape;
  for (int i = 0; i < n.num_inputs(); ++i) {
    if (!n.has_input(i)) n.fail("an input is missing");
    n.require_dtype(n.input(i), {DType::F32}, "input");
    if (!broadcastable_to(n.input(i).shape, y))
      n.fail(fmt::format("input {} of shape {} does not broadcast to {}", i, shape_str(n.input(i).shape), shape_str(y)));
    s->plans.push_back(make_bcast(y, {n.input(i).shape}));
  }
  return s;
}

void fwd_variadic(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const VariadicState&>(st);
  float* Y = out[0].data<float>();
  for (size_t k = 0; k < s.plans.size(); ++k) {
    const float* X = in[k].data<float>();
    const bool first = k == 0;
    bcast_rows(s.plans[k], [&](int64_t oo, const int64_t* off, int64_t L, const int64_t* ist) {
      for (int64_t i = 0; i < L; ++i) Y[oo + i] = (first ? 0.0f : Y[oo + i]) + X[off[0] + i * ist[0]];
    });
  }
  if (s.mean) {
    const float inv = 1.0f / static_cast<float>(s.plans.size());
    for (int64_t i = 0; i < out[0].numel(); ++i) Y[i] *= inv;
  }
}

// Each input's gradient: dy (divided by the count for Mean), summed over its broadcast axes.
void bwd_variadic(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const VariadicState&>(st);
  if (!io.dout[0].defined()) return;
  const Shape& ys = s.out_shapes[0];
  std::vector<float> scaled;
  const float* dy = io.dout[0].data<float>();
  if (s.mean) {
    scaled.assign(dy, dy + io.dout[0].numel());
    for (float& v : scaled) v /= static_cast<float>(s.plans.size());
    dy = scaled.data();
  }
  for (size_t k = 0; k < s.plans.size(); ++k)
    if (io.din[k].defined()) reduce_sum_to(io.din[k].data<float>(), s.in_shapes[k], dy, ys, io.accumulate[k]);
}

// ---- PRelu -------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_prelu(const NodeView& n) {
  auto s = std::make_unique<BinState>();
  s->op = n.op();
  if (n.num_inputs() != 2 || !n.has_input(0) || !n.has_input(1)) n.fail("needs 2 inputs (X, slope)");
  const auto &x = n.input(0), &slope = n.input(1);
  n.require_dtype(x, {DType::F32}, "input X");
  n.require_dtype(slope, {DType::F32}, "slope");
  const Shape& y = n.output(0).shape;
  if (y != x.shape || !broadcastable_to(slope.shape, y))
    n.fail(fmt::format("slope {} does not broadcast to X {}", shape_str(slope.shape), shape_str(x.shape)));
  s->plan = make_bcast(y, {x.shape, slope.shape});
  s->plan3 = make_bcast(y, {y, x.shape, slope.shape});
  return s;
}

void fwd_prelu(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const BinState&>(st);
  bin_loop(s.plan, in[0].data<float>(), in[1].data<float>(), out[0].data<float>(),
           [](float x, float a) { return x < 0 ? a * x : x; });
}

void bwd_prelu(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const BinState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: PRelu backward needs X and the slope", s.node_name);
  const float *dy = io.dout[0].data<float>(), *x = io.in[0].data<float>(), *a = io.in[1].data<float>();
  if (io.din[0].defined())
    grad_to(s, ctx, 0, dy, x, a, io.din[0], io.accumulate[0], [](float g, float xv, float av) { return xv < 0 ? g * av : g; });
  if (io.din[1].defined())  // summed over the axes the slope is broadcast along
    grad_to(s, ctx, 1, dy, x, a, io.din[1], io.accumulate[1], [](float g, float xv, float) { return xv < 0 ? g * xv : 0.0f; });
}

// ---- Clip --------------------------------------------------------------------------------

namespace {
// The bounds: the node's min and max inputs (of X's dtype), else the attributes of opsets before
// 11 (float only), else unbounded (infinities, or an integer dtype's range).
template <class T>
void clip_bounds(const ClipState& s, std::span<const Tensor> in, T& lo, T& hi) {
  using L = std::numeric_limits<T>;
  lo = L::has_infinity ? -L::infinity() : L::lowest();
  hi = L::has_infinity ? L::infinity() : L::max();
  if (s.has_min_attr) lo = static_cast<T>(s.min_attr);
  if (s.has_max_attr) hi = static_cast<T>(s.max_attr);
  if (in.size() > 1 && in[1].defined()) lo = in[1].data<T>()[0];
  if (in.size() > 2 && in[2].defined()) hi = in[2].data<T>()[0];
}
}  // namespace

std::unique_ptr<KernelState> prep_clip(const NodeView& n) {
  auto s = std::make_unique<ClipState>();
  n.require_dtype(n.input(0), {DType::F32, DType::F64, DType::I64, DType::I32, DType::I16, DType::I8, DType::U64, DType::U32,
                               DType::U16, DType::U8}, "input");
  for (int i = 1; i < 3; ++i)
    if (n.has_input(i)) {
      n.require_dtype(n.input(i), {n.input(0).dtype}, i == 1 ? "min" : "max");
      if (n.input(i).numel() != 1) n.fail("min and max must be scalars");
    }
  if ((n.node().has_attr("min") || n.node().has_attr("max")) && !is_floating(n.input(0).dtype))
    n.fail("the min and max attributes (opsets before 11) apply to float inputs only");
  if (n.node().has_attr("min")) { s->has_min_attr = true; s->min_attr = static_cast<float>(n.node().attr_float("min", 0)); }
  if (n.node().has_attr("max")) { s->has_max_attr = true; s->max_attr = static_cast<float>(n.node().attr_float("max", 0)); }
  return s;
}

namespace {
// Clip of a float64 or integer tensor.
template <class T>
void clip_typed(const ClipState& s, std::span<const Tensor> in, Tensor& out) {
  T lo, hi;
  clip_bounds(s, in, lo, hi);
  const T* x = in[0].data<T>();
  T* y = out.data<T>();
  for (int64_t i = 0; i < in[0].numel(); ++i) y[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]);
}
}  // namespace

void fwd_clip(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ClipState&>(st);
  switch (in[0].dtype()) {
    case DType::F32: {
      float lo, hi;
      clip_bounds(s, in, lo, hi);
      map_f32(in[0], out[0], [lo, hi](float v) { return v < lo ? lo : (v > hi ? hi : v); });
      break;
    }
    case DType::F64: clip_typed<double>(s, in, out[0]); break;
    case DType::I64: clip_typed<int64_t>(s, in, out[0]); break;
    case DType::I32: clip_typed<int32_t>(s, in, out[0]); break;
    case DType::I16: clip_typed<int16_t>(s, in, out[0]); break;
    case DType::I8: clip_typed<int8_t>(s, in, out[0]); break;
    case DType::U64: clip_typed<uint64_t>(s, in, out[0]); break;
    case DType::U32: clip_typed<uint32_t>(s, in, out[0]); break;
    case DType::U16: clip_typed<uint16_t>(s, in, out[0]); break;
    case DType::U8: clip_typed<uint8_t>(s, in, out[0]); break;
    default: SMP_CHECK(false, "node {}: Clip of {}", s.node_name, dtype_name(in[0].dtype()));
  }
}

void bwd_clip(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const ClipState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined(), "node {}: Clip backward needs its input", s.node_name);
  float lo, hi;
  clip_bounds(s, io.in, lo, hi);
  grad_map(io.dout[0], io.in[0], io.din[0], io.accumulate[0],
           [lo, hi](float g, float x) { return (x >= lo && x <= hi) ? g : 0.0f; });
}

// ---- Cast --------------------------------------------------------------------------------

namespace {
// float16 is the compiler's _Float16 (IEEE binary16; conversions round to nearest even, as
// numpy's astype does, straight from float64 too).
bool castable(DType d) {
  return d == DType::F32 || d == DType::F64 || d == DType::F16 || d == DType::I64 || d == DType::I32 || d == DType::I8 ||
         d == DType::U8 || d == DType::Bool;
}
template <class S, class D>
void cast_loop(const S* s, D* d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if constexpr (std::is_same_v<D, uint8_t>) d[i] = static_cast<D>(s[i]);
    else d[i] = static_cast<D>(s[i]);
  }
}
template <class S>
void cast_from(const S* s, const Tensor& y, DType to, int64_t n) {
  void* p = const_cast<void*>(y.raw());
  switch (to) {
    case DType::F32: cast_loop(s, static_cast<float*>(p), n); break;
    case DType::F64: cast_loop(s, static_cast<double*>(p), n); break;
    case DType::F16: cast_loop(s, static_cast<_Float16*>(p), n); break;
    case DType::I64: cast_loop(s, static_cast<int64_t*>(p), n); break;
    case DType::I32: cast_loop(s, static_cast<int32_t*>(p), n); break;
    case DType::I8: cast_loop(s, static_cast<int8_t*>(p), n); break;
    case DType::U8: cast_loop(s, static_cast<uint8_t*>(p), n); break;
    case DType::Bool: {
      uint8_t* d = static_cast<uint8_t*>(p);
      for (int64_t i = 0; i < n; ++i) d[i] = s[i] != S(0);
      break;
    }
    default: SMP_CHECK(false, "cast");
  }
}
}  // namespace

std::unique_ptr<KernelState> prep_cast(const NodeView& n) {
  auto s = std::make_unique<CastState>();
  if (n.op() == Op::CastLike) {  // to the second input's dtype
    if (n.num_inputs() != 2 || !n.has_input(1)) n.fail("needs 2 inputs (input, target_type)");
    s->to = n.input(1).dtype;
  } else {
    s->to = dtype_from_onnx(static_cast<int32_t>(n.node().attr_int("to", 0)));
  }
  if (!castable(n.input(0).dtype) || !castable(s->to))
    n.fail(fmt::format("cast from {} to {} not supported", dtype_name(n.input(0).dtype), dtype_name(s->to)));
  return s;
}

void fwd_cast(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const CastState&>(st);
  const Tensor& x = in[0];
  int64_t n = x.numel();
  const void* p = x.raw();
  switch (x.dtype()) {
    case DType::F32: cast_from(static_cast<const float*>(p), out[0], s.to, n); break;
    case DType::F64: cast_from(static_cast<const double*>(p), out[0], s.to, n); break;
    case DType::F16: cast_from(static_cast<const _Float16*>(p), out[0], s.to, n); break;
    case DType::I64: cast_from(static_cast<const int64_t*>(p), out[0], s.to, n); break;
    case DType::I32: cast_from(static_cast<const int32_t*>(p), out[0], s.to, n); break;
    case DType::I8: cast_from(static_cast<const int8_t*>(p), out[0], s.to, n); break;
    case DType::U8: case DType::Bool: cast_from(static_cast<const uint8_t*>(p), out[0], s.to, n); break;
    default: SMP_CHECK(false, "cast");
  }
}

void bwd_cast(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const CastState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(s.in_dtypes[0] == DType::F32 && s.to == DType::F32, "node {}: gradient through a non-f32 Cast", s.node_name);
  store(io.din[0].data<float>(), io.dout[0].data<float>(), io.dout[0].numel(), io.accumulate[0]);
}

// ---- Identity, Dropout (as identity) ------------------------------------------------------

std::unique_ptr<KernelState> prep_identity(const NodeView& n) {
  if (n.num_inputs() != 1) n.fail("needs 1 input");
  return std::make_unique<KernelState>();
}

void fwd_identity(const KernelState& s, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  out[0] = in[0].view(s.out_shapes[0]);
}

void bwd_identity(const KernelState&, ExecContext&, const GradIO& io) {
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  store(io.din[0].data<float>(), io.dout[0].data<float>(), io.dout[0].numel(), io.accumulate[0]);
}

// Dropout: the identity for ratio 0, training_mode false or opsets before 12 (the inference
// form); in training mode a random mask from the node's stream (ctx.random_key), kept elements
// scaled by 1 / (1 - ratio) as PyTorch does. The backward draws the same mask again.
namespace {
template <class F>
void dropout_loop(const DropoutState& s, uint64_t key, int64_t n, F f) {
  const float scale = s.ratio < 1.0f ? 1.0f / (1.0f - s.ratio) : 0.0f;
  pfor(n, kGrain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) f(i, random::keep(key, i, s.ratio) ? scale : 0.0f);
  });
}
}  // namespace

std::unique_ptr<KernelState> prep_dropout(const NodeView& n) {
  auto s = std::make_unique<DropoutState>();
  double ratio = n.node().attr_float("ratio", 0.5);
  bool training = false;
  if (n.graph().opset >= 12 || n.graph().opset == 0) {
    std::vector<int64_t> tm;
    if (n.has_input(2)) {
      if (!n.constant_ints(2, tm)) n.fail("training_mode must be a constant");
      training = !tm.empty() && tm[0] != 0;
    }
    ratio = 0.5;
    if (n.has_input(1)) {
      const graph::TensorData* r = n.constant_input(1);
      if (!r || r->numel() != 1) n.fail("ratio must be a constant scalar");
      ratio = r->get_f64(0);
    }
  }
  if (!(ratio >= 0 && ratio <= 1)) n.fail(fmt::format("ratio {} outside [0, 1]", ratio));
  s->ratio = static_cast<float>(ratio);
  s->random = training && ratio > 0;
  if (s->random) n.require_dtype(n.input(0), {DType::F32}, "input");
  if (n.has_output(1)) n.require_dtype(n.output(1), {DType::Bool}, "mask");
  return s;
}

void fwd_dropout(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const DropoutState&>(st);
  const bool want_mask = out.size() > 1 && s.out_dtypes.size() > 1 && s.out_dtypes[1] == DType::Bool;
  if (want_mask) out[1] = ctx.backend->empty(DType::Bool, s.out_shapes[1]);
  if (!s.random) {
    out[0] = in[0].view(s.out_shapes[0]);
    if (want_mask) std::memset(out[1].raw(), 1, static_cast<size_t>(out[1].bytes()));
    return;
  }
  out[0] = ctx.backend->empty(DType::F32, s.out_shapes[0]);
  const float* x = in[0].data<float>();
  float* y = out[0].data<float>();
  uint8_t* m = want_mask ? static_cast<uint8_t*>(out[1].raw()) : nullptr;
  dropout_loop(s, ctx.random_key, in[0].numel(), [&](int64_t i, float k) {
    y[i] = x[i] * k;
    if (m) m[i] = k != 0.0f;
  });
}

void bwd_dropout(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const DropoutState&>(st);
  if (!s.random) return bwd_identity(st, ctx, io);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  const float* dy = io.dout[0].data<float>();
  float* dx = io.din[0].data<float>();
  const bool acc = io.accumulate[0];
  dropout_loop(s, ctx.random_key, io.dout[0].numel(), [&](int64_t i, float k) {
    float v = dy[i] * k;
    dx[i] = acc ? dx[i] + v : v;
  });
}

}  // namespace smp::runtime::cpu
