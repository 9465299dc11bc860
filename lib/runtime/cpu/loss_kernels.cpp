// SoftmaxCrossEntropyLoss: scores [N, C] or [N, C, D1, ...] (classes on axis 1), integer labels
// [N] or [N, D1, ...], optional class weights [C]; reduction mean / sum / none; ignore_index;
// optional log_prob output. NegativeLogLikelihoodLoss: the same over log-probabilities.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <fmt/format.h>

#include <cmath>

namespace smp::runtime::cpu {

namespace {
// log-sum-exp over the classes of position (n, d)
inline float lse_at(const float* x, int64_t C, int64_t D) {
  float m = -INFINITY;
  for (int64_t c = 0; c < C; ++c) m = std::max(m, x[c * D]);
  float s = 0;
  for (int64_t c = 0; c < C; ++c) s += std::exp(x[c * D] - m);
  return std::log(s) + m;
}

// per-position weight (0 for ignored labels); checks the label range
float pos_weight(const SceState& s, int64_t y, const float* W) {
  if (s.has_ignore && y == s.ignore) return 0.0f;
  if (y < 0 || y >= s.classes)
    throw_bad_input(fmt::format("node {} ({})", s.node_name, s.op), fmt::format("label {} out of range [0, {})", y, s.classes));
  return W ? W[y] : 1.0f;
}

// The reduced loss from the positions' summed losses and weights (reduction none wrote each
// position's already): sum, or mean over the weights of the positions not ignored.
void reduce_loss(const SceState& s, float* L, double total, double wsum) {
  if (s.red == SceState::Red::Sum) L[0] = static_cast<float>(total);
  if (s.red == SceState::Red::Mean) L[0] = static_cast<float>(wsum == 0 ? 0.0 : total / wsum);
}

// d total / d (the loss at position i), from the loss output's gradient dL (null: none reaches
// it): per position for reduction none, dL[0] for sum, dL[0] over the summed weights for mean.
struct LossGrad {
  const SceState& s;
  const float* dL;
  double wsum = 0;
  LossGrad(const SceState& st, const float* dl, const std::vector<int64_t>& Y, const float* W) : s(st), dL(dl) {
    if (dL && s.red == SceState::Red::Mean)
      for (int64_t i = 0; i < s.N * s.D; ++i) wsum += pos_weight(s, Y[static_cast<size_t>(i)], W);
  }
  float at(int64_t i) const {
    if (!dL) return 0.0f;
    if (s.red == SceState::Red::None) return dL[i];
    if (s.red == SceState::Red::Sum) return dL[0];
    return wsum == 0 ? 0.0f : static_cast<float>(dL[0] / wsum);
  }
};

// The attributes and inputs SoftmaxCrossEntropyLoss and NegativeLogLikelihoodLoss share.
std::unique_ptr<SceState> prep_class_loss(const NodeView& n, const char* op) {
  auto s = std::make_unique<SceState>();
  s->op = op;
  n.require_dtype(n.input(0), {DType::F32}, "scores");
  n.require_dtype(n.input(1), {DType::I64, DType::I32}, "labels");
  const Shape &x = n.input(0).shape, &y = n.input(1).shape;
  if (x.size() < 2 || y.size() != x.size() - 1 || y[0] != x[0]) n.fail("scores must be [N, C, ...] and labels [N, ...]");
  for (size_t i = 1; i < y.size(); ++i)
    if (y[i] != x[i + 1]) n.fail("labels' shape does not match the scores'");
  s->N = x[0];
  s->C = x[1];
  s->classes = x[1];
  s->D = prod(x, 2, x.size());
  std::string r = n.node().attr_string("reduction", "mean");
  if (r == "mean") s->red = SceState::Red::Mean;
  else if (r == "sum") s->red = SceState::Red::Sum;
  else if (r == "none") s->red = SceState::Red::None;
  else n.fail(fmt::format("reduction '{}' not supported (mean, sum, none)", r));
  if (n.node().has_attr("ignore_index")) {
    s->has_ignore = true;
    s->ignore = n.node().attr_int("ignore_index", 0);
  }
  if (n.has_input(2)) {
    n.require_dtype(n.input(2), {DType::F32}, "weights");
    if (n.input(2).shape != Shape{s->C}) n.fail("weights must be [C]");
    s->has_weights = true;
  }
  return s;
}
}  // namespace

std::unique_ptr<KernelState> prep_sce_loss(const NodeView& n) {
  auto s = prep_class_loss(n, "SoftmaxCrossEntropyLoss");
  if (n.has_output(1)) n.require_dtype(n.output(1), {DType::F32}, "log_prob");
  return s;
}

void fwd_sce_loss(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const SceState&>(st);
  const float* X = in[0].data<float>();
  auto Y = tensor_ints(in[1]);
  const float* W = s.has_weights ? in[2].data<float>() : nullptr;
  float* L = out[0].data<float>();
  float* LP = out.size() > 1 && out[1].defined() ? out[1].data<float>() : nullptr;
  double total = 0, wsum = 0;
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      const float* x = X + n * s.C * s.D + d;
      float lse = lse_at(x, s.C, s.D);
      if (LP)
        for (int64_t c = 0; c < s.C; ++c) LP[n * s.C * s.D + c * s.D + d] = x[c * s.D] - lse;
      int64_t y = Y[static_cast<size_t>(n * s.D + d)];
      float w = pos_weight(s, y, W);
      float l = w == 0 ? 0.0f : -(x[y * s.D] - lse) * w;
      if (s.red == SceState::Red::None) L[n * s.D + d] = l;
      total += l;
      wsum += w;
    }
  reduce_loss(s, L, total, wsum);
}

void bwd_sce_loss(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const SceState&>(st);
  if (!io.din[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: backward needs scores and labels", s.node_name);
  const float* X = io.in[0].data<float>();
  auto Y = tensor_ints(io.in[1]);
  const float* W = s.has_weights ? io.in[2].data<float>() : nullptr;
  const float* dL = io.dout[0].defined() ? io.dout[0].data<float>() : nullptr;
  const float* dLP = io.dout.size() > 1 && io.dout[1].defined() ? io.dout[1].data<float>() : nullptr;
  float* dX = io.din[0].data<float>();
  bool acc = io.accumulate[0];
  const LossGrad lg(s, dL, Y, W);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      const float* x = X + n * s.C * s.D + d;
      float* dx = dX + n * s.C * s.D + d;
      float lse = lse_at(x, s.C, s.D);
      int64_t y = Y[static_cast<size_t>(n * s.D + d)];
      float w = pos_weight(s, y, W);
      const float g = lg.at(n * s.D + d);
      float lp_sum = 0;
      if (dLP)
        for (int64_t c = 0; c < s.C; ++c) lp_sum += dLP[n * s.C * s.D + c * s.D + d];
      for (int64_t c = 0; c < s.C; ++c) {
        float p = std::exp(x[c * s.D] - lse);
        float v = g * w * (p - (c == y ? 1.0f : 0.0f));
        if (dLP) v += dLP[n * s.C * s.D + c * s.D + d] - p * lp_sum;
        dx[c * s.D] = acc ? dx[c * s.D] + v : v;
      }
    }
}

// ---- NegativeLogLikelihoodLoss: the scores are log-probabilities [N, C, ...] ------------------
// loss(n, d) = -x[n, y, d] · w[y] (0 where the label is ignore_index); mean divides the sum by
// the summed weights of the positions not ignored (ONNX, PyTorch's nll_loss).

std::unique_ptr<KernelState> prep_nll_loss(const NodeView& n) { return prep_class_loss(n, "NegativeLogLikelihoodLoss"); }

void fwd_nll_loss(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const SceState&>(st);
  const float* X = in[0].data<float>();
  auto Y = tensor_ints(in[1]);
  const float* W = s.has_weights ? in[2].data<float>() : nullptr;
  float* L = out[0].data<float>();
  double total = 0, wsum = 0;
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      int64_t y = Y[static_cast<size_t>(n * s.D + d)];
      float w = pos_weight(s, y, W);
      float l = w == 0 ? 0.0f : -X[(n * s.C + y) * s.D + d] * w;
      if (s.red == SceState::Red::None) L[n * s.D + d] = l;
      total += l;
      wsum += w;
    }
  reduce_loss(s, L, total, wsum);
}

void bwd_nll_loss(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const SceState&>(st);
  if (!io.din[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: backward needs the labels", s.node_name);
  auto Y = tensor_ints(io.in[1]);
  const float* W = s.has_weights ? io.in[2].data<float>() : nullptr;
  const float* dL = io.dout[0].defined() ? io.dout[0].data<float>() : nullptr;
  float* dX = io.din[0].data<float>();
  if (!io.accumulate[0]) std::fill(dX, dX + s.N * s.C * s.D, 0.0f);
  if (!dL) return;
  const LossGrad lg(s, dL, Y, W);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      int64_t y = Y[static_cast<size_t>(n * s.D + d)];
      float w = pos_weight(s, y, W);
      if (w == 0) continue;
      dX[(n * s.C + y) * s.D + d] -= lg.at(n * s.D + d) * w;
    }
}

// ---- TpSoftmaxCrossEntropyLoss: the scores split by class over a tensor-parallel group ---------
//
// Megatron's vocabulary-parallel cross-entropy in place of SoftmaxCrossEntropyLoss: per position,
// the maximum over the whole classes, then the sum of exponentials and the target's score, each
// reduced over the group. Every rank gets the whole loss; the gradient is of its classes. The
// backward reduces the same two again (the kernel state is shared by the microbatches).

namespace {

// Per position: mx = the maximum over all classes, sum = the sum of exp(x - mx), target = the
// label's score (0 where ignored).
struct SplitRows {
  std::vector<float> mx, sum, target;
};

SplitRows split_rows(const SceState& s, ExecContext& ctx, const float* X, const std::vector<int64_t>& Y) {
  if (!ctx.collectives)
    throw_failure("node " + s.node_name, "a tensor-parallel collective, but the stage runs without its group");
  const int64_t P = s.N * s.D;
  SplitRows r;
  r.mx.assign(static_cast<size_t>(P), -INFINITY);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      const float* x = X + n * s.C * s.D + d;
      float& m = r.mx[static_cast<size_t>(n * s.D + d)];
      for (int64_t c = 0; c < s.C; ++c) m = std::max(m, x[c * s.D]);
    }
  ctx.collectives->all_reduce(r.mx.data(), r.mx.size(), ReduceOp::Max);
  std::vector<float> both(2 * static_cast<size_t>(P), 0.0f);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      const int64_t i = n * s.D + d;
      const float* x = X + n * s.C * s.D + d;
      const float m = r.mx[static_cast<size_t>(i)];
      float sum = 0;
      for (int64_t c = 0; c < s.C; ++c) sum += std::exp(x[c * s.D] - m);
      both[static_cast<size_t>(i)] = sum;
      const int64_t y = Y[static_cast<size_t>(i)] - s.start;
      if (y >= 0 && y < s.C) both[static_cast<size_t>(P + i)] = x[y * s.D];
    }
  ctx.collectives->all_reduce(both.data(), both.size(), ReduceOp::Sum);
  r.sum.assign(both.begin(), both.begin() + P);
  r.target.assign(both.begin() + P, both.end());
  return r;
}

}  // namespace

std::unique_ptr<KernelState> prep_tp_sce_loss(const NodeView& n) {
  if (n.has_input(2)) n.fail("class weights are not supported with split classes");
  if (n.has_output(1)) n.fail("the log-probability output is not supported with split classes");
  auto base = prep_sce_loss(n);
  auto* s = static_cast<SceState*>(base.get());
  s->start = n.node().attr_int("start", 0);
  s->classes = n.node().attr_int("classes", s->C);
  if (s->start < 0 || s->start + s->C > s->classes) n.fail("its classes lie outside the whole");
  return base;
}

void fwd_tp_sce_loss(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const SceState&>(st);
  auto Y = tensor_ints(in[1]);
  const SplitRows r = split_rows(s, ctx, in[0].data<float>(), Y);
  float* L = out[0].data<float>();
  double total = 0, wsum = 0;
  for (int64_t i = 0; i < s.N * s.D; ++i) {
    const float w = pos_weight(s, Y[static_cast<size_t>(i)], nullptr);
    const float lse = std::log(r.sum[static_cast<size_t>(i)]) + r.mx[static_cast<size_t>(i)];
    const float l = w == 0 ? 0.0f : -(r.target[static_cast<size_t>(i)] - lse) * w;
    if (s.red == SceState::Red::None) L[i] = l;
    total += l;
    wsum += w;
  }
  reduce_loss(s, L, total, wsum);
}

void bwd_tp_sce_loss(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const SceState&>(st);
  if (!io.din[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: backward needs scores and labels", s.node_name);
  const float* X = io.in[0].data<float>();
  auto Y = tensor_ints(io.in[1]);
  const SplitRows r = split_rows(s, ctx, X, Y);
  const float* dL = io.dout[0].defined() ? io.dout[0].data<float>() : nullptr;
  float* dX = io.din[0].data<float>();
  const bool acc = io.accumulate[0];
  const LossGrad lg(s, dL, Y, nullptr);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      const int64_t i = n * s.D + d;
      const float* x = X + n * s.C * s.D + d;
      float* dx = dX + n * s.C * s.D + d;
      const int64_t y = Y[static_cast<size_t>(i)];
      const float w = pos_weight(s, y, nullptr);
      const float g = lg.at(i);
      const float m = r.mx[static_cast<size_t>(i)], inv = 1.0f / r.sum[static_cast<size_t>(i)];
      for (int64_t c = 0; c < s.C; ++c) {
        const float p = std::exp(x[c * s.D] - m) * inv;
        const float v = g * w * (p - (c + s.start == y ? 1.0f : 0.0f));
        dx[c * s.D] = acc ? dx[c * s.D] + v : v;
      }
    }
}

}  // namespace smp::runtime::cpu
