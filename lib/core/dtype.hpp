// Element types, numbered as ONNX's TensorProto.DataType so that conversion is the identity.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace smp {

enum class DType : int32_t {
  Undefined = 0,
  F32 = 1,
  U8 = 2,
  I8 = 3,
  U16 = 4,
  I16 = 5,
  I32 = 6,
  I64 = 7,
  String = 8,
  Bool = 9,
  F16 = 10,
  F64 = 11,
  U32 = 12,
  U64 = 13,
  C64 = 14,
  C128 = 15,
  BF16 = 16,
};

// Bytes per element; 0 for Undefined and String.
int64_t dtype_size(DType t);
std::string_view dtype_name(DType t);
bool is_floating(DType t);
bool is_integer(DType t);
// Accepts any ONNX TensorProto.DataType value; unknown values map to Undefined.
DType dtype_from_onnx(int32_t onnx_type);

}  // namespace smp
