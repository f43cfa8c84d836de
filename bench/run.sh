#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md on this machine:
#   bench/run.sh            (needs wrk: apt-get install wrk)
# Starts a release node on a fresh embedded store in a temp folder on
# 127.0.0.1:18080, runs each measurement, prints the figures, stops the node.
# HBASE=127.0.0.1:PORT puts the node on that HBase Thrift server instead
# (fresh tables per run); ONLY="sends latency" picks measurements
# (trivial, sends, latency, idle); RATE=N sets the latency run's offered
# sends/s (default 5000). bench/hbase.sh runs both stores.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin carrier --example bench

dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; cp "$dir/node.log" /tmp/last-node.log 2>/dev/null; rm -rf "$dir"' EXIT
secret="benchmark-secret-benchmark-secret-0123"
cat > "$dir/carrier.toml" <<TOML
[server]
listen = "127.0.0.1:18080"
[auth]
secret = "$secret"
[storage]
path = "$dir/data"
TOML
if [ -n "${HBASE:-}" ]; then
  cat >> "$dir/carrier.toml" <<TOML
backend = "hbase"
[storage.hbase]
thrift = "$HBASE"
table_prefix = "bench_$(date +%s)_"
TOML
fi
only=${ONLY:-trivial sends latency idle}
want() { case " $only " in *" $1 "*) return 0;; esac; return 1; }
start() {
  rm -rf "$dir/data"
  RUST_LOG=warn ./target/release/carrier serve --config "$dir/carrier.toml" > "$dir/node.log" 2>&1 &
  pid=$!
  for _ in $(seq 600); do curl -sf 127.0.0.1:18080/readyz > /dev/null && return; sleep 0.1; done
  echo "node did not start" >&2; exit 1
}
stop() { kill "$pid"; wait "$pid" || echo "node exited with $?"; }
bench=./target/release/examples/bench

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -r); store: ${HBASE:+hbase at }${HBASE:-embedded}"
if want trivial || want sends; then
  start
  if want trivial; then
    echo "== trivial response: wrk -t2 -c128 -d10s /healthz"
    wrk -t2 -c128 -d10s http://127.0.0.1:18080/healthz | grep -E "Requests/sec|Latency"
  fi
  if want sends; then
    echo "== durable sends: wrk -t2 -c256 -d10s -s bench/send.lua"
    TOKEN=$(./target/release/carrier token --user 11111111-2222-4333-8444-555555555555 --config "$dir/carrier.toml") \
      wrk -t2 -c256 -d10s -s bench/send.lua http://127.0.0.1:18080 | grep -E "Requests/sec|Latency|Non-2xx"
    metrics=$(curl -s 127.0.0.1:18080/metrics)
    echo "$metrics" | grep -E "^carrier_commit_batch_size_(sum|count)"
    if [ -n "${HBASE:-}" ]; then
      # Thrift round trips per accepted send, and the mean time of each kind.
      accepted=$(echo "$metrics" | awk '/^carrier_messages_accepted_total/ {print $2}')
      echo "$metrics" | awk -v sends="$accepted" '
        /^carrier_hbase_call_seconds_count/ { match($0, /method="[^"]+"/); m = substr($0, RSTART + 8, RLENGTH - 9); n[m] += $2 }
        /^carrier_hbase_call_seconds_sum/ { match($0, /method="[^"]+"/); m = substr($0, RSTART + 8, RLENGTH - 9); t[m] += $2 }
        END { printf "sends accepted: %d\n", sends;
              for (m in n) if (n[m] > 0) printf "  %-12s calls %8d  per send %.3f  mean %.2f ms\n", m, n[m], n[m] / sends, 1000 * t[m] / n[m] }'
    fi
  fi
  stop
fi

if want latency; then
  start
  rate=${RATE:-5000}
  echo "== send-to-delivery latency: bench latency --pairs 500 --rate $rate --seconds 10"
  $bench --addr 127.0.0.1:18080 --secret "$secret" latency --pairs 500 --rate "$rate" --seconds 10
  stop
fi

if want idle; then
  start
  echo "== resident memory per parked poll: bench idle --polls 10000"
  $bench --addr 127.0.0.1:18080 --secret "$secret" idle --polls 10000 --pid "$pid"
  stop
fi
