#!/usr/bin/env python3
"""The GPU benchmark's two models and PyTorch's side of it (bench/gpu_bench.cpp is smp's side).

    gpu_models.py export OUT_DIR
        Writes OUT_DIR/gpt2s.onnx and OUT_DIR/resnet50.onnx: the graphs (opset 17, training-mode
        export, no constant folding, batch symbolic), with the trainable parameters stored as
        references to an external weight file that is not written: gpu_bench initialises them
        itself, so the files stay small enough to carry to a GPU machine.
    gpu_models.py bench --model gpt2s|resnet50 --batch B --dtype fp32|tf32|bf16 [--steps N] [--warmup W]
        PyTorch eager training throughput of the same model, batch and precision (AdamW, the loss
        in float32), one JSON line on stdout.
    gpu_models.py compare SMP.jsonl TORCH.jsonl
        The table of both sides: samples/s, the ratio smp / PyTorch, model FLOP utilisation.

Models:
    gpt2s     GPT-2-small-shaped decoder: 12 layers, d_model 768, 12 heads, sequence 1024,
              vocabulary 50257, untied head (scripts/sample_models.py's GPT, larger)
    resnet50  ResNet-50 (bottleneck blocks 3-4-6-3, 224 x 224, 1000 classes, batch statistics)

Export needs torch and onnx (Debian's /usr/bin/python3 here); bench needs torch with CUDA.
"""

import argparse
import json
import math
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "scripts"))

GPT2S = {
    "vocab": 50257, "seq": 1024, "d_model": 768, "layers": 12, "heads": 12, "head_dim": 64,
    "mlp_ratio": 4, "d_ff": 3072, "layer_norm_eps": 1e-5, "tied_head": False, "head_bias": False,
}


def gpt2s():
    import sample_models  # the sample GPT's definition, at GPT-2-small's size
    return sample_models.GPT(GPT2S)


class Bottleneck(nn.Module):
    def __init__(self, inp, planes, stride):
        super().__init__()
        out = planes * 4
        self.conv1 = nn.Conv2d(inp, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.down = None
        if stride != 1 or inp != out:
            self.down = nn.Sequential(nn.Conv2d(inp, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.down(x) if self.down is not None else x))


class ResNet50(nn.Module):
    def __init__(self, classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, inp = [], 64
        for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
            for i in range(blocks):
                layers.append(Bottleneck(inp, planes, stride if i == 0 else 1))
                inp = planes * 4
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(inp, classes)

    def forward(self, x):  # [B, 3, 224, 224] -> [B, 1000]
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, stride=2, padding=1)
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


MODELS = {
    "gpt2s": {"build": gpt2s, "input": "input_ids", "output": "logits"},
    "resnet50": {"build": ResNet50, "input": "x", "output": "logits"},
}


def example(name, batch, device="cpu"):
    g = torch.Generator(device=device).manual_seed(0)
    if name == "gpt2s":
        x = torch.randint(0, GPT2S["vocab"], (batch, GPT2S["seq"]), generator=g, device=device)
        y = torch.randint(0, GPT2S["vocab"], (batch, GPT2S["seq"]), generator=g, device=device)
    else:
        x = torch.randn(batch, 3, 224, 224, generator=g, device=device)
        y = torch.randint(0, 1000, (batch,), generator=g, device=device)
    return x, y


def export(out_dir):
    import onnx
    os.makedirs(out_dir, exist_ok=True)
    for name, m in MODELS.items():
        torch.manual_seed(0)
        model = m["build"]()
        model.train()
        path = os.path.join(out_dir, f"{name}.onnx")
        x, _ = example(name, 2)
        torch.onnx.export(model, (x,), path, opset_version=17, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=[m["input"]], output_names=[m["output"]],
                          dynamic_axes={m["input"]: {0: "batch"}, m["output"]: {0: "batch"}})
        g = onnx.load(path)
        # BatchNormalization in training mode: the batch's statistics (smp's executor option);
        # the running-statistics outputs are dropped.
        for n in g.graph.node:
            if n.op_type == "BatchNormalization":
                del n.output[1:]
                keep = [a for a in n.attribute if a.name != "training_mode"]
                del n.attribute[:]
                n.attribute.extend(keep)
        params = {k for k, _ in model.named_parameters()}
        offset = 0
        for t in g.graph.initializer:
            if t.name not in params:
                continue
            size = len(t.raw_data) if t.raw_data else 4 * math.prod(t.dims)
            t.ClearField("raw_data")
            t.ClearField("float_data")
            t.data_location = onnx.TensorProto.EXTERNAL
            for k, v in (("location", f"{name}.weights.bin"), ("offset", str(offset)), ("length", str(size))):
                e = t.external_data.add()
                e.key, e.value = k, v
            offset += size
        onnx.save(g, path)
        print(f"{path}: {os.path.getsize(path)} bytes, {sum(p.numel() for p in model.parameters())} parameters "
              f"(weights not written: gpu_bench initialises them)")


def bench(args):
    assert torch.cuda.is_available(), "no CUDA device for PyTorch"
    dev = torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32 = args.dtype == "tf32"
    torch.backends.cudnn.allow_tf32 = args.dtype == "tf32"
    torch.backends.cudnn.benchmark = True  # its best convolution algorithms, as smp searches its own
    torch.manual_seed(0)
    model = MODELS[args.model]["build"]().to(dev)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x, y = example(args.model, args.batch, "cuda")

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=args.dtype == "bf16"):
            out = model(x)
        loss = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), y.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    times = []
    torch.cuda.reset_peak_memory_stats()
    for i in range(args.warmup + args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = step()
        loss.item()
        torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    t = times[len(times) // 2]
    per = GPT2S["seq"] if args.model == "gpt2s" else 1
    print(json.dumps({"side": "pytorch", "version": torch.__version__, "model": args.model, "batch": args.batch,
                      "dtype": args.dtype, "steps": args.steps, "step_s": t, "samples_per_s": args.batch / t,
                      "tokens_per_s": args.batch * per / t if args.model == "gpt2s" else None,
                      "loss": float(loss.item()), "peak_bytes": torch.cuda.max_memory_allocated(),
                      "gpu": torch.cuda.get_device_name(0)}), flush=True)


def compare(smp_file, torch_file):
    def read(f):
        rows = {}
        for line in open(f):
            line = line.strip()
            if line.startswith("{"):
                r = json.loads(line)
                rows[(r["model"], r["dtype"])] = r
        return rows
    s, t = read(smp_file), read(torch_file)
    print(f"{'model':<9} {'dtype':<5} {'batch':>5} {'smp samples/s':>14} {'torch samples/s':>16} {'smp/torch':>9} "
          f"{'smp MFU':>8} {'torch MFU':>9}")
    for key in sorted(s):
        a = s[key]
        b = t.get(key)
        mfu_t = b and a.get("flops_per_step") and a.get("peak_flops") and a["flops_per_step"] / b["step_s"] / a["peak_flops"]
        ratio = f"{a['samples_per_s'] / b['samples_per_s']:.2f}x" if b else "-"
        print(f"{key[0]:<9} {key[1]:<5} {a['batch']:>5} {a['samples_per_s']:>14.1f} "
              f"{(b['samples_per_s'] if b else float('nan')):>16.1f} {ratio:>9} {100 * a.get('mfu', 0):>7.1f}% "
              f"{(100 * mfu_t if mfu_t else float('nan')):>8.1f}%")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export")
    e.add_argument("out_dir")
    b = sub.add_parser("bench")
    b.add_argument("--model", choices=sorted(MODELS), required=True)
    b.add_argument("--batch", type=int, required=True)
    b.add_argument("--dtype", choices=["fp32", "tf32", "bf16"], required=True)
    b.add_argument("--steps", type=int, default=10)
    b.add_argument("--warmup", type=int, default=3)
    c = sub.add_parser("compare")
    c.add_argument("smp")
    c.add_argument("torch")
    a = ap.parse_args()
    if a.cmd == "export":
        export(a.out_dir)
    elif a.cmd == "bench":
        bench(a)
    else:
        compare(a.smp, a.torch)


if __name__ == "__main__":
    main()
