#!/usr/bin/env bash
# schemathesis (from PyPI, in a venv under target/) fuzzes every operation
# of docs/openapi.json against a running node, with a valid token, for a
# bounded time: no response may be a 5xx.
source "$(dirname "$0")/lib.sh"

VENV="$ROOT/target/edge-venv"
if [ ! -x "$VENV/bin/schemathesis" ]; then
    python3 -m venv "$VENV" || fail "python3 -m venv"
    "$VENV/bin/pip" install -q 'schemathesis==4.*' || fail "pip install schemathesis"
fi

# Short holds, so generated polls do not park for long. Debug logs, to
# check below that neither the secret nor a token is ever logged.
RUST_LOG=debug start_node fuzz "[poll]
default_timeout = 1
max_timeout = 1"
USER_ID="$(new_user)"; TOKEN="$(token_for "$USER_ID")"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
(cd "$WORK" && "$VENV/bin/schemathesis" run "$ROOT/docs/openapi.json" --url "$NODE_URL" \
    -H "Authorization: Bearer $TOKEN" \
    --checks not_a_server_error \
    --phases examples,coverage,fuzzing \
    --max-time "$FUZZ_SECONDS" --workers 2 --request-timeout 10 \
    --suppress-health-check all \
    --report junit --report-dir "$WORK/report") >"$WORK/schemathesis.log" 2>&1 || {
    tail -60 "$WORK/schemathesis.log"
    fail "schemathesis found failures"
}
grep -E "passed|failed|test cases" "$WORK/schemathesis.log" | tail -5
fivexx="$(curl -fsS "$NODE_URL/metrics" | awk '$1 ~ /^carrier_http_requests_total\{.*status="5/ {s += $2} END {print s + 0}')"
total="$(curl -fsS "$NODE_URL/metrics" | awk '$1 ~ /^carrier_http_requests_total\{/ {s += $2} END {print s + 0}')"
[ "$fivexx" = 0 ] || fail "the node counted $fivexx 5xx answers"
[ "$total" -gt 500 ] || fail "only $total requests reached the node: the fuzzer did not run"
SECRET="$(awk -F'"' '/^secret/ {print $2}' "$NODE_CONFIG")"
[ -n "$SECRET" ] || fail "no secret found in $NODE_CONFIG"
[ "$(wc -l <"$WORK/fuzz.err")" -gt 100 ] || fail "too few debug log lines to judge"
for s in "$SECRET" "$TOKEN" "${TOKEN##*.}"; do
    ! grep -qF -- "$s" "$WORK/fuzz.err" "$WORK/fuzz.out" || fail "a secret or token was logged"
done
pass "$(wc -l <"$WORK/fuzz.err") debug log lines hold neither the secret nor the token"
pass "schemathesis: $total requests in ${FUZZ_SECONDS}s, zero 5xx"
