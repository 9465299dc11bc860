#!/usr/bin/python3
"""PyTorch's 20-step SGD reference for a sample (scripts/torch_reference.py) turned into a data
directory smp-run reads: step k's batch is rows k*B .. k*B+B-1 of DIR/<input>.npy and labels.npy.
Writes DIR/torch_losses.txt (one loss per step)."""
import json
import os
import subprocess
import sys

import numpy as np

name, out, steps, batch, lr = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ref = os.path.join(out, "torch")
subprocess.run([sys.executable, os.path.join(root, "scripts", "torch_reference.py"), "train", name, ref,
                "--steps", str(steps), "--batch", str(batch), "--lr", lr, "--threads", "2"], check=True)
sys.path.insert(0, os.path.join(root, "scripts"))
import sample_models  # noqa: E402

input_name = sample_models.CONFIGS[name]["input"]["name"]
xs = [np.load(os.path.join(ref, f"x_{k}.npy")) for k in range(steps)]
ys = [np.load(os.path.join(ref, f"y_{k}.npy")) for k in range(steps)]
np.save(os.path.join(out, f"{input_name}.npy"), np.concatenate(xs))
np.save(os.path.join(out, "labels.npy"), np.concatenate(ys))
losses = json.load(open(os.path.join(ref, "losses.json")))["losses"]
with open(os.path.join(out, "torch_losses.txt"), "w") as f:
    f.write("".join(f"{x!r}\n" for x in losses))
