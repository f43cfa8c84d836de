#!/usr/bin/env bash
# Long polling through a real squid (forward proxy) and a real nginx
# (buffering reverse proxy), each with an 8 s read timeout (shortened from
# a typical 30-60 s to keep the suite quick). The node's default poll
# timeout (4 s) is set below the cut-off, as docs recommend. Checks: several
# cycles of timed-out and delivering polls; cache/buffer headers; HTTP/1.0
# and Connection: close; a poll longer than the cut-off is cut, the client
# recovers, and after two cuts the device's holds are shortened so its long
# polls pass.
source "$(dirname "$0")/lib.sh"
need squid nginx

CUT=8
start_node proxied "[poll]
default_timeout = 4
max_timeout = 30
jitter_percent = 10"
NODE_PORT="${NODE_URL##*:}"

# --- squid: forward proxy -------------------------------------------------
SQUID_PORT="$(free_port)"
mkdir -p "$WORK/squid"
chmod 777 "$WORK/squid"
cat >"$WORK/squid.conf" <<CONF
http_port 127.0.0.1:$SQUID_PORT
acl loopback src 127.0.0.0/8
http_access allow loopback
http_access deny all
cache deny all
cache_mem 0 MB
read_timeout $CUT seconds
request_timeout 10 seconds
forward_timeout 5 seconds
connect_timeout 5 seconds
shutdown_lifetime 1 seconds
pid_filename $WORK/squid/squid.pid
access_log stdio:$WORK/squid/access.log
cache_log $WORK/squid/cache.log
coredump_dir $WORK/squid
dns_nameservers 127.0.0.1
CONF
squid -N -f "$WORK/squid.conf" &
PIDS+=($!)

# --- nginx: buffering reverse proxy ---------------------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/nginx/tmp"
chmod -R 777 "$WORK/nginx"
cat >"$WORK/nginx.conf" <<CONF
daemon off;
master_process off;
worker_processes 1;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log warn;
events { worker_connections 256; }
http {
    access_log $WORK/nginx/access.log;
    client_body_temp_path $WORK/nginx/tmp/body;
    proxy_temp_path $WORK/nginx/tmp/proxy;
    fastcgi_temp_path $WORK/nginx/tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx/tmp/uwsgi;
    scgi_temp_path $WORK/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://127.0.0.1:$NODE_PORT;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_read_timeout ${CUT}s;
        }
    }
}
CONF
nginx -p "$WORK/nginx" -c "$WORK/nginx.conf" &
PIDS+=($!)

for i in $(seq 1 100); do
    curl -fsS -o /dev/null -x "http://127.0.0.1:$SQUID_PORT" "$NODE_URL/healthz" 2>/dev/null &&
        curl -fsS -o /dev/null "http://127.0.0.1:$NGINX_PORT/healthz" 2>/dev/null && break
    [ "$i" = 100 ] && fail "squid or nginx did not come up"
    sleep 0.1
done

ALICE="$(new_user)"; A_TOKEN="$(token_for "$ALICE")"

# poll_via NAME BASE TOKEN QUERY OUT [curl args]: prints "status seconds".
poll_via() {
    local name="$1" base="$2" token="$3" query="$4" out="$5"; shift 5
    curl -sS -o "$out" -D "$out.headers" -w '%{http_code} %{time_total}\n' "$@" \
        -H "Authorization: Bearer $token" "$base/v1/poll?$query" || echo "000 0"
}

# long_poll_through NAME BASE [curl args]: the whole scenario through one proxy.
long_poll_through() {
    local name="$1" base="$2"; shift 2
    local bob b_token cursor out status secs
    bob="$(new_user)"; b_token="$(token_for "$bob")"
    out="$WORK/$name-poll.json"

    read -r status secs < <(poll_via "$name" "$base" "$b_token" "" "$out" "$@")
    [ "$status" = 200 ] || fail "$name: head poll answered $status"
    cursor="$(json "$out" 'd["cursor"]')"

    # Cycles with the default timeout: one times out, two deliver mid-hold.
    for cycle in 1 2 3; do
        if [ "$cycle" -gt 1 ]; then
            (sleep 1; send_msg "$NODE_URL" "$A_TOKEN" "$bob" "$name-$cycle" >/dev/null) &
            PIDS+=($!)
        fi
        read -r status secs < <(poll_via "$name" "$base" "$b_token" "cursor=$cursor" "$out" "$@")
        [ "$status" = 200 ] || fail "$name cycle $cycle: status $status"
        grep -qi '^cache-control: no-store' "$out.headers" || fail "$name: no Cache-Control: no-store"
        grep -qi '^content-length:' "$out.headers" || fail "$name: no Content-Length"
        if [ "$cycle" = 1 ]; then
            [ "$(json "$out" 'd["timed_out"]')" = True ] || fail "$name: cycle 1 did not time out"
        else
            [ "$(json "$out" 'd["events"][0]["message"]["body"]["text"]')" = "$name-$cycle" ] ||
                fail "$name cycle $cycle: the message did not come through: $(cat "$out")"
            [ "$(json "$out" 'd["timed_out"]')" = False ] ||
                fail "$name cycle $cycle: delivered only at the end of the hold (buffered?)"
        fi
        cursor="$(json "$out" 'd["cursor"]')"
        echo "  $name cycle $cycle: $status in ${secs}s"
    done
    pass "$name: 3 long-poll cycles with the default timeout, delivery mid-hold"

    # HTTP/1.0 and Connection: close.
    read -r status secs < <(poll_via "$name" "$base" "$b_token" "cursor=$cursor&timeout=1" "$out" --http1.0 "$@")
    [ "$status" = 200 ] || fail "$name: HTTP/1.0 poll answered $status"
    grep -qi '^content-length:' "$out.headers" || fail "$name: HTTP/1.0 answer without Content-Length"
    read -r status secs < <(poll_via "$name" "$base" "$b_token" "cursor=$cursor&timeout=1" "$out" -H 'Connection: close' "$@")
    [ "$status" = 200 ] || fail "$name: Connection: close poll answered $status"
    pass "$name: HTTP/1.0 and Connection: close"

    # A poll longer than the proxy's cut-off is cut; the client recovers.
    local device="$name-$$" cuts_before cuts_after
    cuts_before="$(metric carrier_poll_cuts_total)"
    for n in 1 2; do
        read -r status secs < <(poll_via "$name" "$base" "$b_token" "cursor=$cursor&timeout=20&device=$device" "$out" "$@")
        [ "$status" != 200 ] || fail "$name: a 20 s poll passed an ${CUT} s cut-off"
        echo "  $name: 20 s poll cut by the proxy: $status after ${secs}s"
    done
    sleep 0.5
    cuts_after="$(metric carrier_poll_cuts_total)"
    [ "$cuts_after" -ge $((cuts_before + 2)) ] || fail "$name: cuts not counted ($cuts_before -> $cuts_after)"
    send_msg "$NODE_URL" "$A_TOKEN" "$bob" "$name-after-cut" >/dev/null
    read -r status secs < <(poll_via "$name" "$base" "$b_token" "cursor=$cursor" "$out" "$@")
    [ "$status" = 200 ] && [ "$(json "$out" 'd["events"][0]["message"]["body"]["text"]')" = "$name-after-cut" ] ||
        fail "$name: the client did not recover after the cut: $status $(cat "$out")"
    cursor="$(json "$out" 'd["cursor"]')"
    pass "$name: polls over the cut-off are cut and counted ($cuts_before -> $cuts_after); the next poll gets what was sent"

    # Learned: this device's 20 s polls are now held below the cut-off.
    read -r status secs < <(poll_via "$name" "$base" "$b_token" "cursor=$cursor&timeout=20&device=$device" "$out" "$@")
    [ "$status" = 200 ] && [ "$(json "$out" 'd["timed_out"]')" = True ] ||
        fail "$name: after two cuts the device's 20 s poll was still cut ($status)"
    pass "$name: after two cuts, the device's 20 s poll was held ${secs}s and answered"
}

long_poll_through squid "$NODE_URL" -x "http://127.0.0.1:$SQUID_PORT"
long_poll_through nginx "http://127.0.0.1:$NGINX_PORT"

# Directly: HTTP/1.0 and Connection: close get a closing, complete answer.
BOB="$(new_user)"; B_TOKEN="$(token_for "$BOB")"
curl -sS -D "$WORK/direct.h" -o /dev/null --http1.0 -H "Authorization: Bearer $B_TOKEN" "$NODE_URL/v1/poll"
grep -q '^HTTP/1.[01] 200' "$WORK/direct.h" && grep -qi '^content-length:' "$WORK/direct.h" ||
    fail "direct HTTP/1.0: $(cat "$WORK/direct.h")"
curl -sS -D "$WORK/direct.h" -o /dev/null -H 'Connection: close' -H "Authorization: Bearer $B_TOKEN" "$NODE_URL/v1/poll"
grep -qi '^connection: close' "$WORK/direct.h" || fail "direct Connection: close was not honoured"
grep -qi '^x-accel-buffering: no' "$WORK/direct.h" || fail "no X-Accel-Buffering: no"
pass "direct: HTTP/1.0 and Connection: close; X-Accel-Buffering: no"
