// Wall-clock intervals on the monotonic clock, in seconds.
#pragma once

#include <chrono>

namespace smp {

using Clock = std::chrono::steady_clock;

inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

}  // namespace smp
