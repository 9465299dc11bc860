// Planning with tensor parallelism: for a degree T, the graph one rank of a group runs
// (graph::shard_graph of rank 0, the largest part when the vocabulary splits unevenly), its cost
// with the group's all-reduces on the host link, and the cluster seen as one device per group
// (T consecutive devices of a host). The pipeline x data-parallel search then runs unchanged on
// that graph and cluster.
#pragma once

#include "cost/cluster.hpp"
#include "cost/cost_model.hpp"
#include "graph/graph.hpp"
#include "graph/tensor_parallel.hpp"

#include <memory>
#include <string>
#include <vector>

namespace smp::plan {

struct TpContext {
  int degree = 1;
  graph::TpAnalysis analysis;            // on the source graph
  graph::Graph graph;                    // rank 0's graph
  std::unique_ptr<cost::GraphCost> cost;
  cost::Cluster cluster;                 // one device per tensor-parallel group
  std::vector<int> first_device;         // per group device: its first device in the source cluster
};

// Why `degree` cannot split `cl`'s hosts into groups ("" when it can): every host needs a
// multiple of `degree` devices, and the devices of a group must be alike.
std::string tp_cluster_problem(const cost::Cluster& cl, int degree);
// The cluster with one device per group of `degree` consecutive devices of a host (their spec;
// links as between their first devices). *first_device: per group, its first source device.
cost::Cluster group_cluster(const cost::Cluster& cl, int degree, std::vector<int>* first_device);
// The devices of a host when every host has the same number, else 0.
int devices_per_host(const cost::Cluster& cl);

// The context for `degree` > 1: analysis, rank 0's graph, its cost (options as `base` with the
// group's link), the grouped cluster. nullptr when the graph has nothing to split that many ways.
std::shared_ptr<const TpContext> make_tp_context(const graph::Graph& g, int64_t batch_size, const cost::CostOptions& base,
                                                 const cost::Cluster& cl, int degree);

}  // namespace smp::plan
