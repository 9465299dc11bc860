#include "runtime/loss.hpp"

#include "runtime/cpu/common.hpp"

#include <fmt/format.h>

#include <cmath>

namespace smp::runtime {

namespace {
bool is_float_tensor(const Tensor& t) { return t.dtype() == DType::F32 || t.dtype() == DType::BF16; }

// Checks logits [..., C] against integer labels [...].
void check_logits_labels(const Tensor& logits, const Tensor& labels) {
  if (!is_float_tensor(logits) || logits.rank() < 2)
    throw_bad_input("loss", fmt::format("cross-entropy needs float32 logits [N, C] or [N, T, C], got {}", logits.str()));
  Shape ls(logits.shape().begin(), logits.shape().end() - 1);
  if (labels.shape() != ls || (labels.dtype() != DType::I64 && labels.dtype() != DType::I32))
    throw_bad_input("labels", fmt::format("expected int64{} for logits {}, got {}", shape_str(ls), logits.str(), labels.str()));
}
}  // namespace

LossResult cross_entropy(Backend& be, const Tensor& logits, const Tensor& labels, float scale) {
  check_logits_labels(logits, labels);
  LossResult r;
  r.grad = be.empty(logits.dtype(), logits.shape());
  r.loss = be.softmax_cross_entropy(logits, labels, scale, r.grad);
  return r;
}

LossResult cross_entropy_vocab_parallel(Backend& be, const Tensor& logits, const Tensor& labels, int64_t vocab_begin,
                                        int64_t vocab_total, Collectives& group, float scale) {
  check_logits_labels(logits, labels);
  if (!is_f32(logits))
    throw_bad_input("loss", fmt::format("the vocabulary-parallel cross-entropy needs float32 logits, got {}", logits.str()));
  const int64_t C = logits.dim(-1), rows = labels.numel();
  std::vector<int64_t> lab = cpu::tensor_ints(labels);
  for (int64_t y : lab)
    if (y < 0 || y >= vocab_total) throw_bad_input("labels", fmt::format("class {} out of range [0, {})", y, vocab_total));
  SMP_CHECK(vocab_begin >= 0 && vocab_begin + C <= vocab_total, "classes [{}, {}) of {}", vocab_begin, vocab_begin + C, vocab_total);
  const float* X = logits.data<float>();
  const int64_t grain = std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1));
  // 1. the row maxima over the whole vocabulary
  std::vector<float> mx(static_cast<size_t>(rows));
  cpu::pfor(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) mx[static_cast<size_t>(i)] = cpu::row_max(X + i * C, C);
  });
  group.all_reduce(mx.data(), mx.size(), ReduceOp::Max);
  // 2. the sums of exponentials and the target logits (held by one rank, zero on the others)
  LossResult r;
  r.grad = be.empty(DType::F32, logits.shape());
  float* G = r.grad.data<float>();
  std::vector<float> sums(2 * static_cast<size_t>(rows), 0.0f);
  cpu::pfor(rows, grain, [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* x = X + i * C;
      sums[static_cast<size_t>(i)] = cpu::exp_row(x, G + i * C, C, mx[static_cast<size_t>(i)]);
      const int64_t y = lab[static_cast<size_t>(i)] - vocab_begin;
      if (y >= 0 && y < C) sums[static_cast<size_t>(rows + i)] = x[y];
    }
  });
  group.all_reduce(sums.data(), sums.size(), ReduceOp::Sum);
  const float k = scale / static_cast<float>(rows);
  double total = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const float s = sums[static_cast<size_t>(i)];
    float* gr = G + i * C;
    const float inv = k / s;
    for (int64_t j = 0; j < C; ++j) gr[j] *= inv;
    const int64_t y = lab[static_cast<size_t>(i)] - vocab_begin;
    if (y >= 0 && y < C) gr[y] -= k;
    total += static_cast<double>(std::log(s) + mx[static_cast<size_t>(i)] - sums[static_cast<size_t>(rows + i)]);
  }
  r.loss = total / static_cast<double>(rows);
  return r;
}

LossResult mean_squared_error(Backend& be, const Tensor& pred, const Tensor& target, float scale) {
  if (!is_float_tensor(pred) || target.dtype() != DType::F32 || pred.shape() != target.shape())
    throw_bad_input("labels", fmt::format("mean squared error needs float32 labels of the output's shape {}, got {}", pred.str(), target.str()));
  LossResult r;
  r.grad = be.empty(pred.dtype(), pred.shape());
  r.loss = be.squared_error(pred, target, scale, r.grad);
  return r;
}

LossResult scalar_loss(Backend& be, const Tensor& out, float scale) {
  if (!is_float_tensor(out) || out.numel() != 1) throw_bad_input("loss", fmt::format("a scalar float32 output is needed, got {}", out.str()));
  LossResult r;
  float v = 0;
  if (out.dtype() == DType::F32) {
    be.to_host(out, &v);
  } else {
    Tensor f = be.empty(DType::F32, out.shape());
    be.convert(f, out);
    be.to_host(f, &v);
  }
  r.loss = v;
  Tensor g = be.from_host(DType::F32, out.shape(), &scale);
  if (out.dtype() == DType::F32) {
    r.grad = g;
  } else {
    r.grad = be.empty(out.dtype(), out.shape());
    be.convert(r.grad, g);
  }
  return r;
}

LossKind choose_loss(const Shape& output, DType label_dtype) {
  if (smp::numel(output) == 1) return LossKind::Scalar;
  if (label_dtype == DType::I64 || label_dtype == DType::I32) return LossKind::CrossEntropy;
  return LossKind::MeanSquaredError;
}

LossResult apply_loss(LossKind kind, Backend& be, const Tensor& out, const Tensor& labels, float scale) {
  switch (kind) {
    case LossKind::CrossEntropy: return cross_entropy(be, out, labels, scale);
    case LossKind::MeanSquaredError: return mean_squared_error(be, out, labels, scale);
    case LossKind::Scalar: return scalar_loss(be, out, scale);
  }
  return {};
}

}  // namespace smp::runtime
