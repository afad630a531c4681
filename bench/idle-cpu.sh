#!/usr/bin/env bash
# Server CPU spent on idle subscribers (keepalives included), per connection per second.
#
#   bench/idle-cpu.sh BINARY [CONNECTIONS] [HOLD_SECS] [extra herald serve args...]
#
# Starts herald pinned to CPU 0 (default keepalive-interval 45 s, as ntfy), opens
# CONNECTIONS idle WebSocket subscribers with `herald bench --publishers 0` on CPU 1,
# lets them settle, then reads the server's utime+stime from /proc over HOLD_SECS
# (default 90 s: two keepalive rounds) and prints µs of server CPU per connection
# per second.
set -euo pipefail
BIN=$1; CONNS=${2:-10000}; HOLD=${3:-90}; shift $(( $# < 3 ? $# : 3 ))
DATA=$(mktemp -d)
PORT=18097
taskset -c 0 "$BIN" serve --listen-http 127.0.0.1:$PORT --data-dir "$DATA" \
    --visitor-subscription-limit 1000000 --visitor-request-limit-burst 1000000000 \
    --visitor-topic-creation-limit-burst 0 --log-level warn "$@" >"$DATA/server.log" 2>&1 &
PID=$!
trap 'kill ${LG:-} $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DATA"' EXIT
sleep 1
# The generator holds the connections for settle + HOLD + margin seconds; its
# progress lines (stderr is a file: one every 5 s) say "publish" once all are open.
taskset -c 1 "$BIN" bench --url "http://127.0.0.1:$PORT" --subscribers "$CONNS" --src-ips 16 \
    --publishers 0 --duration $((HOLD + 20)) --json "$DATA/idle.json" 2>"$DATA/idle.err" &
LG=$!
# Wait until every connection is open (the loadgen says so on stderr), then settle.
for _ in $(seq 1 240); do grep -q "^publish" "$DATA/idle.err" 2>/dev/null && break; sleep 0.5; done
sleep 5
ticks() { awk '{print $14 + $15}' "/proc/$PID/stat"; }
HZ=$(getconf CLK_TCK)
t0=$(ticks); s0=$(date +%s.%N)
sleep "$HOLD"
t1=$(ticks); s1=$(date +%s.%N)
kill $LG 2>/dev/null || true
python3 - "$t0" "$t1" "$s0" "$s1" "$HZ" "$CONNS" <<'PY'
import json, sys
t0, t1, s0, s1, hz, conns = map(float, sys.argv[1:])
cpu = (t1 - t0) / hz
secs = s1 - s0
print(json.dumps({
    "connections": int(conns),
    "hold_secs": round(secs, 1),
    "server_cpu_secs": round(cpu, 3),
    "server_cpu_pct": round(100 * cpu / secs, 2),
    "us_per_connection_per_sec": round(cpu / secs / conns * 1e6, 3),
}))
PY
