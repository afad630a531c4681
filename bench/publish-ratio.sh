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
set -euo pipefail
herald=${1:-target/release/herald}
pairs=${2:-20}
shift $(($# < 2 ? $# : 2))
SECS=${SECS:-3}
SETTLE=${SETTLE:-1}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
nginx_port=${PORT:-18620}
herald_port=$((nginx_port + 1))
# shellcheck source=bench/lib-herald-wrk.sh
source "$(dirname "$0")/lib-herald-wrk.sh"
bench_setup
nginx_pid=""
trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null; [[ -n "$nginx_pid" ]] && kill "$nginx_pid" 2>/dev/null; rm -rf "$work"' EXIT

nginx_conf "$nginx_port"
taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
nginx_pid=$!
herald_start "$herald" "$herald_port" "$SERVER_CPU" "$@"
for _ in $(seq 100); do
    curl -fs -o /dev/null "http://127.0.0.1:$nginx_port/" && break
    sleep 0.1
done

# Requests answered per second of server CPU time in one run against PORT, whose
# server is the processes PID... (`wrk_run`, read SETTLE seconds after the run).
per_cpu_second() {
    local both
    both=$(wrk_run "$@")
    echo "${both#* }"
}

# nginx answers in its worker process, a child of the master.
read -ra nginx_pids <<<"$nginx_pid $(pgrep -P "$nginx_pid" || true)"
# Each side once, unmeasured: the first requests of a server cost more.
per_cpu_second "$nginx_port" "${nginx_pids[@]}" >/dev/null
per_cpu_second "$herald_port" "$pid" >/dev/null
ratios=()
for i in $(seq "$pairs"); do
    if ((i % 2)); then
        n=$(per_cpu_second "$nginx_port" "${nginx_pids[@]}")
        h=$(per_cpu_second "$herald_port" "$pid")
    else
        h=$(per_cpu_second "$herald_port" "$pid")
        n=$(per_cpu_second "$nginx_port" "${nginx_pids[@]}")
    fi
    ratio=$(python3 -c "print(f'{$h / $n:.3f}')")
    ratios+=("$ratio")
    printf 'pair %2d: nginx %s, herald %s requests per CPU second: %s\n' "$i" "$n" "$h" "$ratio"
done
python3 -c 'import statistics, sys
r = sorted(map(float, sys.argv[1:]))
q = statistics.quantiles(r, n=4) if len(r) > 1 else [r[0]] * 3
print(f"herald / nginx per CPU second over {len(r)} pairs: median {q[1]:.1%}, "
      f"quartiles {q[0]:.1%} - {q[2]:.1%}, range {r[0]:.1%} - {r[-1]:.1%}")' "${ratios[@]}"
