#!/usr/bin/env bash
# The first of the README's two commands: installs what is needed (Debian packages), builds,
# and runs the main job on a bundled sample model.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
bin="${SMP_BUILD_DIR:-$root/build}/bin"
model="$root/sample_models/gpt.onnx"

echo
echo "== smp-plan $model --batch-size 32 --summary"
"$bin/smp-plan" "$model" --batch-size 32 --summary
