// ONNX's own backend node cases (generated at test time from Debian's python3-onnx by
// scripts/onnx_node_cases.py) for every op in the registry, for the control flow and sequence
// ops the loader resolves (If, Loop, Scan, Sequence*; Compress, NonZero, NonMaxSuppression and
// Unique, evaluated once their inputs are known: smp-run --forward runs in stages) and for
// the ops it expands by their function body (MeanVarianceNormalization), each run through the
// tool a user runs: `smp-run model.onnx --forward --data DIR --output DIR`, the inputs saved
// under their graph input names. Per case, one of:
//   passed   every output equals ONNX's within the case's tolerances (at least rtol 1e-4, atol 1e-5);
//   refused  smp-run exits with status 2 and one line "error: ..." naming the reason;
//   random   the outputs depend on --seed (Dropout in training mode: the expected values come
//            from numpy's generator, no implementation can match them);
//   failed   anything else: a wrong value, another exit status, a crash.
// Every case must pass, be refused or be random; the per-op counts are printed and written to
// testdata/onnx_forward_conformance.md (the table in docs/models.md).
#include <doctest/doctest.h>

#include "core/io.hpp"
#include "graph/op_registry.hpp"
#include "runtime/npy.hpp"
#include "test_process.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <unistd.h>

using namespace smp;
namespace fs = std::filesystem;

namespace {

struct Count {
  int passed = 0, refused = 0, random = 0, failed = 0;
  std::map<std::string, int> reasons;  // refusal reason -> cases
};

// smp-run's file name for a value (apps/smp-run.cpp).
std::string file_name(const std::string& value_name) {
  std::string s = value_name;
  for (char& c : s)
    if (c == '/' || c == '\\' || c == ':') c = '_';
  return s + ".npy";
}

// Compares one output; returns an empty string when it matches.
std::string compare(const runtime::NpyArray& want, const runtime::NpyArray& got, double rtol, double atol) {
  if (got.dtype != want.dtype) return fmt::format("dtype {} vs expected {}", dtype_name(got.dtype), dtype_name(want.dtype));
  if (got.shape != want.shape) return fmt::format("shape {} vs expected {}", shape_str(got.shape), shape_str(want.shape));
  int64_t n = smp::numel(want.shape);
  if (want.dtype == DType::F32 || want.dtype == DType::F64) {
    for (int64_t i = 0; i < n; ++i) {
      double a, b;
      if (want.dtype == DType::F32) {
        a = reinterpret_cast<const float*>(got.bytes.data())[i];
        b = reinterpret_cast<const float*>(want.bytes.data())[i];
      } else {
        a = reinterpret_cast<const double*>(got.bytes.data())[i];
        b = reinterpret_cast<const double*>(want.bytes.data())[i];
      }
      if (std::isnan(a) && std::isnan(b)) continue;
      if (std::isinf(b) && a == b) continue;
      if (!(std::fabs(a - b) <= atol + rtol * std::fabs(b))) return fmt::format("element {}: {} vs expected {}", i, a, b);
    }
    return "";
  }
  if (got.bytes != want.bytes) return "elements differ";
  return "";
}

// The refusal's reason without the case-specific parts: the text after the node's name.
std::string reason_of(const std::string& out) {
  std::string line = out.substr(0, out.find('\n'));
  if (line.rfind("error: ", 0) == 0) line = line.substr(7);
  auto p = line.find("): ");
  if (line.rfind("node ", 0) == 0 && p != std::string::npos) line = line.substr(p + 3);
  else if (auto q = line.find(".onnx: "); q != std::string::npos) line = line.substr(q + 7);
  else if (auto q2 = line.find(".npy: "); q2 != std::string::npos) line = "input array: " + line.substr(q2 + 6);
  // names of values differ from case to case
  std::string r;
  bool quoted = false;
  for (char c : line) {
    if (c == '\'') {
      quoted = !quoted;
      r += quoted ? "'…" : "'";
      continue;
    }
    if (!quoted) r += c;
  }
  return r;
}

}  // namespace

TEST_CASE("ONNX backend node cases of every registry op through smp-run --forward") {
  fs::path dir = fs::path(SMP_TEST_DATA) / "onnx_node_cases";
  std::string ops;
  for (int i = 0; i < graph::op_count(); ++i) ops += fmt::format(" {}", graph::op_def(static_cast<graph::Op>(i)).type);
  // A cache for another registry or from another version of scripts/onnx_node_cases.py (ops.txt
  // holds both) is generated again.
  const fs::path script = fs::path(SMP_SOURCE_DIR) / "scripts" / "onnx_node_cases.py";
  const std::string key = ops + fmt::format("\nscript {}", std::hash<std::string>{}(read_file(script)));
  auto current = [&] {
    if (!fs::exists(dir / "manifest.json") || !fs::exists(dir / "ops.txt") || read_file(dir / "ops.txt") != key) return false;
    const auto m = read_json(dir / "manifest.json");
    return !m.empty() && m.begin()->contains("op") && m.begin()->contains("inputs");
  };
  if (!current()) {
    fs::remove_all(dir);
    fs::create_directories(dir.parent_path());
    std::string cmd = fmt::format("{} {} {}{}", SMP_PYTHON, script.string(), dir.string(), ops);
    cmd += " > " + (dir.parent_path() / "onnx_node_cases.log").string() + " 2>&1";
    int rc = std::system(cmd.c_str());
    REQUIRE_MESSAGE(rc == 0, "generating the ONNX node cases failed: " << cmd);
    write_file_atomic(dir / "ops.txt", key);
  }
  auto manifest = read_json(dir / "manifest.json");
  const fs::path work = fs::temp_directory_path() / fmt::format("smp_conformance_{}", ::getpid());
  std::map<std::string, Count> per_op;
  std::vector<std::string> failures;
  std::string refusals;
  const std::string smp_run = std::string(SMP_BIN_DIR) + "/smp-run";
  for (auto& [name, info] : manifest.items()) {
    const std::string op = info["op"].get<std::string>() + (name.find("_expanded") != std::string::npos ? " (expanded)" : "");
    Count& c = per_op[op];
    const double rtol = std::max(1e-4, info.value("rtol", 1e-4)), atol = std::max(1e-5, info.value("atol", 1e-5));
    const auto inputs = info["inputs"].get<std::vector<std::string>>();
    const auto outputs = info["outputs"].get<std::vector<std::string>>();
    std::string why;
    bool refused = false, random = false;
    for (int k = 0; fs::exists(dir / name / fmt::format("test_data_set_{}", k)) && why.empty() && !refused && !random; ++k) {
      fs::path ds = dir / name / fmt::format("test_data_set_{}", k);
      fs::remove_all(work);
      fs::create_directories(work / "in");
      for (size_t j = 0; j < inputs.size(); ++j)
        fs::copy_file(ds / fmt::format("input_{}.npy", j), work / "in" / file_name(inputs[j]));
      auto run = [&](int seed, const fs::path& out) {
        return test::run_cmd(fmt::format("{} {} --forward --data {} --output {} --threads 1 --seed {}", smp_run,
                                         (dir / name / "model.onnx").string(), (work / "in").string(), out.string(), seed));
      };
      auto r = run(1, work / "out");
      if (r.exit_code == 2 && r.out.rfind("error: ", 0) == 0 && std::count(r.out.begin(), r.out.end(), '\n') <= 1) {
        refused = true;
        ++c.reasons[reason_of(r.out)];
        refusals += fmt::format("{}: {}", name, r.out);
        break;
      }
      if (r.exit_code != 0) {
        why = fmt::format("exit status {}: {}", r.exit_code, r.out);
        break;
      }
      for (size_t j = 0; j < outputs.size() && why.empty(); ++j) {
        auto want = runtime::read_npy(ds / fmt::format("output_{}.npy", j));
        auto got = runtime::read_npy(work / "out" / file_name(outputs[j]));
        std::string d = compare(want, got, rtol, atol);
        if (d.empty()) continue;
        // A second seed tells a random op from a wrong one.
        auto r2 = run(2, work / "out2");
        if (r2.exit_code == 0 && runtime::read_npy(work / "out2" / file_name(outputs[j])).bytes != got.bytes) random = true;
        else why = fmt::format("data set {} output {} ({}): {}", k, j, outputs[j], d);
      }
    }
    if (refused) ++c.refused;
    else if (random) ++c.random;
    else if (why.empty()) ++c.passed;
    else {
      ++c.failed;
      failures.push_back(fmt::format("{}: {}", name, why));
    }
  }
  fs::remove_all(work);

  // The table: per op, and the reasons of the refusals.
  Count total;
  std::string md = "| op | passed | refused | random | failed | why refused |\n| --- | ---: | ---: | ---: | ---: | --- |\n";
  fmt::print("\nONNX backend node cases through smp-run --forward:\n{:<34} {:>6} {:>7} {:>6} {:>6}\n", "op", "passed", "refused",
             "random", "failed");
  for (auto& [op, c] : per_op) {
    fmt::print("{:<34} {:>6} {:>7} {:>6} {:>6}\n", op, c.passed, c.refused, c.random, c.failed);
    std::string reasons;
    for (auto& [r, n] : c.reasons) reasons += (reasons.empty() ? "" : "; ") + fmt::format("{} ({})", r, n);
    md += fmt::format("| {} | {} | {} | {} | {} | {} |\n", op, c.passed, c.refused, c.random, c.failed, reasons);
    total.passed += c.passed;
    total.refused += c.refused;
    total.random += c.random;
    total.failed += c.failed;
  }
  fmt::print("{:<34} {:>6} {:>7} {:>6} {:>6}\n", "total", total.passed, total.refused, total.random, total.failed);
  md += fmt::format("| total | {} | {} | {} | {} | |\n", total.passed, total.refused, total.random, total.failed);
  write_file_atomic(dir.parent_path() / "onnx_forward_conformance.md", md);
  write_file_atomic(dir.parent_path() / "onnx_forward_refusals.txt", refusals);
  fmt::print("table: {}\nrefusals: {}\n", (dir.parent_path() / "onnx_forward_conformance.md").string(),
             (dir.parent_path() / "onnx_forward_refusals.txt").string());
  for (auto& f : failures) fmt::print("FAILED {}\n", f);
  CHECK(failures.empty());
  CHECK(total.passed > 400);
  // every op of the registry has cases that pass (the few ONNX has no case for are listed)
  std::vector<std::string> without;
  for (int i = 0; i < graph::op_count(); ++i) {
    std::string t(graph::op_def(static_cast<graph::Op>(i)).type);
    if (!per_op.count(t) || per_op[t].passed == 0) without.push_back(t);
  }
  std::string w;
  for (auto& t : without) w += t + " ";
  MESSAGE("registry ops without a passing ONNX case: ", w);
}
