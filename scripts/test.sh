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
exec ctest --test-dir "$build" --output-on-failure --timeout 900 -j "${SMP_TEST_JOBS:-2}" "$@"
