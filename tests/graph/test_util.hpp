// Helpers shared by the graph tests: running commands, temp dirs, tiny ONNX models.
#pragma once

#include "test_process.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <filesystem>
#include <string>
#include <unistd.h>

namespace smp::test {

inline std::filesystem::path temp_dir(const std::string& tag) {
  auto d = std::filesystem::temp_directory_path() / fmt::format("smp_{}_{}", tag, ::getpid());
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d;
}

inline std::string sample(const std::string& name) {
  return std::string(SMP_SOURCE_DIR) + "/sample_models/" + name + ".onnx";
}

inline std::string tool(const std::string& name) { return std::string(SMP_BIN_DIR) + "/" + name; }

}  // namespace smp::test
