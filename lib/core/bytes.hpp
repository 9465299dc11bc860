// Bytes: a string of bytes that either owns them (a std::string) or reads someone else's, kept
// alive by a shared owner (a model file's mapping: a parsed model's weights are read where the
// file lies, never copied, docs/engine.md "Memory and process start"). Reading never copies;
// any mutable access first copies a borrowed buffer into an owned one (copy on write), so code
// written against std::string keeps its meaning.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

namespace smp {

class Bytes {
 public:
  Bytes() = default;
  Bytes(std::string s) : own_(std::move(s)) {}  // NOLINT: a std::string is a Bytes
  Bytes& operator=(std::string s) {
    own_ = std::move(s);
    drop_view();
    return *this;
  }

  // `n` bytes at `p`, which stay valid while `keeper` lives; not copied.
  static Bytes borrow(const char* p, size_t n, std::shared_ptr<const void> keeper) {
    Bytes b;
    b.view_ = p;
    b.view_size_ = n;
    b.keeper_ = std::move(keeper);
    return b;
  }
  bool borrowed() const { return view_ != nullptr; }

  const char* data() const { return view_ ? view_ : own_.data(); }
  size_t size() const { return view_ ? view_size_ : own_.size(); }
  std::string_view view() const { return {data(), size()}; }
  std::string copy() const { return std::string(data(), size()); }

  // Mutable access: owned from here on.
  char* data() { return str().data(); }
  std::string& str() {
    if (view_) {
      own_.assign(view_, view_size_);
      drop_view();
    }
    return own_;
  }
  void resize(size_t n, char c = '\0') { str().resize(n, c); }
  void assign(const char* p, size_t n) {
    own_.assign(p, n);
    drop_view();
  }
  void assign(size_t n, char c) {
    own_.assign(n, c);
    drop_view();
  }
  void swap(std::string& s) {
    str().swap(s);
  }

  friend bool operator==(const Bytes& a, const Bytes& b) { return a.view() == b.view(); }
  friend bool operator!=(const Bytes& a, const Bytes& b) { return !(a == b); }

 private:
  void drop_view() {
    view_ = nullptr;
    view_size_ = 0;
    keeper_.reset();
  }
  std::string own_;
  const char* view_ = nullptr;
  size_t view_size_ = 0;
  std::shared_ptr<const void> keeper_;
};

}  // namespace smp
