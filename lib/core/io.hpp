// Small file and JSON helpers shared by every layer.
#pragma once

#include "core/bytes.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

namespace smp {

// Whole file as bytes; bad input (naming the file) when it cannot be read.
std::string read_file(const std::filesystem::path& path);

// A file's bytes, mapped read-only where it is a regular file (a 2 GB model is parsed from the
// page cache, never copied into memory of its own), else read; the mapping lives as long as the
// Bytes or a copy of it. Bad input (naming the file) when it cannot be read. Truncating the file
// while it is mapped is not supported.
Bytes map_file(const std::filesystem::path& path);

// A file opened read-only, with its size; closed when this goes. ok() is false, with errno set,
// when it cannot be opened (or its size read). Opening never blocks (a FIFO without a writer).
class ReadOnlyFile {
 public:
  explicit ReadOnlyFile(const std::filesystem::path& path);
  ~ReadOnlyFile();
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  bool ok() const { return fd_ >= 0; }
  int fd() const { return fd_; }
  int64_t size() const { return size_; }
  bool regular() const { return regular_; }  // a regular file (not a directory, pipe or device)

 private:
  int fd_ = -1;
  int64_t size_ = 0;
  bool regular_ = false;
};

// `length` bytes at `offset` of the open file `fd`, which must lie within it: mapped as map_file
// maps, read where they cannot be mapped. Bad input naming `path` on a read error.
Bytes map_range(int fd, int64_t offset, int64_t length, const std::filesystem::path& path);

// Writes beside the target and renames over it, so a crash leaves either the old or the new
// file, never a torn one. Failure (naming the file) when it cannot be written.
void write_file_atomic(const std::filesystem::path& path, const std::string& bytes);
// Same, with the bytes that `write` writes to the open file (a model or a checkpoint streamed out
// without a copy of it in memory); `write` returns false on failure, with errno set where a
// system call failed.
void write_file_atomic(const std::filesystem::path& path, const std::function<bool(int fd)>& write);

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
