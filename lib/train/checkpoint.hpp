// Checkpoints: each stage's parameters and optimizer state, written atomically (beside the
// target, then renamed), and a manifest written last that makes a step's checkpoint count. A
// crash while writing leaves the previous complete checkpoint usable; resume takes the newest
// step whose manifest exists.
//
// Layout: DIR/step-00000010/stage-000.bin ... and DIR/step-00000010/manifest.json; a
// tensor-parallel stage has one file per rank of its group, its shard of each split tensor
// (stage-000-tp-00.bin, stage-000-tp-01.bin, ...).
// A .bin file is "SMPCKPT1", an 8-byte little-endian header length, a JSON header (version,
// step, stage, tensors: name, dtype, shape, offset, bytes), then the raw tensor bytes.
#pragma once

#include "core/bytes.hpp"
#include "core/dtype.hpp"
#include "core/shape.hpp"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace smp::train {

struct NamedTensor {
  std::string name;
  DType dtype = DType::F32;
  Shape shape;
  Bytes bytes;  // read from a checkpoint: borrowed from the file's mapping
};

struct StageCheckpoint {
  int64_t step = 0;      // steps completed
  int stage = 0;
  int tp_rank = -1;      // >= 0: this rank's shard of a tensor-parallel stage
  std::vector<NamedTensor> tensors;  // parameters and optimizer state ("<param>.exp_avg", ...)
  nlohmann::json meta = nlohmann::json::object();  // optimizer kind, per-parameter step counts, ...
};

inline constexpr int kCheckpointVersion = 1;

std::filesystem::path step_dir(const std::filesystem::path& root, int64_t step);
// A stage's file; with tensor parallelism one per rank of the group (its shard of the weights):
// stage-001-tp-03.bin.
std::filesystem::path stage_file(const std::filesystem::path& root, int64_t step, int stage, int tp_rank = -1);

// Atomic write of one stage's file (creates the step directory).
void write_stage_checkpoint(const std::filesystem::path& root, const StageCheckpoint& c);
// Reads and checks one stage's file; bad input naming the file when it is damaged.
StageCheckpoint read_stage_checkpoint(const std::filesystem::path& file);

// Writes the step's manifest (after every stage file is written): from then on the step counts.
void commit_checkpoint(const std::filesystem::path& root, int64_t step, const nlohmann::json& manifest);
// The newest step with a manifest, if any.
std::optional<int64_t> latest_checkpoint(const std::filesystem::path& root);
nlohmann::json read_manifest(const std::filesystem::path& root, int64_t step);
// Removes complete checkpoints older than the newest `keep` (never the newest).
void prune_checkpoints(const std::filesystem::path& root, int keep);

}  // namespace smp::train
