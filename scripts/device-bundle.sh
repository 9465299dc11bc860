#!/usr/bin/env bash
# Packs what scripts/device-check.sh runs on a GPU machine that has CUDA 13, CMake and PyTorch
# (whose wheels hold cuDNN, cuBLAS and NCCL) but no Debian packages and no network: the GPU test
# binaries and gpu_bench built here, the small shared libraries they need (found with ldd; the
# CUDA libraries and the C/C++ runtime are found on that machine, never carried), the sample
# models, the ONNX node cases and the benchmark's models. One compressed file, under 64 MiB.
#
#   scripts/device-bundle.sh [OUT_FILE]      (default: device-bundle/smp-device-bundle.tar.xz)
#
# Then, on the GPU machine, from the repository root: scripts/device-check.sh (it finds the
# bundle at the default path, or takes --bundle FILE).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${SMP_BUILD_DIR:-$root/build}
out=${1:-$root/device-bundle/smp-device-bundle.tar.xz}
py=/usr/bin/python3
[[ -x $py ]] || py=python3

"$root/scripts/build.sh"
for t in test_cuda_kernels test_cuda_train gpu_bench; do
  cmake --build "$build" --target "$t" -j "${SMP_JOBS:-$(nproc)}" >/dev/null
done
[[ $(ldd "$build/bin/gpu_bench") == *libcudart* ]] ||
  { echo "error: $build: built without the CUDA backend (configure with -DSMP_CUDA=on)" >&2; exit 2; }

stage=$(mktemp -d /tmp/smp-bundle.XXXXXX)
trap 'rm -rf "$stage"' EXIT
b=$stage/smp-device
mkdir -p "$b/bin" "$b/lib" "$b/testdata" "$b/models" "$b/sample_models" "$b/scripts" "$b/bench"
cp "$build/tests/runtime/test_cuda_kernels" "$build/tests/runtime/test_cuda_train" "$build/bin/gpu_bench" "$b/bin/"

# The shared libraries of the binaries, less what the GPU machine has: the C and C++ runtime
# (its own, newer) and CUDA's libraries (from /usr/local/cuda or PyTorch's nvidia-* wheels).
skip='^(linux-vdso|ld-linux|libc\.|libm\.|libdl\.|librt\.|libpthread\.|libstdc\+\+|libgcc_s|libcuda\.|libcudart|libcublas|libcudnn|libnccl|libnvrtc|libnvJitLink)'
for f in "$b"/bin/*; do
  ldd "$f" | awk '/=> \//{print $1, $3}'
done | sort -u | while read -r name path; do
  if [[ ! $name =~ $skip ]]; then cp -L "$path" "$b/lib/$name"; fi
done

# Test data: the sample models, the ONNX node cases (made here by Debian's python3-onnx, the same
# cases the CPU conformance test runs), the benchmark's models (graph only).
cp "$root"/sample_models/*.onnx "$b/sample_models/"
cases=$build/testdata/onnx_node_cases
if [[ ! -f $cases/manifest.json ]]; then
  ops=$("$py" -c "print(' '.join(l.split('\"')[1] for l in open('$root/lib/graph/op_registry.cpp') if l.strip().startswith('{Op::')))")
  mkdir -p "$build/testdata"
  # shellcheck disable=SC2086
  "$py" "$root/scripts/onnx_node_cases.py" "$cases" $ops >"$build/testdata/onnx_node_cases.log" 2>&1
fi
cp -r "$cases" "$b/testdata/onnx_node_cases"
"$py" "$root/bench/gpu_models.py" export "$b/models" 2>/dev/null | grep -v "^$" || true
for m in gpt2s resnet50; do [[ -f $b/models/$m.onnx ]] || { echo "error: exporting $m failed" >&2; exit 1; }; done
cp "$root/bench/gpu_models.py" "$b/bench/"
cp "$root/scripts/sample_models.py" "$b/scripts/"
git -C "$root" rev-parse HEAD >"$b/COMMIT" 2>/dev/null || echo unknown >"$b/COMMIT"

mkdir -p "$(dirname "$out")"
tar -C "$stage" -cJf "$out" smp-device
size=$(stat -c %s "$out")
echo "$out: $((size / 1024)) KiB ($(ls "$b/lib" | wc -l) libraries, commit $(cut -c1-12 "$b/COMMIT"))"
if ((size > 64 * 1024 * 1024)); then echo "error: the bundle is over 64 MiB" >&2; exit 1; fi
