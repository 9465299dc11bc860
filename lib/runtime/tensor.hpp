// Tensors: dtype, static shape, contiguous row-major elements in a shared, 64-byte-aligned buffer
// owned by a backend. Copying a Tensor shares the buffer; view() re-labels it with another shape.
#pragma once

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/shape.hpp"

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

namespace smp::runtime {

// Live and peak bytes of one backend's buffers. Shared with the buffers so that a buffer that
// outlives its backend still settles its account.
struct MemoryCounter {
  std::atomic<int64_t> live_bytes{0};
  std::atomic<int64_t> peak_bytes{0};
  std::atomic<int64_t> allocations{0};
  void add(int64_t b);
  void sub(int64_t b) { live_bytes -= b; }
};

// One allocation. Handed back through `free_fn(free_ctx, ptr, capacity)` when the last Tensor
// referring to it goes (a backend may keep it for reuse).
struct Storage {
  void* ptr = nullptr;
  int64_t bytes = 0;     // requested (what the memory counter counts)
  int64_t capacity = 0;  // allocated
  void (*free_fn)(void* ctx, void* ptr, int64_t capacity) = nullptr;
  std::shared_ptr<void> free_ctx;
  std::shared_ptr<MemoryCounter> counter;
  Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
  ~Storage();
};

template <class T> constexpr bool dtype_matches(DType d);
template <> constexpr bool dtype_matches<float>(DType d) { return d == DType::F32; }
template <> constexpr bool dtype_matches<double>(DType d) { return d == DType::F64; }
template <> constexpr bool dtype_matches<int64_t>(DType d) { return d == DType::I64; }
template <> constexpr bool dtype_matches<int32_t>(DType d) { return d == DType::I32; }
template <> constexpr bool dtype_matches<uint8_t>(DType d) { return d == DType::U8 || d == DType::Bool; }
template <> constexpr bool dtype_matches<int8_t>(DType d) { return d == DType::I8; }
template <> constexpr bool dtype_matches<int16_t>(DType d) { return d == DType::I16; }
template <> constexpr bool dtype_matches<uint16_t>(DType d) { return d == DType::U16; }
template <> constexpr bool dtype_matches<uint32_t>(DType d) { return d == DType::U32; }
template <> constexpr bool dtype_matches<uint64_t>(DType d) { return d == DType::U64; }

class Tensor {
 public:
  Tensor() = default;
  Tensor(DType dtype, Shape shape, std::shared_ptr<Storage> storage);

  bool defined() const { return storage_ != nullptr; }
  DType dtype() const { return dtype_; }
  const Shape& shape() const { return shape_; }
  int rank() const { return static_cast<int>(shape_.size()); }
  int64_t dim(int i) const { return shape_.at(static_cast<size_t>(i < 0 ? i + rank() : i)); }
  int64_t numel() const { return numel_; }
  int64_t bytes() const { return numel_ * dtype_size(dtype_); }

  void* raw() { return storage_ ? storage_->ptr : nullptr; }
  const void* raw() const { return storage_ ? storage_->ptr : nullptr; }
  template <class T> T* data() {
    SMP_CHECK(dtype_matches<T>(dtype_), "tensor of {} accessed with the wrong element type", dtype_name(dtype_));
    return static_cast<T*>(raw());
  }
  template <class T> const T* data() const {
    SMP_CHECK(dtype_matches<T>(dtype_), "tensor of {} accessed with the wrong element type", dtype_name(dtype_));
    return static_cast<const T*>(raw());
  }

  // Same buffer, another shape with the same element count.
  Tensor view(const Shape& shape) const;
  const std::shared_ptr<Storage>& storage() const { return storage_; }
  // "f32[2, 3]"
  std::string str() const;

 private:
  DType dtype_ = DType::Undefined;
  Shape shape_;
  int64_t numel_ = 0;
  std::shared_ptr<Storage> storage_;
};

}  // namespace smp::runtime
