#!/usr/bin/env bash
# Accuracy of the planner's predicted step time once smp-profile has measured the model
# (issue 7 item 5), and the GPT 1-stage vs 2-stage speedup (issue 6 item 9).
#
#   bench/profile_accuracy.sh [BIN_DIR] [OUT_DIR]
#
# For the GPT and CNN samples x {2, 4 stages} x {gpipe, 1f1b}: smp-profile --machine for that
# many workers (the cluster file), smp-profile at the planned microbatch size for that many
# workers, smp-plan with both (fixed stages, devices =
# stages, 8 microbatches, batch 32), smp-run the plan (STEPS steps, --metrics) and print the
# predicted step time, the measured one (mean over the steps after the first) and the error.
# Then the GPT with 1 stage (1 thread) against 2 stages (1 thread per worker).
# Timings are wall-clock on a shared machine: run it on a quiet one for figures worth quoting.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$ROOT/build/bin}
OUT=${2:-$(mktemp -d /tmp/smp-profile-bench-XXXXXX)}
STEPS=${STEPS:-10}
BATCH=${BATCH:-32}
MB=${MB:-8}
BUDGET_MS=${BUDGET_MS:-50}
MODELS=${MODELS:-"gpt cnn"}
STAGES=${STAGES:-"2 4"}
SCHEDULES=${SCHEDULES:-"gpipe 1f1b"}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
# PROGRESS_SHIM=1: smp-run's workers get bench/mpi_progress_shim.c preloaded (a thread driving
# MPI's progress, so that a sent activation moves while its sender computes); a diagnostic.
RUN_ENV=()
if [ "${PROGRESS_SHIM:-0}" = 1 ]; then
  mpicc -shared -fPIC -O2 -o "$OUT/mpi_progress_shim.so" "$ROOT/bench/mpi_progress_shim.c" -lpthread
  RUN_ENV=(env "LD_PRELOAD=$OUT/mpi_progress_shim.so")
  echo "smp-run with the MPI progress thread (bench/mpi_progress_shim.c)"
fi
echo "bench: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), output in $OUT"

mean_step() {  # mean step_time_s over the steps after the first
  python3 -c "
import json,sys
t=[json.loads(l)['step_time_s'] for l in open(sys.argv[1]) if l.strip()]
t=t[1:] or t
print(sum(t)/len(t))" "$1"
}
predicted() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['prediction']['step_s'])" "$1"; }
row() {  # label predicted measured
  python3 -c "
import sys
p,m=float(sys.argv[2]),float(sys.argv[3])
print(f'| {sys.argv[1]:<22} | {p*1e3:9.1f} | {m*1e3:9.1f} | {100*(m-p)/p:+7.1f}% |')" "$@"
}

TABLE="$OUT/table.md"
{
  echo "| model, stages, schedule | predicted ms | measured ms | error |"
  echo "| --- | ---: | ---: | ---: |"
} > "$TABLE"
for model in $MODELS; do
  for P in $STAGES; do
    prof="$OUT/$model-$P.profile.json"
    cl="$OUT/cluster-$P.json"
    [ -f "$cl" ] || "$BIN/smp-profile" --machine --devices "$P" -o "$cl" -q
    "$BIN/smp-profile" "$ROOT/sample_models/$model.onnx" -b "$BATCH" -m "$MB" --devices "$P" --budget-ms "$BUDGET_MS" \
      -o "$prof" > "$OUT/$model-$P.profile.log" 2>&1
    grep -E "whole /|concurrent copies" "$OUT/$model-$P.profile.log" | sed "s/^/  $model $P workers: /" || true
    for S in $SCHEDULES; do
      tag="$model-$P-$S"
      "$BIN/smp-plan" "$ROOT/sample_models/$model.onnx" -b "$BATCH" --cluster "$cl" --stages "$P" --data-parallel 1 \
        --microbatches "$MB" --schedule "$S" --profile "$prof" -o "$OUT/$tag.plan.json" > "$OUT/$tag.plan.txt"
      "${RUN_ENV[@]}" "$BIN/smp-run" "$OUT/$tag.plan.json" --steps "$STEPS" --metrics "$OUT/$tag.metrics.jsonl" > "$OUT/$tag.run.txt" 2>&1
      r=$(row "$model $P $S" "$(predicted "$OUT/$tag.plan.json")" "$(mean_step "$OUT/$tag.metrics.jsonl")")
      echo "$r" | tee -a "$TABLE"
    done
  done
done

# Issue 6 item 9: GPT, 1 stage with 1 thread against 2 stages with 1 thread per worker.
echo
echo "GPT 1 stage (1 thread) vs 2 stages (1 thread per worker), batch $BATCH, $MB microbatches, 1f1b"
M=gpt
"$BIN/smp-profile" "$ROOT/sample_models/$M.onnx" -b "$BATCH" -m "$MB" --devices 1 --threads 1 --budget-ms "$BUDGET_MS" \
  -o "$OUT/s1.profile.json" -q
"$BIN/smp-plan" "$ROOT/sample_models/$M.onnx" -b "$BATCH" --devices 1 --stages 1 --microbatches "$MB" --schedule 1f1b \
  --profile "$OUT/s1.profile.json" -o "$OUT/s1.plan.json" > "$OUT/s1.plan.txt"
"${RUN_ENV[@]}" "$BIN/smp-run" "$OUT/s1.plan.json" --steps "$STEPS" --threads-per-worker 1 \
  --metrics "$OUT/s1.metrics.jsonl" > "$OUT/s1.run.txt" 2>&1
if [ -f "$OUT/gpt-2-1f1b.plan.json" ] && [ "$BATCH" = 32 ]; then
  s2plan="$OUT/gpt-2-1f1b.plan.json"; s2m="$OUT/gpt-2-1f1b.metrics.jsonl"
else
  "$BIN/smp-profile" "$ROOT/sample_models/$M.onnx" -b "$BATCH" -m "$MB" --devices 2 -o "$OUT/s2.profile.json" -q
  "$BIN/smp-plan" "$ROOT/sample_models/$M.onnx" -b "$BATCH" --devices 2 --stages 2 --data-parallel 1 --microbatches "$MB" \
    --schedule 1f1b --profile "$OUT/s2.profile.json" -o "$OUT/s2.plan.json" > /dev/null
  "${RUN_ENV[@]}" "$BIN/smp-run" "$OUT/s2.plan.json" --steps "$STEPS" --metrics "$OUT/s2.metrics.jsonl" > "$OUT/s2.run.txt" 2>&1
  s2plan="$OUT/s2.plan.json"; s2m="$OUT/s2.metrics.jsonl"
fi
m1=$(mean_step "$OUT/s1.metrics.jsonl"); m2=$(mean_step "$s2m")
p1=$(predicted "$OUT/s1.plan.json"); p2=$(predicted "$s2plan")
row "gpt 1 stage, 1 thread" "$p1" "$m1"
row "gpt 2 stages, 1+1" "$p2" "$m2"
python3 -c "import sys; print(f'measured speedup {float(sys.argv[1])/float(sys.argv[2]):.2f}x (target >= 1.6), predicted {float(sys.argv[3])/float(sys.argv[4]):.2f}x')" "$m1" "$m2" "$p1" "$p2"
echo "table: $TABLE"
