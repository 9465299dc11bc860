// Float math, in two forms. Scalar vexp / verf (Cephes' exp polynomial, about 1 ulp; erf by
// Abramowitz & Stegun 7.1.26, absolute error below 1.5e-7, as PyTorch's vectorized erf) compile
// for the host and, under nvcc, for the device: the CUDA kernels use them, so that both backends
// agree. The CPU kernels use the same formulas on 8-lane vectors (GCC vector extensions: AVX2 +
// FMA where the build targets it, two SSE halves elsewhere) and the array loops that apply them:
// GCC does not vectorize the scalar forms by itself (the clamps and selects stay scalar), and the
// transcendental ops of an exported graph (Erf, Sigmoid, Softmax's exp, GELU) were 5-10x slower
// than memory bandwidth allows. tanh: a Taylor series below |x| < 0.0625, else (1 - e) / (1 + e)
// with e = exp(-2|x|) (a few ulp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#ifdef __CUDACC__
#define SMP_VMATH_FN __host__ __device__ __forceinline__
#else
#define SMP_VMATH_FN __attribute__((always_inline)) inline
#endif

namespace smp::runtime::cpu {

SMP_VMATH_FN float float_of_bits(int32_t b) {
#ifdef __CUDA_ARCH__
  return __int_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
#endif
}

SMP_VMATH_FN float vexp(float x) {
  float xc = x < -87.33654f ? -87.33654f : (x > 88.72283f ? 88.72283f : x);
  // round to nearest by the 1.5 * 2^23 trick (floorf does not vectorize without -fno-trapping-math)
  float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  float r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  float scale = float_of_bits((static_cast<int32_t>(n) + 127) << 23);
  float y = p * scale;
  return x < -87.33654f ? 0.0f : y;
}

SMP_VMATH_FN float verf(float x) {
  // Abramowitz & Stegun 7.1.26 (absolute error < 1.5e-7), as PyTorch's vectorized erf
  float z = fabsf(x);
  float t = 1.0f / (1.0f + 0.3275911f * z);
  float p = 1.061405429f;
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  float r = 1.0f - p * t * vexp(-z * z);
  return x < 0 ? -r : r;
}

}  // namespace smp::runtime::cpu

// The vector forms: host code only.
#ifndef __CUDACC__
// Passing 8-lane vectors by value between these inline functions is fine without AVX too.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace smp::runtime::cpu {


typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
inline constexpr int64_t kLanes = 8;

__attribute__((always_inline)) inline v8f vload(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
__attribute__((always_inline)) inline void vstore(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
__attribute__((always_inline)) inline v8f vsplat(float x) { return v8f{} + x; }
__attribute__((always_inline)) inline v8f vabs(v8f x) {
  return reinterpret_cast<v8f>(reinterpret_cast<v8i>(x) & 0x7fffffff);
}
__attribute__((always_inline)) inline v8f vmin(v8f a, v8f b) { return a < b ? a : b; }
__attribute__((always_inline)) inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
__attribute__((always_inline)) inline float hsum(v8f v) {
  float s = 0;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}
__attribute__((always_inline)) inline float hmax(v8f v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

__attribute__((always_inline)) inline v8f vexp8(v8f x) {
  const v8f lo = vsplat(-87.33654f), hi = vsplat(88.72283f);
  v8f xc = vmin(vmax(x, lo), hi);
  // round to nearest by the 1.5 * 2^23 trick
  v8f n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  v8f r = xc - n * 0.693359375f + n * 2.12194440e-4f;
  v8f p = vsplat(1.9875691500E-4f);
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  // 2^n in two factors: n reaches 128 near the top of the range
  v8i ni = __builtin_convertvector(n, v8i), n1 = ni >> 1;
  v8f y = p * reinterpret_cast<v8f>((n1 + 127) << 23) * reinterpret_cast<v8f>((ni - n1 + 127) << 23);
  y = x > hi ? vsplat(INFINITY) : y;
  return x < lo ? vsplat(0.0f) : y;
}

__attribute__((always_inline)) inline v8f verf8(v8f x) {
  v8f z = vabs(x);
  v8f t = 1.0f / (1.0f + 0.3275911f * z);
  v8f p = vsplat(1.061405429f);
  p = p * t - 1.453152027f;
  p = p * t + 1.421413741f;
  p = p * t - 0.284496736f;
  p = p * t + 0.254829592f;
  v8f r = 1.0f - p * t * vexp8(-z * z);
  v8i sign = reinterpret_cast<v8i>(x) & static_cast<int32_t>(0x80000000u);
  return reinterpret_cast<v8f>(reinterpret_cast<v8i>(r) | sign);
}

__attribute__((always_inline)) inline v8f vtanh8(v8f x) {
  v8f z = vabs(x);
  v8f e = vexp8(-2.0f * z);
  v8f big = (1.0f - e) / (1.0f + e);
  v8f z2 = z * z;
  v8f small = z + z * z2 * (-1.0f / 3 + z2 * (2.0f / 15 + z2 * (-17.0f / 315 + z2 * (62.0f / 2835))));
  v8f r = z < 0.0625f ? small : big;
  v8i sign = reinterpret_cast<v8i>(x) & static_cast<int32_t>(0x80000000u);
  return reinterpret_cast<v8f>(reinterpret_cast<v8i>(r) | sign);
}

__attribute__((always_inline)) inline v8f vsigmoid8(v8f x) {
  v8f e = vexp8(-vabs(x));
  v8f inv = 1.0f / (1.0f + e);
  return x >= 0.0f ? inv : e * inv;
}

// GELU (erf form) and its derivative.
inline constexpr float kInvSqrt2 = 0.70710678118654752440f;
inline constexpr float kInvSqrt2Pi = 0.39894228040143267794f;
__attribute__((always_inline)) inline v8f vgelu8(v8f x) { return 0.5f * x * (1.0f + verf8(x * kInvSqrt2)); }
__attribute__((always_inline)) inline v8f vgelu_grad8(v8f x) {
  return 0.5f * (1.0f + verf8(x * kInvSqrt2)) + x * kInvSqrt2Pi * vexp8(-0.5f * x * x);
}

// Scalar tanh: lane 0 of the vector code.
inline float vtanh(float x) { return vtanh8(vsplat(x))[0]; }

// y[i] = f(x[i]) for i in [0, n): f maps v8f -> v8f. The tail runs through a padded vector.
template <class F>
__attribute__((always_inline)) inline void vmap1(const float* __restrict x, float* __restrict y, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vstore(y + i, f(vload(x + i)));
  if (i < n) {
    float bx[kLanes] = {}, by[kLanes];
    std::memcpy(bx, x + i, static_cast<size_t>(n - i) * sizeof(float));
    vstore(by, f(vload(bx)));
    std::memcpy(y + i, by, static_cast<size_t>(n - i) * sizeof(float));
  }
}

// x[i] = f(x[i]) in place (vmap1's arrays must not overlap).
template <class F>
__attribute__((always_inline)) inline void vmap_inplace(float* x, int64_t n, F f) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vstore(x + i, f(vload(x + i)));
  if (i < n) {
    float b[kLanes] = {};
    std::memcpy(b, x + i, static_cast<size_t>(n - i) * sizeof(float));
    vstore(b, f(vload(b)));
    std::memcpy(x + i, b, static_cast<size_t>(n - i) * sizeof(float));
  }
}

// y[i] = (or +=) f(a[i], b[i]).
template <class F>
__attribute__((always_inline)) inline void vmap2(const float* a, const float* b, float* y, int64_t n, bool acc, F f) {
  int64_t i = 0;
  if (acc) {
    for (; i + kLanes <= n; i += kLanes) vstore(y + i, vload(y + i) + f(vload(a + i), vload(b + i)));
  } else {
    for (; i + kLanes <= n; i += kLanes) vstore(y + i, f(vload(a + i), vload(b + i)));
  }
  if (i < n) {
    float ba[kLanes] = {}, bb[kLanes] = {}, by[kLanes] = {};
    size_t rest = static_cast<size_t>(n - i) * sizeof(float);
    std::memcpy(ba, a + i, rest);
    std::memcpy(bb, b + i, rest);
    if (acc) std::memcpy(by, y + i, rest);
    v8f r = f(vload(ba), vload(bb));
    vstore(by, acc ? vload(by) + r : r);
    std::memcpy(y + i, by, rest);
  }
}

// Softmax rows (Softmax, LogSoftmax, the cross-entropy losses, whole-vocabulary and
// vocabulary-parallel): the maximum of x[0, n) (-inf when n == 0) ...
inline float row_max(const float* x, int64_t n) {
  v8f m = vsplat(-INFINITY);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) m = vmax(m, vload(x + i));
  float r = hmax(m);
  for (; i < n; ++i) r = x[i] > r ? x[i] : r;
  return r;
}

// ... and y[i] = exp(x[i] - m), returning the sum of y.
inline float exp_row(const float* x, float* y, int64_t n, float m) {
  v8f s = vsplat(0.0f), vm = vsplat(m);
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    v8f e = vexp8(vload(x + i) - vm);
    vstore(y + i, e);
    s += e;
  }
  if (i < n) {
    float bx[kLanes], by[kLanes];
    for (int64_t k = 0; k < kLanes; ++k) bx[k] = i + k < n ? x[i + k] : -INFINITY;
    v8f e = vexp8(vload(bx) - vm);
    vstore(by, e);
    s += e;
    std::memcpy(y + i, by, static_cast<size_t>(n - i) * sizeof(float));
  }
  return hsum(s);
}

// y[i] *= k
inline void vscale_row(float* y, int64_t n, float k) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vstore(y + i, vload(y + i) * k);
  for (; i < n; ++i) y[i] *= k;
}

}  // namespace smp::runtime::cpu
#endif  // __CUDACC__
