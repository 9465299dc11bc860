// The MPI communicator and the launcher, on real processes started by mpirun.
#include "test_process.hpp"

#include <doctest/doctest.h>

#include "comm/launch.hpp"
#include "core/io.hpp"

#include <fmt/format.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <sys/wait.h>
#include <unistd.h>

using namespace smp;

namespace {

using Run = test::CmdResult;

std::string quote(const std::string& s) { return "'" + s + "'"; }

const std::string kWorker = std::string(SMP_BIN_DIR) + "/../tests/comm/comm_worker";

// Runs the worker under the launcher's mpirun command line (or smp's local launcher, no MPI),
// capturing its output.
Run launch(int ranks, const std::string& mode, bool local = false) {
  TempDir session("smp-test-comm");  // Open MPI's session files: other suites run mpirun at once
  comm::MpirunOptions o;
  o.ranks = ranks;
  o.session_dir = session.path().string();
  comm::Command c = local ? comm::local_command(ranks, kWorker, kWorker, {mode}) : comm::mpirun_command(o, kWorker, {mode});
  std::string cmd;
  for (const auto& [k, v] : c.env) cmd += k + "=" + quote(v) + " ";
  for (const auto& a : c.argv) cmd += quote(a) + " ";
  // A hang must fail the test, not stall the suite; -v says so ("timeout: sending signal").
  return test::run_cmd("timeout -v -k 5 120 env " + cmd);
}

int count(const std::string& s, const std::string& what) {
  int k = 0;
  for (size_t pos = s.find(what); pos != std::string::npos; pos = s.find(what, pos + 1)) ++k;
  return k;
}

}  // namespace

TEST_CASE("the launcher's mpirun command runs as root, oversubscribed, unpinned") {
  comm::MpirunOptions o;
  o.ranks = 16;
  o.cores = 2;
  auto c = comm::mpirun_command(o, "/bin/true", {"a", "b"});
  std::string line;
  for (const auto& a : c.argv) line += a + " ";
  CHECK(line.find(" -n 16 ") != std::string::npos);
  CHECK(line.find("--oversubscribe") != std::string::npos);
  CHECK(line.find("--bind-to none") != std::string::npos);
  CHECK(line.find("/bin/true a b") != std::string::npos);
  o.hostfile = "hosts.txt";
  auto h = comm::mpirun_command(o, "/bin/true", {});
  line.clear();
  for (const auto& a : h.argv) line += a + " ";
  CHECK(line.find("--hostfile hosts.txt") != std::string::npos);
  CHECK(line.find("--oversubscribe") == std::string::npos);
}

TEST_CASE("without cross-memory attach the shared-memory transport copies and sends eagerly up to 1 MiB") {
  for (const char* v : {"OMPI_MCA_btl_vader_single_copy_mechanism", "OMPI_MCA_btl_vader_eager_limit",
                        "OMPI_MCA_btl_vader_max_send_size"})
    ::unsetenv(v);
  comm::MpirunOptions o;
  o.ranks = 2;
  auto joined = [](const comm::Command& c) {
    std::string line;
    for (const auto& a : c.argv) line += a + " ";
    return line;
  };
  o.cross_memory_attach = 0;
  std::string none = joined(comm::mpirun_command(o, "/bin/true", {}));
  CHECK(none.find("btl_vader_single_copy_mechanism none") != std::string::npos);
  CHECK(none.find("btl_vader_eager_limit 1048576") != std::string::npos);
  o.cross_memory_attach = 1;
  std::string cma = joined(comm::mpirun_command(o, "/bin/true", {}));
  CHECK(cma.find("single_copy_mechanism") == std::string::npos);
  CHECK(cma.find("eager_limit") == std::string::npos);
  // The detection gives the same answer twice (remembered) and does not leave children behind.
  bool first = comm::cross_memory_attach_works();
  CHECK(comm::cross_memory_attach_works() == first);
  CHECK(::waitpid(-1, nullptr, WNOHANG) < 0);
}

TEST_CASE("run_command passes the child's stderr through, without the lines it is told to drop") {
  CHECK(comm::is_dead_peer_read_error("[vm:23807] Read -1, expected 327680, errno = 3\n"));
  CHECK(comm::is_dead_peer_read_error("[host-7:12] Read 0, expected 4096, errno = 3"));
  CHECK(!comm::is_dead_peer_read_error("[vm:23807] Read -1, expected 327680, errno = 1\n"));  // not a vanished peer
  CHECK(!comm::is_dead_peer_read_error("error: rank 1 (stage 1): the worker died (killed by signal 9)\n"));
  CHECK(!comm::is_dead_peer_read_error("Read -1, expected 327680, errno = 3\n"));
  // The child's stderr, captured here through a file in place of this process's stderr.
  char path[] = "/tmp/smp_stderr_XXXXXX";
  int fd = ::mkstemp(path);
  REQUIRE(fd >= 0);
  std::fflush(stderr);
  int saved = ::dup(2);
  ::dup2(fd, 2);
  comm::Command c;
  c.argv = {"/bin/sh", "-c",
            "echo first >&2; echo '[vm:1] Read -1, expected 32, errno = 3' >&2; echo out; printf 'no newline' >&2; exit 3"};
  c.filter_stderr = [](std::string_view l) { return comm::is_dead_peer_read_error(l) ? std::string() : std::string(l); };
  int rc = comm::run_command(c);
  std::fflush(stderr);
  ::dup2(saved, 2);
  ::close(saved);
  ::close(fd);
  std::FILE* f = std::fopen(path, "r");
  REQUIRE(f != nullptr);
  std::string got;
  for (int ch; (ch = std::fgetc(f)) != EOF;) got += static_cast<char>(ch);
  std::fclose(f);
  std::remove(path);
  CHECK(rc == 3);
  CHECK(got == "first\nno newline");
}

// Each behaviour under mpirun (MPI) and under smp's local launcher (sockets, no MPI).
TEST_CASE("point-to-point messages arrive intact and in order between real processes") {
  for (bool local : {false, true}) {
    Run r = launch(4, "ring", local);
    INFO(local, r.out);
    CHECK(r.exit_code == 0);
    CHECK(count(r.out, "ok ") == 4);
  }
}

TEST_CASE("messages that arrive before their receive is posted are held, per tag and in order") {
  for (bool local : {false, true}) {
    Run r = launch(2, "unexpected", local);
    INFO(local, r.out);
    CHECK(r.exit_code == 0);
    CHECK(count(r.out, "ok ") == 2);
  }
}

TEST_CASE("all-reduce sums within groups and over the world") {
  for (bool local : {false, true}) {
    Run r = launch(4, "allreduce", local);
    INFO(local, r.out);
    CHECK(r.exit_code == 0);
    CHECK(count(r.out, "ok ") == 4);
  }
}

TEST_CASE("a peer that never sends is reported by a timeout naming it, not waited for") {
  for (bool local : {false, true}) {
    Run r = launch(2, "silent-peer", local);
    INFO(local, r.out);
    CHECK(r.exit_code != 0);
    CHECK(r.out.find("error: rank 1: no progress with rank 0 for 2 s while waiting for activation of stage 1, "
                     "microbatch 0") != std::string::npos);
  }
}

TEST_CASE("a message of the wrong size is a failure naming the sender") {
  for (bool local : {false, true}) {
    Run r = launch(2, "size-mismatch", local);
    INFO(local, r.out);
    CHECK(r.exit_code != 0);
    CHECK(r.out.find("rank 0 sent 8 bytes where 16 were expected") != std::string::npos);
  }
}

// The survivors wait for the dead rank with a timeout of an hour: only the launcher's own
// detection of the death ends the job before launch()'s 120 s guard (no wall-clock assertion).
TEST_CASE("a rank killed with SIGKILL ends the whole job, not the survivors' timeout") {
  for (bool local : {false, true}) {
    Run r = launch(3, "die", local);
    INFO(local, r.out);
    CHECK(r.exit_code != 0);
    CHECK(count(r.out, "ok ") == 0);
    CHECK(r.out.find("timeout: sending signal") == std::string::npos);  // launch()'s guard did not end it
    CHECK(r.out.find("no progress") == std::string::npos);              // nor a survivor's timeout
    if (local) {
      // The supervisor names the rank (the survivors, which see its connection close, are ended).
      CHECK(r.out.find("smp-local: rank 1 (pid ") != std::string::npos);
      CHECK(r.out.find("exited on signal 9") != std::string::npos);
    }
  }
}

TEST_CASE("launch detection reads the launcher's environment") {
  ::setenv("OMPI_COMM_WORLD_RANK", "3", 1);
  ::setenv("OMPI_COMM_WORLD_SIZE", "8", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_RANK", "1", 1);
  ::setenv("OMPI_COMM_WORLD_LOCAL_SIZE", "4", 1);
  auto li = comm::detect_launch();
  CHECK(li.launcher == "mpirun");
  CHECK(li.rank == 3);
  CHECK(li.size == 8);
  CHECK(li.local_rank == 1);
  CHECK(li.local_size == 4);
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK",
                        "OMPI_COMM_WORLD_LOCAL_SIZE"})
    ::unsetenv(v);
  ::setenv("SLURM_PROCID", "5", 1);
  ::setenv("SLURM_NTASKS", "6", 1);
  ::setenv("SLURM_STEP_ID", "0", 1);
  li = comm::detect_launch();
  CHECK(li.launcher == "srun");
  CHECK(li.rank == 5);
  CHECK(li.size == 6);
  for (const char* v : {"SLURM_PROCID", "SLURM_NTASKS", "SLURM_STEP_ID"}) ::unsetenv(v);
  CHECK_FALSE(comm::detect_launch().under_launcher());
}
