// Kernel calibration of a CPU: how long smp's own CPU kernels take on this machine, per kernel
// family and size, measured once (train/calibrate.hpp) and cached. The cost model prices an
// unprofiled node on a calibrated device by its family's curve at the node's work (FLOPs for the
// matrix products, bytes moved for everything else) instead of a roofline of peak figures: small
// products, strided copies, transcendental math and per-kernel overheads each run at the speed
// they really reach.
//
// A curve holds measured points (work, seconds) of one pass; between points the time is
// interpolated linearly in log(work) / log(time), below the smallest point it is that point's
// time (the per-call overhead floor), above the largest it grows at the largest point's rate.
//
// Workers sharing the machine: tables per thread count (a worker's compute threads), and the
// slow-down of c copies of a compute-bound and of a memory-bound kernel running at once against
// one alone (caches, memory bandwidth, the cores' shared clock), measured for c = 1 .. cores.
#pragma once

#include "cost/cluster.hpp"
#include "graph/graph.hpp"

#include <nlohmann/json.hpp>

#include <array>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace smp::cost {

inline constexpr int kCalibrationVersion = 4;

enum class KernelFamily : int {
  Gemm,            // MatMul / Gemm with a weight operand
  BatchedMatMul,   // MatMul of two activations (attention scores, weighted sums)
  Conv,            // convolution (im2col + GEMM)
  Elementwise,     // add, multiply, compare, select, relu, casts: memory-bound streaming
  Transcendental,  // erf, exp, tanh, sigmoid, pow, sqrt, div ...: math per element
  Norm,            // LayerNormalization, BatchNormalization
  Softmax,         // Softmax, LogSoftmax, the softmax cross-entropy loss
  Reduce,          // reductions, global pooling
  Pool,            // max / average pooling
  Transpose,       // strided copies
  Movement,        // contiguous copies: concat, split, slice, gather, expand, tile
  kCount
};
inline constexpr int kKernelFamilies = static_cast<int>(KernelFamily::kCount);

std::string_view family_name(KernelFamily f);
std::optional<KernelFamily> family_from_name(std::string_view s);
// FLOPs for the matrix products, bytes moved for the rest.
bool family_counts_flops(KernelFamily f);
// Compute-bound families feel concurrent copies as the compute slow-down, the rest as the memory one.
bool family_compute_bound(KernelFamily f);
// The family a node is priced with; nullopt for views, shape-only ops and ops smp does not know
// (those keep the roofline).
std::optional<KernelFamily> kernel_family(const graph::Graph& g, const graph::Node& n);

// What cuBLAS / cuDNN-class and well-written memory-bound GPU kernels reach, per family, as a
// fraction of the peak FLOP/s (gemm, batched_matmul, conv, transcendental) or of the memory
// bandwidth (the rest): docs/cost-model.md gives the sources. A GPU profile (smp-profile on the
// GPU) replaces these with each node's measured times.
std::vector<double> gpu_kernel_efficiency();

struct CalibrationCurve {
  struct Point {
    double work = 0, seconds = 0;
  };
  std::vector<Point> points;  // work ascending
  bool empty() const { return points.empty(); }
  double time(double work) const;
};

// How much slower a GEMM with few output rows (M of [M, K] x [K, N]) runs than the Gemm curve,
// whose cases all have many: per M measured, the time over the time at the same FLOP/s as the
// most rows; log-linear in M between the points, 1 above the last, the first below it.
struct RowsFactor {
  std::vector<std::pair<double, double>> points;  // (rows, factor >= 1), rows ascending
  double at(double rows) const;
};

struct CalibrationTable {
  int threads = 1;
  // Per family: [0] the forward, [1] the backward (input and weight gradients as the executor's
  // backward runs them, priced at the backward's own work).
  std::array<std::array<CalibrationCurve, 2>, kKernelFamilies> curves;
  // The Gemm family's slow-down with few rows: [0] forward, [1] backward (empty: none measured).
  std::array<RowsFactor, 2> gemm_rows;
  // The worker's end-of-step work per parameter: gradient norm + update (sgd, momentum, adamw).
  std::array<double, 3> optimizer_s_per_parameter{};
};

struct KernelCalibration {
  std::string cpu;             // /proc/cpuinfo's model name
  int cores = 1;
  std::string measured_at;     // UTC, ISO 8601
  double load_average = -1;    // the machine's 1-minute load average as the measurement began (-1: unknown)
  std::string smp_version;
  std::vector<CalibrationTable> tables;   // ascending threads
  // Slow-down of c concurrent single-threaded copies (index c - 1, [0] = 1): CPU time per kernel
  // against one alone.
  std::vector<double> contention_compute, contention_memory;
  double gemm_flops = 0;       // sustained single-thread GEMM FLOP/s (the largest Gemm point)
  double memory_bandwidth = 0; // bytes/s of the largest Elementwise point, all threads
  LinkSpec link;               // between two worker processes (0 bandwidth: not measured)
  // Twice as many worker processes as cores (a ring passing `cores` and then 2 x `cores` tokens,
  // measure_ring): the wall time over their CPU work at their own cores' prices, divided by the
  // cores. What the scheduler and the waits cost beyond the CPU time the planner charges. Empty:
  // not measured.
  std::vector<double> oversubscription;  // [0] cores tokens, [1] 2 x cores tokens
  // The factor for workers that keep `busy` x threads / cores of the cores' worth busy on
  // average (1 to 2, interpolated; 1 when not measured).
  double oversubscription_factor(double load) const;
  std::string source;          // where it was read from (for the report); not stored

  // The table for a worker with `threads` compute threads: the largest measured thread count not
  // above it (the smallest table when none is).
  const CalibrationTable& table(int threads) const;
  // How much slower each worker computes when `busy` of them compute at once on `cores` cores
  // with `threads` threads each: time-slicing beyond the cores times the measured contention.
  double slowdown(KernelFamily f, double busy, int threads) const;
};

nlohmann::json to_json(const KernelCalibration& c);
// Validates; bad input names `where` and the field.
KernelCalibration calibration_from_json(const nlohmann::json& j, const std::string& where);

}  // namespace smp::cost
