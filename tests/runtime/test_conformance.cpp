// ONNX's own backend node cases (generated at test time from Debian's python3-onnx by
// scripts/onnx_node_cases.py) on the CPU backend's forward kernels, at rtol 1e-4 / atol 1e-5.
// A case runs when the graph layer loads it and every node's kernel accepts its attributes and
// dtypes; it is skipped (counted) otherwise. Every case that runs must pass.
#include <doctest/doctest.h>

#include "core/io.hpp"
#include "graph/loader.hpp"
#include "graph/op_registry.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"
#include "runtime/npy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>

using namespace smp;
namespace fs = std::filesystem;

namespace {

struct Count {
  int ran = 0, passed = 0, skipped = 0;
};

std::string squash(std::string s) {
  std::string o;
  for (char c : s)
    if (c != '_') o += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return o;
}

// The op a case is about: the longest op type whose name starts the case name.
std::string case_op(const std::string& name, const std::vector<std::string>& node_ops) {
  std::string n = squash(name.substr(5));  // drop "test_"
  std::string best;
  std::vector<std::string> cands = node_ops;
  for (int i = 0; i < graph::op_count(); ++i) cands.emplace_back(graph::op_def(static_cast<graph::Op>(i)).type);
  for (const auto& op : cands) {
    std::string s = squash(op);
    if (n.compare(0, s.size(), s) == 0 && s.size() > best.size()) best = op;
  }
  if (best.empty()) best = node_ops.empty() ? "?" : node_ops[0];
  if (name.find("_expanded") != std::string::npos) best += " (expanded)";
  return best;
}

// Compares one output; returns an empty string when it matches.
std::string compare(const runtime::NpyArray& want, const runtime::Tensor& got, double rtol, double atol) {
  if (got.dtype() != want.dtype) return fmt::format("dtype {} vs expected {}", dtype_name(got.dtype()), dtype_name(want.dtype));
  if (got.shape() != want.shape) return fmt::format("shape {} vs expected {}", shape_str(got.shape()), shape_str(want.shape));
  int64_t n = got.numel();
  if (want.dtype == DType::F32 || want.dtype == DType::F64) {
    for (int64_t i = 0; i < n; ++i) {
      double a, b;
      if (want.dtype == DType::F32) {
        a = got.data<float>()[i];
        b = reinterpret_cast<const float*>(want.bytes.data())[i];
      } else {
        a = got.data<double>()[i];
        b = reinterpret_cast<const double*>(want.bytes.data())[i];
      }
      if (std::isnan(a) && std::isnan(b)) continue;
      if (std::isinf(b) && a == b) continue;
      if (!(std::fabs(a - b) <= atol + rtol * std::fabs(b))) return fmt::format("element {}: {} vs expected {}", i, a, b);
    }
    return "";
  }
  if (std::memcmp(got.raw(), want.bytes.data(), want.bytes.size()) != 0) return "elements differ";
  return "";
}

}  // namespace

TEST_CASE("ONNX backend node cases: every supported case passes") {
  fs::path dir = fs::path(SMP_TEST_DATA) / "onnx_node_cases";
  if (!fs::exists(dir / "manifest.json")) {
    fs::create_directories(dir.parent_path());
    std::string cmd = fmt::format("{} {}/scripts/onnx_node_cases.py {}", SMP_PYTHON, SMP_SOURCE_DIR, dir.string());
    for (int i = 0; i < graph::op_count(); ++i) cmd += fmt::format(" {}", graph::op_def(static_cast<graph::Op>(i)).type);
    cmd += " > " + (dir.parent_path() / "onnx_node_cases.log").string() + " 2>&1";
    int rc = std::system(cmd.c_str());
    REQUIRE_MESSAGE(rc == 0, "generating the ONNX node cases failed: " << cmd);
  }
  auto manifest = read_json(dir / "manifest.json");
  const double rtol = 1e-4, atol = 1e-5;
  std::map<std::string, Count> per_op;
  std::vector<std::string> failures, skips;
  runtime::CpuBackend be(2);
  for (auto& [name, info] : manifest.items()) {
    std::vector<std::string> ops = info["ops"].get<std::vector<std::string>>();
    std::string op = case_op(name, ops);
    Count& c = per_op[op];
    fs::path cd = dir / name;
    std::unique_ptr<graph::Graph> g;
    std::unique_ptr<runtime::StageExecutor> ex;
    try {
      graph::LoadOptions lo;
      lo.load_weights = true;
      g = std::make_unique<graph::Graph>(graph::load_graph(cd / "model.onnx", lo));
      runtime::ExecutorOptions eo;
      eo.training = false;
      eo.running_stats = runtime::ExecutorOptions::RunningStats::Onnx;  // ONNX's semantics, as the cases expect
      ex = std::make_unique<runtime::StageExecutor>(*g, be, eo);
    } catch (const Error& e) {
      ++c.skipped;
      skips.push_back(fmt::format("{}: {}", name, e.what()));
      continue;
    }
    ++c.ran;
    std::string why;
    try {
      for (int k = 0; fs::exists(cd / fmt::format("test_data_set_{}", k)) && why.empty(); ++k) {
        fs::path ds = cd / fmt::format("test_data_set_{}", k);
        std::map<int, runtime::Tensor> feed;
        for (size_t j = 0; j < g->inputs.size(); ++j)
          feed[g->inputs[j]] = runtime::load_npy(be, ds / fmt::format("input_{}.npy", j));
        std::vector<runtime::Tensor> ins;
        for (int v : ex->inputs()) {
          if (!feed.count(v)) throw_failure(name, fmt::format("stage input {} is not a graph input", g->value(v).name));
          ins.push_back(feed[v]);
        }
        auto outs = ex->forward(0, ins);
        for (size_t j = 0; j < g->outputs.size() && why.empty(); ++j) {
          int v = g->outputs[j];
          auto want = runtime::read_npy(ds / fmt::format("output_{}.npy", j));
          runtime::Tensor got;
          auto it = std::find(ex->outputs().begin(), ex->outputs().end(), v);
          if (it != ex->outputs().end()) got = outs[static_cast<size_t>(it - ex->outputs().begin())];
          else if (g->value(v).data) got = be.from_host(g->value(v).data->dtype, g->value(v).data->shape, g->value(v).data->bytes.data());
          else if (feed.count(v)) got = feed[v];
          else throw_failure(name, "output not computed");
          std::string d = compare(want, got, rtol, atol);
          if (!d.empty()) why = fmt::format("data set {} output {} ({}): {}", k, j, g->value(v).name, d);
        }
      }
    } catch (const Error& e) {
      why = e.what();
    }
    if (why.empty()) ++c.passed;
    else failures.push_back(fmt::format("{}: {}", name, why));
  }
  fmt::print("\nONNX backend node cases on the cpu backend (rtol {}, atol {}):\n", rtol, atol);
  fmt::print("{:<36} {:>5} {:>7} {:>8}\n", "op", "ran", "passed", "skipped");
  Count total;
  for (auto& [op, c] : per_op) {
    fmt::print("{:<36} {:>5} {:>7} {:>8}\n", op, c.ran, c.passed, c.skipped);
    total.ran += c.ran;
    total.passed += c.passed;
    total.skipped += c.skipped;
  }
  fmt::print("{:<36} {:>5} {:>7} {:>8}\n", "total", total.ran, total.passed, total.skipped);
  std::string skipfile = (dir.parent_path() / "onnx_node_cases_skipped.txt").string();
  std::string all;
  for (auto& s : skips) all += s + "\n";
  write_file_atomic(skipfile, all);
  fmt::print("skipped cases and why: {}\n", skipfile);
  for (auto& f : failures) fmt::print("FAILED {}\n", f);
  CHECK(failures.empty());
  CHECK(total.ran > 100);
}
