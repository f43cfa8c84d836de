#!/usr/bin/env bash
# Large-group figures for docs/benchmarks.md, in one run on one node
# (embedded store, release build), each measurement on a fresh node:
#
#   1. a 1,000-member group at 10 sends/s, fanned out on write (threshold
#      raised above its size) and on read (the default threshold, 1,000);
#   2. a 100,000-member group of which 18,000 members poll (one node holds
#      at most ~19,000 connections here: the open-files limit is 20,000),
#      1 send/s: send-ack latency and the time until every polling member
#      has each message;
#   3. direct (1:1) sends at 10/s on the same node, for the ack latency a
#      group send is compared with.
#
#   loadtest/fanout_bench.sh OUT_DIR     # OUT_DIR/*.json, *.out, summary.txt
set -euo pipefail
cd "$(dirname "$0")/.."

out=${1:?usage: loadtest/fanout_bench.sh OUT_DIR}
mkdir -p "$out"
cargo build --release -q -p carrier -p loadtest
bin=$PWD/target/release
work=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
secret=$(head -c 32 /dev/urandom | base64 -w0)
pid=''
stop() { [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true; pid=''; }
trap 'stop; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT

start() {
    local threshold=$1
    stop
    rm -rf "$work/data"
    cat > "$work/carrier.toml" <<TOML
[server]
listen = "127.0.0.1:$port"
[auth]
secret = "$secret"
[storage]
path = "$work/data"
[send]
large_group_threshold = $threshold
[limits]
max_polls_per_node = 19500
TOML
    "$bin/carrier" serve --config "$work/carrier.toml" > "$work/carrier.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && return; sleep 0.1; done
    echo "carrier did not start"; cat "$work/carrier.log"; exit 1
}

run() {
    local name=$1; shift
    echo "== $name: carrier-loadtest $*" | tee -a "$out/summary.txt"
    "$bin/carrier-loadtest" --target "127.0.0.1:$port" --config "$work/carrier.toml" \
        --quiet --json "$out/$name.json" "$@" > "$out/$name.out" 2>&1 || echo "   (exit $?)" | tee -a "$out/summary.txt"
    grep -E "offered|sends |deliveries|delivery latency|ack latency|verdict" "$out/$name.out" | tee -a "$out/summary.txt"
    echo "   server rss: $(grep VmRSS /proc/$pid/status | tr -s ' ')" | tee -a "$out/summary.txt"
}

: > "$out/summary.txt"
start 1001
run fanout-1000-on-write --seconds 10 fanout --members 1000 --rate 10
start 1000
run fanout-1000-on-read --seconds 10 fanout --members 1000 --rate 10
start 1000
run fanout-100000-on-read-5000-polling --seconds 30 --drain 20 fanout --members 100000 --polling 5000 --rate 1
start 1000
run fanout-100000-on-read-15000-polling --seconds 30 --drain 20 fanout --members 100000 --polling 15000 --rate 1
start 1000
run direct-for-comparison --seconds 20 chat --users 1000 --rate 10
