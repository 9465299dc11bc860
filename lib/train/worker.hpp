// The worker: one per rank of a plan. It loads only its stages' nodes and weights, then runs
// its rank's lowered action list from the plan literally, step after step — forward of a
// microbatch, send the boundary tensors to the next stage, backward, send gradients upstream,
// receives posted ahead — then the all-reduce between data-parallel replicas of each stage,
// the global gradient norm, and the optimizer. Rank 0 reports progress and metrics.
#pragma once

#include "comm/comm.hpp"
#include "train/optimizer.hpp"

#include <cstdint>
#include <filesystem>
#include <string>

namespace smp::train {

struct RunOptions {
  std::filesystem::path plan;
  int steps = 20;
  OptimizerConfig optimizer;
  bool optimizer_from_plan = false;  // optimizer.kind from the plan's options.optimizer
  uint64_t seed = 0;
  std::filesystem::path data;  // empty: the synthetic task
  bool shuffle = false;
  int synthetic_rows = 1024;   // rows of the synthetic task
  int threads = 1;             // compute threads of this worker
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
  std::filesystem::path status_dir;   // per-rank status files for the launcher
  std::filesystem::path losses;       // every step's loss, one per line, full precision (rank 0)
  bool progress_tty = false;  // refresh the progress line in place
  bool quiet = false;         // no progress lines
};

// Runs this rank's part of the plan. Throws smp::Error on bad input or failure (the caller
// prints it and ends the job).
void run_worker(comm::Communicator& comm, const RunOptions& opts);

// Status file of a rank ("running stage 2", "error <message>", "done"), for the launcher to
// name the rank and stage that failed.
std::filesystem::path status_file(const std::filesystem::path& dir, int rank);
void write_status(const std::filesystem::path& dir, int rank, const std::string& text);
// The status's first line; "" when the rank wrote none.
std::string read_status(const std::filesystem::path& dir, int rank);

}  // namespace smp::train
