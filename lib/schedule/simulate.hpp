// Event simulator: replays the per-rank lists with per-stage compute times, per-boundary
// transfer times and optional data-parallel all-reduce times, and measures time and memory.
//
// Model. Each rank runs its list in order, one compute action at a time. A compute action starts
// when the rank is free and its inputs are there: F of stage s needs F of stage s-1, B / X of
// stage s needs B / X of stage s+1 (the last stage's backward needs only its own F), W needs its
// B. Between stages on different ranks the tensor travels after the producer ends; the transfer
// takes the boundary's time and occupies the directed link between the two ranks (transfers on
// one link run one after the other, in the sender's order, when serialize_links is set).
// Transfers never occupy the compute of either rank (sends and receives are non-blocking, see
// validate.hpp). S / R actions in a lowered list are skipped: their timing is implied.
// After its last action a rank runs its all-reduce (if given), and the step ends when the
// last rank is done.
//
// Memory per rank = the static bytes of its stages (weights + gradients + optimizer state) +
// the activations it holds: act_bytes per microbatch from F until B / X of the stage; with B / W
// split, B releases act_bytes and keeps w_keep_bytes until W. Peaks are taken over each rank's
// list order (exact, since a rank's actions are sequential). Message buffers are not counted.
#pragma once

#include "schedule/schedule.hpp"

#include <vector>

namespace smp::schedule {

struct StageCost {
  double f_s = 1, b_s = 1, w_s = 1;  // full backward X takes b_s + w_s
  double weight_bytes = 0, grad_bytes = 0, optimizer_bytes = 0;
  double act_bytes = 0;     // stashed per microbatch from F until B (or X)
  double w_keep_bytes = 0;  // kept per microbatch from B until W (split backward only)
};

struct LinkCost {  // boundary between stage s and s+1
  double act_s = 0;   // forward output of s to s+1: on the link, overlapping both ranks' compute
  double grad_s = 0;  // input gradient of s+1 back to s
  // Work the ranks' own processors do per message, before the link (the sender's, e.g. packing
  // the tensors) and after it (the receiver's, e.g. copying the message out of the sender's
  // memory and unpacking it): neither rank computes meanwhile. 0 where a DMA engine does it.
  double act_send_s = 0, act_recv_s = 0;
  double grad_send_s = 0, grad_recv_s = 0;
};

struct Costs {
  std::vector<StageCost> stage;    // size S
  std::vector<LinkCost> link;      // size S-1 (empty: free communication)
  std::vector<double> allreduce_s; // size p (empty: no data parallelism)
  // Per rank, the end-of-step work after its pipeline and all-reduce: the gradient norm and the
  // optimizer's update of its stages' weights. Size p (empty: none).
  std::vector<double> update_s;
  bool serialize_links = true;

  // Equal stages: F = f, B = b, W = w (X = b + w), free communication, no memory.
  static Costs uniform(int stages, double f_s, double b_s, double w_s);
};

enum class EventKind : uint8_t { Compute, Transfer, AllReduce, Update };

struct Event {
  EventKind kind = EventKind::Compute;
  int rank = 0;    // compute / all-reduce / update: the rank; transfer: the sending rank
  int peer = -1;   // transfer: the receiving rank
  Action action;   // compute: the action; transfer: the send (SF / SB with peer); all-reduce, update: unused
  double start_s = 0, end_s = 0;
};

struct RankStats {
  double busy_s = 0;       // compute
  double allreduce_s = 0;  // data-parallel all-reduce at the end
  double update_s = 0;     // then the gradient norm and the optimizer's update
  double idle_s = 0;       // step_s - busy_s - allreduce_s - update_s
  double end_s = 0;        // when the rank finished (all-reduce and update included)
  double static_bytes = 0;     // weights + gradients + optimizer state of its stages
  double peak_act_bytes = 0;   // activations at the worst moment
  double peak_bytes = 0;       // static + peak activations
};

struct StageStats {
  int peak_stashed = 0;    // most microbatches between F and B (or X) at once
  int peak_pending_w = 0;  // most microbatches between B and W at once
  int peak_in_flight = 0;  // most microbatches between F and their last backward (W or X)
};

struct SimResult {
  double step_s = 0;
  double compute_s = 0;    // sum of busy_s over ranks
  double idle_s = 0;       // sum of idle_s over ranks
  double bubble = 0;       // idle_s / (p * step_s)
  std::vector<RankStats> rank;
  std::vector<StageStats> stage;
  std::vector<Event> events;  // compute, transfers and all-reduces (when recorded)
};

struct SimOptions {
  bool record_events = true;  // the planner turns this off when it only scores
};

// Replays the schedule. Bad input (naming `where`) when the costs do not fit the schedule or the
// lists cannot run to the end (a missing or misordered action: validate() says which).
SimResult simulate(const Schedule& s, const Costs& c, const SimOptions& opt = {},
                   const std::string& where = "schedule");

}  // namespace smp::schedule
