#!/usr/bin/env bash
# Starts the three-node example cluster on this machine: a throw-away
# standalone HBase (tests/hbase/start.sh), per-run copies of n1.toml,
# n2.toml and n3.toml (HBase's real Thrift address, a per-run table prefix,
# a per-run random secret, per-run data folders), the `carrier` binary
# (built with cargo unless CARRIER_BIN is given), and three `carrier serve`
# processes; waits for every node's /readyz, prints where everything is, and
# stops it all on Ctrl-C or TERM (nodes first, then HBase).
#
#   config/cluster/start.sh            # foreground; Ctrl-C stops everything
#
# A node that exits on its own is reported, not restarted: the cluster keeps
# running with the others (restart one by hand with the command printed).
# HBase dying stops everything, exit 1.
#
# Sourced, it starts nothing and offers functions (for tests that kill,
# stop and restart single nodes; tests/cluster/run.sh uses them):
#
#   source config/cluster/start.sh
#   trap cluster_down EXIT           # the caller owns the traps
#   cluster_up || exit 1             # HBase, configs, build, 3 nodes, /readyz
#   cluster_kill n2                  # kill -9, reaped
#   cluster_start n2                 # same config and data; waits for /readyz
#   cluster_pause n3; cluster_resume n3    # SIGSTOP / SIGCONT
#   cluster_stop n1                  # TERM, bounded wait, then KILL
#   cluster_down                     # everything (idempotent)
#   cluster_addr n2; cluster_pid n2; cluster_config n2; cluster_log n2
#
# and sets CLUSTER_DIR (the run folder), CLUSTER_THRIFT, CLUSTER_HBASE_PID,
# CLUSTER_PREFIX, CLUSTER_NODES (n1 n2 n3), CLUSTER_TARGETS
# ("ADDR1,ADDR2,ADDR3", for carrier-loadtest --target) and the associative
# arrays CLUSTER_PID, CLUSTER_ADDR, CLUSTER_CONF, CLUSTER_LOG keyed by node.
# Call cluster_up in the shell itself, not in $(...) or a pipeline: the
# processes belong to the shell that starts them, and die with it.
# Functions return non-zero with a message on stderr; they never exit the
# caller, and they are safe under `set -euo pipefail`.
#
# Environment (all optional):
#   CARRIER_BIN              a built carrier binary (default: cargo build)
#   CLUSTER_PROFILE          debug (default) or release, for the cargo build
#   CLUSTER_BASE_PORT        nodes listen on BASE+1..BASE+3 (default 8080:
#                            8081-8083, as in the templates)
#   CARRIER_CLUSTER_THRIFT   host:port of an HBase Thrift1 server already
#                            running: no HBase is started (the per-run table
#                            prefix keeps runs apart)
#   CLUSTER_TEMPLATES        folder holding n1.toml n2.toml n3.toml
#   CLUSTER_LARGE_GROUP_THRESHOLD  if set, [send] large_group_threshold of every node
#                            (default: this script's folder)
#   CLUSTER_READY_TIMEOUT    seconds to wait for a node's /readyz (60)
#   CLUSTER_STOP_TIMEOUT     seconds between TERM and KILL for a node (15)
#   CLUSTER_KEEP=1           keep the run folder (configs, logs) at the end
#   RUST_LOG                 passed to the nodes (their logs: CLUSTER_LOG)
#   TMPDIR                   where the run folder goes (/tmp)
# tests/hbase/README.md lists HBase's own (CARRIER_HBASE_START_TIMEOUT, ...).

# ---------------------------------------------------------------- state
CLUSTER_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_DIR=${CLUSTER_DIR:-}
CLUSTER_THRIFT=''
CLUSTER_HBASE_PID=''
CLUSTER_PREFIX=''
CLUSTER_BIN=''
CLUSTER_NODES=(n1 n2 n3)
CLUSTER_TARGETS=''
# Set by the foreground script's signal traps: the bounded waits give up at once.
_cluster_stop=''
declare -gA CLUSTER_PID=() CLUSTER_ADDR=() CLUSTER_CONF=() CLUSTER_LOG=()

_cluster_say() { echo "cluster: $*" >&2; }

# A zombie keeps its pid until reaped: look at its state, not only the pid.
_cluster_alive() {
    local state
    [ -n "${1:-}" ] || return 1
    state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
    [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

# Waits (bounded, in tenths of a second) until the pid is gone; 0 if it is.
_cluster_wait_gone() {
    local pid=$1 tenths=$2 i=0
    while [ "$i" -lt "$tenths" ]; do
        _cluster_alive "$pid" || return 0
        sleep 0.1
        i=$((i + 1))
    done
    ! _cluster_alive "$pid"
}

_cluster_known() {
    local n
    for n in "${CLUSTER_NODES[@]}"; do [ "$n" = "${1:-}" ] && return 0; done
    _cluster_say "unknown node '${1:-}' (nodes: ${CLUSTER_NODES[*]})"
    return 1
}

cluster_addr() { _cluster_known "${1:-}" && echo "${CLUSTER_ADDR[$1]:-}"; }
cluster_pid() { _cluster_known "${1:-}" && echo "${CLUSTER_PID[$1]:-}"; }
cluster_config() { _cluster_known "${1:-}" && echo "${CLUSTER_CONF[$1]:-}"; }
cluster_log() { _cluster_known "${1:-}" && echo "${CLUSTER_LOG[$1]:-}"; }

# True when something listens on 127.0.0.1:PORT.
_cluster_port_busy() {
    ss -Htln "sport = :$1" 2>/dev/null | grep -q .
}

# ---------------------------------------------------------------- HBase
# Starts tests/hbase/start.sh in the background; cluster_await_hbase waits
# (bounded) for the Thrift address it prints. Split in two so that the build
# overlaps HBase's start. Its parent is this shell: it stops on its own if
# this shell dies. TERM stops it (SIGINT is ignored by a background job).
cluster_start_hbase() {
    [ -n "${CARRIER_CLUSTER_THRIFT:-}" ] && return 0
    "$CLUSTER_ROOT/tests/hbase/start.sh" >"$CLUSTER_DIR/hbase.out" 2>"$CLUSTER_DIR/hbase.err" &
    CLUSTER_HBASE_PID=$!
    _cluster_say "starting HBase (tests/hbase/start.sh pid $CLUSTER_HBASE_PID, log $CLUSTER_DIR/hbase.err)"
}

cluster_await_hbase() {
    if [ -n "${CARRIER_CLUSTER_THRIFT:-}" ]; then
        CLUSTER_THRIFT=$CARRIER_CLUSTER_THRIFT
        _cluster_say "using the HBase Thrift1 server at $CLUSTER_THRIFT (CARRIER_CLUSTER_THRIFT)"
        return 0
    fi
    local out=$CLUSTER_DIR/hbase.out err=$CLUSTER_DIR/hbase.err
    local bound=$((${CARRIER_HBASE_START_TIMEOUT:-180} + 60)) waited=0 addr=''
    while [ "$waited" -lt "$bound" ]; do
        [ -z "$_cluster_stop" ] || return 1
        addr=$(grep -m1 -E '^127\.0\.0\.1:[0-9]+$' "$out" 2>/dev/null || true)
        [ -n "$addr" ] && break
        if ! _cluster_alive "$CLUSTER_HBASE_PID"; then
            wait "$CLUSTER_HBASE_PID" 2>/dev/null || true
            CLUSTER_HBASE_PID=''
            _cluster_say "HBase failed to start; the end of $err:"
            tail -n 40 "$err" >&2
            return 1
        fi
        sleep 1
        waited=$((waited + 1))
    done
    if [ -z "$addr" ]; then
        _cluster_say "HBase printed no Thrift address within ${bound} s; the end of $err:"
        tail -n 40 "$err" >&2
        return 1
    fi
    CLUSTER_THRIFT=$addr
    _cluster_say "HBase Thrift1 server at $CLUSTER_THRIFT"
}

cluster_stop_hbase() {
    [ -n "$CLUSTER_HBASE_PID" ] || return 0
    if _cluster_alive "$CLUSTER_HBASE_PID"; then
        kill -TERM "$CLUSTER_HBASE_PID" 2>/dev/null || true
        # start.sh gives each JVM CARRIER_HBASE_STOP_TIMEOUT (10 s) then KILLs.
        if ! _cluster_wait_gone "$CLUSTER_HBASE_PID" $(((${CARRIER_HBASE_STOP_TIMEOUT:-10} + 10) * 10)); then
            _cluster_say "HBase start.sh (pid $CLUSTER_HBASE_PID) still up: KILL (its JVMs die with it)"
            kill -KILL "$CLUSTER_HBASE_PID" 2>/dev/null || true
        fi
    fi
    wait "$CLUSTER_HBASE_PID" 2>/dev/null || true
    CLUSTER_HBASE_PID=''
}

# ---------------------------------------------------------------- configs
# Writes $CLUSTER_DIR/nN.toml from the templates: ports moved to
# CLUSTER_BASE_PORT+N, the real Thrift address, the per-run table prefix,
# a per-run secret_file and metrics token, per-run data folders. Fails if a
# template lacks a line it must change (so a changed template is noticed).
cluster_write_configs() {
    local templates=${CLUSTER_TEMPLATES:-$CLUSTER_ROOT/config/cluster}
    local base=${CLUSTER_BASE_PORT:-8080} n i src dst port
    local -a moves=()
    CLUSTER_PREFIX="c$(date +%s)_$$_"
    head -c 48 /dev/urandom | base64 -w0 >"$CLUSTER_DIR/secret" || return 1
    CLUSTER_METRICS_TOKEN=$(head -c 24 /dev/urandom | base64 -w0 | tr '+/' '-_')
    chmod 600 "$CLUSTER_DIR/secret" || return 1
    for i in 1 2 3; do
        moves+=(-e "s/127\\.0\\.0\\.1:808$i\\b/127.0.0.1:$((base + i))/g")
    done
    CLUSTER_TARGETS=''
    for i in 1 2 3; do
        n=n$i
        src=$templates/$n.toml
        dst=$CLUSTER_DIR/$n.toml
        port=$((base + i))
        [ -r "$src" ] || { _cluster_say "cannot read $src"; return 1; }
        local want
        for want in '^listen = ' '^secret_file = ' '^path = ' '^thrift = ' '^table_prefix = ' "^node_id = \"$n\""; do
            grep -q "$want" "$src" || { _cluster_say "$src has no line matching '$want'"; return 1; }
        done
        sed "${moves[@]}" \
            -e "s|^secret_file = .*|secret_file = \"$CLUSTER_DIR/secret\"\nmetrics_token = \"$CLUSTER_METRICS_TOKEN\"|" \
            -e "s|^path = .*|path = \"$CLUSTER_DIR/data-$n\"|" \
            -e "s|^thrift = .*|thrift = \"$CLUSTER_THRIFT\"|" \
            -e "s|^table_prefix = .*|table_prefix = \"$CLUSTER_PREFIX\"|" \
            "$src" >"$dst" || return 1
        if [ -n "${CLUSTER_LARGE_GROUP_THRESHOLD:-}" ]; then
            grep -q '^\[send\]' "$dst" && { _cluster_say "$src has a [send] table already"; return 1; }
            printf '\n[send]\nlarge_group_threshold = %s\n' "$CLUSTER_LARGE_GROUP_THRESHOLD" >>"$dst" || return 1
        fi
        grep -q "^listen = \"127.0.0.1:$port\"" "$dst" \
            || { _cluster_say "$src does not listen on 127.0.0.1:808$i"; return 1; }
        mkdir -p "$CLUSTER_DIR/data-$n" || return 1
        CLUSTER_CONF[$n]=$dst
        CLUSTER_ADDR[$n]=127.0.0.1:$port
        CLUSTER_LOG[$n]=$CLUSTER_DIR/$n.log
        CLUSTER_TARGETS+=${CLUSTER_TARGETS:+,}127.0.0.1:$port
    done
    _cluster_say "configs in $CLUSTER_DIR (table prefix $CLUSTER_PREFIX, secret_file $CLUSTER_DIR/secret)"
}

# ---------------------------------------------------------------- binary
cluster_build() {
    if [ -n "${CARRIER_BIN:-}" ]; then
        [ -x "$CARRIER_BIN" ] || { _cluster_say "CARRIER_BIN=$CARRIER_BIN is not executable"; return 1; }
        CLUSTER_BIN=$CARRIER_BIN
        return 0
    fi
    local profile=${CLUSTER_PROFILE:-debug} flag=()
    case $profile in
        debug) ;;
        release) flag=(--release) ;;
        *) _cluster_say "CLUSTER_PROFILE must be debug or release, not $profile"; return 1 ;;
    esac
    command -v cargo >/dev/null || { _cluster_say "cargo is not on PATH (or set CARRIER_BIN)"; return 1; }
    _cluster_say "building carrier ($profile)"
    (cd "$CLUSTER_ROOT" && cargo build -q "${flag[@]}" -p carrier --bin carrier) \
        || { _cluster_say "cargo build failed"; return 1; }
    CLUSTER_BIN=${CARGO_TARGET_DIR:-$CLUSTER_ROOT/target}/$profile/carrier
    [ -x "$CLUSTER_BIN" ] || { _cluster_say "no binary at $CLUSTER_BIN after the build"; return 1; }
}

# ---------------------------------------------------------------- nodes
# Starts one node in the background (not waiting for it). The node gets
# PR_SET_PDEATHSIG=KILL: it dies with this shell, even a SIGKILLed one.
_cluster_spawn() {
    local n=$1
    if _cluster_alive "${CLUSTER_PID[$n]:-}"; then
        _cluster_say "$n is already running (pid ${CLUSTER_PID[$n]})"
        return 1
    fi
    local port=${CLUSTER_ADDR[$n]##*:}
    if _cluster_port_busy "$port"; then
        _cluster_say "port $port for $n is taken by another process (set CLUSTER_BASE_PORT, or stop it)"
        return 1
    fi
    echo "---- start $(date -u +%H:%M:%S.%N | cut -c1-12)" >>"${CLUSTER_LOG[$n]}"
    (exec setpriv --pdeathsig KILL -- "$CLUSTER_BIN" serve --config "${CLUSTER_CONF[$n]}" \
        </dev/null >>"${CLUSTER_LOG[$n]}" 2>&1) &
    CLUSTER_PID[$n]=$!
}

# Waits (bounded) until the node answers /readyz with 200.
cluster_wait_ready() {
    _cluster_known "${1:-}" || return 1
    local n=$1 bound=$((${CLUSTER_READY_TIMEOUT:-60} * 5)) i=0
    while [ "$i" -lt "$bound" ]; do
        [ -z "$_cluster_stop" ] || return 1
        if ! _cluster_alive "${CLUSTER_PID[$n]:-}"; then
            _cluster_say "$n exited before it was ready; the end of ${CLUSTER_LOG[$n]}:"
            tail -n 30 "${CLUSTER_LOG[$n]}" >&2
            return 1
        fi
        curl -sf -m 2 -o /dev/null "http://${CLUSTER_ADDR[$n]}/readyz" && return 0
        sleep 0.2
        i=$((i + 1))
    done
    _cluster_say "$n not ready within ${CLUSTER_READY_TIMEOUT:-60} s; the end of ${CLUSTER_LOG[$n]}:"
    tail -n 30 "${CLUSTER_LOG[$n]}" >&2
    return 1
}

# Starts one node (again) with its config and data, and waits for /readyz.
cluster_start() {
    _cluster_known "${1:-}" || return 1
    if [ -z "$CLUSTER_BIN" ] || [ -z "${CLUSTER_CONF[$1]:-}" ]; then
        _cluster_say "cluster_up first"
        return 1
    fi
    _cluster_spawn "$1" || return 1
    cluster_wait_ready "$1" || return 1
    _cluster_say "$1 up at http://${CLUSTER_ADDR[$1]} (pid ${CLUSTER_PID[$1]})"
}

# kill -9 (or the signal given) and reap; the pid is forgotten.
cluster_kill() {
    _cluster_known "${1:-}" || return 1
    local n=$1 sig=${2:-KILL} pid=${CLUSTER_PID[$1]:-}
    _cluster_alive "$pid" || { _cluster_say "$n is not running"; return 1; }
    kill "-$sig" "$pid" 2>/dev/null || true
    # A stopped process acts on KILL at once, on any other signal once resumed.
    [ "$sig" = KILL ] || kill -CONT "$pid" 2>/dev/null || true
    if ! _cluster_wait_gone "$pid" 100; then
        _cluster_say "$n (pid $pid) still up 10 s after SIG$sig"
        return 1
    fi
    wait "$pid" 2>/dev/null || true
    CLUSTER_PID[$n]=''
}

# TERM (a graceful stop: parked polls answered), KILL after the bound.
cluster_stop() {
    _cluster_known "${1:-}" || return 1
    local n=$1 pid=${CLUSTER_PID[$1]:-}
    _cluster_alive "$pid" || { CLUSTER_PID[$n]=''; return 0; }
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    if ! _cluster_wait_gone "$pid" $((${CLUSTER_STOP_TIMEOUT:-15} * 10)); then
        _cluster_say "$n (pid $pid) still up ${CLUSTER_STOP_TIMEOUT:-15} s after TERM: KILL"
        kill -KILL "$pid" 2>/dev/null || true
        _cluster_wait_gone "$pid" 50 || true
    fi
    wait "$pid" 2>/dev/null || true
    CLUSTER_PID[$n]=''
}

cluster_pause() {
    _cluster_known "${1:-}" || return 1
    _cluster_alive "${CLUSTER_PID[$1]:-}" || { _cluster_say "$1 is not running"; return 1; }
    kill -STOP "${CLUSTER_PID[$1]}"
}

cluster_resume() {
    _cluster_known "${1:-}" || return 1
    _cluster_alive "${CLUSTER_PID[$1]:-}" || { _cluster_say "$1 is not running"; return 1; }
    kill -CONT "${CLUSTER_PID[$1]}"
}

# Where everything is, on stdout (one line per item, for people and grep).
cluster_print() {
    local n
    echo "cluster: run folder $CLUSTER_DIR"
    echo "cluster: hbase thrift $CLUSTER_THRIFT pid ${CLUSTER_HBASE_PID:-external} table_prefix $CLUSTER_PREFIX"
    for n in "${CLUSTER_NODES[@]}"; do
        echo "cluster: $n http://${CLUSTER_ADDR[$n]} pid ${CLUSTER_PID[$n]:-none} config ${CLUSTER_CONF[$n]} log ${CLUSTER_LOG[$n]}"
    done
    echo "cluster: targets $CLUSTER_TARGETS"
    echo "cluster: token  $CLUSTER_BIN token --config ${CLUSTER_CONF[n1]} --user UUID"
    echo "cluster: load   carrier-loadtest --target $CLUSTER_TARGETS --config ${CLUSTER_CONF[n1]} chat"
    echo "cluster: restart a node: $CLUSTER_BIN serve --config ${CLUSTER_CONF[n1]}   (n2, n3 alike)"
}

# Everything, from nothing: run folder, HBase, configs, binary, three nodes.
cluster_up() {
    local n
    command -v curl >/dev/null || { _cluster_say "curl is missing"; return 1; }
    command -v setpriv >/dev/null || { _cluster_say "setpriv (util-linux) is missing"; return 1; }
    command -v ss >/dev/null || { _cluster_say "ss (iproute2) is missing"; return 1; }
    # Run folders whose owner was SIGKILLed (its processes died with it).
    local stale
    for stale in "${TMPDIR:-/tmp}"/carrier-cluster.*; do
        [ -f "$stale/owner.pid" ] || continue
        _cluster_alive "$(cat "$stale/owner.pid" 2>/dev/null)" || rm -rf "$stale"
    done
    if [ -z "$CLUSTER_DIR" ]; then
        CLUSTER_DIR=$(mktemp -d "${TMPDIR:-/tmp}/carrier-cluster.XXXXXX") \
            || { _cluster_say "cannot make a run folder"; return 1; }
    fi
    mkdir -p "$CLUSTER_DIR" || return 1
    echo "$$" >"$CLUSTER_DIR/owner.pid"
    # Before the slow steps: fail fast when a node's port is taken.
    local base=${CLUSTER_BASE_PORT:-8080} i
    for i in 1 2 3; do
        if _cluster_port_busy $((base + i)); then
            _cluster_say "port $((base + i)) is taken by another process (set CLUSTER_BASE_PORT, or stop it)"
            return 1
        fi
    done
    # The build and HBase's start both take a while; build while HBase starts.
    cluster_start_hbase || return 1
    cluster_build || return 1
    cluster_await_hbase || return 1
    cluster_write_configs || return 1
    for n in "${CLUSTER_NODES[@]}"; do _cluster_spawn "$n" || return 1; done
    for n in "${CLUSTER_NODES[@]}"; do cluster_wait_ready "$n" || return 1; done
    _cluster_say "all ${#CLUSTER_NODES[@]} nodes ready"
}

# Stops every node (TERM, then KILL after the bound), then HBase; removes
# the run folder unless CLUSTER_KEEP is set. Safe to call more than once.
cluster_down() {
    local n pid
    # TERM all nodes at once, then wait for each: the stop takes one bound, not three.
    for n in "${CLUSTER_NODES[@]}"; do
        pid=${CLUSTER_PID[$n]:-}
        if _cluster_alive "$pid"; then
            kill -CONT "$pid" 2>/dev/null || true
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for n in "${CLUSTER_NODES[@]}"; do cluster_stop "$n" || true; done
    cluster_stop_hbase
    if [ -n "$CLUSTER_DIR" ] && [ -d "$CLUSTER_DIR" ]; then
        if [ -n "${CLUSTER_KEEP:-}" ]; then
            # Without its owner file, no later start removes it.
            rm -f "$CLUSTER_DIR/owner.pid"
            _cluster_say "kept $CLUSTER_DIR"
        else
            rm -rf "$CLUSTER_DIR"
        fi
    fi
    CLUSTER_DIR=''
}

# ---------------------------------------------------------------- main
_cluster_main() {
    set -uo pipefail
    local n
    trap '_cluster_stop=TERM' TERM
    trap '_cluster_stop=INT' INT
    trap 'cluster_down' EXIT
    declare -A reported=()
    if ! cluster_up; then
        [ -n "$_cluster_stop" ] && { _cluster_say "stopped during start-up ($_cluster_stop)"; exit 143; }
        _cluster_say "start failed; logs kept in $CLUSTER_DIR"
        CLUSTER_KEEP=1
        exit 1
    fi
    [ -n "$_cluster_stop" ] && exit 143
    cluster_print
    echo "cluster: running; Ctrl-C or kill -TERM $$ stops everything"
    while [ -z "$_cluster_stop" ]; do
        if [ -n "$CLUSTER_HBASE_PID" ] && ! _cluster_alive "$CLUSTER_HBASE_PID"; then
            _cluster_say "HBase exited on its own; the end of $CLUSTER_DIR/hbase.err:"
            tail -n 20 "$CLUSTER_DIR/hbase.err" >&2
            CLUSTER_HBASE_PID=''
            CLUSTER_KEEP=1
            exit 1
        fi
        for n in "${CLUSTER_NODES[@]}"; do
            if [ -n "${CLUSTER_PID[$n]:-}" ] && ! _cluster_alive "${CLUSTER_PID[$n]}" \
                && [ -z "${reported[$n]:-}" ]; then
                reported[$n]=1
                _cluster_say "$n (pid ${CLUSTER_PID[$n]}) exited; the others keep running. Its log: ${CLUSTER_LOG[$n]}"
            fi
        done
        sleep 1 &
        wait $! 2>/dev/null || true
    done
    _cluster_say "stopping ($_cluster_stop)"
    exit 0
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    _cluster_main "$@"
fi
