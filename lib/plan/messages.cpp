#include "plan/messages.hpp"

#include "core/error.hpp"
#include "schedule/validate.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <map>
#include <tuple>

namespace smp::plan {

std::vector<Channel> rank_channels(const schedule::Schedule& lowered, const std::vector<RankPlace>& places,
                                   const std::vector<Boundary>& cuts, int rank) {
  SMP_CHECK(rank >= 0 && static_cast<size_t>(rank) < places.size(), "rank {} of {}", rank, places.size());
  const RankPlace me = places[static_cast<size_t>(rank)];
  SMP_CHECK(me.pipeline_rank >= 0 && me.pipeline_rank < lowered.ranks, "rank {}: pipeline rank {} of {}", rank,
            me.pipeline_rank, lowered.ranks);
  // The global rank of each pipeline rank in this replica and tensor-parallel lane.
  std::vector<int> in_replica(static_cast<size_t>(lowered.ranks), -1);
  for (size_t r = 0; r < places.size(); ++r)
    if (places[r].replica == me.replica && places[r].tp_rank == me.tp_rank) {
      const int pr = places[r].pipeline_rank;
      SMP_CHECK(pr >= 0 && pr < lowered.ranks && in_replica[static_cast<size_t>(pr)] < 0,
                "replica {} (lane {}) has pipeline rank {} twice or out of range", me.replica, me.tp_rank, pr);
      in_replica[static_cast<size_t>(pr)] = static_cast<int>(r);
    }
  std::map<std::tuple<int, int, Direction>, Channel> channels;
  for (const schedule::Action& a : lowered.actions.at(static_cast<size_t>(me.pipeline_rank))) {
    if (!a.is_comm()) continue;
    int boundary = 0;
    Direction dir = Direction::Activation;
    switch (a.op) {
      case schedule::Op::SendAct: boundary = a.stage; break;
      case schedule::Op::RecvAct: boundary = a.stage - 1; break;
      case schedule::Op::SendGrad: boundary = a.stage - 1; dir = Direction::Gradient; break;
      default: boundary = a.stage; dir = Direction::Gradient; break;  // RecvGrad
    }
    SMP_CHECK(boundary >= 0 && static_cast<size_t>(boundary) < cuts.size(), "{}: boundary {} of {}", schedule::to_string(a),
              boundary, cuts.size());
    SMP_CHECK(a.peer >= 0 && a.peer < lowered.ranks && in_replica[static_cast<size_t>(a.peer)] >= 0, "{}: no rank {} in replica {}",
              schedule::to_string(a), a.peer, me.replica);
    const int peer = in_replica[static_cast<size_t>(a.peer)];
    const int from = a.is_send() ? rank : peer, to = a.is_send() ? peer : rank;
    Channel& c = channels[{from, to, dir}];
    c.from = from;
    c.to = to;
    c.dir = dir;
    const auto& tensors = dir == Direction::Activation ? cuts[static_cast<size_t>(boundary)].activations
                                                       : cuts[static_cast<size_t>(boundary)].gradients;
    const int64_t tag = schedule::message_id(lowered, a);
    for (size_t t = 0; t < tensors.size(); ++t)
      c.messages.push_back(Message{boundary, a.mb, dir, static_cast<int>(t), tag, tensors[t].name, tensors[t].dtype, tensors[t].bytes});
  }
  std::vector<Channel> out;
  for (auto& [key, c] : channels) out.push_back(std::move(c));
  return out;
}

std::string describe(const Message& m) {
  const bool act = m.dir == Direction::Activation;
  return fmt::format("{} of stage {} -> {}, microbatch {}, tensor '{}' ({}, {} bytes)", act ? "activations" : "gradients",
                     act ? m.boundary : m.boundary + 1, act ? m.boundary + 1 : m.boundary, m.mb, m.name, m.dtype, m.bytes);
}

std::string describe(const Channel& c) {
  return fmt::format("rank {} -> rank {}, {}", c.from, c.to, c.dir == Direction::Activation ? "activations" : "gradients");
}

std::string compare_channel(const Channel& mine, int my_rank, const Channel& theirs, int their_rank) {
  if (mine.from != theirs.from || mine.to != theirs.to || mine.dir != theirs.dir)
    return fmt::format("rank {} compared channel {} with rank {}'s {}", my_rank, describe(mine), their_rank, describe(theirs));
  const size_t n = std::min(mine.messages.size(), theirs.messages.size());
  for (size_t i = 0; i < n; ++i)
    if (!(mine.messages[i] == theirs.messages[i]))
      return fmt::format("on {}, message {} is {} on rank {} but {} on rank {}", describe(mine), i, describe(mine.messages[i]),
                         my_rank, describe(theirs.messages[i]), their_rank);
  if (mine.messages.size() != theirs.messages.size()) {
    const bool mine_longer = mine.messages.size() > theirs.messages.size();
    const Message& extra = mine_longer ? mine.messages[n] : theirs.messages[n];
    return fmt::format("on {}, rank {} expects {} messages and rank {} {}: message {} ({}) has no counterpart", describe(mine),
                       my_rank, mine.messages.size(), their_rank, theirs.messages.size(), n, describe(extra));
  }
  return {};
}

std::string serialize(const Channel& c) {
  nlohmann::json j{{"from", c.from}, {"to", c.to}, {"dir", static_cast<int>(c.dir)}};
  nlohmann::json ms = nlohmann::json::array();
  for (const Message& m : c.messages)
    ms.push_back(nlohmann::json::array({m.boundary, m.mb, static_cast<int>(m.dir), m.tensor, m.tag, m.name, m.dtype, m.bytes}));
  j["messages"] = std::move(ms);
  return j.dump();
}

Channel parse_channel(const std::string& text) {
  Channel c;
  try {
    const nlohmann::json j = nlohmann::json::parse(text);
    c.from = j.at("from").get<int>();
    c.to = j.at("to").get<int>();
    c.dir = static_cast<Direction>(j.at("dir").get<int>());
    for (const auto& m : j.at("messages"))
      c.messages.push_back(Message{m.at(0).get<int>(), m.at(1).get<int>(), static_cast<Direction>(m.at(2).get<int>()),
                                   m.at(3).get<int>(), m.at(4).get<int64_t>(), m.at(5).get<std::string>(),
                                   m.at(6).get<std::string>(), m.at(7).get<int64_t>()});
  } catch (const nlohmann::json::exception& e) {
    SMP_CHECK(false, "malformed channel description ({}): {}", e.what(), text.substr(0, 80));
  }
  return c;
}

}  // namespace smp::plan
