#!/usr/bin/env bash
# How long a client resuming with `since=<id>` waits on a busy topic of the log store,
# and how long publishes wait meanwhile (issue #19: the log store's reads hold its
# index's read lock, which the writer needs after every write).
#
#   bench/history-resume.sh [path/to/release/herald] [FILL_SECONDS] [path/to/other/herald]
#
# Starts `herald serve --store-engine log`, fills topic `big` for FILL_SECONDS
# (default 12: about a million messages here) with wrk (`/metrics` counts them),
# takes the newest ID as the marker, publishes 5 more,
# then times 20 polls `GET /big/json?poll=1&since=<marker>` (5 messages each) with
# curl, and prints the median and the slowest. With a second binary, the same for it.
# STORE_ENGINE=sqlite measures the SQLite store instead. Needs wrk (Debian: `apt-get install wrk`).
set -euo pipefail
herald=${1:-target/release/herald}
fill=${2:-12}
other=${3:-}
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
work=$(mktemp -d)
pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; rm -rf "$work"' EXIT
port=18640
base="http://127.0.0.1:$port"

cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = string.rep("x", 64)
LUA

run() {
    local bin=$1
    rm -rf "$work/data"
    "$bin" serve --listen-http "127.0.0.1:$port" --data-dir "$work/data" --log-level warn \
        --store-engine "${STORE_ENGINE:-log}" --visitor-request-limit-burst 1000000000 \
        --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 \
        >"$work/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do curl -fs "$base/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
    wrk -t2 -c64 -d"${fill}s" -s "$work/post.lua" "$base/big" >/dev/null
    local marker
    marker=$(curl -fs "$base/big/json?poll=1&since=latest" | python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["id"])')
    for n in 1 2 3 4 5; do curl -fs -d "after $n" "$base/big" >/dev/null; done
    local stored
    stored=$(curl -fs "$base/metrics" | awk '/^herald_store_messages /{print $2}')
    local times=()
    for _ in $(seq 20); do
        local got t
        t=$(curl -fs -o "$work/poll" -w '%{time_total}' "$base/big/json?poll=1&since=$marker")
        got=$(wc -l <"$work/poll")
        [[ $got == 5 ]] || { echo "expected 5 messages after the marker, got $got" >&2; exit 1; }
        times+=("$t")
    done
    python3 - "$bin" "$stored" "${times[@]}" <<'PY'
import statistics, sys
bin, stored, *t = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
print(f"{bin}: {stored} messages in topic big; poll since=<id> (5 after it): "
      f"median {statistics.median(t) * 1000:.2f} ms, slowest {max(t) * 1000:.2f} ms")
PY
    kill -INT "$pid"
    wait "$pid" || true
    pid=""
}

run "$herald"
[[ -n "$other" ]] && run "$other"
exit 0
