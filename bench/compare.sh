#!/usr/bin/env bash
# Reproduces the figures of docs/BENCHMARKS.md: herald and nats-server measured side
# by side with ../shared/bench (server on CPU 0, load generator on CPU 1), plus the
# herald-only figures (other transports, slow subscribers, idle CPU, start-up).
#
#   bench/compare.sh [REPEAT]        (default 1; the published table used 1)
#
# Needs: ../shared/bench (the load generator and nats-server runner), Python 3,
# a quiet machine (bench-matrix.sh waits for one and flags noisy runs). Takes about
# 25 minutes with REPEAT=1. Results: bench/results/<date>/*.jsonl and summary.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${SHARED_BENCH:-$ROOT/../shared/bench}"
REPEAT=${1:-1}
OUT="$ROOT/bench/results/$(date -u +%Y-%m-%d)"
mkdir -p "$OUT"

cargo build --release --manifest-path "$ROOT/Cargo.toml"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/herald"
DATA=$(mktemp -d)
trap 'rm -rf "$DATA"' EXIT

# Benchmark settings: limits that exist to protect a public server are lifted (the
# load generator opens up to 19,000 connections from 16 source addresses) but stay
# in force (the rate limiter still runs on every request; it just never refuses),
# and the per-request access log is off (as nats-server logs nothing per message).
# connection-limit is left at `auto` (the descriptor limit less 256).
LIMITS="--visitor-subscription-limit 1000000 --global-topic-limit 1000000 \
--visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 \
--visitor-topic-creation-limit-burst 0"
export TARGET_CMD="$BIN serve --listen-http 127.0.0.1:18095 --data-dir $DATA \
$LIMITS --log-level warn"
export TARGET_URL=http://127.0.0.1:18095 TARGET_NAME=herald

# Side by side with nats-server (WebSocket subscribers).
"$SHARED/bench-matrix.sh" -r "$REPEAT" -o "$OUT/matrix.jsonl" nats,cmd -- \
    "idle 10000" "idle 19000" \
    "fanout 10000 --rate 1 --duration 10" \
    "fanout 10000 --rate 10 --duration 10" \
    "fanout 10000 --rate 100 --duration 10" \
    "publish 1000 --publishers 16 --duration 10"

# herald only: the other transports, and publish latency at a fixed 10,000/s.
"$SHARED/bench-matrix.sh" -r "$REPEAT" -o "$OUT/herald-only.jsonl" cmd -- \
    "idle 10000 --proto sse" "idle 10000 --proto json" \
    "fanout 1000 --rate 10 --duration 10 --proto ws,sse,json --validate" \
    "fanout 1 --rate 10000 --duration 10 --publishers 16"

python3 "$SHARED/summarize.py" "$OUT/matrix.jsonl" "$OUT/herald-only.jsonl" > "$OUT/summary.md"

# Subscribers that never read: memory stays bounded, they are cut off.
taskset -c 0 "$BIN" serve --listen-http 127.0.0.1:18096 --data-dir "$DATA/slow" \
    $LIMITS --message-size-limit 8k --log-level warn \
    >"$OUT/slow-server.log" 2>&1 &
PID=$!
sleep 1
taskset -c 1 python3 "$ROOT/bench/slow-subscribers.py" --url http://127.0.0.1:18096 --pid "$PID" \
    -n 1000 -m 3000 -s 3000 | tee "$OUT/slow-subscribers.json"
kill "$PID"; wait "$PID" 2>/dev/null || true

# Idle CPU with keepalives, and start-up / idle RSS.
"$ROOT/bench/idle-cpu.sh" "$BIN" 10000 90 | tee "$OUT/idle-cpu.json"
"$ROOT/bench/startup.sh" "$BIN" 20 | tee "$OUT/startup.txt"
echo "results in $OUT"
