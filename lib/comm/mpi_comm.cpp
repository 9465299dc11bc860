#include "comm/comm.hpp"

#include "core/error.hpp"

#include <fmt/ranges.h>
#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <map>
#include <mutex>
#include <thread>

namespace smp::comm {

// Several MPI requests when a message is split into chunks of at most INT_MAX bytes.
struct Request::Impl {
  std::vector<MPI_Request> reqs;
  size_t expected_bytes = 0;  // receives: the size the receiver posted
  bool is_recv = false;
};

Request::Request(std::unique_ptr<Impl> impl, int peer, int tag) : impl_(std::move(impl)), peer_(peer), tag_(tag) {}

Request::Request() = default;
Request::Request(Request&&) noexcept = default;
Request& Request::operator=(Request&&) noexcept = default;

Request::~Request() {
  // A request dropped while active (an exception unwound past it) is cancelled, so that MPI
  // does not write into a freed buffer later.
  if (impl_) {
    for (auto& r : impl_->reqs) {
      if (r != MPI_REQUEST_NULL) {
        MPI_Cancel(&r);
        MPI_Request_free(&r);
      }
    }
  }
}

void Request::reset() { impl_.reset(); }

namespace {

constexpr size_t kChunk = size_t{1} << 30;
constexpr int64_t kProgressEveryUs = 100;   // progress(): at most one MPI poll per interval
constexpr int64_t kBackstopEveryUs = 1000;  // the backstop thread's period

std::string mpi_error(int code) {
  char buf[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, buf, &len);
  return std::string(buf, static_cast<size_t>(len));
}

void check(int code, const char* what) {
  if (code != MPI_SUCCESS) throw_failure("mpi", std::string(what) + ": " + mpi_error(code));
}

constexpr int kGiveUpTag = (1 << 20) + 99;  // tell_peers_giving_up()'s messages

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(int* argc, char*** argv) {
    int initialized = 0;
    MPI_Initialized(&initialized);
    int provided = MPI_THREAD_SINGLE;
    if (!initialized) {
      check(MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided), "MPI_Init_thread");
      owns_ = true;
    } else {
      MPI_Query_thread(&provided);
    }
    // A message above the eager limit moves only while its sender and receiver are inside MPI;
    // a pipeline stage that sends and then computes would hold its neighbour back for a whole
    // compute phase. The computing thread calls progress() between kernels; a backstop thread
    // does it when nobody has for a while (one long kernel). It needs THREAD_MULTIPLE.
    if (provided == MPI_THREAD_MULTIPLE) progress_ = std::thread([this] { progress_loop(); });
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    char version[MPI_MAX_LIBRARY_VERSION_STRING];
    int len = 0;
    MPI_Get_library_version(version, &len);
    std::string v(version, static_cast<size_t>(len));
    transport_ = "mpi (" + v.substr(0, v.find(',')) + ")";
  }

  ~MpiCommunicator() override {
    if (progress_.joinable()) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        stop_ = true;
      }
      cv_.notify_all();
      progress_.join();
    }
    for (auto& [g, c] : groups_) MPI_Comm_free(&c);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owns_ && !finalized) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }

  // Polls `done` until it returns true (true) or the timeout passes (false). Spinning (spin_wait_)
  // keeps polling, yielding the core between polls (a message is seen within microseconds; right
  // when this rank has a core to itself); otherwise it spins briefly, then sleeps with a growing
  // pause, leaving the cores to ranks that compute (a sleep lasts >= ~70 us on a VM even when
  // asked for 5). Every ~64 polls it also looks for a peer giving up, and, once a stop is asked
  // for, at the stop patience: either fails (throws).
  template <class F>
  bool poll(F&& done) {
    using clock = std::chrono::steady_clock;
    const auto start = clock::now();
    const auto deadline = start + std::chrono::duration<double>(timeout_s_);
    auto stop_seen = clock::time_point::max();
    int spins = 0;
    std::chrono::microseconds pause{5};
    while (true) {
      if (done()) return true;
      if (++spins < 64) continue;
      if (spins % 64 == 0) {
        const auto now = clock::now();
        if (now > deadline) return false;
        check_giving_up();
        if (stop_flag_ && *stop_flag_ != 0) {
          if (stop_seen == clock::time_point::max()) stop_seen = now;
          if (now - stop_seen > std::chrono::duration<double>(stop_patience_s_))
            throw_failure(fmt::format("rank {}", rank_),
                          fmt::format("asked to stop, and no progress for {:.0f} s: the step cannot finish", stop_patience_s_));
        }
      }
      if (spin_wait_) {
        std::this_thread::yield();
        continue;
      }
      std::this_thread::sleep_for(pause);
      pause = std::min(pause * 2, std::chrono::microseconds{200});
    }
  }

  void tell_peers_giving_up() override {
    static char byte = 1;
    std::vector<MPI_Request> reqs;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) continue;
      MPI_Request q;
      if (MPI_Isend(&byte, 1, MPI_BYTE, r, kGiveUpTag, MPI_COMM_WORLD, &q) == MPI_SUCCESS) reqs.push_back(q);
    }
    // The messages to live peers leave within the wait; one to a dead peer never completes.
    const auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(200);
    while (std::chrono::steady_clock::now() < until) {
      int flag = 0;
      MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &flag, MPI_STATUSES_IGNORE);
      if (flag) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  }
  std::string transport() const override { return transport_; }

  Request isend(const void* data, size_t bytes, int peer, int tag) override {
    check_peer(peer);
    auto impl = std::make_unique<Request::Impl>();
    const char* p = static_cast<const char*>(data);
    size_t off = 0;
    do {
      size_t n = std::min(kChunk, bytes - off);
      MPI_Request r;
      check(MPI_Isend(p + off, static_cast<int>(n), MPI_BYTE, peer, tag, MPI_COMM_WORLD, &r), "MPI_Isend");
      impl->reqs.push_back(r);
      off += n;
    } while (off < bytes);
    began(impl->reqs.size());
    return Request(std::move(impl), peer, tag);
  }

  Request irecv(void* data, size_t bytes, int peer, int tag) override {
    check_peer(peer);
    auto impl = std::make_unique<Request::Impl>();
    impl->is_recv = true;
    impl->expected_bytes = bytes;
    char* p = static_cast<char*>(data);
    size_t off = 0;
    do {
      size_t n = std::min(kChunk, bytes - off);
      MPI_Request r;
      check(MPI_Irecv(p + off, static_cast<int>(n), MPI_BYTE, peer, tag, MPI_COMM_WORLD, &r), "MPI_Irecv");
      impl->reqs.push_back(r);
      off += n;
    } while (off < bytes);
    began(impl->reqs.size());
    return Request(std::move(impl), peer, tag);
  }

  void progress() override {
    if (active_.load(std::memory_order_relaxed) <= 0) return;
    const int64_t now = now_us();
    if (now - last_progress_us_.load(std::memory_order_relaxed) < kProgressEveryUs) return;
    last_progress_us_.store(now, std::memory_order_relaxed);
    int flag = 0;
    MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
  }

  bool test(Request& r) override {
    if (!r.active()) return true;
    auto& reqs = r.impl()->reqs;
    int flag = 0;
    std::vector<MPI_Status> st(reqs.size());
    int code = MPI_Testall(static_cast<int>(reqs.size()), reqs.data(), &flag, st.data());
    if (code != MPI_SUCCESS && code != MPI_ERR_IN_STATUS) check(code, "MPI_Testall");
    if (!flag) return false;
    ended(reqs.size());
    if (r.impl()->is_recv) {
      size_t got = 0;
      for (auto& s : st) {
        int count = 0;
        MPI_Get_count(&s, MPI_BYTE, &count);
        got += static_cast<size_t>(count);
        if (s.MPI_ERROR != MPI_SUCCESS && code == MPI_ERR_IN_STATUS) {
          std::string msg = mpi_error(s.MPI_ERROR);
          int peer = r.peer();
          r.reset();
          throw_failure(fmt::format("rank {}", rank_), fmt::format("receive from rank {} failed: {}", peer, msg));
        }
      }
      if (got != r.impl()->expected_bytes) {
        size_t want = r.impl()->expected_bytes;
        int peer = r.peer();
        r.reset();
        throw_failure(fmt::format("rank {}", rank_),
                      fmt::format("rank {} sent {} bytes where {} were expected", peer, got, want),
                      "the ranks disagree about a tensor's shape: were they started from the same plan?");
      }
    }
    r.reset();
    return true;
  }

  void wait(Request& r, const std::string& what) override {
    if (!r.active()) return;
    if (!poll([&] { return test(r); })) {
      int peer = r.peer();
      throw_failure(fmt::format("rank {}", rank_),
                    fmt::format("no progress with rank {} for {:.0f} s while waiting for {}", peer, timeout_s_, what),
                    "that rank has died or hangs; see its own message");
    }
  }

  void allreduce_sum(float* data, size_t count, const std::vector<int>& group) override {
    allreduce(data, count, MPI_FLOAT, group);
  }
  void allreduce_sum(double* data, size_t count, const std::vector<int>& group) override {
    allreduce(data, count, MPI_DOUBLE, group);
  }

  void allreduce_max(float* data, size_t count, const std::vector<int>& group) override {
    if (group.size() <= 1 || count == 0) return;
    MPI_Comm c = group_comm(group);
    run_collective(group, "all-reduce (max)", [&](size_t off, size_t n, MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, data + off, static_cast<int>(n), MPI_FLOAT, MPI_MAX, c, r);
    }, count);
  }

  void reduce_scatter_sum(const float* send, float* recv, size_t count, const std::vector<int>& group) override {
    if (group.size() <= 1) {
      std::copy(send, send + count, recv);
      return;
    }
    if (count == 0) return;
    MPI_Comm c = group_comm(group);
    SMP_CHECK(count <= static_cast<size_t>(INT_MAX / 2), "reduce-scatter of {} floats per rank", count);
    run_collective(group, "reduce-scatter", [&](size_t, size_t, MPI_Request* r) {
      return MPI_Ireduce_scatter_block(send, recv, static_cast<int>(count), MPI_FLOAT, MPI_SUM, c, r);
    }, 1);
  }

  void all_gather(const float* send, float* recv, size_t count, const std::vector<int>& group) override {
    if (group.size() <= 1) {
      std::copy(send, send + count, recv);
      return;
    }
    if (count == 0) return;
    MPI_Comm c = group_comm(group);
    SMP_CHECK(count <= static_cast<size_t>(INT_MAX / 2), "all-gather of {} floats per rank", count);
    run_collective(group, "all-gather", [&](size_t, size_t, MPI_Request* r) {
      return MPI_Iallgather(send, static_cast<int>(count), MPI_FLOAT, recv, static_cast<int>(count), MPI_FLOAT, c, r);
    }, 1);
  }

  void barrier() override {
    MPI_Request r;
    check(MPI_Ibarrier(MPI_COMM_WORLD, &r), "MPI_Ibarrier");
    if (!poll([&] {
          int flag = 0;
          MPI_Test(&r, &flag, MPI_STATUS_IGNORE);
          return flag != 0;
        }))
      throw_failure(fmt::format("rank {}", rank_), fmt::format("barrier: not every rank arrived within {:.0f} s", timeout_s_));
  }

  [[noreturn]] void abort(int exit_code) override {
    MPI_Abort(MPI_COMM_WORLD, exit_code);
    std::_Exit(exit_code);
  }

 private:
  void began(size_t n) {
    if (active_.fetch_add(static_cast<int>(n)) == 0) cv_.notify_all();
  }
  void ended(size_t n) { active_.fetch_sub(static_cast<int>(n)); }

  static int64_t now_us() {
    return std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  // Drives MPI's progress engine while requests are in flight and nobody else has for a
  // millisecond (a rank inside a long kernel); sleeps otherwise. Waking every 50 us instead
  // made every kernel of a 2-worker GPT pipeline on 2 cores ~45 % slower (measured).
  void progress_loop() {
    constexpr int64_t period = kBackstopEveryUs;
    std::unique_lock<std::mutex> lock(mu_);
    while (!stop_) {
      if (active_.load() <= 0) {
        cv_.wait_for(lock, std::chrono::milliseconds(20));
        continue;
      }
      lock.unlock();
      if (now_us() - last_progress_us_.load(std::memory_order_relaxed) >= period) {
        last_progress_us_.store(now_us(), std::memory_order_relaxed);
        int flag = 0;
        MPI_Iprobe(MPI_ANY_SOURCE, MPI_ANY_TAG, MPI_COMM_WORLD, &flag, MPI_STATUS_IGNORE);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(period));
      lock.lock();
    }
  }

  // A peer's tell_peers_giving_up(): this rank's wait fails too.
  void check_giving_up() {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, kGiveUpTag, MPI_COMM_WORLD, &flag, &st);
    if (!flag) return;
    peer_gave_up_ = true;
    throw_failure(fmt::format("rank {}", rank_), fmt::format("rank {} gave up: the job is ending", st.MPI_SOURCE));
  }

  void check_peer(int peer) const {
    SMP_CHECK(peer >= 0 && peer < size_ && peer != rank_, "bad peer {} for rank {} of {}", peer, rank_, size_);
  }

  MPI_Comm group_comm(const std::vector<int>& group) {
    SMP_CHECK(std::is_sorted(group.begin(), group.end()) &&
                  std::find(group.begin(), group.end(), rank_) != group.end(),
              "rank {} is not in its all-reduce group", rank_);
    auto it = groups_.find(group);
    if (it != groups_.end()) return it->second;
    MPI_Group world, sub;
    MPI_Comm_group(MPI_COMM_WORLD, &world);
    MPI_Group_incl(world, static_cast<int>(group.size()), group.data(), &sub);
    MPI_Comm c;
    // Collective over the group only; the tag keeps concurrent creations apart.
    check(MPI_Comm_create_group(MPI_COMM_WORLD, sub, group.front(), &c), "MPI_Comm_create_group");
    MPI_Group_free(&sub);
    MPI_Group_free(&world);
    MPI_Comm_set_errhandler(c, MPI_ERRORS_RETURN);
    groups_[group] = c;
    return c;
  }

  void allreduce(void* data, size_t count, MPI_Datatype type, const std::vector<int>& group) {
    if (group.size() <= 1 || count == 0) return;
    MPI_Comm c = group_comm(group);
    int esize = 0;
    MPI_Type_size(type, &esize);
    char* p = static_cast<char*>(data);
    run_collective(group, "all-reduce", [&](size_t off, size_t n, MPI_Request* r) {
      return MPI_Iallreduce(MPI_IN_PLACE, p + off * static_cast<size_t>(esize), static_cast<int>(n), type, MPI_SUM, c, r);
    }, count);
  }

  // Starts start(offset, count, &request) over `count` elements in pieces MPI's int counts hold,
  // and waits for each with the deadline.
  template <class Start>
  void run_collective(const std::vector<int>& group, const char* what, Start&& start, size_t count) {
    const size_t per = static_cast<size_t>(INT_MAX / 2);
    for (size_t off = 0; off < count; off += per) {
      const size_t n = std::min(per, count - off);
      MPI_Request r;
      check(start(off, n, &r), what);
      if (!poll([&] {
            int flag = 0;
            MPI_Test(&r, &flag, MPI_STATUS_IGNORE);
            return flag != 0;
          }))
        throw_failure(fmt::format("rank {}", rank_),
                      fmt::format("{} among ranks {}: no progress for {:.0f} s", what, fmt::join(group, ","), timeout_s_),
                      "a peer has died or hangs");
    }
  }

  int rank_ = 0, size_ = 1;
  bool owns_ = false;
  std::string transport_;
  std::map<std::vector<int>, MPI_Comm> groups_;
  std::thread progress_;
  std::atomic<int> active_{0};  // MPI requests in flight
  std::atomic<int64_t> last_progress_us_{0};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
};

}  // namespace

std::unique_ptr<Communicator> init_mpi(int* argc, char*** argv) { return std::make_unique<MpiCommunicator>(argc, argv); }

}  // namespace smp::comm
