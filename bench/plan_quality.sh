#!/usr/bin/env bash
# Plan quality measured, not only predicted: does the DP's split train faster than the splits
# users would otherwise use (equal layers per stage, Megatron; equal parameters, DeepSpeed)?
#
#   bench/plan_quality.sh [BIN_DIR] [OUT_DIR]
#   env: MODELS="gpt mlp cnn" STAGES="2 4" BATCH=32 REPEATS=3 STEPS=12 (GPT) FAST_STEPS=60 (MLP, CNN)
#        PROFILE=1 (0: plan from the roofline alone)
#
# For each sample model and pipeline depth P (P workers sharing this machine, one stage each):
# smp-profile at the microbatch size the plans use (2 microbatches per stage), then smp-plan
# three times with that profile, `--split dp`, `--split equal-layers` and `--split equal-params`
# (the same degrees, microbatch count and schedule: the search's choice), then REPEATS rounds that
# train each of the three plans with smp-run in turn (the order rotating every round, so that no
# split always runs first). A run's step time is the median of its steps after the first; a
# split's is the median over the rounds. The table prints per split the predicted and measured
# step and, for the baselines, the DP plan's speedup over them measured and predicted.
# Wall-clock timings on a shared machine: quote figures from a quiet one.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/bin}
OUT=${2:-$(mktemp -d /tmp/smp-plan-quality-XXXXXX)}
MODELS=${MODELS:-"gpt mlp cnn"}
STAGES=${STAGES:-"2 4"}
BATCH=${BATCH:-32}
REPEATS=${REPEATS:-3}
STEPS=${STEPS:-12}
FAST_STEPS=${FAST_STEPS:-60}
PROFILE=${PROFILE:-1}
SPLITS="dp equal-layers equal-params"
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$OUT"
echo "plan quality: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $REPEATS rounds, output in $OUT"

predicted() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['prediction']['step_s'])" "$1"; }
cuts() {
  "$PY" -c "
import json, sys
p = json.load(open(sys.argv[1]))
print(','.join(str(s['nodes'][0]) for s in p['stages'][1:]) or 'one stage')" "$1"
}
step_time() {  # median step time after the first step of a metrics file
  "$PY" -c "
import json, statistics, sys
t = [json.loads(l)['step_time_s'] for l in open(sys.argv[1]) if l.strip()]
print(statistics.median(t[1:] or t))" "$1"
}

TABLE="$OUT/table.md"
{
  echo "| model | stages | split | predicted ms | measured ms (median of $REPEATS) | DP speedup measured | DP speedup predicted |"
  echo "| --- | ---: | --- | ---: | ---: | ---: | ---: |"
} > "$TABLE"
for model in $MODELS; do
  steps=$FAST_STEPS
  [ "$model" = gpt ] && steps=$STEPS
  for P in $STAGES; do
    tag="$model-$P"
    mb=$((2 * P))
    prof_args=()
    if [ "$PROFILE" = 1 ]; then
      "$BIN/smp-profile" "$ROOT/sample_models/$model.onnx" -b "$BATCH" -m "$mb" --devices "$P" -q -o "$OUT/$tag.profile.json"
      prof_args=(--profile "$OUT/$tag.profile.json")
    fi
    for split in $SPLITS; do
      if ! "$BIN/smp-plan" "$ROOT/sample_models/$model.onnx" -b "$BATCH" --devices "$P" --stages "$P" --data-parallel 1 \
            --microbatches "$mb" "${prof_args[@]}" --split "$split" -o "$OUT/$tag.$split.plan.json" \
            > "$OUT/$tag.$split.plan.txt" 2>&1; then
        echo "  $tag $split: $(tail -n 1 "$OUT/$tag.$split.plan.txt")"
        rm -f "$OUT/$tag.$split.plan.json"
      fi
      : > "$OUT/$tag.$split.times"
    done
    for r in $(seq 1 "$REPEATS"); do
      order=$(echo "$SPLITS" | tr ' ' '\n' | awk -v r="$r" '{a[NR]=$0} END {for (i = 0; i < NR; i++) print a[(i + r - 1) % NR + 1]}')
      for split in $order; do
        plan="$OUT/$tag.$split.plan.json"
        [ -f "$plan" ] || continue
        "$BIN/smp-run" "$plan" --steps "$steps" --metrics "$OUT/$tag.$split.$r.metrics.jsonl" > "$OUT/$tag.$split.$r.run.txt" 2>&1
        step_time "$OUT/$tag.$split.$r.metrics.jsonl" >> "$OUT/$tag.$split.times"
      done
    done
    "$PY" - "$OUT" "$tag" "$model" "$P" $SPLITS <<'EOF' | tee -a "$TABLE"
import json, os, statistics, sys
out, tag, model, P, splits = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
rows = {}
for s in splits:
    plan = os.path.join(out, f'{tag}.{s}.plan.json')
    if not os.path.exists(plan):
        continue
    pred = json.load(open(plan))['prediction']['step_s']
    times = [float(l) for l in open(os.path.join(out, f'{tag}.{s}.times')) if l.strip()]
    rows[s] = (pred, statistics.median(times) if times else float('nan'))
dp = rows.get('dp')
for s in splits:
    if s not in rows:
        print(f'| {model} | {P} | {s} | n/a | n/a | | |')
        continue
    pred, meas = rows[s]
    su = '' if s == 'dp' or not dp else f'{meas / dp[1]:.2f}x'
    sp = '' if s == 'dp' or not dp else f'{pred / dp[0]:.2f}x'
    print(f'| {model} | {P} | {s} | {pred * 1e3:.1f} | {meas * 1e3:.1f} | {su} | {sp} |')
EOF
    for split in $SPLITS; do
      [ -f "$OUT/$tag.$split.plan.json" ] && echo "  $tag $split: cuts before $(cuts "$OUT/$tag.$split.plan.json")"
    done
  done
done
echo "table: $TABLE"
