#!/usr/bin/python3
"""The three bundled sample models of smp: definitions, deterministic export, weight loading.

Importable (tests build the same torch module, load the ONNX initializers into it and train
both sides to compare losses) and a CLI:

    sample_models.py export [--out DIR]   # writes DIR/{mlp,gpt,cnn}.onnx (default: sample_models/)
    sample_models.py count NAME           # PyTorch parameter count, a bare integer
    sample_models.py config NAME          # the model's config as JSON

Models (all float32, batch is the symbolic dim "batch"):
    mlp  x [batch, 256]            -> logits [batch, 10]        6 x (Gemm, Relu except last)
    gpt  input_ids int64 [batch,64] -> logits [batch, 64, 4096]  4-block pre-LN causal decoder
    cnn  x [batch, 3, 32, 32]      -> logits [batch, 10]        3 x (Conv, Relu, MaxPool), Gemm

Exports use opset 17, TrainingMode.TRAINING and no constant folding, so that every module
parameter stays its own initializer under its state_dict name (an eval-mode export merges equal
initializers, e.g. all LayerNorm weights, which would silently tie parameters).

Needs Debian's python3-torch / python3-onnx (hence /usr/bin/python3).
"""

import argparse
import copy
import json
import math
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

OPSET = 17
SEED = 1234
NAMES = ("mlp", "gpt", "cnn")

# Fixed configs. Only batch-independent numbers; tests use them for closed-form FLOP counts.
CONFIGS = {
    "mlp": {
        "in_features": 256,
        "hidden": 512,
        "layers": 6,  # Linear layers; ReLU after all but the last
        "classes": 10,
        "input": {"name": "x", "dtype": "float32", "shape": ["batch", 256]},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", 10]},
    },
    "gpt": {
        "vocab": 4096,
        "seq": 64,
        "d_model": 128,
        "layers": 4,
        "heads": 4,
        "head_dim": 32,
        "mlp_ratio": 4,
        "d_ff": 512,
        "layer_norm_eps": 1e-5,
        "tied_head": False,
        "head_bias": False,
        "input": {"name": "input_ids", "dtype": "int64", "shape": ["batch", 64]},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", 64, 4096]},
    },
    "cnn": {
        "in_channels": 3,
        "image": 32,
        "channels": [32, 64, 128],
        "kernel": 3,
        "padding": 1,
        "pool": 2,
        "classes": 10,
        "input": {"name": "x", "dtype": "float32", "shape": ["batch", 3, 32, 32]},
        "output": {"name": "logits", "dtype": "float32", "shape": ["batch", 10]},
    },
}


# ---------------------------------------------------------------------------------------------
# mlp


class MLP(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        dims = [cfg["in_features"]] + [cfg["hidden"]] * (cfg["layers"] - 1) + [cfg["classes"]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):  # x [B, 256] -> [B, 10]
        n = len(self.layers)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i + 1 < n:
                x = F.relu(x)
        return x


# ---------------------------------------------------------------------------------------------
# gpt


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, self.heads, self.seq = cfg["d_model"], cfg["heads"], cfg["seq"]
        self.head_dim = d // self.heads
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)

    def forward(self, x):  # x [B, T, d]
        # Written as nanoGPT does (sizes read from the tensor), so the export carries the
        # Shape / Gather / Unsqueeze / Concat chains that smp's graph layer folds away.
        B, T, C = x.size()
        H, hd = self.heads, self.head_dim
        q, k, v = self.qkv(x).split(C, dim=2)  # each [B, T, d]
        q = q.view(B, T, H, hd).transpose(1, 2)  # [B, H, T, hd]
        k = k.view(B, T, H, hd).transpose(1, 2)
        v = v.view(B, T, H, hd).transpose(1, 2)
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))  # [B, H, T, T]
        # Causal mask: a bool computed in forward (a Constant in the graph, never a float
        # buffer that would look like a trainable parameter). True above the diagonal.
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        att = att.masked_fill(mask, float("-inf"))
        att = F.softmax(att, dim=-1)
        y = torch.matmul(att, v)  # [B, H, T, hd]
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # [B, T, d]
        return self.proj(y)


class Block(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d, eps = cfg["d_model"], cfg["layer_norm_eps"]
        self.ln1 = nn.LayerNorm(d, eps=eps)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(d, eps=eps)
        self.fc = nn.Linear(d, cfg["d_ff"])
        self.fc_proj = nn.Linear(cfg["d_ff"], d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        x = x + self.fc_proj(F.gelu(self.fc(self.ln2(x))))  # exact (erf) GELU
        return x


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        d = cfg["d_model"]
        self.seq = cfg["seq"]
        self.tok_emb = nn.Embedding(cfg["vocab"], d)
        self.pos_emb = nn.Parameter(torch.zeros(cfg["seq"], d))  # learned positions [T, d]
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg["layers"]))
        self.ln_f = nn.LayerNorm(d, eps=cfg["layer_norm_eps"])
        self.head = nn.Linear(d, cfg["vocab"], bias=False)  # untied LM head
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb, std=0.02)

    def forward(self, input_ids):  # input_ids int64 [B, T] -> logits [B, T, V]
        x = self.tok_emb(input_ids) + self.pos_emb  # [B, T, d] (broadcast add)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# ---------------------------------------------------------------------------------------------
# cnn


class CNN(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        layers, c_in = [], cfg["in_channels"]
        for c in cfg["channels"]:
            layers += [
                nn.Conv2d(c_in, c, cfg["kernel"], padding=cfg["padding"]),
                nn.ReLU(),
                nn.MaxPool2d(cfg["pool"]),
            ]
            c_in = c
        self.features = nn.Sequential(*layers)
        side = cfg["image"] // cfg["pool"] ** len(cfg["channels"])
        self.classifier = nn.Linear(c_in * side * side, cfg["classes"])

    def forward(self, x):  # x [B, 3, 32, 32] -> [B, 10]
        x = self.features(x)  # [B, 128, 4, 4]
        return self.classifier(torch.flatten(x, 1))


# ---------------------------------------------------------------------------------------------
# public API

_CLASSES = {"mlp": MLP, "gpt": GPT, "cnn": CNN}


def _check_name(name):
    if name not in _CLASSES:
        raise ValueError(f"unknown sample model {name!r} (choose one of {', '.join(NAMES)})")


def config(name):
    """The fixed config of a sample model (a fresh copy), plus its parameter count."""
    _check_name(name)
    cfg = copy.deepcopy(CONFIGS[name])
    cfg["name"] = name
    cfg["params"] = count(name)
    return cfg


def build_model(name, seed=SEED):
    """The torch module with its deterministic initial weights (the ones in the bundled ONNX)."""
    _check_name(name)
    torch.manual_seed(seed)
    return _CLASSES[name](CONFIGS[name])


def count(name):
    return sum(p.numel() for p in build_model(name).parameters())


def example_input(name, batch=2, seed=0):
    """A deterministic input of the model's shape and dtype."""
    _check_name(name)
    g = torch.Generator().manual_seed(seed)
    shape = [batch] + CONFIGS[name]["input"]["shape"][1:]
    if name == "gpt":
        return torch.randint(0, CONFIGS["gpt"]["vocab"], shape, generator=g, dtype=torch.int64)
    return torch.randn(*shape, generator=g)


def load_onnx_weights(model, onnx_path):
    """Copies the ONNX initializers into the module's parameters, matching by name.

    Asserts that every parameter is found with the same shape. Returns the names of
    initializers that are not parameters (expected: none for the bundled models)."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(onnx_path)
    inits = {t.name: t for t in m.graph.initializer}
    params = dict(model.named_parameters())
    missing = [n for n in params if n not in inits]
    assert not missing, f"{onnx_path}: parameters not among the initializers: {missing}"
    with torch.no_grad():
        for n, p in params.items():
            a = numpy_helper.to_array(inits[n])
            assert tuple(a.shape) == tuple(p.shape), (
                f"{onnx_path}: {n}: initializer shape {a.shape} != parameter shape {tuple(p.shape)}"
            )
            p.copy_(torch.from_numpy(a.copy()).to(p.dtype))
    return sorted(set(inits) - set(params))


def export(name, out_dir, check=True):
    """Exports one model to out_dir/name.onnx; returns the path."""
    model = build_model(name)
    model.train()
    cfg = CONFIGS[name]
    inp, outp = cfg["input"]["name"], cfg["output"]["name"]
    path = os.path.join(out_dir, f"{name}.onnx")
    os.makedirs(out_dir, exist_ok=True)
    torch.onnx.export(
        model,
        (example_input(name),),
        path,
        opset_version=OPSET,
        training=torch.onnx.TrainingMode.TRAINING,
        do_constant_folding=False,
        input_names=[inp],
        output_names=[outp],
        dynamic_axes={inp: {0: "batch"}, outp: {0: "batch"}},
    )
    _tidy(path, cfg)
    if check:
        check_export(name, path, model)
    return path


def _tidy(path, cfg):
    """One shape-only fix to torch's output (no change to what the graph computes): the
    declared output shape is set from the config (torch names static dims it failed to infer,
    e.g. "MatMullogits_dim_1")."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    g = m.graph
    out = g.output[0]
    dims = out.type.tensor_type.shape.dim
    assert len(dims) == len(cfg["output"]["shape"])
    for d, want in zip(dims, cfg["output"]["shape"]):
        d.Clear()
        if isinstance(want, str):
            d.dim_param = want
        else:
            d.dim_value = want
    onnx.save(m, path)


def check_export(name, path, model=None):
    """Checker, shape inference, parameter set == float initializers, same forward as torch."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    m = onnx.load(path)
    onnx.checker.check_model(m)
    onnx.shape_inference.infer_shapes(m, strict_mode=True)
    dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims == CONFIGS[name]["output"]["shape"], f"{path}: output dims {dims}"
    if model is None:
        model = build_model(name)
    params = dict(model.named_parameters())
    floats = {t.name: t for t in m.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    assert set(floats) == set(params), (
        f"{path}: float initializers {sorted(set(floats) ^ set(params))} differ from parameters"
    )
    n = sum(int(np.prod(t.dims)) for t in floats.values())
    assert n == sum(p.numel() for p in params.values()), f"{path}: {n} initializer elements"
    for k, p in params.items():
        assert np.array_equal(numpy_helper.to_array(floats[k]), p.detach().numpy()), k
    # The graph computes what the module computes (batch 3, not the traced batch 2).
    x = example_input(name, batch=3, seed=1)
    (got,) = run_onnx(m, {CONFIGS[name]["input"]["name"]: x}).values()
    with torch.no_grad():
        want = model(x)
    assert got.shape == want.shape, f"{path}: output shape {tuple(got.shape)}"
    err = (got - want).abs().max().item()
    assert err < 1e-4, f"{path}: ONNX output differs from torch by {err}"


def run_onnx(model, feeds):
    """A tiny torch-backed interpreter for the ops in the sample graphs (a cross-check only:
    no onnxruntime / onnx.reference here). Returns {output name: tensor}."""
    import onnx
    from onnx import helper, numpy_helper

    g = model.graph
    env = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
    env.update(feeds)
    for n in g.node:
        a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
        i = [env[x] if x else None for x in n.input]
        t = n.op_type
        if t == "Constant":
            y = torch.from_numpy(numpy_helper.to_array(a["value"]).copy())
        elif t == "Gemm":
            A = i[0].T if a.get("transA", 0) else i[0]
            B = i[1].T if a.get("transB", 0) else i[1]
            y = a.get("alpha", 1.0) * (A @ B)
            if len(i) > 2:
                y = y + a.get("beta", 1.0) * i[2]
        elif t == "MatMul":
            y = torch.matmul(i[0], i[1])
        elif t in ("Add", "Mul", "Div"):
            y = {"Add": torch.add, "Mul": torch.mul, "Div": torch.div}[t](i[0], i[1])
        elif t == "Relu":
            y = torch.relu(i[0])
        elif t == "Shape":
            y = torch.tensor(list(i[0].shape), dtype=torch.int64)
        elif t == "Unsqueeze":
            y = i[0]
            for ax in sorted(int(v) for v in i[1].reshape(-1)):
                y = y.unsqueeze(ax)
        elif t == "Concat":
            y = torch.cat(i, dim=a["axis"])
        elif t == "Slice":
            y = i[0]
            axes = i[3].tolist() if len(i) > 3 and i[3] is not None else list(range(len(i[1])))
            steps = i[4].tolist() if len(i) > 4 and i[4] is not None else [1] * len(axes)
            for st, en, ax, sp in zip(i[1].tolist(), i[2].tolist(), axes, steps):
                idx = torch.arange(*slice(st, en, sp).indices(y.shape[ax]))
                y = torch.index_select(y, ax, idx)
        elif t == "Split":
            ys = torch.split(i[0], i[1].tolist(), dim=a.get("axis", 0))
            for o, yy in zip(n.output, ys):
                env[o] = yy
            continue
        elif t == "Sqrt":
            y = torch.sqrt(i[0])
        elif t == "ConstantOfShape":
            v = torch.from_numpy(numpy_helper.to_array(a["value"]).copy()) if "value" in a \
                else torch.zeros(1)
            y = v.reshape(-1)[0].expand(*i[0].tolist()).clone()
        elif t == "Trilu":
            k = int(i[1]) if len(i) > 1 and i[1] is not None else 0
            y = torch.triu(i[0], k) if a.get("upper", 1) else torch.tril(i[0], k)
        elif t == "Erf":
            y = torch.erf(i[0])
        elif t == "Transpose":
            y = i[0].permute(*a["perm"])
        elif t == "Reshape":
            shape = [d if d != 0 else i[0].shape[k] for k, d in enumerate(i[1].tolist())]
            y = i[0].reshape(shape)
        elif t == "Gather":
            y = torch.index_select(i[0], a.get("axis", 0), i[1].reshape(-1))
            y = y.reshape(i[0].shape[: a.get("axis", 0)] + i[1].shape
                          + i[0].shape[a.get("axis", 0) + 1:])
        elif t == "Cast":
            y = i[0].to({onnx.TensorProto.BOOL: torch.bool, onnx.TensorProto.FLOAT: torch.float32,
                         onnx.TensorProto.INT64: torch.int64}[a["to"]])
        elif t == "Where":
            y = torch.where(i[0], i[1], i[2])
        elif t == "Softmax":
            y = torch.softmax(i[0], dim=a.get("axis", -1))
        elif t == "LayerNormalization":
            axis = a.get("axis", -1) % i[0].dim()
            y = F.layer_norm(i[0], i[0].shape[axis:], i[1], i[2], a.get("epsilon", 1e-5))
        elif t == "Conv":
            assert a.get("group", 1) == 1 and set(a.get("dilations", [1])) == {1}
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:]
            y = F.conv2d(i[0], i[1], i[2], stride=a.get("strides", 1), padding=pads[:2])
        elif t == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[:2] == pads[2:] and not a.get("ceil_mode", 0)
            y = F.max_pool2d(i[0], a["kernel_shape"], a.get("strides"), pads[:2])
        elif t == "Flatten":
            y = torch.flatten(i[0], a.get("axis", 1))
        else:
            raise NotImplementedError(f"run_onnx: op {t}")
        env[n.output[0]] = y
    return {o.name: env[o.name] for o in g.output}


def _cmd_export(args):
    for name in NAMES:
        path = export(name, args.out)
        print(f"{path}: {count(name)} parameters, {os.path.getsize(path)} bytes")


def main(argv=None):
    default_out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample_models")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="write {mlp,gpt,cnn}.onnx")
    e.add_argument("--out", default=os.path.normpath(default_out), help="output directory")
    c = sub.add_parser("count", help="print the PyTorch parameter count")
    c.add_argument("name", choices=NAMES)
    g = sub.add_parser("config", help="print the config as JSON")
    g.add_argument("name", choices=NAMES)
    args = ap.parse_args(argv)
    if args.cmd == "export":
        _cmd_export(args)
    elif args.cmd == "count":
        print(count(args.name))
    else:
        print(json.dumps(config(args.name), indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
