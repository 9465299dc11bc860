#include "cost/cluster.hpp"

#include "cost/calibration.hpp"

#include "core/error.hpp"
#include "core/io.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <sched.h>

namespace smp::cost {

namespace {

using nlohmann::json;

struct Reader {
  const std::string& file;
  [[noreturn]] void fail(const std::string& path, const std::string& what, const std::string& hint = "") const {
    throw_bad_input(file + ": " + path, what, hint);
  }
  const json& field(const json& obj, const std::string& path, const char* key) const {
    auto it = obj.find(key);
    if (it == obj.end()) fail(path + key, "missing");
    return *it;
  }
  const json& object(const json& obj, const std::string& path, const char* key) const {
    const json& v = field(obj, path, key);
    if (!v.is_object()) fail(path + key, "must be an object");
    return v;
  }
  std::string string(const json& obj, const std::string& path, const char* key, bool required = true,
                     const std::string& dflt = "") const {
    auto it = obj.find(key);
    if (it == obj.end()) {
      if (required) fail(path + key, "missing");
      return dflt;
    }
    if (!it->is_string()) fail(path + key, "must be a string");
    return it->get<std::string>();
  }
  // A number > 0 (or >= 0 when zero_ok); a missing optional field gives dflt.
  double number(const json& obj, const std::string& path, const char* key, bool zero_ok = false, bool required = true,
                double dflt = 0) const {
    auto it = obj.find(key);
    if (it == obj.end()) {
      if (required) fail(path + key, "missing");
      return dflt;
    }
    if (!it->is_number()) fail(path + key, zero_ok ? "must be a non-negative number" : "must be a positive number");
    double v = it->get<double>();
    if (!std::isfinite(v) || v < 0 || (!zero_ok && v == 0))
      fail(path + key, zero_ok ? "must be a non-negative number" : "must be a positive number");
    return v;
  }
  int count(const json& obj, const std::string& path, const char* key, bool required) const {
    auto it = obj.find(key);
    if (it == obj.end()) {
      if (required) fail(path + key, "missing");
      return 1;
    }
    if (!it->is_number_integer() || it->get<int64_t>() < 1 || it->get<int64_t>() > (1 << 20))
      fail(path + key, "must be a positive integer");
    return static_cast<int>(it->get<int64_t>());
  }
  LinkSpec link(const json& obj, const std::string& path, const char* key) const {
    const json& l = object(obj, path, key);
    std::string p = path + key + ".";
    return LinkSpec{number(l, p, "bandwidth"), number(l, p, "latency", true), number(l, p, "allreduce_bandwidth", false, false)};
  }
};

}  // namespace

bool DeviceSpec::same_as(const DeviceSpec& o) const {
  return kind == o.kind && name == o.name && memory_bytes == o.memory_bytes && peak_flops_fp32 == o.peak_flops_fp32 &&
         peak_flops_bf16 == o.peak_flops_bf16 && memory_bandwidth == o.memory_bandwidth &&
         kernel_overhead_s == o.kernel_overhead_s && efficiency == o.efficiency && calibration == o.calibration &&
         threads == o.threads;
}

LinkSpec Cluster::link(int i, int j) const {
  if (i == j) return LinkSpec{1e30, 0.0};
  const Device& a = devices[static_cast<size_t>(i)];
  const Device& b = devices[static_cast<size_t>(j)];
  return a.host == b.host ? hosts[static_cast<size_t>(a.host)].link : interconnect;
}

std::string Cluster::summary() const {
  // Group consecutive hosts with the same device make-up.
  std::vector<std::string> parts;
  std::vector<std::string> host_desc(hosts.size());
  for (const Device& d : devices) {
    auto& h = host_desc[static_cast<size_t>(d.host)];
    h += kinds[static_cast<size_t>(d.kind)].name + ";";
  }
  size_t i = 0;
  while (i < hosts.size()) {
    size_t j = i;
    while (j < hosts.size() && host_desc[j] == host_desc[i]) ++j;
    // devices of host i by kind
    std::map<int, int> by_kind;
    for (const Device& d : devices)
      if (d.host == static_cast<int>(i)) by_kind[d.kind]++;
    std::string devs;
    for (auto [k, n] : by_kind)
      devs += fmt::format("{}{} x {}", devs.empty() ? "" : " + ", n, kinds[static_cast<size_t>(k)].name);
    parts.push_back(fmt::format("{} host{} x ({})", j - i, j - i == 1 ? "" : "s", devs));
    i = j;
  }
  std::string s;
  for (const auto& p : parts) s += (s.empty() ? "" : ", ") + p;
  return fmt::format("{}: {} devices, {}", name, devices.size(), s);
}

Cluster cluster_from_json(const json& j, const std::string& where) {
  Reader r{where};
  if (!j.is_object()) r.fail("(top level)", "must be a JSON object");
  {
    auto it = j.find("version");
    if (it == j.end()) r.fail("version", "missing");
    if (!it->is_number_integer()) r.fail("version", "must be an integer");
    if (it->get<int64_t>() != kClusterFileVersion)
      r.fail("version", fmt::format("unsupported version {}", it->dump()),
             fmt::format("this smp reads version {}", kClusterFileVersion));
  }
  Cluster c;
  c.source = j;
  c.name = r.string(j, "", "name");
  c.description = r.string(j, "", "description", false);
  const json& hosts = r.field(j, "", "hosts");
  if (!hosts.is_array()) r.fail("hosts", "must be an array");
  if (hosts.empty()) r.fail("hosts", "must not be empty", "a cluster needs at least one host with one device");
  bool multi_host = hosts.size() > 1;
  for (size_t h = 0; h < hosts.size(); ++h) {
    std::string hp = fmt::format("hosts[{}].", h);
    const json& hj = hosts[h];
    if (!hj.is_object()) r.fail(fmt::format("hosts[{}]", h), "must be an object");
    std::string hname = r.string(hj, hp, "name");
    int hcount = r.count(hj, hp, "count", false);
    if (hcount > 1) multi_host = true;
    LinkSpec link = r.link(hj, hp, "link");
    const json& devs = r.field(hj, hp, "devices");
    if (!devs.is_array()) r.fail(hp + "devices", "must be an array");
    if (devs.empty()) r.fail(hp + "devices", "must not be empty", "a host needs at least one device");
    std::vector<std::pair<int, int>> host_devs;  // (kind, count)
    for (size_t d = 0; d < devs.size(); ++d) {
      std::string dp = fmt::format("{}devices[{}].", hp, d);
      const json& dj = devs[d];
      if (!dj.is_object()) r.fail(fmt::format("{}devices[{}]", hp, d), "must be an object");
      DeviceSpec s;
      s.kind = r.string(dj, dp, "kind");
      if (s.kind != "cpu" && s.kind != "gpu") r.fail(dp + "kind", fmt::format("must be \"cpu\" or \"gpu\", not \"{}\"", s.kind));
      s.name = r.string(dj, dp, "name");
      int n = r.count(dj, dp, "count", true);
      s.memory_bytes = r.number(dj, dp, "memory_bytes");
      const json& pf = r.object(dj, dp, "peak_flops");
      s.peak_flops_fp32 = r.number(pf, dp + "peak_flops.", "fp32");
      s.peak_flops_bf16 = r.number(pf, dp + "peak_flops.", "bf16");
      s.memory_bandwidth = r.number(dj, dp, "memory_bandwidth");
      s.kernel_overhead_s = r.number(dj, dp, "kernel_overhead_s", true, false, s.kind == "gpu" ? 5e-6 : 1e-6);
      if (s.kind == "gpu") s.efficiency = gpu_kernel_efficiency();
      if (dj.contains("efficiency")) {
        const json& ej = r.object(dj, dp, "efficiency");
        if (s.efficiency.empty()) s.efficiency.assign(kKernelFamilies, 1.0);
        for (auto it = ej.begin(); it != ej.end(); ++it) {
          auto f = family_from_name(it.key());
          std::string names;
          for (int i = 0; i < kKernelFamilies; ++i) names += fmt::format("{}{}", i ? ", " : "", family_name(static_cast<KernelFamily>(i)));
          if (!f) r.fail(dp + "efficiency." + it.key(), "is not a kernel family", "one of " + names);
          const double x = r.number(ej, dp + "efficiency.", it.key().c_str());
          if (x > 1) r.fail(dp + "efficiency." + it.key(), fmt::format("{} is above 1", x), "a fraction of the peak, in (0, 1]");
          s.efficiency[static_cast<size_t>(*f)] = x;
        }
      }
      int k = -1;
      for (size_t i = 0; i < c.kinds.size(); ++i)
        if (c.kinds[i].same_as(s)) k = static_cast<int>(i);
      if (k < 0) {
        for (const auto& o : c.kinds)
          if (o.name == s.name)
            r.fail(dp + "name", fmt::format("\"{}\" is used for two different device specs", s.name),
                   "give each device spec its own name");
        k = static_cast<int>(c.kinds.size());
        c.kinds.push_back(s);
      }
      host_devs.emplace_back(k, n);
    }
    for (int rep = 0; rep < hcount; ++rep) {
      Host host{hcount > 1 ? fmt::format("{}-{}", hname, rep) : hname, link};
      int hi = static_cast<int>(c.hosts.size());
      c.hosts.push_back(host);
      int local = 0;
      for (auto [k, n] : host_devs)
        for (int i = 0; i < n; ++i) c.devices.push_back(Device{hi, local++, k});
    }
  }
  if (c.devices.size() > (1u << 20)) r.fail("hosts", "more than 2^20 devices");
  if (multi_host) c.interconnect = r.link(j, "", "interconnect");
  else if (j.contains("interconnect")) c.interconnect = r.link(j, "", "interconnect");
  else c.interconnect = LinkSpec{1e9, 1e-5};
  return c;
}

Cluster read_cluster(const std::filesystem::path& path) {
  json j = read_json(path);
  return cluster_from_json(j, path.string());
}

json to_json(const Cluster& c) { return c.source; }

namespace {

int detect_cores() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return n;
  }
  unsigned n = std::thread::hardware_concurrency();
  return n > 0 ? static_cast<int>(n) : 1;
}

double detect_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  double kb = 0;
  std::string unit;
  while (in >> key) {
    if (key == "MemTotal:") {
      in >> kb;
      return kb * 1024.0;
    }
    std::getline(in, unit);
  }
  return 8.0 * (1 << 30);
}

// (MHz, FLOP per cycle per core in fp32)
std::pair<double, double> detect_cpu_speed(std::string* model) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  double mhz = 0;
  std::string flags;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string k = line.substr(0, colon);
    while (!k.empty() && (k.back() == ' ' || k.back() == '\t')) k.pop_back();
    std::string v = line.substr(colon + 1);
    if (!v.empty() && v[0] == ' ') v.erase(0, 1);
    if (k == "cpu MHz" && mhz == 0) mhz = std::atof(v.c_str());
    if (k == "flags" && flags.empty()) flags = " " + v + " ";
    if (k == "model name" && model && model->empty()) *model = v;
  }
  if (mhz <= 0) mhz = 2000;
  auto has = [&](const char* f) { return flags.find(std::string(" ") + f + " ") != std::string::npos; };
  double per_cycle = 8;                                   // SSE: 4-wide mul + add
  if (has("avx2") && has("fma")) per_cycle = 32;          // 2 FMA units x 8 lanes x 2
  else if (has("fma") || has("avx")) per_cycle = 16;      // 8 lanes, 1 FMA or mul + add
  if (has("avx512f")) per_cycle = 64;                     // 2 x 16 lanes x 2
  return {mhz, per_cycle};
}

}  // namespace

json local_cpu_json(int workers) {
  const int cores = detect_cores();
  if (workers <= 0) workers = cores;
  std::string model;
  auto [mhz, per_cycle] = detect_cpu_speed(&model);
  const double mem = detect_memory_bytes();
  const double share = static_cast<double>(cores) / workers;  // cores per worker (may be < 1)
  const double flops = mhz * 1e6 * per_cycle * share;
  // Stated estimates: ~10 GB/s of memory bandwidth per core (capped at 100 GB/s for the machine),
  // shared-memory MPI at ~5 GB/s and 1 us between workers.
  const double bw_machine = std::min(10e9 * cores, 100e9);
  json dev = {{"kind", "cpu"},
              {"name", fmt::format("cpu-{}core-{}worker", cores, workers)},
              {"count", workers},
              {"memory_bytes", std::floor(mem * 0.8 / workers)},
              {"peak_flops", {{"fp32", flops}, {"bf16", flops}}},
              {"memory_bandwidth", bw_machine / workers},
              {"kernel_overhead_s", 2e-6}};
  return json{{"version", kClusterFileVersion},
              {"name", "local-cpu (estimated)"},
              {"description",
               fmt::format("This machine ({}, {} cores at {:.0f} MHz, {:.1f} GiB) as {} worker process{} sharing "
                           "the cores. Estimated, not measured: FLOP/s = MHz x {} FLOP/cycle/core (from the CPU "
                           "flags), memory bandwidth 10 GB/s per core (at most 100 GB/s), 80% of RAM usable, "
                           "shared-memory MPI link 5 GB/s and 1 us. smp-profile --machine measures these.",
                           model.empty() ? "unknown CPU" : model, cores, mhz, mem / (1 << 30), workers,
                           workers == 1 ? "" : "es", per_cycle)},
              {"hosts", json::array({json{{"name", "localhost"},
                                          {"devices", json::array({dev})},
                                          {"link", {{"bandwidth", 5e9}, {"latency", 1e-6}}}}})}};
}

Cluster detect_local_cpu(int workers) { return cluster_from_json(local_cpu_json(workers), "local cpu"); }

Cluster calibrated_local_cpu(std::shared_ptr<const KernelCalibration> cal, int workers) {
  SMP_CHECK(cal != nullptr, "no calibration");
  const int cores = detect_cores();
  if (workers <= 0) workers = cores;
  json j = local_cpu_json(workers);
  json& dev = j["hosts"][0]["devices"][0];
  const double share = static_cast<double>(cores) / workers;
  if (cal->gemm_flops > 0) dev["peak_flops"] = {{"fp32", cal->gemm_flops * share}, {"bf16", cal->gemm_flops * share}};
  if (cal->memory_bandwidth > 0) dev["memory_bandwidth"] = cal->memory_bandwidth / workers;
  if (cal->link.bandwidth > 0) {
    j["hosts"][0]["link"] = {{"bandwidth", cal->link.bandwidth}, {"latency", cal->link.latency}};
    if (cal->link.allreduce_bandwidth > 0) j["hosts"][0]["link"]["allreduce_bandwidth"] = cal->link.allreduce_bandwidth;
  }
  j["name"] = "local-cpu (measured)";
  // A calibration taken while other work held the cores times the kernels too slow: the
  // description says so (smp-plan --recalibrate on a quiet machine refreshes it).
  const std::string busy = cal->load_average > cal->cores
                               ? fmt::format(", while the machine was busy: load average {:.1f} on {} cores", cal->load_average,
                                             cal->cores)
                               : std::string();
  j["description"] = fmt::format("This machine ({}, {} cores) as {} worker process{} sharing the cores, its kernels "
                                 "measured {}{} ({}).",
                                 cal->cpu.empty() ? "unknown CPU" : cal->cpu, cores, workers, workers == 1 ? "" : "es",
                                 cal->measured_at, busy, cal->source.empty() ? "calibration" : cal->source);
  Cluster c = cluster_from_json(j, "local cpu");
  for (auto& k : c.kinds) {
    k.calibration = cal;
    k.threads = std::max(1, cores / workers);
  }
  return c;
}

}  // namespace smp::cost
