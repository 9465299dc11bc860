#!/usr/bin/env python3
"""PyTorch references for smp's training engine, on the sample models (scripts/sample_models.py).

  torch_reference.py train NAME OUT [--steps 20] [--batch 8] [--lr 0.05] [--seed 0] [--threads 1]
      Same initial weights as sample_models/NAME.onnx (its initializers), deterministic batches,
      cross-entropy over the last axis, torch.optim.SGD. Writes OUT/x_<k>.npy, OUT/y_<k>.npy (the
      batch of step k) and OUT/losses.json ({"losses": [loss before step k's update, ...]}).

  torch_reference.py bench NAME [--batch 32] [--threads 1] [--steps 20] [--warmup 3]
      Prints {"steps_per_s": ..., "steps_per_cpu_s": ...} (per second of the process's CPU time) for training steps (forward, loss, backward, SGD step).
"""
import argparse
import json
import os
import sys
import time

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


def cmd_train(a):
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    model = model_for(a.name)
    opt = torch.optim.SGD(model.parameters(), lr=a.lr)
    rng = np.random.RandomState(a.seed)
    losses = []
    for k in range(a.steps):
        x, y = batch(a.name, a.batch, rng)
        np.save(os.path.join(a.out, f"x_{k}.npy"), x)
        np.save(os.path.join(a.out, f"y_{k}.npy"), y)
        losses.append(step(model, opt, torch.from_numpy(x), torch.from_numpy(y)))
    with open(os.path.join(a.out, "losses.json"), "w") as f:
        json.dump({"losses": losses}, f)
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
    b = sub.add_parser("bench")
    b.add_argument("name")
    b.add_argument("--warmup", type=int, default=3)
    for q in (t, b):
        q.add_argument("--steps", type=int, default=20)
        q.add_argument("--batch", type=int, default=8 if q is t else 32)
        q.add_argument("--lr", type=float, default=0.05)
        q.add_argument("--seed", type=int, default=0)
        q.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    return cmd_train(a) if a.cmd == "train" else cmd_bench(a)


if __name__ == "__main__":
    sys.exit(main())
