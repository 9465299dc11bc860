// Single-process training against PyTorch: for each sample model, and for a network of the ops
// beyond them, 20 SGD steps from the ONNX initializers on the same batches; the loss of every step
// equals torch's within 1e-4 relative.
// The reference comes from scripts/torch_reference.py (Debian's python3-torch).
#include <doctest/doctest.h>

#include "core/io.hpp"
#include "graph/loader.hpp"
#include "runtime/cpu_backend.hpp"
#include "runtime/executor.hpp"
#include "runtime/loss.hpp"
#include "runtime/npy.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>

using namespace smp;
namespace fs = std::filesystem;

namespace {

constexpr int kSteps = 20, kBatch = 8;
constexpr double kLr = 0.05;

// Runs scripts/torch_reference.py ARGS into `dir` (batches x_k, y_k and PyTorch's losses), then
// the same SGD steps on `model` from its initializers; every step's loss within 1e-4 relative.
void train_against_torch(const std::string& what, const std::string& args, const fs::path& dir, const fs::path& model) {
  std::string cmd = fmt::format("{} {}/scripts/torch_reference.py {} {} --steps {} --batch {} --lr {} --threads 2 > {}.log 2>&1",
                                SMP_PYTHON, SMP_SOURCE_DIR, args, dir.string(), kSteps, kBatch, kLr, dir.string());
  REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, cmd);
  auto ref = read_json(dir / "losses.json")["losses"].get<std::vector<double>>();
  REQUIRE(ref.size() == static_cast<size_t>(kSteps));

  graph::LoadOptions lo;
  lo.batch_size = kBatch;
  lo.load_weights = true;
  graph::Graph g = graph::load_graph(model, lo);
  runtime::CpuBackend be(2);
  runtime::StageExecutor ex(g, be);
  double worst = 0;
  for (int k = 0; k < kSteps; ++k) {
    runtime::Tensor x = runtime::load_npy(be, dir / fmt::format("x_{}.npy", k));
    runtime::Tensor y = runtime::load_npy(be, dir / fmt::format("y_{}.npy", k));
    ex.zero_grad();
    auto out = ex.forward(0, {&x, 1});
    auto l = runtime::cross_entropy(be, out[0], y);
    ex.backward(0, {&l.grad, 1});
    ex.sgd_step(static_cast<float>(kLr));
    INFO(fmt::format("{} step {}: smp {:.8f} torch {:.8f}", what, k, l.loss, ref[static_cast<size_t>(k)]));
    double rel = std::fabs(l.loss - ref[static_cast<size_t>(k)]) / std::fabs(ref[static_cast<size_t>(k)]);
    worst = std::max(worst, rel);
    CHECK(rel <= 1e-4);
  }
  fmt::print("{}: {} steps, largest relative loss difference to PyTorch {:.2e}\n", what, kSteps, worst);
  CHECK(ex.pending() == 0);
}

// Runs scripts/torch_reference.py ARGS into `dir`, then the forward of dir/model.onnx (training
// mode or not) on the arrays dir/<graph input>.npy: the outputs by name.
std::map<std::string, runtime::Tensor> forward_reference(runtime::Backend& be, const std::string& args, const fs::path& dir,
                                                         bool training) {
  std::string cmd = fmt::format("{} {}/scripts/torch_reference.py {} > {}.log 2>&1", SMP_PYTHON, SMP_SOURCE_DIR, args, dir.string());
  REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, cmd);
  graph::LoadOptions lo;
  lo.load_weights = true;
  graph::Graph g = graph::load_graph(dir / "model.onnx", lo);
  runtime::ExecutorOptions opts;
  opts.training = training;
  runtime::StageExecutor ex(g, be, opts);
  std::vector<runtime::Tensor> in;  // in the executor's order, by name
  for (int id : ex.inputs()) in.push_back(runtime::load_npy(be, dir / (g.value(id).name + ".npy")));
  auto out = ex.forward(0, in);
  std::map<std::string, runtime::Tensor> named;
  for (size_t k = 0; k < out.size(); ++k) named[g.value(ex.outputs()[k]).name] = out[k];
  return named;
}

// The largest difference of `got` from `want` (same shape) and the largest |want|.
std::pair<double, double> largest_difference(const runtime::Tensor& got, const runtime::Tensor& want) {
  REQUIRE(got.shape() == want.shape());
  const float *a = got.data<float>(), *b = want.data<float>();
  double d = 0, m = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    d = std::max(d, std::fabs(static_cast<double>(a[i]) - b[i]));
    m = std::max(m, std::fabs(static_cast<double>(b[i])));
  }
  return {d, m};
}

}  // namespace

TEST_CASE("20 SGD steps on each sample model match PyTorch's losses") {
  for (std::string name : {"mlp", "cnn", "gpt"}) {
    CAPTURE(name);
    train_against_torch(name, "train " + name, fs::path(SMP_TEST_DATA) / ("torch_train_" + name),
                        fs::path(SMP_SOURCE_DIR) / "sample_models" / (name + ".onnx"));
  }
}

// The ops beyond the samples, as PyTorch exports them for training (scripts/torch_reference.py
// ops): ConvTranspose (strided with output_padding, grouped), GroupNorm (InstanceNormalization
// between reshapes), InstanceNorm2d, PReLU (per channel and single), ELU, SELU, CELU, Softplus.
TEST_CASE("20 SGD steps on a network of ConvTranspose, GroupNorm, InstanceNorm, PReLU, ELU, SELU, CELU, Softplus match PyTorch's losses") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_train_ops";
  train_against_torch("ops network", "ops", dir, dir / "model.onnx");
}

// 3-D convolution and pooling as PyTorch exports a video network for training (torch_reference.py
// ops --net video): Conv3d, BatchNorm3d, MaxPool3d, ConvTranspose3d, AvgPool3d (padding counted),
// and LocalResponseNorm, which the exporter writes as Pad and a 3-D AveragePool behind an If on a
// shape that the loader resolves.
TEST_CASE("20 SGD steps on a network of Conv3d, BatchNorm3d, LocalResponseNorm, MaxPool3d, ConvTranspose3d, AvgPool3d match PyTorch's losses") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_train_video";
  train_against_torch("video network", "ops --net video", dir, dir / "model.onnx");
}

// Recurrent ops as PyTorch exports them for training (torch_reference.py ops --net sequence): a
// 2-layer bidirectional nn.LSTM, an nn.GRU (linear_before_reset) and an nn.RNN, their weights
// re-sliced into ONNX's gate order by the export's Slice and Concat nodes.
TEST_CASE("20 SGD steps on a network of a bidirectional 2-layer LSTM, a GRU and an RNN match PyTorch's losses") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_train_sequence";
  train_against_torch("sequence network", "ops --net sequence", dir, dir / "model.onnx");
}

// TorchScript control flow as PyTorch exports a scripted model (torch_reference.py ops --net
// loop): a recurrent cell written as a loop over time (a Loop carrying the state, each step's
// state inserted into a sequence that ConcatFromSequence stacks) and torch.tensor_split (a Loop
// of Slices into a sequence read by SequenceAt). The loader unrolls the Loops and resolves the
// sequences; the weights read inside the bodies train.
TEST_CASE("20 SGD steps on a scripted network of ONNX Loops over sequences (a loop over time, tensor_split) match PyTorch's losses") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_train_loop";
  train_against_torch("loop network", "ops --net loop", dir, dir / "model.onnx");
}

// Modules exported as ONNX functions (torch_reference.py ops --net functions,
// export_modules_as_functions): two calls of one model-local function, each passed its own
// weights, whose body calls a LayerNorm function. The loader inlines both levels; each call's
// weights train (a call bound to the other's weights would not follow PyTorch's losses).
TEST_CASE("20 SGD steps on a network of model-local ONNX functions (nested, called twice) match PyTorch's losses") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_train_functions";
  train_against_torch("functions network", "ops --net functions", dir, dir / "model.onnx");
}

// Padded sequences of different lengths, packed (torch_reference.py packed): PyTorch exports them
// with LSTM's and GRU's sequence_lens, sorting the rows by length with TopK and back with
// ScatterElements; a row's steps past its length give zeros, its state stops there.
TEST_CASE("a packed bidirectional LSTM and a packed GRU (sequence_lens) give PyTorch's outputs") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_packed";
  runtime::CpuBackend be(2);
  auto out = forward_reference(be, "packed " + dir.string(), dir, true);
  REQUIRE(out.size() == 2);
  for (const auto& [name, t] : out) {
    CAPTURE(name);
    auto [d, m] = largest_difference(t, runtime::load_npy(be, dir / (name + ".npy")));
    INFO(fmt::format("max difference {:.2e}, largest value {:.2e}", d, m));
    CHECK(d <= 1e-5 * m);
  }
}

// Quantization-aware training as PyTorch exports it (torch_reference.py ops --net qat): every
// FakeQuantize module becomes QuantizeLinear (-> Clip) -> DequantizeLinear with the calibrated
// scale and zero point, which the loader fuses into one FakeQuantize node; its gradient passes
// where the value was not clamped. PyTorch trains with ONNX's rounding (x / scale).
TEST_CASE("20 SGD steps on a quantization-aware network (QuantizeLinear -> DequantizeLinear pairs) match PyTorch's losses") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_train_qat";
  train_against_torch("quantization-aware network", "ops --net qat", dir, dir / "model.onnx");
}

// A model quantized after training, as PyTorch exports it (torch_reference.py quantized):
// torchvision's quantizable ResNet-18 with qnnpack's uint8 activations and int8 weights, written as
// QuantizeLinear / DequantizeLinear around float Conv and Gemm. smp computes ONNX's definition
// (float products of the dequantized values, requantized with round-half-to-even); PyTorch's
// integer kernels requantize with their own fixed-point arithmetic, so single activations may land
// one quantum apart in each of the 20 layers. The logits must agree within a few of their quanta
// (they span about 130); a wrong scale, zero point or rounding is off by tens.
TEST_CASE("a post-training-quantized ResNet-18 (QuantizeLinear / DequantizeLinear) gives PyTorch's quantized logits within 4 quanta") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_quantized";
  runtime::CpuBackend be(2);
  auto out = forward_reference(be, "quantized " + dir.string(), dir, false);
  const double quantum = read_json(dir / "quantized.json")["output_scale"].get<double>();
  REQUIRE(out.size() == 1);
  const runtime::Tensor& got = out.begin()->second;
  runtime::Tensor want = runtime::load_npy(be, dir / "y.npy");
  REQUIRE(got.shape() == want.shape());
  const float *a = got.data<float>(), *b = want.data<float>();
  double worst = 0, sum = 0, span = 0;
  for (int64_t i = 0; i < want.numel(); ++i) {
    const double d = std::fabs(static_cast<double>(a[i]) - b[i]) / quantum;
    worst = std::max(worst, d);
    sum += d;
    span = std::max(span, std::fabs(b[i]) / quantum);
  }
  const double mean = sum / static_cast<double>(want.numel());
  fmt::print("quantized ResNet-18: logits within {:.0f} quanta of PyTorch's (mean {:.2f}), largest logit {:.0f} quanta\n", worst, mean, span);
  CHECK(span > 20);  // the logits are not all near zero
  CHECK(worst <= 4);
  CHECK(mean <= 1);
}

// The signal ops against PyTorch's float64 results (torch_reference.py signal; the graph is built
// with onnx.helper, PyTorch 1.13 exports no STFT): HannWindow -> STFT against torch.stft, DFT
// zero-padded and inverse against torch.fft, the symmetric Hamming and Blackman windows; a
// MelWeightMatrix (80 mel bins, 400-sample frames, 16 kHz) against ONNX's reference formula.
TEST_CASE("STFT with a HannWindow, DFT (padded, inverse), Hamming and Blackman windows equal PyTorch's; MelWeightMatrix ONNX's reference") {
  const fs::path dir = fs::path(SMP_TEST_DATA) / "torch_signal";
  runtime::CpuBackend be(2);
  auto out = forward_reference(be, "signal " + dir.string(), dir, false);
  REQUIRE(out.size() == 6);
  for (const auto& [name, t] : out) {
    CAPTURE(name);
    auto [d, m] = largest_difference(t, runtime::load_npy(be, dir / ("want_" + name + ".npy")));
    fmt::print("{}: largest difference {:.1e} of the largest value {:.2e}\n", name, d, m);
    CHECK(d <= 1e-6 * m);
  }
}
