#include "runtime/cuda/cuda_backend.hpp"

#include "runtime/cuda/factory.hpp"
#include "runtime/cuda/gemm.hpp"
#include "runtime/cuda/ops.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>

namespace smp::runtime::cuda {

namespace {

// The device the calling thread works on, for messages.
int g_device = 0;

std::string gib(int64_t b) { return fmt::format("{:.2f} GiB", static_cast<double>(b) / (1024.0 * 1024.0 * 1024.0)); }

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }

constexpr int64_t kAlign = 256;
constexpr int64_t kGrain = int64_t{2} << 20;  // segments in units of 2 MiB
constexpr int64_t kLtWorkspace = int64_t{32} << 20;  // what Hopper's cuBLASLt kernels want
constexpr int64_t kMinGrowth = int64_t{64} << 20;   // a pool that outgrows its plan grows by at least this

}  // namespace

[[noreturn]] void fail_cuda(cudaError_t e, const char* call, const char* file, int line) {
  const std::string where = fmt::format("cuda:{}", g_device);
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver || e == cudaErrorInvalidDevice)
    throw_bad_input(where, fmt::format("{} ({})", cudaGetErrorString(e), call), "use --backend cpu");
  if (e == cudaErrorMemoryAllocation) throw_failure(where, fmt::format("out of memory in {} ({}:{})", call, file, line));
  throw_failure(where, fmt::format("{} failed: {} ({}:{})", call, cudaGetErrorString(e), file, line));
}

[[noreturn]] void fail_internal(const char* file, int line, const std::string& what) { throw_internal(file, line, what); }

[[noreturn]] void fail_cublas(cublasStatus_t s, const char* call, const char* file, int line) {
  throw_failure(fmt::format("cuda:{}", g_device), fmt::format("{} failed: cuBLAS status {} ({}:{})", call, static_cast<int>(s), file, line));
}

[[noreturn]] void fail_cudnn(cudnnStatus_t s, const char* call, const char* file, int line) {
  throw_failure(fmt::format("cuda:{}", g_device), fmt::format("{} failed: {} ({}:{})", call, cudnnGetErrorString(s), file, line));
}

// ---- the arena -------------------------------------------------------------------------------

DeviceArena::~DeviceArena() {
  int prev = -1;
  if (cudaGetDevice(&prev) == cudaSuccess && prev != device_) cudaSetDevice(device_);
  for (auto& [p, n] : segs_) cudaFree(p);
  if (prev >= 0 && prev != device_) cudaSetDevice(prev);
}

void DeviceArena::add_segment(int64_t bytes) {
  bytes = round_up(std::max<int64_t>(bytes, kAlign), kGrain);
  void* p = nullptr;
  const cudaError_t e = cudaMalloc(&p, static_cast<size_t>(bytes));
  if (e != cudaSuccess) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw_failure(fmt::format("cuda:{}", device_),
                  fmt::format("out of GPU memory: {} more for the {} did not fit ({} free of {})", gib(bytes), name_,
                              gib(static_cast<int64_t>(free_b)), gib(static_cast<int64_t>(total_b))),
                  "use a smaller microbatch or more stages");
  }
  const int seg = static_cast<int>(segs_.size());
  segs_.push_back({static_cast<char*>(p), bytes});
  blocks_[static_cast<char*>(p)] = {bytes, seg, true};
  free_by_size_.emplace(bytes, static_cast<char*>(p));
  reserved_ += bytes;
}

void DeviceArena::reserve(int64_t bytes) {
  if (bytes <= 0) return;
  std::lock_guard<std::mutex> lk(m_);
  // What is free already counts: stages loaded one after another reuse the room of the ones
  // that went.
  const int64_t free = reserved_ - used_;
  if (free < bytes) add_segment(bytes - free);
}

void* DeviceArena::alloc(int64_t bytes) {
  const int64_t need = round_up(std::max<int64_t>(bytes, 1), kAlign);
  std::lock_guard<std::mutex> lk(m_);
  auto it = free_by_size_.lower_bound(need);
  if (it == free_by_size_.end()) {
    // Grow by at least an eighth of what the pool has, so that a short plan costs few segments.
    add_segment(std::max({need, reserved_ / 8, kMinGrowth}));
    it = free_by_size_.lower_bound(need);
    SMP_CHECK(it != free_by_size_.end(), "arena {}: no block after growing", name_);
  }
  char* p = it->second;
  free_by_size_.erase(it);
  Block& b = blocks_.at(p);
  if (b.size > need) {  // split: the rest stays free
    Block rest{b.size - need, b.segment, true};
    blocks_[p + need] = rest;
    free_by_size_.emplace(rest.size, p + need);
    b.size = need;
  }
  b.free = false;
  used_ += need;
  peak_used_ = std::max(peak_used_, used_);
  return p;
}

void DeviceArena::release(void* ptr) {
  // Runs in Storage's destructor: never throws.
  std::lock_guard<std::mutex> lk(m_);
  char* p = static_cast<char*>(ptr);
  auto it = blocks_.find(p);
  if (it == blocks_.end() || it->second.free) return;
  auto drop_free = [&](std::map<char*, Block>::iterator b) {
    auto range = free_by_size_.equal_range(b->second.size);
    for (auto f = range.first; f != range.second; ++f)
      if (f->second == b->first) {
        free_by_size_.erase(f);
        return;
      }
  };
  used_ -= it->second.size;
  it->second.free = true;
  // Coalesce with the next and the previous block of the same segment.
  auto next = std::next(it);
  if (next != blocks_.end() && next->second.free && next->second.segment == it->second.segment && it->first + it->second.size == next->first) {
    drop_free(next);
    it->second.size += next->second.size;
    blocks_.erase(next);
  }
  if (it != blocks_.begin()) {
    auto prev = std::prev(it);
    if (prev->second.free && prev->second.segment == it->second.segment && prev->first + prev->second.size == it->first) {
      drop_free(prev);
      prev->second.size += it->second.size;
      blocks_.erase(it);
      it = prev;
    }
  }
  free_by_size_.emplace(it->second.size, it->first);
}

int64_t DeviceArena::reserved_bytes() const {
  std::lock_guard<std::mutex> lk(m_);
  return reserved_;
}
int64_t DeviceArena::segments() const {
  std::lock_guard<std::mutex> lk(m_);
  return static_cast<int64_t>(segs_.size());
}
int64_t DeviceArena::used_bytes() const {
  std::lock_guard<std::mutex> lk(m_);
  return used_;
}
int64_t DeviceArena::peak_used_bytes() const {
  std::lock_guard<std::mutex> lk(m_);
  return peak_used_;
}

namespace {
void arena_release(void* ctx, void* p, int64_t) { static_cast<DeviceArena*>(ctx)->release(p); }
void host_release(void*, void* p, int64_t) { std::free(p); }
}  // namespace

// ---- the backend -------------------------------------------------------------------------------

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

std::string unavailable_reason() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fmt::format("no CUDA device ({})", cudaGetErrorString(e));
  }
  return n == 0 ? "no CUDA device" : "";
}

int64_t device_memory(int device) {
  // A property query: no context is made on the device (the launcher asks before its workers start).
  cudaDeviceProp prop{};
  if (cudaGetDeviceProperties(&prop, device) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return static_cast<int64_t>(prop.totalGlobalMem);
}

std::unique_ptr<Backend> make_cuda_backend(const BackendOptions& opts) { return std::make_unique<CudaBackend>(opts); }

CudaBackend::CudaBackend(const BackendOptions& opts) : device_(opts.device), tf32_(opts.tf32) {
  const std::string where = fmt::format("cuda:{}", device_);
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    throw_bad_input(where, fmt::format("no CUDA device ({})", cudaGetErrorString(e)), "use --backend cpu");
  }
  if (n == 0) throw_bad_input(where, "no CUDA device", "use --backend cpu");
  if (device_ < 0 || device_ >= n)
    throw_bad_input(where, fmt::format("no such device: this machine has {} CUDA device{} (cuda:0{})", n, n == 1 ? "" : "s",
                                       n == 1 ? "" : fmt::format(" to cuda:{}", n - 1)),
                    "check the plan's devices or CUDA_VISIBLE_DEVICES");
  g_device = device_;
  SMP_CUDA_CHECK(cudaSetDevice(device_));
  cudaDeviceProp prop{};
  SMP_CUDA_CHECK(cudaGetDeviceProperties(&prop, device_));
  gpu_name_ = prop.name;
  sm_count_ = prop.multiProcessorCount;
  if (prop.major < 8)
    throw_bad_input(where, fmt::format("{} has compute capability {}.{}; the CUDA backend needs 8.0 or newer (bfloat16)", gpu_name_,
                                       prop.major, prop.minor));
  SMP_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
  if (const std::string e = cublaslt_load_error(); !e.empty())
    throw_bad_input(where, fmt::format("cuBLASLt could not be loaded: {}", e),
                    "install CUDA's cuBLAS or add its lib directory to LD_LIBRARY_PATH, or use --backend cpu");
  SMP_CUBLAS_CHECK(cublasLtCreate(&lt_));
  SMP_CUDNN_CHECK(cudnnCreate(&dnn_));
  SMP_CUDNN_CHECK(cudnnSetStream(dnn_, stream_));
  static const char* names[] = {"activation arena", "parameters", "gradients", "optimizer state"};
  for (size_t i = 0; i < arenas_.size(); ++i) arenas_[i] = std::make_shared<DeviceArena>(names[i], device_);
  gemm_ = std::make_unique<GemmCache>();
  ensure_workspace(kLtWorkspace);
  SMP_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev_error_), sizeof(DeviceError)));
  SMP_CUDA_CHECK(cudaMemset(dev_error_, 0, sizeof(DeviceError)));
  SMP_CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&dev_sums_), sizeof(double) * (kSumSlots + 2)));
  sites_.push_back("?");
}

CudaBackend::~CudaBackend() {
  if (stream_) cudaStreamSynchronize(stream_);
  gemm_.reset();
  if (dnn_) cudnnDestroy(dnn_);
  if (lt_) cublasLtDestroy(lt_);
  if (workspace_) cudaFree(workspace_);
  if (dev_error_) cudaFree(dev_error_);
  if (dev_sums_) cudaFree(dev_sums_);
  if (stream_) cudaStreamDestroy(stream_);
}

const KernelTable& CudaBackend::kernels() const { return cuda_kernel_table(); }

std::string CudaBackend::device_name() const { return fmt::format("cuda:{} ({})", device_, gpu_name_); }

void CudaBackend::fail_oom(const std::string& what, int64_t bytes) {
  size_t free_b = 0, total_b = 0;
  cudaMemGetInfo(&free_b, &total_b);
  throw_failure(fmt::format("cuda:{}", device_),
                fmt::format("out of GPU memory: {} for {} did not fit ({} free of {})", gib(bytes), what, gib(static_cast<int64_t>(free_b)),
                            gib(static_cast<int64_t>(total_b))),
                "use a smaller microbatch or more stages");
}

void CudaBackend::ensure_workspace(int64_t bytes) {
  if (bytes <= workspace_bytes_) return;
  bytes = round_up(bytes, kGrain);
  if (workspace_) {
    SMP_CUDA_CHECK(cudaStreamSynchronize(stream_));
    SMP_CUDA_CHECK(cudaFree(workspace_));
    workspace_ = nullptr;
    workspace_bytes_ = 0;
  }
  const cudaError_t e = cudaMalloc(&workspace_, static_cast<size_t>(bytes));
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    fail_oom("the cuBLASLt / cuDNN workspace", bytes);
  }
  SMP_CUDA_CHECK(e);
  workspace_bytes_ = bytes;
  ++workspace_allocations_;
}

Tensor CudaBackend::empty(DType dtype, const Shape& shape) {
  const int64_t es = dtype_size(dtype);
  SMP_CHECK(es > 0, "cannot allocate a tensor of {}", dtype_name(dtype));
  for (int64_t d : shape) SMP_CHECK(d >= 0, "negative dimension in {}", shape_str(shape));
  const int64_t bytes = smp::numel(shape) * es;
  auto& a = arenas_[static_cast<size_t>(pool_)];
  auto st = std::make_shared<Storage>();
  st->ptr = a->alloc(bytes);
  st->bytes = bytes;
  st->capacity = round_up(std::max<int64_t>(bytes, 1), kAlign);
  st->free_fn = arena_release;
  st->free_ctx = a;
  st->counter = counter_;
  counter_->add(bytes);
  return Tensor(dtype, shape, std::move(st));
}

Tensor CudaBackend::zeros(DType dtype, const Shape& shape) {
  Tensor t = empty(dtype, shape);
  fill_zero(t);
  return t;
}

Tensor CudaBackend::from_host(DType dtype, const Shape& shape, const void* data) {
  Tensor t = empty(dtype, shape);
  // From pageable memory: the call returns once the bytes are staged, so `data` may go.
  if (t.bytes() > 0) SMP_CUDA_CHECK(cudaMemcpyAsync(t.raw(), data, static_cast<size_t>(t.bytes()), cudaMemcpyHostToDevice, stream_));
  return t;
}

void CudaBackend::to_host(const Tensor& t, void* dst) {
  if (t.bytes() > 0) SMP_CUDA_CHECK(cudaMemcpyAsync(dst, t.raw(), static_cast<size_t>(t.bytes()), cudaMemcpyDeviceToHost, stream_));
  synchronize();
}

void CudaBackend::fill_zero(Tensor& t) {
  if (t.bytes() > 0) SMP_CUDA_CHECK(cudaMemsetAsync(t.raw(), 0, static_cast<size_t>(t.bytes()), stream_));
}

void CudaBackend::copy(Tensor& dst, const Tensor& src) {
  SMP_CHECK(dst.bytes() == src.bytes() && dst.dtype() == src.dtype(), "copy {} into {}", src.str(), dst.str());
  if (dst.raw() != src.raw() && src.bytes() > 0)
    SMP_CUDA_CHECK(cudaMemcpyAsync(dst.raw(), src.raw(), static_cast<size_t>(src.bytes()), cudaMemcpyDeviceToDevice, stream_));
}

void CudaBackend::axpy(float alpha, const Tensor& x, Tensor& y) {
  SMP_CHECK(x.numel() == y.numel(), "axpy of {} into {}", x.str(), y.str());
  cuda::axpby(x.numel(), alpha, x.raw(), tag_of(x.dtype()), y.raw(), tag_of(y.dtype()), true, stream_);
}

void CudaBackend::scale(float alpha, Tensor& x) { cuda::scale(x.numel(), alpha, x.raw(), tag_of(x.dtype()), stream_); }

void CudaBackend::convert(Tensor& dst, const Tensor& src) {
  SMP_CHECK(dst.numel() == src.numel(), "convert {} into {}", src.str(), dst.str());
  cuda::convert(src.numel(), dst.raw(), tag_of(dst.dtype()), dst.dtype() == DType::Bool && src.dtype() != DType::Bool, src.raw(),
                tag_of(src.dtype()), stream_);
}

void CudaBackend::synchronize() {
  SMP_CUDA_CHECK(cudaStreamSynchronize(stream_));
  check_device_errors();
}

int64_t CudaBackend::site(const std::string& node_name) {
  auto it = site_ids_.find(node_name);
  if (it != site_ids_.end()) return it->second;
  const int64_t id = static_cast<int64_t>(sites_.size());
  sites_.push_back(node_name);
  site_ids_[node_name] = id;
  return id;
}

void CudaBackend::check_device_errors() {
  DeviceError e{};
  SMP_CUDA_CHECK(cudaMemcpy(&e, dev_error_, sizeof e, cudaMemcpyDeviceToHost));
  if (e.code == kNoError) return;
  SMP_CUDA_CHECK(cudaMemset(dev_error_, 0, sizeof(DeviceError)));
  const std::string site = e.site >= 0 && e.site < static_cast<int64_t>(sites_.size()) ? sites_[static_cast<size_t>(e.site)] : "?";
  if (e.code == kIndexOutOfRange)
    throw_bad_input("node " + site, fmt::format("index {} out of range [-{}, {})", e.value, e.bound, e.bound));
  if (e.code == kLabelOutOfRange) throw_bad_input(site, fmt::format("class {} out of range [0, {})", e.value, e.bound));
  throw_failure(fmt::format("cuda:{}", device_), fmt::format("device error {} at {}", e.code, site));
}

std::vector<int64_t> CudaBackend::read_ints(const Tensor& t) {
  Tensor h = host_copy(t);
  std::vector<int64_t> v(static_cast<size_t>(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i)
    v[static_cast<size_t>(i)] = t.dtype() == DType::I64 ? static_cast<const int64_t*>(h.raw())[i] : static_cast<const int32_t*>(h.raw())[i];
  return v;
}

Tensor CudaBackend::host_copy(const Tensor& t) {
  auto st = std::make_shared<Storage>();
  st->bytes = t.bytes();
  st->capacity = std::max<int64_t>(t.bytes(), 1);
  st->ptr = std::malloc(static_cast<size_t>(st->capacity));
  if (!st->ptr) throw std::bad_alloc();
  st->free_fn = host_release;
  to_host(t, st->ptr);
  return Tensor(t.dtype(), t.shape(), std::move(st));
}

void CudaBackend::reserve(MemoryPool pool, int64_t bytes) { arena(pool).reserve(bytes); }

MemoryStats CudaBackend::memory() const {
  MemoryStats m = Backend::memory();
  for (const auto& a : arenas_) {
    m.reserved_bytes += a->reserved_bytes();
    m.device_allocations += a->segments();
  }
  m.reserved_bytes += workspace_bytes_;
  m.device_allocations += workspace_allocations_;
  return m;
}

// ---- losses, optimizer -----------------------------------------------------------------------------

double CudaBackend::softmax_cross_entropy(const Tensor& logits, const Tensor& labels, float scale, Tensor& grad) {
  const int64_t C = logits.dim(-1), rows = labels.numel();
  const float k = scale / static_cast<float>(rows);
  Tensor loss = empty(DType::F32, {std::max<int64_t>(rows, 1)});
  cross_entropy_rows(rows, C, logits.raw(), tag_of(logits.dtype()), labels.raw(), tag_of(labels.dtype()), k, grad.raw(),
                     static_cast<float*>(loss.raw()), dev_error_, site("labels"), stream_);
  sum_floats(rows, static_cast<const float*>(loss.raw()), dev_sums_, 0, stream_);
  double total = 0;
  SMP_CUDA_CHECK(cudaMemcpyAsync(&total, dev_sums_, sizeof total, cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return total / static_cast<double>(rows);
}

double CudaBackend::squared_error(const Tensor& pred, const Tensor& target, float scale, Tensor& grad) {
  const int64_t n = pred.numel();
  const float k = 2.0f * scale / static_cast<float>(n);
  Tensor sq = empty(DType::F32, {std::max<int64_t>(n, 1)});
  squared_error_elems(n, pred.raw(), tag_of(pred.dtype()), static_cast<const float*>(target.raw()), k, grad.raw(),
                      static_cast<float*>(sq.raw()), stream_);
  sum_floats(n, static_cast<const float*>(sq.raw()), dev_sums_, 0, stream_);
  double total = 0;
  SMP_CUDA_CHECK(cudaMemcpyAsync(&total, dev_sums_, sizeof total, cudaMemcpyDeviceToHost, stream_));
  synchronize();
  return total / static_cast<double>(n);
}

void CudaBackend::update(const UpdateRule& r, Tensor& param, const Tensor& grad, Tensor& slot0, Tensor& slot1) {
  SMP_CHECK(is_f32(param) && is_f32(grad) && param.numel() == grad.numel(), "update of {} with {}", param.str(), grad.str());
  SMP_CHECK(r.kind == UpdateRule::Kind::Sgd || (slot0.defined() && slot0.numel() == param.numel()), "optimizer state missing");
  SMP_CHECK(r.kind != UpdateRule::Kind::AdamW || (slot1.defined() && slot1.numel() == param.numel()), "AdamW's second moment missing");
  optimizer_update(r, param.numel(), static_cast<float*>(param.raw()), static_cast<const float*>(grad.raw()),
                   slot0.defined() ? static_cast<float*>(slot0.raw()) : nullptr, slot1.defined() ? static_cast<float*>(slot1.raw()) : nullptr,
                   stream_);
}

double CudaBackend::sum_of_squares(std::span<const Tensor> ts) {
  // One slot per tensor (in order), each the fixed-order sum of its blocks' partial sums; then
  // the slots in order. Chunks of kSumSlots tensors when there are more.
  constexpr int kParts = 1024;
  Tensor part = empty(DType::F64, {kParts});
  double total = 0;
  for (size_t b = 0; b < ts.size(); b += kSumSlots) {
    const size_t e = std::min(ts.size(), b + kSumSlots);
    for (size_t i = b; i < e; ++i) {
      SMP_CHECK(is_f32(ts[i]), "sum of squares of {}", ts[i].str());
      sum_squares(ts[i].numel(), static_cast<const float*>(ts[i].raw()), dev_sums_, static_cast<int>(i - b), static_cast<double*>(part.raw()),
                  kParts, stream_);
    }
    sum_slots(dev_sums_, static_cast<int>(e - b), dev_sums_ + kSumSlots, stream_);
    double chunk = 0;
    SMP_CUDA_CHECK(cudaMemcpyAsync(&chunk, dev_sums_ + kSumSlots, sizeof chunk, cudaMemcpyDeviceToHost, stream_));
    synchronize();
    total += chunk;
  }
  return total;
}

}  // namespace smp::runtime::cuda
