// Timelines and their writers: a Gantt chart as SVG and Chrome trace events (Perfetto,
// chrome://tracing). The timeline is generic (rows, spans with kind / label / start / end) so
// that measured runs (smp-run) and simulated schedules use the same writers and can be laid
// side by side.
#pragma once

#include "schedule/schedule.hpp"
#include "schedule/simulate.hpp"

#include <filesystem>
#include <string>
#include <vector>

namespace smp::schedule {

enum class SpanKind : uint8_t {
  Forward,         // F
  BackwardInput,   // B
  BackwardWeight,  // W
  Backward,        // X (full backward)
  SendAct,         // activation transfer
  SendGrad,        // gradient transfer
  AllReduce,       // data-parallel all-reduce
  Update,          // gradient norm and optimizer update at the end of the step
  Other,
};
std::string_view span_kind_name(SpanKind k);

struct Span {
  int row = 0;       // rank
  int lane = 0;      // 0: compute, 1: communication (drawn as a thin bar under the compute)
  SpanKind kind = SpanKind::Other;
  double start = 0;  // in Timeline::unit
  double end = 0;
  std::string label;  // short text drawn inside the bar (the microbatch number)
  std::string name;   // full name for traces and tooltips ("2F5", "2SF5>3")
  int shade = 0;      // 0, 1, ...: lighter to darker variants of the kind's colour (the chunk)
};

struct Timeline {
  std::string title;
  std::vector<std::string> rows;  // row names ("rank 0", ...)
  std::vector<Span> spans;
  std::string unit = "s";         // what start / end count: "s" or e.g. "unit"
  double seconds_per_unit = 1.0;  // for the trace's microseconds
  std::string footer;             // one line under the chart (e.g. step time and bubble)
};

// Rows = ranks; compute spans labelled with the microbatch, shaded by chunk; transfers on the
// sender's communication lane; all-reduces on the compute lane.
Timeline make_timeline(const Schedule& s, const SimResult& r, std::string title,
                       std::string unit = "s", double seconds_per_unit = 1.0);

struct SvgOptions {
  double width_px = 1200;   // of the chart area; the picture adds margins
  double row_height_px = 34;
  double time_max = 0;  // end of the time axis (to draw several timelines on one scale); 0: the last span's end
};
std::string to_svg(const Timeline& t, const SvgOptions& opt = {});
// Chrome trace event format: {"traceEvents": [...], "displayTimeUnit": "ms"}; one process,
// one thread per row and lane, complete ("X") events with microsecond timestamps.
nlohmann::json to_chrome_trace(const Timeline& t);

void write_svg(const std::filesystem::path& path, const Timeline& t, const SvgOptions& opt = {});
void write_chrome_trace(const std::filesystem::path& path, const Timeline& t);

}  // namespace smp::schedule
