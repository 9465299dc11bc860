// The CUDA backend's op kernels (forward, backward, load-time setup) for the table in table.cpp,
// and the host helpers they share. Each op reuses the CPU's prepare step and state
// (runtime/cpu/states.hpp): the same nodes, attributes and dtypes are accepted, read the same way.
#pragma once

#include "runtime/cpu/kernels.hpp"
#include "runtime/cpu/states.hpp"
#include "runtime/cuda/cuda_backend.hpp"
#include "runtime/cuda/launch.hpp"

#include <vector>

namespace smp::runtime::cuda {

// ---- from the CPU's shapes and plans to the kernels' arguments (util.cpp) -------------------

// The tag of a dtype (Bool and U8 share kU8); throws for one the kernels do not handle.
Tag tag_of(DType d);
// From a broadcasting plan: operand k+1 is plan input k (operand 0 is the contiguous output).
Strided strided_from_bcast(const cpu::Bcast& b);
// Output `shape` (contiguous) with operand 1 at strides `st` from `base`.
Strided strided_gather(const Shape& shape, const std::vector<int64_t>& st, int64_t base);
ReduceGeom reduce_geom(const cpu::RGeom& g);
// The reduction of `src` (src_shape) onto dst_shape (broadcastable to it): the sum over the
// broadcast axes.
ReduceGeom sum_to_geom(const Shape& dst_shape, const Shape& src_shape);

// ---- helpers -----------------------------------------------------------------------------

inline Tag tag(const Tensor& t) { return tag_of(t.dtype()); }
inline void* ptr(Tensor& t) { return t.raw(); }
inline const void* ptr(const Tensor& t) { return t.raw(); }
inline cudaStream_t stream(ExecContext& ctx) { return backend_of(ctx).stream(); }
// A temporary buffer from the activation arena (freed when the Tensor goes; the stream's order
// keeps it valid for the kernels queued before).
inline Tensor scratch(ExecContext& ctx, DType dt, const Shape& shape) { return ctx.backend->empty(dt, shape); }
Tensor scratch_floats(ExecContext& ctx, int64_t n);
// `t` in dtype `dt`: itself, or a converted copy in `holder`.
const Tensor& as_dtype(ExecContext& ctx, const Tensor& t, DType dt, Tensor& holder);
// dst (dst_shape) = or += the sum of src (src_shape) over the axes dst broadcasts along.
void reduce_sum_to(ExecContext& ctx, Tensor& dst, const Shape& dst_shape, const Tensor& src, const Shape& src_shape, bool acc);
// dst = or += src (same element count, float tags).
void store(ExecContext& ctx, Tensor& dst, const Tensor& src, bool acc);
// Row-major C = alpha op(A) op(B) + beta C through the backend's cuBLASLt cache.
void gemm(ExecContext& ctx, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, int64_t lda,
          int64_t sA, const void* B, int64_t ldb, int64_t sB, Tag ab, float beta, void* C, int64_t ldc, int64_t sC, Tag c,
          int64_t batch = 1, const void* bias = nullptr);

// ---- op kernels ----------------------------------------------------------------------------

#define SMP_CUDA_KERNEL(name)                                                                       \
  void fwd_##name(const KernelState& s, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in); \
  void bwd_##name(const KernelState& s, ExecContext& ctx, const GradIO& io);

SMP_CUDA_KERNEL(matmul)
SMP_CUDA_KERNEL(gemm)
SMP_CUDA_KERNEL(conv)
SMP_CUDA_KERNEL(binary)
SMP_CUDA_KERNEL(where)
SMP_CUDA_KERNEL(unary)
SMP_CUDA_KERNEL(clip)
SMP_CUDA_KERNEL(cast)
SMP_CUDA_KERNEL(identity)
SMP_CUDA_KERNEL(dropout)
SMP_CUDA_KERNEL(softmax)
SMP_CUDA_KERNEL(layernorm)
SMP_CUDA_KERNEL(batchnorm)
SMP_CUDA_KERNEL(reduce)
SMP_CUDA_KERNEL(argmax)
SMP_CUDA_KERNEL(pool)
SMP_CUDA_KERNEL(global_avgpool)
SMP_CUDA_KERNEL(reshape)
SMP_CUDA_KERNEL(transpose)
SMP_CUDA_KERNEL(concat)
SMP_CUDA_KERNEL(split)
SMP_CUDA_KERNEL(slice)
SMP_CUDA_KERNEL(gather)
SMP_CUDA_KERNEL(expand)
SMP_CUDA_KERNEL(tile)
SMP_CUDA_KERNEL(trilu)
SMP_CUDA_KERNEL(shape)
SMP_CUDA_KERNEL(size)
SMP_CUDA_KERNEL(constant)
SMP_CUDA_KERNEL(constant_of_shape)
SMP_CUDA_KERNEL(range)
SMP_CUDA_KERNEL(sce_loss)

#undef SMP_CUDA_KERNEL

// Prepare steps narrower than the CPU's: the CPU's, refusing what these kernels do not compute
// (BatchNormalization's running-statistics outputs, Dropout with a random mask, float16
// arithmetic, Pow of mixed dtypes other than float32 to an int64 or int32 exponent, Clip of
// other than float32, MaxPool's Indices output or of other than float32, Cast from or to
// float16, float64 reductions).
std::unique_ptr<KernelState> prep_batchnorm(const NodeView& n);
std::unique_ptr<KernelState> prep_dropout(const NodeView& n);
std::unique_ptr<KernelState> prep_binary(const NodeView& n);
std::unique_ptr<KernelState> prep_clip(const NodeView& n);
std::unique_ptr<KernelState> prep_cast(const NodeView& n);
std::unique_ptr<KernelState> prep_reduce(const NodeView& n);
std::unique_ptr<KernelState> prep_pool(const NodeView& n);
std::unique_ptr<KernelState> prep_conv(const NodeView& n);

// Load-time steps (descriptors and algorithms on the device).
void setup_matmul(KernelState& s, ExecContext& ctx);
void setup_gemm(KernelState& s, ExecContext& ctx);
void setup_conv(KernelState& s, ExecContext& ctx);
void setup_pool(KernelState& s, ExecContext& ctx);

}  // namespace smp::runtime::cuda
