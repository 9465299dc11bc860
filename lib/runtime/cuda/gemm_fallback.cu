// A plain tiled matrix product for the shapes cuBLASLt finds no algorithm for (any float tags,
// float32 accumulation, strided batches, an optional bias per output column). Correct first:
// it is the fallback, not the fast path.
#include "runtime/cuda/common.cuh"

namespace smp::runtime::cuda {

namespace {

constexpr int kTile = 16;

// C[M,N] (row-major, ldc) = alpha * op(A) op(B) + beta * C + bias[n]
__global__ void gemm_k(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int at, int64_t lda,
                       int64_t sA, const void* B, int bt, int64_t ldb, int64_t sB, float beta, void* C, int ct, int64_t ldc,
                       int64_t sC, const void* bias, int biast) {
  __shared__ float as[kTile][kTile + 1], bs[kTile][kTile + 1];
  const int64_t z = blockIdx.z;
  const int64_t row = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  const int64_t a0 = z * sA, b0 = z * sB, c0 = z * sC;
  float acc = 0;
  for (int64_t k0 = 0; k0 < K; k0 += kTile) {
    const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    as[threadIdx.y][threadIdx.x] = (row < M && ka < K) ? ldf(A, at, a0 + (ta ? ka * lda + row : row * lda + ka)) : 0.0f;
    bs[threadIdx.y][threadIdx.x] = (kb < K && col < N) ? ldf(B, bt, b0 + (tb ? col * ldb + kb : kb * ldb + col)) : 0.0f;
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kTile; ++k) acc += as[threadIdx.y][k] * bs[k][threadIdx.x];
    __syncthreads();
  }
  if (row < M && col < N) {
    const int64_t i = c0 + row * ldc + col;
    float v = alpha * acc;
    if (beta != 0.0f) v += beta * ldf(C, ct, i);
    if (bias) v += ldf(bias, biast, col);
    stf(C, ct, i, v);
  }
}

}  // namespace

void gemm_fallback(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, Tag at, int64_t lda, int64_t sA,
                   const void* B, Tag bt, int64_t ldb, int64_t sB, float beta, void* C, Tag ct, int64_t ldc, int64_t sC,
                   int64_t batch, const void* bias, Tag biast, cudaStream_t st) {
  if (M == 0 || N == 0 || batch == 0) return;
  SMP_CUDA_REQUIRE((N + kTile - 1) / kTile <= 0x7fffffffLL && (M + kTile - 1) / kTile <= 65535 && batch <= 65535, "fallback matrix product too large for its grid");
  dim3 grid(static_cast<unsigned>((N + kTile - 1) / kTile), static_cast<unsigned>((M + kTile - 1) / kTile), static_cast<unsigned>(batch));
  gemm_k<<<grid, dim3(kTile, kTile), 0, st>>>(ta, tb, M, N, K, alpha, A, at, lda, sA, B, bt, ldb, sB, beta, C, ct, ldc, sC, bias, biast);
  SMP_CUDA_LAUNCHED();
}

}  // namespace smp::runtime::cuda
