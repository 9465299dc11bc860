// The plan file (schemas/plan.schema.json): what smp-run needs and nothing it must re-derive.
// Written by smp-plan (-o FILE, default plan.json), read by smp-run with read_plan().
#pragma once

#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "graph/graph.hpp"
#include "plan/planner.hpp"
#include "schedule/schedule.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace smp::plan {

inline constexpr int kPlanFileVersion = 1;

struct PlanContext {  // what the plan file records beside the plan itself
  std::string model_sha256;
  std::string cluster_file;  // "" when detected from this machine
  std::string profile_file;
  std::string dtype = "fp32";
};

nlohmann::json plan_to_json(const Plan& plan, const PlanInputs& in, const PlanOptions& opt, const PlanContext& ctx);
void write_plan(const std::filesystem::path& path, const nlohmann::json& plan_json);

// ---- reading (smp-run) ------------------------------------------------------------------------

struct TensorRef {
  std::string name;
  Shape shape;        // per microbatch
  std::string dtype;  // "float32", "int64", ...
  int peer = -1;      // inputs: the producing stage (-1: a graph input, read from the data);
                      // outputs: the first consuming stage
};

struct PlanStage {
  int index = 0;
  int pipeline_rank = 0;
  std::vector<std::string> nodes;       // node names in topological order
  std::vector<TensorRef> inputs, outputs;
  std::vector<std::string> parameters;
  bool recompute = false;
  std::vector<int> ranks;               // global ranks running it (replicas x tensor-parallel ranks)
};

struct PlanRank {
  int rank = 0, replica = 0, pipeline_rank = 0, tp_rank = 0;
  std::string host;
  int device = 0;        // index into the cluster's flattened device list
  int local_device = 0;  // index among its host's devices
  std::vector<int> stages;  // stage chunks, in chunk order
};

struct PlanFile {
  std::string path;
  std::string model_path, model_sha256;
  int64_t batch_size = 0, microbatch_size = 0;
  int microbatches = 0, stages = 0, data_parallel = 1, chunks = 1;
  int tensor_parallel = 1;              // ranks per tensor-parallel group
  bool shard_optimizer = false;         // optimizer state split over the replicas (ZeRO stage 1)
  std::map<std::string, int64_t> dims;  // symbolic dims besides the batch, as planned
  std::vector<std::string> frozen;      // initializers kept constant (smp-plan --freeze), as planned
  std::string optimizer, dtype;
  schedule::Schedule schedule;          // lowered: the worker runs these lists literally
  std::vector<PlanStage> stage;         // S = stages * chunks
  std::vector<PlanRank> ranks;          // stages * data_parallel * tensor_parallel
  RankLayout rank_layout() const { return RankLayout{stages, data_parallel, tensor_parallel}; }
  nlohmann::json json;                  // the whole file
};

// Reads and checks (version, structure, the schedule's validity); bad input naming the file
// and the field. A relative model path that does not exist from the working directory is
// taken relative to the plan file.
PlanFile read_plan(const std::filesystem::path& path);
PlanFile plan_from_json(const nlohmann::json& j, const std::string& where);
// Bad input when the model file's SHA-256 differs from the plan's.
void check_model_checksum(const PlanFile& plan, const std::filesystem::path& model);

}  // namespace smp::plan
