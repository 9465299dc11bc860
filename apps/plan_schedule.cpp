#include "plan_schedule.hpp"

#include "common.hpp"

#include "core/error.hpp"
#include "schedule/generators.hpp"
#include "schedule/simulate.hpp"
#include "schedule/timeline.hpp"
#include "schedule/validate.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdio>

namespace smp::app {

namespace sch = smp::schedule;

void add_schedule_options(CLI::App& app, ScheduleOptions& opt) {
  const std::string group = "Schedules (without a model: see, check and draw a pipeline schedule)";
  std::string names;
  for (const auto& g : sch::generators()) names += (names.empty() ? "" : "|") + g.name;
  std::string help = "pipeline schedule, one of " + names + ":";
  for (const auto& g : sch::generators()) help += fmt::format("\n  {}: {} ({})", g.name, g.summary, g.needs);
  app.add_option("--schedule", opt.schedule, help)->group(group)->option_text("NAME");
  app.add_option("--stages", opt.stages, "pipeline ranks P (default 4 with --show)")
      ->group(group)->option_text("P")->check(CLI::Range(1, 1 << 16));
  app.add_option("--chunks", opt.chunks, "model chunks (stages) per rank V (default 1; 2 for interleaved)")
      ->group(group)->option_text("V")->check(CLI::Range(1, 1 << 10));
  app.add_option("--microbatches", opt.microbatches, "microbatches per step M (default 8 with --show)")
      ->group(group)->option_text("M")->check(CLI::Range(1, 1 << 20));
  app.add_flag("--show", opt.show,
               "print the rank x step grid and the simulated step time and bubble with unit costs: a rank's "
               "share of the model takes F = B = W = 1, so a full backward (X = B and W together) takes 2; with "
               "V chunks per rank each chunk takes 1/V of that; communication is free")
      ->group(group);
  app.add_flag("--lowered", opt.lowered, "with --show: print the lists with their sends and receives")->group(group);
  app.add_option("--schedule-file", opt.schedule_file,
                 "validate a (hand-edited) schedule file (schemas/schedule.schema.json); with --show, print it")
      ->group(group)->option_text("FILE");
  app.add_option("--save-schedule", opt.save_schedule, "write the schedule as a schedule file, to edit by hand")
      ->group(group)->option_text("FILE");
  app.add_option("--timeline", opt.timeline_svg, "draw the simulated schedule as a Gantt chart (SVG)")
      ->group(group)->option_text("FILE.svg");
  app.add_option("--time-axis", opt.time_axis,
                 "with --timeline: end the time axis at T units (to draw several schedules on one scale)")
      ->group(group)->option_text("T")->check(smp::app::NonNegative);
  app.add_option("--trace", opt.trace_json, "write the simulated schedule as Chrome trace events (Perfetto)")
      ->group(group)->option_text("FILE.json");
}

bool schedule_mode_requested(const ScheduleOptions& opt) {
  return opt.show || !opt.schedule_file.empty() || !opt.timeline_svg.empty() || !opt.trace_json.empty() ||
         !opt.save_schedule.empty();
}

namespace {

std::string chunks_text(int v) { return fmt::format("{} chunk{} per rank", v, v == 1 ? "" : "s"); }

}  // namespace

int run_schedule_mode(const ScheduleOptions& opt) {
  sch::Schedule s;
  if (!opt.schedule_file.empty()) {
    for (auto [given, name] : {std::pair{!opt.schedule.empty(), "--schedule"}, {opt.stages != 0, "--stages"},
                               {opt.chunks != 0, "--chunks"}, {opt.microbatches != 0, "--microbatches"}})
      if (given)
        throw_bad_input(name, "cannot be combined with --schedule-file", "the file gives the schedule and its sizes");
    s = sch::read_schedule(opt.schedule_file);
    sch::Validation v = sch::validate(s);
    if (!v.ok) {
      std::fputs(sch::format_grid(s, sch::GridOptions{v.rank, v.step}).c_str(), stderr);
      throw_bad_input(opt.schedule_file, v.message, "fix the marked action");
    }
  } else {
    std::string name = opt.schedule.empty() ? "1f1b" : opt.schedule;
    int p = opt.stages ? opt.stages : 4;
    int m = opt.microbatches ? opt.microbatches : 8;
    int v = opt.chunks ? opt.chunks : (name == "interleaved" ? 2 : 1);
    s = sch::make_schedule(name, p, m, v, "--schedule");
    sch::check_valid(s, "--schedule");
  }
  const bool file_lowered = s.lowered();
  const sch::Schedule compute = file_lowered ? sch::compute_only(s) : s;

  // Unit costs: a rank's share of the model takes F = B = W = 1; each of its V chunks 1/V.
  const double per_chunk = 1.0 / s.chunks;
  sch::Costs unit = sch::Costs::uniform(s.stages(), per_chunk, per_chunk, per_chunk);
  for (auto& sc : unit.stage) sc.act_bytes = 1;  // memory counts stashed (microbatch, chunk) pairs
  sch::SimResult r = sch::simulate(compute, unit);
  const double ideal = r.compute_s / s.ranks;
  const std::string cost_text =
      s.chunks == 1 ? "unit costs F = B = W = 1 (full backward 2), free communication"
                    : fmt::format("unit costs F = B = W = 1 per rank, 1/{} per chunk, free communication", s.chunks);
  std::vector<int> stashed(static_cast<size_t>(s.ranks), 0), pending(static_cast<size_t>(s.ranks), 0);
  for (int rank = 0; rank < s.ranks; ++rank)
    stashed[static_cast<size_t>(rank)] = static_cast<int>(r.rank[static_cast<size_t>(rank)].peak_act_bytes);
  for (int st = 0; st < s.stages(); ++st)
    pending[static_cast<size_t>(s.rank_of(st))] += r.stage[static_cast<size_t>(st)].peak_pending_w;
  const std::string summary =
      fmt::format("{}: {} ranks, {}, {} microbatches; {}: step {:g}, bubble {:.1f}%, idle / compute {:.4g}",
                  s.name, s.ranks, chunks_text(s.chunks), s.microbatches, cost_text, r.step_s, 100 * r.bubble,
                  r.idle_s / r.compute_s);

  if (opt.show) {
    fmt::print("schedule {}{}: {} ranks, {}, {} stages, {} microbatches, {}\n\n", s.name,
               opt.schedule_file.empty() ? "" : " (" + opt.schedule_file + ")", s.ranks,
               chunks_text(s.chunks), s.stages(), s.microbatches,
               compute.split_backward() ? "backward split into B and W" : "full backward X (B and W together)");
    if (opt.lowered || file_lowered) {
      fmt::print("{}\n", sch::format_grid(file_lowered ? s : sch::lower(s)));
    } else {
      fmt::print("{}\n", sch::format_grid(s));
    }
    fmt::print("simulated with {}:\n", cost_text);
    fmt::print("  step time {:g}, ideal {:g}, bubble {:.1f}% (idle / compute {:.4g})\n", r.step_s, ideal,
               100 * r.bubble, r.idle_s / r.compute_s);
    fmt::print("\n  {:<6} {:>8} {:>8} {:>14} {:>16}\n", "rank", "busy", "idle", "peak stashed", "peak B..W held");
    for (int rank = 0; rank < s.ranks; ++rank) {
      const auto& rs = r.rank[static_cast<size_t>(rank)];
      fmt::print("  {:<6} {:>8g} {:>8g} {:>14} {:>16}\n", rank, rs.busy_s, rs.idle_s, stashed[static_cast<size_t>(rank)],
                 pending[static_cast<size_t>(rank)]);
    }
    fmt::print("  (peak stashed: most (microbatch, chunk) pairs held between F and B or X at once; peak B..W "
               "held: between B and W, summed over the rank's chunks)\n");
  } else if (!opt.schedule_file.empty()) {
    fmt::print("{}: valid\n", opt.schedule_file);
  }

  if (!opt.save_schedule.empty()) {
    sch::write_schedule(opt.save_schedule, opt.lowered ? (file_lowered ? s : sch::lower(s)) : s);
    fmt::print("wrote {}\n", opt.save_schedule);
  }
  if (!opt.timeline_svg.empty() || !opt.trace_json.empty()) {
    std::string title = fmt::format("{}: {} ranks, {}, {} microbatches", s.name, s.ranks, chunks_text(s.chunks),
                                    s.microbatches);
    sch::Timeline t = sch::make_timeline(compute, r, title, "units", 1e-3);
    t.footer = fmt::format("{}: step {:g}, bubble {:.1f}%; microbatches stashed at the peak, rank 0 to {}: {}",
                           cost_text, r.step_s, 100 * r.bubble, s.ranks - 1, fmt::join(stashed, ", "));
    if (!opt.timeline_svg.empty()) {
      sch::SvgOptions svg;
      svg.time_max = opt.time_axis;
      // Wide enough for a legible number in the shortest bar (1/V units), within reason.
      svg.width_px = std::clamp(std::max(r.step_s, opt.time_axis) / per_chunk * 18.0, 1200.0, 8000.0);
      sch::write_svg(opt.timeline_svg, t, svg);
      fmt::print("wrote {}\n", opt.timeline_svg);
    }
    if (!opt.trace_json.empty()) {
      sch::write_chrome_trace(opt.trace_json, t);
      fmt::print("wrote {}\n", opt.trace_json);
    }
  }
  if (!opt.show) fmt::print("{}\n", summary);
  return 0;
}

}  // namespace smp::app
