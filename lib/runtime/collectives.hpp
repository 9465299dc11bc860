// Collectives inside a stage's forward and backward (tensor parallelism): the interface the
// kernels of the inserted TpCopy / TpAllReduce nodes and the vocabulary-parallel loss call. The
// runtime does not know how the ranks talk: the train layer implements it over
// comm::Communicator for the ranks of one tensor-parallel group (DESIGN.md: runtime never
// includes comm).
#pragma once

#include <cstddef>

namespace smp::runtime {

enum class ReduceOp { Sum, Max };

class Collectives {
 public:
  virtual ~Collectives() = default;
  virtual int size() const = 0;  // ranks of the group
  virtual int rank() const = 0;  // this rank's index in it
  // In-place reduction of `count` floats over the group; every member calls it in the same
  // order with the same count. `data` is in the backend's memory (host memory for the CPU).
  virtual void all_reduce(float* data, size_t count, ReduceOp op) = 0;
};

}  // namespace smp::runtime
