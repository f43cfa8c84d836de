#!/usr/bin/env bash
# The metrics page and the shipped dashboards, against real Prometheus:
# - `promtool check metrics` accepts the node's /metrics;
# - a real Prometheus server scrapes the node on loopback and answers a
#   query for a Carrier metric with the node's value;
# - every query of config/grafana/carrier.json parses in Prometheus, and
#   every metric it names is exported by the node.
source "$(dirname "$0")/lib.sh"
need promtool prometheus

start_node metrics ""
ALICE="$(new_user)"; BOB="$(new_user)"
A_TOKEN="$(token_for "$ALICE")"; B_TOKEN="$(token_for "$BOB")"
for i in 1 2 3; do
    [ "$(send_msg "$NODE_URL" "$A_TOKEN" "$BOB" "m$i")" = 201 ] || fail "send $i"
done
curl -fsS -o /dev/null -H "Authorization: Bearer $B_TOKEN" "$NODE_URL/v1/poll"
curl -sS -o /dev/null "$NODE_URL/v1/nowhere"

curl -fsS "$NODE_URL/metrics" >"$WORK/metrics.txt"
promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.out" 2>&1 ||
    fail "promtool check metrics: $(cat "$WORK/promtool.out")"
pass "promtool check metrics: $(grep -c '^carrier_' "$WORK/metrics.txt") carrier samples, no problems"

PROM_PORT="$(free_port)"
cat >"$WORK/prometheus.yml" <<YML
global:
  scrape_interval: 1s
scrape_configs:
  - job_name: carrier
    static_configs:
      - targets: ["${NODE_URL#http://}"]
YML
promtool check config "$WORK/prometheus.yml" >/dev/null || fail "promtool check config"
promtool check config "$ROOT/config/prometheus.yml" >/dev/null || fail "config/prometheus.yml is not valid"
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prom-data" \
    --web.listen-address="127.0.0.1:$PROM_PORT" >"$WORK/prometheus.log" 2>&1 &
PIDS+=($!)
PROM="http://127.0.0.1:$PROM_PORT"

prom_query() {
    curl -fsS --get --data-urlencode "query=$1" "$PROM/api/v1/query" >"$WORK/q.json"
}
value=""
for i in $(seq 1 60); do
    if prom_query 'carrier_messages_accepted_total' 2>/dev/null; then
        value="$(json "$WORK/q.json" 'd["data"]["result"][0]["value"][1] if d["data"]["result"] else ""')"
        [ -n "$value" ] && break
    fi
    sleep 0.5
done
[ "$value" = 3 ] || fail "Prometheus did not answer carrier_messages_accepted_total = 3 (got '$value'): $(tail -5 "$WORK/prometheus.log")"
pass "Prometheus scraped the node and answered carrier_messages_accepted_total = $value"

# Every dashboard query: valid PromQL (Prometheus parses it), and every
# carrier_* name in it is exported.
python3 - "$ROOT/config/grafana/carrier.json" "$WORK/metrics.txt" "$PROM" <<'PY' || fail "dashboard check"
import json, re, sys, urllib.parse, urllib.request
dash, metrics_file, prom = sys.argv[1:]
exported = {l.split("{")[0].split(" ")[0] for l in open(metrics_file) if l.startswith("carrier_")}
exprs = [t["expr"] for p in json.load(open(dash))["panels"] for t in p.get("targets", [])]
assert len(exprs) >= 10, f"only {len(exprs)} queries found"
bad = []
for e in exprs:
    for name in set(re.findall(r"\bcarrier_[a-z0-9_]+", e)):
        if name not in exported:
            bad.append(f"{name} (in {e})")
    q = e.replace("$__rate_interval", "1m")
    url = prom + "/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        status = json.load(urllib.request.urlopen(url))["status"]
    except Exception as err:
        status = f"error: {err}"
    if status != "success":
        bad.append(f"Prometheus refused {q}: {status}")
if bad:
    print("\n".join(bad))
    sys.exit(1)
print(f"{len(exprs)} dashboard queries parse and name only exported metrics")
PY
pass "dashboard queries checked"
