// Small file and JSON helpers shared by every layer.
#pragma once

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace smp {

// Whole file as bytes; bad input (naming the file) when it cannot be read.
std::string read_file(const std::filesystem::path& path);

// A file's bytes, mapped read-only where it is a regular file (a 2 GB model is parsed from the
// page cache, never copied into memory of its own), else read; bad input (naming the file) when
// it cannot be read. Truncating the file while it is mapped is not supported.
class FileBytes {
 public:
  explicit FileBytes(const std::filesystem::path& path);
  ~FileBytes();
  FileBytes(const FileBytes&) = delete;
  FileBytes& operator=(const FileBytes&) = delete;
  const char* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  const char* data_ = nullptr;
  size_t size_ = 0;
  void* map_ = nullptr;
  std::string read_;  // a file that cannot be mapped (a pipe, an empty file)
};

// Writes beside the target and renames over it, so a crash leaves either the old or the new
// file, never a torn one. Failure (naming the file) when it cannot be written.
void write_file_atomic(const std::filesystem::path& path, const std::string& bytes);

// All n bytes to / from a file descriptor, retrying after signals and short transfers; false on
// an error or (reading) an early end of file, with errno set by the failing call (0 at the end).
bool write_all(int fd, const void* p, size_t n);
bool read_all(int fd, void* p, size_t n);

// A fresh directory /tmp/<prefix>-XXXXXX (mkdtemp), removed with everything in it when this goes;
// failure when it cannot be made.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// Parses a JSON file; a parse error names the file and the position.
nlohmann::json read_json(const std::filesystem::path& path);

// Reads a JSON file that must carry {"version": <supported>}: a missing or newer version is
// bad input naming the file.
nlohmann::json read_versioned_json(const std::filesystem::path& path, int supported_version);

}  // namespace smp
