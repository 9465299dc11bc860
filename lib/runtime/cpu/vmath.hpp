// Vectorizable float math (GCC vectorizes these inside `#pragma omp simd` loops): exp with
// Cephes' polynomial (about 1 ulp), erf by Abramowitz & Stegun 7.1.26. The CUDA kernels use the
// same functions (compiled for the device by nvcc), so that both backends agree.
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
