#include "train/checkpoint.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <algorithm>
#include <cstring>

namespace smp::train {

namespace fs = std::filesystem;

namespace {
constexpr char kMagic[8] = {'S', 'M', 'P', 'C', 'K', 'P', 'T', '1'};

std::optional<int64_t> parse_step_dir(const std::string& name) {
  if (name.rfind("step-", 0) != 0 || name.size() <= 5) return std::nullopt;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9') return std::nullopt;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}
}  // namespace

fs::path step_dir(const fs::path& root, int64_t step) { return root / fmt::format("step-{:08d}", step); }

fs::path stage_file(const fs::path& root, int64_t step, int stage, int tp_rank) {
  if (tp_rank < 0) return step_dir(root, step) / fmt::format("stage-{:03d}.bin", stage);
  return step_dir(root, step) / fmt::format("stage-{:03d}-tp-{:02d}.bin", stage, tp_rank);
}

void write_stage_checkpoint(const fs::path& root, const StageCheckpoint& c) {
  fs::path dir = step_dir(root, c.step);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw_failure(dir.string(), "cannot create the checkpoint directory: " + ec.message());
  nlohmann::json h = {{"version", kCheckpointVersion}, {"step", c.step}, {"stage", c.stage}, {"meta", c.meta}};
  if (c.tp_rank >= 0) h["tp_rank"] = c.tp_rank;
  nlohmann::json ts = nlohmann::json::array();
  int64_t off = 0;
  for (const auto& t : c.tensors) {
    SMP_CHECK(static_cast<int64_t>(t.bytes.size()) == byte_size(t.shape, dtype_size(t.dtype)),
              "checkpoint tensor {} has {} bytes for shape {}", t.name, t.bytes.size(), shape_str(t.shape));
    ts.push_back({{"name", t.name}, {"dtype", static_cast<int>(t.dtype)}, {"shape", t.shape}, {"offset", off},
                  {"bytes", t.bytes.size()}});
    off += static_cast<int64_t>(t.bytes.size());
  }
  h["tensors"] = ts;
  const std::string header = h.dump();
  const uint64_t len = header.size();
  // Streamed out: a stage's weights and optimizer state are never copied into one buffer.
  write_file_atomic(stage_file(root, c.step, c.stage, c.tp_rank), [&](int fd) {
    if (!write_all(fd, kMagic, sizeof kMagic) || !write_all(fd, &len, sizeof len) || !write_all(fd, header.data(), header.size()))
      return false;
    for (const auto& t : c.tensors)
      if (!write_all(fd, t.bytes.data(), t.bytes.size())) return false;
    return true;
  });
}

StageCheckpoint read_stage_checkpoint(const fs::path& file) {
  // Mapped: each tensor borrows its bytes from the file where they lie (written once, renamed into
  // place, never rewritten, so the mapping stays valid after a later checkpoint prunes the file).
  const auto file_bytes = std::make_shared<const Bytes>(map_file(file));
  const std::string_view b = file_bytes->view();
  auto bad = [&](const std::string& what) { throw_bad_input(file.string(), what, "the checkpoint is damaged"); };
  if (b.size() < 16 || std::memcmp(b.data(), kMagic, sizeof kMagic) != 0) bad("not an smp checkpoint");
  uint64_t len = 0;
  std::memcpy(&len, b.data() + 8, sizeof len);
  if (len > b.size() - 16) bad("header runs past the end");
  nlohmann::json h;
  try {
    h = nlohmann::json::parse(b.substr(16, static_cast<size_t>(len)));
  } catch (const std::exception&) {
    bad("unreadable header");
  }
  if (h.value("version", 0) != kCheckpointVersion) bad("unsupported checkpoint version");
  StageCheckpoint c;
  const size_t base = 16 + static_cast<size_t>(len);
  try {
    c.step = h.at("step").get<int64_t>();
    c.stage = h.at("stage").get<int>();
    c.tp_rank = h.value("tp_rank", -1);
    c.meta = h.value("meta", nlohmann::json::object());
    for (const auto& t : h.at("tensors")) {
      NamedTensor nt;
      nt.name = t.at("name").get<std::string>();
      nt.dtype = static_cast<DType>(t.at("dtype").get<int>());
      nt.shape = t.at("shape").get<Shape>();
      int64_t off = t.at("offset").get<int64_t>(), n = t.at("bytes").get<int64_t>();
      if (off < 0 || n < 0 || n != byte_size(nt.shape, dtype_size(nt.dtype)) ||
          static_cast<uint64_t>(off) + static_cast<uint64_t>(n) > b.size() - base)
        bad("tensor '" + nt.name + "' runs past the end");
      nt.bytes = Bytes::borrow(b.data() + base + static_cast<size_t>(off), static_cast<size_t>(n), file_bytes);
      c.tensors.push_back(std::move(nt));
    }
  } catch (const nlohmann::json::exception&) {
    bad("malformed header");
  }
  return c;
}

void commit_checkpoint(const fs::path& root, int64_t step, const nlohmann::json& manifest) {
  nlohmann::json m = manifest;
  m["version"] = kCheckpointVersion;
  m["step"] = step;
  write_file_atomic(step_dir(root, step) / "manifest.json", m.dump(2) + "\n");
}

std::optional<int64_t> latest_checkpoint(const fs::path& root) {
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return std::nullopt;
  std::optional<int64_t> best;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    auto s = parse_step_dir(e.path().filename().string());
    if (!s || !fs::exists(e.path() / "manifest.json")) continue;
    if (!best || *s > *best) best = s;
  }
  return best;
}

nlohmann::json read_manifest(const fs::path& root, int64_t step) {
  return read_versioned_json(step_dir(root, step) / "manifest.json", kCheckpointVersion);
}

void prune_checkpoints(const fs::path& root, int keep) {
  std::error_code ec;
  std::vector<int64_t> steps;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    auto s = parse_step_dir(e.path().filename().string());
    if (s && fs::exists(e.path() / "manifest.json")) steps.push_back(*s);
  }
  std::sort(steps.rbegin(), steps.rend());
  for (size_t i = static_cast<size_t>(std::max(keep, 1)); i < steps.size(); ++i)
    fs::remove_all(step_dir(root, steps[i]), ec);
}

}  // namespace smp::train
