// Einsum of one or two operands (no repeated label within an operand; ellipsis dims align from
// the right and must agree in size, without size-1 broadcasting), as a batched sgemm between permuted copies:
//   labels only in one operand and not in the output are summed out first, then
//   batch (both operands and the output), M (left and output), N (right and output) and
//   K (both operands, not the output) make A[batch, M, K] · B[batch, K, N] = C[batch, M, N],
//   permuted into the output (which may also hold labels of neither operand: broadcast).
// The gradients are contractions of the same kind: dA = einsum(dY, B -> A), dB = einsum(A, dY -> B).
#include "graph/einsum.hpp"
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <cblas.h>
#include <fmt/format.h>

#include <map>

namespace smp::runtime::cpu {

namespace {

// One operand: a label per dim.
struct Spec {
  std::vector<int> labels;
  Shape shape;
  int64_t numel() const { return smp::numel(shape); }
};

bool has(const std::vector<int>& v, int l) { return std::find(v.begin(), v.end(), l) != v.end(); }

std::vector<int64_t> label_strides(const Spec& s) {
  std::vector<int64_t> st(s.shape.size());
  int64_t k = 1;
  for (size_t i = s.shape.size(); i-- > 0;) {
    st[i] = k;
    k *= s.shape[i];
  }
  return st;
}

// dst[dst.labels] = (or +=) src at the same labels; a dst label the source lacks broadcasts.
template <class T>
void permute(const T* src, const Spec& s, T* dst, const Spec& d, bool acc) {
  auto sst = label_strides(s);
  std::vector<int64_t> st(d.labels.size(), 0);
  for (size_t i = 0; i < d.labels.size(); ++i)
    for (size_t j = 0; j < s.labels.size(); ++j)
      if (s.labels[j] == d.labels[i]) st[i] = sst[j];
  const size_t R = d.shape.size();
  const int64_t L = R == 0 ? 1 : d.shape.back();
  const int64_t inner = R == 0 ? 0 : st.back();
  const int64_t rows = L == 0 ? 0 : d.numel() / L;
  pfor(rows, std::max<int64_t>(1, kGrain / std::max<int64_t>(L, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t rem = r, off = 0;
      for (size_t k = R - (R > 0 ? 1 : 0); k-- > 0;) {
        off += (rem % d.shape[k]) * st[k];
        rem /= d.shape[k];
      }
      T* o = dst + r * L;
      const T* p = src + off;
      if (acc) {
        for (int64_t j = 0; j < L; ++j) o[j] += p[j * inner];
      } else {
        for (int64_t j = 0; j < L; ++j) o[j] = p[j * inner];
      }
    }
  });
}

// dst[d.labels] = sum of src over the labels dst lacks (d.labels a subsequence of s.labels).
template <class T>
void sum_out(const T* src, const Spec& s, T* dst, const Spec& d) {
  std::fill(dst, dst + d.numel(), T(0));
  auto dst_st = label_strides(d);
  std::vector<int64_t> st(s.labels.size(), 0);
  for (size_t j = 0; j < s.labels.size(); ++j)
    for (size_t i = 0; i < d.labels.size(); ++i)
      if (d.labels[i] == s.labels[j]) st[j] = dst_st[i];
  const int64_t n = s.numel();
  std::vector<int64_t> idx(s.shape.size(), 0);
  int64_t off = 0;
  for (int64_t e = 0; e < n; ++e) {
    dst[off] += src[e];
    for (size_t k = s.shape.size(); k-- > 0;) {
      off += st[k];
      if (++idx[k] < s.shape[k]) break;
      off -= st[k] * idx[k];
      idx[k] = 0;
    }
  }
}

template <class T> constexpr DType dtype_of() { return std::is_same_v<T, float> ? DType::F32 : DType::F64; }

// C = A · B (+ C with beta 1), row-major, one thread.
void gemm_one(int64_t M, int64_t N, int64_t K, const float* A, const float* B, float beta, float* C) {
  gemm_serial(false, false, M, N, K, 1.0f, A, K, B, N, beta, C, N);
}
void gemm_one(int64_t M, int64_t N, int64_t K, const double* A, const double* B, double beta, double* C) {
  cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<int>(M), static_cast<int>(N), static_cast<int>(K), 1.0, A,
              static_cast<int>(K), B, static_cast<int>(N), beta, C, static_cast<int>(N));
}

// Operand with the labels in neither `keep1` nor `keep2` summed out (a copy only when needed).
template <class T>
const T* reduce_operand(ExecContext& ctx, const T* x, Spec& s, const std::vector<int>& keep1,
                        const std::vector<int>& keep2, Tensor& buf) {
  Spec r;
  for (size_t i = 0; i < s.labels.size(); ++i)
    if (has(keep1, s.labels[i]) || has(keep2, s.labels[i])) {
      r.labels.push_back(s.labels[i]);
      r.shape.push_back(s.shape[i]);
    }
  if (r.labels.size() == s.labels.size()) return x;
  buf = scratch(ctx, dtype_of<T>(), r.shape);
  sum_out(x, s, static_cast<T*>(buf.raw()), r);
  s = r;
  return static_cast<const T*>(buf.raw());
}

// out[so] = (or +=) sum over the other labels of x[sx] * y[sy] (y may be absent).
template <class T>
void contract(ExecContext& ctx, const T* X, Spec sx, const T* Y, const Spec* sy_in, const Spec& so, T* out, bool acc) {
  Tensor bx, by;
  static const std::vector<int> none;
  X = reduce_operand(ctx, X, sx, so.labels, sy_in ? sy_in->labels : none, bx);
  if (!sy_in) {
    permute(X, sx, out, so, acc);
    return;
  }
  Spec sy = *sy_in;
  Y = reduce_operand(ctx, Y, sy, so.labels, sx.labels, by);
  std::map<int, int64_t> size;
  for (size_t i = 0; i < sx.labels.size(); ++i) size[sx.labels[i]] = sx.shape[i];
  for (size_t i = 0; i < sy.labels.size(); ++i) size[sy.labels[i]] = sy.shape[i];
  std::vector<int> batch, m, n, k;
  for (int l : so.labels) {
    bool in_x = has(sx.labels, l), in_y = has(sy.labels, l);
    if (in_x && in_y) batch.push_back(l);
    else if (in_x) m.push_back(l);
    else if (in_y) n.push_back(l);
  }
  for (int l : sx.labels)
    if (has(sy.labels, l) && !has(so.labels, l)) k.push_back(l);
  auto spec_of = [&](std::initializer_list<const std::vector<int>*> parts) {
    Spec s;
    for (const auto* p : parts)
      for (int l : *p) {
        s.labels.push_back(l);
        s.shape.push_back(size[l]);
      }
    return s;
  };
  auto extent = [&](const std::vector<int>& ls) {
    int64_t e = 1;
    for (int l : ls) e *= size[l];
    return e;
  };
  const int64_t Bn = extent(batch), Mn = extent(m), Nn = extent(n), Kn = extent(k);
  Spec sa = spec_of({&batch, &m, &k}), sb = spec_of({&batch, &k, &n}), sc = spec_of({&batch, &m, &n});
  const T* A = X;
  Tensor ta, tb, tc;
  if (sa.labels != sx.labels) {
    ta = scratch(ctx, dtype_of<T>(), {std::max<int64_t>(sa.numel(), 1)});
    permute(X, sx, static_cast<T*>(ta.raw()), sa, false);
    A = static_cast<const T*>(ta.raw());
  }
  const T* B = Y;
  if (sb.labels != sy.labels) {
    tb = scratch(ctx, dtype_of<T>(), {std::max<int64_t>(sb.numel(), 1)});
    permute(Y, sy, static_cast<T*>(tb.raw()), sb, false);
    B = static_cast<const T*>(tb.raw());
  }
  const bool direct = sc.labels == so.labels;
  T* C = out;
  if (!direct) {
    tc = scratch(ctx, dtype_of<T>(), {std::max<int64_t>(sc.numel(), 1)});
    C = static_cast<T*>(tc.raw());
  }
  const T beta = direct && acc ? T(1) : T(0);
  if (Kn == 0) {
    if (beta == T(0)) std::fill(C, C + Bn * Mn * Nn, T(0));
  } else if (Bn > 1 && pool_threads() > 1) {
    pfor(Bn, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t bi = b0; bi < b1; ++bi) gemm_one(Mn, Nn, Kn, A + bi * Mn * Kn, B + bi * Kn * Nn, beta, C + bi * Mn * Nn);
    });
  } else if constexpr (std::is_same_v<T, float>) {
    for (int64_t bi = 0; bi < Bn; ++bi)
      gemm(false, false, Mn, Nn, Kn, 1.0f, A + bi * Mn * Kn, Kn, B + bi * Kn * Nn, Nn, beta, C + bi * Mn * Nn, Nn);
  } else {
    for (int64_t bi = 0; bi < Bn; ++bi) gemm_one(Mn, Nn, Kn, A + bi * Mn * Kn, B + bi * Kn * Nn, beta, C + bi * Mn * Nn);
  }
  if (!direct) permute(C, sc, out, so, acc);
}

struct EinsumState : KernelState {
  std::vector<Spec> ins;
  Spec out;
};

}  // namespace

std::unique_ptr<KernelState> prep_einsum(const NodeView& n) {
  auto s = std::make_unique<EinsumState>();
  if (n.num_inputs() < 1 || n.num_inputs() > 2) n.fail(fmt::format("{} operands; supported: 1 or 2", n.num_inputs()));
  std::vector<Shape> shapes;
  for (int k = 0; k < n.num_inputs(); ++k) {
    n.require_dtype(n.input(k), {DType::F32, DType::F64}, "operand");
    if (n.input(k).dtype != n.input(0).dtype) n.fail("operands of different dtypes");
    shapes.push_back(n.input(k).shape);
  }
  graph::EinsumSpec e;
  if (auto why = graph::parse_einsum(n.node().attr_string("equation", ""), shapes, e); !why.empty()) n.fail(why);
  for (size_t k = 0; k < shapes.size(); ++k) s->ins.push_back(Spec{e.inputs[k], shapes[k]});
  s->out = Spec{e.output, e.output_shape()};
  if (s->out.shape != n.output(0).shape)
    n.fail(fmt::format("output {} differs from the equation's {}", shape_str(n.output(0).shape), shape_str(s->out.shape)));
  return s;
}

void fwd_einsum(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const EinsumState&>(st);
  auto run = [&](auto* y) {
    using T = std::remove_pointer_t<decltype(y)>;
    const T* a = static_cast<const T*>(in[0].raw());
    if (s.ins.size() == 1) contract<T>(ctx, a, s.ins[0], nullptr, nullptr, s.out, y, false);
    else contract<T>(ctx, a, s.ins[0], static_cast<const T*>(in[1].raw()), &s.ins[1], s.out, y, false);
  };
  if (out[0].dtype() == DType::F64) run(out[0].data<double>());
  else run(out[0].data<float>());
}

void bwd_einsum(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const EinsumState&>(st);
  if (!io.dout[0].defined()) return;
  const float* dY = io.dout[0].data<float>();
  for (size_t k = 0; k < s.ins.size(); ++k) {
    if (!io.din[k].defined()) continue;
    float* d = io.din[k].data<float>();
    if (s.ins.size() == 1) {
      contract<float>(ctx, dY, s.out, nullptr, nullptr, s.ins[0], d, io.accumulate[0]);
      continue;
    }
    size_t o = 1 - k;
    SMP_CHECK(io.in[o].defined(), "node {}: Einsum backward needs operand {} (not declared saved)", s.node_name, o);
    contract<float>(ctx, dY, s.out, io.in[o].data<float>(), &s.ins[o], s.ins[k], d, io.accumulate[k]);
  }
}

}  // namespace smp::runtime::cpu
