// The CUDA backend's kernels against the CPU's (needs a CUDA device; skipped without one):
// every gradient case of test_gradients.cpp (forward outputs, input and parameter gradients)
// and every ONNX node case the CPU passes, CUDA float32 within 1e-5 relative of the CPU; the
// CUDA results repeat bit for bit.
#include <doctest/doctest.h>

#include "backend_compare.hpp"
#include "gradient_cases.hpp"

#include "core/io.hpp"
#include "graph/loader.hpp"
#include "runtime/backends.hpp"
#include "runtime/npy.hpp"

#include <fmt/format.h>

#include <map>

using namespace smp;
using namespace smp::test;
using runtime::Tensor;

namespace {

constexpr double kRtol = 1e-5;

struct Run {
  std::vector<std::vector<double>> values;  // outputs, then input gradients, then parameter gradients
  std::vector<std::string> names;
};

Run run_case(runtime::Backend& be, const TinyGraph& tg, const Maker& mk, bool as_param, bool batch_statistics) {
  runtime::ExecutorOptions opts;
  opts.batch_statistics = batch_statistics;
  runtime::StageExecutor ex(tg.g, be, opts);
  std::vector<Tensor> inputs;
  for (int v : ex.inputs()) {
    if (mk.float_inputs.count(v)) {
      inputs.push_back(be.from_host(DType::F32, tg.g.value(v).shape, mk.float_inputs.at(v).data()));
    } else {
      const Tensor& h = mk.feeds.at(v);  // on the CPU backend: host memory
      inputs.push_back(be.from_host(h.dtype(), h.shape(), h.raw()));
    }
  }
  std::vector<Tensor> R;
  uint32_t rs = 1000;
  for (int o : ex.outputs()) {
    auto r = random_floats(static_cast<size_t>(tg.g.value(o).numel()), rs++);
    R.push_back(be.from_host(DType::F32, tg.g.value(o).shape, r.data()));
  }
  ex.zero_grad();
  Run run;
  auto outs = ex.forward(0, inputs);
  for (size_t k = 0; k < outs.size(); ++k) {
    run.values.push_back(host_values(be, outs[k]));
    run.names.push_back("output " + tg.g.value(ex.outputs()[k]).name);
  }
  std::vector<Tensor> dins;
  if (as_param) {
    dins = ex.backward_input(0, R);
    ex.backward_weight(0);
  } else {
    dins = ex.backward(0, R);
  }
  REQUIRE(ex.pending() == 0);
  for (size_t i = 0; i < ex.inputs().size(); ++i)
    if (ex.input_gets_gradient(i)) {
      run.values.push_back(host_values(be, dins[i]));
      run.names.push_back("d/d" + tg.g.value(ex.inputs()[i]).name);
    }
  for (int p : ex.parameters()) {
    run.values.push_back(host_values(be, ex.gradient(p)));
    run.names.push_back("d/d" + tg.g.value(p).name);
  }
  return run;
}

}  // namespace

TEST_CASE("every gradient case: CUDA float32 matches the CPU within 1e-5 and repeats bit for bit") {
  runtime::CpuBackend cpu(2);
  auto cuda = runtime::make_backend("cuda");
  int compared = 0;
  double worst = 0;
  for (const Case& c : gradient_cases())
    for (bool as_param : {false, true}) {
      CAPTURE(c.name);
      CAPTURE(as_param);
      TinyGraph tg;
      Maker mk{tg, as_param, 1, {}, {}, &cpu};
      c.build(tg, mk);
      Run want = run_case(cpu, tg, mk, as_param, c.batch_statistics);
      Run got = run_case(*cuda, tg, mk, as_param, c.batch_statistics);
      Run again = run_case(*cuda, tg, mk, as_param, c.batch_statistics);
      REQUIRE(got.values.size() == want.values.size());
      for (size_t k = 0; k < want.values.size(); ++k) {
        INFO(want.names[k]);
        std::string d = compare_rel(got.values[k], want.values[k], kRtol);
        CHECK_MESSAGE(d.empty(), d);
        CHECK_MESSAGE(again.values[k] == got.values[k], "a second CUDA run differs");
        worst = std::max(worst, max_rel(got.values[k], want.values[k]));
        ++compared;
      }
    }
  fmt::print("gradient cases: {} tensors compared, largest relative difference CUDA vs CPU {:.2e}\n", compared, worst);
  CHECK(compared > 200);
}

TEST_CASE("ONNX node cases: every case the CPU passes runs on CUDA and matches it within 1e-5") {
  namespace fs = std::filesystem;
  const fs::path dir = test_data_dir() / "onnx_node_cases";
  if (!fs::exists(dir / "manifest.json")) {
    fs::create_directories(dir.parent_path());
    std::string cmd = fmt::format("{} {}/scripts/onnx_node_cases.py {}", SMP_PYTHON, source_dir().string(), dir.string());
    for (int i = 0; i < graph::op_count(); ++i) cmd += fmt::format(" {}", graph::op_def(static_cast<graph::Op>(i)).type);
    cmd += " > " + (dir.parent_path() / "onnx_node_cases.log").string() + " 2>&1";
    REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, "generating the ONNX node cases failed: " << cmd);
  }
  auto manifest = read_json(dir / "manifest.json");
  runtime::CpuBackend cpu(2);
  auto cuda = runtime::make_backend("cuda");
  int cpu_passed = 0, matched = 0;
  double worst = 0;
  std::vector<std::string> failures;
  for (auto& [name, info] : manifest.items()) {
    const fs::path cd = dir / name;
    std::unique_ptr<graph::Graph> g;
    try {
      graph::LoadOptions lo;
      lo.load_weights = true;
      g = std::make_unique<graph::Graph>(graph::load_graph(cd / "model.onnx", lo));
    } catch (const Error&) {
      continue;
    }
    runtime::ExecutorOptions eo;
    eo.training = false;
    eo.batch_statistics = false;
    // The CPU's outputs, kept when they match the case's expected outputs.
    std::vector<bool> exact;  // per output: compared exactly (integers, booleans)
    auto outputs = [&](runtime::Backend& be, int k, bool& ok_expected) {
      runtime::StageExecutor ex(*g, be, eo);
      fs::path ds = cd / fmt::format("test_data_set_{}", k);
      std::map<int, Tensor> feed;
      for (size_t j = 0; j < g->inputs.size(); ++j) feed[g->inputs[j]] = runtime::load_npy(be, ds / fmt::format("input_{}.npy", j));
      std::vector<Tensor> ins;
      for (int v : ex.inputs()) {
        if (!feed.count(v)) throw_failure(name, "stage input is not a graph input");
        ins.push_back(feed[v]);
      }
      auto outs = ex.forward(0, ins);
      std::vector<std::vector<double>> r;
      exact.clear();
      ok_expected = true;
      for (size_t j = 0; j < g->outputs.size(); ++j) {
        int v = g->outputs[j];
        auto it = std::find(ex.outputs().begin(), ex.outputs().end(), v);
        Tensor t;
        if (it != ex.outputs().end()) t = outs[static_cast<size_t>(it - ex.outputs().begin())];
        else if (g->value(v).data) t = be.from_host(g->value(v).data->dtype, g->value(v).data->shape, g->value(v).data->bytes.data());
        else if (feed.count(v)) t = feed[v];
        else throw_failure(name, "output not computed");
        auto want = runtime::read_npy(ds / fmt::format("output_{}.npy", j));
        r.push_back(host_values(be, t));
        exact.push_back(t.dtype() != DType::F32 && t.dtype() != DType::F64 && t.dtype() != DType::BF16);
        if (t.dtype() != want.dtype || t.shape() != want.shape) {
          ok_expected = false;
          continue;
        }
        // as test_conformance.cpp: rtol 1e-4, atol 1e-5 for floats, exact otherwise
        const std::vector<double> w = host_values(cpu, cpu.from_host(want.dtype, want.shape, want.bytes.data()));
        const bool flt = want.dtype == DType::F32 || want.dtype == DType::F64;
        for (size_t i = 0; i < w.size() && ok_expected; ++i) {
          const double a = r.back()[i], b = w[i];
          if ((std::isnan(a) && std::isnan(b)) || (std::isinf(b) && a == b)) continue;
          if (flt ? !(std::fabs(a - b) <= 1e-5 + 1e-4 * std::fabs(b)) : a != b) ok_expected = false;
        }
      }
      return r;
    };
    for (int k = 0; fs::exists(cd / fmt::format("test_data_set_{}", k)); ++k) {
      bool cpu_ok = false, cuda_ok = false;
      std::vector<std::vector<double>> want;
      try {
        want = outputs(cpu, k, cpu_ok);
      } catch (const Error&) {
        break;  // the CPU does not run this case: nothing to compare
      }
      if (!cpu_ok) break;
      if (k == 0) ++cpu_passed;
      std::vector<std::vector<double>> got;
      try {
        got = outputs(*cuda, k, cuda_ok);
      } catch (const Error& e) {
        failures.push_back(fmt::format("{}: the CPU runs it, CUDA fails: {}", name, e.what()));
        break;
      }
      for (size_t j = 0; j < want.size(); ++j) {
        std::string d = exact[j] ? (got[j] == want[j] ? "" : "integer or boolean elements differ") : compare_rel(got[j], want[j], kRtol);
        if (!d.empty()) failures.push_back(fmt::format("{} data set {} output {}: {}", name, k, j, d));
        worst = std::max(worst, max_rel(got[j], want[j]));
      }
      if (k == 0) ++matched;
    }
  }
  fmt::print("ONNX node cases: {} run on the CPU, {} on CUDA; largest relative difference {:.2e}\n", cpu_passed, matched, worst);
  for (auto& f : failures) fmt::print("FAILED {}\n", f);
  CHECK(failures.empty());
  CHECK(cpu_passed > 100);
  CHECK(matched == cpu_passed);
}
