#include "run_train.hpp"

#include "comm/comm.hpp"
#include "comm/launch.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "graph/loader.hpp"
#include "plan/plan_io.hpp"
#include "train/data.hpp"
#include "train/worker.hpp"

#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <fcntl.h>
#include <unistd.h>

namespace smp::app {

namespace fs = std::filesystem;

void add_train_options(CLI::App& app, TrainCli& t) {
  app.add_option("--steps", t.steps, "training steps")->check(CLI::PositiveNumber);
  app.add_option("--lr", t.lr, "peak learning rate")->check(CLI::PositiveNumber);
  app.add_option("--optimizer", t.optimizer, "sgd | momentum | adamw (default: the plan's, smp-plan --optimizer)")
      ->check(CLI::IsMember({"sgd", "momentum", "adamw"}));
  app.add_option("--momentum", t.momentum, "momentum of --optimizer momentum")->check(CLI::Range(0.0, 1.0));
  app.add_option("--beta1", t.beta1, "AdamW's beta1")->check(CLI::Range(0.0, 1.0));
  app.add_option("--beta2", t.beta2, "AdamW's beta2")->check(CLI::Range(0.0, 1.0));
  app.add_option("--eps", t.eps, "AdamW's epsilon")->check(CLI::PositiveNumber);
  app.add_option("--weight-decay", t.weight_decay, "weight decay (L2 for sgd / momentum, decoupled for adamw)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--warmup-steps", t.warmup_steps, "linear learning-rate warm-up steps")->check(CLI::NonNegativeNumber);
  app.add_option("--lr-decay", t.decay, "constant | cosine (to --min-lr at the last step)")
      ->check(CLI::IsMember({"constant", "cosine"}));
  app.add_option("--lr-decay-steps", t.decay_steps,
                 "steps over which warm-up + decay run (default: --steps; fix it when a run is resumed with more --steps)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--min-lr", t.min_lr, "learning rate at the end of the cosine decay")->check(CLI::NonNegativeNumber);
  app.add_option("--clip-norm", t.clip_norm, "clip gradients to this global L2 norm over all stages (0: off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--seed", t.seed, "seed of the shuffling and of the synthetic data");
  app.add_flag("--shuffle", t.shuffle, "permute the rows once per epoch (from --seed)");
  app.add_option("--threads-per-worker", t.threads_per_worker, "compute threads per CPU worker (default: cores / local workers)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--hostfile", t.hostfile, "Open MPI hostfile for workers on several machines");
  app.add_option("--checkpoint-dir", t.checkpoint_dir, "write checkpoints here (each stage's weights and optimizer state)");
  app.add_option("--checkpoint-every", t.checkpoint_every, "checkpoint every N steps (and at the end)")
      ->check(CLI::NonNegativeNumber);
  app.add_flag("--resume", t.resume, "continue from the newest complete checkpoint in --checkpoint-dir");
  app.add_option("--metrics", t.metrics, "JSON Lines file, one object per step (step, loss, samples_per_s, step_time_s, lr, grad_norm)");
  app.add_option("--summary-json", t.summary_json,
                 "write the end-of-run summary as JSON (schemas/run_summary.schema.json): per stage, measured against "
                 "predicted")
      ->option_text("FILE");
  app.add_option("--trace", t.trace, "Chrome trace (Perfetto) of the measured last step");
  app.add_option("--timeline", t.timeline, "SVG timeline of the measured last step");
  app.add_option("--export", t.export_onnx, "write the trained model as an ONNX file");
  app.add_option("--export-mode", t.export_mode,
                 "inference: BatchNormalization uses the trained running statistics, Dropout keeps all (the model to "
                 "deploy); training: the graph as given, with the trained weights and statistics")
      ->check(CLI::IsMember({"inference", "training"}));
  app.add_flag("--deferred-batch-norm", t.deferred_batch_norm,
               "update BatchNormalization's running statistics once per step with the whole minibatch's (every "
               "microbatch and replica), not per microbatch: independent of how the batch is split (torchgpipe's "
               "deferred batch norm)");
  app.add_option("--timeout", t.timeout_s, "seconds a worker waits for a peer before reporting it")->check(CLI::PositiveNumber);
  app.add_flag("-q,--quiet", t.quiet, "no progress lines");
  app.add_option("--losses", t.losses, "write each step's loss, one per line at full precision")->group("");
  app.add_option("--status-dir", t.status_dir, "")->group("");
  app.add_flag("--progress-tty", t.progress_tty, "")->group("");
}

namespace {

// The worker's status file, prepared for the SIGTERM handler (async-signal-safe writes only).
char g_status_tmp[4096];
char g_status_path[4096];

void on_sigterm(int) {
  if (g_status_path[0]) {
    int fd = ::open(g_status_tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      const char msg[] = "terminated\n";
      [[maybe_unused]] ssize_t n = ::write(fd, msg, sizeof msg - 1);
      ::close(fd);
      ::rename(g_status_tmp, g_status_path);
    }
  }
  ::_exit(143);
}

train::RunOptions run_options(const std::string& plan, const std::string& data, const TrainCli& t) {
  train::RunOptions o;
  o.plan = plan;
  o.steps = t.steps;
  o.optimizer_from_plan = t.optimizer.empty();
  if (!o.optimizer_from_plan) o.optimizer.kind = train::parse_optimizer(t.optimizer);
  o.optimizer.lr = t.lr;
  o.optimizer.momentum = t.momentum;
  o.optimizer.beta1 = t.beta1;
  o.optimizer.beta2 = t.beta2;
  o.optimizer.eps = t.eps;
  o.optimizer.weight_decay = t.weight_decay;
  o.optimizer.warmup_steps = t.warmup_steps;
  o.optimizer.total_steps = t.decay_steps > 0 ? t.decay_steps : t.steps;
  o.optimizer.cosine = t.decay == "cosine";
  o.optimizer.min_lr = t.min_lr;
  o.optimizer.clip_norm = t.clip_norm;
  o.seed = t.seed;
  o.data = data;
  o.shuffle = t.shuffle;
  o.threads = std::max(t.threads_per_worker, 1);
  o.checkpoint_dir = t.checkpoint_dir;
  o.checkpoint_every = t.checkpoint_every;
  o.resume = t.resume;
  o.metrics = t.metrics;
  o.summary_json = t.summary_json;
  o.trace = t.trace;
  o.timeline = t.timeline;
  o.export_onnx = t.export_onnx;
  o.export_training_form = t.export_mode == "training";
  o.deferred_batch_norm = t.deferred_batch_norm;
  o.losses = t.losses;
  o.status_dir = t.status_dir;
  o.progress_tty = t.progress_tty;
  o.quiet = t.quiet;
  return o;
}

int worker_main(const std::string& plan, const std::string& data, TrainCli t, const comm::LaunchInfo& li, int argc,
                char** argv) {
  // Default threads: this machine's cores shared by the workers on it.
  if (t.threads_per_worker <= 0) t.threads_per_worker = std::max(1, comm::online_cores() / std::max(1, li.local_size));
  auto c = comm::init_mpi(&argc, &argv);
  c->set_timeout_s(t.timeout_s);
  // Waiting ranks poll without sleeping when every worker's threads have cores of their own:
  // a sleep lasts >= ~70 us on a VM, and a message needs several polls to move.
  c->set_spin_wait(li.local_size * t.threads_per_worker <= comm::online_cores());
  if (!t.status_dir.empty()) {
    std::string p = train::status_file(t.status_dir, c->rank()).string();
    std::snprintf(g_status_path, sizeof g_status_path, "%s", p.c_str());
    std::snprintf(g_status_tmp, sizeof g_status_tmp, "%s.term", p.c_str());
    std::signal(SIGTERM, on_sigterm);
  }
  try {
    train::run_worker(*c, run_options(plan, data, t));
  } catch (const Error& e) {
    std::string msg = e.what();
    // An error every rank meets at once (a non-finite loss) is reported by rank 0 alone.
    bool collective = msg.find("the loss is") != std::string::npos;
    if (!collective || c->rank() == 0) {
      std::string prefix = fmt::format("rank {}", c->rank());
      if (msg.rfind(prefix + ":", 0) == 0) std::fprintf(stderr, "error: %s\n", msg.c_str());
      else std::fprintf(stderr, "error: %s: %s\n", prefix.c_str(), msg.c_str());
      std::fflush(stderr);
    } else {
      ::usleep(300000);
    }
    train::write_status(t.status_dir, c->rank(), "error " + msg);
    std::_Exit(e.exit_code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: rank %d: %s\n", c->rank(), e.what());
    std::fflush(stderr);
    train::write_status(t.status_dir, c->rank(), std::string("error ") + e.what());
    std::_Exit(1);
  }
  return 0;
}

}  // namespace

int run_train(const std::string& plan, const std::string& data, const TrainCli& t, int argc, char** argv) {
  if (plan.empty())
    throw_bad_input("PLAN", "no plan given", "smp-plan MODEL --batch-size N -o plan.json, then smp-run plan.json");
  comm::LaunchInfo li = comm::detect_launch();
  if (li.under_launcher()) return worker_main(plan, data, t, li, argc, argv);

  // The launcher: check what can be checked once, before starting anything.
  if (t.resume && t.checkpoint_dir.empty()) throw_bad_input("--resume", "needs --checkpoint-dir");
  if (t.warmup_steps >= t.steps && t.warmup_steps > 0)
    throw_bad_input("--warmup-steps", fmt::format("{} warm-up steps of {} steps", t.warmup_steps, t.steps));
  plan::PlanFile pf = plan::read_plan(plan);
  const fs::path model = pf.model_path;
  plan::check_model_checksum(pf, model);
  {
    graph::LoadOptions lo;
    lo.batch_size = pf.microbatch_size;
    lo.dims = pf.dims;
    graph::Graph g = graph::load_graph(model, lo);
    if (!data.empty()) train::load_dataset(data, g, pf.batch_size);
  }
  const int ranks = static_cast<int>(pf.ranks.size());

  TempDir status("smp-run");  // the workers' status files
  const std::string status_dir = status.path().string();

  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  args.insert(args.end(), {"--status-dir", status_dir});
  if (::isatty(STDOUT_FILENO)) args.push_back("--progress-tty");
  comm::MpirunOptions mo;
  mo.ranks = ranks;
  mo.hostfile = t.hostfile;
  fs::path self = fs::read_symlink("/proc/self/exe");
  comm::Command cmd = comm::mpirun_command(mo, self.string(), args);
  // Workers must not spin while they wait: they share the cores with the ones computing.
  cmd.env["OMP_WAIT_POLICY"] = "PASSIVE";
  // A worker that dies mid-message leaves Open MPI's complaint about its vanished memory in the
  // others' output; the launcher names the dead worker itself, in one line.
  cmd.drop_stderr = comm::is_dead_peer_read_error;
  // mpirun must end once every worker has: if all have reported their end and mpirun is
  // still there 10 s later, it is stuck and is stopped.
  auto all_ended_since = std::chrono::steady_clock::time_point::max();
  auto stuck = [&] {
    for (int r = 0; r < ranks; ++r) {
      std::string line = train::read_status(status_dir, r);
      if (line != "done" && line != "terminated" && line.rfind("error", 0) != 0) {
        all_ended_since = std::chrono::steady_clock::time_point::max();
        return false;
      }
    }
    auto now = std::chrono::steady_clock::now();
    if (all_ended_since == std::chrono::steady_clock::time_point::max()) all_ended_since = now;
    return now - all_ended_since > std::chrono::seconds(10);
  };
  int rc = comm::run_command(cmd, stuck);

  if (rc != 0) {
    // Name the rank(s) that died; ranks that failed have printed their own error line.
    bool reported = false;
    std::vector<std::string> died;
    for (int r = 0; r < ranks; ++r) {
      std::string line = train::read_status(status_dir, r);
      if (line.rfind("error", 0) == 0) reported = true;
      else if (line.rfind("running", 0) == 0 || line == "loading" || line.empty()) {
        std::string stages;
        for (int s : pf.ranks[static_cast<size_t>(r)].stages) stages += (stages.empty() ? "" : ",") + std::to_string(s);
        died.push_back(fmt::format("rank {} (stage {}){}", r, stages, line.empty() ? " never started" : ""));
      }
    }
    if (!reported) {
      std::string what = died.empty() ? "a worker" : died.front();
      for (size_t i = 1; i < died.size() && i < 4; ++i) what += ", " + died[i];
      std::string how = rc > 128 ? fmt::format("killed by signal {}", rc - 128) : fmt::format("exit status {}", rc);
      std::fprintf(stderr, "error: %s: the worker died (%s); the job was stopped\n", what.c_str(), how.c_str());
    }
  }
  return rc == 0 ? 0 : 1;
}

}  // namespace smp::app
