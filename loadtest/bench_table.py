#!/usr/bin/env python3
"""Markdown tables of one loadtest/bench.sh run (its OUT_DIR of JSON files),
Carrier and Nchan side by side, as docs/benchmarks.md shows them."""
import json
import os
import sys

out = sys.argv[1]


def load(name):
    path = os.path.join(out, name + ".json")
    return json.load(open(path)) if os.path.exists(path) else None


def verdict(r):
    v = r["verdict"]
    if r["clean"]:
        word = "clean"
    else:
        word = "NOT clean"
    extra = []
    for key in ("lost_messages", "reordered", "copies_reordered", "corrupted", "gaps"):
        if v[key]:
            extra.append(f"{key.replace('_', ' ')} {v[key]}")
    if r["send_errors"]:
        extra.append(f"{r['send_errors']} send errors")
    return word + (" (" + ", ".join(extra) + ")" if extra else "")


print("| measurement | Carrier | Nchan | Carrier / Nchan |")
print("| --- | --- | --- | --- |")
for polls in (10000, 19000):
    c, n = load(f"idle-{polls}-carrier"), load(f"idle-{polls}-nchan")
    if c and n:
        ci, ni = c["idle"]["kib_per_poll"], n["idle"]["kib_per_poll"]
        print(f"| resident memory per parked poll, {polls:,} polls | {ci:.2f} KiB | {ni:.2f} KiB | {ci / ni:.2f} |")
print()
def cpu(r, key):
    v = (r.get("cpu") or {}).get(key)
    return f"{v:,.0f} µs" if v is not None else "-"


print("| chat, 10,000 users, 10 s | peer | achieved | p50 | p99 | p99.9 | max | server CPU / msg | tool CPU / msg | verdict |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
for rate in (1000, 5000, 10000, 20000):
    for peer in ("carrier", "nchan"):
        r = load(f"chat-{rate}-{peer}")
        if not r:
            continue
        d = r["delivery"]
        print(f"| R = {rate:,}/s | {peer} | {r['achieved_rate']:,.0f}/s | {d['p50_ms']:.2f} ms | {d['p99_ms']:.2f} ms "
              f"| {d['p999_ms']:.2f} ms | {d['max_ms']:.2f} ms | {cpu(r, 'server_us_per_message')} "
              f"| {cpu(r, 'tool_us_per_message')} | {verdict(r)} |")
print()
for peer in ("carrier", "nchan"):
    r = load(f"ramp-{peer}")
    if not r:
        continue
    steps = ", ".join(
        f"{s['rate']:,.0f}/s: p99 {s['delivery']['p99_ms']:.1f} ms"
        + (f", server {s['cpu']['server_us_per_message']:.0f} µs/msg" if (s.get('cpu') or {}).get('server_us_per_message') is not None else "")
        + ('' if s['held'] else ' (broke)') for s in r["steps"])
    held = r.get("highest_held_rate")
    print(f"- ramp, {peer}: highest rate that held **{held:,.0f}/s**" if held else f"- ramp, {peer}: no step held", end="")
    print(f" ({steps})")
print()
for peer in ("carrier", "nchan"):
    r = load(f"fanout-1000-{peer}")
    if not r:
        continue
    d = r["delivery"]
    print(f"- fanout to 1,000 members at 10 sends/s, {peer}: {r['achieved_rate']:.1f} sends/s acked, "
          f"{r['delivered_rate']:,.0f} deliveries/s, p50 {d['p50_ms']:.1f} ms, p99 {d['p99_ms']:.1f} ms, {verdict(r)}")
