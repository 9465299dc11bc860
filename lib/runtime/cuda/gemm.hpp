// Matrix products through cuBLASLt with row-major semantics: descriptors and the algorithm are
// made once per shape (and pointer alignment) and cached; the heuristic's first algorithm that
// fits the workspace is kept, so a shape always runs the same algorithm (bit-identical repeats).
// When cuBLASLt offers none, a plain tiled kernel runs instead (gemm_fallback).
#pragma once

#include "runtime/cuda/cuda_backend.hpp"

#include <cstdint>
#include <map>
#include <memory>
#include <tuple>

namespace smp::runtime::cuda {

// C[M,N] (ldc) = alpha * op(A) op(B) + beta * C (+ bias[n] per column), batched by strides
// (in elements; 0 repeats the operand). Tags: A and B float (one tag), C f32 or bf16; the bias
// has C's tag.
struct GemmShape {
  bool ta = false, tb = false;
  int64_t M = 0, N = 0, K = 0;
  int64_t lda = 0, ldb = 0, ldc = 0;
  int64_t sA = 0, sB = 0, sC = 0;
  int64_t batch = 1;
  Tag ab = kF32, c = kF32;
  bool bias = false;
};

struct GemmPlan;

class GemmCache {
 public:
  GemmCache();
  ~GemmCache();
  GemmCache(const GemmCache&) = delete;
  GemmCache& operator=(const GemmCache&) = delete;
  // Makes (or finds) the plan of a shape; run() does this on its first call. Load-time callers
  // use it to settle the algorithm before the first step.
  GemmPlan& plan(CudaBackend& be, const GemmShape& s, uint32_t align_a, uint32_t align_b, uint32_t align_c, bool beta_nonzero);
  void run(CudaBackend& be, const GemmShape& s, float alpha, const void* A, const void* B, float beta, void* C, const void* bias);
  int64_t plans() const { return static_cast<int64_t>(plans_.size()); }
  int64_t fallbacks() const { return fallbacks_; }

 private:
  std::map<std::tuple<std::string>, std::unique_ptr<GemmPlan>> plans_;
  int64_t fallbacks_ = 0;
};

// The largest power of two (at most 256) that divides the address.
uint32_t pointer_alignment(const void* p);

}  // namespace smp::runtime::cuda
