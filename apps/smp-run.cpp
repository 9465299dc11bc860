// smp-run: train a plan (one worker per device) or run a model's forward pass.
#include "common.hpp"
#include "run_train.hpp"

#include "graph/loader.hpp"
#include "runtime/backends.hpp"
#include "runtime/executor.hpp"
#include "runtime/npy.hpp"

#include <fmt/format.h>

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
  smp::graph::LoadOptions opts;
  opts.load_weights = true;
  opts.batch_size = batch_size;
  opts.dims = smp::app::parse_dims(dims);
  // The batch: the leading dim of the .npy inputs, unless given.
  std::map<std::string, smp::runtime::NpyArray> arrays;
  for (const auto& e : fs::directory_iterator(data))
    if (e.path().extension() == ".npy") arrays[e.path().filename().string()] = smp::runtime::read_npy(e.path());
  if (opts.batch_size == 0)
    for (const auto& [name, a] : arrays)
      if (!a.shape.empty()) {
        opts.batch_size = a.shape[0];
        break;
      }
  smp::graph::Graph g = smp::graph::load_graph(model, opts);
  smp::runtime::BackendOptions bo;
  bo.threads = threads;
  bo.device = std::max(dev.device, 0);
  bo.tf32 = dev.tf32;
  auto backend = smp::runtime::make_backend(dev.backend == "auto" ? "cpu" : dev.backend, bo);
  smp::runtime::Backend& be = *backend;
  smp::runtime::ExecutorOptions eo;
  eo.training = false;
  eo.batch_statistics = false;
  smp::runtime::StageExecutor ex(g, be, eo);
  std::vector<smp::runtime::Tensor> inputs;
  for (int v : ex.inputs()) {
    const auto& val = g.value(v);
    std::string f = file_name(val.name);
    auto it = arrays.find(f);
    if (it == arrays.end())
      smp::throw_bad_input((fs::path(data) / f).string(), fmt::format("missing: graph input '{}' needs it", val.name),
                           fmt::format("save {}{} there", smp::dtype_name(val.dtype), smp::shape_str(val.shape)));
    const auto& a = it->second;
    if (a.dtype != val.dtype || a.shape != val.shape)
      smp::throw_bad_input((fs::path(data) / f).string(),
                           fmt::format("{}{} for graph input '{}' of {}{}", smp::dtype_name(a.dtype), smp::shape_str(a.shape),
                                       val.name, smp::dtype_name(val.dtype), smp::shape_str(val.shape)));
    inputs.push_back(be.from_host(a.dtype, a.shape, a.bytes.data()));
  }
  auto outs = ex.forward(0, inputs);
  fs::create_directories(output);
  for (int v : g.outputs) {
    const auto& val = g.value(v);
    fs::path p = fs::path(output) / file_name(val.name);
    auto it = std::find(ex.outputs().begin(), ex.outputs().end(), v);
    if (it != ex.outputs().end()) {
      smp::runtime::save_npy(be, p, outs[static_cast<size_t>(it - ex.outputs().begin())]);
    } else if (val.data) {
      smp::runtime::write_npy(p, val.data->dtype, val.data->shape, val.data->bytes.data());
    } else {
      auto in = std::find(ex.inputs().begin(), ex.inputs().end(), v);
      if (in == ex.inputs().end()) smp::throw_failure(val.name, "graph output not computed");
      smp::runtime::save_npy(be, p, inputs[static_cast<size_t>(in - ex.inputs().begin())]);
    }
    fmt::print("{}\n", p.string());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"smp-run: train a partition plan with one worker per device, in its pipelined schedule;\n"
               "or, with --forward, run a model's forward pass once (on the CPU unless --backend cuda)."};
  smp::app::setup_app(app);
  std::string target, data, output;
  bool forward = false;
  int threads = 0;
  int64_t batch_size = 0;
  std::vector<std::string> dims;
  app.add_option("PLAN_OR_MODEL", target, "plan.json written by smp-plan; with --forward, an ONNX model");
  app.add_flag("--forward", forward, "run MODEL's forward pass on --data and write its outputs to --output");
  app.add_option("--data", data, "directory with one .npy per graph input, named after it (NAME.npy)");
  app.add_option("--output", output, "directory for the outputs, one .npy per graph output, named after it");
  app.add_option("--threads", threads, "CPU threads (OpenMP and OpenBLAS); 0: the libraries' defaults")->check(CLI::NonNegativeNumber);
  app.add_option("-b,--batch-size", batch_size, "batch size (default: the leading dim of the .npy inputs)")->check(CLI::PositiveNumber);
  app.add_option("--dim", dims, "bind another symbolic dimension, NAME=SIZE (repeatable)");
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
