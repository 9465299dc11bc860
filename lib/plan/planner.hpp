// The planner: searches pipeline x data-parallel degrees, microbatch count, schedule,
// placement and per-stage recomputation; partitions with the DP (plan/dp.hpp) over candidate
// cut positions; scores every candidate with the schedule simulator; compares with the splits
// users would otherwise use (equal layers per stage, Megatron; equal parameters per stage,
// DeepSpeed's "parameters" method).
//
// Tensor parallelism (plan/tensor_parallel.hpp): for each degree T searched (1, and 2, 4, 8 where
// a host's devices divide into groups of T and the graph has groups to split), the search runs
// on the graph one rank of a group sees and on the cluster seen as one device per group; the
// fastest plan over every degree wins. Optimizer-state sharding (ZeRO stage 1) divides the
// optimizer state and its update over the d replicas; under `auto` a configuration uses it only
// when it does not fit without it.
//
// Ranks (plan/rank_layout.hpp). With p pipeline ranks, d replicas and T tensor-parallel ranks
// there are p*d*T ranks; rank q = (replica * p + r) * T + t runs tensor-parallel rank t of
// pipeline rank r of its replica (the stages of schedule.stage_rank that map to r). Placement
// ("layout") of the groups (one device each, T devices of a host): pipeline-major puts one
// replica's pipeline on consecutive groups (group = replica * p + r: pipeline neighbours share a
// host), replica-major puts the replicas of one pipeline rank on consecutive groups (group =
// r * d + replica: the all-reduce stays on a host).
#pragma once

#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "graph/graph.hpp"
#include "plan/rank_layout.hpp"
#include "plan/tensor_parallel.hpp"
#include "schedule/schedule.hpp"
#include "schedule/simulate.hpp"

#include <cstdint>
#include <string>
#include <vector>

namespace smp::plan {

enum class RecomputePolicy { Auto, Never, Always };
enum class ShardOptimizer { Auto, Always, Never };
RecomputePolicy parse_recompute(const std::string& s, const std::string& where = "--recompute");
std::string_view recompute_name(RecomputePolicy r);
ShardOptimizer parse_shard_optimizer(const std::string& s, const std::string& where = "--shard-optimizer");

struct PlanOptions {
  int64_t batch_size = 0;
  int stages = 0;          // pipeline ranks p; 0: search
  int data_parallel = 0;   // d; 0: search
  int microbatches = 0;    // m per replica per step; 0: search divisors of batch / d
  // The model's inputs fix their leading dimension: every microbatch must hold this many samples
  // (a worker loads the graph at the microbatch size); 0: the batch axis is symbolic.
  int64_t fixed_microbatch = 0;
  std::string schedule = "auto";  // auto | gpipe | 1f1b | interleaved | zb-h1
  int chunks = 0;          // v for interleaved (0: 2)
  RecomputePolicy recompute = RecomputePolicy::Auto;
  int tensor_parallel = 0; // T; 0: search 1, 2, 4, 8 within a host
  ShardOptimizer shard_optimizer = ShardOptimizer::Auto;  // ZeRO stage 1 over the replicas
  bool megatron_baseline = true;  // price Megatron's usual layout beside the plan
  int max_positions = 256; // cut positions the DP sees at most (coarsening beyond)
  int max_evaluated = 48;  // candidate configurations partitioned by the DP, best estimates first
  int max_walk = 0;        // steps of the DP's t_max walk per configuration (0: no cap)
  double max_work = 2e6;   // stage evaluations per configuration before the walk stops (0: no cap);
                           // with both caps off the DP is exact for its objective
  // Which split the plan keeps (--split): Auto, the faster of the DP's and the baselines' (the
  // DP's objective approximates the simulator's step); or exactly the DP's, a baseline's, or the
  // given cut positions. The degrees, microbatches and schedule are searched as for Auto (with
  // Cuts: among those with as many stages as the cuts make).
  enum class Split { Auto, Dp, EqualLayers, EqualParams, Cuts } split = Split::Auto;
  std::vector<int> split_cuts;  // Split::Cuts: node positions where a stage begins, ascending
};

// --split's value: auto | dp | equal-layers | equal-params | CUTS, where CUTS lists, comma-separated,
// the nodes that begin stages 1, 2, ... by name or by position in the folded graph's order (as the
// report's "cuts before nodes" prints them). Bad input (naming `where`) for an unknown node, a
// position out of range, or cuts out of order.
void parse_split(const graph::Graph& g, const std::string& value, PlanOptions& opt, const std::string& where = "--split");

enum class Layout { PipelineMajor, ReplicaMajor };
std::string_view layout_name(Layout l);

struct Prediction {
  bool fits = false;
  double step_s = 0, samples_per_s = 0, bubble = 0;
  double allreduce_s = 0;              // the longest rank's all-reduce
  double update_s = 0;                 // the longest rank's optimizer step (gradient norm + update)
  // Workers sharing a calibrated machine: the step is its CPU work over the cores, longer than the
  // simulated schedule (simulated_step_s); 0 / false elsewhere.
  bool cores_bound = false;
  double simulated_step_s = 0;
  std::vector<double> peak_bytes;      // per pipeline rank (the same on every replica)
  std::vector<double> capacity_bytes;  // per pipeline rank: the smallest device holding it
  double peak_max() const;
};

struct StagePlan {
  int index = 0;
  int begin = 0, end = 0;              // node positions [begin, end)
  bool recompute = false;
  int pipeline_rank = 0;               // schedule.stage_rank[index]
  double f_s = 0, b_s = 0, w_s = 0;    // per microbatch (recompute's extra forward is in b_s)
  double update_s = 0;                 // its optimizer step, once per step
  std::string timing = "estimated";    // estimated | measured | partly measured
  int64_t params = 0;                  // elements
  double param_bytes = 0, static_bytes = 0, act_bytes = 0, w_keep_bytes = 0, workspace_bytes = 0;
  double send_bytes = 0;               // forward activation bytes to the next stage per microbatch
  double grad_bytes = 0;               // gradient bytes back to the previous stage per microbatch
  double peak_bytes = 0;               // its pipeline rank's peak (all its chunks)
  double capacity_bytes = 0;
};

struct Baseline {
  std::string name;                 // "equal-layers" | "equal-parameters"
  std::string unit;                 // what was balanced, e.g. "4 layers (blocks.N)"
  bool available = false;
  std::string note;                 // why not, when unavailable
  std::vector<int> bounds;          // node positions, S + 1
  Prediction prediction;
};

// Megatron-LM's usual layout, priced by the same simulator: tensor parallelism over the devices of
// a host, the fewest pipeline stages (equal layers each, 1f1b) that fit, data parallelism over
// the rest, microbatches of one sample, no optimizer-state sharding.
struct MegatronBaseline {
  bool available = false;
  std::string note;                 // why not, when unavailable
  int tensor_parallel = 1, stages = 0, data_parallel = 0, microbatches = 0;
  int64_t microbatch_size = 1;      // one sample, or the model's fixed batch (PlanOptions::fixed_microbatch)
  Prediction prediction;
};

struct Plan {
  std::string model_path;
  std::string model_name;
  int64_t batch_size = 0;
  int stages = 0, data_parallel = 1, chunks = 1, microbatches = 1;
  int tensor_parallel = 1;         // T: ranks per tensor-parallel group
  bool shard_optimizer = false;    // optimizer state split over the replicas (ZeRO stage 1)
  // T > 1: the graph a rank runs, its cost and the grouped cluster; stage node positions refer
  // to that graph. null for T = 1.
  std::shared_ptr<const TpContext> tp;
  double microbatch_size = 0;
  std::string schedule_name;
  schedule::Schedule schedule;     // compute-only lists (lower() for the worker's lists)
  Layout layout = Layout::PipelineMajor;
  std::vector<int> device_of_rank; // global rank (rank_layout()) -> device index in the cluster
  std::vector<int> bounds;         // node positions, S + 1
  std::vector<StagePlan> stage_plans;
  Prediction prediction;
  std::string partition;           // "dp" | "equal-layers" | "equal-parameters": where the split came from
  std::vector<Baseline> baselines;
  MegatronBaseline megatron;
  std::vector<int> degrees_searched;  // tensor-parallel degrees the search tried
  // search
  int positions_seen = 0, positions_total = 0;
  int configs_considered = 0, configs_evaluated = 0, dp_runs = 0;
  int64_t splits_enumerated = 0;   // splits scored one by one where a configuration had few
  bool dp_exact = true;            // no DP of the chosen configuration hit the walk cap
  bool split_enumerated = false;   // the chosen configuration's splits were all scored (no DP run)
  int devices_used = 0, devices_total = 0;
  double dp_objective_s = 0;
  std::vector<std::string> notes;

  RankLayout rank_layout() const { return RankLayout{stages, data_parallel, tensor_parallel}; }
};

struct PlanInputs {
  const graph::Graph* graph = nullptr;
  const cost::GraphCost* cost = nullptr;
  const cost::Cluster* cluster = nullptr;
};

// The inputs the plan's stages refer to: `in` for T = 1; rank 0's graph, its cost and the
// grouped cluster for T > 1.
PlanInputs plan_inputs(const Plan& plan, const PlanInputs& in);

// Plans. Bad input (exit 2) for impossible options (more stages than nodes, a batch not
// divisible by the microbatches, ...); failure (exit 1) naming what would fit when nothing fits.
Plan make_plan(const PlanInputs& in, const PlanOptions& opt);

// ---- pieces, exposed for tests ---------------------------------------------------------------

// Candidate cut positions (node positions q in (0, N)), never where a tensor computed from
// parameters only (Transpose(weight)) would cross: all others when they are at most
// max_positions; else
// the narrowest dataflow points (fewest tensors crossing), merged to max_positions by joining
// the adjacent segments of least forward cost.
std::vector<int> candidate_positions(const cost::GraphCost& gc, int max_positions);

// "Layers": groups of consecutive nodes named by their module index ("blocks.3", "layers.0");
// nodes before the first / after the last indexed group form `pre` / `post`. Falls back to
// groups that start at each node with parameters, then to single nodes, when there are fewer
// groups than `want`. Returns the group start positions (layers only) and sets pre_end /
// post_begin.
struct Layers {
  std::vector<int> starts;  // start node position of each layer
  int pre_end = 0;          // [0, pre_end): before the first layer
  int post_begin = 0;       // [post_begin, N): after the last layer
  std::string unit;         // description
};
Layers find_layers(const graph::Graph& g, int want);
// Equal layers per stage (Megatron), pre joined to the first stage and post to the last;
// empty when there are fewer layers than stages.
std::vector<int> equal_layers_bounds(const graph::Graph& g, int stages, std::string* unit, std::string* why);
// Equal parameters per stage (DeepSpeed's partition_balanced on per-layer parameter counts,
// pre and post their own units); empty when there are fewer units than stages.
std::vector<int> equal_params_bounds(const graph::Graph& g, int stages, std::string* unit, std::string* why);

// The DP's per-stage memory for a stage [a, b) at position `stage` of the compute schedule s with
// stage costs as the planner builds them (used by the test that the DP's constraint and the
// simulator's peak agree).
struct StageMemoryCheck {
  double dp_bytes = 0;   // static + in-flight activations (from the schedule's lists) + workspace
  double sim_bytes = 0;  // simulator's peak for the rank + workspace
  bool recompute = false;
};
std::vector<StageMemoryCheck> check_memory_agreement(const PlanInputs& in, const Plan& plan, const PlanOptions& opt);

// For tests: the DP and brute force on the planner's own stage oracle (the real cost and memory
// model) for the plan's configuration; returns the two optima (+inf when infeasible).
struct DpCheck {
  double dp = 0, brute_force = 0;
  int atoms = 0, stages = 0;
};
DpCheck dp_against_brute_force(const PlanInputs& in, const Plan& plan, const PlanOptions& opt);

// The plan's schedule simulated with its stage costs, events recorded (for --timeline / --trace).
schedule::SimResult simulate_plan(const PlanInputs& in, const Plan& plan, const PlanOptions& opt);

}  // namespace smp::plan
