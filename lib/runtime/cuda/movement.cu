// Data movement: strided gathers and scatters (Transpose, Slice, Concat, Split, Expand, Tile),
// a tiled transpose, Gather and its deterministic gradient, Trilu.
#include "runtime/cuda/common.cuh"

#include <algorithm>

namespace smp::runtime::cuda {

namespace {

template <class T>
__global__ void gather_copy_k(Strided s, T* dst, const T* src) {
  SMP_GRID_LOOP(i, s.total) {
    int64_t off[2];
    offsets<2>(s, i, off);
    dst[i] = src[off[1]];
  }
}

__global__ void gather_copy_float_k(Strided s, void* dst, int dt, bool acc, const void* src, int st_) {
  SMP_GRID_LOOP(i, s.total) {
    int64_t off[2];
    offsets<2>(s, i, off);
    put(dst, dt, i, ldf(src, st_, off[1]), acc);
  }
}

template <class T>
__global__ void scatter_copy_k(Strided s, T* dst, const T* src) {
  SMP_GRID_LOOP(i, s.total) {
    int64_t off[2];
    offsets<2>(s, i, off);
    dst[off[1]] = src[i];
  }
}

__global__ void scatter_copy_float_k(Strided s, void* dst, int dt, bool acc, const void* src, int st_) {
  SMP_GRID_LOOP(i, s.total) {
    int64_t off[2];
    offsets<2>(s, i, off);
    put(dst, dt, off[1], src ? ldf(src, st_, i) : 0.0f, acc);
  }
}

// dims j (unit stride in the source) and nd-1 (unit stride in the destination) through a
// 32 x 32 shared tile, so that both the reads and the writes are coalesced.
template <class T>
__global__ void transpose_tile_k(Strided s, int j, T* dst, const T* src, int64_t rest) {
  __shared__ T tile[32][33];
  const int last = s.nd - 1;
  const int64_t A = s.dims[j], L = s.dims[last];
  const int64_t a0 = static_cast<int64_t>(blockIdx.y) * 32, b0 = static_cast<int64_t>(blockIdx.x) * 32;
  for (int64_t q = blockIdx.z; q < rest; q += gridDim.z) {
    int64_t so = s.base[1], oo = 0, r = q;
    for (int d = last - 1; d >= 0; --d) {
      if (d == j) continue;
      int64_t i = r % s.dims[d];
      r /= s.dims[d];
      so += i * s.st[1][d];
      oo += i * s.st[0][d];
    }
    for (int k = 0; k < 32; k += 8) {
      int64_t a = a0 + threadIdx.x, b = b0 + threadIdx.y + k;
      if (a < A && b < L) tile[threadIdx.y + k][threadIdx.x] = src[so + a * s.st[1][j] + b * s.st[1][last]];
    }
    __syncthreads();
    for (int k = 0; k < 32; k += 8) {
      int64_t b = b0 + threadIdx.x, a = a0 + threadIdx.y + k;
      if (a < A && b < L) dst[oo + a * s.st[0][j] + b] = tile[threadIdx.x][threadIdx.y + k];
    }
    __syncthreads();
  }
}

template <class T>
bool try_transpose_tile(const Strided& s, T* dst, const T* src, cudaStream_t st) {
  const int last = s.nd - 1;
  if (s.nd < 2 || s.st[1][last] == 1 || s.dims[last] < 8) return false;
  int j = -1;
  for (int d = 0; d < last; ++d)
    if (s.st[1][d] == 1 && s.dims[d] >= 8) j = d;
  if (j < 0) return false;
  const int64_t A = s.dims[j], L = s.dims[last];
  if ((A + 31) / 32 > 65535) return false;
  int64_t rest = 1;
  for (int d = 0; d < last; ++d)
    if (d != j) rest *= s.dims[d];
  dim3 grid(static_cast<unsigned>((L + 31) / 32), static_cast<unsigned>((A + 31) / 32),
            static_cast<unsigned>(std::min<int64_t>(rest, 65535)));
  transpose_tile_k<T><<<grid, dim3(32, 8), 0, st>>>(s, j, dst, src, rest);
  return true;
}

// The same copy in 16-byte units, when the innermost dim is contiguous on both sides and every
// offset and both pointers are multiples of 16 bytes (head reshapes, Split / Concat parts).
bool vectorized(const Strided& s, int64_t es, const void* a, const void* b, Strided& v) {
  const int64_t V = 16 / es;
  const int last = s.nd - 1;
  if (es >= 16 || s.st[1][last] != 1 || s.dims[last] % V != 0 || s.base[1] % V != 0) return false;
  if ((reinterpret_cast<uintptr_t>(a) | reinterpret_cast<uintptr_t>(b)) & 15u) return false;
  for (int d = 0; d < last; ++d)
    if (s.st[1][d] % V != 0) return false;
  v = s;
  v.dims[last] /= V;
  v.total /= V;
  v.base[1] /= V;
  int64_t k = 1;
  for (int d = last; d >= 0; --d) {
    v.st[0][d] = k;
    k *= v.dims[d];
    if (d < last) v.st[1][d] /= V;
  }
  return true;
}

template <class T>
void gather_typed(const Strided& s, void* dst, const void* src, cudaStream_t st) {
  if (try_transpose_tile<T>(s, static_cast<T*>(dst), static_cast<const T*>(src), st)) return;
  Strided v;
  if (vectorized(s, sizeof(T), dst, src, v)) {
    gather_copy_k<uint4><<<blocks_for(v.total), kThreads, 0, st>>>(v, static_cast<uint4*>(dst), static_cast<const uint4*>(src));
    return;
  }
  gather_copy_k<T><<<blocks_for(s.total), kThreads, 0, st>>>(s, static_cast<T*>(dst), static_cast<const T*>(src));
}

template <class T>
__global__ void gather_rows_k(T* dst, const T* src, const void* idx, int it, int64_t D, int64_t nidx, int64_t inner,
                              int64_t total, DeviceError* err, int64_t site) {
  SMP_GRID_LOOP(i, total) {
    const int64_t r = idiv(i, inner), c = i - r * inner, o = idiv(r, nidx), j = r - o * nidx;
    int64_t k = ldi(idx, it, j);
    if (k < -D || k >= D) {
      record_error(err, kIndexOutOfRange, site, k, D);
      dst[i] = T(0);
      continue;
    }
    if (k < 0) k += D;
    dst[i] = src[(o * D + k) * inner + c];
  }
}

__global__ void gather_rows_float_k(void* dst, int dt, const void* src, int st_, const void* idx, int it, int64_t D, int64_t nidx,
                                    int64_t inner, int64_t total, DeviceError* err, int64_t site) {
  SMP_GRID_LOOP(i, total) {
    const int64_t r = idiv(i, inner), c = i - r * inner, o = idiv(r, nidx), j = r - o * nidx;
    int64_t k = ldi(idx, it, j);
    if (k < -D || k >= D) {
      record_error(err, kIndexOutOfRange, site, k, D);
      stf(dst, dt, i, 0.0f);
      continue;
    }
    if (k < 0) k += D;
    stf(dst, dt, i, ldf(src, st_, (o * D + k) * inner + c));
  }
}

// Rows of dX in [lo, hi) for partition blockIdx.y: every block scans all indices in order and
// adds the rows that land in its partition, so each element sums its contributions in index
// order with no other thread touching it.
constexpr int kIdxTile = 1024;
__global__ void gather_rows_grad_k(void* dx, int dt, const void* dy, int dyt, const void* idx, int it, int64_t D, int64_t nidx,
                                   int64_t inner, int parts) {
  __shared__ int64_t sidx[kIdxTile];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t lo = D * blockIdx.y / parts, hi = D * (blockIdx.y + 1) / parts;
  const int64_t o = blockIdx.z;
  for (int64_t j0 = 0; j0 < nidx; j0 += kIdxTile) {
    const int64_t n = min(static_cast<int64_t>(kIdxTile), nidx - j0);
    __syncthreads();
    for (int64_t t = threadIdx.x; t < n; t += blockDim.x) {
      int64_t k = ldi(idx, it, j0 + t);
      sidx[t] = k < 0 ? k + D : k;
    }
    __syncthreads();
    if (c >= inner) continue;
    for (int64_t t = 0; t < n; ++t) {
      const int64_t k = sidx[t];
      if (k < lo || k >= hi) continue;
      const int64_t d = (o * D + k) * inner + c;
      stf(dx, dt, d, ldf(dx, dt, d) + ldf(dy, dyt, (o * nidx + j0 + t) * inner + c));
    }
  }
}

template <class T>
__global__ void trilu_k(int64_t total, int64_t N, int64_t M, int64_t k, bool upper, T* y, const T* x) {
  SMP_GRID_LOOP(i, total) {
    const int64_t j = imod(i, M), r = imod(idiv(i, M), N);
    const bool keep = upper ? (j - r >= k) : (j - r <= k);
    y[i] = keep ? x[i] : T(0);
  }
}

__global__ void trilu_float_k(int64_t total, int64_t N, int64_t M, int64_t k, bool upper, void* y, int yt, bool acc,
                              const void* x, int xt) {
  SMP_GRID_LOOP(i, total) {
    const int64_t j = imod(i, M), r = imod(idiv(i, M), N);
    const bool keep = upper ? (j - r >= k) : (j - r <= k);
    put(y, yt, i, keep ? ldf(x, xt, i) : 0.0f, acc);
  }
}

}  // namespace

void gather_copy(const Strided& s, void* dst, Tag dt, bool acc, const void* src, Tag srct, cudaStream_t st) {
  check_dims(s, "strided copy");
  if (s.total == 0) return;
  if (!acc && dt == srct) {
    switch (dtype_size_of_tag(dt)) {
      case 1: gather_typed<uint8_t>(s, dst, src, st); break;
      case 2: gather_typed<uint16_t>(s, dst, src, st); break;
      case 4: gather_typed<uint32_t>(s, dst, src, st); break;
      default: gather_typed<uint64_t>(s, dst, src, st); break;
    }
  } else {
    SMP_CUDA_REQUIRE(is_float_tag(dt) && is_float_tag(srct), "converting copy between non-float element types");
    gather_copy_float_k<<<blocks_for(s.total), kThreads, 0, st>>>(s, dst, dt, acc, src, srct);
  }
  SMP_CUDA_LAUNCHED();
}

void scatter_copy(const Strided& s, void* dst, Tag dt, bool acc, const void* src, Tag srct, cudaStream_t st) {
  check_dims(s, "strided scatter");
  if (s.total == 0) return;
  Strided v;
  if (!acc && src && dt == srct && vectorized(s, dtype_size_of_tag(dt), dst, src, v)) {
    scatter_copy_k<uint4><<<blocks_for(v.total), kThreads, 0, st>>>(v, static_cast<uint4*>(dst), static_cast<const uint4*>(src));
  } else if (!acc && src && dt == srct) {
    const unsigned g = blocks_for(s.total);
    switch (dtype_size_of_tag(dt)) {
      case 1: scatter_copy_k<uint8_t><<<g, kThreads, 0, st>>>(s, static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src)); break;
      case 2: scatter_copy_k<uint16_t><<<g, kThreads, 0, st>>>(s, static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src)); break;
      case 4: scatter_copy_k<uint32_t><<<g, kThreads, 0, st>>>(s, static_cast<uint32_t*>(dst), static_cast<const uint32_t*>(src)); break;
      default: scatter_copy_k<uint64_t><<<g, kThreads, 0, st>>>(s, static_cast<uint64_t*>(dst), static_cast<const uint64_t*>(src)); break;
    }
  } else {
    SMP_CUDA_REQUIRE(is_float_tag(dt) && (!src || is_float_tag(srct)), "converting scatter between non-float element types");
    scatter_copy_float_k<<<blocks_for(s.total), kThreads, 0, st>>>(s, dst, dt, acc, src, srct);
  }
  SMP_CUDA_LAUNCHED();
}

void gather_rows(void* dst, Tag dt, const void* src, Tag srct, const void* idx, Tag it, int64_t outer, int64_t D, int64_t nidx,
                 int64_t inner, DeviceError* err, int64_t site, cudaStream_t st) {
  const int64_t total = outer * nidx * inner;
  if (total == 0) return;
  const unsigned g = blocks_for(total);
  if (dt == srct) {
    switch (dtype_size_of_tag(dt)) {
      case 1: gather_rows_k<uint8_t><<<g, kThreads, 0, st>>>(static_cast<uint8_t*>(dst), static_cast<const uint8_t*>(src), idx, it, D, nidx, inner, total, err, site); break;
      case 2: gather_rows_k<uint16_t><<<g, kThreads, 0, st>>>(static_cast<uint16_t*>(dst), static_cast<const uint16_t*>(src), idx, it, D, nidx, inner, total, err, site); break;
      case 4: gather_rows_k<uint32_t><<<g, kThreads, 0, st>>>(static_cast<uint32_t*>(dst), static_cast<const uint32_t*>(src), idx, it, D, nidx, inner, total, err, site); break;
      default: gather_rows_k<uint64_t><<<g, kThreads, 0, st>>>(static_cast<uint64_t*>(dst), static_cast<const uint64_t*>(src), idx, it, D, nidx, inner, total, err, site); break;
    }
  } else {
    SMP_CUDA_REQUIRE(is_float_tag(dt) && is_float_tag(srct), "Gather between non-float element types");
    gather_rows_float_k<<<g, kThreads, 0, st>>>(dst, dt, src, srct, idx, it, D, nidx, inner, total, err, site);
  }
  SMP_CUDA_LAUNCHED();
}

void gather_rows_grad(void* dst, Tag dt, bool acc, const void* dy, Tag dyt, const void* idx, Tag it, int64_t outer, int64_t D,
                      int64_t nidx, int64_t inner, int sm_count, cudaStream_t st) {
  if (!acc) SMP_CUDA_CHECK(cudaMemsetAsync(dst, 0, static_cast<size_t>(outer * D * inner * dtype_size_of_tag(dt)), st));
  if (outer * nidx * inner == 0) return;
  const int64_t col_blocks = (inner + kThreads - 1) / kThreads;
  SMP_CUDA_REQUIRE(outer <= 65535 && col_blocks <= 65535LL * 1024, "Gather gradient too large for its grid");
  // Enough partitions to give every multiprocessor a few blocks; never more than the rows.
  int64_t parts = (4LL * std::max(sm_count, 1) + col_blocks * outer - 1) / (col_blocks * outer);
  parts = std::clamp<int64_t>(parts, 1, std::min<int64_t>(D, 65535));
  dim3 grid(static_cast<unsigned>(col_blocks), static_cast<unsigned>(parts), static_cast<unsigned>(outer));
  gather_rows_grad_k<<<grid, kThreads, 0, st>>>(dst, dt, dy, dyt, idx, it, D, nidx, inner, static_cast<int>(parts));
  SMP_CUDA_LAUNCHED();
}

void trilu(int64_t mats, int64_t N, int64_t M, int64_t k, bool upper, void* y, Tag yt, bool acc, const void* x, Tag xt,
           cudaStream_t st) {
  const int64_t total = mats * N * M;
  if (total == 0) return;
  const unsigned g = blocks_for(total);
  if (!acc && yt == xt) {
    switch (dtype_size_of_tag(yt)) {
      case 1: trilu_k<uint8_t><<<g, kThreads, 0, st>>>(total, N, M, k, upper, static_cast<uint8_t*>(y), static_cast<const uint8_t*>(x)); break;
      case 2: trilu_k<uint16_t><<<g, kThreads, 0, st>>>(total, N, M, k, upper, static_cast<uint16_t*>(y), static_cast<const uint16_t*>(x)); break;
      case 4: trilu_k<uint32_t><<<g, kThreads, 0, st>>>(total, N, M, k, upper, static_cast<uint32_t*>(y), static_cast<const uint32_t*>(x)); break;
      default: trilu_k<uint64_t><<<g, kThreads, 0, st>>>(total, N, M, k, upper, static_cast<uint64_t*>(y), static_cast<const uint64_t*>(x)); break;
    }
  } else {
    SMP_CUDA_REQUIRE(is_float_tag(yt) && is_float_tag(xt), "Trilu between non-float element types");
    trilu_float_k<<<g, kThreads, 0, st>>>(total, N, M, k, upper, y, yt, acc, x, xt);
  }
  SMP_CUDA_LAUNCHED();
}

}  // namespace smp::runtime::cuda
