#pragma once

#include "../graph/test_util.hpp"

#include <nlohmann/json.hpp>

#include <fstream>
#include <string>

namespace smp::test {

inline std::string src(const std::string& p) { return std::string(SMP_SOURCE_DIR) + "/" + p; }

// python3-jsonschema on the file (tests/plan/validate_json.py).
inline CmdResult validate(const std::string& schema, const std::string& file) {
  return run_cmd(std::string(SMP_PYTHON) + " " + src("tests/plan/validate_json.py") + " " + src("schemas") + " " + schema +
                 " " + file);
}

inline nlohmann::json read_json_file(const std::string& p) {
  std::ifstream in(p);
  return nlohmann::json::parse(in);
}

inline int count_lines(const std::string& s) {
  int n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

}  // namespace smp::test
