// smp-plan: partition an ONNX model across devices into a pipelined training plan (lib/plan),
// print the graph summary (--summary), or show pipeline schedules without a model (--show).
#include "common.hpp"
#include "default_batch.hpp"

#include "core/io.hpp"
#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "cost/profile.hpp"
#include "graph/loader.hpp"
#include "graph/summary.hpp"
#include "plan/plan_io.hpp"
#include "plan/planner.hpp"
#include "plan/report.hpp"
#include "plan/sha256.hpp"
#include "plan_schedule.hpp"  // schedules
#include "schedule/timeline.hpp"
#include "schedule/validate.hpp"
#include "train/calibrate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <map>
#include <optional>

namespace {

std::string human(double x, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T", "P", "E"};
  int i = 0;
  while (x >= 1000 && i < 6) { x /= 1000; ++i; }
  std::string s = fmt::format("{:.3g} {}{}", x, prefixes[i], unit);
  if (s.back() == ' ') s.pop_back();  // a count below 1000: no prefix, no unit
  return s;
}

std::string human_bytes(double x) {
  const char* prefixes[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int i = 0;
  while (x >= 1024 && i < 5) { x /= 1024; ++i; }
  return fmt::format("{:.3g} {}", x, prefixes[i]);
}

void print_summary(const smp::graph::GraphSummary& s) {
  fmt::print("model            {}\n", s.model);
  fmt::print("batch size       {}\n", s.batch_size);
  fmt::print("ONNX nodes       {} in the file, {} after folding constants\n", s.onnx_nodes, s.nodes);
  fmt::print("parameters       {} ({})\n", s.parameters, human(static_cast<double>(s.parameters), ""));
  fmt::print("forward FLOPs    {:.6g} ({})\n", s.forward_flops, human(s.forward_flops, "FLOP"));
  fmt::print("activations      {}\n\n", human_bytes(s.activation_bytes));
  fmt::print("{:<26} {:>7} {:>14} {:>7}\n", "op", "count", "FLOPs", "share");
  std::vector<std::pair<std::string, smp::graph::OpStats>> rows(s.ops.begin(), s.ops.end());
  std::stable_sort(rows.begin(), rows.end(),
                   [](const auto& a, const auto& b) { return a.second.flops > b.second.flops; });
  for (const auto& [op, st] : rows) {
    double share = s.forward_flops > 0 ? 100.0 * st.flops / s.forward_flops : 0.0;
    fmt::print("{:<26} {:>7} {:>14.6g} {:>6.2f}%\n", op, st.count, st.flops, share);
  }
  const auto& tp = s.tensor_parallel;
  fmt::print("\ntensor parallelism (found in the graph; --tensor-parallel T)\n");
  if (tp.groups.empty()) {
    fmt::print("  no shardable groups: every node stays replicated\n");
  } else {
    std::map<std::string, int> kinds;
    for (const auto& t : tp.groups) ++kinds[t.kind];
    std::string counts;
    for (const auto& [k, n] : kinds) counts += fmt::format("{}{} {}", counts.empty() ? "" : ", ", n, k);
    const double total = static_cast<double>(tp.sharded_parameters + tp.replicated_parameters);
    fmt::print("  {} groups ({}); every one splits up to {} ways\n", tp.groups.size(), counts, tp.max_degree);
    fmt::print("  sharded:    {} parameters ({:.1f}%)\n", human(static_cast<double>(tp.sharded_parameters), ""),
               total > 0 ? 100.0 * static_cast<double>(tp.sharded_parameters) / total : 0.0);
    auto by_op = [](const std::map<std::string, int>& m) {
      std::vector<std::pair<int, std::string>> v;
      for (const auto& [op, n] : m) v.emplace_back(-n, op);
      std::sort(v.begin(), v.end());
      std::string out;
      for (size_t i = 0; i < v.size() && i < 6; ++i) out += fmt::format("{}{} {}", i ? ", " : "", -v[i].first, v[i].second);
      if (v.size() > 6) out += ", ...";
      return out;
    };
    fmt::print("  replicated: {} parameters in {} tensors (read by {})\n", human(static_cast<double>(tp.replicated_parameters), ""),
               tp.replicated.size(), tp.replicated.empty() ? std::string("none") : by_op(tp.replicated_by_op));
    fmt::print("              {} nodes outside the groups ({})\n", tp.replicated_nodes, by_op(tp.replicated_nodes_by_op));
    fmt::print("  {:<10} {:<28} {:>6} {:>12} {:>8}  {}\n", "kind", "group", "nodes", "parameters", "up to", "first -> last node");
    const size_t show = tp.groups.size() > 24 ? 12 : tp.groups.size();
    auto row = [&](const smp::graph::TpGroupSummary& t) {
      std::string range = t.first_node + " -> " + t.last_node;
      if (range.size() > 64) range = range.substr(0, 30) + "..." + range.substr(range.size() - 31);
      fmt::print("  {:<10} {:<28} {:>6} {:>12} {:>6}x  {}\n", t.kind, t.name.size() > 28 ? t.name.substr(0, 25) + "..." : t.name,
                 t.nodes, human(static_cast<double>(t.parameters), ""), t.max_degree, range);
    };
    for (size_t i = 0; i < show; ++i) row(tp.groups[i]);
    if (show < tp.groups.size()) {
      fmt::print("  ... {} more ...\n", tp.groups.size() - show - 2);
      row(tp.groups[tp.groups.size() - 2]);
      row(tp.groups.back());
    }
  }
  for (const auto& n : tp.notes) fmt::print("  not split: {}\n", n);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "smp-plan: partition an ONNX model across devices into a pipelined training plan.\n"
      "  smp-plan MODEL.onnx [--batch-size N] [--cluster FILE | --devices N] [options] plan; writes plan.json\n"
      "  smp-plan MODEL.onnx [--batch-size N] --summary                                  the graph summary\n"
      "  smp-plan --schedule NAME --show                                                 a schedule, without a model\n"
      "Planning searches pipeline x data-parallel x tensor-parallel degrees, microbatches, schedule, placement, "
      "optimizer-state sharding and per-stage recomputation, splits the graph by dynamic programming, scores every candidate with the schedule simulator, "
      "prints the partition report and writes the plan (default file name: plan.json)."};
  smp::app::setup_app(app);

  std::string model;
  int64_t batch_size = 0;
  std::vector<std::string> dims, frozen;
  bool summary = false, json = false;
  std::string cluster_file, profile_file, out_file = "plan.json", optimizer = "adamw", dtype = "fp32",
                            recompute = "auto", save_cluster, split = "auto";
  int devices = -1, data_parallel = 0, max_positions = 256, max_configs = 48, tensor_parallel = 0;
  bool recalibrate = false, no_calibration = false, shard_optimizer = false, no_shard_optimizer = false;
  double dp_work = 2e6;
  app.add_option("MODEL", model, "ONNX model (.onnx); external weight files need not be present");
  app.add_option("-b,--batch-size", batch_size, "global batch size (bound to the inputs' symbolic batch dimension; default: "
                                                "the model's fixed batch dimension, else 8 per device)")
      ->check(smp::app::PositiveInt);
  app.add_option("--dim", dims, "bind another symbolic dimension, NAME=SIZE (repeatable)");
  app.add_option("--freeze", frozen, "keep these floating-point initializers constant instead of training them: names "
                                     "or patterns such as '*relative_coords_table' (repeatable or comma-separated; "
                                     "the plan records them for smp-run)")
      ->delimiter(',')
      ->option_text("NAME");
  app.add_flag("--summary", summary, "print the graph summary: nodes, parameters, FLOPs, activations, ops");
  app.add_flag("--json", json, "print as one JSON object instead of text (the summary, or the partition report)");
  const std::string pg = "Planning";
  app.add_option("--cluster", cluster_file, "cluster description (schemas/cluster.schema.json, examples in clusters/); "
                                            "default: this machine's CPU, detected")
      ->group(pg)->option_text("FILE");
  app.add_option("--devices", devices, "without --cluster: the number of worker processes sharing this machine's cores "
                                       "(default: one per core); each is a device")
      ->group(pg)->option_text("N");
  app.add_option("--data-parallel", data_parallel, "data-parallel replicas D (default: searched)")
      ->group(pg)->option_text("D")->check(CLI::Range(1, 1 << 20));
  app.add_option("--tensor-parallel", tensor_parallel,
                 "tensor-parallel degree T: ranks of a group splitting each layer found in the graph (1: off; default: "
                 "1, 2, 4 and 8 searched, within a host)")
      ->group(pg)->option_text("T")->check(CLI::Range(1, 1 << 16));
  app.add_flag("--shard-optimizer", shard_optimizer,
               "split the optimizer state over the data-parallel replicas (ZeRO stage 1); default: only where a plan "
               "fits only with it")
      ->group(pg);
  app.add_flag("--no-shard-optimizer", no_shard_optimizer, "never split the optimizer state")->group(pg);
  app.add_option("--optimizer", optimizer, "optimizer state in the memory model: sgd (none), momentum (1x the weights), "
                                           "adamw (2x)")
      ->group(pg)->option_text("sgd|momentum|adamw");
  app.add_option("--dtype", dtype, "which peak FLOP/s the cost model uses")->group(pg)->option_text("fp32|bf16");
  app.add_option("--recompute", recompute, "activation recomputation per stage: auto (only where memory needs it), "
                                           "never, always")
      ->group(pg)->option_text("auto|never|always");
  app.add_option("--profile", profile_file, "measured per-node times (schemas/profile.schema.json, from smp-profile); "
                                            "they replace the roofline estimates on the device they were measured on")
      ->group(pg)->option_text("FILE");
  app.add_option("-o,--output", out_file, "where to write the plan (schemas/plan.schema.json)")->group(pg)->option_text("FILE");
  app.add_option("--max-positions", max_positions, "cut positions the DP sees at most (larger graphs are coarsened)")
      ->group(pg)->option_text("K")->check(CLI::Range(2, 4096));
  app.add_option("--max-configs", max_configs, "candidate configurations (degrees, microbatches, schedule, placement) the "
                                               "DP partitions at most, best balanced-stage estimates first")
      ->group(pg)->option_text("N")->check(CLI::Range(1, 100000));
  app.add_option("--dp-work", dp_work, "stage evaluations the DP may spend per configuration walking the bound on the "
                                       "largest stage time (0: no cap, exact for the DP's objective)")
      ->group(pg)->option_text("N")->check(smp::app::NonNegative);
  app.add_option("--split", split, "the stage split the plan keeps: auto (the DP's, or a baseline's when it simulates "
                                   "faster), dp, equal-layers, equal-params, or CUTS: the nodes that begin stages 1, 2, ... "
                                   "by name or position, comma-separated; degrees, microbatches and schedule are searched "
                                   "as usual")
      ->group(pg)->option_text("auto|dp|equal-layers|equal-params|CUTS");
  app.add_flag("--recalibrate", recalibrate, "measure this machine's kernels again (without --cluster, smp-plan prices "
                                           "nodes by a calibration of this machine taken once and cached)")
      ->group(pg);
  app.add_flag("--no-calibration", no_calibration, "without --cluster: describe this machine by its stated estimates "
                                                  "(CPU flags x clock) instead of its measured kernels")
      ->group(pg);
  app.add_option("--save-cluster", save_cluster, "write the detected description of this machine (with --devices) and exit")
      ->group(pg)->option_text("FILE");
  // --- schedules (apps/plan_schedule.*): options, and their mode when no model is given
  smp::app::ScheduleOptions schedule_opts;
  smp::app::add_schedule_options(app, schedule_opts);
  // --- end schedules

  SMP_PARSE(app, argc, argv);

  return smp::app::guarded_main([&]() -> int {
    if (devices == 0) smp::throw_bad_input("--devices", "must be at least 1", "a plan needs at least one device");
    if (devices < -1) smp::throw_bad_input("--devices", "must be a positive number");
    if (!save_cluster.empty()) {
      if (!cluster_file.empty()) smp::throw_bad_input("--save-cluster", "writes the detected machine; not with --cluster");
      smp::write_file_atomic(save_cluster, smp::cost::local_cpu_json(devices > 0 ? devices : 0).dump(2) + "\n");
      fmt::print("wrote {}\n", save_cluster);
      return 0;
    }
    if (model.empty() && smp::app::schedule_mode_requested(schedule_opts))  // schedules
      return smp::app::run_schedule_mode(schedule_opts);
    if (model.empty()) smp::throw_bad_input("MODEL", "no model given", "smp-plan MODEL.onnx --batch-size N");
    if (!cluster_file.empty() && devices > 0)
      smp::throw_bad_input("--devices", "applies to this machine's CPU description; the cluster file lists its devices",
                           "leave out --devices or --cluster");
    // This machine, when no cluster file describes the devices: its kernels as measured (once,
    // cached), unless the plan only needs the graph summary or the user asks for the estimates.
    auto local = [&](bool measured) {
      if (!measured) return smp::cost::detect_local_cpu(devices > 0 ? devices : 0);
      smp::train::CalibrateOptions co;
      co.pingpong_program = std::filesystem::read_symlink("/proc/self/exe").parent_path() / "smp-profile";
      auto cal = smp::train::load_or_calibrate(co, recalibrate, [](const std::string& s) { fmt::print(stderr, "{}\n", s); });
      return smp::cost::calibrated_local_cpu(cal, devices > 0 ? devices : 0);
    };
    if (!cluster_file.empty() && (recalibrate || no_calibration))
      smp::throw_bad_input(recalibrate ? "--recalibrate" : "--no-calibration", "applies to this machine; the cluster file "
                           "describes the devices", "leave it out or leave out --cluster");
    smp::cost::Cluster cluster = !cluster_file.empty() ? smp::cost::read_cluster(cluster_file)
                                                       : local(!summary && !no_calibration);
    std::string batch_note;
    // The inputs' leading axis, read at most once (it parses the whole file).
    std::optional<smp::graph::BatchAxis> read_axis;
    auto batch_axis = [&]() -> const smp::graph::BatchAxis& {
      if (!read_axis) read_axis = smp::graph::inspect_batch_axis(model);
      return *read_axis;
    };
    if (batch_size <= 0) batch_size = smp::app::default_batch(model, batch_axis(), cluster.size(), batch_note);
    // A model with a fixed batch dimension loads at it: each microbatch of a larger batch holds it.
    const int64_t graph_batch = smp::app::graph_batch(batch_axis(), batch_size);
    smp::graph::LoadOptions opts;
    opts.batch_size = graph_batch;
    opts.dims = smp::app::parse_dims(dims);
    opts.frozen = frozen;

    if (summary) {
      if (batch_size % graph_batch != 0)
        smp::throw_bad_input("--batch-size",
                             fmt::format("{} is not a multiple of {}: the inputs of {} fix the batch dimension at {}, so "
                                         "every microbatch holds {} samples",
                                         batch_size, graph_batch, model, graph_batch, graph_batch),
                             "re-export the model with a dynamic batch axis for microbatches of another size");
      smp::graph::Graph g = smp::graph::load_graph(model, opts);
      if (!batch_note.empty()) fmt::print(stderr, "note: {}\n", batch_note);
      for (const auto& w : g.warnings) fmt::print(stderr, "warning: {}: {}\n", model, w);
      if (graph_batch != batch_size)
        fmt::print(stderr,
                   "note: the summary describes one run of the graph at its fixed batch {0}; --batch-size {1} runs it {2} "
                   "times a step (the FLOPs and activations below times {2})\n",
                   graph_batch, batch_size, batch_size / graph_batch);
      auto s = smp::graph::summarize(g, graph_batch);
      if (json) std::cout << smp::graph::to_json(s).dump(2) << "\n";
      else print_summary(s);
      return 0;
    }

    // ---- planning
    if (!schedule_opts.schedule_file.empty())
      smp::throw_bad_input("--schedule-file", "is for schedules without a model", "use --schedule NAME with a model");
    smp::cost::CostOptions copt;
    copt.optimizer = smp::cost::parse_optimizer(optimizer);
    if (dtype == "fp32") copt.precision = smp::cost::Precision::FP32;
    else if (dtype == "bf16") copt.precision = smp::cost::Precision::BF16;
    else smp::throw_bad_input("--dtype", fmt::format("unknown dtype '{}'", dtype), "fp32 or bf16");
    smp::plan::PlanOptions popt;
    popt.batch_size = batch_size;
    popt.recompute = smp::plan::parse_recompute(recompute);
    popt.stages = schedule_opts.stages;
    popt.chunks = schedule_opts.chunks;
    popt.microbatches = schedule_opts.microbatches;
    popt.fixed_microbatch = smp::app::fixed_batch(batch_axis());
    popt.data_parallel = data_parallel;
    popt.schedule = schedule_opts.schedule.empty() ? "auto" : schedule_opts.schedule;
    popt.max_positions = max_positions;
    popt.max_evaluated = max_configs;
    popt.max_work = dp_work;
    popt.tensor_parallel = tensor_parallel;
    if (shard_optimizer && no_shard_optimizer)
      smp::throw_bad_input("--shard-optimizer", "given with --no-shard-optimizer", "choose one");
    popt.shard_optimizer = shard_optimizer      ? smp::plan::ShardOptimizer::Always
                           : no_shard_optimizer ? smp::plan::ShardOptimizer::Never
                                                : smp::plan::ShardOptimizer::Auto;

    smp::cost::Profile profile;
    if (!profile_file.empty()) {
      profile = smp::cost::read_profile(profile_file);
      copt.profile = &profile;
    }
    smp::graph::Graph g = smp::graph::load_graph(model, opts);
    for (const auto& w : g.warnings) fmt::print(stderr, "warning: {}: {}\n", model, w);
    smp::cost::GraphCost gc(g, graph_batch, copt);
    smp::plan::PlanInputs in{&g, &gc, &cluster};
    smp::plan::parse_split(g, split, popt);
    smp::plan::Plan plan = smp::plan::make_plan(in, popt);
    if (!batch_note.empty()) plan.notes.insert(plan.notes.begin(), batch_note);

    smp::plan::PlanContext ctx;
    ctx.model_sha256 = smp::plan::sha256_file(model);
    ctx.cluster_file = cluster_file;
    ctx.profile_file = profile_file;
    ctx.dtype = dtype;
    smp::plan::write_plan(out_file, smp::plan::plan_to_json(plan, in, popt, ctx));

    if (json) {
      auto j = smp::plan::report_json(plan, in);
      j["plan_file"] = out_file;
      std::cout << j.dump(2) << "\n";
    } else {
      std::cout << smp::plan::format_report(plan, in);
      fmt::print("\nwrote {}\n", out_file);
    }
    if (schedule_opts.show)
      fmt::print("\nschedule {} ({} ranks, {} microbatches):\n{}", plan.schedule_name, plan.stages, plan.microbatches,
                 smp::schedule::format_grid(plan.schedule, smp::schedule::GridOptions{-1, -1, true, 64}));
    if (!schedule_opts.timeline_svg.empty() || !schedule_opts.trace_json.empty()) {
      auto r = smp::plan::simulate_plan(in, plan, popt);
      std::string title = fmt::format("{}: {} stages, {} microbatches, {}", model, plan.stages, plan.microbatches,
                                      plan.schedule_name);
      auto t = smp::schedule::make_timeline(plan.schedule, r, title, "ms", 1e-3);
      for (auto& sp : t.spans) sp.start *= 1e3, sp.end *= 1e3;
      t.footer = fmt::format("predicted step {:.4g} ms, bubble {:.1f}%", r.step_s * 1e3, 100 * r.bubble);
      if (!schedule_opts.timeline_svg.empty()) {
        smp::schedule::write_svg(schedule_opts.timeline_svg, t);
        if (!json) fmt::print("wrote {}\n", schedule_opts.timeline_svg);
      }
      if (!schedule_opts.trace_json.empty()) {
        smp::schedule::write_chrome_trace(schedule_opts.trace_json, t);
        if (!json) fmt::print("wrote {}\n", schedule_opts.trace_json);
      }
    }
    return 0;
  });
}
