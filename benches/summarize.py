#!/usr/bin/env python3
"""Summarizes benches/compare.sh results: median and min-max over runs, side by side."""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]
runs = {}
for path in sorted(glob.glob(os.path.join(out, "*_*_*.json"))):
    name = os.path.basename(path)[:-5]
    scenario, server, _run = name.rsplit("_", 2)
    with open(path) as f:
        runs.setdefault((scenario, server), []).append(json.load(f))


def metrics(scenario, d):
    m = d.get("measured", {})
    if scenario.startswith("chat"):
        return {
            "deliveries/s": m["deliveries_per_s"],
            "server ns/delivery": m["server"]["cpu_ns_per_unit"],
            "server cores": m["server"]["cores"],
            "client cores": m["client"]["cores"],
        }
    if scenario.startswith("latency"):
        lat = d["latency"]
        return {
            "deliveries/s": m["deliveries_per_s"],
            "p50 µs": lat["p50_ns"] / 1e3,
            "p99 µs": lat["p99_ns"] / 1e3,
            "p99.9 µs": lat["p999_ns"] / 1e3,
            "max µs": lat["max_ns"] / 1e3,
            "server ns/delivery": m["server"]["cpu_ns_per_unit"],
        }
    if scenario.startswith("connections"):
        return {
            "held": d["held"],
            "server RSS bytes/conn": d["server_rss_per_connection_bytes"],
        }
    if scenario.startswith("storm"):
        return {
            "connections/s": d["connections_per_s"],
            "auth p50 ms": d["auth"]["p50_ns"] / 1e6,
            "auth p99 ms": d["auth"]["p99_ns"] / 1e6,
        }
    return {}


def fmt(values):
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    def f(x):
        return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}"
    return f"{f(med)} ({f(lo)}–{f(hi)})"


ORDER = ["chat_w1", "chat_w16", "chat_rounds", "latency_100k", "connections_15k", "storm_5k"]
scenarios = sorted({s for s, _ in runs}, key=lambda s: ORDER.index(s) if s in ORDER else 99)
print("Median (min–max) over runs; socket-server vs the Bun peer in the same run.\n")
for scenario in scenarios:
    ss = [metrics(scenario, d) for d in runs.get((scenario, "socket-server"), [])]
    bun = [metrics(scenario, d) for d in runs.get((scenario, "bun"), [])]
    if not ss or not bun:
        continue
    print(f"### {scenario} ({len(ss)} runs each)\n")
    print("| metric | socket-server | Bun peer | ratio (ss / bun, medians) |")
    print("|---|---|---|---|")
    for key in ss[0]:
        a = [x[key] for x in ss]
        b = [x[key] for x in bun]
        ratio = statistics.median(a) / statistics.median(b) if statistics.median(b) else float("nan")
        print(f"| {key} | {fmt(a)} | {fmt(b)} | {ratio:.2f} |")
    print()
