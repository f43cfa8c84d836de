#!/usr/bin/env bash
# Durable sends and send-to-delivery latency on the embedded store and on a
# real HBase (tests/hbase/start.sh), one after the other in one run, for
# docs/benchmarks.md. Needs wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
tests/hbase/start.sh > "$out" &
hbase_pid=$!
trap 'kill -TERM $hbase_pid 2>/dev/null || true; wait $hbase_pid 2>/dev/null || true; rm -f "$out"' EXIT
for _ in $(seq 300); do
    addr=$(grep -m1 -E '^127\.0\.0\.1:[0-9]+$' "$out" || true)
    [ -n "$addr" ] && break
    sleep 1
done
[ -n "$addr" ] || { echo "HBase did not start" >&2; exit 1; }
ONLY="sends latency" bench/run.sh
ONLY=latency RATE=500 bench/run.sh
ONLY="sends latency" HBASE=$addr bench/run.sh
ONLY=latency RATE=500 HBASE=$addr bench/run.sh
