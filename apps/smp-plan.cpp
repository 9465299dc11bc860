// smp-plan: partition an ONNX model across devices; today the graph summary.
#include "common.hpp"

#include "graph/loader.hpp"
#include "graph/summary.hpp"
#include "plan_schedule.hpp"  // schedules

#include <fmt/format.h>

#include <iostream>
#include <map>

namespace {

std::string human(double x, const char* unit) {
  const char* prefixes[] = {"", "K", "M", "G", "T", "P", "E"};
  int i = 0;
  while (x >= 1000 && i < 6) { x /= 1000; ++i; }
  return fmt::format("{:.3g} {}{}", x, prefixes[i], unit);
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
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"smp-plan: partition an ONNX model across devices into a pipelined training plan.\n"
               "This version prints the graph summary (--summary); partition planning is not implemented yet."};
  smp::app::setup_app(app);

  std::string model;
  int64_t batch_size = 0;
  std::vector<std::string> dims;
  bool summary = false, json = false;
  app.add_option("MODEL", model, "ONNX model (.onnx); external weight files need not be present");
  app.add_option("-b,--batch-size", batch_size, "global batch size (bound to the inputs' symbolic batch dimension)")
      ->check(CLI::PositiveNumber);
  app.add_option("--dim", dims, "bind another symbolic dimension, NAME=SIZE (repeatable)");
  app.add_flag("--summary", summary, "print the graph summary: nodes, parameters, FLOPs, activations, ops");
  app.add_flag("--json", json, "print as one JSON object instead of text");
  // --- schedules (apps/plan_schedule.*): options, and their mode when no model is given
  smp::app::ScheduleOptions schedule_opts;
  smp::app::add_schedule_options(app, schedule_opts);
  // --- end schedules

  SMP_PARSE(app, argc, argv);

  return smp::app::guarded_main([&]() -> int {
    if (model.empty() && smp::app::schedule_mode_requested(schedule_opts))  // schedules
      return smp::app::run_schedule_mode(schedule_opts);
    if (model.empty()) smp::throw_bad_input("MODEL", "no model given", "smp-plan MODEL.onnx --summary");
    smp::graph::LoadOptions opts;
    opts.batch_size = batch_size;
    for (const auto& d : dims) {
      auto eq = d.find('=');
      int64_t v = 0;
      if (eq == std::string::npos || eq == 0)
        smp::throw_bad_input("--dim", fmt::format("'{}' is not NAME=SIZE", d));
      try {
        size_t used = 0;
        v = std::stoll(d.substr(eq + 1), &used);
        if (used != d.size() - eq - 1) throw std::invalid_argument("trailing");
      } catch (const std::exception&) {
        smp::throw_bad_input("--dim", fmt::format("'{}': size is not an integer", d));
      }
      if (v <= 0) smp::throw_bad_input("--dim", fmt::format("'{}': size must be positive", d));
      opts.dims[d.substr(0, eq)] = v;
    }
    smp::graph::Graph g = smp::graph::load_graph(model, opts);
    for (const auto& w : g.warnings) fmt::print(stderr, "warning: {}: {}\n", model, w);
    auto s = smp::graph::summarize(g, batch_size);
    if (!summary) {
      fmt::print(stderr, "note: partition planning is not implemented in this version; printing the graph summary\n");
    }
    if (json) std::cout << smp::graph::to_json(s).dump(2) << "\n";
    else print_summary(s);
    return 0;
  });
}
