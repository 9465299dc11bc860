// Shared by the test suites: running a shell command and capturing what it prints.
#pragma once

#include <doctest/doctest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <string>
#include <sys/wait.h>

namespace smp::test {

struct CmdResult {
  int exit_code = -1;  // 128 + the signal when killed by one
  int signal = 0;
  std::string out;     // stdout and stderr together
  double seconds = 0;
};

// Runs `cmd` with /bin/sh, stderr merged into stdout.
inline CmdResult run_cmd(const std::string& cmd) {
  CmdResult r;
  auto t0 = std::chrono::steady_clock::now();
  FILE* p = ::popen((cmd + " 2>&1").c_str(), "r");
  REQUIRE(p != nullptr);
  std::array<char, 4096> buf{};
  size_t n;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = ::pclose(p);
  if (WIFEXITED(st)) r.exit_code = WEXITSTATUS(st);
  if (WIFSIGNALED(st)) {
    r.signal = WTERMSIG(st);
    r.exit_code = 128 + r.signal;
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace smp::test
