#include "train/worker.hpp"

#include "comm/device_comm.hpp"
#include "comm/job_monitor.hpp"
#include "core/clock.hpp"
#include "core/error.hpp"
#include "core/io.hpp"
#include "graph/export.hpp"
#include "graph/loader.hpp"
#include "graph/tensor_parallel.hpp"
#include "plan/messages.hpp"
#include "plan/plan_io.hpp"
#include "runtime/backends.hpp"
#include "runtime/executor.hpp"
#include "runtime/loss.hpp"
#include "schedule/timeline.hpp"
#include "schedule/validate.hpp"
#include "train/checkpoint.hpp"
#include "train/data.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include <unistd.h>


namespace smp::train {

namespace fs = std::filesystem;
using runtime::Tensor;

void report_status(const std::string& token, int rank, const std::string& text) {
  if (token.empty()) return;
  const std::string line = comm::status_line(token, rank, text);
  (void)write_all(2, line.data(), line.size());
}

std::string interrupted_message(int64_t step, const fs::path& checkpoint_dir) {
  if (checkpoint_dir.empty())
    return fmt::format("interrupted at step {}; no checkpoint (run with --checkpoint-dir DIR to keep the progress)", step);
  return fmt::format("interrupted at step {}; checkpoint {} (resume with --resume)", step, step_dir(checkpoint_dir, step).string());
}

std::string rank_backend(const plan::PlanFile& plan, int rank, const std::string& option) {
  if (!option.empty() && option != "auto") return option;
  const auto& rj = plan.json["ranks"][static_cast<size_t>(rank)];
  return rj.value("device_kind", std::string("cpu")) == "gpu" ? "cuda" : "cpu";
}

int rank_device(const plan::PlanFile& plan, int rank, int device_option) {
  return device_option >= 0 ? device_option : plan.ranks.at(static_cast<size_t>(rank)).local_device;
}

namespace {

// The precision the plan trains in on backend `kind`.
DType plan_compute_dtype(const plan::PlanFile& plan, const std::string& kind) {
  DType d = DType::F32;
  if (plan.dtype == "bf16") d = DType::BF16;
  else if (!plan.dtype.empty() && plan.dtype != "fp32")
    throw_bad_input(plan.path, fmt::format("options.dtype '{}' is not fp32 or bf16", plan.dtype));
  if (d == DType::BF16 && kind == "cpu")
    throw_bad_input(plan.path, "the plan trains in bf16 (smp-plan --dtype bf16), which needs the cuda backend",
                    "run with --backend cuda on a GPU machine, or plan with --dtype fp32 to train on the CPU");
  return d;
}

}  // namespace

void check_devices(const plan::PlanFile& plan, const RunOptions& opts, bool all_local) {
  int n = -2;  // CUDA devices here; asked only when a rank needs one
  // The plan's predicted peak of each pipeline rank, summed per local GPU (ranks may share one).
  const auto& peaks = plan.json.contains("prediction") ? plan.json["prediction"].value("peak_bytes", nlohmann::json()) : nlohmann::json();
  std::map<int, std::pair<double, std::vector<int>>> on_device;
  for (size_t r = 0; r < plan.ranks.size(); ++r) {
    const std::string kind = rank_backend(plan, static_cast<int>(r), opts.backend);
    plan_compute_dtype(plan, kind);
    if (kind != "cuda") continue;
    if (n == -2) n = all_local ? runtime::cuda_device_count() : -1;
    std::string stages;
    for (int s : plan.ranks[r].stages) {
      if (!stages.empty()) stages += ',';
      stages += std::to_string(s);
    }
    const int dev = rank_device(plan, static_cast<int>(r), opts.device);
    const std::string where = fmt::format("rank {} (stage {}) on cuda:{}", r, stages, dev);
    if (!runtime::cuda_compiled()) throw_bad_input(where, runtime::cuda_unavailable_reason(), "use --backend cpu");
    if (n == 0) throw_bad_input(where, runtime::cuda_unavailable_reason(), "use --backend cpu");
    if (n > 0 && dev >= n)
      throw_bad_input(where, fmt::format("no such device: this machine has {} CUDA device{}", n, n == 1 ? "" : "s"),
                      "use --device, or a plan made for this machine's devices");
    const auto pr = static_cast<size_t>(plan.ranks[r].pipeline_rank);
    auto& [bytes, ranks] = on_device[dev];
    if (peaks.is_array() && pr < peaks.size() && peaks[pr].is_number()) bytes += peaks[pr].get<double>();
    ranks.push_back(static_cast<int>(r));
  }
  // Every GPU has the memory the plan predicts for the ranks it runs (its total: the workers
  // have not started; CUDA_VISIBLE_DEVICES applies, as in the workers).
  if (n <= 0) return;
  for (const auto& [dev, use] : on_device) {
    const auto& [bytes, ranks] = use;
    const double have = static_cast<double>(runtime::cuda_device_memory(dev));
    if (have <= 0 || bytes <= have) continue;
    constexpr double gib = 1024.0 * 1024.0 * 1024.0;
    throw_bad_input(fmt::format("cuda:{}", dev),
                    fmt::format("the plan predicts a peak of {:.2f} GiB for rank{} {} on it, more than its {:.2f} GiB", bytes / gib,
                                ranks.size() == 1 ? "" : "s", fmt::join(ranks, ","), have / gib),
                    "plan with a cluster file of this machine's GPUs (their memory_bytes), or a smaller batch");
  }
}

namespace {

using clock = std::chrono::steady_clock;

// The settings that shape the optimizer's updates, those of its kind only: recorded in each
// checkpoint's manifest, so that --resume can say which ones a resumed run changed.
nlohmann::json hyperparameters(const OptimizerConfig& c) {
  nlohmann::json j{{"lr", c.lr}, {"weight_decay", c.weight_decay}, {"warmup_steps", c.warmup_steps},
                   {"lr_decay", c.cosine ? "cosine" : "constant"}, {"clip_norm", c.clip_norm}};
  if (c.cosine) {
    j["lr_decay_steps"] = c.total_steps;
    j["min_lr"] = c.min_lr;
  }
  if (c.kind == OptimizerKind::Momentum) j["momentum"] = c.momentum;
  if (c.kind == OptimizerKind::AdamW) {
    j["beta1"] = c.beta1;
    j["beta2"] = c.beta2;
    j["eps"] = c.eps;
  }
  return j;
}

// "lr 0.02 (the checkpoint's run: 0.01), ..." for each setting of `now` that `was` records
// otherwise; empty when none differs (or `was` records none: an older checkpoint).
std::string hyperparameter_changes(const nlohmann::json& was, const nlohmann::json& now) {
  std::string out;
  if (!was.is_object()) return out;
  auto text = [](const nlohmann::json& v) { return v.is_number() ? fmt::format("{:g}", v.get<double>()) : v.get<std::string>(); };
  for (const auto& [k, v] : now.items()) {
    auto it = was.find(k);
    if (it == was.end() || *it == v) continue;  // nlohmann compares 0 and 0.0 as numbers: equal
    std::string option = k;  // the key is smp-run's option with '_' for '-'
    std::replace(option.begin(), option.end(), '_', '-');
    out += fmt::format("{}--{} {} (the checkpoint's run: {})", out.empty() ? "" : ", ", option, text(v), text(*it));
  }
  return out;
}


// Tensors crossing the cut between stage k and k+1, in value-id order.
struct Cut {
  std::vector<int> values;
  std::vector<int> grads;  // the floating ones: their gradients travel back
};

struct StageRt {
  int index = 0;
  std::vector<int> nodes;
  std::unique_ptr<runtime::StageExecutor> ex;
  std::vector<int> group;  // global ranks of its replicas on this tensor-parallel lane (ascending)
  bool writer = false;     // replica 0: writes checkpoints (its shard), counts in the gradient norm
  bool reporter = false;   // replica 0, tensor-parallel rank 0: its times go into the report
  std::map<int, DeviceParamState> opt;  // the whole tensors' optimizer state, on the stage's backend
  // Optimizer-state sharding (CPU): this replica's slice [zero_begin, zero_end) of the stage's
  // parameters laid end to end (each parameter at zero_offset[p]), its optimizer state per
  // parameter segment (host), and its slice of the summed gradients.
  std::map<int, size_t> zero_offset;
  size_t zero_total = 0, zero_chunk = 0, zero_begin = 0, zero_end = 0;
  std::map<int, ParamState> zero_opt;
  std::vector<float> zero_grad;
  std::vector<float> grad_buf;  // the stage's gradients packed for their sum over the replicas (host)
  int64_t updates = 0;  // optimizer steps applied (every parameter is updated every step)
  // measured per microbatch, summed over steps after the first
  double f_s = 0, b_s = 0, w_s = 0;
  int64_t nf = 0, nb = 0, nw = 0;
  double u_s = 0;  // its optimizer step (gradient norm + update), summed over the same steps
  double cpu_s = 0;  // CPU time of the threads running its kernels during its forwards and backwards (f_s + b_s + w_s of wall time)
  int64_t nu = 0;
  // Data-parallel gradient sums on the device (a device data plane and replicas): the
  // parameters in buckets of ~25 MiB, in the order the backward completes their gradients; a
  // bucket is summed once the stage's last backward of the step has passed every node that
  // adds to it (the first consumer of each of its parameters, in model order).
  struct Bucket {
    std::vector<int> params;
    int trigger = 0;  // launch once the last backward has reached a node at or before this one
    bool launched = false;
    std::vector<comm::Request> reqs;
  };
  std::vector<Bucket> buckets;
  size_t next_bucket = 0;
  int final_action = -1;  // index in the rank's list of the step's last X / W of this stage
};

struct Key {
  int stage, mb;
  bool operator<(const Key& o) const { return stage != o.stage ? stage < o.stage : mb < o.mb; }
};

struct Pending {
  comm::Request req;
  std::vector<char> buf;
};

// A message of device tensors (a device data plane): one request per tensor; the tensors stay
// alive until every request has completed (a send's buffer is reused only then).
struct DevicePending {
  std::vector<comm::Request> reqs;
  std::vector<Tensor> tensors;
};

// Message buffers by size, reused from step to step (the cut sizes repeat every microbatch): a
// fresh 256 KiB buffer cost 100-190 us of page faults on the development VM, on the computing
// thread, against ~30 us to fill a reused one.
class BufferPool {
 public:
  std::vector<char> take(size_t n) {
    auto& v = free_[n];
    if (v.empty()) return std::vector<char>(n);
    std::vector<char> b = std::move(v.back());
    v.pop_back();
    return b;
  }
  void give(std::vector<char>&& b) {
    if (!b.empty()) free_[b.size()].push_back(std::move(b));
  }

 private:
  std::map<size_t, std::vector<std::vector<char>>> free_;
};

// A cut tensor's bytes as the stages hold it (bf16 activations with bf16 compute).
int64_t tensor_bytes(const graph::Graph& g, int v, DType compute) {
  return byte_size(g.value(v).shape, dtype_size(runtime::exec_dtype(g.value(v), compute)));
}

std::vector<char> pack(runtime::Backend& be, const std::vector<Tensor>& ts, BufferPool& pool) {
  size_t total = 0;
  for (const auto& t : ts) total += static_cast<size_t>(t.bytes());
  std::vector<char> buf = pool.take(total);
  size_t off = 0;
  for (const auto& t : ts) {
    be.to_host(t, buf.data() + off);
    off += static_cast<size_t>(t.bytes());
  }
  return buf;
}

std::vector<Tensor> unpack(runtime::Backend& be, const graph::Graph& g, const std::vector<int>& values,
                           const std::vector<char>& buf, DType compute) {
  std::vector<Tensor> out;
  size_t off = 0;
  for (int v : values) {
    const auto& val = g.value(v);
    out.push_back(be.from_host(runtime::exec_dtype(val, compute), val.shape, buf.data() + off));
    off += static_cast<size_t>(tensor_bytes(g, v, compute));
  }
  SMP_CHECK(off == buf.size(), "message of {} bytes for {} bytes of tensors", buf.size(), off);
  return out;
}

schedule::SpanKind span_kind(schedule::Op op) {
  switch (op) {
    case schedule::Op::Forward: return schedule::SpanKind::Forward;
    case schedule::Op::BackwardInput: return schedule::SpanKind::BackwardInput;
    case schedule::Op::BackwardWeight: return schedule::SpanKind::BackwardWeight;
    case schedule::Op::Backward: return schedule::SpanKind::Backward;
    case schedule::Op::SendAct: case schedule::Op::RecvAct: return schedule::SpanKind::SendAct;
    case schedule::Op::SendGrad: case schedule::Op::RecvGrad: return schedule::SpanKind::SendGrad;
  }
  return schedule::SpanKind::Other;
}

struct MeasuredSpan {
  double start, end;
  int op, stage, mb, lane;  // op: a schedule::Op, or one of the end-of-step parts below
};
constexpr int kNormSpan = -1;    // the gradient norm's part of the optimizer step
constexpr int kUpdateSpan = -2;  // the weight update

std::string fmt_duration(double s) {
  if (!(s >= 0) || s > 1e7) return "--:--";
  int64_t t = static_cast<int64_t>(std::llround(s));
  if (t >= 3600) return fmt::format("{}:{:02d}:{:02d}", t / 3600, (t / 60) % 60, t % 60);
  return fmt::format("{}:{:02d}", t / 60, t % 60);
}

// The collectives of a stage's tensor-parallel group over comm::Communicator.
class TpGroup final : public runtime::Collectives {
 public:
  TpGroup(comm::Communicator& c, std::vector<int> ranks, int index) : c_(c), ranks_(std::move(ranks)), index_(index) {}
  int size() const override { return static_cast<int>(ranks_.size()); }
  int rank() const override { return index_; }
  void all_reduce(float* data, size_t count, runtime::ReduceOp op) override {
    if (op == runtime::ReduceOp::Sum) c_.allreduce_sum(data, count, ranks_);
    else c_.allreduce_max(data, count, ranks_);
  }

 private:
  comm::Communicator& c_;
  std::vector<int> ranks_;
  int index_;
};

class Worker {
 public:
  Worker(comm::Communicator& c, const RunOptions& o) : c_(c), o_(o) {}

  RunResult run();

 private:
  void load();
  void setup_data_plane();
  void check_channels();
  void make_buckets(StageRt& st);
  void on_backward_node(int stage, int node, char pass);
  void launch_buckets(StageRt& st, int upto_node);
  void check_hosts();
  void restore();
  double step(int64_t k, bool record);
  void reduce_and_update(int64_t k, bool record, double* loss, double* norm);
  void commit_running_stats();
  void checkpoint(int64_t steps_done);
  StageCheckpoint snapshot(StageRt& st, int64_t done, bool optimizer);
  void report_end(double mean_step_s);
  void export_model(int64_t steps_done);
  void gather_timeline();

  Tensor input_slice(int value, int64_t step, int mb);
  Tensor label_slice(int64_t step, int mb);
  std::vector<int64_t> microbatch_rows(int64_t step, int mb);

  comm::Communicator& c_;  // the control plane (MPI, or the local launcher's sockets)
  // The data plane: a device communicator (NCCL, CUDA IPC) when the rank computes on a GPU, else
  // c_ itself (host buffers). device_comm_ is declared after be_ and stages_ (below): it goes
  // first, while the backend's stream and device still exist.
  comm::Communicator* net_ = nullptr;
  bool device_data_ = false;
  std::vector<plan::Channel> channels_;  // this rank's, from the plan
  int final_stage_ = -1;                 // the stage whose last backward of the step is running
  int be_device_ = 0;                    // the CUDA device of a cuda backend
  RunOptions o_;  // a copy: load() may take the optimizer from the plan
  std::unique_ptr<runtime::Backend> be_;
  std::string device_;  // "cpu", "cuda:0"
  DType compute_ = DType::F32;
  plan::PlanFile plan_;
  graph::Graph g_;
  std::vector<int> stage_of_node_;
  std::vector<Cut> cuts_;
  std::vector<StageRt> stages_;  // this rank's
  std::map<int, StageRt*> by_index_;
  std::unique_ptr<comm::Communicator> device_comm_;
  int S_ = 0, m_ = 0, d_ = 1, replica_ = 0;
  // Tensor parallelism: this rank's place in the layout, the groups found in the model, the
  // model's structure as a whole (data, export), its group's collectives, and the part of the
  // vocabulary its output holds (vocabulary-parallel loss).
  plan::RankLayout layout_;
  int T_ = 1, tp_ = 0;
  graph::TpAnalysis tp_analysis_;
  graph::Graph whole_;
  std::unique_ptr<TpGroup> tp_group_;
  graph::VocabRange vocab_;
  bool vocab_parallel_ = false;
  bool zero_ = false;  // optimizer state split over the replicas
  // A parameter of this rank's graph counts in the global gradient norm here: a split one on
  // every rank of its group, a replicated one on rank 0 of the group only.
  bool counts_in_norm(int p) const { return T_ == 1 || tp_ == 0 || tp_analysis_.params.count(p) != 0; }
  void zero_layout(StageRt& st);
  const graph::Graph& whole() const { return T_ > 1 ? whole_ : g_; }
  int64_t B_ = 0, b_ = 0;
  int output_value_ = -1;
  bool need_data_ = false;
  Dataset data_;
  runtime::LossKind loss_kind_ = runtime::LossKind::CrossEntropy;
  int64_t start_step_ = 0;
  std::vector<MeasuredSpan> spans_;  // the recorded step
  BufferPool pool_;                  // message buffers
  std::vector<int64_t> rows_;        // rows of step rows_step_'s global batch
  int64_t rows_step_ = -1;
  double recorded_step_s_ = 0;
  clock::time_point step_t0_;        // start of the current step (the recorded spans' zero)
  std::vector<std::string> host_of_rank_;  // where each rank runs (rank 0)
  int hosts_ = 1;                    // hosts the job runs on (rank 0)
  bool stop_agreed_ = false;         // some rank was asked to stop (seen in the step's all-reduce)
  int stop_signal_ = 0;
  int64_t device_allocations_after_step1_ = 0;  // the backend's device allocations once a step ran
};

void Worker::load() {
  plan_ = plan::read_plan(o_.plan);
  if (o_.optimizer_from_plan) o_.optimizer.kind = parse_optimizer(plan_.optimizer, o_.plan.string() + ": options.optimizer");
  if (o_.default_lr) o_.optimizer.lr = default_lr(o_.optimizer.kind);
  if (static_cast<int>(plan_.ranks.size()) != c_.size())
    throw_bad_input(o_.plan.string(), fmt::format("the plan has {} ranks, the job {}", plan_.ranks.size(), c_.size()),
                    "start as many processes as the plan's ranks");
  const plan::PlanRank& me = plan_.ranks.at(static_cast<size_t>(c_.rank()));
  replica_ = me.replica;
  layout_ = plan_.rank_layout();
  T_ = plan_.tensor_parallel;
  tp_ = me.tp_rank;
  zero_ = plan_.shard_optimizer && plan_.data_parallel > 1;
  S_ = static_cast<int>(plan_.stage.size());
  m_ = plan_.microbatches;
  d_ = plan_.data_parallel;
  B_ = plan_.batch_size;
  b_ = plan_.microbatch_size;
  if (b_ * m_ * d_ != B_)
    throw_bad_input(o_.plan.string(), fmt::format("batch {} is not {} replicas x {} microbatches x {}", B_, d_, m_, b_));

  const fs::path model = plan_.model_path;  // read_plan resolved it
  if (c_.rank() == 0) plan::check_model_checksum(plan_, model);

  std::set<std::string> mine;
  for (int s : me.stages)
    for (const auto& p : plan_.stage.at(static_cast<size_t>(s)).parameters) mine.insert(p);
  graph::LoadOptions lo;
  lo.batch_size = b_;
  lo.dims = plan_.dims;
  lo.frozen = plan_.frozen;
  lo.load_weights = true;
  lo.want_weight = [&](const std::string& n) { return mine.count(n) != 0; };
  if (T_ == 1) {
    g_ = graph::load_graph(model, lo);
  } else {
    // The structure first: which parameters split, and which of those are stored outside the
    // model (then only this rank's part of their bytes is read). The file is parsed once.
    const graph::ParsedModel parsed(model);
    graph::LoadOptions shape_only = lo;
    shape_only.load_weights = false;
    whole_ = graph::load_graph(parsed, shape_only);
    tp_analysis_ = graph::analyze_tensor_parallel(whole_, T_);
    if (!tp_analysis_.any())
      throw_bad_input(o_.plan.string(), fmt::format("the plan splits layers {} ways, but the model has no groups that split "
                                                    "that many ways",
                                                    T_),
                      "was the plan made for this model?");
    std::set<std::string> split_outside;
    for (const auto& [p, sp] : tp_analysis_.params)
      if (whole_.value(p).external) split_outside.insert(whole_.value(p).name);
    lo.want_weight = [&](const std::string& n) { return mine.count(n) != 0 && !split_outside.count(n); };
    graph::Graph src = graph::load_graph(parsed, lo);
    SMP_CHECK(src.values.size() == whole_.values.size() && src.nodes.size() == whole_.nodes.size(),
              "the model loaded twice differs");
    graph::ShardOptions so;
    so.load_weights = true;
    so.want_weight = [&](const std::string& n) { return mine.count(n) != 0; };
    g_ = graph::shard_graph(src, tp_analysis_, tp_, so);
    vocab_ = graph::output_vocab_range(whole_, tp_analysis_, tp_);
    vocab_parallel_ = tp_analysis_.sharded_output >= 0;
    tp_group_ = std::make_unique<TpGroup>(c_, layout_.tp_group(replica_, me.pipeline_rank), tp_);
  }

  std::map<std::string, int> node_index;
  for (size_t i = 0; i < g_.nodes.size(); ++i) node_index[g_.nodes[i].name] = static_cast<int>(i);
  stage_of_node_.assign(g_.nodes.size(), -1);
  std::vector<std::vector<int>> nodes_of(static_cast<size_t>(S_));
  for (const auto& st : plan_.stage) {
    for (const auto& name : st.nodes) {
      auto it = node_index.find(name);
      if (it == node_index.end())
        throw_bad_input(o_.plan.string(), "stage " + std::to_string(st.index) + " names node '" + name + "', which the model lacks",
                        "was the plan made for this model?");
      stage_of_node_[static_cast<size_t>(it->second)] = st.index;
      nodes_of[static_cast<size_t>(st.index)].push_back(it->second);
    }
  }
  for (size_t i = 0; i < g_.nodes.size(); ++i)
    if (stage_of_node_[i] < 0)
      throw_bad_input(o_.plan.string(), "node '" + g_.nodes[i].name + "' is in no stage", "was the plan made for this model?");
  for (int s = 0; s < S_; ++s) {
    auto& ns = nodes_of[static_cast<size_t>(s)];
    if (!std::is_sorted(ns.begin(), ns.end()))
      throw_bad_input(o_.plan.string(), fmt::format("stage {}'s nodes are not in the model's order", s));
  }
  if (g_.outputs.size() != 1)
    throw_bad_input(plan_.model_path, fmt::format("the model has {} outputs; smp trains models with one", g_.outputs.size()));
  output_value_ = g_.outputs[0];
  int out_stage = stage_of_node_[static_cast<size_t>(g_.value(output_value_).producer)];
  if (out_stage != S_ - 1)
    throw_bad_input(o_.plan.string(), fmt::format("the model's output is computed on stage {}, not the last", out_stage));

  // Cuts: activations produced up to stage k and read after it.
  cuts_.assign(static_cast<size_t>(std::max(S_ - 1, 0)), Cut{});
  for (size_t v = 0; v < g_.values.size(); ++v) {
    const auto& val = g_.value(static_cast<int>(v));
    if (val.producer < 0) continue;
    int from = stage_of_node_[static_cast<size_t>(val.producer)];
    int last = from;
    for (int cn : val.consumers) last = std::max(last, stage_of_node_[static_cast<size_t>(cn)]);
    for (int k = from; k < last; ++k) {
      cuts_[static_cast<size_t>(k)].values.push_back(static_cast<int>(v));
      if (is_floating(val.dtype)) cuts_[static_cast<size_t>(k)].grads.push_back(static_cast<int>(v));
    }
  }

  // The device: --backend, else the kind of device the plan put this rank on; the plan's
  // precision (smp-plan --dtype).
  const std::string kind = rank_backend(plan_, c_.rank(), o_.backend);
  compute_ = plan_compute_dtype(plan_, kind);
  runtime::BackendOptions bo;
  bo.threads = std::max(o_.threads, 1);
  bo.device = rank_device(plan_, c_.rank(), o_.device);
  be_device_ = bo.device;
  bo.tf32 = o_.tf32;
  device_ = kind == "cuda" ? fmt::format("cuda:{}", bo.device) : "cpu";
  const std::string first_stages = me.stages.empty() ? "" : fmt::format("stage {}", me.stages.front());
  try {
    be_ = runtime::make_backend(kind, bo);
  } catch (const Error& e) {
    throw Error(e.kind(), first_stages.empty() ? e.what() : first_stages + ": " + e.what());
  }
  // The split optimizer state and the tensor-parallel collectives live in host memory: CPU workers.
  if (kind != "cpu" && (zero_ || T_ > 1))
    throw_bad_input(o_.plan.string(), fmt::format("rank {} on {}: {} runs on CPU workers only in this version", c_.rank(),
                                                  device_, zero_ ? "the split optimizer state (--shard-optimizer)" : "tensor parallelism"),
                    "plan with --tensor-parallel 1 --no-shard-optimizer, or run with --backend cpu");

  // Microbatches each stage keeps between its forward and its last backward, from the action
  // list: the activation arena is sized for that many.
  const auto& acts = plan_.schedule.actions.at(static_cast<size_t>(me.pipeline_rank));
  std::map<std::pair<int, int>, size_t> last_bwd;
  for (size_t i = 0; i < acts.size(); ++i)
    if (acts[i].op == schedule::Op::Backward || acts[i].op == schedule::Op::BackwardInput || acts[i].op == schedule::Op::BackwardWeight)
      last_bwd[{acts[i].stage, acts[i].mb}] = i;
  std::map<int, int> in_flight, peak_in_flight;
  for (size_t i = 0; i < acts.size(); ++i) {
    const auto& a = acts[i];
    if (a.op == schedule::Op::Forward) peak_in_flight[a.stage] = std::max(peak_in_flight[a.stage], ++in_flight[a.stage]);
    auto lb = last_bwd.find({a.stage, a.mb});
    if (lb != last_bwd.end() && lb->second == i) --in_flight[a.stage];
  }

  for (int s : me.stages) {
    StageRt st;
    st.index = s;
    st.nodes = nodes_of[static_cast<size_t>(s)];
    runtime::ExecutorOptions eo;
    // Messages move between kernels; during the step's last backward of the stage, the buckets
    // of gradients it has completed start their sums.
    eo.after_node = [this, s](int node, char pass, double) {
      net_->progress();
      if (final_stage_ == s) on_backward_node(s, node, pass);
    };
    eo.seed = o_.seed;
    eo.running_stats = o_.deferred_batch_norm ? runtime::ExecutorOptions::RunningStats::Deferred
                                              : runtime::ExecutorOptions::RunningStats::PerMicrobatch;
    eo.compute_dtype = compute_;
    eo.microbatches_in_flight = std::max(1, peak_in_flight[s]);
    eo.collectives = tp_group_.get();
    try {
      st.ex = std::make_unique<runtime::StageExecutor>(g_, st.nodes, *be_, eo);
      // The optimizer state in one reservation, allocated on the first update.
      int64_t pbytes = 0;
      for (int p : st.ex->parameters()) pbytes += runtime::pool_bytes(g_.value(p).bytes());
      be_->reserve(runtime::MemoryPool::OptimizerState, state_bytes(o_.optimizer.kind, pbytes));
    } catch (const Error& e) {
      throw Error(e.kind(), fmt::format("stage {} on {}: {}", s, device_, e.what()));
    }
    st.group = layout_.dp_group(plan_.schedule.rank_of(s), tp_);
    st.writer = replica_ == 0;
    st.reporter = replica_ == 0 && tp_ == 0;
    if (zero_) zero_layout(st);
    for (int v : st.ex->inputs()) {
      if (g_.value(v).kind == graph::ValueKind::Input) {
        need_data_ = true;
        continue;
      }
      const auto& incoming = cuts_[static_cast<size_t>(std::max(s - 1, 0))].values;
      SMP_CHECK(s > 0 && std::find(incoming.begin(), incoming.end(), v) != incoming.end(),
                "stage {} reads '{}' which does not cross into it", s, g_.value(v).name);
    }
    if (s == S_ - 1) need_data_ = true;
    stages_.push_back(std::move(st));
  }
  for (auto& st : stages_) by_index_[st.index] = &st;

  net_ = &c_;
  setup_data_plane();

  if (need_data_) {
    // The data matches the whole model (all of the vocabulary), not this rank's part of it.
    if (o_.data.empty()) data_ = synthetic_dataset(whole(), std::max<int64_t>(o_.synthetic_rows, B_), o_.seed + 17);
    else data_ = load_dataset(o_.data, whole(), B_);
    const graph::Value& out = whole().value(output_value_);
    loss_kind_ = runtime::choose_loss(out.shape, data_.has_labels ? data_.labels.dtype : DType::F32);
    if (loss_kind_ != runtime::LossKind::Scalar && !data_.has_labels)
      throw_bad_input(o_.data.string(), "no labels.npy for a model whose output is not a scalar loss");
    if (vocab_parallel_ && loss_kind_ != runtime::LossKind::CrossEntropy)
      throw_bad_input(o_.data.empty() ? o_.plan.string() : o_.data.string(),
                      "the plan splits the model's output over the vocabulary: it trains with cross-entropy on integer labels",
                      "give int64 class labels, or plan with --tensor-parallel 1");
  }
}

void Worker::setup_data_plane() {
  // This rank's channels, from the plan: each cut's tensors as this rank holds them (the
  // precision it computes in).
  std::vector<plan::Boundary> bounds(cuts_.size());
  auto boundary_tensor = [&](int v) {
    const graph::Value& val = g_.value(v);
    return plan::BoundaryTensor{val.name, std::string(dtype_name(runtime::exec_dtype(val, compute_))), tensor_bytes(g_, v, compute_)};
  };
  for (size_t k = 0; k < cuts_.size(); ++k) {
    for (int v : cuts_[k].values) bounds[k].activations.push_back(boundary_tensor(v));
    for (int v : cuts_[k].grads) bounds[k].gradients.push_back(boundary_tensor(v));
  }
  std::vector<plan::RankPlace> places;
  for (const auto& r : plan_.ranks) places.push_back({r.replica, r.pipeline_rank, r.tp_rank});
  channels_ = plan::rank_channels(plan_.schedule, places, bounds, c_.rank());
  const auto& acts = plan_.schedule.actions.at(static_cast<size_t>(plan_.ranks[static_cast<size_t>(c_.rank())].pipeline_rank));
  for (size_t i = 0; i < acts.size(); ++i)
    if (acts[i].op == schedule::Op::Backward || acts[i].op == schedule::Op::BackwardWeight)
      by_index_.at(acts[i].stage)->final_action = static_cast<int>(i);
  check_channels();

  // Tensors stay on the GPU when every rank computes on one (the decision is the same on every
  // rank: it reads only the plan and the options); SMP_DEVICE_COMM=off stages them through host
  // memory and the control plane instead, as between CPU workers.
  bool all_cuda = comm::device_comm_compiled();
  for (int r = 0; r < c_.size() && all_cuda; ++r) all_cuda = rank_backend(plan_, r, o_.backend) == "cuda";
  const char* off = std::getenv("SMP_DEVICE_COMM");
  device_data_ = all_cuda && !(off && std::string(off) == "off");
  if (!device_data_) return;
  comm::DeviceCommConfig cfg;
  cfg.device = be_device_;
  cfg.compute_stream = be_->native_stream();
  cfg.timeout_s = c_.timeout_s();
  if (const char* sg = std::getenv("SMP_SAME_GPU"); sg && *sg) cfg.same_gpu = sg;
  for (const plan::Channel& ch : channels_) {
    comm::DeviceChannel dc;
    dc.send = ch.from == c_.rank();
    dc.peer = dc.send ? ch.to : ch.from;
    dc.kind = static_cast<int>(ch.dir);
    for (const plan::Message& m : ch.messages) {
      dc.tags.push_back(m.tag);
      dc.bytes.push_back(m.bytes);
      dc.what.push_back(plan::describe(m));
    }
    cfg.channels.push_back(std::move(dc));
  }
  for (auto& st : stages_) {
    if (st.group.size() <= 1) continue;
    if (std::find(cfg.groups.begin(), cfg.groups.end(), st.group) == cfg.groups.end()) cfg.groups.push_back(st.group);
    make_buckets(st);
  }
  const std::string token = o_.status_token;
  const int rank = c_.rank();
  cfg.on_fatal = [token, rank](const std::string& msg) {
    std::fprintf(stderr, "error: rank %d: %s\n", rank, msg.c_str());
    std::fflush(stderr);
    report_status(token, rank, "error " + msg);
    std::_Exit(1);
  };
  device_comm_ = comm::make_device_comm(c_, cfg);
  net_ = device_comm_.get();
}

void Worker::check_channels() {
  // Both ends of every channel compare their lists (NCCL has no tags: a difference would be a
  // hang or a silent mix-up). Each sends its own over the control plane and compares the other's.
  const int me = c_.rank();
  constexpr int kTag = (1 << 20) + 20;
  auto tag_of = [](const plan::Channel& ch) { return kTag + 2 * ((ch.from < ch.to ? 0 : 2) + static_cast<int>(ch.dir)); };
  const size_t n = channels_.size();
  std::vector<std::string> mine(n), theirs(n);
  std::vector<int64_t> my_size(n), their_size(n);
  // The sizes: the lower rank of each pair sends first and the higher answers once it has
  // received, so that only one side opens the connection. (Both at once, Open MPI's TCP transport
  // between hosts can drop one with a warning, "an inbound MPI TCP connection request ... from an
  // IP address that is unexpected", before it retries.) Sends to higher peers are posted without
  // waiting, so no rank waits on another's wait.
  std::vector<comm::Request> reqs, from_lower;
  for (size_t i = 0; i < n; ++i) {
    const plan::Channel& ch = channels_[i];
    const int peer = ch.from == me ? ch.to : ch.from;
    mine[i] = plan::serialize(ch);
    my_size[i] = static_cast<int64_t>(mine[i].size());
    if (me <= peer) reqs.push_back(c_.isend(&my_size[i], sizeof(int64_t), peer, tag_of(ch)));
    (me <= peer ? reqs : from_lower).push_back(c_.irecv(&their_size[i], sizeof(int64_t), peer, tag_of(ch)));
  }
  for (auto& r : from_lower) c_.wait(r, "the message lists of the channels (start-up check)");
  for (size_t i = 0; i < n; ++i) {
    const plan::Channel& ch = channels_[i];
    const int peer = ch.from == me ? ch.to : ch.from;
    if (me > peer) reqs.push_back(c_.isend(&my_size[i], sizeof(int64_t), peer, tag_of(ch)));
  }
  for (auto& r : reqs) c_.wait(r, "the message lists of the channels (start-up check)");
  reqs.clear();
  for (size_t i = 0; i < n; ++i) {
    const plan::Channel& ch = channels_[i];
    const int peer = ch.from == me ? ch.to : ch.from;
    theirs[i].resize(static_cast<size_t>(their_size[i]));
    reqs.push_back(c_.isend(mine[i].data(), mine[i].size(), peer, tag_of(ch) + 1));
    reqs.push_back(c_.irecv(theirs[i].data(), theirs[i].size(), peer, tag_of(ch) + 1));
  }
  for (auto& r : reqs) c_.wait(r, "the message lists of the channels (start-up check)");
  for (size_t i = 0; i < n; ++i) {
    const plan::Channel& ch = channels_[i];
    const int peer = ch.from == me ? ch.to : ch.from;
    const std::string diff = plan::compare_channel(ch, me, plan::parse_channel(theirs[i]), peer);
    if (!diff.empty())
      throw_bad_input(fmt::format("rank {}", me), diff,
                      "start every rank from the same plan file, build and options (--backend; the plan's dtype)");
  }
}

void Worker::make_buckets(StageRt& st) {
  // A parameter's gradient is complete once the backward has passed its first consumer in model
  // order (the backward runs the nodes in reverse).
  std::map<int, int> first;
  const auto& params = st.ex->parameters();
  const std::set<int> is_param(params.begin(), params.end());
  for (int node : st.nodes)
    for (int v : g_.nodes[static_cast<size_t>(node)].inputs)
      if (v >= 0 && is_param.count(v) && !first.count(v)) first[v] = node;
  std::vector<int> order(params.begin(), params.end());
  std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
    const int fa = first.count(a) ? first[a] : -1, fb = first.count(b) ? first[b] : -1;
    return fa > fb;
  });
  constexpr int64_t kBucketBytes = int64_t{25} << 20;  // as PyTorch's DDP
  StageRt::Bucket cur;
  int64_t bytes = 0;
  cur.trigger = std::numeric_limits<int>::max();
  for (int p : order) {
    cur.params.push_back(p);
    cur.trigger = std::min(cur.trigger, first.count(p) ? first[p] : -1);
    bytes += g_.value(p).bytes();
    if (bytes >= kBucketBytes) {
      st.buckets.push_back(std::move(cur));
      cur = StageRt::Bucket{};
      cur.trigger = std::numeric_limits<int>::max();
      bytes = 0;
    }
  }
  if (!cur.params.empty()) st.buckets.push_back(std::move(cur));
}

void Worker::on_backward_node(int stage, int node, char pass) {
  if (pass != 'G' && pass != 'W') return;
  StageRt& st = *by_index_.at(stage);
  if (!st.buckets.empty()) launch_buckets(st, node);
}

void Worker::launch_buckets(StageRt& st, int upto_node) {
  bool any = false;
  while (st.next_bucket < st.buckets.size() && st.buckets[st.next_bucket].trigger >= upto_node) {
    StageRt::Bucket& b = st.buckets[st.next_bucket++];
    for (int p : b.params) {
      Tensor& gt = st.ex->gradient(p);
      b.reqs.push_back(net_->iallreduce_sum(gt.data<float>(), static_cast<size_t>(gt.numel()), st.group));
    }
    b.launched = true;
    any = true;
  }
  if (any) net_->flush();
}

std::vector<int64_t> Worker::microbatch_rows(int64_t step, int mb) {
  // The step's global batch, drawn once per step (a shuffled epoch costs a permutation).
  if (rows_step_ != step) {
    rows_ = batch_rows(data_.rows, step, B_, o_.shuffle, o_.seed);
    rows_step_ = step;
  }
  const auto& all = rows_;
  auto first = all.begin() + (static_cast<int64_t>(replica_) * m_ + mb) * b_;
  return std::vector<int64_t>(first, first + b_);
}

Tensor Worker::input_slice(int value, int64_t step, int mb) {
  const auto& val = g_.value(value);
  for (const auto& a : data_.inputs)
    if (a.name == val.name) {
      auto rows = microbatch_rows(step, mb);
      std::string bytes = gather_rows(a, rows);
      return be_->from_host(val.dtype, val.shape, bytes.data());
    }
  SMP_CHECK(false, "no data for input '{}'", val.name);
  return {};
}

Tensor Worker::label_slice(int64_t step, int mb) {
  auto rows = microbatch_rows(step, mb);
  std::string bytes = gather_rows(data_.labels, rows);
  Shape s{b_};
  s.insert(s.end(), data_.labels.sample.begin(), data_.labels.sample.end());
  return be_->from_host(data_.labels.dtype, s, bytes.data());
}

// One training step through the rank's lowered list. Returns this rank's share of the loss.
double Worker::step(int64_t k, bool record) {
  const auto& actions = plan_.schedule.actions.at(static_cast<size_t>(plan_.ranks[static_cast<size_t>(c_.rank())].pipeline_rank));
  const double scale = 1.0 / static_cast<double>(m_ * d_);
  auto t0 = clock::now();
  step_t0_ = t0;
  auto rank_of_stage = [&](int s) {
    // The global rank running stage s in this replica and tensor-parallel lane (the lists'
    // peers count pipeline ranks).
    return layout_.rank(replica_, plan_.schedule.rank_of(s), tp_);
  };
  std::map<Key, Pending> recv_act, recv_grad;
  std::vector<Pending> sends;
  std::map<Key, DevicePending> drecv_act, drecv_grad;  // device data plane
  std::vector<DevicePending> dsends;
  std::map<Key, std::vector<Tensor>> act_out;   // cut tensors leaving stage s for mb (Key.stage = s)
  std::map<Key, std::vector<Tensor>> grad_out;  // gradients leaving stage s upstream (cut s-1)
  std::map<Key, std::vector<Tensor>> grad_in;   // gradients entering stage s (cut s)
  std::map<Key, Tensor> loss_grad;
  double loss = 0;
  if (record) spans_.clear();

  for (auto& st : stages_) {
    st.ex->zero_grad();
    // Random streams (Dropout) keyed by the step and the global microbatch index.
    st.ex->set_random_step(k, static_cast<int64_t>(replica_) * m_);
    st.next_bucket = 0;
    for (auto& b : st.buckets) {
      b.launched = false;
      b.reqs.clear();
    }
  }

  auto tag_of = [&](const schedule::Action& a) { return static_cast<int>(schedule::message_id(plan_.schedule, a)); };
  // Sends the tensors waiting in `ready` under {s, mb} to the rank of `to_stage`: packed into
  // one host buffer, or (device data plane) tensor by tensor from the device.
  auto send = [&](std::map<Key, std::vector<Tensor>>& ready, const schedule::Action& a, int to_stage, const char* what) {
    auto it = ready.find({a.stage, a.mb});
    SMP_CHECK(it != ready.end(), "{} of stage {} microbatch {} sent before it was computed", what, a.stage, a.mb);
    if (device_data_) {
      DevicePending p;
      p.tensors = std::move(it->second);
      for (Tensor& t : p.tensors) p.reqs.push_back(net_->isend(t.raw(), static_cast<size_t>(t.bytes()), rank_of_stage(to_stage), tag_of(a)));
      dsends.push_back(std::move(p));
      ready.erase(it);
      return;
    }
    Pending p;
    p.buf = pack(*be_, it->second, pool_);
    ready.erase(it);
    p.req = c_.isend(p.buf.data(), p.buf.size(), rank_of_stage(to_stage), tag_of(a));
    sends.push_back(std::move(p));
  };
  // Posts the receive of `values` from the rank of `from_stage`.
  auto post = [&](std::map<Key, Pending>& posted, std::map<Key, DevicePending>& dposted, const schedule::Action& a,
                  const std::vector<int>& values, int from_stage) {
    if (device_data_) {
      DevicePending p;
      for (int v : values) {
        const auto& val = g_.value(v);
        p.tensors.push_back(be_->empty(runtime::exec_dtype(val, compute_), val.shape));
        p.reqs.push_back(net_->irecv(p.tensors.back().raw(), static_cast<size_t>(p.tensors.back().bytes()), rank_of_stage(from_stage), tag_of(a)));
      }
      dposted[{a.stage, a.mb}] = std::move(p);
      return;
    }
    Pending p;
    int64_t bytes = 0;
    for (int v : values) bytes += tensor_bytes(g_, v, compute_);
    p.buf = pool_.take(static_cast<size_t>(bytes));
    p.req = c_.irecv(p.buf.data(), p.buf.size(), rank_of_stage(from_stage), tag_of(a));
    posted[{a.stage, a.mb}] = std::move(p);
  };
  // The tensors `values` for {stage, mb}: from its posted receive, else computed on this rank
  // by the neighbouring stage (kept in `local` under `local_key`).
  auto take = [&](std::map<Key, Pending>& posted, std::map<Key, DevicePending>& dposted, std::map<Key, std::vector<Tensor>>& local,
                  Key key, Key local_key, const std::vector<int>& values, const std::string& what) {
    std::vector<Tensor> out;
    auto d = dposted.find(key);
    if (d != dposted.end()) {
      for (auto& r : d->second.reqs) net_->wait(r, what);
      out = std::move(d->second.tensors);
      dposted.erase(d);
      return out;
    }
    auto r = posted.find(key);
    if (r != posted.end()) {
      c_.wait(r->second.req, what);
      out = unpack(*be_, g_, values, r->second.buf, compute_);
      pool_.give(std::move(r->second.buf));
      posted.erase(r);
      return out;
    }
    auto l = local.find(local_key);
    SMP_CHECK(l != local.end(), "stage {} microbatch {}: {} neither received nor computed", key.stage, key.mb, what);
    out = std::move(l->second);
    local.erase(l);
    return out;
  };
  // Device sends whose every tensor has left: their buffers go back to the arena.
  auto reap_sends = [&] {
    std::erase_if(dsends, [&](DevicePending& p) {
      bool done = true;
      for (auto& r : p.reqs) done = net_->test(r) && done;
      return done;
    });
  };

  for (size_t ai = 0; ai < actions.size(); ++ai) {
    const auto& a = actions[ai];
    // The sends and receives of a tick (the run of them between two compute actions) go out
    // together.
    if (a.is_compute()) net_->flush();
    auto ts = clock::now();
    double cpu0 = 0;
    // A compute action's wall and CPU time, from ts / cpu0, into its stage's sums (after step 0).
    auto account = [&](StageRt& st, double& wall_s, int64_t& count) {
      be_->synchronize();  // a device backend's time is its queue's (no-op on the CPU)
      if (k == 0) return;
      const double cpu1 = be_->compute_cpu_s();  // read inside the wall interval: CPU time never exceeds it per thread
      wall_s += seconds_since(ts), ++count;
      st.cpu_s += cpu1 - cpu0;
    };
    const int s = a.stage, mb = a.mb;
    switch (a.op) {
      case schedule::Op::RecvAct: post(recv_act, drecv_act, a, cuts_[static_cast<size_t>(s - 1)].values, s - 1); break;
      case schedule::Op::RecvGrad: post(recv_grad, drecv_grad, a, cuts_[static_cast<size_t>(s)].grads, s + 1); break;
      case schedule::Op::Forward: {
        StageRt& st = *by_index_.at(s);
        std::vector<Tensor> incoming;
        if (s > 0)
          incoming = take(recv_act, drecv_act, act_out, {s, mb}, {s - 1, mb}, cuts_[static_cast<size_t>(s - 1)].values,
                          fmt::format("activations of stage {}, microbatch {}", s - 1, mb));
        ts = clock::now();  // compute starts: waiting for the input is idle time, not forward time
        cpu0 = be_->compute_cpu_s();
        const auto& in_cut = s > 0 ? cuts_[static_cast<size_t>(s - 1)].values : std::vector<int>{};
        auto from_cut = [&](int v) -> Tensor {
          auto it = std::find(in_cut.begin(), in_cut.end(), v);
          SMP_CHECK(it != in_cut.end(), "value {} not in the incoming cut", v);
          return incoming[static_cast<size_t>(it - in_cut.begin())];
        };
        std::vector<Tensor> inputs;
        for (int v : st.ex->inputs())
          inputs.push_back(g_.value(v).kind == graph::ValueKind::Input ? input_slice(v, k, mb) : from_cut(v));
        auto outs = st.ex->forward(mb, inputs);
        const auto& exo = st.ex->outputs();
        auto from_out = [&](int v) -> Tensor {
          auto it = std::find(exo.begin(), exo.end(), v);
          if (it != exo.end()) return outs[static_cast<size_t>(it - exo.begin())];
          return from_cut(v);  // passing through
        };
        if (s + 1 < S_) {
          std::vector<Tensor> leaving;
          for (int v : cuts_[static_cast<size_t>(s)].values) leaving.push_back(from_out(v));
          act_out[{s, mb}] = std::move(leaving);
        } else {
          Tensor out = from_out(output_value_);
          Tensor labels = loss_kind_ == runtime::LossKind::Scalar ? Tensor{} : label_slice(k, mb);
          auto lr = vocab_parallel_ ? runtime::cross_entropy_vocab_parallel(*be_, out, labels, vocab_.begin, vocab_.total,
                                                                             *tp_group_, static_cast<float>(scale))
                                    : runtime::apply_loss(loss_kind_, *be_, out, labels, static_cast<float>(scale));
          if (tp_ == 0) loss += lr.loss * scale;  // every rank of the group has the loss; one counts it
          loss_grad[{s, mb}] = lr.grad;
        }
        account(st, st.f_s, st.nf);
        break;
      }
      case schedule::Op::SendAct: send(act_out, a, s + 1, "activations"); break;
      case schedule::Op::Backward:
      case schedule::Op::BackwardInput: {
        StageRt& st = *by_index_.at(s);
        std::vector<Tensor> gin;  // gradients of cut s tensors, in cut order
        if (s + 1 < S_)
          gin = take(recv_grad, drecv_grad, grad_out, {s, mb}, {s + 1, mb}, cuts_[static_cast<size_t>(s)].grads,
                     fmt::format("gradients from stage {}, microbatch {}", s + 1, mb));
        ts = clock::now();
        cpu0 = be_->compute_cpu_s();
        const auto& gcut = s + 1 < S_ ? cuts_[static_cast<size_t>(s)].grads : std::vector<int>{};
        auto grad_of = [&](int v) -> Tensor {
          auto it = std::find(gcut.begin(), gcut.end(), v);
          return it == gcut.end() ? Tensor{} : gin[static_cast<size_t>(it - gcut.begin())];
        };
        std::vector<Tensor> out_grads;
        for (int v : st.ex->outputs()) {
          if (v == output_value_ && s == S_ - 1) out_grads.push_back(loss_grad.at({s, mb}));
          else out_grads.push_back(grad_of(v));
        }
        const bool final = static_cast<int>(ai) == st.final_action;
        if (final) final_stage_ = s;
        std::vector<Tensor> in_grads = a.op == schedule::Op::Backward ? st.ex->backward(mb, out_grads)
                                                                      : st.ex->backward_input(mb, out_grads);
        final_stage_ = -1;
        if (final && !st.buckets.empty()) launch_buckets(st, std::numeric_limits<int>::min());
        loss_grad.erase({s, mb});
        if (s > 0) {
          const auto& exi = st.ex->inputs();
          std::vector<Tensor> up;
          for (int v : cuts_[static_cast<size_t>(s - 1)].grads) {
            const auto& val = g_.value(v);
            Tensor gsum;
            auto it = std::find(exi.begin(), exi.end(), v);
            if (it != exi.end()) {
              size_t i = static_cast<size_t>(it - exi.begin());
              if (st.ex->input_gets_gradient(i) && in_grads[i].defined()) gsum = in_grads[i];
            }
            Tensor through = grad_of(v);  // a pass-through tensor's gradient from downstream
            if (through.defined()) {
              if (gsum.defined()) {
                Tensor sum = be_->empty(runtime::exec_dtype(val, compute_), val.shape);
                be_->copy(sum, gsum);
                be_->axpy(1.0f, through, sum);
                gsum = sum;
              } else {
                gsum = through;
              }
            }
            if (!gsum.defined()) gsum = be_->zeros(runtime::exec_dtype(val, compute_), val.shape);
            up.push_back(gsum);
          }
          grad_out[{s, mb}] = std::move(up);
        }
        account(st, st.b_s, st.nb);
        break;
      }
      case schedule::Op::SendGrad: send(grad_out, a, s - 1, "gradients"); break;
      case schedule::Op::BackwardWeight: {
        StageRt& st = *by_index_.at(s);
        cpu0 = be_->compute_cpu_s();
        const bool final = static_cast<int>(ai) == st.final_action;
        if (final) final_stage_ = s;
        st.ex->backward_weight(mb);
        final_stage_ = -1;
        if (final && !st.buckets.empty()) launch_buckets(st, std::numeric_limits<int>::min());
        account(st, st.w_s, st.nw);
        break;
      }
    }
    if (device_data_ && a.is_compute()) reap_sends();
    if (record) {
      double t1 = seconds_since(t0), t_start = std::chrono::duration<double>(ts - t0).count();
      int lane = a.is_comm() ? 1 : 0;
      if (!a.is_comm() || (a.op == schedule::Op::SendAct || a.op == schedule::Op::SendGrad))
        spans_.push_back({t_start, t1, static_cast<int>(a.op), s, mb, lane});
    }
  }
  net_->flush();
  for (auto& p : sends) {
    c_.wait(p.req, "delivery of a message to rank " + std::to_string(p.req.peer()));
    pool_.give(std::move(p.buf));
  }
  for (auto& p : dsends)
    for (auto& r : p.reqs) net_->wait(r, "delivery of a message to rank " + std::to_string(r.peer()));
  dsends.clear();
  for (auto& st : stages_)
    SMP_CHECK(st.ex->pending() == 0, "stage {}: {} microbatches still stashed at the end of the step", st.index, st.ex->pending());
  SMP_CHECK(recv_act.empty() && recv_grad.empty() && drecv_act.empty() && drecv_grad.empty() && act_out.empty() && grad_out.empty(),
            "messages left over at the end of step {}", k);
  return loss;
}

void Worker::commit_running_stats() {
  // Deferred batch norm: the step's statistics of every replica's microbatches, added up, then
  // the same update on every replica (their running statistics stay identical).
  for (auto& st : stages_) {
    std::vector<double> sums = st.ex->running_stat_sums();
    if (sums.empty()) continue;
    if (st.group.size() > 1) c_.allreduce_sum(sums.data(), sums.size(), st.group);
    st.ex->commit_running_stats(sums);
  }
}

// Optimizer-state sharding: the stage's parameters laid end to end, padded to a multiple of the
// replicas; replica i owns block i.
void Worker::zero_layout(StageRt& st) {
  size_t off = 0;
  for (int p : st.ex->parameters()) {
    st.zero_offset[p] = off;
    off += static_cast<size_t>(g_.value(p).numel());
  }
  st.zero_total = off;
  st.zero_chunk = (off + static_cast<size_t>(d_) - 1) / static_cast<size_t>(d_);
  st.zero_begin = std::min(off, st.zero_chunk * static_cast<size_t>(replica_));
  st.zero_end = std::min(off, st.zero_begin + st.zero_chunk);
}

namespace {

// Calls f(parameter, first element of it, first element of the slice, length) for every
// parameter overlapping [begin, end) of a stage's parameters laid end to end.
template <class F>
void for_each_segment(const std::map<int, size_t>& offset, const graph::Graph& g, size_t begin, size_t end, F&& f) {
  for (const auto& [p, off] : offset) {
    const size_t n = static_cast<size_t>(g.value(p).numel());
    const size_t lo = std::max(begin, off), hi = std::min(end, off + n);
    if (lo < hi) f(p, lo - off, lo - begin, hi - lo);
  }
}

}  // namespace

void Worker::reduce_and_update(int64_t k, bool record, double* loss, double* norm) {
  // Data-parallel reduction of each stage's gradients. On the device: the buckets launched
  // during the backward (the rest now), completed here. Else one packed host buffer per stage:
  // an all-reduce, or with the optimizer state split, a reduce-scatter (each replica keeps the
  // sum of its own slice).
  for (auto& st : stages_) {
    if (st.group.size() <= 1 || !device_data_) continue;
    launch_buckets(st, std::numeric_limits<int>::min());
    for (auto& b : st.buckets)
      for (auto& r : b.reqs) net_->wait(r, fmt::format("the gradient sum of stage {} among ranks {}", st.index, fmt::join(st.group, ",")));
  }
  for (auto& st : stages_) {
    if (device_data_ || (st.group.size() <= 1 && !zero_)) continue;
    // One buffer per stage, kept from step to step: a fresh one of a model's size costs a page
    // fault per 4 KiB (several milliseconds a step for 7 MB on a VM).
    std::vector<float>& buf = st.grad_buf;
    size_t total = 0;
    for (int p : st.ex->parameters()) total += static_cast<size_t>(st.ex->gradient(p).numel());
    buf.resize(total);
    size_t at = 0;
    for (int p : st.ex->parameters()) {
      Tensor& gt = st.ex->gradient(p);
      be_->to_host(gt, buf.data() + at);
      at += static_cast<size_t>(gt.numel());
    }
    if (zero_) {
      buf.resize(st.zero_chunk * static_cast<size_t>(d_), 0.0f);
      st.zero_grad.assign(st.zero_chunk, 0.0f);
      c_.reduce_scatter_sum(buf.data(), st.zero_grad.data(), st.zero_chunk, st.group);
      continue;
    }
    c_.allreduce_sum(buf.data(), buf.size(), st.group);
    size_t off = 0;
    for (int p : st.ex->parameters()) {
      Tensor& gt = st.ex->gradient(p);
      Tensor sum = be_->from_host(DType::F32, gt.shape(), buf.data() + off);
      be_->copy(gt, sum);
      off += static_cast<size_t>(gt.numel());
    }
  }
  // The optimizer step of each stage: its part of the global gradient norm, then its update
  // (timed for the end-of-run report, and recorded for the timeline).
  auto since_step = [&](clock::time_point t) { return std::chrono::duration<double>(t - step_t0_).count(); };
  auto timed = [&](StageRt& st, int op, clock::time_point t_begin) {
    const auto t_end = clock::now();
    if (k > 0) st.u_s += std::chrono::duration<double>(t_end - t_begin).count();
    if (record) spans_.push_back({since_step(t_begin), since_step(t_end), op, st.index, 0, 0});
  };
  // The loss and the global gradient norm over every stage: each element counted once (a
  // replica-0 copy, or each replica's slice; a split parameter on every rank of its group, a
  // replicated one on the group's rank 0); and the ranks asked to stop (by SIGINT, SIGTERM,
  // SIGUSR1): all see the same sums, so all stop after the same step.
  const int asked = o_.stop_signal ? static_cast<int>(*o_.stop_signal) : 0;
  double sums[5] = {*loss, 0.0, asked == SIGINT ? 1.0 : 0.0, asked == SIGTERM ? 1.0 : 0.0,
                    asked != 0 && asked != SIGINT && asked != SIGTERM ? 1.0 : 0.0};
  for (auto& st : stages_) {
    if (!zero_ && !st.writer) continue;
    const auto t_begin = clock::now();
    if (zero_) {
      for_each_segment(st.zero_offset, g_, st.zero_begin, st.zero_end, [&](int p, size_t, size_t at, size_t n) {
        if (counts_in_norm(p)) sums[1] += sum_of_squares(std::span<const float>(st.zero_grad.data() + at, n));
      });
    } else {
      std::vector<Tensor> grads;
      for (int p : st.ex->parameters())
        if (counts_in_norm(p)) grads.push_back(st.ex->gradient(p));
      sums[1] += be_->sum_of_squares(grads);
    }
    timed(st, kNormSpan, t_begin);
  }
  std::vector<int> world(static_cast<size_t>(c_.size()));
  std::iota(world.begin(), world.end(), 0);
  c_.allreduce_sum(sums, 5, world);
  *loss = sums[0];
  *norm = std::sqrt(sums[1]);
  stop_agreed_ = sums[2] > 0 || sums[3] > 0 || sums[4] > 0;
  stop_signal_ = sums[2] > 0 ? SIGINT : sums[3] > 0 ? SIGTERM : stop_agreed_ ? SIGUSR1 : 0;
  if (!std::isfinite(*loss))
    throw_failure(fmt::format("step {}", k + 1), fmt::format("the loss is {}", *loss),
                  "lower --lr or check the data; no checkpoint was written for this step");
  double factor = clip_factor(o_.optimizer, *norm);
  double lr = lr_at(o_.optimizer, k);
  for (auto& st : stages_) {
    const auto t_begin = clock::now();
    if (zero_) {
      // Update this replica's slice, then gather every replica's updated slice.
      if (factor != 1.0)
        for (float& x : st.zero_grad) x *= static_cast<float>(factor);
      std::vector<float> mine(st.zero_chunk, 0.0f), all(st.zero_chunk * static_cast<size_t>(d_));
      for_each_segment(st.zero_offset, g_, st.zero_begin, st.zero_end, [&](int p, size_t in_p, size_t at, size_t n) {
        float* w = st.ex->parameter(p).data<float>() + in_p;
        apply_update(o_.optimizer, lr, std::span<float>(w, n), std::span<const float>(st.zero_grad.data() + at, n),
                     st.zero_opt[p]);
        std::copy(w, w + n, mine.data() + at);
      });
      c_.all_gather(mine.data(), all.data(), st.zero_chunk, st.group);
      for (int p : st.ex->parameters()) {
        Tensor& w = st.ex->parameter(p);
        const size_t off = st.zero_offset[p];
        std::copy(all.data() + off, all.data() + off + static_cast<size_t>(w.numel()), w.data<float>());
      }
    } else {
      for (int p : st.ex->parameters()) {
        Tensor& w = st.ex->parameter(p);
        Tensor& gt = st.ex->gradient(p);
        if (factor != 1.0) be_->scale(static_cast<float>(factor), gt);
        apply_update(o_.optimizer, lr, *be_, w, gt, st.opt[p]);
      }
    }
    be_->synchronize();  // the update's time is the device's
    timed(st, kUpdateSpan, t_begin);
    ++st.updates;
    if (k > 0) ++st.nu;
  }
}

// A stage's parameters and running statistics (and with `optimizer`, the parameters' optimizer
// state) as a checkpoint: this rank's shard of a tensor-parallel stage. With the optimizer state
// split over the replicas every replica must call it (the state is gathered whole); the writer's
// copy is the one to write.
StageCheckpoint Worker::snapshot(StageRt& st, int64_t done, bool optimizer) {
  StageCheckpoint cp;
  cp.step = done;
  cp.stage = st.index;
  for (int b : st.ex->buffers()) {
    const auto& val = g_.value(b);
    const Tensor& t = st.ex->buffer(b);
    NamedTensor nt{val.name, DType::F32, val.shape, std::string(static_cast<size_t>(t.bytes()), '\0')};
    be_->to_host(t, nt.bytes.data());
    cp.tensors.push_back(std::move(nt));
  }
  cp.tp_rank = T_ > 1 ? tp_ : -1;
  const int slots = state_slots(o_.optimizer.kind);
  std::vector<std::vector<float>> gathered(static_cast<size_t>(slots));
  if (optimizer && zero_)
    for (int k = 0; k < slots; ++k) {
      std::vector<float> mine(st.zero_chunk, 0.0f);
      for_each_segment(st.zero_offset, g_, st.zero_begin, st.zero_end, [&](int p, size_t, size_t at, size_t n) {
        const ParamState& ps = st.zero_opt[p];
        const std::vector<float>& v = k == 0 ? ps.slot0 : ps.slot1;
        if (v.size() == n) std::copy(v.begin(), v.end(), mine.begin() + static_cast<std::ptrdiff_t>(at));
      });
      gathered[static_cast<size_t>(k)].resize(st.zero_chunk * static_cast<size_t>(d_));
      c_.all_gather(mine.data(), gathered[static_cast<size_t>(k)].data(), st.zero_chunk, st.group);
    }
  nlohmann::json steps = nlohmann::json::object();
  for (int p : st.ex->parameters()) {
    const auto& val = g_.value(p);
    Tensor& w = st.ex->parameter(p);
    NamedTensor t{val.name, DType::F32, val.shape, std::string(static_cast<size_t>(w.bytes()), '\0')};
    be_->to_host(w, t.bytes.data());
    cp.tensors.push_back(std::move(t));
    if (!optimizer) continue;
    auto slot = [&](const float* v, size_t n, const char* suffix) {
      NamedTensor x{val.name + suffix, DType::F32, val.shape,
                    std::string(reinterpret_cast<const char*>(v), n * sizeof(float))};
      cp.tensors.push_back(std::move(x));
    };
    const size_t n = static_cast<size_t>(val.numel());
    if (zero_) {
      // Before the first update the state is empty (as without sharding).
      if (st.updates > 0)
        for (int k = 0; k < slots; ++k) slot(gathered[static_cast<size_t>(k)].data() + st.zero_offset[p], n, k == 0 ? ".state0" : ".state1");
    } else {
      const DeviceParamState& ps = st.opt[p];
      std::vector<float> host;
      for (const auto& [v, suffix] : {std::pair{&ps.slot0, ".state0"}, std::pair{&ps.slot1, ".state1"}}) {
        if (!v->defined()) continue;
        host.resize(static_cast<size_t>(v->numel()));
        be_->to_host(*v, host.data());
        slot(host.data(), host.size(), suffix);
      }
    }
    steps[val.name] = st.updates;
  }
  if (optimizer)
    cp.meta = {{"optimizer", optimizer_name(o_.optimizer.kind)}, {"param_steps", steps}, {"model_sha256", plan_.model_sha256}};
  return cp;
}

void Worker::checkpoint(int64_t done) {
  for (auto& st : stages_) {
    if (!st.writer && !zero_) continue;
    StageCheckpoint cp = snapshot(st, done, true);
    if (st.writer) write_stage_checkpoint(o_.checkpoint_dir, cp);
  }
  c_.barrier();
  if (c_.rank() == 0) {
    commit_checkpoint(o_.checkpoint_dir, done,
                      {{"stages", S_}, {"model", plan_.model_path}, {"model_sha256", plan_.model_sha256},
                       {"plan", o_.plan.string()}, {"optimizer", optimizer_name(o_.optimizer.kind)},
                       {"hyperparameters", hyperparameters(o_.optimizer)}, {"tensor_parallel", T_}});
    prune_checkpoints(o_.checkpoint_dir, o_.keep_checkpoints);
  }
  c_.barrier();
}

void Worker::check_hosts() {
  // Rank 0 learns every rank's host and compares the grouping with the plan's: ranks the plan
  // keeps on one host should share one (their boundary was priced at the host's link), ranks it
  // puts on different hosts should not. smp-run places them so; srun or mpirun started by hand
  // place them as told.
  constexpr size_t kLen = 256;
  const int tag = (1 << 20) + 9;
  std::vector<char> mine(kLen, '\0');
  ::gethostname(mine.data(), kLen - 1);
  host_of_rank_.assign(1, mine.data());
  if (c_.size() < 2) return;
  if (c_.rank() != 0) {
    auto r = c_.isend(mine.data(), kLen, 0, tag);
    c_.wait(r, "the host name for rank 0");
    return;
  }
  std::vector<std::string> real(static_cast<size_t>(c_.size()));
  real[0] = mine.data();
  std::vector<char> buf(kLen);
  for (int r = 1; r < c_.size(); ++r) {
    auto q = c_.irecv(buf.data(), kLen, r, tag);
    c_.wait(q, "rank " + std::to_string(r) + "'s host name");
    buf.back() = '\0';
    real[static_cast<size_t>(r)] = buf.data();
  }
  hosts_ = static_cast<int>(std::set<std::string>(real.begin(), real.end()).size());
  host_of_rank_ = real;
  for (int a = 0; a < c_.size(); ++a)
    for (int b = a + 1; b < c_.size(); ++b) {
      const std::string &pa = plan_.ranks[static_cast<size_t>(a)].host, &pb = plan_.ranks[static_cast<size_t>(b)].host;
      const std::string &ra = real[static_cast<size_t>(a)], &rb = real[static_cast<size_t>(b)];
      std::string what;
      if (pa == pb && ra != rb)
        what = fmt::format("ranks {} and {} share host {} in the plan but run on {} and {}", a, b, pa, ra, rb);
      else if (pa != pb && ra == rb)
        what = fmt::format("ranks {} and {} run on one host ({}) where the plan puts them on {} and {}", a, b, ra, pa, pb);
      if (what.empty()) continue;
      std::fprintf(stderr, "note: %s (smp-run started once places every rank as planned)\n", what.c_str());
      return;
    }
}

void Worker::restore() {
  auto latest = latest_checkpoint(o_.checkpoint_dir);
  if (!latest)
    throw_bad_input("--resume", "no complete checkpoint in " + o_.checkpoint_dir.string(), "run without --resume first");
  auto manifest = read_manifest(o_.checkpoint_dir, *latest);
  const std::string mf = (step_dir(o_.checkpoint_dir, *latest) / "manifest.json").string();
  if (manifest.value("stages", -1) != S_)
    throw_bad_input(mf, fmt::format("written for {} stages, the plan has {}", manifest.value("stages", -1), S_),
                    "resume with the plan the checkpoint was made with");
  if (manifest.value("tensor_parallel", 1) != T_)
    throw_bad_input(mf, fmt::format("written for {}-way tensor parallelism, the plan has {}", manifest.value("tensor_parallel", 1), T_),
                    "resume with the plan the checkpoint was made with");
  if (manifest.value("model_sha256", std::string()) != plan_.model_sha256)
    throw_bad_input(mf, "written for another model");
  if (manifest.value("optimizer", std::string()) != optimizer_name(o_.optimizer.kind))
    throw_bad_input("--optimizer", "the checkpoint was written with " + manifest.value("optimizer", std::string("?")),
                    "resume with the same optimizer");
  // Other settings are the user's to change (a lower rate for the rest of a run), but not
  // silently: a resume that forgot one would train on differently from the run it continues.
  if (c_.rank() == 0 && !o_.quiet)
    if (const std::string changed = hyperparameter_changes(manifest.value("hyperparameters", nlohmann::json()),
                                                           hyperparameters(o_.optimizer));
        !changed.empty())
      fmt::print("note: resuming step {} with other settings than the run that wrote it: {}\n", *latest, changed);
  for (auto& st : stages_) {
    const fs::path file = stage_file(o_.checkpoint_dir, *latest, st.index, T_ > 1 ? tp_ : -1);
    StageCheckpoint cp = read_stage_checkpoint(file);
    std::map<std::string, const NamedTensor*> byname;
    for (const auto& t : cp.tensors) byname[t.name] = &t;
    for (int p : st.ex->parameters()) {
      const auto& val = g_.value(p);
      auto it = byname.find(val.name);
      if (it == byname.end() || it->second->shape != val.shape)
        throw_bad_input(file.string(), "no tensor '" + val.name + "' of shape " + shape_str(val.shape));
      Tensor t = be_->from_host(DType::F32, val.shape, it->second->bytes.data());
      be_->copy(st.ex->parameter(p), t);
      ParamState ps;
      // The state of the whole tensor, or with the optimizer state split, this replica's slice.
      size_t from = 0, count = static_cast<size_t>(val.numel());
      bool held = true;
      if (zero_) {
        held = false;
        for_each_segment(st.zero_offset, g_, st.zero_begin, st.zero_end, [&](int q, size_t in_p, size_t, size_t n) {
          if (q != p) return;
          from = in_p;
          count = n;
          held = true;
        });
      }
      auto load_slot = [&](const char* suffix, std::vector<float>& v) {
        auto s = byname.find(val.name + suffix);
        if (s == byname.end()) return;
        if (s->second->bytes.size() != static_cast<size_t>(val.numel()) * sizeof(float))
          throw_bad_input(file.string(), "tensor '" + val.name + suffix + "' has the wrong size");
        v.resize(count);
        std::memcpy(v.data(), s->second->bytes.data() + from * sizeof(float), count * sizeof(float));
      };
      if (held) {
        load_slot(".state0", ps.slot0);
        load_slot(".state1", ps.slot1);
      }
      ps.steps = cp.meta["param_steps"].value(val.name, int64_t{0});
      st.updates = ps.steps;
      if (zero_) {
        if (held) st.zero_opt[p] = std::move(ps);
      } else {
        // The whole tensor's state onto the stage's backend, in its optimizer-state pool.
        DeviceParamState& ds = st.opt[p];
        ds.steps = ps.steps;
        runtime::PoolScope pool(*be_, runtime::MemoryPool::OptimizerState);
        if (!ps.slot0.empty()) ds.slot0 = be_->from_host(DType::F32, val.shape, ps.slot0.data());
        if (!ps.slot1.empty()) ds.slot1 = be_->from_host(DType::F32, val.shape, ps.slot1.data());
      }
    }
    for (int b : st.ex->buffers()) {
      const auto& val = g_.value(b);
      auto it = byname.find(val.name);
      if (it == byname.end() || it->second->shape != val.shape)
        throw_bad_input(stage_file(o_.checkpoint_dir, *latest, st.index).string(),
                        "no running statistics '" + val.name + "' of shape " + shape_str(val.shape));
      be_->copy(st.ex->buffer(b), be_->from_host(DType::F32, val.shape, it->second->bytes.data()));
    }
  }
  start_step_ = *latest;
}

void Worker::gather_timeline() {
  // Every rank sends its recorded spans to rank 0.
  const int tag = (1 << 20) + 7;
  if (c_.rank() != 0) {
    int64_t n = static_cast<int64_t>(spans_.size());
    auto r1 = c_.isend(&n, sizeof n, 0, tag);
    c_.wait(r1, "timeline size");
    if (n > 0) {
      auto r2 = c_.isend(spans_.data(), spans_.size() * sizeof(MeasuredSpan), 0, tag + 1);
      c_.wait(r2, "timeline");
    }
    return;
  }
  std::vector<std::vector<MeasuredSpan>> all(static_cast<size_t>(c_.size()));
  all[0] = spans_;
  for (int r = 1; r < c_.size(); ++r) {
    int64_t n = 0;
    auto q = c_.irecv(&n, sizeof n, r, tag);
    c_.wait(q, "timeline size");
    all[static_cast<size_t>(r)].resize(static_cast<size_t>(n));
    if (n > 0) {
      auto q2 = c_.irecv(all[static_cast<size_t>(r)].data(), static_cast<size_t>(n) * sizeof(MeasuredSpan), r, tag + 1);
      c_.wait(q2, "timeline");
    }
  }
  schedule::Timeline t;
  t.title = fmt::format("measured: {} on {} ranks, {} microbatches (last step)", plan_.schedule.name, c_.size(), m_);
  for (int r = 0; r < c_.size(); ++r) t.rows.push_back(fmt::format("rank {}", r));
  t.unit = "s";
  for (int r = 0; r < c_.size(); ++r)
    for (const auto& sp : all[static_cast<size_t>(r)]) {
      schedule::Span s;
      s.row = r;
      s.lane = sp.lane;
      s.start = sp.start;
      s.end = sp.end;
      if (sp.op == kNormSpan || sp.op == kUpdateSpan) {
        s.kind = schedule::SpanKind::Update;
        s.label = "opt";
        s.name = fmt::format("optimizer step of stage {}: {}", sp.stage, sp.op == kNormSpan ? "gradient norm" : "update");
      } else {
        auto op = static_cast<schedule::Op>(sp.op);
        s.kind = span_kind(op);
        s.label = std::to_string(sp.mb);
        s.name = schedule::to_string(schedule::compute(op, sp.stage, sp.mb));
      }
      s.shade = plan_.schedule.chunks > 1 ? sp.stage / plan_.stages : 0;
      t.spans.push_back(std::move(s));
    }
  t.footer = fmt::format("measured step {:.4f} s", recorded_step_s_);
  if (!o_.trace.empty()) schedule::write_chrome_trace(o_.trace, t);
  if (!o_.timeline.empty()) schedule::write_svg(o_.timeline, t);
}

void Worker::report_end(double mean_step_s) {
  // Per stage: measured forward / backward per microbatch (from the stage's replica 0), its
  // process's CPU time over the wall time of those, and each rank's idle fraction, next to the
  // plan's prediction.
  constexpr size_t kPer = 8;
  const size_t idle_at = kPer * static_cast<size_t>(S_);
  std::vector<double> v(idle_at + static_cast<size_t>(c_.size()), 0.0);
  for (auto& st : stages_) {
    if (!st.reporter) continue;
    size_t i = kPer * static_cast<size_t>(st.index);
    v[i] = st.nf ? st.f_s / static_cast<double>(st.nf) : 0;
    v[i + 1] = st.nb ? st.b_s / static_cast<double>(st.nb) : 0;
    v[i + 2] = st.nw ? st.w_s / static_cast<double>(st.nw) : 0;
    v[i + 3] = st.nu ? st.u_s / static_cast<double>(st.nu) : 0;
    const double wall = st.f_s + st.b_s + st.w_s;
    v[i + 4] = wall > 0 ? st.cpu_s / wall : 0;
    // Memory of the stage's rank: the most its tensors held at once, and what its backend took
    // from the device (pools, workspace); its device allocations after the first step.
    const runtime::MemoryStats m = be_->memory();
    v[i + 5] = static_cast<double>(m.peak_bytes);
    v[i + 6] = static_cast<double>(m.reserved_bytes);
    v[i + 7] = static_cast<double>(m.device_allocations - device_allocations_after_step1_);
  }
  // Idle: neither computing nor in its optimizer step (as the plan counts its bubble).
  double busy = 0;
  for (auto& st : stages_) busy += st.f_s + st.b_s + st.w_s + st.u_s;
  int64_t steps_timed = 0;
  for (auto& st : stages_) steps_timed = std::max<int64_t>(steps_timed, st.nf / std::max(m_, 1));
  v[idle_at + static_cast<size_t>(c_.rank())] = steps_timed > 0 && mean_step_s > 0
                                                  ? 1.0 - busy / (static_cast<double>(steps_timed) * mean_step_s)
                                                  : 0.0;
  std::vector<int> world(static_cast<size_t>(c_.size()));
  std::iota(world.begin(), world.end(), 0);
  c_.allreduce_sum(v.data(), v.size(), world);
  if (c_.rank() != 0) return;
  const auto& pj = plan_.json;
  struct Row {
    int rank0;
    double f, b, u, cpu_per_wall, idle;  // measured
    double pf, pb, pu;                   // predicted
    double peak, reserved, late_allocs;  // measured memory of the rank
    double ppeak;                        // predicted peak of the rank
  };
  std::vector<Row> rows;
  double idle = 0;
  for (int r = 0; r < c_.size(); ++r) idle += v[idle_at + static_cast<size_t>(r)];
  for (int s = 0; s < S_; ++s) {
    const size_t i = kPer * static_cast<size_t>(s);
    const auto& tj = pj["stages"][static_cast<size_t>(s)]["time"];
    const int rank0 = plan_.stage[static_cast<size_t>(s)].ranks.at(0);
    const int prank = plan_.stage[static_cast<size_t>(s)].pipeline_rank;
    const auto& pk = pj["prediction"]["peak_bytes"];
    const double ppeak = pk.is_array() && static_cast<size_t>(prank) < pk.size() ? pk[static_cast<size_t>(prank)].get<double>() : 0.0;
    rows.push_back({rank0, v[i], v[i + 1] + v[i + 2], v[i + 3], v[i + 4], v[idle_at + static_cast<size_t>(rank0)],
                    tj.value("forward_s", 0.0), tj.value("backward_input_s", 0.0) + tj.value("backward_weight_s", 0.0),
                    tj.value("update_s", 0.0), v[i + 5], v[i + 6], v[i + 7], ppeak});
  }
  const double pstep = pj["prediction"].value("step_s", 0.0), pbubble = pj["prediction"].value("bubble", 0.0);
  // The first step is not timed (start-up, first allocations): with fewer than two steps there
  // is no steady-state measurement to compare, and the summary says so instead of printing zeros.
  const bool measured = steps_timed > 0;
  auto or_null = [&](double x) { return measured ? nlohmann::json(x) : nlohmann::json(nullptr); };
  if (!o_.summary_json.empty()) {
    nlohmann::json stages = nlohmann::json::array();
    for (int s = 0; s < S_; ++s) {
      const Row& w = rows[static_cast<size_t>(s)];
      stages.push_back({{"index", s},
                        {"rank", w.rank0},
                        {"host", host_of_rank_.at(static_cast<size_t>(w.rank0))},
                        {"measured", measured ? nlohmann::json{{"forward_s", w.f}, {"backward_s", w.b}, {"optimizer_s", w.u},
                                                               {"cpu_per_wall", w.cpu_per_wall}, {"rank_idle", w.idle},
                                                               {"peak_bytes", w.peak}, {"reserved_bytes", w.reserved},
                                                               {"device_allocations_after_first_step", w.late_allocs}}
                                              : nlohmann::json(nullptr)},
                        {"predicted", {{"forward_s", w.pf}, {"backward_s", w.pb}, {"optimizer_s", w.pu}, {"peak_bytes", w.ppeak}}}});
    }
    nlohmann::json j{{"plan", o_.plan.string()},
                     {"steps_timed", steps_timed},
                     {"optimizer", optimizer_name(o_.optimizer.kind)},
                     {"threads_per_worker", std::max(o_.threads, 1)},
                     {"device", device_},
                     {"dtype", compute_ == DType::BF16 ? "bf16" : "fp32"},
                     {"step_s", {{"measured", or_null(mean_step_s)}, {"predicted", pstep}}},
                     {"bubble", {{"measured", or_null(idle / c_.size())}, {"predicted", pbubble}}},
                     {"stages", stages}};
    write_file_atomic(o_.summary_json, j.dump(2) + "\n");
  }
  if (o_.quiet) return;
  if (!measured) {
    fmt::print("\nno steady-state measurement: the first step (start-up) is not timed and the run had no other (--steps 2 "
               "or more to compare with the plan); predicted step {:.4f} s, bubble {:.1f}%\n",
               pstep, std::max(0.0, 100.0 * pbubble));
    return;
  }
  fmt::print("\nper stage, per microbatch (measured after the first step | predicted by the plan); optimizer step ({}) "
             "once per step;\ncpu/wall: its compute threads' CPU time over the wall time of its forwards and backwards ({} thread(s) "
             "per worker; less: it waited for a core):\n",
             optimizer_name(o_.optimizer.kind), std::max(o_.threads, 1));
  fmt::print("{:>5}  {:>21}  {:>21}  {:>21}  {:>8}  {:>10}\n", "stage", "forward ms", "backward ms", "optimizer ms", "cpu/wall",
             "rank idle");
  for (int s = 0; s < S_; ++s) {
    const Row& w = rows[static_cast<size_t>(s)];
    fmt::print("{:>5}  {:>9.3f} | {:>9.3f}  {:>9.3f} | {:>9.3f}  {:>9.3f} | {:>9.3f}  {:>8.2f}  {:>9.1f}%\n", s, w.f * 1e3,
               w.pf * 1e3, w.b * 1e3, w.pb * 1e3, w.u * 1e3, w.pu * 1e3, w.cpu_per_wall, 100.0 * w.idle);
  }
  fmt::print("memory per stage ({}, {}): peak of the tensors its rank held at once, and what its backend reserved on the "
             "device | the plan's predicted peak:\n",
             device_, compute_ == DType::BF16 ? "bf16" : "fp32");
  for (int s = 0; s < S_; ++s) {
    const Row& w = rows[static_cast<size_t>(s)];
    const double gib = 1024.0 * 1024.0 * 1024.0;
    fmt::print("{:>5}  peak {:>8.3f} GiB (reserved {:.3f} GiB) | predicted {:>8.3f} GiB{}\n", s, w.peak / gib, w.reserved / gib,
               w.ppeak / gib, w.late_allocs > 0 ? fmt::format("  ({} device allocation(s) after the first step)", w.late_allocs) : "");
  }
  if (plan_.optimizer != optimizer_name(o_.optimizer.kind))
    fmt::print("note: the plan was made for {} (smp-plan --optimizer): its memory and optimizer-step predictions assume it\n",
               plan_.optimizer);
  fmt::print("step time: measured {:.4f} s (mean after the first step), predicted {:.4f} s ({:+.1f}%)\n", mean_step_s, pstep,
             pstep > 0 ? 100.0 * (mean_step_s - pstep) / pstep : 0.0);
  fmt::print("idle (bubble): measured {:.1f}% averaged over ranks, predicted {:.1f}%\n", 100.0 * idle / c_.size(),
             std::max(0.0, 100.0 * pbubble));
}

void Worker::export_model(int64_t done) {
  // Each stage's replica 0 (every rank of its tensor-parallel group, one shard each) hands its
  // weights to rank 0 through checkpoint-format files; rank 0 joins the shards.
  fs::path dir = o_.export_onnx;
  dir += ".parts";
  fs::create_directories(dir);
  for (auto& st : stages_)
    if (st.writer) write_stage_checkpoint(dir, snapshot(st, done, false));
  c_.barrier();
  if (c_.rank() == 0) {
    std::map<std::string, graph::TensorData> weights;
    std::map<std::string, std::vector<graph::TensorData>> parts;
    std::map<std::string, int> split;  // name -> value id in whole_
    for (const auto& [p, sp] : tp_analysis_.params) split[whole_.value(p).name] = p;
    for (int s = 0; s < S_; ++s)
      for (int t = 0; t < T_; ++t) {
        StageCheckpoint cp = read_stage_checkpoint(stage_file(dir, done, s, T_ > 1 ? t : -1));
        for (auto& x : cp.tensors) {
          graph::TensorData d{x.dtype, x.shape, std::move(x.bytes)};
          if (split.count(x.name)) parts[x.name].push_back(std::move(d));
          else if (t == 0) weights[x.name] = std::move(d);
        }
      }
    for (auto& [name, ps] : parts) {
      const int p = split.at(name);
      SMP_CHECK(static_cast<int>(ps.size()) == T_, "{} of {} shards of {}", ps.size(), T_, name);
      weights[name] = graph::unshard_tensor(ps, tp_analysis_.params.at(p), whole_.value(p).shape);
    }
    graph::export_with_weights(plan_.model_path, o_.export_onnx, std::move(weights),
                               o_.export_training_form ? graph::ExportForm::Training : graph::ExportForm::Inference);
    fs::remove_all(dir);
  }
  c_.barrier();
}

RunResult Worker::run() {
  c_.set_timeout_s(c_.timeout_s());
  load();
  std::string stage_list;
  for (auto& st : stages_) stage_list += (stage_list.empty() ? "" : ",") + std::to_string(st.index);
  report_status(o_.status_token, c_.rank(), "running " + stage_list);
  check_hosts();
  if (o_.resume) restore();
  c_.barrier();  // every rank loaded: time starts now

  std::ofstream metrics, losses;
  if (c_.rank() == 0 && !o_.metrics.empty()) {
    metrics.open(o_.metrics, start_step_ > 0 ? std::ios::app : std::ios::trunc);
    if (!metrics) throw_bad_input(o_.metrics.string(), "cannot write the metrics file");
  }
  if (c_.rank() == 0 && !o_.summary_json.empty()) {
    const fs::path dir = o_.summary_json.has_parent_path() ? o_.summary_json.parent_path() : fs::path(".");
    if (!fs::is_directory(dir))
      throw_bad_input("--summary-json", fmt::format("{}: no such directory", dir.string()), "create it first");
  }
  if (c_.rank() == 0 && !o_.losses.empty()) {
    losses.open(o_.losses, start_step_ > 0 ? std::ios::app : std::ios::trunc);
    if (!losses) throw_bad_input(o_.losses.string(), "cannot write the loss file");
  }
  if (c_.rank() == 0 && !o_.quiet)
    fmt::print("training {} steps: {} stage(s) x {} replica(s){}{}, schedule {}, {} microbatches of {}, optimizer {} at lr {:g}{}, data: {}\n",
               o_.steps - start_step_, plan_.stages * plan_.chunks, d_,
               T_ > 1 ? fmt::format(" x {} tensor-parallel", T_) : "", hosts_ > 1 ? fmt::format(" on {} hosts", hosts_) : "",
               plan_.schedule.name, m_, b_,
               optimizer_name(o_.optimizer.kind), o_.optimizer.lr,
               zero_ ? fmt::format(" (state split over {} replicas)", d_) : "",
               need_data_ ? data_.source : (o_.data.empty() ? "synthetic" : o_.data.string()));
  // Where the tensors between ranks travel (rank 0's view): GPU to GPU, or through the host.
  if (c_.rank() == 0 && !o_.quiet && c_.size() > 1)
    fmt::print("tensors between ranks: {}\n", device_data_ ? net_->transport() : "through host memory over " + c_.transport());
  std::fflush(stdout);

  double timed = 0;
  int64_t timed_steps = 0;
  auto run_start = clock::now();
  const bool want_timeline = !o_.trace.empty() || !o_.timeline.empty();
  double longest_step_s = 0;
  for (int64_t k = start_step_; k < o_.steps; ++k) {
    auto t0 = clock::now();
    bool record = want_timeline && k + 1 == o_.steps;
    // Once a stop is asked for, the step in progress finishes; a wait longer than twice the
    // longest step (3 s at least) means it cannot: a peer is gone.
    c_.set_stop_patience(o_.stop_signal, longest_step_s > 0 ? std::clamp(2 * longest_step_s, 3.0, c_.timeout_s()) : c_.timeout_s());
    double loss = step(k, record);
    if (o_.deferred_batch_norm) commit_running_stats();
    double norm = 0;
    reduce_and_update(k, record, &loss, &norm);
    c_.set_stop_patience(nullptr, 0);  // a checkpoint takes as long as it takes
    if (k == start_step_) device_allocations_after_step1_ = be_->memory().device_allocations;
    double dt = seconds_since(t0);
    longest_step_s = std::max(longest_step_s, dt);
    if (record) recorded_step_s_ = dt;
    if (k > start_step_) timed += dt, ++timed_steps;
    if (c_.rank() == 0) {
      double sps = static_cast<double>(B_) / dt;
      double elapsed = seconds_since(run_start);
      double eta = elapsed / static_cast<double>(k + 1 - start_step_) * static_cast<double>(o_.steps - k - 1);
      if (!o_.quiet) {
        std::string line = fmt::format("step {:>{}}/{}  loss {:.4f}  {:.1f} samples/s  ETA {}", k + 1,
                                       std::to_string(o_.steps).size(), o_.steps, loss, sps, fmt_duration(eta));
        if (o_.progress_tty) fmt::print("\r{}\033[K{}", line, k + 1 == o_.steps ? "\n" : "");
        else fmt::print("{}\n", line);
        std::fflush(stdout);
      }
      if (metrics.is_open())
        metrics << nlohmann::json{{"step", k + 1}, {"loss", loss}, {"samples_per_s", sps}, {"step_time_s", dt},
                                  {"lr", lr_at(o_.optimizer, k)}, {"grad_norm", norm}}.dump()
                << "\n" << std::flush;
      if (losses.is_open()) losses << fmt::format("{:.9g}\n", loss) << std::flush;
    }
    bool last = k + 1 == o_.steps;
    const bool stop = stop_agreed_ && !last;
    if (!o_.checkpoint_dir.empty() &&
        ((o_.checkpoint_every > 0 && (k + 1) % o_.checkpoint_every == 0) || last || stop))
      checkpoint(k + 1);
    if (stop) {
      if (c_.rank() == 0 && o_.progress_tty && !o_.quiet) fmt::print("\n");  // end the refreshed line
      std::fflush(stdout);
      report_status(o_.status_token, c_.rank(), fmt::format("interrupted {} {}", k + 1, stop_signal_));
      return {k + 1, true, stop_signal_};
    }
  }
  if (want_timeline) gather_timeline();
  report_end(timed_steps > 0 ? timed / static_cast<double>(timed_steps) : 0.0);
  if (!o_.export_onnx.empty()) export_model(o_.steps);
  report_status(o_.status_token, c_.rank(), "done");
  return {o_.steps, false, 0};
}

}  // namespace

RunResult run_worker(comm::Communicator& comm, const RunOptions& opts) {
  Worker w(comm, opts);
  return w.run();
}

}  // namespace smp::train
