#!/usr/bin/python3
"""Runs torch optimizers over the parameters and gradients in DIR (p.npy, g0.npy ... gK.npy) and
writes the parameters after each step as DIR/<opt>_<k>.npy. The C++ test compares."""
import json
import math
import sys

import numpy as np
import torch

d = sys.argv[1]
cfg = json.loads(sys.argv[2])
p0 = torch.from_numpy(np.load(f"{d}/p.npy"))
for name in ("sgd", "momentum", "adamw"):
    p = torch.nn.Parameter(p0.clone())
    if name == "sgd":
        opt = torch.optim.SGD([p], lr=cfg["lr"], weight_decay=cfg["wd"])
    elif name == "momentum":
        opt = torch.optim.SGD([p], lr=cfg["lr"], momentum=0.9, weight_decay=cfg["wd"])
    else:
        opt = torch.optim.AdamW([p], lr=cfg["lr"], betas=(0.9, 0.999), eps=1e-8, weight_decay=cfg["wd"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / cfg["warmup"] if k < cfg["warmup"] else
        0.5 * (1 + math.cos(math.pi * min(1.0, (k - cfg["warmup"]) / (cfg["total"] - cfg["warmup"])))))
    for k in range(cfg["steps"]):
        p.grad = torch.from_numpy(np.load(f"{d}/g{k}.npy")).clone()
        torch.nn.utils.clip_grad_norm_([p], cfg["clip"])
        opt.step()
        sched.step()
        np.save(f"{d}/{name}_{k}.npy", p.detach().numpy())
