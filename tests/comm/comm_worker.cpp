// An MPI program the comm tests start with mpirun: each mode exercises one behaviour of the
// communicator on real processes. Prints "ok <rank>" on success; errors go to stderr as
// "error: ..." with exit status 1, as a worker does.
#include "comm/comm.hpp"
#include "comm/launch.hpp"
#include "core/error.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cstdlib>
#include <csignal>
#include <cstring>
#include <numeric>
#include <thread>
#include <unistd.h>
#include <vector>

using namespace smp;

namespace {

void check(bool cond, const std::string& what) {
  if (!cond) throw_failure("comm_worker", what);
}

// Every rank sends a distinct pattern to the next rank and receives from the previous one,
// several messages of several sizes with the receives posted first.
void ring(comm::Communicator& c) {
  int r = c.rank(), n = c.size();
  int next = (r + 1) % n, prev = (r + n - 1) % n;
  for (size_t bytes : {size_t{1}, size_t{1000}, size_t{1} << 20, size_t{0}}) {
    std::vector<std::vector<uint8_t>> in(3, std::vector<uint8_t>(bytes)), out(3, std::vector<uint8_t>(bytes));
    std::vector<comm::Request> recvs, sends;
    for (int k = 0; k < 3; ++k) recvs.push_back(c.irecv(in[k].data(), bytes, prev, 100 + k));
    for (int k = 0; k < 3; ++k) {
      for (size_t i = 0; i < bytes; ++i) out[k][i] = static_cast<uint8_t>(r * 31 + k * 7 + i);
      sends.push_back(c.isend(out[k].data(), bytes, next, 100 + k));
    }
    for (int k = 2; k >= 0; --k) c.wait(recvs[k], fmt::format("message {}", k));
    for (auto& s : sends) c.wait(s, "send");
    for (int k = 0; k < 3; ++k)
      for (size_t i = 0; i < bytes; ++i)
        check(in[k][i] == static_cast<uint8_t>(prev * 31 + k * 7 + i), "ring payload differs");
  }
}

void allreduce(comm::Communicator& c) {
  int r = c.rank(), n = c.size();
  // Two groups (even and odd ranks), then everyone.
  std::vector<int> group;
  for (int k = r % 2; k < n; k += 2) group.push_back(k);
  std::vector<float> v(1000);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(r + i);
  c.allreduce_sum(v.data(), v.size(), group);
  float members = 0;
  for (int k : group) members += static_cast<float>(k);
  for (size_t i = 0; i < v.size(); ++i)
    check(v[i] == members + static_cast<float>(i) * static_cast<float>(group.size()), "group sum wrong");
  std::vector<int> all(static_cast<size_t>(n));
  std::iota(all.begin(), all.end(), 0);
  double d = r + 0.5;
  c.allreduce_sum(&d, 1, all);
  check(d == n * (n - 1) / 2.0 + 0.5 * n, "world sum wrong");
  c.barrier();
}

}  // namespace

// Sends and receives in an order that leaves most messages waiting for their receive: a 64 MiB
// message and many small ones with interleaved tags, the receives posted late and out of order.
void unexpected(comm::Communicator& c) {
  const int peer = c.rank() ^ 1;
  if (peer >= c.size()) return;
  const size_t big = size_t{64} << 20;
  std::vector<uint8_t> out(big), in(big);
  for (size_t i = 0; i < big; ++i) out[i] = static_cast<uint8_t>(i * 7 + static_cast<size_t>(c.rank()));
  std::vector<comm::Request> sends;
  std::vector<std::vector<int>> small(40, std::vector<int>(100));
  for (int k = 0; k < 40; ++k) {
    for (int i = 0; i < 100; ++i) small[k][i] = c.rank() * 100000 + k * 100 + i;
    sends.push_back(c.isend(small[k].data(), 400, peer, k % 5));
  }
  sends.push_back(c.isend(out.data(), big, peer, 77));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));  // all of it arrives before a receive is posted
  auto r_big = c.irecv(in.data(), big, peer, 77);
  // Per tag, in order; the tags themselves in reverse.
  for (int tag = 4; tag >= 0; --tag)
    for (int k = tag; k < 40; k += 5) {
      std::vector<int> got(100);
      auto r = c.irecv(got.data(), 400, peer, tag);
      c.wait(r, "a small message");
      for (int i = 0; i < 100; ++i) check(got[i] == peer * 100000 + k * 100 + i, "a small message differs or came out of order");
    }
  c.wait(r_big, "the big message");
  for (size_t i = 0; i < big; ++i)
    if (in[i] != static_cast<uint8_t>(i * 7 + static_cast<size_t>(peer))) check(false, "the big message differs");
  for (auto& s : sends) c.wait(s, "send");
  c.barrier();
}

int main(int argc, char** argv) {
  // Run under smp's local launcher, this program is its own supervisor.
  if (argc >= 4 && std::string(argv[1]) == comm::kLocalSupervisorFlag)
    return comm::local_supervisor(std::atoi(argv[2]), std::vector<std::string>(argv + 4, argv + argc));
  auto c = comm::init_comm(&argc, &argv);
  std::string mode = argc > 1 ? argv[1] : "ring";
  try {
    if (mode == "ring") ring(*c);
    else if (mode == "allreduce") allreduce(*c);
    else if (mode == "unexpected") unexpected(*c);
    else if (mode == "silent-peer") {
      // Rank 1 waits for a message rank 0 never sends: a timeout, not a hang.
      c->set_timeout_s(2);
      if (c->rank() == 1) {
        float x = 0;
        auto r = c->irecv(&x, sizeof x, 0, 7);
        c->wait(r, "activation of stage 1, microbatch 0");
      } else {
        std::this_thread::sleep_for(std::chrono::seconds(4));
      }
    } else if (mode == "size-mismatch") {
      if (c->rank() == 0) {
        double x[1] = {1};
        auto s = c->isend(x, sizeof x, 1, 3);
        c->wait(s, "send");
      } else if (c->rank() == 1) {
        double x[2] = {0, 0};
        auto r = c->irecv(x, sizeof x, 0, 3);
        c->wait(r, "gradient");
      }
    } else if (mode == "die") {
      // Rank 1 is killed; the others wait for it with a timeout of an hour: the launcher must
      // end the job, far before that.
      c->set_timeout_s(3600);
      if (c->rank() == 1) ::raise(SIGKILL);
      float x = 0;
      auto r = c->irecv(&x, sizeof x, 1, 9);
      c->wait(r, "a message from the dead rank");
    } else {
      throw_bad_input("mode", "unknown mode " + mode);
    }
  } catch (const Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    std::fflush(stderr);
    // As smp-run's workers do: exit, and mpirun ends the others (MPI_Abort racing a peer's
    // MPI_Finalize has left Open MPI 4.1's mpirun hanging).
    std::_Exit(e.exit_code());
  }
  std::printf("ok %d\n", c->rank());
  return 0;
}
