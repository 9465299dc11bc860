// Shared by the three tools: error reporting and exit codes (error: <one line>; 2 bad input,
// 1 failure), CLI11 set-up.
#pragma once

#include "core/error.hpp"
#include "core/version.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cstdio>
#include <cmath>
#include <cstdint>
#include <exception>
#include <limits>
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

// Numeric option checks. CLI11's PositiveNumber and NonNegativeNumber state their range as
// "0.000000 to 1797693...(300 digits)" and, like its Range, let nan and inf through.
inline CLI::Validator number_check(double lo, double hi, bool lo_open, std::string what, std::string desc,
                                   bool whole = false) {
  return CLI::Validator(
      [=](std::string& in) -> std::string {
        double v = 0;
        try {
          size_t used = 0;
          v = std::stod(in, &used);
          if (used != in.size()) throw std::invalid_argument("trailing");
        } catch (const std::exception&) {
          return fmt::format("'{}' is not a number", in);
        }
        if (!std::isfinite(v) || v < lo || v > hi || (lo_open && v == lo) || (whole && v != std::floor(v)))
          return fmt::format("must be {}, not {}", what, in);
        return std::string();
      },
      desc);
}
inline const CLI::Validator Positive = number_check(0, std::numeric_limits<double>::max(), true, "a positive number", "POSITIVE");
inline const CLI::Validator NonNegative = number_check(0, std::numeric_limits<double>::max(), false, "a number >= 0", "NONNEGATIVE");
inline const CLI::Validator PositiveInt = number_check(0, 9007199254740992.0, true, "a positive whole number", "POSITIVE", true);
inline const CLI::Validator NonNegativeInt = number_check(0, 9007199254740992.0, false, "a whole number >= 0", "NONNEGATIVE", true);
inline const CLI::Validator UnitInterval = number_check(0, 1, false, "a number from 0 to 1", "[0 - 1]");

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
