// How a job's workers ended, learned by the launcher from the one stream it already has from
// every host: their stderr, which mpirun and srun carry to it. No file on the launcher's host is
// involved, so a worker on another machine reports as well as a local one.
//
// Each worker writes status lines there, one write() each (status_line()): hello (its host and
// PID), running (its stages), done, error, stopped, interrupted. A worker killed by a signal writes
// nothing more; mpirun ("mpirun noticed that process rank 2 with PID 81 on node b exited on
// signal 9") and srun ("srun: error: b: task 2: Killed") say who it was, on which host and how:
// the monitor takes those notices out of the stream too, as smp's local launcher's ("smp-local:
// rank 2 (pid 81) on b exited on signal 9 (Killed)"). The noise that follows a dead peer
// (Open MPI's TCP connect warnings and socket errors, srun's step-cancelled lines) is held back
// and shown only when no worker's end explains a failure; every other line passes through as it
// comes.
#pragma once

#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace smp::comm {

// "@smp-status TOKEN RANK TEXT\n": a worker's status line for the launcher that gave it TOKEN.
std::string status_line(std::string_view token, int rank, std::string_view text);

struct WorkerStatus {
  std::string host;   // from its hello
  long pid = 0;
  // "" (never reported), "started", "running", "done", "error" (it said why), "stopped" (ended
  // with its job, which another worker's end ended), "interrupted" (after a stop request)
  std::string state;
  std::string stages;  // from "running": e.g. "2" or "1,5"
  std::string detail;  // error, stopped: the message
  long step = 0;       // interrupted: the steps done
  int signal = 0;      // interrupted: the signal that asked for it
  bool ended() const { return state == "done" || state == "error" || state == "stopped" || state == "interrupted"; }
};

// A launcher's notice of a process that ended abnormally.
struct ProcessEnd {
  int rank = -1;
  std::string host;   // "" when the notice does not say
  int signal = 0;     // killed by this signal
  int exit_code = 0;  // else: exited with this status
};

class JobMonitor {
 public:
  JobMonitor(int ranks, std::string token);

  // One line of the launcher's stderr (with its newline): what to show of it now. An empty line
  // marks the end of the stream (an unfinished help block is shown then).
  std::string filter(std::string_view line);

  std::vector<WorkerStatus> workers() const;
  std::vector<ProcessEnd> ends() const;  // in the order noticed
  std::string held() const;              // the noise kept back
  bool all_started() const;              // every rank said hello
  bool all_ended() const;                // every rank reported done / error / interrupted

 private:
  std::string filter_locked(std::string_view line);
  bool status(std::string_view line);
  std::string close_block();
  void notice(const ProcessEnd& e);

  mutable std::mutex mu_;
  std::string token_;
  std::vector<WorkerStatus> workers_;
  std::vector<ProcessEnd> ends_;
  std::string held_;
  bool in_block_ = false;
  std::string block_;  // an Open MPI help message being read (between lines of dashes)
};

// The signal whose strsignal() description is `text` ("Killed": 9), 0 when none.
int signal_from_description(std::string_view text);

}  // namespace smp::comm
