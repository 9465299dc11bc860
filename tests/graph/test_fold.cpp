// The constant evaluator used by folding, op by op, on hand-checked cases.
#include <doctest/doctest.h>

#include "core/error.hpp"
#include "graph/fold.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

using namespace smp;
using namespace smp::graph;

namespace {

TensorData ints(std::vector<int64_t> v, Shape s = {}) {
  TensorData d;
  d.dtype = DType::I64;
  d.shape = s.empty() && v.size() != 1 ? Shape{static_cast<int64_t>(v.size())} : s;
  if (s.empty() && v.size() == 1) d.shape = {1};
  d.bytes.resize(v.size() * 8);
  std::memcpy(d.bytes.data(), v.data(), d.bytes.size());
  return d;
}

TensorData floats(std::vector<float> v, Shape s) {
  TensorData d;
  d.dtype = DType::F32;
  d.shape = std::move(s);
  d.bytes.resize(v.size() * 4);
  std::memcpy(d.bytes.data(), v.data(), d.bytes.size());
  return d;
}

std::vector<int64_t> values(const TensorData& d) {
  std::vector<int64_t> r;
  for (int64_t i = 0; i < d.numel(); ++i) r.push_back(d.get_i64(i));
  return r;
}

Node node(std::string op, std::map<std::string, Attribute> attrs = {}) {
  Node n;
  n.name.assign(1, 'n');
  n.op_type = std::move(op);
  n.attrs = std::move(attrs);
  return n;
}

Attribute ival(int64_t v) {
  Attribute a;
  a.kind = Attribute::Kind::Int;
  a.i = v;
  return a;
}

Attribute ivals(std::vector<int64_t> v) {
  Attribute a;
  a.kind = Attribute::Kind::Ints;
  a.ints = std::move(v);
  return a;
}

std::vector<FoldInput> in(std::vector<const TensorData*> ds) {
  std::vector<FoldInput> r;
  for (auto* d : ds) {
    FoldInput f;
    f.data = d;
    f.present = d != nullptr;
    if (d) f.shape = &d->shape;
    r.push_back(f);
  }
  return r;
}

TensorData fold1(const Node& n, std::vector<const TensorData*> ds, int64_t opset = 17) {
  auto r = fold_node(n, in(ds), opset, 1 << 20);
  REQUIRE(r.has_value());
  REQUIRE(r->size() >= 1);
  return (*r)[0];
}

}  // namespace

TEST_CASE("Shape reads only the input's shape, with start and end") {
  Shape s{2, 3, 5};
  FoldInput f;
  f.shape = &s;
  f.present = true;
  auto r = fold_node(node("Shape"), {f}, 17, 1 << 20);
  REQUIRE(r);
  CHECK(values((*r)[0]) == std::vector<int64_t>{2, 3, 5});
  r = fold_node(node("Shape", {{"start", ival(-2)}}), {f}, 17, 1 << 20);
  CHECK(values((*r)[0]) == std::vector<int64_t>{3, 5});
  r = fold_node(node("Size"), {f}, 17, 1 << 20);
  CHECK(values((*r)[0]) == std::vector<int64_t>{30});
  // Without a static shape nothing folds.
  FoldInput unknown;
  unknown.present = true;
  CHECK_FALSE(fold_node(node("Shape"), {unknown}, 17, 1 << 20).has_value());
}

TEST_CASE("Gather, Unsqueeze, Concat: the PyTorch view chain") {
  auto shape = ints({8, 64, 384});
  auto idx = ints({0}, Shape{});  // scalar index
  idx.shape = {};
  auto b = fold1(node("Gather", {{"axis", ival(0)}}), {&shape, &idx});
  CHECK(b.shape.empty());
  CHECK(values(b) == std::vector<int64_t>{8});
  auto neg = ints({-1}, Shape{});
  neg.shape = {};
  CHECK(values(fold1(node("Gather"), {&shape, &neg})) == std::vector<int64_t>{384});
  auto axes = ints({0});
  auto u = fold1(node("Unsqueeze"), {&b, &axes}, 13);
  CHECK(u.shape == Shape{1});
  auto u11 = fold1(node("Unsqueeze", {{"axes", ivals({0})}}), {&b}, 11);
  CHECK(u11.shape == Shape{1});
  auto t = ints({64}), h = ints({4}), d = ints({32});
  auto c = fold1(node("Concat", {{"axis", ival(0)}}), {&u, &t, &h, &d});
  CHECK(values(c) == std::vector<int64_t>{8, 64, 4, 32});
  auto big = ints({99});
  CHECK_THROWS_AS(fold1(node("Gather"), {&shape, &big}), Error);
}

TEST_CASE("Reshape handles 0 and -1; Slice handles negative and clamped bounds") {
  auto x = ints({1, 2, 3, 4, 5, 6}, Shape{2, 3});
  auto target = ints({0, -1, 1});
  CHECK(fold1(node("Reshape"), {&x, &target}).shape == Shape{2, 3, 1});
  auto bad = ints({4, -1});
  CHECK_THROWS_AS(fold1(node("Reshape"), {&x, &bad}), Error);

  auto v = ints({10, 11, 12, 13, 14});
  auto st = ints({-3}), en = ints({1000});
  CHECK(values(fold1(node("Slice"), {&v, &st, &en})) == std::vector<int64_t>{12, 13, 14});
  auto st2 = ints({-1}), en2 = ints({-1000}), ax = ints({0}), step = ints({-2});
  CHECK(values(fold1(node("Slice"), {&v, &st2, &en2, &ax, &step})) == std::vector<int64_t>{14, 12, 10});
}

TEST_CASE("Split: sizes from the input (opset 13) or the attribute, equal pieces without; bad sizes are bad input") {
  auto x = ints({1, 2, 3, 4, 5, 6}, Shape{2, 3});
  auto split_node = [](size_t pieces, std::map<std::string, Attribute> attrs) {
    Node n = node("Split", std::move(attrs));
    n.outputs.assign(pieces, -1);
    return n;
  };
  auto sizes = ints({1, 2});
  auto r = fold_node(split_node(2, {{"axis", ival(1)}}), in({&x, &sizes}), 17, 1 << 20);
  REQUIRE(r);
  REQUIRE(r->size() == 2);
  CHECK((*r)[0].shape == Shape{2, 1});
  CHECK(values((*r)[0]) == std::vector<int64_t>{1, 4});
  CHECK(values((*r)[1]) == std::vector<int64_t>{2, 3, 5, 6});
  auto old = fold_node(split_node(2, {{"axis", ival(-1)}, {"split", ivals({2, 1})}}), in({&x}), 11, 1 << 20);
  REQUIRE(old);
  CHECK(values((*old)[0]) == std::vector<int64_t>{1, 2, 4, 5});
  CHECK(values((*old)[1]) == std::vector<int64_t>{3, 6});
  auto equal = fold_node(split_node(2, {}), in({&x}), 17, 1 << 20);
  REQUIRE(equal);
  CHECK(values((*equal)[1]) == std::vector<int64_t>{4, 5, 6});
  CHECK_FALSE(fold_node(split_node(2, {{"axis", ival(1)}}), in({&x}), 17, 1 << 20));  // 3 columns do not halve: left to the kernel
  auto short_sizes = ints({1, 1});
  CHECK_THROWS_AS(fold_node(split_node(2, {{"axis", ival(1)}}), in({&x, &short_sizes}), 17, 1 << 20), Error);
  CHECK_THROWS_AS(fold_node(split_node(3, {{"axis", ival(1)}}), in({&x, &sizes}), 17, 1 << 20), Error);
}

TEST_CASE("NonZero: the coordinates of the nonzero elements, one row per axis, in row-major order") {
  auto x = ints({0, 3, 0, 1, 0, 2}, Shape{2, 3});
  auto nz = fold1(node("NonZero"), {&x});
  CHECK(nz.shape == Shape{2, 3});
  CHECK(values(nz) == std::vector<int64_t>{0, 1, 1, 1, 0, 2});
  auto zeros = ints({0, 0}, Shape{2});
  CHECK(fold1(node("NonZero"), {&zeros}).shape == Shape{1, 0});
}

TEST_CASE("reductions of constants: ReduceProd of a shape (torchvision's numel), axes, keepdims, integer Mean") {
  auto s = ints({2, 3, 5});
  auto p = fold1(node("ReduceProd", {{"keepdims", ival(0)}}), {&s});
  CHECK(p.shape == Shape{});
  CHECK(values(p) == std::vector<int64_t>{30});
  auto m = ints({1, 7, 3, 4, 2, 6}, Shape{2, 3});
  CHECK(values(fold1(node("ReduceMax", {{"axes", ivals({1})}}), {&m})) == std::vector<int64_t>{7, 6});
  CHECK(fold1(node("ReduceMax", {{"axes", ivals({1})}}), {&m}).shape == Shape{2, 1});
  CHECK(values(fold1(node("ReduceMin", {{"axes", ivals({0})}, {"keepdims", ival(0)}}), {&m})) == std::vector<int64_t>{1, 2, 3});
  CHECK(values(fold1(node("ReduceMean", {{"axes", ivals({-1})}}), {&m})) == std::vector<int64_t>{3, 4});  // 11 / 3, 12 / 3
  // ReduceSum's axes are an input from opset 13; none: all axes, or none with noop_with_empty_axes.
  auto axes = ints({0});
  auto f = floats({0.5f, 1.5f, 2, -4}, Shape{2, 2});
  auto sum = fold1(node("ReduceSum"), {&f, &axes});
  CHECK(sum.shape == Shape{1, 2});
  CHECK(sum.get_f64(0) == 2.5);
  CHECK(sum.get_f64(1) == -2.5);
  CHECK(fold1(node("ReduceSum", {{"keepdims", ival(0)}}), {&f, nullptr}).get_f64(0) == 0.0);
  CHECK(fold1(node("ReduceSum", {{"noop_with_empty_axes", ival(1)}}), {&f, nullptr}).shape == Shape{2, 2});
  CHECK(fold1(node("ReduceSum", {{"axes", ivals({1})}}), {&f}, 11).get_f64(1) == -2.0);
  // An empty Max has no value in the input's type: left to the runtime.
  auto empty = ints({}, Shape{0});
  CHECK_FALSE(fold_node(node("ReduceMax"), in({&empty}), 17, 1 << 20).has_value());
}

TEST_CASE("NonMaxSuppression: by score, corners in either order, IoU above the threshold suppressed, per class, capped") {
  // Boxes [y1, x1, y2, x2]: 0 and 1 overlap with IoU 0.9 / 1.1; box 2 is given flipped and
  // overlaps none; box 3 is box 0 shifted by half (IoU 0.5 / 1.5 with 0, 0.6 / 1.4 with 1).
  auto boxes = floats({0, 0, 1, 1, 0, 0.1f, 1, 1.1f, 3, 3, 2, 2, 0, 0.5f, 1, 1.5f}, Shape{1, 4, 4});
  auto scores = floats({0.9f, 0.95f, 0.3f, 0.8f, 0.1f, 0.2f, 0.7f, 0.6f}, Shape{1, 2, 4});
  auto cap = ints({10}, Shape{});
  auto iou = floats({0.5f}, Shape{});
  auto nms = fold1(node("NonMaxSuppression"), {&boxes, &scores, &cap, &iou});
  // class 0: 1 (0.95), 0 suppressed by 1, 3, 2; class 1: 2, 3, 1, 0 suppressed by 1
  CHECK(nms.shape == Shape{6, 3});
  CHECK(values(nms) == std::vector<int64_t>{0, 0, 1, 0, 0, 3, 0, 0, 2, 0, 1, 2, 0, 1, 3, 0, 1, 1});
  // A score threshold drops candidates below it; a cap of 1 keeps the best per class; no cap: nothing.
  auto thr = floats({0.65f}, Shape{});
  CHECK(values(fold1(node("NonMaxSuppression"), {&boxes, &scores, &cap, &iou, &thr})) ==
        std::vector<int64_t>{0, 0, 1, 0, 0, 3, 0, 1, 2});
  auto one_box = ints({1}, Shape{});
  CHECK(values(fold1(node("NonMaxSuppression"), {&boxes, &scores, &one_box, &iou})) == std::vector<int64_t>{0, 0, 1, 0, 1, 2});
  CHECK(fold1(node("NonMaxSuppression"), {&boxes, &scores}).shape == Shape{0, 3});
  auto bad = floats({0, 0, 1}, Shape{1, 1, 3});
  CHECK_THROWS_AS(fold_node(node("NonMaxSuppression"), in({&bad, &scores}), 17, 1 << 20), Error);
}

namespace {

// The definition, test by test: by decreasing score (ties: lower index), each kept unless its
// IoU with a box kept before exceeds the threshold (float, as onnxruntime computes it).
std::vector<int64_t> nms_by_definition(const std::vector<float>& b, const std::vector<float>& sc, int64_t classes, float thr,
                                       bool center) {
  const int64_t n = static_cast<int64_t>(b.size() / 4);
  auto box = [&](int64_t k) {
    const float* v = &b[static_cast<size_t>(k * 4)];
    if (center) return std::array<float, 4>{v[0] - v[2] / 2, v[1] - v[3] / 2, v[0] + v[2] / 2, v[1] + v[3] / 2};
    return std::array<float, 4>{std::min(v[1], v[3]), std::min(v[0], v[2]), std::max(v[1], v[3]), std::max(v[0], v[2])};
  };
  auto over = [&](const std::array<float, 4>& a, const std::array<float, 4>& c) {
    const float ix0 = std::max(a[0], c[0]), ix1 = std::min(a[2], c[2]), iy0 = std::max(a[1], c[1]), iy1 = std::min(a[3], c[3]);
    if (ix1 <= ix0 || iy1 <= iy0) return false;
    const float inter = (ix1 - ix0) * (iy1 - iy0), aa = (a[2] - a[0]) * (a[3] - a[1]), ac = (c[2] - c[0]) * (c[3] - c[1]);
    const float uni = aa + ac - inter;
    if (inter <= 0 || aa <= 0 || ac <= 0 || uni <= 0) return false;
    return inter / uni > thr;
  };
  std::vector<int64_t> out;
  for (int64_t c = 0; c < classes; ++c) {
    std::vector<int64_t> order;
    for (int64_t k = 0; k < n; ++k)
      if (!std::isnan(sc[static_cast<size_t>(c * n + k)])) order.push_back(k);
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t l, int64_t r) { return sc[static_cast<size_t>(c * n + l)] > sc[static_cast<size_t>(c * n + r)]; });
    std::vector<int64_t> kept;
    for (int64_t k : order)
      if (std::none_of(kept.begin(), kept.end(), [&](int64_t j) { return over(box(j), box(k)); })) kept.push_back(k);
    for (int64_t k : kept) out.insert(out.end(), {0, c, k});
  }
  return out;
}

}  // namespace

TEST_CASE("NonMaxSuppression: many boxes (classes offset apart as PyTorch's batched_nms exports them, wide, degenerate, "
          "NaN and infinite ones) give the definition's selection") {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0, 1);
  for (int trial = 0; trial < 6; ++trial) {
    const bool center = trial % 2 == 1;
    const int64_t n = 900, classes = trial < 4 ? 1 : 2;
    std::vector<float> b(static_cast<size_t>(n * 4)), sc(static_cast<size_t>(classes * n));
    for (int64_t k = 0; k < n; ++k) {
      float* v = &b[static_cast<size_t>(k * 4)];
      const float offset = static_cast<float>(k % 5) * 101.0f;  // 5 groups far apart (batched_nms's coordinate trick)
      const float y = offset + 100 * u(rng), x = offset + 100 * u(rng);
      float h = 1 + 20 * u(rng), w = 1 + 20 * u(rng);
      if (k % 97 == 0) w = 90;  // a few wide boxes widen the window searched
      if (k % 89 == 0) w = 0;   // degenerate: never suppresses, never suppressed
      if (center) {
        v[0] = x, v[1] = y, v[2] = w, v[3] = h;
      } else if (k % 2) {
        v[0] = y, v[1] = x, v[2] = y + h, v[3] = x + w;
      } else {
        v[0] = y + h, v[1] = x + w, v[2] = y, v[3] = x;  // corners flipped
      }
      if (k % 151 == 0) v[1] = std::nanf("");
      if (k % 173 == 0) v[3] = std::numeric_limits<float>::infinity();
    }
    for (auto& s : sc) s = std::floor(u(rng) * 200) / 200;  // ties
    const float thr = trial < 2 ? 0.5f : trial < 4 ? 0.1f : 0.0f;
    auto boxes = floats(b, Shape{1, n, 4}), scores = floats(sc, Shape{1, classes, n});
    auto cap = ints({n}, Shape{});
    auto iou = floats({thr}, Shape{});
    auto got = fold1(node("NonMaxSuppression", {{"center_point_box", ival(center ? 1 : 0)}}), {&boxes, &scores, &cap, &iou});
    const auto want = nms_by_definition(b, sc, classes, thr, center);
    INFO("trial ", trial, ": ", want.size() / 3, " kept by the definition");
    CHECK(want.size() / 3 > 50);  // suppression leaves many (the window, not a scan, decides most)
    CHECK(want.size() / 3 < static_cast<size_t>(classes * n));
    CHECK(values(got) == want);
  }
}

TEST_CASE("Unique: sorted or in order of appearance, with first indices, inverse indices and counts; slices along an axis") {
  auto x = ints({2, 1, 1, 3, 4, 3});
  auto r = fold_node(node("Unique", {{"sorted", ival(0)}}), in({&x}), 17, 1 << 20);
  REQUIRE(r);
  REQUIRE(r->size() == 4);
  CHECK(values((*r)[0]) == std::vector<int64_t>{2, 1, 3, 4});
  CHECK(values((*r)[1]) == std::vector<int64_t>{0, 1, 3, 4});
  CHECK(values((*r)[2]) == std::vector<int64_t>{0, 1, 1, 2, 3, 2});
  CHECK(values((*r)[3]) == std::vector<int64_t>{1, 2, 2, 1});
  r = fold_node(node("Unique"), in({&x}), 17, 1 << 20);
  CHECK(values((*r)[0]) == std::vector<int64_t>{1, 2, 3, 4});
  CHECK(values((*r)[2]) == std::vector<int64_t>{1, 0, 0, 2, 3, 2});
  // Columns of [[1, 0, 1], [2, 0, 2]]: (1, 2) twice and (0, 0), sorted: (0, 0) first.
  auto m = ints({1, 0, 1, 2, 0, 2}, Shape{2, 3});
  r = fold_node(node("Unique", {{"axis", ival(1)}}), in({&m}), 17, 1 << 20);
  CHECK((*r)[0].shape == Shape{2, 2});
  CHECK(values((*r)[0]) == std::vector<int64_t>{0, 1, 0, 2});
  CHECK(values((*r)[1]) == std::vector<int64_t>{1, 0});
  CHECK(values((*r)[2]) == std::vector<int64_t>{1, 0, 1});
  CHECK(values((*r)[3]) == std::vector<int64_t>{1, 2});
  // NaNs are one value, after every number.
  auto f = floats({NAN, 1, NAN}, Shape{3});
  r = fold_node(node("Unique"), in({&f}), 17, 1 << 20);
  REQUIRE(r);
  CHECK((*r)[0].get_f64(0) == 1.0);
  CHECK(std::isnan((*r)[0].get_f64(1)));
  CHECK(values((*r)[3]) == std::vector<int64_t>{1, 2});
}

TEST_CASE("Transpose follows perm, and reverses the axes without one") {
  auto x = ints({1, 2, 3, 4, 5, 6}, Shape{1, 2, 3});
  auto t = fold1(node("Transpose", {{"perm", ivals({2, 0, 1})}}), {&x});
  CHECK(t.shape == Shape{3, 1, 2});
  CHECK(values(t) == std::vector<int64_t>{1, 4, 2, 5, 3, 6});
  auto rev = fold1(node("Transpose"), {&x});
  CHECK(rev.shape == Shape{3, 2, 1});
  CHECK(values(rev) == std::vector<int64_t>{1, 4, 2, 5, 3, 6});
}

TEST_CASE("arithmetic broadcasts and keeps integer semantics") {
  auto a = ints({7, -7}), b = ints({2});
  CHECK(values(fold1(node("Div"), {&a, &b})) == std::vector<int64_t>{3, -3});
  CHECK(values(fold1(node("Mul"), {&a, &b})) == std::vector<int64_t>{14, -14});
  auto f = floats({1.f, 4.f, 9.f}, {3});
  auto r = fold1(node("Sqrt"), {&f});
  CHECK(r.dtype == DType::F32);
  CHECK(r.get_f64(2) == doctest::Approx(3.0));
  auto eq = fold1(node("Equal"), {&a, &b});
  CHECK(eq.dtype == DType::Bool);
  auto m = ints({1, 2, 3}, Shape{3, 1}), n = ints({10, 20}, Shape{1, 2});
  auto sum = fold1(node("Add"), {&m, &n});
  CHECK(sum.shape == Shape{3, 2});
  CHECK(values(sum) == std::vector<int64_t>{11, 21, 12, 22, 13, 23});
}

TEST_CASE("masks: ConstantOfShape, Trilu, Where, Range, Expand, Cast") {
  auto shape = ints({3, 3});
  Attribute one;
  one.kind = Attribute::Kind::Tensor;
  auto t = std::make_shared<TensorData>(ints({1}));
  t->dtype = DType::I64;
  one.t = t;
  auto ones = fold1(node("ConstantOfShape", {{"value", one}}), {&shape});
  CHECK(values(ones) == std::vector<int64_t>(9, 1));
  auto k = ints({1});
  auto upper = fold1(node("Trilu", {{"upper", ival(1)}}), {&ones, &k});
  CHECK(values(upper) == std::vector<int64_t>{0, 1, 1, 0, 0, 1, 0, 0, 0});
  Attribute to;
  to.kind = Attribute::Kind::Int;
  to.i = static_cast<int64_t>(DType::Bool);
  auto mask = fold1(node("Cast", {{"to", to}}), {&upper});
  CHECK(mask.dtype == DType::Bool);
  auto x = floats({-1.f}, {}), y = floats({5.f}, {});
  auto w = fold1(node("Where"), {&mask, &x, &y});
  CHECK(w.shape == Shape{3, 3});
  CHECK(w.get_f64(1) == -1.0);
  CHECK(w.get_f64(0) == 5.0);
  auto s = ints({0}), l = ints({5}), d = ints({2});
  s.shape = l.shape = d.shape = {};
  CHECK(values(fold1(node("Range"), {&s, &l, &d})) == std::vector<int64_t>{0, 2, 4});
  auto row = ints({1, 2}), tgt = ints({2, 2});
  CHECK(values(fold1(node("Expand"), {&row, &tgt})) == std::vector<int64_t>{1, 2, 1, 2});
}

TEST_CASE("folding gives up instead of building huge constants, and skips unknown ops") {
  auto shape = ints({100000, 100000});
  CHECK_FALSE(fold_node(node("ConstantOfShape"), in({&shape}), 17, 1 << 20).has_value());
  auto x = ints({1});
  CHECK_FALSE(fold_node(node("Multinomial"), in({&x}), 17, 1 << 20).has_value());
  Node custom = node("Add");
  custom.domain = "com.example";
  CHECK_FALSE(fold_node(custom, in({&x, &x}), 17, 1 << 20).has_value());
}

TEST_CASE("ScatterND: swin's shifted-window mask, slices, negative indices, reductions and bad indices") {
  // swin: a zero [4, 4] mask whose windows get region numbers, one ScatterND per region.
  auto mask = ints(std::vector<int64_t>(16, 0), {4, 4});
  auto idx = ints({2, 2, 2, 3, 3, 2, 3, 3}, {2, 2, 2});  // rows 2-3 x columns 2-3
  auto nums = ints({8, 8, 8, 8}, {2, 2});
  auto m = fold1(node("ScatterND"), {&mask, &idx, &nums});
  CHECK(m.shape == Shape{4, 4});
  CHECK(values(m) == std::vector<int64_t>{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 8, 8, 0, 0, 8, 8});
  // Index tuples shorter than the rank write whole slices; -1 counts from the end.
  auto rows = ints({0, -1}, {2, 1});
  auto upd = floats({1, 2, 3, 4, 5, 6, 7, 8}, {2, 4});
  auto x = floats(std::vector<float>(16, 0.5f), {4, 4});
  auto r = fold1(node("ScatterND"), {&x, &rows, &upd});
  CHECK(r.get_f64(0) == 1.0);
  CHECK(r.get_f64(3) == 4.0);
  CHECK(r.get_f64(4) == 0.5);
  CHECK(r.get_f64(12) == 5.0);
  CHECK(r.get_f64(15) == 8.0);
  // Reductions combine with what is there, repeated indices included.
  auto twice = ints({1, 1}, {2, 1});
  auto two = floats({1, 1, 1, 1, 2, 2, 2, 2}, {2, 4});
  Attribute add;
  add.kind = Attribute::Kind::String;
  add.s = "add";
  auto a = fold1(node("ScatterND", {{"reduction", add}}), {&x, &twice, &two});
  CHECK(a.get_f64(4) == 3.5);
  CHECK(a.get_f64(0) == 0.5);
  Attribute mx = add;
  mx.s = "max";
  CHECK(fold1(node("ScatterND", {{"reduction", mx}}), {&x, &twice, &two}).get_f64(5) == 2.0);
  // Out-of-range indices, and updates of the wrong shape, are the model's error.
  auto far = ints({4}, {1, 1});
  auto one_row = floats({1, 2, 3, 4}, {1, 4});
  CHECK_THROWS_AS(fold1(node("ScatterND"), {&x, &far, &one_row}), Error);
  auto short_upd = floats({1, 2, 3}, {1, 3});
  auto first = ints({0}, {1, 1});
  CHECK_THROWS_AS(fold1(node("ScatterND"), {&x, &first, &short_upd}), Error);
}
