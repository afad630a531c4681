#!/usr/bin/env bash
# callgrind run like bench/publish-callgrind.sh, printing the batch-size histogram too
set -euo pipefail
herald=$1; port=${PORT:-18581}
work=$(mktemp -d)
valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
    "$herald" serve --listen-http 127.0.0.1:$port --data-dir "$work/data" \
    --log-level warn --visitor-subscription-limit 1000 \
    --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000 \
    --visitor-topic-creation-limit-burst 0 ${EXTRA:-} >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break; sleep 0.2; done
"$herald" bench --url http://127.0.0.1:$port --subscribers 64 --topics 64 \
    --publishers 16 --rate 0 --duration 10 --quiet --json "$work/run.json" >/dev/null
curl -s http://127.0.0.1:$port/metrics | grep -E "store_commit_batch_size_(sum|count)"
kill -INT "$server"; wait "$server" || true
published=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['publish']['published'])" "$work/run.json")
total=$(callgrind_annotate "$work/cg.out" | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
echo "publishes: $published  per publish: $((total / published))"
[[ -n "${KEEP:-}" ]] && cp "$work/cg.out" "$KEEP"
rm -rf "$work"
