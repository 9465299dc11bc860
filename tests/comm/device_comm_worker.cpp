// A program the GPU tests of the device communicator start with smp's local launcher (no MPI:
// the GPU machines have none): each mode moves device buffers through comm::make_device_comm
// and checks every byte that arrives. Prints "ok <rank> <transport>" on success; errors go to
// stderr as "error: ..." with the worker's exit status.
#include "comm/comm.hpp"
#include "comm/device_comm.hpp"
#include "comm/launch.hpp"
#include "core/error.hpp"

#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

using namespace smp;

namespace {

void cu(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_failure("device_comm_worker", fmt::format("{}: {}", what, cudaGetErrorString(e)));
}
void check(bool cond, const std::string& what) {
  if (!cond) throw_failure("device_comm_worker", what);
}

// The byte pattern of message `i` of step `step` on a channel from `from`.
uint8_t pattern(int from, int step, size_t i, size_t k) { return static_cast<uint8_t>(from * 53 + step * 17 + i * 7 + k * 13); }

struct Buffers {
  std::vector<void*> dev;
  ~Buffers() {
    for (void* p : dev) cudaFree(p);
  }
  void* make(size_t bytes) {
    void* p = nullptr;
    cu(cudaMalloc(&p, std::max<size_t>(bytes, 1)), "cudaMalloc");
    dev.push_back(p);
    return p;
  }
};

// One channel's list: `n` messages of growing sizes (more messages than the same-GPU ring has
// slots, so that its slots are reused), tags 100 + i / 2 (two tensors per tag, as a cut of two).
comm::DeviceChannel channel(int peer, bool send, int kind, int n) {
  comm::DeviceChannel ch;
  ch.peer = peer;
  ch.send = send;
  ch.kind = kind;
  for (int i = 0; i < n; ++i) {
    ch.tags.push_back(100 + i / 2);
    ch.bytes.push_back(int64_t{1000} * (i + 1) + (i % 3) * 4093 + (i == n - 1 ? (int64_t{1} << 20) : 0));
    ch.what.push_back(fmt::format("{} message {}", kind == 0 ? "activation" : "gradient", i));
  }
  return ch;
}

// Every step: posts each send (filled with its pattern) and receive of `channels` in one tick,
// flushes, waits for the receives, checks them.
void exchange(comm::Communicator& d, const std::vector<comm::DeviceChannel>& channels, cudaStream_t compute, int steps) {
  const int me = d.rank();
  for (int step = 0; step < steps; ++step) {
    Buffers buf;
    std::vector<comm::Request> sends, recvs;
    std::vector<std::pair<void*, size_t>> got;
    std::vector<int> from;
    std::vector<size_t> index;
    for (const auto& ch : channels)
      for (size_t i = 0; i < ch.tags.size(); ++i) {
        const size_t bytes = static_cast<size_t>(ch.bytes[i]);
        void* p = buf.make(bytes);
        if (ch.send) {
          std::vector<uint8_t> host(bytes);
          for (size_t k = 0; k < bytes; ++k) host[k] = pattern(me, step, i, k);
          cu(cudaMemcpyAsync(p, host.data(), bytes, cudaMemcpyHostToDevice, compute), "cudaMemcpyAsync");
          cu(cudaStreamSynchronize(compute), "cudaStreamSynchronize");  // host vector leaves scope
          sends.push_back(d.isend(p, bytes, ch.peer, static_cast<int>(ch.tags[i])));
        } else {
          cu(cudaMemsetAsync(p, 0xEE, bytes, compute), "cudaMemsetAsync");
          recvs.push_back(d.irecv(p, bytes, ch.peer, static_cast<int>(ch.tags[i])));
          got.emplace_back(p, bytes);
          from.push_back(ch.peer);
          index.push_back(i);
        }
      }
    d.flush();
    for (size_t r = 0; r < recvs.size(); ++r) d.wait(recvs[r], fmt::format("message {} of step {}", index[r], step));
    for (auto& s : sends) d.wait(s, "a send");
    cu(cudaStreamSynchronize(compute), "cudaStreamSynchronize");
    for (size_t r = 0; r < got.size(); ++r) {
      std::vector<uint8_t> host(got[r].second);
      cu(cudaMemcpy(host.data(), got[r].first, host.size(), cudaMemcpyDeviceToHost), "cudaMemcpy");
      for (size_t k = 0; k < host.size(); ++k)
        check(host[k] == pattern(from[r], step, index[r], k),
              fmt::format("step {}, message {} from rank {}: byte {} is {} (expected {})", step, index[r], from[r], k, host[k],
                          pattern(from[r], step, index[r], k)));
    }
  }
}

// A sum over `group` of a device buffer (rank r contributes r + i at element i).
void sum(comm::Communicator& d, const std::vector<int>& group, cudaStream_t compute) {
  const size_t n = (size_t{1} << 18) + 3;
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<float>(d.rank()) + static_cast<float>(i % 1000);
  Buffers buf;
  auto* p = static_cast<float*>(buf.make(n * sizeof(float)));
  cu(cudaMemcpyAsync(p, host.data(), n * sizeof(float), cudaMemcpyHostToDevice, compute), "cudaMemcpyAsync");
  comm::Request r = d.iallreduce_sum(p, n, group);
  d.flush();
  d.wait(r, "the sum");
  cu(cudaMemcpyAsync(host.data(), p, n * sizeof(float), cudaMemcpyDeviceToHost, compute), "cudaMemcpyAsync");
  cu(cudaStreamSynchronize(compute), "cudaStreamSynchronize");
  float ranks = 0;
  for (int g : group) ranks += static_cast<float>(g);
  for (size_t i = 0; i < n; ++i)
    check(host[i] == ranks + static_cast<float>(group.size()) * static_cast<float>(i % 1000),
          fmt::format("sum element {} is {}", i, host[i]));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 4 && std::string(argv[1]) == comm::kLocalSupervisorFlag)
    return comm::local_supervisor(std::atoi(argv[2]), std::vector<std::string>(argv + 4, argv + argc));
  auto c = comm::init_comm(&argc, &argv);
  const std::string mode = argc > 1 ? argv[1] : "self";
  try {
    const int me = c->rank();
    int devices = 0;
    cu(cudaGetDeviceCount(&devices), "cudaGetDeviceCount");
    comm::DeviceCommConfig cfg;
    // "pair-nccl": one GPU each; otherwise every rank on device 0 (the same GPU).
    cfg.device = mode == "pair-nccl" ? me % devices : 0;
    cu(cudaSetDevice(cfg.device), "cudaSetDevice");
    cudaStream_t compute = nullptr;
    cu(cudaStreamCreateWithFlags(&compute, cudaStreamNonBlocking), "cudaStreamCreate");
    cfg.compute_stream = compute;
    cfg.timeout_s = 30;
    cfg.on_fatal = [me](const std::string& msg) {
      std::fprintf(stderr, "error: rank %d: %s\n", me, msg.c_str());
      std::fflush(stderr);
      std::_Exit(1);
    };
    if (mode == "self" || mode == "self-stuck") {
      // One rank's NCCL communicator with itself: sends and receives of one tick in one group.
      check(c->size() == 1, "mode self runs on one rank");
      cfg.channels = {channel(0, true, 0, 6), channel(0, false, 0, 6)};
      if (mode == "self-stuck") {
        // A receive nobody sends: the wait's deadline, every communicator aborted, one line
        // naming the peer and the tensor.
        cfg.timeout_s = 3;
        cfg.channels = {channel(0, false, 1, 1)};
      }
      auto d = comm::make_device_comm(*c, cfg);
      if (mode == "self") exchange(*d, cfg.channels, compute, 3);
      else {
        Buffers buf;
        void* p = buf.make(static_cast<size_t>(cfg.channels[0].bytes[0]));
        comm::Request r = d->irecv(p, static_cast<size_t>(cfg.channels[0].bytes[0]), 0, 100);
        d->flush();
        d->wait(r, "the stuck receive");
      }
      std::printf("ok %d %s\n", me, d->transport().c_str());
    } else if (mode == "pair" || mode == "pair-nccl") {
      // Two ranks: activations 0 -> 1, gradients 1 -> 0 (each more messages than the same-GPU
      // ring's slots), then a sum over both.
      check(c->size() == 2, "mode pair runs on two ranks");
      const int peer = 1 - me;
      cfg.channels = {channel(peer, me == 0, 0, 9), channel(peer, me == 1, 1, 7)};
      cfg.groups = {{0, 1}};
      if (const char* sg = std::getenv("SMP_SAME_GPU")) cfg.same_gpu = sg;
      auto d = comm::make_device_comm(*c, cfg);
      exchange(*d, cfg.channels, compute, 3);
      sum(*d, {0, 1}, compute);
      std::printf("ok %d %s\n", me, d->transport().c_str());
    } else {
      throw_bad_input("mode", "unknown mode " + mode);
    }
    std::fflush(stdout);
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fflush(stderr);
    std::_Exit(e.exit_code());
  }
  return 0;
}
