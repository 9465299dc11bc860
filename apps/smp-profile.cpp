// smp-profile: measure per-node cost on this machine's device (profile.json for smp-plan
// --profile), or the machine itself (--machine: a cluster description for smp-plan --cluster).
#include "common.hpp"
#include "default_batch.hpp"

#include "comm/launch.hpp"
#include "core/io.hpp"
#include "cost/cluster.hpp"
#include "train/machine_probe.hpp"
#include "train/pipeline_probe.hpp"
#include "train/profiler.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

namespace fs = std::filesystem;

namespace {

using clk = std::chrono::steady_clock;

std::string fmt_eta(double s) {
  if (s < 60) return fmt::format("{:.0f}s", s);
  return fmt::format("{}m{:02d}s", static_cast<int>(s) / 60, static_cast<int>(s) % 60);
}

// A progress bar with an ETA on stderr: redrawn in place on a terminal, else one line per 10 %.
class ProgressBar {
 public:
  ProgressBar() : tty_(::isatty(2) != 0), t0_(clk::now()) {}
  void update(int done, int total, const std::string& what) {
    double el = std::chrono::duration<double>(clk::now() - t0_).count();
    double eta = done > 0 ? el / done * (total - done) : 0;
    int width = 30, filled = total > 0 ? width * done / total : width;
    std::string bar = std::string(static_cast<size_t>(filled), '#') + std::string(static_cast<size_t>(width - filled), '.');
    std::string line = fmt::format("[{}] {}/{} nodes  ETA {}  {}", bar, done, total, fmt_eta(eta), what.substr(0, 40));
    if (tty_) {
      std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), done == total ? "\n" : "");
    } else {
      int pct = total > 0 ? 10 * done / total : 10;
      if (pct != last_pct_ || done == total) std::fprintf(stderr, "%s\n", line.c_str());
      last_pct_ = pct;
    }
    std::fflush(stderr);
  }

 private:
  bool tty_;
  clk::time_point t0_;
  int last_pct_ = -1;
};

void to_stderr(const std::string& s) {
  std::fprintf(stderr, "%s\n", s.c_str());
  std::fflush(stderr);
}

}  // namespace

int main(int argc, char** argv) {
  // The hidden ring worker of the calibration, started by mpirun (smp-plan's calibration).
  if (argc >= 5 && std::string(argv[1]) == "--ring-worker") {
    const std::string out = argv[2];
    const int tokens = std::atoi(argv[3]), iters = std::atoi(argv[4]);
    return smp::app::guarded_main([&]() -> int { return smp::train::ring_worker(argc, argv, out, tokens, iters); });
  }
  // The hidden ping-pong worker of --machine, started twice by mpirun.
  if (argc >= 3 && std::string(argv[1]) == "--pingpong-worker") {
    double budget_s = 0.5;
    if (argc >= 5 && std::string(argv[3]) == "--budget-ms") budget_s = std::atof(argv[4]) / 1e3;
    std::string out = argv[2];
    return smp::app::guarded_main([&]() -> int { return smp::train::pingpong_worker(argc, argv, out, budget_s); });
  }

  CLI::App app{
      "smp-profile: measure what each layer of an ONNX model costs (time, memory) on this device, or the machine.\n"
      "  smp-profile MODEL.onnx [--batch-size N] [--microbatches M] [--devices K | --threads T] [-o profile.json]\n"
      "  smp-profile --machine [--devices K] [-o cluster.json]"};
  smp::app::setup_app(app);
  std::string model, out_file, device = "cpu";
  int64_t batch_size = 0;
  int microbatches = 1, threads = 0, devices = 0;
  double budget_ms = 20, whole_budget_ms = 1500, oversubscription = 0;
  std::vector<std::string> dims, frozen;
  bool machine = false, quiet = false, no_calibrate = false;
  std::string probe = "auto";
  uint64_t seed = 1;
  app.add_option("MODEL", model, "ONNX model to profile");
  app.add_option("-b,--batch-size", batch_size, "global batch size (as for smp-plan; default: the model's fixed batch "
                                                "dimension, else 8 per device)")->option_text("N");
  app.add_option("-m,--microbatches", microbatches, "microbatches per batch: nodes are measured at batch / M samples")
      ->option_text("M");
  app.add_option("--dim", dims, "bind another symbolic dimension, NAME=SIZE (repeatable)");
  app.add_option("--freeze", frozen, "floating-point initializers kept constant, as smp-plan --freeze")
      ->delimiter(',')
      ->option_text("NAME");
  app.add_option("--device", device, "device to measure (only cpu in this version)")->option_text("cpu");
  app.add_option("--devices", devices,
                 "worker processes that will share this machine's cores, as smp-plan / smp-run --devices (default: one "
                 "per core); sets the device name the planner uses and, without --threads, cores / K threads")
      ->option_text("K");
  app.add_option("--threads", threads, "compute threads during the measurement (default: cores / devices)")
      ->option_text("T");
  app.add_option("--budget-ms", budget_ms,
                 "time spent measuring each node alone, after the warm-up (at least 5 repeats): its peak memory and "
                 "the split of its backward into input and weight gradient")
      ->option_text("MS")->check(smp::app::Positive);
  app.add_option("--whole-budget-ms", whole_budget_ms,
                 "time spent timing the nodes in context (the whole model as one stage, in three rounds; as much again "
                 "with many microbatches in flight), and half as much again per count of concurrent copies")
      ->option_text("MS")->check(smp::app::Positive);
  app.add_option("--oversubscription", oversubscription,
                 "an extra factor on every time (default 1: the whole model already runs in 1 to --devices concurrent "
                 "worker processes, which gives the slow-down of sharing the machine)")
      ->option_text("F")
      ->check(smp::app::number_check(1, std::numeric_limits<double>::max(), false, "a number >= 1", "F"));
  app.add_flag("--no-calibrate", no_calibrate,
               "write the node times as measured in one process alone: not scaled for workers sharing the machine");
  app.add_option("--pipeline-probe", probe,
                 "run the model as a pipeline of --devices stages with smp-run and scale the times by its measured over "
                 "predicted step: auto (when the workers' threads outnumber the cores), always, never")
      ->check(CLI::IsMember({"auto", "always", "never"}))
      ->option_text("auto|always|never");
  app.add_option("--seed", seed, "random inputs' seed");
  app.add_flag("--machine", machine, "measure this machine (GEMM FLOP/s, memory bandwidth, MPI point-to-point) and "
                                     "write a cluster description (schemas/cluster.schema.json) for smp-plan --cluster");
  app.add_option("-o,--output", out_file, "where to write the profile (default profile.json; with --machine the cluster "
                                           "description, default cluster.json)")
      ->option_text("FILE");
  app.add_flag("-q,--quiet", quiet, "no progress bar or summary (for scripts)");
  SMP_PARSE(app, argc, argv);
  return smp::app::guarded_main([&]() -> int {
    using smp::throw_bad_input;
    if (out_file.empty()) out_file = machine ? "cluster.json" : "profile.json";
    if (device != "cpu")
      throw_bad_input("--device", fmt::format("'{}' is not supported", device), "this version measures the cpu only");
    if (devices < 0) throw_bad_input("--devices", "must be a positive number");
    if (app.count("--devices") && devices == 0) throw_bad_input("--devices", "must be at least 1");
    if (app.count("--threads") && threads < 1) throw_bad_input("--threads", "must be at least 1");
    const int cores = smp::comm::online_cores();
    if (machine) {
      if (!model.empty()) throw_bad_input("--machine", "measures the machine, not a model", "leave out MODEL");
      smp::train::MachineOptions mo;
      mo.devices = devices;
      mo.budget_s = budget_ms / 1e3 * 10;
      mo.self = fs::read_symlink("/proc/self/exe").string();
      nlohmann::json cl = smp::train::measure_machine(mo, quiet ? std::function<void(const std::string&)>{} : to_stderr);
      smp::cost::cluster_from_json(cl, out_file);  // what smp-plan will read must be valid
      smp::write_file_atomic(out_file, cl.dump(2) + "\n");
      if (!quiet) fmt::print("wrote {}\n", out_file);
      return 0;
    }
    if (model.empty()) throw_bad_input("MODEL", "missing", "give the .onnx file to profile, or --machine");
    if (!fs::exists(model)) throw_bad_input(model, "no such file");
    const int workers = devices > 0 ? devices : cores;
    if (app.count("--batch-size") && batch_size < 1) throw_bad_input("--batch-size", "must be a positive number");
    const smp::graph::BatchAxis axis = smp::graph::inspect_batch_axis(model);
    // A model whose inputs fix the batch dimension: every microbatch holds that many samples.
    const int64_t fixed = smp::app::fixed_batch(axis);
    if (batch_size < 1) {
      std::string note;
      batch_size = smp::app::default_batch(model, axis, workers, note);
      if (!app.count("--microbatches") && fixed > 0) {
        note += fmt::format("; {} microbatch(es) of {}", batch_size / fixed, fixed);  // set below
      } else if (!app.count("--microbatches")) {
        // As many microbatches as keep a pipeline of the workers busy (2 per worker), where the
        // batch divides so: the microbatch size a plan with the same defaults will use.
        microbatches = 1;
        for (int m = 2 * workers; m >= 1; --m)
          if (batch_size % m == 0) { microbatches = m; break; }
        note += fmt::format("; {} microbatch(es) of {} (-m to choose)", microbatches, batch_size / microbatches);
      }
      if (!quiet) fmt::print(stderr, "note: {}\n", note);
    }
    if (microbatches < 1) throw_bad_input("--microbatches", "must be at least 1");
    if (fixed > 0) {
      const std::string why = fmt::format("the inputs of {} fix the batch dimension at {}, so every microbatch holds {} samples",
                                          model, fixed, fixed);
      const char* fix = "re-export the model with a dynamic batch axis for microbatches of another size";
      if (batch_size % fixed != 0)
        throw_bad_input("--batch-size", fmt::format("{} is not a multiple of {}: {}", batch_size, fixed, why), fix);
      if (!app.count("--microbatches")) microbatches = static_cast<int>(batch_size / fixed);
      else if (batch_size != int64_t{microbatches} * fixed)
        throw_bad_input("--microbatches", fmt::format("{} microbatches of a batch of {} hold {:g} samples each, but {}", microbatches,
                                                      batch_size, static_cast<double>(batch_size) / microbatches, why),
                        fmt::format("-m {}, or {}", batch_size / fixed, fix));
    }
    smp::train::NodeProfileOptions o;
    o.model = model;
    o.batch_size = batch_size;
    o.microbatches = microbatches;
    o.dims = smp::app::parse_dims(dims);
    o.frozen = frozen;
    o.threads = threads > 0 ? threads : std::max(1, cores / workers);
    // The name smp-plan gives this machine's devices for the same --devices: the profile applies
    // to exactly that set-up.
    o.device_name = smp::cost::local_cpu_json(workers)["hosts"][0]["devices"][0]["name"].get<std::string>();
    // The whole model also runs in up to `workers` processes at once, so that the profile sees the
    // cores (and caches, memory bandwidth) shared as the plan's workers will share them.
    o.concurrent = workers;
    o.oversubscription = oversubscription > 0 ? oversubscription : 1.0;
    o.budget_s = budget_ms / 1e3;
    o.whole_budget_s = whole_budget_ms / 1e3;
    o.calibrate = !no_calibrate;
    o.seed = seed;
    smp::train::ProfileOutput po;
    ProgressBar bar;
    if (!quiet) {
      po.note = to_stderr;
      po.progress = [&bar](int done, int total, const std::string& what) { bar.update(done, total, what); };
      po.summary = [](const std::string& line) { fmt::print("{}\n", line); };
    }
    nlohmann::json prof = smp::train::profile_nodes(o, po);
    const bool oversubscribed = workers * o.threads > cores;
    if (workers > 1 && o.calibrate && (probe == "always" || (probe == "auto" && oversubscribed))) {
      // Measure the workers' slow-down in a real pipeline (pipeline_probe.hpp).
      smp::train::PipelineProbeOptions pp;
      pp.smp_run = fs::read_symlink("/proc/self/exe").parent_path() / "smp-run";
      pp.budget_s = 2 * o.whole_budget_s;
      if (!fs::exists(pp.smp_run))
        smp::throw_failure("smp-profile", fmt::format("{} not found for the pipelined probe", pp.smp_run.string()),
                           "install smp-run beside smp-profile, or give --pipeline-probe never");
      smp::train::probe_pipeline(o, pp, prof, po);
    }
    smp::write_file_atomic(out_file, prof.dump(2) + "\n");
    if (!quiet) fmt::print("wrote {} ({} nodes)\n", out_file, prof["nodes"].size());
    return 0;
  });
}
