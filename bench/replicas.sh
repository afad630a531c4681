#!/usr/bin/env bash
# The cost of `redis-min-replicas-acked` (docs/BENCHMARKS.md, "Acknowledged means
# replicated"): one node on a private Redis primary with one replica (both on
# loopback), publishes/s and publish p50/p99 with the option at 0 and at 1, in one
# run, alternating 0,1,0,1,... ROUNDS times so that machine noise hits both alike.
#
#   bench/replicas.sh [ROUNDS] [DURATION]        (defaults 3 5)
#
# Needs: redis-server on PATH. BIN=path/to/herald (default: a release build, built here).
# Results: bench/results/<date>/replicas-<acked>-<round>.json and a table on stdout.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUNDS=${1:-3}
DURATION=${2:-5}
OUT="$ROOT/bench/results/$(date -u +%Y-%m-%d)"
mkdir -p "$OUT"
if [[ -z "${BIN:-}" ]]; then
    cargo build --release --manifest-path "$ROOT/Cargo.toml"
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/herald"
fi
DATA=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$DATA"
}
trap cleanup EXIT

PRIMARY=18290
REPLICA=18291
redis-server --port $PRIMARY --bind 127.0.0.1 --save "" --appendonly no --dir "$DATA" \
    >"$DATA/primary.log" 2>&1 &
PIDS+=($!)
redis-server --port $REPLICA --bind 127.0.0.1 --save "" --appendonly no --dir "$DATA" \
    --replicaof 127.0.0.1 $PRIMARY >"$DATA/replica.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
    if redis-cli -p $REPLICA info replication 2>/dev/null | grep -q master_link_status:up; then break; fi
    sleep 0.1
done

COMMON=(--visitor-subscription-limit 1000000 --global-topic-limit 1000000 --log-level warn
    --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000
    --visitor-topic-creation-limit-burst 0 --redis-url "redis://127.0.0.1:$PRIMARY")

for round in $(seq 1 "$ROUNDS"); do
    for acked in 0 1; do
        port=$((18292 + acked))
        "$BIN" serve --listen-http "127.0.0.1:$port" --data-dir "$DATA/n$acked" "${COMMON[@]}" \
            --redis-key-prefix "bench:$round:$acked:" --redis-min-replicas-acked "$acked" \
            >"$DATA/n$acked.log" 2>&1 &
        pid=$!
        for _ in $(seq 1 100); do
            if curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1; then break; fi
            sleep 0.1
        done
        "$BIN" bench --url "http://127.0.0.1:$port" --subscribers 10 --topics 10 --publishers 16 \
            --transport ws --rate 0 --duration "$DURATION" --quiet \
            --json "$OUT/replicas-$acked-$round.json"
        kill "$pid"
        wait "$pid" 2>/dev/null || true
    done
done

python3 - "$OUT" "$ROUNDS" <<'PY'
import json, sys, pathlib, statistics
out, rounds = pathlib.Path(sys.argv[1]), int(sys.argv[2])
ms = lambda us: f"{us / 1000:.2f}"
print("| redis-min-replicas-acked | publishes/s (median of rounds) | publish p50 / p99 (median) | rounds: publishes/s |")
print("|---|---|---|---|")
for acked in (0, 1):
    runs = [json.loads((out / f"replicas-{acked}-{r}.json").read_text())["publish"] for r in range(1, rounds + 1)]
    per_s = [p["per_s"] for p in runs]
    p50 = statistics.median(p["lat_us"]["p50"] for p in runs)
    p99 = statistics.median(p["lat_us"]["p99"] for p in runs)
    print(f"| {acked} | {statistics.median(per_s):.0f} | {ms(p50)} / {ms(p99)} ms | "
          + ", ".join(f"{x:.0f}" for x in per_s) + " |")
PY
echo "results in $OUT"
