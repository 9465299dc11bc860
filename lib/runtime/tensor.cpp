#include "runtime/tensor.hpp"

#include <fmt/format.h>

namespace smp::runtime {

void MemoryCounter::add(int64_t b) {
  int64_t now = live_bytes += b;
  ++allocations;
  int64_t peak = peak_bytes.load();
  while (now > peak && !peak_bytes.compare_exchange_weak(peak, now)) {
  }
}

Storage::~Storage() {
  if (free_fn && ptr) free_fn(free_ctx.get(), ptr, capacity);
  if (counter) counter->sub(bytes);
}

Tensor::Tensor(DType dtype, Shape shape, std::shared_ptr<Storage> storage)
    : dtype_(dtype), shape_(std::move(shape)), numel_(smp::numel(shape_)), storage_(std::move(storage)) {
  SMP_CHECK(dtype_size(dtype_) > 0, "tensor of unsupported dtype {}", dtype_name(dtype_));
  SMP_CHECK(!storage_ || storage_->bytes >= bytes(), "buffer of {} bytes too small for {}", storage_->bytes, str());
}

Tensor Tensor::view(const Shape& shape) const {
  SMP_CHECK(smp::numel(shape) == numel_, "view {} of {} changes the element count", shape_str(shape), str());
  return Tensor(dtype_, shape, storage_);
}

std::string Tensor::str() const { return fmt::format("{}{}", dtype_name(dtype_), shape_str(shape_)); }

}  // namespace smp::runtime
