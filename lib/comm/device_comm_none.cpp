// The device communicator in a build without the CUDA backend: nothing to make (the worker keeps
// its tensors on the host and moves them over the control plane).
#include "comm/device_comm.hpp"

#include "core/error.hpp"

namespace smp::comm {

bool device_comm_compiled() { return false; }
bool nccl_compiled() { return false; }
std::string nccl_version() { return "no nccl in this build (built without CUDA)"; }

std::unique_ptr<Communicator> make_device_comm(Communicator&, const DeviceCommConfig&) {
  throw_failure("device communicator", "this build has no CUDA backend", "rebuild with -DSMP_CUDA=on");
}

}  // namespace smp::comm
