#include "runtime/cpu_backend.hpp"

#include "runtime/cpu/common.hpp"

#include <cblas.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <cstring>

namespace smp::runtime {

MemoryStats Backend::memory() const {
  return {counter_->live_bytes.load(), counter_->peak_bytes.load(), counter_->allocations.load()};
}

void Backend::reset_peak() { counter_->peak_bytes = counter_->live_bytes.load(); }

// Freed buffers by capacity, reused by later allocations of the same rounded size: the shapes of
// a training step repeat every step, and fresh pages cost page faults.
struct HostCache {
  std::mutex m;
  std::multimap<int64_t, void*> free;
  int64_t cached = 0;
  static constexpr int64_t kLimit = int64_t{1} << 30;
  ~HostCache() {
    for (auto& [cap, p] : free) std::free(p);
  }
  static void release(void* ctx, void* p, int64_t cap) {
    auto* c = static_cast<HostCache*>(ctx);
    {
      std::lock_guard<std::mutex> lk(c->m);
      if (c->cached + cap <= kLimit) {
        c->free.emplace(cap, p);
        c->cached += cap;
        return;
      }
    }
    std::free(p);
  }
  void* take(int64_t cap) {
    std::lock_guard<std::mutex> lk(m);
    auto it = free.lower_bound(cap);
    if (it == free.end() || it->first > cap + cap / 4) return nullptr;
    void* p = it->second;
    cached -= it->first;
    free.erase(it);
    return p;
  }
};

namespace {
int g_threads = 0;
}  // namespace

void set_cpu_threads(int n) {
  if (n <= 0) return;
  g_threads = n;
  cpu::set_pool_threads(n);
  // The kernels split matrix products across OpenMP threads themselves; OpenBLAS's own pthreads
  // would compete with OpenMP's for the same cores.
  openblas_set_num_threads(1);
}

int cpu_threads() { return cpu::pool_threads(); }

CpuBackend::CpuBackend(int threads) : cache_(std::make_shared<HostCache>()) {
  set_cpu_threads(threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency())));
}

const KernelTable& CpuBackend::kernels() const { return cpu_kernel_table(); }

Tensor CpuBackend::empty(DType dtype, const Shape& shape) {
  int64_t es = dtype_size(dtype);
  SMP_CHECK(es > 0, "cannot allocate a tensor of {}", dtype_name(dtype));
  for (int64_t d : shape) SMP_CHECK(d >= 0, "negative dimension in {}", shape_str(shape));
  int64_t bytes = smp::numel(shape) * es;
  int64_t cap = bytes <= 4096 ? std::max<int64_t>(64, (bytes + 63) / 64 * 64) : (bytes + 4095) / 4096 * 4096;
  void* p = cache_->take(cap);
  if (!p) {
    p = std::aligned_alloc(64, static_cast<size_t>(cap));
    if (!p) throw std::bad_alloc();
  }
  auto st = std::make_shared<Storage>();
  st->ptr = p;
  st->bytes = bytes;
  st->capacity = cap;
  st->free_fn = HostCache::release;
  st->free_ctx = cache_;
  st->counter = counter_;
  counter_->add(bytes);
  return Tensor(dtype, shape, std::move(st));
}

Tensor CpuBackend::zeros(DType dtype, const Shape& shape) {
  Tensor t = empty(dtype, shape);
  fill_zero(t);
  return t;
}

Tensor CpuBackend::from_host(DType dtype, const Shape& shape, const void* data) {
  Tensor t = empty(dtype, shape);
  if (t.bytes() > 0) std::memcpy(t.raw(), data, static_cast<size_t>(t.bytes()));
  return t;
}

void CpuBackend::to_host(const Tensor& t, void* dst) {
  if (t.bytes() > 0) std::memcpy(dst, t.raw(), static_cast<size_t>(t.bytes()));
}

void CpuBackend::fill_zero(Tensor& t) {
  char* p = static_cast<char*>(t.raw());
  int64_t n = t.bytes();
  cpu::pfor(n, 1 << 16, [&](int64_t b, int64_t e) { std::memset(p + b, 0, static_cast<size_t>(e - b)); });
}

void CpuBackend::copy(Tensor& dst, const Tensor& src) {
  SMP_CHECK(dst.bytes() == src.bytes() && dst.dtype() == src.dtype(), "copy {} into {}", src.str(), dst.str());
  if (dst.raw() != src.raw() && src.bytes() > 0) std::memcpy(dst.raw(), src.raw(), static_cast<size_t>(src.bytes()));
}

void CpuBackend::axpy(float alpha, const Tensor& x, Tensor& y) {
  SMP_CHECK(is_f32(x) && is_f32(y) && x.numel() == y.numel(), "axpy of {} into {}", x.str(), y.str());
  const float* xp0 = x.data<float>();
  float* yp0 = y.data<float>();
  int64_t n = x.numel();
  cpu::pfor(n, 32768, [xp0, yp0, alpha](int64_t b, int64_t e) {
    const float* __restrict xp = xp0;
    float* __restrict yp = yp0;
#pragma omp simd
    for (int64_t i = b; i < e; ++i) yp[i] += alpha * xp[i];
  });
}

void CpuBackend::scale(float alpha, Tensor& x) {
  float* p = x.data<float>();
  int64_t n = x.numel();
  cpu::pfor(n, 32768, [&](int64_t b, int64_t e) {
#pragma omp simd
    for (int64_t i = b; i < e; ++i) p[i] *= alpha;
  });
}

int64_t CpuBackend::cached_bytes() const {
  std::lock_guard<std::mutex> lk(cache_->m);
  return cache_->cached;
}

void CpuBackend::set_num_threads(int n) { set_cpu_threads(n); }
int CpuBackend::num_threads() const { return cpu_threads(); }

}  // namespace smp::runtime
