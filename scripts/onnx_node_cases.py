#!/usr/bin/env python3
"""Writes ONNX's own backend node test cases (from the installed python3-onnx) as
OUT/<case>/model.onnx and OUT/<case>/test_data_set_<k>/{input,output}_<j>.npy, plus
OUT/manifest.json listing each case's node op types. Only cases with at least one node whose op
type is named on the command line are written (all when none are named).

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

import onnx.backend.test.case.node as node_test  # noqa: E402


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = argv[1]
    wanted = set(argv[2:])
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    manifest = {}
    for case in node_test.collect_testcases(None):
        if case.kind != "node" or case.model is None or case.name in manifest:
            continue
        ops = [n.op_type for n in case.model.graph.node]
        if wanted and not (set(ops) & wanted):
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
            for j, a in enumerate(inputs):
                np.save(os.path.join(ds, f"input_{j}.npy"), np.array(a, order="C"))
            for j, a in enumerate(outputs):
                np.save(os.path.join(ds, f"output_{j}.npy"), np.array(a, order="C"))
        manifest[case.name] = {"ops": ops, "rtol": case.rtol, "atol": case.atol}
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print(f"{len(manifest)} node cases written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
