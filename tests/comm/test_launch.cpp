// The launcher's pieces that need no MPI job: host lists and hostfiles, placing a plan's ranks on
// hosts, the srun / mpirun command lines, reading how workers ended from the launcher's stderr,
// and stop requests passed on to the child.
#include "comm/job_monitor.hpp"
#include "comm/launch.hpp"
#include "core/error.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <thread>

#include <unistd.h>

using namespace smp;
namespace fs = std::filesystem;

namespace {

std::string joined(const comm::Command& c) {
  std::string line;
  for (const auto& a : c.argv) line += a + " ";
  return line;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    CHECK(e.kind() == ErrorKind::BadInput);
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("Slurm host lists and per-node counts expand in order") {
  using V = std::vector<std::string>;
  CHECK(comm::expand_hostlist("node[01-03,07],gpu5") == V{"node01", "node02", "node03", "node07", "gpu5"});
  CHECK(comm::expand_hostlist("a[1-2]b[3-4]") == V{"a1b3", "a1b4", "a2b3", "a2b4"});
  CHECK(comm::expand_hostlist("smphost[1-2]") == V{"smphost1", "smphost2"});
  CHECK(comm::expand_hostlist("single") == V{"single"});
  CHECK(error_of([] { comm::expand_hostlist("n[1-"); }).find("'[' without ']'") != std::string::npos);
  CHECK(error_of([] { comm::expand_hostlist("n[3-1]"); }).find("bad range") != std::string::npos);
  CHECK(comm::expand_counts("2(x3),1") == std::vector<int>{2, 2, 2, 1});
  CHECK(comm::expand_counts("4") == std::vector<int>{4});
  CHECK(error_of([] { comm::expand_counts("two"); }).find("SLURM_JOB_CPUS_PER_NODE: 'two' is not N or N(xK)") == 0);
}

TEST_CASE("an Open MPI hostfile: names, slots, comments; a bad line is named") {
  const fs::path f = fs::temp_directory_path() / ("smp_hostfile_" + std::to_string(::getpid()));
  {
    std::ofstream out(f);
    out << "# the test hosts\n\nsmphost1 slots=2  # first\nsmphost2 slots=4 max_slots=8\nsmphost1 slots=1\nother\n";
  }
  auto hosts = comm::read_hostfile(f.string());
  REQUIRE(hosts.size() == 3);
  CHECK(hosts[0].name == "smphost1");
  CHECK(hosts[0].slots == 3);
  CHECK(hosts[1].slots == 4);
  CHECK(hosts[2].name == "other");
  CHECK(hosts[2].slots == 0);
  {
    std::ofstream out(f);
    out << "a slots=2\nb slots=0\n";
  }
  CHECK(error_of([&] { comm::read_hostfile(f.string()); }) == f.string() + ":2: slots=0: not a positive count");
  fs::remove(f);
  CHECK(error_of([&] { comm::read_hostfile(f.string()); }).find("cannot read the hostfile") != std::string::npos);
}

TEST_CASE("the plan's hosts, in the order of their devices, run on the given hosts in order") {
  // A replica-major (2, 2) plan on 2 hosts x 2 devices: rank q runs on device r * 2 + replica.
  std::vector<comm::PlannedRank> ranks = {{"node-0", 0}, {"node-1", 2}, {"node-0", 1}, {"node-1", 3}};
  std::vector<comm::HostSlots> hosts = {{"a", 2}, {"b", 0}, {"c", 1}};
  auto p = comm::place_ranks(ranks, hosts, "hosts.txt");
  CHECK(p.host_of_rank == std::vector<std::string>{"a", "b", "a", "b"});
  CHECK(p.plan_hosts == 2);
  CHECK(p.hosts_given == 3);
  // The host named first in the plan file is not necessarily its first: devices decide.
  std::vector<comm::PlannedRank> backwards = {{"node-1", 1}, {"node-0", 0}};
  CHECK(comm::place_ranks(backwards, hosts, "x").host_of_rank == std::vector<std::string>{"b", "a"});
  CHECK(error_of([&] { comm::place_ranks(ranks, {{"a", 0}}, "hosts.txt"); }) ==
        "hosts.txt: the plan places its 4 ranks on 2 hosts, 1 is given (give as many hosts, or plan for these with a "
        "cluster description of them (smp-plan --cluster))");
  CHECK(error_of([&] { comm::place_ranks(ranks, {{"a", 1}, {"b", 2}}, "hosts.txt"); })
            .find("the plan puts 2 ranks on its host node-0, which runs on a with 1 slot(s)") != std::string::npos);
  // Slurm's CPU counts are no limit (srun --overcommit).
  CHECK(comm::place_ranks(ranks, {{"a", 1}, {"b", 1}}, "SLURM_JOB_NODELIST", false).host_of_rank.size() == 4);
}

TEST_CASE("srun places each rank by a hostfile; mpirun's seq mapper does the same") {
  ::setenv("SRUN", "/usr/bin/srun", 1);
  ::unsetenv("SLURM_MPI_TYPE");
  comm::SrunOptions so;
  so.ranks = 4;
  so.nodes = 2;
  so.rank_hostfile = "/x/rank-hosts";
  so.overcommit = true;
  auto c = comm::srun_command(so, "/bin/prog", {"plan.json"});
  const std::string line = joined(c);
  CHECK(line.find("/usr/bin/srun --ntasks 4 --nodes 2 --distribution=arbitrary --kill-on-bad-exit=1") == 0);
  CHECK(line.find("--mpi=pmix") != std::string::npos);
  CHECK(line.find("--overcommit") != std::string::npos);
  CHECK(line.find("/bin/prog plan.json") != std::string::npos);
  CHECK(c.env.at("SLURM_HOSTFILE") == "/x/rank-hosts");
  CHECK(std::find(c.unset_env.begin(), c.unset_env.end(), "SLURM_NTASKS_PER_NODE") != c.unset_env.end());
  ::setenv("SLURM_MPI_TYPE", "pmix_v4", 1);
  CHECK(joined(comm::srun_command(so, "/bin/prog", {})).find("--mpi=") == std::string::npos);
  ::unsetenv("SLURM_MPI_TYPE");
  ::unsetenv("SRUN");

  comm::MpirunOptions mo;
  mo.ranks = 4;
  mo.hostfile = "/x/rank-hosts";
  mo.sequential = true;
  mo.quiet = false;
  mo.session_dir = "/x/session";
  const std::string m = joined(comm::mpirun_command(mo, "/bin/prog", {}));
  CHECK(m.find("--hostfile /x/rank-hosts --mca rmaps seq") != std::string::npos);
  CHECK(m.find(" -q ") == std::string::npos);
  CHECK(m.find("orte_tmpdir_base") == std::string::npos);  // on several hosts: Open MPI's own

  // One machine: the job's own session directory, unless the user chose one.
  comm::MpirunOptions one;
  one.ranks = 2;
  one.session_dir = "/x/session";
  CHECK(joined(comm::mpirun_command(one, "/bin/prog", {})).find("--mca orte_tmpdir_base /x/session /bin/prog") != std::string::npos);
  ::setenv("OMPI_MCA_orte_tmpdir_base", "/mine", 1);
  CHECK(joined(comm::mpirun_command(one, "/bin/prog", {})).find("orte_tmpdir_base") == std::string::npos);
  ::unsetenv("OMPI_MCA_orte_tmpdir_base");
}

TEST_CASE("a Slurm task's local size comes from SLURM_STEP_TASKS_PER_NODE at its node") {
  const std::map<std::string, std::string> env = {{"SLURM_PROCID", "3"},     {"SLURM_STEP_ID", "0"},
                                                   {"SLURM_NTASKS", "4"},     {"SLURM_LOCALID", "0"},
                                                   {"SLURM_NODEID", "1"},     {"SLURM_STEP_TASKS_PER_NODE", "3,1"}};
  for (const char* k : {"OMPI_COMM_WORLD_RANK", "SLURM_NTASKS_PER_NODE"}) ::unsetenv(k);
  for (const auto& [k, v] : env) ::setenv(k.c_str(), v.c_str(), 1);
  auto li = comm::detect_launch();
  CHECK(li.launcher == "srun");
  CHECK(li.rank == 3);
  CHECK(li.size == 4);
  CHECK(li.local_size == 1);
  ::setenv("SLURM_NODEID", "0", 1);
  CHECK(comm::detect_launch().local_size == 3);
  for (const auto& [k, v] : env) ::unsetenv(k.c_str());
}

TEST_CASE("the job monitor reads the workers' status lines and mpirun's notices, and passes the rest") {
  comm::JobMonitor m(4, "tok");
  auto feed = [&](const std::string& text) {
    std::string shown;
    size_t at = 0;
    while (at < text.size()) {
      size_t nl = text.find('\n', at);
      shown += m.filter(std::string_view(text).substr(at, nl - at + 1));
      at = nl + 1;
    }
    return shown;
  };
  for (int r = 0; r < 4; ++r) CHECK(feed(comm::status_line("tok", r, "hello smphost" + std::to_string(1 + r / 2) + " 4" + std::to_string(r))).empty());
  CHECK(m.all_started());
  CHECK(feed(comm::status_line("tok", 2, "running 2")).empty());
  CHECK(feed(comm::status_line("tok", 3, "error rank 3: bad\nthing")).empty());
  CHECK(feed(comm::status_line("tok", 1, "interrupted 7 15")).empty());
  CHECK(feed(comm::status_line("tok", 0, "done")).empty());
  // Another launch's status lines (another token) are not ours.
  const std::string foreign = comm::status_line("other", 0, "done");
  CHECK(feed(foreign) == foreign);
  auto ws = m.workers();
  CHECK(ws[2].host == "smphost2");
  CHECK(ws[2].pid == 42);
  CHECK(ws[2].state == "running");
  CHECK(ws[2].stages == "2");
  CHECK(ws[3].state == "error");
  CHECK(ws[3].detail == "rank 3: bad thing");
  CHECK(ws[1].state == "interrupted");
  CHECK(ws[1].step == 7);
  CHECK(ws[1].signal == 15);
  CHECK(ws[0].ended());
  CHECK(!m.all_ended());

  // Open MPI 4.1's output when rank 2 on smphost2 was killed (as mpirun printed it here).
  const std::string dashes(74, '-');
  const std::string noise = dashes + "\nAn MPI communication peer process has unexpectedly disconnected.  This\n" +
                            "usually indicates a failure in the peer process.\n\n  Local host: smphost1\n" + dashes + "\n";
  CHECK(feed(noise).empty());
  CHECK(feed(dashes + "\nPrimary job  terminated normally, but 1 process returned\n"
                      "a non-zero exit code. Per user-direction, the job has been aborted.\n" + dashes + "\n")
            .empty());
  CHECK(feed(dashes + "\nmpirun noticed that process rank 2 with PID 13199 on node smphost2 exited on signal 9 (Killed).\n" +
             dashes + "\n")
            .empty());
  CHECK(feed("[vm:21908] 1 more process has sent help message help-mpi-btl-tcp.txt / client connect fail\n").empty());
  CHECK(feed("mpirun: Forwarding signal 10 to job\n").empty());
  CHECK(feed("[smphost1:77] Read -1, expected 65536, errno = 3\n").empty());
  CHECK(feed("[warn] Epoll MOD(1) on fd 25 failed. Old events were 6; read change was 0 (none); write change was 2 (del); "
             "close change was 0 (none): Bad file descriptor\n")
            .empty());
  CHECK(feed("[vm:08521] plm:rsh: Warning: setpgid(8527,8527) failed in parent with errno=Permission denied(13)\n").empty());
  CHECK(m.held().find("plm:rsh: Warning: setpgid") != std::string::npos);
  CHECK(feed("[vm:08521] plm:rsh: something else went wrong\n") == "[vm:08521] plm:rsh: something else went wrong\n");
  // Open MPI's TCP transport when the peer's end of a socket is gone (as CI's test_hosts printed it
  // under srun), and the same transport's other errors, which pass.
  CHECK(feed("[smphost1][[7044,10220],1][../../../../../../opal/mca/btl/tcp/btl_tcp.c:559:mca_btl_tcp_recv_blocking] "
             "recv(19) failed: Connection reset by peer (104)\n")
            .empty());
  CHECK(feed("[vm][[12,1],0][btl_tcp_frag.c:130:mca_btl_tcp_frag_send] mca_btl_tcp_frag_send: writev failed: Broken pipe (32)\n")
            .empty());
  CHECK(m.held().find("mca_btl_tcp_recv_blocking] recv(19) failed") != std::string::npos);
  CHECK(m.held().find("writev failed: Broken pipe") != std::string::npos);
  const std::string other_tcp = "[vm][[12,1],0][btl_tcp.c:559:mca_btl_tcp_recv_blocking] recv(19) failed: Bad address (14)\n";
  CHECK(feed(other_tcp) == other_tcp);
  CHECK(m.held().find("Epoll MOD(1)") != std::string::npos);
  CHECK(m.held().find("unexpectedly disconnected") != std::string::npos);
  CHECK(m.held().find("1 more process") != std::string::npos);
  auto ends = m.ends();
  REQUIRE(ends.size() == 1);
  CHECK(ends[0].rank == 2);
  CHECK(ends[0].host == "smphost2");
  CHECK(ends[0].signal == 9);

  // A help message it does not know passes whole; so does any other line.
  const std::string slots = dashes + "\nThere are not enough slots available in the system to satisfy the 4\nslots\n" + dashes + "\n";
  CHECK(feed(slots) == slots);
  CHECK(feed("error: rank 3: bad thing\n") == "error: rank 3: bad thing\n");
  // An exit code, and a help message cut off by the end of the stream.
  CHECK(feed(dashes + "\nmpirun detected that one or more processes exited with non-zero status, thus causing\n"
                      "the job to be terminated. The first process to do so was:\n\n  Process name: [[359,1],3]\n"
                      "  Exit code:    2\n" + dashes + "\n")
            .empty());
  CHECK(m.ends().back().rank == 3);
  CHECK(m.ends().back().exit_code == 2);
  CHECK(feed(dashes + "\ncut short\n").empty());
  CHECK(m.filter({}) == dashes + "\ncut short\n");
}

TEST_CASE("the job monitor reads srun's notices: tasks killed or exited, per host") {
  comm::JobMonitor m(4, "t");
  CHECK(m.filter("srun: error: smphost2: task 2: Killed\n").empty());
  CHECK(m.filter("slurmstepd-smphost1: error: *** STEP 2.0 ON smphost1 CANCELLED AT 2026-11-30T00:16:12 ***\n").empty());
  CHECK(m.filter("srun: Job step aborted: Waiting up to 7 seconds for job step to finish.\n").empty());
  CHECK(m.filter("srun: Force Terminated StepId=4.0\n").empty());
  CHECK(m.filter("srun: error: smphost1: tasks 0-1,3: Exited with exit code 1\n").empty());
  CHECK(m.filter("srun: error: smphost1: task 0: Killed\n").empty());  // rank 0 was noticed already
  CHECK(m.filter("srun: error: Unable to create step for job 4: More processors requested than permitted\n") ==
        "srun: error: Unable to create step for job 4: More processors requested than permitted\n");
  auto ends = m.ends();
  REQUIRE(ends.size() == 4);
  CHECK(ends[0].rank == 2);
  CHECK(ends[0].signal == 9);
  CHECK(ends[0].host == "smphost2");
  CHECK(ends[1].rank == 0);
  CHECK(ends[1].exit_code == 1);
  CHECK(ends[3].rank == 3);
  CHECK(m.held().find("CANCELLED") != std::string::npos);
  CHECK(comm::signal_from_description("Segmentation fault") == SIGSEGV);
  CHECK(comm::signal_from_description("Terminated\n") == SIGTERM);
  CHECK(comm::signal_from_description("Exited with exit code 1") == 0);
}

TEST_CASE("the job monitor reads the local launcher's notices") {
  comm::JobMonitor m(3, "t");
  CHECK(m.filter("smp-local: rank 2 (pid 81) on gpu7 exited on signal 9 (Killed)\n").empty());
  CHECK(m.filter("smp-local: rank 0 (pid 80) on gpu7 exited with status 1\n").empty());
  CHECK(m.filter("smp-local: something else\n") == "smp-local: something else\n");
  auto ends = m.ends();
  REQUIRE(ends.size() == 2);
  CHECK(ends[0].rank == 2);
  CHECK(ends[0].signal == 9);
  CHECK(ends[0].host == "gpu7");
  CHECK(ends[1].rank == 0);
  CHECK(ends[1].signal == 0);
  CHECK(ends[1].exit_code == 1);
  // The local launcher's environment.
  ::setenv("SMP_LOCAL_RANK", "2", 1);
  ::setenv("SMP_LOCAL_SIZE", "3", 1);
  auto li = comm::detect_launch();
  CHECK(li.launcher == "local");
  CHECK(li.rank == 2);
  CHECK(li.size == 3);
  CHECK(li.local_size == 3);
  ::unsetenv("SMP_LOCAL_RANK");
  ::unsetenv("SMP_LOCAL_SIZE");
  const comm::Command c = comm::local_command(3, "/opt/smp-run", "/opt/smp-run", {"plan.json", "--steps", "2"});
  CHECK(c.argv == std::vector<std::string>{"/opt/smp-run", "--local-supervisor", "3", "--", "/opt/smp-run", "plan.json", "--steps", "2"});
}

TEST_CASE("a stop request reaches the child as its stop signal once it is ready; a second Ctrl-C stops it") {
  // The child stops on SIGUSR1 (exit 0) and ignores SIGTERM at first, as a worker finishing its
  // step would.
  auto start = [](bool stops) {
    comm::Command c;
    c.argv = {"/bin/sh", "-c", stops ? "trap 'exit 0' USR1; while :; do sleep 0.05; done"
                                     : "trap '' USR1; while :; do sleep 0.05; done"};
    c.stop_signal = SIGUSR1;
    return c;
  };
  for (int sig : {SIGTERM, SIGINT, SIGUSR1}) {
    comm::Command c = start(true);
    std::atomic<bool> polled{false}, ready{false};
    std::vector<int> seen;
    c.stop_ready = [&] { return ready.load(); };
    c.on_signal = [&](int s) { seen.push_back(s); };
    std::atomic<int> rc{-1};
    std::thread t([&] { rc = comm::run_command(c, [&] { polled = true; return false; }); });
    while (!polled) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    ::kill(::getpid(), sig);  // to this process: run_command's handler takes it
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(rc == -1);  // not ready: the child still runs
    ready = true;
    t.join();
    CHECK(rc == 0);
    CHECK(seen == std::vector<int>{sig});
  }
  // A child that does not stop: the second Ctrl-C ends it (SIGTERM).
  comm::Command c = start(false);
  std::atomic<bool> polled{false};
  std::atomic<int> rc{-1};
  std::thread t([&] { rc = comm::run_command(c, [&] { polled = true; return false; }); });
  while (!polled) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ::kill(::getpid(), SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  CHECK(rc == -1);
  ::kill(::getpid(), SIGINT);
  t.join();
  CHECK(rc == 128 + SIGTERM);
}
