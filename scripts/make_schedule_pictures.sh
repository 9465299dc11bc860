#!/usr/bin/env bash
# Draws the four schedules for p = 4 ranks, m = 8 microbatches (interleaved: 2 chunks per rank)
# with unit costs into docs/img/schedule-*.svg, the pictures docs/schedules.md shows, all on one
# time axis (33 units: gpipe's and 1f1b's step).
# Uses an existing smp-plan: $SMP_PLAN, else ${SMP_BUILD_DIR:-build}/bin/smp-plan (scripts/build.sh).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
plan=${SMP_PLAN:-${SMP_BUILD_DIR:-$root/build}/bin/smp-plan}
if [[ ! -x "$plan" ]]; then
  echo "error: $plan: no smp-plan (build it with scripts/build.sh, or set SMP_PLAN)" >&2
  exit 2
fi
out="$root/docs/img"
mkdir -p "$out"
for s in gpipe 1f1b interleaved zb-h1; do
  "$plan" --schedule "$s" --stages 4 --microbatches 8 --timeline "$out/schedule-$s.svg" --time-axis 33
done
