#include "plan/tensor_parallel.hpp"

#include "core/error.hpp"

#include <fmt/format.h>

namespace smp::plan {

int devices_per_host(const cost::Cluster& cl) {
  std::vector<int> per(cl.hosts.size(), 0);
  for (const auto& d : cl.devices) ++per[static_cast<size_t>(d.host)];
  int n = per.empty() ? 0 : per[0];
  for (int x : per)
    if (x != n) return 0;
  return n;
}

std::string tp_cluster_problem(const cost::Cluster& cl, int degree) {
  if (degree <= 1) return "";
  std::vector<std::vector<int>> of_host(cl.hosts.size());
  for (int i = 0; i < cl.size(); ++i) of_host[static_cast<size_t>(cl.devices[static_cast<size_t>(i)].host)].push_back(i);
  for (size_t h = 0; h < of_host.size(); ++h) {
    const auto& ds = of_host[h];
    if (ds.size() % static_cast<size_t>(degree))
      return fmt::format("host {} has {} devices, not a multiple of {}", cl.hosts[h].name, ds.size(), degree);
    for (size_t k = 0; k < ds.size(); k += static_cast<size_t>(degree))
      for (size_t t = 1; t < static_cast<size_t>(degree); ++t)
        if (cl.devices[static_cast<size_t>(ds[k + t])].kind != cl.devices[static_cast<size_t>(ds[k])].kind)
          return fmt::format("host {} mixes device kinds within a group of {}", cl.hosts[h].name, degree);
  }
  return "";
}

cost::Cluster group_cluster(const cost::Cluster& cl, int degree, std::vector<int>* first_device) {
  SMP_CHECK(tp_cluster_problem(cl, degree).empty(), "{}", tp_cluster_problem(cl, degree));
  cost::Cluster g;
  g.name = cl.name;
  g.description = cl.description;
  g.hosts = cl.hosts;
  g.kinds = cl.kinds;
  g.interconnect = cl.interconnect;
  g.source = cl.source;
  std::vector<int> seen(cl.hosts.size(), 0);
  if (first_device) first_device->clear();
  for (int i = 0; i < cl.size(); ++i) {
    const cost::Device& d = cl.devices[static_cast<size_t>(i)];
    int& k = seen[static_cast<size_t>(d.host)];
    if (k++ % degree) continue;
    cost::Device gd = d;
    gd.local = d.local / degree;
    g.devices.push_back(gd);
    if (first_device) first_device->push_back(i);
  }
  return g;
}

std::shared_ptr<const TpContext> make_tp_context(const graph::Graph& g, int64_t batch_size, const cost::CostOptions& base,
                                                 const cost::Cluster& cl, int degree) {
  auto ctx = std::make_shared<TpContext>();
  ctx->degree = degree;
  ctx->analysis = graph::analyze_tensor_parallel(g, degree);
  if (!ctx->analysis.any()) return nullptr;
  ctx->graph = graph::shard_graph(g, ctx->analysis, 0);
  ctx->cluster = group_cluster(cl, degree, &ctx->first_device);
  cost::CostOptions o = base;
  o.tp_degree = degree;
  // The group's all-reduces run on the host link (a group never spans hosts).
  o.tp_link = cl.hosts.at(static_cast<size_t>(cl.devices.at(0).host)).link;
  for (const auto& h : cl.hosts)
    if (h.link.bandwidth < o.tp_link.bandwidth) o.tp_link = h.link;
  // A profile measured the whole nodes: it does not apply to their parts.
  o.profile = nullptr;
  ctx->cost = std::make_unique<cost::GraphCost>(ctx->graph, batch_size, o);
  return ctx;
}

}  // namespace smp::plan
