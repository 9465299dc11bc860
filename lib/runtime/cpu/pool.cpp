#include "runtime/cpu/pool.hpp"

#include "core/clock.hpp"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SMP_PAUSE() _mm_pause()
#else
#define SMP_PAUSE() std::this_thread::yield()
#endif

namespace smp::runtime::cpu {

namespace {

thread_local bool t_in_region = false;

class Pool {
 public:
  ~Pool() { resize(1); }

  int size() const { return size_; }

  // Called by the thread that resizes the pool (workers_ does not change under it).
  double workers_cpu_s() {
    double sum = 0;
    for (auto& w : workers_) {
      clockid_t id;
      if (pthread_getcpuclockid(w.native_handle(), &id) == 0) sum += cpu_clock_s(id);
    }
    return sum;
  }

  void resize(int n) {
    if (n < 1) n = 1;
    if (n == size_) return;
    {
      std::lock_guard<std::mutex> lk(m_);
      stop_ = true;
      gen_.fetch_add(1, std::memory_order_release);
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    stop_ = false;
    size_ = n;
    uint64_t g0 = gen_.load(std::memory_order_acquire);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, g0] { loop(i, g0); });
  }

  void run(int64_t parts, const std::function<void(int64_t, int64_t)>& f) {
    int64_t nt = std::min<int64_t>(parts, size_);
    if (nt <= 1 || t_in_region) {
      bool was = t_in_region;
      t_in_region = true;
      f(0, 1);
      t_in_region = was;
      return;
    }
    std::lock_guard<std::mutex> one(run_mutex_);  // one region at a time per process
    job_ = &f;
    job_threads_ = nt;
    remaining_.store(static_cast<int>(nt - 1), std::memory_order_relaxed);
    {
      std::lock_guard<std::mutex> lk(m_);
      gen_.fetch_add(1, std::memory_order_release);
    }
    if (sleepers_.load(std::memory_order_acquire) > 0) cv_.notify_all();
    t_in_region = true;
    f(0, nt);
    t_in_region = false;
    for (int spins = 0; remaining_.load(std::memory_order_acquire) > 0; ++spins) {
      if (spins < 4000) SMP_PAUSE();
      else std::this_thread::yield();
    }
  }

 private:
  void loop(int id, uint64_t seen) {
    t_in_region = true;
    for (;;) {
      uint64_t g = seen;
      for (int i = 0; i < 4000 && g == seen; ++i) {
        SMP_PAUSE();
        g = gen_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        std::unique_lock<std::mutex> lk(m_);
        sleepers_.fetch_add(1, std::memory_order_acq_rel);
        cv_.wait(lk, [&] { return gen_.load(std::memory_order_acquire) != seen; });
        sleepers_.fetch_sub(1, std::memory_order_acq_rel);
        g = gen_.load(std::memory_order_acquire);
      }
      seen = g;
      if (stop_) return;
      if (id < job_threads_) {
        (*job_)(id, job_threads_);
        remaining_.fetch_sub(1, std::memory_order_acq_rel);
      }
    }
  }

  int size_ = 1;
  std::vector<std::thread> workers_;
  std::mutex m_, run_mutex_;
  std::condition_variable cv_;
  std::atomic<uint64_t> gen_{0};
  std::atomic<int> remaining_{0};
  std::atomic<int> sleepers_{0};
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t job_threads_ = 0;
  bool stop_ = false;
};

Pool& pool() {
  static Pool p;
  return p;
}

}  // namespace

int pool_threads() { return pool().size(); }
void set_pool_threads(int n) { pool().resize(n); }
bool pool_in_parallel() { return t_in_region; }
double pool_workers_cpu_s() { return pool().workers_cpu_s(); }
void parallel_region(int64_t parts, const std::function<void(int64_t, int64_t)>& f) { pool().run(parts, f); }

}  // namespace smp::runtime::cpu
