#!/usr/bin/env python3
"""PyTorch references for smp's training engine, on the sample models (scripts/sample_models.py).

  torch_reference.py train NAME OUT [--steps 20] [--batch 8] [--lr 0.05] [--seed 0] [--threads 1]
      Same initial weights as sample_models/NAME.onnx (its initializers), deterministic batches,
      cross-entropy over the last axis, torch.optim.SGD. Writes OUT/x_<k>.npy, OUT/y_<k>.npy (the
      batch of step k) and OUT/losses.json ({"losses": [loss before step k's update, ...]}).

  torch_reference.py ops OUT [--net ops|video|sequence|qat|loop|functions] [--steps 20] [--batch 8] [--lr 0.05] [--seed 0] [--threads 1]
      A small seeded network of the ops beyond the samples (Conv strided down, GroupNorm, PReLU
      per channel, ConvTranspose2d with output_padding and grouped, InstanceNorm2d, ELU, SELU,
      CELU, Softplus, a single-slope PReLU on the logits), exported to OUT/model.onnx as a user
      exports for training; then trained as `train` does (OUT/x_<k>.npy, y_<k>.npy, losses.json).
      With --net video, a network of clips [B, 3, 4, 8, 8] instead: Conv3d, BatchNorm3d,
      LocalResponseNorm (exported as Pad, a 3-D AveragePool and an If on a shape), MaxPool3d,
      ConvTranspose3d, AvgPool3d. With --net sequence, sequences [B, 5, 4] through nn.LSTM
      (2 layers, bidirectional), nn.GRU and nn.RNN (ONNX's LSTM, GRU and RNN ops). With --net qat,
      a network prepared for quantization-aware training (fake quantization exported as
      QuantizeLinear -> DequantizeLinear, observers calibrated and then frozen), trained with
      ONNX's rounding (x / scale) and PyTorch's fake-quantization gradient. With --net loop,
      sequences [B, 5, 4] through TorchScript control flow, scripted and exported as ONNX Loops
      over sequences: a recurrent cell written as a loop over time and torch.tensor_split. With
      --net functions, sequences [B, 5, 4] through two residual blocks exported as calls of
      model-local ONNX functions (export_modules_as_functions), a LayerNorm function nested.

  torch_reference.py packed OUT [--seed 0]
      Padded sequences of 4 lengths through a packed bidirectional LSTM and a packed GRU
      (sequence_lens in ONNX), exported to OUT/model.onnx; OUT/x.npy, lens.npy and PyTorch's
      outputs OUT/y.npy, h.npy.

  torch_reference.py quantized OUT [--seed 0] [--threads 1]
      torchvision's quantizable ResNet-18 (random weights), quantized after training (static,
      qnnpack: uint8 activations, int8 weights; observers calibrated on 4 seeded batches) and
      exported as PyTorch exports quantized models (QuantizeLinear / DequantizeLinear around float
      Conv and Gemm, opset 13): OUT/model.onnx, OUT/x.npy [2, 3, 64, 64], PyTorch's quantized
      logits OUT/y.npy and OUT/quantized.json ({"output_scale": the logits' quantum}).

  torch_reference.py signal OUT [--seed 0]
      An ONNX graph of HannWindow -> STFT, DFT (zero-padded, inverse), HammingWindow and
      BlackmanWindow, MelWeightMatrix (OUT/model.onnx, built with onnx.helper), its inputs
      OUT/<input>.npy and the results OUT/want_<output>.npy (torch.stft, torch.fft, torch's windows
      in float64; the mel matrix by ONNX's reference formula).

  torch_reference.py bench NAME [--batch 32] [--threads 1] [--steps 20] [--warmup 3]
      Prints {"steps_per_s": ..., "steps_per_cpu_s": ...} (per second of the process's CPU time) for training steps (forward, loss, backward, SGD step).
"""
import argparse
import json
import os
import sys
import time
from typing import List

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sample_models  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def batch(name, b, rng):
    cfg = sample_models.CONFIGS[name]
    shape = [b] + cfg["input"]["shape"][1:]
    if name == "gpt":
        x = rng.randint(0, cfg["vocab"], size=shape).astype(np.int64)
        y = rng.randint(0, cfg["vocab"], size=shape).astype(np.int64)
    else:
        x = rng.standard_normal(shape).astype(np.float32)
        y = rng.randint(0, cfg["classes"], size=[b]).astype(np.int64)
    return x, y


def model_for(name):
    m = sample_models.build_model(name)
    sample_models.load_onnx_weights(m, os.path.join(ROOT, "sample_models", f"{name}.onnx"))
    m.train()
    return m


def step(model, opt, x, y):
    opt.zero_grad()
    out = model(x)
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    loss.backward()
    opt.step()
    return loss.item()


def train_and_record(model, batches, out, lr):
    """SGD steps on `batches` ((x, y) arrays), each saved to OUT with the losses."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses = []
    for k, (x, y) in enumerate(batches):
        np.save(os.path.join(out, f"x_{k}.npy"), x)
        np.save(os.path.join(out, f"y_{k}.npy"), y)
        losses.append(step(model, opt, torch.from_numpy(x), torch.from_numpy(y)))
    with open(os.path.join(out, "losses.json"), "w") as f:
        json.dump({"losses": losses}, f)
    return 0


def cmd_train(a):
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.RandomState(a.seed)
    batches = [batch(a.name, a.batch, rng) for _ in range(a.steps)]
    return train_and_record(model_for(a.name), batches, a.out, a.lr)


class OpsNet(torch.nn.Module):
    """[B, 3, 8, 8] -> 10 logits through the ops `ops` exercises."""

    def __init__(self):
        super().__init__()
        self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.gn = torch.nn.GroupNorm(4, 8)
        self.act1 = torch.nn.PReLU(8)
        self.up = torch.nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.inorm = torch.nn.InstanceNorm2d(6, affine=True)
        self.up2 = torch.nn.ConvTranspose2d(6, 6, 2, stride=2, groups=2)
        self.head = torch.nn.Linear(6, 10)
        self.act2 = torch.nn.PReLU()
        with torch.no_grad():  # affine parameters away from their identity start
            for m in (self.gn, self.inorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
            self.act1.weight.uniform_(0.05, 0.4)

    def forward(self, x):
        h = self.act1(self.gn(self.down(x)))
        h = F.elu(self.inorm(self.up(h)), 0.7)
        h = F.softplus(F.celu(F.selu(self.up2(h)), 0.5))
        return self.act2(self.head(h.mean(dim=(2, 3))))


class VideoNet(torch.nn.Module):
    """[B, 3, 4, 8, 8] clips -> 10 logits through 3-D convolution and pooling."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv3d(3, 8, 3, stride=(1, 2, 2), padding=1)  # [B, 8, 4, 4, 4]
        self.bn = torch.nn.BatchNorm3d(8)
        self.lrn = torch.nn.LocalResponseNorm(3, alpha=0.5, beta=0.75, k=1.5)  # alpha large enough to matter
        self.pool = torch.nn.MaxPool3d(2)  # [B, 8, 2, 2, 2]
        self.up = torch.nn.ConvTranspose3d(8, 6, 2, stride=2)  # [B, 6, 4, 4, 4]
        self.avg = torch.nn.AvgPool3d(3, stride=2, padding=1)  # [B, 6, 2, 2, 2], padding counted
        self.head = torch.nn.Linear(6, 10)

    def forward(self, x):
        h = self.lrn(F.relu(self.bn(self.conv(x))))
        h = F.relu(self.up(self.pool(h)))
        return self.head(self.avg(h).mean(dim=(2, 3, 4)))


class SequenceNet(torch.nn.Module):
    """[B, 5, 4] sequences -> 10 logits through a bidirectional LSTM of 2 layers, a GRU and an RNN
    (batch first, initial states zero, as nn.LSTM / GRU / RNN export without them)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(4, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(12, 5, batch_first=True)
        self.rnn = torch.nn.RNN(5, 4, batch_first=True)
        self.head = torch.nn.Linear(4 + 5, 10)

    def forward(self, x):
        h, _ = self.lstm(x)
        g, gh = self.gru(h)
        r, _ = self.rnn(g)
        return self.head(torch.cat([r[:, -1], gh[0]], dim=1))


class LoopNet(torch.nn.Module):
    """[B, 5, 4] sequences -> 10 logits through TorchScript control flow, exported (scripted) as
    ONNX Loops over sequences: a recurrent cell written as a Python loop over time (a Loop with
    the state carried, each step's state inserted into a sequence that ConcatFromSequence
    stacks), and torch.tensor_split (a Loop of Slices into a sequence, read by SequenceAt)."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(4, 6)
        self.rec = torch.nn.Linear(6, 6)
        self.parts = torch.nn.Linear(6, 8)
        self.head = torch.nn.Linear(8 + 6, 10)

    def forward(self, x):
        h = torch.zeros(x.size(0), 6)
        steps: List[torch.Tensor] = []
        for t in range(x.size(1)):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
            steps.append(h)
        a, b = torch.tensor_split(self.parts(torch.stack(steps, 1).mean(1)), (3,), dim=1)
        return self.head(torch.cat([torch.relu(a), torch.sigmoid(b), h], 1))


class FunctionBlock(torch.nn.Module):
    """A pre-norm residual block (LayerNorm, Linear, GELU), exported as an ONNX function."""

    def __init__(self, d):
        super().__init__()
        self.norm = torch.nn.LayerNorm(d)
        self.fc = torch.nn.Linear(d, d)

    def forward(self, x):
        return x + F.gelu(self.fc(self.norm(x)))


class FunctionsNet(torch.nn.Module):
    """[B, 5, 4] sequences -> 10 logits through two FunctionBlocks, exported with
    export_modules_as_functions: each block is a call of one model-local function (its weights
    passed in, different per call), which calls the LayerNorm function in turn."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(4, 6)
        self.b1 = FunctionBlock(6)
        self.b2 = FunctionBlock(6)
        self.head = torch.nn.Linear(6, 10)

    def forward(self, x):
        return self.head(self.b2(self.b1(self.inp(x))).mean(1))


class QatNet(torch.nn.Module):
    """[B, 3, 8, 8] -> 10 logits, prepared for quantization-aware training (torch.ao.quantization):
    uint8 activations per tensor (reduce_range: 0 to 127, exported as QuantizeLinear, Clip,
    DequantizeLinear), int8 weights per output channel, a grouped strided Conv and a Linear."""

    def __init__(self):
        super().__init__()
        import torch.ao.quantization as tq
        self.quant = tq.QuantStub()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 8, 3, stride=2, groups=2)  # [B, 8, 3, 3]
        self.head = torch.nn.Linear(8 * 3 * 3, 10)
        self.dequant = tq.DeQuantStub()

    def forward(self, x):
        h = F.relu(self.conv(self.quant(x)))
        return self.dequant(self.head(self.conv2(h).flatten(1)))

    def prepare(self, calibration):
        """Observers calibrated on `calibration` (arrays), then frozen: the scales and zero points
        stay fixed while training, as the exported constants do."""
        import torch.ao.quantization as tq
        self.qconfig = tq.QConfig(activation=tq.default_fake_quant, weight=tq.default_per_channel_weight_fake_quant)
        tq.prepare_qat(self, inplace=True)
        with torch.no_grad():
            for x in calibration:
                self(torch.from_numpy(x))
        self.apply(tq.disable_observer)


class OnnxFakeQuant(torch.autograd.Function):
    """ONNX's QuantizeLinear -> DequantizeLinear (x / scale, rounded half to even; PyTorch's own
    kernel multiplies by 1 / scale, which rounds differently near ties) with PyTorch's
    fake-quantization gradient: dy where round(x / scale) + zero lies in [qmin, qmax]."""

    @staticmethod
    def forward(ctx, x, scale, zero, qmin, qmax):
        q = torch.round(x / scale) + zero
        ctx.save_for_backward((q >= qmin) & (q <= qmax))
        return (q.clamp(qmin, qmax) - zero) * scale

    @staticmethod
    def backward(ctx, g):
        (keep,) = ctx.saved_tensors
        return g * keep, None, None, None, None


def onnx_fake_quant():
    """Replaces torch's fake quantization (what FakeQuantize modules call) by OnnxFakeQuant."""
    def per_tensor(x, scale, zero, qmin, qmax):
        return OnnxFakeQuant.apply(x, scale.float(), zero.float(), qmin, qmax)

    def per_channel(x, scale, zero, axis, qmin, qmax):
        shape = [1] * x.dim()
        shape[axis] = -1
        return OnnxFakeQuant.apply(x, scale.float().reshape(shape), zero.float().reshape(shape), qmin, qmax)

    torch.fake_quantize_per_tensor_affine = per_tensor
    torch.fake_quantize_per_channel_affine = per_channel


NETS = {"ops": (OpsNet, [3, 8, 8]), "video": (VideoNet, [3, 4, 8, 8]), "sequence": (SequenceNet, [5, 4]),
        "qat": (QatNet, [3, 8, 8]), "loop": (LoopNet, [5, 4]), "functions": (FunctionsNet, [5, 4])}


def cmd_ops(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    net, sample = NETS[a.net]
    model = net()
    model.train()
    rng = np.random.RandomState(a.seed)
    batches = []
    for _ in range(a.steps):
        x = rng.standard_normal([a.batch] + sample).astype(np.float32)
        batches.append((x, rng.randint(0, 10, size=[a.batch]).astype(np.int64)))
    if hasattr(model, "prepare"):
        model.prepare([rng.standard_normal([a.batch] + sample).astype(np.float32) for _ in range(4)])
    # the loop net's control flow exports as ONNX Loops only from TorchScript (tracing unrolls it)
    exported = torch.jit.script(model) if a.net == "loop" else model
    functions = {"export_modules_as_functions": {FunctionBlock, torch.nn.LayerNorm}} if a.net == "functions" else {}
    torch.onnx.export(exported, torch.from_numpy(batches[0][0]), os.path.join(a.out, "model.onnx"), input_names=["x"],
                      output_names=["logits"], opset_version=17, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False, **functions)
    if a.net == "qat":
        onnx_fake_quant()
    return train_and_record(model, batches, a.out, a.lr)


class PackedNet(torch.nn.Module):
    """Padded sequences [B, T, 3] of the lengths `lens` through a packed bidirectional LSTM and a
    packed GRU: what PyTorch exports with sequence_lens (and TopK / ScatterElements to sort the
    rows by length and back)."""

    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(8, 5, batch_first=True)

    def forward(self, x, lens):
        pack = torch.nn.utils.rnn.pack_padded_sequence
        h, _ = self.lstm(pack(x, lens, batch_first=True, enforce_sorted=False))
        h, _ = torch.nn.utils.rnn.pad_packed_sequence(h, batch_first=True, total_length=x.shape[1])
        g, gh = self.gru(pack(h, lens, batch_first=True, enforce_sorted=False))
        g, _ = torch.nn.utils.rnn.pad_packed_sequence(g, batch_first=True, total_length=x.shape[1])
        return g, gh


def cmd_packed(a):
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    model = PackedNet()
    x = torch.from_numpy(np.random.RandomState(a.seed).standard_normal([4, 6, 3]).astype(np.float32))
    lens = torch.tensor([6, 2, 5, 1])
    torch.onnx.export(model, (x, lens), os.path.join(a.out, "model.onnx"), input_names=["x", "lens"],
                      output_names=["y", "h"], opset_version=17)
    y, h = model(x, lens)
    for name, v in (("x", x), ("lens", lens), ("y", y), ("h", h)):
        np.save(os.path.join(a.out, name + ".npy"), v.detach().numpy())
    return 0


def cmd_quantized(a):
    """torchvision's quantizable ResNet-18 quantized after training (static, qnnpack: uint8
    activations, int8 weights per tensor), exported as PyTorch exports quantized models."""
    import warnings
    import torchvision
    import torch.ao.quantization as tq
    warnings.simplefilter("ignore")
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    torch.backends.quantized.engine = "qnnpack"
    m = torchvision.models.quantization.resnet18(weights=None, quantize=False)
    m.eval()
    m.fuse_model()
    m.qconfig = tq.get_default_qconfig("qnnpack")
    tq.prepare(m, inplace=True)
    rng = np.random.RandomState(a.seed)
    with torch.no_grad():
        for _ in range(4):
            m(torch.from_numpy(rng.standard_normal([2, 3, 64, 64]).astype(np.float32)))
    tq.convert(m, inplace=True)
    x = torch.from_numpy(rng.standard_normal([2, 3, 64, 64]).astype(np.float32))
    with torch.no_grad():
        y = m(x)
    torch.onnx.export(m, x, os.path.join(a.out, "model.onnx"), opset_version=13, input_names=["x"], output_names=["y"])
    np.save(os.path.join(a.out, "x.npy"), x.numpy())
    np.save(os.path.join(a.out, "y.npy"), y.numpy())
    with open(os.path.join(a.out, "quantized.json"), "w") as f:
        json.dump({"output_scale": float(m.fc.scale)}, f)  # the logits' quantum
    return 0


def mel_weights(mels, dft, rate, lo, hi):
    """MelWeightMatrix as ONNX's reference builds it (onnx/backend/test/case/node/melweightmatrix.py;
    torch has no such op): num_mel_bins + 2 points evenly spaced in mel, the step the range over
    num_mel_bins + 2, triangular filters between them."""
    points = np.arange(0, mels + 2)
    lo_mel = 2595 * np.log10(1 + lo / 700)
    hi_mel = 2595 * np.log10(1 + hi / 700)
    step = (hi_mel - lo_mel) / points.shape[0]
    hz = 700 * (np.power(10, (points * step + lo_mel) / 2595) - 1)
    bins = (((dft + 1) * hz) // rate).astype(int)
    out = np.zeros((dft // 2 + 1, mels))
    for i in range(mels):
        left, center, right = bins[i], bins[i + 1], bins[i + 2]
        if center == left:
            out[center, i] = 1
        else:
            for j in range(left, center + 1):
                out[j, i] = (j - left) / (center - left)
        for j in range(center, right):
            out[j, i] = (right - j) / (right - center)
    return out.astype(np.float32)


def cmd_signal(a):
    """An ONNX graph of the signal ops (built with onnx.helper: PyTorch 1.13 cannot export
    torch.stft) and PyTorch's results for its inputs: HannWindow(256) -> STFT of 1024 samples
    (frame_step 128, onesided) against torch.stft(n_fft=256, hop_length=128, center=False); a
    DFT along axis 1 zero-padded to 64 against torch.fft.fft(n=64); an inverse DFT of complex
    input against torch.fft.ifft; HammingWindow and BlackmanWindow (symmetric) against torch's; a
    MelWeightMatrix of 80 mel bins for 400-sample frames at 16 kHz against ONNX's reference.
    The STFT node leaves onesided at its default, which onnx 1.12's shape inference misreads."""
    import onnx
    from onnx import TensorProto, helper
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.RandomState(a.seed)
    sig = rng.standard_normal([2, 1024, 1]).astype(np.float32)
    x = rng.standard_normal([3, 50, 4, 1]).astype(np.float32)
    z = rng.standard_normal([2, 12, 2]).astype(np.float32)
    ints = lambda name, v: helper.make_tensor(name, TensorProto.INT64, [], [v])
    nodes = [
        helper.make_node("HannWindow", ["n256"], ["hann"]),
        helper.make_node("STFT", ["signal", "step", "hann"], ["spec"]),
        helper.make_node("DFT", ["x", "n64"], ["fx"], axis=1),
        helper.make_node("DFT", ["z"], ["iz"], axis=1, inverse=1),
        helper.make_node("HammingWindow", ["n30"], ["hamming"], periodic=0),
        helper.make_node("BlackmanWindow", ["n30"], ["blackman"], periodic=0),
        helper.make_node("MelWeightMatrix", ["n80", "n400", "rate", "lo", "hi"], ["mel"]),
    ]
    f = TensorProto.FLOAT
    g = helper.make_graph(
        nodes, "signal",
        [helper.make_tensor_value_info("signal", f, [2, 1024, 1]), helper.make_tensor_value_info("x", f, [3, 50, 4, 1]),
         helper.make_tensor_value_info("z", f, [2, 12, 2])],
        [helper.make_tensor_value_info(n, f, d) for n, d in (("spec", [2, 7, 129, 2]), ("fx", [3, 64, 4, 2]), ("iz", [2, 12, 2]),
                                                             ("hamming", [30]), ("blackman", [30]), ("mel", [201, 80]))],
        initializer=[ints("n256", 256), ints("step", 128), ints("n64", 64), ints("n30", 30), ints("n80", 80), ints("n400", 400),
                     ints("rate", 16000), helper.make_tensor("lo", f, [], [0.0]), helper.make_tensor("hi", f, [], [8000.0])])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, os.path.join(a.out, "model.onnx"))
    for name, v in (("signal", sig), ("x", x), ("z", z)):
        np.save(os.path.join(a.out, name + ".npy"), v)

    def parts(c):
        return np.stack([c.real, c.imag], axis=-1).astype(np.float32)

    t = torch.from_numpy
    spec = torch.stft(t(sig[..., 0]).double(), n_fft=256, hop_length=128, window=torch.hann_window(256, dtype=torch.float64),
                      center=False, return_complex=True)  # [2, 129, 7]
    ref = {
        "spec": parts(spec.transpose(1, 2).numpy()),
        "fx": parts(torch.fft.fft(t(x[..., 0]).double(), n=64, dim=1).numpy()),
        "iz": parts(torch.fft.ifft(torch.complex(t(z[..., 0]).double(), t(z[..., 1]).double()), dim=1).numpy()),
        # ONNX's Hamming window is 25/46 - 21/46 cos (torch's default 0.54 - 0.46 cos)
        "hamming": torch.hamming_window(30, periodic=False, alpha=25 / 46, beta=21 / 46, dtype=torch.float64).numpy().astype(np.float32),
        "blackman": torch.blackman_window(30, periodic=False, dtype=torch.float64).numpy().astype(np.float32),
    }
    ref["mel"] = mel_weights(80, 400, 16000, np.float32(0), np.float32(8000))
    for name, v in ref.items():
        np.save(os.path.join(a.out, "want_" + name + ".npy"), v)
    return 0


def cmd_bench(a):
    torch.set_num_threads(a.threads)
    model = model_for(a.name)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    rng = np.random.RandomState(a.seed)
    x, y = batch(a.name, a.batch, rng)
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(a.warmup):
        step(model, opt, x, y)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(a.steps):
        step(model, opt, x, y)
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"steps_per_s": a.steps / dt, "steps_per_cpu_s": a.steps / dc}))
    return 0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("name")
    t.add_argument("out")
    o = sub.add_parser("ops")
    o.add_argument("out")
    o.add_argument("--net", choices=sorted(NETS), default="ops")
    pk = sub.add_parser("packed")
    pk.add_argument("out")
    pk.add_argument("--seed", type=int, default=0)
    qz = sub.add_parser("quantized")
    qz.add_argument("out")
    qz.add_argument("--seed", type=int, default=0)
    qz.add_argument("--threads", type=int, default=1)
    sg = sub.add_parser("signal")
    sg.add_argument("out")
    sg.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench")
    b.add_argument("name")
    b.add_argument("--warmup", type=int, default=3)
    for q in (t, o, b):
        q.add_argument("--steps", type=int, default=20)
        q.add_argument("--batch", type=int, default=32 if q is b else 8)
        q.add_argument("--lr", type=float, default=0.05)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    return {"train": cmd_train, "ops": cmd_ops, "packed": cmd_packed, "quantized": cmd_quantized,
            "signal": cmd_signal, "bench": cmd_bench}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
