// The worker: one per rank of a plan. It loads only its stages' nodes and weights, then runs
// its rank's lowered action list from the plan literally, step after step — forward of a
// microbatch, send the boundary tensors to the next stage, backward, send gradients upstream,
// receives posted ahead — then the all-reduce between data-parallel replicas of each stage,
// the global gradient norm, and the optimizer. Rank 0 reports progress and metrics.
#pragma once

#include "comm/comm.hpp"
#include "plan/plan_io.hpp"
#include "train/optimizer.hpp"

#include <csignal>
#include <cstdint>
#include <filesystem>
#include <string>

namespace smp::train {

struct RunOptions {
  std::filesystem::path plan;
  int steps = 20;
  OptimizerConfig optimizer;
  bool optimizer_from_plan = false;  // optimizer.kind from the plan's options.optimizer
  bool default_lr = false;           // optimizer.lr: default_lr(optimizer.kind), once the kind is known
  uint64_t seed = 0;
  std::filesystem::path data;  // empty: the synthetic task
  bool shuffle = false;
  int synthetic_rows = 1024;   // rows of the synthetic task
  int threads = 1;             // compute threads of this worker
  std::string backend = "auto";  // cpu | cuda | auto (the plan's device kind)
  int device = -1;             // CUDA device index (-1: the plan's local device of the rank)
  bool tf32 = false;           // float32 products and convolutions may use TF32
  std::filesystem::path checkpoint_dir;
  int checkpoint_every = 0;    // 0: only at the end when checkpoint_dir is set
  int keep_checkpoints = 2;
  bool resume = false;
  std::filesystem::path metrics;   // JSON Lines, one object per step (rank 0)
  std::filesystem::path summary_json;  // the end-of-run summary (rank 0; schemas/run_summary.schema.json)
  std::filesystem::path trace;     // Chrome trace of the measured last step (rank 0)
  std::filesystem::path timeline;  // SVG of the same
  std::filesystem::path export_onnx;  // the trained model as ONNX (rank 0)
  bool export_training_form = false;  // --export-mode training: the graph as given (else the inference form)
  // BatchNormalization's running statistics: updated once per step with those of the whole
  // minibatch, all replicas' microbatches together (torchgpipe's deferred batch norm), instead
  // of per microbatch on each replica (PyTorch's).
  bool deferred_batch_norm = false;
  std::string status_token;           // status lines for the launcher that gave it (comm/job_monitor.hpp)
  // Set (to the signal's number) by a signal handler when the run is to stop: every rank then
  // finishes the step in progress, the ranks agree on it in the step's all-reduce, and the job
  // checkpoints (with checkpoint_dir) and ends early.
  const volatile std::sig_atomic_t* stop_signal = nullptr;
  std::filesystem::path losses;       // every step's loss, one per line, full precision (rank 0)
  bool progress_tty = false;  // refresh the progress line in place
  bool quiet = false;         // no progress lines
};

struct RunResult {
  int64_t steps_done = 0;
  bool interrupted = false;  // stopped early on a stop request
  int signal = 0;            // the request's signal (SIGINT before SIGTERM before others, over all ranks)
};
// The backend a rank runs on: `option` ("cpu", "cuda"), or with "auto" the kind of device the
// plan put the rank on; and its CUDA device (`device_option` >= 0, else the plan's local device).
std::string rank_backend(const plan::PlanFile& plan, int rank, const std::string& option);
int rank_device(const plan::PlanFile& plan, int rank, int device_option);
// Checks on the launching machine what can be checked before the workers start: the backend
// exists in this build, the plan's precision suits it, the CUDA devices the ranks need exist.
// Bad input naming the rank, its stages and the device.
void check_devices(const plan::PlanFile& plan, const RunOptions& opts, bool all_local);

// Runs this rank's part of the plan. Throws smp::Error on bad input or failure (the caller
// prints it and ends the job).
RunResult run_worker(comm::Communicator& comm, const RunOptions& opts);

// A status line for the launcher (comm::status_line on stderr, in one write) when `token` is
// set: "hello HOST PID", "running STAGES", "done", "error MESSAGE", "stopped MESSAGE",
// "interrupted STEP SIGNAL".
void report_status(const std::string& token, int rank, const std::string& text);

// The line an interrupted run ends with: "interrupted at step N; checkpoint DIR/step-0000000N
// (resume with --resume)", or that no checkpoint was kept.
std::string interrupted_message(int64_t step, const std::filesystem::path& checkpoint_dir);

}  // namespace smp::train
