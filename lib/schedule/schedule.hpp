// Pipeline schedules as data: per-rank ordered action lists, their compact text form, the
// rank x step grid and the schedule file (schemas/schedule.schema.json).
//
// Stages. With p ranks and v chunks per rank there are S = p*v stages, numbered 0..S-1 in model
// order. Stage s lives on rank stage_rank[s]; the default (Megatron's interleaved layout) is
// s mod p, so the chunk index of stage s on its rank is s / p.
//
// Text form of an action (round-trips through to_string / parse_action):
//   2F5     stage 2, forward of microbatch 5
//   2B5     stage 2, backward for the inputs (activation gradient) of microbatch 5
//   2W5     stage 2, backward for the weights of microbatch 5
//   2X5     stage 2, full backward (B and W together) of microbatch 5
//   2SF5>3  stage 2 sends its forward output of microbatch 5 to rank 3 (the rank of stage 3)
//   3RF5<2  stage 3 posts the receive of its forward input of microbatch 5 from rank 2
//   2SB5>1  stage 2 sends the gradient for its input of microbatch 5 to rank 1 (stage 1's rank)
//   1RB5<2  stage 1 posts the receive of the gradient for its output of microbatch 5 from rank 2
// Generators emit compute actions only (F, B, W, X); lower() (validate.hpp) inserts the S / R.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace smp::schedule {

enum class Op : uint8_t {
  Forward,         // F
  BackwardInput,   // B: gradient for the stage's inputs only
  BackwardWeight,  // W: gradient for the stage's weights only (after B)
  Backward,        // X: full backward, B and W together
  SendAct,         // SF: send the forward output to the next stage's rank
  RecvAct,         // RF: post the receive of the forward input from the previous stage's rank
  SendGrad,        // SB: send the input gradient to the previous stage's rank
  RecvGrad,        // RB: post the receive of the output gradient from the next stage's rank
};

struct Action {
  Op op = Op::Forward;
  int32_t stage = 0;
  int32_t mb = 0;     // microbatch
  int32_t peer = -1;  // S / R only: the other rank; -1 for compute actions

  bool is_compute() const { return op <= Op::Backward; }
  bool is_comm() const { return op >= Op::SendAct; }
  bool is_send() const { return op == Op::SendAct || op == Op::SendGrad; }
  bool is_recv() const { return op == Op::RecvAct || op == Op::RecvGrad; }
  friend bool operator==(const Action&, const Action&) = default;
};

inline Action compute(Op op, int stage, int mb) { return Action{op, stage, mb, -1}; }
inline Action comm(Op op, int stage, int mb, int peer) { return Action{op, stage, mb, peer}; }

// "2F5", "2SF5>3", ... (see the top of this file).
std::string to_string(const Action& a);
// Inverse of to_string; anything else is bad input naming `where` and the text.
Action parse_action(std::string_view text, const std::string& where = "action");
// One letter (F B W X) or two (SF RF SB RB).
std::string_view op_code(Op op);

struct Schedule {
  std::string name;
  int ranks = 0;         // p
  int chunks = 1;        // v: stages per rank
  int microbatches = 0;  // m
  std::vector<int> stage_rank;               // size S = p*v: the rank each stage runs on
  std::vector<std::vector<Action>> actions;  // per rank, in execution order

  int stages() const { return static_cast<int>(stage_rank.size()); }
  int rank_of(int stage) const { return stage_rank[static_cast<size_t>(stage)]; }
  // True when the lists carry sends and receives (lower() was applied, or a lowered file).
  bool lowered() const;
  // True when any backward is split into B and W.
  bool split_backward() const;
  // Number of actions over all ranks.
  size_t size() const;
};

// Stage s on rank s mod ranks (Megatron's interleaved layout; the identity when chunks == 1).
std::vector<int> loop_placement(int ranks, int chunks);

// Empty schedule with p ranks, v chunks, m microbatches and the loop placement; checks the sizes
// (bad input naming `where`).
Schedule empty_schedule(std::string name, int ranks, int microbatches, int chunks,
                        const std::string& where = "schedule");

// The rank x step grid, one row per rank, step = position in the rank's list. With a mark, that
// cell is shown as [2B5] and a caret line points at it. compute_only hides S / R actions (the
// step numbers then count compute actions only; a mark on a comm action is then ignored).
struct GridOptions {
  int mark_rank = -1;
  int mark_step = -1;
  bool compute_only = false;
  size_t max_steps = 0;  // 0: all; otherwise cut each row after this many steps ("...")
};
std::string format_grid(const Schedule& s, const GridOptions& opt = {});

// Schedule file: {"version": 1, "name", "ranks", "chunks", "microbatches", "stage_ranks"
// (optional, default loop placement), "actions": [[ "0F0", ... ], ...]}. Reading checks the
// structure (sizes, action syntax, bounds) and reports bad input naming the file and the field;
// dependency checks are validate()'s.
inline constexpr int kScheduleFileVersion = 1;
nlohmann::json to_json(const Schedule& s);
Schedule schedule_from_json(const nlohmann::json& j, const std::string& where);
Schedule read_schedule(const std::filesystem::path& path);
void write_schedule(const std::filesystem::path& path, const Schedule& s);

}  // namespace smp::schedule
