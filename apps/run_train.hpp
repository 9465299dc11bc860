// smp-run PLAN.json: the launcher (starts one worker per rank through mpirun or srun, on the
// hosts the plan names, and reports how the job ended) and, inside mpirun / srun, the worker of
// one rank.
#pragma once

#include <CLI/CLI.hpp>

#include <string>

namespace smp::app {

struct TrainCli {
  int steps = 20;
  double lr = 0;           // 0: the optimizer's default (train::default_lr)
  std::string optimizer;  // empty: the plan's (smp-plan --optimizer)
  double momentum = 0.9, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.0;
  int warmup_steps = 0;
  std::string decay = "constant";
  int decay_steps = 0;  // 0: --steps
  double min_lr = 0.0;
  double clip_norm = 0.0;
  uint64_t seed = 0;
  bool shuffle = false;
  int threads_per_worker = 0;
  std::string backend = "auto";  // cpu | cuda | auto
  int device = -1;               // CUDA device (-1: the plan's)
  bool tf32 = false;
  std::string hostfile;
  std::string launcher = "auto";
  std::string checkpoint_dir;
  int checkpoint_every = 0;
  bool resume = false;
  std::string metrics, trace, timeline, export_onnx, losses, summary_json;
  std::string export_mode = "inference";
  bool deferred_batch_norm = false;
  double timeout_s = 60;
  bool quiet = false;
  // set by the launcher for its workers
  std::string status_token;
  bool progress_tty = false;
};

void add_train_options(CLI::App& app, TrainCli& t);

// Launches (or, under mpirun / srun, runs one rank of) the training of `plan`.
int run_train(const std::string& plan, const std::string& data, const TrainCli& t, int argc, char** argv);

}  // namespace smp::app
