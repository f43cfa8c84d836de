#!/usr/bin/env bash
# Carrier (embedded store, release build) and Nchan side by side, in one
# run on one machine: the figures of docs/benchmarks.md ("Carrier vs Nchan").
#
#   loadtest/bench.sh [OUT_DIR]
#
# Needs nginx and libnginx-mod-nchan (Debian). Every target gets a fresh
# process (and, for Carrier, a fresh store) before each measurement, so one
# run's backlog or memory never leaks into the next. Each run's JSON and
# HTML report land in OUT_DIR (default: a temp folder), one summary line per
# run in OUT_DIR/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$(mktemp -d)}
# Ports nothing else on a shared machine is likely to hold.
cport=${CARRIER_PORT:-28080}
nport=${NCHAN_PORT:-28090}
mkdir -p "$out"
cargo build --release -q -p carrier -p loadtest
bin=$PWD/target/release
work=$(mktemp -d)
secret="benchmark-secret-of-at-least-32-bytes-long"
carrier_pid=
nginx_pid=
stop_all() {
    [ -n "$carrier_pid" ] && kill "$carrier_pid" 2>/dev/null && wait "$carrier_pid" 2>/dev/null || true
    [ -n "$nginx_pid" ] && kill -QUIT "$nginx_pid" 2>/dev/null && wait "$nginx_pid" 2>/dev/null || true
    carrier_pid= nginx_pid=
}
trap 'stop_all; rm -rf "$work"' EXIT

start_carrier() {
    stop_all
    rm -rf "$work/data"
    cat > "$work/carrier.toml" <<TOML
[server]
listen = "127.0.0.1:$cport"
[auth]
secret = "$secret"
[storage]
path = "$work/data"
TOML
    "$bin/carrier" serve --config "$work/carrier.toml" > "$work/carrier.log" 2>&1 &
    carrier_pid=$!
    for _ in $(seq 100); do curl -sf http://127.0.0.1:$cport/readyz >/dev/null && return; sleep 0.1; done
    echo "carrier did not start"; cat "$work/carrier.log"; exit 1
}

start_nchan() {
    stop_all
    rm -rf "$work/nchan" && mkdir -p "$work/nchan"
    sed "s/127.0.0.1:8090/127.0.0.1:$nport/" config/peers/nchan.conf > "$work/nchan.conf"
    nginx -p "$work/nchan" -c "$work/nchan.conf" > "$work/nginx.log" 2>&1 &
    nginx_pid=$!
    for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$nport/ && return; sleep 0.1; done
    echo "nginx did not start"; cat "$work/nginx.log"; exit 1
}

# run NAME PEER ARGS...: one measurement, its JSON, report and summary line.
run() {
    local name=$1 peer=$2; shift 2
    local target=127.0.0.1:$cport auth=(--config "$work/carrier.toml")
    if [ "$peer" = nchan ]; then target=127.0.0.1:$nport; auth=(--peer nchan); fi
    echo "== $name ($(date -u +%H:%M:%S), load $(cut -d' ' -f1-3 /proc/loadavg))" | tee -a "$out/summary.txt"
    local cmd=("$bin/carrier-loadtest" --target "$target" "${auth[@]}" --quiet
        --json "$out/$name.json" --report "$out/$name.html" "$@")
    echo "   ${cmd[*]}" | sed "s|$bin/||; s|$work/||; s|$out/||g" >> "$out/summary.txt"
    /usr/bin/time -f "   tool CPU: %U s user + %S s sys over %e s" -a -o "$out/summary.txt" \
        "${cmd[@]}" > "$out/$name.txt" 2>&1 || true
    python3 - "$out/$name.json" >> "$out/summary.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
d, v = r["delivery"], r["verdict"]
if r.get("idle"):
    i = r["idle"]
    print(f'   idle: {i["polls"]} parked, RSS {i["rss_before_kib"]} -> {i["rss_after_kib"]} KiB, {i["kib_per_poll"]:.2f} KiB per parked poll')
else:
    print(f'   offered {r["rate"]:.0f}/s achieved {r["achieved_rate"]:.0f}/s delivered {r["delivered_rate"]:.0f}/s; '
          f'p50 {d["p50_ms"]:.2f} p99 {d["p99_ms"]:.2f} p99.9 {d["p999_ms"]:.2f} max {d["max_ms"]:.2f} ms; '
          f'errors {r["send_errors"]}+{r["poll_errors"]}; lost {v["lost_messages"]} reordered {v["reordered"]} '
          f'(own copies {v["copies_reordered"]}) corrupted {v["corrupted"]} gaps {v["gaps"]}; clean {r["clean"]}')
    c = r.get("cpu") or {}
    if c.get("server_us_per_message") is not None:
        print(f'   CPU while sending: server {c["server_seconds"]:.1f} s = {c["server_us_per_message"]:.0f} us/message, '
              f'tool {c["tool_seconds"]:.1f} s = {c["tool_us_per_message"]:.0f} us/message')
for s in r.get("steps", []):
    sc = (s.get("cpu") or {}).get("server_us_per_message")
    print(f'   step {s["rate"]:.0f}/s: achieved {s["achieved_rate"]:.0f}/s p99 {s["delivery"]["p99_ms"]:.2f} ms errors {s["errors"]} lost {s["lost"]} held {s["held"]}'
          + (f' server {sc:.0f} us/message' if sc is not None else ''))
if r.get("steps"):
    print(f'   highest rate that held: {r.get("highest_held_rate")}')
PY
}

nginx_pids() { echo "$nginx_pid $(pgrep -P "$nginx_pid" | tr '\n' ' ')"; }

for polls in 10000 19000; do
    start_carrier
    run "idle-$polls-carrier" carrier --poll-timeout 55 idle --polls "$polls" --server-pid "$carrier_pid"
    start_nchan
    pids=(); for p in $(nginx_pids); do pids+=(--server-pid "$p"); done
    run "idle-$polls-nchan" nchan --poll-timeout 55 idle --polls "$polls" "${pids[@]}"
done

# --server-pid: the runs report the server's CPU per acked message beside
# the tool's, which compares the servers whatever the generator took.
nchan_pid_args() { local p; for p in $(nginx_pids); do printf -- '--server-pid %s ' "$p"; done; }

for rate in 1000 5000 10000 20000; do
    start_carrier
    run "chat-$rate-carrier" carrier --server-pid "$carrier_pid" --seconds 10 chat --users 10000 --rate "$rate"
    start_nchan
    # shellcheck disable=SC2046
    run "chat-$rate-nchan" nchan $(nchan_pid_args) --seconds 10 chat --users 10000 --rate "$rate"
done

ramp=(ramp --users 10000 --start-rate 2500 --step-rate 2500 --max-rate 30000 --step-seconds 5 --slo-p99-ms 100)
start_carrier
run ramp-carrier carrier --server-pid "$carrier_pid" --drain 5 "${ramp[@]}"
start_nchan
# shellcheck disable=SC2046
run ramp-nchan nchan $(nchan_pid_args) --drain 5 "${ramp[@]}"

start_carrier
run fanout-1000-carrier carrier --seconds 10 fanout --members 1000 --rate 10
start_nchan
run fanout-1000-nchan nchan --seconds 10 fanout --members 1000 --rate 10

stop_all
echo "figures in $out"
cat "$out/summary.txt"
