// SHA-256 (FIPS 180-4), for the plan's model checksum.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace smp::plan {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t n);
  void update(std::string_view s) { update(s.data(), s.size()); }
  std::string hex();  // finishes; lowercase hex of the 32-byte digest

 private:
  void block(const uint8_t* p);
  uint32_t h_[8];
  uint8_t buf_[64];
  size_t used_ = 0;
  uint64_t total_ = 0;
};

std::string sha256_hex(std::string_view bytes);
// Streams the file; bad input naming the file when it cannot be read.
std::string sha256_file(const std::filesystem::path& path);

}  // namespace smp::plan
