// smp-run: train a plan (one worker per device) or run a model's forward pass.
#include "common.hpp"
#include "run_train.hpp"

#include "comm/launch.hpp"
#include "core/io.hpp"
#include "graph/loader.hpp"
#include "runtime/backends.hpp"
#include "runtime/executor.hpp"
#include "runtime/npy.hpp"

#include <fmt/format.h>

#include <chrono>
#include <filesystem>
#include <map>

namespace fs = std::filesystem;

namespace {

// The file a value is read from / written to: its name, with path separators replaced.
std::string file_name(const std::string& value_name) {
  std::string s = value_name;
  for (char& c : s)
    if (c == '/' || c == '\\' || c == ':') c = '_';
  return s + ".npy";
}

int run_forward(const std::string& model, const std::string& data, const std::string& output, int threads,
                int64_t batch_size, const std::vector<std::string>& dims, const smp::app::TrainCli& dev) {
  if (data.empty()) smp::throw_bad_input("--data", "no input directory given", "--data DIR with one .npy per graph input");
  if (output.empty()) smp::throw_bad_input("--output", "no output directory given", "--output DIR");
  if (!fs::is_directory(data)) smp::throw_bad_input(data, "not a directory", "--data DIR with one .npy per graph input");
  // The arrays decide the inputs' dimensions (any axis, symbolic or fixed); integer, boolean and
  // one-element ones are bound as constants (graph/loader.hpp).
  std::map<std::string, std::shared_ptr<smp::graph::TensorData>> arrays;
  for (const auto& e : fs::directory_iterator(data))
    if (e.path().extension() == ".npy") {
      auto a = smp::runtime::read_npy(e.path());
      arrays[e.path().filename().string()] =
          std::make_shared<smp::graph::TensorData>(smp::graph::TensorData{a.dtype, a.shape, std::move(a.bytes)});
    }
  auto array_of = [&](const std::string& input) -> std::shared_ptr<smp::graph::TensorData> {
    auto it = arrays.find(file_name(input));
    return it == arrays.end() ? nullptr : it->second;
  };
  smp::graph::LoadOptions opts;
  opts.load_weights = true;
  opts.batch_size = batch_size;
  opts.dims = smp::app::parse_dims(dims);
  opts.input_array = array_of;
  // In stages where the model's control flow or shapes depend on its data (graph/loader.hpp):
  // each stage runs what is decided, the next knows its results.
  opts.staged = true;
  // Where the time goes when a model runs in stages: reading and parsing the file once, then for
  // each stage loading the parsed model (checking, shape inference, folding with what is known)
  // and running what is new.
  double load_s = 0, compute_s = 0;
  auto seconds_since = [](std::chrono::steady_clock::time_point t) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
  };
  const auto t_parse = std::chrono::steady_clock::now();
  // Each stage loads the same parsed model, whose weights are never copied again.
  const smp::graph::ParsedModel parsed{fs::path(model)};
  load_s += seconds_since(t_parse);
  auto load = [&] {
    try {
      return smp::graph::load_graph(parsed, opts);
    } catch (const smp::Error& e) {
      // An input without its array cannot be bound: name the missing file rather than the dimension.
      if (e.kind() == smp::ErrorKind::BadInput) {
        auto axis = smp::graph::inspect_batch_axis(model);
        std::vector<std::string> names = axis.symbolic;
        for (const auto& [name, size] : axis.fixed) names.push_back(name);
        for (const auto& name : names)
          if (!array_of(name))
            smp::throw_bad_input((fs::path(data) / file_name(name)).string(), fmt::format("missing: graph input '{}' needs it", name),
                                 fmt::format("save its array there as {}", file_name(name)));
      }
      throw;
    }
  };
  smp::runtime::BackendOptions bo;
  bo.threads = threads;
  bo.device = std::max(dev.device, 0);
  bo.tf32 = dev.tf32;
  auto backend = smp::runtime::make_backend(dev.backend == "auto" ? "cpu" : dev.backend, bo);
  smp::runtime::Backend& be = *backend;
  smp::runtime::ExecutorOptions eo;
  eo.training = false;
  eo.running_stats = smp::runtime::ExecutorOptions::RunningStats::Onnx;
  eo.seed = dev.seed;
  // A model cut before data-dependent nodes at every stage still gains known values each time;
  // a bound keeps a pathological file from loading without end.
  constexpr int kMaxStages = 1024;
  for (int stage = 1;; ++stage) {
    auto t0 = std::chrono::steady_clock::now();
    smp::graph::Graph g = load();
    load_s += seconds_since(t0);
    t0 = std::chrono::steady_clock::now();
    // The graph's outputs: computed, constants (folded, or known from an earlier stage) or inputs.
    std::vector<std::shared_ptr<const smp::graph::TensorData>> values(g.outputs.size());
    std::vector<smp::runtime::Tensor> inputs, outs;
    std::unique_ptr<smp::runtime::StageExecutor> ex;
    if (!g.nodes.empty()) {
      ex = std::make_unique<smp::runtime::StageExecutor>(g, be, eo);
      for (int v : ex->inputs()) {
        const auto& val = g.value(v);
        auto a = array_of(val.name);
        if (!a)
          smp::throw_bad_input((fs::path(data) / file_name(val.name)).string(), fmt::format("missing: graph input '{}' needs it", val.name),
                               fmt::format("save {}{} there", smp::dtype_name(val.dtype), smp::shape_str(val.shape)));
        if (a->dtype != val.dtype || a->shape != val.shape)
          smp::throw_bad_input((fs::path(data) / file_name(val.name)).string(),
                               fmt::format("{}{} for graph input '{}' of {}{}", smp::dtype_name(a->dtype), smp::shape_str(a->shape),
                                           val.name, smp::dtype_name(val.dtype), smp::shape_str(val.shape)));
        inputs.push_back(be.from_host(a->dtype, a->shape, a->bytes.data()));
      }
      outs = ex->forward(0, inputs);
    }
    for (size_t k = 0; k < g.outputs.size(); ++k) {
      const auto& val = g.value(g.outputs[k]);
      const long at = ex ? std::find(ex->outputs().begin(), ex->outputs().end(), g.outputs[k]) - ex->outputs().begin() : -1;
      if (ex && at < static_cast<long>(ex->outputs().size())) {
        const auto& t = outs[static_cast<size_t>(at)];
        auto d = std::make_shared<smp::graph::TensorData>();
        d->dtype = t.dtype();
        d->shape = t.shape();
        d->bytes.resize(static_cast<size_t>(t.bytes()));
        be.to_host(t, d->bytes.data());
        values[k] = d;
      } else if (val.data) {
        values[k] = val.data;
      } else if (auto a = array_of(val.name); a && val.kind == smp::graph::ValueKind::Input) {
        values[k] = a;
      } else {
        smp::throw_failure(val.name, "graph output not computed");
      }
    }
    compute_s += seconds_since(t0);
    if (g.partial) {
      const size_t before = opts.known.size();
      for (size_t k = 0; k < g.outputs.size(); ++k) opts.known.emplace(g.value(g.outputs[k]).name, values[k]);
      if (opts.known.size() == before) smp::throw_failure(model, "a stage of the forward pass computed nothing new");
      if (stage == kMaxStages)
        smp::throw_bad_input(model, fmt::format("its control flow or shapes still depend on its data after {} stages", kMaxStages));
      continue;
    }
    if (stage > 1)
      fmt::print(stderr, "note: ran in {} stages: the model's control flow or shapes depend on its data (loading {:.2f} s, running {:.2f} s)\n",
                 stage, load_s, compute_s);
    fs::create_directories(output);
    for (size_t k = 0; k < g.outputs.size(); ++k) {
      fs::path p = fs::path(output) / file_name(g.value(g.outputs[k]).name);
      smp::runtime::write_npy(p, values[k]->dtype, values[k]->shape, values[k]->bytes.data());
      fmt::print("{}\n", p.string());
    }
    return 0;
  }
}

}  // namespace

int main(int argc, char** argv) {
  // smp's local launcher (no MPI) runs this program as the supervisor of the workers.
  if (argc >= 4 && std::string(argv[1]) == smp::comm::kLocalSupervisorFlag) {
    return smp::app::guarded_main([&]() -> int {
      const int ranks = std::atoi(argv[2]);
      std::vector<std::string> rest(argv + 4, argv + argc);
      return smp::comm::local_supervisor(ranks, rest);
    });
  }
  CLI::App app{"smp-run: train a partition plan with one worker per device, in its pipelined schedule;\n"
               "or, with --forward, run a model's forward pass once (on the CPU unless --backend cuda)."};
  smp::app::setup_app(app);
  std::string target, data, output;
  bool forward = false;
  int threads = 0;
  int64_t batch_size = 0;
  std::vector<std::string> dims;
  app.add_option("PLAN_OR_MODEL", target, "plan.json written by smp-plan; with --forward, an ONNX model");
  app.add_flag("--forward", forward, "run MODEL's forward pass on --data and write its outputs to --output (in stages where its data decides control flow or shapes)");
  app.add_option("--data", data, "directory with one .npy per graph input, named after it (NAME.npy)");
  app.add_option("--output", output, "directory for the outputs, one .npy per graph output, named after it");
  app.add_option("--threads", threads, "CPU threads (OpenMP and OpenBLAS); 0: the libraries' defaults")->check(smp::app::NonNegativeInt);
  app.add_option("-b,--batch-size", batch_size, "with --forward: bind symbolic leading dims of inputs without an array (the arrays bind their own)")->check(smp::app::PositiveInt);
  app.add_option("--dim", dims, "with --forward: bind a symbolic dimension of inputs without an array, NAME=SIZE (repeatable)");
  smp::app::TrainCli train;
  smp::app::add_train_options(app, train);
  SMP_PARSE(app, argc, argv);
  return smp::app::guarded_main([&]() -> int {
    if (forward) {
      if (target.empty()) smp::throw_bad_input("MODEL", "no model given", "smp-run MODEL.onnx --forward --data DIR --output DIR");
      return run_forward(target, data, output, threads, batch_size, dims, train);
    }
    return smp::app::run_train(target, data, train, argc, argv);
  });
}
