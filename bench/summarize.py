#!/usr/bin/env python3
"""Markdown tables from bench/compare.sh's JSON lines (median over repeats).

  bench/summarize.py results/<date>/matrix.jsonl [more.jsonl ...] > summary.md

Each line is {"server", "version", "scenario", "args", "host_busy_pct_before",
"report"}, where "report" is `herald bench`'s JSON report with --server-pid. Rows are
grouped by (server, scenario) in the order first seen; every figure is the median of
its runs. Derived figures:

- idle: bytes per subscriber = (server RSS at the end of the idle hold - RSS before
  the first connection) / established subscribers.
- fanout / publish: server CPU per delivery = server CPU (% of one core, over the
  publishing window) / deliveries per second.
"""
import json
import statistics
import sys


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, digits=0, suffix=""):
    if v is None:
        return "–"
    return f"{v:,.{digits}f}{suffix}"


def ms(us):
    return None if us is None else us / 1000


def get(d, *path):
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def idle_bytes(r):
    before = get(r, "server", "rss_kib", "before")
    after = get(r, "server", "rss_kib", "after_publish")
    n = get(r, "connections", "established")
    if before is None or after is None or not n:
        return None
    return (after - before) * 1024 / n


def cpu_per_delivery_us(r):
    cpu = get(r, "server", "cpu_pct", "publish")
    rate = get(r, "delivery", "per_s")
    if cpu is None or not rate:
        return None
    return cpu / 100 / rate * 1e6


def ratio_pct(r):
    ratio = get(r, "delivery", "ratio")
    return None if ratio is None else ratio * 100


def flags(runs):
    out = ""
    if any(get(r, "loadgen", "saturated") for r in runs):
        out += "S"
    if any(get(r, "connections", "failed") or get(r, "connections", "dropped") for r in runs):
        out += "F"
    return out


def main(paths):
    groups = {}
    for path in paths:
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    key = (row["server"], row["scenario"])
                    groups.setdefault(key, {"row": row, "runs": [], "busy": []})
                    groups[key]["runs"].append(row["report"])
                    groups[key]["busy"].append(row.get("host_busy_pct_before"))

    def label(g):
        row = g["row"]
        if row["server"] == "floor":
            return "floor (send loop)"
        name = "herald" if row["server"] == "herald" else row["version"].replace("nats-server: ", "nats-server ")
        return name

    def m(g, fn):
        return median([fn(r) for r in g["runs"]])

    idle = [g for g in groups.values() if get(g["row"], "report", "config", "mode") == "idle"]
    fanout = [g for g in groups.values() if get(g["row"], "report", "config", "mode") == "open-loop"]
    publish = [g for g in groups.values() if get(g["row"], "report", "config", "mode") == "closed-loop"]

    print("### idle (median of runs)\n")
    print("| server | scenario | runs | subscribers | failed | opens/s | RSS before MiB | RSS after hold MiB | bytes/subscriber | srv cpu% (open) | lg cpu% (open) | host busy% before | flags |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for g in idle:
        print("| " + " | ".join([
            label(g), f"`{g['row']['scenario']}`", str(len(g["runs"])),
            fmt(m(g, lambda r: get(r, "connections", "established"))),
            fmt(m(g, lambda r: get(r, "connections", "failed"))),
            fmt(m(g, lambda r: get(r, "connections", "opens_per_s"))),
            fmt(m(g, lambda r: (get(r, "server", "rss_kib", "before") or 0) / 1024), 1),
            fmt(m(g, lambda r: (get(r, "server", "rss_kib", "after_publish") or 0) / 1024), 1),
            fmt(m(g, idle_bytes)),
            fmt(m(g, lambda r: get(r, "server", "cpu_pct", "connect")), 1),
            fmt(m(g, lambda r: get(r, "loadgen", "cpu_pct", "connect")), 1),
            fmt(median(g["busy"])), flags(g["runs"]),
        ]) + " |")

    print("\n### fanout (median of runs)\n")
    print("| server | scenario | runs | subscribers | publishes/s | delivered | deliv/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | srv cpu% | µs srv CPU/delivery | lg cpu% | host busy% before | flags |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for g in fanout:
        lat = lambda q: m(g, lambda r: ms(get(r, "delivery", "lat_us", q)))
        print("| " + " | ".join([
            label(g), f"`{g['row']['scenario']}`", str(len(g["runs"])),
            fmt(m(g, lambda r: get(r, "connections", "established"))),
            fmt(m(g, lambda r: get(r, "publish", "per_s")), 1),
            fmt(m(g, ratio_pct), 2, " %"),
            fmt(m(g, lambda r: get(r, "delivery", "per_s"))),
            fmt(lat("p50"), 2), fmt(lat("p90"), 2), fmt(lat("p99"), 2),
            fmt(lat("p99_9"), 2), fmt(lat("max"), 2),
            fmt(m(g, lambda r: get(r, "server", "cpu_pct", "publish")), 1),
            fmt(m(g, cpu_per_delivery_us), 1),
            fmt(m(g, lambda r: get(r, "loadgen", "cpu_pct", "publish")), 1),
            fmt(median(g["busy"])), flags(g["runs"]),
        ]) + " |")

    floors = {g["row"]["scenario"]: g for g in fanout if g["row"]["server"] == "floor"}
    if floors:
        print("\n### fanout: herald against the floor of the same run (median of runs)\n")
        print("| scenario | herald p50 ms | floor p50 ms | herald p99 ms | floor p99 ms | p99 herald ÷ floor | nats p99 ms |")
        print("|---|---|---|---|---|---|---|")
        for g in fanout:
            if g["row"]["server"] != "herald" or g["row"]["scenario"] not in floors:
                continue
            name = g["row"]["scenario"]
            f = floors[name]
            nats = [n for n in fanout if n["row"]["server"] == "nats" and n["row"]["scenario"] == name]
            p = lambda grp, q: m(grp, lambda r: ms(get(r, "delivery", "lat_us", q)))
            hp99, fp99 = p(g, "p99"), p(f, "p99")
            print("| " + " | ".join([
                f"`{name}`", fmt(p(g, "p50"), 2), fmt(p(f, "p50"), 2), fmt(hp99, 2), fmt(fp99, 2),
                fmt(hp99 / fp99 if hp99 and fp99 else None, 2, "×"),
                fmt(p(nats[0], "p99"), 2) if nats else "–",
            ]) + " |")

    print("\n### publish (median of runs)\n")
    print("| server | scenario | runs | publishers | topics | publish/s | pub p50 ms | pub p99 ms | pub p99.9 ms | deliv p99 ms | delivered | srv cpu% | lg cpu% | host busy% before | flags |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for g in publish:
        print("| " + " | ".join([
            label(g), f"`{g['row']['scenario']}`", str(len(g["runs"])),
            fmt(m(g, lambda r: get(r, "config", "publishers"))),
            fmt(m(g, lambda r: get(r, "config", "topics"))),
            fmt(m(g, lambda r: get(r, "publish", "per_s"))),
            fmt(m(g, lambda r: ms(get(r, "publish", "lat_us", "p50"))), 2),
            fmt(m(g, lambda r: ms(get(r, "publish", "lat_us", "p99"))), 2),
            fmt(m(g, lambda r: ms(get(r, "publish", "lat_us", "p99_9"))), 2),
            fmt(m(g, lambda r: ms(get(r, "delivery", "lat_us", "p99"))), 2),
            fmt(m(g, ratio_pct), 2, " %"),
            fmt(m(g, lambda r: get(r, "server", "cpu_pct", "publish")), 1),
            fmt(m(g, lambda r: get(r, "loadgen", "cpu_pct", "publish")), 1),
            fmt(median(g["busy"])), flags(g["runs"]),
        ]) + " |")

    print("\nFlags: S = the load generator used >= 90 % of its core in some run (a figure may be")
    print("its limit, not the server's); F = failed or dropped connections. A publish counts")
    print("when acknowledged: the POST's response (ntfy), the PONG after PUB + PING (NATS).")


if __name__ == "__main__":
    main(sys.argv[1:])
