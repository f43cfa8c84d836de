#!/usr/bin/env bash
# Memory per parked poll across a local cluster: NODES release nodes (default
# 6) over one throw-away HBase (tests/hbase/start.sh), and POLLS parked polls
# (default 100,000) spread over them by `carrier-loadtest --home-by-ring`, so
# each poll is parked on the node owning its user and none is forwarded.
# One node holds at most ~19,000 here (20,000 open files per process), hence
# six nodes for 100,000; the tester splits itself into worker processes.
#
#   bench/cluster-idle.sh                 # NODES=6 POLLS=100000
#   CARRIER_CLUSTER_THRIFT=127.0.0.1:PORT bench/cluster-idle.sh   # an HBase already up
#   LEASE_MS=10000 bench/cluster-idle.sh  # longer leases (heartbeat 1 s, timeout 3 s)
#   CONNECT=32                            # connections each tester process opens at once
#
# Prints the tester's summary (RSS summed over every node's pid, before and
# after, per parked poll) and each node's own RSS. Bounded: HBase's start,
# then the tester under `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."

nodes=${NODES:-6}
polls=${POLLS:-100000}
base=${BASE_PORT:-18180}
dir=$(mktemp -d)
pids=()
# HBase's start, wait and stop come from the cluster example's library.
# shellcheck source=config/cluster/start.sh
source config/cluster/start.sh
CLUSTER_DIR=$dir
cleanup() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    cluster_stop_hbase
    rm -rf "$dir"
}
trap cleanup EXIT

cargo build --release -q -p carrier -p loadtest
bin=$PWD/target/release

cluster_start_hbase
cluster_await_hbase
thrift=$CLUSTER_THRIFT

head -c 48 /dev/urandom | base64 -w0 >"$dir/secret"
peers=""
targets=""
for i in $(seq "$nodes"); do
    peers+="  { id = \"n$i\", addr = \"127.0.0.1:$((base + i))\" },"$'\n'
    targets+="${targets:+,}127.0.0.1:$((base + i))"
done
prefix="idle_$(date +%s)_"
for i in $(seq "$nodes"); do
    mkdir -p "$dir/data-n$i"
    cat >"$dir/n$i.toml" <<TOML
[server]
listen = "127.0.0.1:$((base + i))"
[auth]
secret_file = "$dir/secret"
[storage]
backend = "hbase"
path = "$dir/data-n$i"
[storage.hbase]
thrift = "$thrift"
table_prefix = "$prefix"
[cluster]
node_id = "n$i"
peers = [
$peers]
TOML
    if [ -n "${LEASE_MS:-}" ]; then
        printf 'heartbeat_interval = 1000\nheartbeat_timeout = 3000\nlease = %s\n' "$LEASE_MS" >>"$dir/n$i.toml"
    fi
done

ulimit -n 20000
for i in $(seq "$nodes"); do
    RUST_LOG=warn "$bin/carrier" serve --config "$dir/n$i.toml" >"$dir/n$i.log" 2>&1 &
    pids+=($!)
done
for i in $(seq "$nodes"); do
    for _ in $(seq 600); do
        curl -sf "127.0.0.1:$((base + i))/readyz" >/dev/null && break
        sleep 0.2
    done
    curl -sf "127.0.0.1:$((base + i))/readyz" >/dev/null || { echo "n$i not ready"; tail "$dir/n$i.log"; exit 1; }
done
echo "$nodes nodes ready: $targets"

pid_args=()
for p in "${pids[@]}"; do pid_args+=(--server-pid "$p"); done
timeout 900 "$bin/carrier-loadtest" --target "$targets" --config "$dir/n1.toml" --home-by-ring \
    --quiet "${pid_args[@]}" --connect-concurrency "${CONNECT:-32}" --poll-timeout 55 --request-timeout 30 idle --polls "$polls" --settle 10 || true
for i in $(seq "$nodes"); do
    echo "n$i: $(grep VmRSS "/proc/${pids[$((i - 1))]}/status" | tr -s ' ')"
done
