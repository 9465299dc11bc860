// Errors. User-facing errors are one line: "<file or option>: <what is wrong> (<what to do>)";
// apps print them as "error: ..." and exit 2 for bad input, 1 for a failure while running.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>

namespace smp {

enum class ErrorKind {
  BadInput,  // the user's file, option or data is wrong: exit status 2
  Failure,   // something failed while running: exit status 1
};

class Error : public std::runtime_error {
 public:
  Error(ErrorKind kind, std::string message) : std::runtime_error(std::move(message)), kind_(kind) {}
  ErrorKind kind() const { return kind_; }
  int exit_code() const { return kind_ == ErrorKind::BadInput ? 2 : 1; }

 private:
  ErrorKind kind_;
};

// "<where>: <what> (<hint>)", the hint only when given.
std::string format_error(const std::string& where, const std::string& what, const std::string& hint = "");

[[noreturn]] void throw_bad_input(const std::string& where, const std::string& what,
                                  const std::string& hint = "");
[[noreturn]] void throw_failure(const std::string& where, const std::string& what,
                                const std::string& hint = "");
[[noreturn]] void throw_internal(const char* file, int line, const std::string& what);

}  // namespace smp

// Internal invariant: reports file:line. Not for user input (use throw_bad_input).
#define SMP_CHECK(cond, ...)                                                        \
  do {                                                                              \
    if (!(cond)) ::smp::throw_internal(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__)); \
  } while (0)
