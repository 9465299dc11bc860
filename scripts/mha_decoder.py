#!/usr/bin/python3
"""A small GPT-style decoder built from torch.nn.MultiheadAttention, exported as PyTorch exports
it: the packed in_proj (one MatMul, then three Slices), the [T, B*H, hd] head reshapes, the
out_proj as a Gemm with its bias. Tests of tensor parallelism use it beside the GPT sample
(scripts/sample_models.py), whose attention is written by hand.

    mha_decoder.py OUT.onnx [--with-loss]   # writes the model (deterministic weights), prints its parameter count

Config: vocab 512, d_model 64, 4 heads, sequence 16, 2 blocks (pre-LN, GELU MLP of 4 x d),
causal mask as an attn_mask, untied LM head; input input_ids int64 [batch, 16], output logits
float32 [batch, 16, 512]. With --with-loss the graph also takes labels int64 [batch, 16] and its
output is F.cross_entropy's loss (Reshape to [batch*16, 512], SoftmaxCrossEntropyLoss), a scalar. Exported with opset 17, TrainingMode.TRAINING and no constant folding
(an eval-mode export ties equal initializers). Needs Debian's python3-torch (/usr/bin/python3).
"""
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

VOCAB, D, HEADS, SEQ, LAYERS = 512, 64, 4, 16, 2


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D)
        self.attn = nn.MultiheadAttention(D, HEADS, batch_first=True)
        self.ln2 = nn.LayerNorm(D)
        self.fc = nn.Linear(D, 4 * D)
        self.proj = nn.Linear(4 * D, D)
        # -inf above the diagonal: a buffer, not a parameter (persistent=False keeps it out of
        # the state dict; the export makes it a constant)
        self.register_buffer("mask", torch.triu(torch.full((SEQ, SEQ), float("-inf")), 1), persistent=False)

    def forward(self, x):
        h = self.ln1(x)
        a, _ = self.attn(h, h, h, attn_mask=self.mask, need_weights=False)
        x = x + a
        return x + self.proj(F.gelu(self.fc(self.ln2(x))))


class Decoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, D)
        self.pos = nn.Parameter(torch.zeros(SEQ, D))
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.ln = nn.LayerNorm(D)
        self.head = nn.Linear(D, VOCAB, bias=False)
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, ids):  # [B, T] -> [B, T, V]
        x = self.emb(ids) + self.pos
        for b in self.blocks:
            x = b(x)
        return self.head(self.ln(x))


class WithLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = Decoder()

    def forward(self, ids, labels):  # -> the mean cross-entropy, a scalar
        return F.cross_entropy(self.decoder(ids).reshape(-1, VOCAB), labels.reshape(-1))


def export(path, with_loss=False):
    torch.manual_seed(1234)
    model = WithLoss() if with_loss else Decoder()
    model.train()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
    if with_loss:
        labels = torch.randint(0, VOCAB, (2, SEQ), generator=gen)
        torch.onnx.export(model, (ids, labels), path, opset_version=17, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["input_ids", "labels"], output_names=["loss"],
                          dynamic_axes={"input_ids": {0: "batch"}, "labels": {0: "batch"}})
    else:
        torch.onnx.export(model, (ids,), path, opset_version=17, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["input_ids"], output_names=["logits"],
                          dynamic_axes={"input_ids": {0: "batch"}, "logits": {0: "batch"}})
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        import sample_models  # the samples' fix of the declared output shape

        sample_models._tidy(path, {"output": {"shape": ["batch", SEQ, VOCAB]}})
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--with-loss"):
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(export(sys.argv[1], len(sys.argv) == 3))
