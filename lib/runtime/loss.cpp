#include "runtime/loss.hpp"

#include "runtime/cpu/common.hpp"
#include "runtime/cpu/vmath.hpp"

#include <fmt/format.h>

#include <cmath>

namespace smp::runtime {

LossResult cross_entropy(Backend& be, const Tensor& logits, const Tensor& labels, float scale) {
  if (!is_f32(logits) || logits.rank() < 2)
    throw_bad_input("loss", fmt::format("cross-entropy needs float32 logits [N, C] or [N, T, C], got {}", logits.str()));
  Shape ls(logits.shape().begin(), logits.shape().end() - 1);
  if (labels.shape() != ls || (labels.dtype() != DType::I64 && labels.dtype() != DType::I32))
    throw_bad_input("labels", fmt::format("expected int64{} for logits {}, got {}", shape_str(ls), logits.str(), labels.str()));
  int64_t C = logits.dim(-1), rows = labels.numel();
  std::vector<int64_t> lab = cpu::tensor_ints(labels);
  for (int64_t y : lab)
    if (y < 0 || y >= C) throw_bad_input("labels", fmt::format("class {} out of range [0, {})", y, C));
  LossResult r;
  r.grad = be.empty(DType::F32, logits.shape());
  const float* X = logits.data<float>();
  float* G = r.grad.data<float>();
  float k = scale / static_cast<float>(rows);
  std::vector<double> part(static_cast<size_t>(rows), 0.0);
  cpu::pfor(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
    const float* x = X + i * C;
    float* gr = G + i * C;
    float m = cpu::vmax_row(x, C);
    float s = cpu::vexp_sum(x, gr, C, m);
    cpu::vscale_row(gr, C, k / s);
    int64_t y = lab[static_cast<size_t>(i)];
    gr[y] -= k;
    part[static_cast<size_t>(i)] = static_cast<double>(std::log(s) + m - x[y]);
      }
  });
  double total = 0;
  for (double v : part) total += v;
  r.loss = total / static_cast<double>(rows);
  return r;
}

LossResult mean_squared_error(Backend& be, const Tensor& pred, const Tensor& target, float scale) {
  if (!is_f32(pred) || !is_f32(target) || pred.shape() != target.shape())
    throw_bad_input("labels", fmt::format("mean squared error needs float32 labels of the output's shape {}, got {}", pred.str(), target.str()));
  LossResult r;
  r.grad = be.empty(DType::F32, pred.shape());
  const float* p = pred.data<float>();
  const float* t = target.data<float>();
  float* g = r.grad.data<float>();
  int64_t n = pred.numel();
  double total = 0;
  float k = 2.0f * scale / static_cast<float>(n);
  for (int64_t i = 0; i < n; ++i) {
    float d = p[i] - t[i];
    total += static_cast<double>(d) * d;
    g[i] = k * d;
  }
  r.loss = total / static_cast<double>(n);
  return r;
}

LossResult scalar_loss(Backend& be, const Tensor& out, float scale) {
  if (!is_f32(out) || out.numel() != 1) throw_bad_input("loss", fmt::format("a scalar float32 output is needed, got {}", out.str()));
  LossResult r;
  r.loss = out.data<float>()[0];
  r.grad = be.empty(DType::F32, out.shape());
  r.grad.data<float>()[0] = scale;
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
