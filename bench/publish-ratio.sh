#!/usr/bin/env bash
# Item 1's ratio of issue #19 (durable publishes per second of server CPU time against
# nginx's `return 200`), measured in adjacent pairs, for a host whose load changes.
#
#   bench/publish-ratio.sh [path/to/release/herald] [PAIRS] [serve args...]
#
# bench/publish-nginx.sh restarts a server for every figure and measures nginx once a
# round, ~80 s before some of the herald figures it is compared with; on a shared host
# the load of the other guests changes within that time, and its rounds differ by more
# than a change of a few per cent. Here nginx and herald (durable on SQLite, `--log-level
# warn`, plus any serve args, e.g. `--store-engine log`) both stay up, pinned to
# SERVER_CPU (default 0), and short runs of `wrk -t1 -c64` (SECS, default 3, POSTing
# 64-byte bodies to one topic from LOADGEN_CPU, default 1) alternate between them in the
# order nginx, herald, herald, nginx, ...: each pair is two runs next to each other, and
# the order swaps so that a trend in the host's load does not favour either side (a
# busier host still lowers the ratio itself: docs/BENCHMARKS.md, round 14). Each
# run's CPU time is read after a pause (SETTLE, default 1 s) that lets the writer and
# the checkpointer finish what the run left them. Prints every pair's ratio, then their
# median and quartiles. The store keeps every message: 20 pairs at 100,000 publishes/s
# write ~6 million rows, a few GB of disk. Needs nginx and wrk (Debian: `apt-get
# install nginx-light wrk`).
#
# REFERENCE=herald-warn compares herald with herald instead (item 1's access-log
# target): the reference is the same binary with the same serve args at `--log-level
# warn` (on PORT, its data apart), and the measured one runs at LOG_LEVEL (set it to
# `info`, the default level, whose access log then goes to a file as a deployment's
# would); 1 - the ratio is what that level costs (docs/BENCHMARKS.md, round 15):
#
#   REFERENCE=herald-warn LOG_LEVEL=info bench/publish-ratio.sh BIN 20
set -euo pipefail
herald=${1:-target/release/herald}
pairs=${2:-20}
shift $(($# < 2 ? $# : 2))
SECS=${SECS:-3}
SETTLE=${SETTLE:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
ref_port=${PORT:-18620}
herald_port=$((ref_port + 1))
# shellcheck source=bench/lib-herald-wrk.sh
source "$(dirname "$0")/lib-herald-wrk.sh"
bench_setup
REFERENCE=${REFERENCE:-nginx}
ref_pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; [[ -n "$ref_pid" ]] && kill "$ref_pid" 2>/dev/null; rm -rf "$work"' EXIT

case $REFERENCE in
nginx)
    ref_name=nginx
    nginx_conf "$ref_port"
    taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
    ref_pid=$!
    wait_http "http://127.0.0.1:$ref_port/" || { echo "nginx did not come up" >&2; exit 1; }
    # nginx answers in its worker process, a child of the master.
    read -ra ref_pids <<<"$ref_pid $(pgrep -P "$ref_pid" || true)"
    ;;
herald-warn)
    ref_name="herald (warn)"
    LOG_LEVEL=warn HERALD_DATA="$work/reference-data" HERALD_LOG="$work/reference.log" \
        herald_start "$herald" "$ref_port" "$SERVER_CPU" "$@"
    ref_pid=$pid
    ref_pids=("$ref_pid")
    ;;
*)
    echo "REFERENCE is nginx or herald-warn, not $REFERENCE" >&2
    exit 2
    ;;
esac
herald_start "$herald" "$herald_port" "$SERVER_CPU" "$@"
herald_name="herald (${LOG_LEVEL:-warn})"

# Requests answered per second of server CPU time in one run against PORT, whose
# server is the processes PID... (`wrk_run`, read SETTLE seconds after the run).
per_cpu_second() {
    local both
    both=$(wrk_run "$@")
    echo "${both#* }"
}

# Each side once, unmeasured: the first requests of a server cost more.
per_cpu_second "$ref_port" "${ref_pids[@]}" >/dev/null
per_cpu_second "$herald_port" "$pid" >/dev/null
ratios=()
for i in $(seq "$pairs"); do
    if ((i % 2)); then
        r=$(per_cpu_second "$ref_port" "${ref_pids[@]}")
        h=$(per_cpu_second "$herald_port" "$pid")
    else
        h=$(per_cpu_second "$herald_port" "$pid")
        r=$(per_cpu_second "$ref_port" "${ref_pids[@]}")
    fi
    ratio=$(python3 -c "print(f'{$h / $r:.3f}')")
    ratios+=("$ratio")
    printf 'pair %2d: %s %s, %s %s requests per CPU second: %s\n' \
        "$i" "$ref_name" "$r" "$herald_name" "$h" "$ratio"
done
python3 -c 'import statistics, sys
measured, reference, *r = sys.argv[1:]
r = sorted(map(float, r))
q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
print(f"{measured} / {reference} per CPU second over {len(r)} pairs: median {q[1]:.1%}, "
      f"quartiles {q[0]:.1%} - {q[2]:.1%}, range {r[0]:.1%} - {r[-1]:.1%}")' \
    "$herald_name" "$ref_name" "${ratios[@]}"
