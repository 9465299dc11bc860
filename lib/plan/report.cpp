#include "plan/report.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>

namespace smp::plan {

using nlohmann::json;

std::string human_bytes(double x) {
  const char* p[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (x >= 1024 && i < 5) x /= 1024, ++i;
  return fmt::format("{:.3g} {}", x, p[i]);
}

namespace {

std::string human_count(double x) {
  const char* p[] = {"", "K", "M", "G", "T"};
  int i = 0;
  while (x >= 1000 && i < 4) x /= 1000, ++i;
  return i == 0 ? fmt::format("{:.0f}", x) : fmt::format("{:.3g} {}", x, p[i]);
}

std::string ms(double s) { return fmt::format("{:.4g}", s * 1e3); }

std::string devices_of(const Plan& plan, const cost::Cluster& cl, int prank) {
  std::vector<std::string> names;
  const RankLayout layout = plan.rank_layout();
  for (int rep = 0; rep < plan.data_parallel; ++rep) {
    int dev = plan.device_of_rank[static_cast<size_t>(layout.rank(rep, prank, 0))];
    const auto& d = cl.devices[static_cast<size_t>(dev)];
    const std::string locals =
        plan.tensor_parallel > 1 ? fmt::format("{}-{}", d.local, d.local + plan.tensor_parallel - 1) : std::to_string(d.local);
    names.push_back(fmt::format("{}:{} {}", cl.hosts[static_cast<size_t>(d.host)].name, locals,
                                cl.kinds[static_cast<size_t>(d.kind)].name));
  }
  if (names.size() == 1) return names[0];
  return fmt::format("{} (+{} replica{})", names[0], names.size() - 1, names.size() == 2 ? "" : "s");
}

std::string speedup_text(const Plan& plan, const Baseline& b) {
  if (!b.available) return "n/a (" + b.note + ")";
  if (!b.prediction.fits) return "baseline does not fit in memory";
  return fmt::format("{:.2f}x", b.prediction.step_s / plan.prediction.step_s);
}

}  // namespace

std::string format_report(const Plan& plan, const PlanInputs& source) {
  const PlanInputs in = plan_inputs(plan, source);
  const graph::Graph& g = *in.graph;
  const cost::Cluster& cl = *source.cluster;
  std::string out;
  auto line = [&](const std::string& s) { out += s + "\n"; };
  const graph::Graph& src = *source.graph;
  line(fmt::format("model     {} ({} nodes, {} parameters), batch {}", plan.model_path, src.nodes.size(),
                   human_count(static_cast<double>(src.parameter_count())), plan.batch_size));
  line(fmt::format("cluster   {}", cl.summary()));
  line(fmt::format("plan      {} stage{} x {} data-parallel replica{}{}{}, {} microbatch{} of {:g}, schedule {}, {}", plan.stages,
                   plan.stages == 1 ? "" : "s", plan.data_parallel, plan.data_parallel == 1 ? "" : "s",
                   plan.tensor_parallel > 1 ? fmt::format(" x {} tensor-parallel", plan.tensor_parallel) : "",
                   plan.chunks > 1 ? fmt::format(" ({} chunks per rank)", plan.chunks) : "", plan.microbatches,
                   plan.microbatches == 1 ? "" : "es", plan.microbatch_size, plan.schedule_name, layout_name(plan.layout)));
  {
    std::string searched;
    for (int t : plan.degrees_searched) searched += (searched.empty() ? "" : ", ") + std::to_string(t);
    if (plan.tp) {
      const auto& a = plan.tp->analysis;
      std::map<std::string, int> kinds;
      for (const auto& grp : a.groups) ++kinds[std::string(graph::tp_kind_name(grp.kind))];
      std::string counts;
      for (const auto& [k, n] : kinds) counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", n, k);
      const double total = static_cast<double>(a.sharded_params + a.replicated_params);
      line(fmt::format("tensor    {}-way within each host ({} ranks, TP innermost): {} groups split ({}), {} of {} parameters "
                       "({:.1f}%); degrees searched: {}",
                       plan.tensor_parallel, plan.rank_layout().size(), a.groups.size(), counts,
                       human_count(static_cast<double>(a.sharded_params)), human_count(total),
                       total > 0 ? 100.0 * static_cast<double>(a.sharded_params) / total : 0.0, searched));
    } else {
      line(fmt::format("tensor    none (1 rank per group); degrees searched: {}", searched.empty() ? "1" : searched));
    }
    if (plan.data_parallel > 1)
      line(fmt::format("optimizer {} state {}", cost::optimizer_name(in.cost->options().optimizer),
                       plan.shard_optimizer ? fmt::format("split over the {} replicas (ZeRO stage 1)", plan.data_parallel)
                                            : "replicated on every replica"));
  }
  // A configuration with few splits has them all scored instead of a DP run (exact either way).
  const std::string how =
      plan.splits_enumerated == 0 ? fmt::format("{} DP runs", plan.dp_runs)
      : plan.dp_runs == 0         ? fmt::format("exhaustively: {} splits scored", plan.splits_enumerated)
                                  : fmt::format("{} DP runs, and {} splits scored exhaustively where few", plan.dp_runs,
                                                plan.splits_enumerated);
  const std::string from = plan.partition != "dp" ? plan.partition : plan.split_enumerated ? "an exhaustive search" : "the DP";
  line(fmt::format("search    the DP saw {} of {} cut positions; {} configurations considered, {} partitioned ({}); split from {}",
                   plan.positions_seen, plan.positions_total, plan.configs_considered, plan.configs_evaluated, how, from));
  for (const auto& n : plan.notes) line("note      " + n);
  line("");
  line(fmt::format("{:<5} {:<52} {:>9} {:>9} {:>9} {:>24} {:>10} {:<4} {:<28} {}", "stage", "first -> last node", "params",
                   "fwd ms", "bwd ms", "memory used / capacity", "sent/mb", "rc", "device(s)", "timing"));
  for (const auto& sp : plan.stage_plans) {
    std::string range = g.nodes[static_cast<size_t>(sp.begin)].name + " -> " + g.nodes[static_cast<size_t>(sp.end - 1)].name;
    if (range.size() > 52) range = range.substr(0, 24) + "..." + range.substr(range.size() - 25);
    line(fmt::format("{:<5} {:<52} {:>9} {:>9} {:>9} {:>24} {:>10} {:<4} {:<28} {}", sp.index, range,
                     human_count(static_cast<double>(sp.params)), ms(sp.f_s), ms(sp.b_s + sp.w_s),
                     human_bytes(sp.peak_bytes) + " / " + human_bytes(sp.capacity_bytes),
                     sp.index + 1 < static_cast<int>(plan.stage_plans.size()) ? human_bytes(sp.send_bytes) : "-",
                     sp.recompute ? "yes" : "no", devices_of(plan, cl, sp.pipeline_rank), sp.timing));
  }
  line("");
  const auto& p = plan.prediction;
  line(fmt::format("predicted step {} ms, {:.4g} samples/s, bubble {:.1f}%, peak memory {}{}{}", ms(p.step_s), p.samples_per_s,
                   std::max(0.0, 100 * p.bubble), human_bytes(p.peak_max()),
                   p.allreduce_s > 0 ? fmt::format(", all-reduce {} ms", ms(p.allreduce_s)) : "",
                   p.update_s > 0 ? fmt::format(", optimizer step ({}) {} ms", cost::optimizer_name(in.cost->options().optimizer), ms(p.update_s)) : ""));
  line("");
  line(fmt::format("baselines (same {} microbatch{}, {} schedule, devices and recomputation rule):", plan.microbatches,
                   plan.microbatches == 1 ? "" : "es", plan.schedule_name));
  for (const auto& b : plan.baselines) {
    if (!b.available) {
      line(fmt::format("  {:<17} n/a: {}", b.name, b.note));
      continue;
    }
    std::string cuts;
    for (size_t i = 1; i + 1 < b.bounds.size(); ++i) {
      if (!cuts.empty()) cuts += ',';
      cuts += std::to_string(b.bounds[i]);
    }
    line(fmt::format("  {:<17} step {} ms, {:.4g} samples/s, bubble {:.1f}%, peak memory {}{} -> plan speedup {}", b.name,
                     ms(b.prediction.step_s), b.prediction.samples_per_s, std::max(0.0, 100 * b.prediction.bubble),
                     human_bytes(b.prediction.peak_max()), b.prediction.fits ? "" : " (does not fit)", speedup_text(plan, b)));
    line(fmt::format("  {:<17} ({}; {})", "", b.unit, cuts.empty() ? "one stage" : "cuts before nodes " + cuts));
  }
  const MegatronBaseline& m = plan.megatron;
  if (m.available)
    line(fmt::format("  {:<17} step {} ms, {:.4g} samples/s, bubble {:.1f}%, peak memory {} -> plan speedup {:.2f}x",
                     "megatron", ms(m.prediction.step_s), m.prediction.samples_per_s,
                     std::max(0.0, 100 * m.prediction.bubble), human_bytes(m.prediction.peak_max()),
                     m.prediction.step_s / plan.prediction.step_s));
  if (m.available)
    line(fmt::format("  {:<17} (Megatron-LM's layout: {}-way tensor parallel, the fewest stages that fit: {} x {} "
                     "replicas, {} microbatches of {}, equal layers, 1f1b)",
                     "", m.tensor_parallel, m.stages, m.data_parallel, m.microbatches, m.microbatch_size));
  else if (!m.note.empty())
    line(fmt::format("  {:<17} n/a: {}", "megatron", m.note));
  return out;
}

json report_json(const Plan& plan, const PlanInputs& source) {
  const PlanInputs in = plan_inputs(plan, source);
  const graph::Graph& g = *in.graph;
  const cost::Cluster& cl = *source.cluster;
  const RankLayout layout = plan.rank_layout();
  json stages = json::array();
  for (const auto& sp : plan.stage_plans) {
    json devs = json::array();
    for (int rep = 0; rep < plan.data_parallel; ++rep)
      for (int t = 0; t < plan.tensor_parallel; ++t)
        devs.push_back(plan.device_of_rank[static_cast<size_t>(layout.rank(rep, sp.pipeline_rank, t))]);
    stages.push_back(json{{"stage", sp.index},
                          {"first_node", g.nodes[static_cast<size_t>(sp.begin)].name},
                          {"last_node", g.nodes[static_cast<size_t>(sp.end - 1)].name},
                          {"nodes", sp.end - sp.begin},
                          {"parameters", sp.params},
                          {"forward_ms", sp.f_s * 1e3},
                          {"backward_ms", (sp.b_s + sp.w_s) * 1e3},
                          {"memory_bytes", sp.peak_bytes},
                          {"capacity_bytes", sp.capacity_bytes},
                          {"sent_bytes_per_microbatch", sp.send_bytes},
                          {"recompute", sp.recompute},
                          {"devices", devs},
                          {"timing", sp.timing}});
  }
  auto pred = [](const Prediction& p) {
    return json{{"fits", p.fits}, {"step_s", p.step_s}, {"samples_per_s", p.samples_per_s}, {"bubble", p.bubble},
                {"peak_bytes", p.peak_max()}, {"allreduce_s", p.allreduce_s}, {"update_s", p.update_s}};
  };
  json baselines = json::array();
  for (const auto& b : plan.baselines) {
    json bj{{"name", b.name}, {"available", b.available}, {"unit", b.unit}, {"note", b.note}};
    if (b.available) {
      bj["prediction"] = pred(b.prediction);
      bj["stage_boundaries"] = b.bounds;
      bj["speedup"] = b.prediction.fits ? json(b.prediction.step_s / plan.prediction.step_s) : json(nullptr);
    }
    baselines.push_back(bj);
  }
  return json{{"model", plan.model_path},
              {"batch_size", plan.batch_size},
              {"cluster", cl.summary()},
              {"stages", plan.stages},
              {"data_parallel", plan.data_parallel},
              {"tensor_parallel", plan.tensor_parallel},
              {"shard_optimizer", plan.shard_optimizer},
              {"degrees_searched", plan.degrees_searched},
              {"chunks", plan.chunks},
              {"microbatches", plan.microbatches},
              {"microbatch_size", plan.microbatch_size},
              {"schedule", plan.schedule_name},
              {"layout", std::string(layout_name(plan.layout))},
              {"partition", plan.partition},
              {"cut_positions_seen", plan.positions_seen},
              {"cut_positions_total", plan.positions_total},
              {"rows", stages},
              {"prediction", pred(plan.prediction)},
              {"baselines", baselines},
              {"megatron", plan.megatron.available
                               ? json{{"available", true},
                                      {"tensor_parallel", plan.megatron.tensor_parallel},
                                      {"pipeline", plan.megatron.stages},
                                      {"data_parallel", plan.megatron.data_parallel},
                                      {"microbatches", plan.megatron.microbatches},
                                      {"prediction", pred(plan.megatron.prediction)},
                                      {"speedup", plan.megatron.prediction.step_s / plan.prediction.step_s}}
                               : json{{"available", false}, {"note", plan.megatron.note}}},
              {"notes", plan.notes}};
}

}  // namespace smp::plan
