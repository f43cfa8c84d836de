#!/usr/bin/env bash
# The demo chat in real headless Chromium (playwright-core from npm driving
# Debian's /usr/bin/chromium, fresh profile): two tabs, two users. Tab A
# loads /demo from the node; tab B loads the same page from another origin
# (a static server on another port) and calls the node cross-origin, so
# CORS and its preflight are exercised by a real browser. A message typed
# in each tab appears in the other.
source "$(dirname "$0")/lib.sh"
need chromium node npm

NPM_DIR="$ROOT/target/edge-npm"
if [ ! -d "$NPM_DIR/node_modules/playwright-core" ]; then
    mkdir -p "$NPM_DIR"
    (cd "$NPM_DIR" && npm install --silent --no-audit --no-fund playwright-core@1 >/dev/null) ||
        fail "npm install playwright-core failed"
fi

STATIC_PORT="$(free_port)"
STATIC_ORIGIN="http://127.0.0.1:$STATIC_PORT"
start_node browser "[demo]
enabled = true
[cors]
allowed_origins = [\"$STATIC_ORIGIN\"]"

mkdir -p "$WORK/static/demo"
cp "$ROOT/src/http/demo/index.html" "$ROOT/src/http/demo/chat.js" "$WORK/static/demo/"
python3 -m http.server "$STATIC_PORT" --bind 127.0.0.1 --directory "$WORK/static" \
    >"$WORK/static.log" 2>&1 &
PIDS+=($!)
for i in $(seq 1 50); do
    curl -fsS -o /dev/null "$STATIC_ORIGIN/demo/index.html" 2>/dev/null && break
    [ "$i" = 50 ] && fail "static server did not start"
    sleep 0.1
done

ALICE="$(new_user)"; BOB="$(new_user)"
export PAGE_A="$NODE_URL/demo#token=$(token_for "$ALICE")&peer=$BOB"
export PAGE_B="$STATIC_ORIGIN/demo/index.html#api=$NODE_URL&token=$(token_for "$BOB")&peer=$ALICE"
export PROFILE="$WORK/chromium-profile" PW="$NPM_DIR/node_modules/playwright-core"
mkdir -p "$PROFILE"

cat >"$WORK/chat.js" <<'JS'
const { chromium } = require(process.env.PW);
(async () => {
  const context = await chromium.launchPersistentContext(process.env.PROFILE, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run"],
  });
  const errors = [];
  try {
    const a = await context.newPage();
    const b = await context.newPage();
    for (const p of [a, b]) p.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
    await a.goto(process.env.PAGE_A);
    await b.goto(process.env.PAGE_B);
    for (const p of [a, b]) {
      await p.waitForFunction(() => document.getElementById("status").textContent.startsWith("connected"), null, { timeout: 15000 });
    }
    async function say(from, to, text) {
      await from.fill("#text", text);
      await from.click("#send");
      await to.waitForFunction((t) => [...document.querySelectorAll("#log li.theirs")].some((li) => li.textContent === "them: " + t), text, { timeout: 15000 });
      console.log("delivered: " + text);
    }
    await say(a, b, "hello from tab A");
    await say(b, a, "hello back from tab B (cross-origin)");
    await say(a, b, "and once more");
  } catch (e) {
    console.error("FAILED: " + e.message + "\nconsole errors: " + errors.join("\n"));
    process.exitCode = 1;
  } finally {
    await context.close();
  }
})();
JS
timeout 120 node "$WORK/chat.js" || fail "the chat did not work in Chromium"
preflights="$(curl -fsS "$NODE_URL/metrics" | awk '$1 == "carrier_http_requests_total{route=\"send\",status=\"204\"}" {print $2}')"
[ "${preflights:-0}" -ge 1 ] || fail "no CORS preflight reached the node"
pass "Chromium: messages typed in each tab appeared in the other ($preflights preflight(s) granted)"
