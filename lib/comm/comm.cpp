#include "comm/comm.hpp"

namespace smp::comm {

Request::Request(std::unique_ptr<Impl> impl, int peer, int tag) : impl_(std::move(impl)), peer_(peer), tag_(tag) {}
Request::Request() = default;
Request::Request(Request&&) noexcept = default;
Request& Request::operator=(Request&&) noexcept = default;
Request::~Request() = default;
void Request::reset() { impl_.reset(); }

Request Communicator::iallreduce_sum(float* data, size_t count, const std::vector<int>& group) {
  allreduce_sum(data, count, group);
  return Request();
}

}  // namespace smp::comm
