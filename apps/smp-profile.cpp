// smp-profile: measure per-node cost on this machine's device (profile.json for smp-plan
// --profile), or the machine itself (--machine: a cluster description for smp-plan --cluster).
#include "common.hpp"
#include "profile_machine.hpp"
#include "profile_nodes.hpp"

#include "comm/launch.hpp"
#include "core/io.hpp"
#include "cost/cluster.hpp"

#include <fmt/format.h>

#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace fs = std::filesystem;

int main(int argc, char** argv) {
  // The hidden ping-pong worker of --machine, started twice by mpirun.
  if (argc >= 3 && std::string(argv[1]) == "--pingpong-worker") {
    double budget_s = 0.5;
    if (argc >= 5 && std::string(argv[3]) == "--budget-ms") budget_s = std::atof(argv[4]) / 1e3;
    std::string out = argv[2];
    return smp::app::guarded_main([&]() -> int { return smp::app::pingpong_worker(argc, argv, out, budget_s); });
  }

  CLI::App app{
      "smp-profile: measure what each layer of an ONNX model costs (time, memory) on this device, or the machine.\n"
      "  smp-profile MODEL.onnx --batch-size N [--microbatches M] [--devices K | --threads T] -o profile.json\n"
      "  smp-profile --machine [--devices K] -o cluster.json"};
  smp::app::setup_app(app);
  std::string model, out_file, device = "cpu";
  int64_t batch_size = 0;
  int microbatches = 1, threads = 0, devices = 0;
  double budget_ms = 20, whole_budget_ms = 1500, oversubscription = 0;
  std::vector<std::string> dims;
  bool machine = false, quiet = false, no_calibrate = false;
  uint64_t seed = 1;
  app.add_option("MODEL", model, "ONNX model to profile");
  app.add_option("-b,--batch-size", batch_size, "global batch size (as for smp-plan)")->option_text("N");
  app.add_option("-m,--microbatches", microbatches, "microbatches per batch: nodes are measured at batch / M samples")
      ->option_text("M");
  app.add_option("--dim", dims, "bind another symbolic dimension, NAME=SIZE (repeatable)");
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
      ->option_text("MS");
  app.add_option("--whole-budget-ms", whole_budget_ms,
                 "time spent timing the nodes in context (the whole model as one stage), and as much again on the "
                 "concurrent copies")
      ->option_text("MS");
  app.add_option("--oversubscription", oversubscription,
                 "an extra factor on every time (default 1: the whole model already runs in 1 to --devices concurrent "
                 "worker processes, which gives the slow-down of sharing the machine)")
      ->option_text("F");
  app.add_flag("--no-calibrate", no_calibrate,
               "write the node times as measured in one process alone: not scaled for workers sharing the machine");
  app.add_option("--seed", seed, "random inputs' seed");
  app.add_flag("--machine", machine, "measure this machine (GEMM FLOP/s, memory bandwidth, MPI point-to-point) and "
                                     "write a cluster description (schemas/cluster.schema.json) for smp-plan --cluster");
  app.add_option("-o,--output", out_file, "where to write profile.json (or cluster.json with --machine)")
      ->option_text("FILE");
  app.add_flag("-q,--quiet", quiet, "no progress bar or summary (for scripts)");
  SMP_PARSE(app, argc, argv);
  return smp::app::guarded_main([&]() -> int {
    using smp::throw_bad_input;
    if (out_file.empty()) throw_bad_input("--output", "missing", "give -o FILE");
    if (device != "cpu")
      throw_bad_input("--device", fmt::format("'{}' is not supported", device), "this version measures the cpu only");
    if (devices < 0) throw_bad_input("--devices", "must be a positive number");
    if (app.count("--devices") && devices == 0) throw_bad_input("--devices", "must be at least 1");
    if (app.count("--threads") && threads < 1) throw_bad_input("--threads", "must be at least 1");
    if (budget_ms <= 0) throw_bad_input("--budget-ms", "must be positive");
    if (app.count("--oversubscription") && oversubscription < 1)
      throw_bad_input("--oversubscription", "must be at least 1");
    if (whole_budget_ms <= 0) throw_bad_input("--whole-budget-ms", "must be positive");
    const int cores = smp::comm::online_cores();
    if (machine) {
      if (!model.empty()) throw_bad_input("--machine", "measures the machine, not a model", "leave out MODEL");
      smp::app::MachineOptions mo;
      mo.devices = devices;
      mo.budget_s = budget_ms / 1e3 * 10;
      mo.quiet = quiet;
      mo.self = fs::read_symlink("/proc/self/exe").string();
      nlohmann::json cl = smp::app::measure_machine(mo);
      smp::cost::cluster_from_json(cl, out_file);  // what smp-plan will read must be valid
      smp::write_file_atomic(out_file, cl.dump(2) + "\n");
      if (!quiet) fmt::print("wrote {}\n", out_file);
      return 0;
    }
    if (model.empty()) throw_bad_input("MODEL", "missing", "give the .onnx file to profile, or --machine");
    if (!fs::exists(model)) throw_bad_input(model, "no such file");
    if (batch_size < 1) throw_bad_input("--batch-size", "missing or not a positive number", "give --batch-size N");
    if (microbatches < 1) throw_bad_input("--microbatches", "must be at least 1");
    smp::app::NodeProfileOptions o;
    o.model = model;
    o.batch_size = batch_size;
    o.microbatches = microbatches;
    o.dims = smp::app::parse_dims(dims);
    const int workers = devices > 0 ? devices : cores;
    o.threads = threads > 0 ? threads : std::max(1, cores / workers);
    // The name smp-plan gives this machine's devices for the same --devices: the profile applies
    // to exactly that set-up.
    o.device_name = smp::cost::local_cpu_json(workers)["hosts"][0]["devices"][0]["name"].get<std::string>();
    // The whole-model calibration runs in `workers` processes at once, so it sees the cores (and
    // caches, memory bandwidth) shared as the plan's workers will share them.
    o.concurrent = workers;
    o.oversubscription = oversubscription > 0 ? oversubscription : 1.0;
    o.budget_s = budget_ms / 1e3;
    o.whole_budget_s = whole_budget_ms / 1e3;
    o.calibrate = !no_calibrate;
    o.quiet = quiet;
    o.seed = seed;
    nlohmann::json prof = smp::app::profile_nodes(o);
    smp::write_file_atomic(out_file, prof.dump(2) + "\n");
    if (!quiet) fmt::print("wrote {} ({} nodes)\n", out_file, prof["nodes"].size());
    return 0;
  });
}
