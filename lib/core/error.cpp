#include "core/error.hpp"

namespace smp {

namespace {
// Messages must stay on one line: fold any newline a library put into its text.
std::string one_line(std::string s) {
  for (char& c : s)
    if (c == '\n' || c == '\r') c = ' ';
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}
}  // namespace

std::string format_error(const std::string& where, const std::string& what, const std::string& hint) {
  std::string msg = where.empty() ? one_line(what) : where + ": " + one_line(what);
  if (!hint.empty()) msg += " (" + one_line(hint) + ")";
  return msg;
}

void throw_bad_input(const std::string& where, const std::string& what, const std::string& hint) {
  throw Error(ErrorKind::BadInput, format_error(where, what, hint));
}

void throw_failure(const std::string& where, const std::string& what, const std::string& hint) {
  throw Error(ErrorKind::Failure, format_error(where, what, hint));
}

void throw_internal(const char* file, int line, const std::string& what) {
  throw Error(ErrorKind::Failure, fmt::format("internal error at {}:{}: {}", file, line, one_line(what)));
}

}  // namespace smp
