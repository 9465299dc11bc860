// smp-run's features on real worker processes: checkpoints and bit-identical resume, ONNX
// export, metrics / trace / timeline files, the synthetic task, and every failure: a killed
// worker, a silent peer, a changed model, bad data, a non-finite loss.
#include "checkpoint_util.hpp"
#include "run_util.hpp"

#include "core/io.hpp"
#include "graph/loader.hpp"
#include "train/checkpoint.hpp"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <csignal>
#include <cmath>
#include <sstream>
#include <thread>

using namespace smp;
namespace fs = std::filesystem;

namespace {

std::string run_cmd(const fs::path& plan, const std::string& args) {
  return fmt::format("{} {} --quiet --timeout 30 {}", test::bin("smp-run"), plan.string(), args);
}

int count_lines(const std::string& s) { return static_cast<int>(std::count(s.begin(), s.end(), '\n')); }

}  // namespace

TEST_CASE("20 steps in one run and 10 + 10 with a resume give bit-identical weights and optimizer state") {
  auto dir = test::temp_dir("resume");
  auto plan = test::make_plan(dir, "mlp", 8, 2, 2, 2, "1f1b");
  std::string opt = "--optimizer adamw --lr 0.01 --weight-decay 0.01 --warmup-steps 3 --lr-decay cosine --lr-decay-steps 20 "
                    "--clip-norm 1 "
                    "--shuffle --seed 5";
  auto a = test::sh(run_cmd(plan, fmt::format("--steps 20 {} --checkpoint-dir {}", opt, (dir / "a").string())));
  INFO(a.out);
  REQUIRE(a.exit_code == 0);
  auto b1 = test::sh(run_cmd(plan, fmt::format("--steps 10 {} --checkpoint-dir {}", opt, (dir / "b").string())));
  REQUIRE(b1.exit_code == 0);
  auto b2 = test::sh(run_cmd(plan, fmt::format("--steps 20 {} --checkpoint-dir {} --resume", opt, (dir / "b").string())));
  INFO(b2.out);
  REQUIRE(b2.exit_code == 0);
  REQUIRE(train::latest_checkpoint(dir / "a") == 20);
  REQUIRE(train::latest_checkpoint(dir / "b") == 20);
  auto wa = test::stage_weights(dir / "a", 20, 2), wb = test::stage_weights(dir / "b", 20, 2);
  REQUIRE(wa.size() == wb.size());
  CHECK(wa.size() > 12);  // parameters and both AdamW moments
  for (const auto& [name, bytes] : wa) {
    INFO(name);
    CHECK(wb.at(name) == bytes);
  }
  // Another rate is the user's to choose, but said: the manifest records the run's settings.
  {
    std::string faster = opt;
    faster.replace(faster.find("--lr 0.01"), 9, "--lr 0.02");
    auto c = test::sh(fmt::format("{} {} --timeout 30 --steps 21 {} --checkpoint-dir {} --resume", test::bin("smp-run"),
                                  plan.string(), faster, (dir / "b").string()));
    INFO(c.out);
    CHECK(c.exit_code == 0);
    CHECK(c.out.find("note: resuming step 20 with other settings than the run that wrote it: --lr 0.02 (the checkpoint's run: "
                     "0.01)\n") != std::string::npos);
    auto same = test::sh(fmt::format("{} {} --timeout 30 --steps 22 {} --checkpoint-dir {} --resume", test::bin("smp-run"),
                                     plan.string(), faster, (dir / "b").string()));
    INFO(same.out);
    CHECK(same.exit_code == 0);
    CHECK(same.out.find("note: resuming") == std::string::npos);
  }
  // Resuming with another optimizer is refused with one line.
  auto bad = test::sh(run_cmd(plan, fmt::format("--steps 30 --checkpoint-dir {} --resume", (dir / "b").string())));
  CHECK(bad.exit_code != 0);
  CHECK(bad.out.find("--optimizer: the checkpoint was written with adamw") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("--export writes the trained model as a valid ONNX file of the same graph") {
  auto dir = test::temp_dir("export");
  auto plan = test::make_plan(dir, "gpt", 4, 2, 1, 2, "zb-h1");
  fs::path out = dir / "trained.onnx";
  auto r = test::sh(run_cmd(plan, fmt::format("--steps 3 --lr 0.1 --checkpoint-dir {} --export {}", (dir / "ck").string(),
                                              out.string())));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  auto check = test::sh(fmt::format("{} -c \"import onnx; m = onnx.load('{}'); onnx.checker.check_model(m); print(len(m.graph.node))\"",
                                    SMP_PYTHON, out.string()));
  INFO(check.out);
  REQUIRE(check.exit_code == 0);
  graph::LoadOptions lo;
  lo.batch_size = 2;
  lo.load_weights = true;
  graph::Graph trained = graph::load_graph(out, lo), original = graph::load_graph(test::src("sample_models/gpt.onnx"), lo);
  CHECK(trained.onnx_nodes == original.onnx_nodes);
  REQUIRE(trained.parameters.size() == original.parameters.size());
  auto ck = test::stage_weights(dir / "ck", 3, 2);
  int changed = 0;
  for (int p : trained.parameters) {
    const auto& v = trained.value(p);
    CHECK(v.data->bytes == ck.at(v.name));
    changed += v.data->bytes != original.value(original.find_value(v.name)).data->bytes;
  }
  CHECK(changed == static_cast<int>(trained.parameters.size()));
  fs::remove_all(dir);
}

TEST_CASE("smp-plan --freeze: the plan records the initializers, smp-run keeps them constant and trains the rest") {
  auto dir = test::temp_dir("freeze");
  const fs::path plan = dir / "plan.json", out = dir / "trained.onnx";
  auto p = test::sh(fmt::format("{} {} --batch-size 8 --stages 2 --data-parallel 1 --devices 2 --microbatches 2 --schedule 1f1b "
                                "--optimizer sgd --freeze layers.0.weight --freeze 'layers.[12].bias' -o {}",
                                test::bin("smp-plan"), test::src("sample_models/mlp.onnx"), plan.string()));
  INFO(p.out);
  REQUIRE(p.exit_code == 0);
  const auto pj = nlohmann::json::parse(read_file(plan));
  CHECK(pj["frozen"] == nlohmann::json::array({"layers.0.weight", "layers.[12].bias"}));
  graph::LoadOptions lo;
  lo.batch_size = 2;
  lo.load_weights = true;
  const graph::Graph original = graph::load_graph(test::src("sample_models/mlp.onnx"), lo);
  CHECK(pj["model"]["parameters"].get<int64_t>() == original.parameter_count() - 512 * 256 - 2 * 512);
  auto r = test::sh(run_cmd(plan, fmt::format("--steps 3 --lr 0.1 --export {}", out.string())));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  const graph::Graph trained = graph::load_graph(out, lo);
  for (const auto& v : original.values) {
    if (v.kind != graph::ValueKind::Parameter) continue;
    CAPTURE(v.name);
    const bool frozen = v.name == "layers.0.weight" || v.name == "layers.1.bias" || v.name == "layers.2.bias";
    const auto& t = trained.value(trained.find_value(v.name));
    REQUIRE(t.data != nullptr);
    CHECK((t.data->bytes == v.data->bytes) == frozen);
  }
  fs::remove_all(dir);
}

TEST_CASE("metrics, trace and timeline files; without --data the synthetic task's loss falls") {
  auto dir = test::temp_dir("files");
  auto plan = test::make_plan(dir, "mlp", 16, 2, 1, 4, "1f1b");
  fs::path metrics = dir / "m.jsonl", trace = dir / "t.json", svg = dir / "t.svg";
  auto r = test::sh(fmt::format("{} {} --steps 40 --lr 0.05 --optimizer momentum --metrics {} --trace {} --timeline {}",
                                test::bin("smp-run"), plan.string(), metrics.string(), trace.string(), svg.string()));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("step 40/40") != std::string::npos);
  CHECK(r.out.find("predicted") != std::string::npos);  // the end-of-run summary
  CHECK(r.out.find("optimizer momentum") != std::string::npos);
  CHECK(r.out.find("note: the plan was made for sgd") != std::string::npos);
  std::ifstream in(metrics);
  std::string line;
  std::vector<double> loss;
  while (std::getline(in, line)) {
    auto j = nlohmann::json::parse(line);
    for (const char* k : {"step", "loss", "samples_per_s", "step_time_s"}) CHECK(j.contains(k));
    CHECK(j["lr"].get<double>() == 0.05);  // the --lr given
    loss.push_back(j["loss"]);
  }
  REQUIRE(loss.size() == 40);
  double first = (loss[0] + loss[1] + loss[2]) / 3, last = (loss[37] + loss[38] + loss[39]) / 3;
  CHECK(last < 0.8 * first);
  auto t = read_json(trace);
  REQUIRE(t.contains("traceEvents"));
  int compute = 0;
  for (const auto& e : t["traceEvents"])
    if (e.value("ph", "") == "X" && e.value("name", "").find('F') != std::string::npos) ++compute;
  CHECK(compute >= 8);  // 4 forwards on each of the 2 ranks
  int updates = 0, norms = 0;
  for (const auto& e : t["traceEvents"]) {
    updates += e.value("name", "").rfind("optimizer step of stage ", 0) == 0 && e.value("name", "").ends_with(": update");
    norms += e.value("name", "").ends_with(": gradient norm");
  }
  CHECK(updates == 2);  // each rank's stage, after the pipeline
  CHECK(norms == 2);
  std::string s = read_file(svg);
  CHECK(s.find("<svg") != std::string::npos);
  CHECK(s.find("rank 1") != std::string::npos);
  CHECK(s.find("optimizer step") != std::string::npos);
  fs::remove_all(dir);
}

// torch.onnx.export's default: the batch dimension fixed at the example's size. Each microbatch
// holds that many samples, so a batch of several is planned, profiled and trained as one of the
// dynamic model split into microbatches of that size: the same losses, bit for bit.
TEST_CASE("a model whose inputs fix the batch dimension pipelines microbatches of that size") {
  auto dir = test::temp_dir("fixed_batch");
  const fs::path fixed = dir / "mlp4.onnx";
  auto py = test::sh(fmt::format("{} -c \"import onnx, sys; m = onnx.load(sys.argv[1]); "
                                 "[v.type.tensor_type.shape.dim[0].__setattr__('dim_value', 4) for v in (m.graph.input[0], m.graph.output[0])]; "
                                 "onnx.save(m, sys.argv[2])\" {} {}",
                                 SMP_PYTHON, test::src("sample_models/mlp.onnx"), fixed.string()));
  REQUIRE_MESSAGE(py.exit_code == 0, py.out);
  auto plan = [&](const fs::path& model, const std::string& name, const std::string& args) {
    const fs::path p = dir / name;
    auto r = test::sh(fmt::format("{} {} -b 16 --devices 2 --split equal-layers --schedule 1f1b {} -o {}", test::bin("smp-plan"),
                                  model.string(), args, p.string()));
    INFO(r.out);
    CHECK(r.exit_code == 0);
    return p;
  };
  const fs::path pf = plan(fixed, "fixed.json", "--stages 2");
  const fs::path pd = plan(test::src("sample_models/mlp.onnx"), "dynamic.json", "--stages 2 --microbatches 4");
  {
    const auto j = read_json(pf);
    CHECK(j["batch_size"] == 16);
    CHECK(j["microbatch_size"] == 4);
    CHECK(j["microbatches"] == 4);
    const auto& mb = j["megatron_baseline"];
    INFO(mb.dump());
    REQUIRE(mb["available"] == true);  // its microbatches too hold the 4 samples, not 1
    CHECK(mb["microbatch_size"] == 4);
    CHECK(mb["microbatches"] == 4);
    // Loaded at 4 samples instead of 16, the cost model prices it the same: its figures are per sample.
    const auto jd = read_json(pd);
    CHECK(j["prediction"] == jd["prediction"]);
    CHECK(j["stages"] == jd["stages"]);
  }
  auto losses = [&](const fs::path& p, const std::string& name) {
    const fs::path l = dir / name;
    auto r = test::sh(run_cmd(p, fmt::format("--steps 3 --optimizer sgd --lr 0.05 --losses {}", l.string())));
    INFO(r.out);
    CHECK(r.exit_code == 0);
    return read_file(l);
  };
  const std::string lf = losses(pf, "fixed.txt"), ld = losses(pd, "dynamic.txt");
  CHECK(count_lines(lf) == 3);
  CHECK(lf == ld);
  // Microbatches of another size: one line naming the option.
  auto bad = test::sh(fmt::format("{} {} -b 16 --devices 2 --stages 2 --microbatches 2 -o {}", test::bin("smp-plan"), fixed.string(),
                                  (dir / "bad.json").string()));
  CHECK(bad.exit_code == 2);
  CHECK(bad.out.find("fix the batch dimension at 4, so every microbatch holds 4 samples") != std::string::npos);
  CHECK(count_lines(bad.out) == 1);
  // smp-profile measures its nodes at that size; a batch it does not divide is refused.
  const fs::path prof = dir / "prof.json";
  auto pr = test::sh(fmt::format("{} {} -b 16 --devices 2 --budget-ms 1 --whole-budget-ms 20 --pipeline-probe never -o {}",
                                 test::bin("smp-profile"), fixed.string(), prof.string()));
  INFO(pr.out);
  REQUIRE(pr.exit_code == 0);
  CHECK(read_json(prof)["microbatch_size"] == 4);
  for (const char* args : {"-b 10", "-b 16 -m 2"}) {
    auto b = test::sh(fmt::format("{} {} {} -o {}", test::bin("smp-profile"), fixed.string(), args, (dir / "p2.json").string()));
    INFO(args, ": ", b.out);
    CHECK(b.exit_code == 2);
    CHECK(b.out.find("fix the batch dimension at 4") != std::string::npos);
    CHECK(count_lines(b.out) == 1);
  }
  fs::remove_all(dir);
}

TEST_CASE("without --lr, AdamW trains at PyTorch's default 1e-3 and SGD at 0.01") {
  auto dir = test::temp_dir("default_lr");
  auto plan = test::make_plan(dir, "mlp", 8, 2, 1, 2, "1f1b");
  for (const auto& [opt, lr] : {std::pair{"adamw", 1e-3}, std::pair{"sgd", 0.01}}) {
    fs::path metrics = dir / fmt::format("{}.jsonl", opt);
    auto r = test::sh(fmt::format("{} {} --steps 2 --optimizer {} --metrics {}", test::bin("smp-run"), plan.string(), opt,
                                  metrics.string()));
    INFO(opt, ": ", r.out);
    REQUIRE(r.exit_code == 0);
    CHECK(r.out.find(fmt::format("optimizer {} at lr {},", opt, lr)) != std::string::npos);
    std::ifstream in(metrics);
    int steps = 0;
    for (std::string line; std::getline(in, line); ++steps) CHECK(nlohmann::json::parse(line)["lr"].get<double>() == lr);
    CHECK(steps == 2);
  }
  fs::remove_all(dir);
}

TEST_CASE("without --optimizer, smp-run trains with the plan's; the summary sets its step against the plan's") {
  auto dir = test::temp_dir("plan_optimizer");
  fs::path plan = dir / "p.json";
  auto pl = test::sh(fmt::format("{} {} -b 16 --devices 2 --stages 2 --data-parallel 1 --microbatches 4 --schedule 1f1b --optimizer momentum -o {}",
                                 test::bin("smp-plan"), test::src("sample_models/mlp.onnx"), plan.string()));
  REQUIRE_MESSAGE(pl.exit_code == 0, pl.out);
  CHECK(pl.out.find("optimizer step (momentum)") != std::string::npos);
  fs::path summary = dir / "summary.json";
  auto r = test::sh(fmt::format("{} {} --steps 3 --summary-json {}", test::bin("smp-run"), plan.string(), summary.string()));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out.find("optimizer momentum at lr 0.01,") != std::string::npos);  // no --lr: momentum's default
  // The same summary as JSON: valid, with the plan's predictions.
  auto v = test::sh(fmt::format("{} {} {} run_summary {}", SMP_PYTHON, test::src("tests/plan/validate_json.py"),
                                test::src("schemas"), summary.string()));
  CHECK_MESSAGE(v.exit_code == 0, v.out);
  {
    std::ifstream sf(summary), pf(plan);
    const auto sj = nlohmann::json::parse(sf), pj = nlohmann::json::parse(pf);
    CHECK(sj["optimizer"] == "momentum");
    CHECK(sj["steps_timed"] == 2);
    CHECK(sj["step_s"]["predicted"].get<double>() == pj["prediction"]["step_s"].get<double>());
    REQUIRE(sj["stages"].size() == 2);
    for (int s = 0; s < 2; ++s) {
      const auto& st = sj["stages"][static_cast<size_t>(s)];
      CHECK(st["index"] == s);
      CHECK(st["measured"]["forward_s"].get<double>() > 0);
      CHECK(st["measured"]["cpu_per_wall"].get<double>() > 0);
      CHECK(st["predicted"]["forward_s"].get<double>() == pj["stages"][static_cast<size_t>(s)]["time"]["forward_s"].get<double>());
    }
  }
  CHECK(r.out.find("optimizer ms") != std::string::npos);
  // Per stage, its compute threads' CPU time over the wall time of its compute: each thread's
  // CPU time is at most its wall time, so between 0 and the threads per worker (the process's
  // CPU time, counted before, took in the MPI progress thread's and reached 1.07 in CI).
  const auto head = r.out.find("cpu/wall  ");
  REQUIRE(head != std::string::npos);
  {
    std::istringstream rows(r.out.substr(r.out.find('\n', head) + 1));
    for (int s = 0; s < 2; ++s) {
      std::string line;
      REQUIRE(std::getline(rows, line));
      CAPTURE(line);
      // stage, f | f, b | b, u | u, cpu/wall, idle%
      std::istringstream in(line);
      int stage = -1;
      double f, pf, b, pb, u, pu, cw;
      std::string bar;
      in >> stage >> f >> bar >> pf >> b >> bar >> pb >> u >> bar >> pu >> cw;
      REQUIRE(!in.fail());
      CHECK(stage == s);
      CHECK(cw > 0.0);
      CHECK(cw <= 1.05 * std::max(1, static_cast<int>(std::thread::hardware_concurrency()) / 2));
    }
  }
  CHECK(r.out.find("note: the plan was made for") == std::string::npos);
  // One step: nothing after the first to time, and the summary says so instead of zeros.
  auto one = test::sh(fmt::format("{} {} --steps 1 --summary-json {}", test::bin("smp-run"), plan.string(), summary.string()));
  INFO(one.out);
  REQUIRE(one.exit_code == 0);
  CHECK(one.out.find("no steady-state measurement") != std::string::npos);
  CHECK(one.out.find("step time: measured") == std::string::npos);
  CHECK(one.out.find("-100.0%") == std::string::npos);
  auto v1 = test::sh(fmt::format("{} {} {} run_summary {}", SMP_PYTHON, test::src("tests/plan/validate_json.py"),
                                 test::src("schemas"), summary.string()));
  CHECK_MESSAGE(v1.exit_code == 0, v1.out);
  {
    std::ifstream sf(summary);
    const auto sj = nlohmann::json::parse(sf);
    CHECK(sj["steps_timed"] == 0);
    CHECK(sj["step_s"]["measured"].is_null());
    CHECK(sj["stages"][0]["measured"].is_null());
  }
  fs::remove_all(dir);
}

TEST_CASE("a plan for this machine that uses fewer workers than its --devices runs them at the threads it priced") {
  // --devices 2 prices each worker at cores / 2 threads; a one-rank plan of it still runs so (by
  // default smp-run would give a lone worker every core).
  auto dir = test::temp_dir("plan_threads");
  fs::path plan = dir / "p.json", summary = dir / "summary.json";
  auto pl = test::sh(fmt::format("{} {} -b 16 --devices 2 --stages 1 --data-parallel 1 --tensor-parallel 1 -o {}",
                                 test::bin("smp-plan"), test::src("sample_models/mlp.onnx"), plan.string()));
  REQUIRE_MESSAGE(pl.exit_code == 0, pl.out);
  auto r = test::sh(fmt::format("{} {} --steps 2 --summary-json {}", test::bin("smp-run"), plan.string(), summary.string()));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  std::ifstream sf(summary);
  const auto sj = nlohmann::json::parse(sf);
  const int cores = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  CHECK(sj["threads_per_worker"] == std::max(1, cores / 2));
  // --threads-per-worker still decides when given.
  auto r3 = test::sh(fmt::format("{} {} --steps 2 --threads-per-worker 3 --summary-json {}", test::bin("smp-run"), plan.string(),
                                 summary.string()));
  REQUIRE_MESSAGE(r3.exit_code == 0, r3.out);
  std::ifstream sf3(summary);
  CHECK(nlohmann::json::parse(sf3)["threads_per_worker"] == 3);
  fs::remove_all(dir);
}

// The launcher learns of the death from the process itself, not from a peer's timeout: --timeout
// is far above the test's own limit, so only that path can end the run in time (no wall-clock
// assertion here; a wait for the timeout fails the test at ctest's limit).
TEST_CASE("a worker killed with SIGKILL: one line naming its rank, stage and host, nothing left behind") {
  auto dir = test::temp_dir("kill");
  auto plan = test::make_plan(dir, "gpt", 8, 2, 1, 4, "1f1b");
  std::string log = (dir / "log.txt").string();
  const fs::path metrics = dir / "metrics.jsonl";
  std::string cmd = fmt::format("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 {} {} --steps 100000 --quiet --timeout 3600 --metrics {} > {} 2>&1; echo $? >> {}",
                                test::bin("smp-run"), plan.string(), metrics.string(), log, log);
  std::thread runner([&] { [[maybe_unused]] int rc = std::system(cmd.c_str()); });
  // Find rank 1's worker by its environment once it runs.
  int victim = -1;
  for (int tries = 0; tries < 200 && victim < 0; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto ps = test::sh(fmt::format("pgrep -f '{}.*--status-token'", plan.string()));
    std::istringstream ids(ps.out);
    int pid;
    while (ids >> pid) {
      std::ifstream f(fmt::format("/proc/{}/environ", pid), std::ios::binary);  // gone already: empty
      std::string env((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
      if (env.find(std::string("OMPI_COMM_WORLD_RANK=1") + '\0') != std::string::npos) victim = pid;
    }
  }
  if (victim <= 0) {
    test::sh(fmt::format("pkill -KILL -f '{}'", plan.string()));
    runner.join();
    FAIL("rank 1's worker process was not found");
  }
  // Let it train: a step done means every rank runs (on a loaded machine a fixed second was not
  // always enough, and the error then says "before it started").
  for (int tries = 0; tries < 1200 && test::lines_in(metrics) < 1; ++tries)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  if (test::lines_in(metrics) < 1) {
    test::sh(fmt::format("pkill -KILL -f '{}'", plan.string()));
    runner.join();
    FAIL("no step finished in 120 s");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ::kill(victim, SIGKILL);
  runner.join();
  std::string out = read_file(log);
  INFO(out);
  char host[256] = {0};
  ::gethostname(host, sizeof host - 1);
  CHECK(out.find(fmt::format("error: rank 1 (stage 1, host {}): the worker died (killed by signal 9)", host)) != std::string::npos);
  CHECK(out.substr(out.rfind('\n', out.size() - 2) + 1) != "0\n");  // smp-run's exit status
  CHECK(count_lines(out) == 2);  // the error line and the exit status
  auto left = test::sh(fmt::format("pgrep -f '[s]mp-run {}'", plan.string()));  // [s]: not pgrep's own shell
  CHECK(left.out.empty());
  fs::remove_all(dir);
}

TEST_CASE("bad input: one error line and a non-zero exit before anything is overwritten") {
  auto dir = test::temp_dir("bad");
  auto plan = test::make_plan(dir, "mlp", 8, 2, 1, 2, "1f1b");
  auto expect = [&](const std::string& args, const std::string& what) {
    auto r = test::sh(run_cmd(plan, args));
    INFO(args, "\n", r.out);
    CHECK(r.exit_code != 0);
    CHECK(r.out.find(what) != std::string::npos);
    CHECK(count_lines(r.out) == 1);
    CHECK(r.out.rfind("error: ", 0) == 0);
  };
  fs::path data = dir / "data";
  fs::create_directories(data);
  auto npy = [&](const std::string& name, const std::string& expr) {
    auto r = test::sh(fmt::format("{} -c \"import numpy as np; np.save('{}', {})\"", SMP_PYTHON, (data / name).string(), expr));
    REQUIRE(r.exit_code == 0);
  };
  expect("--data " + data.string(), "x.npy: missing");
  npy("x.npy", "np.zeros((16, 256), np.float32)");
  expect("--data " + data.string(), "labels.npy: missing");
  npy("labels.npy", "np.zeros((16,), np.int64)");
  npy("x.npy", "np.zeros((16, 255), np.float32)");
  expect("--data " + data.string(), "x.npy: rows of shape [255]");
  npy("x.npy", "np.zeros((16, 256), np.float64)");
  expect("--data " + data.string(), "x.npy: holds float64");
  npy("x.npy", "np.zeros((4, 256), np.float32)");
  npy("labels.npy", "np.zeros((4,), np.int64)");
  expect("--data " + data.string(), "fewer than one batch of 8");
  expect("--resume", "--resume: needs --checkpoint-dir");
  // Numeric options: non-finite, out-of-range and fractional counts are refused before anything runs.
  expect("--lr nan", "--lr: must be a positive number, not nan");
  expect("--lr -0.1", "--lr: must be a positive number, not -0.1");
  expect("--steps 0", "--steps: must be a positive whole number, not 0");
  expect("--steps 1.5", "--steps: must be a positive whole number, not 1.5");
  expect("--momentum 1.5", "--momentum: must be a number from 0 to 1, not 1.5");
  expect("--weight-decay inf", "--weight-decay: must be a number >= 0, not inf");
  expect("--clip-norm x", "--clip-norm: 'x' is not a number");

  // A non-finite loss stops training before the step's checkpoint; the previous one survives.
  fs::path ck = dir / "ck";
  auto ok = test::sh(run_cmd(plan, fmt::format("--steps 4 --checkpoint-dir {} --checkpoint-every 2", ck.string())));
  REQUIRE(ok.exit_code == 0);
  REQUIRE(train::latest_checkpoint(ck) == 4);
  auto before = test::stage_weights(ck, 4, 2);
  expect(fmt::format("--steps 8 --lr 1e30 --checkpoint-dir {} --checkpoint-every 1 --resume", ck.string()), "the loss is");
  CHECK(train::latest_checkpoint(ck) <= 5);
  CHECK(test::stage_weights(ck, 4, 2) == before);

  // A plan whose model changed since planning.
  auto j = read_json(plan);
  j["model"]["sha256"] = std::string(64, '0');
  fs::path other = dir / "changed.json";
  write_file_atomic(other, j.dump());
  auto r = test::sh(run_cmd(other, "--steps 2"));
  INFO(r.out);
  CHECK(r.exit_code == 2);
  CHECK(r.out.find("SHA-256") != std::string::npos);
  CHECK(count_lines(r.out) == 1);
  fs::remove_all(dir);
}

TEST_CASE("ranks whose plans give a stage boundary different message lists: a start-up error naming the message, no hang") {
  // Two plans of one model and pipeline that differ in their microbatches (2 against 4): rank 0
  // runs one, rank 1 the other (smp's local launcher, a shell choosing by SMP_LOCAL_RANK). Each
  // end derives its channels' messages from its own plan, they exchange them at start-up and
  // both report the first difference (NCCL has no tags: unchecked, it would hang or mix tensors).
  auto dir = test::temp_dir("channels");
  auto a = test::make_plan(dir, "mlp", 8, 2, 1, 2, "1f1b");
  fs::create_directories(dir / "b");
  auto b = test::make_plan(dir / "b", "mlp", 8, 2, 1, 4, "1f1b");
  const std::string worker = fmt::format("{} --quiet --timeout 30 --steps 1", test::bin("smp-run"));
  const std::string cmd =
      fmt::format("{} --local-supervisor 2 -- /bin/sh -c 'if [ \"$SMP_LOCAL_RANK\" = 0 ]; then exec {} {}; else exec {} {}; fi'",
                  test::bin("smp-run"), worker, a.string(), worker, b.string());
  test::Cmd r = test::sh(cmd);
  INFO(cmd, "\n", r.out);
  CHECK(r.exit_code != 0);
  CHECK(r.out.find("no progress") == std::string::npos);  // not a hung exchange's deadline
  // Rank 0 sends 2 activation messages of 4 rows, rank 1 expects 4 of 2 rows.
  CHECK(r.out.find("on rank 0 -> rank 1, activations, message 0 is activations of stage 0 -> 1, microbatch 0") != std::string::npos);
  CHECK(r.out.find("start every rank from the same plan file") != std::string::npos);
  fs::remove_all(dir);
}
