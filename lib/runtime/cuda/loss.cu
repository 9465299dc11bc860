// Losses: the fused softmax + cross-entropy behind runtime::cross_entropy (one pass for the loss
// and its gradient), the squared error, the SoftmaxCrossEntropyLoss op; deterministic sums
// (one block, fixed order, in double) for loss values and gradient norms.
#include "runtime/cuda/common.cuh"

#include <algorithm>

namespace smp::runtime::cuda {

namespace {

// One block per row of C logits.
__global__ void ce_rows_k(int64_t C, const void* x, int xt, const void* labels, int lt, float k, void* grad, float* row_loss,
                          DeviceError* err, int64_t site) {
  __shared__ float sh[32];
  const int64_t r = blockIdx.x;
  const int64_t base = r * C;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) m = fmaxf(m, ldf(x, xt, base + j));
  m = block_max(m, sh);
  float s = 0;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) s += vexp(ldf(x, xt, base + j) - m);
  s = block_sum(s, sh);
  const int64_t y = ldi(labels, lt, r);
  const bool ok = y >= 0 && y < C;
  if (!ok && threadIdx.x == 0) record_error(err, kLabelOutOfRange, site, y, C);
  const float inv = k / s;
  for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
    float v = vexp(ldf(x, xt, base + j) - m) * inv;
    if (ok && j == y) v -= k;
    stf(grad, xt, base + j, v);
  }
  if (threadIdx.x == 0) row_loss[r] = ok ? logf(s) + m - ldf(x, xt, base + y) : 0.0f;
}

__global__ void sq_err_k(int64_t n, const void* p, int pt, const float* t, float k, void* grad, float* sq) {
  SMP_GRID_LOOP(i, n) {
    const float d = ldf(p, pt, i) - t[i];
    stf(grad, pt, i, k * d);
    sq[i] = d * d;
  }
}

// One block: dst[slot] = sum of x in double, each thread over a fixed stride, then the tree.
__global__ void sum_floats_k(int64_t n, const float* x, double* dst, int slot) {
  __shared__ double sh[32];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += static_cast<double>(x[i]);
  s = block_sum(s, sh);
  if (threadIdx.x == 0) dst[slot] = s;
}

__global__ void sum_squares_part_k(int64_t n, const float* x, double* part) {
  __shared__ double sh[32];
  double s = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n; i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const double v = x[i];
    s += v * v;
  }
  s = block_sum(s, sh);
  if (threadIdx.x == 0) part[blockIdx.x] = s;
}

__global__ void sum_doubles_k(int n, const double* part, double* dst) {
  __shared__ double sh[32];
  double s = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += part[i];
  s = block_sum(s, sh);
  if (threadIdx.x == 0) *dst = s;
}

__device__ __forceinline__ float sce_lse(const void* x, int xt, int64_t base, int64_t C, int64_t D) {
  float m = -INFINITY;
  for (int64_t c = 0; c < C; ++c) m = fmaxf(m, ldf(x, xt, base + c * D));
  float s = 0;
  for (int64_t c = 0; c < C; ++c) s += expf(ldf(x, xt, base + c * D) - m);
  return logf(s) + m;
}

// The weight of position p (0 when ignored); records a label out of range.
__device__ __forceinline__ float sce_weight(int64_t y, int64_t C, const void* w, int wt, bool has_ignore, int64_t ignore,
                                            DeviceError* err, int64_t site, bool* ok) {
  *ok = true;
  if (has_ignore && y == ignore) return 0.0f;
  if (y < 0 || y >= C) {
    record_error(err, kLabelOutOfRange, site, y, C);
    *ok = false;
    return 0.0f;
  }
  return w ? ldf(w, wt, y) : 1.0f;
}

__global__ void sce_positions_k(int64_t N, int64_t C, int64_t D, const void* x, int xt, const void* y, int yt, const void* w, int wt,
                                bool has_ignore, int64_t ignore, float* loss_pos, float* w_pos, void* lp, int lpt, DeviceError* err,
                                int64_t site) {
  SMP_GRID_LOOP(p, N * D) {
    const int64_t n = idiv(p, D), d = p - n * D;
    const int64_t base = n * C * D + d;
    const float lse = sce_lse(x, xt, base, C, D);
    if (lp)
      for (int64_t c = 0; c < C; ++c) stf(lp, lpt, base + c * D, ldf(x, xt, base + c * D) - lse);
    const int64_t label = ldi(y, yt, p);
    bool ok;
    const float wv = sce_weight(label, C, w, wt, has_ignore, ignore, err, site, &ok);
    loss_pos[p] = (wv == 0.0f || !ok) ? 0.0f : -(ldf(x, xt, base + label * D) - lse) * wv;
    w_pos[p] = wv;
  }
}

__global__ void sce_reduce_k(int red, int64_t n, const float* loss_pos, const float* w_pos, void* out, int ot) {
  __shared__ double sh[32];
  if (red == 2) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) stf(out, ot, i, loss_pos[i]);
    return;
  }
  double t = 0, ws = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    t += loss_pos[i];
    ws += w_pos[i];
  }
  t = block_sum(t, sh);
  ws = block_sum(ws, sh);
  if (threadIdx.x == 0) stf(out, ot, 0, static_cast<float>(red == 1 ? t : (ws == 0 ? 0.0 : t / ws)));
}

__global__ void sce_grad_k(int red, int64_t N, int64_t C, int64_t D, const void* x, int xt, const void* y, int yt, const void* w,
                           int wt, bool has_ignore, int64_t ignore, const void* dl, int dlt, const void* dlp, int dlpt,
                           const double* wsum, void* dx, int dxt, bool acc) {
  SMP_GRID_LOOP(p, N * D) {
    const int64_t n = idiv(p, D), d = p - n * D;
    const int64_t base = n * C * D + d;
    const float lse = sce_lse(x, xt, base, C, D);
    const int64_t label = ldi(y, yt, p);
    bool ok;
    const float wv = sce_weight(label, C, w, wt, has_ignore, ignore, nullptr, 0, &ok);
    float g = 0;
    if (dl) {
      if (red == 2) g = ldf(dl, dlt, p);
      else if (red == 1) g = ldf(dl, dlt, 0);
      else g = *wsum == 0 ? 0.0f : static_cast<float>(static_cast<double>(ldf(dl, dlt, 0)) / *wsum);
    }
    float lp_sum = 0;
    if (dlp)
      for (int64_t c = 0; c < C; ++c) lp_sum += ldf(dlp, dlpt, base + c * D);
    for (int64_t c = 0; c < C; ++c) {
      const float pc = expf(ldf(x, xt, base + c * D) - lse);
      float v = g * wv * (pc - (c == label ? 1.0f : 0.0f));
      if (dlp) v += ldf(dlp, dlpt, base + c * D) - pc * lp_sum;
      put(dx, dxt, base + c * D, v, acc);
    }
  }
}

}  // namespace

void cross_entropy_rows(int64_t rows, int64_t C, const void* x, Tag xt, const void* labels, Tag lt, float k, void* grad,
                        float* row_loss, DeviceError* err, int64_t site, cudaStream_t st) {
  if (rows == 0) return;
  SMP_CUDA_REQUIRE(rows <= 0x7fffffffLL, "too many rows of logits");
  ce_rows_k<<<static_cast<unsigned>(rows), kThreads, 0, st>>>(C, x, xt, labels, lt, k, grad, row_loss, err, site);
  SMP_CUDA_LAUNCHED();
}

void squared_error_elems(int64_t n, const void* p, Tag pt, const float* t, float k, void* grad, float* sq, cudaStream_t st) {
  if (n == 0) return;
  sq_err_k<<<blocks_for(n), kThreads, 0, st>>>(n, p, pt, t, k, grad, sq);
  SMP_CUDA_LAUNCHED();
}

void sum_floats(int64_t n, const float* x, double* dst, int slot, cudaStream_t st) {
  sum_floats_k<<<1, 1024, 0, st>>>(n, x, dst, slot);
  SMP_CUDA_LAUNCHED();
}

void sum_squares(int64_t n, const float* x, double* dst, int slot, double* part, int parts, cudaStream_t st) {
  const int blocks = static_cast<int>(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, parts));
  sum_squares_part_k<<<blocks, kThreads, 0, st>>>(n, x, part);
  SMP_CUDA_LAUNCHED();
  sum_doubles_k<<<1, 1024, 0, st>>>(blocks, part, dst + slot);
  SMP_CUDA_LAUNCHED();
}

void sum_slots(double* slots, int n, double* dst, cudaStream_t st) {
  sum_doubles_k<<<1, 1024, 0, st>>>(n, slots, dst);
  SMP_CUDA_LAUNCHED();
}

void sce_positions(int64_t N, int64_t C, int64_t D, const void* x, Tag xt, const void* y, Tag yt, const void* w, Tag wt,
                   bool has_ignore, int64_t ignore, float* loss_pos, float* w_pos, void* log_prob, Tag lpt, DeviceError* err,
                   int64_t site, cudaStream_t st) {
  if (N * D == 0) return;
  sce_positions_k<<<blocks_for(N * D), kThreads, 0, st>>>(N, C, D, x, xt, y, yt, w, wt, has_ignore, ignore, loss_pos, w_pos,
                                                         log_prob, lpt, err, site);
  SMP_CUDA_LAUNCHED();
}

void sce_reduce(int red, int64_t n, const float* loss_pos, const float* w_pos, void* out, Tag ot, double* sums, cudaStream_t st) {
  sce_reduce_k<<<1, 1024, 0, st>>>(red, n, loss_pos, w_pos, out, ot);
  SMP_CUDA_LAUNCHED();
}

void sce_grad(int red, int64_t N, int64_t C, int64_t D, const void* x, Tag xt, const void* y, Tag yt, const void* w, Tag wt,
              bool has_ignore, int64_t ignore, const void* dl, Tag dlt, const void* dlp, Tag dlpt, const double* wsum, void* dx,
              Tag dxt, bool acc, cudaStream_t st) {
  if (N * D == 0) return;
  sce_grad_k<<<blocks_for(N * D), kThreads, 0, st>>>(red, N, C, D, x, xt, y, yt, w, wt, has_ignore, ignore, dl, dlt, dlp, dlpt,
                                                    wsum, dx, dxt, acc);
  SMP_CUDA_LAUNCHED();
}

}  // namespace smp::runtime::cuda
