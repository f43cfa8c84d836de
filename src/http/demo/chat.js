// Carrier demo chat: plain fetch long-polling, no build step.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { api: "", token: "", me: "", peer: "", cursor: null, seen: new Set(), running: 0 };
const device = "demo-" + Math.random().toString(36).slice(2, 10);

function status(text) { $("status").textContent = text; }

function userOf(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    return JSON.parse(atob(part)).sub || "";
  } catch (e) {
    return "";
  }
}

function uuid4() {
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

async function call(method, path, body) {
  const headers = { Authorization: "Bearer " + state.token };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(state.api + path, {
    method, headers, cache: "no-store",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const data = r.status === 204 ? null : await r.json();
  if (!r.ok) {
    const err = new Error((data && data.error && data.error.message) || r.statusText);
    err.retryAfter = Number(r.headers.get("Retry-After") || 1);
    throw err;
  }
  return data;
}

function show(message) {
  if (state.seen.has(message.message_id)) return;
  state.seen.add(message.message_id);
  const li = document.createElement("li");
  li.dataset.messageId = message.message_id;
  const mine = message.sender_id === state.me;
  li.className = mine ? "mine" : "theirs";
  const text = message.body && typeof message.body.text === "string"
    ? message.body.text : JSON.stringify(message.body);
  li.textContent = (mine ? "me: " : "them: ") + text;
  $("log").appendChild(li);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function pollLoop(run) {
  while (run === state.running) {
    try {
      if (state.cursor === null) {
        state.cursor = (await call("GET", "/v1/poll")).cursor;
        status("connected as " + state.me);
      }
      const q = `/v1/poll?cursor=${state.cursor}&timeout=25&device=${device}`;
      const answer = await call("GET", q);
      if (run !== state.running) return;
      for (const ev of answer.events) {
        if (ev.type === "message") show(ev.message);
      }
      state.cursor = answer.cursor;
    } catch (e) {
      status("poll failed: " + e.message + "; retrying");
      await sleep(1000 * (e.retryAfter || 1));
    }
  }
}

$("setup").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.api = $("api").value.trim().replace(/\/$/, "");
  state.token = $("token").value.trim();
  state.peer = $("peer").value.trim();
  state.me = userOf(state.token);
  state.cursor = null;
  state.running += 1;
  status("connecting");
  pollLoop(state.running);
});

$("compose").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const text = $("text").value;
  if (!text || !state.token) return;
  $("text").value = "";
  try {
    const sent = await call("POST", "/v1/messages", { message_id: uuid4(), to: state.peer, body: { text } });
    show(sent.message);
  } catch (e) {
    status("send failed: " + e.message);
  }
});

// Prefill from the fragment: #token=...&peer=...&api=... (never sent to a server).
const params = new URLSearchParams(location.hash.slice(1));
for (const key of ["api", "token", "peer"]) {
  if (params.get(key)) $(key).value = params.get(key);
}
if (params.get("token") && params.get("peer")) $("connect").click();
