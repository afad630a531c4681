#!/usr/bin/env bash
# Sustained durable publishing at saturation (issue #19; docs/BENCHMARKS.md, round 11):
# `wrk -t1 -c64` POSTs 64-byte bodies to one topic for SECS seconds (default 10), the
# server on SERVER_CPU (default 0), wrk on LOADGEN_CPU (default 1). Prints wrk's
# latency percentiles, the server's CPU time per request, the commits that took over
# 10 ms (`herald_store_commit_duration_seconds`) and, on SQLite, the WAL file's size
# at the end (its high-water mark: SQLite reuses the file from its start, it does
# not shrink it).
#
#   [STORE_ENGINE=sqlite|log] bench/publish-sustained.sh [path/to/herald] [LABEL] [PORT]
#
# Needs wrk on PATH (Debian: `apt-get install wrk`).
set -euo pipefail
bin=${1:-target/release/herald}
label=${2:-$bin}
port=${3:-18703}
engine=${STORE_ENGINE:-sqlite}
SECS=${SECS:-10}
# shellcheck source=bench/lib-herald-wrk.sh
source "$(dirname "$0")/lib-herald-wrk.sh"
bench_setup
herald_start "$bin" "$port" "${SERVER_CPU:-0}" --store-engine "$engine"
t0=$(awk '{print $14 + $15}' "/proc/$pid/stat")
out=$(taskset -c "${LOADGEN_CPU:-1}" wrk -t1 -c64 -d"${SECS}s" --latency -s "$work/post.lua" \
    "http://127.0.0.1:$port/bench")
t1=$(awk '{print $14 + $15}' "/proc/$pid/stat")
wal=$(stat -c %s "$work/data/messages.db-wal" 2>/dev/null || echo 0)
metrics=$(curl -s "http://127.0.0.1:$port/metrics" | grep herald_store_commit_duration_seconds || true)
kill -INT "$pid"
wait "$pid" || true
pid=""
python3 - "$label" "$engine" "$out" "$metrics" "$t0" "$t1" "$(getconf CLK_TCK)" "$wal" <<'PY'
import re, sys
label, engine, out, metrics = sys.argv[1:5]
t0, t1, hz, wal = map(float, sys.argv[5:9])
n = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.M))
top = re.search(r"Latency\s+\S+\s+\S+\s+(\S+)", out).group(1)
buckets = dict(re.findall(r'le="([^"]+)"\}\s+(\d+)', metrics))
total = re.search(r"_count\s+(\d+)", metrics)
slow = int(total.group(1)) - int(buckets.get("0.01", 0)) if total else "n/a"
cpu_us = (t1 - t0) / hz / n * 1e6
extra = f", WAL {wal / 1048576:.0f} MiB" if engine == "sqlite" else ""
print(f"{label} ({engine}): {rps:,.0f} req/s, p50 {pct.get('50')}, p99 {pct.get('99')}, "
      f"max {top}, server CPU {cpu_us:.2f} us/request, commits over 10 ms: {slow}{extra}")
PY
