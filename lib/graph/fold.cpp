#include "graph/fold.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <map>

namespace smp::graph {

namespace {

bool foldable_dtype(DType t) { return t != DType::Undefined && t != DType::String && t != DType::F16 && t != DType::BF16 && t != DType::C64 && t != DType::C128; }
bool int_domain(DType t) { return is_integer(t) || t == DType::Bool; }

// Integer arithmetic on constants wraps like the hardware instead of being undefined.
int64_t wrap_add(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) + static_cast<uint64_t>(b)); }
int64_t wrap_sub(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) - static_cast<uint64_t>(b)); }
int64_t wrap_mul(int64_t a, int64_t b) { return static_cast<int64_t>(static_cast<uint64_t>(a) * static_cast<uint64_t>(b)); }
int64_t to_i64(double v) {
  if (!(v == v)) return 0;
  if (v >= 9.2e18) return INT64_MAX;
  if (v <= -9.2e18) return INT64_MIN;
  return static_cast<int64_t>(v);
}
// Bounds a slice index so that index arithmetic cannot overflow.
int64_t clamp_index(int64_t v) { return std::clamp<int64_t>(v, -(int64_t{1} << 62), int64_t{1} << 62); }

TensorData make(DType t, Shape s) {
  TensorData d;
  d.dtype = t;
  d.shape = std::move(s);
  d.bytes.assign(static_cast<size_t>(byte_size(d.shape, dtype_size(t))), '\0');
  return d;
}

template <class T> void store(TensorData& d, int64_t i, T v) {
  std::memcpy(d.bytes.data() + i * static_cast<int64_t>(sizeof(T)), &v, sizeof(T));
}

void set_f64(TensorData& d, int64_t i, double v) {
  switch (d.dtype) {
    case DType::F32: store<float>(d, i, static_cast<float>(v)); break;
    case DType::F64: store<double>(d, i, v); break;
    default: SMP_CHECK(false, "set_f64 on {}", dtype_name(d.dtype));
  }
}

void set_i64(TensorData& d, int64_t i, int64_t v) {
  switch (d.dtype) {
    case DType::I64: store<int64_t>(d, i, v); break;
    case DType::I32: store<int32_t>(d, i, static_cast<int32_t>(v)); break;
    case DType::I16: store<int16_t>(d, i, static_cast<int16_t>(v)); break;
    case DType::I8: store<int8_t>(d, i, static_cast<int8_t>(v)); break;
    case DType::U8: store<uint8_t>(d, i, static_cast<uint8_t>(v)); break;
    case DType::Bool: store<uint8_t>(d, i, v != 0 ? 1 : 0); break;
    case DType::U16: store<uint16_t>(d, i, static_cast<uint16_t>(v)); break;
    case DType::U32: store<uint32_t>(d, i, static_cast<uint32_t>(v)); break;
    case DType::U64: store<uint64_t>(d, i, static_cast<uint64_t>(v)); break;
    case DType::F32: case DType::F64: set_f64(d, i, static_cast<double>(v)); break;
    default: SMP_CHECK(false, "set_i64 on {}", dtype_name(d.dtype));
  }
}

// Copies element `from_i` of `src` to element `to_i` of `dst` (same dtype).
void copy_elem(const TensorData& src, int64_t from_i, TensorData& dst, int64_t to_i) {
  int64_t es = dtype_size(src.dtype);
  std::memcpy(dst.bytes.data() + to_i * es, src.bytes.data() + from_i * es, static_cast<size_t>(es));
}

int64_t norm_axis(int64_t axis, int64_t rank, const Node& n) {
  int64_t a = axis < 0 ? axis + rank : axis;
  if (a < 0 || a >= std::max<int64_t>(rank, 1))
    throw_bad_input("node '" + n.name + "' (" + n.op_type + ")", fmt::format("axis {} out of range for rank {}", axis, rank));
  return a;
}

std::vector<int64_t> as_ints(const TensorData& d) {
  std::vector<int64_t> r(static_cast<size_t>(d.numel()));
  for (int64_t i = 0; i < d.numel(); ++i) r[static_cast<size_t>(i)] = d.get_i64(i);
  return r;
}

std::vector<int64_t> strides_of(const Shape& s) {
  std::vector<int64_t> st(s.size(), 1);
  for (int64_t i = static_cast<int64_t>(s.size()) - 2; i >= 0; --i) st[i] = st[i + 1] * s[i + 1];
  return st;
}

// Numpy-style broadcast of several shapes; nullopt when incompatible.
std::optional<Shape> broadcast_shapes(const std::vector<const Shape*>& shapes) {
  size_t rank = 0;
  for (auto* s : shapes) rank = std::max(rank, s->size());
  Shape out(rank, 1);
  for (auto* s : shapes) {
    for (size_t i = 0; i < s->size(); ++i) {
      int64_t d = (*s)[i];
      int64_t& o = out[rank - s->size() + i];
      if (d == o || d == 1) continue;
      if (o == 1) o = d;
      else return std::nullopt;
    }
  }
  return out;
}

// For each element of an `out`-shaped result in row-major order, the flat input index
// base + sum(idx[d] * strides[d]): the addressing of broadcasts, slices and transposes.
std::vector<int64_t> strided_offsets(const Shape& out, int64_t base, const std::vector<int64_t>& strides) {
  int64_t n = smp::numel(out);
  std::vector<int64_t> map(static_cast<size_t>(n));
  const int64_t r = static_cast<int64_t>(out.size());
  std::vector<int64_t> idx(static_cast<size_t>(r), 0);
  for (int64_t k = 0; k < n; ++k) {
    int64_t off = base;
    for (int64_t d = 0; d < r; ++d) off += idx[d] * strides[d];
    map[static_cast<size_t>(k)] = off;
    for (int64_t d = r - 1; d >= 0; --d) {
      if (++idx[d] < out[d]) break;
      idx[d] = 0;
    }
  }
  return map;
}

// For each output element, the flat index into an input of shape `in` broadcast to `out`.
std::vector<int64_t> broadcast_map(const Shape& in, const Shape& out) {
  size_t r = out.size();
  std::vector<int64_t> in_st(r, 0);
  auto st = strides_of(in);
  for (size_t i = 0; i < in.size(); ++i)
    in_st[r - in.size() + i] = in[i] == 1 ? 0 : st[i];
  return strided_offsets(out, 0, in_st);
}

using Outputs = std::optional<std::vector<TensorData>>;

std::string where(const Node& n) { return "node '" + n.name + "' (" + n.op_type + ")"; }

// An index into an axis of size dim, counted from the end when negative; out of range is the
// model's error.
int64_t norm_index(int64_t v, int64_t dim, const Node& n) {
  if (v < -dim || v >= dim) throw_bad_input(where(n), fmt::format("index {} out of range for axis of size {}", v, dim));
  return v < 0 ? v + dim : v;
}

Outputs one(TensorData d) {
  std::vector<TensorData> v;
  v.push_back(std::move(d));
  return v;
}

TensorData reshaped(const TensorData& src, Shape s) {
  TensorData d = src;
  d.shape = std::move(s);
  return d;
}

Outputs fold_binary(const Node& n, const TensorData& a, const TensorData& b) {
  const std::string& op = n.op_type;
  auto shp = broadcast_shapes({&a.shape, &b.shape});
  if (!shp) throw_bad_input(where(n), fmt::format("shapes {} and {} do not broadcast", shape_str(a.shape), shape_str(b.shape)));
  bool cmp = op == "Equal" || op == "Less" || op == "Greater" || op == "LessOrEqual" || op == "GreaterOrEqual";
  bool logic = op == "And" || op == "Or" || op == "Xor";
  DType out_t = (cmp || logic) ? DType::Bool : a.dtype;
  TensorData out = make(out_t, *shp);
  auto ma = broadcast_map(a.shape, *shp), mb = broadcast_map(b.shape, *shp);
  bool ints = int_domain(a.dtype) && int_domain(b.dtype);
  int64_t fmod = n.attr_int("fmod", 0);
  for (int64_t k = 0; k < out.numel(); ++k) {
    int64_t ia = ma[static_cast<size_t>(k)], ib = mb[static_cast<size_t>(k)];
    if (ints) {
      int64_t x = a.get_i64(ia), y = b.get_i64(ib), r = 0;
      if (op == "Add") r = wrap_add(x, y);
      else if (op == "Sub") r = wrap_sub(x, y);
      else if (op == "Mul") r = wrap_mul(x, y);
      else if (op == "Div") {
        if (y == 0) throw_bad_input(where(n), "integer division by zero in a constant");
        r = (x == INT64_MIN && y == -1) ? x : x / y;
      } else if (op == "Mod") {
        if (y == 0) throw_bad_input(where(n), "integer modulo by zero in a constant");
        r = (y == -1) ? 0 : x % y;
        if (!fmod && r != 0 && ((r < 0) != (y < 0))) r += y;
      } else if (op == "Pow") r = to_i64(std::pow(static_cast<double>(x), static_cast<double>(y)));
      else if (op == "Max") r = std::max(x, y);
      else if (op == "Min") r = std::min(x, y);
      else if (op == "Equal") r = x == y;
      else if (op == "Less") r = x < y;
      else if (op == "Greater") r = x > y;
      else if (op == "LessOrEqual") r = x <= y;
      else if (op == "GreaterOrEqual") r = x >= y;
      else if (op == "And") r = (x != 0) && (y != 0);
      else if (op == "Or") r = (x != 0) || (y != 0);
      else if (op == "Xor") r = (x != 0) != (y != 0);
      else return std::nullopt;
      set_i64(out, k, r);
    } else {
      double x = a.get_f64(ia), y = b.get_f64(ib), r = 0;
      if (op == "Add") r = x + y;
      else if (op == "Sub") r = x - y;
      else if (op == "Mul") r = x * y;
      else if (op == "Div") r = x / y;
      else if (op == "Mod") r = std::fmod(x, y);
      else if (op == "Pow") r = std::pow(x, y);
      else if (op == "Max") r = std::max(x, y);
      else if (op == "Min") r = std::min(x, y);
      else if (op == "Equal") r = x == y;
      else if (op == "Less") r = x < y;
      else if (op == "Greater") r = x > y;
      else if (op == "LessOrEqual") r = x <= y;
      else if (op == "GreaterOrEqual") r = x >= y;
      else return std::nullopt;
      if (out_t == DType::Bool) set_i64(out, k, r != 0);
      else if (int_domain(out_t)) set_i64(out, k, to_i64(r));
      else set_f64(out, k, r);
    }
  }
  return one(std::move(out));
}

Outputs fold_unary(const Node& n, const TensorData& a) {
  const std::string& op = n.op_type;
  TensorData out = make(op == "Not" ? DType::Bool : a.dtype, a.shape);
  bool ints = int_domain(a.dtype);
  for (int64_t k = 0; k < a.numel(); ++k) {
    if (ints) {
      int64_t x = a.get_i64(k), r;
      if (op == "Neg") r = wrap_sub(0, x);
      else if (op == "Abs") r = x < 0 ? wrap_sub(0, x) : x;
      else if (op == "Not") r = x == 0;
      else if (op == "Identity" || op == "Floor" || op == "Ceil") r = x;
      else if (op == "Relu") r = std::max<int64_t>(x, 0);
      else return std::nullopt;
      set_i64(out, k, r);
    } else {
      double x = a.get_f64(k), r;
      if (op == "Neg") r = -x;
      else if (op == "Abs") r = std::fabs(x);
      else if (op == "Sqrt") r = std::sqrt(x);
      else if (op == "Reciprocal") r = 1.0 / x;
      else if (op == "Floor") r = std::floor(x);
      else if (op == "Ceil") r = std::ceil(x);
      else if (op == "Exp") r = std::exp(x);
      else if (op == "Log") r = std::log(x);
      else if (op == "Relu") r = std::max(x, 0.0);
      else if (op == "Sigmoid") r = 1.0 / (1.0 + std::exp(-x));
      else if (op == "Tanh") r = std::tanh(x);
      else if (op == "Erf") r = std::erf(x);
      else if (op == "Identity") r = x;
      else return std::nullopt;
      set_f64(out, k, r);
    }
  }
  return one(std::move(out));
}

TensorData cast_to(const TensorData& a, DType to) {
  TensorData out = make(to, a.shape);
  bool from_int = int_domain(a.dtype);
  for (int64_t k = 0; k < a.numel(); ++k) {
    if (is_floating(to)) set_f64(out, k, a.get_f64(k));
    else if (to == DType::Bool) set_i64(out, k, from_int ? a.get_i64(k) != 0 : a.get_f64(k) != 0.0);
    else set_i64(out, k, from_int ? a.get_i64(k) : to_i64(a.get_f64(k)));
  }
  return out;
}

Outputs fold_gather(const Node& n, const TensorData& data, const TensorData& idx) {
  int64_t r = static_cast<int64_t>(data.shape.size());
  if (r == 0) throw_bad_input(where(n), "Gather on a scalar");
  int64_t axis = norm_axis(n.attr_int("axis", 0), r, n);
  Shape out_shape(data.shape.begin(), data.shape.begin() + axis);
  out_shape.insert(out_shape.end(), idx.shape.begin(), idx.shape.end());
  out_shape.insert(out_shape.end(), data.shape.begin() + axis + 1, data.shape.end());
  TensorData out = make(data.dtype, out_shape);
  int64_t outer = 1, inner = 1, dim = data.shape[axis];
  for (int64_t i = 0; i < axis; ++i) outer *= data.shape[i];
  for (int64_t i = axis + 1; i < r; ++i) inner *= data.shape[i];
  int64_t ni = idx.numel();
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t j = 0; j < ni; ++j) {
      const int64_t ix = norm_index(idx.get_i64(j), dim, n);
      for (int64_t q = 0; q < inner; ++q)
        copy_elem(data, (o * dim + ix) * inner + q, out, (o * ni + j) * inner + q);
    }
  return one(std::move(out));
}

Outputs fold_concat(const Node& n, const std::vector<const TensorData*>& ins) {
  int64_t r = static_cast<int64_t>(ins[0]->shape.size());
  int64_t axis = norm_axis(n.attr_int("axis", 0), r, n);
  Shape out_shape = ins[0]->shape;
  out_shape[axis] = 0;
  for (auto* t : ins) {
    if (static_cast<int64_t>(t->shape.size()) != r || t->dtype != ins[0]->dtype)
      throw_bad_input(where(n), "inputs differ in rank or dtype");
    out_shape[axis] += t->shape[axis];
  }
  TensorData out = make(ins[0]->dtype, out_shape);
  int64_t outer = 1;
  for (int64_t i = 0; i < axis; ++i) outer *= out_shape[i];
  int64_t es = dtype_size(out.dtype);
  char* dst = out.bytes.data();
  for (int64_t o = 0; o < outer; ++o)
    for (auto* t : ins) {
      int64_t chunk = t->numel() / std::max<int64_t>(outer, 1) * es;
      if (outer == 0) break;
      std::memcpy(dst, t->bytes.data() + o * chunk, static_cast<size_t>(chunk));
      dst += chunk;
    }
  return one(std::move(out));
}

// ScatterND (constant data, indices and updates: swin's shifted-window attention masks are built
// this way): a copy of data where each index tuple's slice gets its update, written in order
// (reduction none) or combined with add / mul / max / min.
Outputs fold_scatter_nd(const Node& n, const TensorData& data, const TensorData& idx, const TensorData& upd) {
  const int64_t r = static_cast<int64_t>(data.shape.size());
  if (idx.shape.empty()) throw_bad_input(where(n), "indices must have rank 1 or more");
  const int64_t k = idx.shape.back();
  if (k < 1 || k > r) throw_bad_input(where(n), fmt::format("index tuples of length {} for data of rank {}", k, r));
  Shape want(idx.shape.begin(), idx.shape.end() - 1);
  want.insert(want.end(), data.shape.begin() + k, data.shape.end());
  if (upd.shape != want)
    throw_bad_input(where(n), fmt::format("updates of shape {}, {} expected", shape_str(upd.shape), shape_str(want)));
  if (upd.dtype != data.dtype) throw_bad_input(where(n), "updates and data differ in dtype");
  const std::string red = n.attr_string("reduction", "none");
  if (red != "none" && red != "add" && red != "mul" && red != "max" && red != "min")
    throw_bad_input(where(n), fmt::format("reduction '{}' (none, add, mul, max, min)", red));
  if (red != "none" && data.dtype == DType::Bool) throw_bad_input(where(n), "reduction '" + red + "' on bool data");
  int64_t slice = 1;
  for (int64_t i = k; i < r; ++i) slice *= data.shape[i];
  std::vector<int64_t> ix = as_ints(idx);
  TensorData out = data;
  const int64_t tuples = static_cast<int64_t>(ix.size()) / k;
  const bool ints = int_domain(data.dtype);
  for (int64_t t = 0; t < tuples; ++t) {
    int64_t base = 0;
    for (int64_t a = 0; a < k; ++a) base = base * data.shape[a] + norm_index(ix[static_cast<size_t>(t * k + a)], data.shape[a], n);
    base *= slice;
    for (int64_t e = 0; e < slice; ++e) {
      const int64_t o = base + e, u = t * slice + e;
      if (red == "none") {
        copy_elem(upd, u, out, o);
      } else if (ints) {
        const int64_t a = out.get_i64(o), b = upd.get_i64(u);
        set_i64(out, o, red == "add" ? wrap_add(a, b) : red == "mul" ? wrap_mul(a, b) : red == "max" ? std::max(a, b) : std::min(a, b));
      } else {
        const double a = out.get_f64(o), b = upd.get_f64(u);
        set_f64(out, o, red == "add" ? a + b : red == "mul" ? a * b : red == "max" ? std::max(a, b) : std::min(a, b));
      }
    }
  }
  return one(std::move(out));
}

Outputs fold_slice(const Node& n, const TensorData& data, std::vector<int64_t> starts, std::vector<int64_t> ends,
                   std::vector<int64_t> axes, std::vector<int64_t> steps) {
  int64_t r = static_cast<int64_t>(data.shape.size());
  if (axes.empty())
    for (size_t i = 0; i < starts.size(); ++i) axes.push_back(static_cast<int64_t>(i));
  if (steps.empty()) steps.assign(starts.size(), 1);
  if (ends.size() != starts.size() || axes.size() != starts.size() || steps.size() != starts.size())
    throw_bad_input(where(n), "starts, ends, axes and steps differ in length");
  std::vector<int64_t> st(r, 0), en(data.shape.begin(), data.shape.end()), sp(r, 1);
  for (size_t i = 0; i < starts.size(); ++i) {
    int64_t a = norm_axis(axes[i], r, n), dim = data.shape[a], step = steps[i];
    if (step == 0) throw_bad_input(where(n), "slice step 0");
    int64_t s = clamp_index(starts[i]), e = clamp_index(ends[i]);
    if (s < 0) s += dim;
    if (e < 0) e += dim;
    if (step > 0) {
      s = std::clamp<int64_t>(s, 0, dim);
      e = std::clamp<int64_t>(e, 0, dim);
    } else {
      s = std::clamp<int64_t>(s, 0, dim - 1);
      e = std::clamp<int64_t>(e, -1, dim - 1);
    }
    st[a] = s; en[a] = e; sp[a] = step;
  }
  Shape out_shape(r);
  for (int64_t a = 0; a < r; ++a) {
    int64_t len = sp[a] > 0 ? (en[a] - st[a] + sp[a] - 1) / sp[a] : (st[a] - en[a] - sp[a] - 1) / (-sp[a]);
    out_shape[a] = std::max<int64_t>(len, 0);
  }
  TensorData out = make(data.dtype, out_shape);
  auto in_st = strides_of(data.shape);
  int64_t base = 0;
  std::vector<int64_t> strides(static_cast<size_t>(r));
  for (int64_t a = 0; a < r; ++a) {
    base += st[a] * in_st[a];
    strides[a] = sp[a] * in_st[a];
  }
  auto offsets = strided_offsets(out_shape, base, strides);
  for (int64_t k = 0; k < out.numel(); ++k) copy_elem(data, offsets[static_cast<size_t>(k)], out, k);
  return one(std::move(out));
}

Outputs fold_transpose(const Node& n, const TensorData& data) {
  int64_t r = static_cast<int64_t>(data.shape.size());
  std::vector<int64_t> perm = n.attr_ints("perm");
  if (perm.empty())
    for (int64_t i = r - 1; i >= 0; --i) perm.push_back(i);
  if (static_cast<int64_t>(perm.size()) != r) throw_bad_input(where(n), "perm length differs from the rank");
  Shape out_shape(r);
  for (int64_t i = 0; i < r; ++i) out_shape[i] = data.shape[norm_axis(perm[i], r, n)];
  TensorData out = make(data.dtype, out_shape);
  auto in_st = strides_of(data.shape);
  std::vector<int64_t> strides(static_cast<size_t>(r));
  for (int64_t i = 0; i < r; ++i) strides[i] = in_st[norm_axis(perm[i], r, n)];
  auto offsets = strided_offsets(out_shape, 0, strides);
  for (int64_t k = 0; k < out.numel(); ++k) copy_elem(data, offsets[static_cast<size_t>(k)], out, k);
  return one(std::move(out));
}

TensorData broadcast_to(const TensorData& a, const Shape& s) {
  TensorData out = make(a.dtype, s);
  auto m = broadcast_map(a.shape, s);
  for (int64_t k = 0; k < out.numel(); ++k) copy_elem(a, m[static_cast<size_t>(k)], out, k);
  return out;
}

Outputs fold_constant(const Node& n) {
  auto it = n.attrs.begin();
  if (n.attrs.size() != 1) throw_bad_input(where(n), "Constant needs exactly one value attribute");
  const std::string& key = it->first;
  const Attribute& a = it->second;
  if (key == "value") {
    if (!a.t) return std::nullopt;
    return one(*a.t);
  }
  if (key == "value_float") { TensorData d = make(DType::F32, {}); set_f64(d, 0, a.f); return one(d); }
  if (key == "value_int") { TensorData d = make(DType::I64, {}); set_i64(d, 0, a.i); return one(d); }
  if (key == "value_floats") {
    TensorData d = make(DType::F32, {static_cast<int64_t>(a.floats.size())});
    for (size_t i = 0; i < a.floats.size(); ++i) set_f64(d, static_cast<int64_t>(i), a.floats[i]);
    return one(d);
  }
  if (key == "value_ints") {
    TensorData d = make(DType::I64, {static_cast<int64_t>(a.ints.size())});
    for (size_t i = 0; i < a.ints.size(); ++i) set_i64(d, static_cast<int64_t>(i), a.ints[i]);
    return one(d);
  }
  return std::nullopt;  // strings, sparse tensors
}

// ReduceSum / Prod / Min / Max / Mean over `axes` (all when empty, unless noop_with_empty_axes),
// in int64 (wrapping) for integers and double for floats; keepdims as ONNX (default 1). An empty
// Min or Max (no identity in the input's dtype) is left to the runtime.
Outputs fold_reduce(const Node& n, const TensorData& x, std::vector<int64_t> axes, bool axes_input) {
  const int64_t r = static_cast<int64_t>(x.shape.size());
  const std::string& op = n.op_type;
  if (axes.empty() && axes_input && n.attr_int("noop_with_empty_axes", 0) != 0) return one(x);
  std::vector<bool> reduced(static_cast<size_t>(r), axes.empty());
  for (int64_t a : axes) reduced[static_cast<size_t>(norm_axis(a, r, n))] = true;
  const bool keep = n.attr_int("keepdims", 1) != 0;
  Shape out_shape, full_shape;  // full_shape: the output with every reduced axis kept as 1
  int64_t count = 1;
  for (int64_t a = 0; a < r; ++a) {
    const int64_t d = x.shape[static_cast<size_t>(a)];
    if (reduced[static_cast<size_t>(a)]) {
      count *= d;
      full_shape.push_back(1);
      if (keep) out_shape.push_back(1);
    } else {
      full_shape.push_back(d);
      out_shape.push_back(d);
    }
  }
  if (count == 0 && (op == "ReduceMin" || op == "ReduceMax")) return std::nullopt;
  const int64_t m = smp::numel(full_shape);
  const bool integer = int_domain(x.dtype);
  std::vector<double> acc_f(static_cast<size_t>(m), op == "ReduceProd" ? 1.0 : 0.0);
  std::vector<int64_t> acc_i(static_cast<size_t>(m), op == "ReduceProd" ? 1 : 0);
  std::vector<bool> seen(static_cast<size_t>(m), false);
  const std::vector<int64_t> in_strides = strides_of(x.shape), out_strides = strides_of(full_shape);
  for (int64_t i = 0; i < x.numel(); ++i) {
    int64_t o = 0;
    for (int64_t a = 0; a < r; ++a)
      if (!reduced[static_cast<size_t>(a)]) o += (i / in_strides[static_cast<size_t>(a)]) % x.shape[static_cast<size_t>(a)] * out_strides[static_cast<size_t>(a)];
    const size_t k = static_cast<size_t>(o);
    const bool first = !seen[k];
    seen[k] = true;
    if (integer) {
      const int64_t v = x.get_i64(i);
      if (op == "ReduceSum" || op == "ReduceMean") acc_i[k] = wrap_add(acc_i[k], v);
      else if (op == "ReduceProd") acc_i[k] = wrap_mul(acc_i[k], v);
      else if (op == "ReduceMin") acc_i[k] = first ? v : std::min(acc_i[k], v);
      else acc_i[k] = first ? v : std::max(acc_i[k], v);
    } else {
      const double v = x.get_f64(i);
      if (op == "ReduceSum" || op == "ReduceMean") acc_f[k] += v;
      else if (op == "ReduceProd") acc_f[k] *= v;
      else if (op == "ReduceMin") acc_f[k] = first || v < acc_f[k] || std::isnan(v) ? v : acc_f[k];
      else acc_f[k] = first || v > acc_f[k] || std::isnan(v) ? v : acc_f[k];
    }
  }
  TensorData out = make(x.dtype, out_shape);
  for (int64_t k = 0; k < m; ++k) {
    if (integer) set_i64(out, k, op == "ReduceMean" ? (count > 0 ? acc_i[static_cast<size_t>(k)] / count : 0) : acc_i[static_cast<size_t>(k)]);
    else set_f64(out, k, op == "ReduceMean" ? acc_f[static_cast<size_t>(k)] / static_cast<double>(count) : acc_f[static_cast<size_t>(k)]);
  }
  return one(std::move(out));
}

// NonMaxSuppression as ONNX defines it and onnxruntime computes it (in float): per batch and
// class, the boxes scoring above score_threshold (when given) by decreasing score (ties: lower
// index first), each kept unless its IoU with one kept before exceeds iou_threshold, at most
// max_output_boxes_per_class of them (0 or absent: none). Corners may come in either order.
Outputs fold_nms(const Node& n, const std::vector<const TensorData*>& in) {
  if (in.size() < 2 || !in[0] || !in[1]) throw_bad_input(where(n), "needs boxes and scores");
  const TensorData &boxes = *in[0], &scores = *in[1];
  if (boxes.shape.size() != 3 || boxes.shape[2] != 4 || scores.shape.size() != 3 || scores.shape[0] != boxes.shape[0] ||
      scores.shape[2] != boxes.shape[1])
    throw_bad_input(where(n), fmt::format("boxes {} and scores {}: expected [batches, boxes, 4] and [batches, classes, boxes]",
                                          shape_str(boxes.shape), shape_str(scores.shape)));
  auto scalar = [&](size_t k) -> const TensorData* {
    if (k >= in.size() || !in[k]) return nullptr;
    if (in[k]->numel() != 1) throw_bad_input(where(n), fmt::format("input {} must hold one value, has {}", k, shape_str(in[k]->shape)));
    return in[k];
  };
  const int64_t max_per_class = scalar(2) ? scalar(2)->get_i64(0) : 0;
  const float iou_threshold = scalar(3) ? static_cast<float>(scalar(3)->get_f64(0)) : 0.0f;
  const TensorData* st = scalar(4);
  const float score_threshold = st ? static_cast<float>(st->get_f64(0)) : 0.0f;
  const bool center = n.attr_int("center_point_box", 0) != 0;
  const int64_t batches = boxes.shape[0], count = boxes.shape[1], classes = scores.shape[1];
  // Each candidate is tested against the boxes kept before it: a hostile file's millions of boxes
  // stay as compute (and are refused there) rather than folding without end.
  const double work = static_cast<double>(batches) * static_cast<double>(classes) * static_cast<double>(count) *
                      static_cast<double>(std::min(std::max<int64_t>(max_per_class, 0), count));
  if (work > static_cast<double>(int64_t{1} << 32)) return std::nullopt;
  struct Box { float x0, y0, x1, y1; };
  auto box_at = [&](int64_t b, int64_t k) {
    float v[4];
    for (int j = 0; j < 4; ++j) v[j] = static_cast<float>(boxes.get_f64((b * count + k) * 4 + j));
    if (center) return Box{v[0] - v[2] / 2, v[1] - v[3] / 2, v[0] + v[2] / 2, v[1] + v[3] / 2};
    return Box{std::min(v[1], v[3]), std::min(v[0], v[2]), std::max(v[1], v[3]), std::max(v[0], v[2])};
  };
  auto suppresses = [&](const Box& a, const Box& c) {
    const float ix0 = std::max(a.x0, c.x0), ix1 = std::min(a.x1, c.x1), iy0 = std::max(a.y0, c.y0), iy1 = std::min(a.y1, c.y1);
    if (ix1 <= ix0 || iy1 <= iy0) return false;
    const float inter = (ix1 - ix0) * (iy1 - iy0);
    const float area_a = (a.x1 - a.x0) * (a.y1 - a.y0), area_c = (c.x1 - c.x0) * (c.y1 - c.y0);
    const float uni = area_a + area_c - inter;
    if (inter <= 0 || area_a <= 0 || area_c <= 0 || uni <= 0) return false;
    return inter / uni > iou_threshold;
  };
  auto finite = [](const Box& a) { return std::isfinite(a.x0) && std::isfinite(a.y0) && std::isfinite(a.x1) && std::isfinite(a.y1); };
  std::vector<std::array<int64_t, 3>> picked;
  for (int64_t b = 0; b < batches && max_per_class > 0; ++b) {
    std::vector<Box> all(static_cast<size_t>(count));
    for (int64_t k = 0; k < count; ++k) all[static_cast<size_t>(k)] = box_at(b, k);
    for (int64_t c = 0; c < classes; ++c) {
      std::vector<std::pair<float, int64_t>> cand;
      for (int64_t k = 0; k < count; ++k) {
        const float sc = static_cast<float>(scores.get_f64((b * classes + c) * count + k));
        if (std::isnan(sc)) continue;  // unordered: not a candidate (a sort needs an order)
        if (!st || sc > score_threshold) cand.emplace_back(sc, k);
      }
      std::stable_sort(cand.begin(), cand.end(), [](const auto& l, const auto& r) { return l.first > r.first; });
      // The boxes kept so far, by left edge: only those whose x-range overlaps a candidate's can
      // suppress it (without intersection no IoU exceeds the threshold), so a candidate is tested
      // against those with a left edge within the widest kept box's width of its own (in double,
      // with a margin: never fewer than overlap). PyTorch's batched_nms exports offset each
      // class's boxes apart and run one NonMaxSuppression over all of them (ssdlite320: about
      // 27,000 boxes), where testing every kept box is quadratic. Boxes with a coordinate that is
      // not finite are tested always, as before.
      std::multimap<double, int64_t> by_left;
      std::vector<int64_t> odd;  // kept boxes with a NaN or infinite coordinate
      double widest = 0;
      int64_t kept = 0;
      auto suppressed = [&](const Box& bx) {
        auto hit = [&](int64_t j) { return suppresses(all[static_cast<size_t>(j)], bx); };
        if (std::any_of(odd.begin(), odd.end(), hit)) return true;
        if (!finite(bx)) return std::any_of(by_left.begin(), by_left.end(), [&](const auto& e) { return hit(e.second); });
        const double from = static_cast<double>(bx.x0) - widest * (1 + 1e-6) - std::abs(static_cast<double>(bx.x0)) * 1e-9;
        for (auto it = by_left.lower_bound(from); it != by_left.end() && it->first < static_cast<double>(bx.x1); ++it)
          if (hit(it->second)) return true;
        return false;
      };
      for (const auto& [sc, k] : cand) {
        if (kept >= max_per_class) break;
        const Box& bx = all[static_cast<size_t>(k)];
        if (suppressed(bx)) continue;
        ++kept;
        picked.push_back({b, c, k});
        if (!finite(bx)) {
          odd.push_back(k);
        } else {
          by_left.emplace(static_cast<double>(bx.x0), k);
          widest = std::max(widest, static_cast<double>(bx.x1) - static_cast<double>(bx.x0));
        }
      }
    }
  }
  TensorData out = make(DType::I64, {static_cast<int64_t>(picked.size()), 3});
  for (size_t i = 0; i < picked.size(); ++i)
    for (int j = 0; j < 3; ++j) set_i64(out, static_cast<int64_t>(i) * 3 + j, picked[i][static_cast<size_t>(j)]);
  return one(std::move(out));
}

// Unique: the distinct elements (no axis: of the flattened input) or slices along `axis`,
// ascending (lexicographically for slices) when `sorted`, else in order of first appearance; with
// the index of each one's first appearance, each input element's (slice's) index among them, and
// their counts.
Outputs fold_unique(const Node& n, const TensorData& x, int64_t max_bytes) {
  const bool has_axis = n.has_attr("axis");
  const int64_t r = static_cast<int64_t>(x.shape.size());
  int64_t axis = 0, outer = 1, len = x.numel(), inner = 1;
  if (has_axis) {
    if (r == 0) throw_bad_input(where(n), "axis given for a scalar");
    axis = norm_axis(n.attr_int("axis", 0), r, n);
    len = x.shape[static_cast<size_t>(axis)];
    for (int64_t a = 0; a < axis; ++a) outer *= x.shape[static_cast<size_t>(a)];
    for (int64_t a = axis + 1; a < r; ++a) inner *= x.shape[static_cast<size_t>(a)];
  }
  const bool floating = is_floating(x.dtype);
  // Element j (of outer * inner) of slice k.
  auto at = [&](int64_t k, int64_t j) { return (j / inner * len + k) * inner + j % inner; };
  auto cmp = [&](int64_t a, int64_t b) {
    for (int64_t j = 0; j < outer * inner; ++j) {
      const int64_t ia = at(a, j), ib = at(b, j);
      if (floating) {  // NaNs equal one another and follow every number, as numpy.unique orders them
        const double u = x.get_f64(ia), v = x.get_f64(ib);
        if (std::isnan(u) || std::isnan(v)) {
          if (std::isnan(u) != std::isnan(v)) return std::isnan(u) ? 1 : -1;
          continue;
        }
        if (u != v) return u < v ? -1 : 1;
      } else {
        const int64_t u = x.get_i64(ia), v = x.get_i64(ib);
        if (u != v) return u < v ? -1 : 1;
      }
    }
    return 0;
  };
  std::vector<int64_t> order(static_cast<size_t>(len));
  for (int64_t k = 0; k < len; ++k) order[static_cast<size_t>(k)] = k;
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cmp(a, b) < 0; });
  std::vector<std::vector<int64_t>> groups;  // members by increasing index; the first is the first appearance
  for (int64_t k : order) {
    if (groups.empty() || cmp(groups.back().front(), k) != 0) groups.emplace_back();
    groups.back().push_back(k);
  }
  if (n.attr_int("sorted", 1) == 0)
    std::sort(groups.begin(), groups.end(), [](const auto& a, const auto& b) { return a.front() < b.front(); });
  const int64_t u = static_cast<int64_t>(groups.size());
  Shape ys = has_axis ? x.shape : Shape{u};
  if (has_axis) ys[static_cast<size_t>(axis)] = u;
  if (byte_size(ys, dtype_size(x.dtype)) > max_bytes) return std::nullopt;
  TensorData y = make(x.dtype, ys), first = make(DType::I64, {u}), inverse = make(DType::I64, {len}), counts = make(DType::I64, {u});
  for (int64_t g = 0; g < u; ++g) {
    const auto& m = groups[static_cast<size_t>(g)];
    for (int64_t j = 0; j < outer * inner; ++j) copy_elem(x, at(m.front(), j), y, (j / inner * u + g) * inner + j % inner);
    set_i64(first, g, m.front());
    set_i64(counts, g, static_cast<int64_t>(m.size()));
    for (int64_t k : m) set_i64(inverse, k, g);
  }
  std::vector<TensorData> outs;
  outs.push_back(std::move(y));
  outs.push_back(std::move(first));
  outs.push_back(std::move(inverse));
  outs.push_back(std::move(counts));
  return Outputs(std::move(outs));
}

}  // namespace

bool is_shape_only_op(const std::string& op_type) { return op_type == "Shape" || op_type == "Size"; }

std::optional<std::vector<TensorData>> fold_node(const Node& n, const std::vector<FoldInput>& in, int64_t opset,
                                                 int64_t max_bytes) {
  if (!(n.domain.empty() || n.domain == "ai.onnx")) return std::nullopt;
  const std::string& op = n.op_type;

  if (op == "Constant") return fold_constant(n);
  if (op == "Shape" || op == "Size") {
    if (in.empty() || !in[0].shape) return std::nullopt;
    const Shape& s = *in[0].shape;
    if (op == "Size") {
      TensorData d = make(DType::I64, {});
      set_i64(d, 0, smp::numel(s));
      return one(d);
    }
    int64_t r = static_cast<int64_t>(s.size());
    int64_t start = n.attr_int("start", 0), end = n.attr_int("end", r);
    if (start < 0) start += r;
    if (end < 0) end += r;
    start = std::clamp<int64_t>(start, 0, r);
    end = std::clamp<int64_t>(end, 0, r);
    TensorData d = make(DType::I64, {std::max<int64_t>(end - start, 0)});
    for (int64_t i = start; i < end; ++i) set_i64(d, i - start, s[i]);
    return one(d);
  }

  // Everything else needs the data of every present input.
  std::vector<const TensorData*> data;
  for (const auto& x : in) {
    if (!x.present) { data.push_back(nullptr); continue; }
    if (!x.data || !foldable_dtype(x.data->dtype)) return std::nullopt;
    data.push_back(x.data);
  }
  auto need = [&](size_t k) -> const TensorData& {
    if (k >= data.size() || !data[k]) throw_bad_input(where(n), fmt::format("missing input {}", k));
    return *data[k];
  };
  auto opt_ints = [&](size_t k) -> std::vector<int64_t> {
    return k < data.size() && data[k] ? as_ints(*data[k]) : std::vector<int64_t>{};
  };

  // Bound the size of what folding may create (a huge mask stays as compute).
  auto check_size = [&](const Outputs& o) -> Outputs {
    if (!o) return o;
    for (const auto& t : *o)
      if (static_cast<int64_t>(t.bytes.size()) > max_bytes) return std::nullopt;
    return o;
  };

  static const char* binary[] = {"Add", "Sub", "Mul", "Div", "Mod", "Pow", "Equal", "Less", "Greater",
                                 "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor"};
  for (const char* b : binary)
    if (op == b) {
      // Estimate the output size first: broadcasting can blow up.
      auto shp = broadcast_shapes({&need(0).shape, &need(1).shape});
      if (shp && byte_size(*shp, 8) > max_bytes) return std::nullopt;
      return check_size(fold_binary(n, need(0), need(1)));
    }
  if (op == "Max" || op == "Min") {
    if (data.empty()) return std::nullopt;
    TensorData acc = need(0);
    for (size_t k = 1; k < data.size(); ++k) {
      auto r = fold_binary(n, acc, need(k));
      if (!r) return std::nullopt;
      acc = std::move((*r)[0]);
    }
    return check_size(one(std::move(acc)));
  }
  static const char* unary[] = {"Neg", "Abs", "Sqrt", "Reciprocal", "Floor", "Ceil", "Exp", "Log", "Relu",
                                "Sigmoid", "Tanh", "Erf", "Not", "Identity"};
  for (const char* u : unary)
    if (op == u) return fold_unary(n, need(0));

  if (op == "Cast") {
    DType to = dtype_from_onnx(static_cast<int32_t>(n.attr_int("to", 0)));
    if (!foldable_dtype(to)) return std::nullopt;
    return one(cast_to(need(0), to));
  }
  if (op == "Unsqueeze") {
    std::vector<int64_t> axes = opset >= 13 ? opt_ints(1) : n.attr_ints("axes");
    const TensorData& x = need(0);
    int64_t r = static_cast<int64_t>(x.shape.size() + axes.size());
    std::vector<bool> is_new(static_cast<size_t>(r), false);
    for (int64_t a : axes) is_new[static_cast<size_t>(norm_axis(a, r, n))] = true;
    Shape s;
    size_t j = 0;
    for (int64_t i = 0; i < r; ++i) s.push_back(is_new[static_cast<size_t>(i)] ? 1 : x.shape[j++]);
    return one(reshaped(x, s));
  }
  if (op == "Squeeze") {
    std::vector<int64_t> axes = opset >= 13 ? opt_ints(1) : n.attr_ints("axes");
    const TensorData& x = need(0);
    int64_t r = static_cast<int64_t>(x.shape.size());
    std::vector<bool> drop(static_cast<size_t>(r), axes.empty());
    if (axes.empty())
      for (int64_t i = 0; i < r; ++i) drop[static_cast<size_t>(i)] = x.shape[i] == 1;
    for (int64_t a : axes) {
      int64_t k = norm_axis(a, r, n);
      if (x.shape[k] != 1) throw_bad_input(where(n), fmt::format("cannot squeeze axis {} of size {}", a, x.shape[k]));
      drop[static_cast<size_t>(k)] = true;
    }
    Shape s;
    for (int64_t i = 0; i < r; ++i)
      if (!drop[static_cast<size_t>(i)]) s.push_back(x.shape[i]);
    return one(reshaped(x, s));
  }
  if (op == "Reshape") {
    const TensorData& x = need(0);
    std::vector<int64_t> target = as_ints(need(1));
    bool allowzero = n.attr_int("allowzero", 0) != 0;
    Shape s;
    int64_t known = 1, infer = -1;
    for (size_t i = 0; i < target.size(); ++i) {
      int64_t d = target[i];
      if (d == 0 && !allowzero) {
        if (i >= x.shape.size()) throw_bad_input(where(n), "0 in the target shape past the input's rank");
        d = x.shape[i];
      }
      if (d == -1) {
        if (infer >= 0) throw_bad_input(where(n), "more than one -1 in the target shape");
        infer = static_cast<int64_t>(i);
        s.push_back(1);
        continue;
      }
      if (d < 0) throw_bad_input(where(n), fmt::format("negative dimension {} in the target shape", d));
      s.push_back(d);
      if (__builtin_mul_overflow(known, d, &known)) throw_bad_input(where(n), "target shape overflows");
    }
    if (infer >= 0) {
      if (known == 0 || x.numel() % known != 0) throw_bad_input(where(n), "cannot infer the -1 dimension");
      s[infer] = x.numel() / known;
    }
    if (smp::numel(s) != x.numel())
      throw_bad_input(where(n), fmt::format("cannot reshape {} to {}", shape_str(x.shape), shape_str(s)));
    return one(reshaped(x, s));
  }
  if (op == "Flatten") {
    const TensorData& x = need(0);
    int64_t r = static_cast<int64_t>(x.shape.size());
    int64_t axis = n.attr_int("axis", 1);
    if (axis < 0) axis += r;
    int64_t a = 1;
    for (int64_t i = 0; i < axis; ++i) a *= x.shape[i];
    return one(reshaped(x, {a, a == 0 ? 0 : x.numel() / a}));
  }
  if (op == "Concat") {
    std::vector<const TensorData*> ins;
    for (size_t k = 0; k < data.size(); ++k) ins.push_back(&need(k));
    if (ins.empty()) return std::nullopt;
    return check_size(fold_concat(n, ins));
  }
  if (op == "Gather") {
    int64_t out_elems = 0;
    if (__builtin_mul_overflow(need(0).numel(), std::max<int64_t>(need(1).numel(), 1), &out_elems) ||
        byte_size({out_elems}, dtype_size(need(0).dtype)) > max_bytes)
      return std::nullopt;
    return check_size(fold_gather(n, need(0), need(1)));
  }
  if (op == "Slice") {
    if (opset < 10)
      return fold_slice(n, need(0), n.attr_ints("starts"), n.attr_ints("ends"), n.attr_ints("axes"), {});
    return fold_slice(n, need(0), as_ints(need(1)), as_ints(need(2)), opt_ints(3), opt_ints(4));
  }
  if (op == "Split") {  // the pieces as slices (repeat_interleave's export splits a folded shape)
    const TensorData& x = need(0);
    const int64_t r = static_cast<int64_t>(x.shape.size());
    const int64_t axis = norm_axis(n.attr_int("axis", 0), r, n), dim = x.shape[static_cast<size_t>(axis)];
    const int64_t pieces = static_cast<int64_t>(n.outputs.size());
    std::vector<int64_t> sizes = opset < 13 ? n.attr_ints("split") : opt_ints(1);
    if (sizes.empty()) {
      if (pieces < 1 || dim % pieces != 0) return std::nullopt;
      sizes.assign(static_cast<size_t>(pieces), dim / pieces);
    }
    if (static_cast<int64_t>(sizes.size()) != pieces)
      throw_bad_input(where(n), fmt::format("{} split sizes for {} outputs", sizes.size(), pieces));
    std::vector<TensorData> outs;
    int64_t at = 0;
    for (int64_t size : sizes) {
      if (size < 0) throw_bad_input(where(n), fmt::format("negative split size {}", size));
      auto piece = fold_slice(n, x, {at}, {at + size}, {axis}, {});
      if (!piece) return std::nullopt;
      outs.push_back(std::move(piece->front()));
      at += size;
    }
    if (at != dim) throw_bad_input(where(n), fmt::format("split sizes sum to {}, the axis has {}", at, dim));
    return check_size(Outputs(std::move(outs)));
  }
  if (op == "NonZero") {  // [rank, count]: the coordinates of the nonzero elements, row-major
    const TensorData& x = need(0);
    const int64_t r = static_cast<int64_t>(x.shape.size());
    if (r == 0) return std::nullopt;
    std::vector<int64_t> at;
    for (int64_t k = 0; k < x.numel(); ++k)
      if (x.get_f64(k) != 0) at.push_back(k);
    const int64_t count = static_cast<int64_t>(at.size());
    if (byte_size({r, count}, 8) > max_bytes) return std::nullopt;
    TensorData out = make(DType::I64, {r, count});
    for (int64_t j = 0; j < count; ++j) {
      int64_t rest = at[static_cast<size_t>(j)];
      for (int64_t a = r - 1; a >= 0; --a) {
        set_i64(out, a * count + j, rest % x.shape[static_cast<size_t>(a)]);
        rest /= x.shape[static_cast<size_t>(a)];
      }
    }
    return one(std::move(out));
  }
  if (op == "ReduceSum" || op == "ReduceProd" || op == "ReduceMin" || op == "ReduceMax" || op == "ReduceMean") {
    // Axes as an input from ReduceSum 13 (the others from 18, after what smp reads).
    const bool axes_input = op == "ReduceSum" && opset >= 13;
    return check_size(fold_reduce(n, need(0), axes_input ? opt_ints(1) : n.attr_ints("axes"), axes_input));
  }
  if (op == "NonMaxSuppression") return check_size(fold_nms(n, data));
  if (op == "Unique") return check_size(fold_unique(n, need(0), max_bytes));
  if (op == "Transpose") return fold_transpose(n, need(0));
  if (op == "ScatterND") return check_size(fold_scatter_nd(n, need(0), need(1), need(2)));
  if (op == "ConstantOfShape") {
    std::vector<int64_t> s = as_ints(need(0));
    for (int64_t d : s)
      if (d < 0) throw_bad_input(where(n), "negative dimension in the shape");
    auto it = n.attrs.find("value");
    DType t = it != n.attrs.end() && it->second.t ? it->second.t->dtype : DType::F32;
    if (!foldable_dtype(t)) return std::nullopt;
    if (byte_size(s, dtype_size(t)) > max_bytes) return std::nullopt;
    TensorData out = make(t, s);
    if (it != n.attrs.end() && it->second.t && it->second.t->numel() >= 1)
      for (int64_t k = 0; k < out.numel(); ++k) copy_elem(*it->second.t, 0, out, k);
    return one(std::move(out));
  }
  if (op == "Range") {
    const TensorData &s = need(0), &l = need(1), &d = need(2);
    double start = s.get_f64(0), limit = l.get_f64(0), delta = d.get_f64(0);
    if (delta == 0) throw_bad_input(where(n), "Range with delta 0");
    double steps = std::ceil((limit - start) / delta);
    if (!(steps < static_cast<double>(max_bytes))) return std::nullopt;  // also NaN
    int64_t count = std::max<int64_t>(static_cast<int64_t>(steps), 0);
    if (count > max_bytes || count * dtype_size(s.dtype) > max_bytes) return std::nullopt;
    TensorData out = make(s.dtype, {count});
    for (int64_t k = 0; k < count; ++k) {
      if (int_domain(s.dtype)) set_i64(out, k, wrap_add(s.get_i64(0), wrap_mul(k, d.get_i64(0))));
      else set_f64(out, k, start + static_cast<double>(k) * delta);
    }
    return one(std::move(out));
  }
  if (op == "Expand") {
    Shape target = as_ints(need(1));
    auto shp = broadcast_shapes({&need(0).shape, &target});
    if (!shp) throw_bad_input(where(n), "input does not broadcast to the target shape");
    if (byte_size(*shp, dtype_size(need(0).dtype)) > max_bytes) return std::nullopt;
    return one(broadcast_to(need(0), *shp));
  }
  if (op == "Where") {
    const TensorData &c = need(0), &x = need(1), &y = need(2);
    auto shp = broadcast_shapes({&c.shape, &x.shape, &y.shape});
    if (!shp) throw_bad_input(where(n), "inputs do not broadcast");
    if (byte_size(*shp, dtype_size(x.dtype)) > max_bytes) return std::nullopt;
    TensorData out = make(x.dtype, *shp);
    auto mc = broadcast_map(c.shape, *shp), mx = broadcast_map(x.shape, *shp), my = broadcast_map(y.shape, *shp);
    for (int64_t k = 0; k < out.numel(); ++k) {
      size_t kk = static_cast<size_t>(k);
      if (c.get_i64(mc[kk]) != 0) copy_elem(x, mx[kk], out, k);
      else copy_elem(y, my[kk], out, k);
    }
    return one(std::move(out));
  }
  if (op == "Tile") {
    const TensorData& x = need(0);
    std::vector<int64_t> reps = as_ints(need(1));
    if (reps.size() != x.shape.size()) throw_bad_input(where(n), "repeats length differs from the rank");
    Shape s = x.shape;
    for (size_t i = 0; i < s.size(); ++i) {
      if (reps[i] < 0) throw_bad_input(where(n), "negative repeat count");
      if (__builtin_mul_overflow(s[i], reps[i], &s[i])) return std::nullopt;
    }
    if (byte_size(s, dtype_size(x.dtype)) > max_bytes) return std::nullopt;
    TensorData out = make(x.dtype, s);
    auto in_st = strides_of(x.shape);
    std::vector<int64_t> idx(s.size(), 0);
    for (int64_t k = 0; k < out.numel(); ++k) {
      int64_t off = 0;
      for (size_t i = 0; i < s.size(); ++i) off += (idx[i] % x.shape[i]) * in_st[i];
      copy_elem(x, off, out, k);
      for (int64_t i = static_cast<int64_t>(s.size()) - 1; i >= 0; --i) {
        if (++idx[i] < s[i]) break;
        idx[i] = 0;
      }
    }
    return one(std::move(out));
  }
  if (op == "Trilu") {
    const TensorData& x = need(0);
    if (x.shape.size() < 2) throw_bad_input(where(n), "Trilu needs rank >= 2");
    int64_t k = data.size() > 1 && data[1] ? data[1]->get_i64(0) : 0;
    bool upper = n.attr_int("upper", 1) != 0;
    TensorData out = x;
    int64_t rows = x.shape[x.shape.size() - 2], cols = x.shape.back();
    int64_t es = dtype_size(x.dtype);
    for (int64_t m = 0; m < x.numel() / std::max<int64_t>(rows * cols, 1); ++m)
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) {
          bool keep = upper ? (j - i >= k) : (j - i <= k);
          if (!keep) std::memset(out.bytes.data() + ((m * rows + i) * cols + j) * es, 0, static_cast<size_t>(es));
        }
    return one(std::move(out));
  }
  return std::nullopt;
}

}  // namespace smp::graph
