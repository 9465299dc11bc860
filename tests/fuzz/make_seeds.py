#!/usr/bin/python3
"""Writes small valid ONNX models as the fuzzer's seed corpus into DIR."""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def save(m, d, name):
    onnx.checker.check_model(m)
    onnx.save(m, os.path.join(d, name))


def main(d):
    os.makedirs(d, exist_ok=True)
    x = h.make_tensor_value_info("x", T.FLOAT, ["N", 4])
    y = h.make_tensor_value_info("y", T.FLOAT, ["N", 4])
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), d, "relu.onnx")

    # A PyTorch-style view chain: Shape, Gather, Unsqueeze, Concat, Reshape; a Gemm with weights.
    w = nh.from_array(np.arange(32, dtype=np.float32).reshape(8, 4), "w")
    nodes = [
        h.make_node("Gemm", ["x", "w"], ["g"], transB=1),
        h.make_node("Shape", ["g"], ["s"]),
        h.make_node("Constant", [], ["zero"], value=nh.from_array(np.array(0, dtype=np.int64))),
        h.make_node("Gather", ["s", "zero"], ["b"], axis=0),
        h.make_node("Constant", [], ["ax"], value=nh.from_array(np.array([0], dtype=np.int64))),
        h.make_node("Unsqueeze", ["b", "ax"], ["b1"]),
        h.make_node("Constant", [], ["rest"], value=nh.from_array(np.array([2, 4], dtype=np.int64))),
        h.make_node("Concat", ["b1", "rest"], ["shape"], axis=0),
        h.make_node("Reshape", ["g", "shape"], ["r"]),
        h.make_node("Softmax", ["r"], ["z"], axis=-1),
    ]
    z = h.make_tensor_value_info("z", T.FLOAT, ["N", 2, 4])
    g = h.make_graph(nodes, "chain", [x], [z], initializer=[w])
    save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), d, "chain.onnx")

    # A mask built from constants, and external data that does not exist.
    e = nh.from_array(np.zeros((16, 4), dtype=np.float32), "emb")
    e.ClearField("raw_data")
    e.data_location = T.EXTERNAL
    for k, v in (("location", "emb.weights"), ("offset", "0"), ("length", "256")):
        e.external_data.add(key=k, value=v)
    ids = h.make_tensor_value_info("ids", T.INT64, ["N", 3])
    nodes = [
        h.make_node("Gather", ["emb", "ids"], ["h"]),
        h.make_node("Constant", [], ["ss"], value=nh.from_array(np.array([3, 3], dtype=np.int64))),
        h.make_node("ConstantOfShape", ["ss"], ["ones"], value=nh.from_array(np.array([1], dtype=np.int64))),
        h.make_node("Trilu", ["ones"], ["tri"], upper=1),
        h.make_node("Cast", ["tri"], ["mask"], to=T.BOOL),
        h.make_node("MatMul", ["h", "ht"], ["att"]),
        h.make_node("Transpose", ["h"], ["ht"], perm=[0, 2, 1]),
        h.make_node("Constant", [], ["ninf"], value=nh.from_array(np.array(-1e9, dtype=np.float32))),
        h.make_node("Where", ["mask", "ninf", "att"], ["out"]),
    ]
    out = h.make_tensor_value_info("out", T.FLOAT, ["N", 3, 3])
    g = h.make_graph(nodes, "mask", [ids], [out], initializer=[e])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.save(m, os.path.join(d, "mask.onnx"))  # unsorted on purpose: the loader sorts

    # Model-local functions: Block calls Scale twice, passing its attribute on (ref_attr_name);
    # a Compress of a constant condition, a NonZero of a constant, MeanVarianceNormalization
    # (expanded by its function body).
    slope = h.make_attribute("alpha", 0.0)
    slope.ref_attr_name = "slope"
    scale = h.make_function("my.fn", "Scale", ["x", "w"], ["y"],
                            [h.make_node("Mul", ["x", "w"], ["t"]), h.make_node("LeakyRelu", ["t"], ["y"])],
                            [h.make_opsetid("", 17)], ["slope"])
    scale.node[1].attribute.append(slope)
    inner = h.make_node("Scale", ["x", "a"], ["t"], domain="my.fn")
    inner.attribute.append(h.make_attribute("slope", 0.0))
    inner.attribute[0].ref_attr_name = "slope"
    block = h.make_function("my.fn", "Block", ["x", "a", "b"], ["y"],
                            [inner, h.make_node("Scale", ["t", "b"], ["y"], domain="my.fn")],
                            [h.make_opsetid("", 17), h.make_opsetid("my.fn", 1)], ["slope"])
    wa = nh.from_array(np.arange(4, dtype=np.float32), "wa")
    keep = nh.from_array(np.array([True, False, True, True]), "keep")
    nodes = [
        h.make_node("Block", ["x", "wa", "wa"], ["h"], domain="my.fn", slope=0.25),
        h.make_node("Compress", ["h", "keep"], ["c"], axis=1),
        h.make_node("NonZero", ["keep"], ["nz"]),
        h.make_node("Cast", ["nz"], ["nzf"], to=T.FLOAT),
        h.make_node("MeanVarianceNormalization", ["c"], ["z"], axes=[0, 1]),
    ]
    z = h.make_tensor_value_info("z", T.FLOAT, ["N", 3])
    nzf = h.make_tensor_value_info("nzf", T.FLOAT, [1, 3])
    g = h.make_graph(nodes, "functions", [x], [z, nzf], initializer=[wa, keep])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("my.fn", 1)], functions=[scale, block])
    save(m, d, "functions.onnx")

    # What smp-run --forward decides in stages: an If on the sum of the input, NonMaxSuppression,
    # Unique and ReduceProd of constants (folded), a NonZero of a computed mask.
    boxes = nh.from_array(np.array([[[0, 0, 1, 1], [0, 0.1, 1, 1.1], [2, 2, 3, 3]]], dtype=np.float32), "boxes")
    scores = nh.from_array(np.array([[[0.9, 0.8, 0.7]]], dtype=np.float32), "scores")
    cap = nh.from_array(np.array([2], dtype=np.int64), "cap")
    iou = nh.from_array(np.array([0.5], dtype=np.float32), "iou")
    zero = nh.from_array(np.array(0, dtype=np.float32), "zero")
    then = h.make_graph([h.make_node("Neg", ["x"], ["u"])], "then", [], [h.make_tensor_value_info("u", T.FLOAT, None)])
    other = h.make_graph([h.make_node("Relu", ["x"], ["u"])], "else", [], [h.make_tensor_value_info("u", T.FLOAT, None)])
    nodes = [
        h.make_node("NonMaxSuppression", ["boxes", "scores", "cap", "iou"], ["sel"]),
        h.make_node("Unique", ["sel"], ["uniq", "first", "inverse", "counts"], sorted=1),
        h.make_node("Shape", ["uniq"], ["us"]),
        h.make_node("ReduceProd", ["us"], ["n"], keepdims=0),
        h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        h.make_node("Greater", ["s", "zero"], ["c"]),
        h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other),
        h.make_node("Greater", ["y", "zero"], ["mask"]),
        h.make_node("NonZero", ["mask"], ["where"]),
    ]
    outs = [h.make_tensor_value_info("y", T.FLOAT, ["N", 4]), h.make_tensor_value_info("where", T.INT64, [2, "K"]),
            h.make_tensor_value_info("n", T.INT64, [])]
    g = h.make_graph(nodes, "staged", [x], outs, initializer=[boxes, scores, cap, iou, zero])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    save(m, d, "staged.onnx")


if __name__ == "__main__":
    main(sys.argv[1])
