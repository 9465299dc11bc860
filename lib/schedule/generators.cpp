#include "schedule/generators.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

#include <algorithm>

namespace smp::schedule {

namespace {

void need_one_chunk(const char* name, int chunks, const std::string& where) {
  if (chunks != 1)
    throw_bad_input(where, fmt::format("{} runs one chunk per rank, not {}", name, chunks),
                    chunks > 1 ? "use --schedule interleaved for several chunks per rank, or --chunks 1"
                               : "use --chunks 1");
}

}  // namespace

Schedule gpipe(int p, int m, int v) {
  Schedule s = empty_schedule("gpipe", p, m, v, "gpipe");
  for (int r = 0; r < p; ++r) {
    auto& out = s.actions[static_cast<size_t>(r)];
    out.reserve(static_cast<size_t>(2 * v * m));
    for (int c = 0; c < v; ++c)
      for (int mb = 0; mb < m; ++mb) out.push_back(compute(Op::Forward, c * p + r, mb));
    for (int c = v - 1; c >= 0; --c)
      for (int mb = 0; mb < m; ++mb) out.push_back(compute(Op::Backward, c * p + r, mb));
  }
  return s;
}

Schedule one_f_one_b(int p, int m) {
  Schedule s = empty_schedule("1f1b", p, m, 1, "1f1b");
  for (int r = 0; r < p; ++r) {
    auto& out = s.actions[static_cast<size_t>(r)];
    out.reserve(static_cast<size_t>(2 * m));
    int warmup = std::min(p - r - 1, m);
    int f = 0, b = 0;
    for (; f < warmup; ++f) out.push_back(compute(Op::Forward, r, f));
    while (f < m) {
      out.push_back(compute(Op::Forward, r, f++));
      out.push_back(compute(Op::Backward, r, b++));
    }
    while (b < m) out.push_back(compute(Op::Backward, r, b++));
  }
  return s;
}

Schedule interleaved(int p, int m, int v) {
  Schedule s = empty_schedule("interleaved", p, m, v, "interleaved");
  if (v < 2)
    throw_bad_input("interleaved", fmt::format("needs at least 2 chunks per rank, got {}", v),
                    "use --chunks 2 or more, or --schedule 1f1b");
  if (m % p != 0)
    throw_bad_input("interleaved",
                    fmt::format("{} microbatches is not a multiple of {} ranks", m, p),
                    fmt::format("Megatron's interleaved schedule needs that; try --microbatches {}",
                                (m / p + 1) * p));
  const int total = m * v;
  const int group = p * v;
  // Virtual microbatch k -> (chunk, microbatch), as in Megatron-LM.
  auto chunk_of = [&](int k, bool forward) {
    int c = (k % group) / p;
    return forward ? c : v - 1 - c;
  };
  auto mb_of = [&](int k) { return (k / group) * p + k % p; };
  for (int r = 0; r < p; ++r) {
    auto& out = s.actions[static_cast<size_t>(r)];
    out.reserve(static_cast<size_t>(2 * total));
    int warmup = std::min((p - r - 1) * 2 + (v - 1) * p, total);
    int remaining = total - warmup;
    auto fwd = [&](int k) { out.push_back(compute(Op::Forward, chunk_of(k, true) * p + r, mb_of(k))); };
    auto bwd = [&](int k) { out.push_back(compute(Op::Backward, chunk_of(k, false) * p + r, mb_of(k))); };
    for (int k = 0; k < warmup; ++k) fwd(k);
    for (int k = 0; k < remaining; ++k) {
      fwd(warmup + k);
      bwd(k);
    }
    for (int k = remaining; k < total; ++k) bwd(k);
  }
  return s;
}

Schedule zb_h1(int p, int m) {
  Schedule s = empty_schedule("zb-h1", p, m, 1, "zb-h1");
  for (int r = 0; r < p; ++r) {
    auto& out = s.actions[static_cast<size_t>(r)];
    out.reserve(static_cast<size_t>(3 * m));
    int f = 0, b = 0, w = 0;
    auto F = [&] { out.push_back(compute(Op::Forward, r, f++)); };
    auto B = [&] { out.push_back(compute(Op::BackwardInput, r, b++)); };
    auto W = [&] { out.push_back(compute(Op::BackwardWeight, r, w++)); };
    // Warm-up as in 1F1B: p-r-1 forwards.
    for (int i = 0; i < p - r - 1 && f < m; ++i) F();
    // r steps of one forward, one B: rank r defers r of its W passes.
    for (int i = 0; i < r && f < m; ++i) {
      F();
      B();
    }
    // Steady state: F, B, W.
    while (f < m) {
      F();
      B();
      W();
    }
    // Cool-down: B, W while B passes remain, then the deferred W passes fill the tail.
    while (b < m) {
      B();
      W();
    }
    while (w < m) W();
  }
  return s;
}

const std::vector<GeneratorInfo>& generators() {
  static const std::vector<GeneratorInfo> list = {
      {"gpipe", "any chunks, any microbatches",
       "all forwards, then all backwards (SageMaker's \"simple\"); stashes every microbatch"},
      {"1f1b", "chunks = 1, any microbatches",
       "PipeDream-Flush: warm-up forwards, then one forward one backward, then cool-down"},
      {"interleaved", "chunks >= 2, microbatches a multiple of ranks",
       "Megatron's interleaved 1F1B over v chunks per rank: bubble shrinks by v"},
      {"zb-h1", "chunks = 1, any microbatches",
       "zero bubble ZB-H1 (Qi et al. 2024): backward split into B and W, W deferred into the "
       "cool-down; 1F1B's activation stash"},
  };
  return list;
}

Schedule make_schedule(std::string_view name, int p, int m, int v, const std::string& where) {
  // Size checks first, so that they name the option the user gave.
  empty_schedule(std::string(name), p, m, v, where);
  try {
    if (name == "gpipe") return gpipe(p, m, v);
    if (name == "1f1b") {
      need_one_chunk("1f1b", v, where);
      return one_f_one_b(p, m);
    }
    if (name == "interleaved") return interleaved(p, m, v);
    if (name == "zb-h1") {
      need_one_chunk("zb-h1", v, where);
      return zb_h1(p, m);
    }
  } catch (const Error& e) {
    if (e.kind() == ErrorKind::BadInput && std::string_view(e.what()).starts_with(name))
      throw Error(ErrorKind::BadInput, where + ": " + e.what());
    throw;
  }
  std::string names;
  for (const auto& g : generators()) names += (names.empty() ? "" : ", ") + g.name;
  throw_bad_input(where, fmt::format("unknown schedule '{}'", name), "one of " + names);
}

}  // namespace smp::schedule
