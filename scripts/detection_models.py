#!/usr/bin/python3
"""torchvision's detection models through `smp-run --forward`, against PyTorch.

    detection_models.py list                      # the models (DETECTION), one per line
    detection_models.py check NAME... --dir DIR --smp-run BIN [--size S] [--threads T]
    detection_models.py bench NAME... --dir DIR --smp-run BIN [--size S] [--threads T] [--repeats R]
                                                  [--json] [--header]

Each NAME is built with seeded random weights, its BatchNorms' running statistics set from a
few random images (untrained ones, mean 0 and variance 1, leave every feature alike and every
box scoring the same), its class-scoring layers scaled by SCORE_SCALE (random heads on
unnormalised FPN features otherwise saturate every score at 1: ties, whose order no
implementation decides), in eval mode, on one random image of S x S (320) that its transform
keeps at S. It is exported as a user exports it for inference, torch.onnx.export at opset 15:
at 16, torchvision 0.14 writes RoiAlign's aligned=False without coordinate_transformation_mode,
so ONNX's default (half_pixel, aligned=True) applies and the file no longer computes what PyTorch
does (docs/models.md). smp-run --forward runs the file: the model's If on box counts, NonZero of
score masks, NonMaxSuppression, TopK of data-dependent k are decided by the data, in stages.

Per model a JSON line: the detections' count and labels of smp, PyTorch float32 and PyTorch
float64 (the same model in double), and the error of every output (the largest: boxes and
keypoints relative to the image size, scores absolute; masks' mean), smp against float32 and
against float64 and float32 against float64 ("error": smp-run's last line where it failed).

`bench` times the same exported model: smp-run --forward end to end (a process: loading the
model once per stage, running each stage; its note splits the two) against PyTorch's eval()
forward of the module in this process (model built, not counting its construction), both at T
threads, the median of R runs after one unmeasured run of each; a line per model
(bench/detect_vs_torch.sh prints them).

Needs Debian's python3-torch / python3-torchvision / python3-onnx (hence /usr/bin/python3).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import torch
import torchvision

warnings.simplefilter("ignore")

DETECTION = ("ssdlite320_mobilenet_v3_large", "ssd300_vgg16", "fcos_resnet50_fpn", "retinanet_resnet50_fpn",
             "retinanet_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_320_fpn", "fasterrcnn_mobilenet_v3_large_fpn",
             "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet50_fpn_v2", "maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2",
             "keypointrcnn_resnet50_fpn")
SEED = 0
OPSET = 15
SCORE_SCALE = 0.03
# Outputs measured against the image size (coordinates); masks by their mean difference (a box
# edge a pixel off moves whole rows of a pasted mask from 0 to 1); the others absolutely.
COORDINATES = ("boxes", "keypoints")
MEAN = ("masks",)


def build(name, size):
    torch.manual_seed(SEED)
    kw = {"weights": None, "weights_backbone": None}
    if "rcnn" in name:
        kw["box_score_thresh"] = 0.0
    if not name.startswith("ssd"):
        kw.update(min_size=size, max_size=size)
    m = getattr(torchvision.models.detection, name)(**kw)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = None  # a cumulative average over the calibration batch
    m.eval()
    m.backbone.train()
    with torch.no_grad():
        m.backbone(torch.rand(4, 3, size, size))
        for n, p in m.named_parameters():
            if any(k in n for k in ("cls_logits", "cls_score")):
                p.mul_(SCORE_SCALE)
    return m.eval()


def run(m, x):
    with torch.no_grad():
        out = m([x])[0]
    return {k: v.numpy() for k, v in out.items()}


def gap(a, b, size):
    """Largest error of each output of B against A (None where the detections differ in number)."""
    r = {}
    for k, v in a.items():
        w = b[k]
        if v.shape != w.shape:
            r[k] = None
            continue
        if v.size == 0:
            r[k] = 0.0
            continue
        if v.dtype.kind in "iub":
            r[k] = float((v != w).sum())
            continue
        d = np.abs(v.astype(np.float64) - w.astype(np.float64))
        r[k] = float(d.mean()) if k in MEAN else float(d.max()) / size if k in COORDINATES else float(d.max())
    return r


def check(a):
    torch.set_num_threads(a.threads)
    os.makedirs(a.dir, exist_ok=True)
    for name in a.names:
        m = build(name, a.size)
        x = torch.rand(3, a.size, a.size)
        work = os.path.join(a.dir, name)
        ref = export_model(m, x, work)
        names = list(ref)
        ref64 = run(m.double(), x.double())
        out = {"name": name, "size": a.size, "torch32": {"count": len(ref["labels"]), "labels": ref["labels"].tolist()},
               "torch64": {"count": len(ref64["labels"]), "labels": ref64["labels"].tolist()}}
        r = smp_forward(a, work)
        if r.returncode:
            out["error"] = ((r.stdout + r.stderr).strip().splitlines() or ["(no output)"])[-1]
        else:
            got = {k: np.load(os.path.join(work, "out", f"{k}.npy")) for k in names}
            out["smp"] = {"count": len(got["labels"]), "labels": got["labels"].tolist()}
            out["stages"] = next((int(w) for line in r.stderr.splitlines() if line.startswith("note: ran in")
                                  for w in line.split()[3:4]), 1)
            out["smp_vs_torch32"] = gap(ref, got, a.size)
            out["smp_vs_torch64"] = gap(ref64, got, a.size)
        out["torch32_vs_torch64"] = gap(ref64, ref, a.size)
        print(json.dumps(out), flush=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def export_model(m, x, work):
    """M exported for inference on image X into WORK/model.onnx, X saved as WORK/in/images.npy;
    PyTorch's float32 outputs."""
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(os.path.join(work, "in"))
    np.save(os.path.join(work, "in", "images.npy"), x.numpy())
    ref = run(m, x)
    torch.onnx.export(m, ([x],), os.path.join(work, "model.onnx"), opset_version=OPSET, input_names=["images"],
                      output_names=list(ref))
    return ref


def smp_forward(a, work):
    """smp-run --forward of WORK/model.onnx on WORK/in into WORK/out: the process's result."""
    return subprocess.run([a.smp_run, os.path.join(work, "model.onnx"), "--forward", "--data", os.path.join(work, "in"),
                           "--output", os.path.join(work, "out"), "--threads", str(a.threads)], capture_output=True, text=True)


BENCH_HEADER = (f"{'model':<38} {'threads':>7} {'stages':>6} {'torch':>9} {'smp':>9} {'running':>9} {'ratio':>9} "
                f"{'run-ratio':>9}")


def bench_row(r):
    """One model's line under BENCH_HEADER: the times, and PyTorch's over smp's end to end and
    over smp's running stages alone (above 1: smp is faster)."""
    run = r.get("smp_run_s")
    return (f"{r['name']:<38} {r['threads']:>7} {r['stages']:>6} {r['torch_s']:>8.3f}s {r['smp_s']:>8.3f}s "
            + (f"{run:>8.3f}s" if run else f"{'-':>9}") + f" {r['torch_s'] / r['smp_s']:>9.2f} "
            + (f"{r['torch_s'] / run:>9.2f}" if run else f"{'-':>9}"))


def bench(a):
    import re
    import statistics
    import time

    torch.set_num_threads(a.threads)
    os.makedirs(a.dir, exist_ok=True)
    if a.header and not a.json:
        print(BENCH_HEADER, flush=True)
    for name in a.names:
        m = build(name, a.size)
        x = torch.rand(3, a.size, a.size)
        work = os.path.join(a.dir, name)
        export_model(m, x, work)
        torch_s, smp_s, load_s, run_s, stages = [], [], [], [], 1
        for k in range(a.repeats + 1):
            t = time.perf_counter()
            run(m, x)
            t_torch = time.perf_counter() - t
            t = time.perf_counter()
            r = smp_forward(a, work)
            t_smp = time.perf_counter() - t
            if r.returncode:
                err = ((r.stdout + r.stderr).strip().splitlines() or ["(no output)"])[-1]
                print(json.dumps({"name": name, "error": err}) if a.json else f"{name:<38} failed: {err}", flush=True)
                break
            if k == 0:
                continue  # the first of each warms caches (the file, PyTorch's allocator)
            torch_s.append(t_torch)
            smp_s.append(t_smp)
            note = re.search(r"ran in (\d+) stages.*loading ([0-9.]+) s, running ([0-9.]+) s", r.stderr)
            if note:
                stages = int(note.group(1))
                load_s.append(float(note.group(2)))
                run_s.append(float(note.group(3)))
        else:
            med = statistics.median
            out = {"name": name, "size": a.size, "threads": a.threads, "repeats": a.repeats, "stages": stages,
                   "torch_s": med(torch_s), "smp_s": med(smp_s)}
            if load_s:
                out.update(smp_load_s=med(load_s), smp_run_s=med(run_s))
            print(json.dumps(out) if a.json else bench_row(out), flush=True)
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list")
    for cmd in ("check", "bench"):  # the same models, exported the same way
        c = sub.add_parser(cmd)
        c.add_argument("names", nargs="+", choices=DETECTION, metavar="NAME")
        c.add_argument("--dir", required=True)
        c.add_argument("--smp-run", required=True)
        c.add_argument("--size", type=int, default=320)
        c.add_argument("--threads", type=int, default=2)
        c.add_argument("--keep", action="store_true")
    b = sub.choices["bench"]
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--json", action="store_true", help="a JSON line per model instead of a table row")
    b.add_argument("--header", action="store_true", help="the table's header line first")
    a = p.parse_args(argv[1:])
    if a.cmd == "list":
        print("\n".join(DETECTION))
        return 0
    return check(a) if a.cmd == "check" else bench(a)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
