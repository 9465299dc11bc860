// Cluster description (schemas/cluster.schema.json): hosts with their devices and links, read,
// validated (every bad field named by its path) and flattened to a device list.
//
// {"version": 1, "name": "...", "description": "...",
//  "hosts": [{"name": "node", "count": 2,            // count: replicate the host (names node-0, node-1)
//             "devices": [{"kind": "gpu", "name": "A100-SXM4-40GB", "count": 8,
//                          "memory_bytes": 40e9, "peak_flops": {"fp32": 19.5e12, "bf16": 312e12},
//                          "memory_bandwidth": 1.555e12, "kernel_overhead_s": 5e-6}],
//             "link": {"bandwidth": 300e9, "latency": 2e-6}}],      // between devices of the host
//  "interconnect": {"bandwidth": 50e9, "latency": 5e-6}}             // between two hosts
//
// Bandwidths are bytes/s one way between one pair of devices (the interconnect figure is what
// one device pair gets between hosts, as with one NIC rail per GPU).
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace smp::cost {

inline constexpr int kClusterFileVersion = 1;

enum class Precision { FP32, BF16 };

struct KernelCalibration;  // cost/calibration.hpp

struct DeviceSpec {
  std::string kind = "cpu";  // "cpu" | "gpu"
  std::string name;
  double memory_bytes = 0;
  double peak_flops_fp32 = 0;
  double peak_flops_bf16 = 0;
  double memory_bandwidth = 0;   // bytes/s
  double kernel_overhead_s = 0;  // per kernel launch
  // Per cost::KernelFamily (cost/calibration.hpp), the fraction of the peak its kernels reach: of
  // the peak FLOP/s for the compute-bound families, of the memory bandwidth for the rest. Empty:
  // the roofline at the peaks. A GPU gets published figures (gpu_kernel_efficiency()) unless its
  // description gives its own ("efficiency" in the cluster file).
  std::vector<double> efficiency;
  // This machine's measured kernels (smp-plan without --cluster): unprofiled nodes are priced by
  // them instead of the roofline, for a worker of `threads` compute threads, and the planner
  // charges the workers' sharing of the cores. Null for described devices.
  std::shared_ptr<const KernelCalibration> calibration;
  int threads = 1;
  double peak_flops(Precision p) const { return p == Precision::BF16 ? peak_flops_bf16 : peak_flops_fp32; }
  bool same_as(const DeviceSpec& o) const;
};

struct LinkSpec {
  double bandwidth = 0;  // bytes/s
  double latency = 0;    // s
  // A sum over devices joined by this link as measured, in bus bandwidth (nccl-tests' busbw:
  // 2 (n - 1) / n x bytes / time for n ranks); 0: not measured, the link's bandwidth.
  double allreduce_bandwidth = 0;
  double time(double bytes) const { return bytes <= 0 ? 0.0 : latency + bytes / bandwidth; }
  double bus_bandwidth() const { return allreduce_bandwidth > 0 ? allreduce_bandwidth : bandwidth; }
};

struct Device {
  int host = 0;          // index into Cluster::hosts
  int local = 0;         // index among the host's devices
  int kind = 0;          // index into Cluster::kinds (devices with equal specs share one)
};

struct Host {
  std::string name;
  LinkSpec link;
};

struct Cluster {
  std::string name;
  std::string description;
  std::vector<Host> hosts;
  std::vector<DeviceSpec> kinds;  // distinct device specs
  std::vector<Device> devices;    // flattened: host by host, in file order
  LinkSpec interconnect;
  nlohmann::json source;          // the file as read (hosts not replicated)

  int size() const { return static_cast<int>(devices.size()); }
  const DeviceSpec& spec(int device) const { return kinds[static_cast<size_t>(devices[static_cast<size_t>(device)].kind)]; }
  // Host link when both are on one host, else the interconnect; a zero-cost link for i == j.
  LinkSpec link(int i, int j) const;
  bool heterogeneous() const { return kinds.size() > 1; }
  // "2 hosts x 8 A100-SXM4-40GB" style one-liner.
  std::string summary() const;
};

// Parses and validates; `where` names the file in messages ("clusters/x.json: hosts[1].devices[0]
// .memory_bytes: must be a positive number").
Cluster cluster_from_json(const nlohmann::json& j, const std::string& where);
Cluster read_cluster(const std::filesystem::path& path);
nlohmann::json to_json(const Cluster& c);  // the compact form (hosts not replicated)

// This machine's CPU as `workers` devices (worker processes sharing the cores; 0: one per
// core). Cores from sched_getaffinity, memory from /proc/meminfo, FLOP/s from /proc/cpuinfo
// (MHz x FLOP per cycle by avx512f / avx2+fma flags), memory bandwidth and the shared-memory
// link are stated estimates. Each worker gets cores / workers of the FLOP/s, bandwidth and memory.
Cluster detect_local_cpu(int workers = 0);
// The same machine described by its kernel calibration: FLOP/s and memory bandwidth as measured,
// the link between workers as measured (when it was), and every device priced by the calibration
// at cores / workers threads (at least 1).
Cluster calibrated_local_cpu(std::shared_ptr<const KernelCalibration> cal, int workers = 0);
// The machine itself (one entry, the counts as detected), for writing clusters/local-cpu.json.
nlohmann::json local_cpu_json(int workers = 0);

}  // namespace smp::cost
