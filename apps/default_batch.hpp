// The batch smp-plan and smp-profile use when --batch-size is not given.
#pragma once

#include "core/error.hpp"
#include "graph/loader.hpp"

#include <fmt/format.h>

#include <cstdint>
#include <set>
#include <string>

namespace smp::app {

// Samples per device when the model's batch axis is symbolic: enough for a pipeline over the
// devices to have several microbatches of a few samples each.
constexpr int64_t kDefaultSamplesPerDevice = 8;

// The model's fixed batch dimension where its inputs have one (they must agree), else
// kDefaultSamplesPerDevice x `devices`; a model with no input of rank >= 1 plans one sample.
// `note` tells the user which, and how to choose another.
inline int64_t default_batch(const std::string& model, const graph::BatchAxis& axis, int devices, std::string& note) {
  std::set<int64_t> sizes;
  std::string listed;
  for (const auto& [name, size] : axis.fixed) {
    sizes.insert(size);
    listed += fmt::format("{}{} {}", listed.empty() ? "" : ", ", name, size);
  }
  if (sizes.size() > 1)
    throw_bad_input("--batch-size", fmt::format("not given, and the inputs of {} have different fixed leading dimensions ({})",
                                                model, listed),
                    "give --batch-size N");
  if (sizes.size() == 1 && *sizes.begin() > 0) {
    // One microbatch leaves a pipeline nothing to overlap: say how to have several.
    note = fmt::format("batch {0}: the model's fixed batch dimension (--batch-size not given; a multiple of it, e.g. -b {1}, "
                       "runs as microbatches of {0})",
                       *sizes.begin(), *sizes.begin() * 2 * std::max(devices, 1));
    return *sizes.begin();
  }
  if (axis.symbolic.empty() && axis.fixed.empty()) {
    note = "batch 1: the model's inputs have no batch axis (--batch-size not given)";
    return 1;
  }
  const int64_t b = kDefaultSamplesPerDevice * std::max(devices, 1);
  note = fmt::format("batch {}: --batch-size not given and the model's batch axis is symbolic: {} samples for each of the {} "
                     "device(s) (--batch-size N to choose)",
                     b, kDefaultSamplesPerDevice, std::max(devices, 1));
  return b;
}

inline int64_t default_batch(const std::string& model, int devices, std::string& note) {
  return default_batch(model, graph::inspect_batch_axis(model), devices, note);
}

// The size every input's leading dimension fixes, where all fix one and none is symbolic (each
// microbatch must hold that many samples: a worker loads the graph at the microbatch size); else 0.
inline int64_t fixed_batch(const graph::BatchAxis& axis) {
  std::set<int64_t> sizes;
  for (const auto& [name, size] : axis.fixed) sizes.insert(size);
  return axis.symbolic.empty() && sizes.size() == 1 ? *sizes.begin() : 0;
}

// The batch smp-plan and smp-profile load the whole graph at: the model's fixed batch where its
// inputs fix one (every microbatch holds that many samples, whatever the global batch; the cost
// model's figures are per sample either way), else the global batch.
inline int64_t graph_batch(const graph::BatchAxis& axis, int64_t batch) {
  const int64_t f = fixed_batch(axis);
  return f > 0 ? f : batch;
}

}  // namespace smp::app
