#!/usr/bin/env bash
# How far a plan made without a profile lands from the step smp-run measures (issue 19): the
# planner prices every node by this machine's kernel calibration (smp-plan without --cluster).
#
#   bench/unprofiled_accuracy.sh [BIN_DIR] [OUT_DIR]
#   env: MODELS="gpt mlp cnn mha bn_cnn" WORKERS="1 2 4" BATCH=32 STEPS=12 FAST_STEPS=40 REPEATS=1
#
# For every model and worker count N: smp-plan MODEL -b BATCH --devices N twice, with the
# planner's own choice of stages, replicas, microbatches and schedule ("auto"), and fixed to N
# pipeline stages under 1f1b ("1f1b"; with N = 1 the same one-stage plan); then smp-run of each
# plan (STEPS steps, FAST_STEPS for the small models). A run's step time is the median of its
# steps after the first; the error is (measured - predicted) / predicted. mha and bn_cnn come
# from scripts/bench_models.py (exported once into build/bench-models/): models the samples do
# not contain. Target: every row within 25 %, the median within 10 %.
# The calibration is the cached one (smp-plan --recalibrate first for a fresh one). Wall-clock on
# a shared machine: quote a quiet one's.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/bin}
OUT=${2:-$(mktemp -d /tmp/smp-unprofiled-XXXXXX)}
MODELS=${MODELS:-"gpt mlp cnn mha bn_cnn"}
WORKERS=${WORKERS:-"1 2 4"}
BATCH=${BATCH:-32}
STEPS=${STEPS:-12}
FAST_STEPS=${FAST_STEPS:-40}
REPEATS=${REPEATS:-1}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$OUT"
echo "unprofiled accuracy: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), output in $OUT"

model_file() {
  case "$1" in
    gpt|mlp|cnn) echo "$ROOT/sample_models/$1.onnx" ;;
    *)
      local f="$ROOT/build/bench-models/$1.onnx"
      if [ ! -f "$f" ]; then
        mkdir -p "$(dirname "$f")"
        "$PY" "$ROOT/scripts/bench_models.py" export "$1" "$f" 2>/dev/null
      fi
      echo "$f" ;;
  esac
}
step_time() {
  "$PY" -c "
import json, statistics, sys
t = [json.loads(l)['step_time_s'] for l in open(sys.argv[1]) if l.strip()]
print(statistics.median(t[1:] or t))" "$1"
}
describe() {
  "$PY" -c "
import json, sys
p = json.load(open(sys.argv[1]))
d = p['degrees']
print(f\"{d['pipeline']}x{d['data_parallel']},m={p['microbatches']},{p['schedule']['name']}\", p['prediction']['step_s'])" "$1"
}

ROWS="$OUT/rows.txt"
: > "$ROWS"
for model in $MODELS; do
  f=$(model_file "$model")
  steps=$FAST_STEPS
  case "$model" in gpt|mha) steps=$STEPS ;; esac
  for n in $WORKERS; do
    for kind in auto 1f1b; do
      [ "$kind" = 1f1b ] && [ "$n" = 1 ] && continue
      tag="$model-$n-$kind"
      args=(--devices "$n")
      [ "$kind" = 1f1b ] && args+=(--stages "$n" --data-parallel 1 --schedule 1f1b)
      if ! "$BIN/smp-plan" "$f" -b "$BATCH" "${args[@]}" -o "$OUT/$tag.plan.json" > "$OUT/$tag.plan.txt" 2>&1; then
        echo "$tag: $(tail -n 1 "$OUT/$tag.plan.txt")"
        continue
      fi
      read -r what pred < <(describe "$OUT/$tag.plan.json")
      for r in $(seq 1 "$REPEATS"); do
        "$BIN/smp-run" "$OUT/$tag.plan.json" --steps "$steps" --metrics "$OUT/$tag.$r.metrics.jsonl" > "$OUT/$tag.$r.run.txt" 2>&1
        meas=$(step_time "$OUT/$tag.$r.metrics.jsonl")
        echo "$model $n $kind $what|$pred $meas" | tee -a "$ROWS"
      done
    done
  done
done
"$PY" - "$ROWS" <<'PYEOF'
import statistics, sys
rows = []
for line in open(sys.argv[1]):
    head, nums = line.rstrip('\n').split('|')
    pred, meas = map(float, nums.split())
    rows.append((head, pred, meas, 100 * (meas - pred) / pred))
print()
print("| model, workers, plan | predicted ms | measured ms | error |")
print("| --- | ---: | ---: | ---: |")
for head, p, m, e in rows:
    print(f"| {head} | {p*1e3:.1f} | {m*1e3:.1f} | {e:+.1f}% |")
errs = [abs(r[3]) for r in rows]
if errs:
    print(f"\n{len(rows)} rows: median |error| {statistics.median(errs):.1f}%, largest {max(errs):.1f}%, "
          f"within 25%: {sum(e <= 25 for e in errs)} of {len(errs)} (target: all; median within 10%)")
PYEOF
