// RandomNormal, RandomNormalLike, RandomUniform, RandomUniformLike and Bernoulli: numbers from the
// node's stream of the microbatch (runtime/random.hpp, Dropout's), so that they depend on the run's
// seed, the step, the microbatch and the node only: a pipelined run draws what one stage draws,
// a recomputed forward draws its numbers again. A normal draw is Box-Muller of stream elements 2i
// and 2i + 1 (|z| up to 5.8 on the streams' 2^-24 grid); a `seed` attribute is mixed into the
// stream (the numbers still change from step to step). Forward only.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"
#include "runtime/random.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstring>

namespace smp::runtime::cpu {

namespace {

struct RandomState : KernelState {
  enum Kind { Normal, Uniform, Bernoulli } kind = Normal;
  float a = 0, b = 1;  // Normal: mean, scale; Uniform: low, high
  bool seeded = false;
  uint64_t seed = 0;   // the seed attribute's bits, mixed into the stream
  DType out = DType::F32;
  int64_t n = 0;
};

uint64_t stream_key(const RandomState& s, const ExecContext& ctx) {
  return s.seeded ? random::mix64(ctx.random_key ^ random::mix64(s.seed + random::kGolden)) : ctx.random_key;
}

template <class T>
void store(Tensor& t, int64_t i, T v) {
  switch (t.dtype()) {
    case DType::F32: t.data<float>()[i] = static_cast<float>(v); break;
    case DType::F64: t.data<double>()[i] = static_cast<double>(v); break;
    case DType::I32: t.data<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::I64: t.data<int64_t>()[i] = static_cast<int64_t>(v); break;
    default: t.data<uint8_t>()[i] = v != T(0); break;  // Bool
  }
}

}  // namespace

std::unique_ptr<KernelState> prep_random(const NodeView& n) {
  auto s = std::make_unique<RandomState>();
  using graph::Op;
  const Op op = n.op();
  s->kind = op == Op::Bernoulli ? RandomState::Bernoulli
            : (op == Op::RandomUniform || op == Op::RandomUniformLike) ? RandomState::Uniform
                                                                       : RandomState::Normal;
  s->out = n.output(0).dtype;
  s->n = n.output(0).numel();
  if (s->kind == RandomState::Bernoulli) {
    n.require_dtype(n.input(0), {DType::F32, DType::F64}, "probabilities");
    n.require_dtype(n.output(0), {DType::F32, DType::F64, DType::I32, DType::I64, DType::Bool}, "output");
  } else {
    n.require_dtype(n.output(0), {DType::F32, DType::F64}, "output");
  }
  if (s->kind == RandomState::Normal) {
    s->a = static_cast<float>(n.node().attr_float("mean", 0.0));
    s->b = static_cast<float>(n.node().attr_float("scale", 1.0));
  } else if (s->kind == RandomState::Uniform) {
    s->a = static_cast<float>(n.node().attr_float("low", 0.0));
    s->b = static_cast<float>(n.node().attr_float("high", 1.0));
    if (!(s->a <= s->b)) n.fail(fmt::format("low {} above high {}", s->a, s->b));
  }
  if (n.node().has_attr("seed")) {
    const float seed = static_cast<float>(n.node().attr_float("seed", 0.0));
    uint32_t bits = 0;
    std::memcpy(&bits, &seed, sizeof bits);
    s->seeded = true;
    s->seed = bits;
  }
  return s;
}

void fwd_random(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const RandomState&>(st);
  const uint64_t key = stream_key(s, ctx);
  Tensor& y = out[0];
  switch (s.kind) {
    case RandomState::Normal: {
      constexpr double kTwoPi = 6.283185307179586;
      pfor(s.n, kGrain / 4, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double u1 = 1.0 - random::uniform(key, 2 * i), u2 = random::uniform(key, 2 * i + 1);  // u1 in (0, 1]
          store(y, i, s.a + s.b * std::sqrt(-2.0 * std::log(u1)) * std::cos(kTwoPi * u2));
        }
      });
      break;
    }
    case RandomState::Uniform:
      pfor(s.n, kGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) store(y, i, s.a + (static_cast<double>(s.b) - s.a) * random::uniform(key, i));
      });
      break;
    case RandomState::Bernoulli: {
      const Tensor& p = in[0];
      pfor(s.n, kGrain, [&](int64_t b, int64_t e) {
        for (int64_t i = b; i < e; ++i) {
          const double pi = p.dtype() == DType::F32 ? p.data<float>()[i] : p.data<double>()[i];
          store(y, i, random::uniform(key, i) < pi ? 1 : 0);
        }
      });
      break;
    }
  }
}

}  // namespace smp::runtime::cpu
