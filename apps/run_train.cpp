#include "run_train.hpp"

#include "common.hpp"

#include "comm/comm.hpp"
#include "comm/job_monitor.hpp"
#include "comm/launch.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "graph/loader.hpp"
#include "plan/plan_io.hpp"
#include "train/data.hpp"
#include "train/worker.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>

#include <fcntl.h>
#include <unistd.h>

namespace smp::app {

namespace fs = std::filesystem;

void add_train_options(CLI::App& app, TrainCli& t) {
  app.add_option("--steps", t.steps, "training steps")->check(smp::app::PositiveInt);
  app.add_option("--lr", t.lr, "peak learning rate (default: 0.001 for adamw, PyTorch's; 0.01 for sgd and momentum)")
      ->check(smp::app::Positive);
  app.add_option("--optimizer", t.optimizer, "sgd | momentum | adamw (default: the plan's, smp-plan --optimizer)")
      ->check(CLI::IsMember({"sgd", "momentum", "adamw"}));
  app.add_option("--momentum", t.momentum, "momentum of --optimizer momentum")->check(smp::app::UnitInterval);
  app.add_option("--beta1", t.beta1, "AdamW's beta1")->check(smp::app::UnitInterval);
  app.add_option("--beta2", t.beta2, "AdamW's beta2")->check(smp::app::UnitInterval);
  app.add_option("--eps", t.eps, "AdamW's epsilon")->check(smp::app::Positive);
  app.add_option("--weight-decay", t.weight_decay, "weight decay (L2 for sgd / momentum, decoupled for adamw)")
      ->check(smp::app::NonNegative);
  app.add_option("--warmup-steps", t.warmup_steps, "linear learning-rate warm-up steps")->check(smp::app::NonNegativeInt);
  app.add_option("--lr-decay", t.decay, "constant | cosine (to --min-lr at the last step)")
      ->check(CLI::IsMember({"constant", "cosine"}));
  app.add_option("--lr-decay-steps", t.decay_steps,
                 "steps over which warm-up + decay run (default: --steps; fix it when a run is resumed with more --steps)")
      ->check(smp::app::NonNegativeInt);
  app.add_option("--min-lr", t.min_lr, "learning rate at the end of the cosine decay")->check(smp::app::NonNegative);
  app.add_option("--clip-norm", t.clip_norm, "clip gradients to this global L2 norm over all stages (0: off)")
      ->check(smp::app::NonNegative);
  app.add_option("--seed", t.seed, "seed of the shuffling and of the synthetic data");
  app.add_flag("--shuffle", t.shuffle, "permute the rows once per epoch (from --seed)");
  app.add_option("--threads-per-worker", t.threads_per_worker, "compute threads per CPU worker (default: cores / local workers; for a plan made without --cluster, cores / the devices it was planned for)")
      ->check(smp::app::NonNegativeInt);
  app.add_option("--backend", t.backend,
                 "cpu | cuda | auto: where the workers compute (auto: the device kind the plan put each rank on)")
      ->check(CLI::IsMember({"auto", "cpu", "cuda"}));
  app.add_option("--device", t.device, "CUDA device index of every worker on this machine (default: the plan's device of each rank)")
      ->check(smp::app::NonNegativeInt);
  app.add_flag("--tf32", t.tf32, "let float32 matrix products and convolutions use TF32 tensor cores (cuda; off: exact float32)");
  app.add_option("--hostfile", t.hostfile,
                 "Open MPI hostfile (NAME [slots=N] per line): the plan's hosts run on its hosts, in order")
      ->option_text("FILE");
  app.add_option("--launcher", t.launcher,
                 "how workers start: auto (srun inside a Slurm allocation, else mpirun, else local), mpirun, srun, "
                 "local (this machine's processes without MPI)")
      ->check(CLI::IsMember({"auto", "mpirun", "srun", "local"}));
  app.add_option("--checkpoint-dir", t.checkpoint_dir, "write checkpoints here (each stage's weights and optimizer state)");
  app.add_option("--checkpoint-every", t.checkpoint_every, "checkpoint every N steps (and at the end)")
      ->check(smp::app::NonNegativeInt);
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
  app.add_option("--timeout", t.timeout_s, "seconds a worker waits for a peer before reporting it")->check(smp::app::Positive);
  app.add_flag("-q,--quiet", t.quiet, "no progress lines");
  app.add_option("--losses", t.losses, "write each step's loss, one per line at full precision")->group("");
  app.add_option("--status-token", t.status_token, "")->group("");
  app.add_flag("--progress-tty", t.progress_tty, "")->group("");
}

namespace {

// Set by SIGINT / SIGTERM / SIGUSR1 in a worker: stop after the step in progress.
volatile std::sig_atomic_t g_stop = 0;

void on_stop(int sig) { g_stop = sig; }

train::RunOptions run_options(const std::string& plan, const std::string& data, const TrainCli& t) {
  train::RunOptions o;
  o.plan = plan;
  o.steps = t.steps;
  o.optimizer_from_plan = t.optimizer.empty();
  if (!o.optimizer_from_plan) o.optimizer.kind = train::parse_optimizer(t.optimizer);
  o.default_lr = t.lr == 0;
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
  o.backend = t.backend;
  o.device = t.device;
  o.tf32 = t.tf32;
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
  o.status_token = t.status_token;
  o.stop_signal = &g_stop;
  o.progress_tty = t.progress_tty;
  o.quiet = t.quiet;
  return o;
}

int worker_main(const std::string& plan, const std::string& data, TrainCli t, const comm::LaunchInfo& li, int argc,
                char** argv) {
  // A stop request (Ctrl-C, SIGTERM from Slurm before a time limit or preemption, SIGUSR1 that
  // the launcher sends through mpirun / srun) lets the step in progress finish; from now on, so
  // that a request never finds a worker without the handler.
  struct sigaction sa {};
  sa.sa_handler = on_stop;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGINT, SIGTERM, SIGUSR1}) sigaction(sig, &sa, nullptr);
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);
  train::report_status(t.status_token, li.rank, fmt::format("hello {} {}", host, ::getpid()));
  // Default threads: this machine's cores shared by the workers on it; for a plan made for this
  // machine (smp-plan without --cluster), by as many workers as it was planned for (--devices),
  // which it priced at cores / devices threads each, even where it uses fewer of them.
  if (t.threads_per_worker <= 0) {
    int sharing = li.local_size;
    const plan::PlanFile pf = plan::read_plan(plan);
    const nlohmann::json cl = pf.json.value("cluster", nlohmann::json::object());
    if (cl.is_object() && cl.contains("file") && cl["file"].is_null() && cl.contains("devices") && cl["devices"].is_number_integer())
      sharing = std::max(sharing, cl["devices"].get<int>());
    t.threads_per_worker = std::max(1, comm::online_cores() / std::max(1, sharing));
  }
  auto c = comm::init_comm(&argc, &argv);
  c->set_timeout_s(t.timeout_s);
  // Waiting ranks poll without sleeping when every worker's threads have cores of their own:
  // a sleep lasts >= ~70 us on a VM, and a message needs several polls to move.
  c->set_spin_wait(li.local_size * t.threads_per_worker <= comm::online_cores());
  auto fail = [&](const std::string& msg, int code, bool print) {
    // The others need not wait for this one: they end too, at once.
    c->tell_peers_giving_up();
    // A worker asked to stop whose step cannot finish, or told that a peer gave up, ends with
    // its job (mpirun and srun send SIGTERM to every worker when one has died): the launcher
    // names the one that died, or the one that failed says why.
    const bool with_job = (g_stop != 0 && code != 2) || c->peer_gave_up();
    if (with_job) print = false;
    if (print) {
      std::string prefix = fmt::format("rank {}", c->rank());
      if (msg.rfind(prefix + ":", 0) == 0) std::fprintf(stderr, "error: %s\n", msg.c_str());
      else std::fprintf(stderr, "error: %s: %s\n", prefix.c_str(), msg.c_str());
      std::fflush(stderr);
    }
    train::report_status(t.status_token, c->rank(), (with_job ? "stopped " : "error ") + msg);
    std::_Exit(with_job && g_stop != 0 ? 128 + g_stop : code);
  };
  try {
    const train::RunResult r = train::run_worker(*c, run_options(plan, data, t));
    if (r.interrupted && t.status_token.empty()) {
      // Started by srun / mpirun directly: rank 0 says where the run stopped, and every worker
      // ends with 128 + the signal, as srun and mpirun then do.
      if (c->rank() == 0) std::fprintf(stderr, "%s\n", train::interrupted_message(r.steps_done, t.checkpoint_dir).c_str());
      return 128 + r.signal;
    }
  } catch (const Error& e) {
    std::string msg = e.what();
    // An error every rank meets at once (a non-finite loss) is reported by rank 0 alone.
    const bool collective = msg.find("the loss is") != std::string::npos;
    if (collective && c->rank() != 0) ::usleep(300000);
    fail(msg, e.exit_code(), !collective || c->rank() == 0);
  } catch (const std::exception& e) {
    fail(e.what(), 1, true);
  }
  return 0;
}

// How the job ended, in one line when it did not end well; the exit status of smp-run.
int report_end(int rc, const comm::JobMonitor& monitor, const plan::PlanFile& pf, const std::vector<std::string>& host_of_rank,
               const TrainCli& t, int first_signal, int sigints) {
  const std::vector<comm::WorkerStatus> ws = monitor.workers();
  const int ranks = static_cast<int>(ws.size());
  if (std::all_of(ws.begin(), ws.end(), [](const comm::WorkerStatus& w) { return w.state == "interrupted"; })) {
    std::fprintf(stderr, "%s\n", train::interrupted_message(ws[0].step, t.checkpoint_dir).c_str());
    return 128 + (first_signal != 0 ? first_signal : ws[0].signal);
  }
  if (rc == 0) return 0;
  if (sigints >= 2) {
    std::fprintf(stderr, "error: stopped at the second Ctrl-C, in the middle of a step%s\n",
                 t.checkpoint_dir.empty() ? "" : " (--resume continues from the last checkpoint)");
    return 128 + SIGINT;
  }
  // Ranks that failed have printed their own error line.
  if (std::any_of(ws.begin(), ws.end(), [](const comm::WorkerStatus& w) { return w.state == "error"; })) return 1;
  auto name = [&](int r) {
    const comm::WorkerStatus& w = ws[static_cast<size_t>(r)];
    std::string stages = w.stages;
    if (stages.empty())
      for (int s : pf.ranks[static_cast<size_t>(r)].stages) stages += (stages.empty() ? "" : ",") + std::to_string(s);
    return fmt::format("rank {} (stage {}, host {})", r, stages, w.host.empty() ? host_of_rank[static_cast<size_t>(r)] : w.host);
  };
  std::string how = rc > 128 ? fmt::format("killed by signal {}", rc - 128) : fmt::format("exit status {}", rc);
  std::string what;
  // mpirun / srun name the first worker that ended abnormally.
  for (const comm::ProcessEnd& e : monitor.ends()) {
    if (e.rank < 0 || e.rank >= ranks || ws[static_cast<size_t>(e.rank)].ended()) continue;
    what = name(e.rank);
    how = e.signal ? fmt::format("killed by signal {}", e.signal) : fmt::format("exit status {}", e.exit_code);
    if (ws[static_cast<size_t>(e.rank)].state.empty()) how += ", before it started";
    break;
  }
  if (what.empty()) {  // no notice: the ranks that did not end
    int listed = 0;
    for (int r = 0; r < ranks && listed < 4; ++r)
      if (!ws[static_cast<size_t>(r)].ended())
        what += (listed++ ? ", " : "") + name(r) + (ws[static_cast<size_t>(r)].state.empty() ? " never started" : "");
  }
  if (what.empty()) {
    const std::string held = monitor.held();
    (void)write_all(2, held.data(), held.size());
    std::fprintf(stderr, "error: the launcher failed (%s) after the workers ended\n", how.c_str());
    return 1;
  }
  std::fprintf(stderr, "error: %s: the worker died (%s); the job was stopped\n", what.c_str(), how.c_str());
  return 1;
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
  train::check_devices(pf, run_options(plan, data, t), t.hostfile.empty());
  {
    graph::LoadOptions lo;
    lo.batch_size = pf.microbatch_size;
    lo.dims = pf.dims;
    lo.frozen = pf.frozen;
    graph::Graph g = graph::load_graph(model, lo);
    if (!data.empty()) train::load_dataset(data, g, pf.batch_size);
  }
  const int ranks = static_cast<int>(pf.ranks.size());

  // Where the workers run: on the hosts of --hostfile (mpirun), of the Slurm allocation this runs
  // in (srun, or mpirun with --launcher mpirun), else here; the plan's hosts in order onto them.
  const std::vector<comm::HostSlots> allocation = comm::slurm_allocation();
  if (t.launcher == "srun" && allocation.empty())
    throw_bad_input("--launcher srun", "not inside a Slurm allocation", "salloc / sbatch first, or --launcher mpirun");
  const bool use_srun = t.hostfile.empty() && !allocation.empty() && t.launcher != "mpirun" && t.launcher != "local";
  // smp's own launcher: asked for, or the only way on one host without MPI.
  const bool use_local = t.launcher == "local" || (t.launcher == "auto" && !use_srun && t.hostfile.empty() && !comm::mpirun_available());
  if (use_local && !t.hostfile.empty())
    throw_bad_input("--launcher local", "starts the workers on this machine only", "leave out --hostfile, or use --launcher mpirun");
  std::vector<comm::HostSlots> hosts;
  std::string hosts_from;
  if (!t.hostfile.empty()) hosts = comm::read_hostfile(t.hostfile), hosts_from = t.hostfile;
  else if (!allocation.empty()) hosts = allocation, hosts_from = "the Slurm allocation (SLURM_JOB_NODELIST)";
  std::vector<comm::PlannedRank> planned;
  for (const auto& r : pf.ranks) planned.push_back({r.host, r.device});
  TempDir tmp("smp-run");  // the rank-to-host file that mpirun / srun read here; Open MPI's session files
  const std::string token = fmt::format("{:016x}", std::random_device{}() * 0x100000000ull + std::random_device{}());
  std::vector<std::string> args;
  for (int i = 1; i < argc; ++i) args.push_back(argv[i]);
  args.insert(args.end(), {"--status-token", token});
  if (::isatty(STDOUT_FILENO)) args.push_back("--progress-tty");
  const fs::path self = fs::read_symlink("/proc/self/exe");
  std::vector<std::string> host_of_rank;
  comm::Command cmd;
  if (use_local) {
    std::set<std::string> plan_hosts;
    for (const auto& r : pf.ranks) plan_hosts.insert(r.host);
    if (plan_hosts.size() > 1)
      throw_bad_input(plan, fmt::format("the plan places its ranks on {} hosts; the local launcher (no MPI) starts them on this machine only",
                                        plan_hosts.size()),
                      "plan for one host, or install Open MPI (scripts/install-deps.sh) for --hostfile / srun");
    cmd = comm::local_command(ranks, self.string(), self.string(), args);
    char here[256] = "?";
    ::gethostname(here, sizeof here - 1);
    host_of_rank.assign(static_cast<size_t>(ranks), here);
  } else if (hosts.empty()) {
    comm::MpirunOptions mo;
    mo.ranks = ranks;
    mo.quiet = false;  // its notices name a worker that died
    mo.session_dir = tmp.path().string();
    cmd = comm::mpirun_command(mo, self.string(), args);
    char here[256] = "?";
    ::gethostname(here, sizeof here - 1);
    host_of_rank.assign(static_cast<size_t>(ranks), here);
  } else {
    const comm::Placement place = comm::place_ranks(planned, hosts, t.hostfile.empty() ? "SLURM_JOB_NODELIST" : t.hostfile,
                                                    !use_srun);
    host_of_rank = place.host_of_rank;
    if (place.plan_hosts < place.hosts_given)
      std::fprintf(stderr, "note: the plan uses %d of the %d hosts of %s (plan for them with a cluster description of them)\n",
                   place.plan_hosts, place.hosts_given, hosts_from.c_str());
    const fs::path rank_hosts = tmp.path() / "rank-hosts";
    std::string lines;
    for (const auto& h : host_of_rank) lines += h + "\n";
    write_file_atomic(rank_hosts, lines);
    if (use_srun) {
      comm::SrunOptions so;
      so.ranks = ranks;
      so.rank_hostfile = rank_hosts.string();
      std::map<std::string, int> per_host;
      for (const auto& h : host_of_rank) ++per_host[h];
      so.nodes = static_cast<int>(per_host.size());
      for (const auto& h : hosts)
        if (h.slots > 0 && per_host.count(h.name) && per_host[h.name] > h.slots) so.overcommit = true;
      cmd = comm::srun_command(so, self.string(), args);
    } else {
      comm::MpirunOptions mo;
      mo.ranks = ranks;
      mo.hostfile = rank_hosts.string();
      mo.sequential = true;
      mo.quiet = false;
      cmd = comm::mpirun_command(mo, self.string(), args);
    }
  }
  // Workers must not spin while they wait: they share the cores with the ones computing.
  cmd.env["OMP_WAIT_POLICY"] = "PASSIVE";
  // How each worker ends comes back in its stderr (status lines) and in mpirun's / srun's
  // notices; the monitor takes both out of the stream.
  comm::JobMonitor monitor(ranks, token);
  cmd.filter_stderr = [&](std::string_view line) { return monitor.filter(line); };
  // Ctrl-C / SIGTERM: every worker finishes its step (mpirun and srun pass SIGUSR1 on to all),
  // once all have their handler; a second Ctrl-C stops the job at once.
  cmd.stop_signal = SIGUSR1;
  cmd.stop_ready = [&] { return monitor.all_started(); };
  int first_signal = 0, sigints = 0;
  cmd.on_signal = [&](int sig) {
    if (first_signal == 0) first_signal = sig;
    if (sig == SIGINT) ++sigints;
  };
  // mpirun / srun must end once every worker has: if all have reported their end (or were
  // reported dead) and it is still there 10 s later (1 s once one died), it is stuck and is
  // stopped. (srun can wait for Slurm's KillWait after a task died: Slurm's PMIx plugin kills
  // the step with a call that stalls the dead task's node.)
  auto all_ended_since = std::chrono::steady_clock::time_point::max();
  auto stuck = [&] {
    const std::vector<comm::ProcessEnd> ends = monitor.ends();
    const std::vector<comm::WorkerStatus> ws = monitor.workers();
    for (int r = 0; r < ranks; ++r)
      if (!ws[static_cast<size_t>(r)].ended() &&
          std::none_of(ends.begin(), ends.end(), [&](const comm::ProcessEnd& e) { return e.rank == r; })) {
        all_ended_since = std::chrono::steady_clock::time_point::max();
        return false;
      }
    auto now = std::chrono::steady_clock::now();
    if (all_ended_since == std::chrono::steady_clock::time_point::max()) all_ended_since = now;
    return now - all_ended_since > std::chrono::seconds(ends.empty() ? 10 : 1);
  };
  const int rc = comm::run_command(cmd, stuck);
  return report_end(rc, monitor, pf, host_of_rank, t, first_signal, sigints);
}

}  // namespace smp::app
