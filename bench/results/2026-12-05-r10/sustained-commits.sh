#!/usr/bin/env bash
# Sustained durable publishing on SQLite to one topic (round 10): 10 s of wrk -t1 -c64,
# server on CPU 0, wrk on CPU 1; prints wrk's latency percentiles, the commits that
# took over 10 ms (herald_store_commit_duration_seconds), the WAL's size at the end
# and the server's CPU time per request.
#   bench/results/2026-12-05-r10/sustained-commits.sh BIN LABEL [PORT]
bin=$1; label=$2; port=${3:-18703}
d=$(mktemp -d)
taskset -c 0 "$bin" serve --listen-http 127.0.0.1:$port --data-dir $d --log-level warn --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 > $d/log 2>&1 &
pid=$!
for _ in $(seq 50); do curl -fs http://127.0.0.1:$port/healthz >/dev/null && break; sleep 0.1; done
t0=$(awk '{print $14+$15}' /proc/$pid/stat)
out=$(taskset -c 1 wrk -t1 -c64 -d10s --latency -s "$(dirname "$0")/post.lua" http://127.0.0.1:$port/bench)
t1=$(awk '{print $14+$15}' /proc/$pid/stat)
wal=$(stat -c %s $d/messages.db-wal)
m=$(curl -s http://127.0.0.1:$port/metrics | grep herald_store_commit_duration_seconds)
kill -INT $pid; wait $pid
n=$(echo "$out" | awk '/requests in/{print $1}')
slow=$(echo "$m" | awk -F'[ }"]' '/le="0.01"/{a=$NF} /_count/{c=$NF} END{print c-a}')
lat=$(echo "$out" | awk '/Requests\/sec/{r=$2} / 50%/{p50=$2} / 99%/{p99=$2} /Latency  /{mx=$4} END{printf "%d req/s, p50 %s, p99 %s, max %s", r, p50, p99, mx}')
echo "$label: $lat, server CPU $(python3 -c "print(round(($t1-$t0)/100/$n*1e6,2))") us/request, commits over 10 ms: $slow, WAL $((wal/1048576)) MiB"
rm -rf $d
