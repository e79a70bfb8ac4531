#!/usr/bin/env bash
# Start a two-node Ray cluster on 127.0.0.1 for the test suite (tests/run/test_ray.py calls it).
#
#   .ci/ray-up.sh STATE_DIR          -> prints RAY_ADDRESS=127.0.0.1:PORT on its last line
#   .ci/ray-down.sh STATE_DIR        stops exactly the nodes this script started, then removes STATE_DIR
#
# Each node is `ray start --block` in a session of its own (setsid); STATE_DIR/pids lists "node pgid",
# and killing that process group stops the node: its raylet, object store and workers (the test kills
# the worker node's group to lose a node mid-run). Ray comes from $PYTHON (default python3), which
# must have `packsft[ray]` installed. Exit status 2 means Ray cannot be started here; the reason is
# on stderr.
set -euo pipefail

STATE=${1:?usage: .ci/ray-up.sh STATE_DIR}
PYTHON=${PYTHON:-python3}
NODE_CPUS=${RAY_NODE_CPUS:-1}
OBJECT_STORE_BYTES=$((100 * 1000 * 1000))  # the units' arrays never travel through it
START_TIMEOUT_S=120
mkdir -p "$STATE"
STATE=$(cd "$STATE" && pwd)

fail() { echo "ray-up: $*" >&2; exit 2; }

"$PYTHON" -c 'import ray' 2>/dev/null || fail "ray is not installed for $PYTHON (pip install 'packsft[ray]')"
# Ray's unix sockets live under its temp dir: keep the path short (socket paths are limited to 107 bytes).
TEMP=$(mktemp -d /tmp/packsft-ray.XXXXXX)
echo "$TEMP" >"$STATE/temp_dir"
: >"$STATE/pids"
PORTS=$("$PYTHON" -c 'import socket
socks = [socket.socket() for _ in range(7)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')
read -r GCS_PORT AGENT_HEAD METRICS_HEAD RUNTIME_HEAD AGENT_WORKER METRICS_WORKER RUNTIME_WORKER <<<"$PORTS"
ADDRESS=127.0.0.1:$GCS_PORT
export RAY_USAGE_STATS_ENABLED=0

start_node() {  # start_node NAME AGENT_PORT METRICS_PORT RUNTIME_ENV_PORT [ray start flags...]
    local name=$1 agent=$2 metrics=$3 runtime=$4
    shift 4
    setsid "$PYTHON" -m ray.scripts.scripts start --block --node-ip-address 127.0.0.1 --num-cpus "$NODE_CPUS" \
        --object-store-memory "$OBJECT_STORE_BYTES" --dashboard-agent-listen-port "$agent" \
        --metrics-export-port "$metrics" --runtime-env-agent-port "$runtime" --disable-usage-stats "$@" \
        >"$STATE/$name.log" 2>&1 </dev/null &
    echo "$name $!" >>"$STATE/pids"  # setsid runs ray in this pid: it leads its own process group
}

start_node head "$AGENT_HEAD" "$METRICS_HEAD" "$RUNTIME_HEAD" --head --port "$GCS_PORT" --include-dashboard false \
    --temp-dir "$TEMP"
start_node worker "$AGENT_WORKER" "$METRICS_WORKER" "$RUNTIME_WORKER" --address "$ADDRESS"
# Up when both nodes are alive in the cluster's own view.
"$PYTHON" - "$ADDRESS" "$START_TIMEOUT_S" <<'PY' || fail "the cluster did not come up (logs in $STATE/*.log)"
import sys, time
import ray
address, timeout = sys.argv[1], float(sys.argv[2])
deadline = time.monotonic() + timeout
while True:
    try:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        break
    except Exception:
        if time.monotonic() > deadline:
            raise
        time.sleep(1)
while sum(node["Alive"] for node in ray.nodes()) < 2:
    if time.monotonic() > deadline:
        sys.exit(f"{sum(node['Alive'] for node in ray.nodes())} of 2 nodes alive after {timeout:.0f} s")
    time.sleep(0.5)
PY
echo "RAY_ADDRESS=$ADDRESS"
