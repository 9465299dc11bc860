#include "train/data.hpp"

#include "core/error.hpp"
#include "runtime/npy.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <cstring>
#include <random>

namespace smp::train {

namespace fs = std::filesystem;

namespace {

Shape without_batch(const Shape& s) { return s.empty() ? s : Shape(s.begin() + 1, s.end()); }

Array read_array(const fs::path& file, const std::string& name) {
  runtime::NpyArray a = runtime::read_npy(file);
  if (a.shape.empty()) throw_bad_input(file.string(), "a scalar, expected one row per sample");
  Array r;
  r.name = name;
  r.dtype = a.dtype;
  r.rows = a.shape[0];
  r.sample = without_batch(a.shape);
  r.bytes = std::move(a.bytes);
  return r;
}

// A numpy-agnostic random source whose sequence is fixed by the seed.
struct Rng {
  std::mt19937_64 g;
  explicit Rng(uint64_t seed) : g(seed) {}
  uint64_t below(uint64_t n) { return g() % n; }
  double gauss() {
    double u1 = (static_cast<double>(g() >> 11) + 0.5) * 0x1.0p-53;
    double u2 = (static_cast<double>(g() >> 11) + 0.5) * 0x1.0p-53;
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
  }
};

}  // namespace

LabelSpec label_spec(const graph::Graph& g) {
  if (g.outputs.size() != 1)
    throw_bad_input(g.model_path.string(), fmt::format("the model has {} outputs", g.outputs.size()),
                    "smp trains models with one output (logits, a prediction or the loss)");
  const graph::Value& out = g.value(g.outputs[0]);
  LabelSpec s;
  Shape sample = without_batch(out.shape);
  if (numel(out.shape) == 1) {
    s.self_loss = true;
    return s;
  }
  s.value_shape = sample;
  if (!sample.empty()) {
    s.classes = sample.back();
    s.class_shape = Shape(sample.begin(), sample.end() - 1);
  }
  return s;
}

Dataset load_dataset(const fs::path& dir, const graph::Graph& g, int64_t min_rows) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) throw_bad_input(dir.string(), "not a directory", "--data takes a directory of .npy files");
  Dataset d;
  d.source = dir.string();
  for (int id : g.inputs) {
    const graph::Value& v = g.value(id);
    fs::path f = dir / (v.name + ".npy");
    if (!fs::exists(f, ec))
      throw_bad_input(f.string(), "missing", fmt::format("one file per model input: {} {} per row", dtype_name(v.dtype),
                                                         shape_str(without_batch(v.shape))));
    Array a = read_array(f, v.name);
    if (a.dtype != v.dtype)
      throw_bad_input(f.string(), fmt::format("holds {}, the model's input '{}' is {}", dtype_name(a.dtype), v.name,
                                              dtype_name(v.dtype)));
    if (a.sample != without_batch(v.shape))
      throw_bad_input(f.string(), fmt::format("rows of shape {}, the model's input '{}' takes {}", shape_str(a.sample),
                                              v.name, shape_str(without_batch(v.shape))));
    d.inputs.push_back(std::move(a));
  }
  LabelSpec ls = label_spec(g);
  if (!ls.self_loss) {
    fs::path f = dir / "labels.npy";
    if (!fs::exists(f, ec))
      throw_bad_input(f.string(), "missing", fmt::format("int64 class indices of shape {} or float32 targets of shape {} per row",
                                                         shape_str(ls.class_shape), shape_str(ls.value_shape)));
    Array a = read_array(f, "labels");
    if (is_integer(a.dtype)) {
      if (a.dtype != DType::I64 && a.dtype != DType::I32)
        throw_bad_input(f.string(), fmt::format("class indices must be int64 or int32, not {}", dtype_name(a.dtype)));
      if (a.sample != ls.class_shape)
        throw_bad_input(f.string(), fmt::format("class indices of shape {} per row, the output {} needs {}", shape_str(a.sample),
                                                shape_str(ls.value_shape), shape_str(ls.class_shape)));
      for (int64_t i = 0; i < a.rows * numel(a.sample); ++i) {
        int64_t c = a.dtype == DType::I64 ? reinterpret_cast<const int64_t*>(a.bytes.data())[i]
                                          : reinterpret_cast<const int32_t*>(a.bytes.data())[i];
        if (c < 0 || c >= ls.classes)
          throw_bad_input(f.string(), fmt::format("class index {} at element {} is outside 0..{}", c, i, ls.classes - 1));
      }
    } else if (a.dtype == DType::F32) {
      if (a.sample != ls.value_shape)
        throw_bad_input(f.string(), fmt::format("float targets of shape {} per row, the output needs {}", shape_str(a.sample),
                                                shape_str(ls.value_shape)));
    } else {
      throw_bad_input(f.string(), fmt::format("labels of dtype {}", dtype_name(a.dtype)),
                      "int64 class indices or float32 targets");
    }
    d.has_labels = true;
    d.labels = std::move(a);
  }
  d.rows = d.inputs.empty() ? 0 : d.inputs[0].rows;
  auto check_rows = [&](const Array& a, const std::string& file) {
    if (a.rows != d.rows)
      throw_bad_input((dir / file).string(), fmt::format("{} rows, {} has {}", a.rows, d.inputs[0].name + ".npy", d.rows));
  };
  for (const auto& a : d.inputs) check_rows(a, a.name + ".npy");
  if (d.has_labels) check_rows(d.labels, "labels.npy");
  if (d.rows < min_rows)
    throw_bad_input((dir / (d.inputs.empty() ? "labels.npy" : d.inputs[0].name + ".npy")).string(),
                    fmt::format("{} rows, fewer than one batch of {}", d.rows, min_rows), "add rows or lower --batch-size");
  return d;
}

Dataset synthetic_dataset(const graph::Graph& g, int64_t rows, uint64_t seed) {
  Rng rng(seed);
  Dataset d;
  d.rows = rows;
  LabelSpec ls = label_spec(g);
  int64_t vocab = ls.classes >= 2 ? ls.classes : 16;
  // Per row: token start and stride (token inputs); the float inputs.
  std::vector<int64_t> start(static_cast<size_t>(rows)), stride(static_cast<size_t>(rows));
  for (int64_t r = 0; r < rows; ++r) {
    start[static_cast<size_t>(r)] = static_cast<int64_t>(rng.below(static_cast<uint64_t>(vocab)));
    stride[static_cast<size_t>(r)] = 1 + static_cast<int64_t>(rng.below(3));
  }
  bool tokens = false;
  int first_float = -1;  // index of the first float input
  for (int id : g.inputs) {
    const graph::Value& v = g.value(id);
    Array a;
    a.name = v.name;
    a.dtype = v.dtype;
    a.sample = without_batch(v.shape);
    a.rows = rows;
    int64_t per = numel(a.sample);
    a.bytes.resize(static_cast<size_t>(rows * a.row_bytes()));
    if (v.dtype == DType::I64 || v.dtype == DType::I32) {
      tokens = true;
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t t = 0; t < per; ++t) {
          int64_t tok = (start[static_cast<size_t>(r)] + t * stride[static_cast<size_t>(r)]) % vocab;
          if (v.dtype == DType::I64) reinterpret_cast<int64_t*>(a.bytes.data())[r * per + t] = tok;
          else reinterpret_cast<int32_t*>(a.bytes.data())[r * per + t] = static_cast<int32_t>(tok);
        }
    } else if (v.dtype == DType::F32) {
      float* p = reinterpret_cast<float*>(a.bytes.data());
      for (int64_t i = 0; i < rows * per; ++i) p[i] = static_cast<float>(rng.gauss());
    } else {
      throw_bad_input(g.model_path.string(), fmt::format("input '{}' is {}: no synthetic data for it", v.name, dtype_name(v.dtype)),
                      "give --data");
    }
    d.inputs.push_back(std::move(a));
    if (d.inputs.back().dtype == DType::F32 && first_float < 0) first_float = static_cast<int>(d.inputs.size()) - 1;
  }
  d.source = "synthetic";
  if (ls.self_loss) return d;
  // Class labels of the output's shape without its last axis.
  Array lab;
  lab.name = "labels";
  lab.dtype = DType::I64;
  lab.sample = ls.class_shape;
  lab.rows = rows;
  int64_t per = numel(lab.sample);
  lab.bytes.resize(static_cast<size_t>(rows * lab.row_bytes()));
  int64_t* y = reinterpret_cast<int64_t*>(lab.bytes.data());
  if (tokens) {
    d.source = "synthetic: counting sequences, predict the next token";
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t t = 0; t < per; ++t)
        y[r * per + t] = (start[static_cast<size_t>(r)] + (t + 1) * stride[static_cast<size_t>(r)]) % ls.classes;
  } else if (first_float >= 0) {
    // A mixture of Gaussians: each class has its own mean; rows are that mean plus unit noise.
    d.source = "synthetic: Gaussian clusters, one per class";
    int64_t classes = std::max<int64_t>(ls.classes, 1);
    Array& xa = d.inputs[static_cast<size_t>(first_float)];
    int64_t feat = numel(xa.sample);
    std::vector<float> mean(static_cast<size_t>(feat * classes));
    for (auto& m : mean) m = static_cast<float>(rng.gauss());
    float* x = reinterpret_cast<float*>(xa.bytes.data());
    for (int64_t r = 0; r < rows; ++r) {
      int64_t c = static_cast<int64_t>(rng.below(static_cast<uint64_t>(classes)));
      for (int64_t f = 0; f < feat; ++f) x[r * feat + f] += mean[static_cast<size_t>(c * feat + f)];
      for (int64_t t = 0; t < per; ++t) y[r * per + t] = c;
    }
  }
  d.has_labels = true;
  d.labels = std::move(lab);
  return d;
}

std::vector<int64_t> batch_rows(int64_t rows, int64_t step, int64_t batch, bool shuffle, uint64_t seed) {
  SMP_CHECK(rows > 0 && batch > 0 && step >= 0, "bad batch request rows={} batch={} step={}", rows, batch, step);
  std::vector<int64_t> out;
  out.reserve(static_cast<size_t>(batch));
  int64_t first = step * batch;
  int64_t cached_epoch = -1;
  std::vector<int64_t> perm;
  for (int64_t k = 0; k < batch; ++k) {
    int64_t pos = first + k;
    int64_t epoch = pos / rows, idx = pos % rows;
    if (!shuffle) {
      out.push_back(idx);
      continue;
    }
    if (epoch != cached_epoch) {
      perm.resize(static_cast<size_t>(rows));
      std::iota(perm.begin(), perm.end(), 0);
      Rng rng(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch) + 1);
      for (int64_t i = rows - 1; i > 0; --i)
        std::swap(perm[static_cast<size_t>(i)], perm[static_cast<size_t>(rng.below(static_cast<uint64_t>(i + 1)))]);
      cached_epoch = epoch;
    }
    out.push_back(perm[static_cast<size_t>(idx)]);
  }
  return out;
}

std::string gather_rows(const Array& a, std::span<const int64_t> rows) {
  int64_t rb = a.row_bytes();
  std::string out(static_cast<size_t>(rb) * rows.size(), '\0');
  for (size_t i = 0; i < rows.size(); ++i) {
    SMP_CHECK(rows[i] >= 0 && rows[i] < a.rows, "row {} of {}", rows[i], a.rows);
    std::memcpy(out.data() + i * static_cast<size_t>(rb), a.bytes.data() + rows[i] * rb, static_cast<size_t>(rb));
  }
  return out;
}

}  // namespace smp::train
