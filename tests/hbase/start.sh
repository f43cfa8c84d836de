#!/usr/bin/env bash
# Starts a throw-away standalone HBase (master + region server + ZooKeeper in one
# JVM) and its Thrift1 gateway, loopback only, on free ports, with a fresh data
# folder. Prints "127.0.0.1:PORT" (the Thrift address) on stdout once a probe
# table answers through Thrift, then stays in the foreground until told to stop.
#
# Signals:  TERM/INT  stop both JVMs, remove the run folder, exit
#           USR1      stop only the Thrift server; prints "thrift stopped"
#           USR2      start the Thrift server again on the same port; prints
#                     "thrift ready 127.0.0.1:PORT" once it answers
# stdout carries only those lines; everything else goes to stderr or to the
# logs in the run folder. See README.md for the environment variables.
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
start_timeout=${CARRIER_HBASE_START_TIMEOUT:-180}
stop_timeout=${CARRIER_HBASE_STOP_TIMEOUT:-10}
master_heap=${CARRIER_HBASE_MASTER_HEAP:-1g}
thrift_heap=${CARRIER_HBASE_THRIFT_HEAP:-384m}
java=${CARRIER_HBASE_JAVA:-java}

say() { echo "start.sh: $*" >&2; }

# Signals only set flags, acted on at safe points: first thing, so that a TERM
# that comes during start-up is never lost.
stop_requested='' usr1=0 usr2=0
trap 'stop_requested=TERM' TERM
trap 'stop_requested=INT' INT
trap 'usr1=1' USR1
trap 'usr2=1' USR2

run='' master_pid='' thrift_pid='' probe_pid='' child_rc=0

# A JVM dies with its parent (this script), even when the script is SIGKILLed.
# Used as `tie CMD... &`: the background subshell becomes CMD, so $! is its pid.
tie() { exec setpriv --pdeathsig KILL -- "$@"; }

# A zombie keeps its pid until reaped: look at its state, not only at the pid.
alive() {
  local state
  [ -n "${1:-}" ] || return 1
  state=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "$state" != Z ] && [ "$state" != X ]
}

parent_pid() { sed -n 's/^PPid:[[:space:]]*//p' "/proc/$$/status"; }
# When the parent goes (a test runner killed), this script stops too.
original_parent=$(parent_pid)

# TERM the given processes together, KILL what is left after the bound, reap them.
stop_jvms() {
  local pid any waited=0
  for pid in "$@"; do alive "$pid" && kill -TERM "$pid" 2>/dev/null; done
  while [ "$waited" -lt $((stop_timeout * 5)) ]; do
    any=''
    for pid in "$@"; do alive "$pid" && any=1; done
    [ -z "$any" ] && break
    sleep 0.2
    waited=$((waited + 1))
  done
  for pid in "$@"; do
    if alive "$pid"; then
      say "pid $pid still up after ${stop_timeout}s: KILL"
      kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
  done
}

show_logs() {
  local f
  for f in "$run"/logs/master.log "$run"/logs/master.out "$run"/logs/thrift.log "$run"/logs/thrift.out; do
    [ -s "$f" ] || continue
    echo "----- last lines of $f" >&2
    tail -n 30 "$f" >&2
  done
}

# Stops every child, removes the run folder, exits with the given status.
finish() {
  trap '' TERM INT USR1 USR2
  local pid pids=()
  for pid in "$probe_pid" "$thrift_pid" "$master_pid"; do [ -n "$pid" ] && pids+=("$pid"); done
  [ "${#pids[@]}" -gt 0 ] && stop_jvms "${pids[@]}"
  if [ -n "$run" ] && [ -n "${CARRIER_HBASE_KEEP_RUN:-}" ]; then
    say "kept $run"
  elif [ -n "$run" ]; then
    rm -rf "$run"
  fi
  exit "$1"
}

# Waits for a child, waking up for signals; fails when a stop was requested.
# Sets child_rc to the child's exit status.
wait_child() {
  local rc
  while :; do
    [ -n "$stop_requested" ] && return 1
    wait "$1"; rc=$?
    [ -n "$stop_requested" ] && return 1
    if [ "$rc" -gt 128 ] && alive "$1"; then continue; fi
    child_rc=$rc
    return 0
  done
}

# Runs a short helper in the background so that a signal interrupts the wait.
run_helper() {
  "$@" &
  probe_pid=$!
  wait_child "$probe_pid" || finish 143
  probe_pid=''
  return "$child_rc"
}

# Remove run folders left by a start.sh that was SIGKILLed (its JVMs died with it).
tmp_root=${TMPDIR:-/tmp}
for stale in "$tmp_root"/carrier-hbase.*; do
  [ -f "$stale/owner.pid" ] || continue
  alive "$(cat "$stale/owner.pid")" || rm -rf "$stale"
done

run=$(mktemp -d "$tmp_root/carrier-hbase.XXXXXX") || { say "cannot make a run folder"; exit 1; }
echo $$ > "$run/owner.pid"
data=$run/data conf=$run/conf logs=$run/logs
mkdir -p "$data/tmp" "$conf" "$logs"

run_helper "$here/fetch.sh" > "$run/lib.path" || { say "fetching HBase failed"; finish 1; }
lib=$(cat "$run/lib.path")
home=$(dirname "$lib")
cp_probe="$home/build/classes:$lib/*"

run_helper "$java" -Xmx32m -cp "$cp_probe" carrier.hbase.Probe ports 2 > "$run/ports" || true
mapfile -t ports < "$run/ports"
if [ "${#ports[@]}" -ne 2 ]; then
  say "cannot pick free ports"
  finish 1
fi
zk_port=${ports[0]} thrift_port=${ports[1]}

sed -e "s|@DATA_DIR@|$data|g" -e "s|@ZK_PORT@|$zk_port|g" -e "s|@THRIFT_PORT@|$thrift_port|g" \
  "$here/conf/hbase-site.xml" > "$conf/hbase-site.xml"
cp "$here/conf/log4j2.properties" "$conf/"

# What bin/hbase adds on JDK 11+, plus loopback-only IPv4.
jvm_opts=(
  -XX:+UseG1GC -Djava.net.preferIPv4Stack=true
  -Dorg.apache.hbase.thirdparty.io.netty.tryReflectionSetAccessible=true
  --add-modules jdk.unsupported
  --add-opens java.base/java.io=ALL-UNNAMED --add-opens java.base/java.nio=ALL-UNNAMED
  --add-opens java.base/sun.nio.ch=ALL-UNNAMED --add-opens java.base/java.lang=ALL-UNNAMED
  --add-opens java.base/jdk.internal.ref=ALL-UNNAMED --add-opens java.base/java.lang.reflect=ALL-UNNAMED
  --add-opens java.base/java.util=ALL-UNNAMED --add-opens java.base/java.util.concurrent=ALL-UNNAMED
  --add-exports java.base/jdk.internal.misc=ALL-UNNAMED
  --add-exports java.security.jgss/sun.security.krb5=ALL-UNNAMED
  --add-exports java.base/sun.net.dns=ALL-UNNAMED --add-exports java.base/sun.net.util=ALL-UNNAMED
  -Dhbase.log.dir="$logs" -Djava.io.tmpdir="$data/tmp"
)
export HADOOP_USER_NAME=${HADOOP_USER_NAME:-$(id -un)}

start_master() {
  tie "$java" "${jvm_opts[@]}" -Xms256m -Xmx"$master_heap" -Dhbase.log.file=master.log \
    -cp "$conf:$lib/*" org.apache.hadoop.hbase.master.HMaster start \
    </dev/null >>"$logs/master.out" 2>&1 &
  master_pid=$!
}

start_thrift() {
  tie "$java" "${jvm_opts[@]}" -Xms64m -Xmx"$thrift_heap" -Dhbase.log.file=thrift.log \
    -cp "$conf:$lib/*" org.apache.hadoop.hbase.thrift.ThriftServer \
    -threadpool -b 127.0.0.1 -p "$thrift_port" start \
    </dev/null >>"$logs/thrift.out" 2>&1 &
  thrift_pid=$!
}

# Waits (bounded) until the probe table answers through Thrift; fails at once
# when the master, the Thrift server or our parent dies, or a stop was requested.
await_ready() {
  tie "$java" -Xmx64m -Dhbase.log.dir="$logs" -Dhbase.log.file=probe.log -cp "$conf:$cp_probe" \
    carrier.hbase.Probe ready 127.0.0.1 "$thrift_port" "$start_timeout" "$master_pid" "$thrift_pid" "$original_parent" \
    </dev/null >&2 &
  probe_pid=$!
  wait_child "$probe_pid" || return 1
  probe_pid=''
  [ "$child_rc" -eq 0 ]
}

started=$(date +%s)
say "run folder $run; ZooKeeper 127.0.0.1:$zk_port, Thrift 127.0.0.1:$thrift_port"
start_master
start_thrift
if ! await_ready; then
  [ -n "$stop_requested" ] && finish 143
  [ "$(parent_pid)" != "$original_parent" ] && { say "parent process is gone: stopping"; finish 1; }
  say "HBase did not become ready within ${start_timeout}s"
  show_logs
  finish 1
fi
say "ready in $(( $(date +%s) - started ))s (master pid $master_pid, thrift pid $thrift_pid)"
echo "127.0.0.1:$thrift_port"

while :; do
  [ -n "$stop_requested" ] && { say "stopping ($stop_requested)"; finish 0; }
  if [ "$(parent_pid)" != "$original_parent" ]; then
    say "parent process is gone: stopping"
    finish 1
  fi
  if ! alive "$master_pid"; then
    say "the master JVM exited on its own"
    show_logs
    finish 1
  fi
  if [ "$usr1" = 1 ]; then
    usr1=0
    if [ -n "$thrift_pid" ]; then
      say "SIGUSR1: stopping the Thrift server"
      stop_jvms "$thrift_pid"
      thrift_pid=''
    fi
    echo "thrift stopped"
  fi
  if [ "$usr2" = 1 ]; then
    usr2=0
    if [ -z "$thrift_pid" ]; then
      say "SIGUSR2: starting the Thrift server on $thrift_port"
      start_thrift
      if ! await_ready; then
        [ -n "$stop_requested" ] && continue
        say "the Thrift server did not come back within ${start_timeout}s"
        show_logs
        finish 1
      fi
    fi
    echo "thrift ready 127.0.0.1:$thrift_port"
  fi
  if [ -n "$thrift_pid" ] && ! alive "$thrift_pid"; then
    say "the Thrift server JVM exited on its own"
    show_logs
    finish 1
  fi
  sleep 1 &
  wait $! 2>/dev/null
done
