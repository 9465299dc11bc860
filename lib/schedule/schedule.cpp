#include "schedule/schedule.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <charconv>

namespace smp::schedule {

std::string_view op_code(Op op) {
  switch (op) {
    case Op::Forward: return "F";
    case Op::BackwardInput: return "B";
    case Op::BackwardWeight: return "W";
    case Op::Backward: return "X";
    case Op::SendAct: return "SF";
    case Op::RecvAct: return "RF";
    case Op::SendGrad: return "SB";
    case Op::RecvGrad: return "RB";
  }
  return "?";
}

std::string to_string(const Action& a) {
  if (a.is_compute()) return fmt::format("{}{}{}", a.stage, op_code(a.op), a.mb);
  return fmt::format("{}{}{}{}{}", a.stage, op_code(a.op), a.mb, a.is_send() ? '>' : '<', a.peer);
}

namespace {

// Parses a non-negative decimal at text[pos...]; returns false when there is none.
bool parse_int(std::string_view text, size_t& pos, int32_t& out) {
  size_t start = pos;
  while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') ++pos;
  if (pos == start || pos - start > 9) return false;
  auto [p, ec] = std::from_chars(text.data() + start, text.data() + pos, out);
  return ec == std::errc() && p == text.data() + pos;
}

}  // namespace

Action parse_action(std::string_view text, const std::string& where) {
  auto bad = [&]() -> Action {
    throw_bad_input(where, fmt::format("'{}' is not an action", text),
                    "expected STAGE OP MICROBATCH: 2F5, 2B5, 2W5, 2X5, or a message 2SF5>3, 3RF5<2, "
                    "2SB5>1, 1RB5<2");
  };
  Action a;
  size_t pos = 0;
  if (!parse_int(text, pos, a.stage)) return bad();
  if (pos >= text.size()) return bad();
  char c = text[pos++];
  if (c == 'F') a.op = Op::Forward;
  else if (c == 'B') a.op = Op::BackwardInput;
  else if (c == 'W') a.op = Op::BackwardWeight;
  else if (c == 'X') a.op = Op::Backward;
  else if (c == 'S' || c == 'R') {
    if (pos >= text.size()) return bad();
    char d = text[pos++];
    if (d != 'F' && d != 'B') return bad();
    a.op = c == 'S' ? (d == 'F' ? Op::SendAct : Op::SendGrad) : (d == 'F' ? Op::RecvAct : Op::RecvGrad);
  } else {
    return bad();
  }
  if (!parse_int(text, pos, a.mb)) return bad();
  if (a.is_comm()) {
    if (pos >= text.size() || text[pos] != (a.is_send() ? '>' : '<')) return bad();
    ++pos;
    if (!parse_int(text, pos, a.peer)) return bad();
  }
  if (pos != text.size()) return bad();
  return a;
}

bool Schedule::lowered() const {
  for (const auto& row : actions)
    for (const auto& a : row)
      if (a.is_comm()) return true;
  return false;
}

bool Schedule::split_backward() const {
  for (const auto& row : actions)
    for (const auto& a : row)
      if (a.op == Op::BackwardInput || a.op == Op::BackwardWeight) return true;
  return false;
}

size_t Schedule::size() const {
  size_t n = 0;
  for (const auto& row : actions) n += row.size();
  return n;
}

std::vector<int> loop_placement(int ranks, int chunks) {
  std::vector<int> r(static_cast<size_t>(ranks) * static_cast<size_t>(chunks));
  for (size_t s = 0; s < r.size(); ++s) r[s] = static_cast<int>(s % static_cast<size_t>(ranks));
  return r;
}

namespace {
constexpr int64_t kMaxActions = int64_t{1} << 24;
}

Schedule empty_schedule(std::string name, int ranks, int microbatches, int chunks,
                        const std::string& where) {
  if (ranks < 1) throw_bad_input(where, fmt::format("{} ranks (stages)", ranks), "need at least 1");
  if (chunks < 1) throw_bad_input(where, fmt::format("{} chunks per rank", chunks), "need at least 1");
  if (microbatches < 1)
    throw_bad_input(where, fmt::format("{} microbatches", microbatches), "need at least 1");
  if (int64_t{ranks} * chunks * microbatches > kMaxActions)
    throw_bad_input(where,
                    fmt::format("{} ranks x {} chunks x {} microbatches is too large", ranks, chunks,
                                microbatches),
                    fmt::format("at most {} stage-microbatch pairs", kMaxActions));
  Schedule s;
  s.name = std::move(name);
  s.ranks = ranks;
  s.chunks = chunks;
  s.microbatches = microbatches;
  s.stage_rank = loop_placement(ranks, chunks);
  s.actions.assign(static_cast<size_t>(ranks), {});
  return s;
}

std::string format_grid(const Schedule& s, const GridOptions& opt) {
  // Cells per rank, remembering which one is marked.
  std::vector<std::vector<std::string>> cells(s.actions.size());
  int mark_col = -1;
  size_t width = 3;
  for (size_t r = 0; r < s.actions.size(); ++r) {
    int col = 0;
    for (size_t i = 0; i < s.actions[r].size(); ++i) {
      const Action& a = s.actions[r][i];
      if (opt.compute_only && a.is_comm()) continue;
      std::string text = to_string(a);
      if (static_cast<int>(r) == opt.mark_rank && static_cast<int>(i) == opt.mark_step) {
        text = "[" + text + "]";
        mark_col = col;
      }
      width = std::max(width, text.size());
      cells[r].push_back(std::move(text));
      ++col;
    }
  }
  size_t cols = 0;
  for (const auto& row : cells) cols = std::max(cols, row.size());
  size_t shown = opt.max_steps > 0 ? std::min(cols, opt.max_steps) : cols;
  std::string label_fmt = fmt::format("rank {{:<{}}}", fmt::format("{}", s.actions.size()).size() + 1);
  size_t label_w = fmt::format(fmt::runtime(label_fmt), 0).size();
  // Header: "step" over the rank names, then the step number every 5 columns.
  std::string out = fmt::format("{:<{}}", "step", label_w);
  std::string header(shown * (width + 1), ' ');
  for (size_t c = 0; c < shown; c += 5) {
    std::string n = fmt::format("{}", c);
    header.replace(c * (width + 1), std::min(n.size(), header.size() - c * (width + 1)), n);
  }
  out += header;
  while (!out.empty() && out.back() == ' ') out.pop_back();
  out += "\n";
  for (size_t r = 0; r < cells.size(); ++r) {
    std::string line = fmt::format(fmt::runtime(label_fmt), r);
    for (size_t c = 0; c < std::min(shown, cells[r].size()); ++c)
      line += fmt::format("{:<{}} ", cells[r][c], width);
    if (cells[r].size() > shown) line += "...";
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + "\n";
    if (static_cast<int>(r) == opt.mark_rank && mark_col >= 0 && static_cast<size_t>(mark_col) < shown) {
      out += std::string(label_w + static_cast<size_t>(mark_col) * (width + 1), ' ') +
             std::string(cells[r][static_cast<size_t>(mark_col)].size(), '^') + "\n";
    }
  }
  return out;
}

nlohmann::json to_json(const Schedule& s) {
  nlohmann::json j;
  j["version"] = kScheduleFileVersion;
  j["name"] = s.name;
  j["ranks"] = s.ranks;
  j["chunks"] = s.chunks;
  j["microbatches"] = s.microbatches;
  if (s.stage_rank != loop_placement(s.ranks, s.chunks)) j["stage_ranks"] = s.stage_rank;
  j["lowered"] = s.lowered();
  nlohmann::json rows = nlohmann::json::array();
  for (const auto& row : s.actions) {
    nlohmann::json r = nlohmann::json::array();
    for (const auto& a : row) r.push_back(to_string(a));
    rows.push_back(std::move(r));
  }
  j["actions"] = std::move(rows);
  return j;
}

namespace {

int get_int(const nlohmann::json& j, const char* key, const std::string& where, int min_value) {
  auto it = j.find(key);
  if (it == j.end()) throw_bad_input(where, fmt::format("missing field \"{}\"", key));
  if (!it->is_number_integer())
    throw_bad_input(where, fmt::format("field \"{}\" must be an integer", key));
  int64_t v = it->get<int64_t>();
  if (v < min_value || v > (int64_t{1} << 30))
    throw_bad_input(where, fmt::format("field \"{}\" is {}", key, v),
                    fmt::format("must be at least {}", min_value));
  return static_cast<int>(v);
}

}  // namespace

Schedule schedule_from_json(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) throw_bad_input(where, "expected a JSON object at the top level");
  for (const auto& [key, value] : j.items())
    if (key != "version" && key != "name" && key != "ranks" && key != "chunks" && key != "microbatches" &&
        key != "stage_ranks" && key != "lowered" && key != "actions")
      throw_bad_input(where, fmt::format("unknown field \"{}\"", key),
                      "fields: version, name, ranks, chunks, microbatches, stage_ranks, lowered, actions");
  std::string name = "custom";
  if (auto it = j.find("name"); it != j.end()) {
    if (!it->is_string()) throw_bad_input(where, "field \"name\" must be a string");
    name = it->get<std::string>();
  }
  int ranks = get_int(j, "ranks", where, 1);
  int chunks = j.contains("chunks") ? get_int(j, "chunks", where, 1) : 1;
  int mbs = get_int(j, "microbatches", where, 1);
  Schedule s = empty_schedule(name, ranks, mbs, chunks, where);
  if (auto it = j.find("stage_ranks"); it != j.end()) {
    if (!it->is_array() || it->size() != s.stage_rank.size())
      throw_bad_input(where,
                      fmt::format("field \"stage_ranks\" must be an array of {} ranks (ranks x chunks)",
                                  s.stage_rank.size()));
    std::vector<int> per_rank(static_cast<size_t>(ranks), 0);
    for (size_t i = 0; i < it->size(); ++i) {
      const auto& v = (*it)[i];
      if (!v.is_number_integer() || v.get<int64_t>() < 0 || v.get<int64_t>() >= ranks)
        throw_bad_input(where, fmt::format("stage_ranks[{}] must be a rank in 0..{}", i, ranks - 1));
      s.stage_rank[i] = v.get<int>();
      ++per_rank[static_cast<size_t>(s.stage_rank[i])];
    }
    for (int r = 0; r < ranks; ++r)
      if (per_rank[static_cast<size_t>(r)] != chunks)
        throw_bad_input(where,
                        fmt::format("stage_ranks gives rank {} {} stages", r, per_rank[static_cast<size_t>(r)]),
                        fmt::format("every rank holds exactly chunks = {} stages", chunks));
  }
  auto it = j.find("actions");
  if (it == j.end()) throw_bad_input(where, "missing field \"actions\"");
  if (!it->is_array() || it->size() != static_cast<size_t>(ranks))
    throw_bad_input(where, fmt::format("field \"actions\" must be an array of {} lists, one per rank", ranks));
  for (size_t r = 0; r < it->size(); ++r) {
    const auto& row = (*it)[r];
    if (!row.is_array()) throw_bad_input(where, fmt::format("actions[{}] must be an array of action strings", r));
    auto& out = s.actions[r];
    out.reserve(row.size());
    for (size_t i = 0; i < row.size(); ++i) {
      std::string field = fmt::format("{}: actions[{}][{}]", where, r, i);
      if (!row[i].is_string()) throw_bad_input(field, "must be a string such as \"2F5\"");
      Action a = parse_action(row[i].get<std::string>(), field);
      if (a.stage >= s.stages())
        throw_bad_input(field, fmt::format("{}: stage {} does not exist", to_string(a), a.stage),
                        fmt::format("stages are 0..{}", s.stages() - 1));
      if (a.mb >= mbs)
        throw_bad_input(field, fmt::format("{}: microbatch {} does not exist", to_string(a), a.mb),
                        fmt::format("microbatches are 0..{}", mbs - 1));
      if (a.is_comm() && a.peer >= ranks)
        throw_bad_input(field, fmt::format("{}: rank {} does not exist", to_string(a), a.peer),
                        fmt::format("ranks are 0..{}", ranks - 1));
      out.push_back(a);
    }
  }
  return s;
}

Schedule read_schedule(const std::filesystem::path& path) {
  nlohmann::json j = read_versioned_json(path, kScheduleFileVersion);
  return schedule_from_json(j, path.string());
}

void write_schedule(const std::filesystem::path& path, const Schedule& s) {
  // One rank's list per line keeps the file easy to read and diff.
  nlohmann::json j = to_json(s);
  std::string out = "{\n";
  for (const char* key : {"version", "name", "ranks", "chunks", "microbatches", "stage_ranks", "lowered"}) {
    if (!j.contains(key)) continue;
    out += fmt::format("  \"{}\": {},\n", key, j[key].dump());
  }
  out += "  \"actions\": [\n";
  const auto& rows = j["actions"];
  for (size_t r = 0; r < rows.size(); ++r) {
    out += "    [";
    for (size_t i = 0; i < rows[r].size(); ++i) out += (i ? ", " : "") + rows[r][i].dump();
    out += r + 1 < rows.size() ? "],\n" : "]\n";
  }
  out += "  ]\n}\n";
  write_file_atomic(path, out);
}

}  // namespace smp::schedule
