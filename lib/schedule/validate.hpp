// Lowering (inserting sends and receives) and the validator.
//
// Semantics of a lowered list, which the worker (MPI or NCCL, non-blocking point-to-point)
// executes literally and validate() checks:
//   * S (send) posts a non-blocking send of the named tensor and never blocks. Its buffer stays
//     alive until the send completes; the worker waits on all sends at the end of the step.
//   * R (receive) posts a non-blocking receive into a buffer keyed by (kind, stage, microbatch)
//     and never blocks. lower() posts each receive ahead of its consumer (before the compute
//     action that precedes the consumer on the rank, by default).
//   * A compute action waits, before it starts, for the receive that feeds it: F of stage s for
//     RF(s, mb) when stage s-1 lives on another rank, B / X of stage s for RB(s, mb) when stage
//     s+1 lives on another rank. Dependencies between stages on the same rank need no message.
//   * Messages are matched by (kind, stage, microbatch), e.g. as an MPI tag, never by order.
// Under these semantics a lowered list cannot deadlock iff the compute dependencies together
// with each rank's order are acyclic; validate() proves it by executing the lists. Blocking,
// rendezvous sends (MPI_Send / MPI_Recv executed in place) are NOT what the lists are for: 1F1B's
// steady state needs the send of one microbatch and the receive of another at the same time.
#pragma once

#include "schedule/schedule.hpp"

#include <cstdint>
#include <string>

namespace smp::schedule {

struct LowerOptions {
  // Receives are posted this many compute actions before their consumer (0: right before it).
  int recv_lookahead = 1;
};

// Inserts the sends and receives into a compute-only schedule (bad input if already lowered).
// A send follows its producing compute action directly.
Schedule lower(const Schedule& s, const LowerOptions& opt = {});

// The identity of the message a send or receive moves, the same for a send and its receive and
// different for every other message of the step: ((direction * (S-1) + boundary) * m + mb), with
// direction 0 for activations and 1 for gradients and boundary b for the stages b and b+1. In
// [0, 2 (S-1) m); a worker can use it as the MPI tag (check MPI_TAG_UB for large steps).
int64_t message_id(const Schedule& s, const Action& a);

// Drops the sends and receives.
Schedule compute_only(const Schedule& s);

struct Validation {
  bool ok = true;
  std::string message;  // one line; names the rank, step and action when there is one
  int rank = -1;        // the first offending action, -1 when none can be named
  int step = -1;        // its position in the rank's list (counting S / R actions)
};

// How sends and receives of a lowered list behave while validate() executes it.
enum class CommSemantics {
  // The worker's semantics (top of this file): S and R never block; a compute action waits for
  // the receive that feeds it.
  Posted,
  // As Posted, but a send also blocks until the peer has posted the matching receive (MPI_Send
  // under the rendezvous protocol, receives posted where the list says). lower()'s lists satisfy
  // it for gpipe, 1f1b and zb-h1 with recv_lookahead >= 1 (not 0), and for looped placements
  // (v >= 2) only with every receive posted up front (recv_lookahead >= the list's length):
  // otherwise the sends around the ring wait for each other. Tests sweep both facts.
  BlockingSend,
  // Both block until the other side reaches its match (MPI_Send / MPI_Recv executed in place,
  // or ungrouped NCCL send / recv on one stream). lower()'s lists do NOT satisfy this in
  // general (1F1B's steady state sends one microbatch while its peer sends another); a worker
  // with such primitives must group each rank's adjacent messages (e.g. ncclGroupStart/End).
  Rendezvous,
};

struct ValidateOptions {
  CommSemantics semantics = CommSemantics::Posted;  // only matters for lowered lists
};

// Proves a schedule correct or names the first offending action. Checks: actions within bounds
// and on their stage's rank; every microbatch's F and either (B and W) or X exactly once per
// stage; B / X after the F of its stage, W after its B; for lowered lists, every cross-rank
// dependency has exactly one send after its producer and one receive before its consumer, with
// the right peers, and no message between stages on the same rank; and, by executing the lists
// under opt.semantics (default: the worker's, above), that no rank ever waits forever (the
// message then names the cycle of waits). Compute-only lists are checked the same way with the
// transfers implied.
Validation validate(const Schedule& s, const ValidateOptions& opt = {});

// validate() and throw smp::throw_bad_input(where, message, hint) when it fails.
void check_valid(const Schedule& s, const std::string& where);

}  // namespace smp::schedule
