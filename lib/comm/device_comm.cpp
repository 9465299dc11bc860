// The device communicator (device_comm.hpp): NCCL between GPUs, CUDA IPC or host staging
// between ranks that share one, MPI (or the local launcher's sockets) as the control plane.
#include "comm/device_comm.hpp"

#include "comm/poll.hpp"
#include "comm/slot_ring.hpp"
#include "core/error.hpp"

#include <cuda_runtime.h>
#ifdef SMP_WITH_NCCL
#include <nccl.h>
#endif

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include <unistd.h>

namespace smp::comm {

bool device_comm_compiled() { return true; }

bool nccl_compiled() {
#ifdef SMP_WITH_NCCL
  return true;
#else
  return false;
#endif
}

std::string nccl_version() {
#ifdef SMP_WITH_NCCL
  int v = 0;
  if (ncclGetVersion(&v) != ncclSuccess) return "nccl (version unknown)";
  // 2.28.9 is 22809 (NCCL_VERSION(X,Y,Z) = X*10000 + Y*100 + Z since 2.9).
  return fmt::format("nccl {}.{}.{}", v / 10000, (v / 100) % 100, v % 100);
#else
  return "no nccl in this build";
#endif
}

namespace {

using clock = std::chrono::steady_clock;

#define SMP_CU(call)                                                                                        \
  do {                                                                                                      \
    cudaError_t smp_e_ = (call);                                                                            \
    if (smp_e_ != cudaSuccess)                                                                              \
      throw_failure("cuda", fmt::format("{}: {} ({}:{})", #call, cudaGetErrorString(smp_e_), __FILE__, __LINE__)); \
  } while (0)

// Control-plane tags of the set-up and of the same-GPU transports (clear of the worker's own).
constexpr int kTopoTag = (1 << 21) + 1;
constexpr int kIdTag = (1 << 21) + 16;     // + channel code: a channel's ncclUniqueId
constexpr int kGroupIdTag = (1 << 21) + 40;
constexpr int kIpcTag = (1 << 21) + 64;    // + 4 * channel code: the IPC handshake
constexpr int kCtlTag = (1 << 21) + 128;   // + channel code: announcements (same-GPU channels)
constexpr int kDataTag = (1 << 21) + 160;  // + channel code: staged payloads
constexpr int kSlots = 4;                  // same-GPU ring depth
constexpr double kFatalGraceS = 5;         // the watchdog's wait for the main thread

enum class Transport { Nccl, Ipc, Host };

const char* transport_name(Transport t) { return t == Transport::Nccl ? "nccl" : t == Transport::Ipc ? "cuda-ipc" : "host-staged"; }

// One operation in flight.
struct Op {
  enum Kind { Send, Recv, Sum } kind = Send;
  enum State { Posted, Staging, Moving, Issued, Complete } state = Posted;
  int peer = -1;
  std::string what;
  void* ptr = nullptr;
  size_t bytes = 0;
  size_t count = 0;  // Sum: elements
  bool f64 = false;  // Sum: double
  struct Chan* ch = nullptr;
  struct Group* grp = nullptr;
  int64_t seq = -1;                // index in its channel's list
  cudaEvent_t ready = nullptr;     // the compute stream reached the post (data written, buffer free)
  cudaEvent_t done = nullptr;      // the transfer's end
  clock::time_point posted_at;
  char* pinned = nullptr;          // host staging
  Request ctl;                     // host staging: the control-plane transfer
};

struct DevRequest final : Request::Impl {
  std::shared_ptr<Op> op;
};

struct Chan {
  DeviceChannel spec;
  Transport transport = Transport::Nccl;
  size_t next = 0;  // next message to post
  cudaStream_t stream = nullptr;
  int code = 0;     // per pair: 0..3 ((from < to ? 0 : 2) + kind), the tags' offset
  bool self = false;
#ifdef SMP_WITH_NCCL
  ncclComm_t comm = nullptr;
  int peer_in_comm = 0;
  bool owns_comm = true;
#endif
  // same GPU
  std::unique_ptr<SlotRing> ring;
  char* slots = nullptr;  // sender: its allocation; receiver: the mapping
  std::vector<cudaEvent_t> filled, emptied;  // the sender's and the receiver's IPC events (own or opened)
  std::deque<std::shared_ptr<Op>> queue;     // posted, waiting for their slot / announcement, in order
  int64_t ctl_word = 0;
  Request ctl_req;                           // the posted announcement receive
  std::deque<std::pair<std::unique_ptr<int64_t>, Request>> ctl_out;
};

struct Group {
  std::vector<int> ranks;
  int index = 0;  // this rank's
  Transport transport = Transport::Nccl;
  cudaStream_t stream = nullptr;
#ifdef SMP_WITH_NCCL
  ncclComm_t comm = nullptr;
#endif
};

struct Topo {
  char host[64] = {0};
  unsigned char uuid[16] = {0};
  int32_t device = 0;
  int32_t pad = 0;
};

class DeviceCommunicator final : public Communicator {
 public:
  DeviceCommunicator(Communicator& control, const DeviceCommConfig& cfg)
      : ctl_(control), device_(cfg.device), compute_(static_cast<cudaStream_t>(cfg.compute_stream)), on_fatal_(cfg.on_fatal) {
    timeout_s_ = cfg.timeout_s;
    SMP_CHECK(compute_ != nullptr, "the device communicator needs the backend's stream");
    SMP_CU(cudaSetDevice(device_));
    setup(cfg);
    watchdog_ = std::thread([this] { watch(); });
  }

  ~DeviceCommunicator() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    cudaSetDevice(device_);
    teardown();
  }

  int rank() const override { return ctl_.rank(); }
  int size() const override { return ctl_.size(); }
  std::string transport() const override { return transport_; }

  Request isend(const void* data, size_t bytes, int peer, int tag) override { return post(true, const_cast<void*>(data), bytes, peer, tag); }
  Request irecv(void* data, size_t bytes, int peer, int tag) override { return post(false, data, bytes, peer, tag); }

  Request iallreduce_sum(float* data, size_t count, const std::vector<int>& group) override {
    return post_sum(data, count, false, group);
  }
  void allreduce_sum(float* data, size_t count, const std::vector<int>& group) override {
    Request r = post_sum(data, count, false, group);
    flush();
    wait(r, "a sum among ranks " + fmt::format("{}", fmt::join(group, ",")));
  }
  void allreduce_sum(double* data, size_t count, const std::vector<int>& group) override {
    Request r = post_sum(data, count, true, group);
    flush();
    wait(r, "a sum among ranks " + fmt::format("{}", fmt::join(group, ",")));
  }

  void barrier() override { ctl_.barrier(); }
  void tell_peers_giving_up() override { ctl_.tell_peers_giving_up(); }
  [[noreturn]] void abort(int exit_code) override {
    abort_all();
    ctl_.abort(exit_code);
    std::_Exit(exit_code);  // not reached (the control plane's abort ends the process)
  }

  void flush() override {
    take_fatal();
    last_call_ = clock::now();
    if (posted_.empty()) return;
    std::vector<std::shared_ptr<Op>> ops;
    ops.swap(posted_);
    for (auto& op : ops) {
      op->ready = take_event();
      SMP_CU(cudaEventRecord(op->ready, compute_));
      op->posted_at = clock::now();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& op : ops) inflight_.insert(op.get());
    }
#ifdef SMP_WITH_NCCL
    // NCCL's operations of the tick in one group, each on its channel's (or group's) stream.
    std::vector<Op*> nccl;
    for (auto& op : ops)
      if ((op->ch && op->ch->transport == Transport::Nccl) || (op->grp && op->grp->transport == Transport::Nccl)) nccl.push_back(op.get());
    if (!nccl.empty()) {
      std::lock_guard<std::mutex> lock(nccl_mu_);
      check_not_aborted();
      std::set<ncclComm_t> comms;
      for (Op* op : nccl) SMP_CU(cudaStreamWaitEvent(stream_of(*op), op->ready, 0));
      nccl_check(ncclGroupStart(), "ncclGroupStart", nullptr);
      for (Op* op : nccl) {
        ncclResult_t r;
        if (op->kind == Op::Send) r = ncclSend(op->ptr, op->bytes, ncclUint8, op->ch->peer_in_comm, op->ch->comm, op->ch->stream);
        else if (op->kind == Op::Recv) r = ncclRecv(op->ptr, op->bytes, ncclUint8, op->ch->peer_in_comm, op->ch->comm, op->ch->stream);
        else
          r = ncclAllReduce(op->ptr, op->ptr, op->count, op->f64 ? ncclFloat64 : ncclFloat32, ncclSum, op->grp->comm, op->grp->stream);
        nccl_check(r, op->kind == Op::Send ? "ncclSend" : op->kind == Op::Recv ? "ncclRecv" : "ncclAllReduce", comm_of(*op));
        comms.insert(comm_of(*op));
      }
      nccl_check(ncclGroupEnd(), "ncclGroupEnd", nullptr);
      settle(std::vector<ncclComm_t>(comms.begin(), comms.end()), "issuing a group of transfers");
      for (Op* op : nccl) {
        op->done = take_event();
        SMP_CU(cudaEventRecord(op->done, stream_of(*op)));
        op->state = Op::Issued;
      }
    }
#endif
    for (auto& op : ops) {
      if (op->state != Op::Posted) continue;
      if (op->grp) {
        host_sum(*op);
      } else {
        op->ch->queue.push_back(op);
      }
    }
    progress();
  }

  void progress() override {
    for (auto& ch : chans_)
      if (ch->transport == Transport::Ipc) progress_ipc(*ch);
      else if (ch->transport == Transport::Host) progress_host(*ch);
  }

  bool test(Request& r) override {
    if (!r.active()) return true;
    take_fatal();
    last_call_ = clock::now();
    Op& op = *static_cast<DevRequest*>(r.impl())->op;
    SMP_CHECK(op.state != Op::Posted || op.ready != nullptr, "a device operation tested before flush() issued it");
    if (op.state != Op::Complete) {
      progress();
      if (op.state != Op::Issued) return false;
      const cudaError_t e = cudaEventQuery(op.done);
      if (e == cudaErrorNotReady) return false;
      if (e != cudaSuccess) fail_now(fmt::format("{} with rank {}: {}", op.what, op.peer, cudaGetErrorString(e)));
      complete(op);
    }
    r.reset();
    return true;
  }

  void wait(Request& r, const std::string& what) override {
    if (!r.active()) return;
    if (poll([&] { return test(r); })) return;
    const Op& op = *static_cast<DevRequest*>(r.impl())->op;
    const std::string msg = op.kind == Op::Sum
                                ? fmt::format("no progress for {:.0f} s in {} ({})", timeout_s_, op.what, what)
                                : fmt::format("no progress with rank {} for {:.0f} s while moving {} ({}, over {})", op.peer, timeout_s_,
                                              op.what, what, transport_name(op.ch->transport));
    fail_now(msg);
  }

 protected:
  void check_giving_up() override {
    take_fatal();
    ctl_.check_alive();
  }

 private:
  // ---- posting ----------------------------------------------------------------------------

  Request post(bool send, void* data, size_t bytes, int peer, int tag) {
    take_fatal();
    last_call_ = clock::now();
    Chan* found = nullptr;
    Chan* any = nullptr;
    for (auto& ch : chans_) {
      if (ch->spec.send != send || ch->spec.peer != peer) continue;
      if (!any) any = ch.get();
      if (ch->next < ch->spec.tags.size() && ch->spec.tags[ch->next] == tag) {
        found = ch.get();
        break;
      }
    }
    if (!found) {
      if (!any) SMP_CHECK(false, "rank {}: a {} rank {} on no channel of the plan", rank(), send ? "send to" : "receive from", peer);
      SMP_CHECK(false, "rank {}: a {} rank {} tagged {} out of the plan's order: next on the channel is {}", rank(),
                send ? "send to" : "receive from", peer, tag,
                any->next < any->spec.what.size() ? any->spec.what[any->next] : std::string("nothing (its list is done)"));
    }
    const size_t i = found->next;
    SMP_CHECK(static_cast<int64_t>(bytes) == found->spec.bytes[i], "rank {}: {} of {} bytes where the plan's list has {}", rank(),
              found->spec.what[i], bytes, found->spec.bytes[i]);
    auto op = std::make_shared<Op>();
    op->kind = send ? Op::Send : Op::Recv;
    op->peer = peer;
    op->what = found->spec.what[i];
    op->ptr = data;
    op->bytes = bytes;
    op->ch = found;
    op->seq = static_cast<int64_t>(i);
    ++found->next;
    if (found->next == found->spec.tags.size()) found->next = 0;  // the next step repeats the list
    posted_.push_back(op);
    auto impl = std::make_unique<DevRequest>();
    impl->op = std::move(op);
    return Request(std::move(impl), peer, tag);
  }

  Request post_sum(void* data, size_t count, bool f64, const std::vector<int>& group) {
    take_fatal();
    if (group.size() <= 1 || count == 0) return Request();
    Group* g = nullptr;
    for (auto& x : groups_)
      if (x->ranks == group) g = x.get();
    SMP_CHECK(g != nullptr, "rank {}: a sum among ranks {}, which is no group of the plan", rank(), fmt::join(group, ","));
    auto op = std::make_shared<Op>();
    op->kind = Op::Sum;
    op->what = fmt::format("the gradient sum among ranks {}", fmt::join(group, ","));
    op->ptr = data;
    op->count = count;
    op->f64 = f64;
    op->bytes = count * (f64 ? 8 : 4);
    op->grp = g;
    posted_.push_back(op);
    auto impl = std::make_unique<DevRequest>();
    impl->op = std::move(op);
    return Request(std::move(impl), -1, -1);
  }

  // A receive or a sum orders the compute stream after it; its events go back to the pool.
  void complete(Op& op) {
    if (op.kind != Op::Send && op.done) SMP_CU(cudaStreamWaitEvent(compute_, op.done, 0));
    op.state = Op::Complete;
    give_event(op.ready);
    give_event(op.done);
    op.ready = op.done = nullptr;
    if (op.pinned) {
      give_pinned(op.pinned, op.bytes);
      op.pinned = nullptr;
    }
    std::lock_guard<std::mutex> lock(mu_);
    inflight_.erase(&op);
  }

  // ---- same GPU: CUDA IPC -----------------------------------------------------------------

  void send_word(Chan& ch, int64_t word) {
    auto w = std::make_unique<int64_t>(word);
    Request r = ctl_.isend(w.get(), sizeof(int64_t), ch.spec.peer, kCtlTag + ch.code);
    ch.ctl_out.emplace_back(std::move(w), std::move(r));
  }
  void post_word(Chan& ch) { ch.ctl_req = ctl_.irecv(&ch.ctl_word, sizeof(int64_t), ch.spec.peer, kCtlTag + ch.code); }

  void progress_ipc(Chan& ch) {
    while (!ch.ctl_out.empty() && ctl_.test(ch.ctl_out.front().second)) ch.ctl_out.pop_front();
    SlotRing& ring = *ch.ring;
    // Announcements from the other end: "copied out n" to a sender, "ready n" to a receiver.
    while (ctl_.test(ch.ctl_req)) {
      if (ch.spec.send) ring.consumed(ch.ctl_word);
      else ring.announced(ch.ctl_word);
      post_word(ch);
    }
    while (!ch.queue.empty()) {
      // Messages count on across steps: the ring's sequence numbers never restart, and the
      // queue's front is always the ring's next message.
      Op& op = *ch.queue.front();
      const int64_t next = ch.spec.send ? ring.next_fill() : ring.next_take();
      const int slot = ring.slot_of(next);
      char* at = ch.slots + ring.offset_of(next);
      if (ch.spec.send) {
        if (!ring.can_fill()) break;
        const int64_t n = next;
        SMP_CU(cudaStreamWaitEvent(ch.stream, op.ready, 0));
        if (n >= ring.slots()) SMP_CU(cudaStreamWaitEvent(ch.stream, ch.emptied[static_cast<size_t>(slot)], 0));
        SMP_CU(cudaMemcpyAsync(at, op.ptr, op.bytes, cudaMemcpyDeviceToDevice, ch.stream));
        SMP_CU(cudaEventRecord(ch.filled[static_cast<size_t>(slot)], ch.stream));
        op.done = take_event();
        SMP_CU(cudaEventRecord(op.done, ch.stream));
        ring.filled(n, static_cast<int64_t>(op.bytes));
        send_word(ch, n);
      } else {
        if (!ring.can_take()) break;
        const int64_t n = next;
        SMP_CU(cudaStreamWaitEvent(ch.stream, op.ready, 0));
        SMP_CU(cudaStreamWaitEvent(ch.stream, ch.filled[static_cast<size_t>(slot)], 0));
        SMP_CU(cudaMemcpyAsync(op.ptr, at, op.bytes, cudaMemcpyDeviceToDevice, ch.stream));
        SMP_CU(cudaEventRecord(ch.emptied[static_cast<size_t>(slot)], ch.stream));
        op.done = take_event();
        SMP_CU(cudaEventRecord(op.done, ch.stream));
        ring.taken(n);
        send_word(ch, n);
      }
      op.state = Op::Issued;
      ch.queue.pop_front();
    }
  }

  // ---- same GPU (or no NCCL): staged through pinned host memory ----------------------------

  void progress_host(Chan& ch) {
    // In order: each message moves on once the ones before it did (the control plane keeps a
    // channel's messages in order by their tag).
    for (auto& opp : ch.queue) {
      Op& op = *opp;
      if (ch.spec.send) {
        if (op.state == Op::Posted) {
          op.pinned = take_pinned(op.bytes);
          SMP_CU(cudaStreamWaitEvent(ch.stream, op.ready, 0));
          SMP_CU(cudaMemcpyAsync(op.pinned, op.ptr, op.bytes, cudaMemcpyDeviceToHost, ch.stream));
          op.done = take_event();
          SMP_CU(cudaEventRecord(op.done, ch.stream));
          op.state = Op::Staging;
        }
      } else if (op.state == Op::Posted) {
        op.pinned = take_pinned(op.bytes);
        op.ctl = ctl_.irecv(op.pinned, op.bytes, ch.spec.peer, kDataTag + ch.code);
        op.state = Op::Moving;
      }
    }
    while (!ch.queue.empty()) {
      Op& op = *ch.queue.front();
      if (ch.spec.send) {
        if (op.state == Op::Staging) {
          const cudaError_t e = cudaEventQuery(op.done);
          if (e == cudaErrorNotReady) break;
          SMP_CU(e);
          op.ctl = ctl_.isend(op.pinned, op.bytes, ch.spec.peer, kDataTag + ch.code);
          op.state = Op::Moving;
        }
        if (!ctl_.test(op.ctl)) break;
        op.state = Op::Issued;  // its done event has completed: test() completes it
      } else {
        if (!ctl_.test(op.ctl)) break;
        SMP_CU(cudaStreamWaitEvent(ch.stream, op.ready, 0));
        SMP_CU(cudaMemcpyAsync(op.ptr, op.pinned, op.bytes, cudaMemcpyHostToDevice, ch.stream));
        op.done = take_event();
        SMP_CU(cudaEventRecord(op.done, ch.stream));
        op.state = Op::Issued;
      }
      ch.queue.pop_front();
    }
  }

  // A sum among ranks that cannot use NCCL (some of them share a GPU): through the host and the
  // control plane, blocking.
  void host_sum(Op& op) {
    op.pinned = take_pinned(op.bytes);
    SMP_CU(cudaStreamWaitEvent(op.grp->stream, op.ready, 0));
    SMP_CU(cudaMemcpyAsync(op.pinned, op.ptr, op.bytes, cudaMemcpyDeviceToHost, op.grp->stream));
    SMP_CU(cudaStreamSynchronize(op.grp->stream));
    if (op.f64) ctl_.allreduce_sum(reinterpret_cast<double*>(op.pinned), op.count, op.grp->ranks);
    else ctl_.allreduce_sum(reinterpret_cast<float*>(op.pinned), op.count, op.grp->ranks);
    SMP_CU(cudaMemcpyAsync(op.ptr, op.pinned, op.bytes, cudaMemcpyHostToDevice, op.grp->stream));
    op.done = take_event();
    SMP_CU(cudaEventRecord(op.done, op.grp->stream));
    op.state = Op::Issued;
  }

  // ---- events and pinned buffers ------------------------------------------------------------

  cudaEvent_t take_event() {
    if (!events_.empty()) {
      cudaEvent_t e = events_.back();
      events_.pop_back();
      return e;
    }
    cudaEvent_t e = nullptr;
    SMP_CU(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
    all_events_.push_back(e);
    return e;
  }
  void give_event(cudaEvent_t e) {
    if (e) events_.push_back(e);
  }
  char* take_pinned(size_t bytes) {
    auto& v = pinned_[bytes];
    if (!v.empty()) {
      char* p = v.back();
      v.pop_back();
      return p;
    }
    void* p = nullptr;
    SMP_CU(cudaMallocHost(&p, std::max<size_t>(bytes, 1)));
    all_pinned_.push_back(p);
    return static_cast<char*>(p);
  }
  void give_pinned(char* p, size_t bytes) { pinned_[bytes].push_back(p); }

  // ---- errors, deadlines, the watchdog ------------------------------------------------------

  // The watchdog's error, on the main thread: it throws here.
  void take_fatal() {
    std::lock_guard<std::mutex> lock(mu_);
    if (fatal_.empty()) return;
    fatal_taken_ = true;
    peer_gave_up_ = true;
    throw_failure(fmt::format("rank {}", rank()), fatal_, "the job is ending; see the other ranks' messages");
  }

  [[noreturn]] void fail_now(const std::string& msg) {
    abort_all();
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (fatal_.empty()) fatal_ = msg;
      fatal_taken_ = true;
    }
    throw_failure(fmt::format("rank {}", rank()), msg, "that rank has died or hangs; see its own message");
  }

  void watch() {
    std::unique_lock<std::mutex> lock(mu_);
    clock::time_point fatal_at{};
    while (!stop_) {
      cv_.wait_for(lock, std::chrono::milliseconds(100));
      if (stop_) break;
      const auto now = clock::now();
      if (fatal_.empty()) {
        std::string err;
#ifdef SMP_WITH_NCCL
        lock.unlock();
        err = async_errors();
        lock.lock();
#endif
        // An operation older than the deadline while the main thread has not called in for as
        // long: it is stuck outside (a device call), and only aborting frees it.
        if (err.empty() && now - last_call_.load() > std::chrono::duration<double>(timeout_s_))
          for (Op* op : inflight_)
            if (now - op->posted_at > std::chrono::duration<double>(timeout_s_)) {
              err = op->kind == Op::Sum ? fmt::format("no progress for {:.0f} s in {}", timeout_s_, op->what)
                                        : fmt::format("no progress with rank {} for {:.0f} s while moving {}", op->peer, timeout_s_, op->what);
              break;
            }
        if (!err.empty()) {
          fatal_ = err;
          fatal_at = now;
          lock.unlock();
          abort_all();
          lock.lock();
        }
      } else if (!fatal_taken_ && fatal_at != clock::time_point{} && now - fatal_at > std::chrono::duration<double>(kFatalGraceS)) {
        const std::string msg = fatal_;
        fatal_taken_ = true;
        lock.unlock();
        if (on_fatal_) on_fatal_(msg);
        lock.lock();
      }
    }
  }

#ifdef SMP_WITH_NCCL
  ncclComm_t comm_of(const Op& op) const { return op.ch ? op.ch->comm : op.grp->comm; }
  cudaStream_t stream_of(const Op& op) const { return op.ch ? op.ch->stream : op.grp->stream; }

  std::vector<std::pair<ncclComm_t, std::string>> all_comms() const {
    std::vector<std::pair<ncclComm_t, std::string>> out;
    for (const auto& ch : chans_)
      if (ch->comm && ch->owns_comm)
        out.emplace_back(ch->comm, ch->self ? std::string("this rank's own channel")
                                            : fmt::format("the channel {} rank {}", ch->spec.send ? "to" : "from", ch->spec.peer));
    for (const auto& g : groups_)
      if (g->comm) out.emplace_back(g->comm, fmt::format("the data-parallel group {}", fmt::join(g->ranks, ",")));
    return out;
  }

  std::string async_errors() {
    std::lock_guard<std::mutex> lock(nccl_mu_);
    if (aborted_) return {};
    for (const auto& [c, name] : all_comms()) {
      ncclResult_t r = ncclSuccess;
      if (ncclCommGetAsyncError(c, &r) != ncclSuccess) continue;
      if (r != ncclSuccess && r != ncclInProgress)
        return fmt::format("NCCL error on {}: {} ({})", name, ncclGetErrorString(r), ncclGetLastError(c));
    }
    return {};
  }

  void nccl_check(ncclResult_t r, const char* call, ncclComm_t c) {
    if (r == ncclSuccess || r == ncclInProgress) return;
    const std::string msg = fmt::format("{}: {} ({})", call, ncclGetErrorString(r), c ? ncclGetLastError(c) : ncclGetLastError(nullptr));
    throw_failure(fmt::format("rank {}", rank()), msg);
  }

  // Non-blocking communicators: polls until none is in progress, under the deadline.
  void settle(const std::vector<ncclComm_t>& comms, const std::string& doing) {
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s_);
    for (ncclComm_t c : comms) {
      while (true) {
        ncclResult_t r = ncclSuccess;
        nccl_check(ncclCommGetAsyncError(c, &r), "ncclCommGetAsyncError", c);
        if (r == ncclSuccess) break;
        if (r != ncclInProgress) nccl_check(r, doing.c_str(), c);
        if (clock::now() > deadline)
          throw_failure(fmt::format("rank {}", rank()), fmt::format("NCCL did not finish {} within {:.0f} s", doing, timeout_s_),
                        "a peer has died or hangs; see its own message");
        std::this_thread::sleep_for(std::chrono::microseconds(50));
      }
    }
  }

  void check_not_aborted() {
    if (aborted_) throw_failure(fmt::format("rank {}", rank()), "the NCCL communicators were aborted after an error");
  }
#endif

  // Every NCCL communicator aborted (ncclCommAbort; never ncclCommDestroy on a hung one): NCCL's
  // kernels return, so that nothing waits on them any more.
  void abort_all() {
#ifdef SMP_WITH_NCCL
    std::lock_guard<std::mutex> lock(nccl_mu_);
    if (aborted_) return;
    aborted_ = true;
    for (const auto& [c, name] : all_comms()) ncclCommAbort(c);
#endif
  }

  // ---- set-up and teardown -------------------------------------------------------------------

  void setup(const DeviceCommConfig& cfg);
  void setup_ipc(Chan& ch, bool required);
  void teardown();

  Communicator& ctl_;
  int device_;
  cudaStream_t compute_;
  std::function<void(const std::string&)> on_fatal_;
  std::vector<std::unique_ptr<Chan>> chans_;
  std::vector<std::unique_ptr<Group>> groups_;
  std::vector<std::shared_ptr<Op>> posted_;  // since the last flush
  std::vector<cudaEvent_t> events_, all_events_;
  std::map<size_t, std::vector<char*>> pinned_;
  std::vector<void*> all_pinned_;
  std::string transport_;
  // shared with the watchdog
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<Op*> inflight_;
  std::string fatal_;
  bool fatal_taken_ = false;
  bool stop_ = false;
  std::atomic<clock::time_point> last_call_{clock::now()};
  std::mutex nccl_mu_;  // NCCL calls and the abort
  bool aborted_ = false;
  std::thread watchdog_;
};

void DeviceCommunicator::setup(const DeviceCommConfig& cfg) {
  const int me = rank();
  // Where every peer computes: its host and its GPU's UUID.
  Topo mine{};
  ::gethostname(mine.host, sizeof mine.host - 1);
  cudaDeviceProp prop{};
  SMP_CU(cudaGetDeviceProperties(&prop, device_));
  std::memcpy(mine.uuid, &prop.uuid, sizeof mine.uuid);
  mine.device = device_;
  std::set<int> peers;
  for (const auto& c : cfg.channels)
    if (c.peer != me) peers.insert(c.peer);
  for (const auto& g : cfg.groups)
    for (int r : g)
      if (r != me) peers.insert(r);
  std::map<int, Topo> topo;
  {
    std::vector<Request> reqs;
    for (int p : peers) {
      reqs.push_back(ctl_.isend(&mine, sizeof mine, p, kTopoTag));
      reqs.push_back(ctl_.irecv(&topo[p], sizeof(Topo), p, kTopoTag));
    }
    for (auto& r : reqs) ctl_.wait(r, "the peers' GPUs (device communicator set-up)");
  }
  topo[me] = mine;
  auto same_gpu = [&](int a, int b) {
    return std::strncmp(topo[a].host, topo[b].host, sizeof mine.host) == 0 && std::memcmp(topo[a].uuid, topo[b].uuid, 16) == 0;
  };
  const std::string mode = cfg.same_gpu.empty() ? "auto" : cfg.same_gpu;
  if (mode != "auto" && mode != "ipc" && mode != "host")
    throw_bad_input("SMP_SAME_GPU", fmt::format("'{}' is not auto, ipc or host", mode));

  // Channels, in one order on every rank: by (from, to, kind).
  std::vector<DeviceChannel> specs = cfg.channels;
  std::sort(specs.begin(), specs.end(), [&](const DeviceChannel& a, const DeviceChannel& b) {
    const int fa = a.send ? me : a.peer, ta = a.send ? a.peer : me, fb = b.send ? me : b.peer, tb = b.send ? b.peer : me;
    return std::tie(fa, ta, a.kind, a.send) < std::tie(fb, tb, b.kind, b.send);
  });
  for (auto& spec : specs) {
    auto ch = std::make_unique<Chan>();
    const int from = spec.send ? me : spec.peer, to = spec.send ? spec.peer : me;
    ch->code = (from < to ? 0 : 2) + spec.kind;
    ch->self = spec.peer == me;
    SMP_CHECK(spec.tags.size() == spec.bytes.size() && spec.tags.size() == spec.what.size(), "channel lists of different lengths");
    ch->spec = std::move(spec);
    if (ch->self) ch->transport = Transport::Nccl;
    else if (!same_gpu(me, ch->spec.peer)) ch->transport = nccl_compiled() ? Transport::Nccl : Transport::Host;
    else ch->transport = mode == "host" ? Transport::Host : Transport::Ipc;
    SMP_CU(cudaStreamCreateWithFlags(&ch->stream, cudaStreamNonBlocking));
    chans_.push_back(std::move(ch));
  }
  if (!nccl_compiled())
    for (auto& ch : chans_)
      if (ch->self) throw_failure("device communicator", "a rank's channel to itself needs NCCL, which this build lacks");
  for (const auto& g : cfg.groups) {
    auto grp = std::make_unique<Group>();
    grp->ranks = g;
    SMP_CHECK(std::is_sorted(g.begin(), g.end()) && std::find(g.begin(), g.end(), me) != g.end(), "rank {} is not in group {}", me,
              fmt::join(g, ","));
    grp->index = static_cast<int>(std::find(g.begin(), g.end(), me) - g.begin());
    bool shared = false;
    for (size_t i = 0; i < g.size(); ++i)
      for (size_t j = i + 1; j < g.size(); ++j) shared = shared || same_gpu(g[i], g[j]);
    grp->transport = shared || !nccl_compiled() ? Transport::Host : Transport::Nccl;
    SMP_CU(cudaStreamCreateWithFlags(&grp->stream, cudaStreamNonBlocking));
    groups_.push_back(std::move(grp));
  }

#ifdef SMP_WITH_NCCL
  // NCCL communicators: one per channel between GPUs (its sender makes the id), one per group
  // (its first rank makes it), all non-blocking and created in one global order.
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  std::vector<ncclComm_t> created;
  std::map<std::pair<int, int>, ncclComm_t> self_comm;  // this rank's channels to itself share one per kind
  for (auto& ch : chans_) {
    if (ch->transport != Transport::Nccl) continue;
    if (ch->self) {
      auto key = std::make_pair(ch->spec.kind, 0);
      if (self_comm.count(key)) {
        ch->comm = self_comm[key];
        ch->owns_comm = false;
        continue;
      }
      ncclUniqueId id;
      nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr);
      nccl_check(ncclCommInitRankConfig(&ch->comm, 1, id, 0, &config), "ncclCommInitRankConfig", nullptr);
      ch->peer_in_comm = 0;
      self_comm[key] = ch->comm;
      created.push_back(ch->comm);
      continue;
    }
    ncclUniqueId id{};
    if (ch->spec.send) {
      nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr);
      Request r = ctl_.isend(&id, sizeof id, ch->spec.peer, kIdTag + ch->code);
      ctl_.wait(r, fmt::format("the NCCL id of the channel to rank {}", ch->spec.peer));
    } else {
      Request r = ctl_.irecv(&id, sizeof id, ch->spec.peer, kIdTag + ch->code);
      ctl_.wait(r, fmt::format("the NCCL id of the channel from rank {}", ch->spec.peer));
    }
    ch->peer_in_comm = ch->spec.send ? 1 : 0;
    nccl_check(ncclCommInitRankConfig(&ch->comm, 2, id, ch->spec.send ? 0 : 1, &config), "ncclCommInitRankConfig", nullptr);
    created.push_back(ch->comm);
  }
  for (auto& g : groups_) {
    if (g->transport != Transport::Nccl) continue;
    ncclUniqueId id{};
    if (g->index == 0) {
      nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId", nullptr);
      std::vector<Request> reqs;
      for (size_t i = 1; i < g->ranks.size(); ++i) reqs.push_back(ctl_.isend(&id, sizeof id, g->ranks[i], kGroupIdTag));
      for (auto& r : reqs) ctl_.wait(r, "the NCCL id of a data-parallel group");
    } else {
      Request r = ctl_.irecv(&id, sizeof id, g->ranks[0], kGroupIdTag);
      ctl_.wait(r, fmt::format("the NCCL id of the data-parallel group {}", fmt::join(g->ranks, ",")));
    }
    nccl_check(ncclCommInitRankConfig(&g->comm, static_cast<int>(g->ranks.size()), id, g->index, &config), "ncclCommInitRankConfig",
               nullptr);
    created.push_back(g->comm);
  }
  settle(created, "creating its communicators");
#endif

  // Same GPU: the IPC rings (or host staging where IPC does not work).
  for (auto& ch : chans_)
    if (ch->transport == Transport::Ipc) setup_ipc(*ch, mode == "ipc");
  for (auto& ch : chans_)
    if (ch->transport == Transport::Ipc) post_word(*ch);

#ifdef SMP_WITH_NCCL
  // Warm-up: one byte over every NCCL channel and one sum in every group, so that the
  // connections exist before the first timed step.
  void* scratch = nullptr;
  SMP_CU(cudaMalloc(&scratch, 256));
  SMP_CU(cudaMemset(scratch, 0, 256));
  std::vector<ncclComm_t> used;
  std::vector<cudaStream_t> streams;
  {
    std::lock_guard<std::mutex> lock(nccl_mu_);
    nccl_check(ncclGroupStart(), "ncclGroupStart", nullptr);
    for (auto& ch : chans_) {
      if (ch->transport != Transport::Nccl) continue;
      char* p = static_cast<char*>(scratch) + (ch->spec.send ? 0 : 64);
      if (ch->spec.send) nccl_check(ncclSend(p, 1, ncclUint8, ch->peer_in_comm, ch->comm, ch->stream), "ncclSend", ch->comm);
      else nccl_check(ncclRecv(p, 1, ncclUint8, ch->peer_in_comm, ch->comm, ch->stream), "ncclRecv", ch->comm);
      used.push_back(ch->comm);
      streams.push_back(ch->stream);
    }
    for (auto& g : groups_) {
      if (g->transport != Transport::Nccl) continue;
      float* p = reinterpret_cast<float*>(static_cast<char*>(scratch) + 128);
      nccl_check(ncclAllReduce(p, p, 1, ncclFloat32, ncclSum, g->comm, g->stream), "ncclAllReduce", g->comm);
      used.push_back(g->comm);
      streams.push_back(g->stream);
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd", nullptr);
    std::sort(used.begin(), used.end());
    used.erase(std::unique(used.begin(), used.end()), used.end());
    settle(used, "the warm-up exchange");
  }
  for (cudaStream_t s : streams) {
    const auto deadline = clock::now() + std::chrono::duration<double>(timeout_s_);
    cudaError_t e;
    while ((e = cudaStreamQuery(s)) == cudaErrorNotReady) {
      if (clock::now() > deadline) {
        abort_all();
        throw_failure(fmt::format("rank {}", me), fmt::format("the NCCL warm-up exchange did not finish within {:.0f} s", timeout_s_),
                      "a peer has died or hangs; see its own message");
      }
      ctl_.check_alive();
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    SMP_CU(e);
  }
  SMP_CU(cudaFree(scratch));
#endif

  // What it uses, for the run's report.
  std::map<std::string, int> uses;
  for (const auto& ch : chans_) ++uses[transport_name(ch->transport)];
  std::string desc;
  for (const auto& [name, n] : uses) desc += fmt::format("{}{} channel{} over {}", desc.empty() ? "" : ", ", n, n == 1 ? "" : "s", name);
  int nccl_groups = 0, host_groups = 0;
  for (const auto& g : groups_) (g->transport == Transport::Nccl ? nccl_groups : host_groups)++;
  if (nccl_groups) desc += fmt::format("{}{} gradient group{} over nccl", desc.empty() ? "" : ", ", nccl_groups, nccl_groups == 1 ? "" : "s");
  if (host_groups) desc += fmt::format("{}{} gradient group{} through the host", desc.empty() ? "" : ", ", host_groups, host_groups == 1 ? "" : "s");
  transport_ = fmt::format("device ({}{}{})", nccl_version(), desc.empty() ? "" : "; ", desc);
}

// The IPC handshake of one same-GPU channel. The sender allocates the ring and its "filled"
// events and sends their handles; the receiver maps them and answers with its "emptied" events'
// handles; the sender opens those and confirms. Any failure on either side: host staging for the
// channel (or, with `required`, a failure naming it).
void DeviceCommunicator::setup_ipc(Chan& ch, bool required) {
  struct Offer {
    int32_t ok = 0;
    int32_t slots = kSlots;
    int64_t slot_bytes = 0;
    cudaIpcMemHandle_t mem{};
    cudaIpcEventHandle_t ev[kSlots]{};
    char why[128] = {0};
  };
  int64_t largest = 1;
  for (int64_t b : ch.spec.bytes) largest = std::max(largest, b);
  const int64_t slot_bytes = (largest + 255) / 256 * 256;
  const int tag = kIpcTag + 4 * ch.code;
  std::string why;
  auto note = [&](cudaError_t e, const char* call) {
    if (e != cudaSuccess && why.empty()) why = fmt::format("{}: {}", call, cudaGetErrorString(e));
    if (e != cudaSuccess) cudaGetLastError();
    return e == cudaSuccess;
  };
  Offer mine, theirs;
  bool ok = true;
  if (ch.spec.send) {
    void* p = nullptr;
    ok = note(cudaMalloc(&p, static_cast<size_t>(slot_bytes * kSlots)), "cudaMalloc");
    ch.slots = static_cast<char*>(p);
    ok = ok && note(cudaIpcGetMemHandle(&mine.mem, p), "cudaIpcGetMemHandle");
    ch.filled.assign(kSlots, nullptr);
    for (int k = 0; k < kSlots && ok; ++k) {
      ok = note(cudaEventCreateWithFlags(&ch.filled[static_cast<size_t>(k)], cudaEventDisableTiming | cudaEventInterprocess),
                "cudaEventCreateWithFlags(interprocess)") &&
           note(cudaIpcGetEventHandle(&mine.ev[k], ch.filled[static_cast<size_t>(k)]), "cudaIpcGetEventHandle");
    }
    mine.ok = ok;
    mine.slot_bytes = slot_bytes;
    std::strncpy(mine.why, why.c_str(), sizeof mine.why - 1);
    Request s = ctl_.isend(&mine, sizeof mine, ch.spec.peer, tag);
    Request r = ctl_.irecv(&theirs, sizeof theirs, ch.spec.peer, tag + 1);
    ctl_.wait(s, "the IPC handshake");
    ctl_.wait(r, "the IPC handshake");
    ch.emptied.assign(kSlots, nullptr);
    if (ok && theirs.ok)
      for (int k = 0; k < kSlots && ok; ++k) ok = note(cudaIpcOpenEventHandle(&ch.emptied[static_cast<size_t>(k)], theirs.ev[k]), "cudaIpcOpenEventHandle");
    int32_t confirm = ok && theirs.ok;
    Request c = ctl_.isend(&confirm, sizeof confirm, ch.spec.peer, tag + 2);
    ctl_.wait(c, "the IPC handshake");
    if (!theirs.ok && why.empty()) why = theirs.why;
    ok = confirm != 0;
  } else {
    ch.emptied.assign(kSlots, nullptr);
    for (int k = 0; k < kSlots && ok; ++k)
      ok = note(cudaEventCreateWithFlags(&ch.emptied[static_cast<size_t>(k)], cudaEventDisableTiming | cudaEventInterprocess),
                "cudaEventCreateWithFlags(interprocess)") &&
           note(cudaIpcGetEventHandle(&mine.ev[k], ch.emptied[static_cast<size_t>(k)]), "cudaIpcGetEventHandle");
    Request r = ctl_.irecv(&theirs, sizeof theirs, ch.spec.peer, tag);
    ctl_.wait(r, "the IPC handshake");
    if (!theirs.ok && why.empty()) why = theirs.why;
    ok = ok && theirs.ok;
    if (ok) {
      void* p = nullptr;
      ok = note(cudaIpcOpenMemHandle(&p, theirs.mem, cudaIpcMemLazyEnablePeerAccess), "cudaIpcOpenMemHandle");
      ch.slots = static_cast<char*>(p);
      ch.filled.assign(kSlots, nullptr);
      for (int k = 0; k < kSlots && ok; ++k) ok = note(cudaIpcOpenEventHandle(&ch.filled[static_cast<size_t>(k)], theirs.ev[k]), "cudaIpcOpenEventHandle");
    }
    mine.ok = ok;
    std::strncpy(mine.why, why.c_str(), sizeof mine.why - 1);
    Request s = ctl_.isend(&mine, sizeof mine, ch.spec.peer, tag + 1);
    ctl_.wait(s, "the IPC handshake");
    int32_t confirm = 0;
    Request c = ctl_.irecv(&confirm, sizeof confirm, ch.spec.peer, tag + 2);
    ctl_.wait(c, "the IPC handshake");
    ok = confirm != 0;
  }
  if (ok) {
    ch.ring = std::make_unique<SlotRing>(kSlots, theirs.slot_bytes > 0 && !ch.spec.send ? theirs.slot_bytes : slot_bytes);
    return;
  }
  if (required)
    throw_failure(fmt::format("rank {}", rank()),
                  fmt::format("CUDA IPC with rank {} (same GPU) does not work: {}", ch.spec.peer, why.empty() ? "the other side failed" : why),
                  "leave SMP_SAME_GPU unset (auto) or set it to host");
  // Host staging instead; nothing of the ring stays.
  if (ch.spec.send && ch.slots) cudaFree(ch.slots);
  if (!ch.spec.send && ch.slots) cudaIpcCloseMemHandle(ch.slots);
  ch.slots = nullptr;
  for (auto& e : ch.filled)
    if (e) cudaEventDestroy(e);
  for (auto& e : ch.emptied)
    if (e) cudaEventDestroy(e);
  ch.filled.clear();
  ch.emptied.clear();
  cudaGetLastError();
  ch.transport = Transport::Host;
  std::fprintf(stderr, "note: rank %d: CUDA IPC with rank %d (same GPU) does not work (%s): staging through host memory\n", rank(),
               ch.spec.peer, why.c_str());
}

void DeviceCommunicator::teardown() {
  // Everything of this rank's is complete (the worker waits for all); a hung communicator was
  // aborted, the others are finalized and destroyed.
#ifdef SMP_WITH_NCCL
  if (!aborted_) {
    std::vector<ncclComm_t> comms;
    for (const auto& [c, name] : all_comms()) comms.push_back(c);
    bool ok = true;
    for (ncclComm_t c : comms) ok = ncclCommFinalize(c) != ncclInternalError && ok;
    try {
      settle(comms, "finalizing its communicators");
    } catch (const Error&) {
      ok = false;
    }
    for (ncclComm_t c : comms) {
      if (ok) ncclCommDestroy(c);
      else ncclCommAbort(c);
    }
  }
#endif
  for (auto& ch : chans_) {
    while (!ch->ctl_out.empty()) {  // the last announcements leave (or are cancelled)
      const auto until = clock::now() + std::chrono::milliseconds(200);
      while (clock::now() < until && !ctl_.test(ch->ctl_out.front().second)) std::this_thread::sleep_for(std::chrono::milliseconds(1));
      ch->ctl_out.pop_front();
    }
    ch->ctl_req = Request();
    if (ch->slots) {
      if (ch->spec.send) cudaFree(ch->slots);
      else cudaIpcCloseMemHandle(ch->slots);
    }
    for (auto& e : ch->filled)
      if (e) cudaEventDestroy(e);
    for (auto& e : ch->emptied)
      if (e) cudaEventDestroy(e);
    if (ch->stream) cudaStreamDestroy(ch->stream);
  }
  for (auto& g : groups_)
    if (g->stream) cudaStreamDestroy(g->stream);
  for (cudaEvent_t e : all_events_) cudaEventDestroy(e);
  for (void* p : all_pinned_) cudaFreeHost(p);
}

}  // namespace

std::unique_ptr<Communicator> make_device_comm(Communicator& control, const DeviceCommConfig& cfg) {
  return std::make_unique<DeviceCommunicator>(control, cfg);
}

}  // namespace smp::comm
