// The device communicator on a GPU (skipped, CTest code 77, without one): processes started by
// smp's local launcher (no MPI), device buffers moved over NCCL (a rank with itself; two ranks
// on two GPUs where the machine has them) and between ranks that share one GPU (CUDA IPC, and
// staged through host memory), every byte checked by the worker.
#include "test_process.hpp"

#include <doctest/doctest.h>

#include "comm/launch.hpp"
#include "runtime/backends.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <string>

using namespace smp;

namespace {

// In the build tree, or where SMP_BIN_DIR says (the device bundle's bin/, scripts/device-check.sh).
const std::string kWorker = std::getenv("SMP_BIN_DIR") ? std::string(std::getenv("SMP_BIN_DIR")) + "/device_comm_worker"
                                                       : std::string(SMP_BIN_DIR) + "/../tests/comm/device_comm_worker";

test::CmdResult launch(int ranks, const std::string& mode, const std::string& env = "") {
  comm::Command c = comm::local_command(ranks, kWorker, kWorker, {mode});
  std::string cmd;
  for (const auto& [k, v] : c.env) cmd += k + "='" + v + "' ";
  for (const auto& a : c.argv) cmd += "'" + a + "' ";
  return test::run_cmd("timeout -k 5 120 env " + env + " " + cmd);  // a hang fails, never stalls
}

}  // namespace

TEST_CASE("one rank's NCCL channel to itself: sends and receives of a tick in one group, every byte arrives") {
  auto r = launch(1, "self");
  INFO(r.out);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("ok 0 device (nccl ") != std::string::npos);
  CHECK(r.out.find("channels over nccl") != std::string::npos);
}

TEST_CASE("a receive that nobody sends: the deadline, NCCL aborted, one line naming the peer and the tensor") {
  auto r = launch(1, "self-stuck");
  INFO(r.out);
  CHECK(r.exit_code == 1);
  CHECK(r.out.find("no progress with rank 0 for 3 s while moving gradient message 0") != std::string::npos);
  CHECK(r.out.find("ok 0") == std::string::npos);
}

TEST_CASE("two ranks on one GPU: CUDA IPC slots reused over steps, host-staged sums; the same through host memory") {
  for (const std::string same : {"ipc", "host", ""}) {
    auto r = launch(2, "pair", same.empty() ? "" : "SMP_SAME_GPU=" + same);
    INFO(same, "\n", r.out);
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("ok 0 ") != std::string::npos);
    CHECK(r.out.find("ok 1 ") != std::string::npos);
    if (same == "ipc") CHECK(r.out.find("2 channels over cuda-ipc") != std::string::npos);
    if (same == "host") CHECK(r.out.find("2 channels over host-staged") != std::string::npos);
    CHECK(r.out.find("1 gradient group through the host") != std::string::npos);
  }
}

TEST_CASE("two ranks on two GPUs: NCCL channels and an NCCL sum (machines with two GPUs)") {
  if (runtime::cuda_device_count() < 2) {
    MESSAGE("one GPU: the two-GPU case needs two");
    return;
  }
  auto r = launch(2, "pair-nccl");
  INFO(r.out);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("2 channels over nccl, 1 gradient group over nccl") != std::string::npos);
}
