// Device helpers shared by the .cu files: typed loads and stores by tag, index arithmetic over
// Strided iterations, launch shapes, block reductions in a fixed order (no atomics on floats:
// results do not depend on scheduling), and the float math the CPU kernels use.
#pragma once

#include "runtime/cpu/vmath.hpp"
#include "runtime/cuda/launch.hpp"

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace smp::runtime::cuda {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 256;

// Blocks for n elements at `per_thread` elements per thread, capped for grid-stride loops.
inline unsigned blocks_for(int64_t n, int threads = kThreads, int64_t cap = 65535LL * 8) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > cap) b = cap;
  return static_cast<unsigned>(b);
}

// ---- typed access --------------------------------------------------------------------------

__device__ __forceinline__ float ldf(const void* p, int t, int64_t i) {
  switch (t) {
    case kF32: return static_cast<const float*>(p)[i];
    case kBF16: return __bfloat162float(static_cast<const bf16*>(p)[i]);
    case kF64: return static_cast<float>(static_cast<const double*>(p)[i]);
    case kI64: return static_cast<float>(static_cast<const int64_t*>(p)[i]);
    case kI32: return static_cast<float>(static_cast<const int32_t*>(p)[i]);
    case kU8: return static_cast<float>(static_cast<const uint8_t*>(p)[i]);
    default: return static_cast<float>(static_cast<const int8_t*>(p)[i]);
  }
}

__device__ __forceinline__ void stf(void* p, int t, int64_t i, float v) {
  if (t == kBF16) static_cast<bf16*>(p)[i] = __float2bfloat16(v);
  else static_cast<float*>(p)[i] = v;
}

// dst[i] = v, or dst[i] += v (in float, rounded once to the storage type).
__device__ __forceinline__ void put(void* p, int t, int64_t i, float v, bool acc) {
  if (acc) v += ldf(p, t, i);
  stf(p, t, i, v);
}

__device__ __forceinline__ int64_t ldi(const void* p, int t, int64_t i) {
  switch (t) {
    case kI64: return static_cast<const int64_t*>(p)[i];
    case kI32: return static_cast<const int32_t*>(p)[i];
    case kU8: return static_cast<const uint8_t*>(p)[i];
    case kI8: return static_cast<const int8_t*>(p)[i];
    case kF64: return static_cast<int64_t>(static_cast<const double*>(p)[i]);
    case kBF16: return static_cast<int64_t>(__bfloat162float(static_cast<const bf16*>(p)[i]));
    default: return static_cast<int64_t>(static_cast<const float*>(p)[i]);
  }
}

// ---- index arithmetic ----------------------------------------------------------------------

// a / b and a % b for a, b >= 0: 32-bit division (a few instructions) when both fit, 64-bit
// (several dozen) otherwise; memory-bound kernels divide once or twice per element.
__device__ __forceinline__ int64_t idiv(int64_t a, int64_t b) {
  if (((a | b) >> 31) == 0) return static_cast<int64_t>(static_cast<uint32_t>(a) / static_cast<uint32_t>(b));
  return a / b;
}
__device__ __forceinline__ int64_t imod(int64_t a, int64_t b) { return a - idiv(a, b) * b; }

// Offsets of output element i for operands [0, nops) of a Strided iteration. The outermost dim
// needs no division.
template <int NOPS>
__device__ __forceinline__ void offsets(const Strided& s, int64_t i, int64_t* off) {
#pragma unroll
  for (int k = 0; k < NOPS; ++k) off[k] = s.base[k];
  if (s.total <= 0x7fffffffLL) {
    uint32_t u = static_cast<uint32_t>(i);
    for (int d = s.nd - 1; d > 0; --d) {
      const uint32_t n = static_cast<uint32_t>(s.dims[d]);
      const uint32_t q = u / n;
      const int64_t r = static_cast<int64_t>(u - q * n);
      u = q;
#pragma unroll
      for (int k = 0; k < NOPS; ++k) off[k] += r * s.st[k][d];
    }
#pragma unroll
    for (int k = 0; k < NOPS; ++k) off[k] += static_cast<int64_t>(u) * s.st[k][0];
    return;
  }
  for (int d = s.nd - 1; d > 0; --d) {
    const int64_t n = s.dims[d];
    const int64_t q = i / n;
    const int64_t r = i - q * n;
    i = q;
#pragma unroll
    for (int k = 0; k < NOPS; ++k) off[k] += r * s.st[k][d];
  }
#pragma unroll
  for (int k = 0; k < NOPS; ++k) off[k] += i * s.st[k][0];
}

#define SMP_GRID_LOOP(i, n) \
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < (n); i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// ---- reductions in a fixed order ----------------------------------------------------------

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `sh`: shared scratch of 32 elements. The order of additions is fixed by the thread layout.
template <class T>
__device__ __forceinline__ T block_sum(T v, T* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  T r = lane < nw ? sh[lane] : T(0);
  r = warp_sum(r);
  return r;
}
__device__ __forceinline__ float block_max(float v, float* sh) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) sh[warp] = v;
  __syncthreads();
  float r = lane < nw ? sh[lane] : -INFINITY;
  return warp_max(r);
}

// ---- errors found in the data -------------------------------------------------------------

__device__ __forceinline__ void record_error(DeviceError* e, int64_t code, int64_t site, int64_t value, int64_t bound) {
  if (!e) return;
  // The first error wins; integer compare-and-swap, so the record does not depend on timing
  // beyond which error is first.
  if (atomicCAS(reinterpret_cast<unsigned long long*>(&e->code), 0ull, static_cast<unsigned long long>(code)) == 0ull) {
    e->site = site;
    e->value = value;
    e->bound = bound;
  }
}

// ---- the CPU kernels' float math (runtime/cpu/vmath.hpp), so that both backends agree ----

using cpu::verf;
using cpu::vexp;

}  // namespace smp::runtime::cuda
