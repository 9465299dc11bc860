#!/usr/bin/python3
"""The torchvision classification zoo for smp's zoo test: exports and PyTorch references.

Every classification architecture of Debian's python3-torchvision (0.14), built with seeded
random weights, exported as a user trains it: torch.onnx.export(training=TrainingMode.TRAINING,
do_constant_folding=False), opset 17, the batch axis symbolic, at the smallest input size the
architecture accepts (SIZES below; `sizes` re-derives them).

    zoo_models.py list [--fast]            # name, input size, family (the fast subset with --fast)
    zoo_models.py export NAME DIR          # DIR/NAME.onnx and DIR/NAME.json (size, params, nodes)
    zoo_models.py reference NAME DIR       # PyTorch's forward and training on the export's weights
    zoo_models.py eval NAME SIZE ONNX X OUT  # PyTorch's eval() forward with an ONNX file's weights
    zoo_models.py gradient NAME DIR EXPORTED LR  # one step's gradient: smp's (from EXPORTED) and
                                           # PyTorch float32's, each against float64
    zoo_models.py spread NAME DIR [--losses F --trained ONNX --logits L]  # float32's losses and
                                           # statistics on rounding-sized moves of the rows against
                                           # float64's (and smp's, from smp-run's files)
    zoo_models.py forward NAME... [--size S]  # exported at S (224), smp-run --forward against
                                           # PyTorch's train-mode forward (also the segmentation
                                           # models of SEGMENTATION, which upsample with Resize,
                                           # and the video models of VIDEO, on clips)
    zoo_models.py rows NAME DIR [--size S]  # NAME exported at S with random rows and labels in
                                           # DIR/NAME.ref (for gradient; per pixel for segmentation)
    zoo_models.py sizes NAME...            # smallest accepted input size, searched upwards from 1
    zoo_models.py table DIR                # markdown: every architecture with what DIR records
                                           # (the test's cache: exports and results/NAME.json)

Dropout and stochastic depth have probability 0 in these exports, so that PyTorch's numbers are
deterministic (smp's random masks are tested apart: tests/runtime/test_random.cpp). ViT's
classification head, zero in torchvision (no gradient would reach the encoder in step 1), gets
nn.Linear's own seeded initialization.

`reference` loads DIR/NAME.onnx's initializers into the module (parameters and BatchNorm running
statistics, by name), then writes DIR/NAME.ref/:
    x.npy, labels.npy            the training rows (steps × microbatches × microbatch-size)
    forward/x.npy, logits.npy    a train-mode forward of the first microbatch (statistics of that
                                 microbatch, running statistics untouched)
    losses.txt                   per step: the loss of --microbatches microbatches run one after
                                 the other (each scaled by 1/microbatches, gradients accumulated),
                                 then one SGD step (--lr)
    eval/x.npy                   the rows of the eval-mode check: the test runs smp-run --export's
                                 model on them and `eval` gives PyTorch's eval() forward with that
                                 file's weights and running statistics (the export is checked on its
                                 own, apart from how training's rounding moved the weights)
    stats/NAME.npy               every BatchNorm's running mean and variance after training

Exports of torchvision 0.14 need two patches of torch 1.13's exporter, neither changing the
maths: swin_v2's attention zeroes a slice of a bias in place (`aten::zero_` has no ONNX export)
and is rewritten with torch.cat; nothing else is changed.

Needs Debian's python3-torch / python3-torchvision / python3-onnx (hence /usr/bin/python3).
"""

import argparse
import contextlib
import copy
import inspect
import json
import os
import shutil
import sys
import warnings

warnings.simplefilter("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision.models as M  # noqa: E402
import torchvision.models.swin_transformer as SW  # noqa: E402
from torchvision.ops import StochasticDepth  # noqa: E402

OPSET = 17
SEED = 1234
EXPORT_VERSION = 3  # bump when an export's content changes: the test's cache re-exports
REFERENCE_VERSION = 5  # bump when a reference's content or choice changes: the test's cache re-makes it

# The zoo test's tolerances (relative to the largest magnitude): forward logits, the losses of the
# training steps, the running statistics after them.
TOLERANCE = {"forward": 1e-4, "losses": 1e-3, "stats": 1e-3}
# A comparison with PyTorch is well-posed when PyTorch's own float32 and perturbed float64 runs
# agree with float64 to a tenth of each tolerance, and the losses move by MIN_SIGNAL or more.
PERTURB = 1e-6
MIN_SIGNAL = 5e-3
# `gradient`: a ReLU input this close to its kink (relative to its tensor's largest) can flip in float32.
KINK = 1e-5

# Smallest input size (square) each architecture accepts in a training-mode forward of 2 samples
# and in torch 1.13's ONNX export (an AdaptiveAvgPool2d must pool by a whole factor), found by
# `zoo_models.py sizes` (upwards from 1). ViT takes its image size as an argument: one patch.
SIZES = {
    "alexnet": 223,
    "convnext_tiny": 32, "convnext_small": 32, "convnext_base": 32, "convnext_large": 32,
    "densenet121": 29, "densenet161": 29, "densenet169": 29, "densenet201": 29,
    "efficientnet_b0": 1, "efficientnet_b1": 1, "efficientnet_b2": 1, "efficientnet_b3": 1,
    "efficientnet_b4": 1, "efficientnet_b5": 1, "efficientnet_b6": 1, "efficientnet_b7": 1,
    "efficientnet_v2_s": 1, "efficientnet_v2_m": 1, "efficientnet_v2_l": 1,
    "googlenet": 15,
    "inception_v3": 75,
    "maxvit_t": 221,
    "mnasnet0_5": 1, "mnasnet0_75": 1, "mnasnet1_0": 1, "mnasnet1_3": 1,
    "mobilenet_v2": 1, "mobilenet_v3_large": 1, "mobilenet_v3_small": 1,
    "regnet_x_400mf": 1, "regnet_x_800mf": 1, "regnet_x_1_6gf": 1, "regnet_x_3_2gf": 1,
    "regnet_x_8gf": 1, "regnet_x_16gf": 1, "regnet_x_32gf": 1,
    "regnet_y_400mf": 1, "regnet_y_800mf": 1, "regnet_y_1_6gf": 1, "regnet_y_3_2gf": 1,
    "regnet_y_8gf": 1, "regnet_y_16gf": 1, "regnet_y_32gf": 1, "regnet_y_128gf": 1,
    "resnet18": 1, "resnet34": 1, "resnet50": 1, "resnet101": 1, "resnet152": 1,
    "resnext50_32x4d": 1, "resnext101_32x8d": 1, "resnext101_64x4d": 1,
    "wide_resnet50_2": 1, "wide_resnet101_2": 1,
    "shufflenet_v2_x0_5": 1, "shufflenet_v2_x1_0": 1, "shufflenet_v2_x1_5": 1, "shufflenet_v2_x2_0": 1,
    "squeezenet1_0": 21, "squeezenet1_1": 17,
    "swin_t": 4, "swin_s": 4, "swin_b": 4,
    "swin_v2_t": 4, "swin_v2_s": 4, "swin_v2_b": 4,
    "vgg11": 224, "vgg11_bn": 224, "vgg13": 224, "vgg13_bn": 224,
    "vgg16": 224, "vgg16_bn": 224, "vgg19": 224, "vgg19_bn": 224,
    "vit_b_16": 16, "vit_b_32": 32, "vit_l_16": 16, "vit_l_32": 32, "vit_h_14": 14,
}

# torchvision's segmentation models (21 classes, no auxiliary head): their class maps are
# upsampled to the input's size by bilinear interpolation (Resize). `forward`, `rows` and
# `gradient` run them; their output is the model's "out", classes last (_SegmentationOut).
SEGMENTATION = ("fcn_resnet50", "fcn_resnet101", "deeplabv3_mobilenet_v3_large", "deeplabv3_resnet50",
                "deeplabv3_resnet101", "lraspp_mobilenet_v3_large")

# torchvision's video classification models (400 Kinetics classes): clips [N, 3, frames, size,
# size] at their usual frames and size. Only `forward` runs them (3-D convolution and pooling).
# mvit_v1_b and mvit_v2_s export their pooled attention's torch.tensor_split as a Loop over a
# sequence, which smp's loader unrolls (their forward on 2 clips holds about 9 GB).
VIDEO = {"r3d_18": (16, 112), "mc3_18": (16, 112), "r2plus1d_18": (16, 112), "s3d": (16, 224),
         "mvit_v1_b": (16, 224), "mvit_v2_s": (16, 224)}

# The default test run's subset: BatchNorm training with running statistics (resnet18) and a
# concat-heavy net without BatchNorm (squeezenet1_1), both with a recorded well-posed comparison.
# mobilenet_v3_small (HardSwish / HardSigmoid, depthwise) has none up to input 64, microbatch 32:
# its loss moves by less than MIN_SIGNAL in 3 steps at lr 1e-2.
FAST = ("resnet18", "squeezenet1_1")


def family(name):
    for f in ("resnext", "wide_resnet", "resnet", "mobilenet_v2", "mobilenet_v3", "efficientnet_v2", "efficientnet",
              "regnet", "convnext", "densenet", "squeezenet", "shufflenet", "mnasnet", "vgg", "alexnet", "googlenet",
              "inception", "vit", "swin_v2", "swin", "maxvit"):
        if name.startswith(f):
            return f
    return name


def _patch_exporter():
    """swin_v2: `qkv_bias[length:2*length].zero_()` -> the same values built with torch.cat."""
    src = inspect.getsource(SW.shifted_window_attention)
    old = "qkv_bias[length : 2 * length].zero_()"
    if old not in src:
        return
    src = src.replace(old, "qkv_bias = torch.cat([qkv_bias[:length], torch.zeros_like(qkv_bias[length : 2 * length]), "
                           "qkv_bias[2 * length :]])")
    exec(compile(src, SW.__file__, "exec"), SW.__dict__)  # noqa: S102


_patch_exporter()


class _SegmentationOut(torch.nn.Module):
    """A segmentation model's "out" (its other outputs are auxiliary heads, off here), the class
    axis last: [N, H, W, classes], as smp-run's cross-entropy (over the last axis, per pixel)
    and `accumulate` read it."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)["out"].permute(0, 2, 3, 1)


def clip(name, size, n=2):
    """The input shape of n samples at SIZE: images, or clips of VIDEO's frames."""
    return (n, 3, VIDEO[name][0], size, size) if name in VIDEO else (n, 3, size, size)


def build(name, size=None, deterministic=True):
    """The architecture with seeded random weights; dropout / stochastic depth off when deterministic."""
    if name in VIDEO:
        import torchvision.models.video as V

        torch.manual_seed(SEED)
        m = getattr(V, name)(weights=None)
        for mod in m.modules():
            if deterministic and isinstance(mod, (torch.nn.Dropout, StochasticDepth)):
                mod.p = 0.0
        return m.train()
    if name in SEGMENTATION:
        import torchvision.models.segmentation as S

        torch.manual_seed(SEED)
        kw = {} if name.startswith("lraspp") else {"aux_loss": False}
        m = _SegmentationOut(getattr(S, name)(weights=None, weights_backbone=None, num_classes=21, **kw))
        if deterministic:
            for mod in m.modules():
                if isinstance(mod, torch.nn.Dropout):
                    mod.p = 0.0
        return m.train()
    size = size or SIZES[name]
    kw = {}
    if name.startswith("vit_"):
        kw["image_size"] = size
    if name.startswith("maxvit"):
        kw["input_size"] = (size, size)
    if name in ("googlenet", "inception_v3"):
        kw["aux_logits"] = False
        kw["init_weights"] = True
    torch.manual_seed(SEED)
    m = M.get_model(name, weights=None, **kw)
    if name.startswith("vit_"):
        # torchvision zeroes ViT's classification head: every gradient but the head's would be 0
        # in the first step, and a wrong encoder gradient would hardly move 3 steps' losses. The
        # head gets nn.Linear's own (seeded) initialization instead.
        m.heads.head.reset_parameters()
    if deterministic:
        for mod in m.modules():
            if isinstance(mod, (torch.nn.Dropout, StochasticDepth)):
                mod.p = 0.0
    m.train()
    return m


def param_count(m):
    return sum(p.numel() for p in m.parameters())


def frozen_buffers(m, model):
    """Floating-point buffers other than BatchNorm's running statistics that the export keeps as
    initializers (swin_v2's relative_coords_table): ONNX cannot tell them from weights, so smp is
    told with --freeze."""
    inits = {t.name for t in model.graph.initializer}
    stats = ("running_mean", "running_var", "num_batches_tracked")
    return sorted(n for n, b in m.named_buffers()
                  if n in inits and b.is_floating_point() and not n.endswith(stats))


def export_path(out_dir, name, size=None):
    """NAME.onnx at the smallest size, NAME.sSIZE.onnx at another."""
    size = size or SIZES[name]
    return os.path.join(out_dir, f"{name}.onnx" if size == SIZES.get(name) else f"{name}.s{size}.onnx")


def export_current(path):
    """Whether the export at PATH exists and was made by this EXPORT_VERSION."""
    meta = path[: -len(".onnx")] + ".json"
    if not (os.path.exists(path) and os.path.exists(meta)):
        return False
    with open(meta) as f:
        return json.load(f).get("version") == EXPORT_VERSION


def ensure_export(name, out_dir, size):
    """NAME's export at SIZE in OUT_DIR, made (its summary line not printed) unless current:
    its path, and whether it was made now."""
    path = export_path(out_dir, name, size)
    if export_current(path):
        return path, False
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        export(name, out_dir, size)
    return path, True


def export(name, out_dir, size=None):
    import onnx

    size = size or (VIDEO[name][1] if name in VIDEO else SIZES[name])
    m = build(name, size)
    os.makedirs(out_dir, exist_ok=True)
    path = export_path(out_dir, name, size)
    # Over 2 GB (vit_h_14, regnet_y_128gf) torch writes every weight to its own file beside the
    # model: export into a folder of its own, then keep one model file and one NAME.onnx.data.
    tmp_dir = path + ".tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    os.makedirs(tmp_dir)
    tmp = os.path.join(tmp_dir, os.path.basename(path))
    x = torch.randn(*clip(name, size))
    with torch.no_grad():
        torch.onnx.export(m, x, tmp, opset_version=OPSET, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    if len(os.listdir(tmp_dir)) > 1:
        whole = onnx.load(tmp)
        data = os.path.basename(path) + ".data"
        onnx.save_model(whole, os.path.join(tmp_dir, "one.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data, size_threshold=1024)
        del whole
        os.replace(os.path.join(tmp_dir, data), path + ".data")
        tmp = os.path.join(tmp_dir, "one.onnx")
    os.replace(tmp, path)
    shutil.rmtree(tmp_dir)
    model = onnx.load(path, load_external_data=False)
    info = {"version": EXPORT_VERSION, "name": name, "family": family(name), "size": size, "params": param_count(m),
            "nodes": len(model.graph.node), "opset": OPSET, "frozen": frozen_buffers(m, model)}
    with open(path[: -len(".onnx")] + ".json", "w") as f:
        json.dump(info, f)
    print(json.dumps(info))
    return 0


def initializers(path):
    """(name, numpy array) of each initializer of the ONNX file at PATH, one at a time: external
    data (exports over 2 GB) is read per tensor and dropped after it, so that a 632 M-parameter
    model's weights are never all in memory as protobuf bytes."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    model = onnx.load(path, load_external_data=False)
    base = os.path.dirname(os.path.abspath(path))
    for t in model.graph.initializer:
        external = external_data_helper.uses_external_data(t)
        if external:
            external_data_helper.load_external_data_for_tensor(t, base)
            t.data_location = onnx.TensorProto.DEFAULT  # to_array would read the file again, from the working directory
            del t.external_data[:]
        yield t.name, numpy_helper.to_array(t)
        if external:
            t.ClearField("raw_data")


def load_onnx_weights(model, path):
    """Parameters and buffers of the module from the export's initializers, by name."""
    state = model.state_dict()
    found, seen = 0, set()
    with torch.no_grad():
        for n, a in initializers(path):
            seen.add(n)
            if n not in state:
                continue
            t = state[n]
            assert tuple(a.shape) == tuple(t.shape), f"{path}: {n}: {a.shape} != {tuple(t.shape)}"
            t.copy_(torch.from_numpy(a.copy()).to(t.dtype))
            found += 1
    missing = [n for n, _ in model.named_parameters() if n not in seen]
    assert not missing, f"{path}: parameters not among the initializers: {missing[:5]}"
    return found


def bn_stats(model):
    out = {}
    for n, mod in model.named_modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
            out[f"{n}.running_mean"] = mod.running_mean.detach().numpy().copy()
            out[f"{n}.running_var"] = mod.running_var.detach().numpy().copy()
    return out


def accumulate(m, x, y, mbs):
    """The `mbs` microbatches of x run one after the other, each loss scaled by 1/mbs and its
    gradient accumulated (what one step of smp's pipeline computes); their summed loss. The loss:
    cross-entropy over the output's last axis, the mean over all other positions (smp-run's)."""
    b = x.shape[0] // mbs
    total = 0.0
    for j in range(mbs):
        out = m(x[j * b:(j + 1) * b])  # classes on the last axis (per pixel for segmentation: mean over pixels)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y[j * b:(j + 1) * b].reshape(-1)) / mbs
        loss.backward()
        total += loss.item()
    return total


def train3(m, x, y, mbs, lr, steps):
    """`steps` SGD steps on the same microbatches, run one after the other; the loss of each step."""
    opt = torch.optim.SGD(m.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        losses.append(accumulate(m, x, y, mbs))
        opt.step()
    return np.array(losses)


def load_reference(d, name):
    """DIR/NAME.ref's ref.json, its rows and labels as tensors, and the model file it was made on."""
    ref_dir = os.path.join(d, f"{name}.ref")
    with open(os.path.join(ref_dir, "ref.json")) as f:
        ref = json.load(f)
    x = torch.from_numpy(np.load(os.path.join(ref_dir, "x.npy")))
    y = torch.from_numpy(np.load(os.path.join(ref_dir, "labels.npy")))
    return ref, x, y, os.path.join(d, ref["model"])


# Where the search below found a well-posed comparison (`reference` prints what it tried): tried
# first, so that a fresh run checks one configuration instead of searching again.
COMPARE_AT = {
    "resnet18": (64, 32, 1e-3),
    "squeezenet1_1": (17, 4, 1e-2),
    "alexnet": (223, 4, 1e-1),
}


def at_least(name, size):
    """The smallest input size NAME accepts from SIZE up: SIZE, or for a ViT the next multiple of
    its patch (vit_h_14's 14: 32 becomes 42); at most the smallest accepted, SIZES[name]."""
    s0 = SIZES[name]
    if size <= s0:
        return s0
    return -(-size // s0) * s0 if name.startswith("vit_") else size


# Searched at one configuration only: regnet_y_128gf (645 M parameters). Each configuration runs
# PyTorch float32 once and float64 twice: on 2026-12-03 on 2 cores its first 6 (inputs 1 and 32,
# microbatches 4 and 8; none well-posed) took 35 minutes and (64, 32, 1e-3) 13, so the whole
# search is about 1.5 hours (estimated) before the test's own runs, more than that session had
# left. None of the 15 other RegNets is well-posed anywhere, and every one is closest at
# (64, 32, 1e-3) (docs/models.md).
SEARCH_ONLY = {
    "regnet_y_128gf": [(64, 32, 1e-3)],
}


def candidates(name):
    """(input size, microbatch size, lr) to try: the recorded one, then cheapest first."""
    if name in SEARCH_ONLY:
        return list(SEARCH_ONLY[name])
    s0 = SIZES[name]
    out = [COMPARE_AT[name]] if name in COMPARE_AT else []
    s32, s64 = at_least(name, 32), at_least(name, 64)
    for size, mb in ((s0, 4), (s32, 4), (s32, 8), (s32, 16), (s64, 16), (s64, 32)):
        for lr in (1e-3, 1e-2):
            if (size, mb, lr) not in out:
                out.append((size, mb, lr))
    return out


def rel(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def stats_gap(a, b):
    """How far running statistics `a` are from `b` (dicts of bn_stats): per BatchNorm, the largest
    error of its variances relative to the largest variance, and of its means relative to the
    largest standard deviation (the scale of the channels' activations; a mean whose exact value is
    0 — a 1x1 convolution of a BatchNorm's output — is rounding alone, and relative to itself
    means nothing). The largest over all BatchNorms; the zoo test measures the same."""
    worst = 0.0
    for n in b:
        if not n.endswith(".running_var"):
            continue
        mean = n[: -len("var")] + "mean"
        scale = max(float(np.abs(b[n]).max()), 1e-30)
        worst = max(worst, float(np.abs(a[n] - b[n]).max()) / scale,
                    float(np.abs(a[mean] - b[mean]).max()) / np.sqrt(scale))
    return worst


def train_mode_forward(m, x):
    """The module's train-mode forward of x without gradients, its running statistics left as they
    were: their buffers are copied and put back, not the module (vit_h_14 in float64 is 5 GB)."""
    saved = [b.clone() for b in m.buffers()]
    with torch.no_grad():
        out = m(x)
        for b, v in zip(m.buffers(), saved):
            b.copy_(v)
    return out


def outcome(m, x, y, mbs, lr, steps):
    """What the zoo test compares: the first microbatch's train-mode logits, the losses of
    `steps` steps, and the running statistics after them."""
    mb = x.shape[0] // mbs
    logits = train_mode_forward(m, x[:mb]).numpy()
    losses = train3(m, x, y, mbs, lr, steps)
    return logits, losses, bn_stats(m)


def conditioning(name, size, mb, lr, mbs, steps, seed):
    """How far PyTorch's numbers can be trusted at this configuration: float32 against float64 on
    the same data, and float64 against float64 with every weight and input moved by PERTURB
    relative (float32's rounding error after a few operations; it also finds ReLUs and max-pools
    whose inputs sit that close to their kinks). Per compared quantity (tolerance), the largest of
    the two gaps; and the signal, how much the loss moves in `steps` steps (a wrong gradient must
    show)."""
    rng = np.random.RandomState(seed)
    x = torch.from_numpy(rng.standard_normal((mbs * mb, 3, size, size)).astype(np.float32))
    y = torch.from_numpy(rng.randint(0, 1000, size=(mbs * mb,)).astype(np.int64))
    # One model at a time, each built again from the seed (the same weights): vit_h_14's three
    # hold 12.6 GB of weights before any gradient, one float64 model with its gradients 10.
    a = outcome(build(name, size), x, y, mbs, lr, steps)
    c = outcome(build(name, size).double(), x.double(), y, mbs, lr, steps)
    mp = build(name, size).double()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in mp.parameters():
            p.mul_(1 + PERTURB * torch.randn(p.shape, generator=g, dtype=torch.float64))
    xp = x.double() * (1 + PERTURB * torch.randn(x.shape, generator=g, dtype=torch.float64))
    d = outcome(mp, xp, y, mbs, lr, steps)
    gaps = {k: max(rel(a[i], c[i]), rel(d[i], c[i])) for i, k in enumerate(("forward", "losses"))}
    gaps["stats"] = max(stats_gap(a[2], c[2]), stats_gap(d[2], c[2]))
    gaps["signal"] = float(abs(c[1][-1] - c[1][0]) / abs(c[1][0]))
    return not_a_number_as_infinite(gaps)


def not_a_number_as_infinite(gaps):
    """A gap that is NaN (a float32 or float64 run whose losses blew up: resnet152 at input size 1)
    is infinite: no comparison is well-posed there."""
    return {k: (float("inf") if isinstance(v, float) and v != v else v) for k, v in gaps.items()}


def finite_json(v):
    """`v` with every infinite or NaN float as null: JSON has no such numbers (Python would write
    Infinity and NaN, which the zoo test's JSON reader rejects)."""
    if isinstance(v, float):
        return v if v == v and abs(v) != float("inf") else None
    if isinstance(v, dict):
        return {k: finite_json(x) for k, x in v.items()}
    if isinstance(v, list):
        return [finite_json(x) for x in v]
    return v


def reference(a):
    """Picks a well-posed comparison (see conditioning), or the closest where none is, exports
    the model at its size and writes PyTorch's numbers for it."""
    torch.set_num_threads(a.threads)
    out = os.path.join(a.dir, f"{a.name}.ref")
    os.makedirs(os.path.join(out, "forward"), exist_ok=True)
    os.makedirs(os.path.join(out, "eval"), exist_ok=True)
    os.makedirs(os.path.join(out, "stats"), exist_ok=True)
    tried = []
    chosen = None
    tries = candidates(a.name)
    # Each configuration's gaps are kept in tried.jsonl as they are measured (the search of a large
    # ill-conditioned model runs for an hour): a search that was stopped resumes where it was, from
    # the lines made by this version with the same steps, microbatches, seed and threads.
    progress = os.path.join(out, "tried.jsonl")
    key = {"version": REFERENCE_VERSION, "steps": a.steps, "microbatches": a.microbatches, "seed": a.seed,
           "threads": a.threads}
    done = {}
    if os.path.exists(progress):
        with open(progress) as f:
            for line in f:
                try:
                    t = json.loads(line)
                except ValueError:  # a line cut short when the search was stopped
                    continue
                if all(t.get(k) == v for k, v in key.items()):
                    gaps = {k: (float("inf") if v is None else v) for k, v in t.items() if k not in key}
                    done[(t["size"], t["microbatch_size"], t["lr"])] = not_a_number_as_infinite(gaps)
    i = 0
    while i < len(tries) and chosen is None:
        size, mb, lr = tries[i]
        i += 1
        gaps = done.get((size, mb, lr))
        if gaps is None:
            gaps = {"size": size, "microbatch_size": mb, "lr": lr,
                    **conditioning(a.name, size, mb, lr, a.microbatches, a.steps, a.seed)}
            with open(progress, "a") as f:
                f.write(json.dumps(finite_json({**key, **gaps})) + "\n")
        tried.append(gaps)
        print(json.dumps(finite_json(gaps)), flush=True)
        if all(gaps[k] <= TOLERANCE[k] / 10 for k in TOLERANCE) and gaps["signal"] >= MIN_SIGNAL:
            chosen = (size, mb, lr)
        elif i == len(tries) and all(t["signal"] < MIN_SIGNAL for t in tried) and lr < 0.1:
            # The loss never moved (alexnet, lr 1e-2: 0.1 % in 3 steps): the cheapest tries again
            # at lr 0.1.
            tries += [(SIZES[a.name], 4, 0.1), (at_least(a.name, 32), 16, 0.1)]
    info = {"version": REFERENCE_VERSION, "name": a.name, "steps": a.steps, "microbatches": a.microbatches, "tried": tried,
            "status": "ok"}
    if chosen is None:
        # None is well-posed: the closest (the smallest worst gap over its tolerance, among those
        # whose loss moves enough), where the comparison is still made with the same tolerances;
        # a failure there may be PyTorch's own rounding (its gaps are kept in "closest").
        moving = [t for t in tried if t["signal"] >= MIN_SIGNAL]
        if not moving:
            info["status"] = "no-signal"
            with open(os.path.join(out, "ref.json"), "w") as f:
                json.dump(finite_json(info), f)
            print(json.dumps(finite_json(info)))
            return 3
        best = min(moving, key=lambda t: max(t[k] / TOLERANCE[k] for k in TOLERANCE))
        info["status"] = "ill-posed"
        info["closest"] = best
        chosen = (best["size"], best["microbatch_size"], best["lr"])
    size, mb, lr = chosen
    path = export_path(a.dir, a.name, size)
    if not export_current(path):  # missing, or made by an older export (a ViT export before its head was initialized)
        export(a.name, a.dir, size)
    m = build(a.name, size)
    load_onnx_weights(m, path)
    rng = np.random.RandomState(a.seed)
    x = rng.standard_normal((a.microbatches * mb, 3, size, size)).astype(np.float32)
    y = rng.randint(0, 1000, size=(a.microbatches * mb,)).astype(np.int64)
    np.save(os.path.join(out, "x.npy"), x)
    np.save(os.path.join(out, "labels.npy"), y)
    # A train-mode forward of the first microbatch (the running statistics stay).
    logits = train_mode_forward(m, torch.from_numpy(x[:mb]))
    np.save(os.path.join(out, "forward", "x.npy"), x[:mb])
    np.save(os.path.join(out, "forward", "logits.npy"), logits.numpy())
    losses = train3(m, torch.from_numpy(x), torch.from_numpy(y), a.microbatches, lr, a.steps)
    with open(os.path.join(out, "losses.txt"), "w") as f:
        for v in losses:
            f.write(f"{v:.9g}\n")
    for n, v in bn_stats(m).items():
        np.save(os.path.join(out, "stats", n + ".npy"), v)
    np.save(os.path.join(out, "eval", "x.npy"), x[:mb])
    info.update({"size": size, "microbatch_size": mb, "lr": lr, "model": os.path.basename(path),
                 "losses": [float(v) for v in losses]})
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump(finite_json(info), f)
    print(json.dumps(finite_json(info)))
    return 0


def eval_of(a):
    """PyTorch's eval() forward with the weights and running statistics of an ONNX file (smp-run
    --export's): OUT/logits.npy for X.npy."""
    torch.set_num_threads(a.threads)
    m = build(a.name, a.size)
    load_onnx_weights(m, a.onnx)
    m.eval()
    with torch.no_grad():
        y = m(torch.from_numpy(np.load(a.x)))
    os.makedirs(a.out, exist_ok=True)
    np.save(os.path.join(a.out, "logits.npy"), y.numpy())
    return 0


def gradient(a):
    """One SGD step's gradient, smp's against PyTorch's float64 beside PyTorch's float32's: where
    a comparison is ill-conditioned, whether smp's gradient is as close as float32 can be.

    smp's gradient is (w0 - w1) / lr, w0 the reference's model, w1 EXPORTED (smp-run --steps 1
    --lr LR --export on the reference's rows, 2 microbatches; a large LR, 1e6, keeps float32's
    rounding of w1 far below the update: the resolution column says how far). Prints per
    parameter tensor the error relative to its largest float64 gradient (the worst few, with
    smp's worst output channel and the next), the errors over all parameters as one vector and
    the median tensor's, and the ReLU / ReLU6 inputs within KINK of a kink relative to their
    tensor (where float32's rounding can flip the activation: one flipped element puts a
    whole-element error into its channel's gradient, the signature of rounding rather than of a
    wrong rule); a JSON line last (the zoo test's step 4 reads it)."""
    torch.set_num_threads(a.threads)
    ref, x, y, model = load_reference(a.dir, a.name)
    mbs = ref["microbatches"]
    kinks = [0, 0]

    relu, hardtanh = F.relu, F.hardtanh

    def count(v, at):
        d = v.detach()
        scale = d.abs().max()
        kinks[0] += int(sum(((d - k).abs() <= KINK * scale).sum() for k in at))
        kinks[1] += d.numel()

    def counting_relu(v, *args, **kwargs):  # nn.ReLU and torchvision's F.relu calls both land here
        count(v, (0.0,))
        return relu(v, *args, **kwargs)

    def counting_hardtanh(v, min_val=-1.0, max_val=1.0, *args, **kwargs):  # ReLU6 (MobileNetV2)
        count(v, (min_val, max_val))
        return hardtanh(v, min_val, max_val, *args, **kwargs)

    def grads(m, xs, watch):
        """The module's gradients as numpy views of its .grad tensors (no copies: read them before
        the module runs again)."""
        m.zero_grad()
        if watch:
            F.relu, F.hardtanh = counting_relu, counting_hardtanh
        try:
            accumulate(m, xs, y, mbs)
        finally:
            F.relu, F.hardtanh = relu, hardtanh
        return {k: p.grad.numpy() for k, p in m.named_parameters()}

    # Memory, one model at a time: the float64 model with its gradients (16 bytes per parameter),
    # then those gradients alone beside the float32 model with its own (16 bytes), the weight
    # files read a tensor at a time (regnet_y_128gf, 645 M parameters: 12.8 GB at most, about 20
    # bytes per parameter); every difference is taken one tensor at a time.
    m64 = build(a.name, ref["size"])
    load_onnx_weights(m64, model)
    m64.double()
    g64 = grads(m64, x.double(), True)  # views of m64's .grad tensors, which outlive the module
    del m64
    scale = {k: max(float(np.abs(g).max()), 1e-30) for k, g in g64.items()}
    norm = np.sqrt(sum(float(np.sum(g * g)) for g in g64.values()))

    def gaps(g):
        """Gradients g against float64's: per tensor, the largest error relative to the tensor's
        largest float64 gradient; over all parameters as one vector, the error's norm relative to
        float64's."""
        per = {k: float(np.abs(g[k] - g64[k]).max()) / scale[k] for k in g64}
        return float(np.sqrt(sum(float(np.sum((g[k] - g64[k]) ** 2)) for k in g64)) / norm), per

    m32 = build(a.name, ref["size"])
    load_onnx_weights(m32, model)
    torch32, torch32_per = gaps(grads(m32, x, False))
    # smp's gradient, (w0 - w1) / lr: w0 is the model file's weights, which m32 holds unchanged
    # (float32 both), w1 read from the exported file a tensor at a time
    w0 = dict(m32.named_parameters())
    rows, smp2 = [], 0.0
    for k, w in initializers(a.exported):
        if k not in g64:
            continue
        g = g64[k]
        a0, a1 = w0[k].detach().numpy().astype(np.float64), w.astype(np.float64)
        d = (a0 - a1) / a.lr - g
        smp2 += float(np.sum(d * d))
        # per output channel (a weight's first axis): smp's error, the worst and the second worst
        per = (np.abs(d) / scale[k]).reshape(max(g.shape[0] if g.ndim else 1, 1), -1).max(axis=1)
        top2 = np.sort(per)[::-1][:2]
        rows.append({"name": k, "smp": float(per.max()), "torch32": torch32_per[k],
                     "channel": int(np.argmax(per)), "next": float(top2[1]) if len(top2) > 1 else float("nan"),
                     # what (w0 - w1) / lr resolves: float32's spacing at the larger weight, over the update
                     "resolution": float(np.spacing(np.float32(max(np.abs(a0).max(), np.abs(a1).max()))))
                     / (a.lr * scale[k])})
    missing = sorted(set(g64) - {r["name"] for r in rows})
    assert not missing, f"{a.exported}: parameters not among the initializers: {missing[:5]}"
    print(f"{a.name}: one step at input {ref['size']}, {mbs} microbatches of {ref['microbatch_size']}; "
          "error relative to the tensor's largest float64 gradient")
    print("  smp       PyTorch float32  smp's worst channel, the next  resolution  parameter")
    for r in sorted(rows, key=lambda r: -r["smp"])[: a.top]:
        print(f"  {r['smp']:.2e}  {r['torch32']:.2e}         {r['channel']:>5}, {r['next']:.1e}"
              f"                {r['resolution']:.0e}       {r['name']}")
    coarse = [r["name"] for r in rows if r["resolution"] > 1e-4]
    if coarse:
        print(f"  {len(coarse)} tensors' updates are too small for LR to resolve 1e-4 (e.g. {coarse[0]}): "
              "run smp with a larger LR")
    out = {"name": a.name, "size": ref["size"], "microbatch_size": ref["microbatch_size"],
           "smp": float(np.sqrt(smp2) / norm), "torch32": torch32,
           "smp_median": float(np.median([r["smp"] for r in rows])),
           "torch32_median": float(np.median(list(torch32_per.values()))),
           "near_kinks": kinks[0], "relu_inputs": kinks[1]}
    print(f"  all parameters as one vector: smp {out['smp']:.2e}, PyTorch float32 {out['torch32']:.2e}; "
          f"median tensor: smp {out['smp_median']:.2e}, PyTorch float32 {out['torch32_median']:.2e}")
    # One float32 run is one draw: where ReLU inputs sit within rounding of their kinks, its gap
    # depends on the summation order (PyTorch's own float32 gradient of shufflenet_v2_x1_5 at
    # input 32: 8.8e-5 from float64 at 2 threads, 5.9e-3 at 1). DRAWS more runs on the rows moved
    # by 1e-7 relative (the size of float32's rounding of them) sample that spread.
    draws = []
    for d in range(a.draws):
        gen = torch.Generator().manual_seed(a.seed + d)
        xp = (x.double() * (1 + 1e-7 * torch.randn(x.shape, generator=gen, dtype=torch.float64))).float()
        vec, per = gaps(grads(m32, xp, False))
        draws.append([vec, float(np.median(list(per.values())))])
    out["torch32_draws"] = draws
    out["torch32_max"] = max([out["torch32"]] + [d[0] for d in draws])
    out["torch32_median_max"] = max([out["torch32_median"]] + [d[1] for d in draws])
    if draws:
        print(f"  PyTorch float32 on {len(draws)} rounding-sized moves of the rows: "
              + ", ".join(f"{v:.2e} (median {m:.2e})" for v, m in draws))
    print(f"  ReLU / ReLU6 inputs within {KINK:g} of a kink: {kinks[0]} of {kinks[1]}" if kinks[1] else
          "  no ReLU or ReLU6")
    print(json.dumps(out))
    return 0


def spread(a):
    """How far float32 lands from float64 at a reference's configuration, sampled: where a
    comparison is ill-conditioned, one float32 run is one draw of many, and smp's error is rounding
    if it lies within float32's spread. PyTorch's float64 run of the reference (its train-mode
    forward of the first microbatch, its steps, the running statistics after them) against the
    reference's own float32 run (its files) and DRAWS float32 runs on the rows moved by 1e-7
    relative (the size of float32's rounding of them): per draw, the losses' largest error relative
    to float64's and the statistics' gap (stats_gap). With --losses (smp-run --losses on the same
    rows), --trained (smp-run --export's model after them) and --logits (smp-run --forward's output
    for forward/x.npy), smp's errors against float64 beside them. A JSON line last (the zoo test
    reads it): per quantity, smp's error and float32's largest."""
    import onnx
    from onnx import numpy_helper

    torch.set_num_threads(a.threads)
    ref, x, y, model = load_reference(a.dir, a.name)
    ref_dir = os.path.join(a.dir, f"{a.name}.ref")
    mbs, mb, lr, steps = ref["microbatches"], ref["microbatch_size"], ref["lr"], ref["steps"]
    m64 = build(a.name, ref["size"])  # float64's run first, alone (one model at a time)
    load_onnx_weights(m64, model)
    logits64, l64, s64 = outcome(m64.double(), x.double(), y, mbs, lr, steps)
    del m64
    m = build(a.name, ref["size"])
    load_onnx_weights(m, model)
    print(f"{a.name}: {steps} steps at input {ref['size']}, {mbs} microbatches of {mb}, "
          f"lr {lr:g}; float64's losses {', '.join(f'{v:.6f}' for v in l64)}; per step, relative to them:")

    def stats_of(path_or_dir):
        if os.path.isdir(path_or_dir):
            return {n: np.load(os.path.join(path_or_dir, n + ".npy")) for n in s64}
        ws = {t.name: t for t in onnx.load(path_or_dir).graph.initializer}
        return {n: numpy_helper.to_array(ws[n]) for n in s64}

    reference_losses = np.array(ref["losses"])
    e = (reference_losses - l64) / np.abs(l64)
    loss_draws = [float(np.abs(e).max())]
    stats_draws = [stats_gap(stats_of(os.path.join(ref_dir, "stats")), s64)] if s64 else [0.0]
    print(f"  the reference:  {' '.join(f'{v:+.2e}' for v in e)}  statistics {stats_draws[0]:.1e}")
    for k in range(a.draws):
        g = torch.Generator().manual_seed(a.seed + k)
        xp = (x.double() * (1 + 1e-7 * torch.randn(x.shape, generator=g, dtype=torch.float64))).float()
        mk = copy.deepcopy(m)
        e = (train3(mk, xp, y, mbs, lr, steps) - l64) / np.abs(l64)
        loss_draws.append(float(np.abs(e).max()))
        stats_draws.append(stats_gap(bn_stats(mk), s64) if s64 else 0.0)
        print(f"  float32 draw {k}: {' '.join(f'{v:+.2e}' for v in e)}  statistics {stats_draws[-1]:.1e}", flush=True)
    out = {"name": a.name, "float32_draws": sorted(loss_draws[1:]),
           "forward": {"torch32_max": rel(np.load(os.path.join(ref_dir, "forward", "logits.npy")), logits64)},
           "losses": {"torch32_max": max(loss_draws)}, "stats": {"torch32_max": max(stats_draws)}}
    if a.losses:
        got = np.loadtxt(a.losses, ndmin=1)  # smp-run --losses: one loss per step
        e = (got - l64) / np.abs(l64)
        out["smp"] = out["losses"]["smp"] = float(np.abs(e).max())
        print(f"  smp:            {' '.join(f'{v:+.2e}' for v in e)}")
    if a.trained:
        out["stats"]["smp"] = stats_gap(stats_of(a.trained), s64) if s64 else 0.0
    if a.logits:
        out["forward"]["smp"] = rel(np.load(a.logits), logits64)
    print("  against float64, float32's largest over the reference and its draws" + (", smp's" if a.losses else "") + ":")
    for q in ("forward", "losses", "stats"):
        print(f"    {q:8s} {out[q]['torch32_max']:.1e}" + (f", smp {out[q]['smp']:.1e}" if "smp" in out[q] else ""))
    print(json.dumps(out))
    return 0


def rows(a):
    """Rows for `gradient` (and smp-run --data) without a reference search: NAME exported at SIZE
    into EXPORTS (default DIR; reused when current), and DIR/NAME.ref/ with MICROBATCHES
    microbatches of MICROBATCH_SIZE random rows (x.npy), labels (labels.npy: a class per row, or
    for a segmentation model one per pixel, [rows, SIZE, SIZE]) and ref.json naming them. SIZE:
    a classification architecture's smallest but at least 32 (vit_h_14: 42, a multiple of its
    patch), a segmentation model's 64."""
    seg = a.name in SEGMENTATION
    size = a.size or (64 if seg else at_least(a.name, 32))
    exports = a.exports or a.dir
    path, _ = ensure_export(a.name, exports, size)
    out = os.path.join(a.dir, f"{a.name}.ref")
    os.makedirs(out, exist_ok=True)
    rng = np.random.RandomState(a.seed)
    n = a.microbatches * a.microbatch_size
    np.save(os.path.join(out, "x.npy"), rng.standard_normal((n, 3, size, size)).astype(np.float32))
    labels = rng.randint(0, 21, size=(n, size, size)) if seg else rng.randint(0, 1000, size=(n,))
    np.save(os.path.join(out, "labels.npy"), labels.astype(np.int64))
    ref = {"name": a.name, "size": size, "microbatch_size": a.microbatch_size, "microbatches": a.microbatches,
           "model": os.path.relpath(path, a.dir)}
    with open(os.path.join(out, "ref.json"), "w") as f:
        json.dump(ref, f)
    print(json.dumps(ref))
    return 0


def forward_at(a):
    """Each NAME (a classification architecture, a segmentation model of SEGMENTATION or a video
    model of VIDEO) exported at SIZE (not only the smallest; default 224, inception_v3 299, a video
    model's usual size and frames), run by `smp-run --forward` on 2 random rows (clips), against PyTorch's train-mode forward of the same rows:
    the error relative to PyTorch's largest logit, and beside it both against PyTorch's float64
    forward (how far float32 itself is). A JSON line per NAME (the zoo test reads it; "error":
    smp-run's last line where it failed). An export made here is deleted afterwards unless --keep;
    NAME's export at its smallest size, where that is SIZE, is the zoo's own and is reused."""
    import subprocess

    torch.set_num_threads(a.threads)
    os.makedirs(a.dir, exist_ok=True)
    status = 0
    for name in a.names:
        size = a.size or (299 if name == "inception_v3" else VIDEO[name][1] if name in VIDEO else 224)
        path, made = ensure_export(name, a.dir, size)
        made = made and size != SIZES.get(name)  # never the zoo's own export at the smallest size
        rows = os.path.join(a.dir, f"{name}.s{size}.rows")
        os.makedirs(rows, exist_ok=True)
        x = np.random.RandomState(a.seed).standard_normal(clip(name, size)).astype(np.float32)
        np.save(os.path.join(rows, "x.npy"), x)
        r = subprocess.run([a.smp_run, path, "--forward", "--data", rows, "--output", rows + ".smp", "--threads",
                            str(a.threads)], capture_output=True, text=True)
        out = {"name": name, "size": size}
        if r.returncode:
            out["error"] = ((r.stdout + r.stderr).strip().splitlines() or ["(no output)"])[-1]
            print(f"{name} {size}: smp-run failed: {out['error']}", flush=True)
            status = 1
        else:
            m = build(name, size)
            load_onnx_weights(m, path)
            got = np.load(os.path.join(rows + ".smp", "logits.npy"))
            with torch.no_grad():
                y = m(torch.from_numpy(x)).numpy()
                y64 = m.double()(torch.from_numpy(x).double()).numpy()
            out.update({"forward": rel(got, y), "float64": rel(got, y64), "torch32": rel(y, y64)})
            print(f"{name} {size}: forward {out['forward']:.1e}; against float64: smp {out['float64']:.1e}, "
                  f"PyTorch float32 {out['torch32']:.1e}", flush=True)
        print(json.dumps(out), flush=True)
        if not a.keep:
            shutil.rmtree(rows, ignore_errors=True)
            shutil.rmtree(rows + ".smp", ignore_errors=True)
            if made:
                for f in (path, path + ".data", path[: -len(".onnx")] + ".json"):
                    if os.path.exists(f):
                        os.remove(f)
    return status


def table(d):
    """Every architecture: family, smallest input, nodes and parameters of its export, and the
    zoo test's result where DIR has one (else "not run")."""
    rows = ["| architecture | family | smallest input | nodes | parameters | forward at 224 (inception 299) | "
            "one step's gradient on rows (smp, PyTorch float32) | compared at (input, microbatch, lr) | status |",
            "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"]
    for n in sorted(SIZES, key=lambda n: (family(n), n)):
        info, res = {}, {}
        for path, into in ((os.path.join(d, n + ".json"), info), (os.path.join(d, "results", n + ".json"), res)):
            if os.path.exists(path):
                with open(path) as f:
                    into.update(json.load(f))
        nodes = info.get("nodes", res.get("nodes"))
        params = info.get("params", res.get("params"))
        status = res.get("status", "not run")
        errs = ", ".join(f"{k[:-4]} {res[k]:.1e}" for k in ("forward_err", "loss_err", "stats_err", "eval_err", "gradient_err") if k in res)
        if status.startswith("failed") and errs:
            status += ": " + errs
        if "torch_gaps" in res:
            g = res["torch_gaps"]
            status += (f" (smp: {errs}; PyTorch's own gaps there: forward {g['forward']:.1e}, "
                       f"losses {g['losses']:.1e}, stats {g['stats']:.1e})" if not status.startswith("failed") else
                       f" (PyTorch's own gaps there: forward {g['forward']:.1e}, losses {g['losses']:.1e}, "
                       f"stats {g['stats']:.1e})")
        if "float64" in res:  # test_zoo judged the quantities over their tolerances against float64
            f = res["float64"]
            status += ("; against float64: smp " + ", ".join(f"{q} {f[q]['smp']:.1e}" for q in f)
                       + "; PyTorch float32 at most " + ", ".join(f"{q} {f[q]['torch32_max']:.1e}" for q in f))
        usual = f"{res['usual_forward_err']:.1e}" if "usual_forward_err" in res else "–"
        if res.get("usual_forward_err", 0) > 1e-4 and "usual_float64_err" in res:  # ill-conditioned (test_zoo)
            usual += f" (to float64 {res['usual_float64_err']:.1e}, PyTorch float32's {res['usual_torch_gap']:.1e})"
        if "rows_gradient_err" in res:  # PyTorch float32's largest over its draws, where recorded
            gaps = res.get("rows_torch_gradient_spread", res["rows_torch_gradient_gaps"])
            grad = f"{res['rows_gradient_err']:.1e}, {gaps[0]:.1e}"
        else:
            grad = res.get("rows_gradient_at", "–").replace("not compared: ", "").replace(" (memory)", "")
        rows.append(f"| {n} | {family(n)} | {SIZES[n]} | {nodes if nodes is not None else '–'} | "
                    f"{f'{params:,}' if params is not None else '–'} | {usual} | {grad} | {res.get('compared_at', '–')} | {status} |")
    print("\n".join(rows))
    return 0


def find_size(name):
    def ok(s):
        try:
            m = build(name, s)
            bad = []

            def hook(mod, inp, out):
                if any(i % o for i, o in zip(inp[0].shape[-2:], out.shape[-2:])):
                    bad.append(mod)

            for mod in m.modules():
                if isinstance(mod, torch.nn.AdaptiveAvgPool2d):
                    mod.register_forward_hook(hook)
            with torch.no_grad():
                m(torch.randn(2, 3, s, s))
            return not bad
        except Exception:  # noqa: BLE001 - any failure means "not accepted"
            return False

    if name.startswith("vit_"):
        s = int(name.split("_")[-1])
        return s if ok(s) else None
    for s in range(1, 512):
        if ok(s):
            return s
    return None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("list")
    lp.add_argument("--fast", action="store_true")
    e = sub.add_parser("export")
    e.add_argument("name", choices=sorted(SIZES))
    e.add_argument("dir")
    r = sub.add_parser("reference")
    r.add_argument("name", choices=sorted(SIZES))
    r.add_argument("dir")
    r.add_argument("--steps", type=int, default=3)
    r.add_argument("--microbatches", type=int, default=2)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--threads", type=int, default=1)
    ev = sub.add_parser("eval")
    ev.add_argument("name", choices=sorted(SIZES))
    ev.add_argument("size", type=int)
    ev.add_argument("onnx")
    ev.add_argument("x")
    ev.add_argument("out")
    ev.add_argument("--threads", type=int, default=1)
    gr = sub.add_parser("gradient")
    gr.add_argument("name", choices=sorted(SIZES) + sorted(SEGMENTATION))
    gr.add_argument("dir")
    gr.add_argument("exported")
    gr.add_argument("lr", type=float)
    gr.add_argument("--top", type=int, default=8)
    gr.add_argument("--draws", type=int, default=3)
    gr.add_argument("--seed", type=int, default=100)
    gr.add_argument("--threads", type=int, default=2)
    sp = sub.add_parser("spread")
    sp.add_argument("name", choices=sorted(SIZES))
    sp.add_argument("dir")
    sp.add_argument("--losses")
    sp.add_argument("--trained")
    sp.add_argument("--logits")
    sp.add_argument("--draws", type=int, default=6)
    sp.add_argument("--seed", type=int, default=100)
    sp.add_argument("--threads", type=int, default=2)
    rw = sub.add_parser("rows")
    rw.add_argument("name", choices=sorted(SIZES) + sorted(SEGMENTATION))
    rw.add_argument("dir")
    rw.add_argument("--size", type=int)
    rw.add_argument("--exports")
    rw.add_argument("--microbatch-size", type=int, default=2)
    rw.add_argument("--microbatches", type=int, default=2)
    rw.add_argument("--seed", type=int, default=0)
    fa = sub.add_parser("forward")
    fa.add_argument("names", nargs="+", choices=sorted(SIZES) + sorted(SEGMENTATION) + sorted(VIDEO))
    fa.add_argument("--size", type=int, help="input size (default 224, inception_v3 299, the video models' of VIDEO)")
    fa.add_argument("--dir", default="zoo-forward")
    fa.add_argument("--smp-run", default="build/bin/smp-run")
    fa.add_argument("--keep", action="store_true")
    fa.add_argument("--seed", type=int, default=0)
    fa.add_argument("--threads", type=int, default=2)
    t = sub.add_parser("table")
    t.add_argument("dir")
    s = sub.add_parser("sizes")
    s.add_argument("names", nargs="+")
    a = p.parse_args(argv)
    if a.cmd == "list":
        for n in sorted(SIZES):
            if not a.fast or n in FAST:
                print(n, SIZES[n], family(n))
        return 0
    if a.cmd == "export":
        return export(a.name, a.dir)
    if a.cmd == "reference":
        return reference(a)
    if a.cmd == "eval":
        return eval_of(a)
    if a.cmd == "gradient":
        return gradient(a)
    if a.cmd == "spread":
        return spread(a)
    if a.cmd == "rows":
        return rows(a)
    if a.cmd == "forward":
        return forward_at(a)
    if a.cmd == "table":
        return table(a.dir)
    for n in a.names:
        print(n, find_size(n), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
