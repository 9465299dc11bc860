// The same-GPU transport's bookkeeping (comm/slot_ring.hpp), on host memory standing in for the
// device buffer: under random interleavings of the two ends and delayed announcements, no slot
// is overwritten before it was copied out and every message arrives once, in order.
#include <doctest/doctest.h>

#include "comm/slot_ring.hpp"
#include "core/error.hpp"

#include <cstring>
#include <deque>
#include <random>
#include <vector>

using namespace smp;

TEST_CASE("a slot is refilled only after its message was copied out; messages arrive in order") {
  for (int slots : {1, 2, 4}) {
    for (uint32_t seed = 1; seed <= 20; ++seed) {
      std::mt19937 rng(seed * 31 + static_cast<uint32_t>(slots));
      const int64_t slot_bytes = 64;
      comm::SlotRing sender(slots, slot_bytes), receiver(slots, slot_bytes);
      std::vector<char> buffer(static_cast<size_t>(slots * slot_bytes), 0);  // the receiver maps it
      std::deque<int64_t> ready, consumed;  // control messages in flight, each way
      const int64_t n = 200;
      int64_t next_expected = 0;
      auto payload = [](int64_t seq, int64_t i) { return static_cast<char>((seq * 13 + i * 7) & 0x7f); };
      while (next_expected < n) {
        switch (rng() % 4) {
          case 0:  // the sender copies the next message in, if its slot is free
            if (sender.next_fill() < n && sender.can_fill()) {
              const int64_t seq = sender.next_fill(), bytes = 1 + static_cast<int64_t>(rng() % slot_bytes);
              char* slot = buffer.data() + sender.offset_of(seq);
              for (int64_t i = 0; i < slot_bytes; ++i) slot[i] = i < bytes ? payload(seq, i) : 0;
              sender.filled(seq, bytes);
              ready.push_back(seq);
            }
            break;
          case 1:  // an announcement reaches the receiver
            if (!ready.empty()) {
              receiver.announced(ready.front());
              ready.pop_front();
            }
            break;
          case 2:  // the receiver copies the next announced message out
            if (receiver.can_take()) {
              const int64_t seq = receiver.next_take();
              REQUIRE(seq == next_expected);
              const char* slot = buffer.data() + receiver.offset_of(seq);
              CHECK(slot[0] == payload(seq, 0));  // nothing overwrote it
              receiver.taken(seq);
              consumed.push_back(seq);
              ++next_expected;
            }
            break;
          default:  // a "consumed" reaches the sender
            if (!consumed.empty()) {
              sender.consumed(consumed.front());
              consumed.pop_front();
            }
        }
        CHECK(sender.in_flight() <= slots);
      }
      CHECK(next_expected == n);
    }
  }
}

TEST_CASE("a repeated, skipped or early announcement is an internal error, not a corrupted tensor") {
  comm::SlotRing s(2, 16);
  s.filled(0, 16);
  CHECK_THROWS_AS(s.filled(0, 8), Error);   // repeated
  CHECK_THROWS_AS(s.filled(2, 8), Error);   // skipped
  CHECK_THROWS_AS(s.filled(1, 17), Error);  // larger than a slot
  s.filled(1, 16);
  CHECK_FALSE(s.can_fill());
  CHECK_THROWS_AS(s.filled(2, 1), Error);   // slot 0 still holds message 0
  CHECK_THROWS_AS(s.consumed(1), Error);    // out of order
  s.consumed(0);
  CHECK(s.can_fill());
  CHECK(s.slot_of(2) == 0);
  CHECK(s.offset_of(3) == 16);
  CHECK_THROWS_AS(s.consumed(2), Error);    // never filled
  comm::SlotRing r(2, 16);
  CHECK_FALSE(r.can_take());
  CHECK_THROWS_AS(r.taken(0), Error);       // not announced yet
  r.announced(0);
  CHECK_THROWS_AS(r.announced(2), Error);
  r.taken(0);
  CHECK_THROWS_AS(r.taken(0), Error);
}
