#!/usr/bin/python3
"""Planning-only giant GPT decoders as ONNX graphs with no weight bytes.

    giant_models.py NAME [--out DIR] [--tied]   # writes DIR/NAME.onnx, prints the parameter count
    giant_models.py --list

Every initializer is a module parameter: a FLOAT TensorProto with its dims and
data_location = EXTERNAL, external_data location=NAME.weights, offset, length, the offsets laid
out consecutively as if that file existed. The weights file is never written: these graphs are for
smp-plan (shapes, FLOPs, bytes), not for running.

Graph (ai.onnx opset 17 only), pre-LN, learned positions, GELU in the erf form:
    input_ids int64 [batch, T]
    x = Gather(tok_emb.weight [V, d], input_ids) + pos_emb [T, d]
    per block l:  h = LayerNormalization(x)
                  qkv = MatMul(h, W_qkv [d, 3d]) + b_qkv            (weights stored [in, out])
                  Reshape [0, T, 3, H, hd] -> Transpose [2,0,3,1,4] -> Gather 0/1/2 -> q, k, v
                  s = Mul(MatMul(q, Transpose(k)), 1/sqrt(hd))      [batch, H, T, T]
                  s = Where(causal_mask, -inf, s) -> Softmax -> MatMul v -> Transpose -> Reshape
                  x = x + MatMul(., W_o [d, d]) + b_o
                  x = x + (GELU(LN(x) W_fc + b_fc) W_fc_proj + b_fc_proj)      (d_ff = 4d)
    logits = MatMul(LayerNormalization(x), head.weight [d, V])   [batch, T, V]
The head is untied (its own [d, V] parameter, no bias) unless --tied, where logits use
Transpose(tok_emb.weight). The causal mask is bool, built from Constants once
(ConstantOfShape [T, T] true -> Trilu upper k=1) and shared by all blocks.

Parameters: 12*L*d^2 + 13*L*d + V*d + T*d + 2*d, plus V*d when untied.

Needs only python3-onnx (no torch).
"""

import argparse
import math
import os
import sys
import time

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17

MODELS = {
    # name: layers, d_model, heads, seq, vocab (MLP is 4x everywhere)
    "gpt3-175b": {"layers": 96, "d_model": 12288, "heads": 96, "seq": 2048, "vocab": 50257},
    "gpt2-xl": {"layers": 48, "d_model": 1600, "heads": 25, "seq": 1024, "vocab": 50257},
}
MLP_RATIO = 4
LN_EPS = 1e-5


def param_count(cfg, tied=False):
    """Closed form of the graph's parameter count."""
    L, d, T, V = cfg["layers"], cfg["d_model"], cfg["seq"], cfg["vocab"]
    return 12 * L * d * d + 13 * L * d + V * d + T * d + 2 * d + (0 if tied else V * d)


class _Builder:
    def __init__(self, name):
        self.name = name
        self.location = f"{name}.weights"
        self.offset = 0
        self.nodes = []
        self.inits = []
        self.count = 0

    def param(self, pname, dims):
        t = TensorProto()
        t.name = pname
        t.data_type = TensorProto.FLOAT
        t.dims.extend(dims)
        t.data_location = TensorProto.EXTERNAL
        length = int(np.prod(dims)) * 4
        for k, v in (("location", self.location), ("offset", self.offset), ("length", length)):
            e = t.external_data.add()
            e.key, e.value = k, str(v)
        self.offset += length
        self.count += int(np.prod(dims))
        self.inits.append(t)
        return pname

    def node(self, op, inputs, out, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, out, array):
        return self.node("Constant", [], out, value=numpy_helper.from_array(np.asarray(array), out))


def build(name, tied=False, cfg=None):
    """The ModelProto of a giant model (no weight bytes anywhere). cfg overrides the named
    config (same keys as MODELS), e.g. for a tiny copy to cross-check the graph numerically."""
    if cfg is None:
        if name not in MODELS:
            raise ValueError(f"unknown giant model {name!r} (choose one of {', '.join(MODELS)})")
        cfg = MODELS[name]
    L, d, H, T, V = cfg["layers"], cfg["d_model"], cfg["heads"], cfg["seq"], cfg["vocab"]
    assert d % H == 0, "d_model must divide into heads"
    hd, dff = d // H, MLP_RATIO * d
    b = _Builder(name)

    # Shared constants (never initializers: initializers are exactly the parameters).
    c_qkv_shape = b.const("qkv_shape", np.array([0, T, 3, H, hd], np.int64))  # 0: copy batch
    c_merge_shape = b.const("merge_shape", np.array([0, T, d], np.int64))
    c_idx = [b.const(f"idx{i}", np.array(i, np.int64)) for i in range(3)]
    c_scale = b.const("attn_scale", np.array(1.0 / math.sqrt(hd), np.float32))
    c_neg_inf = b.const("neg_inf", np.array(-np.inf, np.float32))
    c_sqrt2 = b.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
    c_one = b.const("one", np.array(1.0, np.float32))
    c_half = b.const("half", np.array(0.5, np.float32))
    c_tt = b.const("mask_shape", np.array([T, T], np.int64))
    ones = b.node("ConstantOfShape", [c_tt], "mask_ones",
                  value=numpy_helper.from_array(np.array([True]), "value"))
    mask = b.node("Trilu", [ones, b.const("mask_k", np.array(1, np.int64))], "causal_mask",
                  upper=1)  # True strictly above the diagonal: positions to hide

    tok = b.param("tok_emb.weight", [V, d])
    x = b.node("Gather", [tok, "input_ids"], "tok_emb", axis=0)  # [batch, T, d]
    x = b.node("Add", [x, b.param("pos_emb", [T, d])], "embed")  # [batch, T, d]

    def layer_norm(inp, prefix):
        return b.node("LayerNormalization",
                      [inp, b.param(f"{prefix}.weight", [d]), b.param(f"{prefix}.bias", [d])],
                      f"/{prefix}/out", axis=-1, epsilon=LN_EPS)

    def linear(inp, prefix, n_in, n_out, bias=True):
        y = b.node("MatMul", [inp, b.param(f"{prefix}.weight", [n_in, n_out])], f"/{prefix}/mm")
        if bias:
            y = b.node("Add", [y, b.param(f"{prefix}.bias", [n_out])], f"/{prefix}/out")
        return y

    for l in range(L):
        p = f"blocks.{l}"
        h = layer_norm(x, f"{p}.ln1")  # [batch, T, d]
        qkv = linear(h, f"{p}.attn.qkv", d, 3 * d)  # [batch, T, 3d]
        qkv = b.node("Reshape", [qkv, c_qkv_shape], f"/{p}/attn/qkv5")  # [batch, T, 3, H, hd]
        qkv = b.node("Transpose", [qkv], f"/{p}/attn/qkvT", perm=[2, 0, 3, 1, 4])  # [3,b,H,T,hd]
        q, k, v = (b.node("Gather", [qkv, c_idx[i]], f"/{p}/attn/{n}", axis=0)
                   for i, n in enumerate("qkv"))  # each [batch, H, T, hd]
        kt = b.node("Transpose", [k], f"/{p}/attn/kT", perm=[0, 1, 3, 2])  # [batch, H, hd, T]
        s = b.node("MatMul", [q, kt], f"/{p}/attn/scores")  # [batch, H, T, T]
        s = b.node("Mul", [s, c_scale], f"/{p}/attn/scaled")
        s = b.node("Where", [mask, c_neg_inf, s], f"/{p}/attn/masked")
        a = b.node("Softmax", [s], f"/{p}/attn/probs", axis=-1)
        y = b.node("MatMul", [a, v], f"/{p}/attn/ctx")  # [batch, H, T, hd]
        y = b.node("Transpose", [y], f"/{p}/attn/ctxT", perm=[0, 2, 1, 3])  # [batch, T, H, hd]
        y = b.node("Reshape", [y, c_merge_shape], f"/{p}/attn/merged")  # [batch, T, d]
        y = linear(y, f"{p}.attn.proj", d, d)
        x = b.node("Add", [x, y], f"/{p}/resid1")

        h = layer_norm(x, f"{p}.ln2")
        h = linear(h, f"{p}.fc", d, dff)  # [batch, T, 4d]
        g = b.node("Div", [h, c_sqrt2], f"/{p}/gelu/div")
        g = b.node("Erf", [g], f"/{p}/gelu/erf")
        g = b.node("Add", [g, c_one], f"/{p}/gelu/add")
        g = b.node("Mul", [h, g], f"/{p}/gelu/mul")
        g = b.node("Mul", [g, c_half], f"/{p}/gelu/out")
        y = linear(g, f"{p}.fc_proj", dff, d)
        x = b.node("Add", [x, y], f"/{p}/resid2")

    x = layer_norm(x, "ln_f")
    if tied:
        head = b.node("Transpose", [tok], "/head/tok_embT", perm=[1, 0])  # [d, V]
        b.node("MatMul", [x, head], "logits")
    else:
        b.node("MatMul", [x, b.param("head.weight", [d, V])], "logits")

    assert b.count == param_count(cfg, tied), (b.count, param_count(cfg, tied))
    graph = helper.make_graph(
        b.nodes,
        name,
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", T])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", T, V])],
        initializer=b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="smp giant_models.py")
    model.ir_version = 8
    model.doc_string = (f"{name}: planning only, weights not stored ({b.location} never exists); "
                        f"{b.count} parameters, head {'tied' if tied else 'untied'}")
    return model


def check_proto(model):
    """onnx.checker.check_model on the proto. onnx 1.12's checker insists that an external data
    file exists (relative to the current directory when given a proto) but never reads it or
    compares sizes, so the check runs in a scratch directory holding an empty placeholder."""
    import tempfile

    locations = {e.value for t in model.graph.initializer for e in t.external_data
                 if e.key == "location"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="smp-giant-check-") as tmp:
        for loc in locations:
            open(os.path.join(tmp, loc), "wb").close()
        os.chdir(tmp)
        try:
            onnx.checker.check_model(model)
        finally:
            os.chdir(cwd)


def check(model):
    """Checker on the proto, shape inference with batch symbolic, every shape static but batch."""
    check_proto(model)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    assert len(g.value_info) >= len(g.node) - 1, "shape inference left values untyped"
    for v in list(g.value_info) + list(g.output):
        dims = [dd.dim_param or dd.dim_value for dd in v.type.tensor_type.shape.dim]
        assert all(isinstance(dd, int) and dd > 0 or dd == "batch" for dd in dims), (v.name, dims)
    out = [dd.dim_param or dd.dim_value for dd in g.output[0].type.tensor_type.shape.dim]
    want = [dd.dim_param or dd.dim_value for dd in model.graph.output[0].type.tensor_type.shape.dim]
    assert out == want, (out, want)
    for t in model.graph.initializer:
        assert t.data_type == TensorProto.FLOAT and t.data_location == TensorProto.EXTERNAL
        assert not t.raw_data and not t.float_data, t.name


def main(argv=None):
    default_out = os.path.normpath(
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "sample_models", "giants"))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("name", nargs="?", help="model name (see --list)")
    ap.add_argument("--out", default=default_out, help=f"output directory (default {default_out})")
    ap.add_argument("--tied", action="store_true", help="tie the LM head to the token embedding")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    args = ap.parse_args(argv)
    if args.list:
        for n, c in MODELS.items():
            print(f"{n}\tlayers={c['layers']} d_model={c['d_model']} heads={c['heads']} "
                  f"seq={c['seq']} vocab={c['vocab']} params={param_count(c)} "
                  f"(tied {param_count(c, True)})")
        return 0
    if args.name is None:
        ap.error("a model name or --list is needed")
    if args.name not in MODELS:
        print(f"error: {args.name}: unknown giant model (use one of {', '.join(MODELS)})",
              file=sys.stderr)
        return 2
    t0 = time.time()
    model = build(args.name, args.tied)
    check(model)
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.name}.onnx")
    onnx.save(model, path)  # the proto as is: onnx.save does not touch external weights
    print(f"{path}: {param_count(MODELS[args.name], args.tied)} parameters "
          f"({'tied' if args.tied else 'untied'} head), {os.path.getsize(path)} bytes, "
          f"{time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
