// NumPy .npy files (format 1.0-3.0, little-endian, C order) to and from tensors: the data format
// of smp-run --forward and of the tests.
#pragma once

#include "runtime/backend.hpp"

#include <filesystem>
#include <string>

namespace smp::runtime {

struct NpyArray {
  DType dtype = DType::Undefined;
  Shape shape;
  std::string bytes;  // row-major elements
};

// Bad input (naming the file) for anything but a C-order array of a fixed-size numeric or bool dtype.
NpyArray read_npy(const std::filesystem::path& path);
void write_npy(const std::filesystem::path& path, DType dtype, const Shape& shape, const void* data);

Tensor load_npy(Backend& be, const std::filesystem::path& path);
void save_npy(Backend& be, const std::filesystem::path& path, const Tensor& t);

}  // namespace smp::runtime
