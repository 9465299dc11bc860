// smp's local launcher: the ranks of one machine as child processes of a supervisor, without MPI
// (launch.hpp: local_command, local_supervisor).
#include "comm/launch.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <thread>

#include <sys/wait.h>
#include <unistd.h>

namespace smp::comm {

Command local_command(int ranks, const std::string& supervisor, const std::string& program, const std::vector<std::string>& args) {
  Command c;
  c.argv = {supervisor, kLocalSupervisorFlag, std::to_string(ranks), "--", program};
  c.argv.insert(c.argv.end(), args.begin(), args.end());
  return c;
}

namespace {

volatile sig_atomic_t g_usr1 = 0, g_term = 0;

void on_signal(int sig) {
  if (sig == SIGUSR1) g_usr1 = g_usr1 + 1;
  else g_term = g_term + 1;
}

std::string describe_end(int status) {
  if (WIFSIGNALED(status)) {
    const int sig = WTERMSIG(status);
    const char* d = ::strsignal(sig);
    return fmt::format("exited on signal {} ({})", sig, d ? d : "?");
  }
  return fmt::format("exited with status {}", WEXITSTATUS(status));
}

}  // namespace

int local_supervisor(int ranks, const std::vector<std::string>& argv) {
  if (ranks < 1 || argv.empty()) throw_bad_input(kLocalSupervisorFlag, "needs N >= 1 and a program");
  char tmpl[] = "/tmp/smp-local-XXXXXX";
  if (!::mkdtemp(tmpl)) throw_failure("/tmp", std::string("cannot make the rendezvous directory: ") + std::strerror(errno));
  const std::string dir = tmpl;
  char host[256] = "?";
  ::gethostname(host, sizeof host - 1);

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  for (int sig : {SIGUSR1, SIGTERM, SIGINT}) sigaction(sig, &sa, nullptr);

  std::vector<pid_t> pids(static_cast<size_t>(ranks), 0);
  std::vector<bool> alive(static_cast<size_t>(ranks), false);
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  for (int r = 0; r < ranks; ++r) {
    pid_t pid = ::fork();
    if (pid < 0) {
      std::fprintf(stderr, "error: cannot start rank %d: %s\n", r, std::strerror(errno));
      for (int k = 0; k < r; ++k) ::kill(pids[static_cast<size_t>(k)], SIGKILL);
      return 1;
    }
    if (pid == 0) {
      struct sigaction dfl {};
      dfl.sa_handler = SIG_DFL;
      for (int sig : {SIGUSR1, SIGTERM, SIGINT}) sigaction(sig, &dfl, nullptr);
      ::setenv("SMP_LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("SMP_LOCAL_SIZE", std::to_string(ranks).c_str(), 1);
      ::setenv("SMP_LOCAL_DIR", dir.c_str(), 1);
      ::execv(cargv[0], cargv.data());
      std::fprintf(stderr, "error: %s: cannot start: %s\n", cargv[0], std::strerror(errno));
      std::_Exit(127);
    }
    pids[static_cast<size_t>(r)] = pid;
    alive[static_cast<size_t>(r)] = true;
  }

  using clock = std::chrono::steady_clock;
  int first_bad = 0;  // the first abnormal end's status for the caller
  int seen_usr1 = 0, seen_term = 0;
  auto kill_at = clock::time_point::max();
  int left = ranks;
  auto signal_all = [&](int sig) {
    for (int r = 0; r < ranks; ++r)
      if (alive[static_cast<size_t>(r)]) ::kill(pids[static_cast<size_t>(r)], sig);
  };
  // Reaps every rank that has ended; returns the abnormal ends among them.
  struct End {
    int rank;
    pid_t pid;
    int status;
  };
  auto reap = [&] {
    std::vector<End> bad;
    int status = 0;
    pid_t pid;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0)
      for (int r = 0; r < ranks; ++r) {
        if (pids[static_cast<size_t>(r)] != pid || !alive[static_cast<size_t>(r)]) continue;
        alive[static_cast<size_t>(r)] = false;
        --left;
        if (WIFSIGNALED(status) || (WIFEXITED(status) && WEXITSTATUS(status) != 0)) bad.push_back({r, pid, status});
      }
    return bad;
  };
  while (left > 0) {
    std::vector<End> bad = reap();
    if (!bad.empty() && first_bad == 0) {
      // The others notice a dead peer within milliseconds and end too: the one to name is the
      // one killed by a signal, if any, among the ends of the next 200 ms.
      const auto until = clock::now() + std::chrono::milliseconds(200);
      while (left > 0 && clock::now() < until) {
        std::this_thread::sleep_for(std::chrono::milliseconds(10));
        for (const End& e : reap()) bad.push_back(e);
      }
      const End* pick = &bad.front();
      for (const End& e : bad)
        if (WIFSIGNALED(e.status)) {
          pick = &e;
          break;
        }
      first_bad = WIFSIGNALED(pick->status) ? 128 + WTERMSIG(pick->status) : WEXITSTATUS(pick->status);
      std::fprintf(stderr, "smp-local: rank %d (pid %ld) on %s %s\n", pick->rank, static_cast<long>(pick->pid), host,
                   describe_end(pick->status).c_str());
      std::fflush(stderr);
      // As mpirun does: the others end too.
      signal_all(SIGTERM);
      kill_at = std::min(kill_at, clock::now() + std::chrono::seconds(2));
    }
    if (left == 0) break;
    for (; seen_usr1 < g_usr1; ++seen_usr1) signal_all(SIGUSR1);
    for (; seen_term < g_term; ++seen_term) {
      signal_all(SIGTERM);
      kill_at = std::min(kill_at, clock::now() + std::chrono::seconds(5));
    }
    if (clock::now() > kill_at) {
      signal_all(SIGKILL);
      kill_at = clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::error_code ec;
  std::filesystem::remove_all(dir, ec);
  return first_bad;
}

}  // namespace smp::comm
