#include "cost/profile.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <fmt/format.h>

#include <cmath>

namespace smp::cost {

using nlohmann::json;

Profile profile_from_json(const json& j, const std::string& where) {
  auto fail = [&](const std::string& path, const std::string& what) { throw_bad_input(where + ": " + path, what); };
  if (!j.is_object()) fail("(top level)", "must be a JSON object");
  if (!j.contains("version") || !j["version"].is_number_integer()) fail("version", "missing or not an integer");
  if (j["version"].get<int64_t>() != kProfileFileVersion)
    fail("version", fmt::format("unsupported version {} (this smp reads {})", j["version"].dump(), kProfileFileVersion));
  Profile p;
  p.path = where;
  if (!j.contains("device") || !j["device"].is_object()) fail("device", "missing or not an object");
  const json& d = j["device"];
  if (!d.contains("name") || !d["name"].is_string()) fail("device.name", "missing or not a string");
  p.device_name = d["name"].get<std::string>();
  if (d.contains("kind")) {
    if (!d["kind"].is_string()) fail("device.kind", "must be a string");
    p.device_kind = d["kind"].get<std::string>();
  }
  if (j.contains("threads")) {
    if (!j["threads"].is_number_integer() || j["threads"].get<int64_t>() < 1) fail("threads", "must be a positive integer");
    p.threads = j["threads"].get<int>();
  }
  if (!j.contains("microbatch_size") || !j["microbatch_size"].is_number_integer() ||
      j["microbatch_size"].get<int64_t>() < 1)
    fail("microbatch_size", "missing or not a positive integer");
  p.microbatch_size = j["microbatch_size"].get<int64_t>();
  if (j.contains("smp_version") && j["smp_version"].is_string()) p.smp_version = j["smp_version"].get<std::string>();
  if (j.contains("in_flight_microbatches")) {
    const json& d = j["in_flight_microbatches"];
    if (!d.is_number_integer() || d.get<int64_t>() < 2 || d.get<int64_t>() > 1 << 20)
      fail("in_flight_microbatches", "must be an integer of at least 2");
    p.in_flight_microbatches = d.get<int>();
  }
  if (j.contains("optimizer_step_s_per_parameter")) {
    const json& o = j["optimizer_step_s_per_parameter"];
    if (!o.is_object()) fail("optimizer_step_s_per_parameter", "must be an object");
    for (const auto& [name, v] : o.items()) {
      const std::string op = "optimizer_step_s_per_parameter." + name;
      if (name != "sgd" && name != "momentum" && name != "adamw") fail(op, "unknown optimizer (sgd, momentum or adamw)");
      if (!v.is_number() || !std::isfinite(v.get<double>()) || v.get<double>() < 0) fail(op, "must be a non-negative number");
      p.optimizer_step_s.emplace(name, v.get<double>());
    }
  }
  if (!j.contains("nodes") || !j["nodes"].is_object()) fail("nodes", "missing or not an object");
  for (const auto& [name, nj] : j["nodes"].items()) {
    std::string np = "nodes[\"" + name + "\"].";
    if (!nj.is_object()) fail("nodes[\"" + name + "\"]", "must be an object");
    NodeMeasure m;
    auto num_in = [&](const json& obj, const std::string& prefix, const char* key, bool required) {
      auto it = obj.find(key);
      if (it == obj.end()) {
        if (required) fail(prefix + key, "missing");
        return 0.0;
      }
      if (!it->is_number() || !std::isfinite(it->get<double>()) || it->get<double>() < 0)
        fail(prefix + key, "must be a non-negative number");
      return it->get<double>();
    };
    auto num = [&](const char* key, bool required) { return num_in(nj, np, key, required); };
    m.forward_s = num("forward_s", true);
    m.backward_input_s = num("backward_input_s", true);
    m.backward_weight_s = num("backward_weight_s", true);
    m.spread = num("spread", false);
    m.peak_bytes = num("peak_bytes", false);
    if (nj.contains("in_flight")) {
      const json& d = nj["in_flight"];
      if (!d.is_object()) fail(np + "in_flight", "must be an object");
      if (p.in_flight_microbatches == 0) fail(np + "in_flight", "given without in_flight_microbatches");
      const std::string dp = np + "in_flight.";
      m.has_in_flight = true;
      m.in_flight_forward_s = num_in(d, dp, "forward_s", true);
      m.in_flight_backward_input_s = num_in(d, dp, "backward_input_s", true);
      m.in_flight_backward_weight_s = num_in(d, dp, "backward_weight_s", true);
    }
    p.nodes.emplace(name, m);
  }
  return p;
}

Profile read_profile(const std::filesystem::path& path) {
  return profile_from_json(read_json(path), path.string());
}

}  // namespace smp::cost
