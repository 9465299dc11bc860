// The local communicator: the ranks of one machine, started by smp's own launcher
// (launch.hpp, local_supervisor), talk over Unix-domain stream sockets, one per pair of ranks,
// made through a rendezvous directory (SMP_LOCAL_DIR: rank r listens on r.sock; each rank
// connects to the lower ones). No MPI is involved: this is how smp-run trains where no MPI is
// installed (a GPU machine with CUDA and nothing else).
//
// A frame is a 16-byte header {kind, tag, bytes} and the payload. A progress thread moves every
// frame (poll() over the sockets and a wake-up pipe): sends are written from the caller's buffer
// as posted, in order per peer; a received frame goes into the first receive posted for its
// (peer, tag), else into a held buffer that a later receive takes. A peer whose socket closes
// without its goodbye frame has died: every wait then fails at once.
#include "comm/comm.hpp"
#include "comm/launch.hpp"
#include "comm/poll.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <list>
#include <memory>
#include <mutex>
#include <thread>

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

namespace smp::comm {

namespace {

enum FrameKind : uint32_t { kData = 0x534d5031, kGiveUp = 0x534d5032, kBye = 0x534d5033, kHello = 0x534d5034 };

struct Header {
  uint32_t kind = kData;
  int32_t tag = 0;
  uint64_t bytes = 0;
};
static_assert(sizeof(Header) == 16);

// What a request shares with the progress thread.
struct OpState {
  std::atomic<bool> done{false};
  std::string error;  // set before done, when it failed
};

class LocalCommunicator;

// Dropped while active (an exception unwound past it), it is cancelled: the progress thread
// must not touch the caller's buffer afterwards.
struct LocalRequest final : Request::Impl {
  std::shared_ptr<OpState> st;
  LocalCommunicator* comm = nullptr;
  int peer = -1;
  ~LocalRequest() override;
};

struct SendOp {
  Header h;
  const char* data = nullptr;
  size_t off = 0;  // bytes of header + payload written
  std::shared_ptr<OpState> st;
};

struct RecvOp {
  int tag = 0;
  char* data = nullptr;
  size_t bytes = 0;
  std::shared_ptr<OpState> st;
};

// A frame that arrived before its receive was posted.
struct Held {
  int tag = 0;
  std::vector<char> data;
  bool complete = false;
  RecvOp claimed;  // a receive posted while it was still arriving
};

struct Peer {
  int fd = -1;
  bool alive = true;     // its socket is open
  bool said_bye = false;
  std::deque<SendOp> sends;
  std::list<RecvOp> recvs;  // posted, in order
  std::list<Held> held;
  // The frame being read.
  Header in{};
  size_t in_header = 0;  // header bytes read
  size_t in_payload = 0;  // payload bytes read
  bool in_body = false;
  RecvOp* target = nullptr;  // the receive it goes to
  Held* held_target = nullptr;
  std::vector<char> discard;
};

std::string sock_path(const std::string& dir, int rank) { return fmt::format("{}/{}.sock", dir, rank); }

void set_nonblocking(int fd) { ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) | O_NONBLOCK); }

// Writes or reads all of it on a blocking socket (the connection handshake only).
bool io_all(int fd, void* p, size_t n, bool write) {
  char* c = static_cast<char*>(p);
  while (n > 0) {
    ssize_t k = write ? ::send(fd, c, n, MSG_NOSIGNAL) : ::recv(fd, c, n, 0);
    if (k < 0 && errno == EINTR) continue;
    if (k <= 0) return false;
    c += k;
    n -= static_cast<size_t>(k);
  }
  return true;
}

class LocalCommunicator final : public Communicator {
 public:
  LocalCommunicator(int rank, int size, std::string dir, double connect_timeout_s)
      : rank_(rank), size_(size), dir_(std::move(dir)), peers_(static_cast<size_t>(size)) {
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw_failure("local communicator", std::string("pipe: ") + std::strerror(errno));
    connect_all(connect_timeout_s);
    thread_ = std::thread([this] { progress_loop(); });
  }

  ~LocalCommunicator() override {
    // A goodbye to every peer (a closed socket without one means a death), then the thread.
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& p : peers_)
        if (p.fd >= 0 && p.alive) p.sends.push_back(SendOp{Header{kBye, 0, 0}, nullptr, 0, nullptr});
    }
    wake();
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(500);
    while (std::chrono::steady_clock::now() < until) {
      std::lock_guard<std::mutex> lock(mu_);
      bool left = false;
      for (auto& p : peers_) left = left || (p.alive && !p.sends.empty());
      if (!left) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    stop_ = true;
    wake();
    if (thread_.joinable()) thread_.join();
    for (auto& p : peers_)
      if (p.fd >= 0) ::close(p.fd);
    if (listen_fd_ >= 0) ::close(listen_fd_);
    ::unlink(sock_path(dir_, rank_).c_str());
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string transport() const override { return fmt::format("local sockets ({} ranks, no MPI)", size_); }

  Request isend(const void* data, size_t bytes, int peer, int tag) override {
    check_peer(peer);
    auto st = std::make_shared<OpState>();
    {
      std::lock_guard<std::mutex> lock(mu_);
      Peer& p = peers_[static_cast<size_t>(peer)];
      if (!p.alive) fail_op(*st, peer);
      else p.sends.push_back(SendOp{Header{kData, tag, bytes}, static_cast<const char*>(data), 0, st});
    }
    wake();
    return make_request(std::move(st), peer, tag);
  }

  Request irecv(void* data, size_t bytes, int peer, int tag) override {
    check_peer(peer);
    auto st = std::make_shared<OpState>();
    RecvOp op{tag, static_cast<char*>(data), bytes, st};
    std::lock_guard<std::mutex> lock(mu_);
    Peer& p = peers_[static_cast<size_t>(peer)];
    // A frame held for it?
    for (auto it = p.held.begin(); it != p.held.end(); ++it) {
      if (it->tag != tag || it->claimed.st) continue;
      if (it->complete) {
        deliver(op, it->data.data(), it->data.size(), peer);
        p.held.erase(it);
      } else {
        it->claimed = op;
      }
      return make_request(std::move(st), peer, tag);
    }
    if (!p.alive) fail_op(*st, peer);
    else p.recvs.push_back(op);
    return make_request(std::move(st), peer, tag);
  }

  bool test(Request& r) override {
    if (!r.active()) return true;
    auto* impl = static_cast<LocalRequest*>(r.impl());
    if (!impl->st->done.load(std::memory_order_acquire)) return false;
    std::string err = impl->st->error;
    r.reset();
    if (!err.empty()) throw_failure(fmt::format("rank {}", rank_), err, "that rank has died or the ranks disagree; see its own message");
    return true;
  }

  void wait(Request& r, const std::string& what) override {
    if (!r.active()) return;
    if (!poll([&] { return test(r); })) {
      const int peer = r.peer();
      throw_failure(fmt::format("rank {}", rank_),
                    fmt::format("no progress with rank {} for {:.0f} s while waiting for {}", peer, timeout_s_, what),
                    "that rank has died or hangs; see its own message");
    }
  }

  void allreduce_sum(float* data, size_t count, const std::vector<int>& group) override { reduce(data, count, group); }
  void allreduce_sum(double* data, size_t count, const std::vector<int>& group) override { reduce(data, count, group); }

  void barrier() override {
    std::vector<int> all(static_cast<size_t>(size_));
    for (int i = 0; i < size_; ++i) all[static_cast<size_t>(i)] = i;
    double x = 0;
    reduce(&x, 1, all);
  }

  void tell_peers_giving_up() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int r = 0; r < size_; ++r) {
        Peer& p = peers_[static_cast<size_t>(r)];
        if (r == rank_ || !p.alive) continue;
        // Ahead of anything queued: the peer must learn it before any large message.
        SendOp op{Header{kGiveUp, 0, 0}, nullptr, 0, nullptr};
        if (!p.sends.empty() && p.sends.front().off > 0) p.sends.insert(p.sends.begin() + 1, op);
        else p.sends.push_front(op);
      }
    }
    wake();
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (std::chrono::steady_clock::now() < until) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        bool left = false;
        for (auto& p : peers_)
          for (auto& s : p.sends) left = left || (p.alive && s.h.kind == kGiveUp);
        if (!left) break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }

  [[noreturn]] void abort(int exit_code) override {
    tell_peers_giving_up();
    std::_Exit(exit_code);
  }

 protected:
  void check_giving_up() override {
    std::lock_guard<std::mutex> lock(mu_);
    if (gave_up_ >= 0) {
      peer_gave_up_ = true;
      throw_failure(fmt::format("rank {}", rank_), fmt::format("rank {} gave up: the job is ending", gave_up_));
    }
    if (died_ >= 0) {
      peer_gave_up_ = true;
      throw_failure(fmt::format("rank {}", rank_), fmt::format("rank {} has died (its connection closed): the job is ending", died_));
    }
  }

 private:
  static constexpr int kReduceTag = (1 << 24) + 1;

  Request make_request(std::shared_ptr<OpState> st, int peer, int tag) {
    auto impl = std::make_unique<LocalRequest>();
    impl->st = std::move(st);
    impl->comm = this;
    impl->peer = peer;
    return Request(std::move(impl), peer, tag);
  }

 public:
  // LocalRequest's destructor: forget the operation. A send already partly written goes on with
  // zeros (the peer's stream stays framed; the job is ending anyway).
  void cancel(const std::shared_ptr<OpState>& st, int peer) {
    std::lock_guard<std::mutex> lock(mu_);
    Peer& p = peers_[static_cast<size_t>(peer)];
    for (auto it = p.sends.begin(); it != p.sends.end(); ++it) {
      if (it->st != st) continue;
      if (it->off == 0) {
        p.sends.erase(it);
      } else {
        zeros_.emplace_back(static_cast<size_t>(it->h.bytes), '\0');
        it->data = zeros_.back().data();
        it->st = nullptr;
      }
      return;
    }
    for (auto it = p.recvs.begin(); it != p.recvs.end(); ++it) {
      if (it->st != st) continue;
      if (&*it == p.target) {
        // The frame being read into it goes on into a held buffer that nobody takes.
        p.target = nullptr;
        p.held.push_back(Held{p.in.tag, std::vector<char>(static_cast<size_t>(p.in.bytes)), false, {}});
        p.held_target = &p.held.back();
        p.held_target->claimed.st = std::make_shared<OpState>();  // consumed on arrival
        p.held_target->claimed.bytes = static_cast<size_t>(p.in.bytes);
        p.held_target->claimed.data = nullptr;
      }
      p.recvs.erase(it);
      return;
    }
    for (auto& h : p.held)
      if (h.claimed.st == st) {
        h.claimed.st = std::make_shared<OpState>();
        h.claimed.data = nullptr;
        h.claimed.bytes = h.data.size();
        return;
      }
  }

 private:

  void check_peer(int peer) const {
    SMP_CHECK(peer >= 0 && peer < size_ && peer != rank_, "bad peer {} for rank {} of {}", peer, rank_, size_);
  }

  void wake() {
    char c = 1;
    ssize_t n = ::write(wake_[1], &c, 1);
    (void)n;
  }

  void fail_op(OpState& st, int peer) {
    st.error = fmt::format("rank {} has died (its connection closed)", peer);
    st.done.store(true, std::memory_order_release);
  }

  void deliver(RecvOp& op, const char* data, size_t bytes, int peer) {
    if (bytes != op.bytes)
      op.st->error = fmt::format("rank {} sent {} bytes where {} were expected", peer, bytes, op.bytes);
    else if (bytes > 0 && op.data)
      std::memcpy(op.data, data, bytes);
    op.st->done.store(true, std::memory_order_release);
  }

  // Sum over `group` at its first rank, in the group's order (the same bits on every rank),
  // then sent back.
  template <class T>
  void reduce(T* data, size_t count, const std::vector<int>& group) {
    SMP_CHECK(std::is_sorted(group.begin(), group.end()) && std::find(group.begin(), group.end(), rank_) != group.end(),
              "rank {} is not in its all-reduce group", rank_);
    if (group.size() <= 1 || count == 0) return;
    const size_t bytes = count * sizeof(T);
    const std::string what = fmt::format("an all-reduce among {} ranks", group.size());
    if (rank_ != group.front()) {
      Request s = isend(data, bytes, group.front(), kReduceTag);
      Request r = irecv(data, bytes, group.front(), kReduceTag + 1);
      wait(s, what);
      wait(r, what);
      return;
    }
    std::vector<T> part(count);
    for (size_t i = 1; i < group.size(); ++i) {
      Request r = irecv(part.data(), bytes, group[i], kReduceTag);
      wait(r, what);
      for (size_t k = 0; k < count; ++k) data[k] += part[k];
    }
    std::vector<Request> sends;
    for (size_t i = 1; i < group.size(); ++i) sends.push_back(isend(data, bytes, group[i], kReduceTag + 1));
    for (auto& s : sends) wait(s, what);
  }

  void connect_all(double timeout_s) {
    // Listen first, then connect to every lower rank (retrying until it listens), then accept
    // every higher one; each connection starts with the connecting rank's hello.
    listen_fd_ = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const std::string me = sock_path(dir_, rank_);
    if (me.size() >= sizeof addr.sun_path)
      throw_failure("SMP_LOCAL_DIR", fmt::format("{}: the path is too long for a socket", me));
    std::strncpy(addr.sun_path, me.c_str(), sizeof addr.sun_path - 1);
    ::unlink(me.c_str());
    if (::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || ::listen(listen_fd_, size_) != 0)
      throw_failure(me, std::string("cannot listen: ") + std::strerror(errno));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(timeout_s);
    for (int r = 0; r < rank_; ++r) {
      const std::string path = sock_path(dir_, r);
      while (true) {
        int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un to{};
        to.sun_family = AF_UNIX;
        std::strncpy(to.sun_path, path.c_str(), sizeof to.sun_path - 1);
        if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) == 0) {
          Header h{kHello, rank_, 0};
          if (!io_all(fd, &h, sizeof h, true)) throw_failure(path, "the connection closed during the handshake");
          peers_[static_cast<size_t>(r)].fd = fd;
          break;
        }
        ::close(fd);
        if (std::chrono::steady_clock::now() > deadline)
          throw_failure(fmt::format("rank {}", rank_), fmt::format("rank {} did not start listening within {:.0f} s", r, timeout_s),
                        "it failed to start; see its own message");
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      }
    }
    for (int k = rank_ + 1; k < size_; ++k) {
      pollfd pf{listen_fd_, POLLIN, 0};
      const int left_ms = static_cast<int>(std::max<int64_t>(
          0, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count()));
      if (::poll(&pf, 1, left_ms) <= 0)
        throw_failure(fmt::format("rank {}", rank_), fmt::format("not every higher rank connected within {:.0f} s", timeout_s),
                      "a rank failed to start; see its own message");
      int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      Header h{};
      if (fd < 0 || !io_all(fd, &h, sizeof h, false) || h.kind != kHello || h.tag <= rank_ || h.tag >= size_ ||
          peers_[static_cast<size_t>(h.tag)].fd >= 0)
        throw_failure(me, "a bad handshake on the rendezvous socket", "another job uses the same SMP_LOCAL_DIR?");
      peers_[static_cast<size_t>(h.tag)].fd = fd;
    }
    for (auto& p : peers_)
      if (p.fd >= 0) {
        int buf = 4 << 20;
        ::setsockopt(p.fd, SOL_SOCKET, SO_SNDBUF, &buf, sizeof buf);
        ::setsockopt(p.fd, SOL_SOCKET, SO_RCVBUF, &buf, sizeof buf);
        set_nonblocking(p.fd);
      }
  }

  // The peer's socket closed or failed: its pending operations fail.
  void lost(int r) {
    Peer& p = peers_[static_cast<size_t>(r)];
    if (!p.alive) return;
    p.alive = false;
    if (!p.said_bye && died_ < 0) died_ = r;
    for (auto& s : p.sends)
      if (s.st) fail_op(*s.st, r);
    p.sends.clear();
    for (auto& op : p.recvs) fail_op(*op.st, r);
    p.recvs.clear();
    // Frames that arrived whole stay for their receives; a partial one is lost.
    for (auto it = p.held.begin(); it != p.held.end();) {
      if (it->complete) {
        ++it;
        continue;
      }
      if (it->claimed.st) fail_op(*it->claimed.st, r);
      it = p.held.erase(it);
    }
    p.target = nullptr;
    p.held_target = nullptr;
  }

  // Writes what it can of the peer's queue (under the lock).
  void write_some(int r) {
    Peer& p = peers_[static_cast<size_t>(r)];
    while (p.alive && !p.sends.empty()) {
      SendOp& s = p.sends.front();
      const size_t total = sizeof(Header) + static_cast<size_t>(s.h.bytes);
      iovec iov[2];
      int n = 0;
      if (s.off < sizeof(Header)) {
        iov[n++] = {reinterpret_cast<char*>(&s.h) + s.off, sizeof(Header) - s.off};
        if (s.h.bytes > 0) iov[n++] = {const_cast<char*>(s.data), static_cast<size_t>(s.h.bytes)};
      } else {
        iov[n++] = {const_cast<char*>(s.data) + (s.off - sizeof(Header)), total - s.off};
      }
      msghdr mh{};
      mh.msg_iov = iov;
      mh.msg_iovlen = static_cast<size_t>(n);
      ssize_t k = ::sendmsg(p.fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (k < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return;
        lost(r);
        return;
      }
      s.off += static_cast<size_t>(k);
      if (s.off < total) return;
      if (s.st) s.st->done.store(true, std::memory_order_release);
      p.sends.pop_front();
    }
  }

  // Reads what has arrived from the peer (under the lock).
  void read_some(int r) {
    Peer& p = peers_[static_cast<size_t>(r)];
    // One non-blocking read of what is left of `total` bytes into `buf`, `done` of them read:
    // 1 when some arrived, 0 when interrupted (try again), -1 when nothing more is there now or
    // the peer is gone (lost() is called).
    auto step = [&](char* buf, size_t total, size_t& done) {
      ssize_t k = ::recv(p.fd, buf + done, total - done, MSG_DONTWAIT);
      if (k == 0 || (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
        lost(r);
        return -1;
      }
      if (k < 0) return errno == EINTR ? 0 : -1;
      done += static_cast<size_t>(k);
      return 1;
    };
    while (p.alive) {
      if (!p.in_body) {
        const int got = step(reinterpret_cast<char*>(&p.in), sizeof(Header), p.in_header);
        if (got < 0) return;
        if (got == 0 || p.in_header < sizeof(Header)) continue;
        p.in_header = 0;
        if (p.in.kind == kBye) {
          p.said_bye = true;
          continue;
        }
        if (p.in.kind == kGiveUp) {
          if (gave_up_ < 0) gave_up_ = r;
          continue;
        }
        if (p.in.kind != kData) {
          lost(r);
          return;
        }
        // Where it goes: the first receive posted for its tag, else a held buffer.
        p.target = nullptr;
        p.held_target = nullptr;
        for (auto& op : p.recvs)
          if (op.tag == p.in.tag) {
            p.target = &op;
            break;
          }
        if (!p.target) {
          p.held.push_back(Held{p.in.tag, std::vector<char>(static_cast<size_t>(p.in.bytes)), false, {}});
          p.held_target = &p.held.back();
        } else if (p.target->bytes != p.in.bytes) {
          p.discard.resize(static_cast<size_t>(p.in.bytes));
        }
        p.in_payload = 0;
        p.in_body = true;
      }
      const size_t need = static_cast<size_t>(p.in.bytes) - p.in_payload;
      if (need > 0) {
        char* dst = p.held_target                           ? p.held_target->data.data()
                    : p.target->bytes == p.in.bytes ? p.target->data
                                                            : p.discard.data();
        const int got = step(dst, static_cast<size_t>(p.in.bytes), p.in_payload);
        if (got < 0) return;
        if (got == 0 || p.in_payload < static_cast<size_t>(p.in.bytes)) continue;
      }
      p.in_body = false;
      if (p.held_target) {
        Held& h = *p.held_target;
        h.complete = true;
        if (h.claimed.st) {
          deliver(h.claimed, h.data.data(), h.data.size(), r);
          for (auto it = p.held.begin(); it != p.held.end(); ++it)
            if (&*it == &h) {
              p.held.erase(it);
              break;
            }
        }
      } else {
        RecvOp& op = *p.target;
        if (op.bytes != p.in.bytes)
          op.st->error = fmt::format("rank {} sent {} bytes where {} were expected", r, p.in.bytes, op.bytes);
        op.st->done.store(true, std::memory_order_release);
        for (auto it = p.recvs.begin(); it != p.recvs.end(); ++it)
          if (&*it == p.target) {
            p.recvs.erase(it);
            break;
          }
      }
      p.target = nullptr;
      p.held_target = nullptr;
    }
  }

  void progress_loop() {
    std::vector<pollfd> fds;
    std::vector<int> who;
    while (!stop_.load()) {
      fds.clear();
      who.clear();
      fds.push_back({wake_[0], POLLIN, 0});
      who.push_back(-1);
      {
        std::lock_guard<std::mutex> lock(mu_);
        for (int r = 0; r < size_; ++r) {
          Peer& p = peers_[static_cast<size_t>(r)];
          if (p.fd < 0 || !p.alive) continue;
          short ev = POLLIN;
          if (!p.sends.empty()) ev |= POLLOUT;
          fds.push_back({p.fd, ev, 0});
          who.push_back(r);
        }
      }
      int n = ::poll(fds.data(), fds.size(), 100);
      if (n < 0 && errno != EINTR) break;
      if (fds[0].revents & POLLIN) {
        char buf[64];
        while (::read(wake_[0], buf, sizeof buf) > 0) {
        }
      }
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 1; i < fds.size(); ++i) {
        const int r = who[i];
        if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) read_some(r);
        write_some(r);  // also what was queued since the poll began
      }
    }
  }

  int rank_, size_;
  std::string dir_;
  std::vector<Peer> peers_;
  int listen_fd_ = -1;
  int wake_[2] = {-1, -1};
  std::mutex mu_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::list<std::string> zeros_;  // the rest of cancelled sends
  int gave_up_ = -1;  // a peer that told us it gives up
  int died_ = -1;     // a peer whose connection closed without a goodbye
};

LocalRequest::~LocalRequest() {
  if (comm && st && !st->done.load(std::memory_order_acquire)) comm->cancel(st, peer);
}

}  // namespace

std::unique_ptr<Communicator> init_local() {
  const LaunchInfo li = detect_launch();
  const char* dir = std::getenv("SMP_LOCAL_DIR");
  if (li.launcher != "local" || !dir || !*dir)
    throw_failure("local communicator", "not started by smp's local launcher (SMP_LOCAL_RANK, SMP_LOCAL_SIZE, SMP_LOCAL_DIR)");
  return std::make_unique<LocalCommunicator>(li.rank, li.size, dir, 60.0);
}

std::unique_ptr<Communicator> init_comm(int* argc, char*** argv) {
  if (detect_launch().launcher == "local") return init_local();
  return init_mpi(argc, argv);
}

}  // namespace smp::comm
