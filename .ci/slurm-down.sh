#!/usr/bin/env bash
# Stop the daemons .ci/slurm-up.sh STATE_DIR started (by the pids it recorded), then remove STATE_DIR.
set -uo pipefail
STATE=${1:?usage: .ci/slurm-down.sh STATE_DIR}
[ -f "$STATE/pids" ] || { echo "slurm-down: no $STATE/pids" >&2; exit 1; }
# Cancel what is still queued or running, so slurmd ends the job steps it started.
if [ -f "$STATE/slurm.conf" ] && command -v scancel >/dev/null; then
    SLURM_CONF="$STATE/slurm.conf" scancel --user="$(id -un)" 2>/dev/null
    for _ in $(seq 50); do
        [ -z "$(SLURM_CONF="$STATE/slurm.conf" squeue -h 2>/dev/null)" ] && break
        sleep 0.2
    done
fi
# slurmd first, munged last: the others authenticate through it while they shut down.
for daemon in slurmd slurmctld munged; do
    pid=$(awk -v d="$daemon" '$1 == d {print $2}' "$STATE/pids")
    [ -n "$pid" ] || continue
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
done
rm -rf "$STATE"
