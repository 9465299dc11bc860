// Schedule generators: small functions that emit compute-only per-rank lists (F, B, W, X).
// Lower them with lower() before a worker runs them; simulate() takes either form.
//
// name         chunks  microbatches   backward  what it is
// gpipe        v >= 1  m >= 1         X         all forwards, then all backwards (SageMaker's
//                                               "simple"); with v > 1 chunk by chunk
// 1f1b         v == 1  m >= 1         X         PipeDream-Flush: min(p-r-1, m) warm-up forwards,
//                                               then one forward one backward, then cool-down
//                                               (SageMaker's "interleaved" order)
// interleaved  v >= 2  m % p == 0     X         Megatron's interleaved 1F1B (warm-up
//                                               2(p-r-1) + (v-1)p virtual microbatches)
// zb-h1        v == 1  m >= 1         B + W     zero bubble ZB-H1 (Qi et al., ICLR 2024): 1F1B's
//                                               warm-up, B on the critical path, rank r defers
//                                               r of its W passes into the cool-down; the same
//                                               number of stashed forwards as 1F1B
// All need p >= 1, m >= 1 and p*v*m <= 2^24; violations are bad input naming the option.
#pragma once

#include "schedule/schedule.hpp"

#include <string>
#include <string_view>
#include <vector>

namespace smp::schedule {

Schedule gpipe(int ranks, int microbatches, int chunks = 1);
Schedule one_f_one_b(int ranks, int microbatches);
Schedule interleaved(int ranks, int microbatches, int chunks);
Schedule zb_h1(int ranks, int microbatches);

struct GeneratorInfo {
  std::string name;      // "gpipe", "1f1b", "interleaved", "zb-h1"
  std::string needs;     // e.g. "chunks >= 2, microbatches a multiple of ranks"
  std::string summary;   // one line
};
const std::vector<GeneratorInfo>& generators();

// By name; an unknown name or unsupported sizes are bad input naming `where`
// (e.g. "--schedule").
Schedule make_schedule(std::string_view name, int ranks, int microbatches, int chunks = 1,
                       const std::string& where = "--schedule");

}  // namespace smp::schedule
