#!/usr/bin/env python3
"""Writes ONNX's own backend node test cases (from the installed python3-onnx) as
OUT/<case>/model.onnx and OUT/<case>/test_data_set_<k>/{input,output}_<j>.npy, plus
OUT/manifest.json: per case the op it tests ("op"), its nodes' op types, its graph inputs and
outputs by name, and ONNX's tolerances. Only cases testing an op named on the command line are
written (all when none are named).

The op a case tests: its node's op type when it has one node; for "<case>_expanded" (the op's
function body) the op of "<case>"; otherwise the longest ONNX op name that starts the case name
(underscores and case ignored).

The expected outputs of the window cases (HannWindow, HammingWindow, BlackmanWindow, and their
expanded forms) are written again with numpy's pi: onnx 1.12 computed them with pi = 3.1415,
0.02 % off and asymmetric (later ONNX releases fixed the generators).

The control flow and sequence ops that smp's loader resolves (LOADER_OPS: an If whose condition
folds, a Loop or Scan of static length, sequences of constant positions; Compress, NonZero,
NonMaxSuppression and Unique, evaluated at load once their inputs are known, in stages under
--forward) are always written when ops are named, and so are ONNX's
"simple" model cases that use them (test_sequence_model1 to 8: sequences built, erased, split
and concatenated), under the first such op they contain; so are the ops defined by a function
body, which the loader expands where smp has no kernel.

usage: onnx_node_cases.py OUT [OP_TYPE ...]
"""
import json
import os
import shutil
import sys

import warnings

import numpy as np

warnings.simplefilter("ignore")
# numpy 1.24 removed these aliases; onnx 1.12's case generators still use them.
for _alias, _t in (("float", float), ("int", int), ("bool", bool), ("object", object)):
    if not hasattr(np, _alias):
        setattr(np, _alias, _t)

import onnx.backend.test.case.model as model_test  # noqa: E402
import onnx.backend.test.case.node as node_test  # noqa: E402

LOADER_OPS = ("If", "Loop", "Scan", "SequenceEmpty", "SequenceConstruct", "SequenceInsert", "SequenceErase", "SequenceAt",
              "SequenceLength", "ConcatFromSequence", "SplitToSequence", "SequenceMap", "Compress", "NonZero",
              "NonMaxSuppression", "Unique")


WINDOWS = {"HannWindow": (0.5, 0.5, 0.0), "HammingWindow": (25 / 46, 21 / 46, 0.0), "BlackmanWindow": (0.42, 0.5, 0.08)}


def window(op, size, periodic):
    """The window as ONNX defines it: a0 - a1 cos(2 pi n / N) + a2 cos(4 pi n / N), N = size
    (periodic) or size - 1 (symmetric)."""
    a0, a1, a2 = WINDOWS[op]
    n = np.arange(size, dtype=np.float64)
    N = size if periodic else size - 1
    return (a0 - a1 * np.cos(2 * np.pi * n / N) + a2 * np.cos(4 * np.pi * n / N)).astype(np.float32)


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[1]
    wanted = set(argv[2:])
    import onnx.defs
    if wanted:
        wanted |= set(LOADER_OPS)
        # the ops the loader replaces by their function body (MeanVarianceNormalization)
        wanted |= {sc.name for sc in onnx.defs.get_all_schemas() if sc.domain == "" and sc.has_function}
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)

    def squash(x):
        return x.replace("_", "").lower()

    schemas = sorted({squash(sc.name): sc.name for sc in onnx.defs.get_all_schemas()}.items(), key=lambda kv: -len(kv[0]))
    cases = [c for c in node_test.collect_testcases(None) if c.kind == "node" and c.model is not None]
    single = {c.name: c.model.graph.node[0].op_type for c in cases if len(c.model.graph.node) == 1}
    for c in model_test.collect_testcases():
        if c.kind == "simple" and c.model is not None and any(n.op_type in LOADER_OPS for n in c.model.graph.node):
            cases.append(c)
            single[c.name] = next(n.op_type for n in c.model.graph.node if n.op_type in LOADER_OPS)

    def op_of(case):
        if case.name in single:
            return single[case.name]
        base = case.name[: -len("_expanded")] if case.name.endswith("_expanded") else None
        if base in single:
            return single[base]
        n = squash(case.name[len("test_"):])
        for k, v in schemas:
            if n.startswith(k):
                return v
        return "?"

    manifest = {}
    for case in cases:
        if case.name in manifest:
            continue
        ops = [n.op_type for n in case.model.graph.node]
        op = op_of(case)
        if wanted and op not in wanted:
            continue
        g = case.model.graph
        if any(not i.type.HasField("tensor_type") for i in g.input) or any(
            not o.type.HasField("tensor_type") for o in g.output
        ):
            continue
        d = os.path.join(out, case.name)
        os.makedirs(d)
        with open(os.path.join(d, "model.onnx"), "wb") as f:
            f.write(case.model.SerializeToString())
        for k, (inputs, outputs) in enumerate(case.data_sets):
            ds = os.path.join(d, f"test_data_set_{k}")
            os.makedirs(ds)
            if op in WINDOWS:  # the expanded form has no node of the op: its name says which
                periodic = "_symmetric" not in case.name
                outputs = [window(op, int(np.asarray(inputs[0])), periodic)]
            for j, a in enumerate(inputs):
                np.save(os.path.join(ds, f"input_{j}.npy"), np.array(a, order="C"))
            for j, a in enumerate(outputs):
                np.save(os.path.join(ds, f"output_{j}.npy"), np.array(a, order="C"))
        inits = {t.name for t in g.initializer}
        manifest[case.name] = {
            "op": op,
            "ops": ops,
            "inputs": [i.name for i in g.input if i.name not in inits],
            "outputs": [o.name for o in g.output],
            "rtol": case.rtol,
            "atol": case.atol,
        }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print(f"{len(manifest)} node cases written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
