// The device communicator: a comm::Communicator whose isend / irecv / iallreduce_sum take
// device pointers, so that the worker loop moves GPU tensors as it moves host buffers. MPI (or
// the local launcher's sockets) stays the control plane — it carries the set-up, the checks and
// the host-side sums — and this carries the tensors:
//
//  * ranks on different GPUs: NCCL. One two-rank communicator, with its own stream, per channel
//    (plan/messages.hpp: one direction of one kind between two ranks), so that channels never
//    wait for each other; one communicator per data-parallel group for the gradients' sums
//    (fp32, in buckets, issued while the backward still runs). The ncclUniqueId of each goes over
//    the control plane; all are made at start-up (non-blocking, under the deadline) and each
//    channel is warmed up with a one-byte exchange before the first step.
//  * ranks that share a GPU (NCCL refuses them: "Duplicate GPU detected"): CUDA IPC — the sender
//    copies into a ring of slots the receiver has mapped, both ordered by IPC events and told
//    over the control plane (comm/slot_ring.hpp) — or, where IPC does not work (or is asked
//    not to), staged through pinned host memory and the control plane; chosen at start-up.
//
// Sends and receives posted between two flush() calls (one schedule tick) are issued together
// (one ncclGroupStart / End), after an event on the compute stream (no device-wide
// synchronisation). A receive is complete when its event is; wait() then orders the compute
// stream after it. Every message is checked against the channel's list (tag, bytes) as it is
// posted. Deadlines: wait() fails after the timeout naming the peer and the tensor; a watchdog
// thread polls ncclCommGetAsyncError and the age of every operation in flight, and on an error
// or a timeout aborts every communicator (ncclCommAbort, never ncclCommDestroy on a hung one);
// the next call on the main thread then throws, or, if it does not come within a few seconds,
// on_fatal ends the process.
//
// No CUDA or NCCL headers here: the worker (lib/train) builds the configuration.
#pragma once

#include "comm/comm.hpp"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace smp::comm {

// One channel as this rank sees it: the messages it sends to `peer` (send) or receives from it,
// in order.
struct DeviceChannel {
  int peer = -1;
  bool send = true;
  int kind = 0;                   // 0 activations, 1 gradients (one channel per direction and kind)
  std::vector<int64_t> tags;      // per message: the tag isend / irecv name it by
  std::vector<int64_t> bytes;     // per message
  std::vector<std::string> what;  // per message, for errors: "activations of stage 0 -> 1, microbatch 3, tensor 'x' (...)"
};

struct DeviceCommConfig {
  int device = 0;                  // the CUDA device this rank computes on (runtime index)
  void* compute_stream = nullptr;  // the backend's cudaStream_t
  std::vector<DeviceChannel> channels;
  std::vector<std::vector<int>> groups;  // data-parallel groups (ascending ranks) it sums gradients in
  double timeout_s = 60;
  // How ranks that share a GPU exchange tensors: "auto" (CUDA IPC, else through host memory),
  // "ipc", "host".
  std::string same_gpu = "auto";
  // The watchdog's last resort after aborting (the main thread did not take the error in time):
  // report and end the process. Called from the watchdog thread.
  std::function<void(const std::string& message)> on_fatal;
};

// Whether this build has the device communicator (the CUDA backend), and NCCL in it.
bool device_comm_compiled();
bool nccl_compiled();
// "nccl 2.28.9", or why not.
std::string nccl_version();

// Makes the device communicator of this rank (collective: every rank of the job with a channel
// or group in common calls it at the same point). Failure naming the peer when set-up fails.
// `control` must outlive it.
std::unique_ptr<Communicator> make_device_comm(Communicator& control, const DeviceCommConfig& cfg);

}  // namespace smp::comm
