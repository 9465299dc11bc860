#include "train/pipeline_probe.hpp"

#include "comm/launch.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "cost/profile.hpp"
#include "graph/loader.hpp"
#include "plan/plan_io.hpp"
#include "plan/planner.hpp"
#include "plan/sha256.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

namespace smp::train {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// Multiplies every time the profile holds (per node, with many in flight, the optimizer step).
void scale_times(json& profile, double f) {
  for (auto& [name, e] : profile["nodes"].items()) {
    for (const char* k : {"forward_s", "backward_input_s", "backward_weight_s"}) {
      e[k] = e[k].get<double>() * f;
      if (e.contains("in_flight")) e["in_flight"][k] = e["in_flight"][k].get<double>() * f;
    }
  }
  if (profile.contains("optimizer_step_s_per_parameter"))
    for (auto& [name, v] : profile["optimizer_step_s_per_parameter"].items()) v = v.get<double>() * f;
}

}  // namespace

bool probe_pipeline(const NodeProfileOptions& o, const PipelineProbeOptions& how, json& profile, const ProfileOutput& out) {
  const int workers = o.concurrent;
  SMP_CHECK(workers >= 2 && profile.contains("contention"), "a pipelined probe needs 2 or more workers and the profile's contention");
  auto note = [&](const std::string& s) {
    if (out.note) out.note(s);
  };
  TempDir tmp("smp-probe");
  const fs::path prof_file = tmp.path() / "profile.json", plan_file = tmp.path() / "plan.json",
                 summary_file = tmp.path() / "summary.json", metrics_file = tmp.path() / "metrics.jsonl";
  write_file_atomic(prof_file, profile.dump() + "\n");

  // The plan smp-plan --devices W --stages W --data-parallel 1 --schedule 1f1b would make.
  cost::Profile prof = cost::read_profile(prof_file);
  cost::CostOptions copt;
  copt.optimizer = cost::parse_optimizer("sgd");
  copt.profile = &prof;
  // Loaded at the microbatch size, as the profiler measured it (a model whose inputs fix the batch
  // dimension loads at no other); the cost model's figures are per sample.
  graph::LoadOptions lo;
  lo.batch_size = o.batch_size / o.microbatches;
  lo.dims = o.dims;
  lo.frozen = o.frozen;
  graph::Graph g = graph::load_graph(o.model, lo);
  cost::GraphCost gc(g, lo.batch_size, copt);
  cost::Cluster cluster = cost::detect_local_cpu(workers);
  plan::PlanOptions popt;
  popt.batch_size = o.batch_size;
  popt.stages = workers;
  popt.data_parallel = 1;
  popt.microbatches = o.microbatches;
  popt.schedule = "1f1b";
  popt.tensor_parallel = 1;
  plan::PlanInputs in{&g, &gc, &cluster};
  plan::Plan p;
  try {
    p = plan::make_plan(in, popt);
  } catch (const smp::Error& e) {
    note(fmt::format("no pipelined probe: the model does not split into {} stages here ({})", workers, e.what()));
    return false;
  }
  plan::PlanContext ctx;
  ctx.model_sha256 = plan::sha256_file(o.model);
  ctx.profile_file = prof_file.string();
  const json plan_json = plan::plan_to_json(p, in, popt, ctx);
  plan::write_plan(plan_file, plan_json);
  const double predicted_step = plan_json["prediction"]["step_s"].get<double>();
  const int steps = 1 + std::clamp(static_cast<int>(std::ceil(how.budget_s / std::max(predicted_step, 1e-6))), 10, 200);
  note(fmt::format("pipelined probe: {} workers, 1f1b over {} microbatches, {} steps with smp-run", workers,
                   o.microbatches, steps));

  comm::Command cmd;
  cmd.argv = {how.smp_run.string(), plan_file.string(), "--steps", std::to_string(steps), "--threads-per-worker",
              std::to_string(o.threads), "--quiet", "--metrics", metrics_file.string(), "--summary-json",
              summary_file.string()};
  const int rc = comm::run_command(cmd);
  if (rc != 0 || !fs::exists(summary_file) || !fs::exists(metrics_file))
    throw_failure("smp-profile", fmt::format("the pipelined probe (smp-run of a {}-stage plan) failed (exit {})", workers, rc),
                  "run smp-profile with --pipeline-probe never, or check that smp-run works here");
  // The step time: the median of the steps after the first (this machine has slow phases; a
  // mean would carry them).
  std::vector<double> step_times;
  std::ifstream metrics(metrics_file);
  std::string line;
  for (int k = 0; std::getline(metrics, line); ++k)
    if (k > 0 && !line.empty()) step_times.push_back(json::parse(line).at("step_time_s").get<double>());
  if (step_times.empty()) throw_failure("smp-profile", "the pipelined probe timed no step", "run smp-profile with --pipeline-probe never");
  const double measured_step = quantile(step_times, 0.5);
  const json sum = read_json(summary_file);
  json stages = json::array();
  for (const auto& st : sum["stages"]) {
    const double mc = st["measured"]["forward_s"].get<double>() + st["measured"]["backward_s"].get<double>();
    const double pc = st["predicted"]["forward_s"].get<double>() + st["predicted"]["backward_s"].get<double>();
    stages.push_back({{"measured_s", mc}, {"predicted_s", pc}, {"cpu_per_wall", st["measured"]["cpu_per_wall"]}});
  }
  // The step, not the stages' compute alone: with workers waiting for cores, a small stage's
  // microbatch waits behind a large one (cpu/wall well below 1) and the pipeline with it, which
  // the simulator does not model. A sanity bound: the run is the same code, seconds later.
  const double factor = std::clamp(measured_step / predicted_step, 0.25, 8.0);
  scale_times(profile, factor);
  json& c = profile["contention"];
  c["slowdown"] = c["slowdown"].get<double>() * factor;
  c["pipeline_probe"] = json{{"stages", workers},
                             {"schedule", "1f1b"},
                             {"microbatches", o.microbatches},
                             {"steps", steps},
                             {"step_s", {{"measured", measured_step}, {"predicted", predicted_step}}},
                             {"per_stage", stages},
                             {"factor", factor}};
  if (out.summary) {
    std::string per;
    for (const auto& st : stages)
      per += fmt::format("{}{:.3f}|{:.3f} ms (cpu/wall {:.2f})", per.empty() ? "" : ", ", st["measured_s"].get<double>() * 1e3,
                         st["predicted_s"].get<double>() * 1e3, st["cpu_per_wall"].get<double>());
    out.summary(fmt::format("pipelined probe ({} stages, 1f1b, {} timed steps): step {:.3f} ms measured (median) against "
                            "{:.3f} ms predicted; per stage, forward + backward per microbatch measured|predicted: {}",
                            workers, steps - 1, measured_step * 1e3, predicted_step * 1e3, per));
    out.summary(fmt::format("  -> every time x {:.3f} (measured over predicted step); each worker runs x {:.3f} slower "
                            "than alone",
                            factor, c["slowdown"].get<double>()));
  }
  return true;
}

}  // namespace smp::train
