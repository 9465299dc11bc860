// smp-plan's schedule options: see a pipeline schedule without a model (--show), validate a
// hand-edited schedule file (--schedule-file), draw it (--timeline, --trace).
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace smp::app {

struct ScheduleOptions {
  std::string schedule;       // --schedule NAME; empty: not given
  int stages = 0;             // --stages P (ranks); 0: not given
  int chunks = 0;             // --chunks V; 0: not given
  int microbatches = 0;       // --microbatches M; 0: not given
  bool show = false;          // --show
  bool lowered = false;       // --lowered: show the lists with their sends and receives
  std::string schedule_file;  // --schedule-file FILE
  std::string save_schedule;  // --save-schedule FILE
  std::string timeline_svg;   // --timeline FILE.svg
  std::string trace_json;     // --trace FILE.json
  double time_axis = 0;       // --time-axis T: end of the picture's time axis; 0: the step time
};

// Registers the options above on `app` (in an option group "Schedules").
void add_schedule_options(CLI::App& app, ScheduleOptions& opt);

// True when the options ask for the schedule mode (--show, --schedule-file, --timeline, --trace
// or --save-schedule); smp-plan runs it when no model is given.
bool schedule_mode_requested(const ScheduleOptions& opt);

// Prints / writes what the options ask for; returns the exit status. Bad input throws
// smp::Error (after printing the marked grid to stderr for an invalid schedule file).
int run_schedule_mode(const ScheduleOptions& opt);

}  // namespace smp::app
