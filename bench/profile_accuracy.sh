#!/usr/bin/env bash
# Accuracy of the planner's predicted step time once smp-profile has measured the model
# (issue 7 item 5), and the GPT 1-stage vs 2-stage speedup (issue 6 item 9).
#
#   bench/profile_accuracy.sh [BIN_DIR] [OUT_DIR]
#
# For the GPT and CNN samples x {2, 4 stages} x {gpipe, 1f1b}: smp-profile --machine for that
# many workers (the cluster file: link, memory), then REPEATS rounds of: smp-profile at the
# planned microbatch size for that many workers, smp-plan with it for each schedule (fixed
# stages, devices = stages, 8 microbatches, batch 32) and smp-run of each plan (STEPS steps,
# --metrics). Profile and runs follow each other within seconds, since this machine's speed
# drifts over minutes. A run's step time is the median of its steps after the first; the table
# shows per configuration the medians over the rounds of the predicted and measured times, and
# the median and range of the rounds' errors. Then the GPT with 1 stage (1 thread) against
# 2 stages (1 thread per worker), likewise.
# Timings are wall-clock on a shared machine: run it on a quiet one for figures worth quoting.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/bin}
OUT=${2:-$(mktemp -d /tmp/smp-profile-bench-XXXXXX)}
STEPS=${STEPS:-12}          # per GPT run (~0.2 s a step here)
CNN_STEPS=${CNN_STEPS:-60}   # per CNN run (~0.02 s a step)
REPEATS=${REPEATS:-5}
BATCH=${BATCH:-32}
MB=${MB:-8}
MODELS=${MODELS:-"gpt cnn"}
STAGES=${STAGES:-"2 4"}
SCHEDULES=${SCHEDULES:-"gpipe 1f1b"}
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
mkdir -p "$OUT"
echo "bench: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $REPEATS rounds of profile + runs, $STEPS (GPT) / $CNN_STEPS (CNN) steps per run, output in $OUT"

predicted() { "$PY" -c "import json,sys; print(json.load(open(sys.argv[1]))['prediction']['step_s'])" "$1"; }
step_time() {  # median step time after the first step of a metrics file
  "$PY" -c "
import json, statistics, sys
t = [json.loads(l)['step_time_s'] for l in open(sys.argv[1]) if l.strip()]
print(statistics.median(t[1:] or t))" "$1"
}
# summarize LABEL FILE: FILE has lines "predicted measured"; prints the table row
summarize() {
  "$PY" - "$1" "$2" <<'EOF'
import statistics, sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[2]) if l.strip()]
p = statistics.median(r[0] for r in rows); m = statistics.median(r[1] for r in rows)
errs = sorted(100 * (r[1] - r[0]) / r[0] for r in rows)
print(f'| {sys.argv[1]:<22} | {p*1e3:9.1f} | {m*1e3:9.1f} | {statistics.median(errs):+7.1f}% | {errs[0]:+.1f} .. {errs[-1]:+.1f}% |')
EOF
}

TABLE="$OUT/table.md"
{
  echo "| model, stages, schedule | predicted ms | measured ms | error (median) | errors of the $REPEATS rounds |"
  echo "| --- | ---: | ---: | ---: | ---: |"
} > "$TABLE"
for model in $MODELS; do
  for P in $STAGES; do
    cl="$OUT/cluster-$P.json"
    [ -f "$cl" ] || "$BIN/smp-profile" --machine --devices "$P" -o "$cl" -q
    for S in $SCHEDULES; do : > "$OUT/$model-$P-$S.pairs"; done
    for r in $(seq 1 "$REPEATS"); do
      prof="$OUT/$model-$P.$r.profile.json"
      "$BIN/smp-profile" "$ROOT/sample_models/$model.onnx" -b "$BATCH" -m "$MB" --devices "$P" -o "$prof" \
        > "$OUT/$model-$P.$r.profile.log" 2>&1
      # Every other round runs the schedules in reverse order, so that no schedule always runs
      # first after the profile (or last, when the machine has slowed down the longest).
      order=$SCHEDULES
      [ $((r % 2)) -eq 0 ] && order=$(echo "$SCHEDULES" | tr ' ' '\n' | tac | tr '\n' ' ')
      for S in $order; do
        tag="$model-$P-$S.$r"
        "$BIN/smp-plan" "$ROOT/sample_models/$model.onnx" -b "$BATCH" --cluster "$cl" --stages "$P" --data-parallel 1 \
          --microbatches "$MB" --schedule "$S" --profile "$prof" -o "$OUT/$tag.plan.json" > "$OUT/$tag.plan.txt"
        steps=$STEPS
        [ "$model" = cnn ] && steps=$CNN_STEPS
        "$BIN/smp-run" "$OUT/$tag.plan.json" --steps "$steps" --metrics "$OUT/$tag.metrics.jsonl" > "$OUT/$tag.run.txt" 2>&1
        echo "$(predicted "$OUT/$tag.plan.json") $(step_time "$OUT/$tag.metrics.jsonl")" >> "$OUT/$model-$P-$S.pairs"
      done
    done
    grep -hE "CPU time of a step|effective parallelism|each runs|every time x" "$OUT/$model-$P".*.profile.log | sed "s/^/  $model $P workers: /" || true
    for S in $SCHEDULES; do summarize "$model $P $S" "$OUT/$model-$P-$S.pairs" | tee -a "$TABLE"; done
  done
done

# Issue 6 item 9: GPT, 1 stage with 1 thread against 2 stages with 1 thread per worker.
echo
echo "GPT 1 stage (1 thread) vs 2 stages (1 thread per worker), batch $BATCH, $MB microbatches, 1f1b"
M=gpt
: > "$OUT/s1.pairs"; : > "$OUT/s2.pairs"
for r in $(seq 1 "$REPEATS"); do
  "$BIN/smp-profile" "$ROOT/sample_models/$M.onnx" -b "$BATCH" -m "$MB" --devices 1 --threads 1 -o "$OUT/s1.$r.profile.json" -q
  "$BIN/smp-plan" "$ROOT/sample_models/$M.onnx" -b "$BATCH" --devices 1 --stages 1 --microbatches "$MB" --schedule 1f1b \
    --profile "$OUT/s1.$r.profile.json" -o "$OUT/s1.$r.plan.json" > "$OUT/s1.$r.plan.txt"
  "$BIN/smp-run" "$OUT/s1.$r.plan.json" --steps "$STEPS" --threads-per-worker 1 --metrics "$OUT/s1.$r.metrics.jsonl" > "$OUT/s1.$r.run.txt" 2>&1
  echo "$(predicted "$OUT/s1.$r.plan.json") $(step_time "$OUT/s1.$r.metrics.jsonl")" >> "$OUT/s1.pairs"
  "$BIN/smp-profile" "$ROOT/sample_models/$M.onnx" -b "$BATCH" -m "$MB" --devices 2 -o "$OUT/s2.$r.profile.json" -q
  "$BIN/smp-plan" "$ROOT/sample_models/$M.onnx" -b "$BATCH" --devices 2 --stages 2 --data-parallel 1 --microbatches "$MB" \
    --schedule 1f1b --profile "$OUT/s2.$r.profile.json" -o "$OUT/s2.$r.plan.json" > "$OUT/s2.$r.plan.txt"
  "$BIN/smp-run" "$OUT/s2.$r.plan.json" --steps "$STEPS" --metrics "$OUT/s2.$r.metrics.jsonl" > "$OUT/s2.$r.run.txt" 2>&1
  echo "$(predicted "$OUT/s2.$r.plan.json") $(step_time "$OUT/s2.$r.metrics.jsonl")" >> "$OUT/s2.pairs"
done
summarize "gpt 1 stage, 1 thread" "$OUT/s1.pairs"
summarize "gpt 2 stages, 1+1" "$OUT/s2.pairs"
"$PY" - "$OUT/s1.pairs" "$OUT/s2.pairs" <<'EOF'
import statistics, sys
one, two = ([tuple(map(float, l.split())) for l in open(f) if l.strip()] for f in sys.argv[1:3])
meas = statistics.median(a[1] / b[1] for a, b in zip(one, two))
pred = statistics.median(a[0] / b[0] for a, b in zip(one, two))
print(f'measured speedup {meas:.2f}x (median of the rounds; target >= 1.6), predicted {pred:.2f}x')
EOF
echo "table: $TABLE"
