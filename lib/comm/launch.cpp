#include "comm/launch.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
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
volatile sig_atomic_t g_count_signals = 0;  // run_command with a stop signal: count, do not forward
volatile sig_atomic_t g_sigint = 0, g_sigterm = 0, g_sigusr1 = 0;

void forward_signal(int sig) {
  if (g_count_signals) {
    if (sig == SIGINT) g_sigint = g_sigint + 1;
    else if (sig == SIGUSR1) g_sigusr1 = g_sigusr1 + 1;
    else g_sigterm = g_sigterm + 1;
    return;
  }
  if (g_child_group > 0) ::kill(-g_child_group, sig);
}

}  // namespace

LaunchInfo detect_launch() {
  LaunchInfo li;
  if (has_env("SMP_LOCAL_RANK")) {
    li.launcher = "local";
    li.rank = env_int("SMP_LOCAL_RANK", 0);
    li.size = env_int("SMP_LOCAL_SIZE", 1);
    li.local_rank = li.rank;
    li.local_size = li.size;
  } else if (has_env("OMPI_COMM_WORLD_RANK")) {
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
    // The tasks of this step on this node: SLURM_STEP_TASKS_PER_NODE ("2(x2),1") at SLURM_NODEID.
    if (const char* per = std::getenv("SLURM_STEP_TASKS_PER_NODE"); per && *per) {
      try {
        const std::vector<int> counts = expand_counts(per, "SLURM_STEP_TASKS_PER_NODE");
        const int node = env_int("SLURM_NODEID", -1);
        if (node >= 0 && node < static_cast<int>(counts.size())) li.local_size = counts[static_cast<size_t>(node)];
      } catch (const Error&) {
        // an unexpected form: keep the estimate above
      }
    }
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

namespace {
// `name` from the environment variable `env` when set, else from PATH.
std::string find_program(const char* name, const char* env, const char* hint) {
  if (const char* m = std::getenv(env); m && *m) return m;
  const char* path = std::getenv("PATH");
  std::string p = path ? path : "/usr/bin:/bin";
  size_t start = 0;
  while (start <= p.size()) {
    size_t end = p.find(':', start);
    std::string dir = p.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!dir.empty()) {
      std::filesystem::path cand = std::filesystem::path(dir) / name;
      if (::access(cand.c_str(), X_OK) == 0) return cand.string();
    }
    if (end == std::string::npos) break;
    start = end + 1;
  }
  throw_failure(name, "not found on PATH", hint);
}
}  // namespace

std::string find_mpirun() {
  return find_program("mpirun", "MPIRUN", "install openmpi-bin (scripts/install-deps.sh) or set MPIRUN");
}

bool mpirun_available() {
  try {
    find_mpirun();
    return true;
  } catch (const Error&) {
    return false;
  }
}

std::string find_srun() { return find_program("srun", "SRUN", "install slurm-client or set SRUN"); }

// ---- hosts ----------------------------------------------------------------------------------

std::vector<HostSlots> read_hostfile(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw_bad_input(path, "cannot read the hostfile", "one host per line: NAME [slots=N]");
  std::vector<HostSlots> hosts;
  std::string line;
  for (int no = 1; std::getline(in, line); ++no) {
    if (auto hash = line.find('#'); hash != std::string::npos) line.erase(hash);
    std::istringstream words(line);
    std::string name, kv;
    if (!(words >> name)) continue;
    int slots = 0;
    while (words >> kv) {
      const auto eq = kv.find('=');
      const std::string key = kv.substr(0, eq);
      if (eq == std::string::npos || key.empty())
        throw_bad_input(fmt::format("{}:{}", path, no), fmt::format("'{}' is not KEY=VALUE", kv), "NAME [slots=N] [max_slots=N]");
      if (key != "slots" && key != "count" && key != "cpu") continue;  // max_slots and the like
      const std::string v = kv.substr(eq + 1);
      char* end = nullptr;
      const long n = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || n <= 0 || n > 1 << 20)
        throw_bad_input(fmt::format("{}:{}", path, no), fmt::format("{}={}: not a positive count", key, v));
      slots = static_cast<int>(n);
    }
    auto same = std::find_if(hosts.begin(), hosts.end(), [&](const HostSlots& h) { return h.name == name; });
    if (same == hosts.end()) hosts.push_back({name, slots});
    else same->slots = same->slots > 0 && slots > 0 ? same->slots + slots : 0;  // unstated: unknown
  }
  if (hosts.empty()) throw_bad_input(path, "no host in the hostfile", "one host per line: NAME [slots=N]");
  return hosts;
}

namespace {
// Splits at the commas outside brackets.
std::vector<std::string> split_top(const std::string& s) {
  std::vector<std::string> out;
  int depth = 0;
  std::string cur;
  for (char ch : s) {
    if (ch == '[') ++depth;
    if (ch == ']') --depth;
    if (ch == ',' && depth == 0) {
      out.push_back(cur);
      cur.clear();
    } else {
      cur += ch;
    }
  }
  out.push_back(cur);
  return out;
}

void expand_one(const std::string& item, const std::string& where, std::vector<std::string>& out) {
  const auto open = item.find('[');
  if (open == std::string::npos) {
    if (item.find(']') != std::string::npos) throw_bad_input(where, fmt::format("'{}': ']' without '['", item));
    out.push_back(item);
    return;
  }
  const auto close = item.find(']', open);
  if (close == std::string::npos) throw_bad_input(where, fmt::format("'{}': '[' without ']'", item));
  const std::string prefix = item.substr(0, open), rest = item.substr(close + 1);
  std::istringstream ranges(item.substr(open + 1, close - open - 1));
  std::string range;
  while (std::getline(ranges, range, ',')) {
    const auto dash = range.find('-');
    const std::string a = range.substr(0, dash), b = dash == std::string::npos ? a : range.substr(dash + 1);
    auto number = [&](const std::string& t) {
      if (t.empty() || t.size() > 9 || t.find_first_not_of("0123456789") != std::string::npos)
        throw_bad_input(where, fmt::format("'{}': '{}' is not a number or range", item, range));
      return std::stol(t);
    };
    const long lo = number(a), hi = number(b);
    if (hi < lo || hi - lo > 100000) throw_bad_input(where, fmt::format("'{}': bad range '{}'", item, range));
    for (long v = lo; v <= hi; ++v) expand_one(prefix + fmt::format("{:0{}d}", v, a.size()) + rest, where, out);
  }
}
}  // namespace

std::vector<std::string> expand_hostlist(const std::string& list, const std::string& where) {
  std::vector<std::string> out;
  for (const auto& item : split_top(list))
    if (!item.empty()) expand_one(item, where, out);
  return out;
}

std::vector<int> expand_counts(const std::string& counts, const std::string& where) {
  std::vector<int> out;
  for (const auto& item : split_top(counts)) {
    int n = 0, times = 1;
    char tail = 0;
    if (std::sscanf(item.c_str(), "%d(x%d)%c", &n, &times, &tail) == 2 ||
        (std::sscanf(item.c_str(), "%d%c", &n, &tail) == 1 && item.find('(') == std::string::npos)) {
      if (n < 0 || times <= 0 || times > 100000) throw_bad_input(where, fmt::format("'{}': bad count", item));
      out.insert(out.end(), static_cast<size_t>(times), n);
    } else {
      throw_bad_input(where, fmt::format("'{}' is not N or N(xK)", item));
    }
  }
  return out;
}

std::vector<HostSlots> slurm_allocation() {
  const char* job = std::getenv("SLURM_JOB_ID");
  const char* nodes = std::getenv("SLURM_JOB_NODELIST");
  if (!job || !*job || !nodes || !*nodes) return {};
  std::vector<HostSlots> out;
  for (auto& n : expand_hostlist(nodes)) out.push_back({n, 0});
  if (const char* cpus = std::getenv("SLURM_JOB_CPUS_PER_NODE"); cpus && *cpus) {
    const std::vector<int> c = expand_counts(cpus);
    if (c.size() == out.size())
      for (size_t i = 0; i < c.size(); ++i) out[i].slots = c[i];
  }
  return out;
}

Placement place_ranks(const std::vector<PlannedRank>& ranks, const std::vector<HostSlots>& hosts, const std::string& where,
                      bool check_slots) {
  // The plan's hosts in the order of their first device.
  std::vector<std::pair<int, std::string>> first;
  for (const auto& r : ranks) {
    auto it = std::find_if(first.begin(), first.end(), [&](const auto& f) { return f.second == r.host; });
    if (it == first.end()) first.emplace_back(r.device, r.host);
    else it->first = std::min(it->first, r.device);
  }
  std::sort(first.begin(), first.end());
  Placement p;
  p.plan_hosts = static_cast<int>(first.size());
  p.hosts_given = static_cast<int>(hosts.size());
  if (first.size() > hosts.size())
    throw_bad_input(where, fmt::format("the plan places its {} ranks on {} hosts, {} {} given", ranks.size(), first.size(),
                                       hosts.size(), hosts.size() == 1 ? "is" : "are"),
                    "give as many hosts, or plan for these with a cluster description of them (smp-plan --cluster)");
  std::vector<int> used(hosts.size(), 0);
  for (const auto& r : ranks) {
    const size_t h = static_cast<size_t>(
        std::find_if(first.begin(), first.end(), [&](const auto& f) { return f.second == r.host; }) - first.begin());
    p.host_of_rank.push_back(hosts[h].name);
    ++used[h];
  }
  if (check_slots)
    for (size_t h = 0; h < first.size(); ++h)
      if (hosts[h].slots > 0 && used[h] > hosts[h].slots)
        throw_bad_input(where, fmt::format("the plan puts {} ranks on its host {}, which runs on {} with {} slot(s)", used[h],
                                           first[h].second, hosts[h].name, hosts[h].slots),
                        fmt::format("give {} slots=N with N >= {}", hosts[h].name, used[h]));
  return p;
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
  // -q: no banners (a caller that reports failures itself from mpirun's notices asks for them).
  c.argv = {find_mpirun()};
  if (o.quiet) c.argv.push_back("-q");
  c.argv.insert(c.argv.end(), {"-n", std::to_string(o.ranks)});
  int cores = o.cores > 0 ? o.cores : online_cores();
  if (o.hostfile.empty()) {
    // One machine: allow more ranks than cores and do not pin ranks to cores (pinned,
    // oversubscribed ranks would share one core while others idle).
    c.argv.insert(c.argv.end(), {"--oversubscribe", "--bind-to", "none"});
    if (o.ranks > cores) c.env.insert_or_assign("OMPI_MCA_mpi_yield_when_idle", "1");
    if (!o.session_dir.empty() && !std::getenv("OMPI_MCA_orte_tmpdir_base"))
      c.argv.insert(c.argv.end(), {"--mca", "orte_tmpdir_base", o.session_dir});
  } else {
    c.argv.insert(c.argv.end(), {"--hostfile", o.hostfile});
    if (o.sequential) c.argv.insert(c.argv.end(), {"--mca", "rmaps", "seq"});
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

Command srun_command(const SrunOptions& o, const std::string& program, const std::vector<std::string>& args) {
  Command c;
  c.argv = {find_srun(), "--ntasks", std::to_string(o.ranks), "--nodes", std::to_string(o.nodes),
            "--distribution=arbitrary", "--kill-on-bad-exit=1", "--input=none"};
  // Debian's Open MPI starts under srun with PMIx only; a site's own choice stays.
  if (!std::getenv("SLURM_MPI_TYPE")) c.argv.push_back("--mpi=pmix");
  if (o.overcommit) c.argv.push_back("--overcommit");
  c.argv.insert(c.argv.end(), o.extra.begin(), o.extra.end());
  c.argv.push_back(program);
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  c.env["SLURM_HOSTFILE"] = o.rank_hostfile;
  // srun passes SIGTERM on to the tasks as a stop request; killed, it ends the step at once.
  c.abort_signal = SIGKILL;
  // The allocation's own task layout (salloc --ntasks-per-node, --distribution) would fight the
  // placement.
  c.unset_env = {"SLURM_NTASKS_PER_NODE", "SLURM_DISTRIBUTION", "SLURM_NTASKS", "SLURM_NPROCS"};
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
// Copies `fd` to stderr line by line as `filter` returns them, until end of file or until `stop`
// is set and nothing has come for 200 ms (a process outside the job holding the pipe).
void pass_lines(int fd, const std::function<std::string(std::string_view)>& filter, const std::atomic<bool>& stop) {
  std::string buf;
  char chunk[4096];
  auto show = [&](std::string_view line) {
    const std::string out = filter(line);
    if (!out.empty()) (void)write_all(2, out.data(), out.size());
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
      show(std::string_view(buf).substr(0, at + 1));
      buf.erase(0, at + 1);
    }
  }
  if (!buf.empty()) show(buf);
  show({});
}
}  // namespace

int run_command(const Command& c, const std::function<bool()>& stuck) {
  std::vector<std::string> envs;
  for (char** e = environ; *e; ++e) {
    std::string kv = *e;
    std::string key = kv.substr(0, kv.find('='));
    if (!c.env.count(key) && std::find(c.unset_env.begin(), c.unset_env.end(), key) == c.unset_env.end()) envs.push_back(kv);
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
  if (c.filter_stderr) {
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
  if (err_pipe[0] >= 0) passer = std::thread([&] { pass_lines(err_pipe[0], c.filter_stderr, child_done); });

  g_sigint = 0;
  g_sigterm = 0;
  g_sigusr1 = 0;
  g_count_signals = c.stop_signal != 0;
  g_child_group = pid;
  struct sigaction sa {}, old_int {}, old_term {}, old_usr1 {};
  sa.sa_handler = forward_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &old_int);
  sigaction(SIGTERM, &sa, &old_term);
  if (c.stop_signal != 0) sigaction(SIGUSR1, &sa, &old_usr1);

  using clock = std::chrono::steady_clock;
  int seen_int = 0, seen_term = 0, seen_usr1 = 0;
  bool stop_wanted = false, stop_sent = false;
  bool aborting = false, killed = false;
  clock::time_point kill_at;  // after a second SIGINT: the group's SIGKILL
  int status = 0;
  const bool poll = stuck || c.stop_signal != 0;
  while (true) {
    pid_t w = ::waitpid(pid, &status, poll ? WNOHANG : 0);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) break;
    if (w != 0) continue;
    if (c.stop_signal != 0) {
      for (; seen_int < g_sigint; ++seen_int) {
        if (c.on_signal) c.on_signal(SIGINT);
        if (stop_wanted && !aborting) {
          ::kill(pid, c.abort_signal);  // the launcher takes its job down on every host
          aborting = true;
          kill_at = clock::now() + std::chrono::seconds(5);
        }
        stop_wanted = true;
      }
      for (; seen_term < g_sigterm; ++seen_term) {
        if (c.on_signal) c.on_signal(SIGTERM);
        stop_wanted = true;
      }
      for (; seen_usr1 < g_sigusr1; ++seen_usr1) {
        if (c.on_signal) c.on_signal(SIGUSR1);
        stop_wanted = true;
      }
      if (stop_wanted && !stop_sent && (!c.stop_ready || c.stop_ready())) {
        ::kill(pid, c.stop_signal);
        stop_sent = true;
      }
      if (aborting && !killed && clock::now() > kill_at) {
        ::kill(-pid, SIGKILL);
        killed = true;
      }
    }
    if (stuck && stuck()) {
      ::kill(-pid, SIGKILL);
      while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  // Nothing of the job may outlive it.
  ::kill(-pid, SIGKILL);
  g_child_group = 0;
  g_count_signals = 0;
  if (passer.joinable()) {
    child_done = true;
    passer.join();
    ::close(err_pipe[0]);
  }
  sigaction(SIGINT, &old_int, nullptr);
  sigaction(SIGTERM, &old_term, nullptr);
  if (c.stop_signal != 0) sigaction(SIGUSR1, &old_usr1, nullptr);
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

}  // namespace smp::comm
