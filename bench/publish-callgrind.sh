#!/usr/bin/env bash
# Server instructions per publish, counted by callgrind (repeatable on a busy host:
# instructions, not seconds). Runs `herald serve` under valgrind, drives it with
# `herald bench` (64 topics, one subscriber each, 16 publishers, 10 s), and prints
# the total instructions of the server process divided by the publishes it answered.
#
#   bench/publish-callgrind.sh [path/to/release/herald]
#
# LOG_LEVEL (default warn) sets the server's --log-level (info: the access log on,
# written to a file); STORE_ENGINE (default sqlite) the --store-engine (`log`: the
# append-only log store); KEEP_CALLGRIND=FILE keeps callgrind's output for callgrind_annotate;
# LOADGEN=path/to/herald runs `herald bench` from that binary (default: the server's),
# for a server built without it (the shipped `dist` binary).
#
# It also prints the store's operations per commit (`herald_store_commit_batch_size`):
# a commit's cost is shared by the publishes it holds, and how many it holds depends on
# how fast valgrind's server runs against its load, so on a busier host (or with a
# second run beside it) commits grow and SQLite's figure falls. Compare figures at
# similar commit sizes.
set -euo pipefail
herald=${1:-target/release/herald}
loadgen=${LOADGEN:-$herald}
work=$(mktemp -d)
trap 'pkill -INT -f "callgrind.*$work" 2>/dev/null || true; [[ -n "${KEEP_CALLGRIND:-}" ]] && cp "$work/cg.out" "$KEEP_CALLGRIND"; rm -rf "$work"' EXIT
port=${PORT:-18555}  # PORT=...: another port, for runs side by side
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$herald" serve --listen-http 127.0.0.1:$port --data-dir "$work/data" \
    --log-level "${LOG_LEVEL:-warn}" --store-engine "${STORE_ENGINE:-sqlite}" \
    --visitor-subscription-limit 1000 \
    --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 \
    --visitor-topic-creation-limit-burst 0 >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.2
done
"$loadgen" bench --url http://127.0.0.1:$port --subscribers 64 --topics 64 \
    --publishers 16 --rate 0 --duration 10 --quiet --json "$work/run.json" >/dev/null
batches=$(curl -fs "http://127.0.0.1:$port/metrics" |
    awk '/^herald_store_commit_batch_size_sum/{s=$2} /^herald_store_commit_batch_size_count/{c=$2} END{if (c > 0) printf "%.1f", s / c; else print "-"}' || true)
kill -INT "$server"
wait "$server" || true
published=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['publish']['published'])" "$work/run.json")
total=$(callgrind_annotate "$work/cg.out" | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "publishes: $published"
echo "server instructions: $total"
echo "instructions per publish: $((total / published))"
echo "operations per commit: $batches"
