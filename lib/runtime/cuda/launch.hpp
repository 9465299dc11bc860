// Host entry points of the CUDA kernels (defined in the .cu files of this directory) and the
// plain types they take: pointers, element-type tags, dims and strides. No fmt, no backend
// headers, so that nvcc compiles only what the kernels need. Every function queues work on
// `stream` and returns.
#pragma once

#include "runtime/cuda/check.hpp"
#include "runtime/update_rule.hpp"

#include <cuda_runtime.h>

#include <cstdint>
#include <string>

namespace smp::runtime::cuda {

// Element types the kernels read and write. Float kernels compute in float32 whatever the
// storage (F32 or BF16) of each operand.
enum Tag : int32_t { kF32 = 0, kBF16 = 1, kF64 = 2, kI64 = 3, kI32 = 4, kU8 = 5, kI8 = 6 };
inline bool is_float_tag(Tag t) { return t == kF32 || t == kBF16; }
inline int64_t dtype_size_of_tag(Tag t) {
  switch (t) {
    case kF64: case kI64: return 8;
    case kF32: case kI32: return 4;
    case kBF16: return 2;
    default: return 1;
  }
}

// An iteration over a contiguous output of up to kMaxDims dims with up to 4 operands, each at
// its own element strides (0: broadcast) from its own base offset.
constexpr int kMaxDims = 8;
struct Strided {
  int nd = 1;
  int64_t total = 0;
  int64_t dims[kMaxDims] = {};
  int64_t st[4][kMaxDims] = {};
  int64_t base[4] = {};
};
// Throws (internal) when an iteration has more dims than the kernels take.
inline void check_dims(const Strided& s, const char* what) {
  SMP_CUDA_REQUIRE(s.nd >= 1 && s.nd <= kMaxDims, std::string(what) + ": too many dims for the CUDA kernels");
}

// Errors the kernels find in the data (an index or label out of range): the first one is
// recorded on the device and reported at the next synchronization, naming its node.
enum DeviceErrorCode : int64_t { kNoError = 0, kIndexOutOfRange = 1, kLabelOutOfRange = 2 };
struct DeviceError {
  int64_t code, site, value, bound;
};

// ---- elementwise (elementwise.cu) --------------------------------------------------------

// Binary ops with broadcasting (s: out, a, b). op: a graph::Op value. Float tags (f32/bf16, and
// an integer exponent for Pow) compute in float; F64, I64, I32 in their own type; comparisons
// write U8; And/Or/Xor read and write U8.
void binary(int op, const Strided& s, void* out, Tag ot, const void* a, Tag at, const void* b, Tag bt, cudaStream_t st);
// Gradient of a binary op for input `which` (0: A, 1: B), evaluated over the output shape
// (s: dst, dy, a, b): dst (out shape, contiguous) = or += f(dy, a, b).
void binary_grad(int op, int which, const Strided& s, void* dst, Tag dt, bool acc, const void* dy, Tag dyt,
                 const void* a, Tag at, const void* b, Tag bt, cudaStream_t st);
// Unary ops (op: a graph::Op value) on float tags; Neg and Abs also on I64 and I32; Not on U8.
void unary(int op, float alpha, bool gelu_tanh, int64_t n, void* y, Tag yt, const void* x, Tag xt, cudaStream_t st);
// din = or += f(dy, v), v the saved input or output (whichever the rule reads).
void unary_grad(int op, float alpha, bool gelu_tanh, int64_t n, void* din, Tag dt, bool acc, const void* dy, Tag dyt,
                const void* v, Tag vt, cudaStream_t st);
// Clip with bounds from the attributes or from one-element inputs (lo_p / hi_p, may be null).
void clip(int64_t n, void* y, Tag yt, const void* x, Tag xt, float lo, float hi, const void* lo_p, Tag lot,
          const void* hi_p, Tag hit, cudaStream_t st);
void clip_grad(int64_t n, void* din, Tag dt, bool acc, const void* dy, Tag dyt, const void* x, Tag xt, float lo,
               float hi, const void* lo_p, Tag lot, const void* hi_p, Tag hit, cudaStream_t st);
// Where (s: out, cond, x, y); x and y of one tag, or both float tags.
void where(const Strided& s, void* out, Tag ot, const uint8_t* c, const void* x, Tag xt, const void* y, Tag yt,
           cudaStream_t st);
// dst (out shape, f32) = cond == take ? dy : 0   (s: dst, cond)
void where_mask(const Strided& s, float* dst, const uint8_t* c, bool take, const void* dy, Tag dyt, cudaStream_t st);
// y = x converted (any pair of tags; to_bool: y = x != 0).
void convert(int64_t n, void* y, Tag yt, bool to_bool, const void* x, Tag xt, cudaStream_t st);
// y (=, +=) alpha * x on float tags.
void axpby(int64_t n, float alpha, const void* x, Tag xt, void* y, Tag yt, bool acc, cudaStream_t st);
// x *= alpha
void scale(int64_t n, float alpha, void* x, Tag xt, cudaStream_t st);
// Fills n elements of `es` bytes with the pattern at `value` (host bytes).
void fill_pattern(void* dst, int64_t n, int64_t es, const void* value, cudaStream_t st);

// ---- data movement (movement.cu) ---------------------------------------------------------

// dst (contiguous over s's dims) = or += src[s.base[1] + sum idx_d * s.st[1][d]]. Same tag: a
// plain copy of the element size (acc needs a float tag); different float tags convert.
void gather_copy(const Strided& s, void* dst, Tag dt, bool acc, const void* src, Tag srct, cudaStream_t st);
// dst[s.base[1] + sum idx_d * s.st[1][d]] = or += src (contiguous over s's dims); no two source
// elements may meet in one destination. src null: writes zeros.
void scatter_copy(const Strided& s, void* dst, Tag dt, bool acc, const void* src, Tag srct, cudaStream_t st);
// Gather along an axis: dst[o, j, i] = src[o, idx[j], i] (negative indices wrap); an index out
// of [-D, D) writes zeros and records kIndexOutOfRange under `site`.
void gather_rows(void* dst, Tag dt, const void* src, Tag srct, const void* idx, Tag it, int64_t outer, int64_t D,
                 int64_t nidx, int64_t inner, DeviceError* err, int64_t site, cudaStream_t st);
// Its gradient without atomics: dst[o, idx[j], i] += dy[o, j, i], j in increasing order for
// every destination element (the CPU's order; dst zeroed first unless acc).
void gather_rows_grad(void* dst, Tag dt, bool acc, const void* dy, Tag dyt, const void* idx, Tag it, int64_t outer,
                      int64_t D, int64_t nidx, int64_t inner, int sm_count, cudaStream_t st);
// Trilu on [mats, N, M]; float tags may accumulate (the gradient).
void trilu(int64_t mats, int64_t N, int64_t M, int64_t k, bool upper, void* y, Tag yt, bool acc, const void* x, Tag xt,
           cudaStream_t st);

// ---- reductions, normalisation (nn.cu) ---------------------------------------------------

// Reduction of x over the geometry's reduced dims into y (one element per kept index).
// op: ReduceSum / ReduceMean / ReduceMax / ReduceMin / ReduceProd. Float tags or I64. acc: y +=.
// `part`: scratch of reduce_scratch_floats() floats (null when that is 0).
struct ReduceGeom {
  int nk = 0, nr = 0;
  int64_t kdims[kMaxDims] = {}, kstr[kMaxDims] = {};
  int64_t rdims[kMaxDims] = {}, rstr[kMaxDims] = {};
  int64_t nout = 1, rcount = 1;
};
int64_t reduce_scratch_floats(const ReduceGeom& g, int sm_count);
void reduce(int op, const ReduceGeom& g, void* y, Tag yt, bool acc, const void* x, Tag xt, float* part, int sm_count,
            cudaStream_t st);
// Backward of a reduction: s iterates over x's shape (dst) with operand 1 = y / dy broadcast
// from the kept shape. Sum/Mean: dx = dy * k. Max/Min: dx = x == y ? dy : 0 (operand 2: x
// contiguous; operand 1 also reads y).
void reduce_grad(int op, const Strided& s, float k, void* dx, Tag dt, bool acc, const void* dy, Tag dyt,
                 const void* x, Tag xt, const void* y, Tag yt, cudaStream_t st);
// ReduceProd's gradient: dx = dy * product of the others in its group (zeros handled as the CPU).
void reduce_prod_grad(const ReduceGeom& g, void* dx, Tag dt, bool acc, const void* dy, Tag dyt, const void* x, Tag xt,
                      cudaStream_t st);
void argmax(int64_t outer, int64_t D, int64_t inner, bool last, int64_t* y, const void* x, Tag xt, cudaStream_t st);

void softmax(bool log, int64_t outer, int64_t D, int64_t inner, void* y, Tag yt, const void* x, Tag xt, cudaStream_t st);
void softmax_grad(bool log, int64_t outer, int64_t D, int64_t inner, void* dx, Tag dt, bool acc, const void* y, Tag yt,
                  const void* dy, Tag dyt, cudaStream_t st);

void layernorm(int64_t rows, int64_t D, float eps, void* y, Tag yt, const void* x, Tag xt, const void* g, Tag gt,
               const void* b, Tag bt, void* mean, Tag mt, void* rstd, Tag rt, cudaStream_t st);
// part: scratch of layernorm_grad_scratch_floats() floats.
int64_t layernorm_grad_scratch_floats(int64_t rows, int64_t D);
void layernorm_grad(int64_t rows, int64_t D, float eps, const void* x, Tag xt, const void* g, Tag gt, const void* dy,
                    Tag dyt, void* dx, Tag dxt, bool accx, void* dg, Tag dgt, bool accg, void* db, Tag dbt, bool accb,
                    float* part, cudaStream_t st);

// BatchNormalization over [N, C, HW]. training: statistics of the batch; else from mean/var.
// stats: scratch of batchnorm_scratch_floats() floats (256-byte aligned).
int64_t batchnorm_scratch_floats(int64_t N, int64_t C, int64_t HW, int sm_count);
void batchnorm(int64_t N, int64_t C, int64_t HW, float eps, bool training, void* y, Tag yt, const void* x, Tag xt,
               const void* g, Tag gt, const void* b, Tag bt, const void* mean, Tag mt, const void* var, Tag vt,
               float* stats, int sm_count, cudaStream_t st);
void batchnorm_grad(int64_t N, int64_t C, int64_t HW, float eps, bool training, const void* x, Tag xt, const void* g,
                    Tag gt, const void* mean, Tag mt, const void* var, Tag vt, const void* dy, Tag dyt, void* dx,
                    Tag dxt, bool accx, void* dg, Tag dgt, bool accg, void* db, Tag dbt, bool accb, float* stats,
                    int sm_count, cudaStream_t st);

// ---- pooling (pool.cu) ---------------------------------------------------------------------

struct PoolGeom {
  int64_t NC, ih, iw, oh, ow, kh, kw, sh, sw, dh, dw, ph, pw, ph_end, pw_end;
  bool is_max, count_include_pad;
};
void pool(const PoolGeom& g, void* y, Tag yt, const void* x, Tag xt, cudaStream_t st);
void pool_grad(const PoolGeom& g, void* dx, Tag dt, bool acc, const void* dy, Tag dyt, const void* x, Tag xt,
               cudaStream_t st);
void global_avgpool(int64_t NC, int64_t HW, void* y, Tag yt, const void* x, Tag xt, cudaStream_t st);
void global_avgpool_grad(int64_t NC, int64_t HW, void* dx, Tag dt, bool acc, const void* dy, Tag dyt, cudaStream_t st);
// y[n, c, :] += b[c]   (y: [N, C, HW])
void channel_bias(int64_t N, int64_t C, int64_t HW, void* y, Tag yt, const void* b, Tag bt, cudaStream_t st);

// ---- losses (loss.cu) ----------------------------------------------------------------------

// Softmax cross-entropy over rows of C logits: grad = (softmax - onehot) * k (logits' tag);
// row_loss[i] = lse - x[label] (f32). Labels out of range record kLabelOutOfRange.
void cross_entropy_rows(int64_t rows, int64_t C, const void* x, Tag xt, const void* labels, Tag lt, float k, void* grad,
                        float* row_loss, DeviceError* err, int64_t site, cudaStream_t st);
// The squared error d = p - t: grad = k * d; sq[i] = d * d.
void squared_error_elems(int64_t n, const void* p, Tag pt, const float* t, float k, void* grad, float* sq, cudaStream_t st);
// dst[slot] = sum of x[0..n) in double, in a fixed order (slot: an index into `dst`).
void sum_floats(int64_t n, const float* x, double* dst, int slot, cudaStream_t st);
// dst[slot] = sum of squares of x[0..n) (f32) in double, in a fixed order.
void sum_squares(int64_t n, const float* x, double* dst, int slot, double* part, int parts, cudaStream_t st);
// dst[0] = sum of dst[0..n) slots, in order (on the device).
void sum_slots(double* slots, int n, double* dst, cudaStream_t st);

// SoftmaxCrossEntropyLoss (the op): scores [N, C, D], labels [N, D], weights [C] or null.
// loss_pos[N*D] and w_pos[N*D]: per position (f32 scratch).
void sce_positions(int64_t N, int64_t C, int64_t D, const void* x, Tag xt, const void* y, Tag yt, const void* w,
                   Tag wt, bool has_ignore, int64_t ignore, float* loss_pos, float* w_pos, void* log_prob, Tag lpt,
                   DeviceError* err, int64_t site, cudaStream_t st);
// red: 0 mean, 1 sum, 2 none. out: the loss output.
void sce_reduce(int red, int64_t n, const float* loss_pos, const float* w_pos, void* out, Tag ot, double* sums,
                cudaStream_t st);
void sce_grad(int red, int64_t N, int64_t C, int64_t D, const void* x, Tag xt, const void* y, Tag yt, const void* w,
              Tag wt, bool has_ignore, int64_t ignore, const void* dl, Tag dlt, const void* dlp, Tag dlpt,
              const double* wsum, void* dx, Tag dxt, bool acc, cudaStream_t st);

// ---- optimizer (optim.cu) -------------------------------------------------------------------

void optimizer_update(const UpdateRule& r, int64_t n, float* p, const float* g, float* s0, float* s1, cudaStream_t st);

// ---- matrix product fallback (gemm_fallback.cu) ----------------------------------------------

// Row-major C[M,N] = alpha * op(A) op(B) + beta * C, batched by strides, any float tags, f32
// accumulation: used when cuBLASLt has no algorithm for a shape.
void gemm_fallback(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const void* A, Tag at, int64_t lda,
                   int64_t sA, const void* B, Tag bt, int64_t ldb, int64_t sB, float beta, void* C, Tag ct, int64_t ldc,
                   int64_t sC, int64_t batch, const void* bias, Tag biast, cudaStream_t st);

}  // namespace smp::runtime::cuda
