#!/usr/bin/env bash
# The CPU engine against PyTorch on the shapes users bring: one-stage training throughput
# (forward, cross-entropy, backward, SGD step) of smp and of PyTorch (Debian's python3-torch)
# on the same model, batch and thread count, run side by side; prints steps/s and the ratio
# smp / PyTorch per model and thread count (target: >= 1.25 on every row).
#
#   bench/engine_vs_torch.sh [BIN_DIR]
#   env: MODELS="gpt,mha,gated_mlp,bn_cnn,resnet18,lstm" THREADS="1,2" BATCH=32 STEPS=20 REPEATS=3
#
# gpt is the bundled sample; mha (a decoder built from nn.MultiheadAttention), gated_mlp (a
# residual MLP with LayerNorm and gating), bn_cnn (a CNN with BatchNorm), resnet18 (torchvision's)
# and lstm (a 2-layer nn.LSTM) come from scripts/bench_models.py, exported in training mode once
# into build/bench-models/. Each configuration is measured REPEATS times (smp and PyTorch alternating)
# and the median of each side is compared. Wall-clock on a shared machine: quote a quiet one's.
# cpu-ratio is the median of the per-repeat ratios of steps per second of CPU time (the process's,
# all threads): steadier than wall-clock when other processes share the cores.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/bin}
MODELS=${MODELS:-gpt,mha,gated_mlp,bn_cnn,resnet18,lstm}
THREADS=${THREADS:-1,2}
BATCH=${BATCH:-32}
STEPS=${STEPS:-20}
REPEATS=${REPEATS:-3}
# PyTorch's processes use glibc's malloc: ask it for huge pages, as smp's programs do through
# jemalloc (docs/engine.md, "Memory and process start"), so that neither pays 4 KiB page faults.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
echo "engine vs PyTorch: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), batch $BATCH, $STEPS steps, median of $REPEATS"
printf '%-10s %7s %12s %12s %8s %10s\n' model threads smp torch ratio cpu-ratio
for m in ${MODELS//,/ }; do
  for t in ${THREADS//,/ }; do
    err=$(mktemp)
    rows=$(for r in $(seq 1 "$REPEATS"); do
      "$BIN/runtime_bench" --models "$m" --threads "$t" --batch "$BATCH" --steps "$STEPS" 2>"$err" | tail -n 1 || true
    done)
    why=$(grep -m1 -E 'what\(\)|error' "$err" | sed -E 's/^ *what\(\): *//' || true)
    rm -f "$err"
    "$PY" - "$m" "$t" "$why" <<PYEOF
import statistics, sys
rows = [l.split() for l in """$rows""".splitlines() if l.strip() and l.split()[0] == sys.argv[1]]
if not rows:
    print(f"{sys.argv[1]:<10} {sys.argv[2]:>7}  failed: {sys.argv[3] or 'no result'}")
    sys.exit(0)
smp = statistics.median(float(r[2]) for r in rows)
torch = statistics.median(float(r[3]) for r in rows)
ratio = f"{smp / torch:.2f}" if torch > 0 else "-"
cpu = [float(r[5]) / float(r[6]) for r in rows if len(r) > 6 and float(r[6]) > 0]
cpu_ratio = f"{statistics.median(cpu):.2f}" if cpu else "-"
print(f"{sys.argv[1]:<10} {sys.argv[2]:>7} {smp:12.2f} {torch:12.2f} {ratio:>8} {cpu_ratio:>10}")
PYEOF
  done
done
