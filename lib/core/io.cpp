#include "core/io.hpp"

#include "core/error.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

namespace smp {

namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) throw_bad_input(path.string(), "no such file");
  if (fs::is_directory(path, ec)) throw_bad_input(path.string(), "is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw_bad_input(path.string(), std::string("cannot open: ") + std::strerror(errno));
  // Sized once and read in place (a model file of 2 GB is held once, not grown and copied); a
  // file whose size is not known up front (a pipe) is read as a stream.
  const auto size = fs::file_size(path, ec);
  if (!ec && fs::is_regular_file(path, ec)) {
    std::string bytes(static_cast<size_t>(size), '\0');
    in.read(bytes.data(), static_cast<std::streamsize>(size));
    if (in.gcount() != static_cast<std::streamsize>(size) || in.bad()) throw_bad_input(path.string(), "read error (the file changed while read?)");
    return bytes;
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw_bad_input(path.string(), "read error");
  return ss.str();
}

// O_NONBLOCK: opening a FIFO does not wait for a writer (regular files ignore it).
ReadOnlyFile::ReadOnlyFile(const fs::path& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK)) {
  struct stat st {};
  if (fd_ < 0) return;
  if (::fstat(fd_, &st) == 0) {
    size_ = st.st_size;
    regular_ = S_ISREG(st.st_mode);
    return;
  }
  const int err = errno;
  ::close(fd_);
  fd_ = -1;
  errno = err;
}

ReadOnlyFile::~ReadOnlyFile() {
  if (fd_ >= 0) ::close(fd_);
}

Bytes map_range(int fd, int64_t offset, int64_t length, const fs::path& path) {
  if (length <= 0) return {};
  const auto page = static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
  const int64_t start = offset - offset % page, lead = offset - start;
  const auto span = static_cast<size_t>(lead + length);
  void* m = ::mmap(nullptr, span, PROT_READ, MAP_PRIVATE | MAP_POPULATE, fd, static_cast<off_t>(start));
  if (m != MAP_FAILED) {
    std::shared_ptr<const void> keeper(m, [span](const void* p) { ::munmap(const_cast<void*>(p), span); });
    return Bytes::borrow(static_cast<const char*>(m) + lead, static_cast<size_t>(length), std::move(keeper));
  }
  std::string bytes(static_cast<size_t>(length), '\0');  // past vm.max_map_count, or not mappable
  if (::lseek(fd, static_cast<off_t>(offset), SEEK_SET) < 0 || !read_all(fd, bytes.data(), bytes.size()))
    throw_bad_input(path.string(), std::string("read error: ") + (errno ? std::strerror(errno) : "the file ended early"));
  return bytes;
}

Bytes map_file(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return read_file(path);  // a pipe; read_file names what is missing
  const ReadOnlyFile f(path);
  if (!f.ok()) throw_bad_input(path.string(), std::string("cannot open: ") + std::strerror(errno));
  return map_range(f.fd(), 0, f.size(), path);
}

bool write_all(int fd, const void* p, size_t n) {
  const char* c = static_cast<const char*>(p);
  while (n > 0) {
    ssize_t k = ::write(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k, n -= static_cast<size_t>(k);
  }
  return true;
}

bool read_all(int fd, void* p, size_t n) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t k = ::read(fd, c, n);
    if (k < 0 && errno == EINTR) continue;
    if (k == 0) errno = 0;
    if (k <= 0) return false;
    c += k, n -= static_cast<size_t>(k);
  }
  return true;
}

void write_file_atomic(const fs::path& path, const std::string& bytes) {
  write_file_atomic(path, [&](int fd) { return write_all(fd, bytes.data(), bytes.size()); });
}

void write_file_atomic(const fs::path& path, const std::function<bool(int fd)>& write) {
  fs::path tmp = path;
  tmp += fmt::format(".tmp.{}", ::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw_failure(path.string(), std::string("cannot write: ") + std::strerror(errno));
  errno = 0;
  bool wrote = false;
  try {
    wrote = write(fd);
  } catch (...) {
    ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  if (!wrote) {
    int err = errno;
    ::close(fd);
    ::unlink(tmp.c_str());
    throw_failure(path.string(), std::string("write failed: ") + (err ? std::strerror(err) : "the data could not be written"));
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw_failure(path.string(), std::string("write failed: ") + std::strerror(err));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    int err = errno;
    ::unlink(tmp.c_str());
    throw_failure(path.string(), std::string("cannot rename into place: ") + std::strerror(err));
  }
}

nlohmann::json read_json(const fs::path& path) {
  std::string text = read_file(path);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::parse_error& e) {
    throw_bad_input(path.string(), fmt::format("not valid JSON at byte {}", e.byte),
                    "check the file's syntax");
  }
}

nlohmann::json read_versioned_json(const fs::path& path, int supported_version) {
  nlohmann::json j = read_json(path);
  if (!j.is_object()) throw_bad_input(path.string(), "expected a JSON object at the top level");
  auto it = j.find("version");
  if (it == j.end()) throw_bad_input(path.string(), "missing field \"version\"");
  if (!it->is_number_integer())
    throw_bad_input(path.string(), "field \"version\" must be an integer");
  int v = it->get<int>();
  if (v < 1 || v > supported_version)
    throw_bad_input(path.string(), fmt::format("unsupported version {}", v),
                    fmt::format("this smp reads version {}", supported_version));
  return j;
}

TempDir::TempDir(const std::string& prefix) {
  std::string tmpl = "/tmp/" + prefix + "-XXXXXX";
  if (!::mkdtemp(tmpl.data()))
    throw_failure("/tmp", fmt::format("cannot create a temporary directory: {}", std::strerror(errno)));
  path_ = tmpl;
}

TempDir::~TempDir() {
  std::error_code ec;
  fs::remove_all(path_, ec);
}

}  // namespace smp
