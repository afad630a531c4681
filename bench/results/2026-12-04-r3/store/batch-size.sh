#!/usr/bin/env bash
# batch.sh BIN [SECS] [CONNS]: durable herald pinned to CPU 0, wrk on CPU 1; prints rps, cpu-rps and mean commit batch
set -euo pipefail
bin=$1; secs=${2:-8}; conns=${3:-64}
work=$(mktemp -d); port=18611
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 64)
LUA
taskset -c 0 "$bin" serve --listen-http "127.0.0.1:$port" --data-dir "$work/data" --log-level warn \
  --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -s -o /dev/null -X POST -d x "http://127.0.0.1:$port/warmup" && break; sleep 0.1; done
m0=$(curl -s "http://127.0.0.1:$port/metrics" | grep "^herald_store_commit_batch_size_\(sum\|count\)" | awk '{print $2}' | tr '\n' ' ')
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
out=$(taskset -c 1 wrk -t1 -c$conns -d${secs}s -s "$work/post.lua" "http://127.0.0.1:$port/bench")
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
m1=$(curl -s "http://127.0.0.1:$port/metrics" | grep "^herald_store_commit_batch_size_\(sum\|count\)" | awk '{print $2}' | tr '\n' ' ')
kill -INT $pid; wait $pid || true
python3 - "$out" "$t0" "$t1" "$m0" "$m1" <<'PY'
import re, sys
out, t0, t1, m0, m1 = sys.argv[1:]
total = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
s0, c0 = map(float, m0.split()); s1, c1 = map(float, m1.split())
print(f"rps {rps:.0f} per-cpu-s {total/((float(t1)-float(t0))/100):.0f} commits {c1-c0:.0f} mean-batch {(s1-s0)/max(c1-c0,1):.2f}")
PY
rm -rf "$work"
