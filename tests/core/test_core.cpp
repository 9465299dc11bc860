#include <doctest/doctest.h>

#include "core/dtype.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "core/shape.hpp"
#include "test_process.hpp"

#include <jemalloc/jemalloc.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

using namespace smp;
namespace fs = std::filesystem;

TEST_CASE("dtype sizes and names follow ONNX numbering") {
  CHECK(dtype_size(DType::F32) == 4);
  CHECK(dtype_size(DType::I64) == 8);
  CHECK(dtype_size(DType::BF16) == 2);
  CHECK(dtype_from_onnx(1) == DType::F32);
  CHECK(dtype_from_onnx(7) == DType::I64);
  CHECK(dtype_from_onnx(99) == DType::Undefined);
  CHECK(dtype_name(DType::Bool) == "bool");
  CHECK(is_floating(DType::F16));
  CHECK_FALSE(is_floating(DType::I32));
}

TEST_CASE("shapes") {
  CHECK(numel({}) == 1);
  CHECK(numel({2, 3, 4}) == 24);
  CHECK(shape_str({2, 3}) == "[2, 3]");
}

TEST_CASE("errors are one line with place and hint") {
  try {
    throw_bad_input("model.onnx", "bad\nthing", "do this");
    FAIL("no throw");
  } catch (const Error& e) {
    CHECK(std::string(e.what()) == "model.onnx: bad thing (do this)");
    CHECK(e.exit_code() == 2);
  }
  try {
    throw_failure("x", "y");
  } catch (const Error& e) {
    CHECK(e.exit_code() == 1);
  }
}

TEST_CASE("atomic write replaces the file and leaves no temporary") {
  fs::path dir = fs::temp_directory_path() / fmt::format("smp_core_{}", ::getpid());
  fs::create_directories(dir);
  fs::path f = dir / "a.json";
  write_file_atomic(f, R"({"version": 1, "x": 2})");
  write_file_atomic(f, R"({"version": 1, "x": 3})");
  CHECK(read_versioned_json(f, 1)["x"] == 3);
  int files = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir)) ++files;
  CHECK(files == 1);
  write_file_atomic(f, R"({"version": 7})");
  CHECK_THROWS_WITH_AS(read_versioned_json(f, 1), doctest::Contains("unsupported version 7"), Error);
  write_file_atomic(f, "{nope");
  CHECK_THROWS_WITH_AS(read_json(f), doctest::Contains("not valid JSON"), Error);
  CHECK_THROWS_WITH_AS(read_file(dir / "missing"), doctest::Contains("no such file"), Error);
  fs::remove_all(dir);
}

TEST_CASE("a streamed atomic write that fails or throws leaves the old file and no temporary") {
  fs::path dir = fs::temp_directory_path() / fmt::format("smp_core_stream_{}", ::getpid());
  fs::create_directories(dir);
  fs::path f = dir / "ckpt.bin";
  write_file_atomic(f, [](int fd) { return write_all(fd, "old", 3) && write_all(fd, "!", 1); });
  CHECK(read_file(f) == "old!");
  CHECK_THROWS_WITH_AS(write_file_atomic(f, [](int fd) {
                         if (!write_all(fd, "new", 3)) return false;
                         errno = ENOSPC;  // as a write on a full disk leaves it
                         return false;
                       }),
                       doctest::Contains("ckpt.bin: write failed: No space left on device"), Error);
  CHECK_THROWS_WITH_AS(write_file_atomic(f, [](int) -> bool { throw_failure("tensor", "not serializable"); }),
                       doctest::Contains("not serializable"), Error);
  CHECK(read_file(f) == "old!");
  int files = 0;
  for ([[maybe_unused]] auto& e : fs::directory_iterator(dir)) ++files;
  CHECK(files == 1);
  // map_file: the bytes stay readable after the file is replaced and removed (what a resumed
  // run's borrowed checkpoint tensors rely on when later checkpoints prune theirs).
  const Bytes held = map_file(f);
  CHECK(held.borrowed());
  write_file_atomic(f, "replaced");
  fs::remove(f);
  CHECK(held.view() == "old!");
  fs::remove_all(dir);
}

TEST_CASE("TempDir: a fresh directory under /tmp, removed with its contents when it goes") {
  std::filesystem::path kept;
  {
    smp::TempDir a("smp-test"), b("smp-test");
    kept = a.path();
    CHECK(std::filesystem::is_directory(a.path()));
    CHECK(a.path() != b.path());
    CHECK(a.path().parent_path() == "/tmp");
    CHECK(a.path().filename().string().rfind("smp-test-", 0) == 0);
    std::filesystem::create_directories(a.path() / "sub");
    smp::write_file_atomic(a.path() / "sub" / "f.txt", "x");
  }
  CHECK(!std::filesystem::exists(kept));
}

TEST_CASE("smp's programs allocate with jemalloc, with its settings compiled in (core/malloc_conf.cpp)") {
  // This test program links them as every smp program does.
  const char* thp = nullptr;
  size_t size = sizeof thp;
  REQUIRE(mallctl("opt.thp", &thp, &size, nullptr, 0) == 0);
  CHECK(std::string(thp) == "always");
  // And smp-run is such a program: jemalloc answers MALLOC_CONF there with its statistics at exit.
  const auto r = smp::test::run_cmd(std::string("MALLOC_CONF=stats_print:true ") + SMP_BIN_DIR + "/smp-run --help");
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("jemalloc statistics") != std::string::npos);
  CHECK(r.out.find("opt.thp: \"always\"") != std::string::npos);
}
