// Wall-clock intervals on the monotonic clock, and CPU time (the process's, a thread's), in seconds.
#pragma once

#include <chrono>
#include <ctime>

namespace smp {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Seconds on a CPU-time clock (CLOCK_PROCESS_CPUTIME_ID, a thread's pthread_getcpuclockid); 0
// when the clock cannot be read (a thread that has ended).
inline double cpu_clock_s(clockid_t id) {
  timespec ts{};
  if (::clock_gettime(id, &ts) != 0) return 0;
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// CPU time of all of this process's threads so far: unlike wall time, not stretched while the
// process waits for a core.
inline double process_cpu_s() { return cpu_clock_s(CLOCK_PROCESS_CPUTIME_ID); }

// CPU time of the calling thread alone so far.
inline double thread_cpu_s() { return cpu_clock_s(CLOCK_THREAD_CPUTIME_ID); }

}  // namespace smp
