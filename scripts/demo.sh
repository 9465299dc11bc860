#!/usr/bin/env bash
# The first of the README's two commands: installs what is needed (Debian packages), builds,
# and runs the main job on the bundled GPT sample: measure what its layers cost on this machine,
# plan it for two CPU workers with those costs, then train the plan with one worker process per
# rank.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
build="${SMP_BUILD_DIR:-$root/build}"
bin="$build/bin"
model="$root/sample_models/gpt.onnx"
plan="$build/demo-plan.json"
profile="$build/demo-profile.json"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

echo
echo "== smp-profile $model --batch-size 16 --microbatches 4 --devices 2 -o $profile"
"$bin/smp-profile" "$model" --batch-size 16 --microbatches 4 --devices 2 -o "$profile"
echo
echo "== smp-plan $model --batch-size 16 --devices 2 --stages 2 --microbatches 4 --profile $profile -o $plan"
"$bin/smp-plan" "$model" --batch-size 16 --devices 2 --stages 2 --microbatches 4 --profile "$profile" -o "$plan"
echo
echo "== smp-run $plan --steps 30 --optimizer adamw --lr 0.003 (synthetic next-token task)"
"$bin/smp-run" "$plan" --steps 30 --optimizer adamw --lr 0.003 --timeline "$build/demo-timeline.svg"
echo
echo "measured timeline of the last step: $build/demo-timeline.svg"
