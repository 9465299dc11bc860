#include "cost/calibration.hpp"

#include "core/error.hpp"
#include "graph/op_registry.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace smp::cost {

using nlohmann::json;

namespace {

constexpr std::array<std::string_view, kKernelFamilies> kNames = {
    "gemm", "batched_matmul", "conv", "elementwise", "transcendental", "norm",
    "softmax", "reduce", "pool", "transpose", "movement"};

}  // namespace

std::string_view family_name(KernelFamily f) { return kNames[static_cast<size_t>(f)]; }

std::optional<KernelFamily> family_from_name(std::string_view s) {
  for (int i = 0; i < kKernelFamilies; ++i)
    if (kNames[static_cast<size_t>(i)] == s) return static_cast<KernelFamily>(i);
  return std::nullopt;
}

std::vector<double> gpu_kernel_efficiency() {
  std::vector<double> e(kKernelFamilies, 1.0);
  auto set = [&](KernelFamily f, double x) { e[static_cast<size_t>(f)] = x; };
  set(KernelFamily::Gemm, 0.75);            // large cuBLAS GEMMs: ~70-80 % of the dense tensor-core peak
  set(KernelFamily::BatchedMatMul, 0.55);   // attention-shaped batches, inner dimension 64-128
  set(KernelFamily::Conv, 0.6);             // cuDNN convolutions of CNN training
  set(KernelFamily::Transcendental, 0.85);  // SFU-bound math per element, near streaming speed
  set(KernelFamily::Elementwise, 0.85);     // streaming copies reach ~85-90 % of the HBM figure
  set(KernelFamily::Norm, 0.7);             // two passes over rows (statistics, then normalise)
  set(KernelFamily::Softmax, 0.7);
  set(KernelFamily::Reduce, 0.75);
  set(KernelFamily::Pool, 0.7);
  set(KernelFamily::Transpose, 0.6);        // strided access
  set(KernelFamily::Movement, 0.8);
  return e;
}

bool family_counts_flops(KernelFamily f) {
  return f == KernelFamily::Gemm || f == KernelFamily::BatchedMatMul || f == KernelFamily::Conv;
}

bool family_compute_bound(KernelFamily f) { return family_counts_flops(f) || f == KernelFamily::Transcendental; }

std::optional<KernelFamily> kernel_family(const graph::Graph& g, const graph::Node& n) {
  using graph::Op;
  using graph::OpClass;
  const graph::OpDef* d = (n.domain.empty() || n.domain == "ai.onnx") ? graph::find_op(n.op_type) : nullptr;
  if (!d) return std::nullopt;
  switch (d->cls) {
    case OpClass::View:
    case OpClass::ShapeOnly:
      return std::nullopt;
    case OpClass::MatMulLike: {
      if (d->op == Op::Conv || d->op == Op::ConvTranspose) return KernelFamily::Conv;
      // Einsum of one operand sums and permutes: a reduction, not a product.
      if (d->op == Op::Einsum && n.inputs.size() < 2) return KernelFamily::Reduce;
      // A product with an operand that does not scale with the batch (a weight, or a weight
      // transposed) is a GEMM over the batch rows; two activations are batched products.
      for (size_t k = 0; k < 2 && k < n.inputs.size(); ++k) {
        const int id = n.inputs[k];
        if (id < 0) continue;
        const auto& v = g.value(id);
        if (v.kind == graph::ValueKind::Parameter || v.kind == graph::ValueKind::Constant) return KernelFamily::Gemm;
        if (v.kind == graph::ValueKind::Activation && v.producer >= 0) {
          // Transpose(weight) and the like: every input of its producer is a parameter / constant.
          const auto& p = g.nodes[static_cast<size_t>(v.producer)];
          bool fixed = !p.inputs.empty();
          for (int in : p.inputs)
            if (in >= 0 && g.value(in).kind != graph::ValueKind::Parameter && g.value(in).kind != graph::ValueKind::Constant)
              fixed = false;
          if (fixed) return KernelFamily::Gemm;
        }
      }
      return KernelFamily::BatchedMatMul;
    }
    case OpClass::Elementwise:
      switch (d->op) {
        case Op::Pow: case Op::Div: case Op::Sqrt: case Op::Reciprocal: case Op::Exp: case Op::Log: case Op::Tanh:
        case Op::Sigmoid: case Op::Erf: case Op::Gelu: case Op::Sin: case Op::Cos:
          return KernelFamily::Transcendental;
        default:
          return KernelFamily::Elementwise;
      }
    case OpClass::Normalization:
      return d->op == Op::Softmax || d->op == Op::LogSoftmax ? KernelFamily::Softmax : KernelFamily::Norm;
    case OpClass::Reduction:
      return KernelFamily::Reduce;
    case OpClass::Pooling:
      return d->op == Op::GlobalAveragePool ? KernelFamily::Reduce : KernelFamily::Pool;
    case OpClass::DataMovement:
      return d->op == Op::Transpose ? KernelFamily::Transpose : KernelFamily::Movement;
    case OpClass::Loss:
      return KernelFamily::Softmax;
  }
  return std::nullopt;
}

double CalibrationCurve::time(double work) const {
  if (points.empty()) return 0.0;
  if (work <= 0) return 0.0;
  const Point& lo = points.front();
  if (work <= lo.work) return lo.seconds;
  const Point& hi = points.back();
  if (work >= hi.work) return hi.seconds * work / hi.work;
  auto it = std::upper_bound(points.begin(), points.end(), work, [](double w, const Point& p) { return w < p.work; });
  const Point& b = *it;
  const Point& a = *(it - 1);
  const double x = (std::log(work) - std::log(a.work)) / (std::log(b.work) - std::log(a.work));
  return std::exp(std::log(a.seconds) + x * (std::log(b.seconds) - std::log(a.seconds)));
}

double KernelCalibration::oversubscription_factor(double load) const {
  if (oversubscription.empty()) return 1.0;
  if (oversubscription.size() == 1) return std::max(1.0, oversubscription[0]);
  const double x = std::clamp(load, 1.0, 2.0) - 1.0;
  return std::max(1.0, oversubscription[0] + x * (oversubscription[1] - oversubscription[0]));
}

double RowsFactor::at(double rows) const {
  if (points.empty() || rows >= points.back().first) return 1.0;
  if (rows <= points.front().first) return points.front().second;
  auto it = std::upper_bound(points.begin(), points.end(), rows, [](double r, const auto& p) { return r < p.first; });
  const auto& b = *it;
  const auto& a = *(it - 1);
  const double x = (std::log(rows) - std::log(a.first)) / (std::log(b.first) - std::log(a.first));
  return a.second + x * (b.second - a.second);
}

const CalibrationTable& KernelCalibration::table(int threads) const {
  SMP_CHECK(!tables.empty(), "a kernel calibration without tables");
  const CalibrationTable* best = &tables.front();
  for (const auto& t : tables)
    if (t.threads <= threads) best = &t;
  return *best;
}

double KernelCalibration::slowdown(KernelFamily f, double busy, int threads) const {
  busy = std::max(busy, 1.0);
  const double want = busy * std::max(threads, 1);
  // Time-slicing: more threads computing than cores.
  const double slicing = std::max(1.0, want / std::max(cores, 1));
  // Contention among the copies running at once on separate cores (at most `cores` of them).
  const auto& c = family_compute_bound(f) ? contention_compute : contention_memory;
  double alpha = 1.0;
  if (!c.empty()) {
    const double x = std::clamp(std::min(want, static_cast<double>(cores)), 1.0, static_cast<double>(c.size()));
    const size_t i = static_cast<size_t>(std::floor(x)) - 1;
    const double frac = x - std::floor(x);
    alpha = i + 1 < c.size() ? c[i] + frac * (c[i + 1] - c[i]) : c[i];
  }
  return slicing * std::max(alpha, 1.0);
}

json to_json(const KernelCalibration& c) {
  json tables = json::array();
  for (const auto& t : c.tables) {
    json fams = json::object();
    for (int f = 0; f < kKernelFamilies; ++f) {
      json passes = json::array();
      for (int p = 0; p < 2; ++p) {
        json pts = json::array();
        for (const auto& pt : t.curves[static_cast<size_t>(f)][static_cast<size_t>(p)].points)
          pts.push_back(json::array({pt.work, pt.seconds}));
        passes.push_back(pts);
      }
      fams[std::string(kNames[static_cast<size_t>(f)])] = {{"forward", passes[0]}, {"backward", passes[1]}};
    }
    json rows = json::object();
    for (int p = 0; p < 2; ++p) {
      json pts = json::array();
      for (const auto& [r, f] : t.gemm_rows[static_cast<size_t>(p)].points) pts.push_back(json::array({r, f}));
      rows[p == 0 ? "forward" : "backward"] = pts;
    }
    tables.push_back({{"threads", t.threads},
                      {"families", fams},
                      {"gemm_rows", rows},
                      {"optimizer_s_per_parameter",
                       {{"sgd", t.optimizer_s_per_parameter[0]},
                        {"momentum", t.optimizer_s_per_parameter[1]},
                        {"adamw", t.optimizer_s_per_parameter[2]}}}});
  }
  return json{{"version", kCalibrationVersion},
              {"smp_version", c.smp_version},
              {"cpu", c.cpu},
              {"cores", c.cores},
              {"measured_at", c.measured_at},
              {"load_average", c.load_average},
              {"tables", tables},
              {"contention", {{"compute", c.contention_compute}, {"memory", c.contention_memory}}},
              {"oversubscription", c.oversubscription},
              {"gemm_flops", c.gemm_flops},
              {"memory_bandwidth", c.memory_bandwidth},
              {"link", {{"bandwidth", c.link.bandwidth}, {"latency", c.link.latency}, {"allreduce_bandwidth", c.link.allreduce_bandwidth}}}};
}

KernelCalibration calibration_from_json(const json& j, const std::string& where) {
  auto fail = [&](const std::string& path, const std::string& what) -> void {
    throw_bad_input(where, fmt::format("{}: {}", path, what), "delete it to measure again");
  };
  if (!j.is_object()) fail("(top)", "not a JSON object");
  if (!j.contains("version") || !j["version"].is_number_integer() || j["version"].get<int>() != kCalibrationVersion)
    fail("version", fmt::format("must be {}", kCalibrationVersion));
  auto num = [&](const json& o, const std::string& key, const std::string& path, bool positive) {
    if (!o.contains(key) || !o[key].is_number()) fail(path + key, "must be a number");
    double v = o[key].get<double>();
    if (!std::isfinite(v) || v < 0 || (positive && v <= 0)) fail(path + key, positive ? "must be positive" : "must not be negative");
    return v;
  };
  KernelCalibration c;
  c.cpu = j.value("cpu", "");
  c.smp_version = j.value("smp_version", "");
  c.measured_at = j.value("measured_at", "");
  c.load_average = j.contains("load_average") && j["load_average"].is_number() ? j["load_average"].get<double>() : -1;
  c.cores = static_cast<int>(num(j, "cores", "", true));
  c.gemm_flops = num(j, "gemm_flops", "", false);
  c.memory_bandwidth = num(j, "memory_bandwidth", "", false);
  if (j.contains("link")) {
    c.link.bandwidth = num(j["link"], "bandwidth", "link.", false);
    c.link.latency = num(j["link"], "latency", "link.", false);
    if (j["link"].contains("allreduce_bandwidth")) c.link.allreduce_bandwidth = num(j["link"], "allreduce_bandwidth", "link.", false);
  }
  if (!j.contains("tables") || !j["tables"].is_array() || j["tables"].empty()) fail("tables", "must be a non-empty array");
  for (size_t ti = 0; ti < j["tables"].size(); ++ti) {
    const json& tj = j["tables"][ti];
    const std::string tp = fmt::format("tables[{}].", ti);
    CalibrationTable t;
    t.threads = static_cast<int>(num(tj, "threads", tp, true));
    if (!tj.contains("families") || !tj["families"].is_object()) fail(tp + "families", "must be an object");
    for (const auto& [name, fj] : tj["families"].items()) {
      auto f = family_from_name(name);
      if (!f) fail(tp + "families." + name, "unknown kernel family");
      for (int p = 0; p < 2; ++p) {
        const char* pass = p == 0 ? "forward" : "backward";
        const std::string pp = tp + "families." + name + "." + pass;
        if (!fj.contains(pass) || !fj[pass].is_array()) fail(pp, "must be an array of [work, seconds]");
        auto& curve = t.curves[static_cast<size_t>(*f)][static_cast<size_t>(p)];
        for (const auto& pt : fj[pass]) {
          if (!pt.is_array() || pt.size() != 2 || !pt[0].is_number() || !pt[1].is_number() || pt[0].get<double>() <= 0 ||
              pt[1].get<double>() <= 0)
            fail(pp, "points must be [work > 0, seconds > 0]");
          curve.points.push_back({pt[0].get<double>(), pt[1].get<double>()});
        }
        std::sort(curve.points.begin(), curve.points.end(),
                  [](const CalibrationCurve::Point& a, const CalibrationCurve::Point& b) { return a.work < b.work; });
      }
    }
    if (tj.contains("gemm_rows")) {
      for (int p = 0; p < 2; ++p) {
        const char* pass = p == 0 ? "forward" : "backward";
        const std::string pp = tp + "gemm_rows." + pass;
        if (!tj["gemm_rows"].is_object() || !tj["gemm_rows"].contains(pass) || !tj["gemm_rows"][pass].is_array())
          fail(pp, "must be an array of [rows, factor]");
        auto& rf = t.gemm_rows[static_cast<size_t>(p)].points;
        for (const auto& pt : tj["gemm_rows"][pass]) {
          if (!pt.is_array() || pt.size() != 2 || !pt[0].is_number() || !pt[1].is_number() || pt[0].get<double>() <= 0 ||
              pt[1].get<double>() < 1)
            fail(pp, "points must be [rows > 0, factor >= 1]");
          rf.emplace_back(pt[0].get<double>(), pt[1].get<double>());
        }
        std::sort(rf.begin(), rf.end());
      }
    }
    if (tj.contains("optimizer_s_per_parameter")) {
      const json& oj = tj["optimizer_s_per_parameter"];
      const std::string op = tp + "optimizer_s_per_parameter.";
      t.optimizer_s_per_parameter = {num(oj, "sgd", op, false), num(oj, "momentum", op, false), num(oj, "adamw", op, false)};
    }
    c.tables.push_back(std::move(t));
  }
  std::sort(c.tables.begin(), c.tables.end(), [](const auto& a, const auto& b) { return a.threads < b.threads; });
  if (j.contains("oversubscription")) {
    if (!j["oversubscription"].is_array() || j["oversubscription"].size() > 2) fail("oversubscription", "must be an array of at most 2 numbers >= 1");
    for (const auto& v : j["oversubscription"]) {
      if (!v.is_number() || v.get<double>() < 1) fail("oversubscription", "must be an array of at most 2 numbers >= 1");
      c.oversubscription.push_back(v.get<double>());
    }
  }
  if (j.contains("contention")) {
    for (const char* k : {"compute", "memory"}) {
      auto& dst = std::string(k) == "compute" ? c.contention_compute : c.contention_memory;
      if (!j["contention"].contains(k)) continue;
      for (const auto& v : j["contention"][k]) {
        if (!v.is_number() || v.get<double>() <= 0) fail(std::string("contention.") + k, "must hold positive numbers");
        dst.push_back(v.get<double>());
      }
    }
  }
  return c;
}

}  // namespace smp::cost
