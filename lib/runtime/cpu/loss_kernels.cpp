// SoftmaxCrossEntropyLoss: scores [N, C] or [N, C, D1, ...] (classes on axis 1), integer labels
// [N] or [N, D1, ...], optional class weights [C]; reduction mean / sum / none; ignore_index;
// optional log_prob output.
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
  if (y < 0 || y >= s.C)
    throw_bad_input("node " + s.node_name + " (SoftmaxCrossEntropyLoss)", fmt::format("label {} out of range [0, {})", y, s.C));
  return W ? W[y] : 1.0f;
}
}  // namespace

std::unique_ptr<KernelState> prep_sce_loss(const NodeView& n) {
  auto s = std::make_unique<SceState>();
  n.require_dtype(n.input(0), {DType::F32}, "scores");
  n.require_dtype(n.input(1), {DType::I64, DType::I32}, "labels");
  const Shape &x = n.input(0).shape, &y = n.input(1).shape;
  if (x.size() < 2 || y.size() != x.size() - 1 || y[0] != x[0]) n.fail("scores must be [N, C, ...] and labels [N, ...]");
  for (size_t i = 1; i < y.size(); ++i)
    if (y[i] != x[i + 1]) n.fail("labels' shape does not match the scores'");
  s->N = x[0];
  s->C = x[1];
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
  if (s.red == SceState::Red::Sum) L[0] = static_cast<float>(total);
  if (s.red == SceState::Red::Mean) L[0] = static_cast<float>(wsum == 0 ? 0.0 : total / wsum);
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
  double wsum = 0;
  if (s.red == SceState::Red::Mean)
    for (int64_t i = 0; i < s.N * s.D; ++i) wsum += pos_weight(s, Y[static_cast<size_t>(i)], W);
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t d = 0; d < s.D; ++d) {
      const float* x = X + n * s.C * s.D + d;
      float* dx = dX + n * s.C * s.D + d;
      float lse = lse_at(x, s.C, s.D);
      int64_t y = Y[static_cast<size_t>(n * s.D + d)];
      float w = pos_weight(s, y, W);
      float g = 0;  // d total / d loss at this position
      if (dL) {
        if (s.red == SceState::Red::None) g = dL[n * s.D + d];
        else if (s.red == SceState::Red::Sum) g = dL[0];
        else g = wsum == 0 ? 0.0f : static_cast<float>(dL[0] / wsum);
      }
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

}  // namespace smp::runtime::cpu
