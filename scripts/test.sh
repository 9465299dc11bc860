#!/usr/bin/env bash
# The second of the README's two commands: installs what is needed (Debian packages), builds,
# and runs the whole test suite with CTest (its summary line ends the output).
# Extra arguments go to ctest, e.g. `scripts/test.sh -LE python` or `-R test_graph`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install-deps.sh"
"$root/scripts/build.sh"
build="${SMP_BUILD_DIR:-$root/build}"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
rc=0
ctest --test-dir "$build" --output-on-failure --timeout 900 -j "${SMP_TEST_JOBS:-2}" "$@" || rc=$?
# On failure, a digest at the very end (where a truncated log still shows it): each failed
# test's first error lines from CTest's log.
failed="$build/Testing/Temporary/LastTestsFailed.log"
if [ "$rc" -ne 0 ] && [ -s "$failed" ]; then
  echo "--- the failed tests' first errors (their whole output is above) ---"
  cut -d: -f2 "$failed" | while read -r name; do
    echo "[$name]"
    awk -v t="$name" '$2 == "Testing:" { on = ($3 == t) } on && /<end of output>/ { on = 0 } on' \
        "$build/Testing/Temporary/LastTest.log" |
      grep -E -A4 'ERROR|error:|THREW|Timeout|Exception|Segmentation|Abort' | head -n 24 || true
  done
fi
exit "$rc"
