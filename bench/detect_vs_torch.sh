#!/usr/bin/env bash
# smp-run --forward against PyTorch on torchvision's detection models, whose graphs depend on
# their data (smp runs them in stages: docs/models.md). Per model and thread count: PyTorch's
# eval() forward of the module (built, in process), smp-run --forward end to end (a process that
# loads the exported file once per stage and runs each stage), and the part of that spent
# running stages; the ratios PyTorch time / smp time (above 1: smp is faster).
#
#   bench/detect_vs_torch.sh [BIN_DIR]
#   env: MODELS="ssdlite320_mobilenet_v3_large,fcos_resnet50_fpn,fasterrcnn_resnet50_fpn"
#        THREADS="1,2" SIZE=320 REPEATS=3
#
# Seeded random weights, one random image of SIZE x SIZE (scripts/detection_models.py bench: the
# median of REPEATS runs after one unmeasured run of each). Wall-clock on a shared machine: quote
# a quiet one's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/bin}
MODELS=${MODELS:-ssdlite320_mobilenet_v3_large,fcos_resnet50_fpn,fasterrcnn_resnet50_fpn}
THREADS=${THREADS:-1,2}
SIZE=${SIZE:-320}
REPEATS=${REPEATS:-3}
# PyTorch's processes use glibc's malloc: ask it for huge pages, as smp's programs do through
# jemalloc (docs/engine.md, "Memory and process start"), so that neither pays 4 KiB page faults.
export GLIBC_TUNABLES=${GLIBC_TUNABLES:-glibc.malloc.hugetlb=1}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
echo "detectors, smp-run --forward vs PyTorch: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), image $SIZE, median of $REPEATS"
first=--header
for t in ${THREADS//,/ }; do
  "$PY" "$ROOT/scripts/detection_models.py" bench ${MODELS//,/ } --dir "$WORK" --smp-run "$BIN/smp-run" \
    --size "$SIZE" --threads "$t" --repeats "$REPEATS" $first
  first=
done
