#!/usr/bin/env bash
# Stop the Ray nodes .ci/ray-up.sh STATE_DIR started, then remove STATE_DIR and Ray's temp dir.
#
# Each node ran in a session of its own (setsid); its raylet, object store, agents and workers all
# stay in that session (workers get process groups of their own, not sessions), so the node is
# stopped by signalling the processes of that session id: never anything this script did not start.
set -uo pipefail
STATE=${1:?usage: .ci/ray-down.sh STATE_DIR}
[ -f "$STATE/pids" ] || { echo "ray-down: no $STATE/pids" >&2; exit 1; }

session_pids() { ps -eo pid=,sid= | awk -v s="$1" '$2 == s {print $1}'; }

# The worker node first: the head's GCS then sees it leave instead of losing it.
for node in worker head; do
    sid=$(awk -v n="$node" '$1 == n {print $2}' "$STATE/pids")
    [ -n "$sid" ] || continue
    pids=$(session_pids "$sid")
    [ -n "$pids" ] || continue
    kill -TERM $pids 2>/dev/null
    for _ in $(seq 25); do [ -z "$(session_pids "$sid")" ] && break; sleep 0.2; done
    pids=$(session_pids "$sid")
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
done
[ -f "$STATE/temp_dir" ] && rm -rf "$(cat "$STATE/temp_dir")"
rm -rf "$STATE"
exit 0
