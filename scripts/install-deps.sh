#!/usr/bin/env bash
# Installs smp's build and test dependencies from Debian's packages.
# Idempotent and quiet when everything is already present.
set -euo pipefail

packages=(
  cmake g++ make pkg-config ccache
  libcli11-dev nlohmann-json3-dev libfmt-dev doctest-dev
  libprotobuf-dev protobuf-compiler libonnx-dev
  libopenblas-dev libopenmpi-dev openmpi-bin libjemalloc-dev
  python3 python3-onnx python3-torch python3-torchvision python3-numpy python3-jsonschema
  slurmctld slurmd slurm-client   # the multi-host tests' Slurm cluster (scripts/test-hosts.sh)
)
# Optional: clang and its runtime for the libFuzzer target (scripts/fuzz-loader.sh).
if [[ "${SMP_WITH_FUZZ:-0}" == 1 ]]; then packages+=(clang libclang-rt-14-dev); fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "smp: installing ${#missing[@]} Debian package(s): ${missing[*]}"
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# Packages with daemons (slurmd, slurmctld, munge) must not start them: scripts/test-hosts.sh
# starts its own. Without a policy that says so, their postinst starts them where an init runs.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\n# smp install-deps.sh: no daemon starts while packages install\nexit 101\n' | $SUDO tee $policy >/dev/null
  $SUDO chmod +x $policy
  added_policy=1
fi
trap '[[ $added_policy == 1 ]] && $SUDO rm -f $policy' EXIT
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
