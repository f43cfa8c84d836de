# Shared by the edge suite's scripts: a scratch folder, a node of the real
# binary on loopback, tokens, and cleanup of exactly the processes started.
# Source it; it sets -euo pipefail.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CARRIER="${CARRIER:-$ROOT/target/debug/carrier}"
WORK="$(mktemp -d /tmp/carrier-edge.XXXXXX)"
chmod 755 "$WORK"
PIDS=()

cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_WORK:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
pass() { echo "ok: $*"; }
need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 || fail "$c is not installed (see .ci/apt-packages)"
    done
}

need curl python3
[ -x "$CARRIER" ] || fail "$CARRIER is missing: run cargo build first"

# A free loopback port.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# start_node NAME EXTRA_TOML: writes $WORK/NAME.toml, starts the node, sets
# NODE_URL and NODE_CONFIG. EXTRA_TOML is appended (whole sections).
start_node() {
    local name="$1" extra="${2:-}" port
    port="$(free_port)"
    NODE_CONFIG="$WORK/$name.toml"
    cat >"$NODE_CONFIG" <<TOML
[server]
listen = "127.0.0.1:$port"
shutdown_grace = 2
[auth]
secret = "edge-suite-secret-of-at-least-32-bytes!"
[storage]
path = "$WORK/$name-data"
$extra
TOML
    RUST_LOG="${RUST_LOG:-warn}" "$CARRIER" serve --config "$NODE_CONFIG" \
        >"$WORK/$name.out" 2>"$WORK/$name.err" &
    PIDS+=($!)
    NODE_URL="http://127.0.0.1:$port"
    local i
    for i in $(seq 1 100); do
        if curl -fsS -o /dev/null "$NODE_URL/readyz" 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    cat "$WORK/$name.err" >&2
    fail "node $name did not become ready"
}

new_user() { python3 -c 'import uuid; print(uuid.uuid4())'; }
token_for() { "$CARRIER" token --user "$1" --config "$NODE_CONFIG"; }

# json FILE EXPR: evaluates a Python expression on the JSON in FILE (as `d`).
json() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"; }

# send URL TOKEN TO TEXT [curl args...]: prints the status code.
send_msg() {
    local url="$1" token="$2" to="$3" text="$4"; shift 4
    curl -sS -o "$WORK/send.json" -w '%{http_code}' "$@" \
        -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
        -d "{\"message_id\":\"$(new_user)\",\"to\":\"$to\",\"body\":{\"text\":\"$text\"}}" \
        "$url/v1/messages"
}

# metric NAME: the value of one sample on the node's /metrics.
metric() {
    curl -fsS "$NODE_URL/metrics" | awk -v n="$1" '$1 == n {print $2}'
}
