// The CUDA op kernels of the memory-bound ops: they read the CPU prepare step's state and queue
// the kernels of elementwise.cu, movement.cu, nn.cu and loss.cu, with the CPU kernels' exact
// semantics (which gradients accumulate, how broadcast axes are summed).
#include "runtime/cuda/ops.hpp"

#include <fmt/format.h>

#include <cstring>

namespace smp::runtime::cuda {

using graph::Op;

// ---- helpers -------------------------------------------------------------------------------

Tensor scratch_floats(ExecContext& ctx, int64_t n) { return ctx.backend->empty(DType::F32, {std::max<int64_t>(n, 1)}); }

const Tensor& as_dtype(ExecContext& ctx, const Tensor& t, DType dt, Tensor& holder) {
  if (t.dtype() == dt) return t;
  holder = ctx.backend->empty(dt, t.shape());
  ctx.backend->convert(holder, t);
  return holder;
}

void store(ExecContext& ctx, Tensor& dst, const Tensor& src, bool acc) {
  SMP_CHECK(dst.numel() == src.numel(), "store of {} into {}", src.str(), dst.str());
  axpby(dst.numel(), 1.0f, ptr(src), tag(src), ptr(dst), tag(dst), acc, stream(ctx));
}

void reduce_sum_to(ExecContext& ctx, Tensor& dst, const Shape& dst_shape, const Tensor& src, const Shape& src_shape, bool acc) {
  if (smp::numel(dst_shape) == smp::numel(src_shape)) {
    store(ctx, dst, src, acc);
    return;
  }
  CudaBackend& be = backend_of(ctx);
  ReduceGeom g = sum_to_geom(dst_shape, src_shape);
  const int64_t nf = reduce_scratch_floats(g, be.sm_count());
  Tensor part;
  if (nf > 0) part = scratch_floats(ctx, nf);
  reduce(static_cast<int>(Op::ReduceSum), g, ptr(dst), tag(dst), acc, ptr(src), tag(src),
         part.defined() ? static_cast<float*>(ptr(part)) : nullptr, be.sm_count(), be.stream());
}

namespace {

// The host copies of inputs whose values decide shapes or parameters at run time (Slice's
// starts, a reduction's axes, Trilu's k): the CPU helpers read them.
std::vector<Tensor> host_inputs(ExecContext& ctx, std::span<const Tensor> in, size_t from) {
  std::vector<Tensor> h(in.size());
  for (size_t i = from; i < in.size(); ++i)
    if (in[i].defined()) h[i] = backend_of(ctx).host_copy(in[i]);
  return h;
}

// A float32 value's bfloat16 bits, rounded to nearest even (NaN stays NaN).
uint16_t bf16_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

}  // namespace

// ---- binary, Where ---------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_binary(const NodeView& n) {
  auto s = cpu::prep_binary(n);
  if (n.has_input(0) && n.input(0).dtype == DType::F16)
    n.fail("float16 arithmetic has no CUDA kernel yet; run it with --backend cpu");
  if (n.op() == Op::Pow && n.num_inputs() == 2) {
    const DType a = n.input(0).dtype, b = n.input(1).dtype;
    if (a != b && !(a == DType::F32 && (b == DType::I64 || b == DType::I32)))
      n.fail(fmt::format("Pow of {} to a {} exponent has no CUDA kernel yet; run it with --backend cpu", dtype_name(a),
                         dtype_name(b)));
  }
  return s;
}

void fwd_binary(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::BinState&>(st);
  if (s.single) {
    ctx.backend->convert(out[0], in[0]);
    return;
  }
  binary(static_cast<int>(s.op), strided_from_bcast(s.plan), ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), ptr(in[1]), tag(in[1]),
         stream(ctx));
}

void bwd_binary(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::BinState&>(st);
  if (!io.dout[0].defined()) return;
  const Tensor& dy = io.dout[0];
  if (s.single) {
    if (io.din[0].defined()) store(ctx, io.din[0], dy, io.accumulate[0]);
    return;
  }
  auto need = [&](int i) -> const Tensor& {
    SMP_CHECK(io.in[static_cast<size_t>(i)].defined(), "node {}: backward needs input {} (not declared saved)", s.node_name, i);
    return io.in[static_cast<size_t>(i)];
  };
  const Shape& ys = s.out_shapes[0];
  for (int w = 0; w < 2; ++w) {
    Tensor& d = io.din[static_cast<size_t>(w)];
    if (!d.defined()) continue;
    const bool acc = io.accumulate[static_cast<size_t>(w)];
    const Shape& xs = s.in_shapes[static_cast<size_t>(w)];
    if (s.op == Op::Add || (s.op == Op::Sub && w == 0)) {
      reduce_sum_to(ctx, d, xs, dy, ys, acc);
      continue;
    }
    SMP_CHECK(s.op == Op::Sub || s.op == Op::Mul || s.op == Op::Div || s.op == Op::Pow || s.op == Op::Max || s.op == Op::Min,
              "node {}: no gradient", s.node_name);
    SMP_CHECK(s.op != Op::Pow || w == 0 || s.in_dtypes[1] == DType::F32 || s.in_dtypes[1] == DType::BF16, "integer exponent has no gradient");
    // The operands the rule reads (as the CPU's): Sub none, Mul / Div(w=0) the other, else both.
    const bool want_a = s.op == Op::Pow || s.op == Op::Max || s.op == Op::Min || (s.op == Op::Mul && w == 1) || (s.op == Op::Div && w == 1);
    const bool want_b = s.op == Op::Pow || s.op == Op::Max || s.op == Op::Min || (s.op == Op::Mul && w == 0) || s.op == Op::Div;
    const void* a = want_a ? ptr(need(0)) : nullptr;
    const void* b = want_b ? ptr(need(1)) : nullptr;
    const Tag at = want_a ? tag(io.in[0]) : kF32, bt = want_b ? tag(io.in[1]) : kF32;
    const Strided s3 = strided_from_bcast(s.plan3);
    if (smp::numel(xs) == smp::numel(ys)) {
      binary_grad(static_cast<int>(s.op), w, s3, ptr(d), tag(d), acc, ptr(dy), tag(dy), a, at, b, bt, stream(ctx));
    } else {
      Tensor t = scratch(ctx, DType::F32, ys);
      binary_grad(static_cast<int>(s.op), w, s3, ptr(t), kF32, false, ptr(dy), tag(dy), a, at, b, bt, stream(ctx));
      reduce_sum_to(ctx, d, xs, t, ys, acc);
    }
  }
}

void fwd_where(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::WhereState&>(st);
  where(strided_from_bcast(s.plan), ptr(out[0]), tag(out[0]), static_cast<const uint8_t*>(ptr(in[0])), ptr(in[1]), tag(in[1]), ptr(in[2]),
        tag(in[2]), stream(ctx));
}

void bwd_where(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::WhereState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined(), "node {}: Where backward needs the condition (not declared saved)", s.node_name);
  const Shape& ys = s.out_shapes[0];
  for (int w = 1; w <= 2; ++w) {
    Tensor& d = io.din[static_cast<size_t>(w)];
    if (!d.defined()) continue;
    Tensor t = scratch(ctx, DType::F32, ys);
    where_mask(strided_from_bcast(s.plan), static_cast<float*>(ptr(t)), static_cast<const uint8_t*>(ptr(io.in[0])), w == 1,
               ptr(io.dout[0]), tag(io.dout[0]), stream(ctx));
    reduce_sum_to(ctx, d, s.in_shapes[static_cast<size_t>(w)], t, ys, io.accumulate[static_cast<size_t>(w)]);
  }
}

// ---- unary, Clip, Cast, Identity, Dropout ----------------------------------------------------

void fwd_unary(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::UnState&>(st);
  unary(static_cast<int>(s.op), s.alpha, s.gelu_tanh, in[0].numel(), ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_unary(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::UnState&>(st);
  Tensor& d = io.din[0];
  if (!d.defined() || !io.dout[0].defined()) return;
  const void* v = nullptr;
  Tag vt = kF32;
  switch (s.op) {
    case Op::Neg: break;
    case Op::Sqrt: case Op::Reciprocal: case Op::Exp: case Op::Relu: case Op::Tanh: case Op::Sigmoid:
      SMP_CHECK(io.out[0].defined(), "node {}: backward needs the output (not declared saved)", s.node_name);
      v = ptr(io.out[0]);
      vt = tag(io.out[0]);
      break;
    case Op::Abs: case Op::Log: case Op::LeakyRelu: case Op::Erf: case Op::Gelu: case Op::Sin: case Op::Cos:
      SMP_CHECK(io.in[0].defined(), "node {}: backward needs the input (not declared saved)", s.node_name);
      v = ptr(io.in[0]);
      vt = tag(io.in[0]);
      break;
    default: SMP_CHECK(false, "node {}: no gradient", s.node_name);
  }
  unary_grad(static_cast<int>(s.op), s.alpha, s.gelu_tanh, d.numel(), ptr(d), tag(d), io.accumulate[0], ptr(io.dout[0]),
             tag(io.dout[0]), v, vt, stream(ctx));
}

namespace {
void clip_args(const cpu::ClipState& s, std::span<const Tensor> in, float& lo, float& hi, const void*& lo_p, Tag& lot, const void*& hi_p,
               Tag& hit) {
  lo = s.has_min_attr ? s.min_attr : -INFINITY;
  hi = s.has_max_attr ? s.max_attr : INFINITY;
  lo_p = in.size() > 1 && in[1].defined() ? ptr(in[1]) : nullptr;
  hi_p = in.size() > 2 && in[2].defined() ? ptr(in[2]) : nullptr;
  lot = lo_p ? tag(in[1]) : kF32;
  hit = hi_p ? tag(in[2]) : kF32;
}
}  // namespace

std::unique_ptr<KernelState> prep_cast(const NodeView& n) {
  auto s = cpu::prep_cast(n);
  const DType to = static_cast<const cpu::CastState&>(*s).to;
  if (n.input(0).dtype == DType::F16 || to == DType::F16)
    n.fail(fmt::format("cast from {} to {} has no CUDA kernel yet; run it with --backend cpu", dtype_name(n.input(0).dtype),
                       dtype_name(to)));
  return s;
}

std::unique_ptr<KernelState> prep_reduce(const NodeView& n) {
  auto s = cpu::prep_reduce(n);
  if (n.input(0).dtype == DType::F64) n.fail("float64 reductions have no CUDA kernel yet; run it with --backend cpu");
  return s;
}

std::unique_ptr<KernelState> prep_clip(const NodeView& n) {
  auto s = cpu::prep_clip(n);
  if (n.input(0).dtype != DType::F32)
    n.fail(fmt::format("Clip of {} has no CUDA kernel yet; run it with --backend cpu", dtype_name(n.input(0).dtype)));
  return s;
}

void fwd_clip(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  float lo, hi;
  const void *lo_p, *hi_p;
  Tag lot, hit;
  clip_args(static_cast<const cpu::ClipState&>(st), in, lo, hi, lo_p, lot, hi_p, hit);
  clip(in[0].numel(), ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), lo, hi, lo_p, lot, hi_p, hit, stream(ctx));
}

void bwd_clip(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::ClipState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined(), "node {}: Clip backward needs its input", s.node_name);
  float lo, hi;
  const void *lo_p, *hi_p;
  Tag lot, hit;
  clip_args(s, io.in, lo, hi, lo_p, lot, hi_p, hit);
  clip_grad(io.din[0].numel(), ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], ptr(io.dout[0]), tag(io.dout[0]), ptr(io.in[0]),
            tag(io.in[0]), lo, hi, lo_p, lot, hi_p, hit, stream(ctx));
}

void fwd_cast(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::CastState&>(st);
  convert(in[0].numel(), ptr(out[0]), tag(out[0]), s.to == DType::Bool, ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_cast(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::CastState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(is_float_tag(tag(io.din[0])) && s.to == DType::F32, "node {}: gradient through a non-float Cast", s.node_name);
  store(ctx, io.din[0], io.dout[0], io.accumulate[0]);
}

void fwd_identity(const KernelState& s, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  out[0] = in[0].view(s.out_shapes[0]);
}

void bwd_identity(const KernelState&, ExecContext& ctx, const GradIO& io) {
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  store(ctx, io.din[0], io.dout[0], io.accumulate[0]);
}

std::unique_ptr<KernelState> prep_dropout(const NodeView& n) {
  auto s = cpu::prep_dropout(n);
  if (static_cast<const cpu::DropoutState&>(*s).random)
    n.fail("random dropout (training_mode with ratio > 0) has no CUDA kernel yet; run it with --backend cpu");
  return s;
}

void fwd_dropout(const KernelState& s, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  out[0] = in[0].view(s.out_shapes[0]);
  if (out.size() > 1 && s.out_dtypes.size() > 1 && s.out_dtypes[1] == DType::Bool) {
    out[1] = ctx.backend->empty(DType::Bool, s.out_shapes[1]);
    SMP_CUDA_CHECK(cudaMemsetAsync(ptr(out[1]), 1, static_cast<size_t>(out[1].bytes()), stream(ctx)));
  }
}

void bwd_dropout(const KernelState& s, ExecContext& ctx, const GradIO& io) { bwd_identity(s, ctx, io); }

// ---- normalisation, reductions ---------------------------------------------------------------

void fwd_softmax(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::SoftmaxState&>(st);
  softmax(s.log, s.outer, s.D, s.inner, ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_softmax(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::SoftmaxState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.out[0].defined(), "node {}: softmax backward needs its output (not declared saved)", s.node_name);
  softmax_grad(s.log, s.outer, s.D, s.inner, ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], ptr(io.out[0]), tag(io.out[0]),
               ptr(io.dout[0]), tag(io.dout[0]), stream(ctx));
}

void fwd_layernorm(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::LayerNormState&>(st);
  Tensor* mo = out.size() > 1 && out[1].defined() ? &out[1] : nullptr;
  Tensor* ro = out.size() > 2 && out[2].defined() ? &out[2] : nullptr;
  layernorm(s.rows, s.D, s.eps, ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), ptr(in[1]), tag(in[1]),
            s.has_bias ? ptr(in[2]) : nullptr, s.has_bias ? tag(in[2]) : kF32, mo ? ptr(*mo) : nullptr, mo ? tag(*mo) : kF32,
            ro ? ptr(*ro) : nullptr, ro ? tag(*ro) : kF32, stream(ctx));
}

void bwd_layernorm(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::LayerNormState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: LayerNormalization backward needs X and scale", s.node_name);
  Tensor* dx = io.din[0].defined() ? &io.din[0] : nullptr;
  Tensor* dg = io.din[1].defined() ? &io.din[1] : nullptr;
  Tensor* db = io.din.size() > 2 && io.din[2].defined() ? &io.din[2] : nullptr;
  Tensor part = scratch_floats(ctx, layernorm_grad_scratch_floats(s.rows, s.D));
  layernorm_grad(s.rows, s.D, s.eps, ptr(io.in[0]), tag(io.in[0]), ptr(io.in[1]), tag(io.in[1]), ptr(io.dout[0]), tag(io.dout[0]),
                 dx ? ptr(*dx) : nullptr, dx ? tag(*dx) : kF32, dx && io.accumulate[0], dg ? ptr(*dg) : nullptr, dg ? tag(*dg) : kF32,
                 dg && io.accumulate[1], db ? ptr(*db) : nullptr, db ? tag(*db) : kF32, db && io.accumulate[2],
                 static_cast<float*>(ptr(part)), stream(ctx));
}

std::unique_ptr<KernelState> prep_batchnorm(const NodeView& n) {
  auto s = cpu::prep_batchnorm(n);
  if (static_cast<const cpu::BatchNormState&>(*s).stats_out)
    n.fail("the running-statistics outputs (training_mode = 1) have no CUDA kernel yet; run it with --backend cpu");
  return s;
}

void fwd_batchnorm(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::BatchNormState&>(st);
  CudaBackend& be = backend_of(ctx);
  Tensor stats = scratch_floats(ctx, batchnorm_scratch_floats(s.N, s.C, s.HW, be.sm_count()));
  batchnorm(s.N, s.C, s.HW, s.eps, s.batch_stats, ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), ptr(in[1]), tag(in[1]), ptr(in[2]),
            tag(in[2]), ptr(in[3]), tag(in[3]), ptr(in[4]), tag(in[4]), static_cast<float*>(ptr(stats)), be.sm_count(), be.stream());
}

void bwd_batchnorm(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::BatchNormState&>(st);
  if (!io.dout[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: BatchNormalization backward needs X and scale", s.node_name);
  if (!s.batch_stats)
    SMP_CHECK(io.in[3].defined() && io.in[4].defined(), "node {}: BatchNormalization backward needs mean and var", s.node_name);
  CudaBackend& be = backend_of(ctx);
  Tensor stats = scratch_floats(ctx, batchnorm_scratch_floats(s.N, s.C, s.HW, be.sm_count()));
  Tensor* dx = io.din[0].defined() ? &io.din[0] : nullptr;
  Tensor* dg = io.din[1].defined() ? &io.din[1] : nullptr;
  Tensor* db = io.din[2].defined() ? &io.din[2] : nullptr;
  const void* mean = s.batch_stats ? nullptr : ptr(io.in[3]);
  const void* var = s.batch_stats ? nullptr : ptr(io.in[4]);
  batchnorm_grad(s.N, s.C, s.HW, s.eps, s.batch_stats, ptr(io.in[0]), tag(io.in[0]), ptr(io.in[1]), tag(io.in[1]), mean,
                 s.batch_stats ? kF32 : tag(io.in[3]), var, s.batch_stats ? kF32 : tag(io.in[4]), ptr(io.dout[0]), tag(io.dout[0]),
                 dx ? ptr(*dx) : nullptr, dx ? tag(*dx) : kF32, dx && io.accumulate[0], dg ? ptr(*dg) : nullptr, dg ? tag(*dg) : kF32,
                 dg && io.accumulate[1], db ? ptr(*db) : nullptr, db ? tag(*db) : kF32, db && io.accumulate[2],
                 static_cast<float*>(ptr(stats)), be.sm_count(), be.stream());
}

namespace {
std::vector<int64_t> reduce_axes(const cpu::ReduceState& s, ExecContext& ctx, std::span<const Tensor> in) {
  if (s.axes_known) return s.axes;
  auto h = host_inputs(ctx, in, 1);
  return cpu::resolve_axes(s, h);
}
}  // namespace

void fwd_reduce(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::ReduceState&>(st);
  CudaBackend& be = backend_of(ctx);
  ReduceGeom g = reduce_geom(cpu::rgeom(s.in_shapes[0], reduce_axes(s, ctx, in)));
  const int64_t nf = reduce_scratch_floats(g, be.sm_count());
  Tensor part;
  if (nf > 0) part = scratch_floats(ctx, nf);
  reduce(static_cast<int>(s.op), g, ptr(out[0]), tag(out[0]), false, ptr(in[0]), tag(in[0]),
         part.defined() ? static_cast<float*>(ptr(part)) : nullptr, be.sm_count(), be.stream());
}

void bwd_reduce(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::ReduceState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  const cpu::RGeom rg = cpu::rgeom(s.in_shapes[0], reduce_axes(s, ctx, io.in));
  const Shape& xs = s.in_shapes[0];
  Tensor& dx = io.din[0];
  const bool acc = io.accumulate[0];
  if (s.op == Op::ReduceProd) {
    SMP_CHECK(io.in[0].defined(), "node {}: ReduceProd backward needs its input", s.node_name);
    reduce_prod_grad(reduce_geom(rg), ptr(dx), tag(dx), acc, ptr(io.dout[0]), tag(io.dout[0]), ptr(io.in[0]), tag(io.in[0]), stream(ctx));
    return;
  }
  const Strided sb = strided_from_bcast(cpu::make_bcast(xs, {rg.kshape}));
  if (s.op == Op::ReduceSum || s.op == Op::ReduceMean) {
    const float k = s.op == Op::ReduceMean ? 1.0f / static_cast<float>(rg.rcount) : 1.0f;
    reduce_grad(static_cast<int>(s.op), sb, k, ptr(dx), tag(dx), acc, ptr(io.dout[0]), tag(io.dout[0]), nullptr, kF32, nullptr, kF32,
                stream(ctx));
  } else {
    SMP_CHECK(io.in[0].defined() && io.out[0].defined(), "node {}: backward needs input and output", s.node_name);
    reduce_grad(static_cast<int>(s.op), sb, 1.0f, ptr(dx), tag(dx), acc, ptr(io.dout[0]), tag(io.dout[0]), ptr(io.in[0]), tag(io.in[0]),
                ptr(io.out[0]), tag(io.out[0]), stream(ctx));
  }
}

void fwd_argmax(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::ArgMaxState&>(st);
  argmax(s.outer, s.D, s.inner, s.last, static_cast<int64_t*>(ptr(out[0])), ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_argmax(const KernelState&, ExecContext&, const GradIO&) {}

// ---- data movement ---------------------------------------------------------------------------

void fwd_reshape(const KernelState& s, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  out[0] = in[0].view(s.out_shapes[0]);
}

void bwd_reshape(const KernelState&, ExecContext& ctx, const GradIO& io) {
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  store(ctx, io.din[0], io.dout[0], io.accumulate[0]);
}

void fwd_transpose(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::TransposeState&>(st);
  gather_copy(strided_gather(s.out_shapes[0], s.src_st, 0), ptr(out[0]), tag(out[0]), false, ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_transpose(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::TransposeState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  gather_copy(strided_gather(s.in_shapes[0], s.dst_st, 0), ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], ptr(io.dout[0]),
              tag(io.dout[0]), stream(ctx));
}

namespace {
// Part p of a concatenation: [outer, sizes[p] * inner] inside the whole [outer, total * inner].
Strided concat_part(const cpu::ConcatState& s, size_t p) {
  int64_t off = 0;
  for (size_t q = 0; q < p; ++q) off += s.sizes[q] * s.inner;
  const int64_t chunk = s.sizes[p] * s.inner;
  return strided_gather({s.outer, chunk}, {s.total * s.inner, 1}, off);
}
}  // namespace

void fwd_concat(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::ConcatState&>(st);
  for (size_t p = 0; p < in.size(); ++p)
    scatter_copy(concat_part(s, p), ptr(out[0]), tag(out[0]), false, ptr(in[p]), tag(in[p]), stream(ctx));
}

void bwd_concat(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::ConcatState&>(st);
  if (!io.dout[0].defined()) return;
  for (size_t p = 0; p < io.din.size(); ++p)
    if (io.din[p].defined())
      gather_copy(concat_part(s, p), ptr(io.din[p]), tag(io.din[p]), io.accumulate[p], ptr(io.dout[0]), tag(io.dout[0]), stream(ctx));
}

void fwd_split(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::ConcatState&>(st);
  for (size_t p = 0; p < out.size(); ++p)
    if (out[p].defined()) gather_copy(concat_part(s, p), ptr(out[p]), tag(out[p]), false, ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_split(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::ConcatState&>(st);
  if (!io.din[0].defined()) return;
  Tensor& d = io.din[0];
  const bool acc = io.accumulate[0];
  for (size_t p = 0; p < io.dout.size(); ++p) {
    if (io.dout[p].defined()) scatter_copy(concat_part(s, p), ptr(d), tag(d), acc, ptr(io.dout[p]), tag(io.dout[p]), stream(ctx));
    else if (!acc) scatter_copy(concat_part(s, p), ptr(d), tag(d), false, nullptr, kF32, stream(ctx));  // zeros
  }
}

namespace {
void slice_params(const cpu::SliceState& s, ExecContext& ctx, std::span<const Tensor> in, int64_t& base, std::vector<int64_t>& sst) {
  if (s.known) {
    base = s.base;
    sst = s.sst;
    return;
  }
  auto h = host_inputs(ctx, in, 1);
  cpu::slice_runtime(s, h, base, sst);
}
}  // namespace

void fwd_slice(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::SliceState&>(st);
  int64_t base;
  std::vector<int64_t> sst;
  slice_params(s, ctx, in, base, sst);
  gather_copy(strided_gather(s.out_shapes[0], sst, base), ptr(out[0]), tag(out[0]), false, ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_slice(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::SliceState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  int64_t base;
  std::vector<int64_t> sst;
  slice_params(s, ctx, io.in, base, sst);
  if (!io.accumulate[0]) ctx.backend->fill_zero(io.din[0]);
  scatter_copy(strided_gather(s.out_shapes[0], sst, base), ptr(io.din[0]), tag(io.din[0]), true, ptr(io.dout[0]), tag(io.dout[0]),
               stream(ctx));
}

void fwd_gather(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::GatherState&>(st);
  CudaBackend& be = backend_of(ctx);
  gather_rows(ptr(out[0]), tag(out[0]), ptr(in[0]), tag(in[0]), ptr(in[1]), tag(in[1]), s.outer, s.D, s.nidx, s.inner, be.device_error(),
              be.site(s.node_name + " (Gather)"), be.stream());
}

void bwd_gather(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::GatherState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: Gather backward needs the indices (not declared saved)", s.node_name);
  CudaBackend& be = backend_of(ctx);
  gather_rows_grad(ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], ptr(io.dout[0]), tag(io.dout[0]), ptr(io.in[1]), tag(io.in[1]),
                   s.outer, s.D, s.nidx, s.inner, be.sm_count(), be.stream());
}

void fwd_expand(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::ExpandState&>(st);
  gather_copy(strided_gather(s.shape, s.sst, 0), ptr(out[0]), tag(out[0]), false, ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_expand(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::ExpandState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  reduce_sum_to(ctx, io.din[0], s.red_dst, io.dout[0], s.red_src, io.accumulate[0]);
}

void fwd_tile(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) { fwd_expand(st, ctx, out, in); }
void bwd_tile(const KernelState& st, ExecContext& ctx, const GradIO& io) { bwd_expand(st, ctx, io); }

namespace {
int64_t trilu_k_of(const cpu::TriluState& s, ExecContext& ctx, std::span<const Tensor> in) {
  if (s.k_known) return s.k;
  auto h = host_inputs(ctx, in, 1);
  return cpu::trilu_k(s, h);
}
}  // namespace

void fwd_trilu(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::TriluState&>(st);
  trilu(s.mats, s.N, s.M, trilu_k_of(s, ctx, in), s.upper, ptr(out[0]), tag(out[0]), false, ptr(in[0]), tag(in[0]), stream(ctx));
}

void bwd_trilu(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::TriluState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  trilu(s.mats, s.N, s.M, trilu_k_of(s, ctx, io.in), s.upper, ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], ptr(io.dout[0]),
        tag(io.dout[0]), stream(ctx));
}

// ---- shape-only producers: values known on the host ---------------------------------------------

void fwd_shape(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const cpu::ShapeState&>(st);
  if (!s.values.empty())
    SMP_CUDA_CHECK(cudaMemcpyAsync(ptr(out[0]), s.values.data(), s.values.size() * sizeof(int64_t), cudaMemcpyHostToDevice, stream(ctx)));
}
void bwd_shape(const KernelState&, ExecContext&, const GradIO&) {}

void fwd_size(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) { fwd_shape(st, ctx, out, in); }
void bwd_size(const KernelState&, ExecContext&, const GradIO&) {}

void fwd_constant(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const cpu::ConstState&>(st);
  if (s.bytes.empty()) return;
  if (static_cast<int64_t>(s.bytes.size()) == out[0].bytes()) {
    SMP_CUDA_CHECK(cudaMemcpyAsync(ptr(out[0]), s.bytes.data(), s.bytes.size(), cudaMemcpyHostToDevice, stream(ctx)));
    return;
  }
  // A float32 constant stored as a bf16 activation (bf16 compute)
  SMP_CHECK(out[0].dtype() == DType::BF16 && static_cast<int64_t>(s.bytes.size()) == out[0].numel() * 4, "node {}: constant of {} bytes for {}",
            s.node_name, s.bytes.size(), out[0].str());
  Tensor f = ctx.backend->from_host(DType::F32, out[0].shape(), s.bytes.data());
  ctx.backend->convert(out[0], f);
}
void bwd_constant(const KernelState&, ExecContext&, const GradIO&) {}

void fwd_constant_of_shape(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const cpu::ConstState&>(st);
  const int64_t es = dtype_size(out[0].dtype());
  if (es == static_cast<int64_t>(s.bytes.size())) {
    fill_pattern(ptr(out[0]), out[0].numel(), es, s.bytes.data(), stream(ctx));
    return;
  }
  SMP_CHECK(out[0].dtype() == DType::BF16 && s.bytes.size() == 4, "node {}: value of {} bytes for {}", s.node_name, s.bytes.size(), out[0].str());
  float f;
  std::memcpy(&f, s.bytes.data(), 4);
  const uint16_t b = bf16_bits(f);
  fill_pattern(ptr(out[0]), out[0].numel(), 2, &b, stream(ctx));
}
void bwd_constant_of_shape(const KernelState&, ExecContext&, const GradIO&) {}

void fwd_range(const KernelState&, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  CudaBackend& be = backend_of(ctx);
  Tensor start = be.host_copy(in[0]), delta = be.host_copy(in[2]);
  const int64_t n = out[0].numel();
  auto run = [&](auto zero, DType dt) {
    using T = decltype(zero);
    std::vector<T> v(static_cast<size_t>(n));
    const T a = static_cast<const T*>(start.raw())[0], d = static_cast<const T*>(delta.raw())[0];
    for (int64_t i = 0; i < n; ++i) v[static_cast<size_t>(i)] = static_cast<T>(a + static_cast<T>(i) * d);
    Tensor h = be.from_host(dt, out[0].shape(), v.data());
    be.convert(out[0], h);
  };
  switch (in[0].dtype()) {
    case DType::F32: run(0.0f, DType::F32); break;
    case DType::F64: run(0.0, DType::F64); break;
    case DType::I64: run(int64_t{0}, DType::I64); break;
    case DType::I32: run(int32_t{0}, DType::I32); break;
    default: SMP_CHECK(false, "Range of {}", dtype_name(in[0].dtype()));
  }
}
void bwd_range(const KernelState&, ExecContext&, const GradIO&) {}

// ---- SoftmaxCrossEntropyLoss -------------------------------------------------------------------

namespace {
int sce_red(const cpu::SceState& s) {
  return s.red == cpu::SceState::Red::Mean ? 0 : s.red == cpu::SceState::Red::Sum ? 1 : 2;
}
}  // namespace

void fwd_sce_loss(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const cpu::SceState&>(st);
  CudaBackend& be = backend_of(ctx);
  const int64_t P = s.N * s.D;
  Tensor lp = scratch_floats(ctx, P), wp = scratch_floats(ctx, P);
  Tensor* logp = out.size() > 1 && out[1].defined() ? &out[1] : nullptr;
  const void* w = s.has_weights ? ptr(in[2]) : nullptr;
  sce_positions(s.N, s.C, s.D, ptr(in[0]), tag(in[0]), ptr(in[1]), tag(in[1]), w, s.has_weights ? tag(in[2]) : kF32, s.has_ignore,
                s.ignore, static_cast<float*>(ptr(lp)), static_cast<float*>(ptr(wp)), logp ? ptr(*logp) : nullptr,
                logp ? tag(*logp) : kF32, be.device_error(), be.site(s.node_name + " (SoftmaxCrossEntropyLoss)"), be.stream());
  sce_reduce(sce_red(s), P, static_cast<const float*>(ptr(lp)), static_cast<const float*>(ptr(wp)), ptr(out[0]), tag(out[0]), nullptr,
             be.stream());
}

void bwd_sce_loss(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const cpu::SceState&>(st);
  if (!io.din[0].defined()) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined(), "node {}: backward needs scores and labels", s.node_name);
  CudaBackend& be = backend_of(ctx);
  const int64_t P = s.N * s.D;
  const void* w = s.has_weights ? ptr(io.in[2]) : nullptr;
  const Tag wt = s.has_weights ? tag(io.in[2]) : kF32;
  Tensor wsum = ctx.backend->empty(DType::F64, {1});
  if (s.red == cpu::SceState::Red::Mean) {
    Tensor lp = scratch_floats(ctx, P), wp = scratch_floats(ctx, P);
    sce_positions(s.N, s.C, s.D, ptr(io.in[0]), tag(io.in[0]), ptr(io.in[1]), tag(io.in[1]), w, wt, s.has_ignore, s.ignore,
                  static_cast<float*>(ptr(lp)), static_cast<float*>(ptr(wp)), nullptr, kF32, be.device_error(),
                  be.site(s.node_name + " (SoftmaxCrossEntropyLoss)"), be.stream());
    sum_floats(P, static_cast<const float*>(ptr(wp)), static_cast<double*>(ptr(wsum)), 0, be.stream());
  }
  const Tensor* dl = io.dout[0].defined() ? &io.dout[0] : nullptr;
  const Tensor* dlp = io.dout.size() > 1 && io.dout[1].defined() ? &io.dout[1] : nullptr;
  sce_grad(sce_red(s), s.N, s.C, s.D, ptr(io.in[0]), tag(io.in[0]), ptr(io.in[1]), tag(io.in[1]), w, wt, s.has_ignore, s.ignore,
           dl ? ptr(*dl) : nullptr, dl ? tag(*dl) : kF32, dlp ? ptr(*dlp) : nullptr, dlp ? tag(*dlp) : kF32,
           static_cast<const double*>(ptr(wsum)), ptr(io.din[0]), tag(io.din[0]), io.accumulate[0], be.stream());
}

}  // namespace smp::runtime::cuda
