// The CPU backend: host buffers, OpenMP loops, OpenBLAS matrix products.
#pragma once

#include "runtime/backend.hpp"

namespace smp::runtime {

// Threads for OpenMP loops and OpenBLAS together (0: leave the library defaults).
void set_cpu_threads(int n);
int cpu_threads();

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int threads = 0);
  std::string_view name() const override { return "cpu"; }
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
  double softmax_cross_entropy(const Tensor& logits, const Tensor& labels, float scale, Tensor& grad) override;
  double squared_error(const Tensor& pred, const Tensor& target, float scale, Tensor& grad) override;
  void update(const UpdateRule& r, Tensor& param, const Tensor& grad, Tensor& slot0, Tensor& slot1) override;
  double sum_of_squares(std::span<const Tensor> ts) override;
  void set_num_threads(int n) override;
  int num_threads() const override;
  double compute_cpu_s() const override;
  std::string device_name() const override;
  // Bytes of freed buffers kept for reuse (not counted as live).
  int64_t cached_bytes() const;

 private:
  std::shared_ptr<struct HostCache> cache_;
};

// The CPU kernel table (lib/runtime/cpu/table.cpp).
const KernelTable& cpu_kernel_table();

}  // namespace smp::runtime
