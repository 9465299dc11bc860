#!/usr/bin/env bash
# Fuzzes the ONNX loader with libFuzzer for SECONDS (default 60) from a seed corpus of small
# valid models. Builds with clang + ASan + UBSan into build-fuzz/. Exit status non-zero when
# the fuzzer finds a crash (the reproducer is left in build-fuzz/).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-60}
SMP_WITH_FUZZ=1 "$root/scripts/install-deps.sh"
build="$root/build-fuzz"
if [[ ! -f "$build/CMakeCache.txt" ]]; then
  CC=clang CXX=clang++ cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSMP_FUZZ=ON \
    -DSMP_BUILD_TESTS=OFF \
    -DCMAKE_CXX_FLAGS="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined" >/dev/null
fi
cmake --build "$build" --target fuzz_loader -j "$(nproc)" >/dev/null
corpus="$build/corpus"
mkdir -p "$corpus"
/usr/bin/python3 "$root/tests/fuzz/make_seeds.py" "$corpus"
cp "$root/sample_models/cnn.onnx" "$corpus/" 2>/dev/null || true
cd "$build"
# Leak checking is off: a model rejected half-way through protobuf parsing is not a leak.
ASAN_OPTIONS=detect_leaks=0 ./tests/fuzz/fuzz_loader -max_total_time="$seconds" -max_len=65536 \
  -rss_limit_mb=4096 -print_final_stats=1 "$corpus"
