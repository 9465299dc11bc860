// Reading a run's checkpoints in tests (test_run, test_hosts).
#pragma once

#include "train/checkpoint.hpp"

#include <filesystem>
#include <map>
#include <string>

namespace smp::test {

// Every tensor of stages 0 .. stages-1 of a checkpoint step, by name.
inline std::map<std::string, std::string> stage_weights(const std::filesystem::path& root, int64_t step, int stages) {
  std::map<std::string, std::string> w;
  for (int s = 0; s < stages; ++s)
    for (auto& t : train::read_stage_checkpoint(train::stage_file(root, step, s)).tensors) w[t.name] = t.bytes.copy();
  return w;
}

}  // namespace smp::test
