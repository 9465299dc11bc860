// The CUDA backend: one device, one compute stream, memory in pools carved from few device
// allocations, cuBLASLt for matrix products, cuDNN for convolutions, our kernels for the rest.
// Everything the backend queues runs on its stream, in order; host copies and the loss values
// synchronize it.
#pragma once

#include "runtime/backend.hpp"
#include "runtime/backends.hpp"
#include "runtime/cuda/check.hpp"
#include "runtime/cuda/launch.hpp"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <array>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace smp::runtime::cuda {

// ---- errors ------------------------------------------------------------------------------

// A failed cuBLAS / cuDNN call: throws smp::Error naming the call, the device and file:line.
[[noreturn]] void fail_cublas(cublasStatus_t s, const char* call, const char* file, int line);
[[noreturn]] void fail_cudnn(cudnnStatus_t s, const char* call, const char* file, int line);
// Why cuBLASLt could not be loaded (cublaslt_loader.cpp opens it on first use); empty once it is.
std::string cublaslt_load_error();

#define SMP_CUBLAS_CHECK(call)                                                                       \
  do {                                                                                               \
    cublasStatus_t smp_s_ = (call);                                                                  \
    if (smp_s_ != CUBLAS_STATUS_SUCCESS) ::smp::runtime::cuda::fail_cublas(smp_s_, #call, __FILE__, __LINE__); \
  } while (0)
#define SMP_CUDNN_CHECK(call)                                                                      \
  do {                                                                                             \
    cudnnStatus_t smp_s_ = (call);                                                                 \
    if (smp_s_ != CUDNN_STATUS_SUCCESS) ::smp::runtime::cuda::fail_cudnn(smp_s_, #call, __FILE__, __LINE__); \
  } while (0)

// ---- memory ------------------------------------------------------------------------------

// A pool of device memory: segments from cudaMalloc, handed out best-fit in 256-byte units and
// coalesced when freed. reserve() makes sure the pool has the planned room, adding one segment
// for what its free blocks lack; a request that does not fit grows the pool by another segment
// (counted: after the first training step none should happen).
class DeviceArena {
 public:
  DeviceArena(std::string name, int device) : name_(std::move(name)), device_(device) {}
  ~DeviceArena();
  DeviceArena(const DeviceArena&) = delete;
  DeviceArena& operator=(const DeviceArena&) = delete;

  void* alloc(int64_t bytes);
  void release(void* p);
  void reserve(int64_t bytes);
  int64_t reserved_bytes() const;
  int64_t segments() const;
  int64_t used_bytes() const;
  int64_t peak_used_bytes() const;
  const std::string& name() const { return name_; }

 private:
  void add_segment(int64_t bytes);
  struct Block {
    int64_t size;
    int segment;
    bool free;
  };
  mutable std::mutex m_;
  std::string name_;
  int device_;
  std::vector<std::pair<char*, int64_t>> segs_;
  std::map<char*, Block> blocks_;                 // every block, by address
  std::multimap<int64_t, char*> free_by_size_;    // the free ones, by size
  int64_t reserved_ = 0, used_ = 0, peak_used_ = 0;
};

// ---- the backend -------------------------------------------------------------------------

class GemmCache;

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendOptions& opts);
  ~CudaBackend() override;

  std::string_view name() const override { return "cuda"; }
  const KernelTable& kernels() const override;

  Tensor empty(DType dtype, const Shape& shape) override;
  Tensor zeros(DType dtype, const Shape& shape) override;
  Tensor from_host(DType dtype, const Shape& shape, const void* data) override;
  void to_host(const Tensor& t, void* dst) override;
  void fill_zero(Tensor& t) override;
  void copy(Tensor& dst, const Tensor& src) override;
  void axpy(float alpha, const Tensor& x, Tensor& y) override;
  void scale(float alpha, Tensor& x) override;
  void convert(Tensor& dst, const Tensor& src) override;
  void synchronize() override;
  void* native_stream() const override { return stream_; }
  double softmax_cross_entropy(const Tensor& logits, const Tensor& labels, float scale, Tensor& grad) override;
  double squared_error(const Tensor& pred, const Tensor& target, float scale, Tensor& grad) override;
  void update(const UpdateRule& r, Tensor& param, const Tensor& grad, Tensor& slot0, Tensor& slot1) override;
  double sum_of_squares(std::span<const Tensor> ts) override;
  void reserve(MemoryPool pool, int64_t bytes) override;
  void set_num_threads(int) override {}
  int num_threads() const override { return 1; }
  std::string device_name() const override;
  MemoryStats memory() const override;

  // For the kernels.
  int device() const { return device_; }
  cudaStream_t stream() const { return stream_; }
  cublasLtHandle_t lt() const { return lt_; }
  cudnnHandle_t dnn() const { return dnn_; }
  bool tf32() const { return tf32_; }
  GemmCache& gemm() { return *gemm_; }
  int sm_count() const { return sm_count_; }
  // The scratch area shared by cuBLASLt and cuDNN (one stream: one user at a time). Its size is
  // settled at load: ensure_workspace() grows it then; during a step it only hands it out.
  void* workspace() const { return workspace_; }
  int64_t workspace_bytes() const { return workspace_bytes_; }
  void ensure_workspace(int64_t bytes);
  // The device error record and the name a kernel's errors are reported under.
  DeviceError* device_error() const { return dev_error_; }
  int64_t site(const std::string& node_name);
  // Throws the first recorded device error, if any (synchronizes).
  void check_device_errors();
  // A small host-visible copy of an integer tensor (shape parameters known only at run time).
  std::vector<int64_t> read_ints(const Tensor& t);
  // A host copy of a small tensor, as a host-memory Tensor the CPU helpers can read.
  Tensor host_copy(const Tensor& t);
  // "out of memory" with the pool, the request and what is free.
  [[noreturn]] void fail_oom(const std::string& pool, int64_t bytes);

 private:
  DeviceArena& arena(MemoryPool p) { return *arenas_[static_cast<size_t>(p)]; }

  int device_ = 0;
  bool tf32_ = false;
  int sm_count_ = 0;
  std::string gpu_name_;
  std::unique_ptr<GemmCache> gemm_;
  cudaStream_t stream_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  cudnnHandle_t dnn_ = nullptr;
  std::array<std::shared_ptr<DeviceArena>, static_cast<size_t>(MemoryPool::kCount)> arenas_;
  void* workspace_ = nullptr;
  int64_t workspace_bytes_ = 0;
  int64_t workspace_allocations_ = 0;
  DeviceError* dev_error_ = nullptr;
  std::vector<std::string> sites_;
  std::map<std::string, int64_t> site_ids_;
  // Device buffers of the reductions behind loss values and norms (a few KiB, made once).
  double* dev_sums_ = nullptr;
  static constexpr int kSumSlots = 4096;
};

// The CUDA kernel table (lib/runtime/cuda/table.cpp).
const KernelTable& cuda_kernel_table();

// The CUDA backend behind a kernel's ExecContext.
inline CudaBackend& backend_of(ExecContext& ctx) { return static_cast<CudaBackend&>(*ctx.backend); }

}  // namespace smp::runtime::cuda
