// Data movement: Reshape/Flatten/Squeeze/Unsqueeze (views), Transpose, Concat, Split, Slice,
// Gather, Expand, Tile, Trilu, ReverseSequence; and the shape-only producers Shape, Size, Constant,
// ConstantOfShape, Range.
#include "runtime/cpu/common.hpp"
#include "runtime/cpu/kernels.hpp"

#include <fmt/format.h>

namespace smp::runtime::cpu {

using graph::Op;

namespace {

// One tile of a transpose, f(a, b) for a in [a0, a1), b in [b0, b1). The inner loop runs along
// b when `b_inner`: pass it for the side whose rows lie further apart, so that its lines are
// each used whole before the next. Rows a power of two of 4 KiB or more apart share an L1 set,
// and touched round-robin, 16 of them evict one another at every step (a 4096 x 128 weight's
// transpose ran at under 2 GB/s).
template <class F>
inline void tile_loops(int64_t a0, int64_t a1, int64_t b0, int64_t b1, bool b_inner, F&& f) {
  if (b_inner) {
    for (int64_t a = a0; a < a1; ++a)
      for (int64_t b = b0; b < b1; ++b) f(a, b);
  } else {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t a = a0; a < a1; ++a) f(a, b);
  }
}

// A transpose of the two innermost-in-memory dims between a contiguous array of `shape` and a
// strided one (strides `st` per dim of `shape`, offset `base`): f(contiguous offset, strided
// offset) for every element, in 16 x 16 tiles (a band of 16 along the strided side's unit-stride
// dim j by 16 along the last dim) so that both sides stay in cache, bands across threads. False,
// and nothing done, when the layout is not such a transpose.
template <class F>
bool tiled_transpose(const Shape& shape, const std::vector<int64_t>& st, int64_t base, F&& f) {
  const size_t R = shape.size();
  const int64_t L = shape.back(), ist = st.back();
  if (ist == 1 || L < 8) return false;
  size_t j = R;
  for (size_t d = 0; d + 1 < R; ++d)
    if (st[d] == 1 && shape[d] >= 8) j = d;
  if (j == R) return false;
  std::vector<int64_t> cst(R);  // the contiguous side's strides
  int64_t k = 1;
  for (size_t d = R; d-- > 0;) {
    cst[d] = k;
    k *= shape[d];
  }
  std::vector<size_t> rest;
  int64_t outer = 1;
  for (size_t d = 0; d + 1 < R; ++d)
    if (d != j) {
      rest.push_back(d);
      outer *= shape[d];
    }
  const int64_t A = shape[j], cj = cst[j], bands = (A + 15) / 16;
  pfor(outer * bands, std::max<int64_t>(1, kGrain / (16 * L)), [&](int64_t q0, int64_t q1) {
    for (int64_t qb = q0; qb < q1; ++qb) {
      const int64_t q = qb / bands, a0 = qb % bands * 16, a1 = std::min(A, a0 + 16);
      int64_t co = 0, so = base, r = q;
      for (size_t e = rest.size(); e-- > 0;) {
        const size_t d = rest[e];
        const int64_t i = r % shape[d];
        r /= shape[d];
        co += i * cst[d];
        so += i * st[d];
      }
      for (int64_t b0 = 0; b0 < L; b0 += 16)
        tile_loops(a0, a1, b0, std::min(L, b0 + 16), cj > ist, [&](int64_t a, int64_t b) { f(co + a * cj + b, so + a + b * ist); });
    }
  });
  return true;
}

// dst[shape] (contiguous) = src[base + sum(idx_d * sst_d)]
template <class T>
void strided_copy(T* dst, const Shape& shape, const T* src, const std::vector<int64_t>& sst, int64_t base) {
  int64_t total = smp::numel(shape);
  if (total == 0) return;
  if (shape.empty()) {
    dst[0] = src[base];
    return;
  }
  int64_t L = shape.back(), ist = sst.back(), rows = total / L;
  size_t R = shape.size();
  if (tiled_transpose(shape, sst, base, [&](int64_t c, int64_t st) { dst[c] = src[st]; })) return;
  pfor(rows, std::max<int64_t>(1, kGrain / L), [&](int64_t r0, int64_t r1) {
    // the row's multi-index, advanced like an odometer (no division per row)
    std::vector<int64_t> idx(R, 0);
    int64_t off = base, q = r0;
    for (size_t d = R - 1; d-- > 0;) {
      idx[d] = q % shape[d];
      q /= shape[d];
      off += idx[d] * sst[d];
    }
    for (int64_t r = r0; r < r1; ++r) {
      T* __restrict o = dst + r * L;
      const T* __restrict p = src + off;
      if (ist == 1) {
        if (L >= 64) std::memcpy(o, p, static_cast<size_t>(L) * sizeof(T));
        else
          for (int64_t i = 0; i < L; ++i) o[i] = p[i];
      } else {
        for (int64_t i = 0; i < L; ++i) o[i] = p[i * ist];
      }
      for (size_t d = R - 1; d-- > 0;) {
        off += sst[d];
        if (++idx[d] < shape[d]) break;
        off -= idx[d] * sst[d];
        idx[d] = 0;
      }
    }
  });
}

// dst[base + sum(idx_d * dst_d)] += src[shape] (contiguous); no two source elements may land on
// the same destination (true for transposes and slices).
void strided_add(float* dst, const std::vector<int64_t>& dstst, int64_t base, const float* src, const Shape& shape) {
  int64_t total = smp::numel(shape);
  if (total == 0) return;
  if (shape.empty()) {
    dst[base] += src[0];
    return;
  }
  int64_t L = shape.back(), ist = dstst.back(), rows = total / L;
  size_t R = shape.size();
  // the gradient of a transposed weight, accumulated every microbatch: a column at a time was 10x slower
  if (tiled_transpose(shape, dstst, base, [&](int64_t c, int64_t st) { dst[st] += src[c]; })) return;
  pfor(rows, std::max<int64_t>(1, kGrain / L), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t off = base, q = r;
      for (size_t d = R - 1; d-- > 0;) {
        off += (q % shape[d]) * dstst[d];
        q /= shape[d];
      }
      const float* p = src + r * L;
      float* o = dst + off;
      for (int64_t i = 0; i < L; ++i) o[i * ist] += p[i];
    }
  });
}

void copy_any(void* dst, const Shape& shape, const void* src, const std::vector<int64_t>& sst, int64_t base, int64_t es) {
  switch (es) {
    case 1: strided_copy(static_cast<uint8_t*>(dst), shape, static_cast<const uint8_t*>(src), sst, base); break;
    case 2: strided_copy(static_cast<uint16_t*>(dst), shape, static_cast<const uint16_t*>(src), sst, base); break;
    case 4: strided_copy(static_cast<uint32_t*>(dst), shape, static_cast<const uint32_t*>(src), sst, base); break;
    case 8: strided_copy(static_cast<uint64_t*>(dst), shape, static_cast<const uint64_t*>(src), sst, base); break;
    default: SMP_CHECK(false, "element size {}", es);
  }
}

void require_plain(const NodeView& n, const graph::Value& v) {
  int64_t es = dtype_size(v.dtype);
  if (v.dtype == DType::String || !(es == 1 || es == 2 || es == 4 || es == 8))
    n.fail(fmt::format("dtype {} not supported", dtype_name(v.dtype)));
}

void zero_unless(Tensor& d, bool acc) {
  if (!acc) std::memset(d.raw(), 0, static_cast<size_t>(d.bytes()));
}

}  // namespace

// ---- Reshape, Flatten, Squeeze, Unsqueeze: views -----------------------------------------

std::unique_ptr<KernelState> prep_reshape(const NodeView& n) {
  require_plain(n, n.input(0));
  if (n.input(0).numel() != n.output(0).numel()) n.fail("element count changes");
  return std::make_unique<KernelState>();
}

void fwd_reshape(const KernelState& s, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  out[0] = in[0].view(s.out_shapes[0]);
}

void bwd_reshape(const KernelState&, ExecContext&, const GradIO& io) {
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  store(io.din[0].data<float>(), io.dout[0].data<float>(), io.dout[0].numel(), io.accumulate[0]);
}

// ---- Transpose ---------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_transpose(const NodeView& n) {
  auto s = std::make_unique<TransposeState>();
  require_plain(n, n.input(0));
  const Shape& x = n.input(0).shape;
  size_t R = x.size();
  std::vector<int64_t> dflt(R);
  for (size_t i = 0; i < R; ++i) dflt[i] = static_cast<int64_t>(R - 1 - i);
  s->perm = n.node().attr_ints("perm", dflt);
  if (s->perm.size() != R) n.fail("perm has the wrong length");
  std::vector<bool> seen(R, false);
  for (auto& p : s->perm) {
    if (!norm_axis(p, static_cast<int64_t>(R)) || seen[static_cast<size_t>(p)]) n.fail("perm is not a permutation");
    seen[static_cast<size_t>(p)] = true;
  }
  auto st = strides_of(x);
  for (size_t i = 0; i < R; ++i) s->src_st.push_back(st[static_cast<size_t>(s->perm[i])]);
  // backward as a gather: dX[idx] = dY[idx permuted]; dY's strides per input dim
  auto ost = strides_of(n.output(0).shape);
  s->dst_st.assign(R, 0);
  for (size_t j = 0; j < R; ++j) s->dst_st[static_cast<size_t>(s->perm[j])] = ost[j];
  return s;
}

void fwd_transpose(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const TransposeState&>(st);
  copy_any(out[0].raw(), s.out_shapes[0], in[0].raw(), s.src_st, 0, dtype_size(in[0].dtype()));
}

void bwd_transpose(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const TransposeState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  if (!io.accumulate[0]) {
    strided_copy(io.din[0].data<float>(), s.in_shapes[0], io.dout[0].data<float>(), s.dst_st, 0);
  } else {
    strided_add(io.din[0].data<float>(), s.src_st, 0, io.dout[0].data<float>(), s.out_shapes[0]);
  }
}

// ---- Concat, Split -----------------------------------------------------------------------

namespace {
// parts [outer, size_i * inner] <-> whole [outer, total * inner]
void concat_copy(const ConcatState& s, int64_t es, char* whole, std::vector<char*> parts, bool to_whole) {
  int64_t off = 0;
  for (size_t p = 0; p < parts.size(); ++p) {
    int64_t chunk = s.sizes[p] * s.inner * es, row = s.total * s.inner * es;
    if (parts[p]) {
      char* part = parts[p];
      pfor(s.outer, std::max<int64_t>(1, kGrain * 4 / std::max<int64_t>(chunk, 1)), [&](int64_t o0, int64_t o1) {
        for (int64_t o = o0; o < o1; ++o) {
          if (to_whole) std::memcpy(whole + o * row + off, part + o * chunk, static_cast<size_t>(chunk));
          else std::memcpy(part + o * chunk, whole + o * row + off, static_cast<size_t>(chunk));
        }
      });
    }
    off += chunk;
  }
}

std::unique_ptr<ConcatState> concat_geom(const NodeView& n, const Shape& whole, const std::vector<Shape>& parts, int64_t axis) {
  auto s = std::make_unique<ConcatState>();
  if (!norm_axis(axis, static_cast<int64_t>(whole.size()))) n.fail("axis out of range");
  size_t a = static_cast<size_t>(axis);
  s->outer = prod(whole, 0, a);
  s->inner = prod(whole, a + 1, whole.size());
  for (const Shape& p : parts) {
    if (p.size() != whole.size()) n.fail("parts of different ranks");
    for (size_t i = 0; i < p.size(); ++i)
      if (i != a && p[i] != whole[i]) n.fail("parts differ outside the axis");
    s->sizes.push_back(p[a]);
    s->total += p[a];
  }
  if (s->total != whole[a]) n.fail("parts do not add up along the axis");
  return s;
}
}  // namespace

std::unique_ptr<KernelState> prep_concat(const NodeView& n) {
  std::vector<Shape> parts;
  for (int i = 0; i < n.num_inputs(); ++i) {
    if (!n.has_input(i)) n.fail("absent input");
    require_plain(n, n.input(i));
    if (n.input(i).dtype != n.output(0).dtype) n.fail("inputs of different dtypes");
    parts.push_back(n.input(i).shape);
  }
  if (!n.node().has_attr("axis")) n.fail("axis missing");
  return concat_geom(n, n.output(0).shape, parts, n.node().attr_int("axis", 0));
}

void fwd_concat(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ConcatState&>(st);
  std::vector<char*> parts;
  for (const Tensor& t : in) parts.push_back(const_cast<char*>(static_cast<const char*>(t.raw())));
  concat_copy(s, dtype_size(out[0].dtype()), static_cast<char*>(out[0].raw()), parts, true);
}

void bwd_concat(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const ConcatState&>(st);
  if (!io.dout[0].defined()) return;
  std::vector<char*> parts;
  std::vector<Tensor> tmps(io.din.size());
  for (size_t i = 0; i < io.din.size(); ++i) {
    if (!io.din[i].defined()) { parts.push_back(nullptr); continue; }
    if (io.accumulate[i]) {
      tmps[i] = scratch(ctx, DType::F32, s.in_shapes[i]);
      parts.push_back(static_cast<char*>(tmps[i].raw()));
    } else {
      parts.push_back(static_cast<char*>(io.din[i].raw()));
    }
  }
  concat_copy(s, 4, const_cast<char*>(static_cast<const char*>(io.dout[0].raw())), parts, false);
  for (size_t i = 0; i < io.din.size(); ++i)
    if (tmps[i].defined()) store(io.din[i].data<float>(), tmps[i].data<float>(), tmps[i].numel(), true);
}

std::unique_ptr<KernelState> prep_split(const NodeView& n) {
  require_plain(n, n.input(0));
  std::vector<Shape> parts;
  for (int i = 0; i < n.num_outputs(); ++i) {
    if (!n.has_output(i)) n.fail("absent output");
    parts.push_back(n.output(i).shape);
  }
  return concat_geom(n, n.input(0).shape, parts, n.node().attr_int("axis", 0));
}

void fwd_split(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ConcatState&>(st);
  std::vector<char*> parts;
  for (Tensor& t : out) parts.push_back(static_cast<char*>(t.raw()));
  concat_copy(s, dtype_size(in[0].dtype()), const_cast<char*>(static_cast<const char*>(in[0].raw())), parts, false);
}

void bwd_split(const KernelState& st, ExecContext& ctx, const GradIO& io) {
  const auto& s = static_cast<const ConcatState&>(st);
  if (!io.din[0].defined()) return;
  std::vector<char*> parts;
  std::vector<Tensor> zeros;
  for (size_t i = 0; i < io.dout.size(); ++i) {
    if (io.dout[i].defined()) {
      parts.push_back(const_cast<char*>(static_cast<const char*>(io.dout[i].raw())));
    } else {
      zeros.push_back(ctx.backend->zeros(DType::F32, s.out_shapes[i]));
      parts.push_back(static_cast<char*>(zeros.back().raw()));
    }
  }
  Tensor& d = io.din[0];
  if (io.accumulate[0]) {
    Tensor t = scratch(ctx, DType::F32, s.in_shapes[0]);
    concat_copy(s, 4, static_cast<char*>(t.raw()), parts, true);
    store(d.data<float>(), t.data<float>(), t.numel(), true);
  } else {
    concat_copy(s, 4, static_cast<char*>(d.raw()), parts, true);
  }
}

// ---- Slice -------------------------------------------------------------------------------

namespace {
// Geometry from starts/ends/axes/steps.
bool slice_geom(const Shape& x, const Shape& y, std::vector<int64_t> starts, std::vector<int64_t> ends,
                std::vector<int64_t> axes, std::vector<int64_t> steps, int64_t& base, std::vector<int64_t>& sst,
                std::string& err) {
  size_t R = x.size();
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size()) {
    err = "starts, ends, axes and steps differ in length";
    return false;
  }
  auto st = strides_of(x);
  std::vector<int64_t> start(R, 0), step(R, 1), len(x.begin(), x.end());
  for (size_t k = 0; k < starts.size(); ++k) {
    int64_t a = axes[k];
    if (!norm_axis(a, static_cast<int64_t>(R))) { err = "axis out of range"; return false; }
    int64_t d = x[static_cast<size_t>(a)], s = starts[k], e = ends[k], p = steps[k];
    if (p == 0) { err = "step 0"; return false; }
    if (s < 0) s += d;
    if (e < 0) e += d;
    if (p > 0) {
      s = std::clamp<int64_t>(s, 0, d);
      e = std::clamp<int64_t>(e, 0, d);
      len[static_cast<size_t>(a)] = e > s ? (e - s + p - 1) / p : 0;
    } else {
      s = std::clamp<int64_t>(s, 0, d - 1);
      e = std::clamp<int64_t>(e, -1, d - 1);
      len[static_cast<size_t>(a)] = s > e ? (s - e + (-p) - 1) / (-p) : 0;
    }
    start[static_cast<size_t>(a)] = s;
    step[static_cast<size_t>(a)] = p;
  }
  if (Shape(len.begin(), len.end()) != y) {
    err = fmt::format("computed output {} differs from the graph's {}", shape_str(Shape(len.begin(), len.end())), shape_str(y));
    return false;
  }
  base = 0;
  sst.assign(R, 0);
  for (size_t i = 0; i < R; ++i) {
    base += start[i] * st[i];
    sst[i] = st[i] * step[i];
  }
  return true;
}
}  // namespace

void slice_runtime(const SliceState& s, std::span<const Tensor> in, int64_t& base, std::vector<int64_t>& sst) {
  if (s.known) {
    base = s.base;
    sst = s.sst;
    return;
  }
  auto get = [&](size_t i) { return i < in.size() && in[i].defined() ? tensor_ints(in[i]) : std::vector<int64_t>{}; };
  std::string err;
  if (!slice_geom(s.in_shapes[0], s.out_shapes[0], get(1), get(2), get(3), get(4), base, sst, err))
    throw_failure("node " + s.node_name + " (Slice)", err);
}

std::unique_ptr<KernelState> prep_slice(const NodeView& n) {
  auto s = std::make_unique<SliceState>();
  require_plain(n, n.input(0));
  std::vector<int64_t> starts, ends, axes, steps;
  bool known = true;
  if (n.node().has_attr("starts")) {  // opset < 10
    starts = n.node().attr_ints("starts");
    ends = n.node().attr_ints("ends");
    axes = n.node().attr_ints("axes");
  } else {
    known = n.constant_ints(1, starts) && n.constant_ints(2, ends);
    if (n.has_input(3) && !n.constant_ints(3, axes)) known = false;
    if (n.has_input(4) && !n.constant_ints(4, steps)) known = false;
    for (int i = 1; i < 5; ++i)
      if (n.has_input(i)) n.require_dtype(n.input(i), {DType::I64, DType::I32}, "slice parameter");
  }
  if (known) {
    std::string err;
    if (!slice_geom(n.input(0).shape, n.output(0).shape, starts, ends, axes, steps, s->base, s->sst, err)) n.fail(err);
    s->known = true;
  }
  return s;
}

void fwd_slice(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const SliceState&>(st);
  int64_t base;
  std::vector<int64_t> sst;
  slice_runtime(s, in, base, sst);
  copy_any(out[0].raw(), s.out_shapes[0], in[0].raw(), sst, base, dtype_size(in[0].dtype()));
}

void bwd_slice(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const SliceState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  int64_t base;
  std::vector<int64_t> sst;
  slice_runtime(s, io.in, base, sst);
  zero_unless(io.din[0], io.accumulate[0]);
  strided_add(io.din[0].data<float>(), sst, base, io.dout[0].data<float>(), s.out_shapes[0]);
}

// ---- Gather ------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_gather(const NodeView& n) {
  auto s = std::make_unique<GatherState>();
  require_plain(n, n.input(0));
  n.require_dtype(n.input(1), {DType::I64, DType::I32}, "indices");
  const Shape& x = n.input(0).shape;
  int64_t axis = n.node().attr_int("axis", 0);
  if (!norm_axis(axis, static_cast<int64_t>(x.size()))) n.fail("axis out of range");
  s->outer = prod(x, 0, static_cast<size_t>(axis));
  s->D = x[static_cast<size_t>(axis)];
  s->inner = prod(x, static_cast<size_t>(axis) + 1, x.size());
  s->nidx = n.input(1).numel();
  if (n.output(0).numel() != s->outer * s->nidx * s->inner) n.fail("output shape does not match");
  return s;
}

namespace {
std::vector<int64_t> gather_indices(const GatherState& s, const Tensor& t) {
  auto idx = tensor_ints(t);
  for (auto& i : idx) {
    if (i < -s.D || i >= s.D)
      throw_bad_input("node " + s.node_name + " (Gather)", fmt::format("index {} out of range [-{}, {})", i, s.D, s.D));
    if (i < 0) i += s.D;
  }
  return idx;
}
}  // namespace

void fwd_gather(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GatherState&>(st);
  auto idx = gather_indices(s, in[1]);
  int64_t es = dtype_size(in[0].dtype()), blk = s.inner * es;
  const char* X = static_cast<const char*>(in[0].raw());
  char* Y = static_cast<char*>(out[0].raw());
  pfor(s.outer * s.nidx, std::max<int64_t>(1, kGrain * 4 / std::max<int64_t>(blk, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t o = r / s.nidx, j = r % s.nidx;
      std::memcpy(Y + r * blk, X + (o * s.D + idx[static_cast<size_t>(j)]) * blk, static_cast<size_t>(blk));
    }
  });
}

void bwd_gather(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GatherState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: Gather backward needs the indices (not declared saved)", s.node_name);
  auto idx = gather_indices(s, io.in[1]);
  float* dX = io.din[0].data<float>();
  const float* dY = io.dout[0].data<float>();
  zero_unless(io.din[0], io.accumulate[0]);
  int64_t inner = s.inner;
  // parallel over the inner columns: no two threads touch the same element
  pfor(inner, 64, [&](int64_t c0, int64_t c1) {
    for (int64_t o = 0; o < s.outer; ++o)
      for (int64_t j = 0; j < s.nidx; ++j) {
        float* d = dX + (o * s.D + idx[static_cast<size_t>(j)]) * inner;
        const float* g = dY + (o * s.nidx + j) * inner;
#pragma omp simd
        for (int64_t c = c0; c < c1; ++c) d[c] += g[c];
      }
  });
}

// ---- GatherElements ------------------------------------------------------------------------
// y[p] = x[p with its axis coordinate replaced by idx[p]] over every position p of the indices
// (whose shape is the output's; each other dimension at most the data's). The backward adds dy
// into dx at the same positions.

std::unique_ptr<KernelState> prep_gather_elements(const NodeView& n) {
  auto s = std::make_unique<GatherElementsState>();
  require_plain(n, n.input(0));
  n.require_dtype(n.input(1), {DType::I64, DType::I32}, "indices");
  const Shape &x = n.input(0).shape, &i = n.input(1).shape;
  if (x.size() != i.size() || x.empty()) n.fail("data and indices must have the same rank (at least 1)");
  s->axis = n.node().attr_int("axis", 0);
  if (!norm_axis(s->axis, static_cast<int64_t>(x.size()))) n.fail("axis out of range");
  for (size_t d = 0; d < x.size(); ++d)
    if (static_cast<int64_t>(d) != s->axis && i[d] > x[d])
      n.fail(fmt::format("indices {} exceed the data {} along axis {}", shape_str(i), shape_str(x), d));
  if (n.output(0).shape != i) n.fail("output shape does not match the indices'");
  s->index_shape = i;
  s->data_strides.assign(x.size(), 1);
  for (size_t d = x.size() - 1; d > 0; --d) s->data_strides[d - 1] = s->data_strides[d] * x[d];
  s->D = x[static_cast<size_t>(s->axis)];
  return s;
}

namespace {
// The data offset of every index position.
std::vector<int64_t> gather_elements_offsets(const GatherElementsState& s, const Tensor& t, const char* op = "GatherElements") {
  auto idx = tensor_ints(t);
  const size_t rank = s.index_shape.size();
  std::vector<int64_t> coord(rank, 0);
  for (size_t r = 0; r < idx.size(); ++r) {
    int64_t k = idx[r];
    if (k < -s.D || k >= s.D)
      throw_bad_input("node " + s.node_name + " (" + op + ")", fmt::format("index {} out of range [-{}, {})", k, s.D, s.D));
    if (k < 0) k += s.D;
    int64_t off = 0;
    for (size_t d = 0; d < rank; ++d) off += (static_cast<int64_t>(d) == s.axis ? k : coord[d]) * s.data_strides[d];
    idx[r] = off;
    for (size_t d = rank; d-- > 0;) {
      if (++coord[d] < s.index_shape[d]) break;
      coord[d] = 0;
    }
  }
  return idx;
}
}  // namespace

void fwd_gather_elements(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GatherElementsState&>(st);
  auto off = gather_elements_offsets(s, in[1]);
  const size_t es = dtype_size(in[0].dtype());
  const char* X = static_cast<const char*>(in[0].raw());
  char* Y = static_cast<char*>(out[0].raw());
  for (size_t r = 0; r < off.size(); ++r) std::memcpy(Y + r * es, X + static_cast<size_t>(off[r]) * es, es);
}

void bwd_gather_elements(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GatherElementsState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: GatherElements backward needs the indices (not declared saved)", s.node_name);
  auto off = gather_elements_offsets(s, io.in[1]);
  zero_unless(io.din[0], io.accumulate[0]);
  float* dX = io.din[0].data<float>();
  const float* dY = io.dout[0].data<float>();
  for (size_t r = 0; r < off.size(); ++r) dX[off[r]] += dY[r];  // indices may repeat: one thread
}

// ---- ScatterElements, ScatterND -------------------------------------------------------------

std::unique_ptr<KernelState> prep_scatter(const NodeView& n) {
  auto s = std::make_unique<ScatterState>();
  s->nd = n.op() == Op::ScatterND;
  if (n.num_inputs() != 3 || !n.has_input(1) || !n.has_input(2)) n.fail("needs 3 inputs (data, indices, updates)");
  require_plain(n, n.input(0));
  n.require_dtype(n.input(1), {DType::I64, DType::I32}, "indices");
  n.require_dtype(n.input(2), {n.input(0).dtype}, "updates");
  const std::string red = n.node().attr_string("reduction", "none");
  if (red == "add") s->red = ScatterState::Red::Add;
  else if (red == "mul") s->red = ScatterState::Red::Mul;
  else if (red != "none") n.fail(fmt::format("reduction '{}' not supported (none, add, mul)", red));
  if (s->red != ScatterState::Red::None && !(n.input(0).dtype == DType::F32 || n.input(0).dtype == DType::F64 ||
                                              n.input(0).dtype == DType::I64 || n.input(0).dtype == DType::I32))
    n.fail(fmt::format("reduction '{}' of {} not supported (float32, float64, int64, int32)", red, dtype_name(n.input(0).dtype)));
  const Shape &x = n.input(0).shape, &i = n.input(1).shape, &u = n.input(2).shape;
  s->data_shape = x;
  s->data_strides.assign(x.size(), 1);
  for (size_t d = x.size(); d-- > 1;) s->data_strides[d - 1] = s->data_strides[d] * x[d];
  if (x.empty()) n.fail("data must have rank 1 or more");
  if (s->nd) {
    if (i.empty() || i.back() < 1 || i.back() > static_cast<int64_t>(x.size()))
      n.fail(fmt::format("indices {}: the last dimension must be between 1 and the data's rank {}", shape_str(i), x.size()));
    s->k = i.back();
    Shape want(i.begin(), i.end() - 1);
    want.insert(want.end(), x.begin() + s->k, x.end());
    if (u != want) n.fail(fmt::format("updates {} must be {}", shape_str(u), shape_str(want)));
    s->slice = prod(x, static_cast<size_t>(s->k), x.size());
    s->index_shape = Shape(i.begin(), i.end() - 1);
  } else {
    if (x.size() != i.size() || u != i) n.fail("data, indices and updates must have the same rank, indices and updates one shape");
    s->axis = n.node().attr_int("axis", 0);
    if (!norm_axis(s->axis, static_cast<int64_t>(x.size()))) n.fail("axis out of range");
    for (size_t d = 0; d < x.size(); ++d)
      if (static_cast<int64_t>(d) != s->axis && i[d] > x[d])
        n.fail(fmt::format("indices {} exceed the data {} along axis {}", shape_str(i), shape_str(x), d));
    s->index_shape = i;
    s->D = x[static_cast<size_t>(s->axis)];
  }
  return s;
}

namespace {
// The data offset of every update element (ScatterElements) or slice (ScatterND).
std::vector<int64_t> scatter_offsets(const ScatterState& s, const Tensor& t) {
  if (!s.nd) return gather_elements_offsets(s, t, "ScatterElements");
  auto idx = tensor_ints(t);
  std::vector<int64_t> off(idx.size() / static_cast<size_t>(s.k));
  for (size_t r = 0; r < off.size(); ++r) {
    int64_t o = 0;
    for (int64_t j = 0; j < s.k; ++j) {
      const int64_t dim = s.data_shape[static_cast<size_t>(j)];
      int64_t v = idx[r * static_cast<size_t>(s.k) + static_cast<size_t>(j)];
      if (v < -dim || v >= dim)
        throw_bad_input("node " + s.node_name + " (ScatterND)", fmt::format("index {} out of range [-{}, {}) of axis {}", v, dim, dim, j));
      o += (v < 0 ? v + dim : v) * s.data_strides[static_cast<size_t>(j)];
    }
    off[r] = o;
  }
  return off;
}

template <class T>
void scatter_reduce(const ScatterState& s, const std::vector<int64_t>& off, const T* U, T* Y) {
  const int64_t unit = s.nd ? s.slice : 1;
  for (size_t r = 0; r < off.size(); ++r)  // indices may repeat: in order, one thread
    for (int64_t e = 0; e < unit; ++e) {
      T& y = Y[off[r] + e];
      const T u = U[static_cast<int64_t>(r) * unit + e];
      y = s.red == ScatterState::Red::Add ? static_cast<T>(y + u) : static_cast<T>(y * u);
    }
}
}  // namespace

void fwd_scatter(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ScatterState&>(st);
  const auto off = scatter_offsets(s, in[1]);
  std::memcpy(out[0].raw(), in[0].raw(), static_cast<size_t>(in[0].bytes()));
  if (s.red == ScatterState::Red::None) {
    const size_t unit = static_cast<size_t>((s.nd ? s.slice : 1) * dtype_size(in[0].dtype()));
    const char* U = static_cast<const char*>(in[2].raw());
    char* Y = static_cast<char*>(out[0].raw());
    const size_t es = static_cast<size_t>(dtype_size(in[0].dtype()));
    for (size_t r = 0; r < off.size(); ++r) std::memcpy(Y + static_cast<size_t>(off[r]) * es, U + r * unit, unit);
    return;
  }
  switch (in[0].dtype()) {
    case DType::F32: scatter_reduce(s, off, in[2].data<float>(), out[0].data<float>()); break;
    case DType::F64: scatter_reduce(s, off, in[2].data<double>(), out[0].data<double>()); break;
    case DType::I64: scatter_reduce(s, off, in[2].data<int64_t>(), out[0].data<int64_t>()); break;
    case DType::I32: scatter_reduce(s, off, in[2].data<int32_t>(), out[0].data<int32_t>()); break;
    default: SMP_CHECK(false, "node {}: scatter of {}", s.node_name, dtype_name(in[0].dtype()));
  }
}

// d data: dy, with the written positions' zeroed (reduction none); d updates: dy at the positions.
void bwd_scatter(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const ScatterState&>(st);
  if (!io.dout[0].defined()) return;
  const bool want_data = io.din[0].defined(), want_upd = io.din.size() > 2 && io.din[2].defined();
  if (!want_data && !want_upd) return;
  if (s.red == ScatterState::Red::Mul)
    throw_bad_input("node " + s.node_name + (s.nd ? " (ScatterND)" : " (ScatterElements)"), "reduction 'mul' has no gradient rule");
  SMP_CHECK(io.in[1].defined(), "node {}: scatter backward needs the indices (not declared saved)", s.node_name);
  const auto off = scatter_offsets(s, io.in[1]);
  const int64_t unit = s.nd ? s.slice : 1;
  const float* dY = io.dout[0].data<float>();
  if (want_data) {
    float* dX = io.din[0].data<float>();
    const int64_t n = io.din[0].numel();
    std::vector<uint8_t> written(static_cast<size_t>(n), 0);  // stays all 0 for reduction add
    if (s.red == ScatterState::Red::None)
      for (int64_t o : off) std::fill_n(written.begin() + o, unit, uint8_t{1});
    for (int64_t i = 0; i < n; ++i) {
      const float v = written[static_cast<size_t>(i)] ? 0.0f : dY[i];
      dX[i] = io.accumulate[0] ? dX[i] + v : v;
    }
  }
  if (want_upd) {
    float* dU = io.din[2].data<float>();
    for (size_t r = 0; r < off.size(); ++r)
      for (int64_t e = 0; e < unit; ++e) {
        float& d = dU[static_cast<int64_t>(r) * unit + e];
        d = io.accumulate[2] ? d + dY[off[r] + e] : dY[off[r] + e];
      }
  }
}

// ---- GatherND ------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_gather_nd(const NodeView& n) {
  auto s = std::make_unique<GatherNdState>();
  require_plain(n, n.input(0));
  n.require_dtype(n.input(1), {DType::I64, DType::I32}, "indices");
  const Shape &x = n.input(0).shape, &i = n.input(1).shape;
  s->batch_dims = n.node().attr_int("batch_dims", 0);
  const int64_t b = s->batch_dims, r = static_cast<int64_t>(x.size()), q = static_cast<int64_t>(i.size());
  if (b < 0 || b >= std::min(r, q)) n.fail(fmt::format("batch_dims {} must be below both ranks ({}, {})", b, r, q));
  for (int64_t d = 0; d < b; ++d)
    if (x[static_cast<size_t>(d)] != i[static_cast<size_t>(d)]) n.fail("the batch dimensions of data and indices differ");
  s->k = i.back();
  if (s->k < 1 || s->k > r - b) n.fail(fmt::format("indices' last dimension {} must be between 1 and {}", s->k, r - b));
  s->data_shape = x;
  s->slice = prod(x, static_cast<size_t>(b + s->k), x.size());
  s->batch = prod(x, 0, static_cast<size_t>(b));
  s->batch_stride = prod(x, static_cast<size_t>(b), x.size());
  return s;
}

namespace {
// The data offset of every index tuple's slice.
std::vector<int64_t> gather_nd_offsets(const GatherNdState& s, const Tensor& t) {
  auto idx = tensor_ints(t);
  const size_t k = static_cast<size_t>(s.k);
  const size_t rows = idx.size() / k, per_batch = rows / static_cast<size_t>(s.batch);
  std::vector<int64_t> strides(s.data_shape.size(), 1);
  for (size_t d = s.data_shape.size(); d-- > 1;) strides[d - 1] = strides[d] * s.data_shape[d];
  std::vector<int64_t> off(rows);
  for (size_t r = 0; r < rows; ++r) {
    int64_t o = static_cast<int64_t>(r / per_batch) * s.batch_stride;
    for (size_t j = 0; j < k; ++j) {
      const size_t d = static_cast<size_t>(s.batch_dims) + j;
      const int64_t dim = s.data_shape[d];
      int64_t v = idx[r * k + j];
      if (v < -dim || v >= dim)
        throw_bad_input("node " + s.node_name + " (GatherND)", fmt::format("index {} out of range [-{}, {}) of axis {}", v, dim, dim, d));
      o += (v < 0 ? v + dim : v) * strides[d];
    }
    off[r] = o;
  }
  return off;
}
}  // namespace

void fwd_gather_nd(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const GatherNdState&>(st);
  const auto off = gather_nd_offsets(s, in[1]);
  const size_t es = static_cast<size_t>(dtype_size(in[0].dtype())), unit = static_cast<size_t>(s.slice) * es;
  const char* X = static_cast<const char*>(in[0].raw());
  char* Y = static_cast<char*>(out[0].raw());
  for (size_t r = 0; r < off.size(); ++r) std::memcpy(Y + r * unit, X + static_cast<size_t>(off[r]) * es, unit);
}

void bwd_gather_nd(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const GatherNdState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: GatherND backward needs the indices (not declared saved)", s.node_name);
  const auto off = gather_nd_offsets(s, io.in[1]);
  zero_unless(io.din[0], io.accumulate[0]);
  float* dX = io.din[0].data<float>();
  const float* dY = io.dout[0].data<float>();
  for (size_t r = 0; r < off.size(); ++r)  // tuples may repeat: one thread
    for (int64_t e = 0; e < s.slice; ++e) dX[off[r] + e] += dY[static_cast<int64_t>(r) * s.slice + e];
}

// ---- DepthToSpace, SpaceToDepth -------------------------------------------------------------

std::unique_ptr<KernelState> prep_depth_space(const NodeView& n) {
  auto s = std::make_unique<DepthSpaceState>();
  s->to_space = n.op() == Op::DepthToSpace;
  require_plain(n, n.input(0));
  const Shape& x = n.input(0).shape;
  if (x.size() != 4) n.fail(fmt::format("input {} must be 4-D (N, C, H, W)", shape_str(x)));
  s->b = n.node().attr_int("blocksize", 0);
  if (s->b < 1) n.fail("blocksize must be positive");
  const std::string mode = n.node().attr_string("mode", "DCR");
  if (mode != "DCR" && mode != "CRD") n.fail(fmt::format("mode '{}' (DCR, CRD)", mode));
  s->crd = mode == "CRD";
  s->N = x[0];
  s->C = x[1];
  s->H = x[2];
  s->W = x[3];
  if (s->to_space && s->C % (s->b * s->b) != 0) n.fail(fmt::format("channels {} not divisible by blocksize² {}", s->C, s->b * s->b));
  if (!s->to_space && (s->H % s->b != 0 || s->W % s->b != 0)) n.fail(fmt::format("H, W {}, {} not divisible by blocksize {}", s->H, s->W, s->b));
  return s;
}

namespace {
// For every output element in order, its input element (a permutation).
template <class F>
void depth_space_map(const DepthSpaceState& s, F f) {
  const int64_t b = s.b;
  int64_t o = 0;
  if (s.to_space) {
    const int64_t C2 = s.C / (b * b);
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t c = 0; c < C2; ++c)
        for (int64_t h = 0; h < s.H * b; ++h)
          for (int64_t w = 0; w < s.W * b; ++w) {
            const int64_t i = h % b, j = w % b;
            const int64_t ic = s.crd ? c * b * b + i * b + j : (i * b + j) * C2 + c;
            f(o++, ((n * s.C + ic) * s.H + h / b) * s.W + w / b);
          }
  } else {
    for (int64_t n = 0; n < s.N; ++n)
      for (int64_t oc = 0; oc < s.C * b * b; ++oc)
        for (int64_t hh = 0; hh < s.H / b; ++hh)
          for (int64_t ww = 0; ww < s.W / b; ++ww) {
            const int64_t blk = oc / s.C, c = oc % s.C, i = blk / b, j = blk % b;
            f(o++, ((n * s.C + c) * s.H + hh * b + i) * s.W + ww * b + j);
          }
  }
}
}  // namespace

void fwd_depth_space(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const DepthSpaceState&>(st);
  const size_t es = static_cast<size_t>(dtype_size(in[0].dtype()));
  const char* X = static_cast<const char*>(in[0].raw());
  char* Y = static_cast<char*>(out[0].raw());
  depth_space_map(s, [&](int64_t o, int64_t i) { std::memcpy(Y + static_cast<size_t>(o) * es, X + static_cast<size_t>(i) * es, es); });
}

void bwd_depth_space(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const DepthSpaceState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  float* dX = io.din[0].data<float>();
  const float* dY = io.dout[0].data<float>();
  const bool acc = io.accumulate[0];
  depth_space_map(s, [&](int64_t o, int64_t i) { dX[i] = acc ? dX[i] + dY[o] : dY[o]; });
}

// ---- EyeLike -------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_eye_like(const NodeView& n) {
  auto s = std::make_unique<EyeLikeState>();
  const Shape& x = n.input(0).shape;
  if (x.size() != 2) n.fail(fmt::format("input {} must be 2-D", shape_str(x)));
  require_plain(n, n.output(0));
  s->rows = x[0];
  s->cols = x[1];
  s->k = n.node().attr_int("k", 0);
  return s;
}

void fwd_eye_like(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const EyeLikeState&>(st);
  std::memset(out[0].raw(), 0, static_cast<size_t>(out[0].bytes()));
  const size_t es = static_cast<size_t>(dtype_size(out[0].dtype()));
  char one[8] = {};
  switch (out[0].dtype()) {  // 1 in the output's dtype
    case DType::F32: { float v = 1; std::memcpy(one, &v, es); break; }
    case DType::F64: { double v = 1; std::memcpy(one, &v, es); break; }
    case DType::F16: { _Float16 v = 1; std::memcpy(one, &v, es); break; }
    case DType::BF16: { uint16_t v = 0x3F80; std::memcpy(one, &v, es); break; }
    default: one[0] = 1;  // integers and bool, little-endian
  }
  char* Y = static_cast<char*>(out[0].raw());
  for (int64_t r = 0; r < s.rows; ++r) {
    const int64_t c = r + s.k;
    if (c >= 0 && c < s.cols) std::memcpy(Y + static_cast<size_t>(r * s.cols + c) * es, one, es);
  }
}

void bwd_eye_like(const KernelState&, ExecContext&, const GradIO&) {}

// ---- OneHot ----------------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_one_hot(const NodeView& n) {
  auto s = std::make_unique<OneHotState>();
  if (n.num_inputs() != 3 || !n.has_input(1) || !n.has_input(2)) n.fail("needs 3 inputs (indices, depth, values)");
  n.require_dtype(n.input(0), {DType::I64, DType::I32, DType::F32, DType::F64, DType::I8, DType::U8}, "indices");
  require_plain(n, n.input(2));
  if (n.input(2).numel() != 2) n.fail("values must have 2 elements (off, on)");
  const Shape &i = n.input(0).shape, &y = n.output(0).shape;
  int64_t axis = n.node().attr_int("axis", -1);
  if (!norm_axis(axis, static_cast<int64_t>(i.size()) + 1)) n.fail(fmt::format("axis {} out of range", axis));
  if (y.size() != i.size() + 1) n.fail("cannot infer the output's shape (the depth must be a constant)");
  s->depth = y[static_cast<size_t>(axis)];
  s->outer = prod(i, 0, static_cast<size_t>(axis));
  s->inner = prod(i, static_cast<size_t>(axis), i.size());
  return s;
}

void fwd_one_hot(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const OneHotState&>(st);
  std::vector<int64_t> idx(static_cast<size_t>(in[0].numel()));
  auto read = [&](const auto* p) {
    for (size_t k = 0; k < idx.size(); ++k) idx[k] = static_cast<int64_t>(p[k]);  // floats truncated, as ONNX casts
  };
  switch (in[0].dtype()) {
    case DType::I64: read(in[0].data<int64_t>()); break;
    case DType::I32: read(in[0].data<int32_t>()); break;
    case DType::F32: read(in[0].data<float>()); break;
    case DType::F64: read(in[0].data<double>()); break;
    case DType::I8: read(in[0].data<int8_t>()); break;
    default: read(in[0].data<uint8_t>()); break;
  }
  const size_t es = static_cast<size_t>(dtype_size(in[2].dtype()));
  const char* V = static_cast<const char*>(in[2].raw());
  char* Y = static_cast<char*>(out[0].raw());
  for (int64_t o = 0; o < s.outer; ++o)
    for (int64_t d = 0; d < s.depth; ++d)
      for (int64_t i = 0; i < s.inner; ++i) {
        int64_t v = idx[static_cast<size_t>(o * s.inner + i)];
        if (v < 0) v += s.depth;  // -depth..-1 count from the end; others out of range are all off
        std::memcpy(Y + static_cast<size_t>((o * s.depth + d) * s.inner + i) * es, V + (v == d ? es : 0), es);
      }
}

void bwd_one_hot(const KernelState&, ExecContext&, const GradIO&) {}

// ---- Expand, Tile ------------------------------------------------------------------------

std::unique_ptr<KernelState> prep_expand(const NodeView& n) {
  auto s = std::make_unique<ExpandState>();
  require_plain(n, n.input(0));
  const Shape &x = n.input(0).shape, &y = n.output(0).shape;
  if (!broadcastable_to(x, y)) n.fail(fmt::format("{} does not broadcast to {}", shape_str(x), shape_str(y)));
  s->shape = y;
  Shape xa(y.size() - x.size(), 1);
  xa.insert(xa.end(), x.begin(), x.end());
  auto st = strides_of(xa);
  for (size_t i = 0; i < y.size(); ++i) s->sst.push_back(xa[i] == 1 ? 0 : st[i]);
  s->red_src = y;
  s->red_dst = xa;
  return s;
}

void fwd_expand(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ExpandState&>(st);
  copy_any(out[0].raw(), s.shape, in[0].raw(), s.sst, 0, dtype_size(in[0].dtype()));
}

void bwd_expand(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const ExpandState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  reduce_sum_to(io.din[0].data<float>(), s.red_dst, io.dout[0].data<float>(), s.red_src, io.accumulate[0]);
}

std::unique_ptr<KernelState> prep_tile(const NodeView& n) {
  auto s = std::make_unique<ExpandState>();
  require_plain(n, n.input(0));
  const Shape &x = n.input(0).shape, &y = n.output(0).shape;
  if (x.size() != y.size()) n.fail("output rank differs");
  auto st = strides_of(x);
  for (size_t i = 0; i < x.size(); ++i) {
    if (x[i] == 0 ? y[i] != 0 : y[i] % x[i] != 0) n.fail("output is not a tiling of the input");
    int64_t r = x[i] == 0 ? 1 : y[i] / x[i];
    s->shape.push_back(r);
    s->shape.push_back(x[i]);
    s->sst.push_back(0);
    s->sst.push_back(st[i]);
    s->red_src.push_back(r);
    s->red_src.push_back(x[i]);
    s->red_dst.push_back(1);
    s->red_dst.push_back(x[i]);
  }
  return s;
}

void fwd_tile(const KernelState& st, ExecContext& ctx, std::span<Tensor> out, std::span<const Tensor> in) {
  fwd_expand(st, ctx, out, in);
}

void bwd_tile(const KernelState& st, ExecContext& ctx, const GradIO& io) { bwd_expand(st, ctx, io); }

// ---- Trilu -------------------------------------------------------------------------------

int64_t trilu_k(const TriluState& s, std::span<const Tensor> in) {
  if (s.k_known) return s.k;
  SMP_CHECK(in.size() > 1 && in[1].defined(), "node {}: Trilu needs k (not declared saved)", s.node_name);
  return tensor_ints(in[1]).at(0);
}

namespace {

template <class T>
void trilu_apply(const TriluState& s, int64_t k, const T* x, T* y, bool acc) {
  pfor(s.mats * s.N, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      int64_t i = r % s.N;
      const T* xr = x + r * s.M;
      T* yr = y + r * s.M;
      for (int64_t j = 0; j < s.M; ++j) {
        bool keep = s.upper ? (j - i >= k) : (j - i <= k);
        T v = keep ? xr[j] : T(0);
        if constexpr (std::is_same_v<T, float>) yr[j] = acc ? yr[j] + v : v;
        else yr[j] = v;
      }
    }
  });
}
}  // namespace

std::unique_ptr<KernelState> prep_trilu(const NodeView& n) {
  auto s = std::make_unique<TriluState>();
  require_plain(n, n.input(0));
  const Shape& x = n.input(0).shape;
  if (x.size() < 2) n.fail("input must be at least 2-D");
  s->upper = n.node().attr_int("upper", 1) != 0;
  if (n.has_input(1)) {
    std::vector<int64_t> k;
    if (n.constant_ints(1, k)) s->k = k.at(0);
    else s->k_known = false;
  }
  s->N = x[x.size() - 2];
  s->M = x.back();
  s->mats = prod(x, 0, x.size() - 2);
  return s;
}

void fwd_trilu(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const TriluState&>(st);
  int64_t k = trilu_k(s, in);
  switch (dtype_size(in[0].dtype())) {
    case 1: trilu_apply(s, k, static_cast<const uint8_t*>(in[0].raw()), static_cast<uint8_t*>(out[0].raw()), false); break;
    case 2: trilu_apply(s, k, static_cast<const uint16_t*>(in[0].raw()), static_cast<uint16_t*>(out[0].raw()), false); break;
    case 4: trilu_apply(s, k, static_cast<const uint32_t*>(in[0].raw()), static_cast<uint32_t*>(out[0].raw()), false); break;
    case 8: trilu_apply(s, k, static_cast<const uint64_t*>(in[0].raw()), static_cast<uint64_t*>(out[0].raw()), false); break;
  }
}

void bwd_trilu(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const TriluState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  trilu_apply(s, trilu_k(s, io.in), io.dout[0].data<float>(), io.din[0].data<float>(), io.accumulate[0]);
}

// ---- Shape, Size, Constant, ConstantOfShape, Range ---------------------------------------

std::unique_ptr<KernelState> prep_shape(const NodeView& n) {
  auto s = std::make_unique<ShapeState>();
  const Shape& x = n.input(0).shape;
  int64_t R = static_cast<int64_t>(x.size());
  int64_t b = n.node().attr_int("start", 0), e = n.node().attr_int("end", R);
  if (b < 0) b += R;
  if (e < 0) e += R;
  b = std::clamp<int64_t>(b, 0, R);
  e = std::clamp<int64_t>(e, 0, R);
  for (int64_t i = b; i < e; ++i) s->values.push_back(x[static_cast<size_t>(i)]);
  if (n.output(0).numel() != static_cast<int64_t>(s->values.size())) n.fail("output shape does not match");
  return s;
}

void fwd_shape(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const ShapeState&>(st);
  std::copy(s.values.begin(), s.values.end(), out[0].data<int64_t>());
}

void bwd_shape(const KernelState&, ExecContext&, const GradIO&) {}

std::unique_ptr<KernelState> prep_size(const NodeView& n) {
  auto s = std::make_unique<ShapeState>();
  s->values.push_back(n.input(0).numel());
  return s;
}

void fwd_size(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor>) {
  out[0].data<int64_t>()[0] = static_cast<const ShapeState&>(st).values[0];
}

void bwd_size(const KernelState&, ExecContext&, const GradIO&) {}

std::unique_ptr<KernelState> prep_constant(const NodeView& n) {
  auto s = std::make_unique<ConstState>();
  const auto& a = n.node().attrs;
  const graph::Value& y = n.output(0);
  require_plain(n, y);
  if (auto it = a.find("value"); it != a.end() && it->second.t) {
    s->data = it->second.t;
    s->bytes = s->data->bytes.copy();
  } else if (auto f = a.find("value_float"); f != a.end()) {
    float v = static_cast<float>(f->second.f);
    s->bytes.assign(reinterpret_cast<const char*>(&v), 4);
  } else if (auto fs = a.find("value_floats"); fs != a.end()) {
    for (double d : fs->second.floats) { float v = static_cast<float>(d); s->bytes.append(reinterpret_cast<const char*>(&v), 4); }
  } else if (auto i = a.find("value_int"); i != a.end()) {
    s->bytes.assign(reinterpret_cast<const char*>(&i->second.i), 8);
  } else if (auto is = a.find("value_ints"); is != a.end()) {
    for (int64_t v : is->second.ints) s->bytes.append(reinterpret_cast<const char*>(&v), 8);
  } else {
    n.fail("no supported value attribute");
  }
  if (static_cast<int64_t>(s->bytes.size()) != y.bytes()) n.fail("value does not match the output's shape and dtype");
  return s;
}

void fwd_constant(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const ConstState&>(st);
  if (!s.bytes.empty()) std::memcpy(out[0].raw(), s.bytes.data(), s.bytes.size());
}

void bwd_constant(const KernelState&, ExecContext&, const GradIO&) {}

std::unique_ptr<KernelState> prep_constant_of_shape(const NodeView& n) {
  auto s = std::make_unique<ConstState>();
  const graph::Value& y = n.output(0);
  require_plain(n, y);
  auto it = n.node().attrs.find("value");
  std::string one;
  if (it != n.node().attrs.end() && it->second.t) {
    if (it->second.t->dtype != y.dtype || it->second.t->numel() != 1) n.fail("value must be one element of the output's dtype");
    one = it->second.t->bytes.copy();
  } else {
    if (y.dtype != DType::F32) n.fail("output dtype differs from the default value's (float32)");
    one.assign(4, '\0');
  }
  s->bytes = one;
  return s;
}

void fwd_constant_of_shape(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor>) {
  const auto& s = static_cast<const ConstState&>(st);
  char* p = static_cast<char*>(out[0].raw());
  size_t es = s.bytes.size();
  for (int64_t i = 0; i < out[0].numel(); ++i) std::memcpy(p + static_cast<size_t>(i) * es, s.bytes.data(), es);
}

void bwd_constant_of_shape(const KernelState&, ExecContext&, const GradIO&) {}

std::unique_ptr<KernelState> prep_range(const NodeView& n) {
  for (int i = 0; i < 3; ++i) n.require_dtype(n.input(i), {DType::F32, DType::I64, DType::I32, DType::F64}, "input");
  if (n.input(0).dtype != n.output(0).dtype) n.fail("inputs and output differ in dtype");
  return std::make_unique<KernelState>();
}

void fwd_range(const KernelState&, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  auto run = [&](auto* y, auto start, auto delta) {
    for (int64_t i = 0; i < out[0].numel(); ++i) y[i] = static_cast<decltype(start)>(start + static_cast<decltype(start)>(i) * delta);
  };
  switch (out[0].dtype()) {
    case DType::F32: run(out[0].data<float>(), in[0].data<float>()[0], in[2].data<float>()[0]); break;
    case DType::F64: run(out[0].data<double>(), in[0].data<double>()[0], in[2].data<double>()[0]); break;
    case DType::I64: run(out[0].data<int64_t>(), in[0].data<int64_t>()[0], in[2].data<int64_t>()[0]); break;
    case DType::I32: run(out[0].data<int32_t>(), in[0].data<int32_t>()[0], in[2].data<int32_t>()[0]); break;
    default: SMP_CHECK(false, "dtype");
  }
}

void bwd_range(const KernelState&, ExecContext&, const GradIO&) {}


// ---- Pad ---------------------------------------------------------------------------------
//
// constant / reflect / edge, any rank, negative pads crop. pads (and the constant value) must be
// constant at load (PyTorch's exports compute them from shapes: folded by the loader). Each axis
// gets a map from output to input index (-1: the padding value); the backward adds the output
// gradient into the input positions those maps name (reflect and edge hit some several times).

namespace {
struct PadState : KernelState {
  std::vector<std::vector<int64_t>> map;  // per axis: output index -> input index, -1 for padding
  std::vector<int64_t> in_st;             // input strides
  std::string value;                      // bytes of the padding value, one element
  bool injective = true;                  // constant mode: every input element lands once at most
};

// f(out_row_offset, in_row_base or -1) for every row of the output (all axes but the last).
template <class F>
void pad_rows(const PadState& s, const Shape& y, F f) {
  size_t R = y.size();
  int64_t rows = R <= 1 ? 1 : prod(y, 0, R - 1);
  int64_t L = R == 0 ? 1 : y[R - 1];
  for (int64_t r = 0; r < rows; ++r) {
    int64_t rem = r, base = 0;
    bool pad = false;
    for (size_t d = R - 1; d-- > 0;) {
      int64_t o = rem % y[d];
      rem /= y[d];
      int64_t i = s.map[d][static_cast<size_t>(o)];
      if (i < 0) pad = true;
      else base += i * s.in_st[d];
    }
    f(r * L, pad ? int64_t{-1} : base);
  }
}

template <class T>
void pad_forward(const PadState& s, const Shape& y, const T* x, T* out) {
  T c;
  std::memcpy(&c, s.value.data(), sizeof(T));
  const auto& last = s.map.back();
  int64_t L = static_cast<int64_t>(last.size());
  pad_rows(s, y, [&](int64_t o, int64_t base) {
    T* dst = out + o;
    if (base < 0) {
      for (int64_t j = 0; j < L; ++j) dst[j] = c;
      return;
    }
    for (int64_t j = 0; j < L; ++j) {
      int64_t i = last[static_cast<size_t>(j)];
      dst[j] = i < 0 ? c : x[base + i];
    }
  });
}
}  // namespace

std::unique_ptr<KernelState> prep_pad(const NodeView& n) {
  auto s = std::make_unique<PadState>();
  require_plain(n, n.input(0));
  const Shape &x = n.input(0).shape, &y = n.output(0).shape;
  const size_t R = x.size();
  std::string mode = n.node().attr_string("mode", "constant");
  if (mode != "constant" && mode != "reflect" && mode != "edge")
    n.fail(fmt::format("mode '{}' not supported (constant, reflect, edge)", mode));
  std::vector<int64_t> pads;
  double value = 0;
  if (n.graph().opset >= 11 || n.graph().opset == 0) {
    if (!n.constant_ints(1, pads)) n.fail("pads must be a constant");
    if (n.has_input(2)) {
      const graph::TensorData* v = n.constant_input(2);
      if (!v || v->numel() != 1) n.fail("constant_value must be a constant scalar");
      value = v->get_f64(0);
    }
    if (n.num_inputs() > 3 && n.has_input(3)) n.fail("the axes input (opset 18) is not supported");
  } else {
    pads = n.node().attr_ints("pads");
    value = n.node().attr_float("value", 0.0);
  }
  if (pads.size() != 2 * R) n.fail(fmt::format("{} pads for rank {}", pads.size(), R));
  s->in_st = strides_of(x);
  s->injective = mode == "constant";
  for (size_t d = 0; d < R; ++d) {
    int64_t b = pads[d], e = pads[d + R], out = x[d] + b + e;
    if (out != y[d]) n.fail(fmt::format("output {} differs from the padded shape on axis {}", shape_str(y), d));
    if (mode != "constant" && x[d] == 0 && out > 0) n.fail("reflect / edge padding of an empty axis");
    if (mode == "reflect" && (b >= x[d] || e >= x[d]) && (b > 0 || e > 0))
      n.fail(fmt::format("reflect pads of {} on an axis of {}", std::max(b, e), x[d]));
    std::vector<int64_t> m(static_cast<size_t>(std::max<int64_t>(out, 0)));
    for (int64_t o = 0; o < out; ++o) {
      int64_t i = o - b;
      if (i < 0 || i >= x[d]) {
        if (mode == "constant") i = -1;
        else if (mode == "edge") i = std::clamp<int64_t>(i, 0, x[d] - 1);
        else if (x[d] == 1) i = 0;
        else {
          int64_t period = 2 * (x[d] - 1);
          i = ((i % period) + period) % period;
          if (i >= x[d]) i = period - i;
        }
      }
      m[static_cast<size_t>(o)] = i;
    }
    s->map.push_back(std::move(m));
  }
  if (R == 0) s->map.push_back({0});
  // the padding value in the input's dtype
  DType dt = n.input(0).dtype;
  s->value.assign(static_cast<size_t>(dtype_size(dt)), '\0');
  auto put = [&](auto v) { std::memcpy(s->value.data(), &v, sizeof v); };
  switch (dt) {
    case DType::F32: put(static_cast<float>(value)); break;
    case DType::F64: put(value); break;
    case DType::I64: put(static_cast<int64_t>(value)); break;
    case DType::I32: put(static_cast<int32_t>(value)); break;
    case DType::I16: put(static_cast<int16_t>(value)); break;
    case DType::I8: put(static_cast<int8_t>(value)); break;
    case DType::U8: case DType::Bool: put(static_cast<uint8_t>(value)); break;
    default: if (value != 0) n.fail(fmt::format("a non-zero padding value for dtype {}", dtype_name(dt)));
  }
  return s;
}

void fwd_pad(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const PadState&>(st);
  const Shape& y = s.out_shapes[0];
  switch (dtype_size(in[0].dtype())) {
    case 1: pad_forward(s, y, static_cast<const uint8_t*>(in[0].raw()), static_cast<uint8_t*>(out[0].raw())); break;
    case 2: pad_forward(s, y, static_cast<const uint16_t*>(in[0].raw()), static_cast<uint16_t*>(out[0].raw())); break;
    case 4: pad_forward(s, y, static_cast<const uint32_t*>(in[0].raw()), static_cast<uint32_t*>(out[0].raw())); break;
    default: pad_forward(s, y, static_cast<const uint64_t*>(in[0].raw()), static_cast<uint64_t*>(out[0].raw())); break;
  }
}

void bwd_pad(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const PadState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  float* dx = io.din[0].data<float>();
  const float* dy = io.dout[0].data<float>();
  zero_unless(io.din[0], io.accumulate[0]);
  const auto& last = s.map.back();
  int64_t L = static_cast<int64_t>(last.size());
  pad_rows(s, s.out_shapes[0], [&](int64_t o, int64_t base) {
    if (base < 0) return;
    for (int64_t j = 0; j < L; ++j) {
      int64_t i = last[static_cast<size_t>(j)];
      if (i >= 0) dx[base + i] += dy[o + j];
    }
  });
}

// ---- ReverseSequence -----------------------------------------------------------------------
//
// Row b's first sequence_lens[b] steps along the time axis reversed, the rest copied; the
// gradient is the same reversal of dy (a permutation that is its own inverse).

std::unique_ptr<KernelState> prep_reverse_sequence(const NodeView& n) {
  auto s = std::make_unique<ReverseSequenceState>();
  const Shape& x = n.input(0).shape;
  n.require_dtype(n.input(1), {DType::I64}, "sequence_lens");
  const int64_t time_axis = n.node().attr_int("time_axis", 0), batch_axis = n.node().attr_int("batch_axis", 1);
  if (x.size() < 2) n.fail(fmt::format("the input has rank {}, at least 2 needed", x.size()));
  if (!((time_axis == 0 && batch_axis == 1) || (time_axis == 1 && batch_axis == 0)))
    n.fail(fmt::format("time_axis {} and batch_axis {}: one must be 0, the other 1", time_axis, batch_axis));
  s->time_first = time_axis == 0;
  s->T = x[static_cast<size_t>(time_axis)];
  s->B = x[static_cast<size_t>(batch_axis)];
  s->inner = prod(x, 2, x.size());
  if (n.input(1).shape != Shape{s->B}) n.fail(fmt::format("sequence_lens has shape {}, [{}] expected", shape_str(n.input(1).shape), s->B));
  return s;
}

namespace {
// Y = X with each row's first lens[b] steps reversed (added to Y when `accumulate`).
void reverse_rows(const ReverseSequenceState& s, const Tensor& lens, const char* X, char* Y, int64_t es, bool accumulate) {
  const int64_t* L = lens.data<int64_t>();
  for (int64_t b = 0; b < s.B; ++b)
    if (L[b] < 0 || L[b] > s.T)
      throw_bad_input("node " + s.node_name + " (ReverseSequence)", fmt::format("sequence_lens[{}] is {}, outside [0, {}]", b, L[b], s.T));
  const int64_t blk = s.inner * es;
  pfor(s.T * s.B, std::max<int64_t>(1, kGrain * 4 / std::max<int64_t>(blk, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t t = s.time_first ? r / s.B : r % s.T, b = s.time_first ? r % s.B : r / s.T;
      const int64_t from = t < L[b] ? L[b] - 1 - t : t;
      const int64_t src = s.time_first ? from * s.B + b : b * s.T + from;
      if (!accumulate) {
        std::memcpy(Y + r * blk, X + src * blk, static_cast<size_t>(blk));
        continue;
      }
      float* y = reinterpret_cast<float*>(Y + r * blk);
      const float* x = reinterpret_cast<const float*>(X + src * blk);
      for (int64_t i = 0; i < s.inner; ++i) y[i] += x[i];
    }
  });
}
}  // namespace

void fwd_reverse_sequence(const KernelState& st, ExecContext&, std::span<Tensor> out, std::span<const Tensor> in) {
  const auto& s = static_cast<const ReverseSequenceState&>(st);
  reverse_rows(s, in[1], static_cast<const char*>(in[0].raw()), static_cast<char*>(out[0].raw()), dtype_size(in[0].dtype()), false);
}

void bwd_reverse_sequence(const KernelState& st, ExecContext&, const GradIO& io) {
  const auto& s = static_cast<const ReverseSequenceState&>(st);
  if (!io.din[0].defined() || !io.dout[0].defined()) return;
  SMP_CHECK(io.in[1].defined(), "node {}: ReverseSequence backward needs sequence_lens (not declared saved)", s.node_name);
  reverse_rows(s, io.in[1], static_cast<const char*>(io.dout[0].raw()), static_cast<char*>(io.din[0].raw()), 4, io.accumulate[0]);
}

}  // namespace smp::runtime::cpu
