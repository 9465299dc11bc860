#!/usr/bin/env bash
# Configures and builds smp into build/ (incremental; ccache when present).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SMP_BUILD_DIR:-$root/build}
type=${SMP_BUILD_TYPE:-Release}
jobs=${SMP_JOBS:-$(nproc)}
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE="$type" ${SMP_CMAKE_ARGS:-} | grep -E '^-- smp:|Error|error' || true
fi
log="$build/build.log"
if ! cmake --build "$build" -j "$jobs" >"$log" 2>&1; then
  grep -vE '^\[ *[0-9]+%\]|^gmake|^make' "$log" | tail -n 80
  echo "smp: build failed (full log: $log)" >&2
  exit 1
fi
grep -E 'warning:' "$log" | sort -u | head -n 20 || true
