#!/usr/bin/python3
"""Models the benchmarks use that the bundled samples do not cover (shapes users bring):

    bench_models.py export NAME OUT.onnx      # training-mode ONNX export, batch axis "batch"
    bench_models.py bench NAME [--batch 32] [--threads 1] [--steps 20] [--warmup 3]
        prints {"steps_per_s": ..., "steps_per_cpu_s": ...}: PyTorch training steps (forward, cross-entropy, backward,
        SGD step) of the same module on random data of the same shapes
    bench_models.py info NAME                 # {"input": ..., "classes": ...} as JSON

Models (float32; the batch axis is symbolic):
    mha        a pre-LN causal decoder built from nn.MultiheadAttention (vocab 4096, sequence 64,
               d_model 128, 4 layers, 4 heads, GELU MLP): input_ids int64 [batch, 64] -> [batch, 64, 4096]
    gated_mlp  a residual MLP with LayerNorm and gating: x [batch, 256] -> 4 blocks of
               h + W2(GELU(W1 LN(h)) * sigmoid(Wg LN(h))) (hidden 1024) -> [batch, 10]
    bn_cnn     a CNN with BatchNorm: x [batch, 3, 32, 32] -> 3 x (Conv, BatchNorm, ReLU, MaxPool)
               -> Linear -> [batch, 10]
    resnet18   torchvision's resnet18 at 32 x 32 (10 classes)
    lstm       a 2-layer nn.LSTM (hidden 256) over sequences x [batch, 50, 128], its last step's
               state -> Linear -> [batch, 10]

Exports use opset 17, TrainingMode.TRAINING and no constant folding (an eval-mode export merges
equal initializers, which would tie parameters). Needs Debian's python3-torch (/usr/bin/python3).
"""

import argparse
import json
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

OPSET = 17
SEED = 1234
NAMES = ("mha", "gated_mlp", "bn_cnn", "resnet18", "lstm")


class MhaBlock(nn.Module):
    def __init__(self, d, heads, d_ff):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, d_ff)
        self.proj = nn.Linear(d_ff, d)

    def forward(self, x, mask):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=mask, need_weights=False)
        x = x + a
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class MhaDecoder(nn.Module):
    def __init__(self, vocab=4096, seq=64, d=128, layers=4, heads=4, d_ff=512):
        super().__init__()
        self.seq = seq
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(MhaBlock(d, heads, d_ff) for _ in range(layers))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, ids):
        T = ids.shape[1]
        pos = torch.arange(T, dtype=torch.int64)
        x = self.tok(ids) + self.pos(pos)
        mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # True: not attended
        for b in self.blocks:
            x = b(x, mask)
        return self.head(self.ln_f(x))


class GatedBlock(nn.Module):
    def __init__(self, d, hidden):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.up = nn.Linear(d, hidden)
        self.gate = nn.Linear(d, hidden)
        self.down = nn.Linear(hidden, d)

    def forward(self, h):
        z = self.ln(h)
        return h + self.down(F.gelu(self.up(z)) * torch.sigmoid(self.gate(z)))


class GatedMlp(nn.Module):
    def __init__(self, d_in=256, d=256, hidden=1024, blocks=4, classes=10):
        super().__init__()
        self.inp = nn.Linear(d_in, d)
        self.blocks = nn.ModuleList(GatedBlock(d, hidden) for _ in range(blocks))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.inp(x)
        for b in self.blocks:
            h = b(h)
        return self.head(self.ln_f(h))


class BnCnn(nn.Module):
    def __init__(self, channels=(32, 64, 128), classes=10):
        super().__init__()
        layers, c = [], 3
        for co in channels:
            layers += [nn.Conv2d(c, co, 3, padding=1), nn.BatchNorm2d(co), nn.ReLU(), nn.MaxPool2d(2)]
            c = co
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c * 4 * 4, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


class LstmClassifier(nn.Module):
    def __init__(self, d_in=128, hidden=256, layers=2, classes=10):
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x):
        y, _ = self.lstm(x)
        return self.head(y[:, -1])


def build(name):
    torch.manual_seed(SEED)
    if name == "mha":
        return MhaDecoder()
    if name == "gated_mlp":
        return GatedMlp()
    if name == "bn_cnn":
        return BnCnn()
    if name == "lstm":
        return LstmClassifier()
    if name == "resnet18":
        import torchvision
        return torchvision.models.resnet18(num_classes=10)
    raise SystemExit(f"error: unknown model '{name}' (one of {', '.join(NAMES)})")


def info(name):
    if name == "mha":
        return {"input": {"name": "input_ids", "dtype": "int64", "shape": [64], "high": 4096}, "classes": 4096}
    if name == "gated_mlp":
        return {"input": {"name": "x", "dtype": "float32", "shape": [256]}, "classes": 10}
    if name == "lstm":
        return {"input": {"name": "x", "dtype": "float32", "shape": [50, 128]}, "classes": 10}
    return {"input": {"name": "x", "dtype": "float32", "shape": [3, 32, 32]}, "classes": 10}


def example(name, batch, gen=None):
    i = info(name)["input"]
    shape = [batch] + i["shape"]
    if i["dtype"] == "int64":
        return torch.randint(0, i["high"], shape, generator=gen)
    return torch.randn(shape, generator=gen)


def export(name, out):
    m = build(name)
    m.train()
    x = example(name, 2)
    iname = info(name)["input"]["name"]
    dyn = {iname: {0: "batch"}, "logits": {0: "batch"}}
    torch.onnx.export(m, (x,), out, opset_version=OPSET, training=torch.onnx.TrainingMode.TRAINING,
                      do_constant_folding=False, input_names=[iname], output_names=["logits"],
                      dynamic_axes=dyn)


def bench(a):
    torch.set_num_threads(a.threads)
    m = build(a.name)
    m.train()
    opt = torch.optim.SGD(m.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    x = example(a.name, a.batch, gen)
    classes = info(a.name)["classes"]

    def step():
        opt.zero_grad(set_to_none=True)
        out = m(x)
        y = torch.randint(0, classes, out.shape[:-1], generator=gen)
        loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()

    for _ in range(a.warmup):
        step()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(a.steps):
        step()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    print(json.dumps({"steps_per_s": a.steps / dt, "steps_per_cpu_s": a.steps / dc}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("name", choices=NAMES)
    e.add_argument("out")
    b = sub.add_parser("bench")
    b.add_argument("name", choices=NAMES)
    b.add_argument("--batch", type=int, default=32)
    b.add_argument("--threads", type=int, default=1)
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--warmup", type=int, default=3)
    i = sub.add_parser("info")
    i.add_argument("name", choices=NAMES)
    a = p.parse_args()
    if a.cmd == "export":
        export(a.name, a.out)
    elif a.cmd == "bench":
        bench(a)
    else:
        print(json.dumps(info(a.name)))


if __name__ == "__main__":
    sys.exit(main())
