// Planner benchmark (not a test): solve time and peak memory for the GPT-3-175B-shaped graph on
// 16 x 8 and 128 x 8 H100, and the plan's predicted speedup over the two baselines (equal layers
// per stage, Megatron; equal parameters per stage, DeepSpeed) for the bundled samples on the
// example clusters.
//
//   build/bin/plan_bench [GPT3_175B.onnx]
// Without an argument it uses sample_models/giants/gpt3-175b.onnx, generating it into a
// temporary directory with scripts/giant_models.py when absent.
#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "graph/loader.hpp"
#include "plan/planner.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>

#include <sys/resource.h>
#include <unistd.h>

namespace fs = std::filesystem;
using namespace smp;

namespace {

double peak_rss_mib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

std::string src(const std::string& p) { return std::string(SMP_SOURCE_DIR) + "/" + p; }

}  // namespace

int main(int argc, char** argv) {
  try {
    fs::path giant = argc > 1 ? fs::path(argv[1]) : fs::path(src("sample_models/giants/gpt3-175b.onnx"));
    if (!fs::exists(giant)) {
      fs::path dir = fs::temp_directory_path() / fmt::format("smp_plan_bench_{}", ::getpid());
      std::string cmd = fmt::format("{} {} gpt3-175b --out {} > /dev/null", SMP_PYTHON, src("scripts/giant_models.py"), dir.string());
      if (std::system(cmd.c_str()) != 0) {
        fmt::print(stderr, "cannot generate the 175B graph: {}\n", cmd);
        return 1;
      }
      giant = dir / "gpt3-175b.onnx";
    }
    fmt::print("GPT-3-175B-shaped graph ({}), batch 1536 sequences of 2048, fp32, adamw, planned without its weights\n",
               giant.string());
    fmt::print("{:<12} {:>9} {:>9} {:>10} {:>12}  {}\n", "cluster", "load s", "solve s", "peak RSS", "step s", "plan");
    for (std::string c : {"h100-16x8", "h100-128x8"}) {
      double t0 = now_s();
      graph::LoadOptions lo;
      lo.batch_size = 1536;
      graph::Graph g = graph::load_graph(giant, lo);
      double t1 = now_s();
      cost::Cluster cl = cost::read_cluster(src("clusters/" + c + ".json"));
      cost::GraphCost gc(g, 1536, cost::CostOptions{});
      plan::PlanOptions o;
      o.batch_size = 1536;
      plan::Plan p = plan::make_plan(plan::PlanInputs{&g, &gc, &cl}, o);
      double t2 = now_s();
      double el = p.baselines[0].available && p.baselines[0].prediction.fits ? p.baselines[0].prediction.step_s / p.prediction.step_s : 0;
      double ep = p.baselines[1].available && p.baselines[1].prediction.fits ? p.baselines[1].prediction.step_s / p.prediction.step_s : 0;
      fmt::print("{:<12} {:>9.3f} {:>9.3f} {:>6.0f} MiB {:>12.4g}  {} stages x {} replicas x TP {}, {} microbatches, {}; {} of {} cut "
                 "positions, {} configs partitioned; vs equal-layers {:.2f}x, vs equal-parameters {:.2f}x\n",
                 c, t1 - t0, t2 - t1, peak_rss_mib(), p.prediction.step_s, p.stages, p.data_parallel, p.tensor_parallel,
                 p.microbatches, p.schedule_name, p.positions_seen, p.positions_total, p.configs_evaluated, el, ep);
    }
    fmt::print("\nsamples, batch 1024: the plan's predicted speedup over equal layers / equal parameters per stage "
               "(same microbatches, schedule and devices)\n");
    fmt::print("{:<6} {:<18} {:>8} {:>8}  {}\n", "model", "cluster", "layers", "params", "plan");
    auto row = [&](const std::string& m, const std::string& cname, cost::Cluster cl, plan::PlanOptions o) {
      graph::LoadOptions lo;
      lo.batch_size = o.batch_size;
      graph::Graph g = graph::load_graph(src("sample_models/" + m + ".onnx"), lo);
      cost::GraphCost gc(g, o.batch_size, cost::CostOptions{});
      double t0 = now_s();
      plan::Plan p = plan::make_plan(plan::PlanInputs{&g, &gc, &cl}, o);
      double t1 = now_s();
      auto sp = [&](const plan::Baseline& b) {
        return b.available && b.prediction.fits ? fmt::format("{:.2f}x", b.prediction.step_s / p.prediction.step_s) : "n/a";
      };
      fmt::print("{:<6} {:<18} {:>8} {:>8}  {} x {}, {} microbatches, {} ({:.2f} s)\n", m, cname, sp(p.baselines[0]),
                 sp(p.baselines[1]), p.stages, p.data_parallel, p.microbatches, p.schedule_name, t1 - t0);
    };
    for (std::string m : {"mlp", "cnn", "gpt"})
      for (std::string c : {"local-cpu", "a100-2x8", "h100-16x8", "h100-128x8", "hetero-h100-a100"}) {
        plan::PlanOptions o;
        o.batch_size = 1024;
        row(m, c, cost::read_cluster(src("clusters/" + c + ".json")), o);
      }
    for (std::string m : {"mlp", "cnn", "gpt"}) {
      plan::PlanOptions o;
      o.batch_size = 32;
      o.stages = 4;
      o.data_parallel = 1;
      row(m, "cpu --devices 4", cost::detect_local_cpu(4), o);
    }
    fmt::print("\npeak RSS of the whole run {:.0f} MiB\n", peak_rss_mib());
  } catch (const std::exception& e) {
    fmt::print(stderr, "error: {}\n", e.what());
    return 1;
  }
  return 0;
}
