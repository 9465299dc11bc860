// Shared by the three tools: error reporting and exit codes (error: <one line>; 2 bad input,
// 1 failure), CLI11 set-up.
#pragma once

#include "core/error.hpp"
#include "core/version.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <cstdint>
#include <exception>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace smp::app {

// Runs `body`, mapping every error to one line on stderr and an exit status.
template <class F>
int guarded_main(F&& body) {
  try {
    return body();
  } catch (const smp::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return e.exit_code();
  } catch (const std::bad_alloc&) {
    std::fprintf(stderr, "error: out of memory\n");
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}

// --dim NAME=SIZE values (repeatable), each SIZE a positive integer; bad input names --dim.
inline std::map<std::string, int64_t> parse_dims(const std::vector<std::string>& dims) {
  std::map<std::string, int64_t> out;
  for (const auto& d : dims) {
    auto eq = d.find('=');
    int64_t v = 0;
    if (eq == std::string::npos || eq == 0) smp::throw_bad_input("--dim", fmt::format("'{}' is not NAME=SIZE", d));
    try {
      size_t used = 0;
      v = std::stoll(d.substr(eq + 1), &used);
      if (used != d.size() - eq - 1) throw std::invalid_argument("trailing");
    } catch (const std::exception&) {
      smp::throw_bad_input("--dim", fmt::format("'{}': size is not an integer", d));
    }
    if (v <= 0) smp::throw_bad_input("--dim", fmt::format("'{}': size must be positive", d));
    out[d.substr(0, eq)] = v;
  }
  return out;
}

inline void setup_app(CLI::App& app) {
  app.set_version_flag("--version", std::string("smp ") + SMP_VERSION);
  app.option_defaults()->always_capture_default();
  app.failure_message([](const CLI::App*, const CLI::Error& e) {
    return std::string(e.what()) + " (see --help)\n";
  });
}

// CLI11 parse with our error format: "error: <message> (see --help)", exit 2.
#define SMP_PARSE(app, argc, argv)                                  \
  try {                                                             \
    (app).parse((argc), (argv));                                    \
  } catch (const CLI::CallForHelp& e) {                             \
    return (app).exit(e);                                           \
  } catch (const CLI::CallForAllHelp& e) {                          \
    return (app).exit(e);                                           \
  } catch (const CLI::CallForVersion& e) {                          \
    return (app).exit(e);                                           \
  } catch (const CLI::ParseError& e) {                              \
    std::fprintf(stderr, "error: %s (see --help)\n", e.what());     \
    return 2;                                                       \
  }

}  // namespace smp::app
