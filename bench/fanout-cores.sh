#!/usr/bin/env bash
# herald's fan-out to one large topic with the server on one core and on two, beside
# the fan-out floor (`herald bench --floor`, one plain send per socket) on one core,
# all in one run: issue #19's "a hot topic uses every core".
#
#   bench/fanout-cores.sh [REPEAT] [SUBSCRIBERS] [RATE]     (defaults: 3 10000 1)
#
# Each repeat runs, each on a freshly started server: the floor on CPU 0, herald on
# CPU 0 (`taskset -c 0`: tokio starts one worker, the hub never shards), herald on
# CPUs 0,1 (`taskset -c 0,1`: two workers, a topic of 2,048+ subscribers is sent in
# two shards). The load generator (`herald bench`, one thread) is pinned to CPU 1 in
# every run, so with the server on 0,1 it shares CPU 1 with herald's second worker:
# a 2-core machine has no third core. Every run: 10 s window, WebSocket subscribers
# from 16 source addresses, 64-byte bodies. Raw reports go to
# bench/results/<date>-cores/runs.jsonl; the table (p50/p99 per run, and each herald
# p99 divided by the floor's of the same repeat) to stdout and summary.md there.
#
# LATENCY=kernel: the generator runs with `--rx-timestamps` (latency ends at the
# kernel's receive timestamp of each event's bytes, which on loopback is taken in
# the server's send) and at the lowest priority (`chrt -i 0`, SCHED_IDLE), so on
# CPU 1 the server's second worker always preempts it and the generator reads its
# events when the server is done: the server's fan-out, not the generator's reads,
# is what is timed. Default LATENCY=read: latency ends when the generator reads.
#
# Before each run it waits (up to QUIET_MAX s, default 60) for the host to be less
# than QUIET_PCT % busy (default 30), and records how busy it was.
#
# OUT=DIR puts the results elsewhere (default bench/results/<date>-cores, or
# <date>-cores-kernel with LATENCY=kernel); DURATION=S changes the 10 s window;
# BIN=PATH runs that herald binary instead of building one; FLOOR=0 leaves out the
# floor (at saturating rates it only falls behind: it never batches).
#
# Needs: Linux (taskset, chrt, /proc), cargo, python3, 2 CPUs, ulimit -n above SUBSCRIBERS.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPEAT=${1:-3}
SUBS=${2:-10000}
RATE=${3:-1}
PORT=${PORT:-18095}
QUIET_PCT=${QUIET_PCT:-30}
QUIET_MAX=${QUIET_MAX:-60}
DURATION=${DURATION:-10}
LATENCY=${LATENCY:-read}
GEN=(taskset -c 1)
GEN_ARGS=()
case $LATENCY in
    read) SUFFIX= ;;
    kernel) SUFFIX=-kernel; GEN+=(chrt -i 0); GEN_ARGS+=(--rx-timestamps) ;;
    *) echo "LATENCY must be read or kernel" >&2; exit 2 ;;
esac
OUT=${OUT:-"$ROOT/bench/results/$(date -u +%Y-%m-%d)-cores$SUFFIX"}
mkdir -p "$OUT"
: >"$OUT/runs.jsonl"
log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

if [[ -z ${BIN:-} ]]; then
    log "building herald (release)"
    cargo build --release --locked -p herald --manifest-path "$ROOT/Cargo.toml" >&2
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/herald"
fi
WORK=$(mktemp -d)
PID=
stop() { if [[ -n $PID ]]; then kill "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; PID=; fi; }
trap 'stop; rm -rf "$WORK"' EXIT

# The same limits as bench/compare.sh: lifted, but the limiter still runs.
LIMITS=(--visitor-subscription-limit 1000000 --global-topic-limit 1000000
    --visitor-request-limit-burst 1000000000 --visitor-message-daily-limit 4000000000
    --visitor-topic-creation-limit-burst 0)

busy() { # busy % of all CPUs over one second
    read -r _ a b c d e f g h _ </proc/stat; local t0=$((a+b+c+d+e+f+g+h)) i0=$((d+e))
    sleep 1
    read -r _ a b c d e f g h _ </proc/stat; local t1=$((a+b+c+d+e+f+g+h)) i1=$((d+e))
    echo $(( t1 > t0 ? 100 * ((t1 - t0) - (i1 - i0)) / (t1 - t0) : 0 ))
}

quiet() { # waits for a quiet host (at most QUIET_MAX s); prints the last busy %
    local b start=$SECONDS
    b=$(busy)
    while (( b >= QUIET_PCT && SECONDS - start < QUIET_MAX )); do b=$(busy); done
    echo "$b"
}

# one REPEAT NAME CPUS: start the server NAME (floor or herald) on CPUS, measure, stop.
one() {
    local rep=$1 name=$2 cpus=$3 host
    host=$(quiet)
    if [[ $name == floor ]]; then
        taskset -c "$cpus" "$BIN" bench --floor "127.0.0.1:$PORT" >"$WORK/server.log" 2>&1 &
    else
        rm -rf "$WORK/data"; mkdir -p "$WORK/data"
        taskset -c "$cpus" "$BIN" serve --listen-http "127.0.0.1:$PORT" --data-dir "$WORK/data" \
            "${LIMITS[@]}" --log-level warn >"$WORK/server.log" 2>&1 &
    fi
    PID=$!
    for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break; sleep 0.05; done
    sleep 0.5
    log "repeat $rep: $name on CPU $cpus (host ${host}% busy before)"
    if "${GEN[@]}" "$BIN" bench --url "http://127.0.0.1:$PORT" --subscribers "$SUBS" --rate "$RATE" \
        --duration "$DURATION" --src-ips 16 --server-pid "$PID" "${GEN_ARGS[@]}" \
        --quiet --json "$WORK/r.json" 2>"$WORK/err"; then
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(json.dumps({"repeat":int(sys.argv[2]),"server":sys.argv[3],"cpus":sys.argv[4],"host_busy_pct_before":int(sys.argv[5]),"report":r}))' \
            "$WORK/r.json" "$rep" "$name" "$cpus" "$host" >>"$OUT/runs.jsonl"
    else
        log "failed:"; cat "$WORK/err" >&2
    fi
    stop
}

for rep in $(seq 1 "$REPEAT"); do
    if [[ ${FLOOR:-1} != 0 ]]; then one "$rep" floor 0; fi
    one "$rep" herald 0
    one "$rep" herald 0,1
done

python3 - "$OUT/runs.jsonl" <<'PY' | tee "$OUT/summary.md"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def lat(r, q): return r["report"]["delivery"]["lat_us"][q] / 1000
print("| repeat | server | CPUs | delivered | deliveries/s | p50 ms | p99 ms | max ms | p99 ÷ floor p99 | srv cpu% | lg cpu% | latency to (unstamped) | host busy% before |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for rep in sorted({r["repeat"] for r in rows}):
    runs = [r for r in rows if r["repeat"] == rep]
    floor = next((r for r in runs if r["server"] == "floor"), None)
    for r in runs:
        d = r["report"]
        ratio = f'{lat(r, "p99") / lat(floor, "p99"):.2f}×' if floor else "–"
        srv = (d.get("server") or {}).get("cpu_pct", {}).get("publish")
        lg = d["loadgen"]["cpu_pct"].get("publish")
        dv = d["delivery"]
        to = dv.get("latency_to", "read")
        if "rx_unstamped" in dv:
            to += f' ({dv["rx_unstamped"]})'
        print(f'| {rep} | {r["server"]} | {r["cpus"]} | {dv["ratio"] * 100:.2f} % | {dv.get("per_s") or 0:.0f} | {lat(r, "p50"):.1f} | {lat(r, "p99"):.1f} | {lat(r, "max"):.1f} | {ratio} | {srv:.0f} | {lg:.0f} | {to} | {r["host_busy_pct_before"]} |')
PY
