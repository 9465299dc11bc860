#include "graph/einsum.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>

namespace smp::graph {

Shape EinsumSpec::output_shape() const {
  Shape s;
  for (int l : output) s.push_back(size.at(l));
  return s;
}

namespace {
std::string label_name(int l) { return l < 256 ? std::string(1, static_cast<char>(l)) : "..."; }

// The labels of one term; -1 stands for the ellipsis. Empty string when well-formed.
std::string letters(const std::string& t, std::vector<int>& out, bool& ell) {
  ell = false;
  for (size_t i = 0; i < t.size(); ++i) {
    if (t.compare(i, 3, "...") == 0) {
      if (ell) return "two ellipses in one term";
      ell = true;
      out.push_back(-1);
      i += 2;
    } else if (std::isalpha(static_cast<unsigned char>(t[i]))) {
      out.push_back(t[i]);
    } else {
      return fmt::format("bad character '{}'", t[i]);
    }
  }
  return "";
}
}  // namespace

std::string parse_einsum(const std::string& equation, const std::vector<Shape>& shapes, EinsumSpec& s) {
  s = EinsumSpec{};
  std::string eq;
  for (char c : equation)
    if (c != ' ') eq += c;
  if (eq.empty()) return "no equation";
  std::string lhs = eq, rhs;
  bool explicit_out = false;
  if (auto p = eq.find("->"); p != std::string::npos) {
    lhs = eq.substr(0, p);
    rhs = eq.substr(p + 2);
    explicit_out = true;
  }
  std::vector<std::string> terms;
  size_t b = 0;
  for (size_t i = 0; i <= lhs.size(); ++i)
    if (i == lhs.size() || lhs[i] == ',') {
      terms.push_back(lhs.substr(b, i - b));
      b = i + 1;
    }
  if (terms.size() != shapes.size())
    return fmt::format("equation '{}' has {} operands, the node {} inputs", eq, terms.size(), shapes.size());
  int64_t ell_rank = 0;
  std::map<int, int> count;
  for (size_t k = 0; k < terms.size(); ++k) {
    std::vector<int> ls;
    bool ell;
    if (auto e = letters(terms[k], ls, ell); !e.empty()) return e + " in equation '" + eq + "'";
    const Shape& x = shapes[k];
    int64_t named = static_cast<int64_t>(ls.size()) - (ell ? 1 : 0);
    if ((ell && named > static_cast<int64_t>(x.size())) || (!ell && named != static_cast<int64_t>(x.size())))
      return fmt::format("term '{}' does not fit operand {} of shape {}", terms[k], k, shape_str(x));
    std::vector<int> labels;
    for (int l : ls) {
      if (l != -1) {
        labels.push_back(l);
        continue;
      }
      int64_t r = static_cast<int64_t>(x.size()) - named;
      ell_rank = std::max(ell_rank, r);
      for (int64_t j = 0; j < r; ++j) labels.push_back(256 + static_cast<int>(r - 1 - j));
    }
    for (size_t i = 0; i < labels.size(); ++i) {
      int l = labels[i];
      if (std::count(labels.begin(), labels.end(), l) > 1)
        return fmt::format("label '{}' repeats within operand {} (diagonals are not supported)", label_name(l), k);
      auto [it, fresh] = s.size.emplace(l, x[i]);
      if (!fresh && it->second != x[i])
        return fmt::format("label '{}' is {} in one operand, {} in another", label_name(l), it->second, x[i]);
      ++count[l];
    }
    s.inputs.push_back(std::move(labels));
  }
  auto ellipsis = [&] {
    for (int64_t j = 0; j < ell_rank; ++j) s.output.push_back(256 + static_cast<int>(ell_rank - 1 - j));
  };
  if (explicit_out) {
    std::vector<int> ls;
    bool ell;
    if (auto e = letters(rhs, ls, ell); !e.empty()) return e + " in equation '" + eq + "'";
    for (int l : ls) {
      if (l == -1) {
        ellipsis();
        continue;
      }
      if (!s.size.count(l)) return fmt::format("output label '{}' is in no operand", label_name(l));
      if (std::find(s.output.begin(), s.output.end(), l) != s.output.end())
        return fmt::format("output label '{}' repeats", label_name(l));
      s.output.push_back(l);
    }
  } else {
    ellipsis();
    for (auto [l, c] : count)
      if (l < 256 && c == 1) s.output.push_back(l);
  }
  return "";
}

}  // namespace smp::graph
