// Communication between workers behind one small interface (isend / irecv with handles,
// all-reduce, barrier), so that the stage executor and the worker loop never see MPI or NCCL.
// Nothing above this layer includes mpi.h or nccl.h.
//
// Every wait has a deadline: a peer that stops answering is reported as a failure naming it,
// never waited for forever.
#pragma once

#include <csignal>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace smp::comm {

// A pending non-blocking operation. Move-only; wait() or test() completes it.
class Request {
 public:
  Request();
  Request(Request&&) noexcept;
  Request& operator=(Request&&) noexcept;
  Request(const Request&) = delete;
  Request& operator=(const Request&) = delete;
  ~Request();

  bool active() const { return impl_ != nullptr; }
  int peer() const { return peer_; }
  int tag() const { return tag_; }

  struct Impl;
  Request(std::unique_ptr<Impl> impl, int peer, int tag);
  Impl* impl() { return impl_.get(); }
  void reset();

 private:
  std::unique_ptr<Impl> impl_;
  int peer_ = -1;
  int tag_ = -1;
};

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string transport() const = 0;  // e.g. "mpi (Open MPI 4.1.4)"

  // Non-blocking point-to-point of raw bytes; the buffer must stay valid and untouched until
  // the request completes. Messages between one pair with one tag arrive in order.
  virtual Request isend(const void* data, size_t bytes, int peer, int tag) = 0;
  virtual Request irecv(void* data, size_t bytes, int peer, int tag) = 0;
  // Completes the request or throws smp::Error (failure) after the timeout, naming the peer and
  // `what` (e.g. "activation of stage 2, microbatch 5"). A received message of another size is
  // a failure too.
  virtual void wait(Request& r, const std::string& what) = 0;
  // True when complete (the request is then inactive); never blocks.
  virtual bool test(Request& r) = 0;
  // Moves the transfers in flight along; never blocks, costs next to nothing when called more
  // often than every ~100 us. A rank that computes calls it between kernels: with MPI over
  // shared memory a large message moves only while its sender and receiver are inside MPI.
  virtual void progress() {}

  // In-place sums over the ranks of `group` (ascending, containing this rank); every member
  // calls it with the same group and count. Deadline as for wait().
  virtual void allreduce_sum(float* data, size_t count, const std::vector<int>& group) = 0;
  virtual void allreduce_sum(double* data, size_t count, const std::vector<int>& group) = 0;
  // In-place maximum over the group (the vocabulary-parallel loss's row maxima).
  virtual void allreduce_max(float* data, size_t count, const std::vector<int>& group);
  // Optimizer-state sharding (ZeRO stage 1): the member at index i of `group` receives in
  // `recv` (count floats) the sum over the group of block i of `send` (group.size() x count
  // floats); all_gather puts block i (`send` of the member at index i, count floats) at
  // recv[i * count]. The defaults go through allreduce_sum; MPI uses its own collectives.
  virtual void reduce_scatter_sum(const float* send, float* recv, size_t count, const std::vector<int>& group);
  virtual void all_gather(const float* send, float* recv, size_t count, const std::vector<int>& group);
  virtual void barrier() = 0;

  double timeout_s() const { return timeout_s_; }
  void set_timeout_s(double s) { timeout_s_ = s; }
  // How a rank waits for a message: true keeps polling and yields the core between polls (a
  // message is seen within microseconds: right when every rank has its own cores); false (the
  // default) sleeps between polls, leaving the cores to ranks that compute (oversubscribed).
  void set_spin_wait(bool spin) { spin_wait_ = spin; }

  // While *stop_flag is non-zero (a stop was asked for: the step in progress is to finish), a
  // wait that sees no progress for `patience_s` fails: the step cannot finish, a peer is gone.
  // nullptr: no such limit (only the timeout).
  void set_stop_patience(const volatile std::sig_atomic_t* stop_flag, double patience_s) {
    stop_flag_ = stop_flag;
    stop_patience_s_ = patience_s;
  }
  // Tells every other rank that this one gives up (waiting at most ~0.2 s for the messages to
  // leave); a rank waiting for anything then fails within milliseconds, and peer_gave_up() says
  // why. A job whose workers cannot all be reached by its launcher still ends together.
  virtual void tell_peers_giving_up() {}
  bool peer_gave_up() const { return peer_gave_up_; }

  // Ends every rank of the job at once (after an error on this rank).
  [[noreturn]] virtual void abort(int exit_code) = 0;

 protected:
  double timeout_s_ = 60;
  bool spin_wait_ = false;
  const volatile std::sig_atomic_t* stop_flag_ = nullptr;
  double stop_patience_s_ = 0;
  bool peer_gave_up_ = false;
};

// MPI_Init_thread (MPI_THREAD_MULTIPLE: the backstop progress thread calls MPI too) and a
// communicator over MPI_COMM_WORLD. One per process; MPI is
// finalized when it is destroyed.
std::unique_ptr<Communicator> init_mpi(int* argc, char*** argv);

}  // namespace smp::comm
