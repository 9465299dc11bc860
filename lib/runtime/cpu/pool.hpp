// The CPU backend's threads: a small pool whose idle workers spin briefly and then sleep. (An
// OpenMP team spins actively between regions; on a machine whose cores are shared with other
// processes that made two-thread runs many times slower than one thread.)
#pragma once

#include <cstdint>
#include <functional>

namespace smp::runtime::cpu {

// Threads the kernels use (the caller included); at least 1.
int pool_threads();
void set_pool_threads(int n);
// True inside a parallel region (nested regions run serially in the calling thread).
bool pool_in_parallel();
// CPU time so far of the pool's own threads (the caller's not included).
double pool_workers_cpu_s();
// Runs f(t, nt) for t in [0, nt), nt = min(parts, pool_threads()), the caller taking t = 0;
// returns when all are done.
void parallel_region(int64_t parts, const std::function<void(int64_t t, int64_t nt)>& f);

}  // namespace smp::runtime::cpu
