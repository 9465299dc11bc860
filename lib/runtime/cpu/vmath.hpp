// Vectorizable float math (GCC vectorizes these inside `#pragma omp simd` loops): exp with
// Cephes' polynomial (about 1 ulp), erf via Numerical Recipes' erfc (relative error < 1.2e-7)
// and a Taylor series near 0.
#pragma once

#include <cmath>
#include <cstdint>
#include <bit>

namespace smp::runtime::cpu {

__attribute__((always_inline)) inline float vexp(float x) {
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
  float scale = std::bit_cast<float>((static_cast<int32_t>(n) + 127) << 23);
  float y = p * scale;
  return x < -87.33654f ? 0.0f : y;
}

__attribute__((always_inline)) inline float verf(float x) {
  float z = std::fabs(x);
  float t = 1.0f / (1.0f + 0.5f * z);
  float poly = -1.26551223f +
               t * (1.00002368f +
                    t * (0.37409196f +
                         t * (0.09678418f +
                              t * (-0.18628806f +
                                   t * (0.27886807f + t * (-1.13520398f + t * (1.48851587f + t * (-0.82215223f + t * 0.17087277f))))))));
  float erfc = t * vexp(-z * z + poly);
  float big = 1.0f - erfc;
  float z2 = z * z;
  // 2/sqrt(pi) (z - z^3/3 + z^5/10 - z^7/42 + z^9/216)
  float small = 1.12837916709551257f * z * (1.0f + z2 * (-1.0f / 3 + z2 * (1.0f / 10 + z2 * (-1.0f / 42 + z2 * (1.0f / 216)))));
  float r = z < 0.25f ? small : big;
  return x < 0 ? -r : r;
}

}  // namespace smp::runtime::cpu
