#include "core/dtype.hpp"

namespace smp {

int64_t dtype_size(DType t) {
  switch (t) {
    case DType::F32: case DType::I32: case DType::U32: return 4;
    case DType::U8: case DType::I8: case DType::Bool: return 1;
    case DType::U16: case DType::I16: case DType::F16: case DType::BF16: return 2;
    case DType::I64: case DType::U64: case DType::F64: case DType::C64: return 8;
    case DType::C128: return 16;
    case DType::Undefined: case DType::String: return 0;
  }
  return 0;
}

std::string_view dtype_name(DType t) {
  switch (t) {
    case DType::F32: return "float32";
    case DType::U8: return "uint8";
    case DType::I8: return "int8";
    case DType::U16: return "uint16";
    case DType::I16: return "int16";
    case DType::I32: return "int32";
    case DType::I64: return "int64";
    case DType::String: return "string";
    case DType::Bool: return "bool";
    case DType::F16: return "float16";
    case DType::F64: return "float64";
    case DType::U32: return "uint32";
    case DType::U64: return "uint64";
    case DType::C64: return "complex64";
    case DType::C128: return "complex128";
    case DType::BF16: return "bfloat16";
    case DType::Undefined: return "undefined";
  }
  return "undefined";
}

bool is_floating(DType t) {
  return t == DType::F32 || t == DType::F16 || t == DType::F64 || t == DType::BF16;
}

bool is_integer(DType t) {
  switch (t) {
    case DType::U8: case DType::I8: case DType::U16: case DType::I16: case DType::I32:
    case DType::I64: case DType::U32: case DType::U64: return true;
    default: return false;
  }
}

DType dtype_from_onnx(int32_t onnx_type) {
  if (onnx_type < 0 || onnx_type > static_cast<int32_t>(DType::BF16)) return DType::Undefined;
  return static_cast<DType>(onnx_type);
}

}  // namespace smp
