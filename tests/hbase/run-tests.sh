#!/usr/bin/env bash
# The HBase test command: starts a real standalone HBase with its Thrift1
# server (tests/hbase/start.sh), then runs against it
#   1. the store contract suite (the one the embedded store passes),
#   2. the whole API integration suite (tests/it) with backend = "hbase",
#      kill -9 of the real binary included,
#   3. the outage test, which stops and restarts the Thrift server,
# and stops HBase (removing its data) however it ends.
set -euo pipefail
cd "$(dirname "$0")/../.."

out=$(mktemp)
tests/hbase/start.sh > "$out" &
hbase_pid=$!
cleanup() {
    kill -TERM "$hbase_pid" 2>/dev/null || true
    wait "$hbase_pid" 2>/dev/null || true
    rm -f "$out"
}
trap cleanup EXIT

addr=""
for _ in $(seq 1 300); do
    addr=$(grep -m1 -E '^127\.0\.0\.1:[0-9]+$' "$out" || true)
    [ -n "$addr" ] && break
    kill -0 "$hbase_pid" 2>/dev/null || { echo "run-tests.sh: HBase failed to start" >&2; exit 1; }
    sleep 1
done
[ -n "$addr" ] || { echo "run-tests.sh: HBase not ready after 300 s" >&2; exit 1; }
echo "run-tests.sh: HBase Thrift1 server at $addr"
export CARRIER_TEST_HBASE=$addr CARRIER_TEST_HBASE_PID=$hbase_pid

echo "== store contract on HBase"
cargo test --lib store::hbase -- --ignored --test-threads=1
echo "== API integration suite on HBase"
cargo test --test it
echo "== storage outage on HBase"
cargo test --test it outage -- --ignored --nocapture
