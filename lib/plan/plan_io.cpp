#include "plan/plan_io.hpp"

#include "core/error.hpp"
#include "core/io.hpp"
#include "core/version.hpp"
#include "plan/sha256.hpp"
#include "schedule/validate.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

namespace smp::plan {

using nlohmann::json;

namespace {

// Shape per microbatch: the leading dimension of a batch-proportional value scaled by u / B.
Shape microbatch_shape(const cost::GraphCost& gc, int v, double u) {
  const auto& val = gc.graph().value(v);
  Shape s = val.shape;
  if (gc.batch_dependent(v) && !s.empty()) {
    const double B = static_cast<double>(gc.batch_size());
    double lead = static_cast<double>(s[0]) * u / B;
    if (lead >= 1 && std::abs(lead - std::round(lead)) < 1e-9) s[0] = static_cast<int64_t>(std::llround(lead));
  }
  return s;
}

json tensor_json(const cost::GraphCost& gc, int v, double u, const char* peer_key, json peer) {
  const auto& val = gc.graph().value(v);
  return json{{"name", val.name},
              {"shape", microbatch_shape(gc, v, u)},
              {"dtype", std::string(dtype_name(val.dtype))},
              {"bytes", gc.value_bytes(v).at(u)},
              {peer_key, peer}};
}

json prediction_json(const Prediction& p) {
  return json{{"fits", p.fits},
              {"step_s", p.step_s},
              {"samples_per_s", p.samples_per_s},
              {"bubble", p.bubble},
              {"allreduce_s", p.allreduce_s},
              {"update_s", p.update_s},
              {"peak_bytes", p.peak_bytes},
              {"capacity_bytes", p.capacity_bytes}};
}

}  // namespace

json plan_to_json(const Plan& plan, const PlanInputs& source, const PlanOptions& opt, const PlanContext& ctx) {
  // Stages refer to the graph a rank runs (rank 0's when split); ranks to the source cluster.
  const PlanInputs in = plan_inputs(plan, source);
  const graph::Graph& g = *in.graph;
  const cost::GraphCost& gc = *in.cost;
  const cost::Cluster& cl = *source.cluster;
  const RankLayout layout = plan.rank_layout();
  const double u = plan.microbatch_size;
  const int S = static_cast<int>(plan.stage_plans.size());
  std::vector<int> stage_of_node(g.nodes.size(), -1);
  for (const auto& sp : plan.stage_plans)
    for (int n = sp.begin; n < sp.end; ++n) stage_of_node[static_cast<size_t>(n)] = sp.index;

  json stages = json::array();
  for (const auto& sp : plan.stage_plans) {
    json nodes = json::array(), params = json::array(), inputs = json::array(), outputs = json::array();
    for (int n = sp.begin; n < sp.end; ++n) nodes.push_back(g.nodes[static_cast<size_t>(n)].name);
    std::vector<int> pids;
    for (int n = sp.begin; n < sp.end; ++n)
      for (int p : gc.node(n).params)
        if (std::find(pids.begin(), pids.end(), p) == pids.end()) pids.push_back(p);
    for (int p : pids) params.push_back(g.value(p).name);
    for (int v : gc.stage_inputs(sp.begin, sp.end)) {
      const auto& val = g.value(v);
      json from = val.producer < 0 ? json(-1) : json(stage_of_node[static_cast<size_t>(val.producer)]);
      inputs.push_back(tensor_json(gc, v, u, "from_stage", from));
    }
    // Pass-through tensors (produced before, consumed after this stage) travel through it.
    std::vector<int> through;
    if (sp.index + 1 < S)
      for (int v : gc.crossing(sp.end))
        if (g.value(v).producer < sp.begin) through.push_back(v);
    for (int v : gc.stage_outputs(sp.begin, sp.end)) {
      int to = -1;
      for (int c : g.value(v).consumers)
        if (c >= sp.end) {
          to = stage_of_node[static_cast<size_t>(c)];
          break;
        }
      outputs.push_back(tensor_json(gc, v, u, "to_stage", to));
    }
    json ranks = json::array();
    for (int rep = 0; rep < plan.data_parallel; ++rep)
      for (int t = 0; t < plan.tensor_parallel; ++t) ranks.push_back(layout.rank(rep, sp.pipeline_rank, t));
    json thr = json::array();
    for (int v : through) thr.push_back(g.value(v).name);
    stages.push_back(json{{"index", sp.index},
                          {"pipeline_rank", sp.pipeline_rank},
                          {"first_node", g.nodes[static_cast<size_t>(sp.begin)].name},
                          {"last_node", g.nodes[static_cast<size_t>(sp.end - 1)].name},
                          {"node_range", {sp.begin, sp.end}},
                          {"nodes", nodes},
                          {"inputs", inputs},
                          {"outputs", outputs},
                          {"pass_through", thr},
                          {"parameters", params},
                          {"parameter_count", sp.params},
                          {"recompute", sp.recompute},
                          {"ranks", ranks},
                          {"time", {{"forward_s", sp.f_s}, {"backward_input_s", sp.b_s}, {"backward_weight_s", sp.w_s},
                                    {"update_s", sp.update_s}, {"timing", sp.timing}}},
                          {"memory", {{"static_bytes", sp.static_bytes},
                                      {"activation_bytes_per_microbatch", sp.act_bytes},
                                      {"w_keep_bytes_per_microbatch", sp.w_keep_bytes},
                                      {"workspace_bytes", sp.workspace_bytes}}},
                          {"send_bytes_per_microbatch", sp.send_bytes}});
  }

  json ranks = json::array();
  for (int q = 0; q < layout.size(); ++q) {
    const RankLayout::Coords co = layout.coords(q);
    const int rep = co.replica, r = co.pipeline_rank;
    int dev = plan.device_of_rank[static_cast<size_t>(q)];
    const auto& d = cl.devices[static_cast<size_t>(dev)];
    json chunks = json::array();
    for (int st = 0; st < plan.schedule.stages(); ++st)
      if (plan.schedule.rank_of(st) == r) chunks.push_back(st);
    ranks.push_back(json{{"rank", q},
                         {"replica", rep},
                         {"pipeline_rank", r},
                         {"tp_rank", co.tp_rank},
                         {"host", cl.hosts[static_cast<size_t>(d.host)].name},
                         {"device", dev},
                         {"local_device", d.local},
                         {"device_name", cl.kinds[static_cast<size_t>(d.kind)].name},
                         {"device_kind", cl.kinds[static_cast<size_t>(d.kind)].kind},
                         {"stages", chunks}});
  }

  json actions = json::array();
  schedule::Schedule lowered = schedule::lower(plan.schedule);
  for (const auto& row : lowered.actions) {
    json r = json::array();
    for (const auto& a : row) r.push_back(schedule::to_string(a));
    actions.push_back(r);
  }

  json baselines = json::array();
  for (const auto& b : plan.baselines) {
    json bj{{"name", b.name}, {"unit", b.unit}, {"available", b.available}, {"note", b.note}, {"stage_boundaries", b.bounds}};
    if (b.available) {
      bj["prediction"] = prediction_json(b.prediction);
      bj["speedup"] = b.prediction.fits && plan.prediction.step_s > 0 ? json(b.prediction.step_s / plan.prediction.step_s)
                                                                        : json(nullptr);
    }
    baselines.push_back(bj);
  }

  json megatron{{"name", "megatron"}, {"available", plan.megatron.available}, {"note", plan.megatron.note}};
  if (plan.megatron.available) {
    const auto& m = plan.megatron;
    megatron["tensor_parallel"] = m.tensor_parallel;
    megatron["pipeline"] = m.stages;
    megatron["data_parallel"] = m.data_parallel;
    megatron["microbatches"] = m.microbatches;
    megatron["microbatch_size"] = m.microbatch_size;
    megatron["prediction"] = prediction_json(m.prediction);
    megatron["speedup"] = plan.prediction.step_s > 0 ? json(m.prediction.step_s / plan.prediction.step_s) : json(nullptr);
  }
  json tp{{"degree", plan.tensor_parallel}, {"degrees_searched", plan.degrees_searched}};
  {
    json groups = json::array();
    if (plan.tp) {
      const graph::Graph& src = *source.graph;
      const auto& a = plan.tp->analysis;
      for (const auto& grp : a.groups) {
        json ps = json::array();
        for (int p : grp.parameters) ps.push_back(src.value(p).name);
        groups.push_back(json{{"name", grp.name},
                              {"kind", std::string(graph::tp_kind_name(grp.kind))},
                              {"first_node", src.nodes[static_cast<size_t>(grp.nodes.front())].name},
                              {"last_node", src.nodes[static_cast<size_t>(grp.nodes.back())].name},
                              {"nodes", static_cast<int>(grp.nodes.size())},
                              {"parameters", ps}});
      }
      tp["sharded_parameters"] = a.sharded_params;
      tp["replicated_parameters"] = a.replicated_params;
      tp["vocabulary_parallel_output"] = a.sharded_output >= 0;
    }
    tp["groups"] = groups;
  }

  json dims = json::object();
  for (const auto& [k, v] : g.dims) dims[k] = v;
  int64_t params = source.graph->parameter_count();
  return json{
      {"version", kPlanFileVersion},
      {"smp_version", SMP_VERSION},
      {"model", {{"path", plan.model_path}, {"sha256", ctx.model_sha256}, {"name", plan.model_name},
                 {"nodes", static_cast<int>(source.graph->nodes.size())}, {"parameters", params}}},
      {"batch_size", plan.batch_size},
      {"dims", dims},
      {"frozen", source.graph->frozen},
      {"microbatches", plan.microbatches},
      {"microbatch_size", static_cast<int64_t>(std::llround(plan.microbatch_size))},
      {"degrees", {{"pipeline", plan.stages}, {"data_parallel", plan.data_parallel}, {"chunks", plan.chunks},
                   {"tensor_parallel", plan.tensor_parallel}, {"ranks", layout.size()}}},
      {"options", {{"optimizer", std::string(cost::optimizer_name(gc.options().optimizer))},
                   {"dtype", ctx.dtype},
                   {"recompute", std::string(recompute_name(opt.recompute))},
                   {"layout", std::string(layout_name(plan.layout))},
                   {"shard_optimizer", plan.shard_optimizer},
                   {"profile", ctx.profile_file.empty() ? json(nullptr) : json(ctx.profile_file)}}},
      {"schedule", {{"name", plan.schedule_name}, {"ranks", plan.stages}, {"chunks", plan.chunks},
                    {"microbatches", plan.microbatches}, {"stage_ranks", plan.schedule.stage_rank}, {"actions", actions}}},
      {"stages", stages},
      {"ranks", ranks},
      {"prediction", prediction_json(plan.prediction)},
      {"partition", plan.partition},
      {"baselines", baselines},
      {"megatron_baseline", megatron},
      {"tensor_parallel", tp},
      {"cluster", {{"name", cl.name}, {"summary", cl.summary()}, {"file", ctx.cluster_file.empty() ? json(nullptr) : json(ctx.cluster_file)},
                   {"devices", cl.size()}, {"devices_used", plan.devices_used}, {"description", cost::to_json(cl)}}},
      {"search", {{"cut_positions_seen", plan.positions_seen}, {"cut_positions_total", plan.positions_total},
                  {"configs_considered", plan.configs_considered}, {"configs_evaluated", plan.configs_evaluated},
                  {"dp_runs", plan.dp_runs},
                  {"splits_enumerated", plan.splits_enumerated}, {"notes", plan.notes}}},
  };
}

void write_plan(const std::filesystem::path& path, const json& j) { write_file_atomic(path, j.dump(1) + "\n"); }

// ---- reading ----------------------------------------------------------------------------------

namespace {

struct R {
  const std::string& where;
  [[noreturn]] void fail(const std::string& path, const std::string& what) const { throw_bad_input(where + ": " + path, what); }
  const json& get(const json& o, const std::string& path, const char* key) const {
    if (!o.is_object() || !o.contains(key)) fail(path + key, "missing");
    return o[key];
  }
  int64_t integer(const json& o, const std::string& path, const char* key, int64_t min = 0) const {
    const json& v = get(o, path, key);
    if (!v.is_number_integer() || v.get<int64_t>() < min) fail(path + key, fmt::format("must be an integer >= {}", min));
    return v.get<int64_t>();
  }
  std::string str(const json& o, const std::string& path, const char* key) const {
    const json& v = get(o, path, key);
    if (!v.is_string()) fail(path + key, "must be a string");
    return v.get<std::string>();
  }
  const json& arr(const json& o, const std::string& path, const char* key) const {
    const json& v = get(o, path, key);
    if (!v.is_array()) fail(path + key, "must be an array");
    return v;
  }
};

std::vector<TensorRef> tensors(const R& r, const json& a, const std::string& path, const char* peer_key) {
  std::vector<TensorRef> out;
  for (size_t i = 0; i < a.size(); ++i) {
    std::string p = fmt::format("{}[{}].", path, i);
    TensorRef t;
    t.name = r.str(a[i], p, "name");
    t.dtype = r.str(a[i], p, "dtype");
    for (const auto& d : r.arr(a[i], p, "shape")) {
      if (!d.is_number_integer()) r.fail(p + "shape", "must hold integers");
      t.shape.push_back(d.get<int64_t>());
    }
    const json& peer = r.get(a[i], p, peer_key);
    if (!peer.is_number_integer()) r.fail(p + peer_key, "must be an integer");
    t.peer = peer.get<int>();
    out.push_back(t);
  }
  return out;
}

}  // namespace

PlanFile plan_from_json(const json& j, const std::string& where) {
  R r{where};
  if (!j.is_object()) r.fail("(top level)", "must be a JSON object");
  int64_t version = r.integer(j, "", "version", 1);
  if (version != kPlanFileVersion) r.fail("version", fmt::format("unsupported version {} (this smp reads {})", version, kPlanFileVersion));
  PlanFile f;
  f.path = where;
  f.json = j;
  const json& model = r.get(j, "", "model");
  f.model_path = r.str(model, "model.", "path");
  f.model_sha256 = r.str(model, "model.", "sha256");
  f.batch_size = r.integer(j, "", "batch_size", 1);
  f.microbatches = static_cast<int>(r.integer(j, "", "microbatches", 1));
  f.microbatch_size = r.integer(j, "", "microbatch_size", 1);
  const json& deg = r.get(j, "", "degrees");
  f.stages = static_cast<int>(r.integer(deg, "degrees.", "pipeline", 1));
  f.data_parallel = static_cast<int>(r.integer(deg, "degrees.", "data_parallel", 1));
  f.chunks = static_cast<int>(r.integer(deg, "degrees.", "chunks", 1));
  if (deg.contains("tensor_parallel")) f.tensor_parallel = static_cast<int>(r.integer(deg, "degrees.", "tensor_parallel", 1));
  if (f.batch_size != int64_t{f.data_parallel} * f.microbatches * f.microbatch_size)
    r.fail("batch_size", "is not data_parallel x microbatches x microbatch_size");
  if (j.contains("dims")) {
    if (!j["dims"].is_object()) r.fail("dims", "must be an object");
    for (const auto& [k, v] : j["dims"].items()) {
      if (!v.is_number_integer()) r.fail("dims." + k, "must be an integer");
      f.dims[k] = v.get<int64_t>();
    }
  }
  if (j.contains("frozen")) {
    if (!j["frozen"].is_array()) r.fail("frozen", "must be an array of initializer names or patterns");
    for (const auto& v : j["frozen"]) {
      if (!v.is_string() || v.get<std::string>().empty()) r.fail("frozen", "must be an array of initializer names or patterns");
      f.frozen.push_back(v.get<std::string>());
    }
  }
  const json& o = r.get(j, "", "options");
  f.optimizer = r.str(o, "options.", "optimizer");
  f.dtype = r.str(o, "options.", "dtype");
  if (o.contains("shard_optimizer")) {
    if (!o["shard_optimizer"].is_boolean()) r.fail("options.shard_optimizer", "must be true or false");
    f.shard_optimizer = o["shard_optimizer"].get<bool>();
  }
  const json& sj = r.get(j, "", "schedule");
  json sched{{"version", schedule::kScheduleFileVersion}, {"name", r.str(sj, "schedule.", "name")},
             {"ranks", r.integer(sj, "schedule.", "ranks", 1)}, {"chunks", r.integer(sj, "schedule.", "chunks", 1)},
             {"microbatches", r.integer(sj, "schedule.", "microbatches", 1)},
             {"stage_ranks", r.arr(sj, "schedule.", "stage_ranks")}, {"actions", r.arr(sj, "schedule.", "actions")}};
  f.schedule = schedule::schedule_from_json(sched, where + ": schedule");
  if (f.schedule.ranks != f.stages || f.schedule.chunks != f.chunks || f.schedule.microbatches != f.microbatches)
    r.fail("schedule", "its ranks / chunks / microbatches differ from degrees / microbatches");
  schedule::check_valid(f.schedule, where + ": schedule");
  const json& st = r.arr(j, "", "stages");
  if (static_cast<int>(st.size()) != f.schedule.stages())
    r.fail("stages", fmt::format("{} stages, the schedule has {}", st.size(), f.schedule.stages()));
  for (size_t i = 0; i < st.size(); ++i) {
    std::string p = fmt::format("stages[{}].", i);
    PlanStage s;
    s.index = static_cast<int>(r.integer(st[i], p, "index"));
    if (s.index != static_cast<int>(i)) r.fail(p + "index", "stages must be listed in order");
    s.pipeline_rank = static_cast<int>(r.integer(st[i], p, "pipeline_rank"));
    for (const auto& n : r.arr(st[i], p, "nodes")) {
      if (!n.is_string()) r.fail(p + "nodes", "must hold strings");
      s.nodes.push_back(n.get<std::string>());
    }
    if (s.nodes.empty()) r.fail(p + "nodes", "must not be empty");
    for (const auto& n : r.arr(st[i], p, "parameters")) {
      if (!n.is_string()) r.fail(p + "parameters", "must hold strings");
      s.parameters.push_back(n.get<std::string>());
    }
    s.inputs = tensors(r, r.arr(st[i], p, "inputs"), p + "inputs", "from_stage");
    s.outputs = tensors(r, r.arr(st[i], p, "outputs"), p + "outputs", "to_stage");
    const json& rc = r.get(st[i], p, "recompute");
    if (!rc.is_boolean()) r.fail(p + "recompute", "must be true or false");
    s.recompute = rc.get<bool>();
    for (const auto& q : r.arr(st[i], p, "ranks")) {
      if (!q.is_number_integer()) r.fail(p + "ranks", "must hold integers");
      s.ranks.push_back(q.get<int>());
    }
    f.stage.push_back(s);
  }
  const json& rk = r.arr(j, "", "ranks");
  const RankLayout layout = f.rank_layout();
  if (static_cast<int>(rk.size()) != layout.size())
    r.fail("ranks", fmt::format("{} ranks, degrees say {}", rk.size(), layout.size()));
  for (size_t i = 0; i < rk.size(); ++i) {
    std::string p = fmt::format("ranks[{}].", i);
    PlanRank q;
    q.rank = static_cast<int>(r.integer(rk[i], p, "rank"));
    if (q.rank != static_cast<int>(i)) r.fail(p + "rank", "ranks must be listed in order");
    q.replica = static_cast<int>(r.integer(rk[i], p, "replica"));
    q.pipeline_rank = static_cast<int>(r.integer(rk[i], p, "pipeline_rank"));
    if (rk[i].contains("tp_rank")) q.tp_rank = static_cast<int>(r.integer(rk[i], p, "tp_rank"));
    const RankLayout::Coords co = layout.coords(q.rank);
    if (co.replica != q.replica || co.pipeline_rank != q.pipeline_rank || co.tp_rank != q.tp_rank)
      r.fail(p + "rank", fmt::format("replica {}, pipeline rank {}, tensor-parallel rank {} is rank {} in smp's layout",
                                     q.replica, q.pipeline_rank, q.tp_rank,
                                     layout.rank(q.replica, q.pipeline_rank, q.tp_rank)));
    q.host = r.str(rk[i], p, "host");
    q.device = static_cast<int>(r.integer(rk[i], p, "device"));
    q.local_device = static_cast<int>(r.integer(rk[i], p, "local_device"));
    for (const auto& s : r.arr(rk[i], p, "stages")) {
      if (!s.is_number_integer()) r.fail(p + "stages", "must hold integers");
      q.stages.push_back(s.get<int>());
    }
    f.ranks.push_back(q);
  }
  return f;
}

PlanFile read_plan(const std::filesystem::path& path) {
  PlanFile f = plan_from_json(read_json(path), path.string());
  // A relative model path that does not resolve from here is taken beside the plan file.
  std::filesystem::path model = f.model_path;
  if (model.is_relative() && !std::filesystem::exists(model)) {
    std::filesystem::path beside = path.parent_path() / model;
    if (std::filesystem::exists(beside)) f.model_path = beside.string();
  }
  return f;
}

void check_model_checksum(const PlanFile& plan, const std::filesystem::path& model) {
  std::string sum = sha256_file(model);
  if (sum != plan.model_sha256)
    throw_bad_input(model.string(), fmt::format("SHA-256 {} differs from the plan's {} ({})", sum.substr(0, 12),
                                                plan.model_sha256.substr(0, 12), plan.path),
                    "re-plan this model with smp-plan");
}

}  // namespace smp::plan
