#!/usr/bin/env bash
# Publishes/s with no subscribers, side by side with nginx answering `return 200` on the
# same core, with the same load tool, in the same run (issue #19, "Publish path").
#
#   bench/publish-nginx.sh [path/to/release/herald] [ROUNDS] [path/to/other/herald]
#
# With a second binary (e.g. a build of the previous commit), each round also runs
# its three herald servers, right after the first binary's, against the same nginx figure.
# Needs nginx and wrk on PATH (Debian: `apt-get install nginx-light wrk`). Each round
# starts, in turn, nginx, herald without a store (`--cache-duration 0`), herald durable
# at `--log-level warn`, herald durable at the default log level (`info`, the
# per-request access log on, written to a file as a deployment would), and herald
# durable on the log store (`--store-engine log`, at `warn`), each pinned to
# SERVER_CPU (default 0), and drives each with
# `wrk -t1 -c64 -d${SECS}s` on LOADGEN_CPU (default 1) POSTing 64-byte bodies to one topic.
# Prints, per round and binary, requests/s and requests per second of server CPU time,
# with the ratios to the nginx figure of that round.
set -euo pipefail
herald=${1:-target/release/herald}
rounds=${2:-3}
other=${3:-}
SECS=${SECS:-10}
SERVER_CPU=${SERVER_CPU:-0}
LOADGEN_CPU=${LOADGEN_CPU:-1}
CONNS=${CONNS:-64}
port=18600
# shellcheck source=bench/lib-herald-wrk.sh
source "$(dirname "$0")/lib-herald-wrk.sh"
bench_setup
nginx_conf "$port"

wait_up() {
    for _ in $(seq 100); do
        curl -s -o /dev/null -X POST -d x "http://127.0.0.1:$port/warmup" && return 0
        sleep 0.1
    done
    echo "server did not come up" >&2
    exit 1
}

# Prints "requests/s requests-per-server-CPU-second" (`wrk_run`) for the server $pid;
# nginx answers in its worker process, a child of the master.
run_wrk() {
    local pids
    read -ra pids <<<"$pid $(pgrep -P "$pid" || true)"
    wrk_run "$port" "${pids[@]}"
}

herald_serve() {
    local bin=$1
    shift
    rm -rf "$work/data"
    taskset -c "$SERVER_CPU" "$bin" serve --listen-http "127.0.0.1:$port" \
        --data-dir "$work/data" --visitor-request-limit-burst 1000000000 \
        --visitor-message-daily-limit 4000000000 --visitor-topic-creation-limit-burst 0 \
        "$@" >"$work/server.log" 2>&1 &
    pid=$!
}

stop() {
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    pid=""
}

for round in $(seq "$rounds"); do
    taskset -c "$SERVER_CPU" nginx -c "$work/nginx.conf" >"$work/nginx.log" 2>&1 &
    pid=$!
    wait_up
    read -r nginx_rps nginx_cpu < <(run_wrk)
    stop

    for bin in "$herald" $other; do
        herald_serve "$bin" --cache-duration 0 --log-level warn
        wait_up
        read -r nostore nostore_cpu < <(run_wrk)
        stop

        herald_serve "$bin" --log-level warn
        wait_up
        read -r durable durable_cpu < <(run_wrk)
        stop

        herald_serve "$bin"
        wait_up
        read -r durable_info info_cpu < <(run_wrk)
        log_lines=$(grep -c "herald::access" "$work/server.log" || true)
        stop

        herald_serve "$bin" --log-level warn --store-engine log
        wait_up
        read -r durable_log log_cpu < <(run_wrk)
        stop

        python3 - "$round" "$bin" "$log_lines" "$nginx_rps" "$nostore" "$durable" "$durable_info" \
            "$nginx_cpu" "$nostore_cpu" "$durable_cpu" "$info_cpu" "$durable_log" "$log_cpu" <<'PY'
import sys
r, binary, lines = sys.argv[1:4]
nginx, nostore, durable, info, c_nginx, c_nostore, c_durable, c_info, logstore, c_log = map(
    float, sys.argv[4:14])
print(f"round {r} {binary}: requests/s: nginx {nginx:,.0f} | no-store {nostore:,.0f} ({nostore/nginx:.0%}) "
      f"| durable warn {durable:,.0f} ({durable/nginx:.0%}) | durable info {info:,.0f} ({info/nginx:.0%}; "
      f"{lines} access lines) | durable log store {logstore:,.0f} ({logstore/nginx:.0%})")
print(f"round {r} {binary}: per server CPU second: nginx {c_nginx:,.0f} | no-store {c_nostore:,.0f} "
      f"({c_nostore/c_nginx:.0%}) | durable warn {c_durable:,.0f} ({c_durable/c_nginx:.0%}) "
      f"| durable info {c_info:,.0f} ({c_info/c_nginx:.0%}; the log costs {1 - c_info/c_durable:.1%}) "
      f"| durable log store {c_log:,.0f} ({c_log/c_nginx:.0%})")
PY
    done
done
