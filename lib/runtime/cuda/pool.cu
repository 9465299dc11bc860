// Pooling kernels with the CPU's exact semantics (padding, dilation, ceil mode, count_include_pad,
// the first maximum of a window taking its gradient); gradients gathered per input element in
// the CPU's order of windows (no atomics). GlobalAveragePool, the channel bias of Conv.
#include "runtime/cuda/common.cuh"

namespace smp::runtime::cuda {

namespace {

__global__ void pool_k(PoolGeom g, void* y, int yt, const void* x, int xt) {
  SMP_GRID_LOOP(t, g.NC * g.oh * g.ow) {
    const int64_t ox = imod(t, g.ow), oy = imod(idiv(t, g.ow), g.oh), c = idiv(t, g.ow * g.oh);
    const int64_t xb = c * g.ih * g.iw;
    float m = g.is_max ? -INFINITY : 0.0f;
    int64_t cnt = 0, cnt_pad = 0;
    for (int64_t ki = 0; ki < g.kh; ++ki) {
      const int64_t iy = oy * g.sh - g.ph + ki * g.dh;
      for (int64_t kj = 0; kj < g.kw; ++kj) {
        const int64_t ix = ox * g.sw - g.pw + kj * g.dw;
        if (iy >= -g.ph && iy < g.ih + g.ph_end && ix >= -g.pw && ix < g.iw + g.pw_end) ++cnt_pad;
        if (iy < 0 || iy >= g.ih || ix < 0 || ix >= g.iw) continue;
        const float v = ldf(x, xt, xb + iy * g.iw + ix);
        if (g.is_max) m = v > m ? v : m;
        else m += v;
        ++cnt;
      }
    }
    if (!g.is_max) m /= static_cast<float>(g.count_include_pad ? cnt_pad : (cnt > 0 ? cnt : 1));
    stf(y, yt, t, m);
  }
}

// The input position (iy * iw + ix) of window (oy, ox)'s first maximum; -1 when it has none.
__device__ __forceinline__ int64_t window_argmax(const PoolGeom& g, const void* x, int xt, int64_t xb, int64_t oy, int64_t ox) {
  float m = -INFINITY;
  int64_t arg = -1;
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    const int64_t iy = oy * g.sh - g.ph + ki * g.dh;
    if (iy < 0 || iy >= g.ih) continue;
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const int64_t ix = ox * g.sw - g.pw + kj * g.dw;
      if (ix < 0 || ix >= g.iw) continue;
      const float v = ldf(x, xt, xb + iy * g.iw + ix);
      if (arg < 0 || v > m) {
        m = v;
        arg = iy * g.iw + ix;
      }
    }
  }
  return arg;
}

__device__ __forceinline__ float avg_count(const PoolGeom& g, int64_t oy, int64_t ox) {
  int64_t cnt = 0, cnt_pad = 0;
  for (int64_t ki = 0; ki < g.kh; ++ki) {
    const int64_t iy = oy * g.sh - g.ph + ki;
    for (int64_t kj = 0; kj < g.kw; ++kj) {
      const int64_t ix = ox * g.sw - g.pw + kj;
      if (iy >= -g.ph && iy < g.ih + g.ph_end && ix >= -g.pw && ix < g.iw + g.pw_end) ++cnt_pad;
      if (iy >= 0 && iy < g.ih && ix >= 0 && ix < g.iw) ++cnt;
    }
  }
  return static_cast<float>(g.count_include_pad ? cnt_pad : (cnt > 0 ? cnt : 1));
}

// One thread per input element: the windows that contain it, in increasing (oy, ox) order.
__global__ void pool_grad_k(PoolGeom g, void* dx, int dt, bool acc, const void* dy, int dyt, const void* x, int xt) {
  const int64_t dh = g.is_max ? g.dh : 1, dw = g.is_max ? g.dw : 1;  // AveragePool is never dilated
  SMP_GRID_LOOP(t, g.NC * g.ih * g.iw) {
    const int64_t ix = imod(t, g.iw), iy = imod(idiv(t, g.iw), g.ih), c = idiv(t, g.iw * g.ih);
    const int64_t xb = c * g.ih * g.iw, yb = c * g.oh * g.ow;
    float s = acc ? ldf(dx, dt, t) : 0.0f;
    for (int64_t ki = g.kh - 1; ki >= 0; --ki) {
      const int64_t ty = iy + g.ph - ki * dh;
      if (ty < 0) continue;
      const int64_t oy = idiv(ty, g.sh);
      if (oy * g.sh != ty) continue;
      if (oy >= g.oh) continue;
      for (int64_t kj = g.kw - 1; kj >= 0; --kj) {
        const int64_t tx = ix + g.pw - kj * dw;
        if (tx < 0) continue;
        const int64_t ox = idiv(tx, g.sw);
        if (ox * g.sw != tx) continue;
        if (ox >= g.ow) continue;
        const float gv = ldf(dy, dyt, yb + oy * g.ow + ox);
        if (g.is_max) {
          if (window_argmax(g, x, xt, xb, oy, ox) == iy * g.iw + ix) s += gv;
        } else {
          s += gv / avg_count(g, oy, ox);
        }
      }
    }
    stf(dx, dt, t, s);
  }
}

__global__ void gap_k(int64_t NC, int64_t HW, void* y, int yt, const void* x, int xt) {
  const int64_t c = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (c >= NC) return;
  float s = 0;
  for (int64_t i = lane; i < HW; i += 32) s += ldf(x, xt, c * HW + i);
  s = warp_sum(s);
  if (lane == 0) stf(y, yt, c, s / static_cast<float>(HW));
}

__global__ void gap_grad_k(int64_t NC, int64_t HW, void* dx, int dt, bool acc, const void* dy, int dyt) {
  const float inv = 1.0f / static_cast<float>(HW);
  SMP_GRID_LOOP(i, NC * HW) put(dx, dt, i, ldf(dy, dyt, idiv(i, HW)) * inv, acc);
}

__global__ void channel_bias_k(int64_t N, int64_t C, int64_t HW, void* y, int yt, const void* b, int bt) {
  SMP_GRID_LOOP(i, N * C * HW) stf(y, yt, i, ldf(y, yt, i) + ldf(b, bt, imod(idiv(i, HW), C)));
}

}  // namespace

void pool(const PoolGeom& g, void* y, Tag yt, const void* x, Tag xt, cudaStream_t st) {
  if (g.NC * g.oh * g.ow == 0) return;
  pool_k<<<blocks_for(g.NC * g.oh * g.ow), kThreads, 0, st>>>(g, y, yt, x, xt);
  SMP_CUDA_LAUNCHED();
}

void pool_grad(const PoolGeom& g, void* dx, Tag dt, bool acc, const void* dy, Tag dyt, const void* x, Tag xt, cudaStream_t st) {
  if (g.NC * g.ih * g.iw == 0) return;
  pool_grad_k<<<blocks_for(g.NC * g.ih * g.iw), kThreads, 0, st>>>(g, dx, dt, acc, dy, dyt, x, xt);
  SMP_CUDA_LAUNCHED();
}

void global_avgpool(int64_t NC, int64_t HW, void* y, Tag yt, const void* x, Tag xt, cudaStream_t st) {
  if (NC == 0) return;
  gap_k<<<static_cast<unsigned>((NC * 32 + kThreads - 1) / kThreads), kThreads, 0, st>>>(NC, HW, y, yt, x, xt);
  SMP_CUDA_LAUNCHED();
}

void global_avgpool_grad(int64_t NC, int64_t HW, void* dx, Tag dt, bool acc, const void* dy, Tag dyt, cudaStream_t st) {
  if (NC * HW == 0) return;
  gap_grad_k<<<blocks_for(NC * HW), kThreads, 0, st>>>(NC, HW, dx, dt, acc, dy, dyt);
  SMP_CUDA_LAUNCHED();
}

void channel_bias(int64_t N, int64_t C, int64_t HW, void* y, Tag yt, const void* b, Tag bt, cudaStream_t st) {
  if (N * C * HW == 0) return;
  channel_bias_k<<<blocks_for(N * C * HW), kThreads, 0, st>>>(N, C, HW, y, yt, b, bt);
  SMP_CUDA_LAUNCHED();
}

}  // namespace smp::runtime::cuda
