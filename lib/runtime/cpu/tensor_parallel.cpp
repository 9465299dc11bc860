// Kernels of the nodes graph/tensor_parallel.hpp inserts: Megatron's f (TpCopy) and g
// (TpAllReduce), which reduce over the stage's tensor-parallel group (ExecContext::collectives),
// and the gather of a vocabulary-split embedding (TpVocabGather).
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <fmt/format.h>

namespace smp::runtime::cpu {

namespace {

Collectives& group(ExecContext& ctx, const KernelState& s) {
  if (!ctx.collectives)
    throw_failure("node " + s.node_name, "a tensor-parallel collective, but the stage runs without its group");
  return *ctx.collectives;
}

void require_f32(const NodeView& n) {
  if (n.num_inputs() != 1 || n.num_outputs() != 1) n.fail("needs 1 input and 1 output");
  n.require_dtype(n.input(0), {DType::F32}, "input");
  if (n.input(0).shape != n.output(0).shape) n.fail("input and output shapes differ");
}

}  // namespace

// ---- TpCopy: identity forward; the gradient summed over the group ------------------------------

std::unique_ptr<KernelState> prep_tp_copy(const NodeView& n) {
  require_f32(n);
  return std::make_unique<KernelState>();
}

void fwd_tp_copy(const KernelState& s, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  out[0] = in[0].view(s.out_shapes[0]);
}

void bwd_tp_copy(const KernelState& s, ExecContext& ctx, const GradIO& io) {
  if (!io.din[0].defined()) return;
  Collectives& c = group(ctx, s);
  // Every rank reduces, even one whose gradient is zero: the group calls it together.
  Tensor sum = scratch(ctx, DType::F32, s.in_shapes[0]);
  if (io.dout[0].defined()) ctx.backend->copy(sum, io.dout[0]);
  else ctx.backend->fill_zero(sum);
  c.all_reduce(sum.data<float>(), static_cast<size_t>(sum.numel()), ReduceOp::Sum);
  store(io.din[0].data<float>(), sum.data<float>(), sum.numel(), io.accumulate[0]);
}

// ---- TpAllReduce: the sum over the group forward; identity backward ----------------------------

std::unique_ptr<KernelState> prep_tp_allreduce(const NodeView& n) {
  require_f32(n);
  return std::make_unique<KernelState>();
}

void fwd_tp_allreduce(const KernelState& s, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  ctx.backend->copy(out[0], in[0]);
  group(ctx, s).all_reduce(out[0].data<float>(), static_cast<size_t>(out[0].numel()), ReduceOp::Sum);
}

void bwd_tp_allreduce(const KernelState&, ExecContext&, const GradIO& io) {
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  store(io.din[0].data<float>(), io.dout[0].data<float>(), io.dout[0].numel(), io.accumulate[0]);
}

// ---- TpVocabGather: rows [start, start + rows) of the table; zeros for other ids -----------------

namespace {
struct VocabGatherState : KernelState {
  int64_t start = 0, rows = 0, inner = 0, nidx = 0, vocab = 0;
};

// The ids as rows of the rank's part (Gather's negative ids count from the end of the whole
// table); out of [0, vocab): bad input, as Gather reports it.
std::vector<int64_t> local_rows(const VocabGatherState& s, const Tensor& ids) {
  auto idx = tensor_ints(ids);
  for (auto& i : idx) {
    if (i < -s.vocab || i >= s.vocab)
      throw_bad_input("node " + s.node_name + " (Gather)", fmt::format("index {} out of range [-{}, {})", i, s.vocab, s.vocab));
    if (i < 0) i += s.vocab;
    i -= s.start;
  }
  return idx;
}
}  // namespace

std::unique_ptr<KernelState> prep_tp_vocab_gather(const NodeView& n) {
  auto s = std::make_unique<VocabGatherState>();
  if (n.num_inputs() != 2 || n.num_outputs() != 1) n.fail("needs a table and indices");
  n.require_dtype(n.input(0), {DType::F32}, "table");
  n.require_dtype(n.input(1), {DType::I64, DType::I32}, "indices");
  const Shape& t = n.input(0).shape;
  if (t.size() != 2) n.fail("the table must be 2-D");
  s->start = n.node().attr_int("start", 0);
  s->rows = t[0];
  s->vocab = n.node().attr_int("vocab", t[0]);
  if (s->start < 0 || s->start + s->rows > s->vocab) n.fail("its rows lie outside the vocabulary");
  s->inner = t[1];
  s->nidx = n.input(1).numel();
  if (n.output(0).numel() != s->nidx * s->inner) n.fail("output shape does not match");
  return s;
}

void fwd_tp_vocab_gather(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const VocabGatherState&>(st);
  auto idx = local_rows(s, in[1]);
  const float* X = in[0].data<float>();
  float* Y = out[0].data<float>();
  const int64_t D = s.inner;
  pfor(s.nidx, std::max<int64_t>(1, kGrain / std::max<int64_t>(D, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t i = idx[static_cast<size_t>(r)];
      if (i >= 0 && i < s.rows) std::memcpy(Y + r * D, X + i * D, static_cast<size_t>(D) * sizeof(float));
      else std::memset(Y + r * D, 0, static_cast<size_t>(D) * sizeof(float));
    }
  });
}

void bwd_tp_vocab_gather(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const VocabGatherState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: TpVocabGather backward needs the indices", s.node_name);
  auto idx = local_rows(s, io.in[1]);
  float* dX = io.din[0].data<float>();
  const float* dY = io.dout[0].data<float>();
  if (!io.accumulate[0]) std::memset(dX, 0, static_cast<size_t>(io.din[0].numel()) * sizeof(float));
  const int64_t D = s.inner;
  pfor(D, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t j = 0; j < s.nidx; ++j) {
      const int64_t i = idx[static_cast<size_t>(j)];
      if (i < 0 || i >= s.rows) continue;
      float* d = dX + i * D;
      const float* g = dY + j * D;
#pragma omp simd
      for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
    }
  });
}

}  // namespace smp::runtime::cpu
