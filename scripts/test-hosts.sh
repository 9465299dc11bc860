#!/usr/bin/env bash
# Test hosts on one machine: 2-3 "hosts", each a pair of Linux namespaces (its own hostname: UTS;
# its own /tmp and /dev/shm: mount), with a Slurm cluster over them (slurmctld on the first host,
# one slurmd per host, auth/none, MpiDefault=pmix) and an rsh agent that lets mpirun start its
# daemons inside them (--hostfile runs). All traffic stays on 127.0.0.1: every Slurm daemon has
# its own port there, and Open MPI is restricted to the loopback interface.
#
#   scripts/test-hosts.sh up   [--dir DIR] [--hosts N] [--cpus C] [--share PATH]... [--lifetime S]
#   scripts/test-hosts.sh down [--dir DIR]
#   scripts/test-hosts.sh exec [--dir DIR] HOST COMMAND...   run COMMAND on HOST
#   scripts/test-hosts.sh status [--dir DIR]
#
# `up` writes DIR/env (source it: SLURM_CONF, the OMPI_MCA_* settings, SMP_TEST_HOSTS,
# SMP_TEST_HOSTFILE) and DIR/hostfile. DIR (default /var/tmp/smp-test-hosts) must lie outside
# /tmp, which each host has its own; files a job needs must too, or be named with --share (a
# path under /tmp that every host sees, e.g. a build directory). Every daemon is started in the
# foreground of its own process (no systemd) and recorded by PID; `down` stops them, then every
# process left inside the hosts (jobs, workers), by PID, and removes DIR. A failed `up` takes
# down what it started; a watchdog runs `down` after --lifetime seconds (default 3600) in case
# nobody else does. Needs root, util-linux (unshare, nsenter), slurmctld, slurmd, slurm-client.
# Exit status 77 when this machine cannot host them (not root, no namespaces, no Slurm).
set -euo pipefail

self=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
dir=/var/tmp/smp-test-hosts
nhosts=2
cpus=4
lifetime=3600
share=()

die() { echo "test-hosts: $*" >&2; exit 1; }
cant() { echo "test-hosts: cannot make test hosts here: $*" >&2; exit 77; }

cmd=${1:-}
[[ -n $cmd ]] || { sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
shift
while [[ $# -gt 0 ]]; do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --hosts) nhosts=$2; shift 2 ;;
    --cpus) cpus=$2; shift 2 ;;
    --share) share+=("$2"); shift 2 ;;
    --lifetime) lifetime=$2; shift 2 ;;
    --) shift; break ;;
    -*) die "unknown option $1" ;;
    *) break ;;
  esac
done
dir=$(realpath -m "$dir")
hosts_dir=$dir/hosts
host_names() { local i; for ((i = 1; i <= nhosts; ++i)); do echo "smphost$i"; done; }

# The processes whose UTS namespace is the one of host anchor $1 (the anchor included).
procs_in_host() {
  local ns p
  ns=$(readlink "/proc/$1/ns/uts" 2>/dev/null) || return 0
  for p in /proc/[0-9]*; do
    [[ $(readlink "$p/ns/uts" 2>/dev/null) == "$ns" ]] && echo "${p#/proc/}"
  done
  return 0
}

# Whether PID $1 runs (a zombie does not: its parent may be an init that never reaps).
alive_pid() {
  local st
  st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
  st=${st%% *}
  [[ -n $st && $st != Z && $st != X ]]
}

# Kills the PIDs given (TERM, then KILL after up to 3 s), skipping those already gone.
stop_pids() {
  local p alive i
  [[ $# -gt 0 ]] || return 0
  kill -TERM "$@" 2>/dev/null || true
  for ((i = 0; i < 30; ++i)); do
    alive=0
    for p in "$@"; do alive_pid "$p" && alive=1; done
    [[ $alive == 0 ]] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
}

down() {
  [[ -d $dir ]] || return 0
  [[ -f $dir/.test-hosts ]] || die "$dir was not made by test-hosts.sh up; not touching it"
  local f pids=()
  # The watchdog first (its own process group), so that it does not run `down` again.
  if [[ -f $dir/watchdog.pid ]]; then
    kill -KILL -- "-$(cat "$dir/watchdog.pid")" 2>/dev/null || true
  fi
  # The Slurm daemons by their recorded PIDs, and whatever else runs inside the hosts (job
  # steps, mpirun's daemons, workers), all at once; then the hosts' anchors.
  for f in "$dir"/slurm/*.pid; do [[ -f $f ]] && pids+=("$(cat "$f")"); done
  local anchors=() a left=()
  for f in "$hosts_dir"/*.pid; do [[ -f $f ]] && anchors+=("$(cat "$f")"); done
  for a in "${anchors[@]}"; do
    mapfile -t left < <(procs_in_host "$a" | grep -vx "$a" || true)
    pids+=("${left[@]}")
  done
  stop_pids "${pids[@]}"
  stop_pids "${anchors[@]}"
  rm -rf "$dir"
}

up() {
  [[ $(id -u) == 0 ]] || cant "needs root (namespaces, mounts)"
  for t in unshare nsenter mount slurmctld slurmd sinfo srun python3; do
    command -v "$t" >/dev/null || cant "$t not installed (scripts/install-deps.sh)"
  done
  [[ $dir != /tmp && $dir != /tmp/* ]] || die "--dir $dir: must lie outside /tmp (each host has its own /tmp)"
  [[ $nhosts =~ ^[0-9]+$ && $nhosts -ge 2 && $nhosts -le 9 ]] || die "--hosts $nhosts: 2 to 9"
  [[ $cpus =~ ^[0-9]+$ && $cpus -ge 1 ]] || die "--cpus $cpus: a positive number"
  [[ $lifetime =~ ^[0-9]+$ ]] || die "--lifetime $lifetime: seconds"
  if [[ -e $dir ]]; then "$self" down --dir "$dir"; fi
  mkdir -p "$hosts_dir" "$dir/slurm/state" "$dir/slurm/log"
  touch "$dir/.test-hosts"
  # A failure says which command failed, where (the ERR trap records it; -E: inside functions too).
  err_at=""
  set -E
  trap 'err_at="line $LINENO: $BASH_COMMAND"' ERR
  trap 'echo "test-hosts: up failed${err_at:+ at $err_at}; taking down what was started" >&2; down' EXIT

  # Paths under /tmp that every host must see: bound through the host's private /tmp.
  local keep=()
  for p in "${share[@]}"; do
    p=$(realpath -m "$p")
    [[ $p == /tmp/* ]] && keep+=("$p")
  done

  # The hosts: an anchor process per host holds its namespaces.
  local name i
  for name in $(host_names); do
    local script="hostname $name"
    for ((i = 0; i < ${#keep[@]}; ++i)); do
      mkdir -p "$hosts_dir/$name.keep/$i"
      script+=" && mount --bind '${keep[$i]}' '$hosts_dir/$name.keep/$i'"
    done
    script+=" && mount -t tmpfs -o mode=1777 tmpfs /tmp && mount -t tmpfs -o mode=1777 tmpfs /dev/shm"
    for ((i = 0; i < ${#keep[@]}; ++i)); do
      script+=" && mkdir -p '${keep[$i]}' && mount --move '$hosts_dir/$name.keep/$i' '${keep[$i]}'"
    done
    script+=" && exec sleep infinity"
    unshare --uts --mount --propagation private -- /bin/sh -c "$script" </dev/null >/dev/null 2>"$dir/slurm/log/$name.anchor.err" &
    echo $! >"$hosts_dir/$name.pid"
  done
  for name in $(host_names); do
    local ok=0
    for ((i = 0; i < 50; ++i)); do
      if [[ $(nsenter -t "$(cat "$hosts_dir/$name.pid")" -u hostname 2>/dev/null) == "$name" ]] &&
        nsenter -t "$(cat "$hosts_dir/$name.pid")" -m -- sh -c 'mount | grep -q " /dev/shm type tmpfs"'; then
        ok=1
        break
      fi
      sleep 0.1
    done
    [[ $ok == 1 ]] || cant "host $name did not come up: $(cat "$dir/slurm/log/$name.anchor.err" 2>/dev/null)"
  done

  # mpirun's rsh agent: runs the daemon's command line inside the named host.
  cat >"$dir/rsh" <<EOF
#!/bin/sh
# mpirun's rsh agent for the test hosts in $dir: rsh [options] HOST COMMAND...
while [ \$# -gt 0 ]; do case \$1 in -*) shift ;; *) break ;; esac; done
host=\$1; shift
pid=\$(cat "$hosts_dir/\$host.pid" 2>/dev/null) || { echo "rsh: no test host \$host" >&2; exit 255; }
exec nsenter -t "\$pid" -u -m -- /bin/sh -c "\$*"
EOF
  chmod +x "$dir/rsh"
  : >"$dir/hostfile"
  for name in $(host_names); do echo "$name slots=$cpus" >>"$dir/hostfile"; done

  # Slurm: free ports on 127.0.0.1 for slurmctld and each slurmd.
  local ports
  read -r -a ports < <(python3 -c "
import socket
socks = [socket.socket() for _ in range($nhosts + 1)]
for s in socks: s.bind(('127.0.0.1', 0))
print(*[s.getsockname()[1] for s in socks])")
  local conf=$dir/slurm/slurm.conf first
  first=$(host_names | head -n1)
  cat >"$conf" <<EOF
# Written by scripts/test-hosts.sh up: a Slurm cluster of test hosts on this machine.
ClusterName=smptest
SlurmctldHost=$first(127.0.0.1)
SlurmctldPort=${ports[0]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/pgid
TaskPlugin=task/none
MpiDefault=pmix
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
StateSaveLocation=$dir/slurm/state
SlurmdSpoolDir=$dir/slurm/spool-%n
SlurmctldPidFile=$dir/slurm/slurmctld.pidfile
SlurmdPidFile=$dir/slurm/slurmd-%n.pidfile
SlurmctldLogFile=$dir/slurm/log/slurmctld.log
SlurmdLogFile=$dir/slurm/log/slurmd-%n.log
# Each host's /tmp is its own: the nodes' TmpFS (job and PMIx files) are apart.
TmpFS=/tmp
MailProg=/bin/true
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
InactiveLimit=0
KillWait=10
MinJobAge=60
EOF
  i=1
  for name in $(host_names); do
    mkdir -p "$dir/slurm/spool-$name"
    echo "NodeName=$name NodeAddr=127.0.0.1 Port=${ports[$i]} CPUs=$cpus State=UNKNOWN" >>"$conf"
    i=$((i + 1))
  done
  echo "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4" >>"$conf"

  # The daemons, in the foreground of their own processes inside the hosts (nsenter execs them:
  # $! is the daemon's PID).
  nsenter -t "$(cat "$hosts_dir/$first.pid")" -u -m -- slurmctld -D -i -f "$conf" \
    </dev/null >"$dir/slurm/log/slurmctld.out" 2>&1 &
  echo $! >"$dir/slurm/slurmctld.pid"
  for name in $(host_names); do
    nsenter -t "$(cat "$hosts_dir/$name.pid")" -u -m -- slurmd -D -N "$name" -f "$conf" \
      </dev/null >"$dir/slurm/log/slurmd-$name.out" 2>&1 &
    echo $! >"$dir/slurm/slurmd-$name.pid"
  done
  local idle=0 dead=""
  for ((i = 0; i < 100; ++i)); do
    idle=$(SLURM_CONF=$conf sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l) || idle=0
    [[ $idle == "$nhosts" ]] && break
    for f in "$dir"/slurm/*.pid; do alive_pid "$(cat "$f")" || dead+=" $(basename "$f" .pid)"; done
    [[ -n $dead ]] && break
    sleep 0.2
  done
  if [[ $idle != "$nhosts" ]]; then
    tail -n 5 "$dir"/slurm/log/*.out >&2 || true
    [[ -n $dead ]] && die "Slurm daemon(s) ended:$dead (logs above)"
    die "the Slurm nodes did not come up idle within 20 s (logs above)"
  fi

  cat >"$dir/env" <<EOF
# Written by scripts/test-hosts.sh up; source it.
export SLURM_CONF=$conf
export OMPI_MCA_plm_rsh_agent=$dir/rsh
export OMPI_MCA_btl_tcp_if_include=lo
export OMPI_MCA_oob_tcp_if_include=lo
export SMP_TEST_HOSTS="$(host_names | tr '\n' ' ' | sed 's/ $//')"
export SMP_TEST_HOSTFILE=$dir/hostfile
export SMP_TEST_HOSTS_DIR=$dir
EOF
  # The watchdog: its own session and process group, killed by `down`.
  setsid bash -c "sleep $lifetime; rm -f '$dir/watchdog.pid'; exec '$self' down --dir '$dir'" </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/watchdog.pid"
  trap - EXIT ERR
  echo "test hosts up: $(host_names | tr '\n' ' ')(Slurm on 127.0.0.1:${ports[0]}); source $dir/env"
}

case $cmd in
  up) up ;;
  down) down ;;
  exec)
    [[ $# -ge 2 ]] || die "exec HOST COMMAND..."
    host=$1; shift
    [[ -f $hosts_dir/$host.pid ]] || die "no test host $host in $dir"
    exec nsenter -t "$(cat "$hosts_dir/$host.pid")" -u -m -- "$@"
    ;;
  status)
    [[ -f $dir/env ]] || { echo "no test hosts in $dir"; exit 1; }
    for f in "$hosts_dir"/*.pid; do
      name=$(basename "$f" .pid)
      echo "$name: anchor $(cat "$f"), $(procs_in_host "$(cat "$f")" | wc -l) process(es)"
    done
    SLURM_CONF=$dir/slurm/slurm.conf sinfo -N
    ;;
  *) die "unknown command '$cmd' (up, down, exec, status)" ;;
esac
