#!/usr/bin/env bash
# Start a single-node SLURM cluster on localhost for the test suite (tests/run/test_slurm.py calls it).
#
#   .ci/slurm-up.sh [STATE_DIR]      -> prints SLURM_CONF=STATE_DIR/slurm.conf on its last line
#   source STATE_DIR/env             (sets SLURM_CONF; this script exports nothing into your shell)
#   .ci/slurm-down.sh STATE_DIR      stops exactly the daemons this script started (by pid)
#
# Installs Debian's slurm-wlm and munge with apt-get when they are missing (root only). Exit status 2
# means SLURM cannot be started here (not root, no apt); the reason is on stderr.
set -euo pipefail

STATE=${1:-$(mktemp -d /tmp/packsft-slurm.XXXXXX)}
mkdir -p "$STATE"/{state,spool,log,run}
STATE=$(cd "$STATE" && pwd)

fail() { echo "slurm-up: $*" >&2; exit 2; }

if [ "$(id -u)" != 0 ]; then fail "needs root (munged and slurmd run as root)"; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "slurm-wlm/munge missing and no apt-get to install them"
    export DEBIAN_FRONTEND=noninteractive
    { apt-get update -q && apt-get install -y -q --no-install-recommends slurm-wlm munge; } >"$STATE/log/apt.log" 2>&1 \
        || fail "apt-get install slurm-wlm munge failed (see $STATE/log/apt.log)"
fi

: >"$STATE/pids"
# munge: a random key, then munged unless one already answers (never stop one we did not start).
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 400 /etc/munge/munge.key
    munged --force
    for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
    echo "munged $(cat /run/munge/munged.pid)" >>"$STATE/pids"
fi

HOST=$(hostname -s)
PORTS=$(python3 -c 'import socket
socks = [socket.socket() for _ in range(2)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
read -r CTLD_PORT SLURMD_PORT <<<"$PORTS"
MEM_MIB=$(awk '/MemTotal/ {print int($2 / 1024 * 0.9)}' /proc/meminfo)

cat >"$STATE/slurm.conf" <<CONF
ClusterName=packsft-ci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$MEM_MIB State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
cat >"$STATE/cgroup.conf" <<CONF
CgroupPlugin=cgroup/v1
IgnoreSystemd=yes
CONF
echo "export SLURM_CONF=$STATE/slurm.conf" >"$STATE/env"

export SLURM_CONF=$STATE/slurm.conf
slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for daemon in slurmctld slurmd; do
    for _ in $(seq 50); do [ -s "$STATE/run/$daemon.pid" ] && break; sleep 0.1; done
    [ -s "$STATE/run/$daemon.pid" ] || fail "$daemon did not start (see $STATE/log/$daemon.log)"
    echo "$daemon $(cat "$STATE/run/$daemon.pid")" >>"$STATE/pids"
done
for _ in $(seq 60); do
    if [ "$(sinfo -h -o %T 2>/dev/null | head -1)" = idle ]; then
        echo "SLURM_CONF=$SLURM_CONF"
        exit 0
    fi
    sleep 0.5
done
fail "node not idle after 30 s: $(sinfo 2>&1 | tail -1) (logs in $STATE/log)"
