// The bookkeeping of a same-GPU channel (device_comm.cpp): ranks that share one GPU cannot use
// NCCL ("Duplicate GPU detected"), so the sender copies each message into one of K slots of a
// device buffer the receiver has mapped (CUDA IPC), announces it over the control plane, and the
// receiver copies it out and says so. Message n uses slot n mod K; it may be copied in only once
// message n - K has been copied out. Both ends count in order, so a lost, repeated or reordered
// announcement is an internal error here rather than a corrupted tensor on the device.
//
// No CUDA here: the same class runs in the CPU tests (tests/comm/test_slot_ring.cpp).
#pragma once

#include "core/error.hpp"

#include <cstdint>
#include <string>

namespace smp::comm {

class SlotRing {
 public:
  SlotRing(int slots, int64_t slot_bytes) : slots_(slots), slot_bytes_(slot_bytes) {
    SMP_CHECK(slots >= 1 && slot_bytes >= 0, "a ring of {} slots of {} bytes", slots, slot_bytes);
  }
  int slots() const { return slots_; }
  int64_t slot_bytes() const { return slot_bytes_; }
  int slot_of(int64_t seq) const { return static_cast<int>(seq % slots_); }
  int64_t offset_of(int64_t seq) const { return static_cast<int64_t>(slot_of(seq)) * slot_bytes_; }

  // ---- the sender ----
  // The next message to copy in, and whether its slot is free.
  int64_t next_fill() const { return filled_; }
  bool can_fill() const { return filled_ - consumed_ < slots_; }
  // Message `seq` (of `bytes`) was copied into its slot and announced.
  void filled(int64_t seq, int64_t bytes) {
    SMP_CHECK(seq == filled_, "same-GPU channel: message {} filled where {} was next", seq, filled_);
    SMP_CHECK(can_fill(), "same-GPU channel: message {} filled while slot {} still holds message {}", seq, slot_of(seq),
              seq - slots_);
    SMP_CHECK(bytes <= slot_bytes_, "same-GPU channel: message {} of {} bytes in a slot of {}", seq, bytes, slot_bytes_);
    ++filled_;
  }
  // The receiver says it copied message `seq` out.
  void consumed(int64_t seq) {
    SMP_CHECK(seq == consumed_ && seq < filled_, "same-GPU channel: consumed {} announced where {} was next ({} filled)", seq,
              consumed_, filled_);
    ++consumed_;
  }
  int64_t in_flight() const { return filled_ - consumed_; }

  // ---- the receiver ----
  // The sender announced message `seq`.
  void announced(int64_t seq) {
    SMP_CHECK(seq == announced_, "same-GPU channel: message {} announced where {} was next", seq, announced_);
    ++announced_;
  }
  int64_t next_take() const { return taken_; }
  bool can_take() const { return taken_ < announced_; }
  // Message `seq` was copied out (and the sender told).
  void taken(int64_t seq) {
    SMP_CHECK(seq == taken_ && seq < announced_, "same-GPU channel: message {} taken where {} was next ({} announced)", seq,
              taken_, announced_);
    ++taken_;
  }

 private:
  int slots_;
  int64_t slot_bytes_;
  int64_t filled_ = 0, consumed_ = 0;    // sender
  int64_t announced_ = 0, taken_ = 0;    // receiver
};

}  // namespace smp::comm
