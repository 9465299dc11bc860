// The messages of a training step, channel by channel, as pure functions of the plan.
//
// NCCL point-to-point has no tags: the i-th send from rank A to rank B on a communicator meets
// the i-th receive on B from A. So each end of a stage boundary must issue the same messages in
// the same order, and both derive that order from the plan, each on its own: the sender from the
// order of its sends (S actions) in its lowered list, the receiver from the order of its receives
// (R actions). A worker exchanges its views with its peers at start-up and compares them
// (compare_channel); a difference would be a hang or silent corruption, so it is an error naming
// the first message that differs.
//
// A channel is one direction of one kind between two ranks: (from, to, activations) or
// (from, to, gradients). Its messages travel in one FIFO (one NCCL communicator and stream per
// channel), so channels never wait for each other: with one FIFO per pair of ranks, rank 0 of a
// 1F1B pipeline would post the receive of gradient 0 before sending activation 1, and rank 1 the
// receive of activation 1 before sending gradient 0 — each waiting for the other.
//
// A message is one tensor: a stage boundary whose cut holds several tensors sends several
// messages per microbatch, in the cut's order, all with the schedule's message id as tag.
#pragma once

#include "schedule/schedule.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace smp::plan {

enum class Direction : uint8_t { Activation = 0, Gradient = 1 };

// One tensor crossing a stage boundary, as one end of it holds the tensor (dtype and bytes
// depend on that end's compute precision).
struct BoundaryTensor {
  std::string name;
  std::string dtype;  // "float32", "bfloat16", "int64", ...
  int64_t bytes = 0;
  friend bool operator==(const BoundaryTensor&, const BoundaryTensor&) = default;
};

// Boundary b lies between stages b and b+1.
struct Boundary {
  std::vector<BoundaryTensor> activations;  // stage b's outputs read by stage b+1 or later, in order
  std::vector<BoundaryTensor> gradients;    // their gradients going back (the floating ones)
};

struct Message {
  int boundary = 0;  // stages boundary and boundary + 1
  int mb = 0;
  Direction dir = Direction::Activation;
  int tensor = 0;    // index into the boundary's activations or gradients
  int64_t tag = 0;   // schedule::message_id of the send / receive
  std::string name, dtype;
  int64_t bytes = 0;
  friend bool operator==(const Message&, const Message&) = default;
};

struct Channel {
  int from = 0, to = 0;  // global ranks
  Direction dir = Direction::Activation;
  std::vector<Message> messages;  // in the order this rank issues them
  bool operator<(const Channel& o) const {
    return from != o.from ? from < o.from : to != o.to ? to < o.to : dir < o.dir;
  }
};

// Where a global rank sits: its replica (data-parallel index), its rank in the pipeline (the
// schedule's rank) and its tensor-parallel lane (messages stay within a replica and a lane).
// Index: global rank.
struct RankPlace {
  int replica = 0;
  int pipeline_rank = 0;
  int tp_rank = 0;
};

// The channels of global rank `rank`, sorted (from, to, dir): its outgoing ones in the order of
// its sends, its incoming ones in the order of its receives. `lowered`: the plan's lowered
// schedule (its ranks are pipeline ranks; messages stay within a replica and lane). `cuts[b]`: boundary
// b as this rank holds its tensors (size stages - 1). Internal error when the schedule is not
// lowered or a message names a stage whose boundary is out of range.
std::vector<Channel> rank_channels(const schedule::Schedule& lowered, const std::vector<RankPlace>& places,
                                   const std::vector<Boundary>& cuts, int rank);

// "activations of stage 2 -> 3, microbatch 5, tensor 'x' (bfloat16, 4096 bytes)"
std::string describe(const Message& m);
// "rank 0 -> rank 1, activations"
std::string describe(const Channel& c);

// The first difference between two ends' views of one channel, as one sentence naming both
// ranks and the message; "" when they agree.
std::string compare_channel(const Channel& mine, int my_rank, const Channel& theirs, int their_rank);

// A compact, exact text form of a channel's view (one line per message), which peers exchange
// to compare; parse_channel reads it back (internal error on malformed text).
std::string serialize(const Channel& c);
Channel parse_channel(const std::string& text);

}  // namespace smp::plan
