#!/usr/bin/env bash
# Send-to-delivery latency with and without slowloris clients: N
# connections that send a request head one byte a second and reconnect when
# the node cuts them (limits.header_timeout, 10 s by default), so the
# pressure stays on for the whole run.
#   bench/slowloris.sh [N...]     (default: 1000 5000)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet --bin carrier --example bench
counts=("${@:-1000 5000}")
[ $# -gt 0 ] || counts=(1000 5000)

dir=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$dir"' EXIT
secret="benchmark-secret-benchmark-secret-0123"
cat > "$dir/carrier.toml" <<TOML
[server]
listen = "127.0.0.1:18081"
[auth]
secret = "$secret"
[storage]
path = "$dir/data"
TOML
RUST_LOG=warn ./target/release/carrier serve --config "$dir/carrier.toml" > "$dir/node.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -sf 127.0.0.1:18081/readyz > /dev/null && break; sleep 0.1; done

cat > "$dir/slow.py" <<'PY'
import asyncio, sys
N, SECONDS = int(sys.argv[1]), float(sys.argv[2])
HEAD = b"GET /v1/poll?cursor=0000000000000000 HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
cuts = 0
async def one(deadline):
    global cuts
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            r, w = await asyncio.open_connection("127.0.0.1", 18081)
            for b in HEAD:
                if loop.time() >= deadline: break
                w.write(bytes([b])); await w.drain()
                try:
                    if await asyncio.wait_for(r.read(1), 1.0) == b"": cuts += 1; break
                except asyncio.TimeoutError:
                    pass
            w.close()
        except OSError:
            await asyncio.sleep(0.5)
async def main():
    deadline = asyncio.get_running_loop().time() + SECONDS
    await asyncio.gather(*(one(deadline) for _ in range(N)))
    print(f"slow clients: {N}, cut by the node and reconnected: {cuts}")
asyncio.run(main())
PY

bench=./target/release/examples/bench
run() { $bench --addr 127.0.0.1:18081 --secret "$secret" latency --pairs 200 --rate 2000 --seconds 10 | grep -E "latency"; }
echo "== $(nproc) cores; no slow clients"
run
for n in "${counts[@]}"; do
    echo "== $n slow clients (one byte a second, reconnecting when cut)"
    python3 "$dir/slow.py" "$n" 25 &
    slow=$!
    pids+=($slow)
    sleep 12   # past one header timeout: the node is cutting and they reconnect
    run
    wait "$slow" || true
done
