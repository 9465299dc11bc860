// Communicator::poll, for the implementations (mpi_comm.cpp, local_comm.cpp, device_comm.cpp).
#pragma once

#include "comm/comm.hpp"
#include "core/error.hpp"

#include <chrono>
#include <thread>

namespace smp::comm {

template <class F>
bool Communicator::poll(F&& done) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  const auto deadline = start + std::chrono::duration<double>(timeout_s_);
  auto stop_seen = clock::time_point::max();
  int spins = 0;
  std::chrono::microseconds pause{5};
  while (true) {
    if (done()) return true;
    if (++spins < 64) continue;
    if (spins % 64 == 0) {
      const auto now = clock::now();
      if (now > deadline) return false;
      check_giving_up();
      if (stop_flag_ && *stop_flag_ != 0) {
        if (stop_seen == clock::time_point::max()) stop_seen = now;
        if (now - stop_seen > std::chrono::duration<double>(stop_patience_s_))
          throw_failure(fmt::format("rank {}", rank()),
                        fmt::format("asked to stop, and no progress for {:.0f} s: the step cannot finish", stop_patience_s_));
      }
    }
    if (spin_wait_) {
      std::this_thread::yield();
      continue;
    }
    std::this_thread::sleep_for(pause);
    pause = std::min(pause * 2, std::chrono::microseconds{200});
  }
}

}  // namespace smp::comm
