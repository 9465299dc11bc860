#include "runtime/cpu_backend.hpp"

#include "runtime/cpu/common.hpp"
#include "runtime/cpu/vmath.hpp"

#include <cblas.h>
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <map>
#include <mutex>
#include <thread>
#include <cstring>

namespace smp::runtime {

MemoryStats Backend::memory() const {
  return {counter_->live_bytes.load(), counter_->peak_bytes.load(), counter_->allocations.load(), 0, 0};
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

void CpuBackend::convert(Tensor& dst, const Tensor& src) {
  SMP_CHECK(dst.numel() == src.numel(), "convert {} into {}", src.str(), dst.str());
  if (dst.dtype() == src.dtype()) {
    copy(dst, src);
    return;
  }
  SMP_CHECK(false, "the cpu backend converts no {} into {} (bfloat16 compute needs the cuda backend)", src.str(), dst.str());
}

double CpuBackend::softmax_cross_entropy(const Tensor& logits, const Tensor& labels, float scale, Tensor& grad) {
  int64_t C = logits.dim(-1), rows = labels.numel();
  std::vector<int64_t> lab = cpu::tensor_ints(labels);
  for (int64_t y : lab)
    if (y < 0 || y >= C) throw_bad_input("labels", fmt::format("class {} out of range [0, {})", y, C));
  const float* X = logits.data<float>();
  float* G = grad.data<float>();
  float k = scale / static_cast<float>(rows);
  std::vector<double> part(static_cast<size_t>(rows), 0.0);
  cpu::pfor(rows, std::max<int64_t>(1, 4096 / std::max<int64_t>(C, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t i = r0; i < r1; ++i) {
      const float* x = X + i * C;
      float* gr = G + i * C;
      const float m = cpu::row_max(x, C);
      const float s = cpu::exp_row(x, gr, C, m);
      cpu::vscale_row(gr, C, k / s);
      int64_t y = lab[static_cast<size_t>(i)];
      gr[y] -= k;
      part[static_cast<size_t>(i)] = static_cast<double>(std::log(s) + m - x[y]);
    }
  });
  double total = 0;
  for (double v : part) total += v;
  return total / static_cast<double>(rows);
}

double CpuBackend::squared_error(const Tensor& pred, const Tensor& target, float scale, Tensor& grad) {
  const float* p = pred.data<float>();
  const float* t = target.data<float>();
  float* g = grad.data<float>();
  int64_t n = pred.numel();
  double total = 0;
  float k = 2.0f * scale / static_cast<float>(n);
  for (int64_t i = 0; i < n; ++i) {
    float d = p[i] - t[i];
    total += static_cast<double>(d) * d;
    g[i] = k * d;
  }
  return total / static_cast<double>(n);
}

void CpuBackend::update(const UpdateRule& r, Tensor& param, const Tensor& grad, Tensor& slot0, Tensor& slot1) {
  SMP_CHECK(is_f32(param) && is_f32(grad) && param.numel() == grad.numel(), "update of {} with {}", param.str(), grad.str());
  const int64_t n = param.numel();
  float* s0 = slot0.defined() ? slot0.data<float>() : nullptr;
  float* s1 = slot1.defined() ? slot1.data<float>() : nullptr;
  SMP_CHECK((!s0 || slot0.numel() == n) && (!s1 || slot1.numel() == n), "optimizer state of the wrong size");
  SMP_CHECK(r.kind == UpdateRule::Kind::Sgd || s0, "{} needs its state", r.kind == UpdateRule::Kind::AdamW ? "AdamW" : "momentum");
  SMP_CHECK(r.kind != UpdateRule::Kind::AdamW || s1, "AdamW needs its second moment");
  update_host(r, param.data<float>(), grad.data<float>(), s0, s1, n);
}

double CpuBackend::sum_of_squares(std::span<const Tensor> ts) {
  double s = 0;
  for (const Tensor& t : ts) s += sum_of_squares_host(t.data<float>(), t.numel());
  return s;
}

std::string CpuBackend::device_name() const { return fmt::format("cpu ({} thread{})", cpu_threads(), cpu_threads() == 1 ? "" : "s"); }

int64_t CpuBackend::cached_bytes() const {
  std::lock_guard<std::mutex> lk(cache_->m);
  return cache_->cached;
}

void CpuBackend::set_num_threads(int n) { set_cpu_threads(n); }
int CpuBackend::num_threads() const { return cpu_threads(); }
double CpuBackend::compute_cpu_s() const { return thread_cpu_s() + cpu::pool_workers_cpu_s(); }

}  // namespace smp::runtime
