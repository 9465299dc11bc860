#include "runtime/npy.hpp"

#include "core/io.hpp"

#include <fmt/format.h>

#include <cstring>
#include <regex>

namespace smp::runtime {

namespace {
struct Descr {
  const char* code;
  DType dtype;
};
constexpr Descr kDescr[] = {
    {"<f4", DType::F32}, {"<f8", DType::F64}, {"<i8", DType::I64}, {"<i4", DType::I32}, {"<i2", DType::I16},
    {"|i1", DType::I8},  {"|u1", DType::U8},  {"|b1", DType::Bool}, {"<u2", DType::U16}, {"<u4", DType::U32},
    {"<u8", DType::U64}, {"<f2", DType::F16},
};
}  // namespace

NpyArray read_npy(const std::filesystem::path& path) {
  std::string b = smp::read_file(path);
  std::string where = path.string();
  if (b.size() < 10 || b.compare(0, 6, "\x93NUMPY") != 0) throw_bad_input(where, "not a .npy file");
  int major = static_cast<unsigned char>(b[6]);
  size_t hlen, hstart;
  if (major == 1) {
    hlen = static_cast<unsigned char>(b[8]) | (static_cast<size_t>(static_cast<unsigned char>(b[9])) << 8);
    hstart = 10;
  } else if (major == 2 || major == 3) {
    if (b.size() < 12) throw_bad_input(where, "truncated .npy header");
    uint32_t l;
    std::memcpy(&l, b.data() + 8, 4);
    hlen = l;
    hstart = 12;
  } else {
    throw_bad_input(where, fmt::format(".npy format version {} not supported", major));
  }
  if (b.size() < hstart + hlen) throw_bad_input(where, "truncated .npy header");
  std::string h = b.substr(hstart, hlen);
  std::smatch m;
  if (!std::regex_search(h, m, std::regex("'descr':\\s*'([^']*)'"))) throw_bad_input(where, "no descr in the .npy header");
  std::string descr = m[1];
  if (descr == "<b1") descr = "|b1";
  if (descr == "<i1") descr = "|i1";
  if (descr == "<u1") descr = "|u1";
  NpyArray a;
  for (const auto& d : kDescr)
    if (descr == d.code) a.dtype = d.dtype;
  if (a.dtype == DType::Undefined) throw_bad_input(where, fmt::format("dtype '{}' not supported", descr), "save little-endian numbers or bools");
  if (std::regex_search(h, m, std::regex("'fortran_order':\\s*True"))) throw_bad_input(where, "Fortran-order array", "save a C-order array");
  if (!std::regex_search(h, m, std::regex("'shape':\\s*\\(([^)]*)\\)"))) throw_bad_input(where, "no shape in the .npy header");
  std::string dims = m[1];
  std::regex num("\\d+");
  for (auto it = std::sregex_iterator(dims.begin(), dims.end(), num); it != std::sregex_iterator(); ++it)
    a.shape.push_back(std::stoll(it->str()));
  size_t need = static_cast<size_t>(smp::numel(a.shape) * dtype_size(a.dtype));
  size_t off = hstart + hlen;
  if (b.size() - off < need) throw_bad_input(where, fmt::format("{} bytes of data, {} expected", b.size() - off, need));
  a.bytes = b.substr(off, need);
  return a;
}

void write_npy(const std::filesystem::path& path, DType dtype, const Shape& shape, const void* data) {
  const char* code = nullptr;
  for (const auto& d : kDescr)
    if (d.dtype == dtype) code = d.code;
  SMP_CHECK(code, "no .npy code for {}", dtype_name(dtype));
  std::string dims;
  for (int64_t d : shape) dims += fmt::format("{}, ", d);
  if (shape.size() > 1) dims.resize(dims.size() - 2);
  std::string h = fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", code, dims);
  size_t total = 10 + h.size() + 1;
  h.append((64 - total % 64) % 64, ' ');
  h += '\n';
  std::string out = "\x93NUMPY";
  out += '\x01';
  out += '\x00';
  out += static_cast<char>(h.size() & 0xff);
  out += static_cast<char>((h.size() >> 8) & 0xff);
  out += h;
  out.append(static_cast<const char*>(data), static_cast<size_t>(smp::numel(shape) * dtype_size(dtype)));
  smp::write_file_atomic(path, out);
}

Tensor load_npy(Backend& be, const std::filesystem::path& path) {
  NpyArray a = read_npy(path);
  return be.from_host(a.dtype, a.shape, a.bytes.data());
}

void save_npy(Backend& be, const std::filesystem::path& path, const Tensor& t) {
  std::string host(static_cast<size_t>(t.bytes()), '\0');
  be.to_host(t, host.data());
  write_npy(path, t.dtype(), t.shape(), host.data());
}

}  // namespace smp::runtime
