// Counter-based random numbers for the random ops (Dropout in training mode). Element i of a
// stream is a pure function of the stream's key and i (splitmix64 stepped to position i), so any
// thread — or GPU lane — draws any element, a backward draws the forward's mask again instead of
// storing it, and the numbers do not depend on the thread count.
//
// A stream's key is a function of the run's seed, the step, the global microbatch index
// (replica × microbatches + microbatch) and the node index only: a pipelined run and the same
// model run as one stage draw the same masks, and so do d replicas × m microbatches and one
// replica × d·m microbatches.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SMP_HOST_DEVICE __host__ __device__
#else
#define SMP_HOST_DEVICE
#endif

namespace smp::runtime::random {

inline constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

// splitmix64's output function.
SMP_HOST_DEVICE inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// The key of one microbatch's streams in one step.
SMP_HOST_DEVICE inline uint64_t microbatch_key(uint64_t seed, int64_t step, int64_t global_microbatch) {
  uint64_t k = mix64(seed + kGolden);
  k = mix64(k ^ (static_cast<uint64_t>(step) + 0x632BE59BD9B4E019ull));
  return mix64(k ^ (static_cast<uint64_t>(global_microbatch) + 0x8CB92BA72F3D8DD7ull));
}

// The key of one node's stream within a microbatch.
SMP_HOST_DEVICE inline uint64_t node_key(uint64_t microbatch_key, int64_t node) {
  return mix64(microbatch_key ^ mix64(static_cast<uint64_t>(node) + 0xD6E8FEB86659FD93ull));
}

// Element i of the stream `key`: uniform in [0, 1) on a 2^-24 grid (exact in float).
SMP_HOST_DEVICE inline float uniform(uint64_t key, int64_t i) {
  uint64_t z = mix64(key + (static_cast<uint64_t>(i) + 1) * kGolden);
  return static_cast<float>(z >> 40) * (1.0f / 16777216.0f);
}

// Dropout's keep decision for element i: kept with probability 1 - ratio (PyTorch's
// bernoulli(1 - p) mask).
SMP_HOST_DEVICE inline bool keep(uint64_t key, int64_t i, float ratio) { return uniform(key, i) >= ratio; }

}  // namespace smp::runtime::random
