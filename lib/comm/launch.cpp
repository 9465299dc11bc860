#include "comm/launch.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace smp::comm {

namespace {

int env_int(const char* name, int dflt) {
  const char* v = std::getenv(name);
  if (!v || !*v) return dflt;
  char* end = nullptr;
  long x = std::strtol(v, &end, 10);
  return (end && *end == '\0') ? static_cast<int>(x) : dflt;
}

bool has_env(const char* name) { return std::getenv(name) != nullptr; }

volatile sig_atomic_t g_child_group = 0;

void forward_signal(int sig) {
  if (g_child_group > 0) ::kill(-g_child_group, sig);
}

}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo li;
  if (has_env("OMPI_COMM_WORLD_RANK")) {
    li.launcher = "mpirun";
    li.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
    li.size = env_int("OMPI_COMM_WORLD_SIZE", 1);
    li.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
    li.local_size = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
  } else if (has_env("SLURM_PROCID") && has_env("SLURM_STEP_ID")) {
    li.launcher = "srun";
    li.rank = env_int("SLURM_PROCID", 0);
    li.size = env_int("SLURM_NTASKS", 1);
    li.local_rank = env_int("SLURM_LOCALID", 0);
    li.local_size = env_int("SLURM_NTASKS_PER_NODE", env_int("SLURM_STEP_NUM_TASKS", li.size));
  } else if (has_env("PMIX_RANK") || has_env("PMI_RANK")) {
    li.launcher = "mpirun";
    li.rank = env_int("PMIX_RANK", env_int("PMI_RANK", 0));
    li.size = env_int("PMI_SIZE", 1);
    li.local_rank = env_int("MPI_LOCALRANKID", 0);
    li.local_size = env_int("MPI_LOCALNRANKS", 1);
  }
  return li;
}

int online_cores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned h = std::thread::hardware_concurrency();
  return h > 0 ? static_cast<int>(h) : 1;
}

std::string find_mpirun() {
  if (const char* m = std::getenv("MPIRUN"); m && *m) return m;
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!dir.empty()) {
      std::filesystem::path cand = std::filesystem::path(dir) / "mpirun";
      if (::access(cand.c_str(), X_OK) == 0) return cand.string();
    }
    if (end == std::string::npos) break;
    start = end + 1;
  }
  throw_failure("mpirun", "not found on PATH", "install openmpi-bin (scripts/install-deps.sh) or set MPIRUN");
}

namespace {
bool try_cross_memory_attach() {
  // Two sibling processes, as two ranks are: A allows any tracer (as Open MPI's shared-memory
  // transport does) and sends B the address of a value; B reads it with process_vm_readv.
  int addr_pipe[2], done_pipe[2];
  if (::pipe(addr_pipe) != 0) return false;
  if (::pipe(done_pipe) != 0) {
    ::close(addr_pipe[0]), ::close(addr_pipe[1]);
    return false;
  }
  static volatile uint64_t probe = 0x5eedf00dcafe1234ULL;
  pid_t a = ::fork();
  if (a == 0) {
#ifdef PR_SET_PTRACER
    ::prctl(PR_SET_PTRACER, PR_SET_PTRACER_ANY, 0, 0, 0);
#endif
    const void* where = const_cast<const uint64_t*>(&probe);
    ssize_t n = ::write(addr_pipe[1], &where, sizeof where);
    char c = 0;
    n = ::read(done_pipe[0], &c, 1);  // stay alive until B has read
    (void)n;
    ::_exit(0);
  }
  bool ok = false;
  ::close(addr_pipe[1]);  // A holds the write end: if it dies before writing, B reads end-of-file
  addr_pipe[1] = -1;
  if (a > 0) {
    pid_t b = ::fork();
    if (b == 0) {
      void* where = nullptr;
      if (::read(addr_pipe[0], &where, sizeof where) != static_cast<ssize_t>(sizeof where)) ::_exit(1);
      uint64_t got = 0;
      iovec local{&got, sizeof got}, remote{where, sizeof got};
      ssize_t n = ::process_vm_readv(a, &local, 1, &remote, 1, 0);
      ::_exit(n == static_cast<ssize_t>(sizeof got) && got == probe ? 0 : 1);
    }
    if (b > 0) {
      int st = 0;
      while (::waitpid(b, &st, 0) < 0 && errno == EINTR) {
      }
      ok = WIFEXITED(st) && WEXITSTATUS(st) == 0;
    }
    char c = 1;
    ssize_t n = ::write(done_pipe[1], &c, 1);
    (void)n;
    int st = 0;
    while (::waitpid(a, &st, 0) < 0 && errno == EINTR) {
    }
  }
  for (int fd : {addr_pipe[0], done_pipe[0], done_pipe[1]}) ::close(fd);
  return ok;
}
}  // namespace

bool cross_memory_attach_works() {
  static const bool works = try_cross_memory_attach();
  return works;
}

Command mpirun_command(const MpirunOptions& o, const std::string& program, const std::vector<std::string>& args) {
  Command c;
  // -q: no banners; smp-run reports failures itself, one line each.
  c.argv = {find_mpirun(), "-q", "-n", std::to_string(o.ranks)};
  int cores = o.cores > 0 ? o.cores : online_cores();
  if (o.hostfile.empty()) {
    // One machine: allow more ranks than cores and do not pin ranks to cores (pinned,
    // oversubscribed ranks would share one core while others idle).
    c.argv.insert(c.argv.end(), {"--oversubscribe", "--bind-to", "none"});
    if (o.ranks > cores) c.env.insert_or_assign("OMPI_MCA_mpi_yield_when_idle", "1");
  } else {
    c.argv.insert(c.argv.end(), {"--hostfile", o.hostfile});
  }
  // Messages between ranks on one machine: with cross-memory attach the receiver copies a large
  // message straight from the sender's memory, whatever the sender is doing. Containers often
  // forbid it (ptrace); then a message moves in 32 KiB pieces, each only while the sender is
  // inside MPI, so messages up to 1 MiB are sent eagerly (copied at once into shared memory).
  // A setting of the user's (OMPI_MCA_btl_vader_*) is left alone.
  const bool cma = o.cross_memory_attach < 0 ? cross_memory_attach_works() : o.cross_memory_attach > 0;
  if (!std::getenv("OMPI_MCA_btl_vader_single_copy_mechanism") && !cma) {
    c.argv.insert(c.argv.end(), {"--mca", "btl_vader_single_copy_mechanism", "none"});
    if (!std::getenv("OMPI_MCA_btl_vader_eager_limit") && !std::getenv("OMPI_MCA_btl_vader_max_send_size")) {
      c.argv.insert(c.argv.end(), {"--mca", "btl_vader_eager_limit", "1048576", "--mca", "btl_vader_max_send_size", "1048576"});
      if (!std::getenv("OMPI_MCA_btl_vader_segment_size"))
        c.argv.insert(c.argv.end(), {"--mca", "btl_vader_segment_size", "67108864"});
    }
  }
  c.argv.insert(c.argv.end(), o.extra.begin(), o.extra.end());
  c.argv.push_back(program);
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  if (::geteuid() == 0)
    for (const char* k : {"OMPI_ALLOW_RUN_AS_ROOT", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"}) c.env.insert_or_assign(k, "1");
  return c;
}

bool is_dead_peer_read_error(std::string_view line) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.empty() || line.front() != '[') return false;
  const size_t close = line.find("] Read ");
  if (close == std::string_view::npos) return false;
  const std::string_view rest = line.substr(close + 2);
  return rest.find(", expected ") != std::string_view::npos && rest.size() > 11 &&
         rest.substr(rest.size() - 11) == ", errno = 3";
}

namespace {
// Copies `fd` to stderr line by line, without the lines `drop` picks, until end of file or until
// `stop` is set and nothing has come for 200 ms (a process outside the job holding the pipe).
void pass_lines(int fd, const std::function<bool(std::string_view)>& drop, const std::atomic<bool>& stop) {
  std::string buf;
  char chunk[4096];
  auto flush_line = [&](std::string_view line) {
    if (!drop(line)) (void)write_all(2, line.data(), line.size());
  };
  while (true) {
    pollfd p{fd, POLLIN, 0};
    int n = ::poll(&p, 1, 200);
    if (n < 0 && errno == EINTR) continue;
    if (n == 0) {
      if (stop.load()) break;
      continue;
    }
    ssize_t k = ::read(fd, chunk, sizeof chunk);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) break;
    buf.append(chunk, static_cast<size_t>(k));
    size_t at;
    while ((at = buf.find('\n')) != std::string::npos) {
      flush_line(std::string_view(buf).substr(0, at + 1));
      buf.erase(0, at + 1);
    }
  }
  if (!buf.empty()) flush_line(buf);
}
}  // namespace

int run_command(const Command& c, const std::function<bool()>& stuck) {
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    if (!c.env.count(key)) envs.push_back(kv);
  }
  for (const auto& [k, v] : c.env) envs.push_back(k + "=" + v);
  std::vector<char*> argv, envp;
  for (const auto& a : c.argv) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  for (auto& e : envs) envp.push_back(e.data());
  envp.push_back(nullptr);

  int err_pipe[2] = {-1, -1};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  if (c.drop_stderr) {
    if (::pipe2(err_pipe, O_CLOEXEC) != 0) throw_failure(c.argv[0], std::string("pipe: ") + std::strerror(errno));
    posix_spawn_file_actions_adddup2(&actions, err_pipe[1], 2);
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);
  pid_t pid = 0;
  int rc = posix_spawn(&pid, argv[0], &actions, &attr, argv.data(), envp.data());
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&actions);
  if (err_pipe[1] >= 0) ::close(err_pipe[1]);
  if (rc != 0) {
    if (err_pipe[0] >= 0) ::close(err_pipe[0]);
    throw_failure(c.argv[0], std::string("cannot start: ") + std::strerror(rc));
  }
  std::atomic<bool> child_done{false};
  std::thread passer;
  if (err_pipe[0] >= 0) passer = std::thread([&] { pass_lines(err_pipe[0], c.drop_stderr, child_done); });

  g_child_group = pid;
  struct sigaction sa {}, old_int {}, old_term {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);

  int status = 0;
  while (true) {
    pid_t w = ::waitpid(pid, &status, stuck ? WNOHANG : 0);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (w == 0) {
      if (stuck()) {
        ::kill(-pid, SIGKILL);
        while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  // Nothing of the job may outlive it.
  ::kill(-pid, SIGKILL);
  g_child_group = 0;
  if (passer.joinable()) {
    child_done = true;
    passer.join();
    ::close(err_pipe[0]);
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace smp::comm
