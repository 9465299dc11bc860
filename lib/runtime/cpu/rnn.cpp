// LSTM, GRU and RNN: ONNX's recurrent ops, what PyTorch's nn.LSTM, nn.GRU and nn.RNN export to.
// Forward and backpropagation through time; forward, reverse or bidirectional; layout 0
// ([seq, batch, ...]) or 1 ([batch, seq, ...]); initial states, biases, LSTM's peepholes, GRU's
// linear_before_reset; sequence_lens (a row's steps past its length give zeros in Y and keep its
// state, a reverse direction starts at its last step: PyTorch's packed sequences); the default
// activations (sigmoid gates, tanh cells) only. The backward runs the forward again, keeping every
// step's gates and states, then walks the steps back.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"
#include "runtime/cpu/vmath.hpp"

#include <fmt/format.h>

#include <cctype>
#include <cmath>
#include <cstring>

namespace smp::runtime::cpu {

using graph::Op;

namespace {
constexpr const char* kRoles[] = {"X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"};

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}
}  // namespace

std::unique_ptr<KernelState> prep_rnn(const NodeView& n) {
  auto s = std::make_unique<RnnState>();
  s->kind = n.op() == Op::LSTM ? RnnState::Lstm : n.op() == Op::GRU ? RnnState::Gru : RnnState::Rnn;
  s->G = s->kind == RnnState::Lstm ? 4 : s->kind == RnnState::Gru ? 3 : 1;
  if (!n.has_input(0) || !n.has_input(1) || !n.has_input(2)) n.fail("needs X, W and R");
  const int max_inputs = s->kind == RnnState::Lstm ? 8 : 6;
  if (n.num_inputs() > max_inputs) n.fail(fmt::format("has {} inputs, at most {}", n.num_inputs(), max_inputs));
  for (int i = 0; i < n.num_inputs(); ++i)
    if (n.has_input(i) && i != 4) n.require_dtype(n.input(i), {DType::F32}, kRoles[i]);
  if (n.has_input(4)) n.require_dtype(n.input(4), {DType::I32}, "sequence_lens");
  s->layout = n.node().attr_int("layout", 0);
  if (s->layout != 0 && s->layout != 1) n.fail(fmt::format("layout {} (0 or 1)", s->layout));
  const Shape& x = n.input(0).shape;
  if (x.size() != 3) n.fail(fmt::format("X {} must be 3-D", shape_str(x)));
  s->T = s->layout ? x[1] : x[0];
  s->B = s->layout ? x[0] : x[1];
  s->I = x[2];
  const std::string dir = n.node().attr_string("direction", "forward");
  if (dir != "forward" && dir != "reverse" && dir != "bidirectional")
    n.fail(fmt::format("direction '{}' (forward, reverse or bidirectional)", dir));
  s->dirs = dir == "bidirectional" ? 2 : 1;
  s->reverse = dir == "reverse";
  const Shape& r = n.input(2).shape;
  if (r.size() != 3) n.fail(fmt::format("R {} must be 3-D", shape_str(r)));
  s->H = n.node().attr_int("hidden_size", r[2]);
  const int64_t GH = s->G * s->H;
  auto expect = [&](int i, Shape want) {
    if (n.has_input(i) && n.input(i).shape != want)
      n.fail(fmt::format("{} is {}, expected {}", kRoles[i], shape_str(n.input(i).shape), shape_str(want)));
  };
  expect(1, {s->dirs, GH, s->I});
  expect(2, {s->dirs, GH, s->H});
  expect(3, {s->dirs, 2 * GH});
  expect(4, {s->B});
  const Shape state = s->layout ? Shape{s->B, s->dirs, s->H} : Shape{s->dirs, s->B, s->H};
  expect(5, state);
  if (s->kind == RnnState::Lstm) {
    expect(6, state);
    expect(7, {s->dirs, 3 * s->H});
  }
  // the default activations only, named per direction
  const std::vector<std::string> dflt = s->kind == RnnState::Lstm  ? std::vector<std::string>{"sigmoid", "tanh", "tanh"}
                                        : s->kind == RnnState::Gru ? std::vector<std::string>{"sigmoid", "tanh"}
                                                                   : std::vector<std::string>{"tanh"};
  if (n.node().has_attr("activations")) {
    const auto& acts = n.node().attrs.at("activations").strings;
    bool ok = acts.size() == dflt.size() * static_cast<size_t>(s->dirs);
    for (size_t k = 0; ok && k < acts.size(); ++k) ok = lower(acts[k]) == dflt[k % dflt.size()];
    if (!ok) n.fail("activations other than the defaults (sigmoid gates, tanh) are not supported");
  }
  if (n.node().has_attr("clip")) n.fail("clip is not supported");
  if (n.node().attr_int("input_forget", 0) != 0) n.fail("input_forget 1 is not supported");
  s->linear_before_reset = n.node().attr_int("linear_before_reset", 0) != 0;
  return s;
}

namespace {

// Where things are, by time step t, batch row b and direction d.
struct Index {
  const RnnState& s;
  int64_t xrow(int64_t t, int64_t b) const { return s.layout ? b * s.T + t : t * s.B + b; }  // row of X [T*B, I]
  int64_t y(int64_t t, int64_t d, int64_t b) const {  // Y's row of H values
    return (s.layout ? (b * s.T + t) * s.dirs + d : (t * s.dirs + d) * s.B + b) * s.H;
  }
  int64_t state(int64_t d, int64_t b) const { return (s.layout ? b * s.dirs + d : d * s.B + b) * s.H; }  // Y_h, initial_h
  const int32_t* lens = nullptr;  // sequence_lens, or every row the whole sequence
  // Row b's time at step k of direction d; -1 past the row's length (the step keeps its state).
  int64_t time(int64_t d, int64_t k, int64_t b) const {
    const int64_t len = lens ? lens[b] : s.T;
    if (k >= len) return -1;
    return (s.reverse || d == 1) ? len - 1 - k : k;
  }
};

// One direction's run, kept for the backward: per step k, the gates after their activations
// (LSTM i, o, f, c~; GRU z, r, h~; RNN h) and the states before and after (Hs[k], Hs[k + 1]).
struct Trace {
  std::vector<float> xw;   // X W_dᵀ [T*B, G*H] in X's row order, the biases added
  std::vector<float> act;  // [T, B, G*H]
  std::vector<float> hs;   // [T + 1, B, H]
  std::vector<float> cs;   // LSTM: [T + 1, B, H]
  std::vector<float> tc;   // LSTM: tanh of cs[k + 1] [T, B, H]
  std::vector<float> u;    // GRU, linear_before_reset: Hp Rhᵀ + Rbh [T, B, H]
  std::vector<float> q;    // GRU otherwise: r ⊙ Hp [T, B, H]
};

// Runs direction d over the sequence; fills `tr` and, where given, Y, Y_h and Y_c.
void run_direction(const Index& ix, std::span<const Tensor> in, int64_t d, Trace& tr, float* Y, float* Yh, float* Yc) {
  const RnnState& s = ix.s;
  const int64_t T = s.T, B = s.B, H = s.H, G = s.G, GH = G * H;
  const float* X = in[0].data<float>();
  const float* W = in[1].data<float>() + d * GH * s.I;
  const float* R = in[2].data<float>() + d * GH * H;
  const float* Bias = in.size() > 3 && in[3].defined() ? in[3].data<float>() + d * 2 * GH : nullptr;
  const float* h0 = in.size() > 5 && in[5].defined() ? in[5].data<float>() : nullptr;
  const float* c0 = s.kind == RnnState::Lstm && in.size() > 6 && in[6].defined() ? in[6].data<float>() : nullptr;
  const float* P = s.kind == RnnState::Lstm && in.size() > 7 && in[7].defined() ? in[7].data<float>() + d * 3 * H : nullptr;
  const bool lstm = s.kind == RnnState::Lstm, gru = s.kind == RnnState::Gru;
  tr.xw.assign(static_cast<size_t>(T * B * GH), 0.0f);
  tr.act.assign(static_cast<size_t>(T * B * GH), 0.0f);
  tr.hs.assign(static_cast<size_t>((T + 1) * B * H), 0.0f);
  if (lstm) {
    tr.cs.assign(static_cast<size_t>((T + 1) * B * H), 0.0f);
    tr.tc.assign(static_cast<size_t>(T * B * H), 0.0f);
  }
  if (gru) (s.linear_before_reset ? tr.u : tr.q).assign(static_cast<size_t>(T * B * H), 0.0f);
  gemm(false, true, T * B, GH, s.I, 1.0f, X, s.I, W, s.I, 0.0f, tr.xw.data(), GH);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t j = 0; j < H; ++j) {
      if (h0) tr.hs[static_cast<size_t>(b * H + j)] = h0[ix.state(d, b) + j];
      if (c0) tr.cs[static_cast<size_t>(b * H + j)] = c0[ix.state(d, b) + j];
    }
  if (Y)  // rows past their length stay zero
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) std::memset(Y + ix.y(t, d, b), 0, static_cast<size_t>(H) * sizeof(float));
  if (Bias)  // both biases into the input products, but GRU's Rbh with linear_before_reset (inside r ⊙ (...))
    for (int64_t r = 0; r < T * B; ++r)
      for (int64_t e = 0; e < GH; ++e)
        tr.xw[static_cast<size_t>(r * GH + e)] += Bias[e] + (gru && s.linear_before_reset && e >= 2 * H ? 0.0f : Bias[GH + e]);
  std::vector<float> hr(static_cast<size_t>(B * GH));  // Hp Rᵀ
  auto sig = [](v8f v) { return vsigmoid8(v); };
  auto th = [](v8f v) { return vtanh8(v); };
  for (int64_t k = 0; k < T; ++k) {
    const float* Hp = tr.hs.data() + k * B * H;
    float* Hn = tr.hs.data() + (k + 1) * B * H;
    float* A = tr.act.data() + k * B * GH;
    // GRU without linear_before_reset: only z and r read Hp directly
    const int64_t rec = gru && !s.linear_before_reset ? 2 * H : GH;
    gemm(false, true, B, rec, H, 1.0f, Hp, H, R, H, 0.0f, hr.data(), GH);
    for (int64_t b = 0; b < B; ++b) {
      const int64_t t = ix.time(d, k, b);
      if (t < 0) continue;  // past the row's length: see below
      const float* xw = tr.xw.data() + ix.xrow(t, b) * GH;
      const float* h = hr.data() + b * GH;
      const float* hp = Hp + b * H;
      float* a = A + b * GH;  // pre-activations, then the gates
      float* hn = Hn + b * H;
      for (int64_t e = 0; e < rec; ++e) a[e] = xw[e] + h[e];
      if (s.kind == RnnState::Rnn) {
        vmap_inplace(a, H, th);
        std::memcpy(hn, a, static_cast<size_t>(H) * sizeof(float));
      } else if (lstm) {  // iofc
        const float* cp = tr.cs.data() + (k * B + b) * H;
        float* cn = tr.cs.data() + ((k + 1) * B + b) * H;
        float* tc = tr.tc.data() + (k * B + b) * H;
        if (P)
          for (int64_t j = 0; j < H; ++j) {
            a[j] += P[j] * cp[j];
            a[2 * H + j] += P[2 * H + j] * cp[j];
          }
        vmap_inplace(a, H, sig);
        vmap_inplace(a + 2 * H, H, sig);
        vmap_inplace(a + 3 * H, H, th);
        for (int64_t j = 0; j < H; ++j) cn[j] = a[2 * H + j] * cp[j] + a[j] * a[3 * H + j];
        if (P)
          for (int64_t j = 0; j < H; ++j) a[H + j] += P[H + j] * cn[j];
        vmap_inplace(a + H, H, sig);
        vmap1(cn, tc, H, th);
        for (int64_t j = 0; j < H; ++j) hn[j] = a[H + j] * tc[j];
      } else {  // zrh: z and r now, h~ once r is known
        vmap_inplace(a, 2 * H, sig);
        if (s.linear_before_reset) {
          float* u = tr.u.data() + (k * B + b) * H;
          for (int64_t j = 0; j < H; ++j) {
            u[j] = h[2 * H + j] + (Bias ? Bias[GH + 2 * H + j] : 0.0f);
            a[2 * H + j] = xw[2 * H + j] + a[H + j] * u[j];
          }
        } else {
          float* q = tr.q.data() + (k * B + b) * H;
          for (int64_t j = 0; j < H; ++j) q[j] = a[H + j] * hp[j];
        }
      }
    }
    if (gru) {
      if (!s.linear_before_reset)  // (r ⊙ Hp) Rhᵀ
        gemm(false, true, B, H, H, 1.0f, tr.q.data() + k * B * H, H, R + 2 * H * H, H, 0.0f, hr.data(), GH);
      for (int64_t b = 0; b < B; ++b) {
        const int64_t t = ix.time(d, k, b);
        if (t < 0) continue;
        float* a = A + b * GH;
        if (!s.linear_before_reset) {
          const float* xw = tr.xw.data() + ix.xrow(t, b) * GH;
          for (int64_t j = 0; j < H; ++j) a[2 * H + j] = xw[2 * H + j] + hr[static_cast<size_t>(b * GH + j)];
        }
        vmap_inplace(a + 2 * H, H, th);
        for (int64_t j = 0; j < H; ++j) Hn[b * H + j] = (1.0f - a[j]) * a[2 * H + j] + a[j] * Hp[b * H + j];
      }
    }
    for (int64_t b = 0; b < B; ++b) {
      const int64_t t = ix.time(d, k, b);
      if (t < 0) {  // the state carries over
        std::memcpy(Hn + b * H, Hp + b * H, static_cast<size_t>(H) * sizeof(float));
        if (lstm) std::memcpy(tr.cs.data() + ((k + 1) * B + b) * H, tr.cs.data() + (k * B + b) * H, static_cast<size_t>(H) * sizeof(float));
      } else if (Y) {
        std::memcpy(Y + ix.y(t, d, b), Hn + b * H, static_cast<size_t>(H) * sizeof(float));
      }
    }
  }
  for (int64_t b = 0; b < B; ++b) {
    if (Yh) std::memcpy(Yh + ix.state(d, b), tr.hs.data() + (T * B + b) * H, static_cast<size_t>(H) * sizeof(float));
    if (Yc) std::memcpy(Yc + ix.state(d, b), tr.cs.data() + (T * B + b) * H, static_cast<size_t>(H) * sizeof(float));
  }
}

// The index of the node's run, its sequence_lens checked (0 to the sequence length).
Index index_of(const RnnState& s, std::span<const Tensor> in) {
  Index ix{s};
  if (in.size() <= 4 || !in[4].defined()) return ix;
  ix.lens = in[4].data<int32_t>();
  for (int64_t b = 0; b < s.B; ++b)
    if (ix.lens[b] < 0 || ix.lens[b] > s.T)
      throw_bad_input("node " + s.node_name, fmt::format("sequence_lens[{}] is {}, outside 0 to the sequence length {}", b, ix.lens[b], s.T));
  return ix;
}

float* out_or_null(std::span<Tensor> out, size_t k) { return k < out.size() && out[k].defined() ? out[k].data<float>() : nullptr; }

}  // namespace

void fwd_rnn(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const RnnState&>(st);
  const Index ix = index_of(s, in);
  Trace tr;
  for (int64_t d = 0; d < s.dirs; ++d)
    run_direction(ix, in, d, tr, out_or_null(out, 0), out_or_null(out, 1), s.kind == RnnState::Lstm ? out_or_null(out, 2) : nullptr);
}

void bwd_rnn(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const RnnState&>(st);
  const Index ix = index_of(s, io.in);
  const int64_t T = s.T, B = s.B, H = s.H, G = s.G, GH = G * H;
  const bool lstm = s.kind == RnnState::Lstm, gru = s.kind == RnnState::Gru;
  auto dout = [&](size_t k) { return k < io.dout.size() && io.dout[k].defined() ? io.dout[k].data<float>() : nullptr; };
  auto din = [&](size_t k) { return k < io.din.size() && io.din[k].defined() ? io.din[k].data<float>() : nullptr; };
  auto acc = [&](size_t k) { return io.accumulate[k] != 0; };
  const float *dY = dout(0), *dYh = dout(1), *dYc = lstm ? dout(2) : nullptr;
  if (!dY && !dYh && !dYc) return;
  SMP_CHECK(io.in[0].defined() && io.in[1].defined() && io.in[2].defined(), "node {}: {} backward needs X, W and R", s.node_name,
            lstm ? "LSTM" : gru ? "GRU" : "RNN");
  float *dX = din(0), *dW = din(1), *dR = din(2), *dB = din(3), *dh0 = din(5), *dc0 = lstm ? din(6) : nullptr,
        *dP = lstm ? din(7) : nullptr;
  const float* X = io.in[0].data<float>();
  const float* P0 = lstm && io.in.size() > 7 && io.in[7].defined() ? io.in[7].data<float>() : nullptr;
  Trace tr;
  std::vector<float> DA(static_cast<size_t>(T * B * GH)), DR(static_cast<size_t>(T * B * GH));  // pre-activation gradients
  std::vector<float> dH(static_cast<size_t>(B * H)), dC(static_cast<size_t>(B * H)), dHp(static_cast<size_t>(B * H));
  std::vector<float> dq(static_cast<size_t>(B * H));
  for (int64_t d = 0; d < s.dirs; ++d) {
    run_direction(ix, io.in, d, tr, nullptr, nullptr, nullptr);
    const float* W = io.in[1].data<float>() + d * GH * s.I;
    const float* R = io.in[2].data<float>() + d * GH * H;
    const float* P = P0 ? P0 + d * 3 * H : nullptr;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) {
        dH[static_cast<size_t>(b * H + j)] = dYh ? dYh[ix.state(d, b) + j] : 0.0f;
        dC[static_cast<size_t>(b * H + j)] = dYc ? dYc[ix.state(d, b) + j] : 0.0f;
      }
    std::vector<double> dPs(lstm ? static_cast<size_t>(3 * H) : 0, 0.0);
    for (int64_t k = T - 1; k >= 0; --k) {
      const float* Hp = tr.hs.data() + k * B * H;
      const float* A = tr.act.data() + k * B * GH;
      float* da = DA.data() + k * B * GH;  // step order (X's rows gathered to it below)
      float* dr = DR.data() + k * B * GH;
      std::memset(da, 0, static_cast<size_t>(B * GH) * sizeof(float));  // rows past their length stay zero
      std::memset(dr, 0, static_cast<size_t>(B * GH) * sizeof(float));
      for (int64_t b = 0; b < B; ++b) {
        const int64_t t = ix.time(d, k, b);
        if (t < 0) continue;
        if (dY)
          for (int64_t j = 0; j < H; ++j) dH[static_cast<size_t>(b * H + j)] += dY[ix.y(t, d, b) + j];
        const float* a = A + b * GH;
        float* g = da + b * GH;
        float* gr = dr + b * GH;
        for (int64_t j = 0; j < H; ++j) {
          const float dh = dH[static_cast<size_t>(b * H + j)], hp = Hp[b * H + j];
          if (s.kind == RnnState::Rnn) {
            g[j] = dh * (1.0f - a[j] * a[j]);
            gr[j] = g[j];
          } else if (lstm) {
            const float i = a[j], o = a[H + j], f = a[2 * H + j], c = a[3 * H + j];
            const float cp = tr.cs[static_cast<size_t>(k * B * H + b * H + j)], cn = tr.cs[static_cast<size_t>((k + 1) * B * H + b * H + j)];
            const float tc = tr.tc[static_cast<size_t>(k * B * H + b * H + j)];
            const float dao = dh * tc * o * (1.0f - o);
            const float dc = dC[static_cast<size_t>(b * H + j)] + dh * o * (1.0f - tc * tc) + (P ? dao * P[H + j] : 0.0f);
            const float dai = dc * c * i * (1.0f - i), daf = dc * cp * f * (1.0f - f), dac = dc * i * (1.0f - c * c);
            g[j] = dai;
            g[H + j] = dao;
            g[2 * H + j] = daf;
            g[3 * H + j] = dac;
            for (int64_t e = 0; e < 4; ++e) gr[e * H + j] = g[e * H + j];
            dC[static_cast<size_t>(b * H + j)] = dc * f + (P ? dai * P[j] + daf * P[2 * H + j] : 0.0f);
            if (P) {
              dPs[static_cast<size_t>(j)] += static_cast<double>(dai) * cp;
              dPs[static_cast<size_t>(H + j)] += static_cast<double>(dao) * cn;
              dPs[static_cast<size_t>(2 * H + j)] += static_cast<double>(daf) * cp;
            }
          } else {
            const float z = a[j], r = a[H + j], hh = a[2 * H + j];
            const float dah = dh * (1.0f - z) * (1.0f - hh * hh);
            g[j] = dh * (hp - hh) * z * (1.0f - z);
            g[2 * H + j] = dah;
            float drr;
            if (s.linear_before_reset) {
              const float u = tr.u[static_cast<size_t>(k * B * H + b * H + j)];
              drr = dah * u;
              gr[2 * H + j] = dah * r;  // du
            } else {
              drr = 0.0f;  // from dq below
              gr[2 * H + j] = dah;
            }
            g[H + j] = drr * r * (1.0f - r);
            gr[j] = g[j];
            gr[H + j] = g[H + j];
          }
        }
      }
      if (gru && !s.linear_before_reset) {  // dq = dah Rh; dr = dq ⊙ Hp
        gemm(false, false, B, H, H, 1.0f, dr + 2 * H, GH, R + 2 * H * H, H, 0.0f, dq.data(), H);
        for (int64_t b = 0; b < B; ++b)
          for (int64_t j = 0; j < H; ++j) {
            const float r = A[b * GH + H + j];
            const float v = dq[static_cast<size_t>(b * H + j)] * Hp[b * H + j] * r * (1.0f - r);
            da[b * GH + H + j] = v;
            dr[b * GH + H + j] = v;
          }
      }
      // dHp = DR R (GRU without linear_before_reset: the z and r blocks here, dq ⊙ r below)
      const int64_t rec = gru && !s.linear_before_reset ? 2 * H : GH;
      gemm(false, false, B, H, rec, 1.0f, dr, GH, R, H, 0.0f, dHp.data(), H);
      for (int64_t b = 0; b < B; ++b)
        for (int64_t j = 0; j < H; ++j) {
          if (ix.time(d, k, b) < 0) continue;  // the state carried over: its gradient too
          float v = dHp[static_cast<size_t>(b * H + j)];
          if (gru) {
            v += dH[static_cast<size_t>(b * H + j)] * A[b * GH + j];
            if (!s.linear_before_reset) v += dq[static_cast<size_t>(b * H + j)] * A[b * GH + H + j];
          }
          dH[static_cast<size_t>(b * H + j)] = v;
        }
    }
    // Input products over all steps: DA is in step order, X's rows by (t, b): gather per step.
    std::vector<float> Xs(static_cast<size_t>(T * B * s.I), 0.0f);
    for (int64_t k = 0; k < T; ++k)
      for (int64_t b = 0; b < B; ++b)
        if (const int64_t t = ix.time(d, k, b); t >= 0)
          std::memcpy(Xs.data() + (k * B + b) * s.I, X + ix.xrow(t, b) * s.I, static_cast<size_t>(s.I) * sizeof(float));
    if (dW) gemm(true, false, GH, s.I, T * B, 1.0f, DA.data(), GH, Xs.data(), s.I, acc(1) ? 1.0f : 0.0f, dW + d * GH * s.I, s.I);
    if (dR) {
      float* dRd = dR + d * GH * H;
      if (gru && !s.linear_before_reset) {  // z, r against Hp; h against q = r ⊙ Hp
        gemm(true, false, 2 * H, H, T * B, 1.0f, DR.data(), GH, tr.hs.data(), H, acc(2) ? 1.0f : 0.0f, dRd, H);
        gemm(true, false, H, H, T * B, 1.0f, DR.data() + 2 * H, GH, tr.q.data(), H, acc(2) ? 1.0f : 0.0f, dRd + 2 * H * H, H);
      } else {
        gemm(true, false, GH, H, T * B, 1.0f, DR.data(), GH, tr.hs.data(), H, acc(2) ? 1.0f : 0.0f, dRd, H);
      }
    }
    if (dB) {
      float* dBd = dB + d * 2 * GH;
      std::vector<double> sw(static_cast<size_t>(GH), 0.0), sr(static_cast<size_t>(GH), 0.0);  // row by row (contiguous)
      for (int64_t r = 0; r < T * B; ++r) {
        const float *a = DA.data() + r * GH, *q = DR.data() + r * GH;
        for (int64_t e = 0; e < GH; ++e) {
          sw[static_cast<size_t>(e)] += a[e];
          sr[static_cast<size_t>(e)] += q[e];
        }
      }
      for (int64_t e = 0; e < GH; ++e) {
        dBd[e] = static_cast<float>(sw[static_cast<size_t>(e)]) + (acc(3) ? dBd[e] : 0.0f);
        dBd[GH + e] = static_cast<float>(sr[static_cast<size_t>(e)]) + (acc(3) ? dBd[GH + e] : 0.0f);
      }
    }
    if (dP)
      for (int64_t e = 0; e < 3 * H; ++e) dP[d * 3 * H + e] = static_cast<float>(dPs[static_cast<size_t>(e)]) + (acc(7) ? dP[d * 3 * H + e] : 0.0f);
    if (dX) {  // dXs = DA W, then scattered to X's rows
      std::vector<float> dXs(static_cast<size_t>(T * B * s.I));
      gemm(false, false, T * B, s.I, GH, 1.0f, DA.data(), GH, W, s.I, 0.0f, dXs.data(), s.I);
      if (d == 0 && !acc(0)) std::memset(dX, 0, static_cast<size_t>(T * B * s.I) * sizeof(float));  // steps past a length: 0
      for (int64_t k = 0; k < T; ++k)
        for (int64_t b = 0; b < B; ++b) {
          const int64_t t = ix.time(d, k, b);
          if (t < 0) continue;
          float* dst = dX + ix.xrow(t, b) * s.I;
          const float* src = dXs.data() + (k * B + b) * s.I;
          for (int64_t e = 0; e < s.I; ++e) dst[e] += src[e];
        }
    }
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) {
        if (dh0) dh0[ix.state(d, b) + j] = dH[static_cast<size_t>(b * H + j)] + (acc(5) ? dh0[ix.state(d, b) + j] : 0.0f);
        if (dc0) dc0[ix.state(d, b) + j] = dC[static_cast<size_t>(b * H + j)] + (acc(6) ? dc0[ix.state(d, b) + j] : 0.0f);
      }
  }
}

}  // namespace smp::runtime::cpu
