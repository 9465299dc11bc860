// The global ranks of a plan, defined once for the planner, the plan file, the launcher and the
// worker. Tensor-parallel ranks are innermost (a group's T ranks are consecutive, and the
// planner puts them on consecutive devices of one host, as Megatron-LM places them), then the
// pipeline ranks of a replica, then the replicas:
//
//   rank = (replica * pipeline + pipeline_rank) * tensor_parallel + tp_rank
//
// mpirun fills a host's slots with consecutive ranks, so a tensor-parallel group never spans
// hosts when every host has a multiple of T slots.
#pragma once

#include <vector>

namespace smp::plan {

struct RankLayout {
  int pipeline = 1, data_parallel = 1, tensor_parallel = 1;

  struct Coords {
    int replica = 0, pipeline_rank = 0, tp_rank = 0;
  };

  int size() const { return pipeline * data_parallel * tensor_parallel; }
  int rank(int replica, int pipeline_rank, int tp_rank) const {
    return (replica * pipeline + pipeline_rank) * tensor_parallel + tp_rank;
  }
  Coords coords(int rank) const {
    Coords c;
    c.tp_rank = rank % tensor_parallel;
    const int group = rank / tensor_parallel;
    c.pipeline_rank = group % pipeline;
    c.replica = group / pipeline;
    return c;
  }
  // The ranks of one tensor-parallel group / one data-parallel group (a pipeline rank's
  // replicas on one tensor-parallel lane), ascending.
  std::vector<int> tp_group(int replica, int pipeline_rank) const {
    std::vector<int> r;
    for (int t = 0; t < tensor_parallel; ++t) r.push_back(rank(replica, pipeline_rank, t));
    return r;
  }
  std::vector<int> dp_group(int pipeline_rank, int tp_rank) const {
    std::vector<int> r;
    for (int d = 0; d < data_parallel; ++d) r.push_back(rank(d, pipeline_rank, tp_rank));
    return r;
  }
};

}  // namespace smp::plan
