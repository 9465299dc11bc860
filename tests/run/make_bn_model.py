#!/usr/bin/python3
"""A small CNN with BatchNorm and Dropout, exported as PyTorch trains it (training mode, opset 17,
symbolic batch), and a data set for it: the models of smp-run's BatchNorm / Dropout tests.

    make_bn_model.py OUT [--dropout 0.3]
writes OUT/bn.onnx (x [batch, 3, 8, 8] -> logits [batch, 4]), OUT/x.npy (32 rows) and
OUT/labels.npy."""
import argparse
import os
import warnings

warnings.simplefilter("ignore")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--dropout", type=float, default=0.3)
a = p.parse_args()
torch.manual_seed(5)
m = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(a.dropout),
                  nn.Conv2d(8, 8, 3, padding=1, groups=4), nn.BatchNorm2d(8, momentum=0.2), nn.ReLU(),
                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
m.train()
os.makedirs(a.out, exist_ok=True)
torch.onnx.export(m, torch.randn(2, 3, 8, 8), os.path.join(a.out, "bn.onnx"), opset_version=17,
                  training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False, input_names=["x"],
                  output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
rng = np.random.RandomState(1)
np.save(os.path.join(a.out, "x.npy"), rng.standard_normal((32, 3, 8, 8)).astype(np.float32))
np.save(os.path.join(a.out, "labels.npy"), rng.randint(0, 4, size=(32,)).astype(np.int64))
