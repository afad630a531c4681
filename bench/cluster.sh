#!/usr/bin/env bash
# Cluster figures of docs/BENCHMARKS.md ("Horizontal scaling on Redis"): publish
# throughput and delivery latency for
#   1. one node on the embedded store,
#   2. one node on Redis,
#   3. three nodes on one Redis (subscribers and publishers spread over the nodes, so
#      most deliveries cross nodes),
# each measured twice with `herald bench`: closed loop (throughput), then a fixed rate
# (latency not inflated by queueing).
#
#   bench/cluster.sh [SUBSCRIBERS] [DURATION] [RATE]     (defaults 100 10 2000)
#
# Needs: redis-server on 127.0.0.1:6379 (keys under a fresh prefix, deleted at the end),
# a release build (built here). Results: bench/results/<date>/cluster-*.json.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUBS=${1:-100}
DURATION=${2:-10}
RATE=${3:-2000}
OUT="$ROOT/bench/results/$(date -u +%Y-%m-%d)"
mkdir -p "$OUT"

cargo build --release --manifest-path "$ROOT/Cargo.toml"
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/herald"
DATA=$(mktemp -d)
PREFIX="herald-bench:$(date +%s):"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "${PREFIX}*" \
        | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

COMMON=(--visitor-subscription-limit 1000000 --global-topic-limit 1000000 --log-level warn
    --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000
    --visitor-topic-creation-limit-burst 0)

# start_node NAME PORT [extra args...]: starts a node and waits for /readyz.
start_node() {
    local name=$1 port=$2
    shift 2
    "$BIN" serve --listen-http "127.0.0.1:$port" --data-dir "$DATA/$name" "${COMMON[@]}" "$@" \
        >"$DATA/$name.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do
        if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then return; fi
        sleep 0.1
    done
    echo "node $name did not become ready" >&2
    cat "$DATA/$name.log" >&2
    exit 1
}

stop_nodes() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

# run NAME URLS: closed-loop throughput, then latency at a fixed rate.
run() {
    local name=$1 urls=$2
    "$BIN" bench --url "$urls" --subscribers "$SUBS" --topics 10 --publishers 16 \
        --transport ws --rate 0 --duration "$DURATION" --quiet \
        --json "$OUT/cluster-$name-throughput.json"
    "$BIN" bench --url "$urls" --subscribers "$SUBS" --topics 10 --publishers 16 \
        --transport ws --rate "$RATE" --duration "$DURATION" --quiet \
        --json "$OUT/cluster-$name-latency.json"
}

start_node embedded 18191
run 1-node-embedded http://127.0.0.1:18191
stop_nodes

REDIS=(--redis-url redis://127.0.0.1:6379 --redis-key-prefix "${PREFIX}one:")
start_node redis1 18192 "${REDIS[@]}"
run 1-node-redis http://127.0.0.1:18192
stop_nodes

REDIS=(--redis-url redis://127.0.0.1:6379 --redis-key-prefix "${PREFIX}three:")
start_node n1 18193 "${REDIS[@]}"
start_node n2 18194 "${REDIS[@]}"
start_node n3 18195 "${REDIS[@]}"
run 3-nodes-redis http://127.0.0.1:18193,http://127.0.0.1:18194,http://127.0.0.1:18195
stop_nodes

python3 - "$OUT" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
ms = lambda us: f"{us / 1000:.2f}"
print("| setup | publishes/s (closed loop, 16 publishers) | publish p50 / p99 | deliveries/s | "
      "delivery p50 / p99 at the fixed rate | delivered / duplicates / out of order |")
print("|---|---|---|---|---|---|")
for name in ["1-node-embedded", "1-node-redis", "3-nodes-redis"]:
    t = json.loads((out / f"cluster-{name}-throughput.json").read_text())
    l = json.loads((out / f"cluster-{name}-latency.json").read_text())
    tp, td, ld = t["publish"], t["delivery"], l["delivery"]
    print(f"| {name} | {tp['per_s']:.0f} | {ms(tp['lat_us']['p50'])} / {ms(tp['lat_us']['p99'])} ms "
          f"| {td['per_s']:.0f} | {ms(ld['lat_us']['p50'])} / {ms(ld['lat_us']['p99'])} ms "
          f"| {ld['ratio'] * 100:.1f} % / {ld['duplicates']} / {ld['out_of_order']} |")
EOF
echo "results in $OUT"
