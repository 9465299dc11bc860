#include "runtime/loss.hpp"

#include <fmt/format.h>

namespace smp::runtime {

namespace {
bool is_float_tensor(const Tensor& t) { return t.dtype() == DType::F32 || t.dtype() == DType::BF16; }
}  // namespace

LossResult cross_entropy(Backend& be, const Tensor& logits, const Tensor& labels, float scale) {
  if (!is_float_tensor(logits) || logits.rank() < 2)
    throw_bad_input("loss", fmt::format("cross-entropy needs float32 logits [N, C] or [N, T, C], got {}", logits.str()));
  Shape ls(logits.shape().begin(), logits.shape().end() - 1);
  if (labels.shape() != ls || (labels.dtype() != DType::I64 && labels.dtype() != DType::I32))
    throw_bad_input("labels", fmt::format("expected int64{} for logits {}, got {}", shape_str(ls), logits.str(), labels.str()));
  LossResult r;
  r.grad = be.empty(logits.dtype(), logits.shape());
  r.loss = be.softmax_cross_entropy(logits, labels, scale, r.grad);
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
