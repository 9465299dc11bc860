// Default group collectives of comm::Communicator, built on allreduce_sum (an implementation
// with native ones overrides them, as MpiCommunicator does).
#include "comm/comm.hpp"

#include "core/error.hpp"

#include <algorithm>
#include <cstring>

namespace smp::comm {

namespace {

size_t index_in(const std::vector<int>& group, int rank) {
  auto it = std::find(group.begin(), group.end(), rank);
  SMP_CHECK(it != group.end(), "rank {} is not in its group", rank);
  return static_cast<size_t>(it - group.begin());
}

}  // namespace

void Communicator::allreduce_max(float* data, size_t count, const std::vector<int>& group) {
  if (group.size() <= 1 || count == 0) return;
  // Every member's values in its own block, zeros elsewhere; the sum is then a gather.
  std::vector<float> all(count * group.size(), 0.0f);
  const size_t me = index_in(group, rank());
  std::memcpy(all.data() + me * count, data, count * sizeof(float));
  allreduce_sum(all.data(), all.size(), group);
  for (size_t i = 0; i < count; ++i) {
    float m = all[i];
    for (size_t k = 1; k < group.size(); ++k) m = std::max(m, all[k * count + i]);
    data[i] = m;
  }
}

void Communicator::reduce_scatter_sum(const float* send, float* recv, size_t count, const std::vector<int>& group) {
  const size_t me = index_in(group, rank());
  std::vector<float> all(send, send + count * group.size());
  allreduce_sum(all.data(), all.size(), group);
  std::memcpy(recv, all.data() + me * count, count * sizeof(float));
}

void Communicator::all_gather(const float* send, float* recv, size_t count, const std::vector<int>& group) {
  const size_t me = index_in(group, rank());
  std::fill(recv, recv + count * group.size(), 0.0f);
  std::memcpy(recv + me * count, send, count * sizeof(float));
  allreduce_sum(recv, count * group.size(), group);
}

}  // namespace smp::comm
