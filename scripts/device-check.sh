#!/usr/bin/env bash
# The one prepared device check: run on a GPU machine (minutes of it at a time), it unpacks what
# scripts/device-bundle.sh made on a CPU machine, finds the CUDA libraries there (/usr/local/cuda,
# PyTorch's nvidia-* wheels), runs the GPU tests and the benchmark against PyTorch eager, and
# writes everything to one results file: each step's command, pass / fail / skip, time and
# output, even when an earlier step failed; a summary at the end. Under 6 minutes.
#
#   scripts/device-check.sh [--bundle FILE] [--out FILE] [--budget SECONDS] [--quick]
#
# Defaults: the bundle at device-bundle/smp-device-bundle.tar.xz; the results in $OUT/device-check.txt
# where the device tool sets OUT, else ./device-check.txt; a budget of 330 s (steps that would
# start past it are skipped and say so); --quick runs one benchmark configuration per model.
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=$root/device-bundle/smp-device-bundle.tar.xz
results=${OUT:-.}/device-check.txt
budget=330
quick=0
while [[ $# -gt 0 ]]; do
  case $1 in
    --bundle) bundle=$2; shift 2 ;;
    --out) results=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "error: $1: unknown option (see --help)" >&2; exit 2 ;;
  esac
done
mkdir -p "$(dirname "$results")"
: >"$results"
work=$(mktemp -d /tmp/smp-device-check.XXXXXX)
summary=()
start=$SECONDS

log() { printf '%s\n' "$*" >>"$results"; }
# step NAME TIMEOUT_S COMMAND...: runs it (stdout and stderr to the results file, the last 400
# lines), records PASS / FAIL (exit status) / SKIP (exit 77, or no time left).
step() {
  local name=$1 limit=$2
  shift 2
  local left=$((budget - (SECONDS - start)))
  log ""
  log "=== $name"
  log "\$ $*"
  if ((left < 10)); then
    log "SKIP: the budget of ${budget} s is spent"
    summary+=("SKIP  $name (no time left)")
    return 0
  fi
  ((limit > left)) && limit=$left
  local t0=$SECONDS out=$work/step.out rc
  timeout --kill-after=5 "$limit" "$@" >"$out" 2>&1
  rc=$?
  local n
  n=$(wc -l <"$out")
  ((n > 400)) && log "[... $((n - 400)) earlier lines left out]"
  tail -n 400 "$out" >>"$results"
  cp "$out" "$work/last.out"
  local verdict=PASS
  if ((rc == 77)); then verdict=SKIP; elif ((rc == 124 || rc == 137)); then verdict="FAIL (timed out after ${limit} s)"; elif ((rc != 0)); then verdict="FAIL (exit $rc)"; fi
  log "--- $verdict in $((SECONDS - t0)) s"
  summary+=("$(printf '%-5s %s (%d s)' "${verdict%% *}" "$name" $((SECONDS - t0)))")
  return $rc
}

log "smp device check, $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname)"
log "bundle: $bundle"

# --- the machine ---------------------------------------------------------------------------------
step "GPU and driver" 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap --format=csv
step "PyTorch" 60 python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version(), 'device', torch.cuda.get_device_name(0))"

# --- the bundle ----------------------------------------------------------------------------------
if ! step "unpack the bundle" 60 tar -C "$work" -xJf "$bundle"; then
  log ""
  log "no bundle: run scripts/device-bundle.sh on a CPU machine (it needs Debian's packages, which this machine lacks) and carry device-bundle/"
fi
b=$work/smp-device
[[ -f $b/COMMIT ]] && log "bundle built from commit $(cat "$b/COMMIT")"

# CUDA's libraries on this machine: the toolkit's, then PyTorch's wheels (cuDNN is only there).
cudadirs=$(python3 - <<'PY' 2>/dev/null
import glob, os, site
dirs = []
for d in ["/usr/local/cuda/lib64", "/usr/local/cuda/targets/x86_64-linux/lib", "/usr/local/nvidia/lib64"]:
    if os.path.isdir(d):
        dirs.append(d)
paths = site.getsitepackages() + [site.getusersitepackages()]
for sp in paths:
    for pat in ("nvidia/*/lib", "nvidia/cu13/lib", "nvidia/*/lib64"):
        for d in sorted(glob.glob(os.path.join(sp, pat))):
            if d not in dirs and any(f.startswith("lib") for f in os.listdir(d)):
                dirs.append(d)
print(":".join(dirs))
PY
)
export LD_LIBRARY_PATH="${cudadirs}:$b/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
log ""
log "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
check_libs() {
  local missing=0
  for f in "$b"/bin/*; do
    if ldd "$f" | grep -q "not found"; then
      echo "$(basename "$f"): $(ldd "$f" | grep "not found" | awk '{print $1}' | tr '\n' ' ')"
      missing=1
    fi
  done
  ldd "$b/bin/gpu_bench" | grep -E "libcudart|libcublas|libcudnn|libcuda\." || true
  return $missing
}
export -f check_libs
export b
step "shared libraries resolve" 30 bash -c check_libs

export SMP_SOURCE_DIR=$b SMP_TEST_DATA=$b/testdata
# --- the GPU tests ---------------------------------------------------------------------------------
step "test_cuda_train (samples CUDA vs CPU, bf16, determinism, memory arena, failures)" 150 "$b/bin/test_cuda_train"
step "test_cuda_kernels (gradient cases and ONNX node cases, CUDA vs CPU within 1e-5)" 150 "$b/bin/test_cuda_kernels"

# --- the benchmark ---------------------------------------------------------------------------------
smp_json=$work/bench_smp.jsonl
torch_json=$work/bench_torch.jsonl
: >"$smp_json"
: >"$torch_json"
configs=("gpt2s bf16 8" "resnet50 bf16 128" "gpt2s tf32 8" "resnet50 tf32 128")
((quick)) && configs=("gpt2s bf16 8" "resnet50 bf16 128")
for c in "${configs[@]}"; do
  read -r model dtype batch <<<"$c"
  if step "bench smp $model $dtype batch $batch" 90 "$b/bin/gpu_bench" --model "$b/models/$model.onnx" --batch "$batch" --dtype "$dtype" --steps 10 --warmup 3; then
    grep '^{' "$work/last.out" >>"$smp_json"
  fi
  if step "bench pytorch $model $dtype batch $batch" 90 env PYTHONPATH="$b/scripts" python3 "$b/bench/gpu_models.py" bench --model "$model" --batch "$batch" --dtype "$dtype" --steps 10 --warmup 3; then
    grep '^{' "$work/last.out" >>"$torch_json"
  fi
done
log ""
log "=== benchmark: smp against PyTorch eager (same model, batch, precision; median step; MFU against the dense peak)"
python3 "$b/bench/gpu_models.py" compare "$smp_json" "$torch_json" >>"$results" 2>&1 || log "(no benchmark figures)"
log ""
log "raw smp:"
cat "$smp_json" >>"$results"
log "raw pytorch:"
cat "$torch_json" >>"$results"

log ""
log "=== summary ($((SECONDS - start)) s)"
for s in "${summary[@]}"; do log "$s"; done
rm -rf "$work"
# the summary also ends the output (the device tool returns the output's tail)
sed -n '/^=== benchmark/,$p' "$results"
grep -q '^FAIL' <(printf '%s\n' "${summary[@]}") && exit 1
exit 0
