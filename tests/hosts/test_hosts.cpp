// Workers on separate hosts: the test hosts of scripts/test-hosts.sh (own hostname, own /tmp and
// /dev/shm, a Slurm cluster over them, an rsh agent for mpirun), which CTest brings up before and
// takes down after this test (fixture smp_hosts). Every job is real: mpirun starts its daemons
// inside the hosts, slurmd starts srun's tasks there, and ranks on different hosts talk TCP over
// 127.0.0.1.
//
//   - srun smp-run (one task per rank), smp-run started once in an allocation (it launches
//     through srun) and smp-run --hostfile train the GPT and MLP samples with plans (2,1), (4,1)
//     and (2,2) across 2 hosts: losses as one process's within 1e-4 relative, every rank on the
//     host the plan gives it;
//   - a worker killed with -9 on the second host: smp-run ends by itself naming its rank, stage
//     and host (how long it took is printed: 2-4 s on a quiet machine), and no smp process is
//     left on any host;
//   - SIGTERM and SIGINT at a random step: one line, 143 / 130, a checkpoint; --resume then ends
//     bit-identical to an uninterrupted run; so does a Slurm job requeued at a random step, and
//     srun smp-run signalled by Slurm.
#define DOCTEST_CONFIG_IMPLEMENT
#include "run/checkpoint_util.hpp"
#include "run/run_util.hpp"

#include "core/io.hpp"
#include "train/checkpoint.hpp"

#include <nlohmann/json.hpp>

#include <csignal>
#include <functional>
#include <cmath>
#include <cstdio>
#include <random>
#include <regex>
#include <sstream>
#include <thread>

using namespace smp;
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

std::vector<std::string> g_hosts;  // the test hosts' names, in order
fs::path g_hosts_dir;

constexpr int kSteps = 10;

std::vector<std::string> split_lines(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// What smp-run printed, without salloc's own lines and the trailing "rc=N".
std::vector<std::string> own_lines(const std::string& s) {
  std::vector<std::string> out;
  for (auto& l : split_lines(s))
    if (l.rfind("salloc: ", 0) != 0 && l.rfind("rc=", 0) != 0) out.push_back(l);
  return out;
}

fs::path work_dir(const std::string& tag) {
  // Under the build directory: every host sees it (each has its own /tmp).
  fs::path d = fs::path(SMP_TEST_DATA) / "hosts" / fmt::format("{}-{}", tag, ::getpid());
  fs::remove_all(d);
  fs::create_directories(d);
  return d;
}

// A cluster of 2 CPU hosts with `per_host` workers each; hosts talk over a link slower than the
// one inside a host (loopback TCP against shared memory here).
fs::path cluster_file(const fs::path& dir, int per_host) {
  json dev = {{"kind", "cpu"},          {"name", "cpu"},
              {"count", per_host},      {"memory_bytes", 4e9},
              {"peak_flops", {{"fp32", 5e10}, {"bf16", 5e10}}},
              {"memory_bandwidth", 1e10}, {"kernel_overhead_s", 2e-6}};
  json c = {{"version", 1},
            {"name", "test-hosts"},
            {"description", "the test hosts of scripts/test-hosts.sh"},
            {"hosts", {{{"name", "node"}, {"count", 2}, {"devices", {dev}}, {"link", {{"bandwidth", 5e9}, {"latency", 1e-6}}}}}},
            {"interconnect", {{"bandwidth", 1e9}, {"latency", 2e-5}}}};
  fs::path f = dir / fmt::format("cluster-2x{}.json", per_host);
  write_file_atomic(f, c.dump(2));
  return f;
}

// A plan of (p, d) over the 2 test hosts; (1, 1) on this machine alone.
fs::path make_plan(const fs::path& dir, const std::string& model, int p, int d) {
  fs::path plan = dir / fmt::format("{}-{}x{}.json", model, p, d);
  std::string where = p * d == 1 ? "--devices 1" : "--cluster " + cluster_file(dir, p * d / 2).string();
  auto r = test::sh(fmt::format("{} {} --batch-size 8 {} --stages {} --data-parallel {} --microbatches 2 --schedule 1f1b "
                                "--optimizer sgd -o {}",
                                test::bin("smp-plan"), test::src("sample_models/" + model + ".onnx"), where, p, d, plan.string()));
  INFO(r.out);
  REQUIRE(r.exit_code == 0);
  return plan;
}

// The test host rank r must run on: the plan's hosts in the order of their devices, onto the
// test hosts in order.
std::vector<std::string> planned_hosts(const fs::path& plan) {
  json j = read_json(plan);
  std::vector<std::pair<int, std::string>> first;
  for (const auto& r : j["ranks"]) {
    std::string h = r["host"];
    int dev = r["device"];
    auto it = std::find_if(first.begin(), first.end(), [&](auto& f) { return f.second == h; });
    if (it == first.end()) first.emplace_back(dev, h);
    else it->first = std::min(it->first, dev);
  }
  std::sort(first.begin(), first.end());
  std::vector<std::string> out;
  for (const auto& r : j["ranks"]) {
    size_t i = static_cast<size_t>(
        std::find_if(first.begin(), first.end(), [&](auto& f) { return f.second == r["host"].get<std::string>(); }) -
        first.begin());
    out.push_back(g_hosts.at(i));
  }
  return out;
}

std::string hostfile() { return (g_hosts_dir / "hostfile").string(); }

std::string smp_run(const fs::path& plan, const std::string& args) {
  return fmt::format("{} {} --threads-per-worker 1 --timeout 60 --quiet {}", test::bin("smp-run"), plan.string(), args);
}

// Whether `pid` runs: a zombie does not, even when nobody reaps it.
bool alive(int pid) {
  std::ifstream st(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(st)), std::istreambuf_iterator<char>());
  const auto close = stat.rfind(") ");
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] != 'Z';
}

// Live processes of a test host.
struct Proc {
  int pid;
  std::string cmdline, environ;
};
std::vector<Proc> host_procs(const std::string& host) {
  std::vector<Proc> out;
  const std::string anchor = read_file(g_hosts_dir / "hosts" / (host + ".pid"));
  std::error_code ec;
  const fs::path ns = fs::read_symlink(fmt::format("/proc/{}/ns/uts", std::stoi(anchor)), ec);
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    if (fs::read_symlink(e.path() / "ns" / "uts", ec) != ns || ec || !alive(std::stoi(name))) continue;
    auto slurp = [&](const char* f) {
      std::ifstream in(e.path() / f, std::ios::binary);
      std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      std::replace(s.begin(), s.end(), '\0', '\n');
      return s;
    };
    out.push_back({std::stoi(name), slurp("cmdline"), slurp("environ")});
  }
  return out;
}

// Live processes anywhere (this machine and its test hosts) running smp-run on `plan`.
std::vector<std::string> smp_left(const fs::path& plan) {
  std::vector<std::string> left;
  auto ps = test::run_cmd(fmt::format("pgrep -f '[s]mp-run {}' -a", plan.string()));
  for (auto& l : split_lines(ps.out))
    if (alive(std::atoi(l.c_str()))) left.push_back(l);
  return left;
}

// A command running in the background: its output (stdout and stderr) and exit status go to
// `log`, its PID (the command exec's) to `log`.pid.
class Background {
 public:
  Background(const std::string& cmd, fs::path log) : log_(std::move(log)) {
    const std::string pidf = log_.string() + ".pid";
    const std::string sh = fmt::format("sh -c 'echo $$ > {}; exec {}' > {} 2>&1; echo rc=$? >> {}", pidf, cmd, log_.string(),
                                       log_.string());
    thread_ = std::thread([sh] { [[maybe_unused]] int rc = std::system(sh.c_str()); });
    for (int i = 0; i < 100 && pid_ <= 0; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      std::ifstream in(pidf);
      in >> pid_;
    }
  }
  ~Background() {
    if (thread_.joinable()) {
      if (!done()) ::kill(pid_, SIGKILL);
      thread_.join();
    }
  }
  int pid() const { return pid_; }
  bool done() const { return output().find("rc=") != std::string::npos; }
  std::string output() const {
    std::ifstream in(log_);
    return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  }
  // Waits for the end; its exit status, -1 after `timeout_s`.
  int wait(double timeout_s) {
    auto t0 = std::chrono::steady_clock::now();
    while (!done()) {
      if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > timeout_s) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    thread_.join();
    std::smatch m;
    const std::string out = output();
    std::regex_search(out, m, std::regex("rc=(\\d+)"));
    return std::stoi(m[1].str());
  }

 private:
  fs::path log_;
  std::thread thread_;
  int pid_ = -1;
};

using test::lines_in;

// Waits until `metrics` has at least `steps` lines (false after 120 s).
bool wait_steps(const fs::path& metrics, int steps, const Background& job) {
  for (int i = 0; i < 2400; ++i) {
    if (lines_in(metrics) >= steps) return true;
    if (job.done()) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

void check_same_weights(const fs::path& a, const fs::path& b, int64_t step, int stages) {
  auto wa = test::stage_weights(a, step, stages), wb = test::stage_weights(b, step, stages);
  REQUIRE(wa.size() == wb.size());
  CHECK(wa.size() > 4);
  int differ = 0;
  for (const auto& [name, bytes] : wa) differ += wb.at(name) != bytes;
  CHECK(differ == 0);
}

int random_step(int lo, int hi) {
  std::random_device rd;
  return std::uniform_int_distribution<int>(lo, hi)(rd);
}

// The uninterrupted run the interrupted ones must match: AdamW with warm-up, cosine decay,
// clipping and shuffling, so that every piece of state must come back.
const char* kTrainOpts =
    "--optimizer adamw --lr 0.01 --weight-decay 0.01 --warmup-steps 3 --lr-decay cosine --clip-norm 1 --shuffle --seed 5";
constexpr int kResumeSteps = 16;

}  // namespace

TEST_CASE("srun, smp-run in an allocation and smp-run --hostfile train across 2 hosts like one process") {
  auto dir = work_dir("train");
  struct Config {
    int p, d;
  };
  for (const std::string model : {"mlp", "gpt"}) {
    fs::path single_plan = make_plan(dir, model, 1, 1);
    auto single = test::sh(smp_run(single_plan, fmt::format("--steps {} --losses {}", kSteps, (dir / "single.txt").string())));
    INFO(single.out);
    REQUIRE(single.exit_code == 0);
    const std::vector<double> want = test::read_losses(dir / "single.txt");
    REQUIRE(want.size() == kSteps);
    for (Config c : {Config{2, 1}, Config{4, 1}, Config{2, 2}}) {
      fs::path plan = make_plan(dir, model, c.p, c.d);
      const std::vector<std::string> hosts = planned_hosts(plan);
      REQUIRE(std::set<std::string>(hosts.begin(), hosts.end()).size() == 2);
      const int ranks = c.p * c.d;
      std::vector<std::pair<std::string, std::string>> ways = {
          {"mpirun --hostfile", smp_run(plan, "--hostfile " + hostfile())},
          {"smp-run in salloc -N2", "salloc -N2 " + smp_run(plan, "")},
      };
      // srun by hand, one task per rank: its block distribution is the plan's placement when the
      // plan keeps each replica's pipeline neighbours together.
      if (c.d == 1) ways.push_back({"srun smp-run", fmt::format("salloc -N2 --ntasks-per-node={} srun ", ranks / 2) + smp_run(plan, "")});
      for (const auto& [how, cmd] : ways) {
        std::string label = fmt::format("{} (p={}, d={}) by {}", model, c.p, c.d, how);
        INFO(label);
        fs::path losses = dir / "losses.txt", summary = dir / "summary.json";
        fs::remove(losses);
        fs::remove(summary);
        auto r = test::sh(fmt::format("{} --steps {} --losses {} --summary-json {}", cmd, kSteps, losses.string(), summary.string()));
        INFO(r.out);
        REQUIRE(r.exit_code == 0);
        CHECK(r.out.find("note:") == std::string::npos);  // every rank where the plan puts it
        for (const auto& l : own_lines(r.out)) CHECK(l.empty());  // --quiet: nothing else
        const std::vector<double> got = test::read_losses(losses);
        REQUIRE(got.size() == kSteps);
        for (int k = 0; k < kSteps; ++k) {
          INFO("step ", k + 1, ": ", got[k], " across hosts, ", want[k], " in one process");
          CHECK(std::fabs(got[k] - want[k]) <= 1e-4 * std::fabs(want[k]));
        }
        // The stages ran on the hosts the plan put them on (replica 0's ranks report).
        json s = read_json(summary);
        for (const auto& st : s["stages"]) {
          INFO("stage ", st["index"]);
          CHECK(st["host"].get<std::string>() == hosts.at(st["rank"].get<size_t>()));
        }
        MESSAGE(label, ": last loss ", got.back(), " (one process: ", want.back(), ")");
      }
    }
  }
  fs::remove_all(dir);
}

TEST_CASE("a worker killed with -9 on the second host: rank, stage and host named, nothing left anywhere") {
  auto dir = work_dir("kill");
  fs::path plan = make_plan(dir, "gpt", 4, 1);
  const std::vector<std::string> hosts = planned_hosts(plan);
  const int victim_rank = 3;
  REQUIRE(hosts[victim_rank] == g_hosts.at(1));
  for (const std::string how : {"hostfile", "srun"}) {
    INFO(how);
    fs::path metrics = dir / ("metrics-" + how);
    std::string cmd = smp_run(plan, fmt::format("--steps 100000 --metrics {}", metrics.string()));
    if (how == "hostfile") cmd += " --hostfile " + hostfile();
    else cmd = "salloc -N2 " + cmd;
    Background job(cmd, dir / ("log-" + how));
    REQUIRE(wait_steps(metrics, 2, job));
    const char* rank_var = how == "hostfile" ? "OMPI_COMM_WORLD_RANK=" : "SLURM_PROCID=";
    int victim = -1;
    for (const auto& p : host_procs(g_hosts[1]))
      if (p.cmdline.find(plan.string()) != std::string::npos &&
          p.environ.find(std::string("\n") + rank_var + std::to_string(victim_rank) + "\n") != std::string::npos)
        victim = p.pid;
    REQUIRE(victim > 0);
    auto t0 = std::chrono::steady_clock::now();
    ::kill(victim, SIGKILL);
    const int rc = job.wait(60);
    const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const std::string out = job.output();
    INFO(out);
    // Ended by itself (wait gives -1 after 60 s), non-zero. How fast is printed, not asserted (tests
    // never assert on time: on a loaded machine salloc alone takes seconds to give the nodes back);
    // docs/multi-host.md gives the measured times.
    REQUIRE(rc != -1);
    CHECK(rc != 0);
    const auto lines = own_lines(out);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == fmt::format("error: rank {} (stage {}, host {}): the worker died (killed by signal 9); the job was stopped",
                                  victim_rank, victim_rank, g_hosts[1]));
    MESSAGE(how, ": smp-run exited ", took, " s after the kill");
    CHECK(smp_left(plan).empty());
    for (const auto& h : g_hosts)
      for (const auto& p : host_procs(h)) {
        INFO(h, ": ", p.cmdline);
        CHECK(p.cmdline.find("smp-run") == std::string::npos);
        CHECK(p.cmdline.find("orted") == std::string::npos);
      }
  }
  fs::remove_all(dir);
}

TEST_CASE("SIGTERM and SIGINT at a random step: the step finishes, a checkpoint, one line; --resume ends bit-identical") {
  auto dir = work_dir("stop");
  fs::path plan = make_plan(dir, "gpt", 2, 2);
  // The uninterrupted run.
  auto ref = test::sh(smp_run(plan, fmt::format("--steps {} {} --checkpoint-dir {} --hostfile {}", kResumeSteps, kTrainOpts,
                                                (dir / "ref").string(), hostfile())));
  INFO(ref.out);
  REQUIRE(ref.exit_code == 0);
  REQUIRE(train::latest_checkpoint(dir / "ref") == kResumeSteps);
  const int stages = 2;

  for (int sig : {SIGTERM, SIGINT}) {
    const int at = random_step(2, kResumeSteps - 6);
    std::string label = fmt::format("{} after step {} (mpirun --hostfile)", sig == SIGTERM ? "SIGTERM" : "SIGINT", at);
    INFO(label);
    const fs::path ck = dir / fmt::format("ck-{}", sig), metrics = dir / fmt::format("metrics-{}", sig);
    const std::string args = fmt::format("--steps {} {} --checkpoint-dir {} --metrics {} --hostfile {}", kResumeSteps, kTrainOpts,
                                         ck.string(), metrics.string(), hostfile());
    Background job(smp_run(plan, args), dir / fmt::format("log-{}", sig));
    REQUIRE(wait_steps(metrics, at, job));
    ::kill(job.pid(), sig);
    const int rc = job.wait(120);
    const std::string out = job.output();
    INFO(out);
    CHECK(rc == 128 + sig);
    const auto latest = train::latest_checkpoint(ck);
    REQUIRE(latest.has_value());
    CHECK(*latest >= at);
    CHECK(*latest < kResumeSteps);
    CHECK(lines_in(metrics) == *latest);  // the step in progress finished, no other began
    const auto lines = own_lines(out);
    REQUIRE(lines.size() == 1);
    CHECK(lines[0] == fmt::format("interrupted at step {}; checkpoint {} (resume with --resume)", *latest,
                                  train::step_dir(ck, *latest).string()));
    auto resumed = test::sh(smp_run(plan, args + " --resume"));
    INFO(resumed.out);
    REQUIRE(resumed.exit_code == 0);
    CHECK(lines_in(metrics) == kResumeSteps);
    check_same_weights(dir / "ref", ck, kResumeSteps, stages);
    MESSAGE(label, ": stopped at step ", *latest, ", resumed to ", kResumeSteps, " bit-identically");
  }

  // Runs that Slurm signals last kSlurmSteps, not kResumeSteps: a signal reaches smp-run through
  // slurmctld and slurmd some steps after it is sent (up to 16 seen on a loaded machine; 7 were
  // enough for srun's run of kResumeSteps to finish first), and it must still find the run going.
  // Their own uninterrupted run is the reference.
  constexpr int kSlurmSteps = 64;
  const fs::path slurm_ref = dir / "ref-slurm";
  {
    auto slurm_ref_run = test::sh(smp_run(plan, fmt::format("--steps {} {} --checkpoint-dir {} --hostfile {}",
                                                            kSlurmSteps, kTrainOpts, slurm_ref.string(), hostfile())));
    INFO(slurm_ref_run.out);
    REQUIRE(slurm_ref_run.exit_code == 0);
  }
  {
    // The batch script of the documentation (docs/slurm-train.sbatch), running this plan: smp-run
    // started once, Slurm's signals passed on by the batch shell. First a requeue (SIGTERM to
    // every process of the job, as a preemption), then the time limit's warning (SIGUSR1 to the
    // batch shell, which requeues the job itself), each after a random step; the second one must
    // still find the job running.
    const fs::path ck = dir / "ck-requeue", metrics = dir / "metrics-requeue", log = dir / "job.log";
    const std::string run = smp_run(plan, fmt::format("--steps {} {} --checkpoint-dir {} --metrics {}", kSlurmSteps,
                                                      kTrainOpts, ck.string(), metrics.string()));
    const std::string example = read_file(test::src("docs/slurm-train.sbatch"));
    const std::string script_text = std::regex_replace(example, std::regex(R"(smp-run plan\.json[^&]*&)"),
                                                       run + " ${SLURM_RESTART_COUNT:+--resume} &");
    REQUIRE(script_text != example);
    const fs::path script = dir / "job.sh";
    write_file_atomic(script, script_text);
    auto sub = test::sh(fmt::format("sbatch --parsable --output {} --chdir {} {}", log.string(), dir.string(), script.string()));
    INFO(sub.out);
    REQUIRE(sub.exit_code == 0);
    const std::string job = split_lines(sub.out).back();
    // The job's state from slurmctld ("?" when it did not answer). Not squeue: between a requeue
    // and the job's return to the queue, squeue can show nothing, which read as "finished".
    std::string states;  // every change of state seen, for the failure message
    auto job_state = [&] {
      auto q = test::sh("scontrol show job -o " + job);
      std::smatch st;
      std::string s = "?";
      if (q.exit_code == 0 && std::regex_search(q.out, st, std::regex(R"(JobState=(\S+).*Reason=(\S+))")))
        s = st[1].str() + "(" + st[2].str() + ")";
      if (states.size() < s.size() || states.compare(states.size() - s.size(), s.size(), s) != 0) states += " " + s;
      return s.substr(0, s.find('('));
    };
    INFO("job states: ", states);
    // Finished for good; CANCELLED is left out, since a job being requeued passes through it.
    auto job_done = [&] {
      const std::string s = job_state();
      return s == "COMPLETED" || s == "FAILED" || s == "TIMEOUT" || s == "NODE_FAIL" || s == "OUT_OF_MEMORY" ||
             s == "BOOT_FAIL" || s == "DEADLINE";
    };
    // Slurm holds a requeued job back for a while (its credential expiry): it is released after
    // 2 s pending. Not at once: slurmd refuses a job whose new credential was made in the same
    // second as the previous run's was revoked ("Killing non-startable batch job: Job credential
    // revoked"), and the job ends FAILED.
    auto release_until = [&](const std::function<bool()>& done) {
      auto pending_since = std::chrono::steady_clock::time_point::max();
      for (int i = 0; i < 900; ++i) {
        if (done()) return true;
        const auto now = std::chrono::steady_clock::now();
        if (job_state() != "PENDING")
          pending_since = std::chrono::steady_clock::time_point::max();
        else if (pending_since == std::chrono::steady_clock::time_point::max())
          pending_since = now;
        else if (now - pending_since > std::chrono::seconds(2))
          test::sh("scontrol update JobId=" + job + " StartTime=now");
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
      return false;
    };
    const int at1 = random_step(2, 5);
    REQUIRE(release_until([&] { return lines_in(metrics) >= at1; }));
    auto rq = test::sh("scontrol requeue " + job);
    INFO(rq.out);
    REQUIRE(rq.exit_code == 0);
    std::smatch m;
    const std::regex interrupted(R"(interrupted at step (\d+); checkpoint (\S+) \(resume with --resume\))");
    REQUIRE(release_until([&] {
      const std::string out = read_file(log);
      return out.find("smp-run exit 143") != std::string::npos && std::regex_search(out, m, interrupted);
    }));
    const int stopped1 = std::stoi(m[1].str());
    CHECK(stopped1 >= at1);
    CHECK(m[2].str() == train::step_dir(ck, stopped1).string());
    const int at2 = stopped1 + random_step(2, 4);
    REQUIRE(release_until([&] { return lines_in(metrics) >= at2; }));
    auto sig = test::sh("scancel --batch --signal=USR1 " + job);
    INFO(sig.out);
    REQUIRE(sig.exit_code == 0);
    REQUIRE(release_until(job_done));
    const std::string out = read_file(log);
    INFO(out);
    std::vector<int> stops;
    for (std::sregex_iterator it(out.begin(), out.end(), interrupted), e; it != e; ++it) stops.push_back(std::stoi((*it)[1].str()));
    REQUIRE(stops.size() == 2);
    CHECK(stops[1] >= at2);
    CHECK(out.find("smp-run exit 138") != std::string::npos);
    CHECK(out.find("smp-run exit 0") != std::string::npos);
    CHECK(lines_in(metrics) == kSlurmSteps);
    check_same_weights(slurm_ref, ck, kSlurmSteps, stages);
    MESSAGE("Slurm job: requeued after step ", at1, " (stopped at ", stops[0], "), time limit's warning after step ", at2,
            " (stopped at ", stops[1], "), resumed bit-identically");
  }

  {
    // srun smp-run, one task per rank, signalled by Slurm (scancel --signal=TERM, as before a
    // time limit with --signal=TERM@...): rank 0 says where it stopped, srun exits 143.
    const int at = random_step(2, 8);
    INFO("srun smp-run, SIGTERM from Slurm after step ", at);
    const fs::path ck = dir / "ck-srun", metrics = dir / "metrics-srun";
    const std::string args =
        fmt::format("--steps {} {} --checkpoint-dir {} --metrics {}", kSlurmSteps, kTrainOpts, ck.string(), metrics.string());
    // Replica-major placement needs the cyclic distribution by hand.
    const std::vector<std::string> hosts = planned_hosts(plan);
    const std::string dist = hosts[0] == hosts[1] ? "block" : "cyclic";
    const std::string srun = fmt::format("salloc -N2 --ntasks-per-node=2 --job-name=smp-srun-stop srun --distribution={} ", dist);
    Background job(srun + smp_run(plan, args), dir / "log-srun");
    REQUIRE(wait_steps(metrics, at, job));
    auto sc = test::sh("scancel --signal=TERM --name=smp-srun-stop");
    INFO(sc.out);
    const int rc = job.wait(120);
    const std::string out = job.output();
    INFO(out);
    CHECK(rc == 143);
    const auto latest = train::latest_checkpoint(ck);
    REQUIRE(latest.has_value());
    CHECK(*latest >= at);
    CHECK(*latest < kSlurmSteps);
    CHECK(out.find(fmt::format("interrupted at step {}; checkpoint {} (resume with --resume)", *latest,
                               train::step_dir(ck, *latest).string())) != std::string::npos);
    CHECK(out.find("note:") == std::string::npos);
    auto resumed = test::sh(srun + smp_run(plan, args + " --resume"));
    INFO(resumed.out);
    REQUIRE(resumed.exit_code == 0);
    CHECK(lines_in(metrics) == kSlurmSteps);
    check_same_weights(slurm_ref, ck, kSlurmSteps, stages);
    MESSAGE("srun smp-run: SIGTERM from Slurm after step ", at, ", stopped at step ", *latest, ", resumed to ", kSlurmSteps,
            " bit-identically");
  }
  fs::remove_all(dir);
}

int main(int argc, char** argv) {
  const char* d = std::getenv("SMP_TEST_HOSTS_DIR");
  if (!d || !fs::exists(fs::path(d) / "env")) {
    std::fprintf(stderr, "skipped: no test hosts (scripts/test-hosts.sh up did not make them here)\n");
    return 77;
  }
  g_hosts_dir = d;
  // The hosts' environment: SLURM_CONF, Open MPI's rsh agent and loopback-only settings.
  std::istringstream env(read_file(g_hosts_dir / "env"));
  for (std::string l; std::getline(env, l);) {
    if (l.rfind("export ", 0) != 0) continue;
    const auto eq = l.find('=');
    std::string k = l.substr(7, eq - 7), v = l.substr(eq + 1);
    if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
    ::setenv(k.c_str(), v.c_str(), 1);
  }
  std::istringstream names(std::getenv("SMP_TEST_HOSTS") ? std::getenv("SMP_TEST_HOSTS") : "");
  for (std::string h; names >> h;) g_hosts.push_back(h);
  if (g_hosts.size() < 2) {
    std::fprintf(stderr, "%s/env names %zu test hosts; 2 are needed\n", d, g_hosts.size());
    return 1;
  }
  doctest::Context ctx(argc, argv);
  return ctx.run();
}
